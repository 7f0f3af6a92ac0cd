"""Analysis stage, equal model inputs on the workers: the input groups' kNN graph as the exact groups'.

The same graph as :func:`dedupdask.analyses.exact.expand_graph`, from graph tables
(:mod:`dedupdask.analyses.graph`) and the exact / input group tables of
:func:`dedupdask.analyses.exact_dask.exact_groups_dask` (``index, rep, group_size``), without
gathering any of them. The kNN graph is searched over one representative per input group
(images with equal model inputs); each exact representative ``r`` of input group ``c`` gets

1. the other exact representatives of ``c`` first, at similarity 1.0, taken round the group
   in index order (``r``'s ``j``-th is the ``(rank + j + 1) % size``-th of the group), at most
   ``k``;
2. then ``c``'s neighbours, ``k`` in all.

Only exact representatives whose input group holds another exact group ("siblings") change;
every other row of the graph stays where it is. The work is three messages on the workers
(:mod:`dedupdask.analyses.routing`):

- the siblings are shuffled on their input group, which makes their ring rows and asks, for
  each sibling short of ``k`` rows, for ``c``'s neighbour list;
- the asks go to the graph partition that holds ``c``'s rows and come back as rows of ``r``;
- ring rows and those go to the partition holding ``r``'s range, which replaces ``r``'s rows.

The graph partitions keep their ``from`` ranges (the graph-table contract); the client holds
one integer per graph partition. Rows also get ``from_input`` / ``to_input``, the input
representative of each end (the tiers mark pairs of equal model inputs with them): a ring
row's are both ``c``; any other neighbour is an input representative, its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .graph import GRAPH_COLUMNS, empty_graph
from .routing import route, shuffle_method

__all__ = ["EXPANDED_COLUMNS", "expand_graph_frame", "graph_bounds", "owner", "sibling_frame", "start_bounds"]

EXPANDED_COLUMNS = (*GRAPH_COLUMNS, "from_input", "to_input")
"""Columns of :func:`expand_graph_frame`: the graph table plus each end's input representative."""

_I64 = np.int64
_SIBLING_META = pd.DataFrame({"rep": _I64(0), "input": _I64(0)}, index=[])
_ASK_META = pd.DataFrame({"rep": _I64(0), "input": _I64(0), "n_sib": _I64(0), "_part": _I64(0)}, index=[])


def _expanded_meta() -> pd.DataFrame:
    return empty_graph().assign(from_input=_I64(0), to_input=_I64(0))


def sibling_frame(exact: Any, inputs: Any) -> Any:
    """Exact representatives whose input group holds other exact groups, with that group.

    Parameters
    ----------
    exact, inputs : dask.dataframe.DataFrame
        ``index, rep, group_size`` per valid image: the exact groups and the input groups
        (exact groups refine input groups). Partition-wise when both have the same known
        divisions (as :func:`~dedupdask.analyses.exact_dask.exact_groups_dask` makes them),
        else joined on ``index``.

    Returns
    -------
    dask.dataframe.DataFrame
        ``rep`` (the exact representative) and ``input`` (its input representative); not
        computed.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> ex = dd.from_pandas(pd.DataFrame({"index": [0, 1, 2], "rep": [0, 1, 0],
    ...                                   "group_size": [2, 1, 2]}), npartitions=2)
    >>> inp = dd.from_pandas(pd.DataFrame({"index": [0, 1, 2], "rep": [0, 0, 0],
    ...                                    "group_size": [3, 3, 3]}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     sibling_frame(ex, inp).compute().values.tolist()
    [[0, 0], [1, 0]]
    """
    import dask.dataframe as dd

    e = exact[["index", "rep", "group_size"]]
    i = inputs[["index", "rep", "group_size"]].rename(columns={"rep": "input", "group_size": "input_size"})
    if e.known_divisions and i.known_divisions and tuple(e.divisions) == tuple(i.divisions):
        both = dd.map_partitions(_join_aligned, e, i, meta=_joined_meta(), align_dataframes=False)
    else:
        both = e.merge(i, on="index", how="inner")
    return both.map_partitions(_siblings, meta=_SIBLING_META, enforce_metadata=False)


def _joined_meta() -> pd.DataFrame:
    return pd.DataFrame({c: _I64(0) for c in ("index", "rep", "group_size", "input", "input_size")}, index=[])


def _join_aligned(e: pd.DataFrame, i: pd.DataFrame) -> pd.DataFrame:
    e = e.reset_index(drop=True)
    i = i.reset_index(drop=True)
    if not np.array_equal(e["index"].to_numpy(_I64), i["index"].to_numpy(_I64)):
        return e.merge(i, on="index", how="inner")
    return e.assign(input=i["input"].to_numpy(_I64), input_size=i["input_size"].to_numpy(_I64))


def _siblings(df: pd.DataFrame) -> pd.DataFrame:
    idx = df["index"].to_numpy(_I64)
    rep = df["rep"].to_numpy(_I64)
    # an input group larger than the exact group holds another exact group
    ok = (idx == rep) & (df["input_size"].to_numpy(_I64) > df["group_size"].to_numpy(_I64))
    return pd.DataFrame({"rep": idx[ok], "input": df["input"].to_numpy(_I64)[ok]})


def _ring(df: pd.DataFrame, k: int) -> tuple[np.ndarray, ...]:
    """Siblings of a partition holding whole input groups: (rep, input, n_sib) per sibling
    and (sibling number, sibling, place j) per ring row."""
    df = df.sort_values(["input", "rep"], kind="stable")
    c = df["input"].to_numpy(_I64)
    r = df["rep"].to_numpy(_I64)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if c.size else np.empty(0, _I64)
    sizes = np.diff(np.r_[starts, c.size]).astype(_I64)
    grp = np.repeat(np.arange(starts.size), sizes)
    rank = np.arange(c.size) - starts[grp]
    size = sizes[grp]
    n_sib = np.minimum(size - 1, k).astype(_I64)
    row = np.repeat(np.arange(c.size), n_sib)
    j = np.arange(row.size) - np.repeat(np.cumsum(n_sib) - n_sib, n_sib)
    sib = r[starts[grp[row]] + (rank[row] + j + 1) % size[row]]
    return r, c, n_sib, row, sib.astype(_I64), j.astype(_I64)


def _ring_rows(df: pd.DataFrame, k: int, bounds: np.ndarray) -> pd.DataFrame:
    """The sibling rows of every exact representative, addressed to the partition of its range."""
    r, c, _, row, sib, j = _ring(df, k)
    frm = r[row]
    return pd.DataFrame(
        {
            "from": frm,
            "to": sib,
            "similarity": np.ones(frm.size, np.float32),
            "rank": j.astype(np.int16),
            "from_input": c[row],
            "to_input": c[row],
            "_part": owner(bounds, frm),
        }
    )


def _ring_asks(df: pd.DataFrame, k: int, bounds: np.ndarray) -> pd.DataFrame:
    """Siblings short of ``k`` rows ask their input representative's partition for its list."""
    r, c, n_sib, _, _, _ = _ring(df, k)
    short = n_sib < k
    return pd.DataFrame(
        {"rep": r[short], "input": c[short], "n_sib": n_sib[short].astype(_I64), "_part": owner(bounds, c[short])}
    )


def owner(bounds: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Partition holding each id of ``x``, given each partition's first id (see :func:`graph_bounds`).

    Examples
    --------
    >>> owner(np.array([0, 5, 5, 9]), np.array([0, 4, 5, 8, 100])).tolist()
    [0, 0, 2, 2, 3]
    """
    return (np.searchsorted(bounds, np.asarray(x, dtype=_I64), side="right") - 1).clip(0).astype(_I64)


def graph_bounds(graph: Any) -> np.ndarray:
    """The first ``from`` id each graph partition holds, for :func:`owner` (one number per partition).

    Raises ValueError when partitions are not in increasing ``from`` order.
    """
    import dask

    # from the column, not the divisions: a frame's divisions may be of another index
    meta = pd.DataFrame({"lo": _I64(0), "hi": _I64(0), "n": _I64(0)}, index=[])
    (got,) = dask.compute(graph["from"].map_partitions(_range, meta=meta))
    lows, highs = got["lo"].to_numpy(_I64), got["hi"].to_numpy(_I64)
    nonempty = got["n"].to_numpy(_I64) > 0
    if nonempty.any() and np.any(lows[nonempty][1:] <= highs[nonempty][:-1]):
        raise ValueError("the graph table's partitions are not in increasing, non-overlapping 'from' ranges")
    return start_bounds(lows, nonempty)


def start_bounds(lows: np.ndarray, nonempty: np.ndarray) -> np.ndarray:
    """:func:`owner`'s bounds from each partition's first id and whether it holds any.

    An empty partition gets the next one's start (so it owns nothing); the first starts at the
    smallest int64 (it owns every smaller id).

    Examples
    --------
    >>> b = start_bounds(np.array([0, 5, 0, 9]), np.array([True, True, False, True]))
    >>> owner(b, np.array([3, 7, 9])).tolist()
    [0, 1, 3]
    """
    lows = np.asarray(lows, dtype=_I64)
    bounds = np.full(lows.size, np.iinfo(_I64).max, dtype=_I64)
    nxt = np.iinfo(_I64).max
    for i in range(lows.size - 1, -1, -1):
        if nonempty[i]:
            nxt = lows[i]
        bounds[i] = nxt
    if bounds.size:
        bounds[0] = np.iinfo(_I64).min
    return bounds


def _range(s: pd.Series) -> pd.DataFrame:
    v = s.to_numpy(_I64)
    if not v.size:
        return pd.DataFrame({"lo": [_I64(0)], "hi": [_I64(0)], "n": [_I64(0)]})
    return pd.DataFrame({"lo": [v.min()], "hi": [v.max()], "n": [_I64(v.size)]})


def _answer_asks(part: pd.DataFrame, asks: pd.DataFrame, k: int, bounds: np.ndarray) -> pd.DataFrame:
    """The neighbour rows of each asked input representative, as rows of the asking one."""
    meta = _expanded_meta().assign(_part=_I64(0))
    if not len(asks) or not len(part):
        return meta
    want = asks.reset_index(drop=True)
    rows = part.loc[:, list(GRAPH_COLUMNS)].reset_index(drop=True)
    got = want.merge(rows, left_on="input", right_on="from", how="inner")
    got = got[got["rank"].to_numpy(_I64) < k - got["n_sib"].to_numpy(_I64)]
    frm = got["rep"].to_numpy(_I64)
    to = got["to"].to_numpy(_I64)
    return pd.DataFrame(
        {
            "from": frm,
            "to": to,
            "similarity": got["similarity"].to_numpy(np.float32),
            "rank": (got["rank"].to_numpy(_I64) + got["n_sib"].to_numpy(_I64)).astype(np.int16),
            "from_input": got["input"].to_numpy(_I64),
            "to_input": to,  # a neighbour in the input graph is an input representative
            "_part": owner(bounds, frm),
        }
    )


def _replace_rows(part: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """A graph partition with the rows of the representatives in ``new`` replaced by them."""
    frm = part["from"].to_numpy(_I64)
    out = part.loc[:, list(GRAPH_COLUMNS)].reset_index(drop=True).assign(
        from_input=frm, to_input=part["to"].to_numpy(_I64)
    )
    if not len(new):
        return out
    new = new.reset_index(drop=True).loc[:, list(EXPANDED_COLUMNS)]
    out = out[~np.isin(frm, new["from"].to_numpy(_I64))]
    both = pd.concat([out, new], ignore_index=True)
    return both.sort_values(["from", "rank"], kind="stable").reset_index(drop=True).astype(_expanded_meta().dtypes.to_dict())


def _with_inputs(part: pd.DataFrame) -> pd.DataFrame:
    return part.loc[:, list(GRAPH_COLUMNS)].assign(
        from_input=part["from"].to_numpy(_I64), to_input=part["to"].to_numpy(_I64)
    )


def expand_graph_frame(
    graph: Any, exact: Any, inputs: Any, k: int, *, siblings: Any = None, n_siblings: int | None = None
) -> Any:
    """The kNN graph of the input representatives as the graph of the exact representatives.

    Parameters
    ----------
    graph : dask.dataframe.DataFrame
        Graph table (:data:`~dedupdask.analyses.graph.GRAPH_COLUMNS`) over the input
        representatives, ``k`` wide, partitions in increasing ``from`` ranges.
    exact, inputs : dask.dataframe.DataFrame
        ``index, rep, group_size``: the exact and the input groups (see :func:`sibling_frame`).
    k : int
        Neighbours per image.
    siblings, n_siblings : optional
        :func:`sibling_frame` of ``exact, inputs`` and its length, when the caller has them.

    Returns
    -------
    dask.dataframe.DataFrame
        :data:`EXPANDED_COLUMNS`, one partition per partition of ``graph`` with the same
        ``from`` ranges; the rows of :func:`~dedupdask.analyses.exact.expand_graph`. Not
        computed: when no input group holds two exact groups (one small count computed to
        find out) it is ``graph`` with two more columns.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> from dedupdask.analyses.graph import graph_frame
    >>> g = graph_frame(np.array([0, 2]), np.array([[1], [0]]), np.array([[0.5], [0.5]], np.float32))
    >>> ex = dd.from_pandas(pd.DataFrame({"index": [0, 1, 2], "rep": [0, 1, 2],
    ...                                   "group_size": [1, 1, 1]}), npartitions=1)
    >>> inp = dd.from_pandas(pd.DataFrame({"index": [0, 1, 2], "rep": [0, 0, 2],
    ...                                    "group_size": [2, 2, 1]}), npartitions=1)
    >>> with dask.config.set(scheduler="sync"):
    ...     out = expand_graph_frame(g, ex, inp, 1).compute()
    >>> out[["from", "to"]].values.tolist(), out["similarity"].tolist()
    ([[0, 1], [1, 0], [2, 0]], [1.0, 1.0, 0.5])
    """
    import dask.dataframe as dd

    k = int(k)
    sib = sibling_frame(exact, inputs) if siblings is None else siblings
    if n_siblings is None:
        n_siblings = int(sib.shape[0].compute())
    if n_siblings == 0:  # nothing to expand (the common case)
        return graph.map_partitions(_with_inputs, meta=_expanded_meta(), enforce_metadata=False)
    bounds = graph_bounds(graph)
    parts = tuple(range(graph.npartitions + 1))
    groups = sib.shuffle(on="input", npartitions=max(1, sib.npartitions), shuffle_method=shuffle_method())
    ring = groups.map_partitions(_ring_rows, k, bounds, meta=_expanded_meta().assign(_part=_I64(0)), enforce_metadata=False)
    asks = groups.map_partitions(_ring_asks, k, bounds, meta=_ASK_META, enforce_metadata=False)
    answered = graph.map_partitions(
        _answer_asks, route(asks, "_part", parts), k, bounds,
        meta=_expanded_meta().assign(_part=_I64(0)), align_dataframes=False, enforce_metadata=False,
    )  # fmt: skip
    new = route(dd.concat([ring, answered]), "_part", parts)
    return graph.map_partitions(
        _replace_rows, new, meta=_expanded_meta(), align_dataframes=False, enforce_metadata=False
    )
