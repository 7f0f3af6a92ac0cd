"""Benchmark: a worker's peak memory on a tar of many tiny members (issue 22, point 3).

Usage::

    python benchmarks/tar_members_memory.py                   # 10 images; + 200,000 tiny members
    python benchmarks/tar_members_memory.py --members 50000 200000 --model dct
    python benchmarks/tar_members_memory.py --ext jpg          # tiny members that are image rows

Builds tars of ``--images`` JPEGs (256x192) followed by N one-byte members named ``*.bin``
(skipped: not an image) or, with ``--ext jpg``, ``*.jpg`` (each an image row with
``ERROR_CORRUPT_IMAGE``, which the Parquet file must hold), cached in ``--data``. Each tar is
extracted by :func:`dedupdask.partition.process_archive` -- what a Dask worker runs per
archive -- in a fresh Python process, which then reports its peak resident memory
(``VmHWM`` of ``/proc/self/status``: the high-water mark of that process's own address
space; ``ru_maxrss`` would carry over the parent's peak across fork+exec). Linux only.
Printed: members, skipped members, peak MB, seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from dedupdask.datasets import random_picture

CHILD = r"""
import json, sys, time
from dedupdask.config import RunConfig
from dedupdask.partition import ArchiveTask, process_archive
from dedupdask.sources import ArchiveSource
from dedupdask.store import WorkDir

path, wd, model = sys.argv[1:4]
WorkDir(wd).makedirs()
cfg = RunConfig(model_path=model, progress=False)
t0 = time.perf_counter()
out = process_archive(ArchiveTask(ArchiveSource(url=path, name="a.tar", kind="tar"), wd, cfg))
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"status": str(out["status"][0]), "members": int(out["members"][0]),
                  "skipped": int(out["skipped"][0]), "invalid": int(out["invalid"][0]),
                  "peak_mb": int(status) / 1024, "seconds": time.perf_counter() - t0}))
"""


def build_tar(path: str, n_images: int, n_tiny: int, ext: str) -> str:
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(0)
    with tarfile.open(path + ".part", "w") as tf:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))

        for i in range(n_images):
            buf = io.BytesIO()
            random_picture(rng, (256, 192)).save(buf, "JPEG", quality=90)
            add(f"img{i:03d}.jpg", buf.getvalue())
        for i in range(n_tiny):
            add(f"t{i:07d}.{ext}", b"x")
    os.replace(path + ".part", path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, nargs="+", default=[0, 200_000],
                    help="tiny members per tar (one tar each)")  # fmt: skip
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--ext", choices=["bin", "jpg"], default="bin")
    ap.add_argument("--model", default="effnet-lite0", help="model_path (effnet-lite0, dct, ...)")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "dedupdask-bench-tars"))
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    print(f"model {args.model}, {args.images} images + N one-byte .{args.ext} members")
    print(f"{'N':>9} {'members':>9} {'skipped':>9} {'invalid':>9} {'peak MB':>8} {'s':>6}")
    for n in args.members:
        tar = build_tar(os.path.join(args.data, f"{args.images}img_{n}{args.ext}.tar"),
                        args.images, n, args.ext)  # fmt: skip
        with tempfile.TemporaryDirectory() as wd:
            proc = subprocess.run([sys.executable, "-c", CHILD, tar, wd, args.model],
                                  capture_output=True, text=True, check=False)  # fmt: skip
        if proc.returncode:
            print(f"{n:>9} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{n:>9} {r['members']:>9} {r['skipped']:>9} {r['invalid']:>9} "
              f"{r['peak_mb']:>8.1f} {r['seconds']:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
