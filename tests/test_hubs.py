"""Hubs on the workers: an image that every neighbour list or pair points to stays one row per partition.

kNN graphs in high dimension have hubs (a few images in a large share of all neighbour
lists; measured at 1M images: the 3,000 real images of ``benchmarks/scale_build.py
--real-subset`` sat in the synthetic images' lists and one worker reached 2.6 GB of its
4 GiB while routing the graph by neighbour), and web data has placeholder pictures copied
millions of times. Every exchange between partitions here must cost a hub one message per
sending partition, never one per row; the largest DataFrame any task returns is bounded by
a partition, whatever the hub's degree. Each case also checks the values against the
in-memory function.
"""

from __future__ import annotations

import functools

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from test_components_dask import _Rows  # the largest DataFrame any task returns

from dedupdask.analyses import groups_dask
from dedupdask.analyses.components_dask import components_table_dask
from dedupdask.analyses.exact import ExactGroups
from dedupdask.analyses.graph import graph_frame
from dedupdask.analyses.groups import outlier_groups
from dedupdask.analyses.issues import best_partners, pair_ends
from dedupdask.analyses.issues_dask import duplicate_frame
from dedupdask.analyses.routing import NODE, ask


@pytest.fixture
def sync():
    with dask.config.set(scheduler="sync"):
        yield


def test_ask_sends_one_request_per_key_and_partition(sync):
    """8 partitions of 2,000 rows that all point at node 0, table of 16,000 nodes."""
    n, parts, rows = 16_000, 8, 2_000
    rng = np.random.default_rng(3)
    table = pd.DataFrame({"g": rng.integers(0, 10**9, n)}, index=pd.Index(np.arange(n), name=NODE))
    t = dd.from_pandas(table, npartitions=parts, sort=True)
    other = rng.integers(0, n, n)
    frame = pd.DataFrame({"to": np.zeros(n, np.int64), "from": np.arange(n), "x": other})
    f = dd.from_pandas(frame, npartitions=parts, sort=False)
    with _Rows() as seen:
        (res,) = dask.persist(ask(f, t, "g", {"to": "g_to", "x": "g_x"}))  # not the final concat
    got = res.compute()
    assert got["g_to"].eq(table["g"].iloc[0]).all()
    np.testing.assert_array_equal(got["g_x"].to_numpy(), table["g"].to_numpy()[other])
    np.testing.assert_array_equal(got["from"].to_numpy(), np.arange(n))  # rows stay in place, in order
    # a partition's distinct keys (~1,600 of 2,000 random ones, plus the hub), never the 16,000 rows at node 0
    assert seen.max_rows <= rows + parts, (seen.max_rows, seen.key)


def test_outlier_groups_of_a_hub_graph(sync, monkeypatch):
    """Every image lists image 0 first: the groups and nearest images of the in-memory path,
    and no task sees the hub's 12,000 in-edges at once."""
    n, parts, k = 12_000, 8, 3
    rng = np.random.default_rng(5)
    reps = np.arange(n)
    idx = np.stack([np.zeros(n, np.int64), (reps + 1) % n, rng.integers(1, n, n)], axis=1)
    idx[0] = [1, 2, 3]
    sim = np.sort(rng.uniform(0.2, 0.95, (n, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    ties = idx[:, 1] == idx[:, 2]  # no repeated neighbour in a list
    idx[ties, 2] = (idx[ties, 2] + 7) % n
    idx[idx[:, 2] == reps, 2] = (reps[idx[:, 2] == reps] + 2) % n
    exact = pd.DataFrame({"index": reps, "rep": reps, "group_size": np.ones(n, np.int64)})
    ex = dd.from_pandas(exact, npartitions=parts, sort=True)  # divisions of the RangeIndex = of "index"
    # the groups' table partitioned like the exact table (as exact_groups_dask makes both)
    monkeypatch.setattr(groups_dask, "components_table_dask",
                        functools.partial(components_table_dask, partition_rows=n // parts))  # fmt: skip
    graph = graph_frame(reps, idx, sim, partition_rows=n * k // parts)
    with _Rows() as seen:
        og, searched, unsearched = groups_dask.outlier_frame(
            None, ex, graph, None, n, k, link=0.9, max_size=10, below=None, search=False, max_searched=0
        )  # persisted
    got = og.compute().sort_values("index")
    exp = outlier_groups(ExactGroups(reps.copy()), reps, idx, sim, link=0.9, max_size=10)
    for col in ("group", "size", "pictures", "nearest"):
        np.testing.assert_array_equal(got[col].to_numpy(), getattr(exp, col), err_msg=col)
    np.testing.assert_allclose(got["similarity"].to_numpy(), exp.similarity, rtol=0, atol=0)
    assert (searched, unsearched) == (0, 0)
    assert seen.max_rows <= 2 * n * k // parts, (seen.max_rows, seen.key)


def test_duplicate_issues_of_a_placeholder(sync):
    """Image 0 is exactly copied 9,999 times (pairs in 8 partitions): its duplicate issue
    row names its best partner, and no task holds its 9,999 pair ends."""
    n, parts = 10_000, 8
    sim = pd.DataFrame({"from": np.zeros(n - 1, np.int64), "to": np.arange(1, n),
                        "similarity": np.ones(n - 1), "kind": pd.array(["exact"] * (n - 1), dtype="string")})  # fmt: skip
    s = dd.from_pandas(sim, npartitions=parts, sort=False)
    with _Rows() as seen:
        (res,) = dask.persist(duplicate_frame(s, tuple(np.linspace(0, n - 1, parts + 1).astype(int))))
    got = res.compute()
    exp = best_partners(pair_ends(sim))
    got = got.sort_values("index").reset_index(drop=True)
    assert got["index"].tolist() == exp["index"].tolist() and got["other"].tolist() == exp["other"].tolist()
    assert got.loc[got["index"] == 0, "other"].tolist() == [1]
    assert seen.max_rows <= 2 * n // parts + parts, (seen.max_rows, seen.key)


def test_names_of_a_placeholder(sync):
    """9,999 pairs name image 0: every row gets both ends' names, rows stay where they were,
    and no task holds the 9,999 rows at image 0's archive."""
    from dedupdask.analyses.names import PAIR_NAMES
    from dedupdask.analyses.names_dask import NAMES, join_names

    n, parts = 10_000, 8
    idx = np.arange(n)
    names = pd.DataFrame({c: pd.array([f"{c}{i}" for i in idx], dtype="string") for c in NAMES},
                         index=pd.Index(idx, name="index"))  # fmt: skip
    nf = dd.from_pandas(names, npartitions=parts, sort=True)
    pairs = pd.DataFrame({"from": np.zeros(n, np.int64), "to": np.r_[np.arange(1, n), -1]})
    t = dd.from_pandas(pairs, npartitions=parts, sort=False)
    with _Rows() as seen:
        (res,) = dask.persist(join_names(t, nf, PAIR_NAMES, filename={"from": "filename_from"}))
    got = res.compute()
    np.testing.assert_array_equal(got["to"].to_numpy(), pairs["to"].to_numpy())  # same rows, same order
    assert got["filename_from"].eq("filename0").all() and got["key_from"].eq("key0").all()
    assert got["key_to"].iloc[:-1].tolist() == [f"key{i}" for i in range(1, n)]
    assert got["key_to"].isna().tolist() == [False] * (n - 1) + [True]  # -1 names no image
    assert seen.max_rows <= 2 * n // parts + parts, (seen.max_rows, seen.key)
