"""Analysis stage, outliers: the images whose nearest neighbour is least similar.

Every image gets its nearest other image: for a member of an exact group that is another
member (similarity 1.0), otherwise the first kNN neighbour of its representative. The
``lower_threshold`` fraction of images (rounded up) with the lowest similarity are outliers,
least similar first.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .exact import ExactGroups

__all__ = ["OUTLIER_COLUMNS", "nearest_neighbours", "outliers_table"]

OUTLIER_COLUMNS = ("index", "nearest", "similarity", "filename", "filename_nearest")


def nearest_neighbours(
    groups: ExactGroups, reps: np.ndarray, nbr_idx: np.ndarray, nbr_sim: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest other image (-1 = none) and its similarity (NaN = none), per global index.

    Examples
    --------
    >>> from dedupdask.analyses import exact_groups
    >>> g = exact_groups(["a", "a", "b"])
    >>> nearest_neighbours(g, np.array([0, 2]), np.array([[1], [0]]), np.array([[0.5], [0.5]], np.float32))
    (array([1, 0, 0]), array([1. , 1. , 0.5], dtype=float32))
    """
    n = groups.n
    nearest = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    if reps.size and nbr_idx.shape[1]:
        first = nbr_idx[:, 0]
        has = first >= 0
        nearest[reps[has]] = reps[first[has]]
        sim[reps[has]] = nbr_sim[has, 0]
    rep, size, order, start = groups.rep, groups.size, groups.order, groups.start
    in_group = size[rep] > 1
    members = np.flatnonzero(in_group & (rep != np.arange(n)))
    nearest[members] = rep[members]
    sim[members] = 1.0
    heads = np.flatnonzero(in_group & (rep == np.arange(n)))
    nearest[heads] = order[start[heads] + 1]
    sim[heads] = 1.0
    return nearest, sim


def outliers_table(
    nearest: np.ndarray,
    sim: np.ndarray,
    lower_threshold: float,
    filenames: np.ndarray | pd.Series,
) -> pd.DataFrame:
    """The ``ceil(lower_threshold * N)`` least similar images, columns :data:`OUTLIER_COLUMNS`.

    Examples
    --------
    >>> outliers_table(np.array([1, 0, 0]), np.array([0.9, 0.9, 0.2], np.float32), 0.3,
    ...                ["a", "b", "c"])[["index", "nearest"]].values.tolist()
    [[2, 0]]
    """
    n = nearest.shape[0]
    count = math.ceil(lower_threshold * n - 1e-9) if n else 0
    has = np.flatnonzero(nearest >= 0)
    order = has[np.lexsort((has, sim[has]))][:count]
    names = np.asarray(filenames, dtype=object)
    out = pd.DataFrame(
        {
            "index": order.astype(np.int64),
            "nearest": nearest[order],
            "similarity": sim[order].astype(np.float32),
            "filename": pd.array(names[order], dtype="string"),
            "filename_nearest": pd.array(names[nearest[order]], dtype="string"),
        }
    )
    return out.loc[:, list(OUTLIER_COLUMNS)]
