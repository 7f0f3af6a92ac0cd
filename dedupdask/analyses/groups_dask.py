"""Analysis stage, outlier groups on the workers: the ``outlier`` issue type without per-image state here.

The same groups, scores and nearest images as :func:`dedupdask.analyses.groups.outlier_groups`
from the exact groups' table and the kNN graph table (:mod:`dedupdask.analyses.graph`), both
Dask DataFrames that stay on the workers:

1. the groups are the connected components of the graph's edges at or above ``link`` and of
   the exact groups (:func:`~dedupdask.analyses.components_dask.components_table_dask`: a
   group's id is its smallest index); its distinct pictures are counted at the group's id;
2. every graph row learns the groups of both its images where it is (one request per
   distinct image and partition, :func:`~dedupdask.analyses.routing.ask`: an image in
   millions of neighbour lists is asked for once per partition); a row between two groups
   is a candidate for both groups' nearest image outside, the best per group kept in each
   partition and then found at the group's id; a representative whose whole list is inside
   its group gives a bound;
3. the members to compare with every image (up to
   :data:`~dedupdask.analyses.groups.QUERIES_PER_GROUP` per small group, highest bound first)
   are chosen per group on the workers and searched there, at most ``max_searched`` of them
   (:func:`~dedupdask.analyses.groups_search.search_members`: only their counts come here);
4. every image looks its group's best up (:func:`~dedupdask.analyses.routing.lookup`).

:func:`outlier_frame` gives one row per image (``index, group, size, pictures, similarity,
nearest``); :func:`outlier_rows` the issue rows; :func:`outlier_about` what ``run.json`` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .components_dask import components_table_dask
from .groups import QUERIES_PER_GROUP, OutlierGroups
from .groups_search import search_members
from .issues import outlier_issues
from .routing import NODE, ask, find, locate, lookup, route

if TYPE_CHECKING:
    from ..collect import Collection

__all__ = ["OUTLIER_FRAME_COLUMNS", "outlier_about", "outlier_frame", "outlier_rows"]

OUTLIER_FRAME_COLUMNS = ("index", "group", "size", "pictures", "similarity", "nearest")

_I64 = np.int64
_NONE = np.int64(-1)


def _pack(sim: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(float32 similarity, index) as one int64 (-1 = none) for :func:`lookup`."""
    bits = np.asarray(sim, dtype=np.float32).view(np.uint32).astype(_I64)
    return np.where((idx >= 0) & np.isfinite(sim), (bits << 31) | (np.asarray(idx, _I64) + 1), _NONE)


def _unpack(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(v, dtype=_I64)
    none = v < 0
    sim = ((v >> 31) & 0xFFFFFFFF).astype(np.uint32).view(np.float32).copy()
    idx = (v & ((1 << 31) - 1)) - 1
    sim[none], idx[none] = np.nan, -1
    return sim, idx


def _best_per_label(lab: np.ndarray, sim: np.ndarray, idx: np.ndarray) -> pd.DataFrame:
    """Per label: the most similar candidate, ties by smaller index (``_take_best``'s rule)."""
    ok = np.isfinite(sim) & (idx >= 0)
    lab, sim, idx = lab[ok], sim[ok], idx[ok]
    order = np.lexsort((idx, -sim, lab))
    lab, sim, idx = lab[order], sim[order], idx[order]
    top = np.r_[True, lab[1:] != lab[:-1]] if lab.size else np.zeros(0, bool)
    return pd.DataFrame({"label": lab[top], "sim": sim[top].astype(np.float32), "other": idx[top]})


def _state(exact: pd.DataFrame, comp: pd.DataFrame) -> pd.DataFrame:
    """One partition of images: its group (component) and whether it is a representative."""
    return pd.DataFrame(
        {
            "group": comp["component_id"].to_numpy(dtype=_I64),
            "size": comp["component_size"].to_numpy(dtype=_I64),
            "is_rep": exact["rep"].to_numpy(dtype=_I64) == exact["index"].to_numpy(dtype=_I64),
        },
        index=pd.Index(exact["index"].to_numpy(dtype=_I64), name=NODE),
    )


def _picture_counts(state: pd.DataFrame) -> pd.DataFrame:
    g, c = np.unique(state["group"].to_numpy(dtype=_I64)[state["is_rep"].to_numpy()], return_counts=True)
    return pd.DataFrame({"group": g, "count": c.astype(_I64)})


def _sum_pictures(state: pd.DataFrame, got: pd.DataFrame) -> pd.DataFrame:
    at = np.zeros(len(state), dtype=_I64)
    if len(got):
        np.add.at(at, find(state.index.to_numpy(dtype=_I64), got.index.to_numpy(dtype=_I64), "group"),
                  got["count"].to_numpy(dtype=_I64))  # fmt: skip
    return state.assign(pictures_at=at)


def _edge_candidates(rows: pd.DataFrame) -> pd.DataFrame:
    """Both groups of every row between two groups: (label, similarity, image outside)."""
    cross = rows["g_from"].to_numpy(dtype=_I64) != rows["g_to"].to_numpy(dtype=_I64)
    r = rows[cross]
    s = r["similarity"].to_numpy(dtype=np.float32)
    return pd.DataFrame(
        {
            "label": np.concatenate([r["g_from"].to_numpy(_I64), r["g_to"].to_numpy(_I64)]),
            "sim": np.concatenate([s, s]),
            "other": np.concatenate([r["to"].to_numpy(_I64), r["from"].to_numpy(_I64)]),
        }
    )


def _local_best(cands: pd.DataFrame) -> pd.DataFrame:
    c = cands.reset_index()
    return _best_per_label(c["label"].to_numpy(_I64), c["sim"].to_numpy(np.float32), c["other"].to_numpy(_I64))


def _rep_stats(rows: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per representative (``from``): its list is full and all inside its group -> bound."""
    frm = rows["from"].to_numpy(dtype=_I64)
    reps, first, count = np.unique(frm, return_index=True, return_counts=True)
    cross = rows["g_from"].to_numpy(dtype=_I64) != rows["g_to"].to_numpy(dtype=_I64)
    has = np.zeros(reps.size, bool)
    np.logical_or.at(has, np.searchsorted(reps, frm), cross)
    rank = rows["rank"].to_numpy(dtype=_I64)
    last = rows["similarity"].to_numpy(dtype=np.float32)[rank == k - 1]
    last_of = frm[rank == k - 1]
    bound = np.full(reps.size, np.nan, np.float32)
    full = (count == k) & (k > 0) & ~has
    pos, ok = locate(reps, last_of)
    bound[pos[ok]] = last[ok]
    bound[~full] = np.nan
    return pd.DataFrame({"rep": reps, "bound": bound})


def _with_best(state: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """``best_at``: the packed best candidate of the groups whose id is in this partition."""
    at = np.full(len(state), _NONE, dtype=_I64)
    if len(best):
        pos = find(state.index.to_numpy(dtype=_I64), best.index.to_numpy(dtype=_I64), "group")
        at[pos] = _pack(best["sim"].to_numpy(np.float32), best["other"].to_numpy(_I64))
    return state.assign(best_at=at)


def _needs(state: pd.DataFrame, stats: pd.DataFrame, max_size: int, below: float | None) -> pd.DataFrame:
    """The representatives that could beat their group's best by a search: (group, bound, rep)."""
    s = stats.reset_index()  # the representatives were routed: ``rep`` is the index
    if not len(s):
        return pd.DataFrame({"group": pd.Series(dtype=_I64), "bound": pd.Series(dtype=np.float32),
                             "rep": pd.Series(dtype=_I64)})  # fmt: skip
    pos = find(state.index.to_numpy(dtype=_I64), s["rep"].to_numpy(dtype=_I64), "representative")
    g_best, _ = _unpack(state["group_best"].to_numpy(dtype=_I64)[pos])
    small = state["pictures"].to_numpy(dtype=_I64)[pos] <= max_size
    bound = s["bound"].to_numpy(dtype=np.float32)
    with np.errstate(invalid="ignore"):
        need = small & np.isfinite(bound) & ~(g_best >= bound)
        if below is not None:
            need &= ~(g_best >= np.float32(below))
    return pd.DataFrame(
        {"group": state["group"].to_numpy(dtype=_I64)[pos][need], "bound": bound[need],
         "rep": s["rep"].to_numpy(dtype=_I64)[need]}
    )  # fmt: skip


def _chosen(needs: pd.DataFrame) -> pd.DataFrame:
    """Up to QUERIES_PER_GROUP per group: highest bound first, then smaller index."""
    n = needs.reset_index()
    n = n.sort_values(["group", "bound", "rep"], ascending=[True, False, True], kind="stable")
    n = n.groupby("group", sort=False).head(QUERIES_PER_GROUP)
    return pd.DataFrame(
        {"rep": n["rep"].to_numpy(_I64), "group": n["group"].to_numpy(_I64), "bound": n["bound"].to_numpy(np.float32)}
    )


def _final(state: pd.DataFrame) -> pd.DataFrame:
    sim, near = _unpack(state["final_best"].to_numpy(dtype=_I64))
    return pd.DataFrame(
        {
            "index": state.index.to_numpy(dtype=_I64),
            "group": state["group"].to_numpy(dtype=_I64),
            "size": state["size"].to_numpy(dtype=_I64),
            "pictures": state["pictures"].to_numpy(dtype=_I64),
            "similarity": sim,
            "nearest": near,
        }
    )


def outlier_frame(
    col: Collection,
    exact: Any,
    graph: Any,
    names: Any,
    n: int,
    k: int,
    *,
    link: float,
    max_size: int,
    below: float | None,
    search: bool,
    max_searched: int,
) -> tuple[Any, int, int]:
    """Every image's outlier group and the group's nearest image outside it, on the workers.

    Parameters
    ----------
    col : Collection
        The done archives (their vectors, for the search).
    exact : dask.dataframe.DataFrame
        The exact groups' table (known divisions).
    graph : dask.dataframe.DataFrame
        The kNN graph over the exact representatives, ``k`` wide.
    names : dask.dataframe.DataFrame
        :func:`dedupdask.analyses.names_dask.names_frame` (its divisions are the archives').
    n, k : int
        Images, and neighbours per list.
    link, max_size, below, search, max_searched
        As :func:`dedupdask.analyses.groups.outlier_groups` (``search``: compare closed groups'
        members with every image, at most ``max_searched`` of them).

    Returns
    -------
    (dask.dataframe.DataFrame, int, int)
        :data:`OUTLIER_FRAME_COLUMNS` per image (partitioned like ``exact``, persisted), the
        number of members compared with every image and the number the cap left out.

    Examples
    --------
    >>> og, searched, left = outlier_frame(col, exact, graph, names, n, 5, link=0.9, max_size=10,
    ...                                    below=0.5, search=True, max_searched=100)  # doctest: +SKIP
    """
    import dask
    import dask.dataframe as dd

    divs = tuple(int(d) for d in exact.divisions)
    strong = graph[graph["similarity"] >= np.float32(link)][["from", "to"]]
    links = exact[exact["rep"] != exact["index"]]
    links = links.assign(**{"from": links["index"], "to": links["rep"]})[["from", "to"]]
    comp = components_table_dask(dd.concat([strong, links]), n).table
    meta = pd.DataFrame({"group": _I64(0), "size": _I64(0), "is_rep": False}, index=pd.Index([], dtype=_I64, name=NODE))
    state = exact.map_partitions(_state, comp, meta=meta, align_dataframes=False, enforce_metadata=False)
    counts = state.map_partitions(_picture_counts, meta=pd.DataFrame({"group": _I64(0), "count": _I64(0)}, index=[]))
    state = state.map_partitions(_sum_pictures, route(counts, "group", divs), align_dataframes=False,
                                 meta=meta.assign(pictures_at=_I64(0)), enforce_metadata=False)  # fmt: skip
    state = lookup(state, "group", "pictures_at", "pictures")

    # each graph row learns both ends' groups where it is (a hub's group is asked once per partition)
    rows = ask(graph[["from", "to", "similarity", "rank"]], state, "group", {"to": "g_to", "from": "g_from"})
    (rows, state) = dask.persist(rows, state)
    cand_meta = pd.DataFrame({"label": _I64(0), "sim": np.float32(0), "other": _I64(0)}, index=[])
    cands = rows.map_partitions(_edge_candidates, meta=cand_meta)
    cands = cands.map_partitions(_local_best, meta=cand_meta)  # one row per group and partition
    best = route(cands, "label", divs).map_partitions(_local_best, meta=cand_meta)
    best = route(best, "label", divs)
    state = state.map_partitions(_with_best, best, align_dataframes=False, meta=state._meta.assign(best_at=_I64(0)),
                                 enforce_metadata=False)  # fmt: skip
    state = lookup(state, "group", "best_at", "group_best")
    stats = rows.map_partitions(_rep_stats, k, meta=pd.DataFrame({"rep": _I64(0), "bound": np.float32(0)}, index=[]))
    stats = route(stats, "rep", divs)  # one row per representative, to its partition of ``state``
    state, stats = dask.persist(state, stats)

    searched = unsearched = 0
    found = None
    if search:
        need_meta = pd.DataFrame({"group": _I64(0), "bound": np.float32(0), "rep": _I64(0)}, index=[])
        needs = state.map_partitions(_needs, stats, max_size, below, meta=need_meta, align_dataframes=False,
                                     enforce_metadata=False)  # fmt: skip
        chosen = route(needs, "group", divs).map_partitions(
            _chosen, meta=pd.DataFrame({"rep": _I64(0), "group": _I64(0), "bound": np.float32(0)}, index=[])
        )  # a few per closed group, left on the workers
        found, searched, unsearched = search_members(col, names, state, chosen, max_searched)
    if found is not None:
        more = dd.concat([cands, found.map_partitions(_local_best, meta=cand_meta)])
        best = route(more, "label", divs).map_partitions(_local_best, meta=cand_meta)
        best = route(best, "label", divs)
        state = state.map_partitions(_with_best, best, align_dataframes=False,
                                     meta=state._meta.assign(best_at=_I64(0)), enforce_metadata=False)  # fmt: skip
        state = state.drop(columns=["group_best"])
        state = lookup(state, "group", "best_at", "final_best")
    else:
        state = state.assign(final_best=state["group_best"])
    meta = pd.DataFrame({"index": _I64(0), "group": _I64(0), "size": _I64(0), "pictures": _I64(0),
                         "similarity": np.float32(0), "nearest": _I64(0)}, index=[])  # fmt: skip
    (out,) = dask.persist(state.map_partitions(_final, meta=meta, enforce_metadata=False))
    return out, searched, unsearched


def _issue_rows(og: pd.DataFrame, cutoff: float | None, max_size: int) -> pd.DataFrame:
    groups = OutlierGroups(
        og["group"].to_numpy(_I64), og["size"].to_numpy(_I64), og["pictures"].to_numpy(_I64),
        og["similarity"].to_numpy(np.float32), og["nearest"].to_numpy(_I64),
    )  # fmt: skip
    rows = outlier_issues(groups, cutoff, max_size)
    rows["index"] = og["index"].to_numpy(_I64)[rows["index"].to_numpy(_I64)]
    return rows


def outlier_rows(og: Any, cutoff: float | None, max_size: int) -> Any:
    """The ``outlier`` issue rows (``index, issue, score, other, group``) of
    :func:`outlier_frame`, partition by partition (:func:`~dedupdask.analyses.issues.outlier_issues`)."""
    empty = OutlierGroups(*(np.empty(0, t) for t in (_I64, _I64, _I64, np.float32, _I64)))
    return og.map_partitions(_issue_rows, cutoff, max_size, meta=outlier_issues(empty, cutoff, max_size))


def _about_sums(og: pd.DataFrame, max_size: int) -> tuple[np.ndarray, int]:
    size = og["size"].to_numpy(_I64)
    root = og["group"].to_numpy(_I64) == og["index"].to_numpy(_I64)
    flagged = og["pictures"].to_numpy(_I64) <= max_size
    return np.array([(root & (size > 1)).sum(), (size > 1).sum()], dtype=_I64), (
        int(size[flagged].max()) if flagged.any() else 0
    )


def outlier_about(og: Any, max_size: int, searched: int, unsearched: int) -> dict[str, int]:
    """``run.json``'s ``outlier_groups`` of :func:`outlier_frame` (sums of per-partition counts)."""
    import dask

    parts = dask.compute(*[dask.delayed(_about_sums)(p, max_size) for p in og.to_delayed()])
    sums = np.sum([p[0] for p in parts], axis=0)
    return {
        "groups": int(sums[0]),
        "images_in_groups": int(sums[1]),
        "searched_members": int(searched),
        "largest_labelled": max((p[1] for p in parts), default=0),
        "unsearched_members": int(unsearched),
    }
