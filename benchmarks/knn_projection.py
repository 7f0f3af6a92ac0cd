"""Project the partitioned kNN (run_mode=2) to 50M and 400M images from measured runs.

Usage::

    python benchmarks/knn_projection.py                                   # reads the file below
    python benchmarks/knn_projection.py benchmarks/results/knn_partitioned.txt --workers 64 256

Input: the JSON lines that ``benchmarks/knn.py --partitioned`` prints (one per variant and N).
Nothing is assumed that was not measured, either there or here:

* **search + merge**, per vector: the measured ``search_merge`` stage x workers / N of the
  largest ``full`` run at each width. Buckets are sized by the memory per task, not by N, so
  this cost per vector does not grow with N (pynndescent inside a bucket of fixed size);
* **assign**, per vector: the measured ``assign`` stage (reading the rows, comparing them with
  a few dozen centroids) plus ``2 * C * d`` flops of comparison with the ``C`` centroids of a
  large run, at this machine's single-thread sgemm speed (measured here). ``C`` grows with N
  (``N * replication / (FILL * capacity)``, the formula of ``dedupdask.knn_partitioned``), so
  this term is quadratic in N;
* **fit**, one task on the client side of the graph: k-means++ seeding (``C`` matrix-vector
  products over the sample, measured speed) and 12 Lloyd iterations (sgemm) on the sample
  that ``knn_graph_partitioned`` would draw (at most a quarter of a task's memory);
* **memory per worker**: the measured peak RSS of the workers (buckets have the same size at
  any N);
* **client**: on a distributed client run_mode=2 holds no per-image state (the graph is a
  table on the workers); what grows is ~25 KB per bucket (task-graph objects, persisted
  futures, the two-level k-means sample), measured with a real scheduler at 100k-1M
  (``benchmarks/scale_build.py``, stop 26), over an import baseline of ~180 MB.

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # measure one core, as one Dask worker thread
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIENT_BYTES_PER_BUCKET = 25_000
"""Client memory of run_mode=2 per kNN bucket on a distributed client, measured (see above)."""
LLOYD_ITERATIONS = 12


def load_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for p in paths:
        for line in p.read_text().splitlines():
            line = line.strip()
            if line.startswith("{") and '"variant"' in line:
                runs.append(json.loads(line))
    return runs


def gemm_flops() -> float:
    """Single-thread float32 matrix-product speed (flop/s), as assignment and k-means use it."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8192, 1280), dtype=np.float32)
    c = rng.standard_normal((512, 1280), dtype=np.float32)
    a @ c.T
    t = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ c.T
    return reps * 2 * a.shape[0] * c.shape[0] * a.shape[1] / (time.perf_counter() - t)


def matvec_seconds(rows: int, d: int) -> float:
    """Seconds of one ``[rows, d] @ [d]`` product (one k-means++ seeding step)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    v = x[0].copy()
    x @ v
    t = time.perf_counter()
    reps = 5
    for _ in range(reps):
        x @ v
    return (time.perf_counter() - t) / reps


def estimate(run: dict, n: int, flops: float) -> dict:
    """The partitioned kNN at ``n`` vectors from one measured run: buckets, per-vector costs
    (seconds of one core), core-hours, the k-means fit (seconds, one task) and its sample,
    the workers' peak RSS (MB)."""
    from dedupdask.knn_partitioned import FILL

    d, n0, w0 = run["d"], run["n"], run.get("workers", 2)
    t = run["timings"]
    search_v = t["search_merge"] * w0 / n0
    assign_io_v = t["assign"] * w0 / n0
    repl, cap, budget = run["replication"], run["capacity"], run["memory_per_task"]
    c = math.ceil(n * repl / (FILL * cap))
    assign_v = assign_io_v + 2 * c * run["d_search"] / flops
    sample = int(min(n, max(1000, budget // (16 * d)), max(20_000, 200 * c, 4 * d)))
    fit_s = c * matvec_seconds(sample, run["d_search"]) + LLOYD_ITERATIONS * 2 * sample * c * run[
        "d_search"
    ] / flops
    rss = max(run.get("peak_rss_workers_mb") or run["peak_rss_mb"][:w0])
    return {"buckets": c, "search_v": search_v, "assign_io_v": assign_io_v, "assign_v": assign_v,
            "core_h": (search_v + assign_v) * n / 3600, "fit_s": fit_s, "sample": sample, "rss_mb": rss}  # fmt: skip


def project(run: dict, n: int, workers: list[int], flops: float, k: int) -> list[str]:
    e = estimate(run, n, flops)
    d, repl, cap, budget = run["d"], run["replication"], run["capacity"], run["memory_per_task"]
    c, search_v, assign_v, assign_io_v = e["buckets"], e["search_v"], e["assign_v"], e["assign_io_v"]
    core_h, fit_s, sample, rss = e["core_h"], e["fit_s"], e["sample"], e["rss_mb"]
    out = [
        f"N = {n / 1e6:,.0f}M vectors, d = {d}: {c:,} buckets (capacity {cap:,}, replication "
        f"{repl}, memory per task {budget / 2**30:.1f} GiB); vectors on storage "
        f"{n * d * 4 / 2**40:.2f} TiB",
        f"  per vector (one core): search + merge {search_v * 1e3:.2f} ms, assign "
        f"{assign_v * 1e3:.2f} ms ({assign_io_v * 1e3:.2f} ms read + {c:,} centroids); "
        f"total {core_h:,.0f} core-hours, plus the k-means fit {fit_s / 60:,.0f} min in one task "
        f"(sample {sample:,})",
        f"  memory per worker: peak RSS {rss:,.0f} MB measured (any N: buckets are sized by "
        f"the memory per task) -> workers of {math.ceil(rss / 1024 + 0.5)} GiB, 1 thread",
        f"  client of run_mode=2 (distributed): {c * CLIENT_BYTES_PER_BUCKET / 2**20:,.0f} MiB for "
        f"{c:,} buckets over its import baseline (no per-image state; k={k} only on the workers)",
    ]
    for w in workers:
        hours = fit_s / 3600 + core_h / w
        out.append(f"  {w:>4} workers x 1 core: {hours:5.1f} h wall")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", type=Path,
                    default=[HERE / "results" / "knn_partitioned.txt"])  # fmt: skip
    ap.add_argument("--n", type=float, nargs="+", default=[50e6, 400e6])
    ap.add_argument("--workers", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)
    runs = [r for r in load_runs(args.results) if r["variant"] == "full" and "timings" in r]
    if not runs:
        print("no partitioned 'full' run in", [str(p) for p in args.results])
        return 1
    flops = gemm_flops()
    print(f"# projection from {', '.join(str(p) for p in args.results)}")
    print(f"# this machine, one thread: sgemm {flops / 1e9:.1f} GFLOP/s")
    by_d: dict[int, dict] = {}
    for r in runs:
        r.setdefault("workers", 2)
        if r["d"] not in by_d or r["n"] >= by_d[r["d"]]["n"]:  # the latest of equal size
            by_d[r["d"]] = r
    for d, r in sorted(by_d.items(), reverse=True):
        print(f"\nreference: measured N = {r['n']:,}, d = {d}: wall {r['wall_s']} s on "
              f"{r['workers']} workers, stages {r['timings']}, planted-pair recall "
              f"{r['planted_recall']}")  # fmt: skip
        for n in args.n:
            print("\n".join(project(r, int(n), args.workers, flops, args.k)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
