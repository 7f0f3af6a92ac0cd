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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BINS", "lowest_fraction", "order_key"]

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
