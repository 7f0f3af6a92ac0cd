"""Analysis stage, image names: ``archive``, ``member`` and ``key`` beside each global index.

``filename`` (``<archive url>/<member>``) cannot be split reliably when member names or
archive paths contain ``/``; every table that names an image also carries the archive URL,
the member name and the webdataset key. Tables that name two images per row (pairs, an
image and its nearest neighbour) get them once per image, with the column's suffix.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["NAME_COLUMNS", "PAIR_NAMES", "OUTLIER_NAMES", "add_names", "gather_names", "named_columns"]

NAME_COLUMNS = ("archive", "member", "key")
PAIR_NAMES = {"from": "_from", "to": "_to"}
"""The similarity table: ``archive_from, member_from, key_from, archive_to, ...``."""
OUTLIER_NAMES = {"index": "", "nearest": "_nearest"}
"""The outliers table: ``archive, member, key, archive_nearest, ...``."""


def named_columns(which: Mapping[str, str]) -> tuple[str, ...]:
    """The columns :func:`add_names` adds for ``which``.

    Examples
    --------
    >>> named_columns(PAIR_NAMES)
    ('archive_from', 'member_from', 'key_from', 'archive_to', 'member_to', 'key_to')
    """
    return tuple(f"{n}{sfx}" for sfx in which.values() for n in NAME_COLUMNS)


def add_names(table: pd.DataFrame, names: pd.DataFrame, which: Mapping[str, str]) -> pd.DataFrame:
    """``table`` with the names of the images in its index columns (``which``: column ->
    suffix); ``names`` has one row per valid image in global-index order (row i = index i).
    A negative index (no image) gets nulls.

    Examples
    --------
    >>> names = pd.DataFrame({"archive": ["a.tar", "b.tar"], "member": ["x/1.jpg", "2.jpg"],
    ...                       "key": ["x/1", "2"]})
    >>> t = add_names(pd.DataFrame({"from": [0], "to": [1]}), names, PAIR_NAMES)
    >>> t.loc[0, ["member_from", "key_from", "archive_to", "key_to"]].tolist()
    ['x/1.jpg', 'x/1', 'b.tar', '2']
    """
    out = table.copy()
    for col, sfx in which.items():
        idx = out[col].to_numpy(dtype=np.int64)
        ok = (idx >= 0) & (idx < len(names))
        for n, vals in gather_names(names, NAME_COLUMNS, idx, ok).items():
            out[f"{n}{sfx}"] = vals
    return out


def gather_names(
    names: pd.DataFrame, columns: tuple[str, ...], rows: np.ndarray, ok: np.ndarray
) -> dict[str, pd.api.extensions.ExtensionArray]:
    """``names[c]`` at positions ``rows`` for each column ``c``, null where ``ok`` is False
    (string arrays: the one way both paths -- :func:`add_names` and the Dask name frames of
    :mod:`dedupdask.analyses.names_dask` -- fill a name column).

    Examples
    --------
    >>> names = pd.DataFrame({"key": ["a", "b"]})
    >>> gather_names(names, ("key",), np.array([1, 7]), np.array([True, False]))["key"].tolist()
    ['b', <NA>]
    """
    out = {}
    for c in columns:
        vals = np.full(rows.size, None, dtype=object)
        vals[ok] = names[c].to_numpy(dtype=object)[rows[ok]]
        out[c] = pd.array(vals, dtype="string")
    return out
