"""Index stage: a built work_dir's vectors in buckets, persisted under ``work_dir/index/``.

A reference run (:mod:`dedupdask.reference`) asks, for each query image, which images of a
large reference work_dir are most similar. Searching the whole reference per query would cost
work proportional to the reference; the index makes it proportional to the query and the
buckets it touches (an inverted-file index, "IVF-flat"):

1. **fit** (workers): a spherical k-means of a sample of the reference vectors gives ``C``
   centroids, ``C = ceil(N / BUCKET_ROWS)`` (one task, or two levels of tasks when the sample
   is more than a task holds: :func:`dedupdask.knn_fit.fit_centroids`, as the partitioned kNN).
2. **probes** (one task): how many buckets a query must probe, :data:`PROBE_SHARE` of probe
   pairs at cosine :data:`~dedupdask.knn_fit.PROBE_SIMILARITY` made from held-out reference rows
   (:func:`dedupdask.knn_fit._probe_pairs`) find their partner's bucket among their ``nprobe``
   most similar centroids. Chosen for what it is for -- a close pair meeting -- not a fixed
   number: coarse buckets need few probes, fine ones more.
3. **assign** (one task per archive): every reference vector goes to its one most similar
   centroid; a shuffle on the bucket's group (consecutive buckets, about :data:`GROUP_BYTES`
   of vectors) brings each group's members to one task.
4. **write** (one task per group): the group's unit vectors in bucket order
   (``group-<g>.f32``, raw float32 row-major) and their global indices (``group-<g>.i64``),
   so a query reads a bucket with one ranged read; the client learns the buckets' sizes and
   writes ``buckets.parquet`` (``bucket, group, start, count``), ``centroids.npy`` and, last,
   ``index.json`` (version, model, decode version, the archives it covers, ``nprobe``).

Each vector is stored once: the index takes the space of the ``.dat`` files again (unit
float32). ``build`` writes it by default (``index=False`` skips it; ``dedupdask index
WORK_DIR`` / :func:`build_index` adds it later). Nothing per image comes to the client.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import dask
import numpy as np
import pandas as pd

from .allocator import tune as tune_allocator
from .knn import DEFAULT_RANDOM_STATE
from .knn_budget import _SIM_BLOCK_BYTES, task_budget
from .knn_fit import (
    MARGIN_ROWS,
    PROBE_SIMILARITY,
    SAMPLE_PER_CENTROID,
    _probe_pairs,
    _sample_positions,
    fit_centroids,
)
from .knn_rows import VectorBlock, VectorSource, _chunk_rows, _compute, _unit, read_file_rows
from .store import WorkDir, WorkDirError

__all__ = [
    "BUCKET_ROWS",
    "INDEX_DIR",
    "INDEX_VERSION",
    "PROBE_SHARE",
    "ReferenceIndex",
    "archives_fingerprint",
    "build_index",
    "open_index",
    "update_index",
]

INDEX_DIR = "index"
INDEX_JSON = "index.json"
INDEX_VERSION = 2
"""Layout version of ``work_dir/index/`` (2: a bucket may have rows in several segments, one per
build that added archives); an index of a version not in :data:`READS_VERSIONS` is refused."""

READS_VERSIONS = (1, 2)

REFIT_GROWTH = 2.0
"""A build that added archives appends their rows to the index's buckets (:func:`update_index`)
until the index holds this many times the rows its centroids were fitted on; then it is built
anew (more rows per bucket make every query read more)."""

BUCKET_ROWS = 50_000
"""Mean reference vectors per bucket. A query costs ``C * d`` (its centroids) plus
``nprobe * BUCKET_ROWS * d`` (its buckets); building costs ``N * C * d``. 50,000 keeps both
small at 2M x 128 (40 centroids; ``benchmarks/reference.py``)."""

GROUP_BYTES = 256 * 2**20
"""Vectors per index file (consecutive buckets): one write task each."""

PROBE_SHARE = 0.995
"""Share of probe pairs at cosine :data:`~dedupdask.knn_fit.PROBE_SIMILARITY` whose reference
row is in one of the query row's ``nprobe`` buckets (stricter than the build's 0.98: a cross
pair has one chance, in the reference row's single bucket)."""

_SEED_PROBES = 7  # the probe rows are another sample than the k-means rows


# -- what a query reads ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ReferenceIndex:
    """An opened index: what query tasks need (small: ``C`` centroids and bucket records).

    Attributes
    ----------
    wd : WorkDir
        The reference work_dir.
    centroids : ndarray
        float32 ``[C, d]`` unit rows.
    nprobe : int
        Buckets a query row probes.
    bucket_group, bucket_start, bucket_count : ndarray
        ``[segments, C]``: per segment (the rows one build added) and bucket, its file, first
        row in it, rows (0: none).
    meta : dict
        ``index.json``.
    """

    wd: WorkDir
    centroids: np.ndarray
    nprobe: int
    bucket_group: np.ndarray
    bucket_start: np.ndarray
    bucket_count: np.ndarray
    meta: dict

    @property
    def d(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def bucket_rows(self) -> np.ndarray:
        """Rows of each bucket (all segments)."""
        return self.bucket_count.sum(axis=0)

    def read_bucket(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """Global indices (int64) and unit vectors (float32) of one bucket: two ranged reads
        per segment that has rows in it."""
        idx, vec = [np.empty(0, np.int64)], [np.empty((0, self.d), np.float32)]
        for seg in np.flatnonzero(self.bucket_count[:, bucket]).tolist():
            g, s = int(self.bucket_group[seg, bucket]), int(self.bucket_start[seg, bucket])
            rows = np.arange(s, s + int(self.bucket_count[seg, bucket]), dtype=np.int64)
            idx.append(read_file_rows(self.wd, _group_file(self.wd, g, "i64"), 1, "<i8", rows).ravel())
            vec.append(read_file_rows(self.wd, _group_file(self.wd, g, "f32"), self.d, "<f4", rows))
        if len(idx) == 2:
            return idx[1], vec[1]
        return np.concatenate(idx), np.concatenate(vec)


def _group_file(wd: WorkDir, g: int, ext: str) -> str:
    return wd.join(INDEX_DIR, f"group-{g:05d}.{ext}")


def archives_fingerprint(archives: Any) -> str:
    """sha256 of the archives' names and row counts: which run an index belongs to.

    Examples
    --------
    >>> from dedupdask.collect import ArchiveInfo
    >>> archives_fingerprint([ArchiveInfo("a.tar", "a.tar", 0, 3, 3)])[:12]
    '8563277dae92'
    """
    rows = [[a.name, int(a.n_valid)] for a in archives]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def open_index(wd: WorkDir, *, archives: Any = None) -> ReferenceIndex:
    """Read ``work_dir/index/`` (its small files), or a one-line :class:`WorkDirError`.

    Parameters
    ----------
    wd : WorkDir
        The reference work_dir.
    archives : sequence of ArchiveInfo, optional
        The archives of the reference's finished run: an index built for others is refused.
    """
    path = wd.join(INDEX_DIR, INDEX_JSON)
    try:
        meta = wd.read_json(path)
    except FileNotFoundError:
        raise WorkDirError(
            wd.url, f"has no index ({INDEX_DIR}/{INDEX_JSON}): build it once with "
            f"`dedupdask index {wd.url}` (or ddk.index), or rebuild with index on"
        ) from None  # fmt: skip
    version = meta.get("version") if isinstance(meta, dict) else None
    if version not in READS_VERSIONS:
        made = meta.get("dedupdask_version", "?") if isinstance(meta, dict) else "?"
        raise WorkDirError(
            wd.url, f"has an index of version {version!r} (dedupdask {made}); this dedupdask reads "
            f"version {INDEX_VERSION}: rebuild it with `dedupdask index {wd.url}`"
        )  # fmt: skip
    if archives is not None and meta.get("fingerprint") != archives_fingerprint(archives):
        raise WorkDirError(
            wd.url, f"has an index of other archives than its last run ({meta.get('archives')} "
            f"archives indexed): rebuild it with `dedupdask index {wd.url}`"
        )  # fmt: skip
    import io

    centroids = np.load(io.BytesIO(wd.read_bytes(wd.join(INDEX_DIR, "centroids.npy"))))
    buckets = pd.read_parquet(io.BytesIO(wd.read_bytes(wd.join(INDEX_DIR, "buckets.parquet"))))
    c = centroids.shape[0]
    seg = buckets["segment"].to_numpy(np.int64) if "segment" in buckets else np.zeros(len(buckets), np.int64)
    n_seg = int(seg.max()) + 1 if seg.size else 1
    group = np.full((n_seg, c), -1, np.int64)
    start = np.zeros((n_seg, c), np.int64)
    count = np.zeros((n_seg, c), np.int64)
    b = buckets["bucket"].to_numpy(np.int64)
    group[seg, b], start[seg, b] = buckets["group"].to_numpy(np.int64), buckets["start"].to_numpy(np.int64)
    count[seg, b] = buckets["count"].to_numpy(np.int64)
    return ReferenceIndex(wd, centroids.astype(np.float32), int(meta["nprobe"]), group, start, count, meta)


# -- building it ----------------------------------------------------------------------------------
def probe_need(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per probe pair made from unit rows ``x``: how many buckets its query end must probe to
    find the bucket of its reference end (1 = its best one).

    Examples
    --------
    >>> c = np.eye(4, dtype=np.float32)
    >>> probe_need(np.eye(4, dtype=np.float32)[:3], c).tolist()
    [1, 1, 1]
    """
    a, b = _probe_pairs(x, PROBE_SIMILARITY)
    out = []
    step = max(1, _SIM_BLOCK_BYTES // (4 * max(1, centroids.shape[0])))
    for s in range(0, a.shape[0], step):
        home = np.argmax(a[s : s + step] @ centroids.T, axis=1)
        sims = b[s : s + step] @ centroids.T
        mine = sims[np.arange(sims.shape[0]), home]
        out.append((sims > mine[:, None]).sum(axis=1) + 1)
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _nprobe(source: VectorSource, positions: np.ndarray, centroids: np.ndarray) -> tuple[int, float]:
    """``nprobe`` from held-out rows (one task): the :data:`PROBE_SHARE` quantile of
    :func:`probe_need`; and the share it reaches."""
    tune_allocator()
    need = probe_need(_unit(source.read(positions)), centroids)
    if need.size == 0:
        return 1, 1.0
    p = int(np.ceil(np.quantile(need, PROBE_SHARE)))
    p = max(1, min(p, centroids.shape[0]))
    return p, float((need <= p).mean())


def _assign(block: VectorBlock, first: int, centroids: np.ndarray, per_group: int) -> pd.DataFrame:
    """One archive's rows: ``group, bucket, index`` (each row in its best bucket)."""
    tune_allocator()
    out = np.empty(block.size, np.int32)
    step = _chunk_rows(block.width)
    for s in range(0, block.size, step):
        local = np.arange(s, min(block.size, s + step), dtype=np.int64)
        out[s : s + local.size] = np.argmax(_unit(block.read(local)) @ centroids.T, axis=1)
    return pd.DataFrame(
        {
            "group": (out // per_group).astype(np.int64),
            "bucket": out,
            "index": np.arange(first, first + block.size, dtype=np.int64),
        }
    )


def _assign_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {"group": pd.Series([], dtype="int64"), "bucket": pd.Series([], dtype="int32"),
         "index": pd.Series([], dtype="int64")}
    )  # fmt: skip


def _positions(source: VectorSource, gidx: np.ndarray) -> np.ndarray:
    """Positions in ``source`` (whole archives, e.g. the ones an update adds) of global indices."""
    first = np.array([b.offset for b in source.blocks], np.int64)
    if not first.size:
        return gidx
    at = np.searchsorted(first, gidx, side="right") - 1
    return source.offsets[at] + (gidx - first[at])


def _write_group(part: pd.DataFrame, source: VectorSource, wd: WorkDir, g: int) -> pd.DataFrame:
    """One group's files (vectors in bucket order, their indices); its buckets' records."""
    tune_allocator()
    part = part.reset_index()
    b = part["bucket"].to_numpy(np.int64)
    idx = part["index"].to_numpy(np.int64)
    order = np.lexsort((idx, b))
    b, idx = b[order], idx[order]
    vec = np.empty((idx.size, source.d), np.float32)
    by_index = np.argsort(idx, kind="stable")
    step = _chunk_rows(source.d)
    pos = _positions(source, idx)
    for s in range(0, idx.size, step):  # read in file order, place in bucket order
        at = by_index[s : s + step]
        vec[at] = _unit(source.read(pos[at]))
    wd.write_bytes(_group_file(wd, g, "f32"), np.ascontiguousarray(vec, dtype="<f4").tobytes())
    wd.write_bytes(_group_file(wd, g, "i64"), np.ascontiguousarray(idx, dtype="<i8").tobytes())
    buckets, starts, counts = np.unique(b, return_index=True, return_counts=True)
    return pd.DataFrame(
        {"bucket": buckets.astype(np.int32), "group": np.full(buckets.size, g, np.int32),
         "start": starts.astype(np.int64), "count": counts.astype(np.int64)}
    )  # fmt: skip


def build_index(
    col: Any,
    *,
    max_memory_per_task: str | int | None = None,
    random_state: int = DEFAULT_RANDOM_STATE,
    bucket_rows: int = BUCKET_ROWS,
) -> dict[str, Any]:
    """Write ``work_dir/index/`` for the done archives of ``col`` on the current scheduler.

    Parameters
    ----------
    col : Collection
        The work_dir's archives (as its run analysed them).
    max_memory_per_task : str or int, optional
        Memory of one task (the k-means sample); default :func:`dedupdask.knn_budget.task_budget`.
    random_state : int
        Seed of the sample and the k-means.
    bucket_rows : int
        Mean vectors per bucket (:data:`BUCKET_ROWS`).

    Returns
    -------
    dict
        ``index.json``: centroids, ``nprobe`` and the share of probe pairs it finds, groups,
        timings.

    Examples
    --------
    >>> meta = build_index(collect("work"))  # doctest: +SKIP
    >>> meta["centroids"], meta["nprobe"]  # doctest: +SKIP
    (1, 1)
    """
    from .analysis import _version
    from .fusion import has_dct

    t0 = time.perf_counter()
    wd: WorkDir = col.work_dir
    n, d = int(col.n), int(col.d)
    wd.remove(wd.join(INDEX_DIR, INDEX_JSON))  # an index is complete only once this is back
    if wd.fs.exists(wd.join(INDEX_DIR)):
        wd.fs.rm(wd.join(INDEX_DIR), recursive=True)
    wd.makedirs(INDEX_DIR)
    source = VectorSource.from_collection(col)
    n_clusters = max(1, math.ceil(n / max(1, int(bucket_rows))))
    budget = task_budget(max_memory_per_task)
    sample_cap = max(1000, budget // (4 * 4 * max(1, d)))
    about: dict[str, Any] = {"kmeans_levels": 1}
    if n_clusters == 1 or n == 0:
        centroids = np.zeros((1, d), np.float32)
        centroids[0, 0] = 1.0  # any unit vector: every row is in bucket 0
        nprobe, found = 1, 1.0
    else:
        want = int(min(n, max(20_000, SAMPLE_PER_CENTROID * n_clusters)))
        centroids, _, about = fit_centroids(source, None, n_clusters, want, sample_cap, random_state, 1, 0.0)
        probes = _sample_positions(n, min(n, MARGIN_ROWS), random_state + _SEED_PROBES)
        (got,) = _compute(dask.delayed(_nprobe, pure=True)(source, probes, centroids))
        nprobe, found = got
    c = int(centroids.shape[0])
    t_fit = time.perf_counter()

    per_group = max(1, GROUP_BYTES // max(1, int(bucket_rows) * d * 4))
    n_groups = max(1, math.ceil(c / per_group))
    records = _assign_and_write(col, source, centroids, per_group, n_groups, 0, small=True)
    buckets = _records(records, 0)
    import io

    buf = io.BytesIO()
    np.save(buf, centroids.astype("<f4"))
    wd.write_bytes(wd.join(INDEX_DIR, "centroids.npy"), buf.getvalue())
    wd.write_bytes(wd.join(INDEX_DIR, "buckets.parquet"), buckets.to_parquet(index=False))
    sizes = buckets["count"].to_numpy(np.int64)
    meta = {
        "version": INDEX_VERSION,
        "dedupdask_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": col.model,
        "decode_version": col.decode_version,
        "d": d,
        "n": n,
        "dct": has_dct(col),  # whether every archive has its dct.dat: a query's copy tier needs it
        "archives": len(col.archives),
        "fingerprint": archives_fingerprint(col.archives),
        "archive_list": _archive_list(col),
        "fit_n": n,
        "segments": 1,
        "centroids": c,
        "bucket_rows": int(bucket_rows),
        "bucket_size_max": int(sizes.max()) if sizes.size else 0,
        "groups": n_groups,
        "next_group": n_groups,
        "nprobe": int(nprobe),
        "probe_similarity": PROBE_SIMILARITY,
        "probe_share": PROBE_SHARE,
        "probe_found": round(float(found), 5),
        "random_state": random_state,
        **about,
        "timings": {"fit": round(t_fit - t0, 3), "write": round(time.perf_counter() - t_fit, 3)},
    }
    wd.write_json(wd.join(INDEX_DIR, INDEX_JSON), meta)
    return meta


def _records(records: list[pd.DataFrame], segment: int) -> pd.DataFrame:
    out = pd.concat(records, ignore_index=True) if records else pd.DataFrame(
        {"bucket": pd.Series([], dtype="int32"), "group": pd.Series([], dtype="int32"),
         "start": pd.Series([], dtype="int64"), "count": pd.Series([], dtype="int64")}
    )  # fmt: skip
    return out.assign(segment=np.int32(segment))


def _archive_list(col: Any) -> list[list[Any]]:
    """What an update checks: each archive's name, url, row counts and offset."""
    return [[a.name, a.url, int(a.n_valid), int(a.n_images), int(a.offset)] for a in col.archives]


def _assign_and_write(
    col: Any, source: VectorSource, centroids: np.ndarray, per_group: int, n_groups: int, base: int,
    *, small: bool = False,
) -> list[pd.DataFrame]:  # fmt: skip
    """Each row of ``source`` to its best centroid, written in groups ``base..base+n_groups-1``;
    the buckets' records."""
    from .analyses.routing import route

    wd: WorkDir = col.work_dir
    n, d, c = int(source.n), int(source.d), int(centroids.shape[0])
    if not n:
        return []
    if small and c == 1 and n * d * 4 <= GROUP_BYTES and col.reads_locally():
        # one bucket of a small local work_dir: written here, no task graph
        part = pd.DataFrame({"bucket": np.zeros(n, np.int32), "index": source.global_index(np.arange(n))})
        return [_write_group(part, source, wd, base)]
    import dask.dataframe as dd

    token = uuid.uuid4().hex[:12]
    cents = dask.delayed(centroids, name=f"dedupdask-index-centroids-{token}")
    src = dask.delayed(source, name=f"dedupdask-index-source-{token}")
    tasks = [
        dask.delayed(_assign, pure=True)(b, int(b.offset), cents, per_group)
        for b in source.blocks
    ]
    frame = dd.from_delayed(tasks, meta=_assign_meta(), verify_meta=False)
    by_group = route(frame, "group", range(n_groups + 1))
    writes = [
        dask.delayed(_write_group, pure=False)(part, src, wd, base + g)
        for g, part in enumerate(by_group.to_delayed())
    ]
    (records,) = _compute(writes)
    return [r for r in records if len(r)]


def _shift_group(wd: WorkDir, g: int, old_offsets: np.ndarray, shift: np.ndarray) -> int:
    """Move one index file's global indices to this build's (archives sorted in between)."""
    from .knn_incremental import move

    path = _group_file(wd, g, "i64")
    idx = np.frombuffer(wd.read_bytes(path), dtype="<i8")
    moved = move(idx.astype(np.int64), old_offsets, shift)
    wd.write_bytes(path, np.ascontiguousarray(moved, dtype="<i8").tobytes())
    return int(idx.size)


def update_index(
    col: Any, *, max_memory_per_task: str | int | None = None, random_state: int = DEFAULT_RANDOM_STATE,
) -> dict[str, Any]:  # fmt: skip
    """Bring ``work_dir/index/`` up to ``col``: append the rows of archives it does not cover yet.

    The centroids and ``nprobe`` stay; the new rows go to their best buckets as a new segment
    (new files, one task per group of buckets), and the indices in the existing files move
    when new archives sort between old ones (one task per file; none when they all sort after).
    Built anew (:func:`build_index`) when there is no index to update: none, of another version,
    model or decode version, one whose archives changed or went, or one that would hold more
    than :data:`REFIT_GROWTH` times the rows its centroids were fitted on. ``index.json`` says
    which (``"update"``).

    Returns
    -------
    dict
        ``index.json``.
    """
    t0 = time.perf_counter()
    wd: WorkDir = col.work_dir
    why = None
    try:
        meta = wd.read_json(wd.join(INDEX_DIR, INDEX_JSON))
    except FileNotFoundError:
        meta, why = None, "no index"
    except Exception as e:  # noqa: BLE001 - rebuilt below
        meta, why = None, f"unreadable index ({type(e).__name__})"
    if meta is not None:
        from .knn_incremental import archive_identity

        now = {a.name: archive_identity(a.to_dict()) for a in col.archives}
        if meta.get("version") not in READS_VERSIONS or "archive_list" not in meta:
            why = f"an index of version {meta.get('version')!r} without its archives"
        elif meta.get("model") != col.model or meta.get("decode_version") != col.decode_version:
            why = "another model or decode version"
        elif any(now.get(a[0]) != a[:4] for a in meta["archive_list"]):
            why = "an archive it covers changed or went"
        elif col.n > REFIT_GROWTH * max(1, int(meta.get("fit_n", meta["n"]))):
            why = f"more than {REFIT_GROWTH:g}x the rows its centroids were fitted on"
    if why is not None:
        out = build_index(col, max_memory_per_task=max_memory_per_task, random_state=random_state)
        out["update"] = {"appended": False, "reason": why}
        wd.write_json(wd.join(INDEX_DIR, INDEX_JSON), out)
        return out
    assert meta is not None
    import io

    from .analysis import _version
    from .fusion import has_dct
    from .knn_incremental import shifts

    old = {a[0]: int(a[4]) for a in meta["archive_list"] if a[2]}
    new_arcs = [a for a in col.archives if a.name not in old]
    wd.remove(wd.join(INDEX_DIR, INDEX_JSON))  # an index is complete only once this is back
    buckets = pd.read_parquet(io.BytesIO(wd.read_bytes(wd.join(INDEX_DIR, "buckets.parquet"))))
    if "segment" not in buckets:
        buckets = buckets.assign(segment=np.int32(0))
    old_offsets, shift = shifts(col, old)
    moved = 0
    if shift.size and shift.any():
        groups = sorted(set(buckets["group"].astype(int).tolist()))
        tasks = [dask.delayed(_shift_group, pure=False)(wd, g, old_offsets, shift) for g in groups]
        (done,) = _compute(tasks)
        moved = int(sum(done))
    t_shift = time.perf_counter()
    centroids = np.load(io.BytesIO(wd.read_bytes(wd.join(INDEX_DIR, "centroids.npy"))))
    c, d = int(centroids.shape[0]), int(centroids.shape[1])
    bucket_rows = int(meta.get("bucket_rows", BUCKET_ROWS))
    per_group = max(1, GROUP_BYTES // max(1, bucket_rows * d * 4))
    n_groups = max(1, math.ceil(c / per_group))
    base = int(meta.get("next_group", int(buckets["group"].max()) + 1 if len(buckets) else 0))
    segment = int(meta.get("segments", 1))
    sub = replace(col, archives=tuple(new_arcs))
    source = VectorSource.from_collection(sub)
    records = _assign_and_write(sub, source, centroids.astype(np.float32), per_group, n_groups, base)
    added = _records(records, segment)
    if len(added):
        buckets = pd.concat([buckets, added], ignore_index=True)
        segment += 1
    wd.write_bytes(wd.join(INDEX_DIR, "buckets.parquet"), buckets.to_parquet(index=False))
    sizes = buckets.groupby("bucket")["count"].sum().to_numpy(np.int64)
    meta.update({
        "version": INDEX_VERSION, "dedupdask_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": int(col.n), "dct": has_dct(col), "archives": len(col.archives),
        "fingerprint": archives_fingerprint(col.archives), "archive_list": _archive_list(col),
        "segments": segment, "next_group": base + n_groups,
        "bucket_size_max": int(sizes.max()) if sizes.size else 0,
        "update": {"appended": True, "archives": len(new_arcs), "rows": int(source.n), "moved_rows": moved,
                   "timings": {"shift": round(t_shift - t0, 3), "append": round(time.perf_counter() - t_shift, 3)}},
    })  # fmt: skip
    wd.write_json(wd.join(INDEX_DIR, INDEX_JSON), meta)
    return meta
