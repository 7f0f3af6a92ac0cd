"""Duplicate tiers: exact / copy / near labels, verification of candidates, fused results."""

from __future__ import annotations

import io
import json
import tarfile

import dask
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from dedupdask.analyses.tiers import TierParams, decide, expand_pairs
from dedupdask.analysis import build
from dedupdask.config import RunConfig
from dedupdask.datasets import make_sample_shards, random_picture
from dedupdask.match import Prepared, match_score, prepare_image
from dedupdask.results import load
from dedupdask.thresholds import row_for

DEFAULT_VERIFY_SCORE = row_for("effnet-lite0").verify_score


def _jpeg(im: Image.Image, q: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _prep(im: Image.Image, q: int = 90) -> Prepared:
    p = prepare_image(_jpeg(im, q))
    assert isinstance(p, Prepared)
    return p


def _lookalike(im: Image.Image, seed: int) -> Image.Image:
    """Another picture of the same place: the left half kept, the rest of the scene other."""
    rng = np.random.default_rng(seed)
    out = im.copy()
    w, h = out.size
    other = random_picture(rng, (w, h))
    out.paste(other.crop((w // 2, 0, w, h)), (w // 2, 0))
    return out


def _logo(im: Image.Image, seed: int) -> Image.Image:
    """The same picture with a logo pasted over about 8 % of it (an overlay, not a redesign)."""
    rng = np.random.default_rng(seed)
    out = im.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    x, y = int(w * 0.55), int(h * 0.1)
    draw.ellipse((x, y, x + w // 4, y + h // 3), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return out


def _web_edit(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotated by a few degrees and cropped, in grey or less saturated: what the pixel
    alignment cannot explain and the keypoint matcher must."""
    w, h = im.size
    out = im.rotate(float(rng.uniform(4, 8)) * (1 if rng.uniform() < 0.5 else -1), Image.Resampling.BICUBIC)
    out = out.crop((int(w * 0.08), int(h * 0.08), int(w * 0.92), int(h * 0.92)))
    if rng.uniform() < 0.5:
        return out.convert("L").convert("RGB")
    from PIL import ImageEnhance

    return ImageEnhance.Color(out).enhance(0.5)


def _recolour(im: Image.Image) -> Image.Image:
    """The same drawing in other colours (channels swapped)."""
    r, g, b = im.split()
    return Image.merge("RGB", (b, r, g))


def _crop_resize(im: Image.Image) -> Image.Image:
    w, h = im.size
    c = im.crop((int(w * 0.04), int(h * 0.07), int(w * 0.95), int(h * 0.94)))
    return c.resize((int(c.width * 0.6), int(c.height * 0.6)), Image.Resampling.BICUBIC)


def _cornered_picture(rng: np.random.Generator) -> Image.Image:
    """A synthetic picture with corners enough for keypoints and few flat pixels: a smooth one
    gives the keypoint matcher too few points (a stated limit), and a graphic's pairs (mostly
    flat fills, :data:`~dedupdask.match_keypoints.MAX_FLAT`) are left to the pixel alignment."""
    from dedupdask.match import View
    from dedupdask.match_keypoints import MAX_FLAT

    for _ in range(30):
        im = random_picture(rng, (320, 240))
        k = View(_prep(im)).keypoints
        if len(k.features()[0]) >= 150 and k.flat <= MAX_FLAT:
            return im
    raise AssertionError("no picture with corners enough")


# -- the check itself --------------------------------------------------------------------------
def test_verification_accepts_edits_and_rejects_lookalikes():
    rng = np.random.default_rng(3)
    web: list[float] = []
    logo: list[float] = []
    half: list[float] = []
    for _ in range(4):
        im = _cornered_picture(rng)
        a = _prep(im)
        assert match_score(a, _prep(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))) > 0.95
        assert match_score(a, _prep(_crop_resize(im), q=30)) >= DEFAULT_VERIFY_SCORE
        assert match_score(_prep(_crop_resize(im)), a) >= DEFAULT_VERIFY_SCORE  # either order
        web.append(match_score(a, _prep(_web_edit(im, rng))))
        logo.append(match_score(a, _prep(_logo(im, 1))))
        assert match_score(a, _prep(_lookalike(im, 1)), keypoints=False) < DEFAULT_VERIFY_SCORE
        half.append(match_score(a, _prep(_lookalike(im, 1))))
        assert match_score(a, _prep(_recolour(im))) < DEFAULT_VERIFY_SCORE
        other = random_picture(rng, (320, 240))
        assert match_score(a, _prep(other)) < DEFAULT_VERIFY_SCORE
    # half the scene replaced: the pixel alignment always refuses it; the keypoint matcher
    # compares colours at 128 px, where a replaced half of similar colours and fine texture can
    # differ on less than its overlay budget (a stated limit: here one picture of four)
    assert sum(x < DEFAULT_VERIFY_SCORE for x in half) >= 3, half
    # rotated + cropped + recoloured copies and copies under a logo: the keypoint matcher's work
    assert sum(x >= DEFAULT_VERIFY_SCORE for x in web) >= 3, web
    assert sum(x >= DEFAULT_VERIFY_SCORE for x in logo) >= 3, logo


def _drawing(rng: np.random.Generator) -> Image.Image:
    """Clip art: a few outlined fills on white (a graphic: the pixel alignment decides it)."""
    im = Image.new("RGB", (320, 240), "white")
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x, y = rng.integers(60, 200), rng.integers(70, 150)
        w, h = rng.integers(40, 90), rng.integers(30, 70)
        fill = tuple(int(v) for v in rng.integers(40, 220, 3))
        if rng.uniform() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=fill, outline="black", width=3)
        else:
            draw.polygon([(x, y + h), (x + w // 2, y), (x + w, y + h)], fill=fill, outline="black", width=3)
    return im


def _captioned(im: Image.Image, words: str, *, bottom: bool = False) -> Image.Image:
    """A meme caption: white letters outlined in black, across the top (or the bottom)."""
    out = im.copy()
    draw = ImageDraw.Draw(out)
    font = _font(30)
    box = draw.textbbox((0, 0), words, font=font, stroke_width=2)
    x = (out.width - (box[2] - box[0])) // 2
    y = out.height - (box[3] - box[1]) - 12 if bottom else 8
    draw.text((x, y), words, font=font, fill="white", stroke_width=2, stroke_fill="black")
    return out


def test_a_caption_on_a_drawing_is_the_drawing_an_added_shape_is_not(monkeypatch):
    """Lines of text added to one picture (a caption, a watermark) are left out of the pixel
    residuals, up to MAX_TEXT of the picture; a shape added to a drawing (a design variant) and a
    row of signs redrawn in both still differ."""
    import dedupdask.match as match

    rng = np.random.default_rng(5)
    for _ in range(3):
        im = _drawing(rng)
        a = _prep(im)
        top = _prep(_captioned(im, "WHEN THE CODE"))
        both = _prep(_captioned(_captioned(im, "NOBODY:"), "TRUE STORY", bottom=True))
        assert match_score(a, top, keypoints=False) >= DEFAULT_VERIFY_SCORE
        assert match_score(both, a) >= DEFAULT_VERIFY_SCORE  # either order, both matchers
        over = im.copy()  # across the drawing
        ImageDraw.Draw(over).text((40, 110), "SUCH WOW", font=_font(30), fill="white", stroke_width=2, stroke_fill="black")
        assert match_score(a, _prep(over), keypoints=False) >= DEFAULT_VERIFY_SCORE
        shape = im.copy()
        ImageDraw.Draw(shape).ellipse((250, 20, 300, 70), fill=(200, 40, 40), outline="black", width=3)
        assert match_score(a, _prep(shape)) < DEFAULT_VERIFY_SCORE
        circles, squares = im.copy(), im.copy()  # a row of signs redrawn in both: not text added to one
        for x in range(20, 280, 48):
            ImageDraw.Draw(circles).ellipse((x, 12, x + 18, 30), fill=(200, 30, 30), outline="black", width=2)
            ImageDraw.Draw(squares).rectangle((x, 12, x + 18, 30), fill=(30, 30, 200), outline="black", width=2)
        assert match_score(_prep(circles), _prep(squares)) < DEFAULT_VERIFY_SCORE
        lines = im.copy()  # two lines across the whole width: a quarter of it, over MAX_TEXT
        for y in (5, 51):
            ImageDraw.Draw(lines).text((10, y), "LOREM IPSUM DOLOR", font=_font(30), fill="white", stroke_width=2,
                                       stroke_fill="black")  # fmt: skip
        assert match_score(a, _prep(lines)) < DEFAULT_VERIFY_SCORE
    monkeypatch.setattr(match, "TEXT_ADDED", 1.0)  # the row of signs passes as text when not asked whose it is
    assert match_score(_prep(circles), _prep(squares)) >= DEFAULT_VERIFY_SCORE
    monkeypatch.setattr(match, "MAX_TEXT", 0.0)  # without the rule the caption is a blob
    assert match_score(a, top, keypoints=False) < DEFAULT_VERIFY_SCORE


def test_a_small_mark_in_a_corner_is_read_at_the_finer_size(monkeypatch):
    """A corner mark of 12-16 px letters is, at 128 px, a blob of merged letters; read again at
    256 px (the pixels agree as a whole: FINER_GATE) it is a line of text added to one picture.
    A small shape in the same place is not text at either size."""
    import dedupdask.match as match

    rng = np.random.default_rng(7)
    pairs, shapes = [], []
    for i in range(8):
        im = _drawing(rng)
        marked = im.copy()
        draw = ImageDraw.Draw(marked)
        words = ["www.sample-photos.com", "(c) stock images", "SAMPLE", "@my_account"][i % 4]
        font = _font(int(rng.integers(12, 17)))
        box = draw.textbbox((0, 0), words, font=font)
        x = [6, im.width - (box[2] - box[0]) - 6][i % 2]
        y = [4, im.height - (box[3] - box[1]) - 8][(i // 2) % 2]
        draw.text((x, y), words, font=font, fill="black")
        dot = im.copy()
        ImageDraw.Draw(dot).ellipse((x, y, x + 14, y + 10), fill=(200, 40, 40), outline="black", width=2)
        pairs.append((_prep(im), _prep(marked)))
        shapes.append((_prep(im), _prep(dot)))
    assert all(match_score(a, b) >= DEFAULT_VERIFY_SCORE and match_score(b, a) >= DEFAULT_VERIFY_SCORE for a, b in pairs)
    assert all(match_score(a, b) < DEFAULT_VERIFY_SCORE for a, b in shapes)
    monkeypatch.setattr(match, "FINER_GATE", 1.01)  # no finer reading: the letters are a blob
    assert sum(match_score(a, b) < DEFAULT_VERIFY_SCORE for a, b in pairs) >= 2


def _inset(im: Image.Image, picture: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A picture in the picture: ``picture``, in a black frame, pasted over ``box``."""
    out = im.copy()
    x0, y0, x1, y1 = box
    framed = Image.new("RGB", (x1 - x0, y1 - y0), "black")
    framed.paste(picture.resize((x1 - x0 - 8, y1 - y0 - 8)), (4, 4))
    out.paste(framed, (x0, y0))
    return out


def test_a_picture_pasted_over_a_copy_is_the_copy_an_element_added_is_not(monkeypatch):
    """A rectangle pasted over one picture (an inset, a logo's box) that hides what lay under it
    and cuts the picture along its edges is left out of the pixel residuals, up to MAX_PASTED of
    the picture; an element drawn over or beside a drawing (a design variant), a box on the plain
    ground that hides nothing, and an inset over too much of the picture still differ."""
    import dedupdask.match as match

    rng = np.random.default_rng(7)
    for _ in range(3):
        shapes = _drawing(rng)
        im = Image.new("RGB", shapes.size, "white")  # the shapes over a large pale fill
        ImageDraw.Draw(im).ellipse((30, 40, 290, 210), fill=(190, 215, 240), outline="black", width=3)
        im.paste(shapes, mask=Image.fromarray((np.asarray(shapes).min(axis=2) < 250).astype(np.uint8) * 255))
        a = _prep(im)
        over = _prep(_inset(im, random_picture(rng, (96, 72)), (200, 30, 300, 110)))  # over the drawing's top right: it cuts the fill
        assert match_score(a, over, keypoints=False) >= DEFAULT_VERIFY_SCORE
        assert match_score(over, a) >= DEFAULT_VERIFY_SCORE  # either order, both matchers
        photo = random_picture(rng, (320, 240))
        p = _prep(photo)
        assert match_score(p, _prep(_inset(photo, _drawing(rng), (230, 160, 310, 230))), keypoints=False) >= DEFAULT_VERIFY_SCORE
        beside = im.copy()  # a box on the plain ground beside the drawing hides nothing
        ImageDraw.Draw(beside).rectangle((6, 6, 50, 40), fill=(30, 90, 200), outline="black", width=2)
        assert match_score(a, _prep(beside)) < DEFAULT_VERIFY_SCORE
        disc = im.copy()  # a shape drawn over the drawing: round, what lay under its bounding box shows
        ImageDraw.Draw(disc).ellipse((220, 30, 300, 110), fill=(230, 200, 30), outline="black", width=3)
        assert match_score(a, _prep(disc)) < DEFAULT_VERIFY_SCORE
        big = _prep(_inset(im, random_picture(rng, (96, 72)), (120, 70, 300, 230)))  # 37.5 % of it: over MAX_PASTED
        assert match_score(a, big) < DEFAULT_VERIFY_SCORE
    monkeypatch.setattr(match, "MAX_PASTED", 0.5)  # the bound is what refused the large inset
    assert match_score(a, big) >= DEFAULT_VERIFY_SCORE
    monkeypatch.setattr(match, "MAX_PASTED", 0.0)  # without the rule the inset is a blob
    assert match_score(a, over, keypoints=False) < DEFAULT_VERIFY_SCORE


def _cup(w: int, h: int) -> Image.Image:
    """An inset of an object cut out on white: a cup's outline."""
    inset = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(inset)
    draw.ellipse((w * 0.2, h * 0.15, w * 0.8, h * 0.35), outline="black", width=2)
    draw.line((w * 0.2, h * 0.25, w * 0.25, h * 0.8), fill="black", width=2)
    draw.line((w * 0.8, h * 0.25, w * 0.75, h * 0.8), fill="black", width=2)
    return inset


def test_an_inset_laid_partly_on_a_drawings_ground_is_the_copy_wherever_it_lies():
    """An inset on white pasted over the corner of a fruit on white hides the fruit where it
    lies over it and cuts it in straight lines there, less than half of its sides long (the
    rest lies on the white ground). At 256 px wide, 128 px is half the size: the inset's bottom
    edge falls on or between two pixel rows as it moves by 1 px, and the half-changed last
    row differs only where the fruit is deep orange. The copy is found wherever it lies
    (matcher /22 read the cut in that row alone and asked it to run along half the box: it
    refused two of these eight places); a disc drawn over the same corner still differs."""
    yy, xx = np.mgrid[0:240, 0:256]
    t = (xx / 256)[..., None]  # pale yellow on the left, deep orange on the right
    fill = (1 - t) * np.array([255, 235, 190]) + t * np.array([235, 120, 10])
    fruit = (xx - 120) ** 2 / 125**2 + (yy - 130) ** 2 / 105**2 <= 1
    im = Image.fromarray(np.where(fruit[..., None], fill, 255).astype(np.uint8))
    a = _prep(im)
    for x0 in (185, 186):
        for y0 in (3, 4, 5, 6):
            copy = im.copy()
            copy.paste(_cup(250 - x0, 65), (x0, y0))
            assert match_score(a, _prep(copy), keypoints=False) >= DEFAULT_VERIFY_SCORE, (x0, y0)
    drawn = im.copy()
    ImageDraw.Draw(drawn).ellipse((185, 4, 250, 69), fill="white", outline="black", width=2)
    assert match_score(a, _prep(drawn), keypoints=False) < DEFAULT_VERIFY_SCORE


def test_two_pictures_of_one_shape_get_one_verdict_whichever_comes_first():
    """The picture as it is is read both ways round: its residuals, the gain refitted on the
    pixels that agree and a rectangle pasted over one picture are each read in one picture's
    terms, and a pair's verdict must not depend on the order of its archives. Pictures pasted
    over drawings (drawings on white, whose white ground hides what lies under it, and photos),
    a third to a half of their side: the two orders get one verdict (matcher /15 accepted the
    first and the nineteenth in one order only)."""
    from dedupdask.match import match_record

    rng = np.random.default_rng(1)
    for i in range(20):
        im = _drawing(rng)
        side = rng.uniform(0.3, 0.55)
        w, h = int(320 * side), int(240 * side)
        pasted = _drawing(rng).resize((w, h)) if i % 2 == 0 else random_picture(rng, (w, h))
        covered = im.copy()
        covered.paste(pasted, (int(rng.integers(0, 320 - w)), int(rng.integers(0, 240 - h))))
        pa, pb = _prep(im), _prep(covered)
        one, other = match_record(pa, pb, keypoints=False), match_record(pb, pa, keypoints=False)
        assert (one.score >= DEFAULT_VERIFY_SCORE) == (other.score >= DEFAULT_VERIFY_SCORE), (i, one, other)


def _object_on_white(rng: np.random.Generator) -> Image.Image:
    """A product shot: one long, smooth, shaded object (a bottle, a tool's handle) lying aslant on
    a white ground -- too few corners for keypoints, and no flat fills but the ground."""
    w, h = 320, 240
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = np.radians(rng.uniform(15, 35))
    cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    half_length, half_width = w * rng.uniform(0.3, 0.38), h * rng.uniform(0.08, 0.12)
    ends = np.maximum(np.abs(along) - (half_length - half_width), 0)
    inside = np.hypot(ends, across) <= half_width  # a capsule
    t = np.clip(across / half_width, -1, 1)
    light = 0.55 + 0.45 * np.sqrt(1 - t * t) + 0.25 * np.exp(-(((t + 0.45) / 0.15) ** 2))  # round, with a highlight
    light *= 0.85 + 0.15 * np.cos(along / half_length * np.pi * rng.uniform(1, 2))  # along its length too
    body = np.clip(rng.uniform(60, 200, 3)[None, None, :] * light[..., None], 0, 255)
    return Image.fromarray(np.where(inside[..., None], body, 255.0).astype(np.uint8))


def _turned(im: Image.Image, degrees: float) -> Image.Image:
    """Turned on the white ground and cropped by 5 % on each side."""
    w, h = im.size
    out = im.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    return out.crop((int(w * 0.05), int(h * 0.05), int(w * 0.95), int(h * 0.95)))


def test_a_plain_object_turned_is_found_from_its_pixels(monkeypatch):
    """A product shot turned by a few degrees has too few corners for the keypoint matcher; ECC
    finds the turn from the grey pixels (turned_record), and the residuals under it are read as
    strictly as under the pixel alignment's own: the object with a hole, or another object of
    other proportions (which a slant or a stretch would fit), still differ. Past MAX_DENSE_TURN,
    the turn is not looked for."""
    import dedupdask.match as match

    rng = np.random.default_rng(5)
    others = []
    for degrees in (3.0, -6.0, 10.0):
        im = _object_on_white(rng)
        a = _prep(im)
        copy = match.match_record(a, _prep(_turned(im, degrees)))
        assert copy.matcher == "pixel_turned" and copy.score >= DEFAULT_VERIFY_SCORE, (degrees, copy)
        ys, xs = np.nonzero(np.asarray(im).min(axis=2) < 250)
        holed = im.copy()  # another object: the same with a hole through its middle
        ImageDraw.Draw(holed).ellipse((xs.mean() - 12, ys.mean() - 12, xs.mean() + 12, ys.mean() + 12), fill=(255, 255, 255))
        assert match_score(a, _prep(_turned(holed, degrees))) < DEFAULT_VERIFY_SCORE
        others.append((a, _prep(_turned(_object_on_white(rng), degrees))))
        assert match_score(*others[-1]) < DEFAULT_VERIFY_SCORE
    with monkeypatch.context() as m:
        m.setattr(match, "_unturned", lambda A, hw: 0.0)  # a slant or a stretch allowed:
        assert match_score(*others[0]) >= DEFAULT_VERIFY_SCORE  # a thinner, shorter capsule fits
    monkeypatch.setattr(match, "MAX_DENSE_TURN", 2.0)
    monkeypatch.setattr(match, "MAX_FAR_TURN", 2.0)  # nor from the turn the spectra read
    assert match_score(a, _prep(_turned(im, degrees))) < DEFAULT_VERIFY_SCORE


def test_a_plain_object_turned_farther_is_found_from_its_spectra(monkeypatch):
    """Turned by 18-29 degrees, a product shot is out of ECC's reach from the unturned placement;
    the turn read from the two pictures' spectra (far_turned_record) starts it there, and the
    residuals are read as strictly: the same object with a hole, or another object, turned as
    far, still differ. Without the spectra's start (MAX_FAR_TURN at MAX_DENSE_TURN), the copies
    are not found. Two graphics keep which way is up, as under the keypoint warp: an arrow turned
    by 35 degrees points another way."""
    import dedupdask.match as match

    rng = np.random.default_rng(11)
    pairs = []
    for degrees in (18.0, -24.0, 29.0):
        im = _object_on_white(rng)
        a, copy = _prep(im), _prep(_turned(im, degrees))
        r = match.match_record(a, copy)
        assert r.matcher == "pixel_turned" and r.score >= DEFAULT_VERIFY_SCORE, (degrees, r)
        pairs.append((a, copy))
        ys, xs = np.nonzero(np.asarray(im).min(axis=2) < 250)
        holed = im.copy()
        ImageDraw.Draw(holed).ellipse((xs.mean() - 12, ys.mean() - 12, xs.mean() + 12, ys.mean() + 12), fill=(255, 255, 255))
        assert match_score(a, _prep(_turned(holed, degrees))) < DEFAULT_VERIFY_SCORE
        assert match_score(a, _prep(_turned(_object_on_white(rng), degrees))) < DEFAULT_VERIFY_SCORE
    arrow = Image.new("RGB", (240, 240), "white")  # a thick arrow pointing down, and turned by 35 degrees
    ImageDraw.Draw(arrow).polygon([(106, 65), (134, 65), (134, 126), (164, 126), (120, 175), (76, 126), (106, 126)], fill="black")
    aslant = arrow.rotate(35, Image.Resampling.BICUBIC, fillcolor="white").crop((42, 42, 198, 198))
    assert match_score(_prep(arrow), _prep(aslant)) < DEFAULT_VERIFY_SCORE
    with monkeypatch.context() as m:
        m.setattr(match, "KEYPOINT_MAX_TURN", match.MAX_FAR_TURN)  # graphics turned as far as photos:
        assert match_score(_prep(arrow), _prep(aslant)) >= DEFAULT_VERIFY_SCORE  # the same arrow
    monkeypatch.setattr(match, "MAX_FAR_TURN", match.MAX_DENSE_TURN)
    for a, copy in pairs:
        assert match_score(a, copy) < DEFAULT_VERIFY_SCORE


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def test_decide_and_expand_label_each_pair_once():
    from dedupdask.analyses import exact_groups

    p = TierParams(0.97, 0.97, 0.985, 0.7, 0.85, True, 5, 0.98)
    cands = pd.DataFrame(
        {
            "from": [0, 0, 2, 3],
            "to": [2, 3, 4, 4],
            "similarity": np.array([0.99, 0.8, 0.75, 0.6], np.float32),  # 0-2 near AND copy
            "copy_similarity": np.array([0.995, 0.5, 0.99, 0.2], np.float32),
            "verify_score": [np.nan, 0.95, 0.3, np.nan],
        }
    )
    d = decide(cands, p)
    assert d["to_verify"].tolist() == [False, True, True, False]
    assert d["accepted"].tolist() == [True, True, False, False]
    groups = exact_groups(["a", "b", "c", "d", "e", "a"])  # 5 is an exact copy of 0
    sim = expand_pairs(groups, d[d["accepted"]], [f"f{i}" for i in range(6)])
    assert not sim.duplicated(["from", "to"]).any()
    kinds = {(a, b): k for a, b, k in zip(sim["from"], sim["to"], sim["kind"], strict=True)}
    assert kinds == {(0, 5): "exact", (0, 2): "copy", (2, 5): "copy", (0, 3): "near", (3, 5): "near"}
    row = sim[(sim["from"] == 0) & (sim["to"] == 2)].iloc[0]
    assert row["similarity"] == pytest.approx(0.99) and row["copy_similarity"] == pytest.approx(0.995)


def test_equal_model_inputs_are_verified_never_direct():
    """A pair equal only at model size has embedding cosine 1.0, which says nothing: it is
    verified (and stands on its own when it cannot be: verify off, image unreadable)."""
    p = TierParams(0.97, 0.97, 0.985, 0.7, 0.85, True, 5, 0.98)
    cands = pd.DataFrame(
        {
            "from": [0, 1, 2, 3],
            "to": [5, 6, 7, 8],
            "similarity": np.ones(4, np.float32),
            "copy_similarity": np.array([1.0, 1.0, 0.5, 1.0], np.float32),
            "same_input": [True, True, True, False],
            "verify_score": [0.95, 0.2, np.nan, np.nan],
            "verify_error": pd.array([None, None, "archive not read", None], dtype="string"),
        }
    )
    d = decide(cands, p)
    assert d["direct"].tolist() == [False, False, False, True]
    assert d["to_verify"].tolist() == [True, True, True, False]
    assert d["accepted"].tolist() == [True, False, True, True]
    assert d["kind"].tolist() == ["copy", "copy", "near", "copy"]
    off = decide(cands.drop(columns=["verify_score", "verify_error"]), TierParams(0.97, 0.97, 0.985, None, 0.85, False, 5, 0.98))
    assert off["accepted"].all() and not off["to_verify"].any()


@pytest.mark.parametrize("margin", [None, 0.15])
def test_a_whitened_pair_under_the_cut_is_verified_when_it_stands_out_of_its_neighbourhood(margin):
    """Picture 0's nearest neighbour (whitened 0.44, under the 0.457 cut) stands 0.17 above its
    fifth (0.27): verified with the margin. Picture 6's (0.40 over 0.30) does not stand out,
    and picture 12's row is too short to have a fifth neighbour: neither is a candidate."""
    from dedupdask.analyses.tiers import candidate_pairs

    p = TierParams(0.99, 0.99, 0.995, 0.65, 0.9, True, 5, 0.98, whitened_threshold=0.457, whitened_margin=margin)
    reps = np.arange(18)
    idx = np.full((18, 5), -1)
    sim = np.full((18, 5), np.nan, np.float32)
    idx[0], sim[0] = [1, 2, 3, 4, 5], [0.44, 0.30, 0.29, 0.28, 0.27]
    idx[6], sim[6] = [7, 8, 9, 10, 11], [0.40, 0.35, 0.33, 0.31, 0.30]
    idx[12, :2], sim[12, :2] = [13, 14], [0.45, 0.1]
    emb = (idx, np.full((18, 5), 0.5, np.float32))  # nothing the embedding graph proposes alone
    cands = candidate_pairs(reps, emb, None, p, white_graph=(idx, sim))
    d = decide(cands, p)
    verified = d.loc[d["to_verify"], ["from", "to"]].values.tolist()
    assert verified == ([[0, 1]] if margin else [])
    assert cands["whitened_similarity"].notna().sum() == len(verified)


def test_expand_graph_gives_every_exact_group_its_row():
    from dedupdask.analyses import exact_groups, expand_graph

    rng = np.random.default_rng(0)
    n, k = 400, 4
    md5 = [f"m{i}" for i in rng.integers(0, 300, n)]
    inp = [f"i{i}" for i in rng.integers(0, 120, n)]
    groups, inputs = exact_groups(md5), exact_groups(md5, inp)
    fine, coarse = groups.reps, inputs.reps
    idx = rng.integers(-1, coarse.size, (coarse.size, k))
    idx[idx == np.arange(coarse.size)[:, None]] = -1
    sim = np.where(idx >= 0, rng.uniform(0, 0.9, idx.shape), np.nan).astype(np.float32)
    out_idx, out_sim = expand_graph(groups, inputs, idx, sim)
    assert out_idx.shape == out_sim.shape == (fine.size, k)
    for r, rep in enumerate(fine):
        siblings = set(fine[inputs.rep[fine] == inputs.rep[rep]]) - {rep}
        ns = min(len(siblings), k)
        got = fine[out_idx[r, :ns]]
        assert set(got) <= siblings and len(set(got)) == ns and (out_sim[r, :ns] == 1.0).all()
        base = idx[np.searchsorted(coarse, inputs.rep[rep])][: k - ns]
        mapped = [fine[j] if j >= 0 else -1 for j in out_idx[r, ns:]]
        assert mapped == [coarse[j] if j >= 0 else -1 for j in base]
    # without images equal only at model size, the graph is the given one
    g_idx = rng.integers(-1, fine.size, (fine.size, k))
    g_sim = rng.uniform(0, 1, g_idx.shape).astype(np.float32)
    same_idx, same_sim = expand_graph(groups, exact_groups(md5, md5), g_idx, g_sim)
    assert same_idx is g_idx and same_sim is g_sim


# -- end to end on shards ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tier_run(tmp_path_factory):
    """Sample shards (default model) plus a shard of look-alikes and crop+resize+JPEG copies."""
    from dedupdask.pipeline import extract

    root = tmp_path_factory.mktemp("tiers")
    shards = make_sample_shards(
        str(root / "shards"), n_shards=2, images_per_shard=24, n_near=15, n_exact=3,
        formats=("tar",), broken=False, seed=5,
    )  # fmt: skip
    rng = np.random.default_rng(11)
    extra, pairs = [], []
    for i in range(6):
        im = random_picture(rng, (512, 384))
        orig, look = f"x{i:03d}.jpg", f"y{i:03d}.jpg"
        extra += [(orig, _jpeg(im)), (look, _jpeg(_lookalike(im, i)))]
        pairs.append((orig, look, "lookalike"))
        if i % 2 == 0:
            extra.append((f"z{i:03d}.jpg", _jpeg(_crop_resize(im), 35)))
            pairs.append((orig, f"z{i:03d}.jpg", "combo"))
    path = root / "shards" / "00009.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in extra:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    extract(shards.root, str(root / "work"), client="sync", progress=False)
    wd = str(root / "work")
    with dask.config.set(scheduler="sync"):
        res = build(wd, config=RunConfig(run_mode=2, progress=False))
    url = str(path)
    more = pd.DataFrame(
        [(f"{url}/{a}", f"{url}/{b}", e) for a, b, e in pairs],
        columns=["filename_a", "filename_b", "edit"],
    )
    return wd, res, pd.concat([shards.truth, more], ignore_index=True)


def _kinds(res) -> dict[tuple[str, str], str]:
    s = res.similarity.compute()
    return {
        tuple(sorted((a, b))): k
        for a, b, k in zip(s["filename_from"], s["filename_to"], s["kind"], strict=True)
    }


def test_each_kind_is_labelled_right(tier_run):
    wd, res, truth = tier_run
    kinds = _kinds(res)
    expected = {"exact": {"exact"}, "resize": {"copy"}, "jpeg": {"copy"}, "flip": {"copy"},
                "bright": {"copy", "near"}, "crop": {"near"}, "combo": {"near"}}  # fmt: skip
    for a, b, edit in truth.itertuples(index=False):
        got = kinds.get(tuple(sorted((a, b))))
        if edit == "lookalike":
            assert got is None, f"look-alike {a} {b} reported as {got}"
        else:
            assert got in expected[edit], f"{edit}: {a} {b} -> {got}"
    sim = res.similarity.compute()
    assert not sim.duplicated(["from", "to"]).any()
    assert set(sim["kind"]) <= {"exact", "copy", "near"}
    near = sim[sim["kind"] == "near"]
    assert (near["verify_score"].notna() | (near["similarity"] >= res.params["threshold"])).all()
    assert sim["similarity"].is_monotonic_decreasing


def test_lookalikes_were_candidates_and_rejected(tier_run):
    wd, res, truth = tier_run
    ver = res.run["verification"]
    assert ver["candidates"] >= 1 and ver["rejected"] >= 1
    emb = res.embeddings.compute()
    index = {f: i for i, f in enumerate(pd.read_csv(f"{wd}/atrain_features.dat.csv")["filename"])}
    looks = truth[truth["edit"] == "lookalike"]
    sims = [float(emb[index[a]] @ emb[index[b]]) for a, b in zip(looks["filename_a"], looks["filename_b"], strict=True)]
    assert max(sims) >= res.params["verify_threshold"]  # they were candidates...
    assert sum(s < res.params["threshold"] for s in sims) >= 1  # ...that needed verification


def test_run_json_reports_candidates_and_cost(tier_run):
    wd, res, _ = tier_run
    run = json.load(open(f"{wd}/results/run.json"))
    ver = run["verification"]
    assert ver["candidates"] == ver["accepted"] + ver["rejected"] > 0
    assert ver["seconds_per_pair"] > 0 and ver["images_read"] >= 2 and ver["archives_read"] >= 1
    # fewer than CLUSTER_MIN_PAIRS pairs, no client: scored on this process' threads
    assert (ver["ran_on"], ver["workers"]) == ("this process", 0)
    s = res.summary()
    assert s["verify_candidates"] == ver["candidates"] and s["verify_seconds_per_pair"] > 0
    assert s["exact_pairs"] + s["copy_pairs"] + s["near_pairs"] == s["similar_pairs"]
    assert run["parameters"]["copy_threshold"] is not None
    csv = pd.read_csv(f"{wd}/similarity.csv")
    assert list(csv.columns) == ["from", "to", "distance"] and len(csv) == 2 * len(res.similarity)
    back = load(wd)
    pd.testing.assert_frame_equal(back.similarity.compute(), res.similarity.compute(), check_dtype=False)


def test_components_use_fused_pairs(tier_run):
    wd, res, truth = tier_run
    comp = dict(zip(res.components.compute()["index"], res.components.compute()["component_id"], strict=True))
    index = {f: i for i, f in enumerate(pd.read_csv(f"{wd}/atrain_features.dat.csv")["filename"])}
    for a, b, edit in truth.itertuples(index=False):
        same = comp[index[a]] == comp[index[b]]
        assert same == (edit != "lookalike"), (a, b, edit)
    rm = res.duplicates_to_remove()
    assert len(rm) == res.summary()["removable"] >= len(truth) - (truth["edit"] == "lookalike").sum()


@pytest.mark.slow  # ~15 s: a cluster; test_tiers_dask decides the tiers on one too
def test_local_cluster_gives_the_same_result(tier_run):
    from distributed import Client, LocalCluster

    wd, res, _ = tier_run
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        dist = build(wd, config=RunConfig(run_mode=2, progress=False), client=client, write=False)
        # on the workers: pairs of one pair of archives share a task up to PAIRS_PER_TASK
        assert dist.run["analysed_on"] == "workers" and dist.run["verification"]["tasks"] >= 1
        assert dist.run["verification"]["candidates"] == res.run["verification"]["candidates"]
    pd.testing.assert_frame_equal(dist.similarity.compute(), res.similarity.compute())
    pd.testing.assert_frame_equal(dist.components.compute(), res.components.compute())


def test_template_stacks_match_the_direct_correlation():
    """The cached template stacks give the same coarse scores as correlating each template."""
    from dedupdask.match import SCALES, View, _inner_size, _ncc, _resize, _stack_best

    rng = np.random.default_rng(5)
    im = random_picture(rng, (320, 240))
    outer, inner = View(_prep(im)), View(_prep(_crop_resize(im)))
    st = inner.stack(outer.coarse.shape)
    assert st is not None and len(st.scales) == len(SCALES)
    got = _stack_best(outer.coarse_plan, st)
    assert inner.stack(outer.coarse.shape) is st  # built once per image and outer shape
    for i, s in enumerate(st.scales):
        th, tw = _inner_size(outer.coarse.shape, s, inner.aspect)
        tpl = _resize(inner.coarse, tw, th)
        for j, t in enumerate((tpl, tpl[:, ::-1])):
            assert got[2 * i + j] == pytest.approx(float(_ncc(outer.coarse_plan, t).max()), abs=5e-5)


def test_refinement_gate_and_memo():
    """A hypothesis whose fine correlation is under FINE_REJECT gets no residuals; hypotheses
    of one pair share the correlations and residuals already computed."""
    from dedupdask import match
    from dedupdask.match import FINE_REJECT, View

    rng = np.random.default_rng(8)
    im = random_picture(rng, (320, 240))
    a, copy, other = (View(_prep(x)) for x in (im, _crop_resize(im), random_picture(rng, (320, 240))))
    _, direction, scale, flip = match._hypotheses(a, copy)[0]
    outer, inner = (a, copy) if direction == 0 else (copy, a)
    memo: dict = {}
    got = match._refine(outer, inner, scale, flip, memo)
    assert got is not None
    r = got[0]
    assert 1 - max(r[0], r[1] / 2, r[2] * match.BLOB_WEIGHT) >= DEFAULT_VERIFY_SCORE
    n = len(memo)
    assert match._refine(outer, inner, scale, flip, memo) == got and len(memo) == n  # memo only
    tpl = other.resized("grey", *reversed(match._inner_size(a.grey.shape, 0.9, other.aspect)))
    assert float(match._ncc(a.fine_plan, tpl).max()) < FINE_REJECT  # an unrelated picture
    assert match._refine(a, other, 0.9, False) is None


def test_verification_of_a_small_work_dir_runs_on_the_given_cluster(tier_run, monkeypatch):
    """ddk.run keeps a small work_dir's vectors local but scores the pixels on the cluster."""
    from distributed import Client, LocalCluster, get_task_stream

    import dedupdask as ddk
    import dedupdask.verify as verify

    monkeypatch.setattr(verify, "CLUSTER_MIN_PAIRS", 1)
    wd, res, _ = tier_run
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        get_task_stream(client) as ts,
    ):
        out = ddk.run(None, wd, run_mode=2, client=client, progress=False, incremental=False)  # not the kept scores
    names = {t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in ts.data}
    assert any(str(n).startswith(("score_pairs", "score_ranged")) for n in names), sorted(names)[:10]
    assert not any(str(n).startswith("dedupdask-vectors") for n in names)
    # run.json says so: analysed here, verified on the cluster's two workers
    assert out.run["analysed_on"] == "this process"
    assert (out.run["verification"]["ran_on"], out.run["verification"]["workers"]) == ("workers", 2)
    with open(f"{wd}/results/run.json") as f:
        assert json.load(f)["verification"]["ran_on"] == "workers"
    pd.testing.assert_frame_equal(out.similarity.compute(), res.similarity.compute())


def test_many_pairs_without_a_cluster_are_scored_on_local_processes(tier_run, monkeypatch):
    """Past PROCESS_MIN_PAIRS, local-threads analysis scores on a LocalCluster of its own."""
    import dedupdask.verify as verify

    started = []
    real = verify._scheduler_for

    def spy(n):
        cm = real(n)
        started.append(n)
        return cm

    monkeypatch.setattr(verify, "PROCESS_MIN_PAIRS", 1)
    monkeypatch.setattr(verify, "_scheduler_for", spy)
    wd, res, _ = tier_run
    with dask.config.set(scheduler="threads"):
        out = build(wd, config=RunConfig(run_mode=2, progress=False), write=False)
    assert started and out.run["verification"]["tasks"] >= 2
    pd.testing.assert_frame_equal(out.similarity.compute(), res.similarity.compute())


def test_ranged_reads_score_like_streamed_archives(tier_run, monkeypatch):
    """Reading candidates by byte range, in chunks (the path for many archives), gives the
    scores of streaming each archive once (the path for few archives)."""
    import dedupdask.verify as verify

    wd, res, _ = tier_run
    assert res.run["verification"]["ranged_pairs"] == 0  # few archives: each streamed once
    monkeypatch.setattr(verify, "STREAM_MAX_ARCHIVES", 0)
    monkeypatch.setattr(verify, "PAIRS_PER_TASK", 7)  # several chunks re-reading some images
    ranged = build(wd, config=RunConfig(run_mode=2, progress=False), write=False)
    ver = ranged.run["verification"]
    assert ver["ranged_pairs"] == ver["candidates"] > 7 and ver["tasks"] >= 2
    assert ver["archives_read"] == res.run["verification"]["archives_read"]
    pd.testing.assert_frame_equal(ranged.similarity.compute(), res.similarity.compute())
    pd.testing.assert_frame_equal(ranged.components.compute(), res.components.compute())


def test_ranged_read_errors_are_recorded_not_raised(tmp_path):
    from dedupdask.verify import load_ranged_images

    path = tmp_path / "x.tar"
    path.write_bytes(b"\0" * 1024)
    got = load_ranged_images(
        [(0, str(path), 512, 4096), (1, str(tmp_path / "missing.tar"), 0, 10),
         (2, str(path), 0, 10**9)],
        max_member_bytes=2**20,
    )  # fmt: skip
    assert got[0].startswith("member not read")  # short read past the end
    assert "No such file" in got[1]
    assert "max_member_bytes" in got[2]


def test_a_pair_the_matcher_fails_on_is_recorded_and_the_task_goes_on(monkeypatch):
    """A fault in the matcher on one pair (a bug an image of hundreds of millions finds) is
    that pair's verify_error; the task's other pairs are scored and the run goes on. A fault on
    every pair of a task is the matcher's (or the worker's): the task fails, loudly."""
    import dedupdask.verify as verify
    from dedupdask.datasets import random_picture
    from dedupdask.match import Prepared

    rng = np.random.default_rng(4)
    pics = [np.asarray(random_picture(rng, (160, 120))) for _ in range(2)]
    images = {0: Prepared(160, 120, pics[0]), 1: Prepared(160, 120, pics[0][:, ::-1].copy()),
              2: Prepared(160, 120, pics[1])}  # fmt: skip
    real = verify.record_views

    def faulty(va, vb, *a, **k):
        if images[2].rgb is va._prepared.rgb or images[2].rgb is vb._prepared.rgb:
            raise ValueError("a bug this picture finds")
        return real(va, vb, *a, **k)

    monkeypatch.setattr(verify, "record_views", faulty)
    df, _ = verify.score_pairs(np.array([[0, 2], [0, 1], [1, 2]]), images, early_accept=0.98, keypoints=True)
    err = df["verify_error"]
    assert err.isna().tolist() == [False, True, False]
    assert err[0] == err[2] == "matcher failed: ValueError: a bug this picture finds"
    assert np.isnan(df["verify_score"][0]) and np.isnan(df["verify_score"][2]) and df["verify_score"][1] >= 0.9
    assert df["verify_matcher"][1] == "pixel" and pd.isna(df["verify_matcher"][0])
    # a matcher that fails on every pair it is asked is broken, not the pairs: the task fails
    with pytest.raises(ValueError, match="a bug this picture finds"):
        verify.score_pairs(np.array([[0, 2], [1, 2]]), images, early_accept=0.98, keypoints=True)


def test_a_run_says_how_many_candidates_it_could_not_verify(tier_run, monkeypatch):
    import dedupdask.verify as verify

    wd, res, _ = tier_run
    assert res.summary()["verify_errors"] == 0 and "not verified" not in repr(res)
    real, calls = verify.record_views, []

    def once_faulty(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the first pair finds a bug")
        return real(*a, **k)

    monkeypatch.setattr(verify, "record_views", once_faulty)
    with dask.config.set(scheduler="sync"):
        again = build(wd, config=RunConfig(run_mode=2, progress=False), write=False)
    assert again.run["verification"]["errors"] == again.summary()["verify_errors"] == 1
    assert "1 candidate pairs not verified: see candidates.verify_error" in repr(again)
    errs = again.candidates.compute()["verify_error"].dropna().tolist()
    assert errs == ["matcher failed: RuntimeError: the first pair finds a bug"]


def test_archive_pair_tasks_score_like_one_task_per_worker(tier_run, monkeypatch):
    """Past FEW_IMAGES, streamed pairs go to tasks per pair of archives (split at
    PAIRS_PER_TASK); the scores are those of the few-images grouping."""
    import dedupdask.verify as verify

    wd, res, _ = tier_run
    monkeypatch.setattr(verify, "FEW_IMAGES", 0)
    monkeypatch.setattr(verify, "PAIRS_PER_TASK", 7)
    split = build(wd, config=RunConfig(run_mode=2, progress=False), write=False)
    ver = split.run["verification"]
    assert ver["ranged_pairs"] == 0 and ver["tasks"] > ver["archives_read"] + 1
    pd.testing.assert_frame_equal(split.similarity.compute(), res.similarity.compute())
    pd.testing.assert_frame_equal(split.components.compute(), res.components.compute())


def test_few_images_tasks_share_few_images():
    """The few-images grouping orders pairs so that each task holds a compact set of images
    (each task builds its own view of every image it holds): on clusters of linked images
    numbered at random, two tasks share far fewer images than in an order by index."""
    from dedupdask.verify import local_order

    rng = np.random.default_rng(0)
    ids = rng.permutation(400)  # 20 clusters of 20 images, each a ring with chords
    p = np.array([(c * 20 + i, c * 20 + (i + d) % 20) for c in range(20) for i in range(20) for d in (1, 3)])
    p = ids[p]
    order = local_order(p)
    assert sorted(order.tolist()) == list(range(len(p)))

    def shared(o: np.ndarray) -> int:
        a, b = np.array_split(o, 2)
        return len(np.intersect1d(p[a], p[b]))

    assert shared(order) <= 20  # at most the cluster the cut falls in
    assert shared(np.lexsort((p[:, 1], p[:, 0]))) > 100
    assert local_order(np.zeros((0, 2), np.int64)).tolist() == []


def test_dask_counts_a_read_back_image_by_its_pixels_and_features():
    """Dask places tasks and spills by the size it measures: a prepared image counts its
    pixels and keypoint features, not the few bytes of a dataclass."""
    from dask.sizeof import sizeof

    from dedupdask.match_keypoints import Keypoints

    img = np.asarray(random_picture(np.random.default_rng(0), (256, 192)))
    feats = Keypoints(img).all_features()
    plain, described = Prepared(256, 192, img), Prepared(256, 192, img, feats, (0.1, 0.2))
    assert img.nbytes <= sizeof(plain) < img.nbytes + 1000
    extra = sum(a.nbytes for f in feats.values() for a in f)
    assert sizeof(described) - sizeof(plain) == extra
    assert sizeof({1: plain, 2: described}) >= 2 * img.nbytes
