"""Explain view: why a pair is a duplicate -- its tier, every score, and the alignment found.

For every pair of the report (:mod:`dedupdask.report`) and for ``res.show_pair(i)``:

- the **tier** that accepted it, in words (:func:`tier_reason`): identical files or pixels
  (``exact``); a DCT descriptor at or above ``copy_threshold``, confirmed by the pixels
  (``copy``); an embedding at or above ``threshold`` (``near``, accepted without
  verification); or a candidate whose pixels the matcher accepted (``near``, verified);
- **every score**: embedding and DCT cosine, the verification score and the match record's
  sub-scores (:mod:`dedupdask.match_record`: which matcher, residual, worst cell, largest blob,
  keypoint inliers, differing share, colour edit);
- for a verified pair, **the alignment**: where ``to`` lies on ``from`` in words (scale, turn,
  mirror, the part of ``from`` it covers), and drawn (:func:`explain_figures`): both pictures
  side by side at the same scale, each with the outline of the other on it, and the difference
  map -- ``to`` warped onto ``from``, one brightness gain fitted, and the absolute difference
  of the grey levels over the overlap (bright = differs; dark = the same pixels).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from .match_record import parse_homography

__all__ = ["alignment_text", "explain_figures", "explain_html", "tier_reason"]

OUTLINE = (255, 0, 170)
"""Colour of the other picture's outline."""
DIFF_MAX = 0.4
"""A grey-level difference (of 1) drawn at full brightness in the difference map."""


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def tier_reason(row: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """Why the tiers accepted a pair of the similarity table, in words.

    Examples
    --------
    >>> tier_reason({"kind": "near", "similarity": 0.993, "verify_score": None}, {"threshold": 0.99})
    'near-duplicate: embedding similarity 0.9930 >= threshold 0.99, accepted without pixel verification'
    >>> tier_reason({"kind": "near", "similarity": 0.8, "verify_score": 0.95},
    ...             {"threshold": 0.99, "verify_score": 0.9})
    'near-duplicate: a candidate (embedding similarity 0.8000), accepted by pixel verification: score 0.950 >= verify_score 0.9'
    """
    kind = str(row.get("kind") or "")
    sim, dct, ver = _num(row.get("similarity")), _num(row.get("copy_similarity")), _num(row.get("verify_score"))
    vs = params.get("verify_score")
    if kind == "exact":
        return "exact duplicate: identical files, or identical pixels once decoded"
    verified = f"accepted by pixel verification: score {ver:.3f} >= verify_score {vs}" if ver is not None else ""
    if kind == "copy":
        base = f"copy: DCT descriptor similarity {dct:.4f} >= copy_threshold {params.get('copy_threshold')}" if dct else "copy"
        return f"{base}, {verified}" if verified else f"{base} (the images could not be read back to verify)"
    if kind == "near":
        if ver is None:
            return (f"near-duplicate: embedding similarity {sim:.4f} >= threshold {params.get('threshold')}, "
                    "accepted without pixel verification")  # fmt: skip
        return f"near-duplicate: a candidate (embedding similarity {sim:.4f}), {verified}"
    return kind or "not a reported pair"


def alignment_text(
    H: np.ndarray, size_from: tuple[float, float] | None = None, size_to: tuple[float, float] | None = None
) -> str:
    """Where ``to`` lies on ``from`` under the homography ``H`` (normalised coordinates),
    in words: the box of ``from`` it covers and, with both pictures' sizes, its scale, turn and
    mirror (in pixels).

    Examples
    --------
    >>> H = np.array([[0.5, 0, 0.25], [0, 0.5, 0.25], [0, 0, 1.0]])
    >>> alignment_text(H, (200, 100), (100, 50))
    'to covers x 25-75 %, y 25-75 % of from; scale 1.00, turned 0.0 degrees'
    >>> alignment_text(H)
    'to covers x 25-75 %, y 25-75 % of from'
    """
    c = H @ np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=np.float64).T
    xy = c[:2] / c[2]
    x0, x1 = np.clip([xy[0].min(), xy[0].max()], -9.99, 10.99) * 100
    y0, y1 = np.clip([xy[1].min(), xy[1].max()], -9.99, 10.99) * 100
    box = f"to covers x {x0:.0f}-{x1:.0f} %, y {y0:.0f}-{y1:.0f} % of from"
    if size_from is None or size_to is None:
        return box
    wf, hf = float(size_from[0]), float(size_from[1])
    wt, ht = float(size_to[0]), float(size_to[1])
    P = np.diag([wf, hf, 1.0]) @ H @ np.diag([1 / wt, 1 / ht, 1.0])  # pixels of to -> pixels of from
    # the linear part at the centre of to
    cx, cy = wt / 2, ht / 2
    p0 = P @ [cx, cy, 1.0]
    px, py = P @ [cx + 1, cy, 1.0], P @ [cx, cy + 1, 1.0]
    J = np.column_stack([px[:2] / px[2] - p0[:2] / p0[2], py[:2] / py[2] - p0[:2] / p0[2]])
    det = float(np.linalg.det(J))
    scale = float(np.sqrt(abs(det)))
    turn = float(np.degrees(np.arctan2(J[1, 0], J[0, 0])))
    mirrored = det < 0
    if mirrored:
        turn = float(np.degrees(np.arctan2(J[1, 0], -J[0, 0])))
    text = f"{box}; scale {scale:.2f}, turned {abs(turn) if abs(turn) < 0.05 else turn:.1f} degrees"
    return text + (", mirrored" if mirrored else "")


_SCORES = (
    ("similarity", "embedding similarity", "{:.4f}"),
    ("copy_similarity", "DCT similarity", "{:.4f}"),
    ("verify_score", "verification score", "{:.3f}"),
    ("verify_matcher", "matcher", "{}"),
    ("verify_residual", "residual (whole overlap)", "{:.4f}"),
    ("verify_cell", "residual (worst cell)", "{:.4f}"),
    ("verify_blob", "largest blob (share)", "{:.5f}"),
    ("verify_inliers", "keypoint inliers", "{}"),
    ("verify_differing", "differing share (overlay)", "{:.3f}"),
    ("verify_colour", "colour edit", "{}"),
)


def explain_html(
    row: Mapping[str, Any], params: Mapping[str, Any], figures: Mapping[str, str] | None = None,
    sizes: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> str:  # fmt: skip
    """The explain view of one pair as HTML (all text escaped): the tier's reason, a table of
    every score, the alignment in words and, when given, the figures (:func:`explain_figures`).

    Examples
    --------
    >>> s = explain_html({"kind": "exact", "similarity": 1.0}, {})
    >>> "exact duplicate" in s and "embedding similarity" in s
    True
    """
    e = html.escape
    rows = []
    for col, label, fmt in _SCORES:
        v = row.get(col)
        if v is None or v is np.nan or (isinstance(v, float) and not np.isfinite(v)) or str(v) in ("", "<NA>", "nan"):
            continue
        rows.append(f"<tr><td>{e(label)}</td><td>{e(fmt.format(v))}</td></tr>")
    parts = [f'<p class="why">{e(tier_reason(row, params))}</p>', f'<table class="scores">{"".join(rows)}</table>']
    H = parse_homography(row.get("verify_h"))
    if H is not None:
        parts.append(f'<p class="align">{e(alignment_text(H, *(sizes or (None, None))))}</p>')
        if figures:
            for key, caption in (("pair", "the two pictures at the same scale, each with the other's outline"),
                                 ("diff", "difference map: to warped onto from, one gain fitted "
                                          "(dark = same pixels, bright = differs)")):  # fmt: skip
                if figures.get(key):
                    parts.append(f'<figure class="explain"><img src="{figures[key]}" alt="{e(caption)}">'
                                 f"<figcaption>{e(caption)}</figcaption></figure>")  # fmt: skip
    elif row.get("kind") != "exact" and _num(row.get("verify_score")) is not None:
        parts.append('<p class="align">no alignment kept for this pair (scored by a build before match records)</p>')
    return "".join(parts)


def _uri(rgb: np.ndarray, fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {"optimize": True}))
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def _outline(rgb: np.ndarray, H: np.ndarray, other_hw: tuple[int, int]) -> np.ndarray:
    """``rgb`` with the outline of the other picture (its corners through ``H``, normalised)."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    c = H @ np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=np.float64).T
    pts = [(float(x * w), float(y * h)) for x, y in (c[:2] / c[2]).T]
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    d.line([*pts, pts[0]], fill=OUTLINE, width=max(2, round(max(h, w) / 120)))
    return np.asarray(im)


def explain_figures(a: np.ndarray, b: np.ndarray, H: np.ndarray, *, side: int = 240) -> dict[str, str]:
    """The explain view's figures of a verified pair, as ``data:`` URIs.

    Parameters
    ----------
    a, b : ndarray
        uint8 RGB pictures ``from`` and ``to`` (any sizes, aspect as displayed).
    H : ndarray
        The match record's homography (``to``'s normalised coordinates -> ``from``'s).
    side : int
        Longest side of ``from`` in the figures.

    Returns
    -------
    dict
        ``pair``: ``from`` and ``to`` side by side at the same scale (``to`` resized to the
        size it has on ``from``), each with the other's outline; ``diff``: the difference map.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    >>> H = np.array([[0.5, 0, 0.25], [0, 0.5, 0.25], [0, 0, 1.0]])  # to = the middle of from
    >>> sorted(explain_figures(a, a[22:68, 30:90], H))
    ['diff', 'pair']
    """
    import cv2
    from PIL import Image

    def fit(x: np.ndarray, long: int) -> np.ndarray:
        h, w = x.shape[:2]
        s = long / max(h, w)
        return np.asarray(Image.fromarray(x).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS))

    A = fit(np.ascontiguousarray(a), side)
    ha, wa = A.shape[:2]
    hb0, wb0 = b.shape[:2]
    # to's size on from: the area of its outline there, in from's pixels
    c = H @ np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=np.float64).T
    q = (c[:2] / c[2]).T * [wa, ha]
    area = 0.5 * abs(float(np.dot(q[:, 0], np.roll(q[:, 1], 1)) - np.dot(q[:, 1], np.roll(q[:, 0], 1))))
    scale = np.sqrt(area / (hb0 * wb0)) if area > 0 else side / max(hb0, wb0)
    long_b = int(np.clip(round(max(hb0, wb0) * scale), 16, 2 * side))
    B = fit(np.ascontiguousarray(b), long_b)
    hb, wb = B.shape[:2]
    Hinv = np.linalg.inv(H)
    left, right = _outline(A, H, (hb, wb)), _outline(B, Hinv, (ha, wa))
    gap = 12
    canvas = np.full((max(ha, hb), wa + gap + wb, 3), 255, np.uint8)
    canvas[:ha, :wa] = left
    canvas[:hb, wa + gap :] = right
    # the difference map, at from's size: to warped onto from through the pixel homography
    P = np.diag([wa, ha, 1.0]) @ H @ np.diag([1 / wb, 1 / hb, 1.0])
    warped = cv2.warpPerspective(B, P, (wa, ha), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones((hb, wb), np.uint8), P, (wa, ha), flags=cv2.INTER_NEAREST).astype(bool)
    ga = A.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    gb = warped.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    if mask.sum() > 16:  # one gain and offset: a brightness change is no difference
        X = np.column_stack([gb[mask], np.ones(int(mask.sum()), np.float32)])
        k, *_ = np.linalg.lstsq(X, ga[mask], rcond=None)
        gb = gb * k[0] + k[1]
    d = np.clip(np.abs(ga - gb) / DIFF_MAX, 0, 1)
    from matplotlib import colormaps

    heat = (colormaps["magma"](d)[..., :3] * 255).astype(np.uint8)
    heat[~mask] = (210, 210, 210)
    return {"pair": _uri(canvas, "JPEG"), "diff": _uri(heat, "JPEG")}
