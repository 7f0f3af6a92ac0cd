"""kNN stage, partitioned: the kNN graph of more vectors than one task may hold, on Dask.

:func:`knn_graph_work_dir` is what :func:`dedupdask.results.build` calls. It keeps the
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

Output semantics are those of :mod:`dedupdask.knn` (self dropped, most similar first, ties by
index, -1/NaN padding), and the tables come from the same :mod:`dedupdask.analyses` code.
Measured recall, memory and time: ``benchmarks/knn.py --partitioned`` and the README section
"Analysing more than one machine holds".
"""

from __future__ import annotations

import math
import os
import posixpath
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import numpy as np
from dask.base import tokenize

from .allocator import tune as tune_allocator
from .knn import (
    DEFAULT_RANDOM_STATE,
    PYNNDESCENT_MIN_NEIGHBORS,
    choose_method,
    exact_knn_block,
    fits_one_block,
    knn_graph_dask,
    nndescent_knn,
    normalize_rows,
)
from .store import WorkDir

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

BOUNDARY_FRACTION = 0.5
"""Default margin: this fraction of the vectors -- the nearest to a further boundary -- get
extra buckets.

Besides its ``m`` best centroids, a vector goes to up to ``m`` more whose similarity is within
``margin`` of its best one; by default ``margin`` is the ``BOUNDARY_FRACTION`` quantile, over
sampled vectors held out of the k-means fit, of (best similarity - (m+1)-th best). Measured
on the benchmark data (1M x 1280, 10k random cluster centres -- no coarse structure, the hard
case for bucketing), 25 buckets, planted pairs >= 0.79 that share a bucket / buckets per
vector: m=2 alone 0.945 / 2.0; fraction 0.15: 0.973 / 2.21; 0.3: 0.986 / 2.45; **0.5: 0.995 /
2.82**; m=3 alone 0.992 / 3.0; m=3 with 0.3: 0.999 / 3.6. Pairs >= 0.9 are split less often
(0.9996 at the default). At 200k (12 buckets) m=2 alone already shared 0.982.
"""

BUCKET_NEIGHBORS = 24
"""pynndescent's graph degree inside a bucket (at least ``k + 1``).

On a 90k x 1280 bucket of the benchmark data (1 thread): planted pairs >= 0.79 found 0.988 /
0.9945 / 1.0 with 16 / 24 / 32 neighbours, in 11.5 / 17.8 / 26.2 s. The single-task path keeps
:data:`dedupdask.knn.PYNNDESCENT_MIN_NEIGHBORS`.
"""

FILL = 0.8
"""Centroids are chosen so that buckets average this fraction of a task's capacity.

k-means buckets were balanced on the benchmark data (largest / mean size 1.02-1.04 at 1M
and 5M); a bucket that is larger than a task may hold is split anyway.
"""

SAMPLE_PER_CENTROID = 200
"""The k-means sample has this many rows per centroid (at least 20,000); k-means libraries
warn below ~39 (faiss). When that sample is more than one task may hold, the fit has two
levels (:func:`_fit_two_level`), so the sample keeps growing with the number of centroids."""

MARGIN_ROWS = 20_000
"""Held-out rows on which a two-level fit measures the margin (a quantile needs no more)."""

MERGE_FANIN = 8
"""Neighbour lists of this many buckets are merged at once (a tree over all buckets)."""

SPLIT_FILL = 0.5
"""An oversized bucket is split into parts that average this fraction of the capacity."""

RERANK_EXTRA = 8
"""After a reduced or float16 search, ``k + max(k, RERANK_EXTRA)`` candidates are re-scored."""

WORKER_FRACTION = 0.5
"""Default memory per task: this fraction of a worker's memory limit per thread."""

_CHUNK_BYTES = 32 * 2**20  # rows read / projected / scored at once
_SIM_BLOCK_BYTES = 32 * 2**20  # exact search: similarity block of one query block
_SCRATCH = "tmp"

# Memory model of one search task (bytes). pynndescent: peak RSS beyond its float32 input,
# measured in fresh processes on the dev machine (n_jobs=1, k=10): 1.86 kB/vector at
# 50k x 256, 1.62 kB at 150k x 256, 5.9 kB at 50k x 1280, 5.5 kB at 1M x 1280 -- about
# one more copy of the data (its random-projection trees keep a d-wide hyperplane per node)
# plus ~650 B; the model below adds a margin.
_PYNND_PER_DIM = 4 * 1.15  # bytes per vector per dimension beyond the float32 data
_PYNND_PER_VEC = 1000
_PYNND_FIXED = 64 * 2**20

Method = Literal["auto", "exact", "pynndescent"]


# -- sizes ----------------------------------------------------------------------------------------
def parse_memory(value: str | int | float | None, name: str = "max_memory_per_task") -> int | None:
    """Bytes from ``"2GB"``, ``"512MiB"``, ``2e9`` or None.

    Examples
    --------
    >>> parse_memory("2GB"), parse_memory("1GiB"), parse_memory(None)
    (2000000000, 1073741824, None)
    """
    if value is None:
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            out = int(parse_bytes(value.strip()))
        except (ValueError, TypeError):
            raise ValueError(f"{name}: cannot read {value!r} as a size") from None
    else:
        out = int(value)
    if out <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return out


def _cluster_workers() -> list[tuple[int, int]] | None:
    """``(memory_limit, nthreads)`` of every worker of the client dask computes on now."""
    from .scheduler import dask_client

    client = dask_client()
    if client is None:
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    return [(int(w.get("memory_limit") or 0), int(w.get("nthreads") or 1)) for w in workers]


def task_budget(max_memory_per_task: str | int | None = None) -> int:
    """Memory one kNN task may use, in bytes.

    ``max_memory_per_task`` when given; else :data:`WORKER_FRACTION` of the smallest worker's
    memory limit per thread when a distributed client is current (a worker with T threads
    runs T tasks at once); else that fraction of this machine's memory.

    Examples
    --------
    >>> task_budget("2GB")
    2000000000
    """
    given = parse_memory(max_memory_per_task)
    if given is not None:
        return given
    import psutil

    total = int(psutil.virtual_memory().total)
    workers = _cluster_workers()
    if workers:
        return int(WORKER_FRACTION * min((lim or total) / max(1, t) for lim, t in workers))
    return int(WORKER_FRACTION * total)


def _n_workers() -> int:
    workers = _cluster_workers()
    if workers:
        return max(1, sum(t for _, t in workers))
    return max(1, os.cpu_count() or 1)


def single_task_bytes(n: int, d: int, k: int, method: str) -> int:
    """Estimated peak memory of the single-task graph of :func:`dedupdask.knn.knn_graph_dask`.

    The task holds the gathered vectors and their normalised copy, then exact search's
    similarity blocks or pynndescent's index.

    Examples
    --------
    >>> single_task_bytes(1_000_000, 1280, 10, "pynndescent") > 10 * 2**30
    True
    """
    data = 2 * n * d * 4 + n * k * 12
    if method == "exact":
        return data + 5 * 64 * 2**20
    return data + int(n * (d * _PYNND_PER_DIM + _PYNND_PER_VEC)) + _PYNND_FIXED


def bucket_bytes(
    size: int,
    d_search: int,
    itemsize: int,
    k_search: int,
    method: str,
    d_read: int | None = None,
    rerank_budget: int = 0,
) -> int:
    """Estimated peak memory of one search task holding ``size`` vectors.

    Search phase: the bucket's search vectors (``itemsize`` bytes per value), the rows being
    read and projected, the neighbour lists, and exact search's similarity block or
    pynndescent's index. With ``rerank_budget`` (a reduced or float16 search in a task of that
    budget), the re-scoring phase that follows: the candidate pairs and two tiles of original
    rows of at most a quarter of the budget each (:func:`_rescore_bucket`).

    Examples
    --------
    >>> bucket_bytes(100_000, 256, 2, 4, "exact") < bucket_bytes(100_000, 256, 4, 4, "exact")
    True
    """
    d_read = d_read or d_search
    read = 3 * min(_CHUNK_BYTES, size * d_read * 4)
    lists = size * (8 + 3 * k_search * 12)
    store = size * d_search * itemsize
    if method == "exact":
        rows = max(16, min(8192, _SIM_BLOCK_BYTES // max(1, 4 * size)))
        block = min(rows, size) * size
        tile = min(_CHUNK_BYTES, size * d_search * 4) if itemsize != 4 else 0
        search = read + lists + store + 4 * block * 4 + tile
    else:
        as_f32 = size * d_search * 4 if itemsize != 4 else 0
        index = size * (d_search * _PYNND_PER_DIM + _PYNND_PER_VEC) + _PYNND_FIXED
        search = read + lists + store + as_f32 + index
    if not rerank_budget:
        return int(search)
    pairs = size * k_search * (12 + 7 * 8)  # lists, ends, sort keys and order of every pair
    tiles = min(2 * size * d_read * 4, rerank_budget // 4) + _gather_bytes(rerank_budget)
    # summed, not the max of the two phases: memory freed after the search is not always
    # returned to the OS before the re-scoring allocates (measured peak RSS)
    return int(search + pairs + tiles)


def bucket_capacity(
    budget: int,
    d_search: int,
    itemsize: int,
    k_search: int,
    method: str,
    d_read: int | None = None,
    rerank: bool = False,
) -> int:
    """Most vectors one search task may hold within ``budget`` bytes (:func:`bucket_bytes`).

    Examples
    --------
    >>> bucket_capacity(2 * 10**9, 1280, 4, 10, "exact")
    321703
    """

    def fits(size: int) -> bool:
        need = bucket_bytes(
            size, d_search, itemsize, k_search, method, d_read, budget if rerank else 0
        )
        return need <= budget

    lo, hi = 0, 1
    while fits(hi) and hi < 2**40:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    if lo < 2 * (k_search + 1):
        raise ValueError(
            f"max_memory_per_task={budget} bytes is too small for the kNN: a task needs about "
            f"{bucket_bytes(1000, d_search, itemsize, k_search, method, d_read):.3g} bytes "
            f"for 1000 vectors of width {d_search}"
        )
    return lo


# -- reading rows ---------------------------------------------------------------------------------
def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) positions in ``rows`` of its runs of consecutive values."""
    if rows.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    brk = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([[0], brk]).astype(np.int64), np.concatenate([brk, [rows.size]]).astype(
        np.int64
    )


def read_file_rows(wd: WorkDir, path: str, width: int, dtype: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a raw row-major file of ``width``-wide ``dtype`` rows.

    Local files are read with one ``pread`` per run of consecutive rows (nothing is
    memory-mapped, so the file's pages do not count in the process' RSS; a
    ``POSIX_FADV_RANDOM`` hint made cached reads 30x slower here, so there is none); other
    filesystems with one ranged request per run.

    Examples
    --------
    >>> read_file_rows(WorkDir("work"), "work/00000.tarfeatures.dat", 1280, "<f4",
    ...                np.array([0, 5]))  # doctest: +SKIP
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, width), dtype=dtype)
    if rows.size == 0:
        return out
    rb = width * out.itemsize
    buf = out.reshape(-1).view(np.uint8)
    starts, ends = _runs(rows)
    if wd.local:
        fd = os.open(path, os.O_RDONLY)
        try:
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                view = memoryview(buf[s * rb : e * rb])
                offset = int(rows[s]) * rb
                while len(view):
                    got = os.preadv(fd, [view], offset)
                    if got <= 0:
                        raise OSError(f"{path}: short read at byte {offset} (file truncated?)")
                    view, offset = view[got:], offset + got
        finally:
            os.close(fd)
        return out
    first = rows[starts] * rb
    last = (rows[ends - 1] + 1) * rb
    parts = wd.fs.cat_ranges([path] * starts.size, first.tolist(), last.tolist())
    for s, e, part in zip(starts.tolist(), ends.tolist(), parts, strict=True):
        if isinstance(part, Exception):
            raise part
        if len(part) != (e - s) * rb:
            raise OSError(f"{path}: short read of rows {rows[s]}..{rows[e - 1]}")
        buf[s * rb : e * rb] = np.frombuffer(part, dtype=np.uint8)
    return out


@dataclass(frozen=True)
class VectorBlock:
    """The rows of one raw row-major file that take part in the kNN (one archive).

    Attributes
    ----------
    wd : WorkDir
        Filesystem and root of ``path``.
    path : str
        The file (e.g. an archive's ``features.dat``).
    width : int
        Values per row.
    n_rows : int
        Rows in the file.
    rows : ndarray or None
        Sorted file rows that take part (e.g. exact-duplicate representatives); None = all.
    dtype : str
        Row dtype in the file (``"<f4"`` or ``"<f2"``).
    """

    wd: WorkDir
    path: str
    width: int
    n_rows: int
    rows: np.ndarray | None = None
    dtype: str = "<f4"

    @property
    def size(self) -> int:
        """Rows taking part."""
        return self.n_rows if self.rows is None else int(self.rows.size)

    def read(self, local: np.ndarray | None = None) -> np.ndarray:
        """Rows ``local`` (positions among the taking-part rows; None = all), as stored.

        Examples
        --------
        >>> block.read(np.array([0, 1])).shape  # doctest: +SKIP
        (2, 1280)
        """
        if local is None:
            local = np.arange(self.size, dtype=np.int64)
        file_rows = local if self.rows is None else self.rows[local]
        return read_file_rows(self.wd, self.path, self.width, self.dtype, file_rows)


@dataclass(frozen=True)
class VectorSource:
    """Vectors spread over per-archive files, in one global order (position 0..n-1).

    Examples
    --------
    >>> src = VectorSource.from_collection(collect("work"))  # doctest: +SKIP
    >>> src.n, src.d, src.read(np.array([0, 10])).shape  # doctest: +SKIP
    (3000, 1280, (2, 1280))
    """

    blocks: tuple[VectorBlock, ...]
    d: int
    offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = [b.size for b in self.blocks]
        object.__setattr__(
            self, "offsets", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        )

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def from_collection(cls, col: Any, reps: np.ndarray | None = None) -> VectorSource:
        """The ``.dat`` files of a :class:`~dedupdask.collect.Collection`, rows ``reps`` only.

        Parameters
        ----------
        col : Collection
            Loaded work_dir.
        reps : ndarray, optional
            Sorted global indices taking part (default: all rows).
        """
        blocks = []
        for a in col.archives:
            if not a.n_valid:
                continue
            rows = None
            if reps is not None:
                lo, hi = np.searchsorted(reps, [a.offset, a.offset + a.n_valid])
                if hi - lo == a.n_valid:
                    rows = None
                elif hi == lo:
                    continue
                else:
                    rows = (reps[lo:hi] - a.offset).astype(np.int64)
            path = col.work_dir.file(a.name, "dat")
            blocks.append(VectorBlock(col.work_dir, path, col.d, a.n_valid, rows))
        return cls(tuple(blocks), col.d)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at sorted global ``positions`` (as stored in the files).

        Examples
        --------
        >>> src.read(np.array([0, 1, 2])).shape  # doctest: +SKIP
        (3, 1280)
        """
        positions = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.offsets, positions, side="right") - 1
        parts = []
        for b in np.unique(which).tolist():
            lo, hi = np.searchsorted(which, [b, b + 1])
            parts.append(self.blocks[b].read(positions[lo:hi] - self.offsets[b]))
        if not parts:
            dt = self.blocks[0].dtype if self.blocks else "<f4"
            return np.empty((0, self.blocks[0].width if self.blocks else self.d), dtype=dt)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _chunk_rows(width: int, itemsize: int = 4) -> int:
    return max(256, _CHUNK_BYTES // max(1, width * itemsize))


# -- the plan (fitted on the client side, shipped to tasks) -----------------------------------
@dataclass(frozen=True)
class KnnPlan:
    """What every task needs to know: projection, centroids, widths, the search settings.

    Attributes
    ----------
    projection : ndarray or None
        float32 ``[d, d_search]`` (PCA), None = search on the original vectors.
    centroids : ndarray
        float32 ``[C, d_search]`` unit rows.
    dtype : str
        Storage of the search vectors (``"float32"`` or ``"float16"``).
    m : int
        Buckets per vector.
    margin : float
        Up to ``m`` more buckets whose centroid is within this similarity of the best.
    k : int
        Neighbours per row in the result.
    k_search : int
        Neighbours per row found in a bucket (``k + max(k, RERANK_EXTRA)`` when reranking).
    rerank : bool
        Similarities are re-scored on the original float32 rows.
    method : str
        Search inside a bucket: ``"exact"`` or ``"pynndescent"``.
    capacity : int
        Most vectors per bucket.
    scratch : str or None
        Folder of the projected rows (one file per archive) when ``rerank``.
    budget : int
        Memory per task (bytes).
    """

    projection: np.ndarray | None
    centroids: np.ndarray
    dtype: str
    m: int
    margin: float
    k: int
    k_search: int
    rerank: bool
    method: str
    capacity: int
    scratch: str | None
    budget: int
    random_state: int = DEFAULT_RANDOM_STATE

    @property
    def d_search(self) -> int:
        return int(self.centroids.shape[1])

    def to_search(self, x: np.ndarray) -> np.ndarray:
        """Original rows -> unit search vectors (float32)."""
        x = _unit(x)
        if self.projection is not None:
            x = _unit(x @ self.projection)
        return x


def _search_source(source: VectorSource, plan: KnnPlan) -> VectorSource:
    """Where the search vectors are: the scratch files, or the original rows."""
    if plan.scratch is None:
        return source
    width = plan.d_search
    dtype = np.dtype(plan.dtype).newbyteorder("<").str
    blocks = tuple(
        VectorBlock(b.wd, _scratch_file(plan.scratch, i), width, b.size, None, dtype)
        for i, b in enumerate(source.blocks)
    )
    return VectorSource(blocks, width)


def _scratch_file(scratch: str, i: int) -> str:
    return posixpath.join(scratch, f"{i:07d}.vec")


def _read_search(src: VectorSource, plan: KnnPlan, positions: np.ndarray) -> np.ndarray:
    """Unit search vectors (float32) of sorted ``positions``, read in chunks."""
    out = np.empty((positions.size, plan.d_search), dtype=np.float32)
    step = _chunk_rows(src.d)
    for s in range(0, positions.size, step):
        raw = src.read(positions[s : s + step])
        out[s : s + step] = raw if plan.scratch is not None else plan.to_search(raw)
    return out


# -- stage 1: sample, PCA, k-means ---------------------------------------------------------------
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
        key = "dedupdask-knn-sample-" + tokenize(source.blocks[b].path, local)
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
    """k-means centroids of the sample, and the margin (see :data:`BOUNDARY_FRACTION`)."""
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


def _auto_margin(x: np.ndarray, centroids: np.ndarray, m: int) -> float:
    """The :data:`BOUNDARY_FRACTION` quantile of (best - (m+1)-th best centroid similarity).

    0 when there are at most ``m`` centroids (nothing further to add) or no rows.

    Examples
    --------
    >>> c = np.eye(3, dtype=np.float32)
    >>> _auto_margin(np.empty((0, 3), np.float32), c, 1), _auto_margin(c, c, 3)
    (0.0, 0.0)
    """
    if centroids.shape[0] <= m or x.shape[0] == 0:
        return 0.0
    gaps = []
    step = max(1, _SIM_BLOCK_BYTES // (4 * centroids.shape[0]))
    for s in range(0, x.shape[0], step):
        sims = -np.sort(-(x[s : s + step] @ centroids.T), axis=1)
        gaps.append(sims[:, 0] - sims[:, m])
    return float(np.quantile(np.concatenate(gaps), BOUNDARY_FRACTION))


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
    held-out sample rows (:data:`BOUNDARY_FRACTION`; one task). The client holds the sample's
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


# -- stage 2: assign --------------------------------------------------------------------------------
def _top_m(x: np.ndarray, centroids: np.ndarray, m: int, margin: float = 0.0) -> np.ndarray:
    """Per row: its ``m`` most similar centroids, plus up to ``m`` more within ``margin``.

    A further centroid is taken when its similarity is at least the best one's minus
    ``margin`` (points near a boundary of several buckets); unused columns are -1.
    """
    sims = x @ centroids.T
    c = centroids.shape[0]
    width = min(c, 2 * m if margin > 0 else m)
    if width == c:
        top = np.broadcast_to(np.arange(c), sims.shape)
    else:
        top = np.argpartition(-sims, width - 1, axis=1)[:, :width]
    s = np.take_along_axis(sims, top, axis=1)
    order = np.lexsort((top, -s), axis=1)
    top = np.take_along_axis(top, order, axis=1).astype(np.int32)
    s = np.take_along_axis(s, order, axis=1)
    if width > m:
        extra = s[:, m:] < (s[:, :1] - np.float32(margin))
        top[:, m:][extra] = -1
    return top


def _assign_block(block: VectorBlock, plan: KnnPlan, scratch_path: str | None) -> np.ndarray:
    """Top-``m`` centroids of every row of one archive; writes its projected rows if asked."""
    tune_allocator()
    n = block.size
    out = np.empty((n, _label_width(plan.m, plan.margin, plan.centroids.shape[0])), dtype=np.int32)
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

    The margin is chosen again on the bucket's sample (:data:`BOUNDARY_FRACTION`) when the
    top level chose one.
    """
    cap = max(parts * 64, _CHUNK_BYTES * 4 // (4 * plan.d_search))
    sample = _read_search(
        search_src, plan, members[_sample_positions(members.size, min(members.size, cap), seed)]
    )
    centroids = spherical_kmeans(sample, parts, seed=seed)
    margin = _auto_margin(sample, centroids, plan.m) if plan.margin > 0 else 0.0
    labels = np.empty((members.size, _label_width(plan.m, margin, parts)), dtype=np.int32)
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


def _label_width(m: int, margin: float, n_centroids: int) -> int:
    return min(n_centroids, 2 * m if margin > 0 else m)


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
    """Best ``k`` columns of each row of ``s`` (self excluded), sorted, ties by index."""
    rows = np.arange(s.shape[0])
    s[rows, self_cols] = -np.inf
    n = s.shape[1]
    kk = min(k, n - 1)
    idx = np.full((s.shape[0], k), -1, dtype=np.int64)
    sim = np.full((s.shape[0], k), np.nan, dtype=np.float32)
    if kk <= 0:
        return idx, sim
    cand = (
        np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        if kk < n - 1
        else np.broadcast_to(np.arange(n), s.shape)
    )
    csim = np.take_along_axis(s, cand, axis=1)
    order = np.lexsort((cand, -csim), axis=1)[:, :kk]
    idx[:, :kk] = np.take_along_axis(cand, order, axis=1)
    sim[:, :kk] = np.clip(np.take_along_axis(csim, order, axis=1), -1.0, 1.0)
    bad = ~np.isfinite(sim)
    idx[bad], sim[bad] = -1, np.nan
    return idx, sim


def exact_bucket_knn(v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN among the rows of ``v`` (float32 or float16 unit rows), float32 arithmetic.

    float16 rows are converted tile by tile, so the bucket stays in half precision.

    Examples
    --------
    >>> v = _unit(np.eye(3, dtype=np.float32) + 0.1).astype(np.float16)
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


def _gather_bytes(budget: int) -> int:
    """Rows gathered at once while re-scoring pairs."""
    return int(min(64 * 2**20, budget // 8))


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


def _search_bucket_task(*args: Any) -> Any:
    tune_allocator()  # under a Dask nanny: see dedupdask.allocator
    search_src, source, plan, members, range_starts = args
    return _search_bucket(search_src, source, plan, members, range_starts, _worker_jobs())


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


def _merge_pieces(
    k: int, *pieces: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several buckets' pieces of one row range -> one piece with the best ``k`` per row.

    Partial merges run as soon as their buckets are done, so a worker never stores the
    neighbour lists of every bucket at once.
    """
    rows = np.concatenate([np.repeat(p[0], p[1].shape[1]) for p in pieces]).astype(np.int64)
    cand = np.concatenate([p[1].ravel() for p in pieces]).astype(np.int64)
    sim = np.concatenate([p[2].ravel() for p in pieces])
    dt = np.result_type(*(p[1].dtype for p in pieces))  # int32 ids unless some piece needs int64
    del pieces
    rows, cand, sim = _best(rows, cand, sim, k)
    uq = np.unique(rows)
    out_idx = np.full((uq.size, k), -1, dtype=dt)
    out_sim = np.full((uq.size, k), np.nan, dtype=np.float32)
    at = np.searchsorted(uq, rows)
    rank = _rank_within(rows)
    out_idx[at, rank], out_sim[at, rank] = cand, sim
    return uq, out_idx, out_sim


def _merge_range(
    start: int, stop: int, k: int, *pieces: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The final ``[stop - start, k]`` neighbours of rows ``start..stop`` from all buckets."""
    rows = np.concatenate([np.repeat(p[0], p[1].shape[1]) for p in pieces]).astype(np.int64)
    cand = np.concatenate([p[1].ravel() for p in pieces]).astype(np.int64)
    sim = np.concatenate([p[2].ravel() for p in pieces])
    del pieces
    rows, cand, sim = _best(rows, cand, sim, k)
    idx = np.full((stop - start, k), -1, dtype=np.int64)
    out = np.full((stop - start, k), np.nan, dtype=np.float32)
    rank = _rank_within(rows)
    idx[rows - start, rank] = cand
    out[rows - start, rank] = sim
    return idx, out


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


def _compute(*args: Any) -> Any:
    """``dask.compute``, without distributed's warning about graphs that carry member lists."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        return dask.compute(*args)


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
) -> tuple[np.ndarray, np.ndarray, str, dict[str, Any]]:
    """The kNN graph of rows ``reps`` of a loaded work_dir: single task or partitioned.

    Partitioned when the single task would need more than :func:`task_budget` (from
    ``config.max_memory_per_task``), or when ``config.d_reduce`` / ``config.knn_dtype`` ask
    for a reduced search; otherwise exactly :func:`dedupdask.knn.knn_graph_dask`.

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
    n, d = int(reps.size), int(col.d)
    budget = task_budget(getattr(config, "max_memory_per_task", None))
    d_reduce = int(getattr(config, "d_reduce", 0) or 0)
    dtype = getattr(config, "knn_dtype", "float32") or "float32"
    single = method if method != "auto" else choose_method(n, d, k)
    need = single_task_bytes(n, d, k, single)
    reduced = (0 < d_reduce < d) or dtype == "float16"
    if not reduced and need <= budget:
        got = local_exact_knn(col, reps, k, method)
        if got is not None:
            info = {"method": "exact", "memory_per_task": budget, "single_task_bytes": need}
            return got[0], got[1], "exact", info
        emb = col.embeddings()
        x = emb if n == col.n else emb[reps]
        idx, sim, used = knn_graph_dask(x, n, d, k, method=method, random_state=random_state)
        return (
            idx,
            sim,
            used,
            {"method": used, "memory_per_task": budget, "single_task_bytes": need},
        )
    source = VectorSource.from_collection(col, reps)
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
