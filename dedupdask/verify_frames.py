"""Verification stage on the workers: the candidate pairs of a Dask DataFrame, scored where they lie.

The planner for pairs that are a Dask DataFrame (the duplicate tiers on the workers,
:mod:`dedupdask.analyses.tiers_dask`); :func:`dedupdask.verify.verify_pairs` is the one for
pairs in this process. Neither the pairs nor the images' table come to the client:

1. each partition of pairs asks the archive partition of the files frame that holds each of
   its images (consecutive archives per partition: ``col.files()``) for the image's ``archive``,
   ``member``, ``occ``, ``member_offset`` and ``file_size`` (:func:`image_info`, the rows
   verification reads images by), and gets the answers back (two shuffles of one row per
   distinct image and partition);
2. the pairs are shuffled on their pair of archives into partitions of about
   :data:`~dedupdask.verify.PAIRS_PER_TASK` pairs (a pair of archives with more pairs than
   that is spread over ``ceil(pairs / PAIRS_PER_TASK)`` partitions: only those keys and their
   counts come to the client);
3. each partition is scored in chunks of at most ``PAIRS_PER_TASK`` pairs by the tasks of
   :mod:`dedupdask.verify` -- the images of uncompressed tars by byte range
   (:func:`~dedupdask.verify.score_ranged`), past ``STREAM_MAX_ARCHIVES`` archives as there;
   the others by streaming each archive a chunk needs once
   (:func:`~dedupdask.verify.load_archive_images`, :func:`~dedupdask.verify.score_pairs`).
   The pair's score is :func:`dedupdask.match.match_score`'s, whoever plans.

Memory per task is bounded by the chunk (at most ``2 * PAIRS_PER_TASK`` prepared images); the
client holds one cost record per partition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import verify
from .analyses.expand_dask import owner
from .analyses.routing import route, shuffle_method
from .match_record import RECORD_COLUMNS

__all__ = ["IMAGE_COLUMNS", "image_info", "verify_frame"]

IMAGE_COLUMNS = ("archive", "member", "occ", "member_offset", "file_size")
"""What verification reads an image by (see :func:`image_info`)."""

_I64 = np.int64
_SIDES = ("a", "b")
_COST_KEYS = ("images_read", "read_seconds", "score_seconds", "tasks", "errors", "ranged_pairs")


def image_info(files: pd.DataFrame, columns: Sequence[str] = IMAGE_COLUMNS) -> pd.DataFrame:
    """``columns`` (default ``archive, member, occ, member_offset, file_size``) of every valid
    image, indexed by global index (``occ``: occurrence of the member name in its archive, which
    reads the image back; ``member_offset`` null where a member cannot be read by range).

    ``files`` holds whole archives (all of them, one partition of ``col.files()``, or one
    archive's Parquet rows); other columns of ``files`` may be asked for.

    Examples
    --------
    >>> f = pd.DataFrame({"index": [0, None, 1], "archive": ["a.tar"] * 3, "member": ["x", "x", "y"],
    ...                   "member_offset": [512, 1536, None], "file_size": [10, 10, 10]})
    >>> image_info(f)["occ"].tolist()
    [0, 0]
    """
    f = files.reset_index(drop=True)
    occ = f.groupby(["archive", "member"], sort=False, dropna=False).cumcount()
    f = f.assign(occ=occ)
    f = f[f["index"].notna()]
    out = f.reindex(columns=list(columns))
    out.index = f["index"].astype("int64").to_numpy()
    return out


def _info_meta(files_meta: pd.DataFrame) -> pd.DataFrame:
    cols = {"index": pd.Series(dtype=_I64), "_reply": pd.Series(dtype=_I64)}
    for c in IMAGE_COLUMNS:
        cols[c] = pd.Series(dtype=_I64) if c == "occ" else files_meta[c].iloc[:0].reset_index(drop=True)
    return pd.DataFrame(cols)


def _with_info_meta(pairs_meta: pd.DataFrame, files_meta: pd.DataFrame) -> pd.DataFrame:
    out = pairs_meta.iloc[:0].copy()
    info = _info_meta(files_meta)
    for side in _SIDES:
        for c in IMAGE_COLUMNS:
            out[f"{side}_{c}"] = info[c]
    return out


def _asks(pairs: pd.DataFrame, bounds: np.ndarray, partition_info: dict | None = None) -> pd.DataFrame:
    """One request per distinct image of this partition of pairs, to its archive's partition."""
    ids = np.unique(np.concatenate([pairs["from"].to_numpy(_I64), pairs["to"].to_numpy(_I64)]))
    me = _I64(partition_info["number"] if partition_info else 0)
    return pd.DataFrame({"index": ids, "_reply": np.full(ids.size, me, _I64), "_part": owner(bounds, ids)})


def _answers(files: pd.DataFrame, asks: pd.DataFrame) -> pd.DataFrame:
    """The archive partition's reply: the asked images' rows of :func:`image_info`."""
    info = image_info(files)
    want = asks["index"].to_numpy(_I64)
    missing = ~np.isin(want, info.index.to_numpy(_I64))
    if missing.any():
        raise ValueError(f"image {int(want[missing][0])} of a pair to verify is not in the files table")
    got = info.loc[want].reset_index(drop=True)
    got.insert(0, "index", want)
    got["_reply"] = asks["_reply"].to_numpy(_I64)
    got["occ"] = got["occ"].astype(_I64)
    return got.loc[:, ["index", "_reply", *IMAGE_COLUMNS]]  # the meta's order (p2p shuffles by schema)


def _attach(pairs: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """Both images' rows next to each pair."""
    info = info.reset_index(drop=True).drop(columns="_reply", errors="ignore").drop_duplicates("index").set_index("index")
    out = pairs.reset_index(drop=True)
    for side, col in zip(_SIDES, ("from", "to"), strict=True):
        got = info.loc[out[col].to_numpy(_I64)].reset_index(drop=True)
        for c in IMAGE_COLUMNS:
            out[f"{side}_{c}"] = got[c].to_numpy() if c == "occ" else got[c].array
    return out


def _plan(pairs: pd.DataFrame, ranged_ok: bool) -> pd.DataFrame:
    """Each pair's pair of archives (the shuffle key) and whether it is read by byte range."""
    a, b = pairs["a_archive"].astype(str), pairs["b_archive"].astype(str)
    key = np.where(a <= b, a + "\n" + b, b + "\n" + a)
    ranged = np.zeros(len(pairs), bool)
    if ranged_ok:
        ranged = np.ones(len(pairs), bool)
        for side in _SIDES:
            ranged &= pairs[f"{side}_member_offset"].notna().to_numpy(bool)
            ranged &= pairs[f"{side}_file_size"].notna().to_numpy(bool)
    return pairs.assign(_key=pd.array(key, dtype="string"), _ranged=ranged)


def _spread(pairs: pd.DataFrame, spread: dict[str, int]) -> pd.DataFrame:
    """The shuffle key: the pair of archives, and for a pair of archives with many pairs one
    of ``spread[key]`` buckets (by pair), so that no partition gets all of them."""
    key = pairs["_key"].astype(str).to_numpy()
    bucket = np.zeros(len(pairs), _I64)
    if spread and len(pairs):
        n = pd.Series(key).map(spread).fillna(1).to_numpy(_I64)
        mix = pd.util.hash_array(pairs["from"].to_numpy(_I64)) ^ pd.util.hash_array(pairs["to"].to_numpy(_I64))
        bucket = (mix % n.astype(np.uint64)).astype(_I64)
    shard = pd.Series(key, dtype=object) + "\t" + pd.Series(bucket).astype(str)
    return pairs.assign(_shard=pd.array(shard.to_numpy(), dtype="string"))


def _ends(pairs: pd.DataFrame, cols: tuple[str, ...]) -> pd.DataFrame:
    """The distinct images of some pairs with the columns ``cols`` of :data:`IMAGE_COLUMNS`."""
    parts = [
        pd.DataFrame({"index": pairs[end].to_numpy(_I64), **{c: pairs[f"{side}_{c}"].to_numpy() for c in cols}})
        for side, end in zip(_SIDES, ("from", "to"), strict=True)
    ]
    return pd.concat(parts, ignore_index=True).drop_duplicates("index").sort_values("index", kind="stable")


def verify_partition(
    pairs: pd.DataFrame,
    storage_options: dict[str, Any],
    max_image_pixels: int,
    max_member_bytes: int,
    early_accept: float | None,
    keypoints: bool,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score one partition of planned pairs, in chunks of ``PAIRS_PER_TASK`` (one Dask task).

    Returns
    -------
    (DataFrame, dict)
        ``from, to, _part``, ``verify_score, verify_error`` and the match record
        (:data:`~dedupdask.match_record.RECORD_COLUMNS`) per pair; the partition's cost
        (``images_read``, ``read_seconds``, ``score_seconds``, ``tasks`` = chunks, ``errors``,
        ``ranged_pairs``).
    """
    cost: dict[str, Any] = dict.fromkeys(_COST_KEYS, 0)
    cost["read_seconds"] = cost["score_seconds"] = 0.0
    pairs = pairs.sort_values(["_key", "from", "to"], kind="stable").reset_index(drop=True)
    out = [_empty_result()]
    n = len(pairs)
    for g in np.array_split(np.arange(n), math.ceil(n / verify.PAIRS_PER_TASK)) if n else []:
        chunk = pairs.iloc[g]
        ranged = chunk["_ranged"].to_numpy(bool)
        for sub, by_range in ((chunk[ranged], True), (chunk[~ranged], False)):
            if not len(sub):
                continue
            p = sub[["from", "to"]].to_numpy(_I64)
            if by_range:
                ends = _ends(sub, ("archive", "member_offset", "file_size"))
                items = tuple(
                    (int(i), str(u), int(o), int(s))
                    for i, u, o, s in zip(ends["index"], ends["archive"], ends["member_offset"], ends["file_size"], strict=True)
                )
                df, read_s, score_s, n_img = verify.score_ranged(
                    p, items, storage_options, max_image_pixels, max_member_bytes, early_accept, keypoints
                )
                cost["ranged_pairs"] += len(sub)
            else:
                ends = _ends(sub, ("archive", "member", "occ"))
                t0 = time.perf_counter()
                loaded = [
                    verify.load_archive_images(
                        str(url),
                        tuple((str(m), int(o), int(i)) for i, m, o in zip(grp["index"], grp["member"], grp["occ"], strict=True)),
                        storage_options, max_image_pixels, max_member_bytes,
                    )  # fmt: skip
                    for url, grp in ends.groupby("archive", sort=True)
                ]
                read_s = time.perf_counter() - t0
                n_img = sum(len(x) for x in loaded)
                df, score_s = verify.score_pairs(p, *loaded, early_accept=early_accept, keypoints=keypoints)
            cost["images_read"] += n_img
            cost["read_seconds"] += read_s
            cost["score_seconds"] += score_s
            out.append(df.assign(_part=sub["_part"].to_numpy(_I64)))
        cost["tasks"] += 1
    res = pd.concat(out, ignore_index=True).astype(_empty_result().dtypes.to_dict())
    cost["errors"] = int(res["verify_error"].notna().sum())
    return res.loc[:, list(_RESULT_COLUMNS)], cost


_RESULT_COLUMNS = ("from", "to", "_part", "verify_score", "verify_error", *RECORD_COLUMNS)


def _empty_result() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "from": pd.Series(dtype=_I64),
            "to": pd.Series(dtype=_I64),
            "_part": pd.Series(dtype=_I64),
            "verify_score": pd.Series(dtype="float64"),
            "verify_error": pd.Series(dtype="string"),
            **{c: pd.Series(dtype=d) for c, d in RECORD_COLUMNS.items()},
        }
    )


def _first(x: tuple[pd.DataFrame, dict]) -> pd.DataFrame:
    return x[0]


def _second(x: tuple[pd.DataFrame, dict]) -> dict:
    return x[1]


def verify_frame(
    pairs: Any,
    files: Any,
    bounds: np.ndarray,
    n_pairs: int,
    *,
    storage_options: dict[str, Any] | None = None,
    max_image_pixels: int = 100_000_000,
    max_member_bytes: int = 256 * 2**20,
    early_accept: float | None = None,
    keypoints: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Score the pairs of a Dask DataFrame on the current scheduler (see the module docstring).

    Parameters
    ----------
    pairs : dask.dataframe.DataFrame
        ``from, to`` (global indices) and an int64 ``_part`` that comes back with each result.
    files : dask.dataframe.DataFrame
        One partition per archive (``col.files()``): ``index, archive, member`` and, when
        known, ``member_offset, file_size``.
    bounds : ndarray
        First global index of each partition of ``files`` (see
        :func:`dedupdask.analyses.expand_dask.owner`).
    n_pairs : int
        Number of rows of ``pairs`` (sizes the partitions).
    storage_options, max_image_pixels, max_member_bytes, early_accept, keypoints
        As :func:`dedupdask.verify.verify_pairs`.

    Returns
    -------
    (dask.dataframe.DataFrame, dict)
        ``from, to, _part, verify_score, verify_error`` (persisted), and the cost with the
        keys of :func:`dedupdask.verify.verify_pairs`.
    """
    import dask
    import dask.dataframe as dd

    so = dict(storage_options or {})
    cost = verify.empty_cost(n_pairs, keypoints)  # the keys of verify_pairs, in its order
    if not n_pairs:
        return dd.from_pandas(_empty_result(), npartitions=1), cost
    pairs = pairs[["from", "to", "_part"]]
    asks = pairs.map_partitions(
        _asks, bounds, meta=pd.DataFrame({"index": _I64(0), "_reply": _I64(0), "_part": _I64(0)}, index=[])
    )
    info = files.map_partitions(
        _answers, route(asks, "_part", tuple(range(files.npartitions + 1))),
        meta=_info_meta(files._meta), align_dataframes=False, enforce_metadata=False,
    )  # fmt: skip
    back = route(info, "_reply", tuple(range(pairs.npartitions + 1)))
    (known,) = dask.persist(
        pairs.map_partitions(
            _attach, back, meta=_with_info_meta(pairs._meta, files._meta), align_dataframes=False,
            enforce_metadata=False,
        )  # fmt: skip
    )
    n_archives = int(dd.concat([known["a_archive"], known["b_archive"]]).astype(str).nunique().compute())
    planned = known.map_partitions(_plan, n_archives > verify.STREAM_MAX_ARCHIVES)
    # a pair of archives with more than PAIRS_PER_TASK pairs is spread over several partitions
    sizes = planned["_key"].value_counts()
    (hot,) = dask.compute(sizes[sizes > verify.PAIRS_PER_TASK])  # at most n_pairs / PAIRS_PER_TASK keys
    spread = {str(key): math.ceil(int(c) / verify.PAIRS_PER_TASK) for key, c in hot.items()}
    planned = planned.map_partitions(_spread, spread)
    planned = planned.shuffle(
        on="_shard", npartitions=max(1, math.ceil(n_pairs / verify.PAIRS_PER_TASK)), shuffle_method=shuffle_method()
    )
    tasks = [
        dask.delayed(verify_partition, pure=True)(
            part, so, max_image_pixels, max_member_bytes, early_accept, keypoints
        )
        for part in planned.to_delayed()
    ]
    cost.update(verify.placement())  # the current scheduler: the workers on the distributed path
    tasks = list(dask.persist(*tasks))
    costs = dask.compute(*[dask.delayed(_second, pure=True)(t) for t in tasks])
    results = dd.from_delayed(
        [dask.delayed(_first, pure=True)(t) for t in tasks], meta=_empty_result(), verify_meta=False
    )
    for c in costs:
        for key in _COST_KEYS:
            cost[key] += c[key]
    cost["read_seconds"] = float(cost["read_seconds"])
    cost["score_seconds"] = float(cost["score_seconds"])
    cost["archives_read"] = n_archives
    cost["seconds_per_pair"] = (cost["read_seconds"] + cost["score_seconds"]) / n_pairs
    return results, cost
