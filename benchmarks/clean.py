"""Benchmark: memory and speed of writing clean shards (issue 18, point 4).

Usage::

    python benchmarks/clean.py                  # one 200 MB shard per format (tar, tgz, zip)
    python benchmarks/clean.py --size-mb 1024   # 1 GB shards
    python benchmarks/clean.py --formats tgz --remove 0.5
    python benchmarks/clean.py --formats tar zip --reshard 1000   # and resharding into 1000-sample shards
    python benchmarks/clean.py --shards 10 --size-mb 1024 --formats tar zip --repeat 3   # a 10 GB dataset (root)

Writes one shard per format of ``--size-mb`` MB of webdataset samples (a JPEG of 40-120 kB
from a pool of real encoded pictures, a caption ``.txt`` and a ``.json``), cached in
``--data``, and a removal list naming ``--remove`` of its samples (every k-th). Each shard
is cleaned by :func:`dedupdask.clean.clean_archive` -- the task a Dask worker runs per
archive -- in a fresh Python process, which reports its peak resident memory (``VmHWM`` of
``/proc/self/status``), the task's wall time and CPU seconds, and how the wall time splits
(the library's functions wrapped with timers): the copy stage (the header scan and the
copies of the kept records; tgz: decompress and compress again), the fsync of the shard
before its rename, and the rest (the task's set-up, the rename, the stats file). Linux only.
The baselines run on the same shard interleaved with it (file cache warm for all): ``cp``
for tar and zip, and ``gzip -dc | gzip -6`` (what cleaning a tgz must do) for tgz, once as
they are and once followed by ``sync FILE`` (a clean shard is fsynced before it is renamed
into place, so that a crash never leaves a complete-looking shard with lost blocks: the
baseline with fsync is the like-for-like one for the whole task). ``--repeat`` rounds of
(baseline, clean, baseline + fsync) run back to back, so that a busy moment of a shared
machine hits all three; every round is printed, then per format: shard MB, samples,
removed, peak MB (the largest of the rounds), the medians of the clean task's seconds and
MB/s (of source bytes), of its copy stage, fsync and rest, of the baseline, and the median
over the rounds of the ratios baseline / copy stage (the throughput per byte against the
baseline), baseline / clean task and (baseline + sync) / clean task (>= 1: as fast), the
1-minute load average range seen, and the CPU seconds (user + system) of clean and of the
baseline with fsync, which a busy machine changes less than wall times.

The fixed cost of a run, apart from the bytes (``--setup N``, default 4; 0: skip): a fresh
interpreter importing the clean stage, and ``write_clean_shards`` on N small analysed tar
shards (generated pictures, extracted once with the ``dct`` model, cached in ``--data``)
with one worker thread, whose compute time less its clean tasks' own seconds is the set-up
(loading the work_dir, the removal tables, the graph, the summary).

One warm shard measures the page cache: ``cp`` returns with its copy still dirty in memory.
A user cleans a dataset many times larger than the dirty-page limit (``vm.dirty_ratio``),
where write-back throttles ``cp`` too. ``--shards N`` (dataset mode, tar and zip) writes N
shards of ``--size-mb`` (distinct keys and bytes per shard) to ``--data``/``dataset-*/src``
and times, in each of ``--repeat`` interleaved rounds: ``cp -r`` of that folder; the Dask
graph :func:`dedupdask.write_clean_shards` computes (one :func:`~dedupdask.clean.clean_archive`
task per shard, ``client=None``: dask's threaded scheduler) with one worker thread, like
``cp``; ``cp -r`` followed by ``sync`` of the copied files; the same graph with dask's
default threads (one per core). Every run starts from the same page-cache state: ``sync``,
wait until the machine's ``Dirty`` + ``Writeback`` pages are under 64 MB, then (``--cache
cold``, the default; root only) drop the page cache so that every run reads its sources
from disk, or (``--cache warm``) read the sources into it. Printed per run: seconds (of the
compute, for clean: without the interpreter's start and imports), MB/s of source bytes, CPU
seconds (user + system), peak RSS, the 1-minute load average at its start, the MB still
dirty at its start and the seconds the settling took, and for clean the sums over its tasks of
the copy stage's and the fsyncs' seconds; then per run kind the medians, the median per-round
ratios cp time / its time and cp+sync time / its time, the largest peak and the load range. The outputs are deleted after each run, the dataset at the end unless
``--keep-data``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from dedupdask.datasets import random_picture, write_shard

PHASES = r"""
import os, threading, time
from dedupdask import clean, shardcopy

PHASE = {"copy": 0.0, "fsync": 0.0, "marker": 0.0}  # seconds, summed over the tasks
_lock, _marker = threading.Lock(), threading.local()


def _add(key, dt):
    with _lock:
        PHASE[key] += dt


def _timed(owner, name, key):
    f = getattr(owner, name)

    def g(*a, **k):
        t0 = time.perf_counter()
        _marker.on = key == "marker"
        try:
            return f(*a, **k)
        finally:
            _marker.on = False
            _add(key, time.perf_counter() - t0)

    setattr(owner, name, g)


# the copy stage: the header scan and the copies of the kept records (tgz: decompress, recompress)
for owner, name in ((shardcopy, "copy_tar"), (shardcopy, "copy_zip"), (clean, "_copy_tar")):
    _timed(owner, name, "copy")
_timed(clean.WorkDir, "write_json", "marker")  # the stats file / done-marker, its own fsync included
_fsync = os.fsync


def _fsync_timed(fd):
    t0 = time.perf_counter()
    _fsync(fd)
    if not getattr(_marker, "on", False):
        _add("fsync", time.perf_counter() - t0)


os.fsync = _fsync_timed
"""

CHILD = PHASES + r"""
import json, resource, sys
import pandas as pd
from dedupdask.clean import ShardTask, clean_archive

src, out_dir, rel, fmt, keys = sys.argv[1:6]
keys = json.load(open(keys))
removal = pd.DataFrame({"key": keys, "reason": ["duplicate"] * len(keys)})
task = ShardTask("bench", src, out_dir, rel, fmt, {}, resume=False)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
stats = clean_archive(task, removal)
dt = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"status": stats["status"], "samples": stats["samples"], "peak_mb": int(status) / 1024,
                  "seconds": dt, **PHASE,
                  "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}))
"""

CHILD_SETUP = r"""
import json, resource, sys, time
import dask
import dedupdask as ddk

wd, out = sys.argv[1:3]
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
with dask.config.set(num_workers=1):  # one task after the other: set-up = compute - the clean tasks
    report = ddk.write_clean_shards(wd, out, resume=False)
dt = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"status": sorted(set(report["status"])), "shards": len(report), "seconds": dt,
                  "tasks": float(report["seconds"].sum()), "mb": float(report["bytes_in"].sum()) / 2**20,
                  "samples": int(report["samples_in"].sum()), "removed": int(report["samples_removed"].sum()),
                  "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}))
"""


CHILD_RESHARD = r"""
import json, os, resource, sys, time
import pandas as pd
from dedupdask.reshard import CountTask, OutputTask, count_source, plan_outputs, write_output

src, out_dir, fmt, keys, per_shard = sys.argv[1:6]
keys = json.load(open(keys))
removal = pd.DataFrame({"key": keys, "reason": ["duplicate"] * len(keys)})
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
counted = count_source(CountTask(os.path.basename(src), src, fmt, out_dir), removal)
t1 = time.perf_counter()
plan = plan_outputs([counted], int(per_shard), fmt)
stats = [write_output(OutputTask(name, out_dir, fmt, first, tuple(sl))) for name, first, sl in plan]
t2 = time.perf_counter()
r1 = resource.getrusage(resource.RUSAGE_SELF)
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"status": sorted({s["status"] for s in stats}), "shards": len(stats),
                  "samples": sum(s["samples"]["kept"] for s in stats), "peak_mb": int(status) / 1024,
                  "count_s": t1 - t0, "write_s": t2 - t1,
                  "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}))
"""

CHILD_DATASET = PHASES + r"""
import json, resource, sys
import dask
import pandas as pd
from dedupdask.clean import ShardTask, clean_archive
from dedupdask.removals import compute_on

src_dir, out_dir, fmt, spec, workers = sys.argv[1:6]
shards = json.load(open(spec))  # [[file name, [removed keys]], ...] in the dataset's order
graph = [dask.delayed(clean_archive, pure=False)(
             ShardTask(name, src_dir + "/" + name, out_dir, name, fmt, {}, resume=False),
             pd.DataFrame({"key": keys, "reason": ["duplicate"] * len(keys)}))
         for name, keys in shards]
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
with dask.config.set(num_workers=int(workers) or None):  # 0: dask's default (one thread per core)
    stats = compute_on(None, *graph)  # write_clean_shards' call (client=None: dask's current scheduler)
dt = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"status": sorted({s["status"] for s in stats}), "removed": sum(s["samples"]["removed"] for s in stats),
                  "peak_mb": int(status) / 1024, "seconds": dt, **PHASE,
                  "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}))
"""


def jpeg_pool(n: int = 48) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        side = int(rng.integers(360, 640))
        buf = io.BytesIO()
        random_picture(rng, (side, side * 3 // 4)).save(buf, "JPEG", quality=85 + i % 10)
        out.append(buf.getvalue())
    return out


def build(path: str, fmt: str, size: int, pool: list[bytes], prefix: str = "", meta: str | None = None) -> int:
    """Write the shard once (cached; its sample count in ``meta``, default ``path + ".json"``);
    return its sample count. Its keys are ``prefix`` + the sample number (dataset mode: one
    prefix per shard, so every shard's bytes differ)."""
    meta = meta or path + ".json"
    if os.path.exists(path) and os.path.exists(meta):
        return json.load(open(meta))["samples"]
    salt = prefix.encode()

    def members():
        total, i = 0, 0
        while total < size:
            jpg = pool[i % len(pool)] + i.to_bytes(8, "little") + salt  # distinct bytes per sample
            key = f"{prefix}{i:08d}"
            cap = f"a caption of sample {prefix}{i}, " * 3
            js = json.dumps({"key": key, "width": 512, "height": 384})
            for name, data in ((f"{key}.jpg", jpg), (f"{key}.txt", cap.encode()), (f"{key}.json", js.encode())):
                total += len(data)
                yield name, data
            i += 1

    items = list(members())  # write_shard takes a sequence
    write_shard(path, items, fmt)
    n = len(items) // 3
    json.dump({"samples": n}, open(meta, "w"))
    return n


def timed(cmd: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, of all its processes) of a shell command."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return dt, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def meminfo_mb(*fields: str) -> float:
    """The sum of ``/proc/meminfo`` fields, in MB."""
    values = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    return sum(int(values[f].split()[0]) for f in fields) / 1024


def settle(cold: bool, timeout: float = 180.0, quiet_mb: float = 64.0) -> float:
    """The same page-cache state before every timed run: ``sync``, then wait until the
    machine's dirty and write-back pages are under ``quiet_mb`` (other jobs write too; at
    most ``timeout`` s), then (``cold``) drop the clean page cache, so that both tools read
    their sources from disk. Returns the MB still dirty or under write-back."""
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    while (left := meminfo_mb("Dirty", "Writeback")) > quiet_mb and time.monotonic() - t0 < timeout:
        time.sleep(0.5)
    if cold:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    return left


def measured(argv: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system of it and its children) and peak RSS MB (the
    largest of them) of one command, run by ``/usr/bin/time`` (a child forked from this big
    process would report this process's RSS as its own peak), and its stdout."""
    with tempfile.NamedTemporaryFile("r") as rep:
        t0 = time.perf_counter()
        out = subprocess.run(["/usr/bin/time", "-q", "-o", rep.name, "-f", "%U %S %M", *argv], check=True,
                             stdout=subprocess.PIPE, text=True).stdout  # fmt: skip
        dt = time.perf_counter() - t0
        user, system, peak = rep.read().split()[-3:]
    return dt, float(user) + float(system), int(peak) / 1024, out


def dataset(args: argparse.Namespace, fmt: str, pool: list[bytes]) -> None:
    """Dataset mode: ``--shards`` shards of ``--size-mb`` cleaned by the Dask graph of
    ``write_clean_shards`` (one ``clean_archive`` task per shard) with one worker thread and
    with dask's default threads, against ``cp -r`` of the folder and ``cp -r`` + ``sync`` of
    its files, interleaved rounds, each from the same page-cache state (:func:`settle`)."""
    ext = {"tar": ".tar", "zip": ".zip"}[fmt]
    root = os.path.join(args.data, f"dataset-{args.shards}x{args.size_mb}mb-{fmt}")
    src = os.path.join(root, "src")
    os.makedirs(src, exist_ok=True)
    spec, samples = [], 0
    t0 = time.perf_counter()
    for i in range(args.shards):
        name = f"{i:05d}{ext}"
        n = build(os.path.join(src, name), fmt, args.size_mb * 2**20, pool, prefix=f"{i:05d}_",
                  meta=os.path.join(root, name + ".json"))  # fmt: skip
        step = max(1, round(1 / args.remove)) if args.remove > 0 else 0
        spec.append([name, [f"{i:05d}_{j:08d}" for j in range(0, n, step)] if step else []])
        samples += n
    built = time.perf_counter() - t0
    removed = sum(len(k) for _, k in spec)
    mb = sum(os.path.getsize(os.path.join(src, n)) for n, _ in spec) / 2**20
    kf = os.path.join(root, "removals.json")
    json.dump(spec, open(kf, "w"))
    out = os.path.join(root, "out")
    files = " ".join(f"'{out}/{n}'" for n, _ in spec)
    runs = {  # name -> argv
        "cp -r": ["cp", "-r", src, out],
        "clean, 1 thread": [sys.executable, "-c", CHILD_DATASET, src, out, fmt, kf, "1"],
        "cp -r + sync FILES": ["sh", "-c", f"cp -r '{src}' '{out}' && sync {files}"],
        f"clean, dask threads ({os.cpu_count()})": [sys.executable, "-c", CHILD_DATASET, src, out, fmt, kf, "0"],
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if k.startswith("cp") or any(o in k for o in args.only)}
    print(f"# {fmt}: {args.shards} shards, {mb:.0f} MB, {samples} samples, {removed} removed "
          f"({'built' if built > 5 else 'cached'} in {built:.0f} s); page cache {args.cache} before each run; "
          f"vm.dirty_ratio {open('/proc/sys/vm/dirty_ratio').read().strip()} %, "
          f"MemAvailable {meminfo_mb('MemAvailable') / 1024:.1f} GB", flush=True)
    print(f"{'round':>5} {'run':>24} {'s':>7} {'MB/s':>7} {'cpu s':>6} {'peak MB':>8} {'load':>5} {'dirty MB':>8} "
          f"{'wait s':>6} {'copy s':>7} {'fsync s':>7}", flush=True)  # fmt: skip
    rows: dict[str, list[tuple[float, float, float, float, float, float]]] = {k: [] for k in runs}
    for rnd in range(args.repeat):
        for label, argv in runs.items():
            shutil.rmtree(out, ignore_errors=True)
            w0 = time.perf_counter()
            dirty = settle(args.cache == "cold")
            if args.cache == "warm":
                subprocess.run(f"cat '{src}'/* > /dev/null", shell=True, check=True)
            wait = time.perf_counter() - w0
            load = os.getloadavg()[0]
            wall, cpu, peak, stdout = measured(argv)
            copy = fsync = float("nan")
            if not label.startswith("cp"):
                r = json.loads(stdout.strip().splitlines()[-1])
                assert r["status"] == ["done"] and r["removed"] == removed, r
                wall, cpu, peak = r["seconds"], r["cpu"], r["peak_mb"]  # the compute, without the imports
                copy, fsync = r["copy"], r["fsync"]  # sums over the tasks (with 2 threads, of overlapping ones)
            rows[label].append((wall, cpu, peak, load, copy, fsync))
            print(f"{rnd:5d} {label:>24} {wall:7.2f} {mb / wall:7.1f} {cpu:6.2f} {peak:8.1f} {load:5.2f} {dirty:8.0f} "
                  f"{wait:6.1f} {copy:7.2f} {fsync:7.2f}", flush=True)  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    med = statistics.median
    print(f"# {fmt} medians of {args.repeat} rounds; ratio = the cp run's time / this run's time in the same round "
          f"(median over rounds; >= 1: as fast); copy s, fsync s: sums over the clean tasks of their copy stage "
          f"and of the shards' fsyncs (one thread: parts of s; with more, of overlapping tasks); 'copy vs cp' = "
          f"cp -r s / copy s (the copy stage per byte against cp)")
    print(f"{'run':>24} {'s':>7} {'MB/s':>7} {'vs cp':>6} {'vs cp+sync':>10} {'cpu s':>6} {'peak MB':>8} {'load':>9} "
          f"{'copy s':>7} {'fsync s':>7} {'copy vs cp':>10}")  # fmt: skip
    for label, rs in rows.items():
        vs = [med(a[0] / b[0] for a, b in zip(rows[k], rs, strict=True)) if k in rows else float("nan")
              for k in ("cp -r", "cp -r + sync FILES")]  # fmt: skip
        per_byte = med(a[0] / b[4] for a, b in zip(rows["cp -r"], rs, strict=True)) if "cp -r" in rows else float("nan")
        loads = [r[3] for r in rs]
        print(f"{label:>24} {med(r[0] for r in rs):7.2f} {mb / med(r[0] for r in rs):7.1f} {vs[0]:6.2f} "
              f"{vs[1]:10.2f} {med(r[1] for r in rs):6.2f} {max(r[2] for r in rs):8.1f} "
              f"{min(loads):4.1f}-{max(loads):<4.1f} {med(r[4] for r in rs):7.2f} {med(r[5] for r in rs):7.2f} "
              f"{per_byte:10.2f}", flush=True)  # fmt: skip
    if not args.keep_data:
        shutil.rmtree(root)
        print(f"# removed {root}")
    else:
        print(f"# kept {root} ({mb / 1024:.1f} GB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=200, help="payload MB per shard (1024: 1 GB)")
    ap.add_argument("--formats", nargs="+", default=["tar", "tgz", "zip"], choices=["tar", "tgz", "zip"])
    ap.add_argument("--remove", type=float, default=0.1, help="share of samples removed")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds of baseline / clean / baseline+fsync")
    ap.add_argument("--reshard", type=int, default=0, metavar="N",
                    help="also reshard each shard into shards of N samples (one process: the counting pass, "
                         "then the new shards one after the other), once")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "dedupdask-bench-clean"))
    ap.add_argument("--shards", type=int, default=0, metavar="N",
                    help="dataset mode: N shards of --size-mb per format (tar, zip), cleaned as write_clean_shards "
                         "does, against cp -r of the folder")
    ap.add_argument("--cache", choices=["cold", "warm"], default="cold",
                    help="dataset mode: page cache dropped (needs root) or holding the sources before each run")
    ap.add_argument("--only", nargs="+", default=[], metavar="WORD",
                    help="dataset mode: only the clean runs whose label has WORD (e.g. '1 thread'), with the cp runs")
    ap.add_argument("--keep-data", action="store_true", help="dataset mode: keep the shards for the next run")
    ap.add_argument("--setup", type=int, default=4, metavar="N",
                    help="single-shard mode: also time a fresh interpreter's imports and write_clean_shards' set-up "
                         "on N small analysed shards (the fixed cost of a run); 0: not")
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    pool = jpeg_pool()
    if args.shards:
        if args.cache == "cold" and os.geteuid() != 0:
            sys.exit("--cache cold drops the page cache (/proc/sys/vm/drop_caches): run as root or use --cache warm")
        print(f"# dataset mode; {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for fmt in args.formats:
            if fmt == "tgz":
                print("# tgz: no dataset mode (its baseline is gzip -dc | gzip -6, CPU-bound either way)")
                continue
            dataset(args, fmt, pool)
        return
    print(f"# shards of {args.size_mb} MB payload, {args.remove:.0%} of the samples removed; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; medians of {args.repeat} rounds")
    resharded: list[str] = []
    summary: list[str] = []
    head = (f"{'format':>6} {'MB':>6} {'samples':>7} {'removed':>7} {'peak MB':>7} {'clean s':>7} {'MB/s':>6} "
            f"{'copy s':>6} {'MB/s':>6} {'fsync s':>7} {'rest s':>6} {'baseline':>18} {'base s':>6} {'MB/s':>6} "
            f"{'copy/b':>6} {'clean/b':>7} {'+fsync s':>8} {'clean/b+f':>9} {'load':>9} {'cpu clean':>9} "
            f"{'cpu b+f':>7}")  # fmt: skip
    for fmt in args.formats:
        ext = {"tar": ".tar", "tgz": ".tgz", "zip": ".zip"}[fmt]
        src = os.path.join(args.data, f"{args.size_mb}mb{ext}")
        n = build(src, fmt, args.size_mb * 2**20, pool)
        mb = os.path.getsize(src) / 2**20
        step = max(1, round(1 / args.remove)) if args.remove > 0 else 0
        keys = [f"{i:08d}" for i in range(0, n, step)] if step else []
        rounds: list[dict[str, float]] = []
        with tempfile.TemporaryDirectory(dir=args.data) as tmp:
            kf = os.path.join(tmp, "keys.json")
            json.dump(keys, open(kf, "w"))
            dst = os.path.join(tmp, "base" + ext)
            if fmt == "tgz":
                name, cmd = "gzip -dc | gzip -6", f"gzip -dc '{src}' | gzip -6 > '{dst}'"
            else:
                name, cmd = "cp", f"cp '{src}' '{dst}'"
            timed(f"cat '{src}' > /dev/null")  # warm the file cache for all
            print(f"# {fmt} rounds: s = wall seconds; copy = the copy stage (header scan + copies of the kept "
                  f"records{'; tgz: decompress + recompress' if fmt == 'tgz' else ''}), fsync = the shard's fsync "
                  f"before its rename, rest = the task's other work (set-up, rename, stats file with its fsync)")
            print(f"{'round':>5} {'load':>5} {'base s':>7} {'clean s':>7} {'copy s':>7} {'fsync s':>7} {'rest s':>7} "
                  f"{'b+fsync s':>9} {'copy/b':>6} {'clean/b':>7} {'clean/b+f':>9}")  # fmt: skip
            for i in range(args.repeat):
                row = {"load": os.getloadavg()[0], "base": timed(cmd)[0]}
                os.unlink(dst)
                proc = subprocess.run([sys.executable, "-c", CHILD, src, os.path.join(tmp, "out"), "clean" + ext, fmt,
                                       kf], capture_output=True, text=True, check=True)  # fmt: skip
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                assert r["status"] == "done" and r["samples"]["removed"] == len(keys), r
                row.update(clean=r["seconds"], copy=r["copy"], fsync=r["fsync"], cpu=r["cpu"], peak=r["peak_mb"],
                           rest=r["seconds"] - r["copy"] - r["fsync"])  # fmt: skip
                row["base_sync"], row["cpu_base"] = timed(f"{cmd} && sync '{dst}'")  # the shard is fsynced
                os.unlink(dst)
                rounds.append(row)
                print(f"{i:5d} {row['load']:5.2f} {row['base']:7.2f} {row['clean']:7.2f} {row['copy']:7.2f} "
                      f"{row['fsync']:7.2f} {row['rest']:7.2f} {row['base_sync']:9.2f} {row['base'] / row['copy']:6.2f} "
                      f"{row['base'] / row['clean']:7.2f} {row['base_sync'] / row['clean']:9.2f}", flush=True)  # fmt: skip
        def m(key: str, rs: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rs)

        def ratio(a: str, b: str, rs: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[a] / r[b] for r in rs)  # the median of the per-round ratios

        loads = [r["load"] for r in rounds]
        summary.append(
            f"{fmt:>6} {mb:6.0f} {n:7d} {len(keys):7d} {max(r['peak'] for r in rounds):7.1f} {m('clean'):7.2f} "
            f"{mb / m('clean'):6.0f} {m('copy'):6.2f} {mb / m('copy'):6.0f} {m('fsync'):7.2f} {m('rest'):6.2f} "
            f"{name:>18} {m('base'):6.2f} {mb / m('base'):6.0f} {ratio('base', 'copy'):6.2f} "
            f"{ratio('base', 'clean'):7.2f} {m('base_sync'):8.2f} {ratio('base_sync', 'clean'):9.2f} "
            f"{min(loads):4.1f}-{max(loads):<4.1f} {m('cpu'):9.2f} {m('cpu_base'):7.2f}"
        )  # fmt: skip
        if args.reshard:
            with tempfile.TemporaryDirectory(dir=args.data) as tmp:
                kf = os.path.join(tmp, "keys.json")
                json.dump(keys, open(kf, "w"))
                proc = subprocess.run([sys.executable, "-c", CHILD_RESHARD, src, os.path.join(tmp, "out"), fmt, kf,
                                       str(args.reshard)], capture_output=True, text=True, check=True)  # fmt: skip
                rs = json.loads(proc.stdout.strip().splitlines()[-1])
            assert rs["status"] == ["done"] and rs["samples"] == n - len(keys), rs
            resharded.append(f"# reshard {fmt}: {rs['shards']} shards of {args.reshard} samples, counting pass "
                             f"{rs['count_s']:.2f} s, new shards {rs['write_s']:.2f} s (together "
                             f"{mb / (rs['count_s'] + rs['write_s']):.0f} MB/s), cpu {rs['cpu']:.2f} s, "
                             f"peak {rs['peak_mb']:.0f} MB")  # fmt: skip
    print(f"# medians of {args.repeat} rounds; clean = the clean_archive task; copy/b = baseline s / copy s (the "
          f"copy stage per byte against the baseline), clean/b = baseline s / clean s, clean/b+f = (baseline + "
          f"sync FILE) s / clean s, each the median of the per-round ratios (>= 1: as fast); MB/s of source bytes")
    print(head)
    for line in summary + resharded:
        print(line, flush=True)
    if args.setup:
        setup_cost(args)


def setup_cost(args: argparse.Namespace) -> None:
    """The fixed cost of a run, apart from the bytes: a fresh interpreter importing the clean
    stage, and ``write_clean_shards`` on a small analysed work_dir (``--setup`` tar shards of
    250 generated pictures, extracted once with the ``dct`` model and cached) with one
    worker thread, so that its set-up -- loading the work_dir, the removal tables, the graph,
    the summary -- is its compute time less the clean tasks' own seconds."""
    from dedupdask import run
    from dedupdask.datasets import make_sample_shards

    root = os.path.join(args.data, f"setup-{args.setup}x250")
    wd = os.path.join(root, "wd")
    if not os.path.exists(os.path.join(root, "ok")):
        shutil.rmtree(root, ignore_errors=True)
        make_sample_shards(os.path.join(root, "src"), n_shards=args.setup, images_per_shard=250, formats=("tar",),
                           n_near=25 * args.setup, n_exact=12 * args.setup, broken=False, size=(256, 192))  # fmt: skip
        run(os.path.join(root, "src"), wd, model_path="dct", progress=False, client="threads")
        open(os.path.join(root, "ok"), "w").close()
    imports, rows = [], []
    for _ in range(args.repeat):
        wall, cpu, _, _ = measured([sys.executable, "-c", "import dedupdask.clean"])
        imports.append((wall, cpu))
        out = os.path.join(root, "out")
        shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()[0]
        wall, cpu, _, stdout = measured([sys.executable, "-c", CHILD_SETUP, wd, out])
        r = json.loads(stdout.strip().splitlines()[-1])
        assert r["status"] == ["done"], r
        rows.append((wall, r["seconds"], r["tasks"], r["cpu"], cpu, load, r))
        shutil.rmtree(out, ignore_errors=True)
    med = statistics.median
    r = rows[0][-1]
    print(f"# fixed cost of a run (medians of {args.repeat}; load {min(x[5] for x in rows):.1f}-"
          f"{max(x[5] for x in rows):.1f}):")
    print(f"#   interpreter start + import dedupdask.clean: {med(w for w, _ in imports):.2f} s wall, "
          f"{med(c for _, c in imports):.2f} CPU s")
    print(f"#   write_clean_shards on {r['shards']} analysed tar shards ({r['samples']} samples, {r['removed']} removed, "
          f"{r['mb']:.0f} MB), 1 worker thread: process {med(x[0] for x in rows):.2f} s ({med(x[4] for x in rows):.2f} "
          f"CPU s), of which compute {med(x[1] for x in rows):.2f} s ({med(x[3] for x in rows):.2f} CPU s) = the "
          f"clean tasks {med(x[2] for x in rows):.2f} s + set-up (load, removal tables, graph, summary) "
          f"{med(x[1] - x[2] for x in rows):.2f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
