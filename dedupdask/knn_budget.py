"""kNN stage, partitioned -- sizes: the memory one task may use and what a search needs.

The memory model of :mod:`dedupdask.knn_partitioned`: :func:`task_budget` (from
``max_memory_per_task`` or the workers' memory limits), :func:`single_task_bytes` (the
single-task graph of :mod:`dedupdask.knn`) and :func:`bucket_bytes` /
:func:`bucket_capacity` (one bucket's search).
"""

from __future__ import annotations

import os
import time
from typing import Literal

__all__ = [
    "WAIT_FOR_WORKERS",
    "WORKER_FRACTION",
    "bucket_bytes",
    "bucket_capacity",
    "parse_memory",
    "single_task_bytes",
    "task_budget",
]

WORKER_FRACTION = 0.5
"""Default memory per task: this fraction of a worker's memory limit per thread."""

WAIT_FOR_WORKERS = 30.0
"""Seconds a cluster with no worker is given for its first to register (:func:`task_budget`)."""

_CHUNK_BYTES = 32 * 2**20  # rows read / projected / scored at once
_SIM_BLOCK_BYTES = 32 * 2**20  # exact search: similarity block of one query block

# Memory model of one search task (bytes). pynndescent: peak RSS beyond its float32 input,
# measured in fresh processes on the dev machine (n_jobs=1, k=10): 1.86 kB/vector at
# 50k x 256, 1.62 kB at 150k x 256, 5.9 kB at 50k x 1280, 5.5 kB at 1M x 1280 -- about
# one more copy of the data (its random-projection trees keep a d-wide hyperplane per node)
# plus ~650 B; the model below adds a margin.
_PYNND_PER_DIM = 4 * 1.15  # bytes per vector per dimension beyond the float32 data
_PYNND_PER_VEC = 1000
_PYNND_FIXED = 64 * 2**20

Method = Literal["auto", "exact", "pynndescent"]


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
    """``(memory_limit, nthreads)`` of every worker of the client dask computes on now.

    A cluster with no worker yet (just started, or scaling up) is given
    :data:`WAIT_FOR_WORKERS` seconds for its first one to register, running or paused: what
    this sizes must not be sized from this machine because the workers were late. Still none
    (an adaptive cluster that starts workers only for submitted tasks): an empty list.
    """
    from .scheduler import dask_client

    client = dask_client()
    if client is None:
        return None
    workers = client.scheduler_info().get("workers", {})
    # polled, not Client.wait_for_workers: that counts only running workers, and a worker
    # that registered paused (its process over its memory limit's pause fraction) is still
    # the worker the tasks will run on
    deadline = time.monotonic() + WAIT_FOR_WORKERS
    while not workers and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = client.scheduler_info().get("workers", {})
    if not workers:
        return []
    return [(int(w.get("memory_limit") or 0), int(w.get("nthreads") or 1)) for w in workers.values()]


def task_budget(max_memory_per_task: str | int | None = None) -> int:
    """Memory one kNN task may use, in bytes.

    ``max_memory_per_task`` when given; else :data:`WORKER_FRACTION` of the smallest worker's
    memory limit per thread when a distributed client is current (a worker with T threads
    runs T tasks at once; a cluster whose workers have not registered yet is waited for,
    :data:`WAIT_FOR_WORKERS` seconds at most); else that fraction of this machine's memory.

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


def _gather_bytes(budget: int) -> int:
    """Rows gathered at once while re-scoring pairs."""
    return int(min(64 * 2**20, budget // 8))
