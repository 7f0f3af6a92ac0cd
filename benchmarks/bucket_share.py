"""Benchmark: how many close pairs meet in a bucket of the partitioned kNN, at any N, in memory.

The partitioned kNN (:mod:`dedupdask.knn_partitioned`) finds a pair only if both rows share a
bucket; this replays its stage 1-2 -- the sample, the spherical k-means, the margin and the
assignment, with the library's own functions -- on the vectors of ``scale_build.py``'s synthetic
work_dir (same seeds, generated in memory, no files), and prints the share of planted pairs with
cosine >= 0.9 that share a bucket and the buckets per vector (the kNN stage's work grows with
it), for the library's margin and for the rule before it (the median gap to the ``m + 1``-th
centroid, at most ``2 m`` buckets). What it leaves out: pynndescent's misses inside a bucket and
the split of oversized buckets (``scale_build.py`` measures the whole build).

Usage::

    python benchmarks/bucket_share.py --n 5000000 --centroids 343 490   # ~3 min, ~6 GB

At 5M the build chose 343 centroids with the old rule and chooses ~490 now (its buckets are
sized for ~4 buckets per vector instead of 2.8).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scale_build import archive_vectors  # noqa: E402

from dedupdask import knn_fit  # noqa: E402
from dedupdask.knn import DEFAULT_RANDOM_STATE, top_k  # noqa: E402
from dedupdask.knn_buckets import _top_m  # noqa: E402


def vectors(n: int, archives: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of the synthetic work_dir, and its planted pairs with cosine >= 0.9."""
    rows = n // archives
    x = np.empty((rows * archives, d), np.float32)
    pa, pb = [], []
    for a in range(archives):
        block, p = archive_vectors(a, archives, rows, d, n, seed, None, np.random.default_rng([seed, a]))
        x[a * rows : (a + 1) * rows] = block
        close = p["near_cos"] >= 0.9
        pa.append(int(p["prev"]) * rows + p["near_src"][close])
        pb.append(a * rows + p["near_dst"][close])
    return x, np.concatenate(pa), np.concatenate(pb)


def old_margin(x: np.ndarray, centroids: np.ndarray, m: int) -> float:
    """The margin before: the median over rows of (best - (m+1)-th best centroid similarity)."""
    _, s = top_k(x @ centroids.T, m + 1)
    return float(np.quantile(s[:, 0] - s[:, m], 0.5))


def assign(x: np.ndarray, centroids: np.ndarray, m: int, margin: float, width: int) -> np.ndarray:
    """Every row's buckets as the library assigns them, at most ``width`` (-1: none)."""
    saved = knn_fit.EXTRA_WIDTH
    knn_fit.EXTRA_WIDTH = width // m - 1
    try:
        out = np.empty((x.shape[0], knn_fit.label_width(m, margin, centroids.shape[0])), np.int32)
        for s in range(0, x.shape[0], 200_000):
            out[s : s + 200_000] = _top_m(x[s : s + 200_000], centroids, m, margin)
    finally:
        knn_fit.EXTRA_WIDTH = saved
    return out


def share(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    la, lb = labels[a], labels[b]
    return ((la[:, :, None] == lb[:, None, :]) & (la[:, :, None] >= 0)).any(axis=(1, 2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--archives-per-million", type=int, default=200)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--m", type=int, default=2)
    p.add_argument("--centroids", type=int, nargs="+", required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    archives = max(1, args.n * args.archives_per_million // 1_000_000)
    x, a, b = vectors(args.n, archives, args.d)
    print(f"N={args.n:,} d={args.d} ({archives} archives): {a.size:,} planted pairs >= 0.9, generated in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    for c in args.centroids:
        sample = x[knn_fit._sample_positions(x.shape[0], min(x.shape[0], max(20_000, 200 * c)), DEFAULT_RANDOM_STATE)]
        t0 = time.perf_counter()
        centroids, margin = knn_fit._fit_centroids([sample], None, c, DEFAULT_RANDOM_STATE, args.m, None)
        fit_s = time.perf_counter() - t0
        held = np.random.default_rng(DEFAULT_RANDOM_STATE).random(sample.shape[0]) < 0.2
        before = old_margin(sample[held], centroids, args.m)
        for label, mg, width in (("before (median gap, <= 2m)", before, 2 * args.m),
                                 ("now (probe pairs)", margin, knn_fit.label_width(args.m, 1.0, c))):  # fmt: skip
            lab = assign(x, centroids, args.m, mg, width)
            met = share(lab, a, b)
            print(f"  {c} centroids, {label:>27}: margin {mg:.4f}, buckets per vector "
                  f"{(lab >= 0).sum() / x.shape[0]:.2f}, planted pairs >= 0.9 sharing a bucket {met.mean():.4f} "
                  f"({(~met).sum()} split) | fit + margin {fit_s:.0f} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
