"""Reference stage: a query work_dir against a reference work_dir (train/test leakage).

"Which of my evaluation images (or this new crawl) already appear in my training shards?"
Only cross-set pairs matter, and the reference is large; it is only read (it may be on S3 and
shared). The stages, all on the current scheduler, none holding a per-image array here:

1. **open** the reference: its finished run (``results/run.json``), its index
   (:mod:`dedupdask.index`), and checks -- same model, same decode version, an index of this
   version built for the archives of that run -- each refused with a one-line error;
2. **probe** (a task per query archive): each query vector's ``nprobe`` most similar
   centroids; a shuffle brings the query rows of the touched buckets together;
3. **search** (a task per group of touched buckets): each bucket read with one ranged read,
   exact cosine of its query rows against its vectors, the best ``k`` per query row; a shuffle
   on the query row, and the best ``k`` over its buckets (:func:`_best`);
4. **attach** (a task per group of touched archives, query side then reference side): each
   candidate pair at or above the tiers' candidate cut gets both images' names, hashes, byte
   ranges and DCT descriptors' cosine, reading only the archives the pairs touch;
5. **decide** with the tiers of a normal run (:func:`dedupdask.analyses.tiers.decide`): ``exact``
   (equal bytes or pixels), ``copy`` (DCT cosine), ``near`` (embedding cosine), the uncertain
   ones verified by pixel alignment (:mod:`dedupdask.verify`), each side's images read with its
   own storage options;
6. **write** in the query work_dir: ``results/cross_similarity/`` (both sides' ``archive``,
   ``member``, ``key``, ``filename``), ``results/contamination/`` (one row per query archive),
   and fastdup's ``similarity.csv`` of a ``test_dir`` run (``from`` = query index, ``to`` =
   reference index, ``distance`` = cosine), ``atrain_features.dat.csv`` (the query's index),
   ``contamination.csv``; ``results/reference.json`` last.

The DCT graph of a normal run is not searched across the sets: a cross pair is a candidate
when its embedding cosine reaches the candidate cut (``verify_threshold``, 0.65 for the default
model), and its DCT cosine is then read. Query-internal duplicates (``query_duplicates=True``)
come from a normal analysis of the query work_dir, written as ``query_similarity.csv`` and
``results/query_similarity/``.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import numpy as np
import pandas as pd

from . import verify
from .analyses.expand_dask import owner
from .analyses.routing import route, shuffle_method
from .analyses.tiers import KINDS, TierParams, candidate_cut, decide, resolve_params
from .collect import Collection, collect, read_archive_files
from .fusion import DCT_DIM, has_dct
from .index import ReferenceIndex, open_index
from .knn import top_k
from .knn_budget import _SIM_BLOCK_BYTES, _n_workers
from .knn_rows import VectorBlock, VectorSource, _chunk_rows, _compute, _unit, read_file_rows
from .store import WorkDir, WorkDirError
from .tables import RESULTS_DIR, write_partitions, write_table

__all__ = ["CROSS_COLUMNS", "CONTAMINATION_COLUMNS", "ReferenceResult", "load_reference", "open_reference", "query"]

CROSS_COLUMNS = (
    "from", "to", "similarity", "copy_similarity", "kind", "verified", "verify_score",
    "filename_from", "archive_from", "member_from", "key_from",
    "filename_to", "archive_to", "member_to", "key_to",
)  # fmt: skip
"""Columns of ``results/cross_similarity``: ``from`` = query index, ``to`` = reference index."""

CONTAMINATION_COLUMNS = (
    "archive", "name", "images", "contaminated", "share", "exact", "copy", "near", "pairs",
)  # fmt: skip
"""Columns of ``results/contamination``: per query archive, its valid images, those with at
least one cross pair (``share`` of the images), by their strongest kind, and the pairs."""

REFERENCE_JSON = "reference.json"
ARCHIVES_PER_TASK = 16
"""Archives whose Parquet files one attach task reads."""
QUERY_ROWS_PER_TASK = 200_000
"""Query rows x probed buckets one search task handles (about)."""

_I64 = np.int64
_SIDE = {"from": "_from", "to": "_to"}
_INFO = ("filename", "archive", "member", "key", "md5", "pixel_md5", "input_md5", "member_offset", "file_size")


# -- 1. open ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """A reference work_dir ready to be queried (small: archives' records and the index's)."""

    col: Collection
    index: ReferenceIndex
    run: dict = field(repr=False)
    dct: bool = False


def _same_model(query: dict[str, Any], ref: dict[str, Any]) -> bool:
    keys = ("model_id", "model_sha256")
    return all(query.get(k) == ref.get(k) for k in keys)


def open_reference(url: str, storage_options: dict[str, Any] | None, query_col: Collection) -> Reference:
    """The reference work_dir at ``url``, checked against the query, or a one-line error.

    Raises
    ------
    WorkDirError
        No finished analysis, no index, an index of another version or of other archives.
    ValueError
        The query's model or decode version is not the reference's.
    """
    from .results import RUN_JSON, _recorded_archives

    wd = WorkDir(url, storage_options)
    try:
        run = wd.read_json(wd.join(RESULTS_DIR, RUN_JSON))
    except FileNotFoundError:
        raise WorkDirError(
            wd.url, f"is not a finished reference: no {RESULTS_DIR}/{RUN_JSON} (build it first: "
            f"`dedupdask build {wd.url}`, run_mode=2)"
        ) from None  # fmt: skip
    archives = _recorded_archives(wd.url, run)
    model = run.get("model") or {}
    if not _same_model(query_col.model, model):
        raise ValueError(
            f"the query work_dir {query_col.work_dir.url} was extracted with model "
            f"{query_col.model.get('model_id')!r} ({str(query_col.model.get('model_sha256'))[:12]}), the reference "
            f"{wd.url} with {model.get('model_id')!r} ({str(model.get('model_sha256'))[:12]}): extract the query "
            f"with the reference's model_path"
        )
    decode = int(run.get("decode_version", 1))
    if decode != query_col.decode_version:
        raise ValueError(
            f"the query work_dir {query_col.work_dir.url} was decoded by decode version "
            f"{query_col.decode_version}, the reference {wd.url} by {decode}: re-extract the older one "
            f"(resume=False) so that their hashes compare"
        )
    index = open_index(wd, archives=archives)
    col = Collection(wd, tuple(archives), int(index.d), model, decode_version=decode)
    if col.d != query_col.d:
        raise ValueError(f"the query's vectors are {query_col.d} wide, the reference {wd.url}'s {col.d}")
    return Reference(col, index, run, dct=has_dct(col))


# -- 2./3. probe and search ------------------------------------------------------------------------
def _probe(block: VectorBlock, first: int, centroids: np.ndarray, nprobe: int) -> pd.DataFrame:
    """One query archive's ``(bucket, q)`` rows: each vector's ``nprobe`` best centroids."""
    n = block.size
    width = min(nprobe, centroids.shape[0])
    out = np.empty((n, width), np.int64)
    step = _chunk_rows(block.width)
    for s in range(0, n, step):
        v = _unit(block.read(np.arange(s, min(n, s + step), dtype=_I64)))
        out[s : s + v.shape[0]] = top_k(v @ centroids.T, width)[0]
    q = np.repeat(np.arange(first, first + n, dtype=_I64), width)
    return pd.DataFrame({"bucket": out.ravel(), "q": q})


def _probe_meta() -> pd.DataFrame:
    return pd.DataFrame({"bucket": pd.Series([], dtype="int64"), "q": pd.Series([], dtype="int64")})


def _with_part(df: pd.DataFrame, part_of: np.ndarray) -> pd.DataFrame:
    return df.assign(_part=part_of[df["bucket"].to_numpy(_I64)])


def _graph_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {"from": pd.Series([], dtype="int64"), "to": pd.Series([], dtype="int64"),
         "similarity": pd.Series([], dtype="float32")}
    )  # fmt: skip


def top_few(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dedupdask.knn.top_k` for a few columns of wide rows: ``k`` passes of ``argmax``
    (the first maximum: ties go to the lowest column, as there), ~30x faster than its
    partition-and-sort on 2,000 x 50,000 at ``k`` 2-5. Overwrites the chosen entries of ``s``.

    Examples
    --------
    >>> s = np.array([[0.5, 0.9, 0.5, 0.5]], np.float32)
    >>> top_few(s.copy(), 3)[0].tolist() == top_k(s, 3)[0].tolist()
    True
    """
    rows = np.arange(s.shape[0])
    idx = np.empty((s.shape[0], k), _I64)
    val = np.empty((s.shape[0], k), np.float32)
    for j in range(k):
        idx[:, j] = np.argmax(s, axis=1)
        val[:, j] = s[rows, idx[:, j]]
        s[rows, idx[:, j]] = -np.inf
    return idx, val


def _search(part: pd.DataFrame, qsrc: VectorSource, index: ReferenceIndex, k: int) -> pd.DataFrame:
    """The best ``k`` reference rows of each query row in each of its touched buckets (a task)."""
    part = part.reset_index(drop=True)
    out = [_graph_meta()]
    for bucket, grp in part.groupby("bucket", sort=True):
        q = np.unique(grp["q"].to_numpy(_I64))
        ridx, rvec = index.read_bucket(int(bucket))
        if not ridx.size:
            continue
        kk = min(k, ridx.size)
        step = max(1, min(_chunk_rows(qsrc.d), _SIM_BLOCK_BYTES // (4 * ridx.size)))
        for s in range(0, q.size, step):
            qs = q[s : s + step]
            top, val = top_few(_unit(qsrc.read(qs)) @ rvec.T, kk)
            out.append(pd.DataFrame({"from": np.repeat(qs, kk), "to": ridx[top].ravel(),
                                     "similarity": np.clip(val, -1, 1).ravel().astype(np.float32)}))  # fmt: skip
    return pd.concat(out, ignore_index=True)


def _best(df: pd.DataFrame, k: int, cut: float) -> pd.DataFrame:
    """A query row's best ``k`` over its buckets, those at or above ``cut`` (pairs appear once)."""
    df = df.reset_index()
    df = df.sort_values(["from", "similarity", "to"], ascending=[True, False, True], kind="stable")
    df = df.drop_duplicates(["from", "to"])
    df = df[df.groupby("from", sort=False).cumcount().to_numpy() < k]
    df = df[df["similarity"].to_numpy(np.float32) >= np.float32(cut)]
    return df.reset_index(drop=True).loc[:, ["from", "to", "similarity"]]


def cross_candidates(qcol: Collection, ref: Reference, k: int, cut: float) -> tuple[Any, dict[str, Any]]:
    """Stages 2-3: each query row's best ``k`` reference rows at or above ``cut`` (a Dask frame
    on the workers) and what the search did."""
    import dask.dataframe as dd

    index = ref.index
    qsrc = VectorSource.from_collection(qcol)
    token = uuid.uuid4().hex[:12]
    cents = dask.delayed(index.centroids, name=f"dedupdask-ref-centroids-{token}")
    probes = [
        dask.delayed(_probe, pure=True)(b, int(first), cents, index.nprobe)
        for b, first in zip(qsrc.blocks, qsrc.offsets[:-1].tolist(), strict=True)
    ]
    frame = dd.from_delayed(probes, meta=_probe_meta(), verify_meta=False).persist()
    (touched,) = _compute(frame["bucket"].unique())
    touched = np.sort(np.asarray(touched, dtype=_I64))
    memberships = int(qcol.n) * min(index.nprobe, index.centroids.shape[0])
    n_parts = max(1, min(touched.size, max(2 * _n_workers(), math.ceil(memberships / QUERY_ROWS_PER_TASK))))
    part_of = np.zeros(index.centroids.shape[0], _I64)
    part_of[touched] = np.arange(touched.size, dtype=_I64) * n_parts // max(1, touched.size)
    routed = route(
        frame.map_partitions(_with_part, part_of, meta=_probe_meta().assign(_part=_I64(0))), "_part",
        range(n_parts + 1),
    )  # fmt: skip
    src = dask.delayed(qsrc, name=f"dedupdask-ref-query-source-{token}")
    idx = dask.delayed(index, name=f"dedupdask-ref-index-{token}")
    found = dd.from_delayed(
        [dask.delayed(_search, pure=True)(p, src, idx, k) for p in routed.to_delayed()],
        meta=_graph_meta(), verify_meta=False,
    )  # fmt: skip
    n_ranges = max(1, min(qcol.n, max(2 * _n_workers(), math.ceil(qcol.n * k / 2_000_000))))
    cuts = np.unique(np.linspace(0, qcol.n, n_ranges + 1).astype(_I64))
    merged = route(found, "from", cuts.tolist()).map_partitions(_best, k, cut, meta=_graph_meta())
    merged = merged.persist()
    bytes_read = int(index.bucket_count[touched].sum()) * (index.d * 4 + 8)
    info = {
        "centroids": int(index.centroids.shape[0]),
        "nprobe": int(index.nprobe),
        "buckets_touched": int(touched.size),
        "reference_rows_read": int(index.bucket_count[touched].sum()),
        "index_bytes_read": bytes_read,
        "search_tasks": n_parts,
        "k": k,
        "candidate_cut": float(cut),
    }
    return merged, info


# -- 4. attach -------------------------------------------------------------------------------------
def _archive_starts(col: Collection) -> np.ndarray:
    return np.array([a.offset for a in col.archives], dtype=_I64)


def _archive_ids(df: pd.DataFrame, column: str, starts: np.ndarray, valid: np.ndarray) -> pd.DataFrame:
    pos = owner(starts, df[column].to_numpy(_I64))
    return df.assign(_arch=valid[pos])


def _side_rows(spec: tuple[Any, ...], rows: np.ndarray) -> pd.DataFrame:
    """``_INFO`` columns and ``occ`` of global indices ``rows`` of one archive."""
    f = read_archive_files(spec).reset_index(drop=True)
    occ = f.groupby(["archive", "member"], sort=False, dropna=False).cumcount().to_numpy(_I64)
    f = f.assign(occ=occ)
    f = f[f["index"].notna()]
    f.index = f["index"].astype("int64").to_numpy()
    return f.loc[rows, [*_INFO, "occ"]]


def _attach_part(
    part: pd.DataFrame, specs: dict[int, tuple[Any, ...]], column: str, sfx: str, dct: str | None
) -> pd.DataFrame:
    """One attach task: each pair's ``column`` image's info from its archive (``specs``).

    ``dct``: ``"carry"`` keeps the image's DCT descriptor (bytes) for the other side,
    ``"cosine"`` reads this side's and sets ``copy_similarity``; None = no DCT (NaN).
    """
    part = part.reset_index(drop=True)
    ids = part[column].to_numpy(_I64)
    arch = part["_arch"].to_numpy(_I64)
    info = pd.DataFrame(index=pd.RangeIndex(len(part)))
    cols: dict[str, Any] = {}
    dvec = np.full((len(part), DCT_DIM), np.nan, np.float32) if dct else None
    for a in np.unique(arch).tolist():
        at = np.flatnonzero(arch == a)
        spec = specs[int(a)]
        rows = _side_rows(spec, ids[at])
        for c in (*_INFO, "occ"):
            cols.setdefault(c, []).append(pd.Series(rows[c].array, index=at))
        if dvec is not None:
            wd, name, offset = spec[0], spec[1], int(spec[2])
            local = ids[at] - offset
            uniq, inv = np.unique(local, return_inverse=True)
            try:
                dvec[at] = read_file_rows(wd, wd.file(name, "dct"), DCT_DIM, "<f4", uniq)[inv]
            except FileNotFoundError:
                pass  # an archive without its DCT file: no copy tier for its pairs
    for c, parts in cols.items():
        info[f"{c}{sfx}"] = pd.concat(parts).sort_index().array if parts else pd.Series(dtype="object")
    out = pd.concat([part.drop(columns="_arch"), info], axis=1)
    if dct == "carry":
        out["_dct"] = pd.array([r.tobytes().hex() for r in dvec], dtype="string")  # strings: what dask keeps
    elif dct == "cosine":
        other = np.stack([np.frombuffer(bytes.fromhex(h), np.float32) for h in part["_dct"]]) if len(part) else dvec
        a = _unit(np.nan_to_num(other))
        b = _unit(np.nan_to_num(dvec))
        cos = np.einsum("ij,ij->i", a, b).astype(np.float32)
        bad = np.isnan(other).any(axis=1) | np.isnan(dvec).any(axis=1)
        cos[bad] = np.nan
        out["copy_similarity"] = np.clip(cos, -1, 1)
        out = out.drop(columns="_dct")
    return out


def _attach_meta(meta: pd.DataFrame, sfx: str, dct: str | None) -> pd.DataFrame:
    from .store import file_dtypes

    types = file_dtypes()
    out = meta.drop(columns="_arch", errors="ignore").copy()
    for c in _INFO:
        out[f"{c}{sfx}"] = pd.Series(dtype=types[c])
    out[f"occ{sfx}"] = pd.Series(dtype="int64")
    if dct == "carry":
        out["_dct"] = pd.Series(dtype="string")
    elif dct == "cosine":
        out = out.drop(columns="_dct", errors="ignore")
        out["copy_similarity"] = pd.Series(dtype="float32")
    return out


def attach_side(pairs: Any, col: Collection, column: str, dct: str | None) -> Any:
    """Stage 4 for one side: route the pairs to tasks that each read a few touched archives."""
    import dask.dataframe as dd

    sfx = _SIDE[column]
    valid = np.array([i for i, a in enumerate(col.archives) if a.n_valid], dtype=_I64)
    starts = _archive_starts(col)[valid]
    meta = pairs._meta.assign(_arch=_I64(0))
    tagged = pairs.map_partitions(_archive_ids, column, starts, valid, meta=meta)
    (touched,) = _compute(tagged["_arch"].unique())
    touched = np.sort(np.asarray(touched, dtype=_I64))
    out_meta = _attach_meta(pairs._meta, sfx, dct)
    if not touched.size:
        return dd.from_pandas(out_meta, npartitions=1)
    n_parts = max(1, min(touched.size, max(2 * _n_workers(), math.ceil(touched.size / ARCHIVES_PER_TASK))))
    part_of = np.zeros(len(col.archives), _I64)
    part_of[touched] = np.arange(touched.size, dtype=_I64) * n_parts // touched.size
    specs_of: list[dict[int, tuple[Any, ...]]] = [{} for _ in range(n_parts)]
    for a in touched.tolist():
        info = col.archives[a]
        specs_of[int(part_of[a])][a] = (col.work_dir, info.name, info.offset, info.n_valid, col.decode_version)
    routed = route(
        tagged.map_partitions(lambda d, p: d.assign(_part=p[d["_arch"].to_numpy(_I64)]), part_of,
                              meta=meta.assign(_part=_I64(0))),
        "_part", range(n_parts + 1),
    )  # fmt: skip
    tasks = [
        dask.delayed(_attach_part, pure=True)(p, specs_of[i], column, sfx, dct)
        for i, p in enumerate(routed.to_delayed())
    ]
    return dd.from_delayed(tasks, meta=out_meta, verify_meta=False)


# -- 5. decide and verify --------------------------------------------------------------------------
def _equal(a: pd.Series, b: pd.Series) -> np.ndarray:
    return (a.notna() & b.notna() & (a.astype(object) == b.astype(object))).to_numpy(bool)


def decide_cross(df: pd.DataFrame, params: TierParams) -> pd.DataFrame:
    """The tiers' decision for cross pairs: ``exact`` on equal bytes or pixels, else
    :func:`dedupdask.analyses.tiers.decide` (equal model inputs are verified, not trusted).

    Examples
    --------
    >>> p = TierParams(0.95, 0.95, 0.99, 0.7, 0.85, True, 5, 0.98)
    >>> df = pd.DataFrame({"from": [0, 1], "to": [5, 6], "similarity": [1.0, 0.8],
    ...     "copy_similarity": [np.nan, 0.2], "md5_from": ["a", "b"], "md5_to": ["a", "c"],
    ...     "pixel_md5_from": [None, None], "pixel_md5_to": [None, None],
    ...     "input_md5_from": ["x", "y"], "input_md5_to": ["x", "z"]})
    >>> decide_cross(df, p)[["kind", "to_verify", "accepted"]].values.tolist()
    [['exact', False, True], ['near', True, False]]
    """
    exact = _equal(df["md5_from"], df["md5_to"]) | _equal(df["pixel_md5_from"], df["pixel_md5_to"])
    same = _equal(df["input_md5_from"], df["input_md5_to"]) & ~exact
    out = decide(df.assign(same_input=same), params)
    kind = out["kind"].astype(object).to_numpy().copy()
    kind[exact] = "exact"
    out["kind"] = pd.array(kind, dtype="string")
    out["direct"] = out["direct"].to_numpy(bool) | exact
    out["to_verify"] = out["to_verify"].to_numpy(bool) & ~exact
    out["accepted"] = out["accepted"].to_numpy(bool) | exact
    return out


def _decided(df: pd.DataFrame, params: TierParams) -> pd.DataFrame:
    df = df.reset_index(drop=True).assign(verify_score=np.float64(np.nan), verify_error=pd.array([None] * len(df), dtype="string"))
    return decide_cross(df, params)


def _side_images(
    part: pd.DataFrame, column: str, sign: int, so: dict[str, Any], limits: tuple[int, int]
) -> dict[int, Any]:
    """One side's images of a partition of pairs: by byte range where known, else streamed."""
    sfx = _SIDE[column]
    ids = part[column].to_numpy(_I64)
    keys = ids if sign > 0 else -(ids + 1)
    f = pd.DataFrame({
        "id": keys, "archive": part[f"archive{sfx}"].astype(str).to_numpy(),
        "member": part[f"member{sfx}"].astype(str).to_numpy(), "occ": part[f"occ{sfx}"].to_numpy(_I64),
        "offset": part[f"member_offset{sfx}"].to_numpy(dtype="float64", na_value=np.nan),
        "size": part[f"file_size{sfx}"].to_numpy(dtype="float64", na_value=np.nan),
    }).drop_duplicates("id")  # fmt: skip
    ranged = f["offset"].notna() & f["size"].notna()
    loaded: dict[int, Any] = {}
    if ranged.any():
        r = f[ranged]
        items = tuple(zip(r["id"].tolist(), r["archive"].tolist(), r["offset"].astype("int64").tolist(),
                          r["size"].astype("int64").tolist(), strict=True))  # fmt: skip
        loaded.update(verify.load_ranged_images(items, so, *limits))
    for url, grp in f[~ranged].groupby("archive", sort=True):
        wanted = tuple(zip(grp["member"].tolist(), grp["occ"].tolist(), grp["id"].tolist(), strict=True))
        loaded.update(verify.load_archive_images(str(url), wanted, so, *limits))
    return loaded


def _verify_part(
    part: pd.DataFrame, qso: dict[str, Any], rso: dict[str, Any], limits: tuple[int, int],
    params: TierParams,
) -> pd.DataFrame:  # fmt: skip
    """Score a partition of cross pairs to verify (one task, chunks of ``PAIRS_PER_TASK``)."""
    part = part.reset_index(drop=True)
    scores = np.full(len(part), np.nan)
    errors: list[Any] = [None] * len(part)
    for at in np.array_split(np.arange(len(part)), max(1, math.ceil(len(part) / verify.PAIRS_PER_TASK))):
        if not at.size:
            continue
        chunk = part.iloc[at]
        q = _side_images(chunk, "from", 1, qso, limits)
        r = _side_images(chunk, "to", -1, rso, limits)
        p = np.stack([chunk["from"].to_numpy(_I64), -(chunk["to"].to_numpy(_I64) + 1)], axis=1)
        df, _ = verify.score_pairs(p, q, r, early_accept=params.early_accept, keypoints=params.keypoints)
        scores[at] = df["verify_score"].to_numpy(np.float64)
        errors_at = df["verify_error"].astype(object).where(df["verify_error"].notna(), None).tolist()
        for i, e in zip(at.tolist(), errors_at, strict=True):
            errors[i] = e
    part["verify_score"] = scores
    part["verify_error"] = pd.array(errors, dtype="string")
    return decide_cross(part, params)


def _key(df: pd.DataFrame) -> pd.DataFrame:
    a, b = df["archive_from"].astype(str), df["archive_to"].astype(str)
    return df.assign(_key=pd.array((a + "\n" + b).to_numpy(), dtype="string"))


# -- 6. tables -------------------------------------------------------------------------------------
def _final(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["accepted"].to_numpy(bool)].reset_index(drop=True)
    out = df.assign(verified=df["to_verify"].to_numpy(bool))
    for side in ("from", "to"):
        out[f"filename_{side}"] = out[f"filename_{side}"].astype("string")
        for c in ("archive", "member", "key"):
            out[f"{c}_{side}"] = out[f"{c}_{side}"].astype("string")
    out["kind"] = out["kind"].astype("string")
    return out.loc[:, list(CROSS_COLUMNS)].astype(
        {"from": "int64", "to": "int64", "similarity": "float32", "copy_similarity": "float32",
         "verify_score": "float64", "verified": "bool"}
    )  # fmt: skip


def _final_meta() -> pd.DataFrame:
    s = {c: pd.Series(dtype="string") for c in CROSS_COLUMNS}
    s.update(
        {"from": pd.Series(dtype="int64"), "to": pd.Series(dtype="int64"), "similarity": pd.Series(dtype="float32"),
         "copy_similarity": pd.Series(dtype="float32"), "verify_score": pd.Series(dtype="float64"),
         "verified": pd.Series(dtype="bool")}
    )  # fmt: skip
    return pd.DataFrame(s).loc[:, list(CROSS_COLUMNS)]


_RANK = {"exact": 0, "copy": 1, "near": 2}


def _per_image(df: pd.DataFrame) -> pd.DataFrame:
    """Per query image of a partition: its archive, strongest kind, pairs."""
    if not len(df):
        return pd.DataFrame({"from": pd.Series(dtype="int64"), "archive": pd.Series(dtype="string"),
                             "rank": pd.Series(dtype="int64"), "pairs": pd.Series(dtype="int64")})  # fmt: skip
    rank = df["kind"].astype(str).map(_RANK).to_numpy(_I64)
    g = pd.DataFrame({"from": df["from"].to_numpy(_I64), "archive": df["archive_from"].astype(str).to_numpy(),
                      "rank": rank}).groupby("from", sort=False)  # fmt: skip
    return pd.DataFrame({"archive": g["archive"].first(), "rank": g["rank"].min(), "pairs": g.size()}).reset_index()


def contamination(pairs: Any, qcol: Collection) -> pd.DataFrame:
    """Per query archive (every one, in order): images, contaminated images, by kind, pairs.

    ``pairs`` is the accepted cross table (Dask); one small table per archive comes here.
    """
    import dask.dataframe as dd

    per = pairs.map_partitions(_per_image, meta=_per_image(pairs._meta.iloc[:0]))
    # a query image's pairs are in one partition (routed on ``from``): count per archive there
    agg = per.groupby("archive").agg({"from": "count", "pairs": "sum"})
    ranks = per.assign(one=1).groupby(["archive", "rank"])["one"].sum()
    agg, ranks = dd.compute(agg, ranks)
    rows = []
    for a in qcol.archives:
        url = a.url
        got = agg.loc[url] if url in agg.index else None
        by = {kind: int(ranks.get((url, _RANK[kind]), 0)) for kind in KINDS}
        n_c = int(got["from"]) if got is not None else 0
        rows.append({"archive": url, "name": a.name, "images": int(a.n_valid), "contaminated": n_c,
                     "share": round(n_c / a.n_valid, 6) if a.n_valid else 0.0, **by,
                     "pairs": int(got["pairs"]) if got is not None else 0})  # fmt: skip
    out = pd.DataFrame(rows, columns=list(CONTAMINATION_COLUMNS))
    return out.astype({"archive": "string", "name": "string"})


def _csv_pairs(df: pd.DataFrame) -> pd.DataFrame:
    d = df["similarity"] if "similarity" in df else df["distance"]
    out = pd.DataFrame({"from": df["from"].to_numpy(_I64), "to": df["to"].to_numpy(_I64),
                        "distance": d.to_numpy(np.float32)})  # fmt: skip
    return out.sort_values(["distance", "from", "to"], ascending=[False, True, True], kind="stable")


def _write_csv(wd: WorkDir, name: str, frames: list[pd.DataFrame] | Any) -> dict[str, int]:
    """One CSV file from a (small, gathered) frame or a Dask frame, by parts, joined."""
    import posixpath

    from .csvs import PARTS_DIR, write_part

    root = wd.join(RESULTS_DIR, PARTS_DIR, name)
    if wd.fs.exists(root):
        wd.fs.rm(root, recursive=True)
    wd.makedirs(RESULTS_DIR, PARTS_DIR, name)
    parts = frames.to_delayed() if hasattr(frames, "to_delayed") else [dask.delayed(f) for f in frames]
    paths = [posixpath.join(root, f"part.{i}.csv") for i in range(len(parts))]
    sizes = dask.compute(*[dask.delayed(write_part, pure=False)(wd, p, f, i == 0)
                           for i, (p, f) in enumerate(zip(paths, parts, strict=True))])  # fmt: skip
    wd.write_joined(wd.join(name), paths)
    wd.fs.rm(root, recursive=True)
    return {"parts": len(paths), "bytes": int(sum(sizes))}


# -- the whole query -------------------------------------------------------------------------------
@dataclass
class ReferenceResult:
    """The cross-set result of a query work_dir against a reference (``ddk.run(..., reference=)``).

    Attributes
    ----------
    similarity : dask.dataframe.DataFrame
        Accepted cross pairs, :data:`CROSS_COLUMNS` (``from`` query index, ``to`` reference index).
    contamination : pandas.DataFrame
        One row per query archive, :data:`CONTAMINATION_COLUMNS`.
    query_similarity : dask.dataframe.DataFrame or None
        The query's own duplicate pairs (``query_duplicates=True``).
    run : dict
        ``results/reference.json``.
    """

    similarity: Any
    contamination: pd.DataFrame
    query_similarity: Any = None
    run: dict = field(default_factory=dict)
    work_dir: str = ""
    extract_report: Any = None

    def gallery(self, save_path: str, **options: Any) -> Any:
        """:func:`dedupdask.reference_gallery.create_reference_gallery` of this result."""
        from .reference_gallery import create_reference_gallery

        return create_reference_gallery(self, save_path, **options)

    def summary(self) -> dict[str, Any]:
        """Counts: query images, contaminated images, cross pairs by kind."""
        c = self.run.get("counts", {})
        return {k: c[k] for k in ("query_images", "reference_images", "contaminated_images",
                                  "cross_pairs", "exact", "copy", "near", "query_pairs") if k in c}  # fmt: skip


def query(work_dir: str, *, config: Any) -> ReferenceResult:
    """Run a query work_dir against ``config.reference`` and write the cross-set tables.

    Parameters
    ----------
    work_dir : str
        The query's work_dir (features extracted: run_mode=1 done).
    config : RunConfig
        ``reference``, ``reference_storage_options`` (default: ``storage_options``),
        ``query_duplicates``, the thresholds and verification options of a normal run.

    Returns
    -------
    ReferenceResult

    Examples
    --------
    >>> res = query("test_work", config=RunConfig(reference="train_work"))  # doctest: +SKIP
    >>> res.contamination[["name", "contaminated", "share"]]  # doctest: +SKIP
    """

    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    # dask's implicit shuffles (unique, groupby) pick p2p whenever a default Client exists; the
    # query may run on local threads beside one: the method of the scheduler that runs it
    with dask.config.set({"dataframe.shuffle.method": shuffle_method()}):
        return _query(work_dir, config, timings, lap)


def _query(work_dir: str, config: Any, timings: dict[str, float], lap: Any) -> ReferenceResult:
    from .analysis import _version
    from .results import RUN_JSON
    from .thresholds import resolve

    qcol = collect(work_dir, config.storage_options)
    if not qcol.archives:
        raise FileNotFoundError(f"query work_dir {qcol.work_dir.url}: no archive is done (no *done.json)")
    rso = config.storage_options if config.reference_storage_options is None else config.reference_storage_options
    ref = open_reference(config.reference, rso, qcol)
    wd = qcol.work_dir
    if wd.url == ref.col.work_dir.url:
        raise ValueError(f"the query work_dir and the reference are the same folder: {wd.url}")
    table = resolve(config, qcol.model)
    params = resolve_params(table, has_dct=ref.dct and has_dct(qcol), verify=config.verify,
                            nearest_neighbors_k=config.nearest_neighbors_k, keypoints=config.verify_keypoints)  # fmt: skip
    lap("open")

    cands, search_info = cross_candidates(qcol, ref, params.k, candidate_cut(params))
    lap("search")
    dct = params.copy_threshold is not None
    pairs = attach_side(cands, qcol, "from", "carry" if dct else None)
    pairs = attach_side(pairs, ref.col, "to", "cosine" if dct else None)
    if not dct:
        pairs = pairs.assign(copy_similarity=np.float32(np.nan))
    decided = pairs.map_partitions(_decided, params, meta=_decided(pairs._meta, params)).persist()
    n_cands = int(len(decided))
    lap("attach")

    todo = decided[decided["to_verify"]]
    n_verify = int(len(todo)) if params.verify else 0
    vcost: dict[str, Any] = {"pairs": n_verify}
    if n_verify:
        import dask.dataframe as dd

        keyed = todo.map_partitions(_key, meta=todo._meta.assign(_key=pd.Series(dtype="string")))
        planned = keyed.shuffle(on="_key", npartitions=max(1, math.ceil(n_verify / verify.PAIRS_PER_TASK)),
                                shuffle_method=shuffle_method())  # fmt: skip
        limits = (int(config.max_image_pixels), int(config.max_member_bytes))
        qso = dict(config.storage_options or {})
        tasks = [dask.delayed(_verify_part, pure=True)(p, qso, dict(rso or {}), limits, params)
                 for p in planned.to_delayed()]  # fmt: skip
        meta = decide_cross(keyed._meta, params)
        verified = dd.from_delayed(tasks, meta=meta, verify_meta=False).drop(columns="_key")
        rest = decided[~decided["to_verify"]]
        decided = dd.concat([rest, verified.loc[:, list(rest.columns)]])
    lap("verify")

    final = decided.map_partitions(_final, meta=_final_meta())
    final = route(final.assign(_q=final["from"]), "_q", _query_cuts(qcol)).reset_index(drop=True).persist()
    if n_verify:
        errs = decided[decided["to_verify"]]
        v = dask.compute(errs["accepted"].sum(), (~errs["verify_error"].isna()).sum())
        vcost.update(accepted=int(v[0]), errors=int(v[1]))
    summary = contamination(final, qcol)
    kinds = final["kind"].value_counts().compute()

    run = {
        "dedupdask_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "work_dir": wd.url,
        "reference": {
            "work_dir": ref.col.work_dir.url,
            "created": ref.run.get("created"),
            "archives": len(ref.col.archives),
            "images": int(ref.col.n),
            "index": {k: ref.index.meta.get(k) for k in ("version", "created", "centroids", "nprobe", "probe_found", "n")},
        },
        "model": qcol.model,
        "decode_version": qcol.decode_version,
        "parameters": {**params.to_dict(), "query_duplicates": bool(config.query_duplicates)},
        "search": search_info,
        "verification": vcost,
        "archives": [a.to_dict() for a in qcol.archives],
    }
    wd.remove(wd.join(RESULTS_DIR, REFERENCE_JSON))  # complete only once it is back
    wd.remove(wd.join(RESULTS_DIR, RUN_JSON))  # this work_dir's similarity.csv is now the cross one
    wd.makedirs(RESULTS_DIR)
    tables = {
        "cross_similarity": write_partitions(wd, "cross_similarity", final),
        "contamination": write_table(wd, "contamination", summary),
    }
    query_sim = None
    if config.query_duplicates:
        query_sim = _query_duplicates(work_dir, config)
        tables["query_similarity"] = write_partitions(wd, "query_similarity", query_sim)
    from .tables import open_table

    similarity = open_table(wd, "cross_similarity", tables["cross_similarity"], required=("from", "to"),
                            columns=list(CROSS_COLUMNS), version=run["created"])  # fmt: skip
    csv = {}
    if config.write_csv:
        csv["similarity.csv"] = _write_csv(wd, "similarity.csv", _sorted_csv(similarity))
        csv["contamination.csv"] = _write_csv(wd, "contamination.csv", [summary])
        csv["atrain_features.dat.csv"] = _write_csv(wd, "atrain_features.dat.csv", _index_csv(qcol))
        if query_sim is not None:
            qs = open_table(wd, "query_similarity", tables["query_similarity"], required=("from", "to"),
                            version=run["created"])  # fmt: skip
            csv["query_similarity.csv"] = _write_csv(wd, "query_similarity.csv", _sorted_csv(qs, both=True))
    lap("write")
    run["tables"] = tables
    run["csv"] = csv
    run["counts"] = {
        "query_images": int(qcol.n),
        "reference_images": int(ref.col.n),
        "candidates": n_cands,
        "verified": n_verify,
        "cross_pairs": int(kinds.sum()),
        **{k: int(kinds.get(k, 0)) for k in KINDS},
        "contaminated_images": int(summary["contaminated"].sum()),
        "contaminated_archives": int((summary["contaminated"] > 0).sum()),
    }
    if query_sim is not None:
        run["counts"]["query_pairs"] = int(tables["query_similarity"]["rows"])
    run["timings"] = timings
    wd.write_json(wd.join(RESULTS_DIR, REFERENCE_JSON), run)
    qs_table = None
    if query_sim is not None:
        qs_table = open_table(wd, "query_similarity", tables["query_similarity"], required=("from", "to"),
                              version=run["created"])  # fmt: skip
    return ReferenceResult(similarity, summary, qs_table, run, wd.url)


def _query_cuts(qcol: Collection) -> list[int]:
    n_ranges = max(1, min(qcol.n, 2 * _n_workers()))
    return np.unique(np.linspace(0, max(1, qcol.n), n_ranges + 1).astype(_I64)).tolist()


def _sorted_csv(similarity: Any, both: bool = False) -> Any:
    """``from,to,distance`` sorted by distance (descending), from, to -- across partitions
    (``both``: each pair in both directions, as fastdup lists an input's own pairs)."""
    from .analyses.pairs_dask import pair_key
    from .analyses.routing import sort_by_key
    from .csvs import both_directions

    def keyed(df: pd.DataFrame) -> pd.DataFrame:
        out = _csv_pairs(both_directions(df) if both else df)
        return out.assign(_k=pair_key(out["distance"].to_numpy(np.float32), out["from"].to_numpy(_I64)))

    meta = keyed(pd.DataFrame({"from": pd.Series(dtype="int64"), "to": pd.Series(dtype="int64"),
                               "similarity": pd.Series(dtype="float32")}))  # fmt: skip
    frame = similarity[["from", "to", "similarity"]].map_partitions(keyed, meta=meta)
    if frame.npartitions > 1:
        return sort_by_key(frame, "_k", ["to"])[["from", "to", "distance"]]
    return frame.map_partitions(lambda d: d.sort_values(["_k", "to"])[["from", "to", "distance"]],
                                meta=meta[["from", "to", "distance"]])  # fmt: skip


def _index_csv(qcol: Collection) -> Any:
    files = qcol.files()[["index", "filename"]]
    files = files[~files["index"].isna()]
    return files.astype({"index": "int64"})


def _query_duplicates(work_dir: str, config: Any) -> Any:
    """The query's own duplicate pairs: a normal analysis of its work_dir, nothing written."""
    from .analysis import build

    res = build(work_dir, config=replace(config, reference=None, query_duplicates=False, progress=False), write=False)
    return res.similarity


def load_reference(wd: WorkDir) -> ReferenceResult:
    """A finished reference run read back from a query work_dir (``results/reference.json``)."""
    from .tables import open_table

    run = wd.read_json(wd.join(RESULTS_DIR, REFERENCE_JSON))
    sim = open_table(wd, "cross_similarity", run["tables"]["cross_similarity"], required=("from", "to"),
                     columns=list(CROSS_COLUMNS), version=str(run.get("created", "")))  # fmt: skip
    cont = open_table(wd, "contamination", run["tables"]["contamination"], required=("archive",),
                      version=str(run.get("created", ""))).compute().reset_index(drop=True)  # fmt: skip
    qs = None
    if "query_similarity" in run["tables"]:
        qs = open_table(wd, "query_similarity", run["tables"]["query_similarity"], required=("from", "to"),
                        version=str(run.get("created", "")))  # fmt: skip
    return ReferenceResult(sim, cont, qs, run, wd.url)

