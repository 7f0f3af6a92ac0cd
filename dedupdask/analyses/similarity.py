"""Analysis stage, similar pairs: kNN edges at or above ``threshold`` plus exact-group pairs.

Each unordered pair appears once with ``from < to``. Exact duplicates are pairs with
similarity 1.0. A kNN edge between two representatives stands for every pair of their
groups' members (they have the same vectors). To keep the table bounded when a group is huge,
any expansion that would exceed ``max_group_pairs`` pairs is reduced to a star: every member
paired with the other side's representative (for a group's own pairs, every member with the
group's representative); components are unaffected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..match_record import RECORD_COLUMNS, empty_records
from .exact import ExactGroups

__all__ = [
    "SIMILARITY_COLUMNS",
    "MAX_GROUP_PAIRS",
    "across_group_pairs",
    "pair_frame",
    "similarity_table",
    "within_group_pairs",
]

SIMILARITY_COLUMNS = (
    "from",
    "to",
    "similarity",
    "copy_similarity",
    "kind",
    "verify_score",
    *RECORD_COLUMNS,
    "filename_from",
    "filename_to",
)
"""``similarity``: embedding cosine; ``copy_similarity``: DCT cosine (NaN when not known);
``kind``: ``exact``, ``copy`` or ``near`` (:mod:`dedupdask.analyses.tiers`); ``verify_score``:
the matcher's score when the pair was verified, else NaN; ``verify_matcher`` ...
``verify_colour``: its match record (:data:`dedupdask.match_record.RECORD_COLUMNS`: which
matcher, where ``to`` lies on ``from``, the sub-scores), null when not verified."""
MAX_GROUP_PAIRS = 10_000


def within_group_pairs(groups: ExactGroups, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of members of each exact group (a star around the representative past ``cap``)."""
    size, order, start = groups.size, groups.order, groups.start
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for s in np.unique(size[size > 1]):
        reps = np.flatnonzero(size == s)
        m = order[start[reps][:, None] + np.arange(s)]  # (groups, s), first column = rep
        if s * (s - 1) // 2 <= cap:
            i, j = np.triu_indices(int(s), 1)
            xs.append(m[:, i].ravel())
            ys.append(m[:, j].ravel())
        else:
            xs.append(np.repeat(m[:, 0], s - 1))
            ys.append(m[:, 1:].ravel())
    if not xs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def across_group_pairs(
    a: np.ndarray, b: np.ndarray, groups: ExactGroups, cap: int = MAX_GROUP_PAIRS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expand representative edges ``(a, b)`` to their groups' members.

    Returns ``(x, y, edge)``: member pairs and, for each, the position of its edge in
    ``a``/``b``; expansions over ``cap`` pairs become stars (see the module docstring).
    """
    size, order, start = groups.size, groups.order, groups.start
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    sa, sb = size[a], size[b]
    p = sa * sb
    small = p <= cap
    eid_s = np.flatnonzero(small)
    a_s, b_s, p_s = a[small], b[small], p[small]
    pid = np.repeat(np.arange(a_s.size), p_s)
    t = np.arange(int(p_s.sum()), dtype=np.int64) - np.repeat(np.cumsum(p_s) - p_s, p_s)
    sbp = sb[small][pid]
    xs = [order[start[a_s][pid] + t // sbp]]
    ys = [order[start[b_s][pid] + t % sbp]]
    es = [eid_s[pid]]
    for e in np.flatnonzero(~small):
        ra, rb = a[e], b[e]
        ma = order[start[ra] : start[ra] + size[ra]]
        mb = order[start[rb] : start[rb] + size[rb]]
        xs += [ma, np.full(mb.size, ra)]
        ys += [np.full(ma.size, rb), mb]
        es += [np.full(ma.size + mb.size, e, dtype=np.int64)]
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(es)


def _across_groups(
    a: np.ndarray, b: np.ndarray, sim: np.ndarray, groups: ExactGroups, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, e = across_group_pairs(a, b, groups, cap)
    return x, y, np.asarray(sim, dtype=np.float32)[e]


def pair_frame(
    x: np.ndarray, y: np.ndarray, sim: np.ndarray, filenames: np.ndarray | pd.Series | None = None
) -> pd.DataFrame:
    """Canonical pair table: ``from < to``, one row per pair (highest similarity), sorted.

    Examples
    --------
    >>> pair_frame(np.array([2, 0]), np.array([0, 2]), np.array([0.9, 0.95], np.float32))
       from  to  similarity
    0     0   2        0.95
    """
    lo = np.minimum(x, y).astype(np.int64)
    hi = np.maximum(x, y).astype(np.int64)
    df = pd.DataFrame({"from": lo, "to": hi, "similarity": np.asarray(sim, dtype=np.float32)})
    df = df[df["from"] != df["to"]]
    df = df.sort_values(["similarity", "from", "to"], ascending=[False, True, True], kind="stable")
    df = df.drop_duplicates(["from", "to"], keep="first").reset_index(drop=True)
    if filenames is not None:
        names = np.asarray(filenames, dtype=object)
        df["filename_from"] = pd.array(names[df["from"].to_numpy()], dtype="string")
        df["filename_to"] = pd.array(names[df["to"].to_numpy()], dtype="string")
    return df


def similarity_table(
    groups: ExactGroups,
    reps: np.ndarray,
    nbr_idx: np.ndarray,
    nbr_sim: np.ndarray,
    threshold: float,
    filenames: np.ndarray | pd.Series,
    *,
    max_group_pairs: int = MAX_GROUP_PAIRS,
) -> pd.DataFrame:
    """Pairs with similarity >= ``threshold``, columns :data:`SIMILARITY_COLUMNS`.

    Parameters
    ----------
    groups : ExactGroups
        Exact-duplicate groups over 0..N-1.
    reps : ndarray
        Global index of each kNN row (the representatives, sorted).
    nbr_idx, nbr_sim : ndarray
        kNN graph over ``reps`` (positions into ``reps``; -1 = none).
    threshold : float
        Minimum cosine similarity.
    filenames : array-like
        File name of each global index.
    max_group_pairs : int
        Largest group expansion written in full (see the module docstring).

    Returns
    -------
    DataFrame
        Sorted by similarity descending, then ``from``, ``to``.

    Examples
    --------
    >>> from dedupdask.analyses import exact_groups
    >>> g = exact_groups(["a", "a", "b"])
    >>> t = similarity_table(g, np.array([0, 2]), np.array([[1], [0]]),
    ...                      np.array([[0.95], [0.95]], np.float32), 0.9, ["x", "y", "z"])
    >>> t[["from", "to", "similarity"]].values.tolist()
    [[0.0, 1.0, 1.0], [0.0, 2.0, 0.949999988079071], [1.0, 2.0, 0.949999988079071]]
    """
    ok = (nbr_idx >= 0) & (nbr_sim >= np.float32(threshold))
    rows, cols = np.nonzero(ok)
    a = reps[rows]
    b = reps[nbr_idx[rows, cols]]
    s = nbr_sim[rows, cols].astype(np.float32)
    # one direction per rep pair before expanding
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    edges = pair_frame(lo, hi, s)
    x1, y1, s1 = _across_groups(
        edges["from"].to_numpy(),
        edges["to"].to_numpy(),
        edges["similarity"].to_numpy(),
        groups,
        max_group_pairs,
    )
    x2, y2 = within_group_pairs(groups, max_group_pairs)
    x = np.concatenate([x1, x2])
    y = np.concatenate([y1, y2])
    sim = np.concatenate([s1, np.ones(x2.size, dtype=np.float32)])
    exact = np.concatenate([np.zeros(x1.size, dtype=bool), np.ones(x2.size, dtype=bool)])
    out = pair_frame(x, y, sim, filenames)
    lo, hi = np.minimum(x, y), np.maximum(x, y)
    exact_pairs = set(zip(lo[exact].tolist(), hi[exact].tolist(), strict=True))
    is_exact = [(a, b) in exact_pairs for a, b in zip(out["from"], out["to"], strict=True)]
    out["copy_similarity"] = np.where(is_exact, 1.0, np.nan).astype(np.float32)
    out["kind"] = pd.array(np.where(is_exact, "exact", "near"), dtype="string")
    out["verify_score"] = np.full(len(out), np.nan, dtype=np.float32)
    out = pd.concat([out, empty_records(len(out)).set_axis(out.index)], axis=1)  # not verified
    return out.loc[:, list(SIMILARITY_COLUMNS)]
