"""The duplicate tiers on the workers (``analyses/tiers_dask.py``) against the in-process tiers.

A synthetic work_dir of ``--n`` images (``scale_build.generate``: vectors, Parquet rows with
exact copies) and a synthetic embedding graph table built on the workers (``k`` neighbours per
exact representative, chosen among the representatives of its own partition of
:data:`ROWS` images, similarities
drawn so that about ``--near`` of the rows are candidate pairs). Copy tier and verification
are off (no ``dct.dat``, no images). Each mode runs in a fresh process:

``frames``
    a LocalCluster (``--workers`` processes of one thread), the group tables from
    ``exact_groups_dask``, then ``run_tiers_frames``; the client's resident memory is sampled
    from a thread during the call (start and peak), the workers' peaks likewise.
``arrays``
    today's in-process path: the tables and the graph gathered here (what ``_build`` holds
    before calling ``run_tiers``), then ``run_tiers``.

Both print the number of decided pairs and edges (they must agree) and the wall time.

Usage::

    python benchmarks/tiers_frames.py --n 200000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

K = 5
ROWS = 100_000  # images per partition of the group tables, hence of the graph


def _graph_rows(part: pd.DataFrame, k: int, near: float, partition_info: dict | None = None) -> pd.DataFrame:
    from dedupdask.analyses.graph import graph_rows

    reps = part["index"].to_numpy(np.int64)[part["index"].to_numpy() == part["rep"].to_numpy()]
    rng = np.random.default_rng([7, partition_info["number"] if partition_info else 0])
    m = reps.size
    if m < 2:
        return graph_rows(reps, np.full((m, k), -1), np.full((m, k), np.nan, np.float32))
    idx = (np.arange(m)[:, None] + rng.integers(1, m, (m, k))) % m  # never self
    sim = np.sort(rng.uniform(0.2, 0.89, (m, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    hot = rng.uniform(size=m) < near
    sim[hot, 0] = rng.uniform(0.9, 1.0, hot.sum()).astype(np.float32)
    return graph_rows(reps, idx, sim, reps)


def _params():
    from dedupdask.analyses.tiers import TierParams

    return TierParams(threshold=0.95, ccthreshold=0.9, copy_threshold=None, verify_threshold=None,
                      verify_score=0.85, verify=False, k=K, early_accept=0.98)  # fmt: skip


def run(mode: str, wd: str, workers: int, memory_limit: str, near: float) -> dict:
    import dask
    import psutil
    from rss import RssSampler

    from dedupdask.analyses.exact_dask import EXACT_KEYS, INPUT_KEYS, exact_groups_dask
    from dedupdask.analyses.graph import empty_graph
    from dedupdask.collect import collect

    me = psutil.Process()
    out: dict = {"mode": mode, "rss_imported_mb": round(me.memory_info().rss / 2**20, 1)}
    col = collect(wd)
    params = _params()
    if mode == "frames":
        from distributed import Client, LocalCluster

        from dedupdask.analyses.tiers_dask import run_tiers_frames

        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                         dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            files = col.files()
            exact = exact_groups_dask(files, col.n, keys=EXACT_KEYS, partition_rows=ROWS).table
            inputs = exact_groups_dask(files, col.n, keys=INPUT_KEYS, partition_rows=ROWS).table
            graph = exact.map_partitions(_graph_rows, K, near, meta=empty_graph(), enforce_metadata=False)
            (graph,) = dask.persist(graph)
            pids = {f"worker{i}": p for i, p in enumerate(client.run(os.getpid).values())}
            out["rss_before_mb"] = round(me.memory_info().rss / 2**20, 1)
            t0 = time.perf_counter()
            with RssSampler({"client": os.getpid(), **pids}, interval=0.02) as rss:
                t = run_tiers_frames(col, files, exact, inputs, graph, params)
                n_dec = int(t.decided.shape[0].compute())
                n_edges = int(t.edges.shape[0].compute())
            out["seconds"] = round(time.perf_counter() - t0, 2)
            out["peak_mb"] = rss.peak_mb()
    else:
        from dedupdask.analyses.exact import ExactGroups
        from dedupdask.analyses.graph import graph_arrays
        from dedupdask.fusion import run_tiers
        from dedupdask.scheduler import gather_frames

        with dask.config.set(scheduler="sync"):
            files_dd = col.files()
            exact = exact_groups_dask(files_dd, col.n, keys=EXACT_KEYS, partition_rows=ROWS).table
            inputs = exact_groups_dask(files_dd, col.n, keys=INPUT_KEYS, partition_rows=ROWS).table
            graph = exact.map_partitions(_graph_rows, K, near, meta=empty_graph(), enforce_metadata=False)
            e, i, g = gather_frames(exact["rep"], inputs["rep"], graph)
        groups, ins = ExactGroups(e.to_numpy(np.int64)), ExactGroups(i.to_numpy(np.int64))
        reps = groups.reps
        idx, sim = graph_arrays(g, reps, K)
        del g
        files = col.files_frame(["archive", "member", "index", "member_offset", "file_size"])
        out["rss_before_mb"] = round(me.memory_info().rss / 2**20, 1)
        t0 = time.perf_counter()
        with dask.config.set(scheduler="threads"), RssSampler({"client": os.getpid()}, interval=0.02) as rss:
            t = run_tiers(col, groups, reps, (idx, sim), params, files, input_groups=ins)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        out["peak_mb"] = rss.peak_mb()
        n_dec, n_edges = len(t.decided), len(t.edges[0])
    out.update(decided=n_dec, edges=n_edges, counts=t.counts)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[200_000])
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--archives-per-million", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="3GiB")
    p.add_argument("--near", type=float, default=0.02, help="share of representatives with a candidate pair")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "dedupdask-tiers-frames"))
    p.add_argument("--mode", choices=["frames", "arrays"], help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.mode:  # one measurement, in this fresh process
        print(json.dumps(run(a.mode, a.work_dir, a.workers, a.memory_limit, a.near)))
        return
    from scale_build import generate

    for n in a.n:
        wd = os.path.join(a.data_dir, f"n{n}")
        generate(wd, n, a.d, max(2, n * a.archives_per_million // 1_000_000))
        for mode in ("arrays", "frames"):
            cmd = [sys.executable, __file__, "--mode", mode, "--work-dir", wd, "--workers", str(a.workers),
                   "--memory-limit", a.memory_limit, "--near", str(a.near)]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            print(f"n={n}", res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
