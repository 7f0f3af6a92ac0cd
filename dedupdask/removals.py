"""Removal-list stage: which webdataset samples to drop, one table per source archive.

:func:`removals` turns an analysed work_dir (a :class:`~dedupdask.results.DedupResult`) into a
dask DataFrame with one partition per source archive and one row per **sample to remove**
(a webdataset key: ``a/000123.jpg``, ``a/000123.txt`` and ``a/000123.json`` are one sample);
:func:`write_removals` writes each partition as ``<out>/<archive name>.parquet``, so the
per-image rows are never gathered in one process. Columns (:data:`REMOVAL_COLUMNS`):

================  ============================================================================
``archive``       the source archive's URL (as in ``res.files``)
``key``           the sample's webdataset key
``members``       its image members, in archive order (every member with this key goes:
                  sidecars such as ``.txt``/``.json`` and any other extension too)
``reason``        ``invalid`` (an image could not be used), an issue type asked for with
                  ``remove_issues`` (``low_information``, ``odd_size``...), ``outlier``
                  (fastdup's ``outliers.csv``, with ``outliers=True``) or ``duplicate``; when
                  the sample's images have several, the first in that order
``kind``          for duplicates: ``exact``, ``copy`` or ``near``, the kind of the strongest
                  accepted pair linking the image to another image of its component
``similarity``    that pair's similarity
``component_id``  the duplicate component (``connected_components.csv``)
``keep_archive``  the archive of the component's kept image
``keep_key``      the kept image's key
================  ============================================================================

How it is computed, per archive (a Dask task each; only the per-archive slices of the
tables the result already holds, and one row per duplicate component, travel):

1. the images of multi-image components get the keep rule's sort keys
   (:mod:`dedupdask.analyses.keep`) and each archive picks its best image per component;
   images removed for an issue or as outliers never are the kept image;
2. the partial bests merge into one kept image per component (one small task);
3. each archive marks its images: invalid, flagged (issue types, outliers), duplicate (in a
   multi-image component and not its kept image); a sample goes when **all** of its images
   are marked, so a sample with a kept image stays whole.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd

from .analyses.components import duplicates_to_remove as _duplicates_table
from .analyses.keep import KEY_COLUMNS, KeepRule, best_per_component, check_keep, keep_keys
from .exprlocks import unlock_expression_properties
from .thresholds import ISSUE_TYPES

if TYPE_CHECKING:
    import dask.dataframe as dd

    from .results import DedupResult

__all__ = [
    "REMOVAL_COLUMNS",
    "RemovalPlan",
    "parse_issues",
    "removals",
    "removal_parts",
    "write_removals",
    "duplicates_table",
]

REMOVAL_COLUMNS = (
    "archive", "key", "members", "reason", "kind", "similarity", "component_id", "keep_archive",
    "keep_key",
)  # fmt: skip
_KIND_RANK = {"exact": 0, "copy": 1, "near": 2}
_LOCAL_SCHEDULERS = {"sync", "synchronous", "single-threaded", "threads", "threading", "processes"}


def _MEMBERS_DTYPE() -> pd.ArrowDtype:  # noqa: N802 - a dtype, built on use (pyarrow import)
    import pyarrow as pa

    return pd.ArrowDtype(pa.list_(pa.string()))


def removals_meta() -> pd.DataFrame:
    """The empty removal table with its dtypes (Dask meta; what an archive with none gives)."""
    return pd.DataFrame(
        {
            "archive": pd.Series(dtype="string"),
            "key": pd.Series(dtype="string"),
            "members": pd.Series(dtype=_MEMBERS_DTYPE()),
            "reason": pd.Series(dtype="string"),
            "kind": pd.Series(dtype="string"),
            "similarity": pd.Series(dtype="float64"),
            "component_id": pd.Series(dtype="Int64"),
            "keep_archive": pd.Series(dtype="string"),
            "keep_key": pd.Series(dtype="string"),
        }
    )


def parse_issues(remove_issues: str | Iterable[str] | None) -> tuple[str, ...]:
    """Issue types from ``"low_information,odd_size"`` or a list; ``ValueError`` naming a bad one.

    Examples
    --------
    >>> parse_issues("low_information, odd_size")
    ('low_information', 'odd_size')
    >>> parse_issues(None)
    ()
    >>> parse_issues(["blury"])
    Traceback (most recent call last):
    ...
    ValueError: remove_issues: unknown issue type 'blury'; one of dark, light, blurry, noisy, low_information, odd_aspect_ratio, odd_size, grayscale, outlier
    """
    if remove_issues is None:
        return ()
    items = remove_issues.split(",") if isinstance(remove_issues, str) else list(remove_issues)
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item not in ISSUE_TYPES:
            raise ValueError(
                f"remove_issues: unknown issue type {item!r}; one of {', '.join(ISSUE_TYPES)}"
            )
        if item not in out:
            out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class RemovalPlan:
    """What goes, validated once.

    Attributes
    ----------
    keep : str or callable
        The keep rule of each duplicate component (:mod:`dedupdask.analyses.keep`).
    duplicates, invalid, outliers : bool
        Remove the duplicates (all but the kept image of each component), the invalid
        images, fastdup's outliers (``outliers.csv``).
    remove_issues : tuple of str
        Issue types (``res.issues``) whose images go.
    """

    keep: KeepRule = "largest_resolution"
    duplicates: bool = True
    invalid: bool = True
    outliers: bool = False
    remove_issues: tuple[str, ...] = ()

    @classmethod
    def make(
        cls,
        keep: KeepRule = "largest_resolution",
        *,
        duplicates: bool = True,
        invalid: bool = True,
        outliers: bool = False,
        remove_issues: str | Iterable[str] | None = None,
    ) -> RemovalPlan:
        return cls(check_keep(keep), bool(duplicates), bool(invalid), bool(outliers),
                   parse_issues(remove_issues))  # fmt: skip

    @property
    def reasons(self) -> tuple[str, ...]:
        """Reasons in precedence order (a sample's reason is the first its images have)."""
        return ("invalid", *self.remove_issues, "outlier", "duplicate")

    def describe(self) -> dict[str, Any]:
        keep = self.keep if isinstance(self.keep, str) else f"callable {getattr(self.keep, '__name__', '?')}"
        return {"keep": keep, "duplicates": self.duplicates, "invalid": self.invalid,
                "outliers": self.outliers, "remove_issues": list(self.remove_issues)}  # fmt: skip


@dataclass
class ArchivePart:
    """One archive's slices of the run-level tables (small; shipped with its task).

    ``components``: ``index, component_id`` of its images in multi-image components;
    ``pairs``: ``index, kind_rank, similarity`` of their accepted pairs inside the component;
    ``flagged``: ``index, reason`` of its images removed for an issue type or as outliers.
    """

    name: str
    url: str
    offset: int
    n_valid: int
    components: pd.DataFrame
    pairs: pd.DataFrame
    flagged: pd.DataFrame


def _slices(index: np.ndarray, archives: Sequence[dict[str, Any]]) -> list[slice]:
    """Row ranges of a table sorted by global ``index``, one per archive."""
    lo = np.searchsorted(index, [int(a["offset"]) for a in archives], side="left")
    hi = np.searchsorted(index, [int(a["offset"]) + int(a["n_valid"]) for a in archives], side="left")
    return [slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]


def _flagged(res: DedupResult, plan: RemovalPlan) -> pd.DataFrame:
    parts = []
    if plan.remove_issues:
        issues = res.issues
        iss = issues.loc[issues["issue"].isin(list(plan.remove_issues)), ["index", "issue"]].compute()
        parts.append(iss.rename(columns={"issue": "reason"}))
    if plan.outliers:
        parts.append(pd.DataFrame({"index": res.outliers["index"].compute().to_numpy(), "reason": "outlier"}))
    if not parts:
        return pd.DataFrame({"index": pd.Series(dtype="int64"), "reason": pd.Series(dtype="string")})
    df = pd.concat(parts, ignore_index=True)
    rank = {r: i for i, r in enumerate(plan.reasons)}
    df = df.assign(_rank=df["reason"].map(rank), index=df["index"].astype("int64"))
    df = df.sort_values(["index", "_rank"], kind="stable").drop_duplicates("index")
    return df.loc[:, ["index", "reason"]].reset_index(drop=True)


def removal_parts(res: DedupResult, plan: RemovalPlan) -> list[ArchivePart]:
    """Cut the tables ``res`` holds into per-archive slices (sorted by index, no copy of rows
    that belong to no duplicate component, flagged image or pair)."""
    archives = list(res.run.get("archives", []))
    comps = res.components  # only the images of duplicate components leave the files
    multi = comps.loc[comps["component_size"] > 1, ["index", "component_id"]].compute()
    multi = multi.astype("int64").sort_values("index", kind="stable").reset_index(drop=True)
    comp_of = pd.Series(multi["component_id"].to_numpy(), index=multi["index"].to_numpy())
    sim = res.similarity[["from", "to", "kind", "similarity"]] if plan.duplicates and len(multi) else None
    if sim is not None and len(sim := sim.compute()):
        a = sim["from"].to_numpy(np.int64)
        b = sim["to"].to_numpy(np.int64)
        ca = comp_of.reindex(a).to_numpy()
        cb = comp_of.reindex(b).to_numpy()
        same = ~np.isnan(ca.astype("float64")) & (ca == cb)
        rank = sim["kind"].map(_KIND_RANK).fillna(len(_KIND_RANK)).to_numpy(np.int64)[same]
        s = sim["similarity"].to_numpy(np.float64)[same]
        pairs = pd.DataFrame(
            {"index": np.concatenate([a[same], b[same]]), "kind_rank": np.concatenate([rank, rank]),
             "similarity": np.concatenate([s, s])}
        ).sort_values("index", kind="stable").reset_index(drop=True)  # fmt: skip
    else:
        pairs = pd.DataFrame({"index": pd.Series(dtype="int64"), "kind_rank": pd.Series(dtype="int64"),
                              "similarity": pd.Series(dtype="float64")})  # fmt: skip
    flagged = _flagged(res, plan)
    cs = _slices(multi["index"].to_numpy(), archives)
    ps = _slices(pairs["index"].to_numpy(), archives)
    fs = _slices(flagged["index"].to_numpy(), archives)
    return [
        ArchivePart(
            name=str(a["name"]), url=str(a["url"]), offset=int(a["offset"]), n_valid=int(a["n_valid"]),
            components=multi.iloc[c].reset_index(drop=True),
            pairs=pairs.iloc[p].reset_index(drop=True),
            flagged=flagged.iloc[f].reset_index(drop=True),
        )  # fmt: skip
        for a, c, p, f in zip(archives, cs, ps, fs, strict=True)
    ]


# -- the per-archive tasks ---------------------------------------------------------------------
def _candidates(files: pd.DataFrame, part: ArchivePart, keep: KeepRule) -> pd.DataFrame:
    """The archive's images of multi-image components that may be kept, with their sort keys."""
    valid = files[files["index"].notna()]
    df = part.components.merge(
        valid.drop(columns=["component_id"], errors="ignore").astype({"index": "int64"}),
        on="index", how="inner",
    )  # fmt: skip
    if len(part.flagged):
        df = df[~df["index"].isin(part.flagged["index"])]
    return df.reset_index(drop=True)


def archive_best(files: pd.DataFrame, part: ArchivePart, keep: KeepRule) -> pd.DataFrame:
    """Step 1: the archive's best image per duplicate component (``dd.from_map``-style task).

    Returns ``component_id, _k0, _k1, _k2, index, archive, key, member, filename``.
    """
    df = keep_keys(_candidates(files, part, keep), keep)
    cols = ["component_id", *KEY_COLUMNS, "index", "archive", "key", "member", "filename"]
    return best_per_component(df).loc[:, cols]


def merge_best(*parts: pd.DataFrame) -> pd.DataFrame:
    """Step 2: one kept image per component from the archives' bests, indexed by component."""
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        return parts[0].set_index("component_id") if parts else pd.DataFrame()
    return best_per_component(pd.concat(nonempty, ignore_index=True)).set_index("component_id")


def _members_by_key(keys: pd.Series, members: pd.Series) -> np.ndarray:
    """One list of member names per key, keys in the order they first appear, members in
    row order (an object array, for the ``members`` column).

    Examples
    --------
    >>> _members_by_key(pd.Series(["b", "a", "b"]), pd.Series(["b.jpg", "a.jpg", "b.txt"])).tolist()
    [['b.jpg', 'b.txt'], ['a.jpg']]
    """
    codes, uniques = pd.factorize(keys, sort=False, use_na_sentinel=False)
    at = np.argsort(codes, kind="stable")
    names = members.to_numpy(dtype=object)[at]
    out = np.empty(len(uniques), dtype=object)
    for i, chunk in enumerate(np.split(names, np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1])):
        out[i] = [str(x) for x in chunk]
    return out


def archive_removals(
    files: pd.DataFrame, part: ArchivePart, keepers: pd.DataFrame, plan: RemovalPlan
) -> pd.DataFrame:
    """Step 3: the samples of one archive to remove (columns :data:`REMOVAL_COLUMNS`).

    ``files`` is the archive's rows of ``res.files`` (every image member, valid or not,
    in archive order).
    """
    meta = removals_meta()
    if files.empty:
        return meta
    img = pd.DataFrame(
        {
            "key": files["key"].astype("string").to_numpy(),
            "member": files["member"].astype("string").to_numpy(),
            "index": files["index"].astype("Int64").to_numpy(),
            "error_code": files["error_code"].astype("string").to_numpy(),
        }
    )
    reason = pd.Series(pd.NA, index=img.index, dtype="string")
    valid = img["index"].notna()
    idx = img["index"].fillna(-1).astype("int64")
    if plan.invalid:
        reason[~valid] = "invalid"
    if len(part.flagged):
        flag = pd.Series(part.flagged["reason"].to_numpy(), index=part.flagged["index"].to_numpy())
        got = idx.map(flag)
        reason = reason.fillna(got.astype("string"))
    comp_of = pd.Series(part.components["component_id"].to_numpy(), index=part.components["index"].to_numpy())
    comp = idx.map(comp_of)
    in_multi = comp.notna() & valid
    kept_index = comp.map(keepers["index"]) if len(keepers) else pd.Series(np.nan, index=img.index)
    dup = in_multi & (kept_index != idx)
    if plan.duplicates:
        reason = reason.where(reason.notna() | ~dup, "duplicate")
    img["reason"] = reason
    img["component_id"] = comp.where(in_multi).astype("Int64")
    if len(part.pairs):
        best = part.pairs.sort_values(["index", "kind_rank", "similarity"], ascending=[True, True, False],
                                      kind="stable").drop_duplicates("index").set_index("index")  # fmt: skip
        inv = {v: k for k, v in _KIND_RANK.items()}
        img["kind"] = idx.map(best["kind_rank"]).map(inv).where(in_multi).astype("string")
        img["similarity"] = idx.map(best["similarity"]).where(in_multi).astype("float64")
    else:
        img["kind"] = pd.Series(pd.NA, index=img.index, dtype="string")
        img["similarity"] = np.nan
    if len(keepers):
        img["keep_archive"] = img["component_id"].map(keepers["archive"]).astype("string")
        img["keep_key"] = img["component_id"].map(keepers["key"]).astype("string")
    else:
        img["keep_archive"] = img["keep_key"] = pd.Series(pd.NA, index=img.index, dtype="string")
    # a sample goes when all its images go; its reason is the first of plan.reasons they have
    rank = {r: i for i, r in enumerate(plan.reasons)}
    img["_rank"] = img["reason"].map(rank).astype("float64")
    img["_order"] = np.arange(len(img))
    # (vectorised: a Python function per sample cost ~0.15 CPU ms, 4 s for a 1 GB shard of 28k samples)
    gone = img["reason"].notna().groupby(img["key"], sort=False, dropna=False).transform("all")
    rm = img[gone.to_numpy(dtype=bool)]
    if rm.empty:
        return meta
    first = rm.sort_values(["_rank", "_order"], kind="stable").drop_duplicates("key").set_index("key")
    dup_info = (
        rm[rm["component_id"].notna()].sort_values("_order", kind="stable").drop_duplicates("key").set_index("key")
    )
    order = rm.drop_duplicates("key")["key"]
    out = pd.DataFrame(
        {
            "archive": part.url,
            "key": order.to_numpy(),
            "members": _members_by_key(rm["key"], rm["member"]),
            "reason": first["reason"].reindex(order).to_numpy(),
        }
    )
    for col in ("kind", "similarity", "component_id", "keep_archive", "keep_key"):
        out[col] = dup_info[col].reindex(order).to_numpy()
    return out.astype(meta.dtypes.to_dict()).loc[:, list(REMOVAL_COLUMNS)].reset_index(drop=True)


# -- graphs ------------------------------------------------------------------------------------
def removal_tasks(res: DedupResult, plan: RemovalPlan) -> tuple[list[ArchivePart], list[Any]]:
    """The per-archive slices and one delayed removal table per archive (not computed)."""
    parts = removal_parts(res, plan)
    files = res._collection.archive_files().to_delayed()  # one partition per archive
    if len(files) != len(parts):
        raise ValueError(f"{res.work_dir}: {len(files)} file partitions for {len(parts)} archives")
    best = [dask.delayed(archive_best, pure=True)(f, p, plan.keep) for f, p in zip(files, parts, strict=True)]
    keepers = dask.delayed(merge_best, pure=True)(*best)
    rem = [
        dask.delayed(archive_removals, pure=True)(f, p, keepers, plan)
        for f, p in zip(files, parts, strict=True)
    ]
    return parts, rem


def removals(
    res: DedupResult,
    keep: KeepRule = "largest_resolution",
    *,
    duplicates: bool = True,
    invalid: bool = True,
    outliers: bool = False,
    remove_issues: str | Iterable[str] | None = None,
) -> dd.DataFrame:
    """The samples to remove, one partition per source archive (lazy; see the module doc).

    Parameters
    ----------
    res : DedupResult
        An analysed work_dir (``ddk.load(work_dir)``).
    keep : str or callable
        Which image of each duplicate component stays: ``"largest_resolution"``,
        ``"largest_file"``, ``"first"``, ``"longest_caption"``, or ``keep(row) -> number``
        (higher is better); ties go to the first seen (smallest global index).
    duplicates, invalid : bool
        Remove duplicates / invalid images (both by default).
    outliers : bool
        Remove fastdup's outliers (``outliers.csv``; off by default).
    remove_issues : str or list of str, optional
        Issue types whose images go: ``"low_information,odd_size"``.

    Returns
    -------
    dask.dataframe.DataFrame
        Columns :data:`REMOVAL_COLUMNS`, partition ``i`` = archive ``res.archives[i]``.

    Examples
    --------
    >>> rm = removals(res, keep="longest_caption", remove_issues="low_information")  # doctest: +SKIP
    >>> rm.partitions[0].compute()  # doctest: +SKIP
    """
    import dask.dataframe as dd

    plan = RemovalPlan.make(keep, duplicates=duplicates, invalid=invalid, outliers=outliers,
                            remove_issues=remove_issues)  # fmt: skip
    _, rem = removal_tasks(res, plan)
    if not rem:
        return dd.from_pandas(removals_meta(), npartitions=1)
    return dd.from_delayed(rem, meta=removals_meta(), verify_meta=False)


def compute_on(client: Any, *tasks: Any) -> tuple[Any, ...]:
    """Compute delayed ``tasks`` on ``client`` (a Client, an address, a local scheduler name)
    or, when None, on dask's current scheduler (a distributed Client if one is current)."""
    unlock_expression_properties()  # no hang between this thread and an in-process scheduler's
    if client is None:
        return dask.compute(*tasks)
    if isinstance(client, str) and client in _LOCAL_SCHEDULERS:
        return dask.compute(*tasks, scheduler=client)
    if isinstance(client, str):
        from distributed import Client

        with Client(client) as c:
            return tuple(c.compute(list(tasks), sync=True))
    return tuple(client.compute(list(tasks), sync=True))


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("archive", pa.string()), ("key", pa.string()), ("members", pa.list_(pa.string())),
         ("reason", pa.string()), ("kind", pa.string()), ("similarity", pa.float64()),
         ("component_id", pa.int64()), ("keep_archive", pa.string()), ("keep_key", pa.string())]
    )  # fmt: skip
    table = pa.Table.from_pandas(df.loc[:, list(REMOVAL_COLUMNS)], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)  # plain Arrow types: any Parquet reader, no pandas dtype names
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_one(df: pd.DataFrame, out_dir: str, name: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Write one archive's removal table to ``<out_dir>/<name>.parquet`` (atomically)."""
    from .store import WorkDir

    wd = WorkDir(out_dir, storage_options)
    path = wd.join(f"{name}.parquet")
    wd.write_bytes(path, _parquet_bytes(df))
    counts = df["reason"].value_counts()
    return {"name": name, "archive": df["archive"].iloc[0] if len(df) else None, "path": wd.url_of(path),
            "samples": int(len(df)), "members": int(df["members"].list.len().sum()) if len(df) else 0,
            **{f"removed_{r}": int(n) for r, n in counts.items()}}  # fmt: skip


def write_removals(
    res: DedupResult,
    out_dir: str,
    keep: KeepRule = "largest_resolution",
    *,
    duplicates: bool = True,
    invalid: bool = True,
    outliers: bool = False,
    remove_issues: str | Iterable[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
) -> pd.DataFrame:
    """Write the removal list of every archive as ``<out_dir>/<archive name>.parquet``.

    Each archive's table is computed and written by its own task (nothing per image comes
    back here). Takes the options of :func:`removals`; ``storage_options`` are those of
    ``out_dir`` (default: the run's), ``client`` the scheduler (default: the current one).

    Returns
    -------
    DataFrame
        One row per archive: ``name, archive, path, samples, members, removed_<reason>...``.

    Examples
    --------
    >>> write_removals(ddk.load("work"), "removals/", remove_issues="odd_size")  # doctest: +SKIP
    """
    plan = RemovalPlan.make(keep, duplicates=duplicates, invalid=invalid, outliers=outliers,
                            remove_issues=remove_issues)  # fmt: skip
    from .store import WorkDir

    so = res._collection.work_dir.storage_options if storage_options is None else storage_options
    WorkDir(out_dir, so).makedirs()
    parts, rem = removal_tasks(res, plan)
    writes = [dask.delayed(write_one, pure=False)(r, out_dir, p.name, so) for r, p in zip(rem, parts, strict=True)]
    rows = compute_on(client, *writes)
    out = pd.DataFrame(list(rows))
    reasons = [c for c in out.columns if c.startswith("removed_")]
    out[reasons] = out[reasons].fillna(0).astype("int64")
    return out


def duplicates_table(res: DedupResult, keep: KeepRule = "largest_resolution") -> pd.DataFrame:
    """``res.duplicates_to_remove(keep)``: every image but the kept one of each component.

    The same rule and tie-break as the removal lists; the rows of the images in duplicate
    components are read from ``res.files`` (captions, keys) per archive.
    """
    plan = RemovalPlan.make(keep)
    parts = removal_parts(res, plan)
    files = res._collection.archive_files().to_delayed()  # one partition per archive
    tasks = [dask.delayed(_candidates)(f, p, keep) for f, p in zip(files, parts, strict=True)]
    got = [g for g in dask.compute(*tasks) if len(g)]
    images = pd.concat(got, ignore_index=True) if got else pd.DataFrame({"index": [], "filename": []})
    comps = res.components
    return _duplicates_table(comps[comps["component_size"] > 1].compute(), images, keep)
