"""Command-line stage: ``dedupdask run|extract|build|gallery|removals|clean|demo`` mirroring ``ddk.run``.

Every keyword of :func:`dedupdask.run` is a ``--kebab-case`` flag (booleans also as
``--no-...``). The exit code is 0 when every archive finished, 1 when any archive failed or
was only partly readable (unless ``--allow-failures``), 2 for bad arguments or input, a
damaged work_dir file (:class:`~dedupdask.store.WorkDirError`), or when the input or work_dir
cannot be listed (wrong credentials, unreachable server); each error is one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from .config import OPTION_HELP, RunConfig
from .thresholds import FIELDS, TABLE, USER_MODEL

__all__ = ["main", "build_parser"]

_ANALYSIS_ONLY = {
    "nearest_neighbors_k", "distance", "threshold", "lower_threshold", "ccthreshold",
    "max_memory_per_task", "max_client_memory", "d_reduce", "knn_dtype", "issue_thresholds",
    "write_csv", "images_per_partition", "index", "reference", "query_duplicates", "incremental",
}
_EXTRACT_ONLY = {
    "min_offset", "max_offset", "model_path", "model_mean", "model_std", "batch_size",
    "num_threads", "keep_archives", "keep_images", "resume", "max_image_pixels",
    "max_member_bytes", "max_archive_bytes", "min_image_size", "dashboard_address",
}


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if args else str
    if origin is tuple:
        return str  # "a,b,c"
    return tp


def _table_defaults(name: str) -> str:
    """``"effnet-lite0 0.99, dct 0.98, user models 0.9"``: a threshold's row values."""
    rows = [*TABLE.items(), ("user models", USER_MODEL)]
    return ", ".join(f"{model} {getattr(row, name) or 'none'}" for model, row in rows)


def _add_options(p: argparse.ArgumentParser, names: set[str]) -> None:
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        help_ = OPTION_HELP.get(f.name, "")
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{help_} (default: {f.default})")
        elif f.name in FIELDS:
            p.add_argument(flag, type=tp, default=None, metavar=f.name.upper(),
                           help=f"{help_} (default: the model's: {_table_defaults(f.name)})")
        else:
            default = None if f.default is dataclasses.MISSING else f.default
            p.add_argument(flag, type=tp, default=None, metavar=f.name.upper(),
                           help=f"{help_} (default: {default})")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                   help='fsspec options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'')
    p.add_argument("--client", default=None,
                   help="scheduler address (tcp://host:8786) or sync|threads|processes; default: a local cluster")
    p.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when some archives failed")
    p.add_argument("--reference-storage-options", type=json.loads, default=None, metavar="JSON",
                   help="fsspec options of the --reference work_dir and its shards (default: --storage-options)")
    if p.prog.split()[-1] in ("run", "build"):
        p.add_argument("--full", dest="incremental", action="store_false", default=None,
                       help="a full rebuild: search every image again instead of reusing the last build's "
                            "kNN graphs and scores (the same as --no-incremental)")


def build_parser() -> argparse.ArgumentParser:
    """The ``dedupdask`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dedupdask",
        description="Find duplicates, near-duplicates, outliers and broken images in webdataset archives.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    all_opts = {f.name for f in dataclasses.fields(RunConfig)} - {
        "run_mode", "storage_options", "reference_storage_options",
    }
    p = sub.add_parser("run", help="extract features and analyse (run_mode=0)")
    p.add_argument("input", nargs="+", help="folder, glob, s3:// prefix, archives, or a text file of paths")
    p.add_argument("work_dir")
    _add_options(p, all_opts)
    _add_common(p)
    p = sub.add_parser("extract", help="extract features only (run_mode=1)")
    p.add_argument("input", nargs="+", help="folder, glob, s3:// prefix, archives, or a text file of paths")
    p.add_argument("work_dir")
    _add_options(p, all_opts - _ANALYSIS_ONLY)
    _add_common(p)
    p = sub.add_parser("build", help="analyse the features in WORK_DIR (run_mode=2)")
    p.add_argument("work_dir")
    _add_options(p, all_opts - _EXTRACT_ONLY - {"test_dir"})
    _add_common(p)
    p = sub.add_parser("index", help="write WORK_DIR/index/ for a built WORK_DIR, so that it can be a --reference")
    p.add_argument("work_dir")
    _add_options(p, {"max_memory_per_task"})
    _add_common(p)
    p = sub.add_parser("gallery", help="write HTML galleries of an analysed WORK_DIR into OUT")
    p.add_argument("work_dir")
    p.add_argument("out", help="folder for the pages (duplicates.html, outliers.html, ...)")
    p.add_argument("--kind", choices=["all", "duplicates", "outliers", "components", "stats", "issues"],
                   default="all", help="which gallery (default: all, plus index.html)")
    p.add_argument("--issue", action="append", default=None,
                   help="issue page(s): dark, light, blurry, low_information, odd_aspect_ratio, odd_size, "
                        "grayscale, outlier, exact_duplicate, ... (repeatable; default: every type "
                        "with a cut-off)")
    p.add_argument("--metric", action="append", default=None,
                   help="stats page(s): blur, dark, bright, size, mean, ... (repeatable; "
                        "default: blur, dark, bright, size)")
    p.add_argument("--num-images", type=int, default=20, help="rows per page (default: 20)")
    p.add_argument("--threshold", type=float, default=None,
                   help="duplicates: similarity >= T; outliers: <= T; stats: the metric's cut-off")
    p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                   help="fsspec options as JSON (default: none)")
    p = sub.add_parser("report", help="write a static report of an analysed WORK_DIR into OUT (plots, every row paged)")
    p.add_argument("work_dir")
    p.add_argument("out", help="folder for the report (index.html, pairs/, components/, ...)")
    p.add_argument("--rows-per-page", type=int, default=100, help="rows per page (default: 100)")
    p.add_argument("--thumbnail-rows", type=int, default=1000,
                   help="rows of each table, from its first, whose images get thumbnails (default: 1000)")
    p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                   help="fsspec options as JSON (default: none)")
    p.add_argument("--client", default=None,
                   help="scheduler address (tcp://host:8786) or sync|threads: where the pages are written "
                        "(OUT must be reachable from its workers); default: local threads")
    _add_removal_parsers(sub)
    p = sub.add_parser("demo", help="generate sample shards with planted duplicates and run on them")
    p.add_argument("--out", default="demo", help="folder for the shards and the work_dir (default: ./demo)")
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--images-per-shard", type=int, default=100)
    p.add_argument("--model-path", default=None)
    p.add_argument("--client", default=None)
    p.add_argument("--dashboard-address", default=None, metavar="DASHBOARD_ADDRESS",
                   help=f"{OPTION_HELP['dashboard_address']} (default: {RunConfig.dashboard_address})")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def _options(ns: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "input", "work_dir", "client", "allow_failures"}
    return {k: v for k, v in vars(ns).items() if k not in skip and v is not None}


def _print_result(result: Any) -> None:
    report = getattr(result, "extract_report", None)
    if report is not None:
        print(report.summary_text())
    if hasattr(result, "contamination"):  # a reference run
        print("reference run: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.summary().items()))
        print(f"files: {result.work_dir}/similarity.csv (from = query index, to = reference index), "
              "contamination.csv, results/cross_similarity/, results/contamination/")  # fmt: skip
        return
    summary = result.summary() if hasattr(result, "summary") else None
    if summary:
        print(
            "analysis: "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items() if not isinstance(v, (list, dict)))
        )
        counts = summary.get("issues") or {}
        print("issues: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))
        for kind, why in (summary.get("issues_not_reported") or {}).items():
            print(f"  {kind} not reported: {why}")
    wd = getattr(result, "work_dir", None)
    if wd:
        run = getattr(result, "run", None) or {}
        if (run.get("csv") or {}).get("written", True):
            print(f"files: {wd}/similarity.csv, outliers.csv, connected_components.csv, image_issues.csv, "
                  "results/<table>/part.<i>.parquet")  # fmt: skip
        else:
            print(f"files: {wd}/results/<table>/part.<i>.parquet (no CSVs: --no-write-csv)")


def _failed(report: Any) -> bool:
    return report is not None and len(report.failed) > 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    from . import pipeline
    from .remote import StorageError
    from .store import WorkDirError

    try:
        if ns.command == "demo":
            return _demo(ns)
        if ns.command == "gallery":
            return _gallery(ns)
        if ns.command == "report":
            return _report(ns)
        if ns.command in ("removals", "clean"):
            return _act(ns)
        opts = _options(ns)
        if ns.command == "extract":
            report = pipeline.extract(_inputs(ns.input), ns.work_dir, client=ns.client, **opts)
            print(report.summary_text())
            print(f"files: {report.attrs.get('work_dir', ns.work_dir)}/<archive>features.dat, .dat.csv, .parquet")
            return 1 if _failed(report) and not ns.allow_failures else 0
        if ns.command == "index":
            meta = pipeline.index(ns.work_dir, client=ns.client, **opts)
            print(f"index: {meta['n']} vectors in {meta['centroids']} buckets, nprobe {meta['nprobe']} "
                  f"(finds {meta['probe_found']:.3f} of probe pairs at cosine {meta['probe_similarity']}); "
                  f"files: {ns.work_dir}/index/")  # fmt: skip
            return 0
        if ns.command == "run":
            result = pipeline.run(_inputs(ns.input), ns.work_dir, run_mode=0, client=ns.client, **opts)
        else:
            result = pipeline.run(None, ns.work_dir, run_mode=2, client=ns.client, **opts)
        _print_result(result)
        return 1 if _failed(getattr(result, "extract_report", None)) and not ns.allow_failures else 0
    except (WorkDirError, ValueError, FileNotFoundError, TypeError, PermissionError, StorageError) as e:
        print(f"dedupdask: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dedupdask: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


def _gallery(ns: argparse.Namespace) -> int:
    from . import galleries as g

    common = {"num_images": ns.num_images, "storage_options": ns.storage_options}
    metrics = [m for item in (ns.metric or []) for m in item.split(",") if m] or list(g.DEFAULT_METRICS)
    issues = [t for item in (ns.issue or []) for t in item.split(",") if t] or None
    if ns.kind == "all":
        if ns.threshold is not None:
            raise ValueError("--threshold needs one --kind")
        pages = list(g.write_galleries(ns.work_dir, ns.out, metrics=metrics, issues=issues, **common).values())
    elif ns.kind == "issues":
        from .results import load
        from .thresholds import ISSUE_TYPES

        if ns.threshold is not None:
            raise ValueError("--threshold does not apply to issue pages (set the cut-offs with "
                             "--issue-thresholds when building)")
        res = load(ns.work_dir, ns.storage_options)
        pages = [g.create_issues_gallery(res, ns.out, issue=t, **common) for t in issues or ISSUE_TYPES]
    elif ns.kind == "stats":
        from .results import load

        res = load(ns.work_dir, ns.storage_options)
        pages = [g.create_stats_gallery(res, ns.out, metric=m, threshold=ns.threshold, **common)
                 for m in metrics]
    else:
        make = {"duplicates": g.create_duplicates_gallery, "outliers": g.create_outliers_gallery,
                "components": g.create_components_gallery}[ns.kind]
        kw = {} if ns.kind == "components" else {"threshold": ns.threshold}
        pages = [make(ns.work_dir, ns.out, **kw, **common)]
    for page in pages:
        missing = f", {page.n_missing} thumbnails missing" if page.n_missing else ""
        print(f"{page.path}: {page.n_rows} rows{missing}")
    return 0


def _report(ns: argparse.Namespace) -> int:
    from .report import write_report

    rep = write_report(ns.work_dir, ns.out, rows_per_page=ns.rows_per_page, thumbnail_rows=ns.thumbnail_rows,
                       storage_options=ns.storage_options, client=ns.client)  # fmt: skip
    for name, t in rep.tables.items():
        missing = f", {t['missing']} thumbnails missing" if t["missing"] else ""
        explained = f", {t['explained']} alignments drawn" if t.get("explained") else ""
        print(f"{name}: {t['rows']} rows on {t['pages']} pages, {t['thumbnails']} thumbnails{missing}{explained}")
    print(f"report: {rep.path} ({rep.seconds:.1f} s)")
    return 0


def _add_removal_parsers(sub: Any) -> None:
    """``removals`` and ``clean``: act on an analysed work_dir (:mod:`dedupdask.removals`)."""
    from .analyses.keep import KEEP_RULES

    for name, help_, out_help in (
        ("removals", "write one Parquet removal list per source archive of an analysed WORK_DIR",
         "folder for <archive name>.parquet"),
        ("clean", "write the source archives without the removed samples into OUT (same names, "
                  "same formats)", "folder (or s3:// prefix) for the clean shards"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=help_)
        p.add_argument("work_dir")
        p.add_argument("out", help=out_help)
        p.add_argument("--keep", choices=KEEP_RULES, default="largest_resolution",
                       help="which image of each duplicate component stays (default: largest_resolution)")
        p.add_argument("--no-duplicates", dest="duplicates", action="store_false",
                       help="keep every duplicate")
        p.add_argument("--no-invalid", dest="invalid", action="store_false",
                       help="keep samples whose images could not be used")
        p.add_argument("--outliers", action="store_true",
                       help="also remove fastdup's outliers (outliers.csv)")
        p.add_argument("--remove-issues", default=None, metavar="TYPES",
                       help="also remove images with these issue types, e.g. low_information,odd_size")
        p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                       help="fsspec options as JSON for WORK_DIR, the archives and OUT (default: none)")
        p.add_argument("--client", default=None,
                       help="scheduler address (tcp://host:8786) or sync|threads|processes; default: threads")
        if name == "clean":
            p.add_argument("--no-resume", dest="resume", action="store_false",
                           help="rewrite shards whose done marker exists")
            p.add_argument("--samples-per-shard", type=int, default=None, metavar="N",
                           help="reshard: the kept samples of all archives, in order, into new shards of N "
                                "samples (00000.tar, ...) with a mapping table in OUT/_dedupdask/mapping/")
            p.add_argument("--shard-format", choices=("tar", "tgz", "zip"), default=None,
                           help="container of the new shards (default: the sources' if they all share "
                                "one, else tar)")


def _act(ns: argparse.Namespace) -> int:
    from .results import load

    res = load(ns.work_dir, ns.storage_options)
    opts = {"duplicates": ns.duplicates, "invalid": ns.invalid, "outliers": ns.outliers,
            "remove_issues": ns.remove_issues, "storage_options": ns.storage_options,
            "client": ns.client}  # fmt: skip
    if ns.command == "removals":
        from .removals import write_removals

        table = write_removals(res, ns.out, ns.keep, **opts)
        counts = {c[len("removed_"):]: int(table[c].sum()) for c in table.columns if c.startswith("removed_")}
        print(f"removal lists: {len(table)} archives, {int(table['samples'].sum())} samples to remove "
              f"({', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}) -> {ns.out}")
        return 0
    from .clean import write_clean_shards

    report = write_clean_shards(res, ns.out, keep=ns.keep, resume=ns.resume, samples_per_shard=ns.samples_per_shard,
                                shard_format=ns.shard_format, **opts)  # fmt: skip
    if ns.samples_per_shard is None:
        print(report.summary_text())
        return 1 if len(report.failed) else 0
    from .clean import CleanReport

    sources = CleanReport(report.attrs["sources"])  # records, one per source archive
    print(sources.summary_text())
    status = ", ".join(f"{k} {v}" for k, v in report["status"].value_counts().items()) if len(report) else "none"
    print(f"resharded: {len(report)} new shards of {ns.samples_per_shard} samples ({status}), "
          f"{int(report['samples_kept'].sum()) if len(report) else 0} samples -> {ns.out} "
          f"(mapping table: {ns.out.rstrip('/')}/_dedupdask/mapping/)")
    for _, r in report.failed.iterrows():
        print(f"  {str(r['status']).upper()}: {r['name']}: {r['error']}")
    return 1 if len(report.failed) or len(sources.failed) else 0


def _inputs(items: list[str]) -> str | list[str]:
    return items[0] if len(items) == 1 else items


def _demo(ns: argparse.Namespace) -> int:
    import os
    import time

    from .datasets import make_sample_shards

    shards_dir = os.path.join(ns.out, "shards")
    work_dir = os.path.join(ns.out, "work_dir")
    t0 = time.perf_counter()
    s = make_sample_shards(shards_dir, n_shards=ns.shards, images_per_shard=ns.images_per_shard,
                           n_near=max(6, ns.shards * 4), n_exact=max(2, ns.shards))
    print(f"sample shards: {len(s.shards)} archives (tar, tgz, zip), {s.n_images} images, "
          f"{len(s.truth)} planted duplicate pairs, {len(s.broken)} broken members "
          f"-> {shards_dir} ({time.perf_counter() - t0:.1f} s)")
    from . import pipeline

    try:
        from . import results  # noqa: F401

        run_mode = 0
    except ImportError:  # analysis not installed in this build
        run_mode = 1
    extra = {} if ns.dashboard_address is None else {"dashboard_address": ns.dashboard_address}
    out = pipeline.run(shards_dir, work_dir, run_mode=run_mode, model_path=ns.model_path,
                       client=ns.client, progress=ns.progress, resume=False, **extra)
    if run_mode == 1:
        print(out.summary_text())
        return 0
    _print_result(out)
    _demo_scores(out, s)
    return 0


def _demo_scores(result: Any, s: Any) -> None:
    """Print how many planted pairs the run found."""
    sim = getattr(result, "similarity", None)
    if sim is None or not len(s.truth):
        return
    found = set(zip(sim["filename_from"], sim["filename_to"], strict=False))
    found |= {(b, a) for a, b in found}
    hits = [(a, b) in found for a, b in zip(s.truth["filename_a"], s.truth["filename_b"], strict=False)]
    print(f"planted duplicate pairs found: {sum(hits)} of {len(hits)}")
    by_edit = s.truth.assign(found=hits).groupby("edit")["found"].agg(["sum", "count"])
    print("  " + ", ".join(f"{e}: {int(r['sum'])}/{int(r['count'])}" for e, r in by_edit.iterrows()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
