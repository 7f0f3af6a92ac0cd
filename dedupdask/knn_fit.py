"""kNN stage, partitioned -- fit: the sample, its PCA, the spherical k-means and the margin.

Stage 1 of :func:`dedupdask.knn_partitioned.knn_graph_partitioned`: a fixed random sample of
rows, :data:`SAMPLE_PER_CENTROID` per centroid; with ``d_reduce`` a PCA of it (the uncentred
Gram matrix, so inner products -- cosine similarities of unit rows -- are what is preserved);
a spherical k-means, fitted by one task while the sample fits in a quarter of a task's memory,
else in two levels of tasks (:func:`_fit_two_level`); and the margin that sends the vectors
near a further boundary to extra buckets (:data:`PROBE_SHARE`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
from dask.base import tokenize

from .allocator import tune as tune_allocator
from .knn import DEFAULT_RANDOM_STATE, top_k
from .knn_budget import _SIM_BLOCK_BYTES
from .knn_rows import KnnPlan, VectorBlock, VectorSource, _chunk_rows, _compute, _unit

__all__ = [
    "EXTRA_WIDTH",
    "PROBE_SHARE",
    "PROBE_SIMILARITY",
    "SAMPLE_PER_CENTROID",
    "fit_centroids",
    "fit_projection",
    "label_width",
    "spherical_kmeans",
]

PROBE_SIMILARITY = 0.9
"""Cosine of the probe pairs on which the default margin is chosen (fastdup's ``threshold``)."""

PROBE_SHARE = 0.98
"""Default margin: the smallest with which this share of probe pairs meet in a bucket.

Besides its ``m`` best centroids, a vector goes to up to ``2 * m`` more (:data:`EXTRA_WIDTH`)
whose similarity is within ``margin`` of its best one. The margin is chosen for what it is
for -- close pairs meeting in a bucket -- on probe pairs made from held-out sample rows: each
row ``x`` and ``y = s x + sqrt(1 - s^2) u`` at cosine ``s`` = :data:`PROBE_SIMILARITY`,
``u`` the unit direction towards another random sample row (a direction the data varies
in). Pairs closer than ``s`` meet more often. So the margin grows with the number of
boundaries (centroids) and shrinks where the buckets are coarse, instead of sending a fixed
fraction of the vectors to extra buckets, which split more close pairs as the centroids
multiplied. ``benchmarks/bucket_share.py`` (``scale_build.py``'s synthetic vectors; planted
pairs >= 0.9 sharing a bucket / buckets per vector, before -> now): 0.5M, 35 centroids:
0.9996 / 2.81 -> 0.9973 / 2.63; 1M, 98: 0.9961 / 2.81 -> 0.9973 / 3.14; 5M, 343: 0.9855 /
2.81 -> 0.9972 / 3.88; 5M, 490 (what the build now chooses): 0.9845 / 2.83 -> 0.9986 / 4.14.
The share of pairs kept now holds as N grows, paid for in buckets per vector.
"""

MIN_MARGIN = 1e-6
"""The least margin :func:`_auto_margin` chooses when the probe pairs need none."""

EXTRA_WIDTH = 2
"""A vector goes to at most ``m * (1 + EXTRA_WIDTH)`` buckets (its ``m`` best and up to
``EXTRA_WIDTH * m`` more within the margin). With ``2 * m`` at most, the 5M vectors above at
343 centroids kept at most 0.995 of their planted pairs together, however wide the margin
(a scratch replay of this rule with the margin at the 0.95 quantile of the old gap)."""

SAMPLE_PER_CENTROID = 200
"""The k-means sample has this many rows per centroid (at least 20,000); k-means libraries
warn below ~39 (faiss). When that sample is more than one task may hold, the fit has two
levels (:func:`_fit_two_level`), so the sample keeps growing with the number of centroids."""

MARGIN_ROWS = 20_000
"""Held-out rows on which a two-level fit measures the margin (a quantile needs no more)."""


def _sample_positions(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def _read_unit_block(block: VectorBlock, local: np.ndarray) -> np.ndarray:
    return _unit(block.read(local))


def _sample_array(source: VectorSource, positions: np.ndarray) -> Any:
    """The sampled rows (unit, float32) as a dask array with one block per archive."""
    import dask.array as da

    which = np.searchsorted(source.offsets, positions, side="right") - 1
    parts = []
    for b in np.unique(which).tolist():
        lo, hi = np.searchsorted(which, [b, b + 1])
        local = positions[lo:hi] - source.offsets[b]
        key = "dedupdask-knn-sample-" + tokenize(source.blocks[b].path, local, source.blocks[b].post)
        parts.append(
            da.from_delayed(
                dask.delayed(_read_unit_block, pure=True)(
                    source.blocks[b], local, dask_key_name=key
                ),
                shape=(int(local.size), source.d),
                dtype=np.float32,
            )
        )
    return da.concatenate(parts) if len(parts) > 1 else parts[0]


def fit_projection(sample: Any, d_reduce: int) -> tuple[np.ndarray, float]:
    """Top-``d_reduce`` eigenvectors of the uncentred Gram matrix of a (dask) sample.

    Returns the float32 ``[d, d_reduce]`` projection (signs fixed: the largest entry of each
    column is positive) and the fraction of the sample's energy it keeps.

    Examples
    --------
    >>> import dask.array as da
    >>> rng = np.random.default_rng(0)
    >>> x = da.from_array(rng.standard_normal((200, 8)).astype(np.float32), chunks=50)
    >>> p, kept = fit_projection(x, 4)
    >>> p.shape, 0 < kept < 1
    ((8, 4), True)
    """
    gram = np.asarray((sample.T @ sample).compute(), dtype=np.float64)
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1][:d_reduce]
    p = vecs[:, order]
    big = np.argmax(np.abs(p), axis=0)
    p = p * np.sign(p[big, np.arange(p.shape[1])])
    kept = float(vals[order].sum() / max(vals.sum(), 1e-30))
    return np.ascontiguousarray(p, dtype=np.float32), kept


def spherical_kmeans(
    x: np.ndarray, n_clusters: int, *, seed: int = DEFAULT_RANDOM_STATE, iterations: int = 12
) -> np.ndarray:
    """Unit centroids of ``x`` (unit rows) by spherical k-means with k-means++ seeding.

    Deterministic for a given ``seed``. Empty clusters are re-seeded with the points
    farthest from their centroid.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = _unit(np.repeat(np.eye(3, dtype=np.float32), 20, 0) + 0.05 * rng.random((60, 3)))
    >>> c = spherical_kmeans(x, 3)
    >>> sorted(np.argmax(c, axis=1).tolist())
    [0, 1, 2]
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("spherical_kmeans: no rows to cluster")
    n_clusters = max(1, min(n_clusters, n))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    best = x @ x[chosen[0]]
    for _ in range(1, n_clusters):  # k-means++ on the cosine distance
        dist = np.clip(1.0 - best, 0.0, None).astype(np.float64)
        total = dist.sum()
        i = int(rng.choice(n, p=dist / total)) if total > 0 else int(rng.integers(n))
        chosen.append(i)
        np.maximum(best, x @ x[i], out=best)
    c = x[chosen].copy()
    step = max(1, _SIM_BLOCK_BYTES // (4 * n_clusters))
    for _ in range(iterations):
        labels = np.empty(n, dtype=np.int64)
        score = np.empty(n, dtype=np.float32)
        for s in range(0, n, step):
            sims = x[s : s + step] @ c.T
            labels[s : s + step] = np.argmax(sims, axis=1)
            score[s : s + step] = sims[np.arange(sims.shape[0]), labels[s : s + step]]
        sums = np.zeros_like(c, dtype=np.float64)
        np.add.at(sums, labels, x)
        counts = np.bincount(labels, minlength=n_clusters)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            far = np.argsort(score, kind="stable")[: empty.size]
            sums[empty] = x[far]
        new = _unit(sums.astype(np.float32))
        if np.array_equal(new, c):
            break
        c = new
    return c


def _fit_centroids(
    parts: Sequence[np.ndarray],
    projection: np.ndarray | None,
    n_clusters: int,
    seed: int,
    m: int,
    margin: float | None,
) -> tuple[np.ndarray, float]:
    """k-means centroids of the sample, and the margin (see :data:`PROBE_SHARE`)."""
    x = np.concatenate(list(parts)) if len(parts) > 1 else parts[0]
    if projection is not None:
        x = _unit(x @ projection)
    if margin is not None:
        return spherical_kmeans(x, n_clusters, seed=seed), float(margin)
    # the margin is measured on held-out rows: the fitted rows sit closer to their centroids
    held = np.random.default_rng(seed).random(x.shape[0]) < 0.2
    if not held.any() or held.all():  # a sample of a few rows: no held-out set on one side
        centroids = spherical_kmeans(x, n_clusters, seed=seed)
        return centroids, _auto_margin(x, centroids, m)
    centroids = spherical_kmeans(x[~held], n_clusters, seed=seed)
    return centroids, _auto_margin(x[held], centroids, m)


def label_width(m: int, margin: float, n_centroids: int) -> int:
    """Most buckets one vector may go to: ``m``, plus :data:`EXTRA_WIDTH` ``* m`` with a margin.

    Examples
    --------
    >>> label_width(2, 0.0, 100), label_width(2, 0.04, 100), label_width(2, 0.04, 5)
    (2, 6, 5)
    """
    return min(n_centroids, m * (1 + EXTRA_WIDTH) if margin > 0 else m)


def _top_width(x: np.ndarray, centroids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its ``width`` most similar centroids and their similarities, most similar first."""
    step = max(1, _SIM_BLOCK_BYTES // (4 * centroids.shape[0]))
    parts = [top_k(x[s : s + step] @ centroids.T, width) for s in range(0, x.shape[0], step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _probe_pairs(x: np.ndarray, similarity: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (unit) and a partner of each at cosine ``similarity``, moved towards
    another random row of ``x``; rows whose direction is undefined are left out."""
    other = x[np.random.default_rng(seed).permutation(x.shape[0])]
    u = other - np.einsum("ij,ij->i", other, x)[:, None] * x
    norm = np.linalg.norm(u, axis=1)
    ok = norm > 1e-6
    u = u[ok] / norm[ok, None]
    s = np.float32(similarity)
    return x[ok], (s * x[ok] + np.sqrt(np.float32(1) - s * s) * u).astype(np.float32)


def _auto_margin(x: np.ndarray, centroids: np.ndarray, m: int) -> float:
    """The smallest margin with which :data:`PROBE_SHARE` of probe pairs made from ``x`` share
    a bucket (see :data:`PROBE_SHARE`), at least :data:`MIN_MARGIN`; ``2.0`` (every one of the
    widest choice) when even that is not enough; 0 when there are at most ``m`` centroids or
    no rows.

    A pair meets in centroid ``c`` once ``c`` is among both rows' buckets: for each row, 0 when
    ``c`` is among its ``m`` best, else its best similarity minus its similarity to ``c``; the
    pair needs the larger of the two, at its cheapest common centroid.

    Examples
    --------
    >>> c = np.eye(3, dtype=np.float32)
    >>> _auto_margin(np.empty((0, 3), np.float32), c, 1), _auto_margin(c, c, 3)
    (0.0, 0.0)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2000, 16)).astype(np.float32)
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> cents = spherical_kmeans(x, 12)
    >>> 0 < _auto_margin(x, cents, 2) < 2
    True
    """
    if centroids.shape[0] <= m or x.shape[0] == 0:
        return 0.0
    a, b = _probe_pairs(x, PROBE_SIMILARITY)
    if a.shape[0] == 0:
        return 0.0
    width = label_width(m, 1.0, centroids.shape[0])
    need = []
    step = max(1, 2**20 // (width * width))
    for s in range(0, a.shape[0], step):
        ia, sa = _top_width(a[s : s + step], centroids, width)
        ib, sb = _top_width(b[s : s + step], centroids, width)
        ga, gb = sa[:, :1] - sa, sb[:, :1] - sb  # what each extra bucket needs
        ga[:, :m], gb[:, :m] = 0, 0
        both = np.maximum(ga[:, :, None], gb[:, None, :])
        both[ia[:, :, None] != ib[:, None, :]] = np.inf
        need.append(both.min(axis=(1, 2)))
    q = float(np.quantile(np.concatenate(need), PROBE_SHARE))
    # never exactly 0 here: a margin of 0 is the caller's "exactly m buckets", which also leaves
    # the parts of a split bucket without a margin of their own
    return max(q, MIN_MARGIN) if np.isfinite(q) else 2.0


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` centroids over cells in proportion to ``counts`` (largest remainders), at
    least one per non-empty cell and never more than its count.

    Examples
    --------
    >>> _allocate(np.array([50, 30, 20, 0]), 10).tolist()
    [5, 3, 2, 0]
    """
    counts = np.asarray(counts, dtype=np.int64)
    share = total * counts / max(1, counts.sum())
    out = np.floor(share).astype(np.int64)
    rest = total - int(out.sum())
    if rest > 0:
        out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    out = np.where(counts > 0, np.maximum(out, 1), 0)
    return np.minimum(out, counts)


def _coarse_labels(block: VectorBlock, local: np.ndarray, plan: KnnPlan) -> np.ndarray:
    """Most similar coarse centroid of rows ``local`` of one archive (a two-level fit task)."""
    tune_allocator()
    out = np.empty(local.size, dtype=np.int32)
    step = _chunk_rows(block.width)
    for s in range(0, local.size, step):
        out[s : s + step] = np.argmax(
            plan.to_search(block.read(local[s : s + step])) @ plan.centroids.T, axis=1
        )
    return out


def _fit_cell(
    source: VectorSource, plan: KnnPlan, positions: np.ndarray, c: int, seed: int
) -> np.ndarray:
    """``c`` centroids of the sample rows of one coarse cell (a two-level fit task)."""
    tune_allocator()
    return spherical_kmeans(plan.to_search(source.read(positions)), c, seed=seed)


def _held_margin(
    source: VectorSource, plan: KnnPlan, positions: np.ndarray, centroids: np.ndarray, m: int
) -> float:
    """:func:`_auto_margin` of held-out sample rows against every centroid (one task)."""
    tune_allocator()
    return _auto_margin(plan.to_search(source.read(positions)), centroids, m)


def _fit_two_level(
    source: VectorSource,
    projection: np.ndarray | None,
    n_clusters: int,
    sample_size: int,
    cap: int,
    seed: int,
    m: int,
    margin: float | None,
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """k-means of a sample larger than one task holds, in two levels, all on the workers.

    1. ``C1 = cap // SAMPLE_PER_CENTROID`` coarse centroids from ``cap`` of the sample rows
       (one task); 2. every sample row's coarse cell (one task per archive, integers back);
    3. the ``n_clusters`` centroids shared among the cells in proportion to their rows, each
    cell's fitted on its own rows by one task (at most ``cap`` rows); 4. the margin on
    held-out sample rows (:data:`PROBE_SHARE`; one task). The client holds the sample's
    positions and labels (integers) and the centroids.
    """
    rng = np.random.default_rng([seed, 2])
    positions = _sample_positions(source.n, sample_size, seed)
    held = rng.random(positions.size) < 0.2 if margin is None else np.zeros(positions.size, bool)
    fit_pos, held_pos = positions[~held], positions[held]
    n1 = max(2, min(n_clusters, cap // SAMPLE_PER_CENTROID))
    first = np.sort(rng.choice(fit_pos, size=min(cap, fit_pos.size), replace=False))
    parts = [dask.delayed(p) for p in _sample_array(source, first).to_delayed().ravel()]
    coarse, _ = dask.delayed(_fit_centroids, pure=True, nout=2)(
        parts, projection, n1, seed, m, 0.0
    ).compute()
    plan = KnnPlan(projection=projection, centroids=coarse, dtype="float32", m=1, margin=0.0, k=1,
                   k_search=1, rerank=False, method="exact", capacity=1, scratch=None, budget=0,
                   random_state=seed)  # fmt: skip
    token = uuid.uuid4().hex[:12]
    plan_key = dask.delayed(plan, name=f"dedupdask-knn-fit-plan-{token}")
    source_key = dask.delayed(source, name=f"dedupdask-knn-fit-source-{token}")
    which = np.searchsorted(source.offsets, fit_pos, side="right") - 1
    tasks = []
    for b in np.unique(which).tolist():
        lo, hi = np.searchsorted(which, [b, b + 1])
        local = fit_pos[lo:hi] - source.offsets[b]
        tasks.append(dask.delayed(_coarse_labels, pure=True)(source.blocks[b], local, plan_key))
    (labels,) = _compute(tasks)
    labels = np.concatenate(labels) if labels else np.empty(0, np.int32)
    counts = np.bincount(labels, minlength=n1)
    alloc = _allocate(counts, n_clusters)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    fits = []
    for j in np.flatnonzero(alloc).tolist():
        members = fit_pos[order[bounds[j] : bounds[j + 1]]]
        if members.size > cap:
            members = np.random.default_rng([seed, 3, j]).choice(members, cap, replace=False)
        fits.append(
            dask.delayed(_fit_cell, pure=True)(
                source_key, plan_key, np.sort(members), int(alloc[j]), seed + 1 + j
            )
        )
    (cells,) = _compute(fits)
    centroids = np.concatenate(cells).astype(np.float32)
    if margin is None:
        pool = held_pos if held_pos.size else fit_pos
        held_pos = np.sort(rng.choice(pool, min(MARGIN_ROWS, pool.size), replace=False))
        margin = dask.delayed(_held_margin, pure=True)(
            source_key, plan_key, held_pos, centroids, m
        ).compute()
    about = {"kmeans_levels": 2, "coarse_centroids": int(n1), "fit_tasks": len(fits)}
    return centroids, float(margin), about


def fit_centroids(
    source: VectorSource,
    projection: np.ndarray | None,
    n_clusters: int,
    sample_size: int,
    cap: int,
    seed: int,
    m: int,
    margin: float | None,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """``n_clusters`` centroids of a sample of ``sample_size`` rows, and the margin, on the workers.

    One task fits the sample while it holds at most ``cap`` rows (``positions``: the sample's
    rows, default :func:`_sample_positions`); a larger sample is fitted in two levels
    (:func:`_fit_two_level`). Returns the centroids, the margin (``margin`` when given) and
    ``{"kmeans_levels": ...}`` (plus the two-level fit's counts).
    """
    if sample_size > cap:
        return _fit_two_level(source, projection, n_clusters, sample_size, cap, seed, m, margin)
    if positions is None:
        positions = _sample_positions(source.n, sample_size, seed)
    parts = [dask.delayed(p) for p in _sample_array(source, positions).to_delayed().ravel()]
    centroids, got = dask.delayed(_fit_centroids, pure=True, nout=2)(
        parts, projection, n_clusters, seed, m, margin
    ).compute()
    return centroids, float(got), {"kmeans_levels": 1}
