"""Keypoint matching stage: nearest binary descriptors by Hamming distance, with Lowe's ratio test.

The keypoint matcher (:mod:`dedupdask.match_keypoints`) compares every candidate pair's ORB
descriptors (256 bits each, up to 500 per picture) all against all. OpenCV's brute-force
matcher spends about 1.9 ms on 500 x 500 descriptors (7 ns a distance); most candidate pairs
are unrelated pictures that the matcher must rule out this way, so that search is most of its
cost. Here a descriptor is four 64-bit words and a distance is four hardware population
counts (LLVM's ``ctpop``, as pynndescent's bit distances use it) of XORed words: the same
distances about six times faster, in one small numba kernel that keeps only the two nearest
(compiled once, then loaded from numba's cache: a fraction of a second per process; this
module is imported by the matcher when it first matches, not with the package).

The answers are OpenCV's: for each query descriptor its nearest and second-nearest train
descriptors; a match counts when the nearest is clearly nearer (``d1 < ratio * d2``), so a tie
for the nearest (where the two libraries may name different descriptors) never counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["ratio_matches"]


@intrinsic
def _popcount(typingctx: Any, x: Any) -> Any:
    """Set bits of a 64-bit word: LLVM's ``ctpop`` (one instruction where the CPU has it)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return types.uint64(types.uint64), codegen


@njit(nogil=True, cache=True)
def _two_nearest(q: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nq, nt, words = q.shape[0], t.shape[0], q.shape[1]
    idx = np.empty((nq, 2), np.int32)
    dist = np.empty((nq, 2), np.int32)
    for i in range(nq):
        d1, d2, i1, i2 = 1 << 30, 1 << 30, -1, -1
        for j in range(nt):
            d = 0
            for w in range(words):
                d += _popcount(q[i, w] ^ t[j, w])
            if d < d2:
                if d < d1:
                    d2, i2, d1, i1 = d1, i1, d, j
                else:
                    d2, i2 = d, j
        idx[i, 0], idx[i, 1], dist[i, 0], dist[i, 1] = i1, i2, d1, d2
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
    return good, idx[good, 0].astype(np.int64)
