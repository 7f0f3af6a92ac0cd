"""kNN stage, partitioned, as a graph table: no per-image state on the calling process.

The bucket memberships, the splits of oversized buckets and the merged neighbour lists stay
on the workers (issue 17); the graph comes back as the table of
:mod:`dedupdask.analyses.graph`. Checked here: the table is the exact graph among each row's
bucket mates (the buckets recorded while searching), in global indices of archives with
offsets and a subset of rows; nothing the size of the data is computed to this process;
the same table on a LocalCluster as on the sync scheduler; and through a work_dir.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
from test_knn_partitioned import planted

from dedupdask import knn_buckets
from dedupdask import knn_partitioned as kp
from dedupdask.analyses.graph import GRAPH_COLUMNS, graph_arrays, graph_frame
from dedupdask.knn_partitioned import VectorBlock, VectorSource, knn_edges_partitioned
from dedupdask.store import WorkDir

K = 3
PER_ARCHIVE = 1000
GAP = 37  # global indices of archive i start at i * (PER_ARCHIVE + GAP): not positions


@pytest.fixture(autouse=True)
def fixed_local_workers(monkeypatch):
    """Row ranges follow the number of worker threads: the same on every machine."""
    real = kp._n_workers
    monkeypatch.setattr(kp, "_n_workers", lambda: real() if kp._cluster_workers() else 2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 archives of 1000 rows; every 7th row of each is not taking part (an exact duplicate,
    say); archive i's row r has global index ``i * (1000 + GAP) + r``."""
    x, _ = planted(6 * PER_ARCHIVE, 32, seed=5)
    wd = WorkDir(str(tmp_path_factory.mktemp("knn_edges")))
    blocks, reps, rows_of = [], [], []
    for i in range(6):
        path = wd.join(f"{i:05d}.dat")
        x[i * PER_ARCHIVE : (i + 1) * PER_ARCHIVE].astype("<f4").tofile(path)
        rows = np.flatnonzero(np.arange(PER_ARCHIVE) % 7 != 3)
        offset = i * (PER_ARCHIVE + GAP)
        blocks.append(VectorBlock(wd, path, 32, PER_ARCHIVE, rows, offset=offset))
        reps.append(offset + rows)
        rows_of.append(i * PER_ARCHIVE + rows)
    source = VectorSource(tuple(blocks), 32)
    return x[np.concatenate(rows_of)], source, np.concatenate(reps)


def _check_contract(graph: Any, reps: np.ndarray) -> pd.DataFrame:
    """The graph-table contract of dedupdask.analyses.graph; returns the table."""
    assert tuple(graph.columns) == GRAPH_COLUMNS
    parts = [p for p in dask.compute(*graph.to_delayed()) if len(p)]
    assert parts
    for p in parts:
        assert p.dtypes.astype(str).tolist() == ["int64", "int64", "float32", "int16"]
        key = p["from"].to_numpy() * 100 + p["rank"].to_numpy()
        assert (np.diff(key) > 0).all(), "not sorted by from, then rank"
    assert all(a["from"].max() < b["from"].min() for a, b in zip(parts, parts[1:], strict=False))
    table = pd.concat(parts, ignore_index=True)
    assert (table["from"] != table["to"]).all() and table["to"].isin(reps).all()
    assert table["from"].isin(reps).all()
    first = table.groupby("from")["rank"].agg(["min", "max", "size"])
    assert (first["min"] == 0).all() and (first["max"] == first["size"] - 1).all()
    return table


def _expected(x: np.ndarray, buckets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best K among the members of its buckets (ties by position)."""
    n = x.shape[0]
    mates: list[list[np.ndarray]] = [[] for _ in range(n)]
    for b in buckets:
        for r in b.tolist():
            mates[r].append(b)
    idx = np.full((n, K), -1, np.int64)
    sim = np.full((n, K), np.nan, np.float32)
    for r in range(n):
        cand = np.unique(np.concatenate(mates[r]))
        cand = cand[cand != r]
        s = x[cand] @ x[r]
        order = np.lexsort((cand, -s))[:K]
        idx[r, : order.size], sim[r, : order.size] = cand[order], s[order]
    return idx, sim


@pytest.mark.parametrize("dtype,fill", [("float32", None), ("float16", None), ("float32", 4.0)])
def test_table_is_the_exact_graph_among_bucket_mates(data, monkeypatch, dtype, fill):
    """Sync scheduler: the table equals graph_frame of each row's exact best K among its
    bucket mates (recorded as they are searched), in global indices; with oversized
    buckets split (fill 4) and with float16 search re-scored on the originals."""
    x, source, reps = data
    if fill:
        monkeypatch.setattr(kp, "FILL", fill)
    searched: list[np.ndarray] = []
    search = knn_buckets._search_bucket
    monkeypatch.setattr(
        knn_buckets,
        "_search_bucket",
        lambda s, o, p, members, *a: (
            searched.append(members.copy()) or search(s, o, p, members, *a)
        ),
    )
    with dask.config.set(scheduler="sync"):
        graph, info = knn_edges_partitioned(
            source, K, max_memory_per_task="3MB", method="exact", dtype=dtype
        )
        table = _check_contract(graph, reps)
        assert graph.npartitions == info["row_ranges"] > 1
        assert info["buckets"] == len(searched) >= 4 and info["edges"] == len(table)
        assert info["split_buckets"] > 0 or not fill
        idx, sim = _expected(x, searched)
        want = graph_frame(reps, idx, sim).compute().reset_index(drop=True)
    pd.testing.assert_frame_equal(table[["from", "to", "rank"]], want[["from", "to", "rank"]])
    assert np.allclose(table["similarity"], want["similarity"], atol=2e-6)
    # the array form is the same graph
    with dask.config.set(scheduler="sync"):
        a_idx, a_sim, _ = kp.knn_graph_partitioned(
            source, K, max_memory_per_task="3MB", method="exact", dtype=dtype
        )
        f_idx, f_sim = graph_arrays(graph, reps, K)
    assert np.array_equal(a_idx, f_idx) and np.array_equal(a_sim, f_sim, equal_nan=True)


def _largest(obj: Any) -> int:
    """Rows of the largest array / frame / sequence in a computed result."""
    if isinstance(obj, (np.ndarray, pd.DataFrame, pd.Series)):
        return len(obj) if getattr(obj, "ndim", 1) else 1
    if isinstance(obj, (list, tuple)):
        return max([len(obj)] + [_largest(o) for o in obj])
    if isinstance(obj, dict):
        return max([0] + [_largest(o) for o in obj.values()])
    return 1


def _record_gathers(monkeypatch) -> list[int]:
    """Every ``dask.compute`` / ``.compute()`` here: the largest thing it brought back."""
    seen: list[int] = []
    real = dask.base.compute

    def compute(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(_largest(out))
        return out

    monkeypatch.setattr(dask, "compute", compute)
    monkeypatch.setattr(dask.base, "compute", compute)
    return seen


def test_nothing_per_image_is_computed_here(data, monkeypatch):
    """Issue 17: the assignment (n x m labels), bucket members and merged n x k lists used to
    be computed to this process; now only sizes (one per bucket / row range) and the fitted
    centroids come back -- far fewer rows than images. (The old code brought back every
    archive's n x 4 labels, the split buckets' members and each range's merged n x k lists.)"""
    x, source, reps = data
    seen = _record_gathers(monkeypatch)
    with dask.config.set(scheduler="sync"):
        graph, info = knn_edges_partitioned(
            source, K, max_memory_per_task="3MB", method="exact", dtype="float16"
        )
    assert info["kmeans_levels"] == 1  # (a two-level fit brings back its sample's coarse cells)
    small = max(info["buckets"], info["centroids"], info["row_ranges"])
    assert seen and max(seen) <= small < source.n / 20
    assert info["replication"] >= 2.0  # the n * m memberships were there, on the "workers"


def test_same_table_on_a_local_cluster(data, monkeypatch):
    """Real worker processes (p2p shuffle of the memberships, persisted member lists and
    merged ranges): the same table as on the sync scheduler, and nothing per image gathered."""
    from distributed import Client, LocalCluster

    x, source, reps = data
    opts = dict(max_memory_per_task="3MB", method="exact", random_state=3)
    with dask.config.set(scheduler="sync"):
        graph, info = knn_edges_partitioned(source, K, **opts)
        want = graph.compute().reset_index(drop=True)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        seen = _record_gathers(monkeypatch)
        graph, cinfo = knn_edges_partitioned(source, K, **opts)
        assert max(seen) < source.n / 20
        monkeypatch.undo()
        got = graph.compute().reset_index(drop=True)
    assert cinfo["buckets"] == info["buckets"] and cinfo["centroids"] == info["centroids"]
    pd.testing.assert_frame_equal(got, want)


def test_frame_through_a_work_dir(tmp_path):
    """knn_graph_frame_work_dir: partitioned (a small max_memory_per_task) and single-task,
    over a subset of rows, is graph_frame of knn_graph_work_dir's arrays."""
    from dataclasses import replace

    from test_analysis import CFG, make_dataset, write_dataset

    from dedupdask.collect import collect

    ds = make_dataset(n=1500, n_archives=4, seed=2)
    write_dataset(str(tmp_path), ds)
    col = collect(str(tmp_path))
    reps = np.flatnonzero(np.arange(col.n) % 5 != 1)
    with dask.config.set(scheduler="sync"):
        for cfg, kind in [
            (replace(CFG, max_memory_per_task="2MB"), "partitioned-exact"),
            (CFG, "exact"),
        ]:
            graph, used, info = kp.knn_graph_frame_work_dir(
                col, reps, K, config=cfg, method="exact"
            )
            idx, sim, used2, _ = kp.knn_graph_work_dir(col, reps, K, config=cfg, method="exact")
            assert used == used2 == kind
            got = graph.compute().reset_index(drop=True)
            want = graph_frame(reps, idx, sim).compute().reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want)
            assert set(got["from"]) <= set(reps.tolist()) and len(got) > 0


def test_representatives_as_a_dask_series(tmp_path, monkeypatch):
    """reps as a Dask Series (partitioned unlike the archives): the assign tasks get their
    archive's rows by a shuffle, nothing per image is computed here, and the graph is that of
    the same rows given as an array (same similarities; the k-means sample, drawn from
    every row, may move a few boundary pairs)."""
    from dataclasses import replace

    import dask.dataframe as dd
    from test_analysis import CFG, make_dataset, write_dataset

    from dedupdask.collect import collect

    ds = make_dataset(n=1500, n_archives=4, seed=2)
    write_dataset(str(tmp_path), ds)
    col = collect(str(tmp_path))
    reps = np.flatnonzero(np.arange(col.n) % 5 != 1)
    lazy = dd.from_pandas(pd.Series(reps[::-1].copy()), npartitions=3)
    cfg = replace(CFG, max_memory_per_task="2MB")
    with dask.config.set(scheduler="sync"):
        want, _, _ = kp.knn_graph_frame_work_dir(col, reps, K, config=cfg, method="exact")
        want = want.compute()
        seen = _record_gathers(monkeypatch)
        graph, used, info = kp.knn_graph_frame_work_dir(col, lazy, K, config=cfg, method="exact")
        assert used == "partitioned-exact" and max(seen) < reps.size / 20
        monkeypatch.undo()
        got = _check_contract(graph, reps)
        idx, sim, _, _ = kp.knn_graph_work_dir(col, lazy, K, config=cfg, method="exact")
    assert info["replication"] * len(reps) == pytest.approx(
        info["bucket_size_mean"] * info["buckets"], rel=0.01
    )
    pairs = got.merge(want, on=["from", "to"], suffixes=("", "_a"))
    assert len(pairs) >= 0.97 * len(want)
    assert np.allclose(pairs["similarity"], pairs["similarity_a"], atol=2e-6)
    assert np.array_equal(graph_arrays(got, reps, K)[0], idx)
    # the single-task path takes a Dask Series too
    with dask.config.set(scheduler="sync"):
        single, used, _ = kp.knn_graph_frame_work_dir(col, lazy, K, config=CFG, method="exact")
        assert used == "exact"
        _check_contract(single, reps)
