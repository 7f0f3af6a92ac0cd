"""Analysis stage, outliers that come in groups: look-alike images linked into groups, each
scored by its similarity to the nearest image outside it.

Junk comes in groups: six blank pages are each other's nearest neighbours, so "the nearest
neighbour is least similar" (fastdup's ``outliers.csv``, :mod:`dedupdask.analyses.outliers`)
never fires, while the group as a whole is far from everything else. :func:`outlier_groups`
links the kNN edges at or above a similarity (and exact copies) into groups and finds each
group's most similar image outside it, from the kNN graph where it can and by comparing a
few members with every image (:func:`search_outside`) where the group fills its members'
neighbour lists. A lone image is a group of one. The ``outlier`` issue label
(:mod:`dedupdask.analyses.issues`) is built on it.

The search is the one part whose cost grows with N times the members searched, so both paths
take the same two decisions here: :func:`within_cap` keeps at most ``outlier_search_members``
(:mod:`dedupdask.thresholds`) members, and :func:`best_outside` compares them with an
archive's vectors :data:`QUERY_CHUNK` queries by :data:`BLOCK_ROWS` rows at a time (the same
products, so the same float32 similarities, in one process and on the workers,
:mod:`dedupdask.analyses.groups_search`). Cost: ``2 N d`` flops per member -- 10,000 members
at N = 400M and d = 1280 are 1.0e16 flops, 23 core-hours at one core's measured 121.6
GFLOP/s (sgemm, ``benchmarks/results/knn_partitioned.txt``), 2.9 at 50M -- and every archive's
vectors are read once, whatever the number of members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..knn import normalize_rows
from .exact import ExactGroups

if TYPE_CHECKING:
    from ..collect import Collection

__all__ = [
    "BLOCK_ROWS", "QUERIES_PER_GROUP", "QUERY_CHUNK", "OutlierGroups", "best_outside", "merge_best",
    "outlier_groups", "search_outside", "within_cap",
]  # fmt: skip

QUERIES_PER_GROUP = 8  # members of a closed group compared with every image outside it
QUERY_CHUNK = 4096
"""Queries per product with an archive's vectors (and per search task on the workers)."""
BLOCK_ROWS = 4096
"""Archive rows per product: a product is at most QUERY_CHUNK x BLOCK_ROWS float32 (64 MiB)."""


@dataclass(frozen=True)
class OutlierGroups:
    """Every image's look-alike group and how far the group is from everything else.

    Attributes
    ----------
    group : ndarray
        int64 ``[N]``: the smallest global index of the image's group.
    size : ndarray
        int64 ``[N]``: images in the group.
    pictures : ndarray
        int64 ``[N]``: distinct pictures in the group (exact copies count once).
    similarity : ndarray
        float32 ``[N]``: cosine of the group to the nearest image outside it (NaN: no other
        image).
    nearest : ndarray
        int64 ``[N]``: that image (-1: none).
    searched : int
        Members compared with every image because their neighbour lists held only their group.
    unsearched : int
        Members chosen for that search that the cap (:func:`within_cap`) left out: their
        groups keep what the kNN edges gave.
    """

    group: np.ndarray
    size: np.ndarray
    pictures: np.ndarray
    similarity: np.ndarray
    nearest: np.ndarray
    searched: int = 0
    unsearched: int = 0


def outlier_groups(
    groups: ExactGroups,
    reps: np.ndarray,
    nbr_idx: np.ndarray,
    nbr_sim: np.ndarray,
    *,
    link: float,
    max_size: int,
    search: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    below: float | None = None,
    max_searched: int | None = None,
) -> OutlierGroups:
    """Group look-alike images and measure each group's similarity to the rest.

    Every kNN edge between two groups is a candidate for both groups' nearest image outside.
    When a member's whole list is inside its group (a group larger than the list is wide),
    the list only bounds that member's similarity to the rest by its last entry; if the bound
    could beat what the edges gave (and, with ``below``, what they gave is below it), up to
    :data:`QUERIES_PER_GROUP` such members (highest bound first) of each group of at most
    ``max_size`` distinct pictures are compared with every image by ``search``, at most
    ``max_searched`` of them in all (:func:`within_cap`).

    Parameters
    ----------
    groups : ExactGroups
        Exact-duplicate groups (always inside one group).
    reps : ndarray
        Sorted global index of each row of the kNN graph.
    nbr_idx, nbr_sim : ndarray
        kNN graph over ``reps`` (positions into ``reps``, -1 = none; similarities).
    link : float
        Similarity at which two images are in one group.
    max_size : int
        Groups of more distinct pictures are not searched (they cannot be outlier groups).
    search : callable, optional
        ``search(queries, labels) -> (similarity, index)``: for each query (global index),
        the most similar image whose ``labels`` entry differs from the query's.
    below : float, optional
        Only search groups whose edges gave nothing at or above this (the outlier cut-off:
        the others cannot be outliers, whatever the search finds), so the cost stays with the
        few isolated groups.
    max_searched : int, optional
        The most members searched (``outlier_search_members``); None: no cap.

    Returns
    -------
    OutlierGroups

    Examples
    --------
    >>> from dedupdask.analyses import exact_groups
    >>> g = exact_groups(["a", "b", "c", "d"])
    >>> idx = np.array([[1, 2], [0, 2], [1, 0], [2, 1]])
    >>> sim = np.array([[.95, .2], [.95, .3], [.3, .2], [.6, .3]], np.float32)
    >>> og = outlier_groups(g, np.arange(4), idx, sim, link=0.9, max_size=10)
    >>> og.group.tolist(), [round(float(v), 2) for v in og.similarity], og.nearest.tolist()
    ([0, 0, 2, 3], [0.3, 0.3, 0.6, 0.6], [2, 2, 3, 2])
    """
    n, m = groups.n, int(reps.size)
    k = nbr_idx.shape[1] if nbr_idx.ndim == 2 else 0
    valid_nb = nbr_idx >= 0
    safe = np.where(valid_nb, nbr_idx, 0)
    rows, cols = np.nonzero(valid_nb & (nbr_sim >= np.float32(link)))
    if m:
        a = np.concatenate([rows, np.arange(m)])
        b = np.concatenate([safe[rows, cols], np.arange(m)])
        _, rep_label = connected_components(
            coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(m, m)), directed=False
        )
    else:
        rep_label = np.empty(0, np.int64)
    label = rep_label[np.searchsorted(reps, groups.rep)] if n else np.empty(0, np.int64)
    n_labels = int(label.max()) + 1 if n else 0
    size = np.bincount(label, minlength=n_labels).astype(np.int64)
    pictures = np.bincount(rep_label, minlength=n_labels).astype(np.int64)
    first = np.full(n_labels, n, np.int64)
    np.minimum.at(first, label, np.arange(n, dtype=np.int64))

    # every kNN edge between two groups bounds both groups' similarity to the rest from below
    cross = valid_nb & (rep_label[safe] != rep_label[:, None]) if m else np.zeros((0, k), bool)
    has = cross.any(axis=1)
    rr, cc = np.nonzero(cross)
    ss = safe[rr, cc]
    best = np.full(n_labels, np.nan, np.float32)
    near = np.full(n_labels, -1, np.int64)
    _take_best(
        best, near,
        np.concatenate([rep_label[rr], rep_label[ss]]),
        np.concatenate([nbr_sim[rr, cc], nbr_sim[rr, cc]]).astype(np.float32),
        np.concatenate([reps[ss], reps[rr]]),
    )  # fmt: skip

    # members whose list is all inside: their bound could beat the group's best
    full = valid_nb.all(axis=1) & (k > 0)
    bound = np.where(full & ~has, nbr_sim[:, -1] if k else np.nan, np.nan)
    g_best = best[rep_label] if m else np.empty(0, np.float32)
    small = pictures[rep_label] <= max_size if m else np.empty(0, bool)
    need = small & np.isfinite(bound) & ~(g_best >= bound)
    if below is not None:
        need &= ~(g_best >= np.float32(below))
    need = np.flatnonzero(need)
    searched = unsearched = 0
    if need.size and search is not None:
        order = need[np.lexsort((need, -bound[need], rep_label[need]))]
        rank = np.arange(order.size) - np.searchsorted(rep_label[order], rep_label[order])
        chosen = np.sort(order[rank < QUERIES_PER_GROUP])
        keep = within_cap(bound[chosen], reps[chosen], max_searched)
        chosen, unsearched = chosen[keep], int((~keep).sum())
        if chosen.size:
            q_sim, q_idx = search(reps[chosen], label)
            _take_best(best, near, rep_label[chosen], np.asarray(q_sim, np.float32), np.asarray(q_idx, np.int64))
        searched = int(chosen.size)
    return OutlierGroups(
        first[label], size[label], pictures[label], best[label], near[label], searched, unsearched
    )


def within_cap(bound: np.ndarray, rep: np.ndarray, cap: int | None) -> np.ndarray:
    """Which chosen members are searched: all when they are at most ``cap`` (None: no cap),
    else the ``cap`` with the highest bound, ties to the smaller index -- the one rule of both
    paths (on the workers it picks within partitions, then within every merge of their picks).

    Examples
    --------
    >>> within_cap(np.array([.5, .9, .9, .7], np.float32), np.array([4, 8, 2, 6]), 2).tolist()
    [False, True, True, False]
    """
    n = int(np.asarray(rep).size)
    if cap is None or n <= cap:
        return np.ones(n, bool)
    keep = np.zeros(n, bool)
    keep[np.lexsort((np.asarray(rep), -np.asarray(bound, np.float32)))[: max(0, int(cap))]] = True
    return keep


def _take_best(
    best: np.ndarray, near: np.ndarray, lab: np.ndarray, sim: np.ndarray, idx: np.ndarray
) -> None:
    """``best[l] = max(best[l], sim)`` per label ``l``, ``near`` following (ties: smallest index)."""
    ok = np.isfinite(sim) & (idx >= 0)
    lab, sim, idx = lab[ok], sim[ok], idx[ok]
    if not lab.size:
        return
    order = np.lexsort((idx, -sim, lab))
    lab_o = lab[order]
    top = order[np.concatenate([[True], lab_o[1:] != lab_o[:-1]])]
    lt, st, it = lab[top], sim[top], idx[top]
    cur, cur_i = best[lt], near[lt]
    better = np.isnan(cur) | (st > cur) | ((st == cur) & (it < cur_i))
    best[lt[better]] = st[better]
    near[lt[better]] = it[better]


def best_outside(
    queries: np.ndarray, query_labels: np.ndarray, block: np.ndarray, block_labels: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Most similar row of ``block`` with another label than each query (one archive's rows).

    ``queries`` are unit rows; ``block`` is normalised here. The products go
    :data:`QUERY_CHUNK` queries by :data:`BLOCK_ROWS` rows at a time (bounded memory, and the
    same products whether the queries come all at once or one chunk per task); ties go to the
    smaller index. Returns ``(similarity, global index)`` per query (-inf / -1 when there is
    none).

    Examples
    --------
    >>> q = np.array([[1.0, 0.0]], np.float32)
    >>> blk = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    >>> s, i = best_outside(q, np.array([7]), blk, np.array([7, 3]), 10)
    >>> round(float(s[0]), 2), int(i[0])
    (0.6, 11)
    """
    nq = queries.shape[0]
    sim, idx = np.full(nq, -np.inf, np.float32), np.full(nq, -1, np.int64)
    if block.shape[0] == 0 or nq == 0:
        return sim, idx
    b = normalize_rows(block)
    b_lab = np.asarray(block_labels)
    for q0 in range(0, nq, QUERY_CHUNK):
        q, q_lab = queries[q0 : q0 + QUERY_CHUNK], np.asarray(query_labels[q0 : q0 + QUERY_CHUNK])
        at, here = np.arange(q.shape[0]), slice(q0, q0 + q.shape[0])
        for b0 in range(0, b.shape[0], BLOCK_ROWS):
            s = q @ b[b0 : b0 + BLOCK_ROWS].T
            s[q_lab[:, None] == b_lab[None, b0 : b0 + BLOCK_ROWS]] = -np.inf
            j = s.argmax(axis=1)
            got = s[at, j].astype(np.float32)
            better = got > sim[here]  # strictly: an earlier slice keeps a tie
            sim[here] = np.where(better, got, sim[here])
            idx[here] = np.where(better, j + b0 + int(offset), idx[here])
    return sim, idx


def merge_best(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the best of several :func:`best_outside` answers (highest similarity, ties
    to the smaller index; any order or grouping of ``parts`` gives the same answer).

    Examples
    --------
    >>> a = (np.array([0.5, -np.inf], np.float32), np.array([7, -1]))
    >>> b = (np.array([0.5, 0.25], np.float32), np.array([3, 9]))
    >>> s, i = merge_best([a, b])
    >>> s.tolist(), i.tolist()
    ([0.5, 0.25], [3, 9])
    """
    sim, idx = parts[0][0].copy(), parts[0][1].copy()
    for s, i in parts[1:]:
        take = (s > sim) | ((s == sim) & (i >= 0) & ((idx < 0) | (i < idx)))
        sim[take], idx[take] = s[take], i[take]
    return sim, idx


def search_outside(col: Collection, queries: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query (global index), the most similar image with another label, over every
    archive's vectors: read here from the memory-mapped files when the work_dir is local and
    the scheduler is local threads, else one Dask task per archive (the in-process path, for
    work_dirs analysed here; :mod:`dedupdask.analyses.groups_search` keeps it on the workers).

    Examples
    --------
    >>> search_outside(collect("work"), np.array([3]), labels)  # doctest: +SKIP
    (array([0.41], dtype=float32), array([1207]))
    """
    from ..collect import read_archive_vectors

    queries = np.asarray(queries, dtype=np.int64)
    q_lab = labels[queries]
    q = normalize_rows(col.vector_rows(queries) if col.reads_locally() else col.embeddings()[queries].compute())
    archives = [a for a in col.archives if a.n_valid]
    if col.reads_locally():
        parts = [
            best_outside(q, q_lab, read_archive_vectors(col.work_dir, a.name, col.d, a.n_valid),
                         labels[a.offset : a.offset + a.n_valid], a.offset)
            for a in archives
        ]  # fmt: skip
    else:
        import dask

        qd, qld = dask.delayed(q), dask.delayed(q_lab)
        tasks = [
            dask.delayed(best_outside)(qd, qld, blk, labels[a.offset : a.offset + a.n_valid], a.offset)
            for a, blk in zip(archives, col.embeddings().to_delayed().ravel(), strict=True)
        ]
        parts = list(dask.compute(*tasks))
    empty = (np.full(q.shape[0], -np.inf, np.float32), np.full(q.shape[0], -1, np.int64))
    sim, idx = merge_best([empty, *parts])
    return np.where(idx >= 0, sim, np.nan).astype(np.float32), idx
