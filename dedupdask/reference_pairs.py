"""Reference stage, pairs: both images of each candidate cross pair, the tiers' decision, verification.

Stages 4-5 of :func:`dedupdask.reference.query`, on the current scheduler:

4. **attach** (a task per group of touched archives, query side then reference side): each
   candidate pair gets both images' names, hashes, byte ranges and the DCT descriptors' cosine,
   reading only the archives the pairs touch;
5. **decide** with the tiers of a normal run (:func:`dedupdask.analyses.tiers.decide`): ``exact``
   (equal bytes or pixels), ``copy`` (DCT cosine), ``near`` (embedding cosine); the uncertain
   pairs verified by pixel alignment (:mod:`dedupdask.verify`) in tasks of about
   ``PAIRS_PER_TASK`` pairs of one pair of archives, each side's images read with its own
   storage options (by byte range where extraction recorded it).
"""

from __future__ import annotations

import math
from typing import Any

import dask
import numpy as np
import pandas as pd

from . import verify
from .analyses.expand_dask import owner
from .analyses.routing import route_touched, shuffle_method
from .analyses.tiers import TierParams, decide
from .collect import Collection, read_archive_files
from .fusion import DCT_DIM
from .knn_budget import _n_workers
from .knn_rows import _unit, read_file_rows
from .verify_frames import image_info

__all__ = ["ARCHIVES_PER_TASK", "attach_side", "decide_cross", "decide_pairs", "verify_cross"]

ARCHIVES_PER_TASK = 16
"""Archives whose Parquet files one attach task reads."""

_I64 = np.int64
_SIDE = {"from": "_from", "to": "_to"}
_INFO = ("filename", "archive", "member", "key", "md5", "pixel_md5", "input_md5", "member_offset", "file_size")


def _archive_ids(df: pd.DataFrame, column: str, starts: np.ndarray, valid: np.ndarray) -> pd.DataFrame:
    pos = owner(starts, df[column].to_numpy(_I64))
    return df.assign(_arch=valid[pos])


def _side_rows(spec: tuple[Any, ...], rows: np.ndarray) -> pd.DataFrame:
    """``_INFO`` columns and ``occ`` of global indices ``rows`` of one archive."""
    return image_info(read_archive_files(spec), [*_INFO, "occ"]).loc[rows]


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
    starts = np.array([a.offset for a in col.archives], dtype=_I64)[valid]
    meta = pairs._meta.assign(_arch=_I64(0))
    tagged = pairs.map_partitions(_archive_ids, column, starts, valid, meta=meta)
    routed, touched, part_of = route_touched(
        tagged, "_arch", len(col.archives), lambda t: max(2 * _n_workers(), math.ceil(t / ARCHIVES_PER_TASK))
    )
    out_meta = _attach_meta(pairs._meta, sfx, dct)
    if not touched.size:
        return dd.from_pandas(out_meta, npartitions=1)
    specs_of: list[dict[int, tuple[Any, ...]]] = [{} for _ in range(routed.npartitions)]
    for a in touched.tolist():
        info = col.archives[a]
        specs_of[int(part_of[a])][a] = (col.work_dir, info.name, info.offset, info.n_valid, col.decode_version)
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
    scored = [pd.DataFrame({"verify_score": pd.Series(dtype="float64"), "verify_error": pd.Series(dtype="string")})]
    for at in np.array_split(np.arange(len(part)), max(1, math.ceil(len(part) / verify.PAIRS_PER_TASK))):
        if not at.size:
            continue
        chunk = part.iloc[at]
        q = _side_images(chunk, "from", 1, qso, limits)
        r = _side_images(chunk, "to", -1, rso, limits)
        p = np.stack([chunk["from"].to_numpy(_I64), -(chunk["to"].to_numpy(_I64) + 1)], axis=1)
        df, _ = verify.score_pairs(p, q, r, early_accept=params.early_accept, keypoints=params.keypoints)
        scored.append(df[["verify_score", "verify_error"]])
    scored_all = pd.concat(scored, ignore_index=True)  # chunks in order: row i is part's row i
    part["verify_score"] = scored_all["verify_score"].to_numpy(np.float64)
    part["verify_error"] = scored_all["verify_error"].astype("string").array
    return decide_cross(part, params)


def _key(df: pd.DataFrame) -> pd.DataFrame:
    a, b = df["archive_from"].astype(str), df["archive_to"].astype(str)
    return df.assign(_key=pd.array((a + "\n" + b).to_numpy(), dtype="string"))



def decide_pairs(pairs: Any, params: TierParams) -> Any:
    """Every candidate pair decided before verification (persisted on the workers)."""
    return pairs.map_partitions(_decided, params, meta=_decided(pairs._meta, params)).persist()


def verify_cross(
    decided: Any, params: TierParams, qso: dict[str, Any], rso: dict[str, Any], limits: tuple[int, int]
) -> tuple[Any, dict[str, Any]]:
    """Verify the pairs that need it and decide them again; all pairs (persisted) and the cost."""
    import dask.dataframe as dd

    todo = decided[decided["to_verify"]]
    n = int(len(todo)) if params.verify else 0
    cost: dict[str, Any] = {"pairs": n}
    if not n:
        return decided, cost
    keyed = todo.map_partitions(_key, meta=todo._meta.assign(_key=pd.Series(dtype="string")))
    planned = keyed.shuffle(on="_key", npartitions=max(1, math.ceil(n / verify.PAIRS_PER_TASK)),
                            shuffle_method=shuffle_method())  # fmt: skip
    tasks = [dask.delayed(_verify_part, pure=True)(p, dict(qso), dict(rso), limits, params)
             for p in planned.to_delayed()]  # fmt: skip
    verified = dd.from_delayed(tasks, meta=decide_cross(keyed._meta, params), verify_meta=False).drop(columns="_key")
    rest = decided[~decided["to_verify"]]
    out = dd.concat([rest, verified.loc[:, list(rest.columns)]]).persist()
    done = out[out["to_verify"]]
    got = dask.compute(done["accepted"].sum(), (~done["verify_error"].isna()).sum())
    cost.update(accepted=int(got[0]), errors=int(got[1]))
    return out, cost
