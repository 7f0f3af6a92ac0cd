"""Result tables stage: partitioned Parquet under ``results/``, read back lazily.

Every table of a run (similarity, outliers, components, stats, invalid, issues) is a folder
``results/<name>/`` of files ``part.<i>.parquet``, one per partition, and ``results/run.json``
records the layout under ``"tables"``::

    "tables": {"similarity": {"layout": "parts", "rows": 1234, "part_rows": [1000, 234]}, ...}

so that counts need no scan and :func:`open_table` builds a dask DataFrame whose partition
``i`` is the file ``part.<i>.parquet`` without opening it: only the first file's footer is
read (its schema is the table's ``meta``, and a damaged or incomplete first file is reported
at once). A damaged later file raises the same one-line
:class:`~dedupdask.store.WorkDirError` when its partition is computed. Row ``r`` of the table
has index ``r`` (known divisions when no partition is empty).

Runs written before this layout hold one file ``results/<name>.parquet`` per table and no
``"tables"`` entry; :func:`open_table` reads those as one partition (``layout: "file"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from .remote import StorageError
from .store import WorkDir, WorkDirError, parquet_table

__all__ = [
    "ROWS_PER_PART",
    "TableLayout",
    "open_table",
    "read_part",
    "table_from_pandas",
    "write_partitions",
    "write_table",
]

ROWS_PER_PART = 1_000_000
"""Rows per ``part.<i>.parquet`` of a table built in this process."""

RESULTS_DIR = "results"
REBUILD = "; rerun the analysis (run_mode=2) to rewrite it"

TableLayout = dict[str, Any]
"""One ``run.json["tables"]`` entry: ``layout`` (``"parts"`` or ``"file"``), ``rows``,
``part_rows``."""


def part_path(wd: WorkDir, name: str, i: int) -> str:
    """File-system path of partition ``i`` of table ``name``."""
    return wd.join(RESULTS_DIR, name, f"part.{i}.parquet")


def legacy_path(wd: WorkDir, name: str) -> str:
    """File-system path of table ``name`` in the one-file layout of earlier versions."""
    return wd.join(RESULTS_DIR, f"{name}.parquet")


def _parquet(df: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False, compression="zstd")
    return buf.getvalue()


def _cuts(n: int, rows_per_part: int) -> list[tuple[int, int]]:
    step = max(1, int(rows_per_part))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)] or [(0, 0)]


def remove_table(wd: WorkDir, name: str) -> None:
    """Remove table ``name`` in either layout (before it is written again)."""
    wd.remove(legacy_path(wd, name))
    folder = wd.join(RESULTS_DIR, name)
    if wd.fs.exists(folder):
        wd.fs.rm(folder, recursive=True)


def write_table(
    wd: WorkDir, name: str, df: pd.DataFrame, rows_per_part: int | None = None
) -> TableLayout:
    """Write ``df`` as ``results/<name>/part.<i>.parquet`` of at most ``rows_per_part`` rows.

    Each file is written atomically (:meth:`~dedupdask.store.WorkDir.write_bytes`); an empty
    table is one file with no rows (it carries the schema).

    Returns
    -------
    dict
        The layout for ``run.json["tables"][name]``.

    Examples
    --------
    >>> import tempfile
    >>> wd = WorkDir(tempfile.mkdtemp())
    >>> write_table(wd, "t", pd.DataFrame({"a": range(5)}), rows_per_part=2)
    {'layout': 'parts', 'rows': 5, 'part_rows': [2, 2, 1]}
    >>> open_table(wd, "t", _, required=("a",)).compute()["a"].tolist()
    [0, 1, 2, 3, 4]
    """
    remove_table(wd, name)
    wd.makedirs(RESULTS_DIR, name)
    cuts = _cuts(len(df), ROWS_PER_PART if rows_per_part is None else rows_per_part)
    for i, (lo, hi) in enumerate(cuts):
        wd.write_bytes(part_path(wd, name, i), _parquet(df.iloc[lo:hi].reset_index(drop=True)))
    return {"layout": "parts", "rows": int(len(df)), "part_rows": [hi - lo for lo, hi in cuts]}


def write_partitions(wd: WorkDir, name: str, frame: dd.DataFrame) -> TableLayout:
    """Write each partition of a dask DataFrame as ``results/<name>/part.<i>.parquet``.

    One task per partition (on the workers under a distributed scheduler); only the row
    counts come back.

    Examples
    --------
    >>> import tempfile
    >>> wd = WorkDir(tempfile.mkdtemp())
    >>> write_partitions(wd, "t", dd.from_pandas(pd.DataFrame({"a": range(5)}), npartitions=2))
    {'layout': 'parts', 'rows': 5, 'part_rows': [3, 2]}
    """
    import dask

    remove_table(wd, name)
    wd.makedirs(RESULTS_DIR, name)
    tasks = [
        dask.delayed(write_part_file, pure=False)(wd, part_path(wd, name, i), part)
        for i, part in enumerate(frame.to_delayed())
    ]
    rows = [int(r) for r in dask.compute(*tasks)]
    return {"layout": "parts", "rows": sum(rows), "part_rows": rows}


def write_part_file(wd: WorkDir, path: str, df: pd.DataFrame) -> int:
    """One partition as a Parquet file (its index dropped); its row count."""
    wd.write_bytes(path, _parquet(df.reset_index(drop=True)))
    return len(df)


def _conform(df: pd.DataFrame, columns: Sequence[str] | None) -> pd.DataFrame:
    """``df`` with exactly ``columns`` (missing ones null strings: name columns of old runs)."""
    if columns is None:
        return df
    extra = {c: pd.Series(pd.NA, index=df.index, dtype="string") for c in columns if c not in df}
    return df.assign(**extra).loc[:, list(columns)] if extra else df.loc[:, list(columns)]


def _check_columns(url: str, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise WorkDirError(url, f"has no column(s) {', '.join(missing)}{REBUILD}")


def read_part(
    spec: tuple[str, int, int | None],
    wd: WorkDir,
    required: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One partition of a results table (a ``dd.from_map`` function).

    Parameters
    ----------
    spec : (str, int, int or None)
        File path, index of the first row, expected rows (None: any).
    wd : WorkDir
        The work_dir.
    required : sequence of str
        Columns the file must have.
    names : sequence of str, optional
        Output columns (missing ones: null strings); None: the file's.

    Returns
    -------
    DataFrame
        Index: the rows' positions in the whole table.

    Raises
    ------
    WorkDirError
        The file is missing, not Parquet, lacks a required column or has the wrong row count.

    Examples
    --------
    >>> read_part(("work/results/components/part.0.parquet", 0, None), WorkDir("work"))  # doctest: +SKIP
    """
    path, start, rows = spec
    url = wd.url_of(path)
    try:
        data = wd.read_bytes(path)
    except FileNotFoundError as e:
        raise WorkDirError(url, f"is missing{REBUILD}") from e
    try:
        table = parquet_table(data)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise WorkDirError(url, f"not a readable Parquet file ({e}){REBUILD}") from e
    _check_columns(url, table.column_names, required)
    if rows is not None and table.num_rows != rows:
        raise WorkDirError(url, f"has {table.num_rows} rows, run.json records {rows}{REBUILD}")
    df = _conform(table.to_pandas(), names)
    df.index = pd.RangeIndex(start, start + len(df))
    return df


def _footer(wd: WorkDir, path: str, required: Sequence[str]) -> tuple[pa.Schema, int]:
    """Schema and row count of one Parquet file from its footer, or WorkDirError naming it."""
    url = wd.url_of(path)
    try:
        meta = wd.parquet_metadata(path)
    except FileNotFoundError as e:
        raise WorkDirError(url, f"is missing{REBUILD}") from e
    except StorageError:  # the storage failed, the file may be fine
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise WorkDirError(url, f"not a readable Parquet file ({e}){REBUILD}") from e
    schema = meta.schema.to_arrow_schema()
    _check_columns(url, schema.names, required)
    return schema, int(meta.num_rows)


def open_table(
    wd: WorkDir,
    name: str,
    layout: TableLayout | None,
    *,
    required: Sequence[str] = (),
    columns: Sequence[str] | None = None,
    version: str = "",
) -> dd.DataFrame:
    """Table ``name`` of ``results/`` as a dask DataFrame, one partition per file, lazily.

    Parameters
    ----------
    wd : WorkDir
        The work_dir.
    name : str
        Table name (``similarity``, ``components``...).
    layout : dict or None
        Its ``run.json["tables"]`` entry; None: the one-file layout of earlier versions.
    required : sequence of str
        Columns the files must have (checked on the first file here, on each when read).
    columns : sequence of str, optional
        Columns of the result, in order (missing ones: null strings); default: the file's.
    version : str
        Names this writing of the table (``run.json``'s ``created``): part of the tasks' keys.

    Returns
    -------
    dask.dataframe.DataFrame

    Examples
    --------
    >>> open_table(WorkDir("work"), "components", run["tables"]["components"]).head()  # doctest: +SKIP
    """
    legacy = layout is None or layout.get("layout") == "file"
    if legacy:
        counts: list[int | None] = [None]
    else:
        try:
            counts = [int(r) for r in layout["part_rows"]]  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            counts = []
        if not counts:
            raise WorkDirError(
                wd.url_of(wd.join(RESULTS_DIR, "run.json")),
                f"'tables' entry of {name!r} has no list 'part_rows'{REBUILD}",
            )
    schema, first_rows = _footer(wd, legacy_path(wd, name) if legacy else part_path(wd, name, 0), required)
    if legacy:
        counts = [first_rows]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
    cols = None if columns is None else tuple(columns)
    meta = _conform(schema.empty_table().to_pandas(), cols)
    divisions = None
    if all(c > 0 for c in counts):  # positions are the index: known divisions
        divisions = (*starts[:-1], starts[-1] - 1)
    specs = _PartSpecs(wd, name, starts, counts, legacy=legacy, version=version)
    return dd.from_map(
        read_part, specs, args=[wd, tuple(required), cols], meta=meta, divisions=divisions,
        label=f"dedupdask-{name}", enforce_metadata=False,
    )  # fmt: skip


class _PartSpecs(Sequence[tuple[str, int, "int | None"]]):
    """``(path, first row, rows)`` of each file of a table, made when asked (``dd.from_map``
    iterates over it) and tokenized once from the layout: a table of 40,000 files costs
    neither 40,000 tuples nor 40,000 tokens when it is opened."""

    def __init__(self, wd: WorkDir, name: str, starts: list[int], counts: list[int | None], *,
                 legacy: bool, version: str) -> None:  # fmt: skip
        self.wd, self.name, self.legacy, self.version = wd, name, legacy, version
        self.starts, self.counts = starts, counts

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, i: int) -> tuple[str, int, int | None]:  # type: ignore[override]
        if not 0 <= i < len(self.counts):
            raise IndexError(i)
        path = legacy_path(self.wd, self.name) if self.legacy else part_path(self.wd, self.name, i)
        return path, int(self.starts[i]), self.counts[i]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        counts = np.asarray([-1 if c is None else c for c in self.counts], dtype=np.int64)
        digest = hashlib.sha1(counts.tobytes()).hexdigest()
        return ("dedupdask-parts", self.wd.url, self.name, self.legacy, self.version, digest)


def table_from_pandas(df: pd.DataFrame, rows_per_part: int | None = None) -> dd.DataFrame:
    """An in-memory table as a dask DataFrame with the partitions :func:`write_table` writes.

    Examples
    --------
    >>> table_from_pandas(pd.DataFrame({"a": range(5)}), rows_per_part=2).npartitions
    3
    """
    cuts = _cuts(len(df), ROWS_PER_PART if rows_per_part is None else rows_per_part)
    df = df.reset_index(drop=True)
    return dd.from_pandas(df, npartitions=len(cuts), sort=True)

