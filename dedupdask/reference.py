"""Reference stage: a query work_dir against a reference work_dir (train/test leakage).

"Which of my evaluation images (or this new crawl) already appear in my training shards?"
Only cross-set pairs matter, and the reference is large; it is only read (it may be on S3 and
shared). The stages, all on the current scheduler, none holding a per-image array here:

1. **open** the reference: its finished run (``results/run.json``), its index
   (:mod:`dedupdask.vector_index`), and checks -- same model, same decode version, an index of this
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

Stages 2-3 are :mod:`dedupdask.reference_search`, 4-5 :mod:`dedupdask.reference_pairs`; this
module opens the reference, writes the tables and holds the result.

The DCT graph of a normal run is not searched across the sets: a cross pair is a candidate
when its embedding cosine reaches the candidate cut (``verify_threshold``, 0.65 for the default
model), and its DCT cosine is then read. Query-internal duplicates (``query_duplicates=True``)
come from a normal analysis of the query work_dir, written as ``query_similarity.csv`` and
``results/query_similarity/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import numpy as np
import pandas as pd

from .analyses.routing import route, shuffle_method
from .analyses.tiers import KINDS, candidate_cut, resolve_params
from .collect import Collection, collect
from .fusion import has_dct
from .knn_budget import _n_workers
from .reference_pairs import attach_side, decide_pairs, verify_cross
from .reference_search import cross_candidates
from .store import WorkDir, WorkDirError
from .tables import RESULTS_DIR, write_partitions, write_table
from .vector_index import ReferenceIndex, open_index

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

_I64 = np.int64


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
    dct = index.meta.get("dct")  # recorded by the index: no listing of the reference per query
    return Reference(col, index, run, dct=has_dct(col) if dct is None else bool(dct))


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


def _distances(df: pd.DataFrame) -> pd.DataFrame:
    """fastdup's ``from,to,distance`` rows of cross pairs (one direction: query to reference)."""
    return pd.DataFrame({"from": df["from"].to_numpy(_I64), "to": df["to"].to_numpy(_I64),
                         "distance": df["similarity"].to_numpy(np.float32)})  # fmt: skip


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
    # dask's implicit shuffles (unique, groupby) pick p2p whenever a default Client exists; the
    # query may run on local threads beside one: the method of the scheduler that runs it
    with dask.config.set({"dataframe.shuffle.method": shuffle_method()}):
        return _query(work_dir, config)


def _query(work_dir: str, config: Any) -> ReferenceResult:
    from .analysis import _version
    from .results import RUN_JSON
    from .thresholds import resolve

    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    qcol = collect(work_dir, config.storage_options)
    if not qcol.archives:
        raise FileNotFoundError(f"query work_dir {qcol.work_dir.url}: no archive is done (no *done.json)")
    rso = config.reference_options
    ref = open_reference(config.reference, rso, qcol)
    wd = qcol.work_dir
    if wd.url == ref.col.work_dir.url:
        raise ValueError(f"the query work_dir and the reference are the same folder: {wd.url}")
    table = resolve(config, qcol.model)
    params = resolve_params(table, has_dct=ref.dct and has_dct(qcol), verify=config.verify,
                            nearest_neighbors_k=config.nearest_neighbors_k, keypoints=config.verify_keypoints)  # fmt: skip
    lap("open")

    cands, search_info = cross_candidates(qcol, ref.index, params.k, candidate_cut(params))
    lap("search")
    dct = params.copy_threshold is not None
    pairs = attach_side(cands, qcol, "from", "carry" if dct else None)
    pairs = attach_side(pairs, ref.col, "to", "cosine" if dct else None)
    if not dct:
        pairs = pairs.assign(copy_similarity=np.float32(np.nan))
    decided = decide_pairs(pairs, params)
    n_cands = int(len(decided))
    lap("attach")

    limits = (int(config.max_image_pixels), int(config.max_member_bytes))
    decided, vcost = verify_cross(decided, params, config.storage_options or {}, rso, limits)
    n_verify = int(vcost["pairs"])
    lap("verify")

    final = decided.map_partitions(_final, meta=_final_meta())
    final = route(final.assign(_q=final["from"]), "_q", _query_cuts(qcol)).reset_index(drop=True).persist()
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
    if config.query_duplicates:
        tables["query_similarity"] = write_partitions(wd, "query_similarity", _query_duplicates(work_dir, config))
    from .csvs import both_directions, sorted_pairs, write_csv_frames
    from .tables import open_table

    similarity = open_table(wd, "cross_similarity", tables["cross_similarity"], required=("from", "to"),
                            columns=list(CROSS_COLUMNS), version=run["created"])  # fmt: skip
    query_sim = None
    if "query_similarity" in tables:
        query_sim = open_table(wd, "query_similarity", tables["query_similarity"], required=("from", "to"),
                               version=run["created"])  # fmt: skip
    csv = {}
    if config.write_csv:
        import dask.dataframe as dd

        frames = {
            "similarity.csv": (sorted_pairs(similarity.map_partitions(_distances, meta=_distances(similarity._meta))), False),
            "contamination.csv": (dd.from_pandas(summary, npartitions=1), False),
            "atrain_features.dat.csv": (_index_csv(qcol), False),
        }  # fmt: skip
        if query_sim is not None:  # fastdup lists an input's own pairs both ways
            both = query_sim.map_partitions(both_directions, meta=both_directions(query_sim._meta))
            frames["query_similarity.csv"] = (sorted_pairs(both), False)
        csv = write_csv_frames(wd, frames)
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
    return ReferenceResult(similarity, summary, query_sim, run, wd.url)


def _query_cuts(qcol: Collection) -> list[int]:
    n_ranges = max(1, min(qcol.n, 2 * _n_workers()))
    return np.unique(np.linspace(0, max(1, qcol.n), n_ranges + 1).astype(_I64)).tolist()


def _index_csv(qcol: Collection) -> Any:
    files = qcol.files()[["index", "filename"]]
    files = files[~files["index"].isna()]
    return files.astype({"index": "int64"})


def _query_duplicates(work_dir: str, config: Any) -> Any:
    """The query's own duplicate pairs: a normal analysis of its work_dir, nothing written; on a
    cluster the pairs stay on the workers until the caller writes them."""
    from .analysis import build

    cfg = replace(config, reference=None, query_duplicates=False, progress=False)
    res = build(work_dir, config=cfg, write=False, gather=False)
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

