"""Analysis stage, image names on the workers: ``filename, archive, member, key`` beside each index.

The Dask counterpart of :func:`dedupdask.analyses.names.add_names`. The names live in the
per-archive Parquet files; :func:`names_frame` reads them in the partitions of ``col.files()`` with
valid images, indexed by the global index (the archives' offsets are its divisions, so nothing
is computed to find them). :func:`join_names` leaves a table's rows where they are: each of
its partitions asks the archive partitions for the names of the distinct images it names
(:func:`dedupdask.analyses.routing.route`, a shuffle on the workers) and fills the columns
from the answers. An image named by a million rows (a placeholder picture's exact copies)
costs one request per partition; the names table itself never moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .names import NAME_COLUMNS, gather_names
from .routing import NODE, REPLY, locate, route

if TYPE_CHECKING:
    from ..collect import Collection

__all__ = ["NAMES", "join_names", "names_frame"]

NAMES = ("filename", *NAME_COLUMNS)
"""Columns of :func:`names_frame`."""

_KEY = "_name_key"


def _names_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype="string") for c in NAMES}, index=pd.Index([], dtype=np.int64, name="index")
    )


def names_part(specs: tuple[tuple[Any, ...], ...]) -> pd.DataFrame:
    """The names of the valid images of consecutive archives, indexed by global index (a
    ``from_map`` part)."""
    from ..collect import read_archives_files

    df = read_archives_files(specs)
    df = df[df["index"].notna()]
    out = pd.DataFrame(
        {c: df[c].astype("string").to_numpy() for c in NAMES},
        index=pd.Index(df["index"].to_numpy(dtype=np.int64), name="index"),
    )
    return out.astype("string").sort_index()


def names_frame(col: Collection) -> Any:
    """``filename, archive, member, key`` of every valid image, in the partitions of
    :meth:`~dedupdask.collect.Collection.files` that hold any.

    Returns
    -------
    dask.dataframe.DataFrame
        Indexed by the global index; known divisions (each partition's first index); None
        when the work_dir has no valid image.

    Examples
    --------
    >>> names_frame(collect("work")).divisions[:3]  # doctest: +SKIP
    (0, 200000, 400000)
    """
    import dask.dataframe as dd

    plan = [p for p in col.partition_archives() if any(col.archives[i].n_valid for i in p)]
    if not plan:
        return None
    specs = [col._specs(p) for p in plan]
    last = col.archives[[i for i in plan[-1] if col.archives[i].n_valid][-1]]
    firsts = [col.archives[next(i for i in p if col.archives[i].n_valid)].offset for p in plan]
    divisions = (*firsts, last.offset + last.n_valid - 1)
    return dd.from_map(
        names_part, specs, meta=_names_meta(), divisions=divisions, label="dedupdask-names",
        enforce_metadata=False,
    )  # fmt: skip


def join_names(
    table: Any,
    names: Any,
    which: Mapping[str, str],
    *,
    filename: Mapping[str, str] | None = None,
) -> Any:
    """``table`` with the names of the images in its index columns, on the workers.

    Parameters
    ----------
    table : dask.dataframe.DataFrame
        Rows naming images by global index (int64 columns of ``which``; -1 = none).
    names : dask.dataframe.DataFrame
        :func:`names_frame`.
    which : mapping
        Index column -> suffix of its ``archive, member, key`` columns
        (:data:`dedupdask.analyses.names.PAIR_NAMES`, ``OUTLIER_NAMES``).
    filename : mapping, optional
        Index column -> name of a column for its ``filename``.

    Returns
    -------
    dask.dataframe.DataFrame
        ``table``'s rows (same partitions, same order) with the string columns added; an
        index that names no image gets nulls.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> n = dd.from_pandas(pd.DataFrame({"filename": ["a/x", "b/y"], "archive": ["a", "b"],
    ...     "member": ["x", "y"], "key": ["x", "y"]}, index=pd.Index([0, 1], name="index"),
    ...     dtype="string"), npartitions=2)
    >>> t = dd.from_pandas(pd.DataFrame({"from": [1, 0], "to": [0, -1]}), npartitions=1)
    >>> with dask.config.set(scheduler="sync"):
    ...     out = join_names(t, n, {"from": "_from", "to": "_to"}, filename={"from": "f"})
    ...     out.compute().sort_values("from")[["f", "key_from", "key_to"]].values.tolist()
    [['a/x', 'x', <NA>], ['b/y', 'y', 'x']]
    """
    filename = dict(filename or {})
    n = table.npartitions
    req_meta = pd.DataFrame({NODE: np.int64(0), REPLY: np.int64(0)}, index=[])
    req = table.map_partitions(_asks, list(which), meta=req_meta, enforce_metadata=False)
    asked = route(req, NODE, tuple(int(d) for d in names.divisions))
    ans_meta = pd.DataFrame({REPLY: pd.Series(dtype=np.int64), _KEY: pd.Series(dtype=np.int64),
                             **{c: pd.Series(dtype="string") for c in NAMES}})  # fmt: skip
    answers = names.map_partitions(_answer, asked, meta=ans_meta, align_dataframes=False, enforce_metadata=False)
    back = route(answers, REPLY, tuple(range(n + 1)))
    added: dict[str, str] = {}
    for col, sfx in which.items():
        if col in filename:
            added[filename[col]] = "string"
        added.update({f"{c}{sfx}": "string" for c in NAME_COLUMNS})
    meta = table._meta.assign(**{c: pd.Series(dtype=t) for c, t in added.items()})
    return table.map_partitions(
        _attach, back, dict(which), filename, meta=meta, align_dataframes=False, enforce_metadata=False
    )


def _asks(df: pd.DataFrame, columns: list[str], partition_info: dict | None = None) -> pd.DataFrame:
    """One request per distinct image this partition names (-1 = none asks nothing)."""
    keys = np.unique(np.concatenate([df[c].to_numpy(dtype=np.int64) for c in columns]))
    keys = keys[keys >= 0]
    reply = partition_info["number"] if partition_info else 0
    return pd.DataFrame({NODE: keys, REPLY: np.full(keys.size, reply, dtype=np.int64)})


def _answer(names: pd.DataFrame, asked: pd.DataFrame) -> pd.DataFrame:
    """The names of the asked images of this archive (a key it does not hold gets nulls)."""
    keys = asked.index.to_numpy(dtype=np.int64)
    pos, ok = locate(names.index.to_numpy(dtype=np.int64), keys)
    out = pd.DataFrame({REPLY: asked[REPLY].to_numpy(dtype=np.int64), _KEY: keys})
    for c, vals in gather_names(names, NAMES, pos, ok).items():
        out[c] = vals
    return out


def _attach(
    rows: pd.DataFrame, back: pd.DataFrame, which: dict[str, str], filename: dict[str, str]
) -> pd.DataFrame:
    back = back.sort_values(_KEY, kind="stable").reset_index(drop=True)
    got = back[_KEY].to_numpy(dtype=np.int64)
    out = rows.copy()
    for col, sfx in which.items():
        pos, ok = locate(got, rows[col].to_numpy(dtype=np.int64))
        cols = ([(filename[col], "filename")] if col in filename else []) + [(f"{c}{sfx}", c) for c in NAME_COLUMNS]
        vals = gather_names(back, tuple(src for _, src in cols), pos, ok)
        for name, src in cols:
            out[name] = vals[src]
    return out
