"""Analysis stage, image statistics and invalid images, straight from the per-archive tables."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd

from ..store import empty_files_frame

__all__ = [
    "STATS_COLUMNS",
    "STATS_CSV_COLUMNS",
    "INVALID_COLUMNS",
    "BAD_CSV_COLUMNS",
    "stats_frame",
    "stats_partition",
    "invalid_frame",
    "invalid_table",
]

STATS_COLUMNS = (
    "index",
    "filename",
    "width",
    "height",
    "file_size",
    "mean",
    "min",
    "max",
    "stdv",
    "blur",
    "unique",
    "contrast",
    "archive",
    "member",
    "key",
)
# fastdup's atrain_stats.csv column order
STATS_CSV_COLUMNS = (
    "index",
    "filename",
    "width",
    "height",
    "unique",
    "blur",
    "mean",
    "min",
    "max",
    "stdv",
    "file_size",
    "contrast",
)
INVALID_COLUMNS = ("filename", "archive", "member", "key", "error_code", "error_message", "file_size")
# fastdup's atrain_features.bad.csv header
BAD_CSV_COLUMNS = ("index", "filename", "error_code", "filesize")


def stats_partition(files: pd.DataFrame) -> pd.DataFrame:
    """Valid images of one files partition, columns :data:`STATS_COLUMNS`.

    Examples
    --------
    >>> from dedupdask.store import empty_files_frame
    >>> list(stats_partition(empty_files_frame()).columns) == list(STATS_COLUMNS)
    True
    """
    valid = files[files["index"].notna()]
    out = valid.loc[:, list(STATS_COLUMNS)].sort_values("index")
    # the row label is the global index (= the row's position in the whole table), whatever
    # the partitions: the table is the same however archives are grouped
    out.index = pd.RangeIndex(0) if out.empty else pd.Index(out["index"].to_numpy(np.int64))
    return out


def stats_frame(files: dd.DataFrame) -> dd.DataFrame:
    """Per-image statistics of the valid images, in the partitions of ``files``.

    Examples
    --------
    >>> stats_frame(col.files()).columns.tolist()  # doctest: +SKIP
    ['index', 'filename', 'width', ...]
    """
    meta = stats_partition(empty_files_frame())
    return files.map_partitions(stats_partition, meta=meta)


def invalid_table(files: pd.DataFrame) -> pd.DataFrame:
    """Images that could not be used, columns :data:`INVALID_COLUMNS`, in archive order.

    Examples
    --------
    >>> from dedupdask.store import empty_files_frame
    >>> invalid_table(empty_files_frame()).columns.tolist()
    ['filename', 'archive', 'member', 'key', 'error_code', 'error_message', 'file_size']
    """
    bad = files[files["index"].isna()]
    return bad.loc[:, list(INVALID_COLUMNS)].reset_index(drop=True)


def invalid_frame(files: dd.DataFrame) -> dd.DataFrame:
    """:func:`invalid_table` of every archive, in the partitions of ``files``, in archive order.

    Examples
    --------
    >>> invalid_frame(col.files()).columns.tolist()  # doctest: +SKIP
    ['filename', 'archive', 'member', 'key', 'error_code', 'error_message', 'file_size']
    """
    return files.map_partitions(invalid_table, meta=invalid_table(empty_files_frame()))
