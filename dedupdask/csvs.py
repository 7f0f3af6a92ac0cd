"""CSV stage: fastdup's CSV files written from the result tables, partition by partition.

Every partition of a results table (:mod:`dedupdask.tables`) becomes one CSV part, written
by a task (on the workers when the run has them) under ``results/.csv-parts/<file>/``; the
parts are then joined into ``work_dir/<file>`` by a streaming copy
(:meth:`dedupdask.store.WorkDir.write_joined`: one block at a time through this process, a
multipart upload on S3) and removed. No table is gathered here. fastdup's row orders are kept:

============================  ================================================================
``atrain_features.dat.csv``   ``index,filename`` of the valid images, by index
``similarity.csv``            ``from,to,distance``, both directions of every pair, by distance
                              descending, then ``from``, ``to`` (sorted on the workers by one
                              int64 key when the table has more than one partition)
``outliers.csv``              ``from,to,distance``, the strongest outliers last (the table's
                              rows reversed, its partitions written last to first)
``connected_components.csv``  ``__id,component_id,component_size``, one row per valid image
``atrain_stats.csv``          fastdup's stats columns
``atrain_features.bad.csv``   ``index,filename,error_code,filesize``, index = row of the table
``image_issues.csv``          the issues table
============================  ================================================================
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from .analyses import BAD_CSV_COLUMNS, ISSUE_COLUMNS, STATS_CSV_COLUMNS
from .analyses.pairs_dask import pair_key
from .analyses.routing import sort_by_key
from .store import WorkDir
from .tables import RESULTS_DIR

__all__ = ["CSV_FILES", "PARTS_DIR", "csv_frames", "sorted_pairs", "write_csv_frames", "write_csvs"]

CSV_FILES = (
    "atrain_features.dat.csv", "similarity.csv", "outliers.csv", "connected_components.csv",
    "atrain_stats.csv", "atrain_features.bad.csv", "image_issues.csv",
)  # fmt: skip
PARTS_DIR = ".csv-parts"
_PAIR_ORDER = (["distance", "from", "to"], [False, True, True])
_KEY = "_sort_key"


def both_directions(sim: pd.DataFrame) -> pd.DataFrame:
    """``from,to,distance`` rows of each pair both ways (fastdup lists both).

    Examples
    --------
    >>> both_directions(pd.DataFrame({"from": [1], "to": [4], "similarity": [0.9]})).values.tolist()
    [[1.0, 4.0, 0.9], [4.0, 1.0, 0.9]]
    """
    return pd.concat(
        [
            pd.DataFrame({"from": sim["from"], "to": sim["to"], "distance": sim["similarity"]}),
            pd.DataFrame({"from": sim["to"], "to": sim["from"], "distance": sim["similarity"]}),
        ],
        ignore_index=True,
    )


def _sorted_pairs(df: pd.DataFrame) -> pd.DataFrame:
    by, ascending = _PAIR_ORDER
    return df.sort_values(by, ascending=ascending, kind="stable")


def _pair_key(df: pd.DataFrame) -> pd.DataFrame:
    key = pair_key(df["distance"].to_numpy(np.float32), df["from"].to_numpy(np.int64))
    return df.assign(**{_KEY: key})


def _outlier_rows(out: pd.DataFrame) -> pd.DataFrame:
    out = out.iloc[::-1]
    return pd.DataFrame({"from": out["index"], "to": out["nearest"], "distance": out["similarity"]})


def _bad_rows(inv: pd.DataFrame) -> pd.DataFrame:
    """fastdup's bad-file list; ``index`` = the row's position in the whole table."""
    return pd.DataFrame(
        {
            "index": np.asarray(inv.index, dtype=np.int64),
            "filename": inv["filename"],
            "error_code": inv["error_code"],
            "filesize": inv["file_size"],
        }
    ).loc[:, list(BAD_CSV_COLUMNS)]


def _rename_components(comp: pd.DataFrame) -> pd.DataFrame:
    return comp.rename(columns={"index": "__id"})


def _each(t: dd.DataFrame, fn: Any) -> dd.DataFrame:
    return t.map_partitions(fn, meta=fn(t._meta))


def sorted_pairs(pairs: dd.DataFrame) -> dd.DataFrame:
    """``from,to,distance`` rows in fastdup's order: distance descending, then ``from``, ``to``
    (sorted on the workers by one int64 key when there is more than one partition)."""
    if pairs.npartitions > 1:
        keyed = pairs.map_partitions(_pair_key, meta=pairs._meta.assign(**{_KEY: np.int64(0)}))
        return sort_by_key(keyed, _KEY, ["to"])[["from", "to", "distance"]]
    return _each(pairs, _sorted_pairs)


def csv_frames(tables: Mapping[str, dd.DataFrame]) -> dict[str, tuple[dd.DataFrame, bool]]:
    """Each CSV file as a dask DataFrame, and whether its partitions go last to first.

    ``tables`` are the result tables read back from ``results/`` (row ``r`` has index ``r``).

    Examples
    --------
    >>> frames = csv_frames(tables)  # doctest: +SKIP
    >>> frames["similarity.csv"][0].npartitions  # doctest: +SKIP
    """

    stats = tables["stats"]
    return {
        "atrain_features.dat.csv": (stats[["index", "filename"]], False),
        "similarity.csv": (sorted_pairs(_each(tables["similarity"], both_directions)), False),
        "outliers.csv": (_each(tables["outliers"], _outlier_rows), True),
        "connected_components.csv": (_each(tables["components"], _rename_components), False),
        "atrain_stats.csv": (stats[list(STATS_CSV_COLUMNS)], False),
        "atrain_features.bad.csv": (_each(tables["invalid"], _bad_rows), False),
        "image_issues.csv": (tables["issues"][list(ISSUE_COLUMNS)], False),
    }


def write_part(wd: WorkDir, path: str, df: pd.DataFrame, header: bool) -> int:
    """One partition as CSV at ``path`` (header only in the first part); its size in bytes."""
    data = df.to_csv(index=False, header=header).encode()
    wd.write_bytes(path, data)
    return len(data)


def write_csvs(wd: WorkDir, tables: Mapping[str, dd.DataFrame]) -> dict[str, dict[str, int]]:
    """Write every CSV of :data:`CSV_FILES` into ``wd`` from ``tables``, by partition.

    All parts are written in one ``dask.compute`` (each table's files are read once), then
    each file is joined from its parts.

    Returns
    -------
    dict
        Per file: ``parts`` and ``bytes`` (for ``run.json``).

    Examples
    --------
    >>> write_csvs(WorkDir("work"), tables)["similarity.csv"]  # doctest: +SKIP
    {'parts': 1, 'bytes': 2361}
    """
    return write_csv_frames(wd, csv_frames(tables))


def write_csv_frames(wd: WorkDir, frames: Mapping[str, tuple[dd.DataFrame, bool]]) -> dict[str, dict[str, int]]:
    """Write each ``name: (frame, reverse)`` of ``frames`` as ``wd/<name>``, one part per
    partition (last to first when ``reverse``), all parts in one ``dask.compute``, then joined.

    Returns
    -------
    dict
        Per file: ``parts`` and ``bytes``.
    """
    root = wd.join(RESULTS_DIR, PARTS_DIR)
    if wd.fs.exists(root):
        wd.fs.rm(root, recursive=True)
    paths: dict[str, list[str]] = {}
    tasks = []
    for name, (frame, reverse) in frames.items():
        parts = frame.to_delayed()
        parts = parts[::-1] if reverse else parts
        wd.makedirs(RESULTS_DIR, PARTS_DIR, name)
        paths[name] = [posixpath.join(root, name, f"part.{i}.csv") for i in range(len(parts))]
        tasks += [
            dask.delayed(write_part, pure=False)(wd, p, part, i == 0)
            for i, (p, part) in enumerate(zip(paths[name], parts, strict=True))
        ]
    sizes = iter(dask.compute(*tasks))
    about = {}
    for name, ps in paths.items():
        wd.write_joined(wd.join(name), ps)
        about[name] = {"parts": len(ps), "bytes": int(sum(next(sizes) for _ in ps))}
    wd.fs.rm(root, recursive=True)
    return about
