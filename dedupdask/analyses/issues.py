"""Analysis stage, issue labels: which images are dark, blank, tiny, odd, outlying or duplicated.

Like cleanvision, every image gets a **score per issue type** in [0, 1] (rounded to 6
decimals, so runs on different schedulers write the same bytes), lower = worse, and an
image *has* the issue when its score is below the type's cut-off
(:data:`dedupdask.thresholds.ISSUE_TABLE`, measured on real packaged images by
``benchmarks/issues.py``; ``issue_thresholds=`` overrides single types). Scores come from the
statistics extraction stored for each image (on the grey image at the model's input size; no
second decode), so they are computed per archive, on the workers, from the archives' Parquet
files:

``dark``
    ``p99 / 255``: even the brightest 1 % of the pixels is dark (grey level ``p99``).
``light``
    ``1 - p01 / 255``: even the darkest 1 % of the pixels is light.
``blurry``
    ``1 - exp(-blur / 100)``: ``blur`` is the variance of the Laplacian (``atrain_stats.csv``),
    so for blurry images the score is about ``blur / 100``.
``noisy``
    ``1 - blur / (20 * stdv**2)``: the share of the grey-level variance that is not
    pixel-to-pixel noise. Independent pixel noise has a Laplacian variance 20 times its
    variance and scores 0; pictures keep most of their variance in structures larger than a
    pixel.
``low_information``
    There is nothing to see in the picture: the **minimum** of four sub-scores, each one kind
    of "no information" (columns ``low_information_<part>`` of ``issue_scores``; a part whose
    statistics an old work_dir lacks is left out of the minimum):

    ``flat``
        ``min(p99 - p01, residual_range) / 255``: 98 % of the pixels lie in a narrow band of
        grey levels, also once the best-fitting quadratic surface is removed
        (``residual_range``). Blank pages, solid colours, nearly black or white pictures, and
        the same under uneven light, a vignette or a smooth gradient: a surface of a few
        numbers, the rest within a few levels of it.
    ``featureless``
        ``1 - exp(-blur / 100)`` (the ``blurry`` score): no detail anywhere. One sharp edge
        of 40 grey levels across a 160 px picture already gives the Laplacian a variance of
        about 20 (``blur`` 6 is the cut-off); heavy blur and smooth gradients have almost none.
    ``structureless``
        ``max(0, 1 - (blur / (20 * stdv**2)) / 0.55)``: the variance is all independent pixel
        noise (the ``noisy`` ratio). Pure noise keeps at least 55 % of its variance in the
        Laplacian after any resize to the model input (1.0 at its own size, 0.56-0.68 after a
        bilinear downscale), so this part is 0 for any noise image; pictures keep most of
        their variance in structures larger than a pixel.
    ``page``
        ``1 - text_lines``: a page of text and nothing else -- a uniform background with
        marks in lines of text (:func:`dedupdask.decode._text_lines`: with at least half of
        the pixels at the background level and three lines or more, the share of the marked
        rows that are bands at most 1/6 of the picture high whose rows start a mark 3 times
        or more). Line art, clip art and pictures with a caption have marked rows that are
        not text lines; text under about 3 px high at the model input is not always read as
        lines.

    Unlike an entropy, line art on white keeps its range, detail and non-text rows and is not
    flagged. At the default cut-off (0.06) the parts flag 0.76 %, 0.35 %, 0.03 % and 0.13 % of
    the 3,165 real images of ``benchmarks/issues.py`` (1.1 % together; photos 5 %: smooth
    abstract wallpapers) and every planted junk picture of its tuning kinds but the strips.
``odd_aspect_ratio``
    ``min(width, height) / max(width, height)``.
``odd_size``
    ``min(s, m) / max(s, m)`` with ``s = sqrt(width * height)`` and ``m`` the median ``s`` of
    the run's valid images: far smaller (or larger) than the images around it.
``grayscale``
    ``chroma / 255``: ``chroma`` is the 99th percentile of ``max(R, G, B) - min(R, G, B)``.
``outlier``
    The cosine similarity of the image's **group** to the nearest image outside the group,
    clipped to [0, 1]. Groups are the connected components of the kNN edges with similarity
    >= ``outlier_link`` (plus exact duplicates); a lone image is a group of one, whose score is
    its nearest neighbour's similarity (:mod:`dedupdask.analyses.groups`). Junk comes in
    groups -- six blank pages are each other's nearest neighbours, so fastdup's
    ``outliers.csv`` (which ranks images by their nearest neighbour and keeps that meaning
    here) never lists them -- while the group as a whole is far from everything else. Only
    groups of at most ``outlier_group_size`` distinct pictures (exact copies count once) are
    labelled.
``<kind>_duplicate`` (``exact_duplicate``, ``copy_duplicate``, ``near_duplicate``...)
    Every image of a pair the duplicate tiers accepted, one row per image and kind, pointing
    at its most similar partner of that kind (``other``); score ``1 - similarity``.

``dark``, ``light`` and ``grayscale`` need the statistics of ``stats_version`` 2
(:data:`dedupdask.decode.STATS_VERSION`); images extracted before have no score there (they
are counted as not scored, never flagged). ``low_information`` is scored from the parts the
statistics allow: ``flat`` needs ``stats_version`` 2 (its detrended range 3), ``page``
version 3; the images without them are counted per part in ``run.json`` (``partly_scored``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..store import empty_files_frame
from .exact import ExactGroups
from .groups import OutlierGroups, outlier_groups, search_outside

if TYPE_CHECKING:
    import dask.dataframe as dd

    from ..collect import Collection
    from ..thresholds import IssueThresholds

__all__ = [
    "ISSUE_COLUMNS",
    "LOW_INFORMATION_PARTS",
    "PART_NEEDS",
    "SCORE_COLUMNS",
    "SCORE_INPUTS",
    "STAT_ISSUES",
    "NEEDS",
    "duplicate_issues",
    "empty_issues",
    "best_partners",
    "find_issues",
    "find_outlier_groups",
    "image_scores",
    "issues_about",
    "pair_ends",
    "stat_inputs",
    "issues_frame",
    "issues_partition",
    "issue_images",
    "issues_table",
    "outlier_group_counts",
    "outlier_issues",
    "scores_frame",
    "size_histogram",
    "size_reference",
    "summary_counts",
    "unscored_counts",
]

ISSUE_COLUMNS = ("index", "filename", "archive", "member", "key", "issue", "score", "other", "group")
#: Issue types scored from the per-image statistics, in report order.
STAT_ISSUES = (
    "dark", "light", "blurry", "noisy", "low_information", "odd_aspect_ratio", "odd_size", "grayscale",
)  # fmt: skip
#: The parts of ``low_information`` (its score is their minimum).
LOW_INFORMATION_PARTS = ("flat", "featureless", "structureless", "page")
SCORE_COLUMNS = ("index", *STAT_ISSUES, *(f"low_information_{p}" for p in LOW_INFORMATION_PARTS))
SCORE_INPUTS = ("index", "width", "height", "p01", "p99", "blur", "stdv", "residual_range", "text_lines", "chroma")
"""The columns of the per-archive files :func:`image_scores` reads (a frame may select them
first: the other columns, captions and JSON among them, need not be read)."""
#: The Parquet columns each statistics type needs (null in work_dirs extracted before them);
#: ``low_information`` is scored when any of its parts is.
NEEDS: dict[str, tuple[str, ...]] = {
    "dark": ("p99",),
    "light": ("p01",),
    "blurry": ("blur",),
    "noisy": ("blur", "stdv"),
    "low_information": ("blur", "stdv"),
    "odd_aspect_ratio": ("width", "height"),
    "odd_size": ("width", "height"),
    "grayscale": ("chroma",),
}
#: The Parquet columns of each part of ``low_information`` (``flat`` also uses
#: ``residual_range`` when there).
PART_NEEDS: dict[str, tuple[str, ...]] = {
    "flat": ("p01", "p99"),
    "featureless": ("blur",),
    "structureless": ("blur", "stdv"),
    "page": ("text_lines",),
}
BLUR_SCALE = 100.0  # blurry = 1 - exp(-blur / BLUR_SCALE)
NOISE_GAIN = 20.0  # Laplacian variance / variance of independent pixel noise (4**2 + 4 * 1)
NOISE_FLOOR = 0.55  # the lowest noisy ratio of pure noise after a resize to the model input
_BINS_PER_OCTAVE = 64  # resolution of the median image side for odd_size (about 1 %)
_OCTAVES = 17  # sides up to 2**17 px
_INFO = ("filename", "archive", "member", "key")
_DECIMALS = 6  # scores are rounded: a kNN similarity's last float32 bit depends on the BLAS blocking


def _score(v: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round (NaN stays NaN)."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(np.isfinite(v), np.round(np.clip(v, 0.0, 1.0), _DECIMALS), np.nan).astype(np.float32)


# -- statistics types, per archive --------------------------------------------------------------
def _num(files: pd.DataFrame, col: str) -> np.ndarray:
    if col not in files:
        return np.full(len(files), np.nan)
    return files[col].to_numpy(dtype="float64", na_value=np.nan)


def image_scores(files: pd.DataFrame, size_reference: float) -> pd.DataFrame:
    """Scores of the statistics types and of the parts of ``low_information`` for every valid
    image (NaN where a statistic is missing; ``low_information`` is the minimum of the parts
    that have one).

    Parameters
    ----------
    files : DataFrame
        Rows of the per-archive Parquet files (:data:`dedupdask.store.FILE_COLUMNS`) with the
        global ``index`` (null for invalid images).
    size_reference : float
        Median side ``sqrt(width * height)`` of the run's images (:func:`size_reference`).

    Returns
    -------
    DataFrame
        Columns :data:`SCORE_COLUMNS` (float32 scores: the types, then
        ``low_information_<part>``), one row per valid image by index.

    Examples
    --------
    >>> f = pd.DataFrame({"index": [0], "width": [512], "height": [16], "p01": [250.0],
    ...                   "p99": [255.0], "blur": [0.0], "stdv": [2.0], "chroma": [0.0],
    ...                   "residual_range": [3.0], "text_lines": [0.0]})
    >>> [round(float(v), 3) for v in image_scores(f, 256.0).iloc[0]]
    [0.0, 1.0, 0.02, 0.0, 1.0, 0.0, 0.031, 0.354, 0.0, 0.012, 0.0, 1.0, 1.0]
    """
    valid = files[files["index"].notna()] if "index" in files else files.iloc[:0]
    w, h = _num(valid, "width"), _num(valid, "height")
    p01, p99 = _num(valid, "p01"), _num(valid, "p99")
    blur, stdv = _num(valid, "blur"), _num(valid, "stdv")
    with np.errstate(invalid="ignore", divide="ignore"):
        side = np.sqrt(w * h)
        m = float(size_reference) if size_reference and size_reference > 0 else np.nan
        noise = np.where(stdv > 0, blur / (NOISE_GAIN * stdv * stdv), 0.0)  # NaN stays NaN
        span = p99 - p01
        residual = _num(valid, "residual_range")
        parts = {
            "flat": np.where(np.isfinite(residual), np.fmin(span, residual), span) / 255.0,
            "featureless": 1.0 - np.exp(-blur / BLUR_SCALE),
            "structureless": 1.0 - noise / NOISE_FLOOR,
            "page": 1.0 - _num(valid, "text_lines"),
        }
        parts = {p: _score(v) for p, v in parts.items()}
        scores = {
            "dark": p99 / 255.0,
            "light": 1.0 - p01 / 255.0,
            "blurry": parts["featureless"],
            "noisy": 1.0 - noise,
            "low_information": _nanmin(list(parts.values())),
            "odd_aspect_ratio": np.minimum(w, h) / np.maximum(w, h),
            "odd_size": np.minimum(side, m) / np.maximum(side, m),
            "grayscale": _num(valid, "chroma") / 255.0,
        }
    out = pd.DataFrame({"index": valid["index"].to_numpy(dtype=np.int64)})
    for t in STAT_ISSUES:
        out[t] = _score(scores[t])
    for p in LOW_INFORMATION_PARTS:
        out[f"low_information_{p}"] = parts[p]
    return out


def _nanmin(columns: list[np.ndarray]) -> np.ndarray:
    """Row-wise minimum ignoring NaN; NaN where every value is NaN."""
    stack = np.vstack([np.asarray(c, dtype=np.float64) for c in columns])
    known = np.isfinite(stack)
    low = np.where(known, stack, np.inf).min(axis=0)
    return np.where(known.any(axis=0), low, np.nan)


def size_histogram(files: pd.DataFrame) -> np.ndarray:
    """Counts of the valid images' sides ``sqrt(width * height)`` in 1/64-octave bins.

    Summed over archives, it gives the median side (:func:`size_reference`) without gathering
    any per-image row.

    Examples
    --------
    >>> size_histogram(pd.DataFrame({"index": [0, 1], "width": [64, 64], "height": [64, 64]})).sum()
    np.int64(2)
    """
    valid = files[files["index"].notna()] if "index" in files else files.iloc[:0]
    side = np.sqrt(_num(valid, "width") * _num(valid, "height"))
    side = side[np.isfinite(side) & (side >= 1)]
    b = np.clip(np.floor(np.log2(side) * _BINS_PER_OCTAVE), 0, _BINS_PER_OCTAVE * _OCTAVES - 1)
    return np.bincount(b.astype(np.int64), minlength=_BINS_PER_OCTAVE * _OCTAVES).astype(np.int64)


def size_reference(hist: np.ndarray) -> float:
    """The median side (pixels) of a :func:`size_histogram` (NaN when it is empty).

    Examples
    --------
    >>> h = size_histogram(pd.DataFrame({"index": [0, 1, 2], "width": [64, 100, 400],
    ...                                  "height": [64, 100, 400]}))
    >>> round(size_reference(h))
    100
    """
    n = int(hist.sum())
    if n == 0:
        return float("nan")
    b = int(np.searchsorted(np.cumsum(hist), (n + 1) / 2))
    return float(2 ** ((b + 0.5) / _BINS_PER_OCTAVE))


def empty_issues() -> pd.DataFrame:
    """An empty issues table with its dtypes (Dask meta).

    Examples
    --------
    >>> list(empty_issues().columns) == list(ISSUE_COLUMNS)
    True
    """
    return pd.DataFrame(
        {
            "index": pd.Series(dtype="int64"),
            **{c: pd.Series(dtype="string") for c in _INFO},
            "issue": pd.Series(dtype="string"),
            "score": pd.Series(dtype="float32"),
            "other": pd.Series(dtype="Int64"),
            "group": pd.Series(dtype="Int64"),
        }
    )


def issues_partition(
    files: pd.DataFrame, cutoffs: Mapping[str, float], size_reference: float
) -> pd.DataFrame:
    """The statistics issues of one archive's images (a ``map_partitions`` function).

    Parameters
    ----------
    files : DataFrame
        One archive's Parquet rows with the global index.
    cutoffs : mapping
        Issue type -> cut-off; types not in it are not labelled.
    size_reference : float
        Median side of the run's images.

    Returns
    -------
    DataFrame
        Columns :data:`ISSUE_COLUMNS`, one row per (image, type) whose score is below the
        cut-off.

    Examples
    --------
    >>> f = empty_files_frame()
    >>> issues_partition(f, {"dark": 0.1}, 100.0).columns.tolist() == list(ISSUE_COLUMNS)
    True
    """
    scores = image_scores(files, size_reference)
    valid = files[files["index"].notna()] if "index" in files else files.iloc[:0]
    info = valid.reindex(columns=list(_INFO)).reset_index(drop=True)
    parts = []
    for t in STAT_ISSUES:
        cut = cutoffs.get(t)
        if cut is None:
            continue
        hit = np.flatnonzero(scores[t].to_numpy() < np.float32(cut))
        if hit.size:
            part = info.iloc[hit].reset_index(drop=True)
            part.insert(0, "index", scores["index"].to_numpy()[hit])
            part["issue"] = t
            part["score"] = scores[t].to_numpy()[hit]
            parts.append(part)
    return _typed(parts)


def _typed(parts: list[pd.DataFrame]) -> pd.DataFrame:
    meta = empty_issues()
    if not parts:
        return meta
    df = pd.concat(parts, ignore_index=True).reindex(columns=list(ISSUE_COLUMNS))
    return df.astype(meta.dtypes.to_dict())


def unscored_counts(files: pd.DataFrame) -> pd.DataFrame:
    """One row: per statistics type and per part of ``low_information``
    (``low_information_<part>``), the valid images without a score (statistic missing).

    Examples
    --------
    >>> u = unscored_counts(pd.DataFrame({"index": [0], "width": [9], "height": [9], "blur": [1.0],
    ...                                   "stdv": [1.0], "p01": [None], "p99": [None], "chroma": [None]}))
    >>> u["dark"].item(), u["low_information"].item(), u["low_information_page"].item()
    (1, 0, 1)
    """
    scores = image_scores(files, 1.0)
    cols = [c for c in SCORE_COLUMNS if c != "index"]
    return pd.DataFrame({t: [int(scores[t].isna().sum())] for t in cols}, dtype="int64")


def scores_frame(files: dd.DataFrame, size_reference: float) -> dd.DataFrame:
    """:func:`image_scores` of every archive, in the partitions of ``files`` (nothing gathered).

    Examples
    --------
    >>> scores_frame(res.files, 384.0).columns.tolist() == list(SCORE_COLUMNS)  # doctest: +SKIP
    True
    """
    meta = image_scores(empty_files_frame(), 1.0)
    return files[list(SCORE_INPUTS)].map_partitions(image_scores, size_reference, meta=meta)


def issues_frame(
    files: dd.DataFrame, cutoffs: Mapping[str, float], size_reference: float
) -> dd.DataFrame:
    """:func:`issues_partition` of every archive, in the partitions of ``files``.

    Examples
    --------
    >>> issues_frame(res.files, {"dark": 0.15}, 384.0).compute()  # doctest: +SKIP
    """
    return files.map_partitions(issues_partition, dict(cutoffs), size_reference, meta=empty_issues())


def outlier_issues(og: OutlierGroups, cutoff: float | None, max_size: int) -> pd.DataFrame:
    """``index, issue, score, other, group`` of the images whose group scores below ``cutoff``
    (groups of at most ``max_size`` distinct pictures).

    Examples
    --------
    >>> og = OutlierGroups(np.array([0, 0, 2]), np.array([2, 2, 1]), np.array([2, 2, 1]),
    ...                    np.array([0.2, 0.2, 0.8], np.float32), np.array([2, 2, 0]))
    >>> outlier_issues(og, 0.5, 10)[["index", "other", "group"]].values.tolist()
    [[0, 2, 0], [1, 2, 0]]
    """
    score = _score(og.similarity)
    if cutoff is None:
        hit = np.empty(0, np.int64)
    else:
        hit = np.flatnonzero((score < np.float32(cutoff)) & (og.pictures <= max_size))
    return pd.DataFrame(
        {
            "index": hit.astype(np.int64),
            "issue": "outlier",
            "score": score[hit],
            "other": pd.array(og.nearest[hit], dtype="Int64"),
            "group": pd.array(og.group[hit], dtype="Int64"),
        }
    )


def duplicate_issues(similarity: pd.DataFrame) -> pd.DataFrame:
    """Both images of every accepted pair, one row per image and kind: ``<kind>_duplicate``.

    Each row points at the image's most similar partner of that kind (``other``); the score is
    ``1 - similarity``.

    Examples
    --------
    >>> sim = pd.DataFrame({"from": [0, 0], "to": [1, 2], "similarity": [1.0, 0.97],
    ...                     "kind": ["exact", "near"]})
    >>> duplicate_issues(sim)[["index", "issue", "other"]].values.tolist()
    [[0, 'exact_duplicate', 1], [1, 'exact_duplicate', 0], [0, 'near_duplicate', 2], [2, 'near_duplicate', 0]]
    """
    if not len(similarity):
        return pd.DataFrame(columns=["index", "issue", "score", "other", "group"])
    return best_partners(pair_ends(similarity))


def pair_ends(similarity: pd.DataFrame) -> pd.DataFrame:
    """``index, kind, sim, other``: both ends of every pair (the rows :func:`best_partners`
    reduces; on the workers they are shuffled on ``index`` first).

    Examples
    --------
    >>> pair_ends(pd.DataFrame({"from": [0], "to": [1], "similarity": [0.9], "kind": ["near"]}))["index"].tolist()
    [0, 1]
    """
    s = similarity["similarity"].to_numpy(dtype=np.float64, na_value=np.nan)
    kind = similarity["kind"].astype("string").to_numpy(dtype=object)
    a, b = similarity["from"].to_numpy(np.int64), similarity["to"].to_numpy(np.int64)
    return pd.DataFrame(
        {
            "index": np.concatenate([a, b]),
            "kind": pd.array(np.concatenate([kind, kind]), dtype="string"),
            "sim": np.concatenate([s, s]),
            "other": np.concatenate([b, a]),
        }
    )


def best_partners(both: pd.DataFrame) -> pd.DataFrame:
    """The ``<kind>_duplicate`` rows of :func:`pair_ends` rows holding every end of their
    images: per image and kind, the most similar partner (ties: smaller index).

    Examples
    --------
    >>> ends = pair_ends(pd.DataFrame({"from": [0, 0], "to": [1, 2], "similarity": [0.9, 0.95],
    ...                                "kind": ["near", "near"]}))
    >>> best_partners(ends)[["index", "other"]].values.tolist()
    [[0, 2], [1, 0], [2, 0]]
    """
    both = both.sort_values(["kind", "index", "sim", "other"], ascending=[True, True, False, True],
                            kind="stable").drop_duplicates(["kind", "index"])  # fmt: skip
    return pd.DataFrame(
        {
            "index": both["index"].to_numpy(np.int64),
            "issue": (both["kind"].astype(str) + "_duplicate").to_numpy(),
            "score": _score(1.0 - both["sim"].to_numpy()),
            "other": pd.array(both["other"].to_numpy(), dtype="Int64"),
            "group": pd.array([None] * len(both), dtype="Int64"),
        }
    )


def issues_table(
    stat_rows: pd.DataFrame, other_rows: list[pd.DataFrame], info: pd.DataFrame
) -> pd.DataFrame:
    """The run's issues table: the statistics rows plus outlier and duplicate rows, sorted.

    Parameters
    ----------
    stat_rows : DataFrame
        :func:`issues_partition` rows of every archive.
    other_rows : list of DataFrame
        ``index, issue, score, other, group`` (:func:`outlier_issues`, :func:`duplicate_issues`).
    info : DataFrame
        ``filename, archive, member, key`` indexed by global index (for ``other_rows``).

    Returns
    -------
    DataFrame
        Columns :data:`ISSUE_COLUMNS`, by issue type (statistics types, ``outlier``, then the
        duplicate kinds), score (worst first), index.

    Examples
    --------
    >>> info = pd.DataFrame({"filename": ["a"], "archive": ["t"], "member": ["a"], "key": ["a"]})
    >>> rows = pd.DataFrame({"index": [0], "issue": ["outlier"], "score": [0.2], "other": [None],
    ...                      "group": [0]})
    >>> issues_table(empty_issues(), [rows], info)[["index", "filename", "issue"]].values.tolist()
    [[0, 'a', 'outlier']]
    """
    parts = [stat_rows] if len(stat_rows) else []
    for rows in other_rows:
        if len(rows):
            idx = rows["index"].to_numpy(np.int64)
            named = info.reindex(idx).reset_index(drop=True)
            parts.append(pd.concat([rows.reset_index(drop=True), named.reindex(columns=list(_INFO))], axis=1))
    out = _typed(parts)
    order = {t: i for i, t in enumerate((*STAT_ISSUES, "outlier"))}
    rank = out["issue"].map(lambda t: order.get(t, len(order))).astype("int64")
    out = out.assign(_rank=rank).sort_values(["_rank", "issue", "score", "index"], kind="stable")
    return out.drop(columns="_rank").reset_index(drop=True)


def issue_images(issues: pd.DataFrame) -> int:
    """Images with at least one issue other than being a duplicate.

    Examples
    --------
    >>> issue_images(pd.DataFrame({"index": [1, 1, 2], "issue": ["dark", "light", "near_duplicate"]}))
    1
    """
    return int(issues.loc[~issues["issue"].str.endswith("_duplicate"), "index"].nunique())


def summary_counts(issues: pd.DataFrame) -> dict[str, int]:
    """Images per issue type (every type of the table, in its order).

    Examples
    --------
    >>> summary_counts(pd.DataFrame({"issue": ["dark", "dark", "outlier"]}))
    {'dark': 2, 'outlier': 1}
    """
    counts = issues["issue"].value_counts(sort=False)
    return {str(t): int(counts[t]) for t in dict.fromkeys(issues["issue"])}


# -- one run ------------------------------------------------------------------------------------
def find_issues(
    col: Collection,
    files: pd.DataFrame | None,
    groups: ExactGroups,
    reps: np.ndarray,
    graph: tuple[np.ndarray, np.ndarray],
    similarity: pd.DataFrame,
    thresholds: IssueThresholds,
    info: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every issue of one run, and what ``results/run.json`` says about them.

    The statistics types are computed per archive: over ``files`` here when the caller already
    holds them (a local scheduler), else as one Dask task per archive
    (:func:`issues_frame`, after one pass for the median side), so no per-image row is
    gathered. Outlier groups and duplicates come from the kNN graph and the accepted pairs.

    Parameters
    ----------
    col : Collection
        The done archives.
    files : DataFrame or None
        Every Parquet row of the run (with ``key``, ``p01``, ``p99``, ``chroma``), or None to
        read them on the workers.
    groups, reps, graph
        Exact groups, kNN representatives and their graph (positions, similarities).
    similarity : DataFrame
        The accepted pairs (``from, to, similarity, kind``).
    thresholds : IssueThresholds
        The resolved cut-offs (:func:`dedupdask.thresholds.resolve_issues`).
    info : DataFrame
        ``filename, archive, member, key`` indexed by global index.

    Returns
    -------
    (DataFrame, dict)
        The issues table (:data:`ISSUE_COLUMNS`) and ``size_reference``, ``unscored``,
        ``not_reported``, ``partly_scored``, ``outlier_groups`` and ``counts``.

    Examples
    --------
    >>> table, about = find_issues(col, files, groups, reps, graph, sim, t, info)  # doctest: +SKIP
    >>> about["counts"]  # doctest: +SKIP
    {'low_information': 12, 'odd_size': 8, 'outlier': 14, 'exact_duplicate': 30}
    """
    from ..collect import on_distributed

    cut = thresholds.cutoffs()
    if files is None or on_distributed():
        ref, miss = stat_inputs(col)
        from ..scheduler import gather_frames

        (stat_rows,) = gather_frames(issues_frame(col.files(), cut, ref))
    else:
        ref = size_reference(size_histogram(files))
        miss = unscored_counts(files).sum()
        stat_rows = issues_partition(files, cut, ref)
    og = find_outlier_groups(col, groups, reps, graph, thresholds)
    table = issues_table(
        stat_rows,
        [outlier_issues(og, thresholds.outlier, thresholds.outlier_group_size), duplicate_issues(similarity)],
        info,
    )
    return table, issues_about(groups.n, ref, miss, og, thresholds, summary_counts(table))


def find_outlier_groups(
    col: Collection,
    groups: ExactGroups,
    reps: np.ndarray,
    graph: tuple[np.ndarray, np.ndarray],
    thresholds: IssueThresholds,
) -> OutlierGroups:
    """The run's outlier groups (:func:`dedupdask.analyses.groups.outlier_groups`) with the
    cut-offs of ``thresholds``, searching closed groups over every archive's vectors."""
    nbr_idx, nbr_sim = graph
    return outlier_groups(
        groups, reps, nbr_idx, nbr_sim,
        link=thresholds.outlier_link, max_size=thresholds.outlier_group_size,
        search=None if thresholds.outlier is None else (lambda q, lab: search_outside(col, q, lab)),
        below=thresholds.outlier, max_searched=thresholds.outlier_search_members,
    )  # fmt: skip


def stat_inputs(col: Collection) -> tuple[float, pd.Series]:
    """The median side and the unscored counts of every archive, computed on the workers (one
    histogram and one row of counts per archive come back).

    Examples
    --------
    >>> ref, miss = stat_inputs(collect("work"))  # doctest: +SKIP
    """
    import dask

    parts = col.files().to_delayed()
    hists, unscored = dask.compute(
        [dask.delayed(size_histogram)(p) for p in parts],
        [dask.delayed(unscored_counts)(p) for p in parts],
    )
    ref = size_reference(np.sum(hists, axis=0) if hists else np.zeros(1, np.int64))
    miss = pd.concat(unscored).sum() if unscored else unscored_counts(empty_files_frame()).sum()
    return ref, miss


def issues_about(
    n: int,
    ref: float,
    miss: pd.Series,
    og: OutlierGroups | dict[str, int],
    thresholds: IssueThresholds,
    counts: dict[str, int],
) -> dict[str, Any]:
    """What ``results/run.json`` says about the issues of a run of ``n`` images (``og``: the
    outlier groups, or what :func:`outlier_group_counts` says of them).

    Examples
    --------
    >>> about = issues_about(n, ref, miss, og, t, summary_counts(table))  # doctest: +SKIP
    """
    not_reported: dict[str, str] = {}
    if thresholds.outlier is None:
        not_reported["outlier"] = (
            "no cut-off was measured for this model; pass issue_thresholds={'outlier': ...}"
        )
    unscored = {t: int(miss[t]) for t in STAT_ISSUES if int(miss[t])}
    for t, c in unscored.items():
        cols = "/".join(NEEDS[t] if t != "low_information" else PART_NEEDS["flat"])
        not_reported[t] = (
            f"{c} of {n} images have no {cols} (archives extracted before stats_version 2); "
            "re-extract them (resume=False) to label them"
        )
    partly: dict[str, str] = {}
    parts = {p: int(miss[f"low_information_{p}"]) for p in LOW_INFORMATION_PARTS}
    unscored.update({f"low_information_{p}": c for p, c in parts.items() if c})
    if "low_information" not in unscored and any(parts.values()):
        lacking = [p for p, c in parts.items() if c]
        cols = ["text_lines", "residual_range", *(PART_NEEDS["flat"] if parts["flat"] else ())]
        partly["low_information"] = (
            f"{max(parts.values())} of {n} images have no {'/'.join(cols)} (archives extracted "
            f"before stats_version 3): scored there without its {' and '.join(lacking)} "
            f"part{'s' if len(lacking) > 1 else ''}"
            + ("" if parts["flat"] else " and without detrending its flat part")
            + "; re-extract them (resume=False) to score them fully"
        )
    return {
        "size_reference": None if np.isnan(ref) else round(float(ref), 2),
        "unscored": unscored,
        "not_reported": not_reported,
        "partly_scored": partly,
        "outlier_groups": og if isinstance(og, dict) else outlier_group_counts(og, thresholds.outlier_group_size),
        "counts": counts,
    }


def outlier_group_counts(og: OutlierGroups, max_size: int) -> dict[str, int]:
    """``run.json``'s ``outlier_groups``: groups of more than one image, their images, the
    members searched, the largest group labelled, the members the search cap left out.

    Examples
    --------
    >>> og = OutlierGroups(np.array([0, 0, 2]), np.array([2, 2, 1]), np.array([2, 2, 1]),
    ...                    np.array([0.2, 0.2, 0.8], np.float32), np.array([2, 2, 0]))
    >>> outlier_group_counts(og, 10)
    {'groups': 1, 'images_in_groups': 2, 'searched_members': 0, 'largest_labelled': 2, 'unsearched_members': 0}
    """
    flagged = og.pictures <= max_size
    return {
        "groups": int(np.unique(og.group[og.size > 1]).size),
        "images_in_groups": int((og.size > 1).sum()),
        "searched_members": og.searched,
        "largest_labelled": int(og.size[flagged].max()) if flagged.any() else 0,
        "unsearched_members": og.unsearched,
    }
