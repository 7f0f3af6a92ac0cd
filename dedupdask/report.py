"""Report stage: a static site of a finished run -- plots, and every row of every table paged.

``write_report(work_dir, out)`` writes into ``out`` (a local folder or a URL):

=======================================  =======================================================
``index.html``                           the counters as a table, the plots
                                         (:mod:`dedupdask.report_plots`), the archives with the
                                         highest duplicate rate, links to every table
``<table>/page-<n>.html``                ``pairs`` (the similarity table), ``components`` (images
                                         of the groups of duplicates, largest group first),
                                         ``outliers``, ``invalid``, ``issues``: at most
                                         ``rows_per_page`` rows each, linked first / previous /
                                         next / last and by tens, hundreds and thousands
=======================================  =======================================================

Every row of every table is on a page: the pages of a table are written by one Dask task per
partition of its results table (:mod:`dedupdask.results`), where the partition lives, so no
table is gathered on the client (``out`` must be reachable from the workers, as the
work_dir is). A partition's pages are numbered after the pages of the partitions before it, so
a page holds rows of one partition and the last page of a partition may be shorter.

Thumbnails are read from the archives as the galleries read them (each archive once per
task, tars streamed, zips by their directory): for the first ``thumbnail_rows`` rows of each
table -- the most similar pairs, the largest groups, the least typical images, the first
invalid and the worst-scored images. Later pages name their images (archive, member, index)
without a thumbnail, and say so; ``thumbnail_rows`` sets how far thumbnails go.

A page is one self-contained HTML file: thumbnails as ``data:`` URIs, inline CSS, and one
inline script that sorts a page's rows by a column and filters them by kind, archive and
similarity range. The Content-Security-Policy forbids every external resource and allows that
script only by its SHA-256 hash; every text from the data is escaped.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd

from .analyses.tiers import KINDS
from .galleries import WrittenPage, _archive_name, _check_count, _e, _is_missing, _resolve
from .match_record import parse_homography
from .readback import THUMB_QUALITY, Key, Thumbnail, read_thumbnails
from .report_explain import explain_figures, explain_html
from .report_plots import distributions, svg_archives, svg_histograms
from .store import WorkDir
from .thresholds import ISSUE_TYPES

if TYPE_CHECKING:
    import dask.dataframe as dd

    from .results import DedupResult

__all__ = ["ROWS_PER_PAGE", "THUMBNAIL_ROWS", "Report", "write_report"]

ROWS_PER_PAGE = 100
"""Rows per page of a table."""
THUMBNAIL_ROWS = 1000
"""Rows of each table, from its first, whose images get thumbnails."""
THUMB_SIDE = 120
"""Longest side of a report thumbnail, in pixels."""
EXPLAIN_SIDE = 240
"""Longest side of the images read back for the thumbnails and the explain views' figures."""

_SCRIPT = """(() => {
  const body = document.body, tbody = document.querySelector("table.rows tbody");
  const form = document.querySelector("form.filters"), shown = document.getElementById("shown");
  if (!tbody || !form) { body.dataset.ready = "1"; return; }
  const rows = [...tbody.rows];
  const num = (v) => { const x = parseFloat(v); return Number.isNaN(x) ? null : x; };
  function apply() {
    const kind = form.elements.kind ? form.elements.kind.value : "";
    const arc = form.elements.archive.value.trim().toLowerCase();
    const lo = num(form.elements.smin ? form.elements.smin.value : ""), hi = num(form.elements.smax ? form.elements.smax.value : "");
    let n = 0;
    for (const r of rows) {
      const s = num(r.dataset.sim);
      const ok = (!kind || r.dataset.kind === kind) && (!arc || (r.dataset.archive || "").toLowerCase().includes(arc))
        && (lo === null || (s !== null && s >= lo)) && (hi === null || (s !== null && s <= hi));
      r.hidden = !ok;
      n += ok ? 1 : 0;
    }
    shown.textContent = n + " of " + rows.length + " rows of this page shown";
  }
  form.addEventListener("input", apply);
  form.addEventListener("submit", (e) => e.preventDefault());
  const heads = [...document.querySelectorAll("table.rows th[data-type]")];
  for (const th of heads) {
    th.tabIndex = 0;
    const sort = () => {
      const i = th.cellIndex, isNum = th.dataset.type === "num";
      const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      for (const h of heads) h.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      const key = (r) => { const c = r.cells[i]; const v = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
                           return isNum ? num(v) : v; };
      rows.sort((a, b) => { const x = key(a), y = key(b);
        if (x === y) return 0; if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : 1) * dir; });
      tbody.append(...rows);
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
  }
  apply();
  body.dataset.ready = "1";
})();"""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
CSP = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{SCRIPT_HASH}'"

_CSS = """
body{margin:0;font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;background:#f6f7f9}
main{padding:12px 18px;max-width:1500px}
h1{font-size:21px;margin:6px 0 4px}h2{font-size:16px;margin:22px 0 8px}
.meta,.note{color:#5b6570}.note{font-size:12px;margin:2px 0 10px}
a{color:#0b62c4}code{font-size:12px}
nav.pages{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:8px 0}
nav.pages a,nav.pages span{padding:2px 7px;border:1px solid #dde1e6;border-radius:4px;background:#fff;text-decoration:none}
nav.pages span.here{font-weight:600;border-color:#0b62c4}
form.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin:8px 0}
form.filters input[type=number]{width:6em}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #dde1e6;padding:4px 6px;text-align:left;vertical-align:top}
th[data-type]{cursor:pointer;user-select:none;background:#eef0f3}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.img{display:flex;gap:8px;align-items:flex-start;min-width:200px;max-width:300px}
.thumb{width:124px;height:124px;flex:none;display:flex;align-items:center;justify-content:center;background:#eef0f3;border-radius:4px}
.thumb img{max-width:120px;max-height:120px}
.ph{color:#7a828a;font-size:11px;padding:4px;text-align:center}
.name{font-weight:600;word-break:break-all}.arc{color:#5b6570;word-break:break-all}
.kind-exact{color:#1b7837;font-weight:600}.kind-copy{color:#2166ac;font-weight:600}.kind-near{color:#b2182b;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:10px}
.plot{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px}
.plot svg{display:block;max-width:100%;height:auto}
.plot p{max-width:520px;margin:4px 6px;color:#5b6570;font-size:12px}
details.why summary{cursor:pointer;color:#0b62c4}
details.why[open]{width:460px}
details.why p{margin:4px 0}
table.scores td{border:none;padding:0 8px 0 0;font-size:12px}
figure.explain{margin:6px 0}figure.explain img{max-width:100%;display:block}
figure.explain figcaption{font-size:11px;color:#5b6570}
"""


# -- the returned object ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Report(WrittenPage):
    """A written report.

    ``str(report)`` and ``os.fspath(report)`` give the path of ``index.html``; in a notebook
    the report's index renders inline.

    Attributes
    ----------
    path : str
        Where ``index.html`` was written (local path or URL).
    html : str
        The index page's body (counters, plots, tables).
    tables : dict of str to dict
        Per table (``pairs``, ``components``, ``outliers``, ``invalid``, ``issues``): ``rows``,
        ``pages``, ``thumbnail_rows`` (rows whose images got a thumbnail), ``thumbnails``
        (thumbnails shown), ``missing`` (images of those rows without one) and ``explained``
        (pairs whose explain view has the alignment drawn).
    seconds : float
        Time to build the report.

    Examples
    --------
    >>> r = write_report("work", "report")  # doctest: +SKIP
    >>> r.tables["pairs"]["pages"]  # doctest: +SKIP
    3
    """

    path: str
    html: str
    tables: dict[str, dict[str, int]]
    seconds: float = 0.0

    def __repr__(self) -> str:
        t = ", ".join(f"{k} {v['rows']} rows / {v['pages']} pages" for k, v in self.tables.items())
        return f"Report({self.path!r}: {t})"


# -- small HTML helpers ---------------------------------------------------------------------------------
def _num(v: Any, fmt: str = "{:.4f}") -> tuple[str, str]:
    """(display text, sort value) of a number; empty for missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
        return "", ""
    return fmt.format(v), repr(float(v))


def _page(title: str, body: str, *, script: bool) -> str:
    tail = f"<script>{_SCRIPT}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="dedupdask"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n<main>{body}</main>{tail}\n</body></html>\n"
    )


def _page_name(table: str, page: int) -> str:
    return f"{table}/page-{page + 1:06d}.html"


def _nav(table: str, page: int, n_pages: int) -> str:
    """Links of a page: the index, first / previous / next / last, and jumps by 10, 100, 1000."""
    links = ['<a href="../index.html">index</a>']

    def link(p: int, text: str) -> None:
        if 0 <= p < n_pages and p != page:
            links.append(f'<a href="{posixpath.basename(_page_name(table, p))}">{text}</a>')

    link(0, "\u00ab first")
    for step in (1000, 100, 10):
        link(page - step, f"\u2212{step}")
    link(page - 1, "\u2039 previous")
    links.append(f'<span class="here">page {page + 1} of {n_pages}</span>')
    link(page + 1, "next \u203a")
    for step in (10, 100, 1000):
        link(page + step, f"+{step}")
    link(n_pages - 1, "last \u00bb")
    return f'<nav class="pages">{"".join(links)}</nav>'


# -- tables ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Table:
    """How one results table becomes pages."""

    name: str
    title: str
    what: str  # a sentence: what a row is and the order
    headers: tuple[tuple[str, str], ...]  # (header, "num" | "text")
    images: tuple[str, ...]  # the columns holding global image indices (thumbnails)
    row: Callable[[Any, int, Any], tuple[str, dict[str, str]]]  # (row, number, _Cells)
    kinds: tuple[str, ...] = ()  # values of the kind filter
    sim_filter: str = ""  # label of the similarity-range filter; "" = none
    kind_label: str = "kind"  # label of the kind filter


def _pair_row(r: Any, n: int, img: _Cells) -> tuple[str, dict[str, str]]:
    kind = str(r["kind"]) if isinstance(r["kind"], str) else ""
    s, sv = _num(r["similarity"])
    c, cv = _num(r.get("copy_similarity", None))
    v, vv = _num(r.get("verify_score", None), "{:.3f}")
    cells = (f'<td class="num" data-v="{n}">{n + 1}</td><td class="kind-{_e(kind)}">{_e(kind)}</td>'
             f'<td class="num" data-v="{sv}">{s}</td><td class="num" data-v="{cv}">{c}</td>'
             f'<td class="num" data-v="{vv}">{v}</td>'
             f"<td>{img(r['from'], '_from')}</td><td>{img(r['to'], '_to')}</td><td>{img.explain()}</td>")  # fmt: skip
    arcs = f"{_archive_name(r.get('archive_from', ''))}\n{_archive_name(r.get('archive_to', ''))}"
    return cells, {"kind": kind, "sim": sv, "archive": arcs}


def _component_row(r: Any, n: int, img: _Cells) -> tuple[str, dict[str, str]]:
    cells = (f'<td class="num" data-v="{n}">{n + 1}</td><td class="num" data-v="{int(r["component_id"])}">'
             f'{int(r["component_id"])}</td><td class="num" data-v="{int(r["component_size"])}">{int(r["component_size"])}</td>'
             f"<td>{img(r['index'], '')}</td>")  # fmt: skip
    return cells, {"archive": _archive_name(r.get("archive", ""))}


def _outlier_row(r: Any, n: int, img: _Cells) -> tuple[str, dict[str, str]]:
    s, sv = _num(r["similarity"])
    cells = (f'<td class="num" data-v="{n}">{n + 1}</td><td class="num" data-v="{sv}">{s}</td>'
             f"<td>{img(r['index'], '')}</td><td>{img(r['nearest'], '_nearest')}</td>")  # fmt: skip
    return cells, {"sim": sv, "archive": f"{_archive_name(r.get('archive', ''))}\n{_archive_name(r.get('archive_nearest', ''))}"}


def _invalid_row(r: Any, n: int, img: _Cells) -> tuple[str, dict[str, str]]:
    size, sv = _num(r["file_size"], "{:.0f}")
    cells = (f'<td class="num" data-v="{n}">{n + 1}</td><td class="name">{_e(r["member"])}</td>'
             f'<td class="arc">{_e(r["archive"])}</td><td>{_e(r["error_code"])}</td><td>{_e(r["error_message"])}</td>'
             f'<td class="num" data-v="{sv}">{size}</td>')  # fmt: skip
    return cells, {"archive": _archive_name(r["archive"])}


def _issue_row(r: Any, n: int, img: _Cells) -> tuple[str, dict[str, str]]:
    s, sv = _num(r["score"], "{:.3f}")
    other = img(r["other"], "_other") if not _is_missing(r["other"]) else ""
    cells = (f'<td class="num" data-v="{n}">{n + 1}</td><td>{_e(r["issue"])}</td>'
             f'<td class="num" data-v="{sv}">{s}</td><td>{img(r["index"], "")}</td><td>{other}</td>')  # fmt: skip
    return cells, {"kind": str(r["issue"]), "sim": sv, "archive": _archive_name(r.get("archive", ""))}


TABLES = {
    "pairs": _Table(
        "pairs", "Similar pairs",
        "Each pair of images reported as duplicates once, most similar first (results/similarity).",
        (("#", "num"), ("kind", "text"), ("similarity", "num"), ("DCT similarity", "num"),
         ("verification", "num"), ("image", "text"), ("other image", "text"), ("why", "text")),
        ("from", "to"), _pair_row, KINDS, "similarity"),
    "components": _Table(
        "components", "Groups of duplicates",
        "Every image of a group of more than one image (connected pairs), largest group first "
        "(results/components).",
        (("#", "num"), ("group", "num"), ("size", "num"), ("image", "text")),
        ("index",), _component_row),
    "outliers": _Table(
        "outliers", "Outliers",
        "Images least similar to their nearest neighbour, least similar first (results/outliers).",
        (("#", "num"), ("similarity", "num"), ("image", "text"), ("nearest neighbour", "text")),
        ("index", "nearest"), _outlier_row, (), "similarity"),
    "invalid": _Table(
        "invalid", "Invalid images",
        "Image members that could not be decoded, with the reason (results/invalid).",
        (("#", "num"), ("member", "text"), ("archive", "text"), ("error", "text"), ("message", "text"),
         ("bytes", "num")),
        (), _invalid_row),
    "issues": _Table(
        "issues", "Image issues",
        "One row per image and issue type at or below its cut-off (results/issues); score 0 is worst.",
        (("#", "num"), ("issue", "text"), ("score", "num"), ("image", "text"), ("other image", "text")),
        ("index", "other"), _issue_row, (*ISSUE_TYPES, *(f"{k}_duplicate" for k in KINDS)), "score", "issue"),
}  # fmt: skip


def _frames(res: DedupResult) -> dict[str, dd.DataFrame]:
    comp = res.components
    multi = comp[comp["component_size"] > 1]
    multi = multi.assign(_order=-multi["component_size"]).sort_values(["_order", "component_id", "index"])
    issues = res.issues.sort_values(["score", "issue", "index"])
    return {"pairs": res.similarity, "components": multi, "outliers": res.outliers,
            "invalid": res.invalid, "issues": issues}  # fmt: skip


# -- one partition's pages (a Dask task) --------------------------------------------------------------
def _head_indices(df: pd.DataFrame, n: int, columns: Sequence[str]) -> np.ndarray:
    """The image indices in ``columns`` of the first ``n`` rows of a partition."""
    head = df.iloc[: max(n, 0)]
    return np.concatenate([pd.to_numeric(head[c], errors="coerce").dropna().to_numpy(dtype=np.int64)
                           for c in columns])  # fmt: skip


def _thumbs_for(
    heads: Sequence[np.ndarray], specs: Sequence[tuple[Any, ...]], offsets: np.ndarray, so: dict[str, Any],
    max_side: int,
) -> tuple[pd.DataFrame, dict[Key, Thumbnail]]:
    """Names and thumbnails of the global indices in ``heads``: only their archives' Parquet
    files are read, and each of those archives once (:func:`dedupdask.readback.read_thumbnails`)."""
    from .collect import read_archive_files
    from .verify_frames import image_info

    idx = np.unique(np.concatenate([np.zeros(0, dtype=np.int64), *heads]))
    idx = idx[idx >= 0]
    pos = np.unique(np.searchsorted(offsets, idx, side="right") - 1)
    frames = []
    for p in pos[pos >= 0]:
        f = read_archive_files(specs[int(p)], ["index", "archive", "member"])
        got = image_info(f, ["archive", "member", "occ"])
        frames.append(got[got.index.isin(idx)])
    info = pd.concat(frames) if frames else pd.DataFrame(columns=["archive", "member", "occ"])
    keys = {(str(a), str(m), int(o)) for a, m, o in zip(info["archive"], info["member"], info["occ"], strict=True)}
    thumbs = read_thumbnails(keys, so, max_side=max_side, quality=THUMB_QUALITY) if keys else {}
    return info, thumbs


class _Cells:
    """The image cells and explain views of one partition's rows: thumbnails (read at
    :data:`EXPLAIN_SIDE`, shown at ``max_side``) for the rows before ``n_thumb``, names after."""

    def __init__(self, info: pd.DataFrame, thumbs: dict[Key, Thumbnail], n_thumb: int, ctx: dict[str, Any],
                 counts: dict[str, int]) -> None:  # fmt: skip
        self.info, self.thumbs, self.n_thumb, self.ctx, self.counts = info, thumbs, n_thumb, ctx, counts
        self._arrays: dict[int, np.ndarray | None] = {}
        self._cells: dict[int, Thumbnail] = {}
        self.r: dict[str, Any] = {}
        self.n = 0

    def bind(self, r: dict[str, Any], n: int) -> _Cells:
        self.r, self.n = r, n
        return self

    def _key(self, i: int) -> Key | None:
        if i not in self.info.index:
            return None
        a, m, o = self.info.loc[i, ["archive", "member", "occ"]]
        return (str(a), str(m), int(o))

    def array(self, i: int) -> np.ndarray | None:
        """The image read back (long side :data:`EXPLAIN_SIDE`), None when it was not."""
        if i not in self._arrays:
            key = self._key(i)
            t = self.thumbs.get(key) if key else None
            self._arrays[i] = _decode(t.uri) if t is not None and t.uri else None
        return self._arrays[i]

    def thumb(self, i: int) -> Thumbnail:
        if i not in self._cells:
            key = self._key(i)
            if key is None:
                self._cells[i] = Thumbnail(reason=f"image {i} is not in the work_dir's files")
            else:
                t = self.thumbs.get(key, Thumbnail(reason="thumbnail not read"))
                arr = self.array(i) if t.uri else None
                self._cells[i] = _thumbnail(arr, self.ctx["max_side"]) if arr is not None else t
        return self._cells[i]

    def __call__(self, index: Any, suffix: str) -> str:
        if _is_missing(index):
            return ""
        i, r = int(index), self.r
        arc, member = r.get(f"archive{suffix}"), r.get(f"member{suffix}")
        thumb = ""
        if self.n < self.n_thumb:
            t = self.thumb(i)
            if i in self.info.index:
                a, m = self.info.loc[i, ["archive", "member"]]
                arc = a if _is_missing(arc) else arc
                member = m if _is_missing(member) else member
            if t.uri:
                thumb = (f'<div class="thumb"><img src="{t.uri}" width="{t.width}" height="{t.height}" '
                         f'alt="{_e(member or i)}" decoding="async"></div>')  # fmt: skip
                self.counts["thumbnails"] += 1
            else:
                thumb = f'<div class="thumb"><div class="ph">no thumbnail: {_e(t.reason)}</div></div>'
                self.counts["missing"] += 1
        return (f'<div class="img">{thumb}<div><div class="name" title="{_e(member, 2000)}">{_e(member)}</div>'
                f'<div class="arc" title="{_e(arc, 2000)}">{_e(_archive_name(arc))} &middot; #{i}</div></div></div>')  # fmt: skip

    def explain(self) -> str:
        """The row's explain view (:mod:`dedupdask.report_explain`): figures on thumbnail rows."""
        r = self.r
        figures, sizes = None, None
        H = parse_homography(r.get("verify_h"))
        if self.n < self.n_thumb:
            a, b = self.array(int(r["from"])), self.array(int(r["to"]))
            if a is not None and b is not None:
                sizes = ((a.shape[1], a.shape[0]), (b.shape[1], b.shape[0]))
                if H is not None:
                    try:
                        figures = explain_figures(a, b, H)
                        self.counts["explained"] += 1
                    except (ValueError, np.linalg.LinAlgError):  # a degenerate alignment: text only
                        figures = None
        body = explain_html(r, self.ctx["params"], figures, sizes)
        return f'<details class="why"><summary>why</summary>{body}</details>'


def _decode(uri: str) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def _thumbnail(arr: np.ndarray, side: int) -> Thumbnail:
    """A ``data:`` JPEG of ``arr`` with its long side at most ``side``."""
    from PIL import Image

    im = Image.fromarray(arr)
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=THUMB_QUALITY)
    return Thumbnail("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), im.width, im.height)


def _write_pages(
    df: pd.DataFrame, table: str, first_row: int, first_page: int, n_pages: int, ctx: dict[str, Any],
    read: tuple[pd.DataFrame, dict[Key, Thumbnail]] | None = None,
) -> dict[str, int]:
    """Render and write the pages of one partition (``read``: the thumbnails of the first
    rows of every table, :func:`_thumbs_for`); return its counts."""
    spec = TABLES[table]
    rpp, thumb_rows = ctx["rows_per_page"], ctx["thumbnail_rows"]
    out: WorkDir = ctx["out"]
    df = df.reset_index(drop=True)
    n_thumb = int(np.clip(thumb_rows - first_row, 0, len(df))) if spec.images else 0
    info, thumbs = read if read is not None else (pd.DataFrame(columns=["archive", "member", "occ"]), {})
    counts = {"pages": 0, "thumbnails": 0, "missing": 0, "thumbnail_rows": n_thumb, "explained": 0}
    cells = _Cells(info, thumbs, n_thumb, ctx, counts)
    page_no = first_page
    for start in range(0, len(df), rpp) or [0]:  # an empty table's one page, empty
        part = df.iloc[start : start + rpp]
        rows = []
        for k, r in enumerate(part.to_dict("records")):
            n = start + k
            html_, data = spec.row(r, first_row + n, cells.bind(r, n))
            attrs = "".join(f' data-{key}="{_e(v, 10_000)}"' for key, v in data.items())
            rows.append(f"<tr{attrs}>{html_}</tr>")
        body = _table_page(spec, page_no, n_pages, first_row + start, rows, ctx)
        out.write_bytes(out.join(_page_name(table, page_no)), body.encode("utf-8"))
        counts["pages"] += 1
        page_no += 1
    return counts


def _table_page(spec: _Table, page: int, n_pages: int, first: int, rows: list[str], ctx: dict[str, Any]) -> str:
    heads = "".join(f'<th data-type="{t}" class="{"num" if t == "num" else ""}">{_e(h)}</th>' for h, t in spec.headers)
    filters = ['<label>archive <input name="archive" type="search" placeholder="name contains"></label>']
    if spec.kinds:
        opts = "".join(f'<option value="{k}">{k}</option>' for k in spec.kinds)
        filters.insert(0, f'<label>{spec.kind_label} <select name="kind"><option value="">all</option>{opts}</select></label>')
    if spec.sim_filter:
        filters.append(f'<label>{spec.sim_filter} from <input name="smin" type="number" step="any"></label>'
                       f'<label>to <input name="smax" type="number" step="any"></label>')  # fmt: skip
    thumb_note = ""
    if spec.images and first + len(rows) > ctx["thumbnail_rows"]:
        thumb_note = (f'<p class="note">Thumbnails are shown for the first {ctx["thumbnail_rows"]} rows of each '
                      "table only; the images of later rows are named (archive, member, index). "
                      "<code>write_report(..., thumbnail_rows=N)</code> shows more.</p>")  # fmt: skip
    nav = _nav(spec.name, page, n_pages)
    rng = f"rows {first + 1}\u2013{first + len(rows)}" if rows else "no rows"
    body = (f"<h1>{_e(spec.title)}</h1><p class=\"meta\">{_e(spec.what)} {rng} of {ctx['rows'][spec.name]}; "
            f"work_dir <code>{_e(ctx['work_dir'], 2000)}</code></p>{nav}"
            f'<form class="filters">{"".join(filters)}<span id="shown"></span></form>{thumb_note}'
            f'<table class="rows"><thead><tr>{heads}</tr></thead><tbody>{"".join(rows)}</tbody></table>{nav}')  # fmt: skip
    return _page(f"{spec.title} \u2013 page {page + 1}", body, script=True)


# -- the index -------------------------------------------------------------------------------------------
_COUNTERS = (
    ("images", "valid images analysed"),
    ("invalid", "image members that could not be decoded"),
    ("similar_pairs", "pairs reported (every kind)"),
    ("exact_pairs", "pairs of byte- or pixel-identical images"),
    ("copy_pairs", "pairs of copies (DCT descriptor, verified)"),
    ("near_pairs", "near-duplicate pairs"),
    ("verify_candidates", "candidate pairs verified by pixels in this build"),
    ("verify_accepted", "of those, accepted"),
    ("verify_errors", "candidate pairs not verified (an image not read, the matcher failed)"),
    ("duplicate_groups", "groups of duplicates (components of more than one image)"),
    ("removable", "images to remove so one per group remains"),
    ("outliers", "outliers"),
    ("issue_images", "images with at least one issue"),
    ("archives_done", "archives analysed"),
    ("archives_failed", "archives that failed"),
    ("archives_missing", "archives not extracted"),
)


def _index(res: DedupResult, tables: dict[str, dict[str, int]], hists_svg: list[tuple[str, str, str]],
           archives: pd.DataFrame, archives_svg: str, thumbnail_rows: int) -> str:
    s = res.summary()
    counters = "".join(f'<tr><td>{_e(label)}</td><td class="num">{int(s.get(k, 0)):,}</td></tr>'
                       for k, label in _COUNTERS)  # fmt: skip
    issues = s.get("issues") or {}
    counters += "".join(f'<tr><td>images labelled {_e(k)}</td><td class="num">{int(v):,}</td></tr>'
                        for k, v in sorted(issues.items()))  # fmt: skip
    links = "".join(
        f'<tr><td><a href="{_page_name(name, 0)}">{_e(TABLES[name].title)}</a></td>'
        f'<td class="num">{t["rows"]:,}</td><td class="num">{t["pages"]:,}</td>'
        f'<td class="num">{t["thumbnails"]:,}</td><td>{_e(TABLES[name].what)}</td></tr>'
        for name, t in tables.items()
    )
    plots = "".join(f'<figure class="plot">{svg}<p>{_e(note, 2000)}</p></figure>' if note else
                    f'<figure class="plot">{svg}</figure>' for _, svg, note in hists_svg)  # fmt: skip
    worst = archives.sort_values(["duplicate_rate", "archive"], ascending=[False, True]).head(20)
    arc_rows = "".join(
        f'<tr><td class="arc">{_e(a.archive)}</td><td class="num">{a.images:,}</td><td class="num">{a.invalid:,}</td>'
        f'<td class="num">{a.in_groups:,}</td><td class="num">{a.duplicate_rate:.3f}</td></tr>'
        for a in worst.itertuples()
    )  # fmt: skip
    p = res.params
    params = ", ".join(f"{k} {p[k]}" for k in ("threshold", "copy_threshold", "verify_threshold", "verify_score",
                                                "whitened_threshold", "ccthreshold", "lower_threshold") if k in p)
    return (
        f"<h1>dedupdask report</h1><p class=\"meta\">work_dir <code>{_e(res.work_dir, 2000)}</code> &middot; "
        f"built {_e(res.run.get('created', ''))} &middot; report {time.strftime('%Y-%m-%d %H:%M')}"
        f"<br>parameters: {_e(params, 2000)}</p>"
        f"<h2>Counts</h2><table><tbody>{counters}</tbody></table>"
        "<h2>Every row</h2><table><thead><tr><th>table</th><th>rows</th><th>pages</th><th>thumbnails</th>"
        f"<th>what a row is</th></tr></thead><tbody>{links}</tbody></table>"
        f'<p class="note">Thumbnails are read for the first {thumbnail_rows:,} rows of each table; later '
        "pages name their images without one.</p>"
        f'<h2>Archives</h2><figure class="plot">{archives_svg}</figure>'
        f"<p class=\"note\">The {len(worst)} archives with the highest share of images in a group of duplicates "
        f"(of {len(archives):,}):</p><table><thead><tr><th>archive</th><th>images</th><th>invalid</th>"
        f"<th>in a group</th><th>duplicate rate</th></tr></thead><tbody>{arc_rows}</tbody></table>"
        f'<h2>Distributions</h2><div class="plots">{plots}</div>'
    )


# -- the entry point --------------------------------------------------------------------------------------
def write_report(
    result_or_work_dir: DedupResult | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    rows_per_page: int = ROWS_PER_PAGE,
    thumbnail_rows: int = THUMBNAIL_ROWS,
    max_side: int = THUMB_SIDE,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
) -> Report:
    """Write the report of a finished run: ``index.html`` and every table's pages.

    Parameters
    ----------
    result_or_work_dir : DedupResult or str
        The run (or its work_dir, read with :func:`dedupdask.load`).
    out : str or path
        Folder to write into (local or URL, e.g. ``s3://bucket/report``); pages of an earlier
        report there are overwritten.
    rows_per_page : int
        Rows of a table per page.
    thumbnail_rows : int
        Rows of each table, from its first, whose images get thumbnails (0: none).
    max_side : int
        Longest side of a thumbnail, in pixels.
    storage_options : dict, optional
        fsspec options for the archives and ``out``; default: the run's.
    client : distributed.Client, str or None
        Where the counting and the page tasks run (:func:`dedupdask.scheduler.resolve`: a
        Client, a scheduler address, ``"sync"``/``"threads"``; None: dask's default Client,
        else local threads). ``out`` must be reachable from its workers.

    Returns
    -------
    Report
        ``str(report)`` is the path of ``index.html``.

    Raises
    ------
    ValueError
        If an option is out of range, or the work_dir is a reference run's query work_dir.

    Examples
    --------
    >>> report = write_report("work", "report")  # doctest: +SKIP
    >>> report.tables["pairs"]["rows"]  # doctest: +SKIP
    120
    """
    from .scheduler import resolve

    with resolve(client):
        return _write_report(result_or_work_dir, out, rows_per_page, thumbnail_rows, max_side, storage_options)


def _write_report(
    result_or_work_dir: Any, out: Any, rows_per_page: int, thumbnail_rows: int, max_side: int,
    storage_options: dict[str, Any] | None,
) -> Report:  # fmt: skip
    t0 = time.perf_counter()
    rows_per_page = _check_count("rows_per_page", rows_per_page, 1)
    thumbnail_rows = _check_count("thumbnail_rows", thumbnail_rows)
    max_side = _check_count("max_side", max_side, 8)
    res, so = _resolve(result_or_work_dir, storage_options)
    from .results import DedupResult

    if not isinstance(res, DedupResult):  # a reference run's query work_dir: its pairs are cross pairs
        raise ValueError(f"{getattr(res, 'work_dir', out)}: a reference run's query work_dir has no report; "
                         "res.gallery(out) shows its cross pairs")  # fmt: skip
    target = WorkDir(os.fspath(out), so)
    target.makedirs()
    frames = _frames(res)
    for name in frames:
        target.makedirs(name)
    (lengths,) = dask.compute({name: f.map_partitions(len) for name, f in frames.items()})
    col = res._collection
    ctx = {  # what every page task gets: nothing per archive or per image
        "rows_per_page": rows_per_page, "thumbnail_rows": thumbnail_rows, "max_side": max_side, "out": target,
        "work_dir": res.work_dir, "rows": {name: int(sum(lengths[name])) for name in frames},
        "params": dict(res.params),
    }  # fmt: skip
    parts = {name: f.to_delayed() for name, f in frames.items()}
    heads = []  # the image indices of each table's first rows, taken where the partitions live
    for name in frames:
        r0s = np.concatenate([[0], np.cumsum([int(n) for n in lengths[name]])[:-1]]).astype(int)
        heads += [dask.delayed(_head_indices)(part, thumbnail_rows - int(r0), TABLES[name].images)
                  for part, r0 in zip(parts[name], r0s, strict=True)
                  if r0 < thumbnail_rows and TABLES[name].images]  # fmt: skip
    side = max(EXPLAIN_SIDE, max_side)
    thumbs = None
    if heads:  # one task reads them all (only it gets the archives' list)
        offsets = np.array([a.offset for a in col.archives], dtype=np.int64)
        thumbs = dask.delayed(_thumbs_for)(heads, col._specs(range(len(col.archives))), offsets, so, side)
    tasks: dict[str, list[Any]] = {}
    n_pages: dict[str, int] = {}
    for name in frames:
        sizes = [int(n) for n in lengths[name]]
        pages = [-(-n // rows_per_page) for n in sizes]
        if not sum(pages):  # an empty table still gets its (empty) first page
            pages[0] = 1
        n_pages[name] = sum(pages)
        first_rows = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
        first_pages = np.concatenate([[0], np.cumsum(pages)[:-1]]).astype(int)
        tasks[name] = [
            dask.delayed(_write_pages)(part, name, int(r0), int(p0), n_pages[name], ctx,
                                       thumbs if r0 < thumbnail_rows and TABLES[name].images else None)
            for part, r0, p0, k in zip(parts[name], first_rows, first_pages, pages, strict=True) if k
        ]
    hists, archives = distributions(res)
    (done,) = dask.compute(tasks)
    tables = {}
    for name in frames:
        c = {"rows": ctx["rows"][name], "pages": n_pages[name], "thumbnail_rows": 0, "thumbnails": 0, "missing": 0,
             "explained": 0}
        for part in done[name]:
            for k in ("thumbnail_rows", "thumbnails", "missing", "explained"):
                c[k] += part[k]
        tables[name] = c
    svgs = svg_histograms(hists)
    body = _index(res, tables, [(h.title, s, h.note) for h, s in zip(hists, svgs, strict=True)],
                  archives, svg_archives(archives), thumbnail_rows)  # fmt: skip
    path = target.join("index.html")
    target.write_bytes(path, _page("dedupdask report", body, script=False).encode("utf-8"))
    shown = path if target.local else target.fs.unstrip_protocol(path)
    return Report(shown, body, tables, time.perf_counter() - t0)
