"""The report in a notebook: ``res`` as a rich summary and ``res.show_pair(i)``.

``DedupResult._repr_html_`` (:func:`summary_html`) shows the counters, the report's main
plots (:mod:`dedupdask.report_plots`: the pairs by kind, the candidates' verification scores,
the archives) and the first few pairs with thumbnails. The plots need one pass over the
results' partitions, so they are drawn for runs of up to :data:`REPR_MAX_IMAGES` images; a
larger run shows its counters and says how to draw them (``res.report(out)``). What is shown
is built once per result object.

``res.show_pair(i)`` (:func:`pair_view`) reads row ``i`` of ``res.similarity`` (only the
partition that holds it) and the two images (only their archives), and returns the pair's
explain view (:mod:`dedupdask.report_explain`), which renders inline.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd

from .match_record import parse_homography
from .readback import THUMB_QUALITY, read_thumbnails
from .report_explain import explain_figures, explain_html

if TYPE_CHECKING:
    from .results import DedupResult

__all__ = ["REPR_MAX_IMAGES", "PairView", "pair_view", "summary_html"]

REPR_MAX_IMAGES = 1_000_000
"""Largest run whose notebook summary draws the plots (one pass over its results)."""
REPR_PAIRS = 4
"""Pairs shown in the notebook summary."""
SIDE = 240

_CSS = """
.ddk-nb{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a}
.ddk-nb table{border-collapse:collapse}.ddk-nb td,.ddk-nb th{border:1px solid #dde1e6;padding:2px 6px;text-align:left}
.ddk-nb td.num{text-align:right}.ddk-nb .plots{display:flex;flex-wrap:wrap;gap:8px}
.ddk-nb .plots svg{max-width:480px;height:auto}.ddk-nb .pair{display:flex;gap:8px;align-items:flex-start;margin:6px 0}
.ddk-nb .pair img{max-width:200px;max-height:200px}.ddk-nb .note{color:#5b6570}
.ddk-nb table.scores td{border:none;padding:0 8px 0 0}.ddk-nb figure{margin:6px 0}
.ddk-nb figure img{max-width:520px}.ddk-nb figcaption{font-size:11px;color:#5b6570}
"""


@dataclass(frozen=True)
class PairView:
    """The explain view of one pair; renders inline in a notebook.

    Attributes
    ----------
    row : dict
        The pair's row of ``res.similarity`` (scores and match record).
    html : str
        The view: both images, the tier's reason, the scores, the alignment and its figures.
    """

    row: dict[str, Any]
    html: str

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        r = self.row
        return f"PairView({r.get('from')} - {r.get('to')}: {r.get('kind')}, similarity {r.get('similarity')})"


def _similarity_row(res: DedupResult, i: int) -> dict[str, Any]:
    """Row ``i`` of ``res.similarity``, reading only the partition that holds it."""
    parts = ((res.run.get("tables") or {}).get("similarity") or {}).get("part_rows")
    if parts is None:
        (lengths,) = dask.compute(res.similarity.map_partitions(len))
        parts = [int(n) for n in lengths]
    ends = np.cumsum(parts)
    if not 0 <= i < (int(ends[-1]) if len(ends) else 0):
        raise IndexError(f"pair {i} is not a row of res.similarity ({int(ends[-1]) if len(ends) else 0} rows)")
    p = int(np.searchsorted(ends, i, side="right"))
    df = res.similarity.partitions[p].compute().reset_index(drop=True)
    return df.iloc[i - (int(ends[p - 1]) if p else 0)].to_dict()


def _images(res: DedupResult, indices: list[int]) -> dict[int, np.ndarray]:
    """The images of ``indices`` at :data:`SIDE` px, each archive read once (only theirs)."""
    from .galleries import _image_info
    from .report import _decode

    info = _image_info(res, indices)
    keys = {int(i): (str(r.archive), str(r.member), int(r.occ)) for i, r in zip(info.index, info.itertuples(), strict=True)}
    so = dict(res._collection.work_dir.storage_options or {})
    thumbs = read_thumbnails(set(keys.values()), so, max_side=SIDE, quality=THUMB_QUALITY) if keys else {}
    out = {}
    for i, k in keys.items():
        t = thumbs.get(k)
        arr = _decode(t.uri) if t is not None and t.uri else None
        if arr is not None:
            out[i] = arr
    return out


def _pair_html(row: dict[str, Any], params: dict[str, Any], images: dict[int, np.ndarray], figures: bool) -> str:
    from .report import _thumbnail

    e = html.escape
    a, b = images.get(int(row["from"])), images.get(int(row["to"]))
    cells = []
    for side, arr in (("from", a), ("to", b)):
        name = row.get(f"member_{side}") or row.get(f"filename_{side}") or ""
        if arr is not None:
            t = _thumbnail(arr, 200)
            cells.append(f'<figure><img src="{t.uri}" alt="{e(str(name))}"><figcaption>{e(side)} #{int(row[side])}: '
                         f"{e(str(name))}</figcaption></figure>")  # fmt: skip
        else:
            cells.append(f'<figure><figcaption>{e(side)} #{int(row[side])}: {e(str(name))} (not read)</figcaption></figure>')
    H = parse_homography(row.get("verify_h"))
    figs, sizes = None, None
    if a is not None and b is not None:
        sizes = ((a.shape[1], a.shape[0]), (b.shape[1], b.shape[0]))
        if figures and H is not None:
            figs = explain_figures(a, b, H)
    return f'<div class="pair">{"".join(cells)}<div>{explain_html(row, params, figs, sizes)}</div></div>'


def pair_view(res: DedupResult, i: int) -> PairView:
    """The explain view of row ``i`` of ``res.similarity`` (see the module docstring).

    Raises
    ------
    IndexError
        If ``i`` is not a row of the similarity table.

    Examples
    --------
    >>> res.show_pair(0)  # doctest: +SKIP
    """
    row = _similarity_row(res, int(i))
    images = _images(res, [int(row["from"]), int(row["to"])])
    body = _pair_html(row, res.params, images, figures=True)
    return PairView(row, f'<div class="ddk-nb"><style>{_CSS}</style>{body}</div>')


def summary_html(res: DedupResult) -> str:
    """The notebook summary of a run (see the module docstring)."""
    from .report import _COUNTERS
    from .report_plots import distributions, svg_archives, svg_histograms

    e = html.escape
    s = res.summary()
    counters = "".join(f'<tr><td>{e(label)}</td><td class="num">{int(s.get(k, 0)):,}</td></tr>' for k, label in _COUNTERS)
    parts = [f'<div class="ddk-nb"><style>{_CSS}</style><b>DedupResult</b> <code>{e(res.work_dir)}</code>',
             f"<table>{counters}</table>"]  # fmt: skip
    if int(s.get("images", 0)) <= REPR_MAX_IMAGES:
        hists, archives = distributions(res)
        keep = [h for h in hists if h.title in ("Similar pairs by kind", "Candidate pairs: verification scores",
                                                 "Verification scores of the verified pairs")]  # fmt: skip
        parts.append(f'<div class="plots">{"".join(svg_histograms(keep))}{svg_archives(archives)}</div>')
        top: pd.DataFrame = res.similarity.head(REPR_PAIRS)
        if len(top):
            rows = top.to_dict("records")
            images = _images(res, sorted({int(r[c]) for r in rows for c in ("from", "to")}))
            parts.append("<p><b>First pairs</b> (<code>res.show_pair(i)</code> shows one with its alignment):</p>")
            parts += [_pair_html(r, res.params, images, figures=False) for r in rows]
    else:
        parts.append(f'<p class="note">{s.get("images", 0):,} images: the plots take a pass over the results; '
                     "<code>res.report(out)</code> draws them with every row paged.</p>")  # fmt: skip
    parts.append("</div>")
    return "".join(parts)
