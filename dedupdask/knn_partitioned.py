"""kNN stage, partitioned: the kNN graph of more vectors than one task may hold, on Dask.

:func:`knn_graph_work_dir` is what :func:`dedupdask.analysis.build` calls. It keeps the
single-task graph of :mod:`dedupdask.knn` while that task fits in the memory one task may use
(``max_memory_per_task``; by default half of the smallest Dask worker's memory limit per
thread, or half of this machine's memory without a distributed client), and otherwise -- or
when ``d_reduce`` / ``knn_dtype="float16"`` are asked for -- runs :func:`knn_graph_partitioned`.
No process ever holds all vectors: every task reads the rows it needs from the per-archive
``.dat`` files (``pread`` of the rows locally, ranged reads on object stores).

The partitioned graph, stage by stage (one Dask task per archive, bucket or row range):

1. **sample and fit.** A fixed random sample of rows, :data:`SAMPLE_PER_CENTROID` per
   centroid (a k-means fit of one task while it fits in a quarter of a task's memory, else
   two levels of tasks: :func:`_fit_two_level`);
   with ``d_reduce`` a PCA of it: the uncentred ``d x d`` Gram matrix computed with
   dask.array, its top eigenvectors on the client (uncentred, so inner products -- cosine
   similarities of unit rows -- are what is preserved). A spherical k-means of the (projected)
   sample, one task, gives ``C`` centroids, ``C`` chosen so that buckets average half the
   capacity of a task.
2. **assign** (per archive). Every vector goes to the buckets of its ``m`` (default 2) most
   similar centroids -- points near a boundary sit in both buckets, so a close pair split by
   the boundary still meets in one of them. With reduction or float16 the projected unit
   vectors are written to a scratch file per archive (``work_dir/tmp/knn-<token>/``) so that
   buckets read ``d_reduce``-wide rows; it is removed at the end.
3. **plan** (client, integers only). Members of each bucket; a bucket larger than a task may
   hold is split by a k-means of its own members (a task), again with ``m`` assignments.
4. **search** (per bucket). Exact blocked search (float32 or float16 storage, similarities in
   float32) or pynndescent among the bucket's vectors. After a search on reduced or float16
   vectors, the ``k + max(k, 8)`` best candidates of every member are re-scored on the
   original float32 rows -- both ends of a pair are in the bucket, so the task reads its own
   members' rows again, in tiles that fit its memory -- and the best ``k`` kept, so
   similarities, and thus ``threshold`` and ``ccthreshold``, mean exactly what they mean on
   the single-task path. The lists go back split by row range.
5. **merge** (per row range). A row's candidates from all its buckets are united, self and
   repeats dropped, the best ``k`` kept.

This module orchestrates; the stages live in :mod:`dedupdask.knn_budget` (memory per task and
per search), :mod:`dedupdask.knn_rows` (reading rows, the plan shipped to tasks),
:mod:`dedupdask.knn_fit` (stage 1) and :mod:`dedupdask.knn_buckets` (stages 2-5).

Output semantics are those of :mod:`dedupdask.knn` (self dropped, most similar first, ties by
index, -1/NaN padding), and the tables come from the same :mod:`dedupdask.analyses` code.
Measured recall, memory and time: ``benchmarks/knn.py --partitioned`` and the README section
"Analysing more than one machine holds".
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, Literal

import dask
import numpy as np
from dask.base import tokenize

from .knn import (
    DEFAULT_RANDOM_STATE,
    choose_method,
    exact_knn_block,
    fits_one_block,
    knn_graph_dask,
    normalize_rows,
)
from .knn_buckets import (  # noqa: F401 - the stages' names, re-exported
    BUCKET_NEIGHBORS,
    RERANK_EXTRA,
    _assign_block,
    _best,
    _cut,
    _group,
    _merge_pieces,
    _merge_range,
    _search_bucket,
    _search_bucket_task,
    _split_bucket,
    _top_m,
    exact_bucket_knn,
)
from .knn_budget import (  # noqa: F401
    WORKER_FRACTION,
    _cluster_workers,
    _n_workers,
    bucket_bytes,
    bucket_capacity,
    parse_memory,
    single_task_bytes,
    task_budget,
)
from .knn_fit import (  # noqa: F401
    BOUNDARY_FRACTION,
    MARGIN_ROWS,
    SAMPLE_PER_CENTROID,
    _auto_margin,
    _fit_centroids,
    _fit_two_level,
    _sample_array,
    _sample_positions,
    fit_projection,
    spherical_kmeans,
)
from .knn_rows import (  # noqa: F401
    KnnPlan,
    VectorBlock,
    VectorSource,
    _compute,
    _scratch_file,
    _search_source,
    read_file_rows,
)

__all__ = [
    "VectorBlock",
    "VectorSource",
    "KnnPlan",
    "task_budget",
    "single_task_bytes",
    "bucket_bytes",
    "bucket_capacity",
    "knn_graph_partitioned",
    "knn_graph_work_dir",
    "parse_memory",
]

DEFAULT_M = 2
"""Buckets per vector: its ``m`` most similar centroids."""

FILL = 0.8
"""Centroids are chosen so that buckets average this fraction of a task's capacity.

k-means buckets were balanced on the benchmark data (largest / mean size 1.02-1.04 at 1M
and 5M); a bucket that is larger than a task may hold is split anyway.
"""

MERGE_FANIN = 8
"""Neighbour lists of this many buckets are merged at once (a tree over all buckets)."""

SPLIT_FILL = 0.5
"""An oversized bucket is split into parts that average this fraction of the capacity."""

_SCRATCH = "tmp"

Method = Literal["auto", "exact", "pynndescent"]


# -- the whole graph --------------------------------------------------------------------------------
def _ranges(source: VectorSource, n_ranges: int) -> np.ndarray:
    """Start positions of ``n_ranges`` row ranges aligned to archive boundaries."""
    n = source.n
    target = np.linspace(0, n, n_ranges + 1)[1:-1]
    cuts = source.offsets[
        np.clip(np.searchsorted(source.offsets, target), 0, len(source.offsets) - 1)
    ]
    return np.unique(np.concatenate([[0], cuts[(cuts > 0) & (cuts < n)]])).astype(np.int64)


def knn_graph_partitioned(
    source: VectorSource,
    k: int,
    *,
    max_memory_per_task: str | int | None = None,
    d_reduce: int = 0,
    dtype: Literal["float32", "float16"] = "float32",
    method: Method = "auto",
    m: int = DEFAULT_M,
    margin: float | None = None,
    random_state: int = DEFAULT_RANDOM_STATE,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The kNN graph of every row of ``source`` with bounded memory per task, on Dask.

    Parameters
    ----------
    source : VectorSource
        Where the vectors are (per-archive files); they are never gathered.
    k : int
        Neighbours per row, self excluded.
    max_memory_per_task : str or int, optional
        Memory of one task (``"2GB"``); default :func:`task_budget`.
    d_reduce : int
        Search on a PCA projection to this many dimensions (0 = the original vectors).
    dtype : {"float32", "float16"}
        Storage of the search vectors in a bucket.
    method : {"auto", "exact", "pynndescent"}
        Search inside a bucket; ``"auto"`` takes exact search while the total exact work
        (``n * m * bucket size * d``) stays within :data:`dedupdask.knn.EXACT_MAX_WORK`.
    m : int
        Buckets per vector (>= 2: boundary points go to their ``m`` nearest centroids).
    margin : float, optional
        A vector also goes to up to ``m`` further buckets whose centroid similarity is
        within ``margin`` of its best one (0 = exactly ``m`` buckets); default: chosen on the
        sample so that :data:`BOUNDARY_FRACTION` of the vectors get extra buckets.
    random_state : int
        Seed of the sample, k-means and pynndescent: reruns give the same graph.

    Returns
    -------
    (ndarray, ndarray, dict)
        int64 ``[n, k]`` positions (-1 = none), float32 similarities (NaN = none), and what was
        done (buckets, sizes, replication, method, memory per task, PCA energy kept).

    Examples
    --------
    >>> src = VectorSource.from_collection(collect("work"))  # doctest: +SKIP
    >>> idx, sim, info = knn_graph_partitioned(src, 2, max_memory_per_task="1GB")  # doctest: +SKIP
    >>> info["buckets"]  # doctest: +SKIP
    12
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m!r}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"knn_dtype must be 'float32' or 'float16', got {dtype!r}")
    if method not in ("auto", "exact", "pynndescent"):
        raise ValueError(f"method must be 'auto', 'exact' or 'pynndescent', got {method!r}")
    n, d = source.n, source.d
    budget = task_budget(max_memory_per_task)
    d_search = d_reduce if 0 < d_reduce < d else d
    rerank = d_search < d or dtype == "float16"
    k_search = k + max(k, RERANK_EXTRA) if rerank else k
    itemsize = 2 if dtype == "float16" else 4
    if method == "auto":
        cap = bucket_capacity(budget, d_search, itemsize, k_search, "exact", d, rerank)
        size = min(cap, max(1, int(n * m / max(1, math.ceil(n * m / (cap * FILL))))))
        method = "exact" if float(n) * m * size * d_search <= _exact_max_work() else "pynndescent"
    capacity = bucket_capacity(budget, d_search, itemsize, k_search, method, d, rerank)
    # expected buckets per vector: m, plus up to m more for BOUNDARY_FRACTION of the vectors
    # (2.8 measured for m=2 and 0.5)
    per_vector = m * (1 + 0.8 * BOUNDARY_FRACTION) if margin is None or margin > 0 else m
    n_clusters = 1 if n <= capacity else max(2, math.ceil(n * per_vector / (capacity * FILL)))
    info: dict[str, Any] = {
        "method": f"partitioned-{method}",
        "memory_per_task": budget,
        "d_search": d_search,
        "dtype": dtype,
        "m": m,
        "rerank": rerank,
        "capacity": capacity,
    }
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), np.nan, dtype=np.float32)
    if n == 0:
        return idx, sim, {**info, "buckets": 0}

    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 2)
        clock[0] = now

    # 1. sample, PCA, k-means
    sample_cap = max(1000, budget // (4 * 4 * d))  # rows one task may hold (a quarter of it)
    want = int(min(n, max(20_000, SAMPLE_PER_CENTROID * n_clusters, 4 * d_search)))
    sample_size = min(want, sample_cap)
    positions = _sample_positions(n, sample_size, random_state)
    projection, kept = None, 1.0
    if d_search < d:
        projection, kept = fit_projection(_sample_array(source, positions), d_search)
    info["pca_energy_kept"] = round(kept, 4)
    token = tokenize(
        source.blocks[0].path if source.blocks else "",
        n,
        d,
        d_search,
        dtype,
        n_clusters,
        random_state,
        method,
        m,
        k,
    )
    token = f"{token[:16]}-{uuid.uuid4().hex[:8]}"  # concurrent runs never share scratch/keys
    fit_about: dict[str, Any] = {"kmeans_levels": 1}
    if n_clusters > 1 and want > sample_cap:  # the sample grows with the centroids: two levels
        centroids, margin, fit_about = _fit_two_level(
            source, projection, n_clusters, want, sample_cap, random_state, m, margin
        )
        sample_size = want
    elif n_clusters > 1:
        sample = _sample_array(source, positions)
        parts = [dask.delayed(p) for p in sample.to_delayed().ravel()]
        centroids, margin = dask.delayed(_fit_centroids, pure=True, nout=2)(
            parts, projection, n_clusters, random_state, m, margin
        ).compute()
    else:
        centroids, margin = np.zeros((1, d_search), dtype=np.float32), 0.0
    lap("fit")
    wd = source.blocks[0].wd
    scratch = wd.join(_SCRATCH, f"knn-{token}") if rerank else None
    plan = KnnPlan(
        projection=projection,
        centroids=centroids,
        dtype=dtype,
        m=m,
        margin=margin,
        k=k,
        k_search=k_search,
        rerank=rerank,
        method=method,
        capacity=capacity,
        scratch=scratch,
        budget=budget,
        random_state=random_state,
    )

    try:
        # 2. assign (and write the projected rows)
        if scratch is not None:
            wd.makedirs(_SCRATCH, f"knn-{token}")
        plan_key = dask.delayed(plan, name=f"dedupdask-knn-plan-{token}")
        tasks = [
            dask.delayed(_assign_block, pure=True)(
                b,
                plan_key,
                _scratch_file(scratch, i) if scratch else None,
                dask_key_name=f"dedupdask-knn-assign-{token}-{i}",
            )
            for i, b in enumerate(source.blocks)
        ]
        (labels,) = _compute(tasks)
        lap("assign")

        # 3. plan the buckets
        search_src = _search_source(source, plan)
        search_key = dask.delayed(search_src, name=f"dedupdask-knn-search-source-{token}")
        source_key = dask.delayed(source, name=f"dedupdask-knn-source-{token}")
        block_positions = [
            np.arange(source.offsets[i], source.offsets[i + 1], dtype=np.int64)
            for i in range(len(source.blocks))
        ]
        buckets = _group(block_positions, labels, centroids.shape[0])
        del labels, block_positions
        buckets = [b for b in buckets if b.size]
        splits = 0
        for level in range(8):
            big = [b for b in buckets if b.size > capacity]
            if not big:
                break
            splits += len(big)
            todo = [
                dask.delayed(_split_bucket, pure=True)(
                    search_key,
                    plan_key,
                    b,
                    max(2 * m + 1, math.ceil(b.size * m / (capacity * SPLIT_FILL))),
                    random_state + level,
                    dask_key_name=f"dedupdask-knn-split-{token}-{level}-{j}",
                )
                for j, b in enumerate(big)
            ]
            (parts_out,) = _compute(todo)
            new = []
            for b, sub in zip(big, parts_out, strict=True):
                sub = [s for s in sub if s.size]
                if max(s.size for s in sub) >= 0.9 * b.size:  # no progress: cut in order
                    sub = _cut(b, capacity)
                new += sub
            buckets = [b for b in buckets if b.size <= capacity] + new
        for b in list(buckets):
            if b.size > capacity:  # still too big after 8 levels: cut in order
                buckets.remove(b)
                buckets += _cut(b, capacity)
        sizes = np.array([b.size for b in buckets], dtype=np.int64)
        lap("plan")

        # 4. search, 5. merge
        per_row = m * k * 12 * 4
        n_ranges = max(
            math.ceil(n * per_row / max(1, budget // 2)), min(len(source.blocks), 2 * _n_workers())
        )
        starts = _ranges(source, n_ranges)
        stops = np.append(starts[1:], n)
        pieces = [
            dask.delayed(_search_bucket_task, pure=True, nout=starts.size)(
                search_key,
                source_key,
                plan_key,
                b,
                starts,
                dask_key_name=f"dedupdask-knn-bucket-{token}-{j}",
            )
            for j, b in enumerate(buckets)
        ]
        merged = []
        for r, (s, e) in enumerate(zip(starts, stops, strict=True)):
            level, parts_r = 0, [p[r] for p in pieces]
            while len(parts_r) > MERGE_FANIN:  # a tree of partial merges
                parts_r = [
                    dask.delayed(_merge_pieces, pure=True)(
                        k,
                        *parts_r[g : g + MERGE_FANIN],
                        dask_key_name=f"dedupdask-knn-merge-{token}-{r}-{level}-{g}",
                    )
                    for g in range(0, len(parts_r), MERGE_FANIN)
                ]
                level += 1
            merged.append(
                dask.delayed(_merge_range, pure=True)(
                    int(s), int(e), k, *parts_r, dask_key_name=f"dedupdask-knn-merge-{token}-{r}"
                )
            )
        (results,) = _compute(merged)
        for s, e, (ri, rs) in zip(starts, stops, results, strict=True):
            idx[s:e], sim[s:e] = ri, rs
        lap("search_merge")
    finally:
        if scratch is not None and wd.fs.exists(scratch):
            wd.fs.rm(scratch, recursive=True)
    info.update(
        margin=round(float(margin), 5),
        buckets=len(buckets),
        centroids=int(centroids.shape[0]),
        split_buckets=splits,
        bucket_size_max=int(sizes.max()) if sizes.size else 0,
        bucket_size_mean=round(float(sizes.mean()), 1) if sizes.size else 0.0,
        replication=round(float(sizes.sum() / max(1, n)), 3),
        row_ranges=int(starts.size),
        sample=int(sample_size),
        sample_per_centroid=round(sample_size / max(1, int(centroids.shape[0])), 1),
        **fit_about,
        timings=timings,
    )
    return idx, sim, info


def _exact_max_work() -> float:
    from .knn import EXACT_MAX_WORK

    return float(EXACT_MAX_WORK)


def local_exact_knn(
    col: Any,
    reps: np.ndarray,
    k: int,
    method: Method = "auto",
    *,
    which: str = "dat",
    d: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact kNN graph of rows ``reps``, computed here when that is the cheap way, else None.

    The cheap way: exact search of one block, on local threads, from a local work_dir --
    slicing the memory-mapped files then beats building and running a Dask graph.
    ``which="dct"`` (with ``d``) searches the DCT descriptors.
    """
    d = int(col.d if d is None else d)
    n = int(reps.size)
    single = method if method != "auto" else choose_method(n, d, k)
    if single != "exact" or not fits_one_block(n) or not col.reads_locally():
        return None
    x = normalize_rows(col.vector_rows(None if n == col.n else reps, which=which, d=d), copy=False)
    return exact_knn_block(x, 0, n, k)


def knn_graph_work_dir(
    col: Any,
    reps: np.ndarray,
    k: int,
    *,
    config: Any,
    method: Method = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    which: str = "dat",
    d: int | None = None,
    vectors: Any = None,
) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """The kNN graph of rows ``reps`` of a loaded work_dir: single task or partitioned.

    Partitioned when the single task would need more than :func:`task_budget` (from
    ``config.max_memory_per_task``), or when ``config.d_reduce`` / ``config.knn_dtype`` ask
    for a reduced search; otherwise exactly :func:`dedupdask.knn.knn_graph_dask`. Both
    graphs of a run take this path: the embeddings' and, with ``which="dct"``, ``d=63`` and
    ``vectors`` (their ``[N, 63]`` dask array), the DCT descriptors' (searched unreduced).

    Returns
    -------
    (ndarray, ndarray, str, dict)
        Neighbours (positions into ``reps``), similarities, the method used, and details.

    Examples
    --------
    >>> idx, sim, used, info = knn_graph_work_dir(col, reps, 2, config=cfg)  # doctest: +SKIP
    >>> used  # doctest: +SKIP
    'partitioned-pynndescent'
    """
    n, d = int(reps.size), int(col.d if d is None else d)
    budget = task_budget(getattr(config, "max_memory_per_task", None))
    d_reduce = int(getattr(config, "d_reduce", 0) or 0) if which == "dat" else 0
    dtype = (getattr(config, "knn_dtype", "float32") or "float32") if which == "dat" else "float32"
    single = method if method != "auto" else choose_method(n, d, k)
    need = single_task_bytes(n, d, k, single)
    reduced = (0 < d_reduce < d) or dtype == "float16"
    if not reduced and need <= budget:
        got = local_exact_knn(col, reps, k, method, which=which, d=d)
        if got is not None:
            info = {"method": "exact", "memory_per_task": budget, "single_task_bytes": need}
            return got[0], got[1], "exact", info
        emb = col.embeddings() if vectors is None else vectors
        x = emb if n == col.n else emb[reps]
        idx, sim, used = knn_graph_dask(x, n, d, k, method=method, random_state=random_state)
        return (
            idx,
            sim,
            used,
            {"method": used, "memory_per_task": budget, "single_task_bytes": need},
        )
    source = VectorSource.from_collection(col, reps, which=which, d=d)
    idx, sim, info = knn_graph_partitioned(
        source,
        k,
        max_memory_per_task=budget,
        d_reduce=d_reduce,
        dtype=dtype,
        method=method,
        random_state=random_state,
    )
    info["single_task_bytes"] = need
    return idx, sim, info["method"], info
