"""Benchmark: memory and speed of writing clean shards (issue 18, point 4).

Usage::

    python benchmarks/clean.py                  # one 200 MB shard per format (tar, tgz, zip)
    python benchmarks/clean.py --size-mb 1024   # 1 GB shards
    python benchmarks/clean.py --formats tgz --remove 0.5
    python benchmarks/clean.py --formats tar zip --reshard 1000   # and resharding into 1000-sample shards

Writes one shard per format of ``--size-mb`` MB of webdataset samples (a JPEG of 40-120 kB
from a pool of real encoded pictures, a caption ``.txt`` and a ``.json``), cached in
``--data``, and a removal list naming ``--remove`` of its samples (every k-th). Each shard
is cleaned by :func:`dedupdask.clean.clean_archive` -- the task a Dask worker runs per
archive -- in a fresh Python process, which reports its peak resident memory (``VmHWM`` of
``/proc/self/status``) and the wall time; Linux only. The baselines run on the same shard
interleaved with it (file cache warm for all): ``cp`` for tar and zip, and
``gzip -dc | gzip -6`` (decompress and compress again, what cleaning a tgz must do) for tgz,
once as they are and once followed by ``sync FILE`` (a clean shard is fsynced before it is
renamed into place, so that a crash never leaves a complete-looking shard with lost blocks;
the baseline with fsync is the like-for-like one). ``--repeat`` rounds of (baseline, clean,
baseline + fsync) run back to back, so that a busy moment of a shared machine hits all three;
printed per format: shard MB, samples, removed, peak MB (the largest of the rounds), the
medians of clean s, MB/s (of source bytes), baseline s and MB/s, the median over the rounds
of the ratio baseline time / clean time (>= 1: as fast), the same for the baseline with
fsync, and the 1-minute load average range seen; then the CPU seconds (user + system) of
clean and of the baseline with fsync, which a busy machine changes less than wall times.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from dedupdask.datasets import random_picture, write_shard

CHILD = r"""
import json, resource, sys, time
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
                  "seconds": dt, "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}))
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


def jpeg_pool(n: int = 48) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        side = int(rng.integers(360, 640))
        buf = io.BytesIO()
        random_picture(rng, (side, side * 3 // 4)).save(buf, "JPEG", quality=85 + i % 10)
        out.append(buf.getvalue())
    return out


def build(path: str, fmt: str, size: int, pool: list[bytes]) -> int:
    """Write the shard once (cached); return its sample count."""
    meta = path + ".json"
    if os.path.exists(path) and os.path.exists(meta):
        return json.load(open(meta))["samples"]

    def members():
        total, i = 0, 0
        while total < size:
            jpg = pool[i % len(pool)] + i.to_bytes(8, "little")  # distinct bytes per sample
            cap = f"a caption of sample {i}, " * 3
            js = json.dumps({"key": f"{i:08d}", "width": 512, "height": 384})
            for name, data in ((f"{i:08d}.jpg", jpg), (f"{i:08d}.txt", cap.encode()), (f"{i:08d}.json", js.encode())):
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
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    pool = jpeg_pool()
    print(f"# shards of {args.size_mb} MB payload, {args.remove:.0%} of the samples removed; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; medians of {args.repeat} rounds")
    print(f"{'format':>6} {'MB':>7} {'samples':>8} {'removed':>8} {'peak MB':>8} {'clean s':>8} "
          f"{'MB/s':>7} {'baseline':>22} {'base s':>7} {'MB/s':>7} {'ratio':>6} {'+fsync s':>8} {'ratio':>6}"
          f" {'load':>9} {'cpu clean':>9} {'cpu base+fsync':>14}")
    resharded: list[str] = []
    for fmt in args.formats:
        ext = {"tar": ".tar", "tgz": ".tgz", "zip": ".zip"}[fmt]
        src = os.path.join(args.data, f"{args.size_mb}mb{ext}")
        n = build(src, fmt, args.size_mb * 2**20, pool)
        mb = os.path.getsize(src) / 2**20
        step = max(1, round(1 / args.remove)) if args.remove > 0 else 0
        keys = [f"{i:08d}" for i in range(0, n, step)] if step else []
        base, base_sync, clean, peak, loads, cpu, cpu_base = [], [], [], [], [], [], []
        with tempfile.TemporaryDirectory(dir=args.data) as tmp:
            kf = os.path.join(tmp, "keys.json")
            json.dump(keys, open(kf, "w"))
            dst = os.path.join(tmp, "base" + ext)
            if fmt == "tgz":
                name, cmd = "gzip -dc | gzip -6", f"gzip -dc '{src}' | gzip -6 > '{dst}'"
            else:
                name, cmd = "cp", f"cp '{src}' '{dst}'"
            timed(f"cat '{src}' > /dev/null")  # warm the file cache for all
            for _ in range(args.repeat):
                loads.append(os.getloadavg()[0])
                base.append(timed(cmd)[0])
                os.unlink(dst)
                proc = subprocess.run([sys.executable, "-c", CHILD, src, os.path.join(tmp, "out"), "clean" + ext, fmt,
                                       kf], capture_output=True, text=True, check=True)  # fmt: skip
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                assert r["status"] == "done" and r["samples"]["removed"] == len(keys), r
                clean.append(r["seconds"])
                cpu.append(r["cpu"])
                peak.append(r["peak_mb"])
                wall, used = timed(f"{cmd} && sync '{dst}'")  # the clean shard is fsynced before its rename
                base_sync.append(wall)
                cpu_base.append(used)
                os.unlink(dst)
        med = statistics.median
        ratio = med(b / c for b, c in zip(base, clean, strict=True))
        ratio_sync = med(b / c for b, c in zip(base_sync, clean, strict=True))
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
        print(f"{fmt:>6} {mb:7.0f} {n:8d} {len(keys):8d} {max(peak):8.1f} {med(clean):8.2f} "
              f"{mb / med(clean):7.1f} {name:>22} {med(base):7.2f} {mb / med(base):7.1f} {ratio:6.2f} "
              f"{med(base_sync):8.2f} {ratio_sync:6.2f} {min(loads):4.1f}-{max(loads):<4.1f} {med(cpu):9.2f} "
              f"{med(cpu_base):14.2f}",
              flush=True)  # fmt: skip
    for line in resharded:
        print(line)


if __name__ == "__main__":
    main()
