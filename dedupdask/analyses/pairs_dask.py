"""Analysis stage, the similarity table on the workers: accepted pairs expanded to exact groups.

The same rows as :func:`dedupdask.analyses.tiers.expand_pairs` -- every accepted
representative pair expanded to the members of both exact groups, plus the pairs inside each
exact group (kind ``exact``), stars past ``max_group_pairs`` -- from Dask DataFrames, without
gathering them. The pandas rules are reused as they are, on pieces that hold whole groups:

- *inside the groups*: the members of the groups of more than one image are shuffled on their
  representative, so each partition holds whole groups, and ``expand_pairs`` of a local
  :class:`~dedupdask.analyses.exact.ExactGroups` (no pairs) gives their exact pairs;
- *across groups*: each partition of accepted pairs asks for the members of the groups it
  names (one request per distinct representative, answered by a merge with the members and
  routed back), and ``expand_pairs`` of a local ``ExactGroups`` over those images expands
  its pairs (its own inside-group pairs are dropped: they come from the first part).

A member pair comes from one representative pair only, so no step needs the whole table to
remove duplicates. The result is then named (:mod:`dedupdask.analyses.names_dask`) and sorted
like ``expand_pairs`` (similarity descending, ``from``, ``to``) on the workers, by one int64
key (:func:`pair_key`, :func:`dedupdask.analyses.routing.sort_by_key`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..match_record import RECORD_COLUMNS
from .exact import ExactGroups
from .names import PAIR_NAMES, named_columns
from .names_dask import join_names
from .outliers_dask import order_key
from .routing import numbered, route, shuffle_method, sort_by_key
from .similarity import MAX_GROUP_PAIRS, SIMILARITY_COLUMNS
from .tiers import DECIDED_COLUMNS, expand_pairs

__all__ = ["INDEX_BITS", "candidates_frame", "members_by_group", "pair_key", "similarity_frame"]

INDEX_BITS = 31
"""Global indices below ``2**INDEX_BITS`` fit in the sort keys (2.1 billion images)."""

_I64 = np.int64
_PAIR_COLS = ("from", "to", "similarity", "copy_similarity", "kind", "verify_score", *RECORD_COLUMNS)
_SORT = "_sort_key"


def pair_key(similarity: np.ndarray, first: np.ndarray, *, descending: bool = True) -> np.ndarray:
    """int64 keys ordering rows by ``similarity`` (descending or not), then ``first``.

    The float32 similarity's order-preserving 32 bits (:func:`order_key`) above
    :data:`INDEX_BITS` bits of the index: one sort column, so that a Dask sort (which splits
    on its first column) never puts every row of one similarity in one partition.

    Examples
    --------
    >>> k = pair_key(np.float32([0.5, 1.0, 1.0]), np.array([3, 7, 2]))
    >>> k.argsort().tolist()
    [2, 1, 0]
    """
    first = np.asarray(first, dtype=_I64)
    if first.size and (first.min() < 0 or first.max() >= 1 << INDEX_BITS):
        raise ValueError(f"global index outside 0..2**{INDEX_BITS} cannot be sorted on the workers")
    key = order_key(np.asarray(similarity, dtype=np.float32)).astype(_I64)
    if descending:
        key = 0xFFFFFFFF - key
    return (key << INDEX_BITS) | first


def members_by_group(exact: Any) -> Any:
    """``index, rep`` of the images in exact groups of more than one image, shuffled on
    ``rep``: every group whole in one partition."""
    multi = exact[exact["group_size"] > 1][["index", "rep"]]
    return multi.shuffle(on="rep", npartitions=exact.npartitions, shuffle_method=shuffle_method())


def _local_groups(ids: np.ndarray, index: np.ndarray, rep: np.ndarray) -> ExactGroups:
    """Exact groups over the positions of ``ids`` (sorted): ``index`` belongs to ``rep``'s."""
    local = np.arange(ids.size, dtype=_I64)
    local[np.searchsorted(ids, index)] = np.searchsorted(ids, rep)
    return ExactGroups(local)


def _pair_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "from": pd.Series(dtype=_I64), "to": pd.Series(dtype=_I64),
            "similarity": pd.Series(dtype="float32"), "copy_similarity": pd.Series(dtype="float32"),
            "kind": pd.Series(dtype="string"), "verify_score": pd.Series(dtype="float32"),
            **{c: pd.Series(dtype=d) for c, d in RECORD_COLUMNS.items()},
        }
    )  # fmt: skip


def _expanded(groups: ExactGroups, ids: np.ndarray, pairs: pd.DataFrame, cap: int) -> pd.DataFrame:
    """``expand_pairs`` over local positions, back in global indices (no filenames)."""
    out = expand_pairs(groups, pairs, np.full(groups.n, "", dtype=object), max_group_pairs=cap)
    out = out.loc[:, list(_PAIR_COLS)].reset_index(drop=True)
    out["from"] = ids[out["from"].to_numpy(dtype=_I64)]
    out["to"] = ids[out["to"].to_numpy(dtype=_I64)]
    return out.astype(_pair_meta().dtypes.to_dict())


def _within(members: pd.DataFrame, cap: int) -> pd.DataFrame:
    """The exact pairs of the whole groups of one partition."""
    index = members["index"].to_numpy(dtype=_I64)
    rep = members["rep"].to_numpy(dtype=_I64)
    ids = np.unique(np.concatenate([index, rep]))
    none = _pair_meta()
    return _expanded(_local_groups(ids, index, rep), ids, none, cap)


def _needs(pairs: pd.DataFrame, partition_info: dict | None = None) -> pd.DataFrame:
    """One request per distinct representative named by a partition of pairs."""
    reps = np.unique(np.concatenate([pairs["from"].to_numpy(_I64), pairs["to"].to_numpy(_I64)]))
    part = partition_info["number"] if partition_info else 0
    return pd.DataFrame({"rep": reps, "_part": np.full(reps.size, part, dtype=_I64)})


def _across(pairs: pd.DataFrame, members: pd.DataFrame, cap: int) -> pd.DataFrame:
    """One partition of accepted pairs expanded to the members of both groups."""
    if not len(pairs):
        return _pair_meta()
    pairs = pairs.reset_index(drop=True)
    a, b = pairs["from"].to_numpy(_I64), pairs["to"].to_numpy(_I64)
    index = members["index"].to_numpy(dtype=_I64)
    rep = members["rep"].to_numpy(dtype=_I64)
    ids = np.unique(np.concatenate([a, b, index, rep]))
    groups = _local_groups(ids, index, rep)
    local = pairs.assign(**{"from": np.searchsorted(ids, a), "to": np.searchsorted(ids, b)})
    out = expand_pairs(groups, local, np.full(ids.size, "", dtype=object), max_group_pairs=cap)
    lo, hi = out["from"].to_numpy(dtype=_I64), out["to"].to_numpy(dtype=_I64)
    out = out[groups.rep[lo] != groups.rep[hi]]  # inside-group pairs: from _within
    out = out.loc[:, list(_PAIR_COLS)].reset_index(drop=True)
    out["from"] = ids[out["from"].to_numpy(dtype=_I64)]
    out["to"] = ids[out["to"].to_numpy(dtype=_I64)]
    return out.astype(_pair_meta().dtypes.to_dict())


def similarity_frame(
    exact: Any,
    decided: Any,
    names: Any,
    *,
    max_group_pairs: int = MAX_GROUP_PAIRS,
) -> Any:
    """The similarity table (``expand_pairs`` + ``add_names``) on the workers.

    Parameters
    ----------
    exact : dask.dataframe.DataFrame
        The exact groups' table (:func:`dedupdask.analyses.exact_dask.exact_groups_dask`).
    decided : dask.dataframe.DataFrame
        :attr:`dedupdask.analyses.tierframes.TierFrames.decided`.
    names : dask.dataframe.DataFrame or None
        :func:`dedupdask.analyses.names_dask.names_frame` (None: no valid image).
    max_group_pairs : int
        Largest group expansion written in full.

    Returns
    -------
    dask.dataframe.DataFrame
        Columns :data:`SIMILARITY_COLUMNS` then the names of both images, sorted by
        similarity descending, then ``from``, ``to``; not computed.

    Examples
    --------
    >>> similarity_frame(exact, tiers.decided, names_frame(col)).head()  # doctest: +SKIP
    """
    import dask.dataframe as dd

    columns = [*SIMILARITY_COLUMNS, *named_columns(PAIR_NAMES)]
    acc = decided[decided["accepted"]][list(_PAIR_COLS)]
    members = members_by_group(exact)
    within = members.map_partitions(_within, max_group_pairs, meta=_pair_meta(), enforce_metadata=False)
    tagged, divisions = numbered(acc)
    needs = acc.map_partitions(_needs, meta=pd.DataFrame({"rep": _I64(0), "_part": _I64(0)}, index=[]))
    found = needs.merge(members, on="rep", how="inner", shuffle_method=shuffle_method())
    back = route(found[["_part", "index", "rep"]], "_part", divisions)
    across = tagged.map_partitions(
        _across, back, max_group_pairs, meta=_pair_meta(), align_dataframes=False,
        enforce_metadata=False,
    )  # fmt: skip
    pairs = dd.concat([across, within])
    if names is None:  # no valid image: no pair
        return pairs.assign(**{c: pd.Series(dtype="string") for c in columns[len(_PAIR_COLS) :]})[columns]
    named = join_names(pairs, names, PAIR_NAMES, filename={"from": "filename_from", "to": "filename_to"})
    named = named.map_partitions(_with_key, meta=named._meta.assign(**{_SORT: _I64(0)}))
    return sort_by_key(named, _SORT, ["to"])[columns]


def candidates_frame(decided: Any, names: Any) -> Any:
    """The candidates table on the workers: every candidate pair of representatives the tiers
    decided (:data:`~dedupdask.analyses.tiers.DECIDED_COLUMNS`: accepted or not, verified or
    not, with the match record), with the names of both images, most similar first.

    Examples
    --------
    >>> candidates_frame(tiers.decided, names_frame(col)).head()  # doctest: +SKIP
    """
    columns = [*DECIDED_COLUMNS, *named_columns(PAIR_NAMES)]
    if names is None:  # no valid image: no pair
        return decided.assign(**{c: pd.Series(dtype="string") for c in named_columns(PAIR_NAMES)})[columns]
    named = join_names(decided[list(DECIDED_COLUMNS)], names, PAIR_NAMES)
    named = named.map_partitions(_with_key, meta=named._meta.assign(**{_SORT: _I64(0)}))
    return sort_by_key(named, _SORT, ["to"])[columns]


def _with_key(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(**{_SORT: pair_key(df["similarity"].to_numpy(np.float32), df["from"].to_numpy(_I64))})
