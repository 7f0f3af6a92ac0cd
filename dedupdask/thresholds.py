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
    Embedding cosine from which a pair below ``threshold`` is verified (None: no such band).
``verify_score``
    Pixel-alignment score (:mod:`dedupdask.verify`) that confirms a verified pair.
``early_accept``
    Score at which the verifier stops trying further alignments of a pair; never below
    ``verify_score`` (:func:`resolve` raises it), so stopping early changes no decision.
``lower_threshold``
    Fraction of images reported as outliers (fastdup's name and default).

Regenerate the README's table with ``python -m dedupdask.thresholds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIELDS",
    "TABLE",
    "USER_MODEL",
    "Thresholds",
    "markdown_table",
    "overrides",
    "resolve",
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
    | `effnet-lite0` | 0.99 | 0.99 | 0.995 | 0.65 | 0.9 | 0.98 | 0.05 |
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


if __name__ == "__main__":
    print(markdown_table())
