"""Analysis stage, connected components: images linked by similarity >= ``ccthreshold``.

Edges are the kNN edges at or above ``ccthreshold`` plus every exact-duplicate group.
``component_id`` is the smallest global index in the component (so a singleton's id is its
own index) and ``component_size`` counts **images** -- not edges, the fastdup bug of issues
#74/#306. Every valid image has a row, singletons included (size 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .exact import ExactGroups
from .keep import KEEP_RULES, KeepRule, best_per_component, check_keep, keep_keys

__all__ = [
    "COMPONENT_COLUMNS",
    "REMOVE_COLUMNS",
    "KEEP_RULES",
    "components_table",
    "duplicates_to_remove",
]

COMPONENT_COLUMNS = ("index", "component_id", "component_size")
REMOVE_COLUMNS = (
    "index", "filename", "archive", "member", "key", "component_id", "keeper_index", "keeper_filename",
)  # fmt: skip


def components_table(
    groups: ExactGroups,
    reps: np.ndarray,
    nbr_idx: np.ndarray,
    nbr_sim: np.ndarray,
    ccthreshold: float,
    *,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per image: its component and the component's size in images.

    ``edges`` (global indices), when given, replace the kNN edges at or above
    ``ccthreshold`` (the duplicate tiers pass their fused, verified pairs); exact groups are
    always linked.

    Examples
    --------
    >>> from dedupdask.analyses import exact_groups
    >>> g = exact_groups(["a", "a", "b", "c"])
    >>> t = components_table(g, np.array([0, 2, 3]), np.array([[1], [0], [1]]),
    ...                      np.array([[0.97], [0.97], [0.1]], np.float32), 0.96)
    >>> t.values.tolist()
    [[0, 0, 3], [1, 0, 3], [2, 0, 3], [3, 3, 1]]
    """
    n = groups.n
    if edges is None:
        ok = (nbr_idx >= 0) & (nbr_sim >= np.float32(ccthreshold))
        rows, cols = np.nonzero(ok)
        ea, eb = reps[rows], reps[nbr_idx[rows, cols]]
    else:
        ea, eb = (np.asarray(e, dtype=np.int64) for e in edges)
    a = np.concatenate([ea, np.arange(n)])
    b = np.concatenate([eb, groups.rep])
    if n:
        graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        first = np.full(labels.max() + 1, n, dtype=np.int64)
        np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
        comp = first[labels]
        size = np.bincount(labels)[labels].astype(np.int64)
    else:
        comp = size = np.empty(0, dtype=np.int64)
    return pd.DataFrame(
        {"index": np.arange(n, dtype=np.int64), "component_id": comp, "component_size": size}
    )


def duplicates_to_remove(
    components: pd.DataFrame,
    images: pd.DataFrame,
    keep: KeepRule = "largest_resolution",
) -> pd.DataFrame:
    """The images to delete so that one image per component remains.

    Parameters
    ----------
    components : DataFrame
        :func:`components_table` output.
    images : DataFrame
        ``index, filename`` and the columns the rule reads (``width, height, file_size``,
        ``caption``; ``archive, member, key`` are carried over when present) of the valid
        images; rows of singletons may be left out.
    keep : str or callable
        Which image of a component is kept (:mod:`dedupdask.analyses.keep`):
        ``"largest_resolution"`` (the most pixels, then the largest file),
        ``"largest_file"``, ``"first"``, ``"longest_caption"``, or ``keep(row) -> number``
        (higher is better). Ties go to the smallest index.

    Returns
    -------
    DataFrame
        Columns :data:`REMOVE_COLUMNS`, sorted by ``component_id``, ``index``.

    Examples
    --------
    >>> comps = pd.DataFrame({"index": [0, 1, 2], "component_id": [0, 0, 2], "component_size": [2, 2, 1]})
    >>> imgs = pd.DataFrame({"index": [0, 1, 2], "filename": ["a", "b", "c"], "width": [10, 20, 5],
    ...                      "height": [10, 20, 5], "file_size": [100, 50, 10]})
    >>> duplicates_to_remove(comps, imgs)[["index", "keeper_index"]].values.tolist()
    [[0, 1]]
    >>> duplicates_to_remove(comps, imgs, keep="largest_file")[["index", "keeper_index"]].values.tolist()
    [[1, 0]]
    """
    check_keep(keep)
    multi = components.loc[components["component_size"] > 1, ["index", "component_id"]]
    df = multi.merge(images.drop(columns=["component_id", "component_size"], errors="ignore"),
                     on="index", how="left")  # fmt: skip
    for col in ("archive", "member", "key"):
        if col not in df:
            df[col] = pd.NA
    df = keep_keys(df, keep)
    keeper = best_per_component(df).set_index("component_id")
    out = df[~df["index"].isin(keeper["index"])].copy()
    out["keeper_index"] = out["component_id"].map(keeper["index"]).astype(np.int64)
    out["keeper_filename"] = out["component_id"].map(keeper["filename"]).astype("string")
    out = out.sort_values(["component_id", "index"], kind="stable").reset_index(drop=True)
    out = out.astype({"archive": "string", "member": "string", "key": "string"})
    return out.loc[:, list(REMOVE_COLUMNS)]
