"""Results stage: run the analyses over a work_dir, write fastdup-named files, load them back.

:func:`build` is run_mode=2: it loads every done archive (:mod:`dedupdask.collect`), groups
exact duplicates, builds the kNN graph of one representative per group of equal model
inputs (:mod:`dedupdask.knn`, :func:`dedupdask.analyses.exact.expand_graph`), derives the tables (:mod:`dedupdask.analyses`) and writes

====================================  =========================================================
``results/<table>/part.<i>.parquet``  every table (similarity, outliers, components, stats,
                                      invalid, issues), one file per partition of at most
                                      :data:`dedupdask.tables.ROWS_PER_PART` rows
                                      (:mod:`dedupdask.tables`)
``atrain_features.dat.csv``           ``index,filename``: the global index 0..N-1 (sorted archives)
``similarity.csv``                    ``from,to,distance`` (distance = embedding cosine), both
                                      directions, the fused pairs of every tier, sorted descending
``outliers.csv``                      ``from,to,distance``: image, nearest image, similarity; the
                                      strongest outliers last (fastdup's order)
``connected_components.csv``          ``__id,component_id,component_size`` (sizes count images)
``atrain_stats.csv``                  fastdup's stats columns, properly quoted
``atrain_features.bad.csv``           ``index,filename,error_code,filesize`` of every invalid image
``image_issues.csv``                  ``index,filename,archive,member,key,issue,score,other,group``:
                                      one row per image and issue (:mod:`dedupdask.analyses.issues`)
``results/run.json``                  parameters, model, archives with offsets, counts, timings,
                                      the tables' layout (``"tables"``: rows per partition) and the
                                      CSVs written (``"csv"``)
====================================  =========================================================

The CSVs are written from the Parquet tables partition by partition (:mod:`dedupdask.csvs`;
``write_csv=False`` skips them), all through :class:`~dedupdask.store.WorkDir` (atomic
writes), ``run.json`` last. The returned :class:`DedupResult` reads the tables back from
``results/`` exactly as :func:`load` does.
:func:`load` rebuilds the :class:`DedupResult` from those files without recomputing.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd

from . import scheduler
from .analyses import (
    COMPONENT_COLUMNS,
    INVALID_COLUMNS,
    ISSUE_COLUMNS,
    OUTLIER_COLUMNS,
    SIMILARITY_COLUMNS,
    STATS_COLUMNS,
    components_table,
    exact_groups,
    expand_graph,
    find_issues,
    invalid_table,
    nearest_neighbours,
    outliers_table,
    stats_frame,
)
from .analyses.components_dask import components_frame_of_groups
from .analyses.exact_dask import exact_and_input_groups
from .analyses.issues import empty_issues, scores_frame, summary_counts
from .analyses.names import OUTLIER_NAMES, PAIR_NAMES, add_names, named_columns
from .analyses.tiers import expand_pairs, resolve_params
from .collect import ArchiveInfo, Collection, collect
from .config import RunConfig
from .csvs import CSV_FILES, write_csvs
from .fusion import has_dct, run_tiers
from .knn import DEFAULT_RANDOM_STATE
from .knn_partitioned import knn_graph_work_dir
from .store import WorkDir, WorkDirError
from .tables import REBUILD as _REBUILD
from .tables import open_table, table_from_pandas, write_partitions, write_table
from .thresholds import issue_overrides, issue_row_for, overrides, resolve, resolve_issues, row_for

__all__ = [
    "DedupResult",
    "build",
    "load",
    "RESULTS_DIR",
    "RUN_JSON",
]

RESULTS_DIR = "results"
RUN_JSON = "run.json"
TABLES = ("similarity", "outliers", "components", "stats", "invalid")
_FILE_COLS = [
    "filename", "archive", "member", "width", "height", "file_size", "md5", "pixel_md5",
    "input_md5", "mean", "min", "max", "stdv", "blur", "unique", "contrast", "error_code", "error_message",
    "index", "member_offset", "key", "p01", "p99", "chroma", "residual_range", "text_lines",
]  # fmt: skip
_HASHES = ("md5", "pixel_md5", "input_md5")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dedupdask")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


class DedupResult:
    """Everything run_mode=2 found in one work_dir.

    Every per-image and per-pair table is a dask DataFrame, whatever the size of the run:
    partition ``i`` is the file ``results/<table>/part.<i>.parquet``, read when computed
    (``head()`` reads the first file only; ``compute()`` gives pandas), and row ``r`` has
    index ``r``. :meth:`summary` reads the counts ``results/run.json`` recorded.

    Attributes
    ----------
    similarity : dask.dataframe.DataFrame
        ``from, to, similarity, copy_similarity, kind, verify_score, filename_from,
        filename_to, archive_from, member_from, key_from, archive_to, member_to, key_to``;
        each unordered pair once with ``from < to`` and its strongest ``kind``
        (``exact``, ``copy``, ``near``: :mod:`dedupdask.analyses.tiers`); sorted by (embedding)
        similarity descending.
    outliers : dask.dataframe.DataFrame
        ``index, nearest, similarity, filename, filename_nearest, archive, member, key,
        archive_nearest, member_nearest, key_nearest``, least similar first.
    components : dask.dataframe.DataFrame
        ``index, component_id, component_size`` for every valid image (singletons: size 1).
    invalid : dask.dataframe.DataFrame
        ``filename, archive, member, key, error_code, error_message, file_size``.
    issues : dask.dataframe.DataFrame
        ``index, filename, archive, member, key, issue, score, other, group``: one row per
        image and issue type (``dark``, ``light``, ``blurry``, ``low_information``,
        ``odd_aspect_ratio``, ``odd_size``, ``grayscale``, ``outlier``, ``<kind>_duplicate``),
        score in [0, 1] (lower = worse), ``other`` = the pair's other image (duplicates) or the
        nearest image outside the group (outliers), ``group`` = the outlier group's smallest
        index (:mod:`dedupdask.analyses.issues`).
    params : dict
        The parameters used (thresholds resolved, kNN method).
    run : dict
        The contents of ``results/run.json``.
    archives : list of str
        Done archives used, in global-index order.
    failed, missing : list of str
        Archives not used: ``failed.json`` present / no ``done.json``.

    Examples
    --------
    >>> res = build("work", config=RunConfig(run_mode=2))  # doctest: +SKIP
    >>> res.summary()["duplicate_groups"]  # doctest: +SKIP
    12
    >>> res.similarity.head()  # doctest: +SKIP
    >>> pairs = res.similarity[res.similarity["kind"] == "near"].compute()  # doctest: +SKIP
    """

    def __init__(
        self,
        collection: Collection,
        *,
        similarity: dd.DataFrame,
        outliers: dd.DataFrame,
        components: dd.DataFrame,
        invalid: dd.DataFrame,
        run: dict[str, Any],
        issues: dd.DataFrame | None = None,
    ) -> None:
        self._collection = collection
        self.similarity = similarity
        self.outliers = outliers
        self.components = components
        self.invalid = invalid
        self.issues = issues if issues is not None else table_from_pandas(empty_issues())
        self.run = run
        self.params = dict(run.get("parameters", {}))
        self._files: dd.DataFrame | None = None

    # -- lazy views of the per-archive files --------------------------------------------------
    @property
    def work_dir(self) -> str:
        return self._collection.work_dir.url

    @property
    def archives(self) -> list[str]:
        return [a.name for a in self._collection.archives]

    @property
    def failed(self) -> list[str]:
        return list(self.run.get("failed", self._collection.failed))

    @property
    def missing(self) -> list[str]:
        return list(self.run.get("missing", self._collection.missing))

    @property
    def files(self) -> dd.DataFrame:
        """Every image member (valid or not), one partition per archive, global ``index``."""
        if self._files is None:
            self._files = self._collection.files()
        return self._files

    @property
    def stats(self) -> dd.DataFrame:
        """Statistics of the valid images (``STATS_COLUMNS``), one partition per archive."""
        return stats_frame(self.files)

    @property
    def issue_scores(self) -> dd.DataFrame:
        """Every valid image's score per statistics issue type, one partition per archive.

        Columns ``index, dark, light, blurry, low_information, odd_aspect_ratio, odd_size,
        grayscale`` (NaN where a work_dir predates a statistic); ``res.issues`` holds the rows
        below the cut-offs. Nothing is computed until asked.

        Examples
        --------
        >>> res.issue_scores.nsmallest(10, "low_information").compute()  # doctest: +SKIP
        """
        ref = (self.run.get("issues") or {}).get("size_reference")
        return scores_frame(self.files, float("nan") if ref is None else float(ref))

    @property
    def embeddings(self) -> da.Array:
        """float32 ``[N, d]`` vectors in global-index order (memmapped ``.dat`` files)."""
        return self._collection.embeddings()

    # -- derived tables --------------------------------------------------------------------------
    def duplicates_to_remove(self, keep: Any = "largest_resolution") -> pd.DataFrame:
        """Images to delete so one image per component remains.

        Parameters
        ----------
        keep : str or callable
            Which image of each component is kept: ``"largest_resolution"``,
            ``"largest_file"``, ``"first"``, ``"longest_caption"`` or ``keep(row) -> number``
            (:mod:`dedupdask.analyses.keep`; ties: smallest index). The rule of
            :meth:`removals`.

        Returns
        -------
        DataFrame
            ``index, filename, archive, member, key, component_id, keeper_index,
            keeper_filename``.

        Examples
        --------
        >>> res.duplicates_to_remove(keep="first").head()  # doctest: +SKIP
        """
        from .removals import duplicates_table

        return duplicates_table(self, keep)

    def removals(self, keep: Any = "largest_resolution", **options: Any) -> dd.DataFrame:
        """The webdataset samples to remove, one partition per source archive (lazy).

        See :func:`dedupdask.removals.removals` for ``keep`` and the options
        (``duplicates``, ``invalid``, ``outliers``, ``remove_issues``).

        Examples
        --------
        >>> res.removals(keep="longest_caption", remove_issues="odd_size").partitions[0].compute()  # doctest: +SKIP
        """
        from .removals import removals

        return removals(self, keep, **options)

    def write_removals(self, out_dir: str, keep: Any = "largest_resolution", **options: Any) -> pd.DataFrame:
        """Write :meth:`removals` as ``<out_dir>/<archive name>.parquet``, one task per archive.

        See :func:`dedupdask.removals.write_removals`.

        Examples
        --------
        >>> res.write_removals("removals/", keep="first")  # doctest: +SKIP
        """
        from .removals import write_removals

        return write_removals(self, out_dir, keep, **options)

    def summary(self) -> dict[str, Any]:
        """Headline counts.

        Examples
        --------
        >>> res.summary()  # doctest: +SKIP
        {'images': 3000, 'invalid': 4, 'duplicate_groups': 25, 'removable': 31, ...}
        """
        counts = self.run.get("counts", {})

        def count(key: str, compute: Any) -> int:  # run.json's count; a scan for older runs
            return int(counts[key]) if key in counts else int(compute())

        ver = self.run.get("verification") or {}
        issues = (self.run.get("issues") or {}).get("counts")
        return {
            "images": count("images", lambda: len(self.components)),
            "invalid": count("invalid", lambda: len(self.invalid)),
            "similar_pairs": count("similar_pairs", lambda: len(self.similarity)),
            "exact_pairs": count("exact_pairs", lambda: (self.similarity["kind"] == "exact").sum().compute()),
            "copy_pairs": count("copy_pairs", lambda: (self.similarity["kind"] == "copy").sum().compute()),
            "near_pairs": count("near_pairs", lambda: (self.similarity["kind"] == "near").sum().compute()),
            "verify_candidates": int(ver.get("candidates", 0)),
            "verify_accepted": int(ver.get("accepted", 0)),
            "verify_seconds_per_pair": float(ver.get("seconds_per_pair", 0.0)),
            "exact_duplicate_groups": int(counts.get("exact_groups", 0)),
            "duplicate_groups": count("duplicate_components", lambda: len(self._multi_sizes())),
            "removable": count("removable", lambda: (self._multi_sizes() - 1).sum()),
            "outliers": count("outliers", lambda: len(self.outliers)),
            "issue_images": count("issue_images", lambda: _issue_images(self.issues.compute())),
            "issues": dict(issues) if issues is not None else summary_counts(self.issues.compute()),
            "issues_not_reported": dict((self.run.get("issues") or {}).get("not_reported", {})),
            "archives_done": len(self.archives),
            "archives_failed": len(self.failed),
            "archives_missing": len(self.missing),
        }

    def _multi_sizes(self) -> pd.Series:
        """Sizes of the components of more than one image (scanned for runs without counts)."""
        comp = self.components[self.components["component_size"] > 1]
        return comp.drop_duplicates("component_id")["component_size"].compute()

    def galleries(
        self,
        save_path: str,
        *,
        num_images: int = 20,
        metrics: tuple[str, ...] | list[str] = ("blur", "dark", "bright", "size"),
        issues: tuple[str, ...] | list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the HTML galleries (duplicates, outliers, components, stats) and an index.

        Thumbnails are read straight from the archives, each archive once; every page is one
        self-contained HTML file (see :mod:`dedupdask.galleries`).

        Parameters
        ----------
        save_path : str
            Folder to write into (local or URL).
        num_images : int
            Rows per page.
        metrics : sequence of str
            Stats pages (``blur``, ``dark``, ``bright``, ``size``, ``mean``, ...).
        issues : sequence of str, optional
            Issue pages (``issue_<type>.html``); default: every issue type with a cut-off.
        storage_options : dict, optional
            fsspec options for the archives and save_path; default: the run's.

        Returns
        -------
        dict of str to Gallery
            ``duplicates``, ``outliers``, ``components``, one per metric, ``issue_<type>``
            per issue type, and ``index``;
            ``str(gallery)`` is the page's path, and it renders inline in notebooks.

        Examples
        --------
        >>> pages = res.galleries("galleries")  # doctest: +SKIP
        >>> pages["duplicates"]  # doctest: +SKIP
        """
        from .galleries import write_galleries

        return write_galleries(
            self, save_path, num_images=num_images, metrics=metrics, issues=issues,
            storage_options=storage_options,
        )

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"DedupResult({self.work_dir!r}: {s['images']} images, {s['invalid']} invalid, "
            f"{s['duplicate_groups']} duplicate groups ({s['removable']} removable), "
            f"{s['similar_pairs']} similar pairs, {s['outliers']} outliers; archives "
            f"{s['archives_done']} done, {s['archives_failed']} failed, {s['archives_missing']} missing)"
        )


class _Stages:
    """Client-side progress over the build stages (silent unless asked) and their timings."""

    NAMES = ("collect", "read_files", "exact_groups", "knn", "tiers", "analyses", "write")

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
                result = _build(work_dir, config, method, random_state, write, stages)
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
) -> DedupResult:
    col = collect(work_dir, config.storage_options)
    wd = col.work_dir
    if not col.archives:
        raise FileNotFoundError(
            f"work_dir {wd.url}: no archive is done (no *done.json); "
            f"failed: {col.failed[:5]}, without done.json: {col.missing[:5]}"
        )
    stages.done("collect")

    workers = scheduler.dask_client() is not None and col.n > 0  # on a distributed client
    # there the hashes stay on the workers: the exact groups are found by a shuffle there
    files = col.files_frame([c for c in _FILE_COLS if not (workers and c in _HASHES)])
    valid = files[files["index"].notna()].sort_values("index", kind="stable").reset_index(drop=True)
    n = len(valid)
    if n != col.n or not np.array_equal(valid["index"].to_numpy(dtype=np.int64), np.arange(n)):
        raise ValueError(f"work_dir {wd.url}: the Parquet files do not match the done.json counts")
    filenames = valid["filename"].to_numpy(dtype=object)
    stages.done("read_files")

    if workers:
        groups, inputs = exact_and_input_groups(col.files(), col.n)
    else:
        groups = exact_groups(valid["md5"], valid["pixel_md5"])
        inputs = exact_groups(valid["md5"], valid["pixel_md5"], valid["input_md5"])
    reps = groups.reps
    table = resolve(config, col.model)  # the model's thresholds with the user's overrides
    params = resolve_params(
        table,
        has_dct=has_dct(col),
        verify=config.verify,
        nearest_neighbors_k=config.nearest_neighbors_k,
        keypoints=config.verify_keypoints,
    )
    threshold, ccthreshold = params.threshold, params.ccthreshold
    stages.done("exact_groups")

    k = params.k
    emb = col.embeddings()
    knn_info: dict[str, Any] = {}
    if reps.size:  # one task, or partitioned past max_memory_per_task (knn_partitioned)
        nbr_idx, nbr_sim, used, knn_info = knn_graph_work_dir(
            col, inputs.reps, k, config=config, method=method, random_state=random_state  # type: ignore[arg-type]
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
    )
    stages.done("tiers")

    similarity = expand_pairs(groups, tiers.accepted, filenames)
    nearest, nearest_sim = nearest_neighbours(groups, reps, nbr_idx, nbr_sim)
    outliers = outliers_table(nearest, nearest_sim, table.lower_threshold, filenames)
    similarity = add_names(similarity, valid, PAIR_NAMES)  # archive, member, key of each image
    outliers = add_names(outliers, valid, OUTLIER_NAMES)
    if workers:  # these per-image tables stay on the workers and go to results/ from there
        components = components_frame_of_groups(groups, tiers.edges)
        stats = stats_frame(col.files())
    else:
        components = components_table(
            groups, reps, nbr_idx, nbr_sim, ccthreshold, edges=tiers.edges
        )
        stats = valid.loc[:, list(STATS_COLUMNS)].reset_index(drop=True)
    invalid = invalid_table(files)
    issue_t = resolve_issues(config, col.model)  # the model's issue cut-offs with the user's
    issues, issues_about = find_issues(
        col, files, groups, reps, (nbr_idx, nbr_sim), similarity, issue_t,
        valid.set_index(valid["index"].astype("int64")).loc[:, ["filename", "archive", "member", "key"]],
    )  # fmt: skip
    stages.done("analyses")

    run = {
        "dedupdask_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "work_dir": wd.url,
        "parameters": {
            "threshold": threshold,
            "ccthreshold": ccthreshold,
            "copy_threshold": params.copy_threshold,
            "verify_threshold": params.verify_threshold,
            "verify_score": params.verify_score,
            "verify": params.verify,
            "early_accept": params.early_accept,
            "lower_threshold": table.lower_threshold,
            "nearest_neighbors_k": config.nearest_neighbors_k,
            "knn_k": k,
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
        "analysed_on": "workers" if workers else "this process",
        "knn": knn_info,
        "knn_dct": tiers.dct_knn,
        "model": col.model,
        "decode_version": col.decode_version,
        "archives": [a.to_dict() for a in col.archives],
        "failed": col.failed,
        "missing": col.missing,
        "counts": {
            "images": n,
            "invalid": len(invalid),
            "exact_groups": groups.n_groups(2),
            "representatives": int(reps.size),
            "knn_representatives": int(inputs.reps.size),
            "similar_pairs": len(similarity),
            **{
                f"{kind}_pairs": int((similarity["kind"] == kind).sum())
                for kind in ("exact", "copy", "near")
            },
            **tiers.counts,
            "outliers": len(outliers),
            "issues": len(issues),
            **_component_counts(components),
            "issue_images": _issue_images(issues),
        },
        "verification": tiers.verification,
        "timings": stages.timings,
    }
    tables = {
        "similarity": similarity,
        "outliers": outliers,
        "components": components,
        "stats": stats,
        "invalid": invalid,
        "issues": issues,
    }
    if write:  # the result reads back what was written, as load does
        lazy = _write(wd, tables, run, stages, config.write_csv)
    else:
        # nothing written: a table on the workers comes here (their cluster may close next)
        lazy = {name: table_from_pandas(_gathered(df)) for name, df in tables.items()}
    return _result(col, lazy, run)


def _result(col: Collection, tables: dict[str, dd.DataFrame], run: dict[str, Any]) -> DedupResult:
    return DedupResult(
        col,
        similarity=tables["similarity"],
        outliers=tables["outliers"],
        components=tables["components"],
        invalid=tables["invalid"],
        issues=tables.get("issues"),  # none in a run built before issue labels existed
        run=run,
    )


def _gathered(df: pd.DataFrame | dd.DataFrame) -> pd.DataFrame:
    if not isinstance(df, dd.DataFrame):
        return df
    (out,) = scheduler.gather_frames(df)
    return out.reset_index(drop=True)


def _component_counts(components: pd.DataFrame | dd.DataFrame) -> dict[str, int]:
    """Components (ids are each one's smallest index), those of more than one image, and
    the images removing duplicates would drop; a dask table's are computed where it lives."""
    sizes = components[components["component_size"] > 1].drop_duplicates("component_id")["component_size"]
    roots = (components["index"] == components["component_id"]).sum()
    if isinstance(components, dd.DataFrame):
        sizes, roots = dask.compute(sizes, roots)
    return {"components": int(roots), "duplicate_components": int(sizes.size), "removable": int((sizes - 1).sum())}


def _issue_images(issues: pd.DataFrame) -> int:
    """Images with at least one issue other than being a duplicate."""
    return int(issues.loc[~issues["issue"].str.endswith("_duplicate"), "index"].nunique())


# -- files ------------------------------------------------------------------------------------
def _write(
    wd: WorkDir, tables: dict[str, Any], run: dict[str, Any], stages: _Stages, write_csv: bool
) -> dict[str, dd.DataFrame]:
    """Write the tables to ``results/``, the CSVs from what was written, ``run.json`` last;
    return the tables as :func:`load` reads them."""
    wd.remove(wd.join(RESULTS_DIR, RUN_JSON))  # the run is complete only once it is back
    wd.makedirs(RESULTS_DIR)
    run["tables"] = {  # a pandas table in parts of ROWS_PER_PART rows, a dask one by partition
        name: write_partitions(wd, name, df) if isinstance(df, dd.DataFrame) else write_table(wd, name, df)
        for name, df in tables.items()
    }
    lazy = _open_tables(wd, run)
    if write_csv:
        run["csv"] = {"written": True, "files": write_csvs(wd, lazy)}
    else:  # no file of an earlier run may pass for this one's
        for name in CSV_FILES:
            wd.remove(wd.join(name))
        run["csv"] = {"written": False}
    stages.done("write")
    run["timings"] = dict(stages.timings)
    wd.write_json(wd.join(RESULTS_DIR, RUN_JSON), run)
    return lazy


# Columns each results/<table>.parquet must have (the first version's; later ones are optional).
_LOAD_REQUIRED = {
    "similarity": ("from", "to", "similarity", "filename_from", "filename_to"),
    "outliers": OUTLIER_COLUMNS,
    "components": COMPONENT_COLUMNS,
    "stats": ("index", "filename", "width", "height", "file_size"),
    "invalid": ("filename", "archive", "member", "error_code", "error_message", "file_size"),
    "issues": ISSUE_COLUMNS,
}


def _recorded_archives(url: str, run: Any) -> list[ArchiveInfo]:
    """The archives listed in ``run.json``, or :class:`WorkDirError` naming it."""
    if not isinstance(run, dict):
        raise WorkDirError(url, f"does not hold a JSON object{_REBUILD}")
    for key in ("failed", "missing"):
        if not isinstance(run.get(key, []), list):
            raise WorkDirError(url, f"{key!r} is not a list{_REBUILD}")
    archives = run.get("archives", [])
    if not isinstance(archives, list):
        raise WorkDirError(url, f"'archives' is not a list{_REBUILD}")
    try:
        return [ArchiveInfo(**a) for a in archives]
    except TypeError as e:  # not a dict, a key missing or unknown
        raise WorkDirError(url, f"an entry of 'archives' is not an archive ({e}){_REBUILD}") from e


def _layouts(url: str, run: dict[str, Any]) -> dict[str, Any] | None:
    """``run.json["tables"]``, or None for a run written one file per table."""
    tables = run.get("tables")
    if tables is None:
        return None
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise WorkDirError(url, f"'tables' is not an object of table layouts{_REBUILD}")
    missing = [name for name in TABLES if name not in tables]
    if missing:
        raise WorkDirError(url, f"'tables' has no entry for {', '.join(missing)}{_REBUILD}")
    return tables


def _open_tables(wd: WorkDir, run: dict[str, Any]) -> dict[str, dd.DataFrame]:
    """Every table of ``results/`` as a lazy dask DataFrame (:func:`dedupdask.tables.open_table`)."""
    layouts = _layouts(wd.url_of(wd.join(RESULTS_DIR, RUN_JSON)), run)
    columns = {
        # name columns (archive, member, key) are null in runs written before they existed
        "similarity": [*SIMILARITY_COLUMNS, *named_columns(PAIR_NAMES)],
        "outliers": [*OUTLIER_COLUMNS, *named_columns(OUTLIER_NAMES)],
        "components": list(COMPONENT_COLUMNS),
        "stats": None,
        "invalid": list(INVALID_COLUMNS),
        "issues": list(ISSUE_COLUMNS),
    }
    names = [*TABLES, "issues"] if "issues" in run else list(TABLES)
    return {
        name: open_table(
            wd, name, None if layouts is None else layouts[name],
            required=_LOAD_REQUIRED[name], columns=columns[name], version=str(run.get("created", "")),
        )  # fmt: skip
        for name in names
    }


def load(work_dir: str, storage_options: dict[str, Any] | None = None) -> DedupResult:
    """Read a finished run back from ``work_dir/results/`` without recomputing.

    Parameters
    ----------
    work_dir : str
        Local path or URL of a work_dir that :func:`build` has written.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    DedupResult

    Raises
    ------
    FileNotFoundError
        If ``results/run.json`` is missing, or an archive of the run is no longer done.
    WorkDirError
        If ``run.json``, a results table or a per-archive file is damaged (the message names
        the file).

    Examples
    --------
    >>> res = load("work")  # doctest: +SKIP
    >>> res.summary()["images"]  # doctest: +SKIP
    3000
    """
    wd = WorkDir(work_dir, storage_options)
    path = wd.join(RESULTS_DIR, RUN_JSON)
    if not wd.fs.exists(path):
        raise FileNotFoundError(
            f"{wd.url}: no {RESULTS_DIR}/{RUN_JSON}; run the analysis (run_mode=2) first"
        )
    run = wd.read_json(path)  # WorkDirError when not JSON
    recorded = _recorded_archives(wd.url_of(path), run)
    col = collect(wd, names=[a.name for a in recorded], warn=False)
    if tuple(col.archives) != tuple(recorded):
        changed = [a.name for a, b in zip(col.archives, recorded, strict=False) if a != b]
        raise ValueError(
            f"{wd.url}: archives changed since the run was built (e.g. {changed[:3]}); rebuild it"
        )
    col.failed = list(run.get("failed", []))
    col.missing = list(run.get("missing", []))
    return _result(col, _open_tables(wd, run), run)
