"""Gallery stage: self-contained HTML pages of duplicates, outliers, components and stats.

Thumbnails are read straight from the archives (local or ``s3://``, through the run's
``storage_options``): the wanted members are grouped by archive and each archive is read once
-- a tar in one streaming pass (:func:`dedupdask.archives.iter_members`) that stops as soon as
every wanted member was seen, a zip through its central directory, a folder chunk file by
file -- so nothing has to be extracted to disk first. Each page is one HTML file with the
thumbnails as ``data:`` URIs (JPEG, longest side 200 px by default), inline CSS, a
Content-Security-Policy that forbids every external resource and every script, and all text
escaped: open it from disk, mail it, copy it anywhere. In a notebook the returned
:class:`Gallery` renders inline.

Page names follow fastdup: ``duplicates.html``, ``outliers.html``, ``components.html`` and
``<metric>.html``; the per-image issue labels (:mod:`dedupdask.analyses.issues`) get one page
per type, ``issue_<type>.html``, worst score first, as cleanvision's report shows them.
"""

from __future__ import annotations

import html
import os
import posixpath
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .readback import (  # re-exported: part of the gallery API
    THUMB_QUALITY,
    THUMB_SIDE,
    Key,
    Thumbnail,
    make_thumbnail,
    read_archive_members,
    read_thumbnails,
)
from .store import WorkDir

if TYPE_CHECKING:
    from .results import DedupResult

__all__ = [
    "Gallery",
    "STATS_METRICS",
    "Thumbnail",
    "create_components_gallery",
    "create_duplicates_gallery",
    "create_issues_gallery",
    "create_outliers_gallery",
    "create_stats_gallery",
    "make_thumbnail",
    "read_archive_members",
    "read_thumbnails",
    "write_galleries",
]

MAX_TEXT = 300  # characters of a caption / name shown (the full text is in the tooltip)
MAX_TITLE = 2000
# metric -> (column of the stats table, natural order is descending, description)
STATS_METRICS: dict[str, tuple[str, bool, str]] = {
    "blur": ("blur", False, "variance of the Laplacian, low = blurry"),
    "dark": ("mean", False, "mean grey level"),
    "bright": ("mean", True, "mean grey level"),
    "mean": ("mean", False, "mean grey level"),
    "min": ("min", False, "minimum grey level"),
    "max": ("max", False, "maximum grey level"),
    "stdv": ("stdv", False, "standard deviation of the grey levels"),
    "unique": ("unique", False, "distinct grey levels"),
    "contrast": ("contrast", False, "Michelson contrast"),
    "size": ("size", False, "width x height in pixels"),
    "width": ("width", False, "width in pixels"),
    "height": ("height", False, "height in pixels"),
    "file_size": ("file_size", False, "encoded size in bytes"),
}
DEFAULT_METRICS = ("blur", "dark", "bright", "size")
_INFO_COLS = ["filename", "archive", "member", "caption", "width", "height", "file_size", "index"]


# -- the returned object ------------------------------------------------------------------------
class WrittenPage:
    """What a written page (a :class:`Gallery`, a :class:`~dedupdask.report.Report`) is to its
    caller: ``str(page)`` and ``os.fspath(page)`` give its path, and a notebook renders its
    ``html``."""

    path: str
    html: str

    def __str__(self) -> str:
        return self.path

    def __fspath__(self) -> str:
        return self.path

    def _repr_html_(self) -> str:
        return self.html


@dataclass(frozen=True)
class Gallery(WrittenPage):
    """One written gallery page.

    ``str(g)`` and ``os.fspath(g)`` give the path of the HTML file; in a notebook the gallery
    renders inline (``_repr_html_``).

    Attributes
    ----------
    path : str
        Where the page was written (local path or URL).
    html : str
        The page's body: a ``<div class="ddk-gallery">`` with its own scoped ``<style>``.
    title : str
        Page title.
    n_rows : int
        Rows shown (pairs, outliers, components or images).
    n_thumbnails, n_missing : int
        Thumbnails shown, and placeholders shown instead of a thumbnail.

    Examples
    --------
    >>> g = create_duplicates_gallery("work", "galleries")  # doctest: +SKIP
    >>> str(g)  # doctest: +SKIP
    'galleries/duplicates.html'
    """

    path: str
    html: str
    title: str = ""
    n_rows: int = 0
    n_thumbnails: int = 0
    n_missing: int = 0

    def __repr__(self) -> str:
        return (
            f"Gallery({self.path!r}: {self.n_rows} rows, {self.n_thumbnails} thumbnails, "
            f"{self.n_missing} missing)"
        )


def _image_info(res: DedupResult, indices: Iterable[int]) -> pd.DataFrame:
    """Rows of the per-archive Parquet files for global ``indices`` (only their archives read).

    Returns a frame indexed by global index with ``_INFO_COLS`` plus ``occ`` (occurrence of the
    member name in its archive).
    """
    idx = np.unique(np.asarray(list(indices), dtype=np.int64))
    cols = [*_INFO_COLS, "occ"]
    if idx.size == 0:
        return pd.DataFrame(columns=cols).set_index("index")
    archives = res.run.get("archives") or []
    offsets = np.array([int(a["offset"]) for a in archives], dtype=np.int64)
    pos = np.searchsorted(offsets, idx, side="right") - 1
    need = sorted({int(p) for p in pos if p >= 0})
    import dask

    files = res._collection.archive_files()  # partition p = archive p
    parts = dask.compute(*[files.partitions[p] for p in need], scheduler="threads")
    from .verify_frames import image_info

    frames = []
    for df in parts:
        got = image_info(df, [c for c in cols if c != "index"])
        frames.append(got[got.index.isin(idx)])
    if not frames:
        return pd.DataFrame(columns=cols).set_index("index")
    info = pd.concat(frames)
    info.index = info.index.astype("int64").rename("index")
    return info


# -- HTML ---------------------------------------------------------------------------------------------
_CSS = """
.ddk-gallery{font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
 background:#f6f7f9;padding:12px 16px;box-sizing:border-box}
.ddk-gallery *{box-sizing:border-box}
.ddk-gallery h1{font-size:20px;margin:4px 0 2px}
.ddk-gallery .meta{color:#5b6570;margin:0 0 12px}
.ddk-gallery .row{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:0 0 10px;
 padding:8px 10px;content-visibility:auto;contain-intrinsic-size:auto 300px}
.ddk-gallery .label{font-weight:600;margin:0 0 6px}
.ddk-gallery .label .sim{color:#0b62c4}
.ddk-gallery .cards{display:flex;flex-wrap:wrap;gap:10px}
.ddk-gallery .card{margin:0;width:212px}
.ddk-gallery .thumb{width:212px;height:212px;display:flex;align-items:center;justify-content:center;
 background:#eef0f3;border-radius:4px;overflow:hidden}
.ddk-gallery .thumb img{max-width:200px;max-height:200px;display:block}
.ddk-gallery .ph{color:#a0321e;font-size:12px;padding:8px;text-align:center;word-break:break-word}
.ddk-gallery figcaption{margin-top:4px;font-size:12px;word-break:break-all}
.ddk-gallery figcaption div{margin:1px 0}
.ddk-gallery .name{font-weight:600}
.ddk-gallery .note{color:#a0321e;font-size:11px;text-transform:uppercase;letter-spacing:.03em}
.ddk-gallery .arc,.ddk-gallery .size{color:#5b6570}
.ddk-gallery .cap{font-style:italic;word-break:break-word}
.ddk-gallery .more{align-self:center;color:#5b6570}
.ddk-gallery .rows.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(236px,1fr));gap:10px}
.ddk-gallery .rows.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(470px,1fr));gap:10px}
.ddk-gallery .rows.grid .row,.ddk-gallery .rows.pairs .row{margin:0}
.ddk-gallery .empty{color:#5b6570;font-style:italic}
.ddk-gallery a{color:#0b62c4}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: Any, limit: int = MAX_TEXT) -> str:
    """``text`` escaped for HTML, cut to ``limit`` characters; empty for a missing value."""
    s = "" if _is_missing(text) else str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    return html.escape(s, quote=True)


def _human_bytes(n: Any) -> str:
    try:
        v = float(n)
    except (TypeError, ValueError):
        return ""
    if np.isnan(v):
        return ""
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return ""  # pragma: no cover


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _archive_name(url: Any) -> str:
    """The last part of an archive's URL (the whole URL when it has none; empty when missing)."""
    s = "" if _is_missing(url) else str(url)
    return posixpath.basename(s.rstrip("/")) or s


@dataclass
class _Card:
    index: int
    note: str = ""  # e.g. "blur 12.3" or "nearest"
    shown: int | None = None  # the index printed, when ``index`` is only a key (reference runs)


@dataclass
class _Row:
    label: str  # already HTML (escaped pieces)
    cards: list[_Card]
    more: int = 0


@dataclass
class _Plan:
    """A page before thumbnails are read: its rows and the text above them."""

    name: str  # file stem
    title: str
    meta: str
    rows: list[_Row]
    layout: str = ""  # "", "grid" (one image per row) or "pairs" (two images per row)
    empty: str = "nothing to show"
    indices: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.indices = {c.index for r in self.rows for c in r.cards}


def _card_html(
    card: _Card, info: pd.DataFrame, thumbs: Mapping[Key, Thumbnail]
) -> tuple[str, bool]:
    if card.index in info.index:
        r = info.loc[card.index]
        key = (str(r["archive"]), str(r["member"]), int(r["occ"]))
        t = thumbs.get(key, Thumbnail(reason="thumbnail not read"))
        member, archive, filename = r["member"], r["archive"], r["filename"]
        caption = None if _is_missing(r["caption"]) else r["caption"]
        w, h, fsize = r["width"], r["height"], r["file_size"]
    else:
        t = Thumbnail(reason=f"image {card.index} is not in the work_dir's files")
        member = archive = filename = caption = None
        w = h = fsize = None
    alt = _e(member or card.index)
    if t.uri:
        img = (f'<img src="{t.uri}" width="{t.width}" height="{t.height}" alt="{alt}" '
               f'decoding="async">')  # fmt: skip
    else:
        img = f'<div class="ph">no thumbnail: {_e(t.reason)}</div>'
    lines = []
    if card.note:
        lines.append(f'<div class="note">{card.note}</div>')
    lines.append(f'<div class="name" title="{_e(filename, MAX_TITLE)}">{_e(member)}</div>')
    if archive is not None:
        lines.append(f'<div class="arc" title="{_e(archive, MAX_TITLE)}">{_e(_archive_name(archive))} '
                     f"&middot; #{card.index if card.shown is None else card.shown}</div>")  # fmt: skip
    if caption:
        lines.append(f'<div class="cap" title="{_e(caption, MAX_TITLE)}">{_e(caption)}</div>')
    size = []
    if not _is_missing(w) and not _is_missing(h):
        size.append(f"{int(w)}\u00d7{int(h)}")
    if not _is_missing(fsize):
        size.append(_human_bytes(fsize))
    if size:
        lines.append(f'<div class="size">{_e(" · ".join(size))}</div>')
    body = "".join(lines)
    return (f'<figure class="card" data-index="{card.index}"><div class="thumb">{img}</div>'
            f"<figcaption>{body}</figcaption></figure>"), t.uri is not None  # fmt: skip


def _render(
    plan: _Plan, info: pd.DataFrame, thumbs: Mapping[Key, Thumbnail]
) -> tuple[str, int, int]:
    parts = [f'<div class="ddk-gallery"><style>{_CSS}</style>',
             f"<h1>{_e(plan.title)}</h1>", f'<p class="meta">{plan.meta}</p>']  # fmt: skip
    shown = missing = 0
    if not plan.rows:
        parts.append(f'<p class="empty">{_e(plan.empty)}</p>')
    parts.append(f'<div class="rows {plan.layout}">' if plan.layout else '<div class="rows">')
    for i, row in enumerate(plan.rows):
        cards = []
        for c in row.cards:
            s, ok = _card_html(c, info, thumbs)
            cards.append(s)
            shown += ok
            missing += not ok
        more = f'<div class="more">+{row.more} more</div>' if row.more else ""
        parts.append(f'<div class="row" data-row="{i}"><div class="label">{row.label}</div>'
                     f'<div class="cards">{"".join(cards)}{more}</div></div>')  # fmt: skip
    parts.append("</div></div>")
    return "".join(parts), shown, missing


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="dedupdask"><title>{_e(title)}</title>'
        "<style>body{margin:0;background:#f6f7f9}</style></head>\n<body>\n"
        f"{body}\n</body></html>\n"
    )


# -- output ----------------------------------------------------------------------------------------
def _out_dir(save_path: str | os.PathLike[str], so: dict[str, Any]) -> tuple[WorkDir, str | None]:
    """(folder, explicit file name or None): a ``save_path`` ending in ``.html`` is the file."""
    p = os.fspath(save_path)
    if p.lower().endswith((".html", ".htm")):
        folder, fname = posixpath.split(p.replace(os.sep, "/")) if "://" in p else os.path.split(p)
        return WorkDir(folder or ".", so), fname
    return WorkDir(p, so), None


def _write(out: WorkDir, fname: str, text: str) -> str:
    out.makedirs()
    path = out.join(fname)
    out.write_bytes(path, text.encode("utf-8"))
    return path if out.local else out.fs.unstrip_protocol(path)


def _resolve(
    result_or_work_dir: Any, storage_options: dict[str, Any] | None
) -> tuple[DedupResult, dict[str, Any]]:
    from .results import DedupResult, load

    if isinstance(result_or_work_dir, DedupResult):
        res = result_or_work_dir
        if storage_options is None:
            storage_options = res._collection.work_dir.storage_options
    elif isinstance(result_or_work_dir, (str, os.PathLike)):
        res = load(os.fspath(result_or_work_dir), storage_options)
    else:
        raise TypeError(
            "result_or_work_dir must be a DedupResult or a work_dir path, "
            f"got {type(result_or_work_dir).__name__}"
        )
    return res, dict(storage_options or {})


def _check_count(name: str, value: Any, low: int = 0) -> int:
    """``value`` as an int, or a ValueError naming ``name`` unless it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        must = "a non-negative integer" if low == 0 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {must}, got {value!r}")
    return int(value)


def _meta(res: DedupResult, text: str) -> str:
    return (f"{_e(text, MAX_TITLE)} &middot; work_dir <code>{_e(res.work_dir, MAX_TITLE)}</code> "
            f"&middot; {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip


def _materialise(
    plans: Sequence[_Plan],
    res: DedupResult,
    so: dict[str, Any],
    save_path: str | os.PathLike[str],
    thumb_opts: dict[str, Any],
) -> list[Gallery]:
    """Read the thumbnails of all plans in one pass per archive, render and write the pages."""
    indices = set().union(*(p.indices for p in plans)) if plans else set()
    info = _image_info(res, indices)
    keys = {(str(r.archive), str(r.member), int(r.occ)) for r in info.itertuples()}
    thumbs = read_thumbnails(keys, so, **thumb_opts)
    out, fname = _out_dir(save_path, so)
    galleries = []
    for plan in plans:
        body, shown, missing = _render(plan, info, thumbs)
        name = fname if (fname and len(plans) == 1) else f"{plan.name}.html"
        path = _write(out, name, _page(plan.title, body))
        galleries.append(Gallery(path, body, plan.title, len(plan.rows), shown, missing))
    return galleries


def _thumb_opts(max_side: int, quality: int) -> dict[str, Any]:
    if not 8 <= int(max_side) <= 2048:
        raise ValueError(f"max_side must be in [8, 2048], got {max_side!r}")
    if not 1 <= int(quality) <= 95:
        raise ValueError(f"quality must be in [1, 95], got {quality!r}")
    return {"max_side": int(max_side), "quality": int(quality)}


# -- plans -----------------------------------------------------------------------------------------
def _sim(v: float) -> str:
    return f'<span class="sim">similarity {v:.4f}</span>'


def _plan_duplicates(
    res: DedupResult, num_images: int, descending: bool, threshold: float | None
) -> _Plan:
    sim = res.similarity[["from", "to", "similarity"]]
    if threshold is not None:
        sim = sim[sim["similarity"] >= float(threshold)]
    sim, total = _top(sim, num_images, ["similarity", "from", "to"], [not descending, True, True])
    rows = [
        _Row(f"#{i + 1} &middot; {_sim(float(s))}", [_Card(int(a)), _Card(int(b))])
        for i, (a, b, s) in enumerate(zip(sim["from"], sim["to"], sim["similarity"], strict=True))
    ]
    cond = (
        f"similarity \u2265 {threshold}"
        if threshold is not None
        else (f"similarity \u2265 {res.params.get('threshold', '?')} (the run's threshold)")
    )
    meta = _meta(res, f"{len(rows)} of {total} similar pairs, {cond}, "
                      f"{'most' if descending else 'least'} similar first")  # fmt: skip
    return _Plan("duplicates", "Duplicates and near-duplicates", meta, rows, layout="pairs",
                 empty="no pair of images is above the threshold")  # fmt: skip


def _plan_outliers(
    res: DedupResult, num_images: int, descending: bool, threshold: float | None
) -> _Plan:
    out = res.outliers[["index", "nearest", "similarity"]]
    if threshold is not None:
        out = out[out["similarity"] <= float(threshold)]
    out, total = _top(out, num_images, ["similarity", "index"], [not descending, True])
    rows = [
        _Row(
            f"#{i + 1} &middot; nearest neighbour {_sim(float(s))}",
            [_Card(int(a), "outlier"), _Card(int(b), "its nearest neighbour")],
        )  # fmt: skip
        for i, (a, b, s) in enumerate(
            zip(out["index"], out["nearest"], out["similarity"], strict=True)
        )
    ]
    cond = f", similarity \u2264 {threshold}" if threshold is not None else ""
    meta = _meta(res, f"{len(rows)} of {total} outliers{cond}, "
                      f"{'least' if not descending else 'most'} similar to their nearest neighbour first")  # fmt: skip
    return _Plan("outliers", "Outliers", meta, rows, layout="pairs", empty="no outlier")


def _plan_components(
    res: DedupResult, num_images: int, descending: bool, min_items: int, max_items: int
) -> _Plan:
    comp = res.components
    comp = comp[comp["component_size"] >= max(1, min_items)].compute()  # the images shown from
    sizes = comp.groupby("component_id", sort=False)["component_size"].first()
    total = len(sizes)
    order = (
        sizes.reset_index()
        .sort_values(
            ["component_size", "component_id"], ascending=[not descending, True], kind="stable"
        )
        .head(num_images)
    )
    members = comp[comp["component_id"].isin(order["component_id"])].sort_values("index")
    groups = {cid: g["index"].to_numpy() for cid, g in members.groupby("component_id", sort=False)}
    # similarity range of the pairs (above the run's threshold) inside each shown component
    cid_of = pd.Series(members["component_id"].to_numpy(), index=members["index"].to_numpy())
    shown = cid_of.index.to_numpy()
    sim = res.similarity[["from", "to", "similarity"]]
    sim = sim[sim["from"].isin(shown) & sim["to"].isin(shown)].compute()
    ca = cid_of.reindex(sim["from"].to_numpy()).to_numpy()
    cb = cid_of.reindex(sim["to"].to_numpy()).to_numpy()
    inside = sim.loc[ca == cb].assign(cid=ca[ca == cb])
    rng = inside.groupby("cid")["similarity"].agg(["min", "max"])
    rows = []
    for i, (cid, size) in enumerate(
        zip(order["component_id"], order["component_size"], strict=True)
    ):
        idx = groups.get(cid, np.empty(0, np.int64))
        label = f"#{i + 1} &middot; component {_e(cid)} &middot; {int(size)} images"
        if cid in rng.index:
            lo, hi = float(rng.loc[cid, "min"]), float(rng.loc[cid, "max"])
            text = (
                f"similarity {lo:.4f}"
                if abs(hi - lo) < 5e-5
                else f"similarity {lo:.4f}\u2013{hi:.4f}"
            )
            label += f' &middot; <span class="sim">{text}</span>'
        rows.append(
            _Row(label, [_Card(int(x)) for x in idx[:max_items]], max(0, len(idx) - max_items))
        )
    meta = _meta(res, f"{len(rows)} of {total} components with at least {min_items} images, "
                      f"{'largest' if descending else 'smallest'} first; ccthreshold "
                      f"{res.params.get('ccthreshold', '?')}")  # fmt: skip
    return _Plan("components", "Components (clusters of near-duplicates)", meta, rows,
                 empty=f"no component with at least {min_items} images")  # fmt: skip


def _metric_values(
    st: pd.DataFrame, col: str, desc: bool, threshold: float | None
) -> pd.DataFrame:
    """``index, value`` of one partition of ``res.stats`` for a stats page (NaN dropped)."""
    values = (st["width"].astype("float64") * st["height"].astype("float64")) if col == "size" \
        else st[col].astype("float64")  # fmt: skip
    df = pd.DataFrame({"index": st["index"].astype("int64").to_numpy(),
                       "value": values.to_numpy(dtype="float64", na_value=np.nan)})  # fmt: skip
    df = df[~np.isnan(df["value"].to_numpy())]
    if threshold is not None:
        df = df[df["value"] >= float(threshold)] if desc else df[df["value"] <= float(threshold)]
    return df


def _top(
    ddf: Any, n: int, by: list[str], ascending: list[bool]
) -> tuple[pd.DataFrame, int]:
    """The first ``n`` rows of a dask DataFrame in the order ``by`` (each partition's first
    ``n``, then the first ``n`` of those: ``n`` rows per partition reach this process) and its
    length."""
    import dask

    def first(df: pd.DataFrame) -> pd.DataFrame:
        return df.sort_values(by, ascending=ascending, kind="stable").head(n)

    got, total = dask.compute(ddf.map_partitions(first, meta=ddf._meta), ddf.shape[0])
    return got.sort_values(by, ascending=ascending, kind="stable").head(n), int(total)


def _plan_stats(
    res: DedupResult, metric: str, num_images: int, descending: bool | None, threshold: float | None
) -> _Plan:
    if metric not in STATS_METRICS:
        raise ValueError(f"metric must be one of {sorted(STATS_METRICS)}, got {metric!r}")
    col, natural_desc, what = STATS_METRICS[metric]
    desc = natural_desc if descending is None else bool(descending)
    meta = pd.DataFrame({"index": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64")})
    values = res.stats.map_partitions(_metric_values, col, desc, threshold, meta=meta)
    df, total = _top(values, num_images, ["value", "index"], [not desc, True])
    shown_name = "mean" if metric in ("dark", "bright") else metric

    def fmt(v: float) -> str:
        return (
            f"{v:.0f}" if col in ("size", "width", "height", "file_size", "unique") else f"{v:.3f}"
        )

    rows = [
        _Row(
            f'#{i + 1} &middot; <span class="sim">{_e(shown_name)} {fmt(v)}</span>', [_Card(int(x))]
        )
        for i, (x, v) in enumerate(zip(df["index"], df["value"], strict=True))
    ]
    cond = ""
    if threshold is not None:
        op = "\u2265" if desc else "\u2264"
        cond = f", {shown_name} {op} {threshold}"
    meta = _meta(res, f"{len(rows)} of {total} images by {shown_name} ({what}){cond}, "
                      f"{'highest' if desc else 'lowest'} first")  # fmt: skip
    return _Plan(metric, f"Images by {metric}", meta, rows, layout="grid", empty="no image")


_ISSUE_TEXT = {
    "dark": "even the brightest 1 % of the pixels is dark: score p99 / 255",
    "light": "even the darkest 1 % of the pixels is light: score 1 - p01 / 255",
    "blurry": "little detail: score 1 - exp(-blur / 100), blur = variance of the Laplacian",
    "noisy": "pixel-to-pixel noise: score 1 - blur / (20 stdv²)",
    "low_information": "nothing to see: score = the lowest of its parts flat (a narrow band of grey "
                       "levels, also after removing a smooth surface), featureless (no detail), "
                       "structureless (only pixel noise) and page (only lines of text)",
    "odd_aspect_ratio": "score min(width, height) / max(width, height)",
    "odd_size": "far smaller or larger than the run's median image: score min(s, m) / max(s, m)",
    "grayscale": "no colour: score chroma / 255",
    "outlier": "a group of look-alike images (or one image) far from everything else: "
               "score = the group's similarity to the nearest image outside it",
}


def _plan_issue(res: DedupResult, issue: str, num_images: int, max_items: int) -> _Plan:
    """``issue_<type>.html``: images (statistics types), groups (outlier) or pairs (duplicates)."""
    rows_of = res.issues[res.issues["issue"] == issue].compute()  # this type's rows only
    rows_of = rows_of.sort_values(["score", "index"], kind="stable")
    about = res.run.get("issues") or {}
    cut = (about.get("resolved") or {}).get(issue)
    why = (about.get("not_reported") or {}).get(issue)
    empty = f"no image has this issue ({why})" if why else (
        f"no image has this issue (cut-off {cut})" if cut is not None else "no image has this issue")
    what = _ISSUE_TEXT.get(issue, "pairs the duplicate tiers accepted: score 1 - similarity")
    cond = f", score < {cut}" if cut is not None else ""
    name, title = f"issue_{issue}", f"Issue: {issue.replace('_', ' ')}"
    if issue == "outlier":
        heads = rows_of.drop_duplicates("group")
        total = len(heads)
        rows = []
        for i, r in enumerate(heads.head(num_images).itertuples()):
            members = rows_of.loc[rows_of["group"] == r.group, "index"].astype("int64").to_numpy()
            cards = [_Card(int(x), "outlier") for x in members[:max_items]]
            if not _is_missing(r.other):
                cards.append(_Card(int(r.other), "nearest other image"))
            label = (f"#{i + 1} &middot; {'group of ' + str(len(members)) + ' images' if len(members) > 1 else 'one image'}"
                     f" &middot; <span class=\"sim\">similarity to the rest {float(r.score):.4f}</span>")  # fmt: skip
            rows.append(_Row(label, cards, max(0, len(members) - max_items)))
        meta = _meta(res, f"{len(rows)} of {total} outlier groups ({len(rows_of)} images) by "
                          f"score, worst first ({what}){cond}")  # fmt: skip
        return _Plan(name, title, meta, rows, empty=empty)
    total = len(rows_of)
    shown = rows_of.head(num_images)
    if issue.endswith("_duplicate"):
        rows = [
            _Row(f"#{i + 1} &middot; <span class=\"sim\">score {float(r.score):.4f}</span>",
                 [_Card(int(r.index)), *([] if _is_missing(r.other) else [_Card(int(r.other), "its pair")])])
            for i, r in enumerate(shown.itertuples())
        ]  # fmt: skip
        meta = _meta(res, f"{len(rows)} of {total} images, most similar pair first ({what})")
        return _Plan(name, title, meta, rows, layout="pairs", empty=empty)
    rows = [
        _Row(f'#{i + 1} &middot; <span class="sim">{_e(issue)} {float(r.score):.3f}</span>', [_Card(int(r.index))])
        for i, r in enumerate(shown.itertuples())
    ]  # fmt: skip
    meta = _meta(res, f"{len(rows)} of {total} images by score, worst first ({what}){cond}")
    return _Plan(name, title, meta, rows, layout="grid", empty=empty)


def _issue_pages(res: DedupResult, issues: Sequence[str] | None) -> list[str]:
    from .thresholds import ISSUE_TYPES

    counts = (res.run.get("issues") or {}).get("counts")
    found = counts if counts is not None else res.issues["issue"].astype(str).unique().compute()
    known = set(ISSUE_TYPES) | set(found)
    wanted = list(ISSUE_TYPES) if issues is None else list(dict.fromkeys(issues))
    for t in wanted:
        if t not in known and not str(t).endswith("_duplicate"):
            raise ValueError(f"issue must be one of {sorted(known)}, got {t!r}")
    return wanted


# -- public functions ------------------------------------------------------------------------------
def create_duplicates_gallery(
    result_or_work_dir: DedupResult | str | os.PathLike[str],
    save_path: str | os.PathLike[str],
    *,
    num_images: int = 20,
    descending: bool = True,
    threshold: float | None = None,
    storage_options: dict[str, Any] | None = None,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> Gallery:
    """Write ``duplicates.html``: the most similar pairs, side by side.

    Parameters
    ----------
    result_or_work_dir : DedupResult or str
        A result, or a work_dir that run_mode=2 has analysed (read with :func:`dedupdask.load`).
    save_path : str
        Folder to write into (created; local or URL), or a file name ending in ``.html``.
    num_images : int
        Pairs shown (fastdup's name).
    descending : bool
        Most similar pairs first.
    threshold : float, optional
        Only pairs with similarity >= threshold (default: all pairs of the run, which are
        above the run's ``threshold``).
    storage_options : dict, optional
        fsspec options for the archives and save_path; default: the result's.
    max_side, quality : int
        Thumbnail size in pixels and JPEG quality.

    Returns
    -------
    Gallery
        ``str()`` is the path of the page; renders inline in notebooks.

    Examples
    --------
    >>> import dedupdask as ddk
    >>> g = ddk.create_duplicates_gallery("work", "galleries", num_images=50)  # doctest: +SKIP
    >>> g  # in a notebook: the gallery itself  # doctest: +SKIP
    """
    res, so = _resolve(result_or_work_dir, storage_options)
    plan = _plan_duplicates(res, _check_count("num_images", num_images), descending, threshold)
    return _materialise([plan], res, so, save_path, _thumb_opts(max_side, quality))[0]


def create_outliers_gallery(
    result_or_work_dir: DedupResult | str | os.PathLike[str],
    save_path: str | os.PathLike[str],
    *,
    num_images: int = 20,
    descending: bool = False,
    threshold: float | None = None,
    storage_options: dict[str, Any] | None = None,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> Gallery:
    """Write ``outliers.html``: each outlier next to its nearest neighbour.

    Parameters
    ----------
    result_or_work_dir : DedupResult or str
        A result, or an analysed work_dir.
    save_path : str
        Folder (or ``.html`` file) to write.
    num_images : int
        Outliers shown.
    descending : bool
        False (default): the strongest outliers (least similar to anything) first.
    threshold : float, optional
        Only outliers whose nearest-neighbour similarity is <= threshold.
    storage_options : dict, optional
        fsspec options; default: the result's.
    max_side, quality : int
        Thumbnail size and JPEG quality.

    Returns
    -------
    Gallery

    Examples
    --------
    >>> g = create_outliers_gallery(res, "galleries")  # doctest: +SKIP
    """
    res, so = _resolve(result_or_work_dir, storage_options)
    plan = _plan_outliers(res, _check_count("num_images", num_images), descending, threshold)
    return _materialise([plan], res, so, save_path, _thumb_opts(max_side, quality))[0]


def create_components_gallery(
    result_or_work_dir: DedupResult | str | os.PathLike[str],
    save_path: str | os.PathLike[str],
    *,
    num_images: int = 20,
    descending: bool = True,
    min_items: int = 2,
    max_items: int = 12,
    storage_options: dict[str, Any] | None = None,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> Gallery:
    """Write ``components.html``: clusters of near-duplicates, one row per component.

    Parameters
    ----------
    result_or_work_dir : DedupResult or str
        A result, or an analysed work_dir.
    save_path : str
        Folder (or ``.html`` file) to write.
    num_images : int
        Components shown.
    descending : bool
        Largest components first.
    min_items : int
        Smallest component shown (fastdup's name); 2 hides singletons.
    max_items : int
        Images shown per component (the rest is counted).
    storage_options : dict, optional
        fsspec options; default: the result's.
    max_side, quality : int
        Thumbnail size and JPEG quality.

    Returns
    -------
    Gallery

    Examples
    --------
    >>> g = create_components_gallery(res, "galleries", min_items=3)  # doctest: +SKIP
    """
    res, so = _resolve(result_or_work_dir, storage_options)
    plan = _plan_components(res, _check_count("num_images", num_images), descending,
                            _check_count("min_items", min_items), _check_count("max_items", max_items))  # fmt: skip
    return _materialise([plan], res, so, save_path, _thumb_opts(max_side, quality))[0]


def create_stats_gallery(
    result_or_work_dir: DedupResult | str | os.PathLike[str],
    save_path: str | os.PathLike[str],
    *,
    metric: str = "blur",
    num_images: int = 20,
    descending: bool | None = None,
    threshold: float | None = None,
    storage_options: dict[str, Any] | None = None,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> Gallery:
    """Write ``<metric>.html``: the images at one end of an image statistic.

    Parameters
    ----------
    result_or_work_dir : DedupResult or str
        A result, or an analysed work_dir.
    save_path : str
        Folder (or ``.html`` file) to write.
    metric : str
        One of :data:`STATS_METRICS`: ``blur``, ``dark`` / ``bright`` (the ``mean`` grey level,
        lowest / highest first), ``size`` (width x height), ``mean``, ``min``, ``max``,
        ``stdv``, ``unique``, ``contrast``, ``width``, ``height``, ``file_size``.
    num_images : int
        Images shown.
    descending : bool, optional
        Highest values first; default: the metric's natural order (ascending, except
        ``bright``).
    threshold : float, optional
        Only images with value <= threshold (ascending) or >= threshold (descending), e.g.
        ``metric="blur", threshold=50``.
    storage_options : dict, optional
        fsspec options; default: the result's.
    max_side, quality : int
        Thumbnail size and JPEG quality.

    Returns
    -------
    Gallery

    Examples
    --------
    >>> g = create_stats_gallery(res, "galleries", metric="dark")  # doctest: +SKIP
    >>> str(g)  # doctest: +SKIP
    'galleries/dark.html'
    """
    res, so = _resolve(result_or_work_dir, storage_options)
    plan = _plan_stats(res, metric, _check_count("num_images", num_images), descending, threshold)
    return _materialise([plan], res, so, save_path, _thumb_opts(max_side, quality))[0]


def create_issues_gallery(
    result_or_work_dir: DedupResult | str | os.PathLike[str],
    save_path: str | os.PathLike[str],
    *,
    issue: str = "low_information",
    num_images: int = 20,
    max_items: int = 12,
    storage_options: dict[str, Any] | None = None,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> Gallery:
    """Write ``issue_<issue>.html``: the images with one issue label, worst score first.

    Parameters
    ----------
    result_or_work_dir : DedupResult or str
        A result, or an analysed work_dir.
    save_path : str
        Folder (or ``.html`` file) to write.
    issue : str
        An issue type of ``res.issues``: ``dark``, ``light``, ``blurry``, ``low_information``,
        ``odd_aspect_ratio``, ``odd_size``, ``grayscale``, ``outlier`` (one row per group, with
        the nearest image outside it) or a ``<kind>_duplicate`` (pairs).
    num_images : int
        Images (outlier: groups) shown.
    max_items : int
        Images shown per outlier group (the rest is counted).
    storage_options : dict, optional
        fsspec options; default: the result's.
    max_side, quality : int
        Thumbnail size and JPEG quality.

    Returns
    -------
    Gallery

    Examples
    --------
    >>> g = create_issues_gallery(res, "galleries", issue="outlier")  # doctest: +SKIP
    >>> str(g)  # doctest: +SKIP
    'galleries/issue_outlier.html'
    """
    res, so = _resolve(result_or_work_dir, storage_options)
    (issue,) = _issue_pages(res, [issue])
    plan = _plan_issue(res, issue, _check_count("num_images", num_images), _check_count("max_items", max_items))
    return _materialise([plan], res, so, save_path, _thumb_opts(max_side, quality))[0]


def write_galleries(
    result_or_work_dir: DedupResult | str | os.PathLike[str],
    save_path: str | os.PathLike[str],
    *,
    num_images: int = 20,
    metrics: Sequence[str] = DEFAULT_METRICS,
    issues: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
) -> dict[str, Gallery]:
    """Write every gallery plus an ``index.html`` linking them, reading each archive once.

    Parameters
    ----------
    result_or_work_dir : DedupResult or str
        A result, or an analysed work_dir.
    save_path : str
        Folder to write into.
    num_images : int
        Rows per page.
    metrics : sequence of str
        Stats pages to write (:data:`STATS_METRICS`).
    issues : sequence of str, optional
        Issue pages to write (:func:`create_issues_gallery`); default: every issue type with a
        cut-off (the duplicate kinds are on ``duplicates.html``).
    storage_options : dict, optional
        fsspec options; default: the result's.
    max_side, quality : int
        Thumbnail size and JPEG quality.

    Returns
    -------
    dict of str to Gallery
        ``duplicates``, ``outliers``, ``components``, one per metric, ``issue_<type>`` per
        issue type, and ``index``.

    Examples
    --------
    >>> pages = write_galleries("work", "galleries")  # doctest: +SKIP
    >>> str(pages["index"])  # doctest: +SKIP
    'galleries/index.html'
    """
    p = os.fspath(save_path)
    if p.lower().endswith((".html", ".htm")):
        raise ValueError(f"save_path must be a folder for several galleries, got {p!r}")
    res, so = _resolve(result_or_work_dir, storage_options)
    n = _check_count("num_images", num_images)
    for m in metrics:
        if m not in STATS_METRICS:
            raise ValueError(f"metric must be one of {sorted(STATS_METRICS)}, got {m!r}")
    plans = [
        _plan_duplicates(res, n, True, None),
        _plan_outliers(res, n, False, None),
        _plan_components(res, n, True, 2, 12),
        *(_plan_stats(res, m, n, None, None) for m in dict.fromkeys(metrics)),
        *(_plan_issue(res, t, n, 12) for t in _issue_pages(res, issues)),
    ]
    pages = _materialise(plans, res, so, p, _thumb_opts(max_side, quality))
    out = {plan.name: g for plan, g in zip(plans, pages, strict=True)}
    items = "".join(
        f'<li><a href="{_e(plan.name)}.html">{_e(plan.title)}</a> &middot; {g.n_rows} rows'
        f"{f', {g.n_missing} thumbnails missing' if g.n_missing else ''}</li>"
        for plan, g in zip(plans, pages, strict=True)
    )
    s = res.summary()
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s.items() if not isinstance(v, dict))
    counts += "; issues: " + (", ".join(f"{k} {v}" for k, v in s["issues"].items()) or "none")
    body = (f'<div class="ddk-gallery"><style>{_CSS}</style><h1>dedupdask galleries</h1>'
            f'<p class="meta">{_meta(res, counts)}</p><ul>{items}</ul></div>')  # fmt: skip
    wd, _ = _out_dir(p, so)
    path = _write(wd, "index.html", _page("dedupdask galleries", body))
    out["index"] = Gallery(path, body, "dedupdask galleries", len(plans), 0, 0)
    return out
