"""The duplicate tiers on the workers (:mod:`dedupdask.analyses.tiers_dask`): the in-process
tiers' decisions, edges and counts from graph tables, group tables and the files frame."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dedupdask.analyses import exact_groups, expand_graph
from dedupdask.analyses.expand_dask import expand_graph_frame
from dedupdask.analyses.graph import graph_arrays, graph_frame


def group_table(groups, npartitions: int = 3) -> dd.DataFrame:
    """``index, rep, group_size`` of in-process groups, as exact_groups_dask gives them."""
    rep = groups.rep
    df = pd.DataFrame({"index": np.arange(rep.size), "rep": rep, "group_size": np.bincount(rep, minlength=rep.size)[rep]})
    return dd.from_pandas(df.set_index(df["index"].rename("node")), npartitions=npartitions)


def random_input_graph(rng, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A kNN-like graph: distinct neighbours, not self, padding only at the end of a row."""
    idx = np.full((n, k), -1, np.int64)
    sim = np.full((n, k), np.nan, np.float32)
    for r in range(n):
        m = int(rng.integers(0, min(k, n - 1) + 1)) if n > 1 else 0
        nb = rng.choice(np.delete(np.arange(n), r), size=m, replace=False) if m else []
        idx[r, :m] = nb
        sim[r, :m] = np.sort(rng.uniform(0, 0.99, m))[::-1]
    return idx, sim


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expand_graph_frame_matches_expand_graph(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(50, 400)), int(rng.integers(1, 6))
    md5 = [f"m{i}" for i in rng.integers(0, int(n * 0.8), n)]
    inp = [f"i{i}" for i in rng.integers(0, int(n * 0.3), n)]
    groups, inputs = exact_groups(md5), exact_groups(md5, inp)
    fine, coarse = groups.reps, inputs.reps
    idx, sim = random_input_graph(rng, coarse.size, k)
    want = expand_graph(groups, inputs, idx, sim)
    table = graph_frame(coarse, idx, sim, partition_rows=max(1, coarse.size * k // 4))
    with dask.config.set(scheduler="sync"):
        got = expand_graph_frame(table, group_table(groups), group_table(inputs, 4), k).compute()
        ref = graph_frame(fine, *want).compute()
    pd.testing.assert_frame_equal(got[list(ref.columns)].reset_index(drop=True), ref.reset_index(drop=True))
    g_idx, g_sim = graph_arrays(got, fine, k)
    np.testing.assert_array_equal(g_idx, want[0])
    np.testing.assert_array_equal(g_sim, want[1])
    # each end's input representative
    np.testing.assert_array_equal(got["from_input"].to_numpy(), inputs.rep[got["from"].to_numpy()])
    np.testing.assert_array_equal(got["to_input"].to_numpy(), inputs.rep[got["to"].to_numpy()])
