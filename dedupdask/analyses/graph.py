"""Analysis stage, the kNN graph as a table: one row per (image, neighbour), partitioned by image.

The in-process path keeps a kNN graph as two ``[rows, k]`` arrays (positions into the array
of representatives, -1/NaN padding). On the workers the same graph is a Dask DataFrame of
edges, :data:`GRAPH_COLUMNS`, so that no process holds it whole:

- ``from`` -- global index of the image whose neighbour list this row belongs to;
- ``to`` -- global index of the neighbour (never ``from``);
- ``similarity`` -- float32 cosine similarity;
- ``rank`` -- int16 place in ``from``'s list (0 = most similar; ties by smaller ``to``).

Padding is dropped (an image with fewer than ``k`` neighbours has fewer rows; one with none
has no row). Partitions hold increasing, non-overlapping ranges of ``from``; inside a
partition rows are sorted by ``from`` then ``rank``. This is the contract between the kNN
stage and the stages after it; :func:`graph_frame` and :func:`graph_arrays` convert to and
from the array form, for the in-process path and for tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "GRAPH_COLUMNS",
    "GRAPH_PARTITION_ROWS",
    "empty_graph",
    "graph_arrays",
    "graph_frame",
    "graph_rows",
]

GRAPH_COLUMNS = ("from", "to", "similarity", "rank")
"""Columns of a kNN graph table (see the module docstring)."""

GRAPH_PARTITION_ROWS = 2_000_000
"""Edge rows per partition when :func:`graph_frame` splits in-process arrays."""

_DTYPES = {"from": "int64", "to": "int64", "similarity": "float32", "rank": "int16"}


def empty_graph() -> pd.DataFrame:
    """A graph table without rows (the meta of every graph frame).

    Examples
    --------
    >>> empty_graph().dtypes.astype(str).tolist()
    ['int64', 'int64', 'float32', 'int16']
    """
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in _DTYPES.items()})


def graph_rows(
    rows: np.ndarray, idx: np.ndarray, sim: np.ndarray, reps: np.ndarray | None = None
) -> pd.DataFrame:
    """The graph rows of some images from their neighbour arrays.

    Parameters
    ----------
    rows : ndarray
        int64 global index of each row of ``idx`` / ``sim``.
    idx : ndarray
        int64 ``[len(rows), k]`` neighbours, -1 = none: global indices, or positions into
        ``reps`` when it is given.
    sim : ndarray
        float32 ``[len(rows), k]`` similarities (NaN = none), most similar first.
    reps : ndarray, optional
        Global index of each position ``idx`` names.

    Returns
    -------
    DataFrame
        :data:`GRAPH_COLUMNS`, padding and self-edges dropped, ``rank`` renumbered from 0.

    Examples
    --------
    >>> g = graph_rows(np.array([5, 7]), np.array([[1, -1], [0, 1]]),
    ...                np.array([[0.9, np.nan], [0.8, 0.7]], np.float32), reps=np.array([5, 7]))
    >>> g[["from", "to", "rank"]].values.tolist()  # 7 -> 7 is a self-edge: dropped
    [[5, 7, 0], [7, 5, 0]]
    """
    rows = np.asarray(rows, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    sim = np.asarray(sim, dtype=np.float32)
    if idx.ndim != 2 or idx.shape != sim.shape or idx.shape[0] != rows.size:
        raise ValueError(
            f"graph arrays of shapes {idx.shape} / {sim.shape} do not match {rows.size} rows"
        )
    ok = (idx >= 0) & ~np.isnan(sim)
    r, c = np.nonzero(ok)  # row-major: by row, then by place in the list
    to = idx[r, c]
    if reps is not None:
        to = np.asarray(reps, dtype=np.int64)[to]
    frm = rows[r]
    keep = to != frm
    r, frm, to, s = r[keep], frm[keep], to[keep], sim[r[keep], c[keep]]
    starts = np.searchsorted(r, r, side="left")  # first kept entry of the same row
    rank = (np.arange(r.size) - starts).astype(np.int16)
    return pd.DataFrame({"from": frm, "to": to, "similarity": s, "rank": rank})


def graph_frame(
    reps: np.ndarray,
    idx: np.ndarray,
    sim: np.ndarray,
    *,
    partition_rows: int = GRAPH_PARTITION_ROWS,
) -> Any:
    """A kNN graph in array form (positions into ``reps``) as a Dask DataFrame of edges.

    Parameters
    ----------
    reps : ndarray
        Global index of each row (ascending).
    idx, sim : ndarray
        ``[len(reps), k]`` positions into ``reps`` (-1 = none) and similarities (NaN = none).
    partition_rows : int
        Edge rows per partition (about).

    Returns
    -------
    dask.dataframe.DataFrame
        :data:`GRAPH_COLUMNS` (see the module docstring).

    Examples
    --------
    >>> import dask
    >>> g = graph_frame(np.array([0, 2, 3]), np.array([[1], [0], [0]]),
    ...                 np.array([[0.9], [0.9], [0.5]], np.float32))
    >>> with dask.config.set(scheduler="sync"):
    ...     g.compute()[["from", "to"]].values.tolist()
    [[0, 2], [2, 0], [3, 0]]
    """
    import dask.dataframe as dd

    reps = np.asarray(reps, dtype=np.int64)
    if reps.size > 1 and np.any(np.diff(reps) <= 0):
        raise ValueError("reps must be strictly increasing")
    idx = np.asarray(idx, dtype=np.int64).reshape(reps.size, -1)
    sim = np.asarray(sim, dtype=np.float32).reshape(reps.size, -1)
    per = max(1, partition_rows // max(1, idx.shape[1]))  # images per partition
    starts = range(0, max(1, math.ceil(reps.size / per)) * per, per)
    parts = [
        graph_rows(reps[s : s + per], idx[s : s + per], sim[s : s + per], reps) for s in starts
    ]
    return dd.from_map(_identity, parts, meta=empty_graph(), enforce_metadata=False)


def _identity(part: pd.DataFrame) -> pd.DataFrame:
    return part


def graph_arrays(frame: Any, reps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A graph table back in array form: positions into ``reps``, ``k`` wide.

    For the in-process path and tests; it gathers the table (Dask or pandas). Rows of images
    not in ``reps`` and neighbours not in ``reps`` are errors.

    Examples
    --------
    >>> import dask
    >>> g = graph_frame(np.array([0, 2, 3]), np.array([[1], [0], [0]]),
    ...                 np.array([[0.9], [0.9], [0.5]], np.float32))
    >>> with dask.config.set(scheduler="sync"):
    ...     idx, sim = graph_arrays(g, np.array([0, 2, 3]), 1)
    >>> idx.tolist()
    [[1], [0], [0]]
    """
    if not isinstance(frame, pd.DataFrame):
        from ..scheduler import gather_frames

        (frame,) = gather_frames(frame)
    reps = np.asarray(reps, dtype=np.int64)
    idx = np.full((reps.size, k), -1, dtype=np.int64)
    sim = np.full((reps.size, k), np.nan, dtype=np.float32)
    if len(frame) == 0:
        return idx, sim
    frm = frame["from"].to_numpy(np.int64)
    to = frame["to"].to_numpy(np.int64)
    rank = frame["rank"].to_numpy(np.int64)
    row = np.searchsorted(reps, frm)
    col = np.searchsorted(reps, to)
    if (
        np.any(row >= reps.size) or np.any(reps[np.minimum(row, reps.size - 1)] != frm)
        or np.any(col >= reps.size) or np.any(reps[np.minimum(col, reps.size - 1)] != to)
    ):  # fmt: skip
        raise ValueError("the graph names images that are not among reps")
    keep = rank < k
    idx[row[keep], rank[keep]] = col[keep]
    sim[row[keep], rank[keep]] = frame["similarity"].to_numpy(np.float32)[keep]
    return idx, sim
