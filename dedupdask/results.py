"""Results stage: what a run found, written to and read back from the work_dir.

:class:`DedupResult` holds the tables of one run as dask DataFrames; :func:`save_tables` and
:func:`save_run` write them (called by :func:`dedupdask.analysis.build`, which computes them),
:func:`load` reads them back without recomputing. The files:

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
writes), ``run.json`` last. A build's :class:`DedupResult` reads the tables back from
``results/`` exactly as :func:`load` does.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import dask.dataframe as dd
import pandas as pd

from .analyses import (
    COMPONENT_COLUMNS,
    INVALID_COLUMNS,
    ISSUE_COLUMNS,
    OUTLIER_COLUMNS,
    SIMILARITY_COLUMNS,
    stats_frame,
)
from .analyses.issues import empty_issues, issue_images, scores_frame, summary_counts
from .analyses.names import OUTLIER_NAMES, PAIR_NAMES, named_columns
from .analyses.tiers import DECIDED_COLUMNS, empty_candidates
from .collect import ArchiveInfo, Collection, collect
from .csvs import CSV_FILES, write_csvs
from .store import WorkDir, WorkDirError
from .tables import REBUILD as _REBUILD
from .tables import open_table, table_from_pandas, write_partitions, write_table

__all__ = [
    "DedupResult",
    "from_tables",
    "load",
    "save_run",
    "save_tables",
    "RESULTS_DIR",
    "RUN_JSON",
]

RESULTS_DIR = "results"
RUN_JSON = "run.json"
TABLES = ("similarity", "outliers", "components", "stats", "invalid")
class DedupResult:
    """Everything run_mode=2 found in one work_dir.

    Every per-image and per-pair table is a dask DataFrame, whatever the size of the run:
    partition ``i`` is the file ``results/<table>/part.<i>.parquet``, read when computed
    (``head()`` reads the first file only; ``compute()`` gives pandas), and row ``r`` has
    index ``r``. :meth:`summary` reads the counts ``results/run.json`` recorded.

    Attributes
    ----------
    similarity : dask.dataframe.DataFrame
        ``from, to, similarity, copy_similarity, kind, verify_score``, the match record of a
        verified pair (``verify_matcher, verify_h, ...``:
        :data:`dedupdask.match_record.RECORD_COLUMNS`), ``filename_from,
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
    candidates : dask.dataframe.DataFrame
        Every candidate pair of representatives the tiers decided, accepted or not:
        ``from, to, similarity, copy_similarity, whitened_similarity, same_input, kind, direct,
        to_verify, accepted, verify_score, verify_error``, the match record
        (:data:`dedupdask.match_record.RECORD_COLUMNS`) and the names of both images; most
        similar first. The scores of rejected candidates are here (empty for runs built
        before it was kept).
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
    >>> res = load("work")  # doctest: +SKIP
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
        candidates: dd.DataFrame | None = None,
    ) -> None:
        self._collection = collection
        self.similarity = similarity
        self.outliers = outliers
        self.components = components
        self.invalid = invalid
        self.issues = issues if issues is not None else table_from_pandas(empty_issues())
        self.candidates = candidates if candidates is not None else table_from_pandas(empty_candidates())
        self.run = run
        self.params = dict(run.get("parameters", {}))
        self._files: dd.DataFrame | None = None
        self._html: str | None = None

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
        """Every image member (valid or not), consecutive archives per partition, global ``index``."""
        if self._files is None:
            self._files = self._collection.files()
        return self._files

    @property
    def stats(self) -> dd.DataFrame:
        """Statistics of the valid images (``STATS_COLUMNS``), in the partitions of :attr:`files`."""
        return stats_frame(self.files)

    @property
    def issue_scores(self) -> dd.DataFrame:
        """Every valid image's score per statistics issue type, in the partitions of :attr:`files`.

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
            "verify_errors": int(ver.get("errors", 0)),
            "verify_seconds_per_pair": float(ver.get("seconds_per_pair", 0.0)),
            "exact_duplicate_groups": int(counts.get("exact_groups", 0)),
            "duplicate_groups": count("duplicate_components", lambda: len(self._multi_sizes())),
            "removable": count("removable", lambda: (self._multi_sizes() - 1).sum()),
            "outliers": count("outliers", lambda: len(self.outliers)),
            "issue_images": count("issue_images", lambda: issue_images(self.issues.compute())),
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

    def report(
        self,
        out: str,
        *,
        rows_per_page: int = 100,
        thumbnail_rows: int = 1000,
        storage_options: dict[str, Any] | None = None,
        client: Any = None,
    ) -> Any:
        """Write the report: ``index.html`` with the counters and plots, and every row of the
        pairs, groups, outliers, invalid images and issues on linked pages.

        See :func:`dedupdask.report.write_report`.

        Parameters
        ----------
        out : str
            Folder to write into (local or URL).
        rows_per_page : int
            Rows per page.
        thumbnail_rows : int
            Rows of each table, from its first, whose images get thumbnails.
        storage_options : dict, optional
            fsspec options for the archives and ``out``; default: the run's.
        client : distributed.Client, str or None
            Where the tasks run (a Client, a scheduler address, ``"threads"``; None: dask's
            default, else local threads).

        Returns
        -------
        Report
            ``str(report)`` is the path of ``index.html``.

        Examples
        --------
        >>> rep = res.report("report")  # doctest: +SKIP
        >>> rep.tables["pairs"]["pages"]  # doctest: +SKIP
        2
        """
        from .report import write_report

        return write_report(self, out, rows_per_page=rows_per_page, thumbnail_rows=thumbnail_rows,
                            storage_options=storage_options, client=client)  # fmt: skip

    def show_pair(self, i: int) -> Any:
        """The explain view of row ``i`` of :attr:`similarity`: both images, the tier that
        accepted the pair, every score and, for a verified pair, the alignment drawn (the other
        picture's outline on each, the difference map). Renders inline in a notebook.

        Only the partition holding the row and the archives holding the two images are read
        (:func:`dedupdask.report_notebook.pair_view`).

        Examples
        --------
        >>> res.show_pair(0)  # doctest: +SKIP
        """
        from .report_notebook import pair_view

        return pair_view(self, i)

    def _repr_html_(self) -> str:
        if self._html is None:  # one pass over the results, once per object
            from .report_notebook import summary_html

            self._html = summary_html(self)
        return self._html

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"DedupResult({self.work_dir!r}: {s['images']} images, {s['invalid']} invalid, "
            f"{s['duplicate_groups']} duplicate groups ({s['removable']} removable), "
            f"{s['similar_pairs']} similar pairs, {s['outliers']} outliers; archives "
            f"{s['archives_done']} done, {s['archives_failed']} failed, {s['archives_missing']} missing"
            + (f"; {s['verify_errors']} candidate pairs not verified: see candidates.verify_error" if s["verify_errors"] else "")
            + ")"
        )


def from_tables(col: Collection, tables: dict[str, dd.DataFrame], run: dict[str, Any]) -> DedupResult:
    """The :class:`DedupResult` of a run whose tables are ``tables`` (:func:`load`, and
    :func:`dedupdask.analysis.build` after it wrote them)."""
    return DedupResult(
        col,
        similarity=tables["similarity"],
        outliers=tables["outliers"],
        components=tables["components"],
        invalid=tables["invalid"],
        issues=tables.get("issues"),  # none in a run built before issue labels existed
        candidates=tables.get("candidates"),  # none in a run built before candidates were kept
        run=run,
    )


# -- files ------------------------------------------------------------------------------------
def save_tables(
    wd: WorkDir, tables: dict[str, Any], run: dict[str, Any], *, write_csv: bool = True
) -> dict[str, dd.DataFrame]:
    """Write the tables to ``results/`` and the CSVs from what was written (``run.json``
    is removed first: the run is complete only once :func:`save_run` wrote it again);
    record both in ``run``; return the tables as :func:`load` reads them.

    ``tables`` maps each name of :data:`TABLES` (and ``issues``) to a pandas table (written in
    parts of :data:`dedupdask.tables.ROWS_PER_PART` rows) or a dask one (one file per
    partition, written where it lives)."""
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
    return lazy


def save_run(wd: WorkDir, run: dict[str, Any]) -> None:
    """Write ``results/run.json``, last: it makes the run loadable."""
    wd.write_json(wd.join(RESULTS_DIR, RUN_JSON), run)


# Columns each results/<table>.parquet must have (the first version's; later ones are optional).
_LOAD_REQUIRED = {
    "similarity": ("from", "to", "similarity", "filename_from", "filename_to"),
    "outliers": OUTLIER_COLUMNS,
    "components": COMPONENT_COLUMNS,
    "stats": ("index", "filename", "width", "height", "file_size"),
    "invalid": ("filename", "archive", "member", "error_code", "error_message", "file_size"),
    "issues": ISSUE_COLUMNS,
    "candidates": ("from", "to", "similarity", "kind", "accepted", "verify_score"),
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
        "similarity": [*SIMILARITY_COLUMNS, *named_columns(PAIR_NAMES), "build"],
        "outliers": [*OUTLIER_COLUMNS, *named_columns(OUTLIER_NAMES)],
        "components": list(COMPONENT_COLUMNS),
        "stats": None,
        "invalid": list(INVALID_COLUMNS),
        "issues": list(ISSUE_COLUMNS),
        "candidates": [*DECIDED_COLUMNS, *named_columns(PAIR_NAMES)],
    }
    names = [*TABLES, "issues"] if "issues" in run else list(TABLES)
    if "candidates" in (run.get("tables") or {}):  # kept since runs of matcher records
        names.append("candidates")
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
        Or, for the query work_dir of a reference run (``results/reference.json``), its
        :class:`~dedupdask.reference.ReferenceResult`.

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
    if not wd.fs.exists(path) and wd.fs.exists(wd.join(RESULTS_DIR, "reference.json")):
        from .reference import load_reference  # a query work_dir of a reference run

        return load_reference(wd)  # type: ignore[return-value]
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
    return from_tables(col, _open_tables(wd, run), run)
