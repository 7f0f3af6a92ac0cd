"""The match record: which matcher scored a pair, and where the second picture lies on the first."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from dedupdask.match import MATCHERS, match_record, match_score, prepare_image


def _photo() -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return np.ascontiguousarray(load_sample_image("china.jpg")[40:360, 60:540])  # 480 x 320


def _prep(a: np.ndarray):
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, "JPEG", quality=92)
    return prepare_image(buf.getvalue())


def _onto(H: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    p = H @ np.array([[x, y, 1.0] for x, y in pts]).T
    return (p[:2] / p[2]).T


def test_a_crop_lies_where_it_was_cut_and_a_mirror_image_is_mirrored():
    a = _photo()
    h, w = a.shape[:2]
    r = match_record(_prep(a), _prep(a[32:288, 48:432]))
    assert r.matcher == "pixel" and r.score >= 0.9 and r.inliers == 0
    corners = _onto(r.homography, [(0, 0), (1, 1)])
    np.testing.assert_allclose(corners, [[48 / w, 32 / h], [432 / w, 288 / h]], atol=0.01)
    m = match_record(_prep(a), _prep(a[:, ::-1]))
    np.testing.assert_allclose(_onto(m.homography, [(0.2, 0.3)]), [[0.8, 0.3]], atol=0.01)


def test_a_turned_copy_maps_its_centre_to_the_centre_under_both_its_warps():
    """The keypoint matcher's record of a turned copy, and the record of the whole matcher (the
    turn found from the pixels, which reads the pixels under it, scores higher): both map the
    centre to the centre, and a point off it by 6 degrees and 1 / 1.15 about it."""
    from dedupdask.match import View, _keypoint_record

    a = _photo()
    h, w = a.shape[:2]
    turned = cv2.warpAffine(a, cv2.getRotationMatrix2D((w / 2, h / 2), 6, 1.15), (w, h))
    k = _keypoint_record(View(_prep(a)), View(_prep(turned)))
    assert k.matcher == "keypoints" and k.score >= 0.9 and k.inliers >= 30
    assert 0 <= k.differing <= 0.35 and np.isnan(k.residual)
    r = match_record(_prep(a), _prep(turned))
    assert r.matcher == "pixel_turned" and r.score >= max(0.9, k.score) and r.residual <= 0.1
    for rec in (k, r):
        np.testing.assert_allclose(_onto(rec.homography, [(0.5, 0.5)]), [[0.5, 0.5]], atol=0.02)
        # a point off the centre turns by 6 degrees and shrinks by 1 / 1.15 about the centre (in pixels)
        (x, y), = _onto(rec.homography, [(0.9, 0.5)]) * [w, h]
        assert np.hypot(x - w / 2, y - h / 2) == pytest.approx(0.4 * w / 1.15, rel=0.03)
        assert np.degrees(np.arctan2(y - h / 2, x - w / 2)) == pytest.approx(6, abs=1)


def test_a_padded_copy_maps_its_inner_picture_onto_the_whole_picture():
    a = _photo()
    h, w = a.shape[:2]
    padded = np.pad(a, ((h // 8, h // 8), (w // 8, w // 8), (0, 0)), constant_values=235)
    H2, W2 = padded.shape[:2]
    r = match_record(_prep(a), _prep(padded))
    assert r.score >= 0.9 and r.matcher in MATCHERS
    # the padded picture's inner corners land on the picture's corners
    inner = [((w // 8) / W2, (h // 8) / H2), ((w // 8 + w) / W2, (h // 8 + h) / H2)]
    np.testing.assert_allclose(_onto(r.homography, inner), [[0, 0], [1, 1]], atol=0.03)


def test_a_photo_turned_upside_down_maps_each_corner_onto_the_opposite_one():
    a = _photo()
    turned = np.ascontiguousarray(a[::-1, ::-1] // 2 + 60)  # a half turn, and less contrast
    r = match_record(_prep(a), _prep(turned))
    assert r.score >= 0.9 and r.matcher in ("keypoints", "pixel")  # the keypoints, or the pixels turned over
    np.testing.assert_allclose(_onto(r.homography, [(0, 0), (1, 1), (1, 0)]), [[1, 1], [0, 0], [0, 1]], atol=0.03)


def _smooth_wallpaper() -> np.ndarray:
    """A plain picture: colour gradients and soft blobs, too few corners for keypoints."""
    import cv2

    h, w = 300, 480
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.stack([120 + 100 * x, 60 + 120 * y, 200 - 120 * x * y], -1)
    rng = np.random.default_rng(3)
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.2)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-80, 80, 3)
    return cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), 3)


def test_a_plain_photo_shown_another_way_is_read_by_the_pixel_alignment():
    """Too plain for keypoints, a wallpaper shown on its side, upside down or mirrored so is
    aligned by the pixels, whole onto whole; its corners land where they were."""
    from dedupdask.match_keypoints import Keypoints, match_keypoints

    a = _smooth_wallpaper()
    for turned, corner in ((np.rot90(a), (1, 0)), (a[::-1, ::-1], (1, 1)), (np.rot90(a, -1), (0, 1)),
                           (np.swapaxes(a, 0, 1), (0, 0)), (a[::-1], (0, 1))):  # fmt: skip
        b = np.ascontiguousarray(turned)
        assert match_keypoints(Keypoints(_prep(a).rgb), Keypoints(_prep(b).rgb)).score < 0.9
        r = match_record(_prep(a), _prep(b))
        assert r.score >= 0.9 and r.matcher == "pixel", r
        np.testing.assert_allclose(_onto(r.homography, [(0, 0)]), [corner], atol=0.03)


def test_a_pair_that_does_not_align_has_no_homography_and_the_score_is_match_scores():
    from sklearn.datasets import load_sample_image

    a = _photo()
    other = np.ascontiguousarray(load_sample_image("flower.jpg")[40:360, 60:540] // 2 + 60)
    r = match_record(_prep(a), _prep(other))
    assert r.score < 0.9
    assert r.score == match_score(_prep(a), _prep(other))
    assert (r.homography is None) == (r.matcher == "")


def test_expanded_pairs_keep_the_record_and_invert_it_when_they_read_the_other_way():
    import pandas as pd

    from dedupdask.analyses import exact_groups
    from dedupdask.analyses.tiers import expand_pairs
    from dedupdask.match_record import RECORD_COLUMNS, parse_homography

    g = exact_groups(["a", "b", "a"])  # images 0 and 2 are identical (rep 0), 1 stands alone
    h = "0.5 0 0.25 0 0.5 0.25 0 0 1"  # 1 is the middle of 0
    p = pd.DataFrame({"from": [0], "to": [1], "similarity": [0.9], "copy_similarity": [0.5], "kind": ["near"],
                      "verify_score": [0.95], "verify_matcher": ["pixel"], "verify_h": [h], "verify_residual": [0.01],
                      "verify_cell": [0.02], "verify_blob": [0.0], "verify_inliers": [0], "verify_differing": [None],
                      "verify_colour": [""]})  # fmt: skip
    out = expand_pairs(g, p, ["x", "y", "z"]).set_index(["from", "to"])
    assert list(out.columns[4:12]) == list(RECORD_COLUMNS)  # after from, to (the index) and verify_score
    assert out.loc[(0, 1), "verify_h"] == h and out.loc[(0, 1), "verify_matcher"] == "pixel"
    # 2 is a copy of 0, so (1, 2) is the same alignment read the other way: 2 lies around 1
    np.testing.assert_allclose(parse_homography(out.loc[(1, 2), "verify_h"]) @ [0.25, 0.25, 1], [0, 0, 1], atol=1e-9)
    assert out.loc[(1, 2), "verify_residual"] == pytest.approx(0.01)
    assert pd.isna(out.loc[(0, 2), "verify_matcher"]) and out.loc[(0, 2), "kind"] == "exact"


def _text_mark(a: np.ndarray) -> np.ndarray:
    from PIL import ImageDraw

    im = Image.fromarray(a)
    ImageDraw.Draw(im).text((12, 10), "(c) photos.example", fill=(255, 255, 255))
    return np.asarray(im)


@pytest.mark.parametrize("size", [(560, 320), (480, 250), (360, 320)])
def test_a_stretched_copy_is_read_whole_onto_whole_both_ways_round(size):
    """A copy resized to another shape (stretched, squeezed) has no alignment that keeps its
    aspect ratio; the pixel alignment reads it resized whole onto the whole picture, in either
    order, through a text mark, and maps corners onto corners."""
    a = _photo()
    b = _text_mark(np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)))
    pa, pb = _prep(a), _prep(b)
    r = match_record(pa, pb, keypoints=False)
    assert r.matcher == "pixel" and r.score >= 0.9
    np.testing.assert_allclose(_onto(r.homography, [(0, 0), (1, 1)]), [[0, 0], [1, 1]], atol=0.01)
    assert match_record(pb, pa, keypoints=False).score == pytest.approx(r.score, abs=0.02)



def test_a_copy_under_a_curve_per_channel_is_read_under_channel_curves(monkeypatch):
    """Matcher /25: a plain picture under an editor's three channel curves (an S-curve, a
    brighter and a darker gamma) is accepted under one curve per channel, which the colour
    edit's smooth luma does not follow (without the curves: refused). A drawing of one hue
    recoloured by a channel curve (red made orange) stays refused: another fill colour is how
    a designer makes a variant."""
    import dedupdask.match_keypoints as mk

    x = np.arange(256) / 255.0
    luts = [np.clip(c * 255 + 0.5, 0, 255).astype(np.uint8) for c in (1 / (1 + np.exp(-(x - 0.5) * 10)), x**0.5, x**2)]
    a = _smooth_wallpaper()
    b = np.stack([luts[i][a[..., i]] for i in range(3)], -1)
    rec = match_record(_prep(a), _prep(b))
    assert rec.score >= 0.9 and rec.colour == "channel curves", (rec.score, rec.colour)

    d = np.full((240, 320, 3), 255, np.uint8)
    cv2.circle(d, (160, 120), 80, (200, 30, 40), -1)
    cv2.circle(d, (160, 120), 80, (0, 0, 0), 4)
    cv2.rectangle(d, (40, 190), (110, 225), (200, 30, 40), -1)
    orange = d.copy()
    green = np.clip(np.arange(256) * 0.6 + 110, 0, 255).astype(np.uint8)
    green[0], green[255] = 0, 255
    orange[..., 1] = green[d[..., 1]]
    assert match_record(_prep(d), _prep(orange)).score < 0.9
    _, edit = mk.channel_curves(d.reshape(-1, 3) / 255.0, orange.reshape(-1, 3) / 255.0)
    assert not edit["plausible"] and edit["hues"] <= mk.FEW_HUES

    def no_curves(src, dst):
        return np.ones_like(np.asarray(dst, float)), {"form": "channel curves", "plausible": False, "hues": 0, "swapped": False}

    monkeypatch.setattr(mk, "channel_curves", no_curves)
    assert match_record(_prep(a), _prep(b)).score < 0.9


def _vignetted(a: np.ndarray, strength: float = 0.45) -> np.ndarray:
    """An app's vignette: the light falls off past 40 % of the way to the corners (to ~55 %)."""
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2))
    v = 1 - strength * np.clip(r - 0.4, 0, None) ** 1.5
    return np.clip(a * v[..., None], 0, 255).astype(np.uint8)


def test_a_vignetted_copy_is_read_under_a_light_field(monkeypatch):
    """Matcher /26: a copy whose light falls off towards the corners (a vignette) is accepted
    under a smooth light field, a drawing on white ground as a plain picture (without the
    field: both refused). The same drawing with one fill repainted, under the same vignette, stays refused:
    a field this smooth does not follow a fill's edge. Two graphics are read under light only
    where it shows, inside their flat fills (matcher /27, :func:`dedupdask.match._in_fills`)."""
    import dedupdask.match as m

    d = np.full((240, 320, 3), 255, np.uint8)
    cv2.circle(d, (160, 120), 80, (200, 30, 40), -1)
    cv2.circle(d, (160, 120), 80, (0, 0, 0), 4)
    cv2.rectangle(d, (15, 160), (110, 228), (40, 90, 200), -1)
    cv2.rectangle(d, (15, 160), (110, 228), (0, 0, 0), 3)
    cv2.ellipse(d, (260, 45), (50, 30), 0, 0, 360, (30, 160, 60), -1)
    cv2.ellipse(d, (260, 45), (50, 30), 0, 0, 360, (0, 0, 0), 3)
    cv2.line(d, (0, 0), (319, 239), (0, 0, 0), 3)  # into the corners, where the light falls off
    plain = _smooth_wallpaper()
    for a in (d, plain):
        rec = match_record(_prep(a), _prep(_vignetted(a)))
        assert rec.score >= 0.9 and rec.colour.endswith(m.LIT), (rec.score, rec.colour)
    repainted = d.copy()  # the green ellipse painted purple (a repainted rectangle reads as pasted)
    repainted[(d == (30, 160, 60)).all(-1)] = (150, 40, 160)
    assert match_record(_prep(d), _prep(_vignetted(repainted))).score < 0.9

    with monkeypatch.context() as patch:  # two graphics: the light must show inside their fills (/27)
        patch.setattr(m, "_two_graphics", lambda va, vb: True)
        rec = match_record(_prep(d), _prep(_vignetted(d)))
        assert rec.score >= 0.9 and rec.colour.endswith(m.LIT), (rec.score, rec.colour)
        patch.setattr(m, "_in_fills", lambda *args: False)
        assert match_record(_prep(d), _prep(_vignetted(d))).score < 0.9
    monkeypatch.setattr(m, "MAX_LIGHT", 1.0)  # no field is light
    for a in (d, plain):
        assert match_record(_prep(a), _prep(_vignetted(a))).score < 0.9
