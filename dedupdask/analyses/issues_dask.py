"""Analysis stage, the issues table on the workers.

The same rows and order as :func:`dedupdask.analyses.issues.issues_table`, as a Dask
DataFrame that is never gathered:

- the statistics types: :func:`~dedupdask.analyses.issues.issues_frame`, one task per
  archive (the median side and the unscored counts come first, one small row per archive:
  :func:`~dedupdask.analyses.issues.stat_inputs`);
- ``<kind>_duplicate``: both ends of every similarity row
  (:func:`~dedupdask.analyses.issues.pair_ends`) shuffled on the image, so that each
  partition holds every pair of its images, then
  :func:`~dedupdask.analyses.issues.best_partners` there;
- ``outlier``: rows made by the caller (the outlier groups, see :mod:`dedupdask.analysis`),
  named on the workers like the duplicate rows (:func:`dedupdask.analyses.names_dask.join_names`);
- the order (issue type, score, index) by a sort on the workers on one int64 key
  (:func:`issue_key`, :func:`dedupdask.analyses.routing.sort_by_key`).

:func:`issue_counts` gives ``run.json``'s per-type counts and the number of images with a
non-duplicate issue, computed on the workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .issues import ISSUE_COLUMNS, STAT_ISSUES, best_partners, empty_issues, pair_ends
from .names_dask import join_names
from .routing import partition_sums, route, sort_by_key
from .tiers import KINDS

__all__ = ["ISSUE_ORDER", "duplicate_frame", "issue_counts", "issue_key", "issues_dask"]

ISSUE_ORDER = (*STAT_ISSUES, "outlier", *sorted(f"{k}_duplicate" for k in KINDS))
"""Issue types in the table's order (``issues_table``: statistics types, ``outlier``, then
the other types by name)."""

_I64 = np.int64
_SCORE_BITS, _INDEX_BITS = 21, 37
_SORT = "_sort_key"


def issue_key(issue: pd.Series, score: np.ndarray, index: np.ndarray) -> np.ndarray:
    """int64 keys ordering issue rows by type (:data:`ISSUE_ORDER`), score, index.

    Scores are rounded to 6 decimals, so ``round(score * 1e6)`` (21 bits) keeps their order.

    Examples
    --------
    >>> k = issue_key(pd.Series(["outlier", "dark", "dark"]), np.float32([0.1, 0.5, 0.2]),
    ...               np.array([4, 1, 9]))
    >>> k.argsort().tolist()
    [2, 1, 0]
    """
    rank = pd.Series(issue, dtype="string").map({t: i for i, t in enumerate(ISSUE_ORDER)})
    if rank.isna().any():
        raise ValueError(f"unknown issue type(s): {sorted(set(issue[rank.isna()].tolist()))}")
    s = np.round(np.asarray(score, dtype=np.float64) * 1e6)
    index = np.asarray(index, dtype=_I64)
    if s.size and (not np.isfinite(s).all() or s.min() < 0 or s.max() >= 1 << _SCORE_BITS):
        raise ValueError("issue scores must lie in [0, 1]")
    if index.size and (index.min() < 0 or index.max() >= 1 << _INDEX_BITS):
        raise ValueError(f"global index outside 0..2**{_INDEX_BITS}")
    r = rank.to_numpy(dtype=_I64)
    return (r << (_SCORE_BITS + _INDEX_BITS)) | (s.astype(_I64) << _INDEX_BITS) | index


def _other_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": pd.Series(dtype=_I64), "issue": pd.Series(dtype="string"),
            "score": pd.Series(dtype="float32"), "other": pd.Series(dtype="Int64"),
            "group": pd.Series(dtype="Int64"),
        }
    )  # fmt: skip


def _typed_other(df: pd.DataFrame) -> pd.DataFrame:
    return df.reindex(columns=list(_other_meta().columns)).astype(_other_meta().dtypes.to_dict())


def _ends(sim: pd.DataFrame) -> pd.DataFrame:
    """Both ends of this partition's pairs, already reduced to the best per image and kind
    (:func:`best_partners`' order): an image in a million pairs sends one row per partition."""
    ends = pair_ends(sim)
    ends = ends.sort_values(["kind", "index", "sim", "other"], ascending=[True, True, False, True], kind="stable")
    return ends.drop_duplicates(["kind", "index"]).reset_index(drop=True)


def _best_here(ends: pd.DataFrame) -> pd.DataFrame:
    if not len(ends):
        return _other_meta()
    return _typed_other(best_partners(ends.reset_index()))


def duplicate_frame(similarity: Any, divisions: tuple[int, ...]) -> Any:
    """``index, issue, score, other, group`` of the ``<kind>_duplicate`` issues, on the workers.

    Parameters
    ----------
    similarity : dask.dataframe.DataFrame
        ``from, to, similarity, kind`` rows (any order and partitioning).
    divisions : tuple of int
        Index ranges of the partitions the ends are shuffled to (e.g. the exact table's).

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> s = dd.from_pandas(pd.DataFrame({"from": [0, 0], "to": [1, 2], "similarity": [1.0, 0.9],
    ...                                  "kind": ["exact", "near"]}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     duplicate_frame(s, (0, 1, 2)).compute()[["index", "issue", "other"]].values.tolist()
    [[0, 'exact_duplicate', 1], [0, 'near_duplicate', 2], [1, 'exact_duplicate', 0], [2, 'near_duplicate', 0]]
    """
    meta = pd.DataFrame(
        {"index": pd.Series(dtype=_I64), "kind": pd.Series(dtype="string"),
         "sim": pd.Series(dtype="float64"), "other": pd.Series(dtype=_I64)}
    )  # fmt: skip
    ends = similarity[["from", "to", "similarity", "kind"]].map_partitions(_ends, meta=meta)
    return route(ends, "index", divisions).map_partitions(_best_here, meta=_other_meta())


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reindex(columns=list(ISSUE_COLUMNS)).astype(empty_issues().dtypes.to_dict())
    key = issue_key(df["issue"], df["score"].to_numpy(np.float32), df["index"].to_numpy(_I64))
    return df.assign(**{_SORT: key})


def issues_dask(stat_rows: Any, other_rows: list[Any], names: Any) -> Any:
    """The issues table on the workers: ``stat_rows`` (named already) and ``other_rows``
    (``index, issue, score, other, group``, named here), sorted like ``issues_table``.

    Examples
    --------
    >>> issues_dask(issues_frame(files, cut, ref), [duplicate_frame(sim, divs)], names)  # doctest: +SKIP
    """
    import dask.dataframe as dd

    parts = [stat_rows]
    if names is not None and other_rows:
        other = dd.concat([o.map_partitions(_typed_other, meta=_other_meta()) for o in other_rows])
        parts.append(join_names(other, names, {"index": ""}, filename={"index": "filename"}))
    table = dd.concat(parts).map_partitions(_keyed, meta=empty_issues().assign(**{_SORT: _I64(0)}))
    return sort_by_key(table, _SORT)[list(ISSUE_COLUMNS)]


def _type_counts(df: pd.DataFrame) -> np.ndarray:
    counts = df["issue"].value_counts()
    return np.array([int(counts.get(t, 0)) for t in ISSUE_ORDER], dtype=_I64)


def _distinct(df: pd.DataFrame) -> np.ndarray:
    return np.array([df.index.nunique()], dtype=_I64)


def issue_counts(issues: Any, divisions: tuple[int, ...]) -> tuple[dict[str, int], int]:
    """Rows per issue type (in :data:`ISSUE_ORDER`, types present only) and the images with
    an issue other than a duplicate, computed on the workers (the latter by routing those rows'
    indices to the partitions of ``divisions``); only counts come here.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> t = dd.from_pandas(pd.DataFrame({"index": [1, 1, 2], "issue": ["dark", "light", "near_duplicate"]}),
    ...                    npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     issue_counts(t, (0, 1, 3))
    ({'dark': 1, 'light': 1, 'near_duplicate': 1}, 1)
    """
    per_type = partition_sums(issues[["issue"]], _type_counts)
    kept = issues[~issues["issue"].str.endswith("_duplicate")][["index"]]
    kept = kept.assign(_at=kept["index"])
    images = partition_sums(route(kept, "_at", divisions), _distinct)
    counts = {t: int(c) for t, c in zip(ISSUE_ORDER, per_type, strict=True) if c}
    return counts, int(images[0])
