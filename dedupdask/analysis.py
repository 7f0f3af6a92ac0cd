"""Analysis stage (run_mode=2): the stages of one build, in order, on the chosen scheduler.

:func:`build` runs them over every done archive of a work_dir and hands the tables to
:mod:`dedupdask.results`, which writes and reads them back:

1. **collect** the done archives (:mod:`dedupdask.collect`);
2. **read_files**: the per-image rows of the archives' Parquet files;
3. **exact_groups**: images with equal bytes / pixels / model inputs
   (:mod:`dedupdask.analyses.exact`, on the workers :mod:`dedupdask.analyses.exact_dask`);
4. **knn**: the embedding graph of one representative per group of equal model inputs
   (:func:`dedupdask.knn_partitioned.knn_graph_work_dir`: one task or partitioned; or, when
   archives were only added since the last build, its kept graph plus a new-vs-all search,
   :mod:`dedupdask.knn_incremental`);
5. **tiers**: candidate pairs of both descriptors, pixel verification, the decision
   (:func:`dedupdask.fusion.run_tiers`);
6. **analyses**: similarity pairs, outliers, components, invalid images, issue labels
   (:mod:`dedupdask.analyses`);
7. **write**: ``results/`` and the fastdup-named CSVs (:func:`dedupdask.results.save_tables`),
   the kNN graphs and verification scores for the next build (``graphs/``), ``run.json`` last;
   then the index (``index/``: appended to, or built).

Two paths run them. On local threads (a work_dir small enough for ``max_client_memory``) the
tables are numpy / pandas data held here (:func:`_in_process`). On a distributed client
(:func:`_on_workers`) every per-image and per-pair table is a Dask DataFrame handed from stage
to stage and written to ``results/`` from the workers: the exact groups'
tables (:func:`dedupdask.analyses.exact_dask.exact_and_input_frames`), the tiers'
:class:`~dedupdask.analyses.tierframes.TierFrames`, then similarity
(:mod:`dedupdask.analyses.pairs_dask`), outliers (:mod:`dedupdask.analyses.outliers_dask`),
components (:mod:`dedupdask.analyses.components_dask`), invalid images, issues
(:mod:`dedupdask.analyses.issues_dask`), names (:mod:`dedupdask.analyses.names_dask`) and the
counts (sums of per-partition counts), the outlier groups of the ``outlier`` issue type
(:mod:`dedupdask.analyses.groups_dask`). The kNN graphs are graph tables
held by the workers (:func:`dedupdask.knn_partitioned.knn_graph_frame_work_dir`, given the
representatives as a Dask Series); this process holds the archives' list, per-partition and
per-bucket records and scalars.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import Any, Literal

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from . import scheduler, whitening
from .analyses import (
    STATS_COLUMNS,
    components_table,
    components_table_dask,
    exact_groups,
    expand_graph,
    find_issues,
    invalid_table,
    nearest_neighbours,
    outliers_table,
    stats_frame,
)
from .analyses.exact_dask import exact_and_input_frames
from .analyses.groups_dask import outlier_about, outlier_frame, outlier_rows
from .analyses.issues import (
    issue_images,
    issues_frame,
    stat_inputs,
)
from .analyses.issues import issues_about as issues_about_of
from .analyses.issues_dask import duplicate_frame, issue_counts, issues_dask
from .analyses.names import OUTLIER_NAMES, PAIR_NAMES, add_names
from .analyses.names_dask import names_frame
from .analyses.outliers_dask import nearest_frame, outliers_frame
from .analyses.pairs_dask import candidates_frame, similarity_frame
from .analyses.routing import partition_sums
from .analyses.stats import invalid_frame
from .analyses.tiers import KINDS, TierParams, candidates_table, expand_pairs, resolve_params
from .analyses.tiers_dask import run_tiers_frames
from .collect import Collection, collect
from .config import RunConfig
from .fusion import has_dct, run_tiers
from .knn import DEFAULT_RANDOM_STATE
from .knn_budget import _n_workers
from .knn_incremental import GraphCache
from .knn_partitioned import knn_graph_frame_work_dir, knn_graph_work_dir
from .results import RUN_JSON, DedupResult, from_tables, save_run, save_tables
from .tables import RESULTS_DIR, table_from_pandas
from .thresholds import issue_overrides, issue_row_for, overrides, resolve, resolve_issues, row_for

__all__ = ["build"]

_FILE_COLS = [
    "filename", "archive", "member", "width", "height", "file_size", "md5", "pixel_md5",
    "input_md5", "mean", "min", "max", "stdv", "blur", "unique", "contrast", "error_code", "error_message",
    "index", "member_offset", "key", "p01", "p99", "chroma", "residual_range", "text_lines",
]  # fmt: skip


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dedupdask")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


class _Stages:
    """Client-side progress over the build stages (silent unless asked) and their timings."""

    NAMES = ("collect", "read_files", "exact_groups", "knn", "tiers", "analyses", "write", "index")

    def __init__(self, progress: bool) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self.NAMES), desc="dedupdask build", unit="stage")

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._t, 3)
        self._t = now
        if self._bar is not None:
            self._bar.set_postfix_str(name)
            self._bar.update(1)

    def close(self, clear: bool = False) -> None:
        if self._bar is not None:
            if clear:
                self._bar.leave = False
            self._bar.close()


def build(
    work_dir: str,
    *,
    config: RunConfig,
    client: Any = None,
    method: Literal["auto", "exact", "pynndescent"] = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    write: bool = True,
    gather: bool = True,
) -> DedupResult:
    """Analyse every done archive of ``work_dir`` (run_mode=2) and write the result files.

    Parameters
    ----------
    work_dir : str
        Local path or URL holding the per-archive outputs of extraction.
    config : RunConfig
        Uses the thresholds (None = the model's row of :data:`dedupdask.thresholds.TABLE`),
        ``nearest_neighbors_k``, ``distance``, ``storage_options``,
        ``progress``.
    client : distributed.Client or str, optional
        Scheduler of every stage (:func:`dedupdask.scheduler.resolve`); default: the current
        call's, or whatever dask would use.
    method : {"auto", "exact", "pynndescent"}
        kNN method; ``"auto"`` picks by ``N**2 * d`` (see :mod:`dedupdask.knn`).
    random_state : int
        pynndescent seed (reruns give the same graph).
    write : bool
        Write the CSV/Parquet files and ``results/run.json``.
    gather : bool
        Without ``write``: bring the tables the workers hold here (True: the cluster may close
        next), or leave them there (False: for a caller that uses them while it is open).

    Returns
    -------
    DedupResult

    Raises
    ------
    FileNotFoundError
        If work_dir has no done archive.
    ValueError
        If archives of different models are mixed.

    Examples
    --------
    >>> from dedupdask.config import RunConfig
    >>> res = build("work", config=RunConfig(run_mode=2, progress=False))  # doctest: +SKIP
    >>> res.similarity.head()  # doctest: +SKIP
    """
    stages = _Stages(config.progress)
    try:
        with scheduler.resolve(client, dashboard_address=config.dashboard_address) as run:
            # a client given here takes every stage; inside ddk.run the call already chose
            where = contextlib.nullcontext() if client is None else run.analysis(None)
            with where:
                result = _build(work_dir, config, method, random_state, write, stages, gather)
    except BaseException:
        stages.close(clear=True)  # the error is what the user reads, not a half bar
        raise
    stages.close()
    return result


def _build(
    work_dir: str,
    config: RunConfig,
    method: str,
    random_state: int,
    write: bool,
    stages: _Stages,
    gather: bool = True,
) -> DedupResult:
    col = collect(work_dir, config.storage_options)
    wd = col.work_dir
    if not col.archives:
        raise FileNotFoundError(
            f"work_dir {wd.url}: no archive is done (no *done.json); "
            f"failed: {col.failed[:5]}, without done.json: {col.missing[:5]}"
        )
    stages.done("collect")
    builds = _builds(col, config, method, write, gather)
    if scheduler.dask_client() is not None and col.n > 0:  # on a distributed client
        return _on_workers(col, config, method, random_state, builds, stages)
    with _one_blas_thread():
        return _in_process(col, config, method, random_state, builds, stages)


def _one_blas_thread() -> Any:
    """One BLAS thread while the analysis runs in this process, as in dask's worker processes
    (their nanny sets ``OPENBLAS_NUM_THREADS=1``): the last bit of a float32 matrix product
    depends on how many BLAS threads share it, and the in-process and distributed builds must
    give the same similarities and neighbours (at 200k images with exact search, 197 of 2,958
    similarity pairs differed in that bit and one outlier's nearest image changed,
    ``benchmarks/scale_build.py --compare``). The stages' blocks run in parallel on Dask's
    threads instead of BLAS's."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _in_process(
    col: Collection, config: RunConfig, method: str, random_state: int, builds: _Builds, stages: _Stages
) -> DedupResult:
    """The stages on plain numpy / pandas data held here (a small work_dir, local threads)."""
    wd = col.work_dir
    files = col.files_frame(_FILE_COLS)
    valid = files[files["index"].notna()].sort_values("index", kind="stable").reset_index(drop=True)
    n = len(valid)
    if n != col.n or not np.array_equal(valid["index"].to_numpy(dtype=np.int64), np.arange(n)):
        raise ValueError(f"work_dir {wd.url}: the Parquet files do not match the done.json counts")
    filenames = valid["filename"].to_numpy(dtype=object)
    stages.done("read_files")

    groups = exact_groups(valid["md5"], valid["pixel_md5"])
    inputs = exact_groups(valid["md5"], valid["pixel_md5"], valid["input_md5"])
    reps = groups.reps
    table = resolve(config, col.model)  # the model's thresholds with the user's overrides
    params = _params(col, config, table)
    stages.done("exact_groups")

    k = params.k
    emb = col.embeddings()
    knn_info: dict[str, Any] = {}
    if reps.size:  # one task, or partitioned past max_memory_per_task (knn_partitioned)
        nbr_idx, nbr_sim, used, knn_info = knn_graph_work_dir(
            col,
            inputs.reps,
            k,
            config=config,
            method=method,
            random_state=random_state,  # type: ignore[arg-type]
            cache=builds.graphs,
            groups=inputs.rep,
        )
        nbr_idx, nbr_sim = expand_graph(groups, inputs, nbr_idx, nbr_sim)
    else:
        nbr_idx = np.empty((0, k), np.int64)
        nbr_sim = np.empty((0, k), np.float32)
        used = "none"
    stages.done("knn")

    tiers = run_tiers(
        col,
        groups,
        reps,
        (nbr_idx, nbr_sim),
        params,
        files,
        embeddings=emb,
        input_groups=inputs,
        method=method,
        random_state=random_state,
        storage_options=config.storage_options,
        max_image_pixels=config.max_image_pixels,
        max_member_bytes=config.max_member_bytes,
        knn_config=config,
        graph_cache=builds.graphs,
    )
    stages.done("tiers")

    similarity = expand_pairs(groups, tiers.accepted, filenames)
    nearest, nearest_sim = nearest_neighbours(groups, reps, nbr_idx, nbr_sim)
    outliers = outliers_table(nearest, nearest_sim, table.lower_threshold, filenames)
    similarity = builds.pairs(add_names(similarity, valid, PAIR_NAMES))  # names; the build of each pair
    outliers = add_names(outliers, valid, OUTLIER_NAMES)
    components = components_table(
        groups, reps, nbr_idx, nbr_sim, params.ccthreshold, edges=tiers.edges
    )
    stats = valid.loc[:, list(STATS_COLUMNS)].reset_index(drop=True)
    invalid = invalid_table(files)
    issue_t = resolve_issues(config, col.model)  # the model's issue cut-offs with the user's
    issues, issues_about = find_issues(
        col, files, groups, reps, (nbr_idx, nbr_sim), similarity, issue_t,
        valid.set_index(valid["index"].astype("int64")).loc[:, ["filename", "archive", "member", "key"]],
    )  # fmt: skip
    stages.done("analyses")

    counts = _counts(
        n, invalid=len(invalid), exact_groups=groups.n_groups(2), representatives=reps.size,
        knn_representatives=inputs.reps.size, similar_pairs=len(similarity),
        kinds=_kind_counts(similarity), tiers=tiers.counts, outliers=len(outliers), issues=len(issues),
        components=_component_sums(components), issue_images=issue_images(issues),
    )  # fmt: skip
    run = _record(
        col, config, params, table, issue_t, issues_about, used, random_state, knn_info,
        tiers.dct_knn, tiers.verification, tiers.whitening, counts, "this process", stages,
    )  # fmt: skip
    candidates = candidates_table(tiers.decided, valid)
    tables = dict(similarity=similarity, outliers=outliers, components=components, stats=stats,
                  invalid=invalid, issues=issues, candidates=candidates)  # fmt: skip
    return _write(col, tables, run, config, builds, stages)


def _on_workers(
    col: Collection, config: RunConfig, method: str, random_state: int, builds: _Builds, stages: _Stages
) -> DedupResult:
    """The stages on a distributed client: every per-image and per-pair table is a Dask
    DataFrame on the workers, handed from stage to stage and written from there; this process
    holds the archives' list, scalars, and what the adapters below still gather."""
    n = col.n
    if config.images_per_partition is None:  # up to the default, and enough for every thread
        col = col.spread(_n_workers())
    else:
        col = replace(col, images_per_partition=config.images_per_partition)
    files = col.files()  # consecutive archives per partition; read_archive_files checks each against done.json
    names = names_frame(col)
    stages.done("read_files")

    exact, inputs = exact_and_input_frames(files, n)  # the hashes never leave the workers
    table = resolve(config, col.model)
    params = _params(col, config, table)
    n_reps, n_groups = partition_sums(exact, _group_sums)
    n_input_reps, _ = partition_sums(inputs, _group_sums)
    stages.done("exact_groups")

    emb_graph, used, knn_info = knn_graph_frame_work_dir(  # a graph table held by the workers
        col, _reps(inputs), params.k, config=config, method=method, random_state=random_state,  # type: ignore[arg-type]
        cache=builds.graphs, groups=inputs[["index", "rep"]],
    )  # fmt: skip
    stages.done("knn")

    tiers = run_tiers_frames(
        col, files, exact, inputs, emb_graph, params, method=method, random_state=random_state,
        storage_options=config.storage_options, max_image_pixels=config.max_image_pixels,
        max_member_bytes=config.max_member_bytes, knn_config=config, graph_cache=builds.graphs,
    )  # fmt: skip
    stages.done("tiers")

    divisions = tuple(int(d) for d in exact.divisions)
    similarity = builds.pairs(similarity_frame(exact, tiers.decided, names)).persist()
    nearest = nearest_frame(exact, tiers.graph).persist()  # lowest_fraction reads it four times
    outliers = outliers_frame(nearest, table.lower_threshold, n, names)
    links = exact[exact["rep"] != exact["index"]]
    links = links.assign(**{"from": links["index"], "to": links["rep"]})[["from", "to"]]
    components = components_table_dask(dd.concat([tiers.edges[["from", "to"]], links]), n).table
    stats = stats_frame(files)
    invalid = invalid_frame(files)
    issue_t = resolve_issues(config, col.model)
    ref, miss = stat_inputs(col)
    og, searched, unsearched = outlier_frame(
        col, exact, tiers.graph, names, n, params.k, link=issue_t.outlier_link,
        max_size=issue_t.outlier_group_size, below=issue_t.outlier, search=issue_t.outlier is not None,
        max_searched=issue_t.outlier_search_members,
    )  # fmt: skip
    issues = issues_dask(
        issues_frame(files, issue_t.cutoffs(), ref),
        [
            duplicate_frame(similarity, divisions),
            outlier_rows(og, issue_t.outlier, issue_t.outlier_group_size),
        ],
        names,
    )
    outliers, issues = dask.persist(outliers, issues)
    kinds = partition_sums(similarity[["kind"]], _kind_counts)
    n_sim, n_out, n_invalid, n_issues = (
        int(partition_sums(t, _rows)[0]) for t in (similarity, outliers, invalid, issues)
    )
    comp = partition_sums(components, _component_sums)
    per_type, n_issue_images = issue_counts(issues, divisions)
    og_about = outlier_about(og, issue_t.outlier_group_size, searched, unsearched)
    issues_about = issues_about_of(n, ref, miss, og_about, issue_t, per_type)
    stages.done("analyses")

    counts = _counts(
        n, invalid=n_invalid, exact_groups=n_groups, representatives=n_reps,
        knn_representatives=n_input_reps, similar_pairs=n_sim, kinds=kinds, tiers=tiers.counts,
        outliers=n_out, issues=n_issues, components=comp, issue_images=n_issue_images,
    )  # fmt: skip
    run = _record(
        col, config, params, table, issue_t, issues_about, used, random_state, knn_info,
        tiers.dct_knn, tiers.verification, tiers.whitening, counts, "workers", stages,
    )  # fmt: skip
    candidates = candidates_frame(tiers.decided, names)
    tables = dict(similarity=similarity, outliers=outliers, components=components, stats=stats,
                  invalid=invalid, issues=issues, candidates=candidates)  # fmt: skip
    return _write(col, tables, run, config, builds, stages)


# -- shared by both paths -----------------------------------------------------------------------
class _Builds:
    """Which build this is, the build each archive first took part in, and the kNN graphs kept
    for the next build (:mod:`dedupdask.knn_incremental`; None when nothing is written)."""

    def __init__(
        self, build: int, archives: dict[str, int], urls: dict[str, int], graphs: GraphCache | None,
        write: bool, gather: bool,
    ) -> None:  # fmt: skip
        self.build = build
        self.archives = archives  # by name (run.json)
        self.urls = urls  # by url (the archive column of the tables)
        self.graphs = graphs
        self.write = write
        self.gather = gather

    def pairs(self, similarity: Any) -> Any:
        """``similarity`` with ``build``: the first build that held both images of a pair (the
        build that found it: a pair of two older images is never new, see the module)."""
        if isinstance(similarity, dd.DataFrame):
            meta = similarity._meta.assign(build=np.int32(0))
            return similarity.map_partitions(_pair_builds, self.urls, meta=meta)
        return _pair_builds(similarity, self.urls)


def _pair_builds(part: pd.DataFrame, archives: dict[str, int]) -> pd.DataFrame:
    def of(col: str) -> np.ndarray:
        return part[col].astype(object).map(archives).fillna(0).to_numpy(np.int32)

    if not len(part):
        return part.assign(build=np.zeros(0, np.int32))
    return part.assign(build=np.maximum(of("archive_from"), of("archive_to")))


def _builds(col: Collection, config: RunConfig, method: str, write: bool, gather: bool) -> _Builds:
    """This build's number (the last one's plus one; a run written before builds were numbered
    was build 1) and each archive's first build; an archive that changed since is new again."""
    from .knn_incremental import archive_identity

    wd = col.work_dir
    try:
        last = wd.read_json(wd.join(RESULTS_DIR, RUN_JSON))
    except Exception:  # noqa: BLE001 - no previous build (or an unreadable one): build 1
        last = None
    last = last if isinstance(last, dict) else None
    build = int(last.get("build", 1)) + 1 if last else 1
    before = {}
    first = (last or {}).get("archive_builds") or {}
    for a in (last or {}).get("archives", []):
        with contextlib.suppress(Exception):
            before[a["name"]] = (archive_identity(a), int(first.get(a["name"], build - 1)))
    archives = {}
    for a in col.archives:
        seen = before.get(a.name)
        archives[a.name] = seen[1] if seen and seen[0] == archive_identity(a.to_dict()) else build
    graphs = None
    if write:
        options = {"method": method, "distance": config.distance, "d_reduce": config.d_reduce,
                   "knn_dtype": config.knn_dtype}  # fmt: skip
        graphs = GraphCache(col, build=build, reuse=getattr(config, "incremental", True), options=options)
    urls = {a.url: archives[a.name] for a in col.archives}
    return _Builds(build, archives, urls, graphs, write, gather)


def _reps(groups: dd.DataFrame) -> dd.Series:
    """The representatives of a group table (``index`` equal to ``rep``), left on the workers."""
    return groups[groups["index"] == groups["rep"]]["index"]


def _params(col: Collection, config: RunConfig, table: Any) -> TierParams:
    return resolve_params(
        table,
        has_dct=has_dct(col),
        verify=config.verify,
        nearest_neighbors_k=config.nearest_neighbors_k,
        keypoints=config.verify_keypoints,
        whiten=col.n >= whitening.MIN_IMAGES,
    )


def _why_not_whitened(col: Collection, params: TierParams, table: Any) -> str:
    """Why a run has no whitened graph (``run.json["whitening"]``), read from what
    :func:`_params` decided."""
    if not params.verify:
        return "verify=False"
    if table.whitened_threshold is None:
        return "the model has no whitened_threshold"
    if params.whitened_threshold is None:  # _params: too few images to whiten
        return f"{col.n} images < {whitening.MIN_IMAGES}: candidates by verify_threshold"
    return "at most one distinct image: no pair to search"


def _record(
    col: Collection,
    config: RunConfig,
    params: TierParams,
    table: Any,
    issue_t: Any,
    issues_about: dict[str, Any],
    used: str,
    random_state: int,
    knn_info: dict[str, Any],
    dct_knn: dict[str, Any],
    verification: dict[str, Any],
    white: dict[str, Any],
    counts: dict[str, int],
    where: str,
    stages: _Stages,
) -> dict[str, Any]:
    """``results/run.json`` of a run (its tables and CSVs are added when written)."""
    return {
        "dedupdask_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "work_dir": col.work_dir.url,
        "parameters": {
            "threshold": params.threshold,
            "ccthreshold": params.ccthreshold,
            "copy_threshold": params.copy_threshold,
            "verify_threshold": params.verify_threshold,
            "whitened_threshold": params.whitened_threshold,
            "whitened_margin": params.whitened_margin,
            "verify_score": params.verify_score,
            "verify": params.verify,
            "early_accept": params.early_accept,
            "lower_threshold": table.lower_threshold,
            "nearest_neighbors_k": config.nearest_neighbors_k,
            "knn_k": params.k,
            "distance": config.distance,
            "knn_method": used,
            "random_state": random_state,
            "max_memory_per_task": config.max_memory_per_task,
            "max_client_memory": config.max_client_memory,
            "d_reduce": config.d_reduce,
            "knn_dtype": config.knn_dtype,
            "write_csv": config.write_csv,
        },
        "thresholds": {  # the table every stage read: the model's row, what the user set, the result
            "model_id": col.model.get("model_id"),
            "table": row_for(col.model.get("model_id"), col.model).to_dict(),
            "set_by_user": overrides(config),
            "resolved": table.to_dict(),
            "mode": {"copy_tier": params.copy_threshold is not None, "verify": params.verify},
        },
        "issues": {  # the issue cut-offs: the model's row, what the user set, the result; counts
            "table": issue_row_for(col.model.get("model_id")).to_dict(),
            "set_by_user": issue_overrides(config),
            "resolved": issue_t.to_dict(),
            **issues_about,
        },
        "analysed_on": where,
        "knn": knn_info,
        "knn_dct": dct_knn,
        "whitening": white or {"used": False, "reason": _why_not_whitened(col, params, table)},
        "model": col.model,
        "decode_version": col.decode_version,
        "archives": [a.to_dict() for a in col.archives],
        "failed": col.failed,
        "missing": col.missing,
        "counts": counts,
        "verification": verification,
        "timings": stages.timings,
    }


def _write(
    col: Collection,
    tables: dict[str, Any],
    run: dict[str, Any],
    config: RunConfig,
    builds: _Builds,
    stages: _Stages,
) -> DedupResult:
    """Write the tables (from where they live), the CSVs and ``run.json``; the result."""
    wd = col.work_dir
    run["build"] = builds.build
    run["archive_builds"] = builds.archives  # the first build each archive took part in
    if builds.write:  # the result reads back what was written, as load does
        lazy = save_tables(wd, tables, run, write_csv=config.write_csv)
        run["graphs"] = builds.graphs.save() if builds.graphs is not None else {}
        stages.done("write")
        run["timings"] = dict(stages.timings)
        save_run(wd, run)
        if getattr(config, "index", False):  # after run.json: an index names the run it covers
            from .vector_index import build_index, update_index

            # appended to when archives were only added (incremental), else built anew
            write_index = update_index if getattr(config, "incremental", True) else build_index
            write_index(col, max_memory_per_task=config.max_memory_per_task)
        stages.done("index")
    elif builds.gather:
        # nothing written: a table on the workers comes here (their cluster may close next)
        lazy = {name: table_from_pandas(_gathered(df)) for name, df in tables.items()}
    else:  # left where they are (pandas ones as Dask frames)
        lazy = {name: df if isinstance(df, dd.DataFrame) else table_from_pandas(df) for name, df in tables.items()}
    return from_tables(col, lazy, run)


def _gathered(df: pd.DataFrame | dd.DataFrame) -> pd.DataFrame:
    if not isinstance(df, dd.DataFrame):
        return df
    (out,) = scheduler.gather_frames(df)
    return out.reset_index(drop=True)


def _counts(
    n: int,
    *,
    invalid: int,
    exact_groups: int,
    representatives: int,
    knn_representatives: int,
    similar_pairs: int,
    kinds: Any,
    tiers: dict[str, int],
    outliers: int,
    issues: int,
    components: Any,
    issue_images: int,
) -> dict[str, int]:
    """``run.json["counts"]`` of either path, in one order: ``kinds`` are the pairs per kind of
    :data:`KINDS` (:func:`_kind_counts`), ``components`` the three sums of
    :func:`_component_sums` (components, those of more than one image, removable images)."""
    c, d, r = (int(x) for x in components)
    return {
        "images": int(n),
        "invalid": int(invalid),
        "exact_groups": int(exact_groups),
        "representatives": int(representatives),
        "knn_representatives": int(knn_representatives),
        "similar_pairs": int(similar_pairs),
        **{f"{kind}_pairs": int(k) for kind, k in zip(KINDS, kinds, strict=True)},
        **tiers,
        "outliers": int(outliers),
        "issues": int(issues),
        "components": c,
        "duplicate_components": d,
        "removable": r,
        "issue_images": int(issue_images),
    }


def _component_sums(components: pd.DataFrame) -> np.ndarray:
    """Of one partition: the component roots (a component's smallest index), those of more
    than one image, and the images beyond the first of those."""
    size = components["component_size"].to_numpy(dtype=np.int64)
    root = components["index"].to_numpy(dtype=np.int64) == components["component_id"].to_numpy(
        dtype=np.int64
    )
    multi = root & (size > 1)
    return np.array([root.sum(), multi.sum(), (size[multi] - 1).sum()], dtype=np.int64)


def _group_sums(exact: pd.DataFrame) -> np.ndarray:
    """Of one partition of an exact table: the representatives, and those of groups of more
    than one image."""
    rep = exact["rep"].to_numpy(dtype=np.int64) == exact["index"].to_numpy(dtype=np.int64)
    return np.array([rep.sum(), (rep & (exact["group_size"].to_numpy() > 1)).sum()], dtype=np.int64)


def _kind_counts(df: pd.DataFrame) -> np.ndarray:
    return np.array([int((df["kind"] == k).sum()) for k in KINDS], dtype=np.int64)


def _rows(df: pd.DataFrame) -> np.ndarray:
    return np.array([len(df)], dtype=np.int64)
