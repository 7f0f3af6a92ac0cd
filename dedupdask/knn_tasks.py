"""kNN stage, partitioned -- tasks: the graphs of stages 2-5, whose outputs stay on the workers.

The task graphs of :func:`dedupdask.knn_partitioned.knn_edges_partitioned` (the tasks' work
is in :mod:`dedupdask.knn_buckets`). The calling process learns only sizes -- how many
members each bucket has, how many edges each row range -- never a per-image array:

2. **assign** (one task per archive, :func:`dedupdask.knn_buckets._assign_block`): every
   vector's ``(bucket, position)`` memberships, a small frame per archive. A **shuffle on
   the bucket** (``set_index`` with the divisions ``0, 1, ..., C``, so partition ``j`` holds
   bucket ``j``) assembles each bucket's members. A tree of concat tasks per bucket would
   need one edge from every archive to every bucket (``A x C``: 40,000 archives x 2,000
   buckets = 80M edges at LAION-400M); the shuffle is ``A`` input tasks and ``C`` output
   tasks around one barrier -- on a distributed client dask's peer-to-peer shuffle, which
   moves the rows between workers outside the task graph
   (:func:`dedupdask.analyses.routing.route` chooses the method). When the rows taking part are a
   Dask Series, a first shuffle by the archives' index ranges hands each assign task its own.
3. **split**: a bucket larger than a task may hold is split by a task (a k-means of its own
   members, :func:`dedupdask.knn_buckets._split_bucket`; cut in order when that makes no
   progress) whose parts stay on the workers; the client learns their sizes.
4. **search** (a task per bucket) and 5. **merge** (a task per row range): the buckets'
   lists are shuffled to the row ranges of their rows, so the graph is ``C + R`` tasks
   around a shuffle, not ``C x R`` edges (934 buckets x 15 ranges at 500k images, 100x as
   many at 5M); each range's final lists become one partition of the graph table
   (:mod:`dedupdask.analyses.graph`).

Member lists and merged ranges are persisted (``dask.persist``): on a distributed client
they stay in the workers' memory until the tasks that read them are done, and the graph
table until the caller drops it.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import numpy as np
import pandas as pd

from . import knn_buckets
from .analyses.graph import empty_graph
from .analyses.routing import route
from .knn_rows import KnnPlan, VectorBlock, VectorSource, _compute

__all__ = [
    "SPLIT_FILL",
    "assign_buckets",
    "rows_by_block",
    "search_and_merge",
    "split_oversized",
]

SPLIT_FILL = 0.5
"""An oversized bucket is split into parts that average this fraction of the capacity."""

SPLIT_LEVELS = 8
"""Rounds of k-means splits; a bucket still too large after them is cut in order."""

Delayed = Any  # dask.delayed.Delayed (persisted)


def _members_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {"bucket": pd.Series([], dtype="int32"), "position": pd.Series([], dtype="int64")}
    )


def _memberships(
    block: VectorBlock,
    plan: KnnPlan,
    scratch_path: str | None,
    first: int,
    taking: pd.DataFrame | None = None,
    start: int = 0,
) -> pd.DataFrame:
    """One archive's ``(bucket, position)`` rows: stage 2, a task per archive.

    ``taking``: a frame whose index is the global indices of the block's rows that take
    part (``start`` is the global index of its row 0); None = every row.

    Examples
    --------
    >>> _memberships(block, plan, None, 0).columns.tolist()  # doctest: +SKIP
    ['bucket', 'position']
    """
    labels = knn_buckets._assign_block(block, plan, scratch_path)
    if taking is not None:
        local = np.unique(taking.index.to_numpy(np.int64)) - start
        if local.size and (local[0] < 0 or local[-1] >= block.size):
            raise ValueError(f"{block.path}: rows taking part outside its {block.size} rows")
        out = np.ones(block.size, dtype=bool)
        out[local] = False
        labels[out] = -1
    flat = labels.ravel()
    used = flat >= 0
    positions = np.repeat(np.arange(first, first + block.size, dtype=np.int64), labels.shape[1])
    return pd.DataFrame({"bucket": flat[used].astype(np.int32), "position": positions[used]})


def rows_by_block(source: VectorSource, rows: Any) -> list[Delayed]:
    """The global indices in the Dask Series ``rows``, one partition per block of ``source``.

    A shuffle by the blocks' global index ranges (``set_index`` with their starts as
    divisions), so each assign task depends on one partition, whatever ``rows``'
    partitioning. The blocks must hold whole files (``rows=None``).
    """
    if any(b.rows is not None for b in source.blocks):
        raise ValueError("rows given as a Dask object need a source of whole files")
    starts = source.global_index(source.offsets[:-1]).tolist()
    end = int(starts[-1]) + source.blocks[-1].size
    frame = rows.rename("index").astype("int64").to_frame()
    return list(route(frame, "index", starts + [end]).to_delayed())


def _positions(part: pd.DataFrame) -> np.ndarray:
    """A bucket's members (increasing positions; int32 while they fit) from its partition."""
    p = np.sort(part["position"].to_numpy(np.int64))
    return p.astype(np.int32) if p.size == 0 or p[-1] < 2**31 - 1 else p


def _size(members: np.ndarray) -> int:
    return int(members.size)


def _sizes(parts: list[np.ndarray]) -> list[int]:
    return [int(p.size) for p in parts]


def assign_buckets(
    source: VectorSource,
    plan_key: Delayed,
    n_buckets: int,
    scratch_files: list[str | None],
    token: str,
    rows: Any = None,
) -> tuple[list[Delayed], list[int]]:
    """Stage 2: each non-empty bucket's members (persisted, on the workers) and their sizes.

    Parameters
    ----------
    source : VectorSource
        The vectors (one assign task per block).
    plan_key : Delayed
        The :class:`~dedupdask.knn_rows.KnnPlan`, one key shared by every task.
    n_buckets : int
        Centroids ``C`` (buckets ``0 .. C-1``).
    scratch_files : list
        Per block, where its projected rows go (None = not written).
    token : str
        Unique part of the task names.
    rows : dask.dataframe.Series, optional
        Global indices of the rows taking part (:func:`rows_by_block`); default all.

    Returns
    -------
    (list, list)
        Per non-empty bucket, in bucket order: a persisted ``Delayed`` of its members
        (increasing positions) and its size.
    """
    import dask.dataframe as dd

    firsts = source.offsets[:-1].tolist()
    taking = [None] * len(firsts) if rows is None else rows_by_block(source, rows)
    starts = source.global_index(source.offsets[:-1]).tolist()
    tasks = [
        dask.delayed(_memberships, pure=True)(
            b,
            plan_key,
            scratch,
            int(first),
            part,
            int(start),
            dask_key_name=f"dedupdask-knn-assign-{token}-{i}",
        )  # fmt: skip
        for i, (b, scratch, first, part, start) in enumerate(
            zip(source.blocks, scratch_files, firsts, taking, starts, strict=True)
        )
    ]
    frame = dd.from_delayed(tasks, meta=_members_meta(), verify_meta=False)
    by_bucket = route(frame, "bucket", range(n_buckets + 1))
    members = [
        dask.delayed(_positions, pure=True)(p, dask_key_name=f"dedupdask-knn-members-{token}-{j}")
        for j, p in enumerate(by_bucket.to_delayed())
    ]
    members = list(dask.persist(*members))
    (sizes,) = _compute([dask.delayed(_size, pure=True)(m) for m in members])
    keep = [j for j, s in enumerate(sizes) if s]
    return [members[j] for j in keep], [int(sizes[j]) for j in keep]


def _split_members(
    search_src: VectorSource,
    plan: KnnPlan,
    members: np.ndarray,
    parts: int,
    seed: int,
    capacity: int,
) -> list[np.ndarray]:
    """Stage 3, a task: an oversized bucket's non-empty parts (cut in order if no progress)."""
    sub = [s for s in knn_buckets._split_bucket(search_src, plan, members, parts, seed) if s.size]
    if not sub or max(s.size for s in sub) >= 0.9 * members.size:
        sub = knn_buckets._cut(members, capacity)
    return sub


def split_oversized(
    members: list[Delayed],
    sizes: list[int],
    *,
    capacity: int,
    m: int,
    search_key: Delayed,
    plan_key: Delayed,
    random_state: int,
    token: str,
) -> tuple[list[Delayed], list[int], int]:
    """Stage 3: buckets larger than ``capacity`` split until none is; parts stay on the workers.

    Returns the buckets (persisted ``Delayed`` member lists; buckets that fit first, in
    their order, then the parts of each split bucket), their sizes, and how many buckets
    were split.
    """
    splits = 0
    for level in range(SPLIT_LEVELS):
        big = [j for j, s in enumerate(sizes) if s > capacity]
        if not big:
            break
        splits += len(big)
        todo = [
            dask.delayed(_split_members, pure=True)(
                search_key,
                plan_key,
                members[j],
                max(2 * m + 1, math.ceil(sizes[j] * m / (capacity * SPLIT_FILL))),
                random_state + level,
                capacity,
                dask_key_name=f"dedupdask-knn-split-{token}-{level}-{i}",
            )
            for i, j in enumerate(big)
        ]
        todo = list(dask.persist(*todo))
        (got,) = _compute([dask.delayed(_sizes, pure=True)(t) for t in todo])
        fits = [j for j, s in enumerate(sizes) if s <= capacity]
        members = [members[j] for j in fits] + [
            t[q] for t, g in zip(todo, got, strict=True) for q in range(len(g))
        ]
        sizes = [sizes[j] for j in fits] + [int(s) for g in got for s in g]
    for j in [j for j, s in enumerate(sizes) if s > capacity]:  # still too big: cut in order
        cut = dask.delayed(knn_buckets._cut, pure=True)(members[j], capacity)
        n_parts = math.ceil(sizes[j] / capacity)
        members += [cut[q] for q in range(n_parts)]
        sizes += [capacity] * n_parts
    keep = [j for j, s in enumerate(sizes) if s <= capacity]
    return [members[j] for j in keep], [sizes[j] for j in keep], splits


def search_and_merge(
    buckets: list[Delayed],
    starts: np.ndarray,
    n: int,
    k: int,
    *,
    search_key: Delayed,
    source_key: Delayed,
    plan_key: Delayed,
    token: str,
) -> tuple[Any, list[int]]:
    """Stages 4-5: the graph table, one partition per row range, persisted on the workers.

    Each bucket's lists (a task per bucket) are shuffled to the row ranges of their rows
    (:func:`dedupdask.analyses.routing.route`), where one task per range merges them: ``C + R``
    tasks around a shuffle instead of an edge from every bucket to every range.

    Parameters
    ----------
    buckets : list
        Persisted member lists (:func:`assign_buckets`, :func:`split_oversized`).
    starts : ndarray
        First position of every row range (increasing).
    n : int
        Positions (the last range ends there).
    k : int
        Neighbours per row.
    search_key, source_key, plan_key : Delayed
        Search vectors, original vectors and plan, one key each.
    token : str
        Unique part of the task names.

    Returns
    -------
    (dask.dataframe.DataFrame, list)
        The graph table and the number of edges in each partition.
    """
    import dask.dataframe as dd

    found = [
        dask.delayed(knn_buckets._search_bucket_rows, pure=True)(
            search_key, source_key, plan_key, b, dask_key_name=f"dedupdask-knn-bucket-{token}-{j}"
        )
        for j, b in enumerate(buckets)
    ]
    cands = dd.from_delayed(found, meta=knn_buckets._candidates_meta(), verify_meta=False)
    by_range = route(cands, "row", [int(s) for s in starts] + [int(n)])
    merged = [
        dask.delayed(knn_buckets._merge_range_rows, pure=True)(
            source_key, k, part, dask_key_name=f"dedupdask-knn-merge-{token}-{r}"
        )
        for r, part in enumerate(by_range.to_delayed())
    ]
    merged = list(dask.persist(*merged))
    (lengths,) = _compute([dask.delayed(len, pure=True)(p) for p in merged])
    return dd.from_delayed(merged, meta=empty_graph(), verify_meta=False), [int(x) for x in lengths]
