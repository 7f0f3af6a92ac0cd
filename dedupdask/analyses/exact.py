"""Analysis stage, exact duplicates: images with equal encoded bytes or equal decoded pixels.

Groups are the connected components of "same ``md5``" (encoded bytes) and "same
``pixel_md5``" (decoded full-resolution pixels + size); every pair inside a group is an
``exact`` duplicate. Each group is represented by its smallest global index.

Images whose *model-input* pixels are equal (``input_md5``) but whose full pixels are not
known to be (a JPEG decoded at a reduced scale has no ``pixel_md5``; a picture and a copy
with one pixel changed share their 160 px version) get the same embedding, yet are not exact
duplicates. The kNN graph is computed once per such *input group* (a large group of identical
vectors cannot fill the neighbour lists of everything around it) and :func:`expand_graph`
turns it into the graph of the exact groups' representatives: each lists the other exact
groups of its input group first (similarity 1.0), then the input group's neighbours. Those
pairs are decided by the duplicate tiers (verified), never labelled ``exact``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["ExactGroups", "exact_groups", "expand_graph"]


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


def exact_groups(*keys: pd.Series | np.ndarray | None) -> ExactGroups:
    """Group images that share a value of any key (null/empty values never match).

    Parameters
    ----------
    *keys : array-like of str
        One entry per global index 0..N-1 each, e.g. ``md5, pixel_md5`` for the exact groups
        or ``md5, pixel_md5, input_md5`` for the input groups; None keys are ignored.

    Returns
    -------
    ExactGroups

    Examples
    --------
    >>> g = exact_groups(["a", "b", "a", "c"], ["x", "y", "z", "y"])
    >>> g.rep.tolist()
    [0, 1, 0, 1]
    """
    series = [pd.Series(k, dtype="string") for k in keys if k is not None]
    if not series:
        raise ValueError("exact_groups needs at least one key")
    n = len(series[0])
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for key in series:
        if len(key) != n:
            raise ValueError(f"group keys differ in length ({n} vs {len(key)})")
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


def expand_graph(
    groups: ExactGroups, inputs: ExactGroups, nbr_idx: np.ndarray, nbr_sim: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph of ``inputs.reps`` as a graph of ``groups.reps``.

    ``groups`` must refine ``inputs`` (every exact group lies inside one input group), so
    every input representative is also an exact representative. Each exact representative
    gets the other exact representatives of its input group first (similarity 1.0: their
    model inputs, hence their vectors, are equal; taken round the group so that every row
    names different ones), then its input group's neighbours, ``k`` in all.

    Parameters
    ----------
    groups, inputs : ExactGroups
        Exact groups and the coarser input groups over the same 0..N-1.
    nbr_idx, nbr_sim : ndarray
        ``[len(inputs.reps), k]`` neighbours (positions into ``inputs.reps``, -1 = none) and
        similarities (NaN = none).

    Returns
    -------
    (ndarray, ndarray)
        ``[len(groups.reps), k]``: positions into ``groups.reps`` and similarities.

    Examples
    --------
    >>> g = exact_groups(["a", "b", "c"])  # three different files...
    >>> i = exact_groups(["a", "b", "c"], ["x", "x", "y"])  # ...0 and 1 equal at model size
    >>> idx, sim = expand_graph(g, i, np.array([[1], [0]]), np.array([[0.5], [0.5]], np.float32))
    >>> idx.tolist(), sim.tolist()
    ([[1], [0], [0]], [[1.0], [1.0], [0.5]])
    """
    fine, coarse = groups.reps, inputs.reps
    if fine.size == coarse.size:
        return nbr_idx, nbr_sim
    k = nbr_idx.shape[1]
    c = inputs.rep[fine]  # input representative of every exact representative
    row = np.searchsorted(coarse, c)  # its input group's row of the given graph
    fine_pos = np.searchsorted(fine, coarse)  # input representatives among the exact ones
    base_idx = nbr_idx[row]
    base_idx = np.where(base_idx >= 0, fine_pos[np.maximum(base_idx, 0)], -1)
    base_sim = nbr_sim[row]
    # siblings: the exact representatives of one input group, in ring order
    order = np.argsort(c, kind="stable")
    cs = c[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    sizes = np.diff(np.r_[starts, cs.size])
    grp = np.repeat(np.arange(starts.size), sizes)
    rank = np.arange(cs.size) - starts[grp]
    size = sizes[grp]
    n_sib = np.minimum(size - 1, k)
    j = np.arange(k)
    sib = order[starts[grp][:, None] + (rank[:, None] + j[None, :] + 1) % size[:, None]]
    use_sib = j[None, :] < n_sib[:, None]
    col = np.maximum(j[None, :] - n_sib[:, None], 0)
    idx_o = np.where(use_sib, sib, np.take_along_axis(base_idx[order], col, axis=1))
    sim_o = np.where(
        use_sib, np.float32(1.0), np.take_along_axis(base_sim[order], col, axis=1)
    ).astype(np.float32)
    out_idx = np.empty_like(idx_o)
    out_sim = np.empty_like(sim_o)
    out_idx[order] = idx_o
    out_sim[order] = sim_o
    return out_idx.astype(np.int64), out_sim
