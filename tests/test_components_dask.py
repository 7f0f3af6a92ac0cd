"""Connected components and exact groups on Dask DataFrames, checked against the in-memory ones.

The reference is today's :func:`components_table` (scipy's csgraph on the gathered graph,
relabelled to the smallest index) and :func:`exact_groups`. Every case runs with the
synchronous scheduler; a LocalCluster of two worker processes runs the distributed ones.
"""

from __future__ import annotations

import logging
import math

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.callbacks import Callback
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedupdask.analyses.components import COMPONENT_COLUMNS, components_table
from dedupdask.analyses.components_dask import components_table_dask
from dedupdask.analyses.exact import ExactGroups, exact_groups
from dedupdask.analyses.exact_dask import EXACT_COLUMNS, exact_edges, exact_groups_dask
from dedupdask.analyses.routing import shuffle_method


@pytest.fixture
def sync():
    with dask.config.set(scheduler="sync"):
        yield


def reference(n: int, a, b) -> pd.DataFrame:
    """Today's table: components_table with no exact groups and the given edges."""
    return components_table(
        ExactGroups(np.arange(n, dtype=np.int64)),
        np.arange(n),
        np.zeros((n, 0), np.int64),
        np.zeros((n, 0), np.float32),
        0.0,
        edges=(np.asarray(a, np.int64), np.asarray(b, np.int64)),
    )


def edge_frame(a, b, npartitions: int) -> dd.DataFrame:
    df = pd.DataFrame({"from": np.asarray(a, np.int64), "to": np.asarray(b, np.int64)})
    return dd.from_pandas(df, npartitions=max(1, npartitions), sort=False)


def run(n: int, a, b, *, npartitions: int = 2, partition_rows: int = 1000):
    res = components_table_dask(edge_frame(a, b, npartitions), n, partition_rows=partition_rows)
    return res, res.table.compute()


def assert_same(got: pd.DataFrame, n: int, a, b) -> None:
    exp = reference(n, a, b)
    assert list(got.columns) == list(COMPONENT_COLUMNS)
    assert got.dtypes.tolist() == [np.dtype(np.int64)] * 3
    np.testing.assert_array_equal(got.to_numpy(), exp.to_numpy())


def test_long_path_converges_in_log_diameter_iterations(sync):
    """A path of 100,000 nodes in random edge order: ~log2(diameter) iterations, not 100,000."""
    n = 100_000
    rng = np.random.default_rng(7)
    order = rng.permutation(n - 1)
    a, b = np.arange(n - 1)[order], np.arange(1, n)[order]
    res, got = run(n, a, b, npartitions=2, partition_rows=50_000)
    assert_same(got, n, a, b)
    assert got["component_id"].eq(0).all() and got["component_size"].eq(n).all()
    assert res.iterations <= 2 * math.ceil(math.log2(n)), res.iterations
    assert res.table.npartitions == 2 and res.table.divisions == (0, 50_000, n - 1)


class _Rows(Callback):
    """Largest DataFrame any task returns (the synchronous scheduler runs them here)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_rows, self.key = 0, None

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if isinstance(result, pd.DataFrame) and len(result) > self.max_rows:
            self.max_rows, self.key = len(result), key


@pytest.mark.parametrize("center", ["smallest", "largest"])
def test_star_no_task_holds_the_whole_component(sync, center):
    """A star of 20,000 nodes in 8 edge partitions: no task sees more than ~a partition."""
    n, parts, rows = 20_000, 8, 2_500
    leaves = np.arange(1, n) if center == "smallest" else np.arange(n - 1)
    hub = 0 if center == "smallest" else n - 1
    order = np.random.default_rng(1).permutation(n - 1)
    a, b = np.full(n - 1, hub)[order], leaves[order]
    edges = edge_frame(a, b, parts)
    with _Rows() as seen:  # every task of the computation (the table is persisted)
        res = components_table_dask(edges, n, partition_rows=rows)
    got = res.table.compute()
    assert_same(got, n, a, b)
    assert got["component_size"].eq(n).all()
    assert res.iterations <= 4
    assert 0 < seen.max_rows <= 2 * rows + parts * parts, (seen.max_rows, seen.key)


graphs = st.lists(
    st.integers(1, 12).flatmap(
        lambda k: st.tuples(
            st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), max_size=16)
        )
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs=graphs, npartitions=st.integers(1, 3), node_partitions=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_random_graphs_match_scipy(graphs, npartitions, node_partitions, seed):
    """Disjoint unions of small random graphs (self-loops, duplicates, isolated nodes), ids
    shuffled so components interleave, any partitioning: the same table as scipy's."""
    perm = np.random.default_rng(seed).permutation(sum(k for k, _ in graphs))
    a, b, offset = [], [], 0
    for k, es in graphs:
        for u, v in es:
            a.append(perm[offset + u])
            b.append(perm[offset + v])
        offset += k
    order = np.random.default_rng(seed + 1).permutation(len(a))
    a, b = np.asarray(a, np.int64)[order], np.asarray(b, np.int64)[order]
    with dask.config.set(scheduler="sync"):
        rows = max(1, math.ceil(offset / node_partitions))
        _, got = run(offset, a, b, npartitions=npartitions, partition_rows=rows)
    assert_same(got, offset, a, b)


@pytest.mark.parametrize("seed", range(3))
def test_random_sparse_graphs_match_scipy(sync, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2_000, 6_000))
    m = int(n * rng.uniform(0.3, 1.5))
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    res, got = run(n, a, b, npartitions=int(rng.integers(1, 5)), partition_rows=int(rng.integers(500, 3000)))
    assert_same(got, n, a, b)


def test_edge_cases(sync):
    # empty edge list: every node is its own component
    _, got = run(5, [], [], npartitions=1)
    assert_same(got, 5, [], [])
    # self-loops and duplicate edges in both directions; isolated nodes 2 and 6
    a, b = [1, 3, 3, 4, 0, 5, 5, 5], [1, 0, 0, 3, 3, 4, 4, 5]
    res, got = run(7, a, b, npartitions=3, partition_rows=2)
    assert_same(got, 7, a, b)
    assert got.loc[got["index"].isin([1, 2, 6]), "component_size"].tolist() == [1, 1, 1]
    # no nodes at all
    res, got = run(0, [], [])
    assert len(got) == 0 and list(got.columns) == list(COMPONENT_COLUMNS)
    # a pandas DataFrame is accepted as it is
    res = components_table_dask(pd.DataFrame({"from": [2], "to": [1]}), 3)
    assert res.table.compute()["component_id"].tolist() == [0, 1, 1]


def test_node_ids_from_a_series(sync):
    """Sparse ids given as a Dask Series: isolated ones are singletons; ids may repeat."""
    ids = np.arange(0, 3_000, 3, dtype=np.int64) * 7 + 11
    rng = np.random.default_rng(3)
    a, b = rng.choice(ids, 400), rng.choice(ids, 400)
    nodes = dd.from_pandas(pd.Series(np.concatenate([ids, ids[:50]])), npartitions=3)
    res = components_table_dask(edge_frame(a, b, 2), nodes=nodes, partition_rows=300)
    got = res.table.compute()
    pos = {int(v): i for i, v in enumerate(ids)}
    exp = reference(ids.size, [pos[int(v)] for v in a], [pos[int(v)] for v in b])
    np.testing.assert_array_equal(got["index"].to_numpy(), ids)
    np.testing.assert_array_equal(got["component_id"].to_numpy(), ids[exp["component_id"].to_numpy()])
    np.testing.assert_array_equal(got["component_size"].to_numpy(), exp["component_size"].to_numpy())


def test_bad_input_is_a_clear_error(sync):
    with pytest.raises(ValueError, match="exactly one of n and nodes"):
        components_table_dask(edge_frame([0], [1], 1))
    with pytest.raises(ValueError, match="outside the nodes 0..2"):
        components_table_dask(edge_frame([0, 1], [1, 3], 1), 3)
    with pytest.raises(ValueError, match="outside the nodes"):
        components_table_dask(edge_frame([-1], [1], 1), 3)
    with pytest.raises(ValueError, match="must be integer"):
        components_table_dask(dd.from_pandas(pd.DataFrame({"from": [0.0], "to": [1.0]}), npartitions=1), 2)
    with pytest.raises(ValueError, match="missing 'to'"):
        components_table_dask(dd.from_pandas(pd.DataFrame({"from": [0]}), npartitions=1), 2)
    nulls = pd.DataFrame({"from": pd.array([0, None], "Int64"), "to": pd.array([1, 1], "Int64")})
    with pytest.raises(ValueError, match="has nulls"):
        components_table_dask(dd.from_pandas(nulls, npartitions=1), 2)
    nodes = dd.from_pandas(pd.Series([10, 20, 30]), npartitions=1)
    with pytest.raises(ValueError, match="edge endpoint 25 is not among the nodes"):
        components_table_dask(edge_frame([10, 25], [20, 30], 1), nodes=nodes)


def planted_files(n: int, seed: int, archives: int) -> pd.DataFrame:
    """Per-archive-like rows with planted byte and pixel duplicates, chains across both, null and
    empty keys, and invalid members (null index)."""
    rng = np.random.default_rng(seed)
    md5 = np.array([f"m{i}" for i in rng.integers(0, n * 3, n)], dtype=object)  # some collide
    pix = np.array([f"p{i}" for i in rng.integers(0, n * 3, n)], dtype=object)
    for _ in range(n // 10):  # chains: i~j by bytes, j~k by pixels
        i, j, k = rng.integers(0, n, 3)
        md5[j] = md5[i]
        pix[k] = pix[j]
    md5[rng.random(n) < 0.05] = None
    pix[rng.random(n) < 0.05] = ""
    big = rng.integers(0, n, n // 20)  # one large group of a placeholder picture
    md5[big] = "placeholder"
    files = pd.DataFrame({"index": pd.array(np.arange(n), "Int64"), "md5": md5, "pixel_md5": pix})
    invalid = pd.DataFrame(
        {"index": pd.array([None] * 7, "Int64"), "md5": ["placeholder"] * 7, "pixel_md5": [None] * 7}
    )
    rows = pd.concat([files, invalid], ignore_index=True).sample(frac=1.0, random_state=seed)
    return rows.astype({"md5": "string", "pixel_md5": "string"}).reset_index(drop=True), archives


@pytest.mark.parametrize("seed", range(3))
def test_exact_groups_match_in_memory(sync, seed):
    rows, archives = planted_files(3_000, seed, archives=4 + seed)
    files = dd.from_pandas(rows, npartitions=archives, sort=False)
    valid = rows[rows["index"].notna()].sort_values("index")
    exp = exact_groups(valid["md5"], valid["pixel_md5"])
    assert exp.n_groups(2) > 50
    res = exact_groups_dask(files, None if seed == 0 else len(valid), partition_rows=1_000)
    got = res.table.compute()
    assert list(got.columns) == list(EXACT_COLUMNS)
    np.testing.assert_array_equal(got["index"].to_numpy(), np.arange(len(valid)))
    np.testing.assert_array_equal(got["rep"].to_numpy(), exp.rep)
    np.testing.assert_array_equal(got["group_size"].to_numpy(), exp.size[exp.rep])


def test_exact_edges_point_at_the_smallest_index(sync):
    rows, archives = planted_files(2_000, 5, archives=5)
    edges = exact_edges(dd.from_pandas(rows, npartitions=archives, sort=False)).compute()
    valid = rows[rows["index"].notna()]
    expect = set()
    for col in ("md5", "pixel_md5"):
        ok = valid[valid[col].notna() & (valid[col] != "")]
        low = ok.groupby(col)["index"].transform("min")
        moved = ok["index"] != low
        expect |= set(zip(ok["index"][moved].astype(int), low[moved].astype(int), strict=True))
    assert set(map(tuple, edges[["from", "to"]].to_numpy().tolist())) == expect
    assert not edges.duplicated().any() and (edges["from"] > edges["to"]).all()


def test_exact_chain_across_keys(sync):
    """A~B by bytes and B~C by pixels, in three archives: one group of three."""
    rows = pd.DataFrame({
        "index": [5, 2, 9, 0],
        "md5": ["same", "x", "same", "y"],
        "pixel_md5": ["q", "r", "px", "px"],
    })
    res = exact_groups_dask(dd.from_pandas(rows, npartitions=3, sort=False), 10)
    got = res.table.compute().set_index("index")
    assert got.loc[[0, 5, 9], "rep"].tolist() == [0, 0, 0]
    assert got.loc[[0, 5, 9], "group_size"].tolist() == [3, 3, 3]
    assert got.loc[[1, 2], "group_size"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="no column 'pixel_md5'"):
        exact_edges(dd.from_pandas(rows[["index", "md5"]], npartitions=1))


def test_on_a_local_cluster():
    """Worker processes on 127.0.0.1, p2p shuffles: the same tables as scipy and exact_groups."""
    from distributed import wait

    from dedupdask.localcluster import local_cluster

    quiet = logging.ERROR  # distributed logs every p2p shuffle at WARNING
    with local_cluster(2, dashboard_address=None, memory_limit="1GiB", silence_logs=quiet) as client:
        assert shuffle_method() == "p2p"
        rng = np.random.default_rng(11)
        n = 6_000  # p2p costs ~0.5 s per shuffle whatever the size: few iterations here
        a, b = rng.integers(0, n, 9_000), rng.integers(0, n, 9_000)
        res = components_table_dask(edge_frame(a, b, 3), n, partition_rows=2_000)
        wait(res.table)  # persisted: it is being computed on the workers, and stays there
        held = client.who_has(res.table)
        assert len(held) == res.table.npartitions == 3 and all(held.values())
        assert_same(res.table.compute(), n, a, b)

        rows, archives = planted_files(2_000, 1, archives=3)
        valid = rows[rows["index"].notna()].sort_values("index")
        got = exact_groups_dask(dd.from_pandas(rows, npartitions=archives, sort=False)).table
        np.testing.assert_array_equal(
            got.compute()["rep"].to_numpy(), exact_groups(valid["md5"], valid["pixel_md5"]).rep
        )
        with dask.config.set(scheduler="sync"):  # an explicit local scheduler wins over the client
            assert shuffle_method() == "tasks"
