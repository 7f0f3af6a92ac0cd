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

With ``--partitioned`` it measures :func:`dedupdask.knn_partitioned.knn_graph_partitioned`
instead, on a ``LocalCluster`` (``--workers`` processes of one thread, ``--worker-memory``
each): the data are generated straight into per-archive ``.dat`` files plus ``done.json``
(``--archive-rows`` rows each, two processes, no process ever holds all of it) and read back
by the tasks; it prints wall time, the peak RSS of every worker (sampled from the client
with psutil every 50 ms), the client's peak RSS, and recall: planted pairs with cosine >=
``--threshold`` found, and recall@k plus recall of the pairs >= threshold for ``--queries``
rows against exact search (a Dask pass over the archives). With ``--table`` it measures
:func:`dedupdask.knn_partitioned.knn_edges_partitioned` instead -- the graph table stays on
the workers, so the client's peak is that of the kNN stage alone (it also prints the client's
RSS before the call); the recall is computed from the table gathered after the measurement.

Usage::

    python benchmarks/knn.py                 # N = 100k and 1M, d = 1280
    python benchmarks/knn.py --n 20000 --d 256
    python benchmarks/knn.py --partitioned --n 1000000 --variant full --variant d256
    python benchmarks/knn.py --partitioned --n 5000000 --variant d256 --data-dir /data/knn
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rss import RssSampler  # noqa: E402


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


def run_one(args: argparse.Namespace) -> dict:
    from dedupdask.knn import PYNNDESCENT_MIN_NEIGHBORS, nndescent_knn, warm_up

    t = time.perf_counter()
    warm_up()
    jit = time.perf_counter() - t
    t = time.perf_counter()
    x, src, dst = make_data(args.single, args.d, args.sigma, args.clusters_per)
    gen = time.perf_counter() - t
    rss_data = psutil.Process().memory_info().rss / 2**20
    sampler = RssSampler({"self": os.getpid()}, interval=0.02).start()
    t = time.perf_counter()
    idx, sim = nndescent_knn(x, args.k, random_state=42)
    build = time.perf_counter() - t
    build_peak = sampler.stop()["self"]
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


# -- partitioned ---------------------------------------------------------------------------------
VARIANTS = {
    # name: (d_reduce, dtype, method inside the buckets)
    "full": (0, "float32", "pynndescent"),
    "d256": (256, "float32", "pynndescent"),
    "f16": (0, "float16", "pynndescent"),
    "d256-f16": (256, "float16", "pynndescent"),
    "exact": (0, "float32", "exact"),
    "exact-f16": (0, "float16", "exact"),
    "exact-d256": (256, "float32", "exact"),
    "exact-d256-f16": (256, "float16", "exact"),
}


def _archive_block(seed: int, a: int, half: int, rows: int, centres: np.ndarray, sigma: float):
    """Rows of one half (0: first, 1: second) of archive ``a``: deterministic on their own."""
    rng = np.random.default_rng([seed, a, half])
    d = centres.shape[1]
    x = centres[rng.integers(0, centres.shape[0], rows)]
    x += (sigma / np.sqrt(d)) * rng.standard_normal((rows, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _centres(seed: int, n_clusters: int, d: int) -> np.ndarray:
    c = np.random.default_rng([seed, 2**31]).standard_normal((n_clusters, d), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def write_archive(spec: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate archive ``a`` into ``<root>/<a>features.dat`` + done.json; return its planted pairs.

    The archive is clustered unit vectors; 2 % of its second-half rows are replaced by near
    duplicates (noise t in [0.05, 0.75], cosine ~0.8-0.999) of first-half rows of the
    previous archive (regenerated here), so pairs cross archives and no row is both.
    """
    root, a, n_arch, rows, d, sigma, clusters_per, n_total, seed = spec
    from dedupdask.store import WorkDir

    centres = _centres(seed, max(1, n_total // clusters_per), d)
    h = rows // 2
    x = np.concatenate(
        [
            _archive_block(seed, a, 0, h, centres, sigma),
            _archive_block(seed, a, 1, rows - h, centres, sigma),
        ]
    )
    prev = (a - 1) % n_arch
    rng = np.random.default_rng([seed, a, 7])
    n_dup = rows // 50 if n_arch > 1 else 0
    src = np.sort(rng.choice(h, n_dup, replace=False))
    dst = np.sort(h + rng.choice(rows - h, n_dup, replace=False))
    if n_dup:
        base = _archive_block(seed, prev, 0, h, centres, sigma)[src]
        t = rng.uniform(0.05, 0.75, (n_dup, 1)).astype(np.float32)
        dup = base + t * rng.standard_normal((n_dup, d), dtype=np.float32) / np.sqrt(d)
        x[dst] = dup / np.linalg.norm(dup, axis=1, keepdims=True)
        cos = np.einsum("ij,ij->i", base, x[dst])
    else:
        cos = np.empty(0, np.float32)
    wd = WorkDir(root)
    name = f"{a:06d}.tar"
    x.astype("<f4").tofile(wd.file(name, "dat"))
    done = {
        "url": f"synthetic://{name}",
        "status": "done",
        "d": d,
        "model_id": "synthetic",
        "model_sha256": "0" * 64,
        "counts": {"valid": rows, "images": rows},
    }
    wd.write_json(wd.file(name, "done"), done)
    return prev * rows + src, a * rows + dst, cos


def generate(
    root: str,
    n: int,
    d: int,
    rows: int,
    sigma: float,
    clusters_per: int,
    seed: int = 0,
    processes: int = 2,
) -> dict:
    """Write ``n`` vectors as ``n // rows`` archives under ``root`` (reused when complete)."""
    from concurrent.futures import ProcessPoolExecutor

    os.makedirs(root, exist_ok=True)
    meta_path = os.path.join(root, "truth.npz")
    key = dict(n=n, d=d, rows=rows, sigma=sigma, clusters_per=clusters_per, seed=seed)
    if os.path.exists(meta_path):
        z = np.load(meta_path, allow_pickle=False)
        if json.loads(str(z["key"])) == key:
            return {"src": z["src"], "dst": z["dst"], "cos": z["cos"], "generate_s": 0.0}
    n_arch = n // rows
    specs = [(root, a, n_arch, rows, d, sigma, clusters_per, n, seed) for a in range(n_arch)]
    t = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        parts = list(pool.map(write_archive, specs))
    src = np.concatenate([p[0] for p in parts])
    dst = np.concatenate([p[1] for p in parts])
    cos = np.concatenate([p[2] for p in parts])
    np.savez(meta_path, src=src, dst=dst, cos=cos, key=json.dumps(key))
    return {"src": src, "dst": dst, "cos": cos, "generate_s": time.perf_counter() - t}


def _query_block(block, queries: np.ndarray, k: int, threshold: float, offset: int):
    x = block.read()
    s = x @ queries.T  # [rows, Q]
    top = np.argsort(-s, axis=0, kind="stable")[:k]  # per query, best rows of this block
    hit_r, hit_q = np.nonzero(s >= threshold)
    return (
        top.T + offset,
        np.take_along_axis(s, top, axis=0).T,
        np.stack([hit_q, hit_r + offset]),
        s[hit_r, hit_q],
    )


def exact_queries(source, qpos: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, set]:
    """Exact top-k (self excluded) and all pairs >= threshold of the query rows (a Dask pass)."""
    import dask

    queries = source.read(qpos)
    qd = dask.delayed(queries)
    parts = dask.compute(
        [
            dask.delayed(_query_block)(b, qd, k + 1, threshold, int(source.offsets[i]))
            for i, b in enumerate(source.blocks)
        ]
    )[0]
    idx = np.concatenate([p[0] for p in parts], axis=1)
    sim = np.concatenate([p[1] for p in parts], axis=1)
    sim = np.where(idx == qpos[:, None], -np.inf, sim)
    order = np.lexsort((idx, -sim), axis=1)[:, :k]
    top = np.take_along_axis(idx, order, axis=1)
    pairs = set()
    for p in parts:
        for q, r in p[2].T.tolist():
            if r != qpos[q]:
                pairs.add((int(qpos[q]), int(r)))
    return top, pairs


def run_partitioned(args: argparse.Namespace) -> None:
    from distributed import Client, LocalCluster

    from dedupdask.analyses.graph import graph_arrays
    from dedupdask.collect import collect
    from dedupdask.knn import warm_up
    from dedupdask.knn_partitioned import (
        VectorSource,
        knn_edges_partitioned,
        knn_graph_partitioned,
        single_task_bytes,
        task_budget,
    )

    print(
        f"# dedupdask partitioned kNN benchmark: "
        f"{'knn_edges_partitioned' if args.table else 'knn_graph_partitioned'}, d={args.d}, k={args.k}, "
        f"sigma={args.sigma}, {args.workers} worker processes x 1 thread, worker memory limit "
        f"{args.worker_memory}, memory per task {args.memory_per_task or 'auto (from the workers)'}, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    for n in args.n:
        need = single_task_bytes(n, args.d, args.k, "pynndescent")
        print(
            f"N={n:,} d={args.d}: the single-task pynndescent graph would need ~{need / 2**30:.1f} "
            f"GiB in one process (gathered vectors + normalised copy + index, "
            f"dedupdask.knn_partitioned.single_task_bytes); this machine has "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
            flush=True,
        )
        root = os.path.join(args.data_dir, f"n{n}-d{args.d}")
        t = time.perf_counter()
        truth = generate(root, n, args.d, args.archive_rows, args.sigma, args.clusters_per)
        print(
            f"N={n:,} d={args.d}: data {n * args.d * 4 / 2**30:.1f} GiB in {n // args.archive_rows} "
            f"archives under {root} ({time.perf_counter() - t:.0f} s to generate or reuse)",
            flush=True,
        )
        keep = truth["cos"] >= args.threshold
        src, dst = truth["src"][keep], truth["dst"][keep]
        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=args.worker_memory,
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            Client(cluster) as client,
        ):
            col = collect(root, warn=False)
            source = VectorSource.from_collection(col)
            t = time.perf_counter()
            client.run(warm_up)
            jit = time.perf_counter() - t
            rng = np.random.default_rng(1)
            qpos = np.sort(rng.choice(n, size=min(args.queries, n), replace=False))
            t = time.perf_counter()
            exact_top, exact_pairs = exact_queries(source, qpos, args.k, args.threshold)
            t_exact = time.perf_counter() - t
            budget = task_budget(args.memory_per_task)
            for variant in args.variant:
                if variant == "single":
                    out = subprocess.run(
                        [sys.executable, __file__, "--single-dir", root, "--k", str(args.k)],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    if out.returncode:
                        print(
                            f"  single: failed ({out.returncode}) {out.stderr[-1500:]}", flush=True
                        )
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    z = np.load(os.path.join(root, "single-graph.npz"))
                    idx, sim, wall = z["idx"], z["sim"], r["build_s"]
                    peaks = [r["peak_rss_mb"]]
                    info = {
                        "method": "single-task pynndescent (fresh process, 2 threads)",
                        "buckets": 1,
                        "bucket_size_max": n,
                        "replication": 1.0,
                        "timings": {"jit": r["jit_s"], "load": r["load_s"]},
                    }
                else:
                    d_reduce, dtype, method = VARIANTS[variant]
                    pids = list(client.run(os.getpid).values()) + [os.getpid()]
                    opts = dict(
                        max_memory_per_task=args.memory_per_task,
                        d_reduce=d_reduce,
                        dtype=dtype,
                        method=method,
                    )
                    before = psutil.Process().memory_info().rss / 2**20
                    rss = RssSampler(pids).start()
                    t = time.perf_counter()
                    if args.table:
                        graph, info = knn_edges_partitioned(source, args.k, **opts)
                    else:
                        idx, sim, info = knn_graph_partitioned(source, args.k, **opts)
                    wall = time.perf_counter() - t
                    peaks = list(rss.stop().values())
                    info["client_rss_before_mb"] = round(before)
                    if args.table:
                        idx, sim = graph_arrays(graph, np.arange(n), args.k)
                        del graph
                found = (idx[dst] == src[:, None]).any(axis=1) | (idx[src] == dst[:, None]).any(
                    axis=1
                )
                rec_k = float(
                    np.mean(
                        [len(set(idx[q]) & set(exact_top[i])) / args.k for i, q in enumerate(qpos)]
                    )
                )
                # a pair (q, r) >= threshold is found when r is in q's list or q in r's
                q_pairs = exact_pairs
                found_q = sum(1 for q, r in q_pairs if r in idx[q] or q in idx[r])
                hi = truth["cos"][keep] >= 0.9
                mem = (
                    f"peak RSS {peaks[0]:,.0f} MB (one process)"
                    if variant == "single"
                    else f"peak RSS per worker {', '.join(f'{p:,.0f}' for p in peaks[:-1])} MB "
                    f"(memory per task {budget / 2**20:,.0f} MB) | client {peaks[-1]:,.0f} MB "
                    f"(before the call {info['client_rss_before_mb']:,} MB)"
                )
                print(
                    f"  {variant:>15}: wall {wall:7.1f} s (+ JIT {jit:.0f} s once per process) | "
                    f"{mem} | planted pairs >= {args.threshold}: {found.mean():.4f} of "
                    f"{found.size:,} (>= 0.9: {found[hi].mean():.4f}) | queries: "
                    f"recall@{args.k} {rec_k:.4f}, pairs >= {args.threshold} "
                    f"{found_q / max(1, len(q_pairs)):.4f} of {len(q_pairs)} | "
                    f"{info['buckets']} buckets (max {info['bucket_size_max']:,}, "
                    f"{info['replication']} per vector), {info['method']}, "
                    f"stages {info['timings']}",
                    flush=True,
                )
                print(
                    "    "
                    + json.dumps(
                        {
                            "variant": variant,
                            "n": n,
                            "d": args.d,
                            "wall_s": round(wall, 1),
                            "jit_s": round(jit, 1),
                            "exact_queries_s": round(t_exact, 1),
                            "peak_rss_mb": [round(p) for p in peaks],
                            "planted_recall": round(float(found.mean()), 4),
                            "planted_recall_0.9": round(float(found[hi].mean()), 4),
                            "planted_pairs": int(found.size),
                            f"recall@{args.k}": round(rec_k, 4),
                            "query_pairs_recall": round(found_q / max(1, len(q_pairs)), 4),
                            "query_pairs": len(q_pairs),
                            **info,
                        }
                    ),
                    flush=True,
                )


def run_single_dir(root: str, k: int) -> None:
    """Single-task pynndescent on all vectors of ``root`` in this (fresh) process."""
    from dedupdask.collect import collect
    from dedupdask.knn import nndescent_knn, warm_up

    t = time.perf_counter()
    warm_up()
    jit = time.perf_counter() - t
    t = time.perf_counter()
    emb = collect(root, warn=False).embeddings()
    x = np.ascontiguousarray(emb.compute(scheduler="sync"), dtype=np.float32)
    load = time.perf_counter() - t
    sampler = RssSampler({"self": os.getpid()}, interval=0.02).start()
    t = time.perf_counter()
    idx, sim = nndescent_knn(x, k, random_state=42)
    build = time.perf_counter() - t
    peak = sampler.stop()["self"]
    np.savez(os.path.join(root, "single-graph.npz"), idx=idx, sim=sim)
    print(
        json.dumps(
            {
                "jit_s": round(jit, 1),
                "load_s": round(load, 1),
                "build_s": round(build, 1),
                "peak_rss_mb": round(peak),
            }
        ),
        flush=True,
    )


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
    p.add_argument("--single-dir", help=argparse.SUPPRESS)
    p.add_argument("--partitioned", action="store_true", help="measure the partitioned kNN")
    p.add_argument(
        "--table",
        action="store_true",
        help="partitioned: the graph table kept on the workers (knn_edges_partitioned)",
    )
    p.add_argument(
        "--variant",
        action="append",
        choices=[*sorted(VARIANTS), "single"],
        help="partitioned: full, d256, exact, exact-f16, ..., or single (the single-task "
        "pynndescent graph in a fresh process, for comparison); repeatable; default full",
    )
    p.add_argument("--memory-per-task", default=None, help="partitioned: e.g. 2GB (default: auto)")
    p.add_argument("--workers", type=int, default=2, help="partitioned: worker processes")
    p.add_argument("--worker-memory", default="4GiB", help="partitioned: memory limit per worker")
    p.add_argument("--archive-rows", type=int, default=10_000, help="partitioned: rows per archive")
    p.add_argument("--threshold", type=float, default=0.79, help="partitioned: pair threshold")
    p.add_argument("--data-dir", default="/tmp/dedupdask-knn-bench", help="partitioned: data")
    args = p.parse_args(argv)
    if args.single_dir:
        run_single_dir(args.single_dir, args.k)
        return
    if args.partitioned:
        args.variant = args.variant or ["full"]
        run_partitioned(args)
        return
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
