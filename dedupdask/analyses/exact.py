"""Analysis stage, exact duplicates: images with equal encoded bytes or equal decoded pixels.

Groups are the connected components of "same ``md5``" (encoded bytes) and "same
``pixel_md5``" (decoded model-size pixels + original size). Every group is represented by its
smallest global index; only representatives go into the kNN graph, so a large group of
identical images cannot fill the neighbour lists of everything around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["ExactGroups", "exact_groups"]


@dataclass(frozen=True)
class ExactGroups:
    """Exact-duplicate groups over the global index 0..N-1.

    Attributes
    ----------
    rep : ndarray
        int64 ``[N]``: the representative (smallest index) of each image's group.
    """

    rep: np.ndarray

    @property
    def n(self) -> int:
        return int(self.rep.shape[0])

    @property
    def reps(self) -> np.ndarray:
        """Sorted representatives (one per group, singletons included)."""
        return np.flatnonzero(self.rep == np.arange(self.n))

    @property
    def size(self) -> np.ndarray:
        """int64 ``[N]``: group size at each representative's position, 0 elsewhere."""
        return np.bincount(self.rep, minlength=self.n).astype(np.int64)

    @property
    def order(self) -> np.ndarray:
        """Indices sorted by (representative, index): each group is a contiguous run."""
        return np.argsort(self.rep, kind="stable")

    @property
    def start(self) -> np.ndarray:
        """int64 ``[N]``: where each representative's run begins in :attr:`order`."""
        size = self.size
        return (np.cumsum(size) - size).astype(np.int64)  # [N] also when N = 0

    def n_groups(self, min_size: int = 2) -> int:
        """Number of groups with at least ``min_size`` images."""
        return int((self.size >= min_size).sum())


def exact_groups(
    md5: pd.Series | np.ndarray, pixel_md5: pd.Series | np.ndarray | None = None
) -> ExactGroups:
    """Group images whose ``md5`` or ``pixel_md5`` are equal (null/empty keys never match).

    Parameters
    ----------
    md5, pixel_md5 : array-like of str
        One entry per global index 0..N-1.

    Returns
    -------
    ExactGroups

    Examples
    --------
    >>> g = exact_groups(["a", "b", "a", "c"], ["x", "y", "z", "y"])
    >>> g.rep.tolist()
    [0, 1, 0, 1]
    """
    keys = [pd.Series(md5, dtype="string")]
    if pixel_md5 is not None:
        keys.append(pd.Series(pixel_md5, dtype="string"))
    n = len(keys[0])
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for key in keys:
        if len(key) != n:
            raise ValueError(f"md5 and pixel_md5 differ in length ({n} vs {len(key)})")
        ok = (key.notna() & (key != "")).to_numpy(dtype=bool)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        first = pd.Series(idx).groupby(key.to_numpy()[ok], sort=False).transform("min").to_numpy()
        moved = first != idx
        src.append(idx[moved])
        dst.append(first[moved])
    if not src or sum(s.size for s in src) == 0:
        return ExactGroups(np.arange(n, dtype=np.int64))
    a = np.concatenate(src)
    b = np.concatenate(dst)
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    return ExactGroups(first[labels])
