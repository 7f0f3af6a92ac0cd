"""Verification stage: score candidate duplicate pairs on Dask with :mod:`dedupdask.match`.

This module holds the tasks (read images, score pairs) and plans the work for pairs held in
this process (which images to read, which pairs each task scores, on which scheduler);
:mod:`dedupdask.verify_frames` plans the same tasks for pairs that are a Dask DataFrame on the
workers. The decision for one pair is :func:`dedupdask.match.match_score`'s (the matcher).

Work is split for Dask as the rest of the analysis. Past :data:`STREAM_MAX_ARCHIVES`
archives, pairs whose two images lie in uncompressed tars (extraction records each member's ``member_offset``) are scored in chunks
of :data:`PAIRS_PER_TASK` pairs, each task reading just its images by byte range
(``cat_ranges``: concurrent ranged GETs on S3, ``pread`` locally) -- the task count and the
memory per task stay bounded however many archives the pairs span. Other pairs (fewer
archives, gzip tars, zips, folders, work_dirs extracted before offsets were recorded): one
task per archive reads the images it holds that take part in a candidate pair (each archive
streamed once, through :func:`dedupdask.readback.read_archive_members`), and tasks per pair
of archives score the pairs between them. No model is used, so no ONNX session is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dask
import numpy as np
import pandas as pd

from .allocator import tune as tune_allocator
from .match import MATCHER, PIXEL_MATCHER, Prepared, View, match_score, prepare_image, record_views
from .match_keypoints import Keypoints
from .match_record import RECORD_COLUMNS, MatchRecord, records_frame

__all__ = [
    "VERIFY_COLUMNS",
    "Prepared",
    "load_archive_images",
    "load_ranged_images",
    "finish_cost",
    "match_score",
    "placement",
    "prepare_image",
    "score_pairs",
    "score_ranged",
    "verify_pairs",
]

VERIFY_COLUMNS = ("from", "to", "verify_score", "verify_error", *RECORD_COLUMNS)
"""A scored pair: its score, why it has none (an image not read), and its match record
(:data:`dedupdask.match_record.RECORD_COLUMNS`)."""

PAIRS_PER_TASK = 1000
"""Candidate pairs scored per Dask task at most (pairs between two archives are split)."""
FEW_IMAGES = 2_500
"""Up to this many images to verify (~370 MB of decoded 256 px thumbnails, plus ~40 KB each of keypoint
features with ``verify_keypoints``), the pairs are split into
one task per worker that each hold every image, instead of tasks per pair of archives: an
image's view (grey image, FFT plans, template stacks) is then built at most once per task, not
once per archive it has pairs with, and the pairs are ordered so that each task holds few of
another task's images (:func:`local_order`)."""
STREAM_MAX_ARCHIVES = 64
"""Up to this many archives, candidates are read by streaming each archive once (each image
decoded once; tasks per pair of archives stay few). Past it, pairs are read by byte range in
chunks (tasks and memory bounded however many archives there are, but an image taking part
in pairs of several chunks is read and decoded once per chunk)."""
CLUSTER_MIN_PAIRS = 1000
"""Fewer pairs than this (about a second of work) are scored here on local threads even when
the call runs on a distributed client: shipping images to workers costs more than it saves."""
PROCESS_MIN_PAIRS = 3000
"""Without a distributed client (``client=None``, no default Client), at least this many
pairs (~3 s of one core) are scored on the call's LocalCluster
(:meth:`dedupdask.scheduler.RunScheduler.processes`, started once per call): scoring holds
the GIL, so local threads would run it on one core."""


@contextlib.contextmanager
def _scheduler_for(n_pairs: int) -> Iterator[Any]:
    """The scheduler to score ``n_pairs`` on (None: dask's current one).

    Asked of the call's :class:`~dedupdask.scheduler.RunScheduler` (one is resolved for this
    call of :func:`verify_pairs` when it runs outside ``run``/``build``).
    """
    from .scheduler import resolve

    with resolve() as run:
        if run.kind == "local":
            yield None  # the local scheduler the user chose (set for the analysis)
        elif run.client is not None:
            yield run.client if n_pairs >= CLUSTER_MIN_PAIRS else "threads"
        elif n_pairs >= PROCESS_MIN_PAIRS and (os.cpu_count() or 1) >= 2:
            yield run.processes()
        else:
            yield None


# -- Dask tasks ----------------------------------------------------------------------------------
def load_archive_images(
    url: str,
    wanted: Iterable[tuple[str, int, int]],
    storage_options: dict[str, Any] | None = None,
    max_image_pixels: int = 100_000_000,
    max_member_bytes: int = 256 * 2**20,
    keypoints: bool = False,
) -> dict[int, Prepared | str]:
    """Read and prepare the wanted images of one archive, reading it once (one Dask task).

    Parameters
    ----------
    url : str
        The archive (or loose-image folder) URL.
    wanted : iterable of (member, occurrence, global index)
    storage_options : dict, optional
        fsspec options.
    max_image_pixels, max_member_bytes : int
        Limits, as in extraction.
    keypoints : bool
        Also measure each image's fills (flat and uniform shares) and describe each image for
        the keypoint matcher (as is and mirrored; a graphic as is), once here rather than in
        every scoring task that holds it.

    Returns
    -------
    dict
        Global index -> :class:`Prepared`, or the reason it could not be read.
    """
    from .readback import read_archive_members

    tune_allocator()
    items = list(wanted)
    done = read_archive_members(
        url,
        {(m, int(o)) for m, o, _ in items},
        handle=lambda data: data,
        fail=lambda reason: reason,
        storage_options=storage_options,
        max_member_bytes=max_member_bytes,
    )
    out: dict[int, Prepared | str] = {}
    for m, o, idx in items:
        v = done.get((m, int(o)), "member not read")
        if isinstance(v, bytes | bytearray):
            v = prepare_image(bytes(v), max_image_pixels=max_image_pixels)
            if keypoints and isinstance(v, Prepared):
                k = Keypoints(v.rgb)
                # a graphic is warped onto another without a mirror: its mirror image is
                # described only by a task that pairs it with a picture that is not a graphic
                feats = {False: k.features(False)} if k.graphic else k.all_features()
                v = dataclasses.replace(v, keypoints=feats, fills=k.fills)
        out[int(idx)] = v
    return out


def score_pairs(
    pairs: np.ndarray,
    *loaded: Mapping[int, Prepared | str],
    early_accept: float | None = None,
    keypoints: bool = False,
) -> tuple[pd.DataFrame, float]:
    """Score candidate pairs whose images are in ``loaded`` (one Dask task).

    ``early_accept`` and ``keypoints`` are passed to :func:`dedupdask.match.record_views`.

    Returns
    -------
    (DataFrame, float)
        Columns :data:`VERIFY_COLUMNS` (``verify_score`` NaN, the record null and
        ``verify_error`` set when an image could not be read, or when the matcher failed on
        the pair: ``"matcher failed: <exception>"``, a fault of this pair's, not of the task's
        other pairs nor of the run), and the seconds spent.

    Raises
    ------
    Exception
        The matcher's first exception when it failed on every pair it was asked: a fault of
        the matcher or the worker, not of the pairs (a module that does not load, a kernel
        that does not compile), which must stop the run loudly rather than leave every pair
        unverified.
    """
    tune_allocator()  # under a Dask nanny: see dedupdask.allocator
    t0 = time.perf_counter()
    images: dict[int, Prepared | str] = {}
    for d in loaded:
        images.update(d)
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    last = {
        int(i): k for k, row in enumerate(p) for i in row
    }  # a view is dropped after its last pair
    views: dict[int, View] = {}
    scores = np.full(len(pairs), np.nan, dtype=np.float64)
    errors: list[str | None] = [None] * len(pairs)
    records: list[MatchRecord | None] = [None] * len(pairs)
    first_fault: Exception | None = None
    for k, (a, b) in enumerate(p.tolist()):
        pa, pb = images.get(a, "not loaded"), images.get(b, "not loaded")
        if not isinstance(pa, Prepared) or not isinstance(pb, Prepared):
            errors[k] = str(pa if not isinstance(pa, Prepared) else pb)
        else:
            try:
                va = views.get(a) or views.setdefault(a, View(pa))
                vb = views.get(b) or views.setdefault(b, View(pb))
                records[k] = record_views(va, vb, early_accept, keypoints=keypoints)
            except MemoryError:
                raise  # the worker's, not the pair's: Dask retries the task elsewhere
            except Exception as e:  # noqa: BLE001 - one pair's fault is recorded, the run goes on
                errors[k] = f"matcher failed: {type(e).__name__}: {e}"[:300]
                first_fault = first_fault or e
            else:
                scores[k] = records[k].score
        for i in (a, b):
            if last[i] == k:
                views.pop(i, None)
    if first_fault is not None and not np.isfinite(scores).any():
        raise first_fault  # no pair scored: the matcher's fault (or the worker's), not the pairs'
    df = pd.DataFrame(
        {
            "from": p[:, 0],
            "to": p[:, 1],
            "verify_score": scores,
            "verify_error": pd.array(errors, dtype="string"),
        }
    )
    return pd.concat([df, records_frame(records)], axis=1), time.perf_counter() - t0


def load_ranged_images(
    items: Iterable[tuple[int, str, int, int]],
    storage_options: dict[str, Any] | None = None,
    max_image_pixels: int = 100_000_000,
    max_member_bytes: int = 256 * 2**20,
) -> dict[int, Prepared | str]:
    """Read images by byte range and prepare them, without streaming their archives.

    For members of uncompressed tars, whose offsets extraction recorded (``member_offset``):
    one ``cat_ranges`` call per archive (concurrent ranged GETs on S3, ``pread`` locally).

    Parameters
    ----------
    items : iterable of (global index, archive URL, offset, size)
    storage_options : dict, optional
        fsspec options.
    max_image_pixels, max_member_bytes : int
        Limits, as in extraction.

    Returns
    -------
    dict
        Global index -> :class:`Prepared`, or the reason it could not be read.
    """
    from .remote import call, filesystem

    tune_allocator()
    so = dict(storage_options or {})
    out: dict[int, Prepared | str] = {}
    by_url: dict[str, list[tuple[int, str, int, int]]] = {}
    for it in items:
        if it[3] > max_member_bytes:
            out[int(it[0])] = f"member of {it[3]} bytes exceeds max_member_bytes={max_member_bytes}"
        else:
            by_url.setdefault(it[1], []).append(it)
    for url, group in by_url.items():
        try:
            fs, path = filesystem(url, so)
            datas = call(
                fs.cat_ranges,
                [path] * len(group),
                [int(g[2]) for g in group],
                [int(g[2]) + int(g[3]) for g in group],
                on_error="return",
                url=url,
            )
        except Exception as e:  # noqa: BLE001 - every image of the archive gets the reason
            for g in group:
                out[int(g[0])] = f"archive not read: {type(e).__name__}: {e}"
            continue
        for (idx, _, _, size), data in zip(group, datas, strict=True):
            if isinstance(data, BaseException) or len(data) != size:
                why = data if isinstance(data, BaseException) else f"{len(data)} of {size} bytes"
                out[int(idx)] = f"member not read: {why}"
            else:
                out[int(idx)] = prepare_image(bytes(data), max_image_pixels=max_image_pixels)
    return out


def score_ranged(
    pairs: np.ndarray,
    items: tuple[tuple[int, str, int, int], ...],
    storage_options: dict[str, Any],
    max_image_pixels: int,
    max_member_bytes: int,
    early_accept: float | None,
    keypoints: bool = False,
) -> tuple[pd.DataFrame, float, float, int]:
    """Read this chunk's images by byte range and score its pairs (one Dask task)."""
    t0 = time.perf_counter()
    loaded = load_ranged_images(items, storage_options, max_image_pixels, max_member_bytes)
    read_s = time.perf_counter() - t0
    df, score_s = score_pairs(pairs, loaded, early_accept=early_accept, keypoints=keypoints)
    return df, read_s, score_s, len(items)


def _timed_load(*args: Any) -> tuple[dict[int, Prepared | str], float]:
    t0 = time.perf_counter()
    out = load_archive_images(*args)
    return out, time.perf_counter() - t0


def _first(x: tuple[Any, float]) -> Any:
    return x[0]


def _load_cost(x: tuple[dict[int, Any], float]) -> tuple[int, float]:
    return len(x[0]), x[1]


def empty_cost(n_pairs: int, keypoints: bool) -> dict[str, Any]:
    """The cost report of verifying ``n_pairs`` candidate pairs, before any work (its keys in order).

    Examples
    --------
    >>> list(empty_cost(3, False))[:3]
    ['matcher', 'candidates', 'images_read']
    """
    return {
        "matcher": MATCHER if keypoints else PIXEL_MATCHER,
        "candidates": int(n_pairs),
        "images_read": 0,
        "archives_read": 0,
        "tasks": 0,
        "read_seconds": 0.0,
        "score_seconds": 0.0,
        "seconds_per_pair": 0.0,
        "errors": 0,
        "ranged_pairs": 0,
        "ran_on": None,
        "workers": 0,
    }


def finish_cost(cost: dict[str, Any], accepted: int, rejected: int) -> dict[str, Any]:
    """run.json's ``verification`` block from a verification's cost (``{}`` when nothing was
    verified: no candidates, no tasks anywhere) and the pairs it accepted and rejected.

    Examples
    --------
    >>> finish_cost({}, 0, 0)
    {'candidates': 0, 'ran_on': None, 'workers': 0, 'accepted': 0, 'rejected': 0, 'seconds_per_pair': 0.0}
    """
    out = dict(cost)
    for key, value in (("candidates", 0), ("ran_on", None), ("workers", 0)):
        out.setdefault(key, value)
    out.update(accepted=accepted, rejected=rejected)
    out["seconds_per_pair"] = round(float(out.get("seconds_per_pair", 0.0)), 6)
    return out


def placement(scheduler: Any = None) -> dict[str, Any]:
    """Where ``dask.compute(..., scheduler=scheduler)`` runs: the ``ran_on`` and ``workers``
    entries of the verification cost (``results/run.json``).

    ``ran_on`` is ``"workers"`` (the processes of a distributed client: the given cluster or
    the call's LocalCluster; ``workers`` counts them) or ``"this process"`` (a local
    scheduler: threads, sync or dask's local processes; ``workers`` 0).

    Examples
    --------
    >>> placement("threads")
    {'ran_on': 'this process', 'workers': 0}
    """
    from .scheduler import dask_client

    client = dask_client(scheduler)
    if client is not None:
        return {"ran_on": "workers", "workers": len(client.nthreads())}
    return {"ran_on": "this process", "workers": 0}


def verify_pairs(
    pairs: pd.DataFrame,
    images: pd.DataFrame,
    *,
    storage_options: dict[str, Any] | None = None,
    max_image_pixels: int = 100_000_000,
    max_member_bytes: int = 256 * 2**20,
    early_accept: float | None = None,
    keypoints: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score candidate pairs on the current Dask scheduler.

    Parameters
    ----------
    pairs : DataFrame
        ``from, to``: global indices.
    images : DataFrame
        Indexed by global index: ``archive`` (URL), ``member``, ``occ`` (occurrence of the
        member name in its archive), optionally ``member_offset`` and
        ``file_size``; at least every index in ``pairs``. Pairs whose two images have a
        ``member_offset`` (uncompressed tars) are scored in chunks of :data:`PAIRS_PER_TASK`
        that read just their images by byte range; the others by archive, each archive
        streamed once (gzip tars, zips, folders, work_dirs extracted before offsets were
        recorded).
    storage_options : dict, optional
        fsspec options for the archives.
    max_image_pixels, max_member_bytes : int
        Limits, as in extraction.
    early_accept : float, optional
        Passed to :func:`match_score`.
    keypoints : bool
        Also ask the keypoint matcher (:mod:`dedupdask.match_keypoints`) about pairs the pixel
        alignment does not accept (``verify_keypoints``).

    Returns
    -------
    (DataFrame, dict)
        One row per pair (:data:`VERIFY_COLUMNS`, input order) and the cost: ``matcher``
        (:data:`dedupdask.match.MATCHER`), ``candidates``,
        ``images_read``, ``archives_read``, ``tasks``, ``read_seconds`` and
        ``score_seconds`` (summed over tasks), ``seconds_per_pair``, ``errors``,
        ``ranged_pairs`` (pairs read by byte range), ``ran_on`` and ``workers``
        (:func:`placement`: where the tasks ran; None and 0 when there were no pairs).

    Examples
    --------
    >>> out, cost = verify_pairs(pd.DataFrame({"from": [0], "to": [7]}), info)  # doctest: +SKIP
    >>> cost["seconds_per_pair"]  # doctest: +SKIP
    0.011
    """
    p = pairs.loc[:, ["from", "to"]].to_numpy(dtype=np.int64).reshape(-1, 2)
    cost = empty_cost(len(p), keypoints)
    empty = pd.DataFrame(
        {
            "from": pd.Series(dtype="int64"),
            "to": pd.Series(dtype="int64"),
            "verify_score": pd.Series(dtype="float64"),
            "verify_error": pd.Series(dtype="string"),
            **{c: pd.Series(dtype=d) for c, d in RECORD_COLUMNS.items()},
        }
    )
    if not len(p):
        return empty, cost
    so = dict(storage_options or {})
    ranged = _ranged_mask(images, p)
    out_parts: list[pd.DataFrame] = []
    tasks_r: list[Any] = []
    chunks_r: list[np.ndarray] = []
    if ranged.any():
        tasks_r, chunks_r = _ranged_tasks(
            p, np.flatnonzero(ranged), images, so, max_image_pixels, max_member_bytes, early_accept, keypoints
        )
    streamed = np.flatnonzero(~ranged)
    loads, tasks_s, chunks_s, urls = _streamed_tasks(
        p, streamed, images, so, max_image_pixels, max_member_bytes, early_accept, keypoints
    )
    with _scheduler_for(len(p)) as scheduler:
        cost.update(placement(scheduler))
        load_out, score_s, score_r = dask.compute(
            [dask.delayed(_load_cost, pure=True)(x) for x in loads],
            tasks_s,
            tasks_r,
            scheduler=scheduler,
        )
    archives_read = set(urls)
    for g, (df, secs) in zip(chunks_s, score_s, strict=True):
        df.index = g
        out_parts.append(df)
        cost["score_seconds"] += secs
    for g, (df, read_s, secs, n_img) in zip(chunks_r, score_r, strict=True):
        df.index = g
        out_parts.append(df)
        cost["score_seconds"] += secs
        cost["read_seconds"] += read_s
        cost["images_read"] += n_img
    if chunks_r:
        archives_read |= set(images.loc[np.unique(p[ranged]), "archive"].astype(str))
    out = pd.concat(out_parts).sort_index().reset_index(drop=True)
    cost["read_seconds"] = float(cost["read_seconds"] + sum(s for _, s in load_out))
    cost["score_seconds"] = float(cost["score_seconds"])
    cost["images_read"] = int(cost["images_read"] + sum(n for n, _ in load_out))
    cost["archives_read"] = len(archives_read)
    cost["ranged_pairs"] = int(ranged.sum())
    cost["tasks"] = len(loads) + len(tasks_s) + len(tasks_r)
    cost["errors"] = int(out["verify_error"].notna().sum())
    cost["seconds_per_pair"] = (cost["read_seconds"] + cost["score_seconds"]) / len(p)
    return out.astype(empty.dtypes.to_dict()), cost


def local_order(p: np.ndarray) -> np.ndarray:
    """An order of the pairs in which consecutive pairs share images (for splitting into tasks).

    Every task builds its own view of each image it holds (:class:`~dedupdask.match.View`:
    about 1.7 ms of one core: grey images, FFT plans, template stacks), so an image whose pairs
    fall in several tasks is prepared several times. The images are numbered in reverse
    Cuthill-McKee order of the candidate graph (a breadth-first order that keeps linked images
    close: :func:`scipy.sparse.csgraph.reverse_cuthill_mckee`) and the pairs sorted by their
    two numbers, so a contiguous chunk of pairs holds a compact set of images. On the 8,033
    candidates of ``benchmarks/vs_fastdup.py``'s default shards, split in two, 504 of 2,105
    images are in both tasks, against 1,309 in an order by image index.

    Parameters
    ----------
    p : ndarray
        int ``[n, 2]`` pairs of image indices.

    Returns
    -------
    ndarray
        A permutation of ``range(n)``.

    Examples
    --------
    >>> p = np.array([[0, 10], [1, 11], [10, 20], [11, 21], [20, 30]])  # two chains
    >>> p[local_order(p)].tolist()  # one chain after the other
    [[11, 21], [1, 11], [20, 30], [10, 20], [0, 10]]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    p = np.asarray(p, dtype=np.int64).reshape(-1, 2)
    if not len(p):
        return np.zeros(0, dtype=np.int64)
    ids, inv = np.unique(p, return_inverse=True)
    q = inv.reshape(-1, 2)
    n = len(ids)
    graph = coo_matrix((np.ones(len(q), np.int8), (q[:, 0], q[:, 1])), shape=(n, n)).tocsr()
    rank = np.empty(n, dtype=np.int64)
    rank[reverse_cuthill_mckee(graph, symmetric_mode=False)] = np.arange(n)
    r = rank[q]
    return np.lexsort((r.max(axis=1), r.min(axis=1))).astype(np.int64)


def _ranged_mask(images: pd.DataFrame, p: np.ndarray) -> np.ndarray:
    """Pairs whose two images can be read by byte range."""
    if "member_offset" not in images.columns or "file_size" not in images.columns:
        return np.zeros(len(p), dtype=bool)
    if images["archive"].loc[np.unique(p)].nunique() <= STREAM_MAX_ARCHIVES:
        return np.zeros(len(p), dtype=bool)
    ok = images["member_offset"].notna() & images["file_size"].notna()
    return ok.loc[p[:, 0]].to_numpy(dtype=bool) & ok.loc[p[:, 1]].to_numpy(dtype=bool)


def _archive_pair_order(
    images: pd.DataFrame, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per pair: a key of its (unordered) pair of archives, each end's archive number, and
    the sorted archive URLs those numbers index."""
    archive_of = images["archive"].astype(str)
    urls = sorted(set(archive_of.loc[np.unique(p)]))
    aid = {u: i for i, u in enumerate(urls)}
    ga = archive_of.loc[p[:, 0]].map(aid).to_numpy()
    gb = archive_of.loc[p[:, 1]].map(aid).to_numpy()
    key = np.minimum(ga, gb) * max(1, len(urls)) + np.maximum(ga, gb)
    return key, ga, gb, urls


def _ranged_tasks(
    p: np.ndarray,
    rows: np.ndarray,
    images: pd.DataFrame,
    so: dict[str, Any],
    max_image_pixels: int,
    max_member_bytes: int,
    early_accept: float | None,
    keypoints: bool = False,
) -> tuple[list[Any], list[np.ndarray]]:
    """Chunks of at most PAIRS_PER_TASK pairs (archive pairs kept together) read by range."""
    key, _, _, _ = _archive_pair_order(images, p[rows])
    order = rows[np.argsort(key, kind="stable")]
    tasks, chunks = [], []
    for g in np.array_split(order, -(-len(order) // PAIRS_PER_TASK)):
        need = np.unique(p[g])
        sub = images.loc[need]
        items = tuple(
            (int(i), str(u), int(o), int(sz))
            for i, u, o, sz in zip(
                sub.index, sub["archive"], sub["member_offset"], sub["file_size"], strict=True
            )
        )
        tasks.append(
            dask.delayed(score_ranged, pure=True)(
                p[g], items, so, max_image_pixels, max_member_bytes, early_accept, keypoints
            )
        )
        chunks.append(g)
    return tasks, chunks


def _streamed_tasks(
    p: np.ndarray,
    rows: np.ndarray,
    images: pd.DataFrame,
    so: dict[str, Any],
    max_image_pixels: int,
    max_member_bytes: int,
    early_accept: float | None,
    keypoints: bool = False,
) -> tuple[list[Any], list[Any], list[np.ndarray], list[str]]:
    """One load task per archive (streamed once) and score tasks per pair of archives."""
    if not len(rows):
        return [], [], [], []
    sub_p = p[rows]
    need = np.unique(sub_p)
    info = images.loc[need, ["archive", "member", "occ"]]
    archive_of = info["archive"].astype(str)
    key, ga, gb, urls = _archive_pair_order(images, sub_p)
    loads = []
    for u in urls:
        sub = info[archive_of == u]
        wanted = tuple(
            (str(m), int(o), int(i))
            for i, m, o in zip(sub.index, sub["member"], sub["occ"], strict=True)
        )
        loads.append(
            dask.delayed(_timed_load, pure=True)(u, wanted, so, max_image_pixels, max_member_bytes, keypoints)
        )
    if len(need) <= FEW_IMAGES:  # one task per worker, each holding every image
        from .knn_partitioned import _n_workers

        n_chunks = max(1, min(-(-len(sub_p) // 200), _n_workers()))
        order = local_order(sub_p)
        deps = [dask.delayed(_first, pure=True)(x) for x in loads]
        groups = np.array_split(order, n_chunks)
        tasks = [
            dask.delayed(score_pairs, pure=True)(sub_p[g], *deps, early_accept=early_accept, keypoints=keypoints)
            for g in groups
        ]
        return loads, tasks, [rows[g] for g in groups], urls
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    groups = [
        part
        for g in np.split(order, bounds)
        for part in np.array_split(g, -(-len(g) // PAIRS_PER_TASK))
    ]
    tasks = []
    for g in groups:
        a, b = int(ga[g[0]]), int(gb[g[0]])
        deps = [dask.delayed(_first, pure=True)(loads[a])]
        if b != a:
            deps.append(dask.delayed(_first, pure=True)(loads[b]))
        tasks.append(
            dask.delayed(score_pairs, pure=True)(sub_p[g], *deps, early_accept=early_accept, keypoints=keypoints)
        )
    return loads, tasks, [rows[g] for g in groups], urls
