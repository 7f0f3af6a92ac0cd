"""Benchmark: a worker's memory while it streams tars of growing size from S3 (SeaweedFS).

Usage::

    python benchmarks/s3_memory.py                      # 100 MB and 1 GB tars, 8 MiB blocks
    python benchmarks/s3_memory.py --sizes-mb 1000 --block-mib 8 50

Builds tars of ``--sizes-mb`` (noisy 1024x768 JPEGs of ~0.5 MB, cycled, so that the bytes
streamed dominate and the per-image rows stay few), uploads them to a SeaweedFS started on
127.0.0.1, and extracts each with ``model_path="dct"`` on a LocalCluster of one worker
process. The worker's RSS is sampled every 50 ms **from the client side** with psutil (not
``ru_maxrss``, which Linux carries across fork+exec). Printed: archive size, the worker's RSS
before the run, its peak during the run, and the growth. If streaming works, the peak does
not grow with the archive size. Figures are noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rss import RssSampler  # noqa: E402

import dedupdask as ddk  # noqa: E402
from dedupdask.datasets import random_picture  # noqa: E402
from dedupdask.testing import SeaweedFS  # noqa: E402


def noisy_jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.asarray(random_picture(rng, (1024, 768)), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 24, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        from PIL import Image

        Image.fromarray(img).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def build_tar(path: str, size_mb: int, blobs: list[bytes]) -> tuple[int, int]:
    """A tar of about ``size_mb`` MB cycling ``blobs``; returns (bytes, members)."""
    if os.path.exists(path):
        with tarfile.open(path) as tf:
            return os.path.getsize(path), len(tf.getmembers())
    target, i = size_mb * 10**6, 0
    with tarfile.open(path + ".part", "w") as tf:
        written = 0
        while written < target:
            data = blobs[i % len(blobs)]
            ti = tarfile.TarInfo(f"{i:07d}.jpg")
            ti.size, ti.mtime = len(data), 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
            written += len(data) + 1024
            i += 1
    os.replace(path + ".part", path)
    return os.path.getsize(path), i


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--block-mib", type=int, nargs="+", default=[8],
                    help="s3fs block size(s) of the streaming read (dedupdask's default: 8; s3fs's: 50)")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "dedupdask-bench-s3mem"),
                    help="where the tars are built (kept for reruns) and the server's data lives")
    args = ap.parse_args(argv)
    os.makedirs(args.data, exist_ok=True)
    blobs = noisy_jpegs(24)
    print(f"images: 24 distinct noisy 1024x768 JPEGs of {np.mean([len(b) for b in blobs]) / 1e6:.2f} MB, cycled")
    tars = {}
    for mb in args.sizes_mb:
        t0 = time.perf_counter()
        path = os.path.join(args.data, f"noisy_{mb}MB.tar")
        tars[mb] = (path, *build_tar(path, mb, blobs))
        print(f"tar {mb} MB: {tars[mb][1] / 1e6:.0f} MB, {tars[mb][2]} members ({time.perf_counter() - t0:.0f} s)")
    weed_dir = tempfile.mkdtemp(prefix="weed-", dir=args.data)
    work = tempfile.mkdtemp(prefix="work-", dir=args.data)
    from distributed import Client, LocalCluster

    try:
        with SeaweedFS(weed_dir) as s3:
            os.environ.update(s3.env())  # before the cluster starts: the worker inherits it
            s3.make_bucket("bench")
            fs = s3.filesystem()
            for mb, (path, _, _) in tars.items():
                t0 = time.perf_counter()
                fs.put_file(path, f"bench/{mb}/{os.path.basename(path)}")
                print(f"uploaded {mb} MB in {time.perf_counter() - t0:.0f} s")
            fs.put_file(tars[min(tars)][0], "bench/warm/warm.tar")
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                              host="127.0.0.1") as cluster, Client(cluster) as client:
                pid = next(iter(client.run(os.getpid).values()))
                print(f"{'archive MB':>10}{'block MiB':>10}{'images':>8}{'wall s':>8}{'MB/s':>7}"
                      f"{'RSS before MB':>15}{'peak RSS MB':>13}{'growth MB':>11}")
                for block in args.block_mib:
                    so = {"default_block_size": block * 2**20}
                    ddk.extract("s3://bench/warm/", os.path.join(work, f"warm{block}"), model_path="dct",
                                client=client, progress=False, storage_options=so, max_offset=1)
                    for mb, (_path, nbytes, _) in tars.items():
                        import psutil

                        client.run(lambda: __import__("gc").collect())
                        before = psutil.Process(pid).memory_info().rss
                        with RssSampler([pid]) as sampler:
                            t0 = time.perf_counter()
                            report = ddk.extract(f"s3://bench/{mb}/", os.path.join(work, f"{mb}-{block}"),
                                                 model_path="dct", client=client, progress=False,
                                                 storage_options=so)
                            wall = time.perf_counter() - t0
                        assert report["status"].tolist() == ["done"], report["error"].tolist()
                        peak = sampler.max_mb()
                        print(f"{nbytes / 1e6:>10.0f}{block:>10}{int(report['images'].sum()):>8}{wall:>8.1f}"
                              f"{nbytes / 1e6 / wall:>7.1f}{before / 2**20:>15.0f}{peak:>13.0f}"
                              f"{peak - before / 2**20:>11.0f}", flush=True)
    finally:
        shutil.rmtree(weed_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
