"""Benchmark: connected components on the workers (``components_table_dask``) as N grows.

Usage::

    python benchmarks/scale_components.py                       # N = 1M and 5M
    python benchmarks/scale_components.py --n 1000000 5000000 10000000 --check-max 1000000
    python benchmarks/scale_components.py --n 200000 --workers 2 --memory-limit 2GiB
    python benchmarks/scale_components.py --exact --n 1000000    # exact_groups_dask instead

For each N a fresh process starts a ``LocalCluster`` of ``--workers`` one-thread worker
processes on 127.0.0.1 (``--memory-limit`` each; the scheduler runs in the client process,
as with every LocalCluster), generates a synthetic kNN-like edge list **on the workers**
(``dd.from_map``, ``--edge-rows`` source nodes per partition, nothing on the client) and runs
:func:`dedupdask.analyses.components_dask.components_dask` on it. A thread samples the
resident memory of the client and of every worker process with psutil every 50 ms, from
outside the tasks. Printed per N: edges, partitions, iterations, wall time, the client's RSS
after start-up (imports + cluster) and its peak, each worker's peak, and the machine's load
average before and after (wall times on a shared machine vary with it).

The graph (about 1.8 edges per node): nodes ``x, x+G, x+2G, ...`` (``G = N/8``, so members
lie far apart in id order and in different partitions) form planted groups of eight, each
linked to its successor and predecessor as a kNN graph lists both directions (5 % of the
links dropped, so some groups split); 8 % of nodes get one random long-range edge, in both
directions (groups then join into components of every size up to one of a few hundred
thousand nodes per million: the skewed case); every 1000th node is chained to the next one
(a path of N/1000 nodes: the long-diameter case); a few self-loops. For N <= ``--check-max`` the table is then gathered (outside the measured window)
and compared with scipy's ``connected_components`` on the same edges, relabelled to the
smallest index.

``--exact`` measures :func:`dedupdask.analyses.exact_dask.exact_groups_dask` instead, on
per-archive-like rows (``index, md5, pixel_md5``, see :func:`make_files`) generated on the
workers, compared with :func:`dedupdask.analyses.exact.exact_groups` on the gathered rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rss import RssSampler  # noqa: E402

GROUP = 8
RANDOM_EDGE = 0.08
DROP = 0.05
CHAIN = 1000


def make_edges(bounds: tuple[int, int, int, int]) -> pd.DataFrame:
    """The edges whose source is in ``[lo, hi)`` (runs on a worker)."""
    lo, hi, n, seed = bounds
    rng = np.random.default_rng([seed, lo])
    x = np.arange(lo, hi, dtype=np.int64)
    g = max(n // GROUP, 1)
    parts_a, parts_b = [], []
    for step in (g, -g):  # successor and predecessor in the planted group
        y = x + step
        ok = (y >= 0) & (y < n) & (rng.random(x.size) >= DROP)
        parts_a.append(x[ok])
        parts_b.append(y[ok])
    far = rng.random(x.size) < RANDOM_EDGE
    other = rng.integers(0, n, int(far.sum()), dtype=np.int64)
    parts_a += [x[far], other]  # listed in both directions, as in a kNN graph
    parts_b += [other, x[far]]
    chain = x[(x % CHAIN == 0) & (x + CHAIN < n)]
    parts_a.append(chain)
    parts_b.append(chain + CHAIN)
    loops = x[rng.random(x.size) < 0.001]
    parts_a.append(loops)
    parts_b.append(loops)
    return pd.DataFrame({"from": np.concatenate(parts_a), "to": np.concatenate(parts_b)})


def make_files(bounds: tuple[int, int, int, int]) -> pd.DataFrame:
    """Per-archive-like rows ``index, md5, pixel_md5`` of images ``[lo, hi)`` (runs on a worker).

    Planted: byte copies half the id space apart (every 10th image and the one N/2 later);
    pixel copies: 1,000 keys shared by every 10th image (offset 5), a placeholder picture
    (every 1000th image, offset 7); chains: 5 % of the byte copies also share the pixel key
    of a pixel group. 1 % of the md5 null, 1 % of the pixel keys empty, and every 500th row
    an extra invalid member (null index, same placeholder bytes), as the Parquet files hold.
    """
    lo, hi, n, seed = bounds
    x = np.arange(lo, hi, dtype=np.int64)
    rng = np.random.default_rng([seed, lo, 1])
    half = max(n // 2, 1)

    def keys(prefix: str, v: np.ndarray) -> np.ndarray:
        return np.array([f"{prefix}{i}" for i in v.tolist()], dtype=object)

    md5 = keys("m", np.where(x % 10 == 0, x % half, x))
    pix = keys("p", x)
    group = x % 10 == 5
    pix[group] = keys("q", (x[group] // 10) % 1000)
    pix[x % 1000 == 7] = "placeholder"
    chain = (x % 10 == 0) & (rng.random(x.size) < 0.05)
    pix[chain] = keys("q", (x[chain] // 10) % 1000)
    md5[rng.random(x.size) < 0.01] = None
    pix[rng.random(x.size) < 0.01] = ""
    rows = pd.DataFrame({"index": pd.array(x, "Int64"), "md5": md5, "pixel_md5": pix})
    k = int((x % 500 == 3).sum())
    invalid = pd.DataFrame(
        {"index": pd.array([None] * k, "Int64"), "md5": ["placeholder-bytes"] * k,
         "pixel_md5": [None] * k}
    )
    both = pd.concat([rows, invalid], ignore_index=True)
    return both.astype({"md5": "string", "pixel_md5": "string"})


def _specs(n: int, edge_rows: int, seed: int) -> list[tuple[int, int, int, int]]:
    return [(lo, min(lo + edge_rows, n), n, seed) for lo in range(0, n, edge_rows)]


def scipy_reference(n: int, specs: list) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = pd.concat([make_edges(s) for s in specs], ignore_index=True)
    a, b = e["from"].to_numpy(), e["to"].to_numpy()
    graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    return first[labels], np.bincount(labels)[labels]


def exact_reference(n: int, specs: list) -> tuple[np.ndarray, np.ndarray]:
    from dedupdask.analyses.exact import exact_groups

    rows = pd.concat([make_files(s) for s in specs], ignore_index=True)
    valid = rows[rows["index"].notna()].sort_values("index")
    g = exact_groups(valid["md5"], valid["pixel_md5"])
    return g.rep, g.size[g.rep]


def one(args: argparse.Namespace) -> dict:
    """Measure one N in this (fresh) process."""
    import dask.dataframe as dd
    import psutil
    from distributed import wait

    from dedupdask.analyses.components_dask import components_table_dask
    from dedupdask.analyses.exact_dask import exact_groups_dask
    from dedupdask.localcluster import local_cluster

    n = args.one
    specs = _specs(n, args.edge_rows, args.seed)
    meta = pd.DataFrame({"from": np.int64(0), "to": np.int64(0)}, index=[])
    out: dict = {"n": n, "workers": args.workers, "memory_limit": args.memory_limit,
                 "what": "exact_groups_dask" if args.exact else "components_table_dask"}
    with local_cluster(
        args.workers, dashboard_address=None, memory_limit=args.memory_limit,
        silence_logs=logging.ERROR,
    ) as client:
        pids = {"client": os.getpid()}
        for i, pid in enumerate(sorted(client.run(os.getpid).values())):
            pids[f"worker{i}"] = pid
        if args.exact:
            edges = dd.from_map(make_files, specs, meta=make_files((0, 0, 1, 0)), label="bench-files",
                                enforce_metadata=False)
        else:
            edges = dd.from_map(make_edges, specs, meta=meta, label="bench-edges",
                                enforce_metadata=False)
        out["client_start_mb"] = psutil.Process().memory_info().rss / 2**20
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with RssSampler(pids) as s:
            if args.exact:
                res = exact_groups_dask(edges, n, partition_rows=args.partition_rows)
                table = res.table.rename(columns={"rep": "component_id", "group_size": "component_size"})
            else:
                res = components_table_dask(edges, n, partition_rows=args.partition_rows)
                table = res.table
            wait(res.table)
            t1 = time.perf_counter()
            stats = table.map_partitions(
                lambda t: pd.DataFrame(
                    {"components": [int((t["component_id"] == t["index"]).sum())],
                     "largest": [int(t["component_size"].max()) if len(t) else 0]}
                ),
                meta=pd.DataFrame({"components": np.int64(0), "largest": np.int64(0)}, index=[]),
            ).compute()
            n_edges = int(edges.map_partitions(len).sum().compute())
        out.update(
            edges=n_edges,
            edge_partitions=len(specs),
            node_partitions=res.table.npartitions,
            iterations=res.iterations,
            changed_per_iteration=list(res.changed),
            wall_s=round(t1 - t0, 1),
            components=int(stats["components"].sum()),
            largest_component=int(stats["largest"].max()),
            peak_mb={k: round(v / 2**20) for k, v in s.peak.items()},
            load_avg=[round(load0, 1), round(os.getloadavg()[0], 1)],
        )
        if n <= args.check_max:
            got = table.compute()
            comp, size = (exact_reference if args.exact else scipy_reference)(n, specs)
            out["equals_scipy"] = bool(
                np.array_equal(got["index"].to_numpy(), np.arange(n))
                and np.array_equal(got["component_id"].to_numpy(), comp)
                and np.array_equal(got["component_size"].to_numpy(), size)
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000, 5_000_000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--edge-rows", type=int, default=250_000, help="source nodes per edge partition")
    p.add_argument("--partition-rows", type=int, default=250_000, help="nodes per node partition")
    p.add_argument("--check-max", type=int, default=1_000_000, help="compare with scipy up to this N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact", action="store_true",
                   help="exact_groups_dask on synthetic md5/pixel_md5 rows instead")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args)), flush=True)
        return
    what = "exact_groups_dask (md5/pixel_md5 rows)" if args.exact else "components_table_dask"
    print(
        f"# {what} on a LocalCluster: {args.workers} worker processes x 1 thread, "
        f"memory limit {args.memory_limit}, {os.cpu_count()} cores; edge partitions of "
        f"{args.edge_rows:,} source nodes, node partitions of {args.partition_rows:,}; "
        "RSS sampled every 50 ms from outside (client = benchmark process incl. the scheduler)",
        flush=True,
    )
    for n in args.n:
        cmd = [
            sys.executable, __file__, "--one", str(n), "--workers", str(args.workers),
            "--memory-limit", args.memory_limit, "--edge-rows", str(args.edge_rows),
            "--partition-rows", str(args.partition_rows), "--check-max", str(args.check_max),
            "--seed", str(args.seed),
        ] + (["--exact"] if args.exact else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"N={n:>12,}: failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
            continue
        line = proc.stdout.strip()
        r = json.loads(line.splitlines()[-1])
        peaks = r["peak_mb"]
        workers = ", ".join(f"{v:,}" for k, v in peaks.items() if k.startswith("worker"))
        ref = "exact_groups" if args.exact else "scipy"
        check = {True: f"equals {ref}", False: f"DIFFERS FROM {ref}", None: "not checked"}[
            r.get("equals_scipy")
        ]
        unit = "rows" if args.exact else "edges"
        print(
            f"N={n:>12,}: {r['edges']:,} {unit} in {r['edge_partitions']} partitions, "
            f"{r['node_partitions']} node partitions | {r['iterations']} iterations, "
            f"{r['wall_s']:.1f} s ({r['wall_s'] / max(r['iterations'], 1):.1f} s/iteration) | "
            f"client {r['client_start_mb']:,.0f} MB after start, peak {peaks['client']:,} MB | "
            f"worker peaks {workers} MB | {r['components']:,} components, largest "
            f"{r['largest_component']:,} | {check} | load average {r['load_avg'][0]} -> "
            f"{r['load_avg'][1]}",
            flush=True,
        )
        print("    " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
