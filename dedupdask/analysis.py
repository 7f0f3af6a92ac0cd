"""Analysis stage (run_mode=2): the stages of one build, in order, on the chosen scheduler.

:func:`build` runs them over every done archive of a work_dir and hands the tables to
:mod:`dedupdask.results`, which writes and reads them back:

1. **collect** the done archives (:mod:`dedupdask.collect`);
2. **read_files**: the per-image rows of the archives' Parquet files;
3. **exact_groups**: images with equal bytes / pixels / model inputs
   (:mod:`dedupdask.analyses.exact`, on the workers :mod:`dedupdask.analyses.exact_dask`);
4. **knn**: the embedding graph of one representative per group of equal model inputs
   (:func:`dedupdask.knn_partitioned.knn_graph_work_dir`: one task or partitioned);
5. **tiers**: candidate pairs of both descriptors, pixel verification, the decision
   (:func:`dedupdask.fusion.run_tiers`);
6. **analyses**: similarity pairs, outliers, components, invalid images, issue labels
   (:mod:`dedupdask.analyses`);
7. **write**: ``results/`` and the fastdup-named CSVs (:func:`dedupdask.results.save_tables`),
   ``run.json`` last.

Which stages run on the workers and what the calling process still holds is in the README's
scale section.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from . import scheduler
from .analyses import (
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
from .analyses.issues import issue_images
from .analyses.names import OUTLIER_NAMES, PAIR_NAMES, add_names
from .analyses.tiers import expand_pairs, resolve_params
from .collect import collect
from .config import RunConfig
from .fusion import has_dct, run_tiers
from .knn import DEFAULT_RANDOM_STATE
from .knn_partitioned import knn_graph_work_dir
from .results import DedupResult, from_tables, save_run, save_tables
from .tables import table_from_pandas
from .thresholds import issue_overrides, issue_row_for, overrides, resolve, resolve_issues, row_for

__all__ = ["build"]

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
            "issue_images": issue_images(issues),
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
        lazy = save_tables(wd, tables, run, write_csv=config.write_csv)
        stages.done("write")
        run["timings"] = dict(stages.timings)
        save_run(wd, run)
    else:
        # nothing written: a table on the workers comes here (their cluster may close next)
        lazy = {name: table_from_pandas(_gathered(df)) for name, df in tables.items()}
    return from_tables(col, lazy, run)


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
