"""Analysis stage, keep rules: which image of a duplicate component is kept.

One rule, used by every table that removes duplicates (``duplicates_to_remove``, the removal
lists of :mod:`dedupdask.removals`, the clean shards of :mod:`dedupdask.clean`). A rule turns
each image's row into sort keys where smaller is better; the kept image of a component is the
one with the smallest keys, ties going to the smallest global ``index`` (the first seen:
sorted archive order, then member order). Because the keys are per row and the choice is a
minimum, the keeper can be found per archive and the partial results merged
(:func:`best_per_component`), so no table of every image needs to be in one place.

=======================  ======================================================================
``largest_resolution``   most pixels, then the largest file
``largest_file``         the largest encoded file, then the most pixels
``first``                the smallest global index
``longest_caption``      the longest ``.txt`` caption (stored by extraction in the ``caption``
                         column; no caption counts as shorter than an empty one), then the
                         most pixels, then the largest file
callable                 ``keep(row) -> number``, higher is better (NaN: worst); ``row`` is the
                         image's row of ``res.files`` (filename, archive, member, key, caption,
                         json, width, height, file_size, the stats, index) plus
                         ``component_id``
=======================  ======================================================================
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["KEEP_RULES", "KeepRule", "KEY_COLUMNS", "check_keep", "keep_keys", "best_per_component"]

KEEP_RULES = ("largest_resolution", "largest_file", "first", "longest_caption")
KEY_COLUMNS = ("_k0", "_k1", "_k2")
"""The sort-key columns :func:`keep_keys` adds (smaller is better; ``index`` breaks ties)."""
KeepRule = str | Callable[[pd.Series], Any]

_NEEDS = {
    "largest_resolution": ("width", "height", "file_size"),
    "largest_file": ("width", "height", "file_size"),
    "first": (),
    "longest_caption": ("caption", "width", "height", "file_size"),
}


def check_keep(keep: KeepRule) -> KeepRule:
    """``keep`` itself, or ``ValueError`` naming the rules.

    Examples
    --------
    >>> check_keep("first")
    'first'
    >>> check_keep("newest")
    Traceback (most recent call last):
    ...
    ValueError: keep must be one of ('largest_resolution', 'largest_file', 'first', 'longest_caption') or a callable, got 'newest'
    """
    if callable(keep) or keep in KEEP_RULES:
        return keep
    raise ValueError(f"keep must be one of {KEEP_RULES} or a callable, got {keep!r}")


def needed_columns(keep: KeepRule) -> tuple[str, ...]:
    """The per-image columns a rule reads (a callable may read any)."""
    return () if callable(keep) else _NEEDS[str(keep)]


def _neg(s: pd.Series) -> np.ndarray:
    return -s.astype("float64").fillna(-1.0).to_numpy(dtype=np.float64)


def _score(keep: Callable[[pd.Series], Any], row: pd.Series) -> float:
    v = keep(row)
    if isinstance(v, (bool, np.bool_)):
        v = int(v)
    if not isinstance(v, numbers.Real):
        raise TypeError(
            f"keep callable must return a number for each image, got {v!r} "
            f"({type(v).__name__}) for {row.get('filename', row.get('index'))!r}"
        )
    v = float(v)
    return -v if not math.isnan(v) else math.inf


def keep_keys(df: pd.DataFrame, keep: KeepRule) -> pd.DataFrame:
    """``df`` with the rule's sort keys ``_k0, _k1, _k2`` (smaller is better).

    Parameters
    ----------
    df : DataFrame
        One row per image: ``index`` and the columns the rule reads.
    keep : str or callable
        A rule of :data:`KEEP_RULES` or ``keep(row) -> number`` (higher is better).

    Returns
    -------
    DataFrame

    Examples
    --------
    >>> df = pd.DataFrame({"index": [0, 1], "width": [10, 20], "height": [10, 20],
    ...                    "file_size": [100, 50], "caption": ["a long one", None]})
    >>> keep_keys(df, "largest_resolution")["_k0"].tolist()
    [-100.0, -400.0]
    >>> keep_keys(df, "longest_caption")["_k0"].tolist()
    [-10.0, 1.0]
    >>> keep_keys(df, lambda row: row["file_size"])["_k0"].tolist()
    [-100.0, -50.0]
    """
    check_keep(keep)
    out = df.copy()
    zero = np.zeros(len(df), dtype=np.float64)
    if callable(keep):
        k0 = np.array([_score(keep, row) for _, row in df.iterrows()], dtype=np.float64)
        keys = (k0, zero, zero)
    elif keep == "first":
        keys = (zero, zero, zero)
    else:
        pixels = _neg(df["width"].astype("float64") * df["height"].astype("float64"))
        size = _neg(df["file_size"])
        if keep == "largest_resolution":
            keys = (pixels, size, zero)
        elif keep == "largest_file":
            keys = (size, pixels, zero)
        else:  # longest_caption; no caption (-1) is shorter than an empty one (0)
            length = df["caption"].astype("string").str.len().astype("float64").fillna(-1.0)
            keys = (-length.to_numpy(dtype=np.float64), pixels, size)
    for col, k in zip(KEY_COLUMNS, keys, strict=True):
        out[col] = k
    return out


def best_per_component(df: pd.DataFrame) -> pd.DataFrame:
    """The kept row of each ``component_id``: smallest keys, then smallest ``index``.

    Works on rows from :func:`keep_keys`, or on earlier results of this function (the best
    rows of several archives merge into the best rows of all), so it can be applied per
    partition and again to the concatenated partial results.

    Examples
    --------
    >>> df = pd.DataFrame({"index": [3, 1, 2], "component_id": [1, 1, 1]})
    >>> best_per_component(keep_keys(df, "first"))["index"].tolist()
    [1]
    """
    if df.empty:
        return df
    by = ["component_id", *KEY_COLUMNS, "index"]
    return (
        df.sort_values(by, kind="stable")
        .drop_duplicates("component_id", keep="first")
        .reset_index(drop=True)
    )
