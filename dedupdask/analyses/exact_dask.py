"""Analysis stage, exact duplicates on the workers: ``md5`` / ``pixel_md5`` groups of a Dask DataFrame.

The same groups as :func:`dedupdask.analyses.exact.exact_groups` -- the connected components
of "same ``md5``" and "same ``pixel_md5``", each represented by its smallest global index, null
and empty keys never matching -- from the per-archive rows (a Dask DataFrame with ``index``
and the key columns, consecutive archives per partition) without gathering them:

1. :func:`exact_edges`: each partition finds the smallest index of every key among its own
   rows; these minima (one row per distinct key and partition) are shuffled on the key, the
   global minimum is found, and it goes back only to the partitions that do not hold it.
   Each image then gets the edge image -> smallest index with the same key.
2. :func:`exact_groups_dask`: the components of those edges
   (:func:`dedupdask.analyses.components_dask.components_table_dask`) give every image its
   representative, linking ``md5`` and ``pixel_md5`` chains (A~B by bytes, B~C by pixels).

A key shared by a million images (a placeholder picture) costs one row per partition in
the shuffle, not one per image. The key columns are opaque strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .components_dask import PARTITION_ROWS, DaskComponents, components_table_dask
from .exact import ExactGroups
from .routing import numbered, route, shuffle_method

__all__ = [
    "EDGE_COLUMNS",
    "EXACT_COLUMNS",
    "EXACT_KEYS",
    "INPUT_KEYS",
    "exact_and_input_frames",
    "exact_and_input_groups",
    "exact_edges",
    "exact_groups_dask",
]

EXACT_KEYS = ("md5", "pixel_md5")
"""The columns whose equal values make images exact duplicates."""

EDGE_COLUMNS = ("from", "to")
EXACT_COLUMNS = ("index", "rep", "group_size")
"""Columns of :func:`exact_groups_dask`'s table: ``rep`` is :attr:`ExactGroups.rep`."""

_I64 = np.int64


def exact_edges(files: Any, *, keys: Sequence[str] = EXACT_KEYS, first: int | None = None) -> Any:
    """Edges image -> smallest index with the same key, for every key column, on the workers.

    Parameters
    ----------
    files : dask.dataframe.DataFrame
        Columns ``index`` (global index; null for images that are not valid) and ``keys``
        (strings; null or empty never match), e.g. the per-archive Parquet rows.
    keys : sequence of str
        Key columns.
    first : int, optional
        Also say which edges the first ``first`` key columns give: a bool column ``first``
        (one pass over ``files`` serves two groupings, e.g. the exact groups and the input
        groups of :func:`exact_and_input_frames`).

    Returns
    -------
    dask.dataframe.DataFrame
        int64 ``from``, ``to`` with ``from > to``, at most one row per (image, key column)
        and none for an image that is its key's smallest index; one partition per input
        partition, not computed.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f = pd.DataFrame({"index": [0, 1, 2, 3], "md5": ["a", "b", "a", "c"],
    ...                   "pixel_md5": ["x", "y", "z", "y"]})
    >>> with dask.config.set(scheduler="sync"):
    ...     e = exact_edges(dd.from_pandas(f, npartitions=2)).compute()
    >>> sorted(map(tuple, e.values.tolist()))
    [(2, 0), (3, 1)]
    """
    keys = list(keys)
    if not keys:
        raise ValueError("exact_edges needs at least one key column")
    for col in ("index", *keys):
        if col not in files.columns:
            raise ValueError(f"files has no column {col!r} (columns: {list(files.columns)})")
    if not pd.api.types.is_numeric_dtype(files._meta["index"].dtype):
        raise ValueError(f"files column 'index' must be integer, got {files._meta['index'].dtype}")
    rows, divisions = numbered(files[["index", *keys]])
    part_meta = pd.DataFrame(
        {"_part": _I64(0), "col": np.int8(0), "key": pd.Series(dtype="string"), "low": _I64(0)},
        index=[],
    )
    minima = rows.map_partitions(_key_minima, keys, meta=part_meta, enforce_metadata=False)
    by_key = minima.shuffle(
        on=["col", "key"], npartitions=rows.npartitions, shuffle_method=shuffle_method()
    )
    answers = by_key.map_partitions(_global_minima, meta=part_meta, enforce_metadata=False)
    back = route(answers, "_part", divisions)
    meta = pd.DataFrame({c: _I64(0) for c in EDGE_COLUMNS}, index=[])
    if first is not None:
        meta = meta.assign(first=np.bool_(False))
    return rows.map_partitions(
        _key_edges, back, keys, first, meta=meta, align_dataframes=False, enforce_metadata=False
    )


def _valid_keys(rows: pd.DataFrame, keys: list[str]) -> list[tuple[int, np.ndarray, pd.Series]]:
    """Per key column: (column number, indices, keys) of rows with an index and a key."""
    out = []
    has_index = rows["index"].notna().to_numpy(dtype=bool)
    for i, col in enumerate(keys):
        key = rows[col].astype("string")
        ok = has_index & (key.notna() & (key != "")).to_numpy(dtype=bool)
        index = rows["index"].to_numpy(dtype=_I64, na_value=-1)[ok]
        out.append((i, index, key[ok].reset_index(drop=True)))
    return out


def _key_minima(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per distinct (key column, key) of a partition: its smallest index there."""
    part = _I64(rows.index[0]) if len(rows) else _I64(0)
    frames = []
    for i, idx, key in _valid_keys(rows, keys):
        low = pd.Series(idx).groupby(key.to_numpy(), sort=False).min()
        frames.append(
            pd.DataFrame(
                {
                    "_part": np.full(low.size, part, dtype=_I64),
                    "col": np.full(low.size, i, dtype=np.int8),
                    "key": pd.array(low.index, dtype="string"),
                    "low": low.to_numpy(dtype=_I64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _global_minima(minima: pd.DataFrame) -> pd.DataFrame:
    """Every (key, partition) whose local minimum is not the key's global one gets the global one."""
    if minima.empty:
        return minima
    low = minima.groupby(["col", "key"], sort=False, observed=True)["low"].transform("min")
    behind = (minima["low"] > low).to_numpy()
    return minima.loc[behind].assign(low=low[behind].to_numpy(dtype=_I64))


def _key_edges(
    rows: pd.DataFrame, back: pd.DataFrame, keys: list[str], first: int | None = None
) -> pd.DataFrame:
    """Edges of one partition: each image to its key's smallest index here or, if sent, anywhere."""
    src, dst, tag = [], [], []
    for i, idx, key in _valid_keys(rows, keys):
        rep = np.array(pd.Series(idx).groupby(key.to_numpy(), sort=False).transform("min"), dtype=_I64)
        mine = back[back["col"].to_numpy() == i]
        if len(mine):
            glob = pd.Series(mine["low"].to_numpy(dtype=_I64), index=pd.Index(mine["key"]))
            far = key.map(glob).astype("Int64").to_numpy(dtype=_I64, na_value=-1)
            hit = far >= 0
            rep[hit] = far[hit]
        moved = rep != idx
        src.append(idx[moved])
        dst.append(rep[moved])
        tag.append(np.full(int(moved.sum()), first is not None and i < first))
    edges = pd.DataFrame({"from": np.concatenate(src), "to": np.concatenate(dst)}, dtype=_I64)
    if first is not None:
        edges["first"] = np.concatenate(tag).astype(bool)
    # same target by md5 and by pixel_md5 (and input_md5): the rows come in key-column order,
    # so the one kept is that of the first column giving the edge (``first`` True if any does)
    return edges.drop_duplicates(["from", "to"], ignore_index=True)


def exact_groups_dask(
    files: Any,
    n: int | None = None,
    *,
    keys: Sequence[str] = EXACT_KEYS,
    partition_rows: int = PARTITION_ROWS,
) -> DaskComponents:
    """Exact-duplicate groups of a Dask DataFrame of images, on the workers.

    Parameters
    ----------
    files : dask.dataframe.DataFrame
        ``index`` and the ``keys`` columns (see :func:`exact_edges`).
    n : int, optional
        The valid images are ``0..n-1`` (as in ``done.json``); without it they are the
        non-null ``index`` values (one more pass over ``files``).
    keys : sequence of str
        Key columns.
    partition_rows : int
        Images per partition of the result.

    Returns
    -------
    DaskComponents
        ``table`` with columns :data:`EXACT_COLUMNS` -- ``rep`` the smallest index of the
        image's group (equal to :attr:`ExactGroups.rep`), ``group_size`` its number of
        images -- one row per valid image in index order; and the parents changed per
        iteration.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f = pd.DataFrame({"index": [0, 1, 2, 3], "md5": ["a", "b", "a", "c"],
    ...                   "pixel_md5": ["x", "y", "z", "y"]})
    >>> with dask.config.set(scheduler="sync"):
    ...     g = exact_groups_dask(dd.from_pandas(f, npartitions=2), 4)
    ...     g.table.compute()["rep"].tolist()
    [0, 1, 0, 1]
    """
    edges = exact_edges(files, keys=keys)
    if n is None:
        nodes = files["index"].dropna().astype(_I64)
        res = components_table_dask(edges, nodes=nodes, partition_rows=partition_rows)
    else:
        res = components_table_dask(edges, n, partition_rows=partition_rows)
    return DaskComponents(table=_group_table(res.table), changed=res.changed)


def _group_table(components: Any) -> Any:
    """A components table (``index, component_id, component_size``) as :data:`EXACT_COLUMNS`."""
    return components.rename(columns={"component_id": "rep", "component_size": "group_size"})


INPUT_KEYS = ("md5", "pixel_md5", "input_md5")
"""The columns whose equal values make images' model inputs equal (the input groups)."""


def exact_and_input_groups(
    files: Any, n: int, *, partition_rows: int = PARTITION_ROWS
) -> tuple[ExactGroups, ExactGroups]:
    """The exact groups and the input groups (:func:`dedupdask.analyses.exact.expand_graph`),
    found on the workers; only the representatives (int64 per image) come back.

    Equal to ``exact_groups(md5, pixel_md5)`` and ``exact_groups(md5, pixel_md5, input_md5)``
    of the gathered columns; the hashes never leave the workers.

    Parameters
    ----------
    files : dask.dataframe.DataFrame
        ``index`` and :data:`INPUT_KEYS` (a missing ``input_md5`` counts as null).
    n : int
        Valid images (``0..n-1``).
    partition_rows : int
        Images per partition of the components.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f = pd.DataFrame({"index": [0, 1, 2], "md5": ["a", "b", "c"],
    ...                   "pixel_md5": ["x", "y", "x"], "input_md5": ["p", "p", "q"]})
    >>> with dask.config.set(scheduler="sync"):
    ...     g, i = exact_and_input_groups(dd.from_pandas(f, npartitions=2), 3)
    >>> g.rep.tolist(), i.rep.tolist()
    ([0, 1, 0], [0, 0, 0])
    """
    from ..scheduler import gather_frames

    exact, inputs = exact_and_input_frames(files, n, partition_rows=partition_rows)
    a, b = gather_frames(exact["rep"], inputs["rep"])
    return ExactGroups(a.to_numpy(dtype=_I64)), ExactGroups(b.to_numpy(dtype=_I64))


def exact_and_input_frames(
    files: Any, n: int, *, partition_rows: int = PARTITION_ROWS
) -> tuple[Any, Any]:
    """The exact groups and the input groups as Dask DataFrames left on the workers.

    :func:`exact_and_input_groups` without its gather: the ``table`` of
    :func:`exact_groups_dask` for :data:`EXACT_KEYS` and for :data:`INPUT_KEYS` (columns
    :data:`EXACT_COLUMNS`, one row per valid image in index order, indexed by the image with
    known divisions, persisted). One pass over ``files`` reading four of its columns: the
    edges of all :data:`INPUT_KEYS`, tagged with whether :data:`EXACT_KEYS` give them.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f = pd.DataFrame({"index": [0, 1, 2], "md5": ["a", "b", "c"],
    ...                   "pixel_md5": ["x", "y", "x"], "input_md5": ["p", "p", "q"]})
    >>> with dask.config.set(scheduler="sync"):
    ...     g, i = exact_and_input_frames(dd.from_pandas(f, npartitions=2), 3)
    ...     g.compute()["rep"].tolist(), i.compute()["group_size"].tolist()
    ([0, 1, 0], [3, 3, 3])
    """
    if "input_md5" not in files.columns:
        files = files.assign(input_md5=pd.Series(pd.NA, dtype="string"))
    # one pass over the files (the input keys extend the exact ones): the edges are small --
    # one per image that is not its group's smallest index -- and persisted for both groupings
    edges = exact_edges(files[["index", *INPUT_KEYS]], keys=INPUT_KEYS, first=len(EXACT_KEYS))
    edges = edges.persist()
    exact = components_table_dask(edges[edges["first"]], n, partition_rows=partition_rows)
    inputs = components_table_dask(edges, n, partition_rows=partition_rows)
    return _group_table(exact.table), _group_table(inputs.table)
