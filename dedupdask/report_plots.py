"""Report plots: the run's distributions, counted partition by partition, drawn as inline SVG.

Every figure of the report's index (:mod:`dedupdask.report`) comes from fixed-bin histograms
that each partition of a results table counts on its own (:func:`distributions`): what leaves
a worker is a few hundred counts, never a row, so the cost on the client is the same for a
thousand images and for four hundred million. Per-archive figures come from ``run.json``
(images, invalid) and from one count per archive of the images in a duplicate group.

The drawing uses matplotlib's object API (``Figure`` and its Agg canvas: no pyplot state, no
GUI backend, safe in threads) and writes SVG with text kept as text, so a figure is a few
kilobytes, scales with the page and needs no font or script.

Cut-offs are drawn where they apply: the similarity thresholds on the similarity histograms,
``verify_score`` on the verification scores, and each issue type's cut-off on its score (the
issue types are scored in [0, 1], an image is labelled at or below its cut-off:
:mod:`dedupdask.analyses.issues`). For blur, brightness and size the raw statistics are shown
too, with the cut-off mapped back onto them through the score's formula.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd

from .analyses.issues import BLUR_SCALE, SCORE_INPUTS, STAT_ISSUES, image_scores
from .analyses.tiers import KINDS

if TYPE_CHECKING:
    from .results import DedupResult

__all__ = ["Histogram", "archive_counts", "distributions", "svg_archives", "svg_histograms"]

SIMILARITY_BINS = np.linspace(-1.0, 1.0, 401)  # 0.005 wide: the thresholds sit on the grid
UNIT_BINS = np.linspace(0.0, 1.0, 101)
LOG_BLUR_BINS = np.linspace(-1.0, 5.0, 121)  # log10 of the Laplacian variance (+ 0.1)
GREY_BINS = np.linspace(0.0, 256.0, 129)
LOG_SIDE_BINS = np.linspace(0.0, 5.0, 201)  # log10 of sqrt(width * height)
_COLOURS = {"exact": "#1b7837", "copy": "#2166ac", "near": "#d6604d", "all": "#4d4d4d",
            "p01": "#4d4d4d", "p99": "#d6604d", "verified": "#2166ac", "accepted": "#1b7837",
            "rejected": "#b2182b"}  # fmt: skip


@dataclass
class Histogram:
    """Counts over fixed bins, one series per label, with the cut-offs to mark.

    Attributes
    ----------
    title, xlabel : str
        What is counted, and the axis label.
    edges : ndarray
        Bin edges (``len(counts) + 1``); values outside fall in the first or last bin.
    series : dict of str to ndarray
        Label -> int64 counts.
    marks : dict of str to float
        Label -> value of a vertical line (a threshold or cut-off).
    log_x : bool
        Whether the edges are log10 of the value (the axis shows the value).
    note : str
        A sentence under the figure (what is and is not counted).

    Examples
    --------
    >>> h = Histogram("t", "x", np.array([0.0, 0.5, 1.0]), {"all": np.array([1, 2])})
    >>> h.total()
    3
    """

    title: str
    xlabel: str
    edges: np.ndarray
    series: dict[str, np.ndarray]
    marks: dict[str, float] = field(default_factory=dict)
    log_x: bool = False
    note: str = ""

    def total(self) -> int:
        return int(sum(int(c.sum()) for c in self.series.values()))


def _count(values: Any, edges: np.ndarray) -> np.ndarray:
    """Counts of the finite ``values`` over ``edges``, outliers clipped into the end bins."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(np.int64)


# -- per partition ----------------------------------------------------------------------------------
def _pairs_part(df: pd.DataFrame) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    kind = df["kind"].astype("string").fillna("") if "kind" in df else pd.Series("", index=df.index)
    for k in KINDS:
        sel = (kind == k).to_numpy()
        out[f"similarity:{k}"] = _count(df["similarity"].to_numpy(dtype=np.float64)[sel], SIMILARITY_BINS)
        if "copy_similarity" in df:
            cs = df["copy_similarity"].to_numpy(dtype=np.float64, na_value=np.nan)[sel]
            out[f"copy_similarity:{k}"] = _count(cs, SIMILARITY_BINS)
    if "verify_score" in df:
        vs = df["verify_score"].to_numpy(dtype=np.float64, na_value=np.nan)
        out["verify_score:accepted"] = _count(vs, SIMILARITY_BINS)
    return out


def _candidates_part(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Candidate pairs (accepted or not): similarities, and the scores of the verified ones."""
    acc = df["accepted"].to_numpy(dtype=bool, na_value=False)
    score = df["verify_score"].to_numpy(dtype=np.float64, na_value=np.nan)
    out: dict[str, np.ndarray] = {}
    for name, sel in (("accepted", acc), ("rejected", ~acc)):
        for col in ("similarity", "whitened_similarity", "copy_similarity"):
            v = df[col].to_numpy(dtype=np.float64, na_value=np.nan)[sel]
            out[f"cand_{col}:{name}"] = _count(v, SIMILARITY_BINS)
        out[f"cand_verify:{name}"] = _count(score[sel], SIMILARITY_BINS)
    return out


def _files_part(files: pd.DataFrame, size_reference: float) -> dict[str, np.ndarray]:
    valid = files[files["index"].notna()]

    def col(c: str) -> np.ndarray:
        return valid[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in valid else np.full(len(valid), np.nan)

    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "blur": _count(np.log10(col("blur") + 0.1), LOG_BLUR_BINS),
            "p01": _count(col("p01"), GREY_BINS),
            "p99": _count(col("p99"), GREY_BINS),
            "mean": _count(col("mean"), GREY_BINS),
            "side": _count(np.log10(np.sqrt(col("width") * col("height"))), LOG_SIDE_BINS),
        }
    scores = image_scores(files, size_reference)
    for t in STAT_ISSUES:
        out[f"score:{t}"] = _count(scores[t].to_numpy(dtype=np.float64), UNIT_BINS)
    return out


def _outliers_part(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"outlier_similarity": _count(df["similarity"].to_numpy(dtype=np.float64), SIMILARITY_BINS)}


def _in_groups_part(df: pd.DataFrame, offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Per archive: images of the partition in a component of more than one image."""
    idx = df.loc[df["component_size"].to_numpy() > 1, "index"].to_numpy(dtype=np.int64)
    pos = np.searchsorted(offsets, idx, side="right") - 1
    return {"in_groups": np.bincount(pos[pos >= 0], minlength=len(offsets)).astype(np.int64)}


def _add(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out[k] + v if k in out else v.copy()
    return out


# -- the run's figures --------------------------------------------------------------------------------
def _counted(res: DedupResult) -> dict[str, np.ndarray]:
    """Every count of the report, in one ``dask.compute`` (each table's partitions read once)."""
    ref = (res.run.get("issues") or {}).get("size_reference")
    size_ref = float("nan") if ref is None else float(ref)
    offsets = np.array([int(a["offset"]) for a in res.run.get("archives") or []], dtype=np.int64)
    tasks = []
    sim = res.similarity
    cols = [c for c in ("similarity", "copy_similarity", "kind", "verify_score") if c in sim.columns]
    tasks += [dask.delayed(_pairs_part)(p) for p in sim[cols].to_delayed()]
    files = res.files[list(dict.fromkeys([*SCORE_INPUTS, "mean"]))]  # not captions, JSON, hashes
    tasks += [dask.delayed(_files_part)(p, size_ref) for p in files.to_delayed()]
    tasks += [dask.delayed(_outliers_part)(p) for p in res.outliers[["similarity"]].to_delayed()]
    comp = res.components[["index", "component_size"]]
    tasks += [dask.delayed(_in_groups_part)(p, offsets) for p in comp.to_delayed()]
    if "candidates" in (res.run.get("tables") or {}):
        cand = res.candidates[["accepted", "similarity", "whitened_similarity", "copy_similarity", "verify_score"]]
        tasks += [dask.delayed(_candidates_part)(p) for p in cand.to_delayed()]
    (parts,) = dask.compute(tasks)
    return _add(parts)


def distributions(res: DedupResult) -> tuple[list[Histogram], pd.DataFrame]:
    """The report's histograms and its per-archive table, counted on the partitions.

    Parameters
    ----------
    res : DedupResult
        A finished run.

    Returns
    -------
    (list of Histogram, DataFrame)
        The histograms (similarity per kind, DCT similarity per kind, verification scores,
        outlier similarities, blur, brightness, size, issue scores) and
        :func:`archive_counts`.

    Examples
    --------
    >>> hists, archives = distributions(res)  # doctest: +SKIP
    >>> [h.title for h in hists][:2]  # doctest: +SKIP
    ['Similar pairs by kind', 'DCT similarity of the pairs by kind']
    """
    c = _counted(res)
    n = lambda key: c.get(key, np.zeros(len(SIMILARITY_BINS) - 1, dtype=np.int64))  # noqa: E731
    p = res.params
    marks = {f"threshold {p['threshold']}": p["threshold"]} if p.get("threshold") is not None else {}
    if p.get("verify") and p.get("verify_threshold") is not None:
        marks[f"verify_threshold {p['verify_threshold']}"] = p["verify_threshold"]
    copy_marks = {f"copy_threshold {p['copy_threshold']}": p["copy_threshold"]} if p.get("copy_threshold") else {}
    ver = res.run.get("verification") or {}
    cut = (res.run.get("issues") or {}).get("resolved") or {}
    ref = (res.run.get("issues") or {}).get("size_reference")
    hists = [
        Histogram("Similar pairs by kind", "embedding cosine similarity", SIMILARITY_BINS,
                  {k: n(f"similarity:{k}") for k in KINDS}, marks,
                  note="Reported pairs (results/similarity); the candidates below show the rejected ones."),
        Histogram("DCT similarity of the pairs by kind", "DCT descriptor cosine similarity", SIMILARITY_BINS,
                  {k: n(f"copy_similarity:{k}") for k in KINDS}, copy_marks),
    ]  # fmt: skip
    if "cand_similarity:accepted" in c:  # the run kept every candidate, rejected ones too
        both = ("accepted", "rejected")
        hists += [
            Histogram("Candidate pairs: embedding similarity", "embedding cosine similarity", SIMILARITY_BINS,
                      {k: c[f"cand_similarity:{k}"] for k in both}, marks,
                      note="Every candidate pair of representatives the tiers decided (results/candidates): "
                           "accepted, and rejected by verification or below every cut."),
            Histogram("Candidate pairs: verification scores", "verification score", SIMILARITY_BINS,
                      {k: c[f"cand_verify:{k}"] for k in both},
                      {f"verify_score {p['verify_score']}": p["verify_score"]} if p.get("verify_score") else {},
                      note=f"Every candidate the matcher scored, this build or an earlier one ({int(ver.get('candidates', 0))} "
                           f"verified by this build); -1 = no alignment found."),
        ]  # fmt: skip
        if p.get("whitened_threshold") is not None and c["cand_whitened_similarity:accepted"].sum() + c[
            "cand_whitened_similarity:rejected"
        ].sum():
            hists.append(Histogram(
                "Candidate pairs: whitened similarity", "whitened embedding cosine", SIMILARITY_BINS,
                {k: c[f"cand_whitened_similarity:{k}"] for k in both},
                {f"whitened_threshold {p['whitened_threshold']}": p["whitened_threshold"]}))  # fmt: skip
    else:
        hists.append(Histogram(
            "Verification scores of the verified pairs", "verification score", SIMILARITY_BINS,
            {"verified": n("verify_score:accepted")},
            {f"verify_score {p['verify_score']}": p["verify_score"]} if p.get("verify_score") else {},
            note="Accepted pairs only: this run was built before the scores of rejected candidates were kept."))  # fmt: skip
    hists += [
        Histogram("Outliers: similarity to the nearest neighbour", "cosine similarity", SIMILARITY_BINS,
                  {"all": n("outlier_similarity")},
                  note=f"The {p['lower_threshold']:g} share of images least similar to their nearest "
                       "neighbour (lower_threshold)." if p.get("lower_threshold") is not None else ""),
        Histogram("Blur: variance of the Laplacian", "variance of the Laplacian (log)", LOG_BLUR_BINS,
                  {"all": c.get("blur", np.zeros(len(LOG_BLUR_BINS) - 1, dtype=np.int64))},
                  {f"blurry {cut['blurry']}": float(np.log10(-BLUR_SCALE * np.log1p(-cut["blurry"]) + 0.1))}
                  if 0 < cut.get("blurry", 0) < 1 else {}, log_x=True),
        Histogram("Brightness: darkest and lightest 1 % of each image", "grey level", GREY_BINS,
                  {"p01": c.get("p01"), "p99": c.get("p99")},
                  {**({f"dark {cut['dark']} (p99)": 255.0 * cut["dark"]} if "dark" in cut else {}),
                   **({f"light {cut['light']} (p01)": 255.0 * (1 - cut["light"])} if "light" in cut else {})}),
        Histogram("Size: sqrt(width x height)", "pixels (log)", LOG_SIDE_BINS,
                  {"all": c.get("side")},
                  {f"odd_size {cut['odd_size']} ({w})": float(np.log10(ref * f))
                   for w, f in ((("small", cut["odd_size"]), ("large", 1 / cut["odd_size"]))
                                if cut.get("odd_size") and ref else ())},
                  log_x=True),
    ]  # fmt: skip
    for t in STAT_ISSUES:
        if f"score:{t}" in c:
            hists.append(Histogram(f"Issue score: {t}", "score (0 = worst)", UNIT_BINS, {"all": c[f"score:{t}"]},
                                   {f"cut-off {cut[t]}": float(cut[t])} if t in cut else {}))  # fmt: skip
    hists = [h for h in hists if all(v is not None for v in h.series.values())]
    return hists, archive_counts(res, c.get("in_groups"))


def archive_counts(res: DedupResult, in_groups: np.ndarray | None) -> pd.DataFrame:
    """Per archive of the run: ``archive, images, valid, invalid, in_groups, duplicate_rate``.

    ``duplicate_rate`` is the share of the archive's valid images that belong to a group of
    duplicates (a component of more than one image).

    Examples
    --------
    >>> archive_counts(res, None).columns.tolist()  # doctest: +SKIP
    ['archive', 'images', 'valid', 'invalid', 'in_groups', 'duplicate_rate']
    """
    arcs = res.run.get("archives") or []
    df = pd.DataFrame({
        "archive": [str(a.get("name", "")) for a in arcs],
        "images": np.array([int(a.get("n_images", 0)) for a in arcs], dtype=np.int64),
        "valid": np.array([int(a.get("n_valid", 0)) for a in arcs], dtype=np.int64),
    })  # fmt: skip
    df["invalid"] = df["images"] - df["valid"]
    g = np.zeros(len(df), dtype=np.int64) if in_groups is None else np.asarray(in_groups, dtype=np.int64)[: len(df)]
    df["in_groups"] = g
    with np.errstate(invalid="ignore", divide="ignore"):
        df["duplicate_rate"] = np.where(df["valid"] > 0, g / df["valid"].clip(lower=1), 0.0)
    return df


# -- drawing ----------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dedupdask"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML declaration and doctype: inline in HTML


def _draw(ax: Any, h: Histogram) -> None:
    edges = np.asarray(h.edges, dtype=np.float64)
    used = np.zeros(len(edges) - 1, dtype=bool)
    for v in h.series.values():
        used |= np.asarray(v) > 0
    marks = np.array(list(h.marks.values()), dtype=np.float64)
    if used.any():
        lo_i, hi_i = np.flatnonzero(used)[[0, -1]]
        lo, hi = edges[lo_i], edges[hi_i + 1]
    else:
        lo, hi = edges[0], edges[-1]
    if marks.size:
        lo, hi = min(lo, marks.min()), max(hi, marks.max())
    pad = (hi - lo) * 0.03 or 0.01
    x = 10**edges if h.log_x else edges
    for label, counts in h.series.items():
        if np.asarray(counts).sum() == 0:
            continue
        ax.stairs(counts, x, label=f"{label} ({int(np.sum(counts))})", color=_COLOURS.get(label),
                  fill=len(h.series) == 1, alpha=0.85 if len(h.series) == 1 else 1.0, linewidth=1.2)  # fmt: skip
    for i, (label, v) in enumerate(h.marks.items()):
        ax.axvline(10**v if h.log_x else v, color="#000000", linestyle=("--", ":", "-.")[i % 3],
                   linewidth=1, label=label)  # fmt: skip
    if h.log_x:
        ax.set_xscale("log")
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
    else:
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_title(h.title, fontsize=10)
    ax.set_xlabel(h.xlabel, fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    ax.tick_params(labelsize=8)
    if h.total() == 0:
        ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", color="#777777")
    elif h.series or h.marks:
        ax.legend(fontsize=8, frameon=False)


def svg_histograms(hists: Sequence[Histogram]) -> list[str]:
    """One inline ``<svg>`` per histogram.

    Examples
    --------
    >>> h = Histogram("Scores", "score", np.linspace(0, 1, 5), {"all": np.array([0, 3, 1, 0])}, {"cut": 0.5})
    >>> s = svg_histograms([h])[0]
    >>> s.startswith("<svg") and "Scores" in s and "cut" in s
    True
    """
    out = []
    for h in hists:
        fig = _figure(5.2, 2.9)
        _draw(fig.add_subplot(), h)
        out.append(_svg(fig))
    return out


def svg_archives(archives: pd.DataFrame, *, top: int = 40) -> str:
    """Images per archive and duplicate rate per archive, as one inline ``<svg>``.

    Up to ``top`` archives get a bar each (in archive order); a run with more archives is
    shown as two histograms over its archives (how many archives hold so many images, and so
    high a duplicate rate), with the archives of the highest rate listed in the report's table.

    Examples
    --------
    >>> a = pd.DataFrame({"archive": ["a.tar", "b.tar"], "images": [10, 8], "valid": [10, 7],
    ...                   "invalid": [0, 1], "in_groups": [2, 0], "duplicate_rate": [0.2, 0.0]})
    >>> svg_archives(a).startswith("<svg")
    True
    """
    fig = _figure(10.4, 3.0)
    ax1, ax2 = fig.subplots(1, 2)
    if len(archives) <= top:
        pos = np.arange(len(archives))
        ax1.bar(pos, archives["valid"], color="#4d4d4d", label="valid")
        ax1.bar(pos, archives["invalid"], bottom=archives["valid"], color="#d6604d", label="invalid")
        ax2.bar(pos, archives["duplicate_rate"], color="#2166ac")
        for ax in (ax1, ax2):
            ax.set_xticks(pos, [str(a)[:18] for a in archives["archive"]], rotation=60, ha="right", fontsize=7)
        ax1.legend(fontsize=8, frameon=False)
        ax1.set_ylabel("images", fontsize=9)
        ax2.set_ylabel("share in a duplicate group", fontsize=9)
    else:
        ax1.hist(archives["images"], bins=40, color="#4d4d4d")
        ax2.hist(archives["duplicate_rate"], bins=np.linspace(0, 1, 41), color="#2166ac")
        ax1.set_xlabel("images per archive", fontsize=9)
        ax2.set_xlabel("share of an archive's images in a duplicate group", fontsize=9)
        for ax in (ax1, ax2):
            ax.set_ylabel("archives", fontsize=9)
    ax1.set_title("Images per archive", fontsize=10)
    ax2.set_title("Duplicate rate per archive", fontsize=10)
    for ax in (ax1, ax2):
        ax.tick_params(labelsize=8)
    return _svg(fig)
