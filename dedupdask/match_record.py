"""The match record: what verification found for one pair, and how the results keep it.

:func:`dedupdask.match.match_record` returns a :class:`MatchRecord` -- the score, the part of
the matcher that gave it, the alignment and the sub-scores. Verification
(:mod:`dedupdask.verify`) writes it as the columns :data:`RECORD_COLUMNS` next to
``verify_score``, and they stay with the pair in ``results/similarity`` and
``results/candidates``: a user (or the report's explain view) can see *why* a pair was called
a duplicate, and draw where one picture lies on the other.

The alignment is kept as ``verify_h``: the 3 x 3 homography mapping the ``to`` picture's
normalised coordinates (``x / width``, ``y / height`` over the picture as displayed) to the
``from`` picture's, as nine numbers separated by spaces (:func:`homography_text`,
:func:`parse_homography`): one value per pair in every table format (Parquet, CSV, pandas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "MATCHERS",
    "RECORD_COLUMNS",
    "MatchRecord",
    "empty_records",
    "homography_text",
    "invert_homography_text",
    "parse_homography",
    "records_frame",
]

MATCHERS = ("pixel", "pixel_framed", "pixel_turned", "warped", "keypoints")
"""Which part of the matcher gave a pair its score (:attr:`MatchRecord.matcher`): the pixel
alignment of the two pictures, of the two inside their frames
(:func:`dedupdask.match.frame_box`), its residuals under a turn found from the pixels
(:func:`dedupdask.match.turned_record`), its residuals under the keypoints' plane warp
(:func:`dedupdask.match.warped_score`, two graphics), or the keypoint matcher
(:mod:`dedupdask.match_keypoints`)."""

RECORD_COLUMNS: dict[str, str] = {
    "verify_matcher": "string",
    "verify_h": "string",
    "verify_residual": "float32",
    "verify_cell": "float32",
    "verify_blob": "float32",
    "verify_inliers": "Int32",
    "verify_differing": "float32",
    "verify_colour": "string",
}
"""Columns (and dtypes) of a pair's match record in the results; null for a pair that was not
verified (and for a pair whose score a build kept before records existed)."""


@dataclass
class MatchRecord:
    """What verification found for one pair: its score, which matcher gave it, the alignment,
    and the sub-scores the score was made of.

    Attributes
    ----------
    score : float
        The pair's score (:func:`dedupdask.match.match_score`); -1 when nothing aligns.
    matcher : str
        One of :data:`MATCHERS`, or ``""`` when no alignment was found.
    homography : ndarray or None
        3 x 3, mapping the second picture's normalised coordinates (``x / width``,
        ``y / height``, both in 0..1 over the picture as displayed) to the first's: where the
        second picture lies on the first. None when no alignment was found.
    residual, cell, blob : float
        The pixel residuals under the alignment (``score = 1 - max(residual, cell / 2, 75 *
        blob)``, see :mod:`dedupdask.match`); NaN for the keypoint matcher.
    inliers : int
        Keypoint matches agreeing with the warp (``warped`` and ``keypoints``), else 0.
    differing : float
        The keypoint matcher's share of the compared area that differs after the colour edit
        (its overlay), NaN for the others.
    colour : str
        The global colour edit the score was read under: ``""`` (none: one brightness gain),
        ``"colour edit"`` (the pixel alignment's,
        :func:`~dedupdask.match_keypoints.colour_edit`), ``"channel curves"`` (the pixel
        alignment's second, :func:`~dedupdask.match_keypoints.channel_curves`), each of the
        pixel alignment's under a smooth light field too (``"light field"`` alone, after one
        brightness gain; ``"colour edit, light field"``, ``"channel curves, light field"``:
        :func:`dedupdask.match._light_field`), or the keypoint matcher's form
        (``"chroma turn"``, ``"hue turn"``, ``"toned"``).

    Examples
    --------
    >>> from dedupdask.match import Prepared, match_record
    >>> rng = np.random.default_rng(0)
    >>> img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    >>> r = match_record(Prepared(128, 96, img), Prepared(128, 96, img[:, ::-1]))
    >>> r.matcher, round(r.score, 3), np.round(r.homography @ [0.25, 0.5, 1.0], 3).tolist()
    ('pixel', 1.0, [0.75, 0.5, 1.0])
    """

    score: float = -1.0
    matcher: str = ""
    homography: np.ndarray | None = None
    residual: float = float("nan")
    cell: float = float("nan")
    blob: float = float("nan")
    inliers: int = 0
    differing: float = float("nan")
    colour: str = ""


def homography_text(H: np.ndarray | None) -> str | None:
    """A homography as nine numbers separated by spaces (7 significant digits), None for None.

    Examples
    --------
    >>> homography_text(np.diag([0.5, 0.5, 1.0]))
    '0.5 0 0 0 0.5 0 0 0 1'
    """
    if H is None:
        return None
    H = np.asarray(H, dtype=np.float64)
    H = H / H[2, 2] if H[2, 2] else H
    return " ".join(f"{v:.7g}" for v in H.ravel())


def parse_homography(text: object) -> np.ndarray | None:
    """The 3 x 3 homography of a ``verify_h`` value; None for a missing or malformed one.

    Examples
    --------
    >>> parse_homography("0.5 0 0 0 0.5 0 0 0 1") @ [1.0, 1.0, 1.0]
    array([0.5, 0.5, 1. ])
    >>> parse_homography(None) is None, parse_homography("1 2") is None
    (True, True)
    """
    if not isinstance(text, str):
        return None
    try:
        v = np.array([float(x) for x in text.split()], dtype=np.float64)
    except ValueError:
        return None
    return v.reshape(3, 3) if v.size == 9 and np.isfinite(v).all() else None


def invert_homography_text(text: object) -> str | None:
    """``verify_h`` of the same pair read the other way (``from`` and ``to`` swapped).

    Examples
    --------
    >>> invert_homography_text("0.5 0 0.25 0 0.5 0.25 0 0 1")
    '2 0 -0.5 0 2 -0.5 0 0 1'
    """
    H = parse_homography(text)
    if H is None or abs(np.linalg.det(H)) < 1e-12:
        return None
    return homography_text(np.linalg.inv(H))


def empty_records(n: int) -> pd.DataFrame:
    """``n`` rows of :data:`RECORD_COLUMNS`, all null (pairs not verified).

    Examples
    --------
    >>> bool(empty_records(2)["verify_matcher"].isna().all())
    True
    """
    return pd.DataFrame({c: pd.Series([None] * n, dtype=d) for c, d in RECORD_COLUMNS.items()})


def records_frame(records: Sequence[MatchRecord | None]) -> pd.DataFrame:
    """The columns :data:`RECORD_COLUMNS` of ``records`` (None: a pair not scored).

    Examples
    --------
    >>> df = records_frame([MatchRecord(0.95, "pixel", np.eye(3), 0.01, 0.02, 0.0), None])
    >>> df["verify_matcher"].tolist(), df["verify_h"][0]
    (['pixel', <NA>], '1 0 0 0 1 0 0 0 1')
    """
    rows = {c: [None] * len(records) for c in RECORD_COLUMNS}
    for i, r in enumerate(records):
        if r is None:
            continue
        rows["verify_matcher"][i] = r.matcher
        rows["verify_h"][i] = homography_text(r.homography)
        rows["verify_residual"][i] = r.residual
        rows["verify_cell"][i] = r.cell
        rows["verify_blob"][i] = r.blob
        rows["verify_inliers"][i] = int(r.inliers)
        rows["verify_differing"][i] = r.differing
        rows["verify_colour"][i] = r.colour
    out = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in rows.items()})
    for c, d in RECORD_COLUMNS.items():
        out[c] = out[c].astype("float64").astype(d) if d == "float32" else out[c].astype(d)
    return out
