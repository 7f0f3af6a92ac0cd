"""Compiled inner loops, with numba: the matchers' two searches, extraction's resize and image stats.

Each replaces many small numpy or OpenCV calls with one loop over plain arrays, giving the
same numbers (compiled once, then loaded from numba's cache: a fraction of a second per
process; the module is imported when the first image is measured or the first pair scored,
not with the package).

- :func:`grey_measures` and :func:`ink_rows`, extraction's per-image stats
  (:mod:`dedupdask.decode`): the grey image, its histogram, the histogram of per-pixel colour
  spread, the Laplacian's variance, the grey levels left after removing the lighting (one pass
  over the RGB pixels, two over the grey image), and the marks of each row, instead of some
  forty numpy calls: the stats of a 160 x 160 image take 0.29 ms instead of 0.69 on a 2-core
  EPYC (AVX2), where the model takes ~4 ms.

- :func:`resize_bilinear`, the resize of every decoded image to the model's input
  (:func:`dedupdask.decode.decode_image`; verification's read-back too): Pillow 13's
  ``Image.resize(size, BILINEAR, reducing_gap=None)`` bit for bit, the same taps in the same
  22-bit fixed point and the same order of its two passes, but each pass a sum of whole rows
  (the horizontal one over column-major copies of 64 rows), which LLVM compiles to SIMD:
  0.11 ms instead of 0.35-0.49 for a draft-decoded 256 x 192 JPEG to 160 x 160 on a 2-core
  EPYC, where the whole image costs ~4.7 ms. Owning the resize also keeps the model's input
  from moving with Pillow's version (Pillow 13 began to run the vertical pass first for images
  shrunk mostly in height).
- :func:`ratio_matches`, the keypoint matcher's descriptor search
  (:mod:`dedupdask.match_keypoints`): every candidate pair's ORB descriptors (256 bits, up to
  500 per picture) all against all. A descriptor is four 64-bit words and a distance four
  population counts (LLVM's ``ctpop``, as pynndescent's bit distances use it) of XORed words;
  one query's distances to every train descriptor are computed in one loop over word-major
  train words, which LLVM compiles to SIMD popcounts where the CPU has them, then the two
  nearest are picked: 0.2 ms on 500 x 500 against 0.9 ms for OpenCV's brute-force
  ``knnMatch`` (measured on a 2-core EPYC). The answers are OpenCV's: a
  match counts when the nearest is clearly nearer (``d1 < ratio * d2``), so a tie for the
  nearest (where the two libraries may name different descriptors) never counts.
- :func:`window_maxima`, the pixel alignment's coarse search (:mod:`dedupdask.match`): the
  best normalised correlation of each scaled template over every position of the outer image,
  from the FFT correlations and the outer image's integral images (a window's variance in four
  lookups), instead of a dozen numpy calls per scale.
- :func:`frame_peel` (:func:`dedupdask.match.frame_box`'s peeling of plain rows and columns),
  :func:`centred_squares` (a picture's variance in the residuals), :func:`chroma_spread`,
  :func:`hsv` and :func:`from_hsv` (the colour edit,
  :func:`dedupdask.match_keypoints.colour_edit`): numpy's own numbers, bit for bit (its sums
  in its order), where numpy loops slowly over a short axis or makes a dozen passes; a pair's
  verification record is the same as with the numpy code, on every candidate of the tier and
  families benchmarks (``tests/test_kernels.py`` checks each against the numpy formula).
- :func:`refitted_off` (:func:`dedupdask.match._changed_where`: where two pictures differ under
  a gain refitted on the pixels that agree): float64 sums where the numpy code took float32
  BLAS products, whose last bits already depend on the CPU's BLAS kernel; the same pixels off
  on every candidate of those benchmarks, not bit for bit by construction.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = [
    "centred_squares",
    "chroma_spread",
    "frame_peel",
    "from_hsv",
    "grey_measures",
    "hsv",
    "ink_rows",
    "ratio_matches",
    "refitted_off",
    "resize_bilinear",
    "window_maxima",
]


@intrinsic
def _popcount(typingctx: Any, x: Any) -> Any:
    """Set bits of a 64-bit word: LLVM's ``ctpop`` (one instruction where the CPU has it)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return types.uint64(types.uint64), codegen


@njit(nogil=True, cache=True)
def _two_nearest(q: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the first nearest train index, its distance and the next distance (the
    nearest among the other train descriptors: equal to the first on a tie)."""
    nq, nt, words = q.shape[0], t.shape[0], q.shape[1]
    tw = np.ascontiguousarray(t.T)  # word-major: one query word against every train word
    idx = np.empty(nq, np.int32)
    dist = np.empty((nq, 2), np.int32)
    d = np.empty(nt, np.int32)
    for i in range(nq):
        # the distances to every train descriptor first: loops LLVM turns into SIMD popcounts
        d[:] = 0
        for w in range(words):
            a = q[i, w]
            for j in range(nt):
                d[j] += _popcount(a ^ tw[w, j])
        d1 = d.min()
        i1 = 0
        while d[i1] != d1:
            i1 += 1
        d2 = 1 << 30
        for j in range(nt):
            if j != i1:
                d2 = min(d2, d[j])
        idx[i], dist[i, 0], dist[i, 1] = i1, d1, d2
    return idx, dist


def _words(des: np.ndarray) -> np.ndarray:
    des = np.ascontiguousarray(des, np.uint8)
    if des.ndim != 2 or des.shape[1] % 8:
        raise ValueError(f"binary descriptors must be [n, 8 * k] bytes, got shape {des.shape}")
    return des.view(np.uint64)


def ratio_matches(query: np.ndarray, train: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Query descriptors whose nearest train descriptor passes Lowe's ratio test.

    Parameters
    ----------
    query, train : ndarray
        uint8 ``[n, bytes]`` binary descriptors (ORB: 32 bytes), bytes a multiple of 8.
    ratio : float
        A match counts when its Hamming distance is under ``ratio`` times the second nearest's.

    Returns
    -------
    (ndarray, ndarray)
        Indices of the matched query descriptors and of their nearest train descriptors.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> train = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    >>> query = train[[5, 7, 9]].copy()
    >>> query[0, 0] ^= 1  # one bit off: still far nearer than any other descriptor
    >>> q, t = ratio_matches(query, train, 0.8)
    >>> q.tolist(), t.tolist()
    ([0, 1, 2], [5, 7, 9])
    >>> ratio_matches(rng.integers(0, 256, (4, 32), dtype=np.uint8), train, 0.8)[0].tolist()
    []
    """
    if len(query) == 0 or len(train) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    idx, dist = _two_nearest(_words(query), _words(train))
    good = np.flatnonzero(dist[:, 0] < ratio * dist[:, 1])
    return good, idx[good].astype(np.int64)


@njit(nogil=True, cache=True)
def _window_maxima(
    corr: np.ndarray, s1: np.ndarray, s2: np.ndarray, shapes: np.ndarray, root_energy: np.ndarray
) -> np.ndarray:
    n2, H, W = corr.shape
    best = np.full(n2, -np.inf)
    for i in range(n2 // 2):
        h, w = shapes[i, 0], shapes[i, 1]
        e = root_energy[i]
        floor = max(0.01 * e**2, 1e-8)
        for y in range(H - h + 1):
            for x in range(W - w + 1):
                a = s1[y + h, x + w] - s1[y, x + w] - s1[y + h, x] + s1[y, x]
                var = (s2[y + h, x + w] - s2[y, x + w] - s2[y + h, x] + s2[y, x]) - a * a / (h * w)
                scale = 1.0 / np.sqrt(max(var, 1e-12)) if var > floor else 0.0
                scale /= e
                for f in range(2):
                    v = np.float64(corr[2 * i + f, y + h - 1, x + w - 1]) * scale
                    if v > best[2 * i + f]:
                        best[2 * i + f] = v
    return best


def window_maxima(
    corr: np.ndarray, s1: np.ndarray, s2: np.ndarray, shapes: np.ndarray, root_energy: np.ndarray
) -> np.ndarray:
    """Best normalised correlation of each template (two per shape: as is and flipped).

    Parameters
    ----------
    corr : ndarray
        ``[2 n, H, W]`` correlations of zero-mean templates with the outer image (template
        ``i`` of shape ``shapes[i // 2]`` placed with its bottom-right corner at each pixel).
    s1, s2 : ndarray
        float64 ``[H + 1, W + 1]`` integral images of the outer image and of its square.
    shapes : ndarray
        int ``[n, 2]`` template heights and widths.
    root_energy : ndarray
        ``[n]`` square roots of the templates' energies (sums of squares).

    Returns
    -------
    ndarray
        ``[2 n]``: each template's largest ``corr / (sqrt(window variance) * root_energy)``
        over the positions where it lies inside, a window much flatter than the template
        (variance under 1 % of its energy) counting as 0.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.random((12, 10))
    >>> t = img[3:8, 2:6] - img[3:8, 2:6].mean()  # a window of the image, as a template
    >>> s = np.zeros((13, 11)); s[1:, 1:] = img.cumsum(0).cumsum(1)
    >>> q = np.zeros((13, 11)); q[1:, 1:] = (img * img).cumsum(0).cumsum(1)
    >>> from scipy.signal import correlate
    >>> c = correlate(img, t, mode="full")[:12, :10]  # bottom-right corner at each pixel
    >>> best = window_maxima(np.stack([c, c]), s, q, np.array([[5, 4]]), np.sqrt([(t * t).sum()]))
    >>> np.round(best, 6).tolist()  # it finds itself
    [1.0, 1.0]
    """
    return _window_maxima(np.ascontiguousarray(corr), s1, s2, np.asarray(shapes, np.int64), np.asarray(root_energy, np.float64))


@njit(nogil=True, cache=True)
def _grey_measures(
    px: np.ndarray, x32: np.ndarray, y32: np.ndarray, y: np.ndarray, inv: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    h, w = px.shape[0], px.shape[1]
    gray = np.empty((h, w), np.uint8)
    hist = np.zeros(256, np.int64)
    spread = np.zeros(256, np.int64)
    r0 = np.zeros(h)
    r1 = np.zeros(h)
    r2 = np.zeros(h)
    xx = x32 * x32
    for i in range(h):
        a0 = a1 = a2 = 0.0
        for j in range(w):
            r, g, b = np.uint32(px[i, j, 0]), np.uint32(px[i, j, 1]), np.uint32(px[i, j, 2])
            v = (r * 299 + g * 587 + b * 114 + 500) // 1000
            gray[i, j] = v
            hist[v] += 1
            spread[max(r, g, b) - min(r, g, b)] += 1
            f = np.float32(v)
            a0 += f
            a1 += f * x32[j]  # float32 products summed in float64, as numpy's sum(dtype=)
            a2 += f * xx[j]
        r0[i], r1[i], r2[i] = a0, a1, a2
    # the 4-neighbour Laplacian of whole levels: exact integer sums
    s1 = 0
    s2 = 0
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            lap = (np.int64(gray[i - 1, j]) + np.int64(gray[i + 1, j]) + np.int64(gray[i, j - 1])
                   + np.int64(gray[i, j + 1]) - 4 * np.int64(gray[i, j]))  # fmt: skip
            s1 += lap
            s2 += lap * lap
    n_lap = (h - 2) * (w - 2)
    lap_var = 0.0
    if n_lap > 0:
        mean = s1 / n_lap
        lap_var = max(s2 / n_lap - mean * mean, 0.0)
    # the residual after the best quadratic surface 1, x, y, x^2, xy, y^2 (rows' moments)
    m = np.array([r0.sum(), r1.sum(), (r0 * y).sum(), r2.sum(), (r1 * y).sum(), (r0 * y * y).sum()])
    c = np.empty(6, np.float32)
    for k in range(6):
        acc = 0.0
        for q in range(6):
            acc += inv[k, q] * m[q]
        c[k] = np.float32(acc)
    residual = np.zeros(511, np.int64)  # -255..255 as bins 0..510
    for i in range(h):
        yi = y32[i]
        row = c[0] + c[2] * yi + c[5] * yi * yi
        cy = c[4] * yi
        for j in range(w):
            xj = x32[j]
            v = (np.float32(gray[i, j]) - row) - ((c[1] + c[3] * xj) * xj + cy * xj)
            v = min(max(v + np.float32(255.5), np.float32(0.0)), np.float32(510.0))
            residual[np.int64(v)] += 1
    return gray, hist, spread, lap_var, residual


def grey_measures(
    px: np.ndarray, surface: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    """The grey image of an RGB picture and the histograms its stats are read from.

    Parameters
    ----------
    px : ndarray
        uint8 ``[h, w, 3]`` RGB, of any size (under 3 x 3 the residual's counts mean nothing,
        and :func:`dedupdask.decode._stats` does not read them).
    surface : (ndarray, ndarray, ndarray)
        Centred column and row coordinates ``x`` ``[w]``, ``y`` ``[h]`` and the ``6 x 6``
        inverse Gram matrix of the surfaces ``1, x, y, x^2, xy, y^2`` over the grid
        (:func:`dedupdask.decode._surface_basis`).

    Returns
    -------
    gray : ndarray
        uint8 ``[h, w]``, ``(299 R + 587 G + 114 B) / 1000`` rounded (ITU-R BT.601 luma).
    hist : ndarray
        int64 ``[256]`` grey-level counts.
    spread : ndarray
        int64 ``[256]`` counts of ``max(R, G, B) - min(R, G, B)``.
    lap_var : float
        Variance of the 4-neighbour Laplacian over the inner pixels.
    residual : ndarray
        int64 ``[511]`` counts of the grey level minus the least-squares quadratic surface,
        rounded (computed in float32), clipped to -255..255 and offset by 255.

    Examples
    --------
    >>> from dedupdask.decode import _surface_basis
    >>> px = np.zeros((4, 5, 3), np.uint8); px[1, 2] = (255, 0, 0)
    >>> gray, hist, spread, lap_var, residual = grey_measures(px, _surface_basis(4, 5))
    >>> int(gray[1, 2]), int(hist[0]), int(hist[76]), int(spread[255]), round(lap_var, 1)
    (76, 19, 1, 1, 18130.2)
    """
    x, y, inv = surface
    return _grey_measures(np.ascontiguousarray(px, np.uint8), x.astype(np.float32), y.astype(np.float32),
                          np.asarray(y, np.float64), np.asarray(inv, np.float64))  # fmt: skip


@njit(nogil=True, cache=True)
def _ink_rows(gray: np.ndarray, background: int, ink: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = gray.shape
    marks = np.zeros(h, np.int64)
    starts = np.zeros(h, np.int64)
    for i in range(h):
        before = False
        for j in range(w):
            on = abs(np.int64(gray[i, j]) - background) > ink
            if on:
                marks[i] += 1
                if not before:
                    starts[i] += 1
            before = on
    return marks, starts


def ink_rows(gray: np.ndarray, background: int, ink: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a grey image: its marks (pixels more than ``ink`` levels from
    ``background``) and the runs of marks (how often a mark starts).

    Examples
    --------
    >>> gray = np.array([[200, 0, 0, 200, 0], [200, 200, 200, 200, 200]], np.uint8)
    >>> [a.tolist() for a in ink_rows(gray, 200, 48)]
    [[3, 0], [2, 0]]
    """
    return _ink_rows(np.ascontiguousarray(gray, np.uint8), int(background), int(ink))


@njit(nogil=True, cache=True)
def _chroma_spread(ycc: np.ndarray) -> float:
    total = 0.0
    n = ycc.shape[0]
    if n == 0:
        return np.nan  # numpy's std of no values (and no ZeroDivisionError)
    for c in (1, 2):
        s = 0.0
        for i in range(n):
            s += ycc[i, c]
        m = s / n
        q = 0.0
        for i in range(n):
            d = ycc[i, c] - m
            q += d * d
        total += np.sqrt(q / n)
    return total


def chroma_spread(ycc: np.ndarray) -> float:
    """The standard deviations of the two chroma columns of ``[n, 3]`` YCbCr colours, summed:
    ``ycc[:, 1:].std(axis=0).sum()``, bit for bit (numpy sums down a column in order, as this
    loop does), without numpy's column-wise pass over two-wide rows (~0.45 ms for 12k colours
    against ~0.03).

    Examples
    --------
    >>> ycc = np.random.default_rng(0).random((1000, 3))
    >>> bool(chroma_spread(ycc) == ycc[:, 1:].std(axis=0).sum())
    True
    """
    return float(_chroma_spread(np.ascontiguousarray(ycc, np.float64)))


@njit(nogil=True, cache=True)
def _hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = x.shape[0]
    h, s, v = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        r, g, b = x[i, 0], x[i, 1], x[i, 2]
        mx, mn = max(max(r, g), b), min(min(r, g), b)
        c = mx - mn
        if c <= 1e-9:
            h[i] = 0.0  # no hue (numpy's formula divided by 1 here, then dropped what it got)
        elif mx == r:
            h[i] = ((g - b) / c) % 6.0
        elif mx == g:
            h[i] = (b - r) / c + 2.0
        else:
            h[i] = (r - g) / c + 4.0
        s[i] = c / (mx if mx > 1e-9 else 1.0)
        v[i] = mx
    return h, s, v


def hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (0..6, the colour hexagon's sectors), saturation and value of ``[n, 3]`` colours, in
    one pass instead of a dozen numpy passes (the colour edit's hue turn,
    :func:`dedupdask.match_keypoints.colour_edit`).

    Examples
    --------
    >>> [a.tolist() for a in hsv(np.array([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 0.5]]))]
    [[0.5, 0.0, 4.0], [1.0, 0.0, 1.0], [1.0, 0.2, 0.5]]
    """
    return _hsv(np.ascontiguousarray(x, np.float64))


@njit(nogil=True, cache=True)
def _from_hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = h.shape[0]
    out = np.empty((n, 3))
    for i in range(n):
        vs = v[i] * s[i]
        for c, shift in ((0, 5.0), (1, 3.0), (2, 1.0)):
            k = (shift + h[i]) % 6.0
            f = min(max(min(k, 4.0 - k), 0.0), 1.0)
            out[i, c] = v[i] - vs * f
    return out


def from_hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[n, 3]`` colours of hexagon hues ``h`` (0..6), saturations and values: the inverse
    of :func:`hsv`.

    Examples
    --------
    >>> from_hsv(*hsv(np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.5]]))).tolist()
    [[1.0, 0.5, 0.0], [0.0, 0.0, 0.5]]
    """
    return _from_hsv(*(np.ascontiguousarray(a, np.float64) for a in (h, s, v)))


@njit(nogil=True, cache=True)
def _plain_line(line: np.ndarray, tol: int) -> bool:
    n = line.shape[0]
    flat = True
    for c in range(3):
        lo, hi = line[0, c], line[0, c]
        for i in range(n):
            lo, hi = min(lo, line[i, c]), max(hi, line[i, c])
        if np.int64(hi) - np.int64(lo) > tol:
            flat = False
    if flat:
        return True  # every pixel within the tolerance of any colour in its range (the median's)
    med = np.empty(3)
    for c in range(3):
        s = np.sort(line[:, c].copy())
        med[c] = float(s[n // 2]) if n % 2 else (float(s[n // 2 - 1]) + float(s[n // 2])) / 2.0
    off = 0
    for i in range(n):
        worst = 0.0
        for c in range(3):
            worst = max(worst, abs(float(line[i, c]) - med[c]))
        if worst > tol:
            off += 1
    return off <= 0.02 * n


@njit(nogil=True, cache=True)
def _frame_peel(x: np.ndarray, cap_y: int, cap_x: int, tol: int) -> tuple[int, int, int, int]:
    h, w = x.shape[0], x.shape[1]
    top, bottom, left, right = 0, h, 0, w
    moved = True
    while moved:
        moved = False
        if top < cap_y and _plain_line(x[top, left:right], tol):
            top, moved = top + 1, True
        if h - bottom < cap_y and _plain_line(x[bottom - 1, left:right], tol):
            bottom, moved = bottom - 1, True
        if left < cap_x and _plain_line(x[top:bottom, left], tol):
            left, moved = left + 1, True
        if w - right < cap_x and _plain_line(x[top:bottom, right - 1], tol):
            right, moved = right - 1, True
    return top, bottom, left, right


def frame_peel(rgb: np.ndarray, cap_y: int, cap_x: int, tol: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` left after peeling plain rows and columns off the four
    sides of a uint8 ``[h, w, 3]`` picture, a ring at a time, at most ``cap_y`` rows and
    ``cap_x`` columns from each side: the loop of :func:`dedupdask.match.frame_box` (which
    says what a plain line is), one call instead of some sixty numpy calls per picture.

    Examples
    --------
    >>> pic = np.full((20, 30, 3), 200, np.uint8)
    >>> pic[4:15, 6:25] = np.random.default_rng(0).integers(0, 256, (11, 19, 3))
    >>> frame_peel(pic, 5, 7, 16)
    (4, 15, 6, 25)
    """
    return _frame_peel(np.ascontiguousarray(rgb, np.uint8), int(cap_y), int(cap_x), int(tol))


@njit(nogil=True, cache=True)
def _centred_squares(a: np.ndarray) -> np.ndarray:
    h, w, c = a.shape
    if h * w == 0:
        return np.empty((h, w, c), np.float32)
    sums = np.zeros(c, np.float32)
    for i in range(h):
        for j in range(w):
            for k in range(c):
                sums[k] += a[i, j, k]
    mean = np.empty(c, np.float32)
    for k in range(c):
        mean[k] = np.float32(np.float64(sums[k]) / np.float64(h * w))
    out = np.empty((h, w, c), np.float32)
    for i in range(h):
        for j in range(w):
            for k in range(c):
                d = a[i, j, k] - mean[k]
                out[i, j, k] = d * d
    return out


def centred_squares(a: np.ndarray) -> np.ndarray:
    """``(a - a.mean(axis=(0, 1))) ** 2`` of a float32 ``[h, w, c]`` image, bit for bit numpy's
    (its per-channel mean sums the pixels in order, in float32, and divides in float64), in one
    pass instead of numpy's slow reduction over the short channel axis (the pixel alignment's
    variance of a picture, :func:`dedupdask.match._residuals`).

    Examples
    --------
    >>> a = np.random.default_rng(0).random((40, 30, 3)).astype(np.float32)
    >>> bool((centred_squares(a) == (a - a.mean(axis=(0, 1))) ** 2).all())
    True
    """
    return _centred_squares(np.ascontiguousarray(a, np.float32))


@njit(nogil=True, cache=True)
def _refitted_off(a: np.ndarray, b: np.ndarray, agree: np.ndarray, level: np.float32) -> np.ndarray:
    h, w, c = a.shape
    n = 0
    sx, sy = 0.0, 0.0
    for i in range(h):
        for j in range(w):
            if agree[i, j]:
                n += c
                for k in range(c):
                    sx += b[i, j, k]
                    sy += a[i, j, k]
    xm, ym = sx / n, sy / n
    sxx, sxy = 0.0, 0.0
    for i in range(h):
        for j in range(w):
            if agree[i, j]:
                for k in range(c):
                    dx = np.float64(b[i, j, k]) - xm
                    sxx += dx * dx
                    sxy += dx * (np.float64(a[i, j, k]) - ym)
    g = min(max(sxy / max(sxx, 1e-9), 0.5), 2.0)
    gf, of = np.float32(g), np.float32(ym - g * xm)
    off = np.zeros((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            worst = np.float32(0.0)
            for k in range(c):
                worst = max(worst, abs(a[i, j, k] - (gf * b[i, j, k] + of)))
            off[i, j] = worst > level
    return off


def refitted_off(a: np.ndarray, b: np.ndarray, agree: np.ndarray, level: float) -> np.ndarray:
    """Pixels of two float32 ``[h, w, c]`` images off by more than ``level`` in some channel
    under ``a ~ g * b + o``, with the gain (clipped to 0.5-2) and offset fitted by least squares
    on the pixels ``agree`` (bool ``[h, w]``, not all False): the pixel alignment's second look
    at where two pictures differ (:func:`dedupdask.match._changed_where`). One pass per step, in
    float64, instead of eight numpy passes and BLAS products; the residual is read in float32,
    as before.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b = rng.random((20, 30, 3)).astype(np.float32)
    >>> a = 0.8 * b + 0.1
    >>> a[5:9, 5:9] = 1.0  # an inset the fit does not see
    >>> agree = np.ones((20, 30), bool)
    >>> agree[5:9, 5:9] = False
    >>> int(refitted_off(a, b, agree, 0.2).sum()) <= 16
    True
    """
    return _refitted_off(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32),
                         np.ascontiguousarray(agree, np.bool_), np.float32(level))  # fmt: skip


_TAP_BITS = 22
"""Fixed-point bits of a resize tap (32 - 8 - 2: an 8-bit sample times a tap, summed, fits int32)."""


@njit(nogil=True, cache=True)
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Output sample i reads inputs first[i] .. first[i] + count[i] - 1: the triangle filter centred
    # on (i + 0.5) * scale, widened by the scale when shrinking, normalised to sum 1, then rounded
    # to _TAP_BITS fixed point (Pillow's arithmetic, in its order, in float64).
    scale = in_size / out_size
    support = max(scale, 1.0)
    inv = 1.0 / support
    width = int(math.ceil(support)) * 2 + 1
    first = np.zeros(out_size, np.int64)
    count = np.zeros(out_size, np.int64)
    taps = np.zeros((out_size, width), np.int32)
    w = np.zeros(width, np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        n = min(int(centre + support + 0.5), in_size) - lo
        total = 0.0
        for j in range(n):
            d = abs(((j + lo) - centre + 0.5) * inv)
            w[j] = 1.0 - d if d < 1.0 else 0.0
            total += w[j]
        for j in range(n):
            v = w[j] / total if total != 0.0 else w[j]
            taps[i, j] = int(0.5 + v * (1 << _TAP_BITS))
        first[i] = lo
        count[i] = n
    return first, count, taps


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _bilinear_taps(in_size, out_size)


@njit(nogil=True, cache=True)
def _rows(src: np.ndarray, first: np.ndarray, count: np.ndarray, taps: np.ndarray, shift: int,
          out: np.ndarray) -> None:  # fmt: skip
    # out[i] = the taps' sum of whole rows src[first[i] - shift + j], rounded and clipped to 8 bits
    n = src.shape[1]
    acc = np.empty(n, np.int32)
    for i in range(out.shape[0]):
        acc[:] = 1 << (_TAP_BITS - 1)
        for j in range(count[i]):
            t = taps[i, j]
            row = src[first[i] - shift + j]
            for k in range(n):
                acc[k] += np.int32(row[k]) * t
        o = out[i]
        for k in range(n):
            v = acc[k] >> _TAP_BITS
            o[k] = 0 if v < 0 else (255 if v > 255 else v)


_BLOCK = 64
"""Rows of the horizontal pass per column-major copy: a 100-megapixel PNG's copies stay ~2 MB."""


@njit(nogil=True, cache=True)
def _columns(src: np.ndarray, lo: int, hi: int, first: np.ndarray, count: np.ndarray,
             taps: np.ndarray, out: np.ndarray) -> None:  # fmt: skip
    # the horizontal pass over rows lo..hi of src [h, w, 3] into out [hi - lo, ow, 3], as a pass
    # over the rows of column-major copies of _BLOCK rows at a time (the three channels written
    # out: a loop LLVM keeps tight)
    w = src.shape[1]
    ow = out.shape[1]
    t_in = np.empty((w, _BLOCK * 3), np.uint8)
    t_out = np.empty((ow, _BLOCK * 3), np.uint8)
    for b0 in range(lo, hi, _BLOCK):
        m = min(_BLOCK, hi - b0)
        for x in range(w):
            for y in range(m):
                t_in[x, 3 * y] = src[b0 + y, x, 0]
                t_in[x, 3 * y + 1] = src[b0 + y, x, 1]
                t_in[x, 3 * y + 2] = src[b0 + y, x, 2]
        _rows(t_in[:, : 3 * m], first, count, taps, 0, t_out[:, : 3 * m])
        for y in range(m):
            for x in range(ow):
                out[b0 - lo + y, x, 0] = t_out[x, 3 * y]
                out[b0 - lo + y, x, 1] = t_out[x, 3 * y + 1]
                out[b0 - lo + y, x, 2] = t_out[x, 3 * y + 2]


def resize_bilinear(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an 8-bit RGB image as Pillow 13's ``Image.resize(size, Image.Resampling.BILINEAR,
    reducing_gap=None)`` does, bit for bit (``tests/test_kernels.py`` checks it on random sizes,
    up and down).

    Two separable passes of a triangle filter, widened by the scale when shrinking (every input
    pixel counts: an antialiased resize), with taps in 22-bit fixed point. The horizontal pass
    runs first, over the rows the vertical one needs, unless the image loses more than twice as
    many rows as columns (Pillow 13's rule); each pass's 8-bit result is rounded and clipped.

    Parameters
    ----------
    rgb : ndarray
        uint8 ``[h, w, 3]``, at least 1 x 1.
    size : (int, int)
        ``(width, height)`` of the result, as Pillow takes it.

    Returns
    -------
    ndarray
        uint8 ``[height, width, 3]``, a new array (also when the size is unchanged).

    Examples
    --------
    >>> from PIL import Image
    >>> px = np.random.default_rng(0).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    >>> out = resize_bilinear(px, (160, 160))
    >>> ref = Image.fromarray(px).resize((160, 160), Image.Resampling.BILINEAR, reducing_gap=None)
    >>> out.shape, bool(np.array_equal(out, np.asarray(ref)))
    ((160, 160, 3), True)
    """
    x = np.ascontiguousarray(rgb, np.uint8)
    h, w, c = x.shape
    ow, oh = int(size[0]), int(size[1])
    if c != 3 or min(h, w, ow, oh) < 1:
        raise ValueError(f"resize_bilinear takes [h, w, 3] to a size of at least 1 x 1, not {x.shape} to {size}")
    if (ow, oh) == (w, h):
        return x.copy()
    if oh != h:
        vf, vc, vt = _taps(h, oh)
    if ow != w:
        hf, hc, ht = _taps(w, ow)
    if not (h - oh > 0 and h - oh > (w - ow) * 2):  # horizontal pass first
        shift = 0
        if ow != w:
            lo, hi = (int(vf[0]), int(vf[-1] + vc[-1])) if oh != h else (0, h)
            tmp = np.empty((hi - lo, ow, 3), np.uint8)
            _columns(x, lo, hi, hf, hc, ht, tmp)
            x, shift = tmp, lo
        if oh != h:
            out = np.empty((oh, ow, 3), np.uint8)
            _rows(x.reshape(x.shape[0], -1), vf, vc, vt, shift, out.reshape(oh, -1))
            x = out
        return x
    out = np.empty((oh, w, 3), np.uint8)
    _rows(x.reshape(h, -1), vf, vc, vt, 0, out.reshape(oh, -1))
    if ow != w:
        x = np.empty((oh, ow, 3), np.uint8)
        _columns(out, 0, oh, hf, hc, ht, x)
        return x
    return out
