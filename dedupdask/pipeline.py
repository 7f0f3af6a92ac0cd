"""Pipeline stage: ``ddk.run`` / ``ddk.extract`` — sources -> one Dask partition per archive.

run_mode=1 lists the archives, slices ``[min_offset, max_offset)``, drops those already done
(``resume``), and computes ``dd.from_map(process_archive, tasks, meta=...)`` on the chosen
scheduler. run_mode=2 analyses work_dir; run_mode=0 does both. ``client=`` is resolved once per
call (:func:`dedupdask.scheduler.resolve`), so a call starts at most one LocalCluster.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Sequence
from typing import Any

import dask.dataframe as dd
import pandas as pd

from .config import RunConfig
from .localcluster import DEFAULT_DASHBOARD
from .partition import SUMMARY_META, ArchiveTask, process_archive
from .scheduler import RunScheduler, in_process_bytes, resolve
from .sources import list_sources, select_offsets
from .store import SUFFIXES, WorkDir

__all__ = ["run", "extract", "build", "ExtractReport"]


class ExtractReport(pd.DataFrame):
    """The per-archive summary of an extraction: one row per archive of the slice.

    Columns: name, url, status (``done``, ``partial``, ``failed``, ``already_done``), members,
    images, valid, invalid, sidecars, skipped, error, t_read, t_decode, t_embed, t_write,
    t_total. ``report.failed`` lists archives that did not finish.
    """

    _metadata = ["wall_time"]

    @property
    def _constructor(self) -> type[ExtractReport]:
        return ExtractReport

    @property
    def failed(self) -> pd.DataFrame:
        """Archives whose status is ``failed`` or ``partial``."""
        return pd.DataFrame(self[self["status"].isin(["failed", "partial"])])

    def summary_text(self) -> str:
        """A few lines for people: archives, images, invalid, failures, images/s, stage times."""
        wall = getattr(self, "wall_time", None) or float("nan")
        new = self[self["status"] != "already_done"]
        imgs = int(new["images"].sum())
        lines = [
            f"archives: {len(self)} in slice, {int((self['status'] == 'done').sum())} done now, "
            f"{int((self['status'] == 'already_done').sum())} already done, "
            f"{int((self['status'] == 'partial').sum())} partial, "
            f"{int((self['status'] == 'failed').sum())} failed",
            f"images: {imgs} ({int(new['valid'].sum())} valid, {int(new['invalid'].sum())} invalid); "
            f"members: {int(new['members'].sum())} ({int(new['sidecars'].sum())} sidecars joined, "
            f"{int(new['skipped'].sum())} skipped)",
            f"wall time: {wall:.1f} s, {imgs / wall if wall > 0 else 0:.1f} images/s; "
            f"task time: read {new['t_read'].sum():.1f} s, decode {new['t_decode'].sum():.1f} s, "
            f"embed {new['t_embed'].sum():.1f} s, write {new['t_write'].sum():.1f} s",
        ]
        for _, r in self.failed.iterrows():
            lines.append(f"  {r['status'].upper()}: {r['url']}: {r['error']}")
        return "\n".join(lines)


def _compute(ddf: dd.DataFrame, run: RunScheduler, config: RunConfig, n_tasks: int) -> pd.DataFrame:
    """The extraction partitions on the call's scheduler (its LocalCluster starts here if needed)."""
    progress = config.progress
    client = run.processes(n_tasks)
    if client is None:  # a local scheduler chosen by the user
        kwargs: dict[str, Any] = {"scheduler": run.local} if run.local else {}
        if run.local == "processes":
            kwargs["chunksize"] = 1  # one archive per submit: balanced workers
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar():
                return ddf.compute(**kwargs)
        return ddf.compute(**kwargs)
    if not progress:
        return client.compute(ddf).result()
    show_link = not run.clusters_started or bool(config.dashboard_address)
    return _compute_with_progress(ddf, client, n_tasks, show_link)


def _compute_with_progress(ddf: dd.DataFrame, client: Any, n_tasks: int, show_link: bool = True) -> pd.DataFrame:
    """Run the partitions as futures and show archives, images and images/s as they finish.

    The bar is ``tqdm.auto``: a text bar in terminals, a widget in notebooks.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    link = getattr(client, "dashboard_link", None) if show_link else None
    if link:
        print(f"dedupdask: {n_tasks} archives on {len(client.scheduler_info()['workers'])} "
              f"Dask workers; dashboard: {link}", flush=True)
    futures = client.compute(ddf.to_delayed())
    parts: list[pd.DataFrame] = []
    t0 = time.perf_counter()
    images = failed = 0
    with tqdm(total=n_tasks, unit="archive", desc="extract", dynamic_ncols=True) as bar:
        for fut in as_completed(futures):
            part = fut.result()
            parts.append(part)
            images += int(part["images"].sum())
            failed += int(part["status"].isin(["failed", "partial"]).sum())
            rate = images / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{images} images, {rate:.0f} img/s" + (f", {failed} failed" if failed else ""))
            bar.update(1)
    return pd.concat(parts, ignore_index=True) if parts else SUMMARY_META.copy()


def _extract(
    input_dir: str | Sequence[str], work_dir: str, config: RunConfig, run: RunScheduler
) -> ExtractReport:
    t0 = time.perf_counter()
    so = config.storage_options
    sources = list_sources(input_dir, so, attempts=config.storage_attempts, deadline=config.storage_deadline)
    sources = select_offsets(sources, config.min_offset, config.max_offset)
    wd = WorkDir(work_dir, so, config.storage_attempts, config.storage_deadline)
    wd.makedirs()
    from .models import resolve_model

    resolve_model(config.model_path, mean=config.model_mean, std=config.model_std)  # fail early
    listing = wd.listing()
    suffix = SUFFIXES["done"]
    done = {n[: -len(suffix)] for n in listing if n.endswith(suffix)} if config.resume else set()
    todo = [s for s in sources if s.name not in done]
    wd.remove_stale_tmp({s.name for s in todo}, listing)  # left by killed writers, not live ones
    zero = {c: (0.0 if c.startswith("t_") else 0) for c in SUMMARY_META.columns if c not in ("name", "url", "status", "error")}
    rows = [
        {"name": s.name, "url": s.url, "status": "already_done", "error": None, **zero}
        for s in sources
        if s.name in done
    ]
    parts = [pd.DataFrame(rows, columns=SUMMARY_META.columns).astype(SUMMARY_META.dtypes.to_dict())]
    if todo:
        tasks = [ArchiveTask(s, wd.url, config, so) for s in todo]
        ddf = dd.from_map(
            process_archive, tasks, meta=SUMMARY_META, enforce_metadata=False, label="dedupdask-extract"
        )
        parts.append(_compute(ddf, run, config, len(tasks)))
    nonempty = [p for p in parts if len(p)]
    summary = pd.concat(nonempty, ignore_index=True) if nonempty else parts[0]
    order = {s.name: i for i, s in enumerate(sources)}
    summary = summary.sort_values("name", key=lambda s: s.map(order)).reset_index(drop=True)
    report = ExtractReport(summary)
    report.wall_time = time.perf_counter() - t0
    return report


def extract(
    input_dir: str | Sequence[str],
    work_dir: str,
    *,
    client: Any = None,
    **options: Any,
) -> ExtractReport:
    """Extract features (run_mode=1): one Dask partition per archive into ``work_dir``.

    Takes the keywords of :func:`run`. Returns the per-archive :class:`ExtractReport`.

    Examples
    --------
    >>> report = extract("shards/", "work/", model_path="dct")  # doctest: +SKIP
    >>> report[["name", "status", "valid", "invalid"]]  # doctest: +SKIP
    """
    options.pop("run_mode", None)
    config = RunConfig.from_kwargs(run_mode=1, **options)
    with resolve(client, dashboard_address=config.dashboard_address) as run:
        return _extract(input_dir, work_dir, config, run)


def build(work_dir: str, *, client: Any = None, **options: Any) -> Any:
    """Analyse the features in ``work_dir`` (run_mode=2): ``run(work_dir=work_dir, run_mode=2)``.

    Takes the keywords of :func:`run` (those of extraction are ignored). Returns the
    :class:`~dedupdask.results.DedupResult`.

    Examples
    --------
    >>> res = build("work/", verify=False)  # doctest: +SKIP
    >>> res.summary()["duplicate_groups"]  # doctest: +SKIP
    12
    """
    options.pop("run_mode", None)
    return run(None, work_dir, run_mode=2, client=client, **options)


def run(
    input_dir: str | Sequence[str] | None = None,
    work_dir: str | None = None,
    *,
    run_mode: int = 0,
    min_offset: int = 0,
    max_offset: int = 0,
    model_path: str | None = None,
    model_mean: Any = None,
    model_std: Any = None,
    batch_size: int = 16,
    num_threads: int = 0,
    nearest_neighbors_k: int = 2,
    distance: str = "cosine",
    threshold: float | None = None,
    lower_threshold: float | None = None,
    ccthreshold: float | None = None,
    copy_threshold: float | None = None,
    verify_threshold: float | None = None,
    whitened_threshold: float | None = None,
    whitened_margin: float | None = None,
    verify_score: float | None = None,
    verify: bool = True,
    verify_keypoints: bool = True,
    issue_thresholds: dict[str, float] | str | None = None,
    max_memory_per_task: str | int | None = None,
    max_client_memory: str | int | None = None,
    d_reduce: int = 0,
    knn_dtype: str = "float32",
    images_per_partition: int | None = None,
    write_csv: bool = True,
    keep_archives: bool = False,
    keep_images: bool = False,
    turi_param: str | None = None,
    resume: bool = True,
    max_image_pixels: int = 100_000_000,
    max_member_bytes: int = 256 * 2**20,
    max_archive_bytes: int = 64 * 2**30,
    min_image_size: int = 10,
    storage_attempts: int = 5,
    storage_deadline: float = 30.0,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    progress: bool = True,
    index: bool = True,
    incremental: bool = True,
    reference: str | None = None,
    reference_storage_options: dict[str, Any] | None = None,
    test_dir: str | Sequence[str] | None = None,
    query_duplicates: bool = False,
) -> Any:
    """Find duplicates, outliers, clusters and broken images in webdataset archives.

    Parameters
    ----------
    input_dir : str, list of str or None
        Folder (recursive), glob, ``s3://`` prefix, archive, list of those, or a text file of
        paths. May be None (or left out) for ``run_mode=2``.
    work_dir : str
        Local folder or ``s3://`` URL for every output (required).
    run_mode : {0, 1, 2}
        1 extracts features, 2 analyses work_dir, 0 does both (fastdup's meaning).
    min_offset, max_offset : int
        Half-open slice ``[min_offset, max_offset)`` of the sorted archive list; 0/0 = all.
    model_path : str, optional
        ``"effnet-lite0"`` (default, pretrained, Apache-2.0), ``"dct"`` (weight-free, exact and
        near-exact copies only) or a path to an ONNX image model.
    model_mean, model_std : three floats, optional
        Normalisation of a float user model when the graph does not say.
    batch_size : int
        Images per onnxruntime call.
    num_threads : int
        onnxruntime threads per archive task (0 = one; a worker with T threads runs T tasks).
    nearest_neighbors_k, distance, threshold, lower_threshold, ccthreshold
        Analysis options, fastdup's names and meaning. The thresholds default to None: the
        model's row of :data:`dedupdask.thresholds.TABLE` (where each value was measured),
        recorded with the values used in ``results/run.json`` (``"thresholds"``).
    copy_threshold, verify_threshold, whitened_threshold, whitened_margin, verify_score, verify
        Duplicate tiers (:mod:`dedupdask.analyses.tiers`): DCT-descriptor cosine of a
        ``copy`` candidate; embedding cosine from which a pair below ``threshold`` is a
        candidate for verification in runs of fewer than 2,000 images; the same in the
        run's whitened embedding (:mod:`dedupdask.whitening`) in larger runs; how far above
        its picture's 5th neighbour a whitened pair under that cut must stand to be a
        candidate too; pixel-alignment score that confirms a candidate; whether to verify at all.
        None = the measured defaults of the model.
    verify_keypoints : bool
        Also ask the keypoint matcher (:mod:`dedupdask.match_keypoints`: rotations,
        perspective, global colour edits, overlays up to 35 %) about candidates the pixel
        alignment rejects, when at least one of the two pictures is not a graphic (clip art,
        icons, cards, signs: more than 45 % flat and 15 % uniform pixels, whose design variants
        share their template's keypoints; :data:`dedupdask.match_keypoints.MAX_FLAT`); a pair of two
        graphics is compared pixel by pixel under the keypoints' plane warp instead (turned,
        stretched, slanted copies; :func:`dedupdask.match.warped_score`). False: the pixel
        alignment only, with its turn found from the pixels (:func:`dedupdask.match.turned_record`;
        README, "Near-duplicates as the web makes them").
    issue_thresholds : dict or str, optional
        Cut-offs of the per-image issue types (``res.issues``, ``image_issues.csv``;
        :mod:`dedupdask.analyses.issues`) that replace the model's row of
        :data:`dedupdask.thresholds.ISSUE_TABLE`: ``{"dark": 0.1, "outlier": 0.4}`` or
        ``"dark=0.1,outlier=0.4"``; an image has an issue when the type's score (0..1, lower =
        worse) is below its cut-off, so 0 turns a type off.
    max_memory_per_task : str or int, optional
        Memory one kNN task may use (``"2GB"``, bytes). When the kNN of all vectors would need
        more, it runs partitioned on the Dask cluster: vectors are bucketed by a coarse
        k-means (boundary points in two buckets), each bucket searched by one task, the lists
        merged (:mod:`dedupdask.knn_partitioned`). Default: half of the smallest worker's
        memory limit per thread (half this machine's memory without a distributed client).
    max_client_memory : str or int, optional
        Memory this process may use to analyse work_dir itself (``"1GB"``, bytes; default
        :data:`dedupdask.scheduler.MAX_CLIENT_MEMORY`). A work_dir whose in-process
        analysis would need more (:func:`dedupdask.scheduler.in_process_bytes`: its vectors
        plus the per-image tables) is analysed on the Dask workers -- the given cluster, or
        the local cluster of the call -- never here.
    d_reduce : int
        Search neighbours on a PCA projection to this many dimensions (e.g. 256; 0 = off);
        similarities are recomputed on the original float32 vectors.
    knn_dtype : {"float32", "float16"}
        Storage of the vectors in a kNN bucket; float16 halves it (similarities recomputed in
        float32).
    images_per_partition : int, optional
        On a cluster, consecutive archives are read into one partition of the per-image
        tables up to this many image members (0 = one partition per archive). Default: up to
        :data:`dedupdask.config.IMAGES_PER_PARTITION`, and small enough for
        :data:`dedupdask.collect.PARTITIONS_PER_THREAD` partitions per Dask thread. Fewer
        partitions hold fewer tasks on the scheduler; the results are the same.
    write_csv : bool
        Write fastdup's CSV files (``similarity.csv``, ``connected_components.csv``, ...) into
        work_dir, each joined from one part per table partition without gathering the table
        (:mod:`dedupdask.csvs`). False: only the Parquet tables under ``results/`` (the CSVs of
        an earlier run are removed); ``run.json`` records which.
    keep_archives, keep_images : bool
        Keep a copy of each archive / each image member under ``work_dir/tmp/``.
    turi_param : str, optional
        fastdup's ``"delete_tar=0,delete_img=0"`` is accepted.
    resume : bool
        Skip archives whose ``done.json`` exists.
    max_image_pixels, max_member_bytes, max_archive_bytes, min_image_size : int
        Limits: pixels per image (decompression bombs, checked on the header), bytes per
        member, total bytes read from one archive (bombs of many members), smallest side.
    storage_attempts, storage_deadline : int, float
        The one retry policy of storage operations (open, read, list, write) when the network
        or the server fails: up to ``storage_attempts`` attempts, waiting 0.5 s, 1 s, 2 s...
        in between, and none started after ``storage_deadline`` seconds; wrong credentials and
        missing objects fail at once. botocore's and s3fs's own retries are turned off
        (:func:`dedupdask.remote.filesystem`), so a dead endpoint fails within the deadline
        plus one request's timeout. An archive that still fails gets ``<name>failed.json``
        and stays not done, so the next run retries it.
    storage_options : dict, optional
        fsspec options for input and work_dir (S3 endpoint, keys...): e.g.
        ``{"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": "http://host:9000"}}``
        (``"endpoint_url"`` at top level works too); the standard ``AWS_ENDPOINT_URL``,
        ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``FSSPEC_S3_*`` variables also do.
    client : distributed.Client, str or None
        A Client, a scheduler address, or ``"sync"``/``"threads"``/``"processes"``; None uses
        the scheduler dask would use (a ``dask.config`` scheduler, else the current Client);
        without one, extraction (and verification of many pairs) run on a local cluster
        started once for the call (one worker process per core, everything listening on
        127.0.0.1 only; see :mod:`dedupdask.scheduler`). A script that lets dedupdask start
        that cluster must call it under ``if __name__ == "__main__":``: the worker processes
        re-import the script.
    dashboard_address : str or None
        ``host:port`` of that local cluster's dashboard: ``"127.0.0.1:0"`` (this machine, a
        free port) by default; ``"0.0.0.0:8787"`` shows it (task names hold archive URLs,
        worker logs, call stacks) to the network. None or ``""``: no dashboard.
    progress : bool
        Show a progress bar.
    index : bool
        After the analysis, write ``work_dir/index/`` (:mod:`dedupdask.vector_index`: the vectors in
        buckets, about the size of the ``.dat`` files) so that this work_dir can be the
        ``reference`` of later runs.
    incremental : bool
        Reuse the last build's kNN graphs and verification scores (``work_dir/graphs/``,
        :mod:`dedupdask.knn_incremental`) and search only the archives extracted since against
        all: the same pairs as a full rebuild when both use exact search. False (the CLI's ``--full``) searches everything.
        Each pair's ``build`` column says which build found it.
    reference : str, optional
        A built work_dir (with its index) to search this run's images against: the result is
        the cross-set pairs (:mod:`dedupdask.reference`), and ``work_dir`` is the query's. The
        reference is only read.
    reference_storage_options : dict, optional
        fsspec options of the reference work_dir and its shards (default: ``storage_options``).
    test_dir : str or list of str, optional
        fastdup's form: ``input_dir``/``work_dir`` are the reference (train) set, extracted and
        built (with its index) unless already done, and ``test_dir`` holds the query images,
        extracted into ``work_dir/test``, whose ``similarity.csv`` lists the cross pairs
        (run_mode=1: both sets are only extracted).
    query_duplicates : bool
        In a reference run, also the query's own duplicate pairs (``query_similarity.csv``).

    Returns
    -------
    ExtractReport, DedupResult or ReferenceResult
        run_mode=1 returns the per-archive report; 0 and 2 return the analysis result (whose
        ``extract_report`` attribute holds the report for run_mode=0); with ``reference`` or
        ``test_dir`` the cross-set result (:class:`dedupdask.reference.ReferenceResult`).

    Examples
    --------
    >>> import dedupdask as ddk
    >>> res = ddk.run("shards/", "work/")  # doctest: +SKIP
    >>> res.similarity.query("similarity > 0.95").compute()  # doctest: +SKIP
    """
    opts = dict(
        run_mode=run_mode, min_offset=min_offset, max_offset=max_offset, model_path=model_path,
        model_mean=model_mean, model_std=model_std, batch_size=batch_size, num_threads=num_threads,
        nearest_neighbors_k=nearest_neighbors_k, distance=distance, threshold=threshold,
        lower_threshold=lower_threshold, ccthreshold=ccthreshold, copy_threshold=copy_threshold,
        verify_threshold=verify_threshold, whitened_threshold=whitened_threshold,
        whitened_margin=whitened_margin, verify_score=verify_score, verify=verify,
        verify_keypoints=verify_keypoints, issue_thresholds=issue_thresholds,
        max_memory_per_task=max_memory_per_task,
        max_client_memory=max_client_memory, d_reduce=d_reduce, knn_dtype=knn_dtype,
        images_per_partition=images_per_partition, write_csv=write_csv, keep_archives=keep_archives,
        keep_images=keep_images, turi_param=turi_param, resume=resume,
        max_image_pixels=max_image_pixels, max_member_bytes=max_member_bytes,
        max_archive_bytes=max_archive_bytes, min_image_size=min_image_size,
        storage_attempts=storage_attempts, storage_deadline=storage_deadline,
        storage_options=storage_options, dashboard_address=dashboard_address, progress=progress,
        index=index, incremental=incremental, reference=reference, reference_storage_options=reference_storage_options,
        test_dir=None if test_dir is None else str(test_dir), query_duplicates=query_duplicates,
    )
    if work_dir is None:
        raise TypeError("run() needs work_dir (a local folder or URL for every output)")
    config = RunConfig.from_kwargs(**opts)
    if test_dir is not None and config.run_mode != 1:  # fastdup's form: work_dir is the reference
        return _test_dir(input_dir, work_dir, test_dir, config, client)
    with resolve(client, dashboard_address=config.dashboard_address) as sched:
        report = None
        if config.run_mode in (0, 1):
            if input_dir is None:
                raise ValueError(f"input_dir is required for run_mode={config.run_mode}")
            report = _extract(input_dir, work_dir, config, sched)
            if config.run_mode == 1:
                if test_dir is not None:  # both sets: the query's features go to work_dir/test
                    _extract(test_dir, _test_work_dir(work_dir), config, sched)
                return report
        from .analysis import build as analyse
        from .knn_partitioned import parse_memory

        bound = parse_memory(config.max_client_memory, "max_client_memory")
        need = _in_process_bytes(work_dir, config) + _reference_bytes(config)
        with sched.analysis(need, bound):
            if config.reference is not None:
                from .reference import query

                result = query(work_dir, config=config)
            else:
                result = analyse(work_dir, config=config)
    result.extract_report = report
    return result


def _test_dir(input_dir: Any, work_dir: str, test_dir: Any, config: RunConfig, client: Any) -> Any:
    """fastdup's ``test_dir`` run: the reference is ``input_dir``/``work_dir`` (built, with its
    index, unless a finished run and index are there), the query ``work_dir/test``."""
    from dataclasses import replace

    from .results import RUN_JSON
    from .tables import RESULTS_DIR
    from .vector_index import INDEX_DIR, INDEX_JSON

    wd = WorkDir(work_dir, config.storage_options)
    have = wd.fs.exists(wd.join(RESULTS_DIR, RUN_JSON)) and wd.fs.exists(wd.join(INDEX_DIR, INDEX_JSON))
    ref_cfg = replace(config, test_dir=None, index=True)
    new = not have
    if input_dir is not None:  # resume: archives already done are skipped
        report = _run_config(input_dir, work_dir, replace(ref_cfg, run_mode=1), client)
        new = new or bool((report["status"] != "already_done").any())
    if new:  # build (and index) the reference only when it changed
        _run_config(None, work_dir, replace(ref_cfg, run_mode=2), client)
    query_cfg = replace(config, test_dir=None, reference=wd.url, reference_storage_options=config.storage_options)
    return _run_config(test_dir, _test_work_dir(wd.url), query_cfg, client)


def _test_work_dir(work_dir: str) -> str:
    """The query's work_dir of fastdup's ``test_dir`` form."""
    return str(work_dir).rstrip("/") + "/test"


def _run_config(input_dir: Any, work_dir: str, config: RunConfig, client: Any) -> Any:
    """:func:`run` with a config already made."""
    import dataclasses

    opts = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    opts["turi_param"] = None
    return run(input_dir, work_dir, client=client, **opts)


def index(work_dir: str, *, client: Any = None, **options: Any) -> dict[str, Any]:
    """Write ``work_dir/index/`` for a built work_dir (:func:`dedupdask.vector_index.build_index`).

    For a work_dir built with ``index=False`` or by an older dedupdask; ``build`` writes it
    otherwise. It covers the archives of the last build (``results/run.json``), also when more
    were extracted since. Takes ``max_memory_per_task``, ``storage_options``, ``storage_attempts``,
    ``storage_deadline``. Returns ``index.json``.

    Examples
    --------
    >>> ddk.index("train_work/")["nprobe"]  # doctest: +SKIP
    3
    """
    from .collect import collect
    from .results import RUN_JSON, _recorded_archives
    from .tables import RESULTS_DIR
    from .vector_index import build_index

    config = RunConfig.from_kwargs(run_mode=2, **options)
    wd = WorkDir(work_dir, config.storage_options)
    try:  # the index covers the archives of the finished run (those a query checks it against)
        run_record = wd.read_json(wd.join(RESULTS_DIR, RUN_JSON))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"work_dir {wd.url}: no {RESULTS_DIR}/{RUN_JSON}; build it first (run_mode=2): an index "
            "covers the archives of a finished run"
        ) from None
    recorded = _recorded_archives(wd.url, run_record)
    with resolve(client, dashboard_address=config.dashboard_address) as sched:
        col = collect(wd, names=[a.name for a in recorded], warn=False)
        if not col.archives:
            raise FileNotFoundError(f"work_dir {col.work_dir.url}: no archive is done (no *done.json)")
        with sched.analysis(_in_process_bytes(work_dir, config), None):
            return build_index(col, max_memory_per_task=config.max_memory_per_task)


def _reference_bytes(config: RunConfig) -> int:
    """What a query may read of its reference's index here: every bucket (``index.json``'s
    ``n`` x ``d`` float32); 0 without a reference or a readable index (opening it says why)."""
    if config.reference is None:
        return 0
    from .vector_index import INDEX_DIR, INDEX_JSON

    try:
        wd = WorkDir(config.reference, config.reference_options)
        meta = wd.read_json(wd.join(INDEX_DIR, INDEX_JSON))
        return int(meta["n"]) * 4 * int(meta["d"])
    except Exception:  # noqa: BLE001 - the query's open_reference reports a missing or bad index
        return 0


def _in_process_bytes(work_dir: str, config: RunConfig) -> int:
    """What analysing work_dir here would hold (:func:`in_process_bytes`): one listing for the
    vectors' size and one ``done.json`` for their width."""
    wd = WorkDir(work_dir, config.storage_options)
    try:
        entries = wd.fs.ls(wd.path, detail=True)
    except FileNotFoundError:
        return 0
    dat = [e for e in entries if str(e["name"]).endswith(SUFFIXES["dat"])]
    vector_bytes = sum(int(e.get("size") or 0) for e in dat)
    if not vector_bytes:
        return 0
    name = posixpath.basename(str(dat[0]["name"]))[: -len(SUFFIXES["dat"])]
    try:
        d = int(wd.read_done(name)["d"])
    except Exception:  # noqa: BLE001 - not done (yet): collect reports it; assume a wide model
        d = 1280
    return in_process_bytes(vector_bytes // (4 * d), d)
