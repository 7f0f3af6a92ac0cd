"""kNN stage: the all-points nearest-neighbour graph of the (representative) vectors.

Semantics, fixed for every method: float32 C-order input whose rows are L2-normalised;
similarity is the cosine similarity ``x_i . x_j`` (1 = identical); each row gets its
``k`` most similar *other* rows (self dropped), sorted by similarity descending, ties by
index ascending; rows with fewer than ``k`` others are padded with index -1 and similarity
NaN.

Two methods:

* ``"exact"`` -- blocked float32 matmul + ``argpartition``; the blocks of query rows are
  independent tasks, so on Dask they run on every worker.
* ``"pynndescent"`` -- NN-descent (``metric="cosine"``, a fixed ``random_state``), one task.
  Its numba JIT costs ~20-30 s in every fresh process (research/perf.md section 4), so
  :func:`warm_up` exists for worker plugins, and small inputs use exact search.

``"auto"`` picks exact search while ``N**2 * d <= EXACT_MAX_WORK``. Measured on the 2-core dev
machine at d=1280 (clustered data): exact 1.0 s / 2.9 s / 10.7 s / 31.7 s at N = 5k / 10k /
20k / 40k; pynndescent (n_neighbors=16, JIT already done) 0.2 / 0.4 / ~2-3 / 1.8 s, plus
~20-30 s of JIT in a fresh process. Counting the JIT that one analysis run pays, the
crossover is N ~ 30k at d=1280 (it scales with ``N**2 * d``); the choice depends only on the
data's shape, never on whether a process happens to be warm, so reruns are identical.
"""

from __future__ import annotations

from typing import Any, Literal

import dask
import numpy as np

__all__ = [
    "ARGMAX_MAX_K",
    "EXACT_MAX_WORK",
    "PYNNDESCENT_MIN_NEIGHBORS",
    "choose_method",
    "exact_knn",
    "exact_knn_block",
    "fits_one_block",
    "knn_graph",
    "knn_graph_dask",
    "nndescent_knn",
    "normalize_rows",
    "top_k",
    "warm_up",
]

EXACT_MAX_WORK = 30_000**2 * 1280
"""Exact search while ``N**2 * d`` is at most this (N = 30k at d = 1280)."""

PYNNDESCENT_MIN_NEIGHBORS = 16
"""NN-descent builds with at least this many neighbours (15 real ones: enough for dup recall 1.0)."""

ARGMAX_MAX_K = 8
"""Up to this many neighbours, exact search picks them by repeated argmax, not argpartition."""
SYRK_MIN_D = 256
"""From this width, a whole-matrix block is one ``x @ x.T`` (syrk) rather than row slices."""
_TOPK_ROWS = 512

_BLOCK_BYTES = 64 * 2**20  # similarity block per task: rows * N * 4 bytes
DEFAULT_RANDOM_STATE = 42

Method = Literal["auto", "exact", "pynndescent"]


def choose_method(n: int, d: int, k: int = 1) -> str:
    """``"exact"`` or ``"pynndescent"`` for ``n`` vectors of width ``d``.

    Examples
    --------
    >>> choose_method(10_000, 1280), choose_method(1_000_000, 1280)
    ('exact', 'pynndescent')
    """
    if n <= max(k + 1, PYNNDESCENT_MIN_NEIGHBORS) * 4:
        return "exact"
    return "exact" if float(n) * n * d <= EXACT_MAX_WORK else "pynndescent"


def normalize_rows(x: Any, *, copy: bool = True) -> np.ndarray:
    """float32 C-order copy of ``x`` with unit-norm rows (zero rows stay zero).

    ``copy=False`` normalises in place when ``x`` already is a writable float32 C-order
    array (one the caller owns).

    Examples
    --------
    >>> normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
    """
    x = np.array(x, dtype=np.float32, order="C", copy=True if copy else None)
    if not x.flags.writeable:
        x = x.copy()
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _empty(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -1, dtype=np.int64), np.full((n, k), np.nan, dtype=np.float32)


def _block_rows(n: int) -> int:
    return int(max(64, min(8192, _BLOCK_BYTES // max(1, 4 * n))))


def fits_one_block(n: int) -> bool:
    """Whether exact search of ``n`` vectors is a single block (one task).

    Examples
    --------
    >>> fits_one_block(4000), fits_one_block(100_000)
    (True, False)
    """
    return n <= _block_rows(n)


def top_k(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``s``, largest first, ties by the lowest column.

    The one top-k of dedupdask (the exact searches of :mod:`dedupdask.knn` and of the
    partitioned kNN's buckets): a tie at the ``k``-th value keeps the lowest columns, so
    every search picks the same neighbours from equal similarities. ``-inf`` marks columns
    that must not be chosen (self); they come last. Modifies nothing.

    Parameters
    ----------
    s : ndarray
        float32 ``[rows, n]`` similarities.
    k : int
        Columns per row (``0 <= k <= n``).

    Returns
    -------
    (ndarray, ndarray)
        int64 columns and float32 values, ``[rows, k]``.

    Examples
    --------
    >>> s = np.array([[0.5, 0.9, 0.5, 0.5, -np.inf]], np.float32)
    >>> top_k(s, 3)[0].tolist()
    [[1, 0, 2]]
    """
    n = s.shape[1]
    if k >= n:
        cand = np.broadcast_to(np.arange(n), s.shape)
    else:
        cand = np.argpartition(s, n - k, axis=1)[:, n - k :]
        got = np.take_along_axis(s, cand, axis=1)
        kth = got.min(axis=1, keepdims=True)
        # argpartition keeps arbitrary columns of a tie at the k-th value: take the lowest
        short = np.flatnonzero((s == kth).sum(axis=1) > (got == kth).sum(axis=1))
        if short.size:
            cand = cand.copy()
            for r in short.tolist():
                above = np.flatnonzero(s[r] > kth[r, 0])
                cand[r] = np.concatenate(
                    [above, np.flatnonzero(s[r] == kth[r, 0])[: k - above.size]]
                )
    csim = np.take_along_axis(s, cand, axis=1)
    order = np.lexsort((cand, -csim), axis=1)[:, :k]
    idx = np.take_along_axis(cand, order, axis=1).astype(np.int64, copy=False)
    return idx, np.take_along_axis(csim, order, axis=1)


def exact_knn_block(x: np.ndarray, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact neighbours of rows ``start:stop`` of ``x`` among all rows (one Dask task).

    Parameters
    ----------
    x : ndarray
        float32 ``[N, d]``, unit rows.
    start, stop : int
        Query rows.
    k : int
        Neighbours per row, self excluded.

    Returns
    -------
    (ndarray, ndarray)
        int64 indices and float32 similarities, ``[stop - start, k]``.

    Examples
    --------
    >>> x = normalize_rows(np.eye(3) + 0.1)
    >>> exact_knn_block(x, 0, 1, 1)[0]
    array([[1]])
    """
    n = x.shape[0]
    out_idx, out_sim = _empty(stop - start, k)
    kk = min(k, n - 1)
    if kk <= 0 or stop <= start:
        return out_idx, out_sim
    if kk <= ARGMAX_MAX_K and kk < n - 1:
        # k passes of argmax (a vectorised scan, ~1 ns per entry) beat argpartition (~10 ns
        # per entry, plus an int64 copy of the block) while k is small; argmax returns the
        # lowest index among ties, which the ordering below keeps. Rows go in slices of
        # _TOPK_ROWS (a few MB of similarities, reused by the allocator instead of page-faulted
        # in), except a whole block of wide vectors: x @ x.T is then one syrk, half the work.
        cand = np.empty((stop - start, kk), dtype=np.int64)
        csim = np.empty((stop - start, kk), dtype=np.float32)
        whole = start == 0 and stop == n and x.shape[1] >= SYRK_MIN_D
        step = n if whole else _TOPK_ROWS
        for s0 in range(start, stop, step):
            s1 = min(stop, s0 + step)
            s = x[s0:s1] @ x.T
            rows = np.arange(s1 - s0)
            s[rows, rows + s0] = -np.inf
            for j in range(kk):
                c = s.argmax(axis=1)
                cand[s0 - start : s1 - start, j] = c
                csim[s0 - start : s1 - start, j] = s[rows, c]
                s[rows, c] = -np.inf
            del s
        order = np.lexsort((cand, -csim), axis=1)[:, :kk]
        cand = np.take_along_axis(cand, order, axis=1)
        csim = np.take_along_axis(csim, order, axis=1)
    else:
        s = x[start:stop] @ x.T
        rows = np.arange(stop - start)
        s[rows, rows + start] = -np.inf
        cand, csim = top_k(s, kk)
    out_idx[:, :kk] = cand
    out_sim[:, :kk] = np.clip(csim, -1.0, 1.0)
    return out_idx, out_sim


def exact_knn(
    x: np.ndarray, k: int, *, block_rows: int | None = None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN graph by blocked matmul, in this process.

    Examples
    --------
    >>> idx, sim = exact_knn(normalize_rows(np.eye(4) + 0.1), 2)
    >>> idx.shape, float(sim[0, 0]) < 1
    ((4, 2), True)
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    step = block_rows or _block_rows(n)
    starts = range(0, n, step)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="exact kNN", unit="block")
    parts = [exact_knn_block(x, s, min(n, s + step), k) for s in starts]
    if not parts:
        return _empty(0, k)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def nndescent_knn(
    x: np.ndarray,
    k: int,
    *,
    random_state: int = DEFAULT_RANDOM_STATE,
    n_neighbors: int | None = None,
    n_jobs: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN graph with pynndescent (cosine), similarities recomputed exactly.

    Parameters
    ----------
    x : ndarray
        float32 ``[N, d]``, unit rows.
    k : int
        Neighbours per row, self excluded.
    random_state : int
        Seed: the same input gives the same graph.
    n_neighbors : int, optional
        Graph degree while building; default ``max(k + 1, PYNNDESCENT_MIN_NEIGHBORS)``.
    n_jobs : int, optional
        numba threads (default: all).

    Returns
    -------
    (ndarray, ndarray)
        int64 indices and float32 similarities, ``[N, k]``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = normalize_rows(rng.standard_normal((500, 16)))
    >>> nndescent_knn(x, 2)[0].shape  # doctest: +SKIP
    (500, 2)
    """
    from pynndescent import NNDescent

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    nn = n_neighbors or max(k + 1, PYNNDESCENT_MIN_NEIGHBORS)
    if n <= nn + 1:
        return exact_knn(x, k)
    index = NNDescent(
        x,
        metric="cosine",
        n_neighbors=nn,
        random_state=random_state,
        low_memory=True,
        n_jobs=n_jobs,
        verbose=False,
    )
    graph, _ = index.neighbor_graph
    del index
    graph = np.asarray(graph, dtype=np.int64)
    return _finish_candidates(x, graph, k)


def _finish_candidates(x: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop self and -1 from candidate lists, recompute similarities, keep the best ``k``."""
    n = x.shape[0]
    rows = np.arange(n)[:, None]
    bad = (cand < 0) | (cand == rows)
    cand = np.where(bad, 0, cand)
    sims = np.empty(cand.shape, dtype=np.float32)
    step = max(1, 2**24 // max(1, cand.shape[1] * x.shape[1]))
    for s in range(0, n, step):
        c = cand[s : s + step]
        sims[s : s + step] = np.einsum("id,ijd->ij", x[s : s + step], x[c])
    sims = np.where(bad, -np.inf, np.clip(sims, -1.0, 1.0)).astype(np.float32)
    # duplicate candidates (possible in approximate graphs) must count once
    order = np.lexsort((cand, -sims), axis=1)
    cand = np.take_along_axis(cand, order, axis=1)
    sims = np.take_along_axis(sims, order, axis=1)
    dup = np.zeros(cand.shape, dtype=bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    sims = np.where(dup, -np.inf, sims)
    order = np.lexsort((cand, -sims), axis=1)[:, :k]
    out_idx, out_sim = _empty(n, k)
    kk = order.shape[1]
    out_idx[:, :kk] = np.take_along_axis(cand, order, axis=1)
    out_sim[:, :kk] = np.take_along_axis(sims, order, axis=1)
    missing = ~np.isfinite(out_sim)
    out_idx[missing] = -1
    out_sim[missing] = np.nan
    return out_idx, out_sim


def knn_graph(
    x: np.ndarray,
    k: int,
    *,
    method: Method = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph of ``x`` in this process.

    Parameters
    ----------
    x : array-like
        ``[N, d]`` vectors; rows are normalised here.
    k : int
        Neighbours per row, self excluded.
    method : {"auto", "exact", "pynndescent"}
        See the module docstring.
    random_state : int
        Seed for pynndescent.
    progress : bool
        tqdm bar over exact-search blocks.

    Returns
    -------
    (ndarray, ndarray)
        int64 indices ``[N, k]`` (-1 = none) and float32 similarities (NaN = none).

    Examples
    --------
    >>> x = np.array([[1, 0], [0.99, 0.1], [0, 1]], dtype=np.float32)
    >>> knn_graph(x, 1, method="exact")[0].ravel().tolist()
    [1, 0, 1]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    x = normalize_rows(x)
    method = _resolve(method, x.shape[0], x.shape[1], k)
    if method == "exact":
        return exact_knn(x, k, progress=progress)
    return nndescent_knn(x, k, random_state=random_state)


def _resolve(method: str, n: int, d: int, k: int) -> str:
    if method == "auto":
        return choose_method(n, d, k)
    if method not in ("exact", "pynndescent"):
        raise ValueError(f"method must be 'auto', 'exact' or 'pynndescent', got {method!r}")
    return method


def knn_graph_dask(
    x: Any,
    n: int,
    d: int,
    k: int,
    *,
    method: Method = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
) -> tuple[np.ndarray, np.ndarray, str]:
    """The kNN graph computed on the current Dask scheduler.

    ``x`` (a dask array or Delayed of shape ``[n, d]``) is normalised in one task; exact search
    runs one task per block of query rows, pynndescent one task. Only the ``[n, k]`` result
    comes back to this process.

    Returns
    -------
    (ndarray, ndarray, str)
        Indices, similarities (as :func:`knn_graph`) and the method used.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.eye(4, dtype=np.float32) + 0.1, chunks=2)
    >>> knn_graph_dask(x, 4, 4, 1)[2]
    'exact'
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    method = _resolve(method, n, d, k)
    xn = dask.delayed(normalize_rows, pure=True)(
        x, dask_key_name=f"dedupdask-knn-x-{dask.base.tokenize(x)}"
    )
    if method == "exact":
        step = _block_rows(n)
        parts = [
            dask.delayed(exact_knn_block, pure=True)(xn, s, min(n, s + step), k)
            for s in range(0, n, step)
        ]
        (computed,) = dask.compute(parts) if parts else ([],)
        if not computed:
            idx, sim = _empty(0, k)
        else:
            idx = np.concatenate([p[0] for p in computed])
            sim = np.concatenate([p[1] for p in computed])
    else:
        idx, sim = dask.delayed(nndescent_knn, pure=True)(
            xn, k, random_state=random_state
        ).compute()
    return idx, sim, method


def warm_up() -> None:
    """Pay pynndescent's numba JIT now (e.g. in a worker plugin), on a tiny input.

    Examples
    --------
    >>> warm_up()  # doctest: +SKIP
    """
    rng = np.random.default_rng(0)
    nndescent_knn(normalize_rows(rng.standard_normal((300, 8))), 2, n_neighbors=8)
