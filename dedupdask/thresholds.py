"""Thresholds stage: every cut-off and default of the analysis, one row per model, here only.

Each model has one :class:`Thresholds` row in :data:`TABLE` (user ONNX models share
:data:`USER_MODEL`); every stage reads its values from the row that :func:`resolve` returns
after the user's overrides, and ``results/run.json`` prints the row and the resolved values
(``"thresholds"``). No other module defines a threshold (``tests/test_thresholds.py``
checks it, and that the README states these numbers).

Which values a run uses depends on its mode:

* duplicate tiers (the default: the work_dir has ``dct.dat`` and ``verify=True``): all of them;
* ``verify=False``: no embedding candidates are verified (``verify_threshold``,
  ``verify_score`` and ``early_accept`` are unused) and a copy candidate is accepted on
  ``copy_threshold`` alone;
* a work_dir without ``dct.dat`` (extracted before the DCT descriptor was stored): no copy tier.

The numbers (each field's comment in :data:`TABLE` says where it was measured):

``threshold``
    Embedding cosine of a near pair accepted without verification (the pairs of
    ``similarity.csv`` when nothing is verified).
``ccthreshold``
    Embedding cosine of a kNN edge in connected components.
``copy_threshold``
    DCT-descriptor cosine of a ``copy`` candidate (the descriptor is the same for every model).
``verify_threshold``
    Embedding cosine from which a pair below ``threshold`` is verified (None: no such band),
    in runs too small to whiten (:data:`dedupdask.whitening.MIN_IMAGES`).
``whitened_threshold``
    In larger runs, the cosine of the run's whitened embedding (:mod:`dedupdask.whitening`)
    from which a pair below ``threshold`` is verified, instead of ``verify_threshold`` (None:
    the raw band in every run).
``whitened_margin``
    With ``whitened_threshold``: a whitened-graph pair under that cut is verified too when its
    cosine stands this much above the cosine of the picture's :data:`~dedupdask.analyses.tiers.TIER_K`-th nearest
    neighbour (None: the cut alone). A cosine means more or less depending on how crowded the
    picture's part of the space is (hubness); a copy stands out of its neighbourhood.
``verify_score``
    Pixel-alignment score (:mod:`dedupdask.verify`) that confirms a verified pair.
``early_accept``
    Score at which the verifier stops trying further alignments of a pair; never below
    ``verify_score`` (:func:`resolve` raises it), so stopping early changes no decision.
``lower_threshold``
    Fraction of images reported as outliers (fastdup's name and default).

Per-image issue labels (:mod:`dedupdask.analyses.issues`) have a second table,
:data:`ISSUE_TABLE`, one :class:`IssueThresholds` row per model: an image gets an issue when
that type's score (in [0, 1], lower = worse) is below the cut-off; ``issue_thresholds=``
overrides single types. Only the outlier values depend on the model (they are embedding
cosines); the others are cut-offs on image statistics and the same in every row.

``dark``, ``light``, ``blurry``, ``noisy``, ``low_information``, ``odd_aspect_ratio``, ``odd_size``, ``grayscale``
    Cut-offs on the scores of those types (their definitions: :mod:`dedupdask.analyses.issues`).
``outlier``
    Cut-off on the similarity of an image's group to the nearest image outside it (a lone
    image is a group of one). None: not reported unless the user gives one.
``outlier_link``
    Embedding cosine that links two images into one group of look-alike images (a grouped
    outlier is a whole group far from everything else).
``outlier_group_size``
    The largest group (in distinct pictures) that can be an outlier group.
``outlier_search_members``
    The most members of closed groups (groups whose members' kNN lists hold only the group)
    compared with every image to find the group's nearest image outside it; past it the
    members with the highest bound go first and the others keep what the kNN edges gave
    (``run.json`` counts both). A cost bound, not a cut-off: each member costs ``2 N d``
    flops, so 10,000 members at N = 400M and d = 1280 are 1.0e16 flops, 23 core-hours at the
    121.6 GFLOP/s of one core's sgemm measured here (``benchmarks/results/knn_partitioned.txt``;
    the partitioned kNN of the same N is projected at 98), 2.9 core-hours at 50M, and the
    vectors are read once whatever the count (:mod:`dedupdask.analyses.groups`).

Regenerate the README's tables with ``python -m dedupdask.thresholds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIELDS",
    "ISSUE_FIELDS",
    "ISSUE_TABLE",
    "ISSUE_TYPES",
    "IssueThresholds",
    "TABLE",
    "USER_MODEL",
    "USER_MODEL_ISSUES",
    "Thresholds",
    "issue_markdown_table",
    "issue_overrides",
    "issue_row_for",
    "markdown_table",
    "overrides",
    "resolve",
    "resolve_issues",
    "row_for",
]


@dataclass(frozen=True)
class Thresholds:
    """Every threshold and default of one model (see the module docstring).

    Attributes
    ----------
    threshold, ccthreshold : float
        Embedding cosines: near pair accepted without verification; component edge.
    copy_threshold : float
        DCT-descriptor cosine of a copy candidate.
    verify_threshold : float or None
        Embedding cosine from which a pair below ``threshold`` is verified.
    verify_score : float
        Verification score that confirms a pair.
    early_accept : float
        Verification score at which the search for a better alignment stops.
    lower_threshold : float
        Fraction of images reported as outliers.
    whitened_threshold : float or None
        Whitened embedding cosine from which a pair below ``threshold`` is verified (runs of
        :data:`dedupdask.whitening.MIN_IMAGES` images or more).
    whitened_margin : float or None
        Whitened cosine above the picture's :data:`~dedupdask.analyses.tiers.TIER_K`-th neighbour's from which a pair
        under ``whitened_threshold`` is verified too.

    Examples
    --------
    >>> row_for("effnet-lite0").threshold
    0.99
    """

    threshold: float
    ccthreshold: float
    copy_threshold: float
    verify_threshold: float | None
    verify_score: float
    early_accept: float
    lower_threshold: float
    whitened_threshold: float | None = None
    whitened_margin: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """The row as a plain dict (for ``run.json``)."""
        return dataclasses.asdict(self)


#: Names of the values a row holds, in table order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Thresholds))

TABLE: dict[str, Thresholds] = {
    "effnet-lite0": Thresholds(
        # threshold, verify_threshold, copy_threshold, verify_score: tuned together on half A of
        # `python benchmarks/quality.py --tiers` and held out on half B (near recall 0.962,
        # pp 0.970), benchmarks/results/quality_tiers.txt, "Default thresholds". Pairs in
        # [0.65, 0.99) are verified; 0.79 (benchmarks/results/quality.txt, the highest
        # similarity of an unrelated pair) is only the cut of that single-descriptor benchmark.
        threshold=0.99,
        # = threshold (not part of the grid): a kNN edge the tiers would verify does not link
        # components unverified.
        ccthreshold=0.99,
        copy_threshold=0.995,  # quality_tiers.txt: pp 0.975 at 0.995 vs 0.925 at 0.99
        verify_threshold=0.65,
        verify_score=0.9,
        # Not measured: chosen with the verifier (commit 1a858bb). It only saves time: at any
        # value >= verify_score no accept/reject decision changes (benchmarks/verify_profile.py
        # times the scoring).
        early_accept=0.98,
        lower_threshold=0.05,  # fastdup's default fraction of outliers
        # The cut on the whitened cosine that keeps 97 % of the *tuning* families' planted
        # pairs among the whitened kNN pairs (benchmarks/quality_families.py's fixed split;
        # benchmarks/whitening_probe.py prints it); the held-out families, the tiers and the
        # synthetic shards are reported at it, not fitted.
        whitened_threshold=0.457,
        # A pair under that cut whose whitened cosine stands 0.15 above the picture's 5th
        # neighbour's is verified too: on the first draw's tuning families the extra
        # verifications stay under 4 % of the images (79 of 2,204) with no false pair; 0.10-0.12
        # double them (benchmarks/results/whitening_margin.txt prints every value tried; the
        # held-out families and the tiers are reported at it, not fitted).
        whitened_margin=0.15,
    ),
    "dct": Thresholds(
        # benchmarks/results/quality.txt: threshold = highest unrelated similarity (0.976)
        # rounded up; ccthreshold halfway from there to 1.
        threshold=0.98,
        ccthreshold=0.99,
        # the cut the tiers shipped with before effnet-lite0's grid moved its own to 0.995;
        # unverified it gives pp 0.925 (quality_tiers.txt, "copy alone: DCT >= 0.99"), and
        # every copy candidate is verified by default.
        copy_threshold=0.99,
        verify_threshold=None,  # no band of this model was measured: nothing below threshold
        verify_score=0.9,  # the verifier's, measured as for effnet-lite0 (quality_tiers.txt)
        early_accept=0.98,  # as for effnet-lite0
        lower_threshold=0.05,  # fastdup's default
    ),
}
"""One row per built-in model (:func:`dedupdask.models.available_models`)."""

USER_MODEL = Thresholds(
    # Not measured: a user's ONNX model has no benchmark here. fastdup's default threshold 0.9,
    # ccthreshold halfway to 1; measure your own with `python benchmarks/quality.py --model PATH`
    # and pass them as threshold= / ccthreshold=.
    threshold=0.9,
    ccthreshold=0.95,
    copy_threshold=0.99,  # the DCT descriptor is the same for every model: as for "dct"
    verify_threshold=None,
    verify_score=0.9,
    early_accept=0.98,
    lower_threshold=0.05,
)
"""The row of every user ONNX model (``model_id`` ``"onnx:<file name>"``)."""


def row_for(model_id: str | None, recorded: Mapping[str, Any] | None = None) -> Thresholds:
    """The table row of a model, before the user's overrides.

    Parameters
    ----------
    model_id : str or None
        ``done.json``'s ``model_id``: a built-in name, ``"onnx:<file>"`` for user models.
    recorded : mapping, optional
        ``done.json``'s ``model_threshold`` / ``model_ccthreshold``. A model the table does not
        know keeps the values its work_dir was extracted with; built-in models use their row.

    Returns
    -------
    Thresholds

    Examples
    --------
    >>> row_for("dct").copy_threshold
    0.99
    >>> row_for("onnx:mine.onnx", {"model_threshold": 0.8}).threshold
    0.8
    """
    row = TABLE.get(str(model_id)) if model_id is not None else None
    if row is not None:
        return row
    rec = recorded or {}
    got = {
        name: float(rec[key])
        for name, key in (("threshold", "model_threshold"), ("ccthreshold", "model_ccthreshold"))
        if rec.get(key) is not None
    }
    return dataclasses.replace(USER_MODEL, **got)


def overrides(config: Any) -> dict[str, float]:
    """The table values that ``config`` sets (its other fields are None: the table's).

    Examples
    --------
    >>> from dedupdask.config import RunConfig
    >>> overrides(RunConfig(threshold=0.95))
    {'threshold': 0.95}
    """
    out = {}
    for name in FIELDS:
        v = getattr(config, name, None)
        if v is not None:
            out[name] = float(v)
    return out


def resolve(config: Any, model: Mapping[str, Any] | None = None) -> Thresholds:
    """The thresholds of one run: the model's row with the user's overrides (the one place).

    Parameters
    ----------
    config : RunConfig
        Its ``threshold``, ``ccthreshold``, ``copy_threshold``, ``verify_threshold``,
        ``verify_score`` and ``lower_threshold`` win when not None.
    model : mapping, optional
        ``model_id`` (and for user models ``model_threshold``/``model_ccthreshold``) from
        ``done.json`` (:attr:`dedupdask.collect.Collection.model`).

    Returns
    -------
    Thresholds
        ``early_accept`` is raised to ``verify_score`` when the user asks for a higher score.

    Examples
    --------
    >>> from dedupdask.config import RunConfig
    >>> t = resolve(RunConfig(ccthreshold=0.97), {"model_id": "effnet-lite0"})
    >>> t.threshold, t.ccthreshold, t.copy_threshold
    (0.99, 0.97, 0.995)
    >>> resolve(RunConfig(verify_score=0.99), {"model_id": "dct"}).early_accept
    0.99
    """
    model = model or {}
    row = row_for(model.get("model_id"), model)
    out = dataclasses.replace(row, **overrides(config))
    if out.early_accept < out.verify_score:
        out = dataclasses.replace(out, early_accept=out.verify_score)
    return out


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:g}"


def markdown_table() -> str:
    """The README's table of defaults (one row per model), generated from :data:`TABLE`.

    Examples
    --------
    >>> print(markdown_table().splitlines()[2])
    | `effnet-lite0` | 0.99 | 0.99 | 0.995 | 0.65 | 0.9 | 0.98 | 0.05 | 0.457 | 0.15 |
    """
    rows = [(f"`{name}`", row) for name, row in TABLE.items()]
    rows.append(("a path (user model)", USER_MODEL))
    lines = [
        "| `model_path` | " + " | ".join(f"`{f}`" for f in FIELDS) + " |",
        "|---" * (len(FIELDS) + 1) + "|",
    ]
    for label, row in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(getattr(row, f)) for f in FIELDS) + " |")
    return "\n".join(lines)


# -- per-image issue labels ----------------------------------------------------------------------
#: Issue types that have a cut-off (the duplicate kinds come from the duplicate tiers).
ISSUE_TYPES = (
    "dark", "light", "blurry", "noisy", "low_information", "odd_aspect_ratio", "odd_size", "grayscale",
    "outlier",
)  # fmt: skip


@dataclass(frozen=True)
class IssueThresholds:
    """Cut-offs of the issue types of one model (see the module docstring).

    An image has an issue when the type's score is below the cut-off (0 turns a type off).

    Examples
    --------
    >>> issue_row_for("effnet-lite0").odd_aspect_ratio
    0.1
    """

    dark: float
    light: float
    blurry: float
    noisy: float
    low_information: float
    odd_aspect_ratio: float
    odd_size: float
    grayscale: float
    outlier: float | None
    outlier_link: float
    outlier_group_size: int
    outlier_search_members: int

    def to_dict(self) -> dict[str, float | int | None]:
        """The row as a plain dict (for ``run.json``)."""
        return dataclasses.asdict(self)

    def cutoffs(self) -> dict[str, float]:
        """Issue type -> cut-off, for the types that have one (an unset outlier has none)."""
        out = {t: getattr(self, t) for t in ISSUE_TYPES}
        return {t: float(v) for t, v in out.items() if v is not None}


#: Names of the values an issue row holds, in table order.
ISSUE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(IssueThresholds))
_INT_FIELDS = ("outlier_group_size", "outlier_search_members")

_IMAGE_CUTOFFS = IssueThresholds(
    # The cut-offs on image statistics, the same for every model. Measured by
    # `python benchmarks/issues.py` on 3,165 real packaged images (101 photos and wallpapers,
    # 144 game textures, 332 Tux Paint stamps, 2,588 openclipart drawings) with 72 planted junk
    # images of 9 tuning kinds (benchmarks/results/issues.txt, "Cut-offs"): the share of the
    # real images each flags, and the planted junk it catches. The 104 held-out junk images
    # of 13 other kinds in the same file were not used to pick any value.
    dark=0.15,  # real 0.03 % (a near-black game texture); catches every near-black picture
    light=0.08,  # real 0.66 % (drawings whose ink covers < 1 % of a white page); near-white, blank
    blurry=0.05,  # real 0.28 %; every heavily blurred picture (Gaussian radius 10-16)
    noisy=0.5,  # real 0.03 % (a dithered game texture); every pure-noise picture
    # low_information: real 1.14 % (photos 5 %: smooth abstract wallpapers, a logo; textures
    # 6.2 %: solid, smooth or dithered ones; clip art 0.8 %: near-blank drawings, a font sheet),
    # by part flat 0.76 %, featureless 0.35 %, structureless 0.03 %, page 0.13 %; every tuning
    # junk picture but the strips (blank, solid, noise, text, tiny, blurred, near-black/white)
    low_information=0.06,
    odd_aspect_ratio=0.1,  # real 0 % (the most elongated real image is 512 x 68, 0.13); 512 x 16 strips
    odd_size=0.1,  # real 0 % (the set holds 100-512 px images: the lowest real score is 0.34); 16 px thumbnails
    grayscale=0.02,  # 706 of the 717 grey real images; 0.63 % of the real images are colour and flagged
    # The outlier values are the model's (see ISSUE_TABLE); a user model has none measured.
    outlier=None,
    outlier_link=0.9,
    outlier_group_size=50,
    # A cost bound (the module docstring has the arithmetic): ~23 core-hours at 400M x 1280.
    outlier_search_members=10_000,
)

ISSUE_TABLE: dict[str, IssueThresholds] = {
    "effnet-lite0": dataclasses.replace(
        _IMAGE_CUTOFFS,
        # benchmarks/results/issues.txt, "Outlier groups": 1 % of the real images have a group
        # similarity to the rest below 0.44, 2 % below 0.48; 0.45 flags 1.2 % (mostly the
        # photos among 2,588 drawings, which are the outliers of that set).
        outlier=0.45,
        # the same file at links 0.8-0.95: from 0.9 up, the planted junk kinds form groups of
        # their own (blank 9, noise 9 with the held-out noise, text 21 with the held-out text
        # pages) and the largest real group is 24 pictures; looser links merge blank,
        # near-black and near-white pages into one group of 16.
        outlier_link=0.9,
        # Not measured: bounds the groups searched; the largest real group at 0.9 has 24.
        outlier_group_size=50,
    ),
    # Not measured for the DCT descriptor (its unrelated pairs reach 0.98, quality.txt): no
    # outlier cut-off; the link and size are effnet-lite0's.
    "dct": dataclasses.replace(_IMAGE_CUTOFFS),
}
"""One issue row per built-in model."""

USER_MODEL_ISSUES = dataclasses.replace(_IMAGE_CUTOFFS)
"""The issue row of every user ONNX model: no outlier cut-off was measured for it."""


def issue_row_for(model_id: str | None) -> IssueThresholds:
    """The issue row of a model, before the user's overrides.

    Examples
    --------
    >>> issue_row_for("onnx:mine.onnx").outlier is None
    True
    """
    row = ISSUE_TABLE.get(str(model_id)) if model_id is not None else None
    return row if row is not None else USER_MODEL_ISSUES


def issue_overrides(config: Any) -> dict[str, float]:
    """The issue values that ``config.issue_thresholds`` sets.

    Examples
    --------
    >>> from dedupdask.config import RunConfig
    >>> issue_overrides(RunConfig(issue_thresholds={"dark": 0.2}))
    {'dark': 0.2}
    """
    return {k: float(v) for k, v in (getattr(config, "issue_thresholds", None) or ())}


def resolve_issues(config: Any, model: Mapping[str, Any] | None = None) -> IssueThresholds:
    """The issue cut-offs of one run: the model's issue row with the user's overrides.

    Examples
    --------
    >>> from dedupdask.config import RunConfig
    >>> t = resolve_issues(RunConfig(issue_thresholds={"blurry": 0.1}), {"model_id": "dct"})
    >>> t.blurry, t.dark
    (0.1, 0.15)
    """
    row = issue_row_for((model or {}).get("model_id"))
    got: dict[str, Any] = issue_overrides(config)
    for name in _INT_FIELDS:
        if name in got:
            got[name] = int(got[name])
    return dataclasses.replace(row, **got)


def issue_markdown_table() -> str:
    """The README's table of issue cut-offs (one row per model), generated from :data:`ISSUE_TABLE`.

    Examples
    --------
    >>> print(issue_markdown_table().splitlines()[2])
    | `effnet-lite0` | 0.15 | 0.08 | 0.05 | 0.5 | 0.06 | 0.1 | 0.1 | 0.02 | 0.45 | 0.9 | 50 | 10000 |
    """
    rows = [(f"`{name}`", row) for name, row in ISSUE_TABLE.items()]
    rows.append(("a path (user model)", USER_MODEL_ISSUES))
    lines = [
        "| `model_path` | " + " | ".join(f"`{f}`" for f in ISSUE_FIELDS) + " |",
        "|---" * (len(ISSUE_FIELDS) + 1) + "|",
    ]
    for label, row in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(getattr(row, f)) for f in ISSUE_FIELDS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
    print()
    print(issue_markdown_table())
