"""Analysis stage, outliers on the workers: a global lowest fraction of a Dask DataFrame.

The same selection as :func:`dedupdask.analyses.outliers.outliers_table` -- the
``ceil(lower_threshold * N)`` images with the lowest similarity to their nearest image, ties
by index, images without a nearest image left out -- from a Dask DataFrame of
``index, nearest, similarity`` rows (partitions in increasing ``index`` ranges, e.g. one per
archive) without gathering it. The client holds histograms and counts, never rows:

1. every partition counts its similarities in :data:`BINS` bins of the order-preserving
   32-bit key of the float32 value (its top 16 bits); the sums say in which bin the cut lies;
2. the partitions count that bin's keys by their low 16 bits: the cut's exact float32 value
   ``v`` and how many of the selected rows have it (``need``);
3. the partitions count their rows equal to ``v``; as partitions hold increasing index
   ranges, the ``need`` smallest indices equal to ``v`` are all such rows of the first
   partitions and the smallest ones of one more, which names the last index taken (``last``).

The result is a Dask DataFrame of the selected rows, filtered partition by partition (rows
below ``v``, and rows equal to ``v`` up to each partition's index cut), not computed.

:func:`nearest_frame` gives every image its nearest other image as
:func:`~dedupdask.analyses.outliers.nearest_neighbours` does, from the exact groups' table and
the kNN graph table, and :func:`outliers_frame` is the whole outliers table on the workers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BINS", "lowest_fraction", "nearest_frame", "order_key", "outliers_frame"]

BINS = 1 << 16
"""Bins of the first pass (the top 16 bits of the 32-bit key); the second pass the low 16."""


def order_key(sim: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the order of the float32 values (-0.0 == 0.0; NaN last).

    Examples
    --------
    >>> order_key(np.array([-1.0, -0.0, 0.0, 0.5, np.nan], np.float32)).argsort().tolist()
    [0, 1, 2, 3, 4]
    """
    x = np.asarray(sim, dtype=np.float32) + np.float32(0.0)  # -0.0 -> 0.0
    bits = x.view(np.uint32)
    key = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31)).astype(np.uint32)
    key[np.isnan(x)] = np.uint32(0xFFFFFFFF)
    return key


def _usable(part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Keys and indices of the rows that have a nearest image."""
    ok = (part["nearest"].to_numpy(dtype=np.int64, na_value=-1) >= 0) & part[
        "similarity"
    ].notna().to_numpy()
    return order_key(part["similarity"].to_numpy(dtype=np.float32, na_value=np.nan)[ok]), part[
        "index"
    ].to_numpy(dtype=np.int64)[ok]


def _high_hist(part: pd.DataFrame) -> np.ndarray:
    key, _ = _usable(part)
    return np.bincount(key >> 16, minlength=BINS).astype(np.int64)


def _low_hist(part: pd.DataFrame, high: int) -> np.ndarray:
    key, _ = _usable(part)
    return np.bincount(key[(key >> 16) == high] & 0xFFFF, minlength=BINS).astype(np.int64)


def _count_equal(part: pd.DataFrame, cut: int) -> int:
    key, _ = _usable(part)
    return int((key == cut).sum())


def _nth_equal(part: pd.DataFrame, cut: int, nth: int) -> int:
    """The ``nth`` (1-based) smallest index of the rows whose key is ``cut``."""
    key, index = _usable(part)
    return int(np.partition(index[key == cut], nth - 1)[nth - 1])


def _select(part: pd.DataFrame, cut: int, last: int) -> pd.DataFrame:
    """Rows below the cut, and rows at it with an index up to ``last``."""
    key, _ = _usable(part)
    ok = (part["nearest"].to_numpy(dtype=np.int64, na_value=-1) >= 0) & part[
        "similarity"
    ].notna().to_numpy()
    full = np.full(len(part), np.uint32(0xFFFFFFFF), dtype=np.uint32)
    full[ok] = key
    index = part["index"].to_numpy(dtype=np.int64)
    keep = ok & ((full < cut) | ((full == cut) & (index <= last)))
    return part.loc[keep]


def lowest_fraction(frame: Any, fraction: float, n: int) -> Any:
    """The rows :func:`~dedupdask.analyses.outliers.outliers_table` would select, on the workers.

    Parameters
    ----------
    frame : dask.dataframe.DataFrame
        ``index`` (int64), ``nearest`` (-1 = none), ``similarity`` (float32, NaN = none),
        other columns carried along; partitions in increasing, disjoint ``index`` ranges.
    fraction : float
        ``lower_threshold``: the share of the ``n`` images selected (rounded up).
    n : int
        Number of images (rows of ``frame``).

    Returns
    -------
    dask.dataframe.DataFrame
        The selected rows of each partition (not computed, not sorted across partitions).

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f = pd.DataFrame({"index": range(6), "nearest": [1, 0, 3, 2, -1, 0],
    ...                   "similarity": np.float32([0.9, 0.9, 0.2, 0.2, np.nan, 0.5])})
    >>> with dask.config.set(scheduler="sync"):
    ...     lowest_fraction(dd.from_pandas(f, npartitions=3), 0.5, 6).compute()["index"].tolist()
    [2, 3, 5]
    """
    import dask

    count = math.ceil(fraction * n - 1e-9) if n else 0
    parts = frame.to_delayed()
    if count <= 0 or not parts:
        return frame.map_partitions(lambda p: p.iloc[:0], meta=frame._meta)
    high = np.sum(dask.compute(*[dask.delayed(_high_hist)(p) for p in parts]), axis=0)
    cum = np.cumsum(high)
    total = int(cum[-1])
    if count >= total:  # every row with a nearest image
        return frame.map_partitions(
            _select, np.uint32(0xFFFFFFFF), np.iinfo(np.int64).max, meta=frame._meta
        )
    hb = int(np.searchsorted(cum, count))  # the bin holding the count-th smallest key
    before = int(cum[hb - 1]) if hb else 0
    low = np.sum(dask.compute(*[dask.delayed(_low_hist)(p, hb) for p in parts]), axis=0)
    lcum = before + np.cumsum(low)
    lb = int(np.searchsorted(lcum, count))
    cut = np.uint32((hb << 16) | lb)
    need = count - (int(lcum[lb - 1]) if lb else before)  # rows equal to the cut to select
    equal = np.cumsum(dask.compute(*[dask.delayed(_count_equal)(p, cut) for p in parts]))
    at = int(np.searchsorted(equal, need))  # the partition holding the need-th equal row
    nth = need - (int(equal[at - 1]) if at else 0)
    last = dask.delayed(_nth_equal)(parts[at], cut, nth).compute()
    return frame.map_partitions(_select, cut, last, meta=frame._meta)


_I64 = np.int64


def _nearest_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {"index": pd.Series(dtype=_I64), "nearest": pd.Series(dtype=_I64),
         "similarity": pd.Series(dtype="float32")}
    )  # fmt: skip


def _second_members(members: pd.DataFrame) -> pd.DataFrame:
    """``rep, second``: the second smallest index of each whole group of a partition."""
    rest = members[members["index"] != members["rep"]]
    second = rest.groupby("rep", sort=False)["index"].min()
    return pd.DataFrame({"rep": second.index.to_numpy(dtype=_I64), "second": second.to_numpy(dtype=_I64)})


def _nearest(exact: pd.DataFrame, first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Nearest other image of every image of one partition of the exact table."""
    from .routing import find, locate

    index = exact["index"].to_numpy(dtype=_I64)
    rep = exact["rep"].to_numpy(dtype=_I64)
    size = exact["group_size"].to_numpy(dtype=_I64)
    nearest = np.full(index.size, -1, dtype=_I64)
    sim = np.full(index.size, np.nan, dtype=np.float32)
    pos, ok = locate(index, first.index.to_numpy(dtype=_I64))
    nearest[pos[ok]] = first["to"].to_numpy(dtype=_I64)[ok]
    sim[pos[ok]] = first["similarity"].to_numpy(dtype=np.float32)[ok]
    members = (size > 1) & (rep != index)
    nearest[members] = rep[members]
    sim[members] = 1.0
    heads = np.flatnonzero((size > 1) & (rep == index))
    if heads.size:
        got = second.index.to_numpy(dtype=_I64)
        order = np.argsort(got, kind="stable")
        at = find(got[order], index[heads], "group representative")
        nearest[heads] = second["second"].to_numpy(dtype=_I64)[order][at]
        sim[heads] = 1.0
    return pd.DataFrame({"index": index, "nearest": nearest, "similarity": sim})


def nearest_frame(exact: Any, graph: Any) -> Any:
    """Nearest other image (-1 = none) and its similarity (NaN = none) of every image.

    :func:`~dedupdask.analyses.outliers.nearest_neighbours` on the workers: a member of an
    exact group gets its representative, a representative of a group the group's second
    smallest index (similarity 1.0), any other image its first neighbour in ``graph``.

    Parameters
    ----------
    exact : dask.dataframe.DataFrame
        The exact groups' table (``index, rep, group_size``, known divisions).
    graph : dask.dataframe.DataFrame
        The kNN graph over the exact representatives (:mod:`dedupdask.analyses.graph`).

    Returns
    -------
    dask.dataframe.DataFrame
        ``index, nearest, similarity``, partitioned like ``exact`` (increasing index ranges).

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> from dedupdask.analyses.graph import graph_frame
    >>> ex = pd.DataFrame({"index": [0, 1, 2], "rep": [0, 0, 2], "group_size": [2, 2, 1]})
    >>> ex = dd.from_pandas(ex, npartitions=2, sort=True)
    >>> g = graph_frame(np.array([0, 2]), np.array([[1], [0]]), np.float32([[0.5], [0.5]]))
    >>> with dask.config.set(scheduler="sync"):
    ...     nearest_frame(ex, g).compute().values.tolist()
    [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [2.0, 0.0, 0.5]]
    """
    from .pairs_dask import members_by_group
    from .routing import route

    divisions = tuple(int(d) for d in exact.divisions)
    first = graph[graph["rank"] == 0][["from", "to", "similarity"]]
    first = route(first, "from", divisions)
    seconds = members_by_group(exact).map_partitions(
        _second_members, meta=pd.DataFrame({"rep": _I64(0), "second": _I64(0)}, index=[])
    )
    seconds = route(seconds, "rep", divisions)
    return exact.map_partitions(
        _nearest, first, seconds, meta=_nearest_meta(), align_dataframes=False, enforce_metadata=False
    )


def outliers_frame(nearest: Any, lower_threshold: float, n: int, names: Any) -> Any:
    """The outliers table (``outliers_table`` + ``add_names``) on the workers.

    Parameters
    ----------
    nearest : dask.dataframe.DataFrame
        :func:`nearest_frame` (persist it: it is read four times).
    lower_threshold : float
        The share of the ``n`` images selected (rounded up).
    n : int
        Number of valid images.
    names : dask.dataframe.DataFrame
        :func:`dedupdask.analyses.names_dask.names_frame`.

    Returns
    -------
    dask.dataframe.DataFrame
        :data:`dedupdask.analyses.outliers.OUTLIER_COLUMNS` then the names of both images,
        least similar first (ties: smaller index), not computed.

    Examples
    --------
    >>> outliers_frame(nearest_frame(exact, graph).persist(), 0.05, n, names).head()  # doctest: +SKIP
    """
    from .names import OUTLIER_NAMES, named_columns
    from .names_dask import join_names
    from .outliers import OUTLIER_COLUMNS
    from .routing import sort_by_key

    columns = [*OUTLIER_COLUMNS, *named_columns(OUTLIER_NAMES)]
    picked = lowest_fraction(nearest, lower_threshold, n)
    named = join_names(picked, names, OUTLIER_NAMES, filename={"index": "filename", "nearest": "filename_nearest"})
    keyed = named.map_partitions(_outlier_key, meta=named._meta.assign(_sort_key=_I64(0)))
    return sort_by_key(keyed, "_sort_key")[columns]


def _outlier_key(df: pd.DataFrame) -> pd.DataFrame:
    from .pairs_dask import pair_key

    key = pair_key(df["similarity"].to_numpy(np.float32), df["index"].to_numpy(_I64), descending=False)
    return df.assign(_sort_key=key)
