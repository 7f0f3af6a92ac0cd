"""kNN stage, partitioned: the kNN graph of more vectors than one task may hold, on Dask.

:func:`knn_graph_work_dir` (arrays) and :func:`knn_graph_frame_work_dir` (the graph table of
:mod:`dedupdask.analyses.graph`) are what :func:`dedupdask.analysis.build` calls. They keep the
single-task graph of :mod:`dedupdask.knn` while that task fits in the memory one task may use
(``max_memory_per_task``; by default half of the smallest Dask worker's memory limit per
thread, or half of this machine's memory without a distributed client), and otherwise -- or
when ``d_reduce`` / ``knn_dtype="float16"`` are asked for -- run :func:`knn_edges_partitioned`.
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
   similar centroids, and to up to ``2 * m`` more whose similarity is within a margin of its
   best one -- points near a boundary sit in several buckets, so a close pair split by the
   boundary still meets in one of them; the margin is chosen so that probe pairs at cosine
   0.9 meet in a bucket 98 % of the time (:data:`dedupdask.knn_fit.PROBE_SHARE`). With
   reduction or float16 the projected unit vectors are written to a scratch file per archive
   (``work_dir/tmp/knn-<token>/``) so that buckets read ``d_reduce``-wide rows; it is removed
   at the end. A shuffle on the bucket
   assembles each bucket's members on the workers; the client learns their number.
3. **plan** (client, one integer per bucket). A bucket larger than a task may hold is split
   by a k-means of its own members (a task whose parts stay on the workers), again with
   ``m`` assignments.
4. **search** (per bucket). Exact blocked search (float32 or float16 storage, similarities in
   float32) or pynndescent among the bucket's vectors. After a search on reduced or float16
   vectors, the ``k + max(k, 8)`` best candidates of every member are re-scored on the
   original float32 rows -- both ends of a pair are in the bucket, so the task reads its own
   members' rows again, in tiles that fit its memory -- and the best ``k`` kept, so
   similarities, and thus ``threshold`` and ``ccthreshold``, mean exactly what they mean on
   the single-task path. The lists are shuffled to the row ranges of their rows.
5. **merge** (per row range). A row's candidates from all its buckets are united, self and
   repeats dropped, the best ``k`` kept: one partition of the graph table, persisted on the
   workers (the client never holds the ``n x k`` lists; :func:`knn_graph_partitioned`
   gathers them in array form for the in-process path).

This module orchestrates; the stages live in :mod:`dedupdask.knn_budget` (memory per task and
per search), :mod:`dedupdask.knn_rows` (reading rows, the plan shipped to tasks),
:mod:`dedupdask.knn_fit` (stage 1), :mod:`dedupdask.knn_tasks` (the task graphs of stages
2-5, whose outputs stay on the workers) and :mod:`dedupdask.knn_buckets` (those tasks' work).

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

from .analyses.graph import empty_graph, graph_arrays, graph_frame
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
    _search_bucket,
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
    MARGIN_ROWS,
    PROBE_SHARE,
    SAMPLE_PER_CENTROID,
    _auto_margin,
    _fit_centroids,
    _fit_two_level,
    _sample_array,
    _sample_positions,
    fit_centroids,
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
from .knn_tasks import (  # noqa: F401
    SPLIT_FILL,
    assign_buckets,
    search_and_merge,
    split_oversized,
)

__all__ = [
    "VectorBlock",
    "VectorSource",
    "KnnPlan",
    "task_budget",
    "single_task_bytes",
    "bucket_bytes",
    "bucket_capacity",
    "knn_edges_partitioned",
    "knn_graph_partitioned",
    "knn_graph_frame_work_dir",
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


def knn_edges_partitioned(
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
    rows: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """The kNN graph of every row of ``source`` as a graph table, with bounded memory per task.

    Nothing per image comes to this process: bucket memberships, splits, neighbour lists and
    the merged graph stay on the workers (it learns the sizes of buckets and partitions).

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
        A vector also goes to up to ``2 * m`` further buckets whose centroid similarity is
        within ``margin`` of its best one (0 = exactly ``m`` buckets); default: chosen on
        held-out sample rows so that :data:`PROBE_SHARE` of probe pairs at cosine 0.9 meet in
        a bucket (:mod:`dedupdask.knn_fit`).
    random_state : int
        Seed of the sample, k-means and pynndescent: reruns give the same graph.
    rows : dask.dataframe.Series, optional
        Global indices of the rows taking part (e.g. the exact-duplicate representatives),
        any partitioning; ``source`` then holds whole files (the k-means sample is drawn
        from all their rows). Default: every row of ``source``.

    Returns
    -------
    (dask.dataframe.DataFrame, dict)
        The graph table of :mod:`dedupdask.analyses.graph` (``from``, ``to`` global indices --
        :meth:`VectorSource.global_index` of the positions --, ``similarity``, ``rank``; one
        partition per row range, computed and held by the workers), and what was done
        (buckets, sizes, replication, method, memory per task, PCA energy kept, edges).

    Examples
    --------
    >>> src = VectorSource.from_collection(collect("work"))  # doctest: +SKIP
    >>> graph, info = knn_edges_partitioned(src, 2, max_memory_per_task="1GB")  # doctest: +SKIP
    >>> info["buckets"], graph.columns.tolist()  # doctest: +SKIP
    (12, ['from', 'to', 'similarity', 'rank'])
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m!r}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"knn_dtype must be 'float32' or 'float16', got {dtype!r}")
    if method not in ("auto", "exact", "pynndescent"):
        raise ValueError(f"method must be 'auto', 'exact' or 'pynndescent', got {method!r}")
    n, d = (source.n if rows is None else int(len(rows))), source.d
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
    # expected buckets per vector: m, plus the extra ones within the margin (2.6 - 4.1 measured
    # for m=2 from 35 to 490 centroids, knn_fit.PROBE_SHARE; a bucket over a task's capacity is
    # split anyway)
    per_vector = 2 * m if margin is None or margin > 0 else m
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
    if n == 0:
        return _no_edges(), {**info, "buckets": 0, "edges": 0}

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
    positions = _sample_positions(source.n, sample_size, random_state)
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
    if n_clusters > 1:  # past a task's sample the sample grows with the centroids: two levels
        centroids, margin, fit_about = fit_centroids(
            source, projection, n_clusters, want, sample_cap, random_state, m, margin, positions
        )
        sample_size = want  # one task's sample (want <= sample_cap), or the two levels'

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
        # 2. assign, 3. plan: on the workers; the client learns the buckets' sizes
        if scratch is not None:
            wd.makedirs(_SCRATCH, f"knn-{token}")
        plan_key = dask.delayed(plan, name=f"dedupdask-knn-plan-{token}")
        scratch_files = [
            _scratch_file(scratch, i) if scratch else None for i in range(len(source.blocks))
        ]
        buckets, bucket_sizes = assign_buckets(
            source, plan_key, centroids.shape[0], scratch_files, token, rows
        )
        lap("assign")
        search_key = dask.delayed(
            _search_source(source, plan), name=f"dedupdask-knn-search-source-{token}"
        )
        source_key = dask.delayed(source, name=f"dedupdask-knn-source-{token}")
        buckets, bucket_sizes, splits = split_oversized(
            buckets, bucket_sizes, capacity=capacity, m=m, search_key=search_key,
            plan_key=plan_key, random_state=random_state, token=token,
        )  # fmt: skip
        sizes = np.array(bucket_sizes, dtype=np.int64)
        lap("plan")

        # 4. search, 5. merge: the merged row ranges stay on the workers
        per_row = m * k * 12 * 4
        n_ranges = max(
            math.ceil(n * per_row / max(1, budget // 2)), min(len(source.blocks), 2 * _n_workers())
        )
        starts = _ranges(source, n_ranges)
        graph, lengths = search_and_merge(
            buckets, starts, source.n, k, search_key=search_key, source_key=source_key,
            plan_key=plan_key, token=token,
        )  # fmt: skip
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
        edges=int(sum(lengths)),
        sample=int(sample_size),
        sample_per_centroid=round(sample_size / max(1, int(centroids.shape[0])), 1),
        **fit_about,
        timings=timings,
    )
    return graph, info


def knn_graph_partitioned(
    source: VectorSource, k: int, **options: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """:func:`knn_edges_partitioned` in array form, gathered here (in-process path and tests).

    ``options`` are those of :func:`knn_edges_partitioned`.

    Returns
    -------
    (ndarray, ndarray, dict)
        int64 ``[n, k]`` positions (-1 = none), float32 similarities (NaN = none), and what
        was done.

    Examples
    --------
    >>> idx, sim, info = knn_graph_partitioned(src, 2, max_memory_per_task="1GB")  # doctest: +SKIP
    """
    graph, info = knn_edges_partitioned(source, k, **options)
    idx, sim = graph_arrays(graph, source.global_index(np.arange(source.n)), k)
    return idx, sim, info


def _no_edges() -> Any:
    import dask.dataframe as dd

    return dd.from_pandas(empty_graph(), npartitions=1)


def _exact_max_work() -> float:
    from .knn import EXACT_MAX_WORK

    return float(EXACT_MAX_WORK)


def local_exact_knn(
    col: Any,
    reps: Any,
    k: int,
    method: Method = "auto",
    *,
    which: str = "dat",
    d: int | None = None,
    transform: Any = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact kNN graph of rows ``reps``, computed here when that is the cheap way, else None.

    The cheap way: exact search of one block, on local threads, from a local work_dir --
    slicing the memory-mapped files then beats building and running a Dask graph.
    ``which="dct"`` (with ``d``) searches the DCT descriptors; ``transform`` (a
    :class:`~dedupdask.whitening.Whitening`) searches the whitened embeddings.
    """
    d = int(col.d if d is None else d)
    n = int(reps.size)
    width = d if transform is None else int(transform.dims)
    single = method if method != "auto" else choose_method(n, width, k)
    if single != "exact" or not fits_one_block(n) or not col.reads_locally():
        return None
    x = col.vector_rows(None if n == col.n else reps, which=which, d=d)
    x = normalize_rows(x if transform is None else transform.apply(x), copy=False)
    return exact_knn_block(x, 0, n, k)


def _single_task(
    col: Any, reps: np.ndarray, k: int, budget: int, need: int, method: Method,
    random_state: int, which: str, d: int, vectors: Any, transform: Any = None,
) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:  # fmt: skip
    """The single-task graph (arrays): here when cheap, else one Dask task."""
    about = {"memory_per_task": budget, "single_task_bytes": need}
    got = local_exact_knn(col, reps, k, method, which=which, d=d, transform=transform)
    if got is not None:
        return got[0], got[1], "exact", {"method": "exact", **about}
    emb = col.embeddings() if vectors is None else vectors
    if transform is not None:  # whitened block by block, where the rows are read
        d = int(transform.dims)
        emb = emb.map_blocks(transform.apply, chunks=(emb.chunks[0], (d,)), dtype=np.float32)
    x = emb if reps.size == col.n else emb[reps]
    idx, sim, used = knn_graph_dask(
        x, int(reps.size), d, k, method=method, random_state=random_state
    )
    return idx, sim, used, {"method": used, **about}


def _work_dir_graph(
    col: Any, reps: Any, k: int, *, config: Any, method: Method, random_state: int,
    which: str, d: int | None, vectors: Any, table: bool, cache: Any = None, groups: Any = None,
    transform: Any = None,
) -> tuple[Any, Any, str, dict[str, Any]]:  # fmt: skip
    """The graph as arrays, or as a table when ``table``; from the previous build's graph
    plus a new-vs-all search when ``cache`` (:class:`~dedupdask.knn_incremental.GraphCache`)
    has a reusable one, else single task or partitioned (and then kept in ``cache``)."""
    width = int(col.d if d is None else d)
    name, tag = (which, None) if transform is None else ("white", transform.token)  # kept as
    previous = None if cache is None else cache.previous(name, k, width, tag)
    if previous is not None:
        from .knn_incremental import incremental_graph

        graph, info = incremental_graph(
            col, reps, k, previous, which=which, d=width, demoted=cache.demoted(previous, groups),
            transform=transform,
        )  # fmt: skip
        if graph is None:  # the new-vs-all search would cost more than searching everything
            cache.refuse(name, info["reason"])
        else:
            graph = cache.keep(name, graph, previous.method, k, width, tag)
            if table:
                return graph, None, "incremental", info
            reps = np.sort(np.asarray(reps.compute() if hasattr(reps, "dask") else reps, dtype=np.int64))
            idx, sim = graph_arrays(graph, reps, k)
            return idx, sim, "incremental", info
    got = _searched_graph(col, reps, k, config=config, method=method, random_state=random_state,
                          which=which, d=d, vectors=vectors, table=table, transform=transform)  # fmt: skip
    if cache is not None:
        graph = got[0] if table else graph_frame(got[4], got[0], got[1])
        graph = cache.keep(name, graph, got[2], k, width, tag)
        if table:
            return graph, None, got[2], got[3]
    return got[:4]


def _searched_graph(
    col: Any, reps: Any, k: int, *, config: Any, method: Method, random_state: int,
    which: str, d: int | None, vectors: Any, table: bool, transform: Any = None,
) -> tuple[Any, Any, str, dict[str, Any], Any]:  # fmt: skip
    """Single task or partitioned; the graph as arrays, or as a table when ``table``; and the
    sorted representatives of the arrays' rows (None for a table)."""
    lazy = hasattr(reps, "dask")  # a Dask Series of global indices: stays on the workers,
    # persisted there, so counting and routing it do not recompute what it comes from
    reps = reps.persist() if lazy else np.asarray(reps, dtype=np.int64)
    n, d = (int(len(reps)) if lazy else int(reps.size)), int(col.d if d is None else d)
    file_d = d
    if transform is not None:  # the search vectors are the whitened ones, searched as they are
        d = int(transform.dims)
    budget = task_budget(getattr(config, "max_memory_per_task", None))
    own = which == "dat" and transform is None
    d_reduce = int(getattr(config, "d_reduce", 0) or 0) if own else 0
    dtype = (getattr(config, "knn_dtype", "float32") or "float32") if own else "float32"
    single = method if method != "auto" else choose_method(n, d, k)
    need = single_task_bytes(n, d, k, single)
    reduced = (0 < d_reduce < d) or dtype == "float16"
    if not reduced and need <= budget:  # fits one task: the arrays are small by definition
        reps = np.sort(np.asarray(reps.compute(), dtype=np.int64)) if lazy else reps
        idx, sim, used, info = _single_task(
            col, reps, k, budget, need, method, random_state, which, file_d, vectors, transform
        )
        return (graph_frame(reps, idx, sim), None, used, info, None) if table else (idx, sim, used, info, reps)
    if not lazy:  # one partitioned path for both forms of reps: the same sample, buckets, graph
        import dask.dataframe as dd
        import pandas as pd

        parts = max(1, min(len(col.archives), math.ceil(reps.size / 1_000_000)))
        reps_np, reps = (
            reps,
            dd.from_pandas(pd.Series(reps, name="index"), npartitions=parts, sort=False),
        )
        reps = reps.persist()
    source = VectorSource.from_collection(col, None, which=which, d=file_d, post=transform)
    graph, info = knn_edges_partitioned(
        source,
        k,
        max_memory_per_task=budget,
        d_reduce=d_reduce,
        dtype=dtype,
        method=method,
        random_state=random_state,
        rows=reps,
    )
    info["single_task_bytes"] = need
    if table:
        return graph, None, info["method"], info, None
    reps = np.sort(np.asarray(reps.compute(), dtype=np.int64)) if lazy else reps_np
    idx, sim = graph_arrays(graph, reps, k)
    return idx, sim, info["method"], info, reps


def knn_graph_frame_work_dir(
    col: Any,
    reps: Any,
    k: int,
    *,
    config: Any,
    method: Method = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    which: str = "dat",
    d: int | None = None,
    vectors: Any = None,
    cache: Any = None,
    groups: Any = None,
    transform: Any = None,
) -> tuple[Any, str, dict[str, Any]]:
    """The kNN graph of rows ``reps`` of a loaded work_dir as a graph table.

    Same choice and options as :func:`knn_graph_work_dir`. Partitioned, the table is
    computed and held by the workers (:func:`knn_edges_partitioned`); on the single-task path
    -- taken only while the graph fits one task -- it is made from that task's arrays
    (:func:`dedupdask.analyses.graph.graph_frame`). ``reps`` may be a Dask Series of the
    global indices (any partitioning, e.g. a column of a per-archive table): then the
    partitioned path needs no per-image array here at all (one count is computed).

    ``cache``, ``groups`` and ``transform``: as :func:`knn_graph_work_dir`.

    Returns
    -------
    (dask.dataframe.DataFrame, str, dict)
        The graph table (``from``/``to`` are global indices, values of ``reps``), the method
        used, and details.

    Examples
    --------
    >>> graph, used, info = knn_graph_frame_work_dir(col, reps, 2, config=cfg)  # doctest: +SKIP
    >>> graph.columns.tolist()  # doctest: +SKIP
    ['from', 'to', 'similarity', 'rank']
    """
    graph, _, used, info = _work_dir_graph(
        col, reps, k, config=config, method=method,
        random_state=random_state, which=which, d=d, vectors=vectors, table=True,
        cache=cache, groups=groups, transform=transform,
    )  # fmt: skip
    return graph, used, info


def knn_graph_work_dir(
    col: Any,
    reps: Any,
    k: int,
    *,
    config: Any,
    method: Method = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    which: str = "dat",
    d: int | None = None,
    vectors: Any = None,
    cache: Any = None,
    groups: Any = None,
    transform: Any = None,
) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """The kNN graph of rows ``reps`` of a loaded work_dir: single task or partitioned.

    Partitioned when the single task would need more than :func:`task_budget` (from
    ``config.max_memory_per_task``), or when ``config.d_reduce`` / ``config.knn_dtype`` ask
    for a reduced search; otherwise exactly :func:`dedupdask.knn.knn_graph_dask`. Both
    graphs of a run take this path: the embeddings' and, with ``which="dct"``, ``d=63`` and
    ``vectors`` (their ``[N, 63]`` dask array), the DCT descriptors' (searched unreduced).
    The in-process form of :func:`knn_graph_frame_work_dir` (a partitioned graph is gathered).

    Parameters
    ----------
    cache : GraphCache, optional
        The build's kept graphs (:mod:`dedupdask.knn_incremental`): the graph is the previous
        build's plus a new-vs-all search when it can be reused, and is kept for the next build.
    groups : ndarray or dask.dataframe.DataFrame, optional
        With ``cache``: the ``rep`` of every image (or ``index, rep``) of the groups ``reps``
        represent, to tell which old representatives are no longer ones.
    transform : Whitening, optional
        Search the embeddings whitened by it (:mod:`dedupdask.whitening`), unreduced, wherever
        they are read; kept in ``cache`` as ``"white"``, reused only with the same whitening.

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
    return _work_dir_graph(
        col, reps, k, config=config, method=method,
        random_state=random_state, which=which, d=d, vectors=vectors, table=False,
        cache=cache, groups=groups, transform=transform,
    )  # fmt: skip
