"""kNN stage, partitioned -- buckets: assign, split, search one bucket, merge a row range.

Stages 2-5 of :func:`dedupdask.knn_partitioned.knn_graph_partitioned`, the work of its tasks:

2. **assign** (per archive): every vector goes to the buckets of its ``m`` most similar
   centroids, plus up to ``2 * m`` more within the margin; with reduction or float16 the projected
   unit vectors are written to a scratch file per archive.
3. **plan**: an oversized bucket is split by a k-means of its own members
   (:func:`_split_bucket`, a task); :mod:`dedupdask.knn_tasks` runs stages 2-5 on the
   workers (:func:`_group` groups in-process labels, e.g. inside a split task).
4. **search** (per bucket): exact blocked search or pynndescent among the bucket's vectors,
   candidates re-scored on the original float32 rows after a reduced or float16 search; the
   lists leave as ``(row, cand, sim)`` rows (:func:`_search_bucket_rows`), shuffled to the
   row ranges.
5. **merge** (per row range): a row's candidates from all its buckets united, self and
   repeats dropped, the best ``k`` kept: rows of the graph table (:func:`_merge_range_rows`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .allocator import tune as tune_allocator
from .knn import PYNNDESCENT_MIN_NEIGHBORS, nndescent_knn, top_k
from .knn_budget import _CHUNK_BYTES, _SIM_BLOCK_BYTES, _gather_bytes
from .knn_fit import _auto_margin, _sample_positions, label_width, spherical_kmeans
from .knn_rows import KnnPlan, VectorBlock, VectorSource, _chunk_rows, _read_search
from .store import WorkDir

__all__ = ["BUCKET_NEIGHBORS", "RERANK_EXTRA", "exact_bucket_knn"]

BUCKET_NEIGHBORS = 24
"""pynndescent's graph degree inside a bucket (at least ``k + 1``).

On a 90k x 1280 bucket of the benchmark data (1 thread): planted pairs >= 0.79 found 0.988 /
0.9945 / 1.0 with 16 / 24 / 32 neighbours, in 11.5 / 17.8 / 26.2 s. The single-task path keeps
:data:`dedupdask.knn.PYNNDESCENT_MIN_NEIGHBORS`.
"""

RERANK_EXTRA = 8
"""After a reduced or float16 search, ``k + max(k, RERANK_EXTRA)`` candidates are re-scored."""


# -- stage 2: assign --------------------------------------------------------------------------------
def _top_m(x: np.ndarray, centroids: np.ndarray, m: int, margin: float = 0.0) -> np.ndarray:
    """Per row: its ``m`` most similar centroids, plus up to ``2 * m`` more within ``margin``.

    A further centroid is taken when its similarity is at least the best one's minus
    ``margin`` (points near a boundary of several buckets); unused columns are -1
    (:func:`dedupdask.knn_fit.label_width` columns).
    """
    sims = x @ centroids.T
    width = label_width(m, margin, centroids.shape[0])
    top, s = top_k(sims, width)  # the one top-k: ties go to the lower centroid
    top = top.astype(np.int32)
    if width > m:
        extra = s[:, m:] < (s[:, :1] - np.float32(margin))
        top[:, m:][extra] = -1
    return top


def _assign_block(block: VectorBlock, plan: KnnPlan, scratch_path: str | None) -> np.ndarray:
    """Top-``m`` centroids of every row of one archive; writes its projected rows if asked."""
    tune_allocator()
    n = block.size
    out = np.empty((n, label_width(plan.m, plan.margin, plan.centroids.shape[0])), dtype=np.int32)
    store = np.empty((n, plan.d_search), dtype=plan.dtype) if scratch_path else None
    step = _chunk_rows(block.width)
    for s in range(0, n, step):
        local = np.arange(s, min(n, s + step), dtype=np.int64)
        v = plan.to_search(block.read(local))
        out[s : s + local.size] = _top_m(v, plan.centroids, plan.m, plan.margin)
        if store is not None:
            store[s : s + local.size] = v
    if store is not None:
        _write_scratch(block.wd, scratch_path, store.astype(np.dtype(plan.dtype).newbyteorder("<")))
    return out


def _write_scratch(wd: WorkDir, path: str, arr: np.ndarray) -> None:
    """Write a scratch file whole (no fsync: it lives for one kNN run)."""
    data = np.ascontiguousarray(arr).tobytes()
    if not wd.local:
        wd.fs.pipe_file(path, data)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _split_bucket(
    search_src: VectorSource, plan: KnnPlan, members: np.ndarray, parts: int, seed: int
) -> list[np.ndarray]:
    """Split an oversized bucket: k-means of (a sample of) its members, assigned as above.

    The margin is chosen again on the bucket's sample (:data:`dedupdask.knn_fit.PROBE_SHARE`) when the
    top level chose one.
    """
    cap = max(parts * 64, _CHUNK_BYTES * 4 // (4 * plan.d_search))
    sample = _read_search(
        search_src, plan, members[_sample_positions(members.size, min(members.size, cap), seed)]
    )
    centroids = spherical_kmeans(sample, parts, seed=seed)
    margin = _auto_margin(sample, centroids, plan.m) if plan.margin > 0 else 0.0
    labels = np.empty((members.size, label_width(plan.m, margin, parts)), dtype=np.int32)
    step = _chunk_rows(plan.d_search)
    for s in range(0, members.size, step):
        v = _read_search(search_src, plan, members[s : s + step])
        labels[s : s + step] = _top_m(v, centroids, plan.m, margin)
    return _group(members, labels, centroids.shape[0])


def _cut(members: np.ndarray, capacity: int) -> list[np.ndarray]:
    """An oversized bucket cut in order into parts of ``capacity`` members.

    The last part is the last ``capacity`` members, overlapping the part before it, never a
    short remainder: a remainder of one member would have no neighbour at all (identical
    vectors, which k-means cannot split, are cut the same way in each of their buckets).

    Examples
    --------
    >>> [p.tolist() for p in _cut(np.arange(13), 6)]
    [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [7, 8, 9, 10, 11, 12]]
    """
    parts = [members[s : s + capacity] for s in range(0, members.size, capacity)]
    if len(parts) > 1:
        parts[-1] = members[-capacity:]
    return parts


def _group(
    positions: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    n_groups: int,
    chunk_rows: int = 4_000_000,
) -> list[np.ndarray]:
    """Members of each group (increasing positions) from per-position group labels (-1 = none).

    ``positions``/``labels`` may be lists of per-archive arrays; they are grouped a few million
    rows at a time, and positions are int32 when they fit, so the client holds little more
    than the member lists themselves (4 bytes per vector per bucket it is in).
    """
    if isinstance(positions, np.ndarray):
        positions, labels = [positions], [labels]
    top = max((int(p.max()) for p in positions if p.size), default=0)
    dtype = np.int32 if top < 2**31 - 1 else np.int64
    parts: list[list[np.ndarray]] = [[] for _ in range(n_groups)]

    def flush(pos: list[np.ndarray], lab: list[np.ndarray]) -> None:
        lab_ = np.concatenate(lab)
        flat = lab_.ravel()
        p = np.repeat(np.concatenate(pos).astype(dtype), lab_.shape[1])
        used = flat >= 0
        flat, p = flat[used], p[used]
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(n_groups + 1))
        for g in np.flatnonzero(np.diff(bounds)).tolist():
            parts[g].append(p[order[bounds[g] : bounds[g + 1]]])

    pos_buf: list[np.ndarray] = []
    lab_buf: list[np.ndarray] = []
    rows = 0
    for p, lab in zip(positions, labels, strict=True):
        for s in range(0, p.size, chunk_rows):
            pos_buf.append(p[s : s + chunk_rows])
            lab_buf.append(lab[s : s + chunk_rows])
            rows += pos_buf[-1].size
            if rows >= chunk_rows:
                flush(pos_buf, lab_buf)
                pos_buf, lab_buf, rows = [], [], 0
    if pos_buf:
        flush(pos_buf, lab_buf)
    return [np.concatenate(pp) if pp else np.empty(0, dtype) for pp in parts]


# -- stage 4: search one bucket --------------------------------------------------------------------
def _topk_block(s: np.ndarray, self_cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns of each row of ``s`` (self excluded): :func:`dedupdask.knn.top_k`."""
    rows = np.arange(s.shape[0])
    s[rows, self_cols] = -np.inf
    kk = min(k, s.shape[1] - 1)
    idx = np.full((s.shape[0], k), -1, dtype=np.int64)
    sim = np.full((s.shape[0], k), np.nan, dtype=np.float32)
    if kk <= 0:
        return idx, sim
    idx[:, :kk], sim[:, :kk] = top_k(s, kk)
    np.clip(sim, -1.0, 1.0, out=sim)
    bad = ~np.isfinite(sim)
    idx[bad], sim[bad] = -1, np.nan
    return idx, sim


def exact_bucket_knn(v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN among the rows of ``v`` (float32 or float16 unit rows), float32 arithmetic.

    float16 rows are converted tile by tile, so the bucket stays in half precision.

    Examples
    --------
    >>> v = np.eye(3, dtype=np.float32) + 0.1
    >>> v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
    >>> exact_bucket_knn(v, 1)[0].ravel().tolist()
    [1, 0, 0]
    """
    n = v.shape[0]
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), np.nan, dtype=np.float32)
    if n < 2:
        return idx, sim
    rows = int(max(16, min(8192, _SIM_BLOCK_BYTES // (4 * n))))
    tile = int(max(256, _CHUNK_BYTES // (4 * v.shape[1])))
    half = v.dtype != np.float32
    for s in range(0, n, rows):
        e = min(n, s + rows)
        q = v[s:e].astype(np.float32)
        if half:
            block = np.empty((e - s, n), dtype=np.float32)
            for t in range(0, n, tile):
                block[:, t : t + tile] = q @ v[t : t + tile].astype(np.float32).T
        else:
            block = q @ v.T
        idx[s:e], sim[s:e] = _topk_block(block, np.arange(s, e), k)
    return idx, sim


def _search_bucket(
    search_src: VectorSource,
    source: VectorSource,
    plan: KnnPlan,
    members: np.ndarray,
    range_starts: np.ndarray,
    n_jobs: int | None,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Neighbours among one bucket's members, as one ``(rows, idx, sim)`` piece per row range.

    After a reduced or float16 search, the candidates are re-scored on the original rows of
    the bucket (:func:`_rescore_bucket`) and the best ``plan.k`` kept.
    """
    v = np.empty((members.size, plan.d_search), dtype=plan.dtype)
    step = _chunk_rows(search_src.d)
    for s in range(0, members.size, step):
        v[s : s + step] = _read_search(search_src, plan, members[s : s + step])
    k = plan.k_search
    if plan.method == "exact" or members.size <= max(k + 1, PYNNDESCENT_MIN_NEIGHBORS) + 1:
        idx, sim = exact_bucket_knn(v, k)
        del v
    else:
        v32 = v if v.dtype == np.float32 else v.astype(np.float32)
        del v
        nn = max(k + 1, BUCKET_NEIGHBORS)
        idx, sim = nndescent_knn(
            v32, k, random_state=plan.random_state, n_jobs=n_jobs, n_neighbors=nn
        )
        del v32
    if plan.rerank:
        sim = _rescore_bucket(source, members, idx, plan.budget)
        rows = np.repeat(np.arange(members.size), k)
        r, c, s_ = _best(rows, idx.ravel(), sim.ravel(), plan.k, members)
        idx = np.full((members.size, plan.k), -1, dtype=np.int64)
        sim = np.full((members.size, plan.k), np.nan, dtype=np.float32)
        rank = _rank_within(r)
        idx[r, rank], sim[r, rank] = c, s_
    gidx = np.where(idx >= 0, members[np.clip(idx, 0, None)], -1).astype(_id_dtype(members))
    cut = np.searchsorted(members, range_starts)
    cut = np.append(cut, members.size)
    return tuple(
        (members[cut[r] : cut[r + 1]], gidx[cut[r] : cut[r + 1]], sim[cut[r] : cut[r + 1]])
        for r in range(range_starts.size)
    )


def _rescore_bucket(
    source: VectorSource, members: np.ndarray, idx: np.ndarray, budget: int
) -> np.ndarray:
    """Cosine similarities of every (member, candidate) pair on the original float32 rows.

    Both ends of a pair are members of the bucket. The members' original rows are read in
    tiles (contiguous runs of members) of at most an eighth of the budget; each unordered pair
    is scored once, with the tiles of its two ends in memory.
    """
    n, kk = idx.shape
    out = np.full(idx.size, np.nan, dtype=np.float32)
    flat = idx.ravel()
    ok = np.flatnonzero(flat >= 0)
    if ok.size == 0:
        return out.reshape(idx.shape)
    rows = ok // kk
    pair = np.minimum(rows, flat[ok]) * n + np.maximum(rows, flat[ok])
    del rows
    pair, inv = np.unique(pair, return_inverse=True)  # i->j and j->i are one pair
    a, b = pair // n, pair % n
    del pair
    row_bytes = 4 * source.d
    tile = max(1, min(n, int(budget // 8 // row_bytes)))
    n_tiles = math.ceil(n / tile)
    key = (a // tile) * n_tiles + b // tile
    order = np.argsort(key, kind="stable")  # a, b already ascending within a key
    key, a, b = key[order], a[order], b[order]
    sims = np.empty(a.size, dtype=np.float32)
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    step = max(1, _gather_bytes(budget) // (2 * row_bytes))
    loaded: dict[int, np.ndarray] = {}
    for g0, g1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        ta, tb = int(a[g0] // tile), int(b[g0] // tile)
        for t in list(loaded):
            if t not in (ta, tb):
                del loaded[t]
        for t in (ta, tb):
            if t not in loaded:
                x = source.read(members[t * tile : (t + 1) * tile]).astype(np.float32, copy=False)
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                np.divide(x, norms, out=x, where=norms > 0)
                loaded[t] = x
        xa, xb = loaded[ta], loaded[tb]
        for s in range(g0, g1, step):
            e = min(g1, s + step)
            sims[s:e] = np.einsum("ij,ij->i", xa[a[s:e] - ta * tile], xb[b[s:e] - tb * tile])
    unsorted = np.empty_like(sims)
    unsorted[order] = sims
    out[ok] = unsorted[inv.ravel()]
    return np.clip(out, -1.0, 1.0).reshape(idx.shape)


def _id_dtype(members: np.ndarray) -> type:
    return np.int32 if (members.size == 0 or int(members.max()) < 2**31 - 1) else np.int64


def _worker_jobs() -> int | None:
    """numba threads for pynndescent: 1 inside a Dask worker (one task per thread)."""
    try:
        from distributed import get_worker

        get_worker()
        return 1
    except (ImportError, ValueError):
        return None


def _candidates_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": pd.Series([], dtype="int64"),
            "cand": pd.Series([], dtype="int64"),
            "sim": pd.Series([], dtype="float32"),
        }
    )


def _search_bucket_rows(
    search_src: VectorSource, source: VectorSource, plan: KnnPlan, members: np.ndarray
) -> pd.DataFrame:
    """Stage 4, a task: one bucket's neighbour lists as ``(row, cand, sim)`` rows (positions),
    padding dropped -- what the shuffle to the row ranges carries."""
    tune_allocator()  # under a Dask nanny: see dedupdask.allocator
    ((rows, idx, sim),) = _search_bucket(
        search_src, source, plan, members, np.zeros(1, dtype=np.int64), _worker_jobs()
    )
    ok = idx >= 0
    return pd.DataFrame(
        {
            "row": np.repeat(rows.astype(np.int64), idx.shape[1])[ok.ravel()],
            "cand": idx[ok].astype(np.int64),
            "sim": sim[ok].astype(np.float32, copy=False),
        }
    )


# -- stage 5: merge a row range ----------------------------------------------------------------------
def _rank_within(rows: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal values of sorted ``rows``."""
    if rows.size == 0:
        return rows.astype(np.int64)
    start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    counts = np.diff(np.r_[start, rows.size])
    return np.arange(rows.size, dtype=np.int64) - np.repeat(start, counts)


def _best(
    rows: np.ndarray,
    cand: np.ndarray,
    sim: np.ndarray,
    k: int,
    ties: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Per row: drop self/-1/repeats, keep the ``k`` most similar (ties by ``ties[cand]``).

    Any of the arrays may be empty, or become empty once self and -1 are dropped (a row range
    that none of a group of buckets holds, a bucket of one member): the result is then empty.

    Examples
    --------
    >>> r, c, s = _best(np.array([0, 0, 0, 1]), np.array([0, 2, 2, -1]),
    ...                 np.array([1.0, 0.5, 0.7, np.nan], np.float32), 2)
    >>> r.tolist(), c.tolist(), s.tolist()
    ([0], [2], [0.699999988079071])
    >>> [a.size for a in _best(np.array([3]), np.array([3]), np.array([1.0], np.float32), 2)]
    [0, 0, 0]
    """
    ok = (cand >= 0) & (cand != rows) & np.isfinite(sim)
    rows, cand, sim = rows[ok], cand[ok], sim[ok]
    order = np.lexsort((-sim, cand, rows))  # repeats of a pair: the highest similarity first
    rows, cand, sim = rows[order], cand[order], sim[order]
    first = np.ones(rows.size, dtype=bool)  # not np.r_[True, ...]: that is 1 long when empty
    first[1:] = (rows[1:] != rows[:-1]) | (cand[1:] != cand[:-1])
    rows, cand, sim = rows[first], cand[first], sim[first]
    order = np.lexsort((cand if ties is None else ties[cand], -sim, rows))
    rows, cand, sim = rows[order], cand[order], sim[order]
    keep = _rank_within(rows) < k
    return rows[keep], cand[keep], sim[keep]


def _merge_range_rows(source: VectorSource, k: int, part: pd.DataFrame) -> pd.DataFrame:
    """Stage 5, a task: one row range's final neighbours as graph-table rows (global indices).

    ``part``: every ``(cand, sim)`` found for the range's rows, indexed by ``row``
    (positions), from all buckets. The rows of :mod:`dedupdask.analyses.graph` (``from``,
    ``to``, ``similarity``, ``rank``): sorted by ``from`` then ``rank``, self and repeats
    dropped, ties by the smaller ``to``; ``source`` turns positions into global indices.
    """
    rows, cand, sim = _best(
        part.index.to_numpy(np.int64),
        part["cand"].to_numpy(np.int64),
        part["sim"].to_numpy(np.float32),
        k,
    )
    return pd.DataFrame(
        {
            "from": source.global_index(rows),
            "to": source.global_index(cand),
            "similarity": sim.astype(np.float32, copy=False),
            "rank": _rank_within(rows).astype(np.int16),
        }
    )
