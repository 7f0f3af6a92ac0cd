"""Analysis stage, outlier groups' search on the workers: closed groups' members compared with
every image, without any per-member state here.

The distributed half of :func:`dedupdask.analyses.groups.search_outside`, for
:func:`dedupdask.analyses.groups_dask.outlier_frame`. What this process learns is counts: how
many members were chosen, and how many of the searched ones each partition holds.

1. the chosen members (a Dask DataFrame, a few per closed group) are cut to
   ``outlier_search_members`` on the workers: every partition keeps its best by
   :func:`~dedupdask.analyses.groups.within_cap`, then every merge of
   :data:`FAN_IN` of those keeps its best (the best of a union is the best of the partial
   bests), down to one task of at most that many rows;
2. the searched members go to the partition of ``col.files()`` that holds them
   (:func:`~dedupdask.analyses.routing.route`), which reads just their rows from its archives'
   vector files (ranged reads) and normalises them;
3. consecutive members (in index order, as in one process) make chunks of
   :data:`~dedupdask.analyses.groups.QUERY_CHUNK` queries, persisted on the workers;
4. one task per archive block and chunk (:func:`~dedupdask.analyses.groups.best_outside`:
   the block is read once and held while its chunks pass), the answers for a chunk merged
   :data:`FAN_IN` at a time (:func:`~dedupdask.analyses.groups.merge_best`), giving each
   query's ``(label, sim, other)`` row: one partition per chunk.

Memory per task: an archive's vectors (as read and normalised), one chunk (4096 x d float32)
and one product (4096 x :data:`~dedupdask.analyses.groups.BLOCK_ROWS` float32, 64 MiB),
whatever the number of members. At 400M images in 40,000 archives of 10,000 and the default
10,000 members (d = 1280): 3 chunks, 120,000 search tasks of at most ~0.9 s of one core (23
core-hours at the measured 121.6 GFLOP/s), ~8,000 merges of 48 KB answers, 51 MB of member
rows read, and every archive's vectors read once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..knn import normalize_rows
from .groups import QUERY_CHUNK, best_outside, merge_best, within_cap
from .routing import route

if TYPE_CHECKING:
    from ..collect import Collection

__all__ = ["FAN_IN", "search_members"]

FAN_IN = 16
"""Partial results merged by one task (the cut's picks, a chunk's answers from the archives)."""

_I64 = np.int64


def _top(parts: list[pd.DataFrame], cap: int) -> pd.DataFrame:
    """The members of ``parts`` (``rep, group, bound``) that :func:`within_cap` keeps."""
    got = pd.concat([p.reset_index(drop=True) for p in parts], ignore_index=True)
    keep = within_cap(got["bound"].to_numpy(np.float32), got["rep"].to_numpy(_I64), cap)
    return got.loc[keep, ["rep", "group", "bound"]].reset_index(drop=True)


def _rows(df: pd.DataFrame) -> int:
    return len(df)


def _query_piece(wd: Any, files: tuple[tuple[str, int, int], ...], d: int, part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The searched members of one partition's archives (``files``: each archive's vector file,
    offset and valid count): their unit vectors (rows read alone) and group labels."""
    from ..knn_rows import read_file_rows

    reps = part.index.to_numpy(dtype=_I64)  # sorted by the route
    vecs = [
        read_file_rows(wd, path, d, "<f4", reps[(reps >= off) & (reps < off + n)] - off)
        for path, off, n in files
    ]
    return normalize_rows(np.concatenate(vecs) if len(vecs) > 1 else vecs[0]), part["group"].to_numpy(_I64)


def _chunk(pieces: list[tuple[np.ndarray, np.ndarray]], cuts: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Queries ``[lo, hi)`` of each piece, concatenated: one chunk."""
    q = np.concatenate([p[0][lo:hi] for p, (lo, hi) in zip(pieces, cuts, strict=True)])
    return q, np.concatenate([p[1][lo:hi] for p, (lo, hi) in zip(pieces, cuts, strict=True)])


def _against(
    chunk: tuple[np.ndarray, np.ndarray], block: np.ndarray, labels: pd.DataFrame, offset: int
) -> Any:
    """The chunk against one archive's vectors (global rows ``offset..``); ``labels`` holds the
    groups of its partition's images, indexed by global index."""
    at = labels.index.to_numpy(_I64)
    lo, hi = np.searchsorted(at, [offset, offset + block.shape[0]])
    return best_outside(chunk[0], chunk[1], block, labels["group"].to_numpy(_I64)[lo:hi], offset)


def _found(chunk: tuple[np.ndarray, np.ndarray], best: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    sim, idx = best
    return pd.DataFrame(
        {"label": chunk[1], "sim": np.where(idx >= 0, sim, np.nan).astype(np.float32), "other": idx}
    )


def _tree(fn: Any, items: list[Any], *args: Any) -> Any:
    """``fn`` over ``items`` as a tree of delayed calls, :data:`FAN_IN` inputs each."""
    import dask

    level = list(items)
    while len(level) > 1:
        level = [dask.delayed(fn)(level[i : i + FAN_IN], *args) for i in range(0, len(level), FAN_IN)]
    return level[0]


def search_members(
    col: Collection, names: Any, state: Any, chosen: Any, cap: int
) -> tuple[Any | None, int, int]:
    """The chosen members' most similar image outside their group, on the workers.

    Parameters
    ----------
    col : Collection
        The done archives (their vectors).
    names : dask.dataframe.DataFrame
        :func:`~dedupdask.analyses.names_dask.names_frame`: the partitions of ``col.files()``
        with valid images (its divisions are their first indices).
    state : dask.dataframe.DataFrame
        Every image's ``group`` (indexed by global index, known divisions).
    chosen : dask.dataframe.DataFrame
        ``rep, group, bound``: the members to compare with every image (unique ``rep``).
    cap : int
        The most members searched (``outlier_search_members``).

    Returns
    -------
    (dask.dataframe.DataFrame or None, int, int)
        ``label, sim, other`` per searched member (None when none is), how many were
        searched and how many the cap left out.

    Examples
    --------
    >>> found, searched, left = search_members(col, names, state, chosen, 10_000)  # doctest: +SKIP
    """
    import dask
    import dask.dataframe as dd

    (chosen,) = dask.persist(chosen)
    parts = chosen.to_delayed()
    kept = _tree(_top, [dask.delayed(_top)([p], cap) for p in parts], cap)  # one task, <= cap rows
    meta = pd.DataFrame({"rep": _I64(0), "group": _I64(0), "bound": np.float32(0)}, index=[])
    divs = tuple(int(d) for d in names.divisions)
    (by_archive,) = dask.persist(route(dd.from_delayed([kept], meta=meta, verify_meta=False), "rep", divs))
    per_part, counts = dask.compute(
        [dask.delayed(_rows)(p) for p in parts], [dask.delayed(_rows)(p) for p in by_archive.to_delayed()]
    )  # counts per partition and per archive: all that comes here
    total, searched = int(sum(per_part)), int(sum(counts))
    if not searched:
        return None, 0, total

    plan = [[col.archives[i] for i in p if col.archives[i].n_valid] for p in col.partition_archives()]
    plan = [p for p in plan if p]  # the partitions of names (those with valid images)
    if len(plan) != names.npartitions:
        raise ValueError(f"names has {names.npartitions} partitions, col.files() {len(plan)} with valid images")
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(_I64)
    pieces = [
        dask.delayed(_query_piece)(
            col.work_dir, tuple((col.work_dir.file(a.name, "dat"), a.offset, a.n_valid) for a in arch), col.d, p
        ) if c else None
        for arch, p, c in zip(plan, by_archive.to_delayed(), counts, strict=True)
    ]  # fmt: skip
    chunks = []
    for lo in range(0, searched, QUERY_CHUNK):
        hi = min(lo + QUERY_CHUNK, searched)
        first, last = np.searchsorted(starts, lo, side="right") - 1, np.searchsorted(starts, hi)
        at = [i for i in range(int(first), int(last)) if counts[i]]  # the partitions holding [lo, hi)
        cuts = [(int(max(lo, starts[i]) - starts[i]), int(min(hi, starts[i + 1]) - starts[i])) for i in at]
        chunks.append(dask.delayed(_chunk)([pieces[i] for i in at], cuts))
    chunks = list(dask.persist(*chunks))  # held by the workers while every archive passes

    labels = route(state[["group"]].assign(_at=state.index), "_at", divs).to_delayed()
    blocks = col.embeddings().to_delayed().ravel()  # one per archive with valid images, in order
    archives = [(a.offset, lab) for arch, lab in zip(plan, labels, strict=True) for a in arch]
    owners = [(blk, lab, off) for blk, (off, lab) in zip(blocks, archives, strict=True)]
    found = []
    for ch in chunks:
        answers = [dask.delayed(_against)(ch, blk, lab, off) for blk, lab, off in owners]
        found.append(dask.delayed(_found)(ch, _tree(merge_best, answers)))
    cand_meta = pd.DataFrame({"label": _I64(0), "sim": np.float32(0), "other": _I64(0)}, index=[])
    return dd.from_delayed(found, meta=cand_meta, verify_meta=False), searched, total - searched
