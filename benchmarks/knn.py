"""kNN stage benchmark: build time, peak memory and recall of dedupdask's pynndescent graph.

For each N (a fresh process per N, so peak RSS and the numba JIT are per run), the script
generates clustered unit vectors (``--clusters-per`` points per cluster, within-cluster
noise ``--sigma``: cosine ~ 1 / (1 + sigma**2)) with 1 % planted near duplicates (cosine
0.95-0.999), then times ``dedupdask.knn.nndescent_knn`` (the code path of ``build`` above the
exact-search crossover) and reports:

* JIT warm-up time (``dedupdask.knn.warm_up`` in the fresh process), build time;
* peak RSS while building (sampled with psutil), RSS before, the process peak
  (``resource.getrusage``) and the data size;
* recall@k against exact search on a sample of ``--queries`` rows (exact ground truth on the
  sample only: a full exact graph at 1M x 1280 would take hours);
* dup recall: the fraction of planted pairs found in either row's neighbour list (what the
  similarity table needs);
* the time of exact search on the sample, extrapolated to all N rows.

Usage::

    python benchmarks/knn.py                 # N = 100k and 1M, d = 1280
    python benchmarks/knn.py --n 20000 --d 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import psutil


def make_data(n: int, d: int, sigma: float, clusters_per: int, seed: int = 0):
    """Clustered unit vectors plus planted near duplicates (src, dst pairs)."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // clusters_per)
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    step = 10_000
    for s in range(0, n, step):
        e = min(n, s + step)
        block = centres[rng.integers(0, n_clusters, e - s)]
        block += (sigma / np.sqrt(d)) * rng.standard_normal((e - s, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s:e] = block
    n_dup = n // 100
    perm = rng.permutation(n)
    src, dst = np.sort(perm[:n_dup]), perm[n_dup : 2 * n_dup]
    t = rng.uniform(0.05, 0.3, n_dup).astype(np.float32)[:, None]
    dup = x[src] + t * rng.standard_normal((n_dup, d), dtype=np.float32) / np.sqrt(d)
    x[dst] = dup / np.linalg.norm(dup, axis=1, keepdims=True)
    return x, src, dst


def exact_sample(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k (self excluded) of the query rows, and the time it took."""
    t = time.perf_counter()
    out = np.empty((queries.size, k), dtype=np.int64)
    step = max(1, (256 * 2**20) // (4 * x.shape[0]))
    for s in range(0, queries.size, step):
        q = queries[s : s + step]
        sims = x[q] @ x.T
        sims[np.arange(q.size), q] = -np.inf
        out[s : s + step] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out, time.perf_counter() - t


class _PeakRSS:
    """Highest RSS of this process while running (sampled every 20 ms by a thread)."""

    def __init__(self) -> None:
        self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def run_one(args: argparse.Namespace) -> dict:
    from dedupdask.knn import PYNNDESCENT_MIN_NEIGHBORS, nndescent_knn, warm_up

    t = time.perf_counter()
    warm_up()
    jit = time.perf_counter() - t
    t = time.perf_counter()
    x, src, dst = make_data(args.single, args.d, args.sigma, args.clusters_per)
    gen = time.perf_counter() - t
    rss_data = psutil.Process().memory_info().rss / 2**20
    sampler = _PeakRSS()
    t = time.perf_counter()
    idx, sim = nndescent_knn(x, args.k, random_state=42)
    build = time.perf_counter() - t
    build_peak = sampler.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(x.shape[0], size=min(args.queries, x.shape[0]), replace=False))
    truth, t_exact = exact_sample(x, queries, args.k)
    recall = float(
        np.mean([len(set(idx[q]) & set(truth[i])) / args.k for i, q in enumerate(queries)])
    )
    found = (idx[dst] == src[:, None]).any(axis=1) | (idx[src] == dst[:, None]).any(axis=1)
    pair_sim = np.einsum("ij,ij->i", x[src], x[dst])
    return {
        "n": int(x.shape[0]),
        "d": args.d,
        "k": args.k,
        "n_neighbors": max(args.k + 1, PYNNDESCENT_MIN_NEIGHBORS),
        "sigma": args.sigma,
        "threads": os.cpu_count(),
        "jit_s": round(jit, 1),
        "generate_s": round(gen, 1),
        "build_s": round(build, 1),
        "peak_rss_build_mb": round(build_peak),
        "rss_before_build_mb": round(rss_data),
        "peak_rss_process_mb": round(peak),
        "data_mb": round(x.nbytes / 2**20),
        f"recall@{args.k}": round(recall, 4),
        "recall_queries": int(queries.size),
        "dup_pairs": int(src.size),
        "dup_pair_cos_min": round(float(pair_sim.min()), 3),
        "dup_recall": round(float(found.mean()), 4),
        "exact_sample_s": round(t_exact, 1),
        "exact_full_estimate_s": round(t_exact * x.shape[0] / queries.size),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--d", type=int, default=1280, help="vector width (default model: 1280)")
    p.add_argument("--k", type=int, default=10, help="neighbours per row (recall@k)")
    p.add_argument("--sigma", type=float, default=1.0, help="within-cluster noise")
    p.add_argument("--clusters-per", type=int, default=100, help="points per cluster")
    p.add_argument("--queries", type=int, default=1000, help="rows with exact ground truth")
    p.add_argument("--single", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.single:
        print(json.dumps(run_one(args)), flush=True)
        return
    print(
        f"# dedupdask kNN benchmark: pynndescent (cosine) via dedupdask.knn.nndescent_knn, "
        f"d={args.d}, k={args.k}, sigma={args.sigma}, {os.cpu_count()} cores, fresh process per N",
        flush=True,
    )
    for n in args.n:
        cmd = [sys.executable, __file__, "--single", str(n), "--d", str(args.d)]
        cmd += ["--k", str(args.k), "--sigma", str(args.sigma), "--queries", str(args.queries)]
        cmd += ["--clusters-per", str(args.clusters_per)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"N={n}: failed ({out.returncode})\n{out.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        recall = r[f"recall@{r['k']}"]
        print(
            f"N={r['n']:>9,} d={r['d']}: build {r['build_s']:7.1f} s (+ JIT {r['jit_s']} s once "
            f"per process) | peak RSS during build {r['peak_rss_build_mb']:,} MB (before "
            f"{r['rss_before_build_mb']:,} MB, data {r['data_mb']:,} MB) | "
            f"recall@{r['k']} {recall:.4f} ({r['recall_queries']} queries) | "
            f"dup recall {r['dup_recall']:.4f} ({r['dup_pairs']:,} pairs, cos >= "
            f"{r['dup_pair_cos_min']}) | exact: {r['exact_sample_s']} s for the sample, "
            f"~{r['exact_full_estimate_s']:,} s for all N",
            flush=True,
        )
        print("  " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
