"""dedupdask.kernels: the compiled inner loops give the numbers of the numpy/OpenCV code they replace."""

from __future__ import annotations

import numpy as np

from dedupdask.kernels import ratio_matches, window_maxima
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
