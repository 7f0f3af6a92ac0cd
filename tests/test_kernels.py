"""dedupdask.kernels: the compiled inner loops give the numbers of the numpy/OpenCV code they replace."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dedupdask.kernels import (
    chroma_spread,
    from_hsv,
    hsv,
    ratio_matches,
    resize_bilinear,
    window_maxima,
)
from dedupdask.match import _box, _integral


def test_window_maxima_is_the_numpy_search():
    """Against the per-scale numpy code the pixel alignment used before (flat windows count as 0,
    positions where the template sticks out are not counted), on random correlations."""
    rng = np.random.default_rng(5)
    img = rng.random((30, 22)).astype(np.float32)
    img[:12, :10] = 0.5  # a flat corner: windows there are much flatter than any template
    s1, s2 = _integral(img.astype(np.float64)), _integral(img.astype(np.float64) ** 2)
    shapes = np.array([[30, 22], [20, 15], [9, 7], [4, 4]])
    energy = rng.random(len(shapes)) * 3 + 0.1
    corr = rng.normal(size=(2 * len(shapes), 30, 22)).astype(np.float32)
    want = np.empty(2 * len(shapes))
    for i, (h, w) in enumerate(shapes):
        b1 = _box(s1, h, w)
        var = _box(s2, h, w) - b1 * b1 / (h * w)
        scale = np.where(var > max(0.01 * energy[i] ** 2, 1e-8), 1.0 / np.sqrt(np.maximum(var, 1e-12)), 0.0)
        scale /= energy[i]
        want[2 * i : 2 * i + 2] = (corr[2 * i : 2 * i + 2, h - 1 :, w - 1 :] * scale).max(axis=(1, 2))
    got = window_maxima(corr, s1, s2, shapes, energy)
    np.testing.assert_array_equal(got, want)


def test_ratio_matches_on_edge_cases():
    rng = np.random.default_rng(6)
    train = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    q, t = ratio_matches(train[:0], train, 0.8)
    assert q.size == 0 and t.size == 0  # no query descriptors
    twin = np.concatenate([train, train[:1]])  # two equally near train descriptors: a tie never counts
    q, t = ratio_matches(train[:1], twin, 0.8)
    assert q.size == 0
    q, t = ratio_matches(train[:5], train, 0.8)
    assert q.tolist() == t.tolist() == [0, 1, 2, 3, 4]


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random colours with the cases the colour edit meets: greys (no hue), ties between the
    largest channels, black, white, and pure primaries."""
    x = rng.random((n, 3))
    x[::7] = x[::7, :1]  # greys
    x[1::11, 1] = x[1::11, 0]  # red and green tied for the largest
    x[2::13, 2] = x[2::13, 1]
    x[3::17] = 0.0
    x[4::19] = 1.0
    x[5::23] = [0.0, 0.0, 1.0]
    return x


def test_hsv_is_the_numpy_formula():
    """Bit for bit against the numpy formula the colour edit's hue turn used before the kernel."""
    x = _colours(np.random.default_rng(7), 5000)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    c = mx - mn
    safe = np.where(c > 1e-9, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    want = (np.where(c > 1e-9, h, 0.0), c / np.where(mx > 1e-9, mx, 1.0), mx)
    for got, w in zip(hsv(x), want, strict=True):
        np.testing.assert_array_equal(got, w)


def test_from_hsv_is_the_numpy_formula():
    rng = np.random.default_rng(8)
    h, s, v = hsv(_colours(rng, 5000))
    h = (h + rng.normal(0, 2, len(h))) % 6.0  # turned hues
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None]) % 6.0
    want = v[:, None] - (v * s)[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    np.testing.assert_array_equal(from_hsv(h, s, v), want)


def test_chroma_spread_is_numpys_std():
    """The colour edit's choice of direction compares these sums: it must be numpy's, bit for
    bit, down to near ties (a difference in the last bit would flip which side is fitted)."""
    rng = np.random.default_rng(9)
    for n in (50, 1000, 12288, 49152):
        ycc = rng.normal(0.0, rng.random(), (n, 3)) + rng.random()
        assert chroma_spread(ycc) == ycc[:, 1:].std(axis=0).sum()
        view = np.repeat(ycc, 2, axis=1)[:, ::2]  # not contiguous, as a slice of pixels is
        assert chroma_spread(view) == view[:, 1:].std(axis=0).sum()
    # no pixels (an empty overlap): NaN as numpy's, so that neither side is the more colourful
    assert np.isnan(chroma_spread(np.zeros((0, 3))))


def test_empty_inputs_do_not_raise():
    """numba raises ZeroDivisionError where numpy returns NaN: the kernels guard empty inputs."""
    from dedupdask.kernels import centred_squares

    assert centred_squares(np.zeros((0, 5, 3), np.float32)).shape == (0, 5, 3)
    assert all(x.size == 0 for x in hsv(np.zeros((0, 3))))
    assert from_hsv(np.zeros(0), np.zeros(0), np.zeros(0)).shape == (0, 3)


def _peel_numpy(rgb: np.ndarray, cap_y: int, cap_x: int, tol: int) -> tuple[int, int, int, int]:
    """The numpy loop frame_box ran before the kernel."""
    h, w = rgb.shape[:2]
    x = rgb.astype(np.int16)
    top, bottom, left, right = 0, h, 0, w

    def plain(line: np.ndarray) -> bool:
        if (line.max(axis=0) - line.min(axis=0) <= tol).all():
            return True
        off = np.abs(line - np.median(line, axis=0)).max(axis=1) > tol
        return int(np.count_nonzero(off)) <= 0.02 * len(line)

    moved = True
    while moved:
        moved = False
        if top < cap_y and plain(x[top, left:right]):
            top, moved = top + 1, True
        if h - bottom < cap_y and plain(x[bottom - 1, left:right]):
            bottom, moved = bottom - 1, True
        if left < cap_x and plain(x[top:bottom, left]):
            left, moved = left + 1, True
        if w - right < cap_x and plain(x[top:bottom, right - 1]):
            right, moved = right - 1, True
    return top, bottom, left, right


def test_frame_peel_is_the_numpy_loop():
    """Frames of every kind the peeling meets: borders with a line inside, noisy (JPEG-like)
    margins with a few stray pixels (the 2 % rule, even and odd lengths: the median's two
    middle values), margins on some sides only, and none."""
    from dedupdask.kernels import frame_peel

    rng = np.random.default_rng(10)
    for k in range(300):
        h, w = int(rng.integers(8, 140)), int(rng.integers(8, 140))
        pic = rng.integers(0, 256, (h, w, 3)).astype(np.int16)
        t, b, lt, r = (int(rng.integers(0, s // 3 + 1)) for s in (h, h, w, w))
        ground = rng.integers(0, 256, 3)
        framed = np.broadcast_to(ground, (h, w, 3)).astype(np.int16).copy()
        framed[t : h - b, lt : w - r] = pic[t : h - b, lt : w - r]
        framed += rng.integers(-int(rng.integers(0, 12)), int(rng.integers(1, 12)), (h, w, 3))
        stray = rng.random((h, w)) < rng.choice([0.0, 0.01, 0.03])
        framed[stray] = rng.integers(0, 256, (int(stray.sum()), 3))
        if k % 5 == 0 and t > 2 and lt > 2:
            framed[t - 2, lt - 2 : w - r + 2] = framed[t - 2 : h - b + 2, lt - 2] = 20  # a line inside the border
        rgb = np.clip(framed, 0, 255).astype(np.uint8)
        cap_y, cap_x = int(0.25 * h), int(0.25 * w)
        assert frame_peel(rgb, cap_y, cap_x, 16) == _peel_numpy(rgb, cap_y, cap_x, 16), k


def test_refitted_off_is_the_numpy_fit():
    """The gain refitted on the agreeing pixels, against the numpy/BLAS code it replaced (in
    float32 products there, float64 sums here: the same pixels off, on these pictures and on
    every candidate of the tier and families benchmarks), with and without an inset."""
    from dedupdask.kernels import refitted_off

    rng = np.random.default_rng(11)
    for k in range(60):
        h, w = int(rng.integers(8, 130)), int(rng.integers(8, 130))
        b = rng.random((h, w, 3)).astype(np.float32)
        a = (rng.uniform(0.6, 1.4) * b + rng.uniform(-0.2, 0.2) + rng.normal(0, 0.05, b.shape)).astype(np.float32)
        if k % 2:
            a[: h // 3, : w // 3] = rng.random(3)  # an inset
        agree = rng.random((h, w)) > rng.uniform(0.0, 0.5)
        agree[0, 0] = True
        n = 3 * np.count_nonzero(agree)
        wgt = agree.astype(np.float32)[..., None]
        xm = float(np.vdot(b, np.broadcast_to(wgt, b.shape))) / n
        ym = float(np.vdot(a, np.broadcast_to(wgt, a.shape))) / n
        xd = (b - xm) * wgt
        g = float(np.clip(float(np.vdot(xd, a - ym)) / max(float(np.vdot(xd, xd)), 1e-9), 0.5, 2.0))
        want = np.abs(a - (g * b + (ym - g * xm))).max(axis=2) > 0.2
        np.testing.assert_array_equal(refitted_off(a, b, agree, 0.2), want)


def test_resize_bilinear_is_pillows_resize():
    """Pillow 13's BILINEAR resize bit for bit: random sizes from 1 px up, shrinking and enlarging
    each axis, one axis or both, both orders of the passes (Pillow 13 runs the vertical pass first
    when an image loses more than twice as many rows as columns), noise and smooth gradients."""
    rng = np.random.default_rng(11)
    cases = [((192, 256), (160, 160)), ((384, 512), (160, 160)), ((1, 1), (7, 5)), ((5, 300), (2, 299)),
             ((300, 5), (40, 5)), ((233, 34), (131, 4)), ((50, 12), (5, 148)), ((12, 50), (148, 5))]  # fmt: skip
    for _ in range(400):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 260, 4))
        cases.append(((h, w), (oh if rng.random() > 0.2 else h, ow if rng.random() > 0.2 else w)))
    for i, ((h, w), (oh, ow)) in enumerate(cases):
        px = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:
            px = np.cumsum(px // 8, axis=1, dtype=np.uint8)  # smooth ramps that wrap: sharp edges too
        want = np.asarray(Image.fromarray(px).resize((ow, oh), Image.Resampling.BILINEAR, reducing_gap=None))
        got = resize_bilinear(px, (ow, oh))
        assert got.shape == want.shape and np.array_equal(got, want), ((h, w), (oh, ow))
    view = np.zeros((40, 60, 4), np.uint8)[:, :, :3]  # a non-contiguous view reads as its pixels
    assert np.array_equal(resize_bilinear(view, (30, 20)), np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 1 x 1"):
        resize_bilinear(np.zeros((4, 4, 3), np.uint8), (0, 3))
