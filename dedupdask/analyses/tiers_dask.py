"""Analysis stage, duplicate tiers on the workers: graph tables in, decided pairs and edges out.

The same decisions as :func:`dedupdask.fusion.run_tiers` (the in-process tiers), from Dask
DataFrames that are never gathered: the embedding graph of the input representatives and the
DCT graph as graph tables (:mod:`dedupdask.analyses.graph`), the exact and input groups as
``index, rep, group_size`` tables (:mod:`dedupdask.analyses.exact_dask`), and ``col.files()``.
Every rule is the in-process one, applied per partition (:mod:`dedupdask.analyses.tiers`):

1. **expand**: the embedding graph becomes the exact representatives' graph
   (:func:`dedupdask.analyses.expand_dask.expand_graph_frame`); each row keeps both ends'
   input representatives;
2. **dct**: the DCT graph of the exact representatives (:func:`dct_graph_frame`); and, with a
   ``whitened_threshold``, the kNN graph of the run's whitened embedding over the input
   representatives, expanded like the embedding graph (:func:`whitened_graph_frame`);
3. **pairs**: the edges of the graphs at or above their cuts are shuffled on ``from`` (the
   smaller index) so that the two directions of a pair and both graphs' views of it meet;
   each partition makes its unique candidate pairs (:func:`~.tiers.unique_pairs`,
   :func:`~.tiers.merge_candidates`), marks pairs of equal model inputs, reads the cosines no
   graph gave from the vectors of just those rows, and decides (:func:`~.tiers.decide`);
4. **verify**: the pairs to verify are scored where they lie
   (:func:`dedupdask.verify_frames.verify_frame`), the scores go back to their partition,
   which decides again;
5. **edges** of the components (:func:`~.tiers.fused_edges`) in the same partitions, and the
   counts, summed from one record per partition.

The client holds scalars and one record per partition; the decided pairs stay on the
workers (persisted).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import pandas as pd

from ..fusion import DCT_DIM, dct_vectors, pair_cosines
from ..knn import DEFAULT_RANDOM_STATE
from ..knn_incremental import scores_identity
from ..verify import finish_cost
from ..verify_frames import verify_frame
from ..whitening import run_whitening
from .expand_dask import expand_graph_frame, sibling_frame
from .graph import GRAPH_COLUMNS
from .routing import ask, route, shuffle_method
from .tierframes import TierFrames
from .tiers import (
    DECIDED_DTYPES,
    TIER_K,
    TierParams,
    candidate_cut,
    decide,
    decided_columns,
    fused_edges,
    merge_candidates,
    stands_out,
    tier_counts,
    unique_pairs,
    verified_counts,
)

__all__ = ["TierFrames", "dct_graph_frame", "run_tiers_frames", "whitened_graph_frame"]

_I64 = np.int64
_DECISION = ("kind", "direct", "to_verify", "accepted")


def dct_graph_frame(
    col: Any,
    exact: Any,
    params: TierParams,
    *,
    method: str = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    knn_config: Any = None,
    graph_cache: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """The DCT kNN graph of the exact representatives as a graph table (None without a copy tier).

    The representatives stay a Dask Series on the workers
    (:func:`dedupdask.knn_partitioned.knn_graph_frame_work_dir`).

    Returns
    -------
    (dask.dataframe.DataFrame or None, dict)
        The graph and how it was computed.
    """
    from ..knn_partitioned import knn_graph_frame_work_dir

    reps = None if params.copy_threshold is None else _persisted_reps(exact)
    if reps is None:
        return None, {}
    graph, _, info = knn_graph_frame_work_dir(
        col, reps, params.k, config=knn_config, method=method, random_state=random_state,  # type: ignore[arg-type]
        which="dct", d=DCT_DIM, vectors=dct_vectors(col), cache=graph_cache, groups=exact[["index", "rep"]],
    )  # fmt: skip
    return graph, info


def whitened_graph_frame(
    col: Any, inputs: Any, params: TierParams, *, method: str = "auto",
    random_state: int = DEFAULT_RANDOM_STATE, knn_config: Any = None, graph_cache: Any = None,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The kNN graph of the run's whitened embedding over the input representatives (a graph
    table; None without a ``whitened_threshold``) and what to record of it.

    The whitening is fitted by one task on a sample (:func:`dedupdask.whitening.fit_whitening`)
    and applied where each task reads its rows; the graph is searched like the embedding
    graph, over the input representatives, and kept in ``graph_cache`` with its whitening
    (an incremental build searches only the new rows in the same space).
    """
    from ..knn_partitioned import knn_graph_frame_work_dir

    reps = None if params.whitened_threshold is None else _persisted_reps(inputs)
    if reps is None:
        return None, {}
    w, about = run_whitening(col, graph_cache, random_state=random_state)
    graph, _, info = knn_graph_frame_work_dir(
        col, reps, params.k, config=knn_config, method=method, random_state=random_state,  # type: ignore[arg-type]
        transform=w, cache=graph_cache, groups=inputs[["index", "rep"]],
    )  # fmt: skip
    return graph, {**about, "knn": info}


def _persisted_reps(groups: Any) -> Any:
    """The ``index`` of a group table's representatives, persisted on the workers (the kNN
    search counts and routes them); None when there is at most one (no pair to search)."""
    reps = groups[groups["index"] == groups["rep"]]["index"].persist()
    return reps if len(reps) > 1 else None


# -- per partition -------------------------------------------------------------------------------
_EDGE_META = pd.DataFrame(
    {
        "from": _I64(0),
        "to": _I64(0),
        "s": np.float32(0),
        "src": np.int8(0),
        "c_from": _I64(0),
        "c_to": _I64(0),
    },
    index=[],
)


def _emb_edges(part: pd.DataFrame, cut: float, src: int = 0, margin: float | None = None) -> pd.DataFrame:
    """Embedding graph rows at or above ``cut`` as edges ``from < to`` with both input reps
    (``src`` 2: the whitened graph's, with its ``margin``: rows standing out of their
    picture's :data:`~.tiers.TIER_K`-th neighbour, :func:`~.tiers.stands_out`; a partition
    holds whole rows)."""
    sim = part["similarity"].to_numpy(np.float32)
    keep = sim >= np.float32(cut)
    if margin is not None and len(part):
        last = part[part["rank"].to_numpy() == TIER_K - 1]
        last = last[~last["from"].duplicated()]
        background = pd.Series(last["similarity"].to_numpy(np.float32), index=last["from"].to_numpy(_I64))
        keep |= stands_out(sim, background.reindex(part["from"].to_numpy(_I64)).to_numpy(np.float32), margin)
    a, b = part["from"].to_numpy(_I64)[keep], part["to"].to_numpy(_I64)[keep]
    ca, cb = part["from_input"].to_numpy(_I64)[keep], part["to_input"].to_numpy(_I64)[keep]
    swap = a > b
    return pd.DataFrame(
        {
            "from": np.where(swap, b, a),
            "to": np.where(swap, a, b),
            "s": part["similarity"].to_numpy(np.float32)[keep],
            "src": np.full(a.size, src, np.int8),
            "c_from": np.where(swap, cb, ca),
            "c_to": np.where(swap, ca, cb),
        }
    )


def _dct_edges(part: pd.DataFrame, cut: float) -> pd.DataFrame:
    """DCT graph rows at or above ``cut`` as edges ``from < to`` (input reps filled in later)."""
    keep = part["similarity"].to_numpy(np.float32) >= np.float32(cut)
    a, b = part["from"].to_numpy(_I64)[keep], part["to"].to_numpy(_I64)[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return pd.DataFrame(
        {"from": lo, "to": hi, "s": part["similarity"].to_numpy(np.float32)[keep],
         "src": np.ones(a.size, np.int8), "c_from": lo, "c_to": hi}
    )  # fmt: skip


def _input_reps(edges: Any, inputs: Any) -> Any:
    """Set ``c_from``/``c_to`` to each end's input representative (itself unless its input
    group holds other exact groups), asked of ``inputs`` with one request per distinct end and
    partition (:func:`~dedupdask.analyses.routing.ask`): the edges stay where they are, so an
    image with thousands of DCT edges piles nothing onto one partition."""
    got = ask(edges.drop(columns=["c_from", "c_to"]), inputs, "rep", {"from": "c_from", "to": "c_to"})
    return got.map_partitions(_edge_order, meta=_EDGE_META, enforce_metadata=False)


def _edge_order(edges: pd.DataFrame) -> pd.DataFrame:
    return edges.loc[:, list(_EDGE_META.columns)]


def _candidates(
    part: pd.DataFrame, params: TierParams, partition_info: dict | None = None
) -> pd.DataFrame:
    """:func:`~.tiers.candidate_pairs` of the edges of one partition (all of its pairs' edges:
    ``src`` 0 embedding, 1 DCT, 2 whitened)."""
    src = part["src"].to_numpy(np.int8)
    s = part["s"].to_numpy(np.float32)
    frm, to = part["from"].to_numpy(_I64), part["to"].to_numpy(_I64)

    def pairs(rows: np.ndarray, column: str) -> pd.DataFrame:
        a, b, sim = unique_pairs(frm[rows], to[rows], s[rows])
        return pd.DataFrame({"from": a, "to": b, column: sim})

    emb = pairs((src == 0) & (s >= np.float32(candidate_cut(params))), "similarity")
    dct = pairs(src == 1, "copy_similarity") if params.copy_threshold is not None else None
    white = pairs(src == 2, "whitened_similarity") if params.whitened_threshold is not None else None
    out = merge_candidates(emb, dct, white)
    ins = part.loc[:, ["from", "to", "c_from", "c_to"]].drop_duplicates(["from", "to"])
    out = out.merge(ins, on=["from", "to"], how="left", sort=False)
    out["same_input"] = out["c_from"].to_numpy(_I64) == out["c_to"].to_numpy(_I64)
    out = out.drop(columns=["c_from", "c_to"])
    return out.assign(_part=_I64(partition_info["number"] if partition_info else 0))


def _cosines(part: pd.DataFrame, emb_rows: Any, dct_rows: Any) -> pd.DataFrame:
    """Fill the similarities no graph gave with the cosines of the two images' vectors."""
    out = part.copy()
    a, b = out["from"].to_numpy(_I64), out["to"].to_numpy(_I64)
    for col, rows in (("similarity", emb_rows), ("copy_similarity", dct_rows)):
        miss = out[col].isna().to_numpy()
        if rows is not None and miss.any():
            sims = out[col].to_numpy(np.float32).copy()
            sims[miss] = pair_cosines(rows, a[miss], b[miss])
            out[col] = sims
    return out


def _decide(part: pd.DataFrame, params: TierParams) -> pd.DataFrame:
    return decide(part, params)


def _redecide(part: pd.DataFrame, scores: pd.DataFrame, params: TierParams) -> pd.DataFrame:
    """Decide one partition again with its verification scores."""
    cands = part.drop(columns=list(_DECISION))
    scores = scores.reset_index(drop=True).loc[:, ["from", "to", *DECIDED_DTYPES]]
    out = decide(cands.merge(scores, on=["from", "to"], how="left", sort=False), params)
    return _final(out)


def _unverified(part: pd.DataFrame) -> pd.DataFrame:
    return decided_columns(part)  # no score, no record


def _as_scores(kept: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Scores an earlier build kept, in the columns and dtypes of this build's."""
    return kept.reindex(columns=list(meta.columns)).astype(meta.dtypes.to_dict())


def _final(out: pd.DataFrame) -> pd.DataFrame:
    return decided_columns(out)


def _component_edges(
    edges: pd.DataFrame, decided: pd.DataFrame, ccthreshold: float
) -> pd.DataFrame:
    """:func:`~.tiers.component_edges` of one partition (its kNN edges and decided pairs)."""
    e = (edges["src"].to_numpy(np.int8) == 0) & (
        edges["s"].to_numpy(np.float32) >= np.float32(ccthreshold)
    )
    a, b, _ = unique_pairs(
        edges["from"].to_numpy(_I64)[e],
        edges["to"].to_numpy(_I64)[e],
        edges["s"].to_numpy(np.float32)[e],
    )
    a, b = fused_edges(a, b, decided)
    return pd.DataFrame({"from": a.astype(_I64), "to": b.astype(_I64)})


def _counts(decided: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                **tier_counts(decided),
                **{f"verified_{k}": v for k, v in verified_counts(decided).items()},
            }
        ]
    )


# -- the stage ----------------------------------------------------------------------------------
def run_tiers_frames(
    col: Any,
    files: Any,
    exact: Any,
    inputs: Any,
    emb_graph: Any,
    params: TierParams,
    *,
    method: str = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    storage_options: dict[str, Any] | None = None,
    max_image_pixels: int = 100_000_000,
    max_member_bytes: int = 256 * 2**20,
    knn_config: Any = None,
    graph_cache: Any = None,
) -> TierFrames:
    """Find, verify and decide the tiered pairs of one run on the workers (current scheduler).

    Parameters
    ----------
    col : Collection
        The done archives.
    files : dask.dataframe.DataFrame
        ``col.files()`` (its partitions: ``col.partition_archives()``).
    exact, inputs : dask.dataframe.DataFrame
        ``index, rep, group_size`` of every valid image: the exact groups and the input
        groups (:func:`dedupdask.analyses.exact_dask.exact_groups_dask` with
        ``EXACT_KEYS`` / ``INPUT_KEYS``).
    emb_graph : dask.dataframe.DataFrame
        Graph table of the embedding kNN graph over the input representatives,
        ``params.k`` wide.
    params : TierParams
        Resolved thresholds.
    method, random_state
        kNN method and seed for the DCT graph.
    storage_options : dict, optional
        fsspec options for reading the archives.
    max_image_pixels, max_member_bytes : int
        Limits when reading images back.
    knn_config : RunConfig, optional
        ``max_memory_per_task`` of the DCT graph.
    graph_cache : GraphCache, optional
        The build's kept graphs (:mod:`dedupdask.knn_incremental`): the DCT graph is reused
        from it, or kept in it.

    Returns
    -------
    TierFrames

    Raises
    ------
    ValueError
        A frame without a column it needs; graph partitions out of ``from`` order; ``files``
        not partitioned as ``col.files()`` (when pairs are verified).

    Examples
    --------
    >>> t = run_tiers_frames(col, col.files(), exact, inputs, graph, params)  # doctest: +SKIP
    >>> t.counts["accepted_near"]  # doctest: +SKIP
    12
    """
    import dask
    import dask.dataframe as dd

    _check_columns(
        (emb_graph, "emb_graph", GRAPH_COLUMNS), (exact, "exact", ("index", "rep", "group_size")),
        (inputs, "inputs", ("index", "rep", "group_size")), (files, "files", ("index", "archive", "member")),
    )  # fmt: skip
    k = int(params.k)
    sib = sibling_frame(exact, inputs)
    n_sib = int(sib.shape[0].compute())
    graph = expand_graph_frame(emb_graph, exact, inputs, k, siblings=sib, n_siblings=n_sib)
    if n_sib:  # built by shuffles: kept on the workers for the tiers and the stages after them
        (graph,) = dask.persist(graph)
    dct_graph, dct_knn = dct_graph_frame(
        col, exact, params, method=method, random_state=random_state, knn_config=knn_config,
        graph_cache=graph_cache,
    )

    white_graph, white_about = whitened_graph_frame(
        col, inputs, params, method=method, random_state=random_state, knn_config=knn_config,
        graph_cache=graph_cache,
    )

    low = min(candidate_cut(params), params.ccthreshold)
    parts = [graph.map_partitions(_emb_edges, low, meta=_EDGE_META, enforce_metadata=False)]
    if white_graph is not None:  # expanded like the embedding graph: both ends' input reps
        white = expand_graph_frame(white_graph, exact, inputs, k, siblings=sib, n_siblings=n_sib)
        parts.append(white.map_partitions(
            _emb_edges, params.whitened_threshold, 2, params.whitened_margin, meta=_EDGE_META, enforce_metadata=False
        ))  # fmt: skip
    if dct_graph is not None:
        dct = dct_graph.map_partitions(
            _dct_edges, params.copy_threshold, meta=_EDGE_META, enforce_metadata=False
        )
        if n_sib:  # pairs of equal model inputs: both ends' input representatives
            dct = _input_reps(dct, inputs)
        parts.append(dct)
    edges = dd.concat(parts) if len(parts) > 1 else parts[0]
    edges = edges.shuffle(
        on="from", npartitions=max(1, graph.npartitions), shuffle_method=shuffle_method()
    )

    cand_meta = _candidates(_EDGE_META, params)
    cands = edges.map_partitions(_candidates, params, meta=cand_meta, enforce_metadata=False)
    emb_rows = dask.delayed(functools.partial(col.vector_rows), pure=True)
    dct_rows = None
    if params.copy_threshold is not None:
        dct_rows = dask.delayed(
            functools.partial(col.vector_rows, which="dct", d=DCT_DIM), pure=True
        )
    cands = cands.map_partitions(
        _cosines, emb_rows, dct_rows, meta=cand_meta, enforce_metadata=False
    )
    first_meta = decide(cand_meta, params)
    first = cands.map_partitions(_decide, params, meta=first_meta, enforce_metadata=False)
    edges, first = dask.persist(edges, first)
    n_verify = int(first["to_verify"].sum().compute())

    final_meta = _unverified(first_meta)
    cost: dict[str, Any] = {}
    if n_verify:
        t0 = time.perf_counter()
        todo = first[first["to_verify"]][["from", "to", "_part"]]
        ident = scores_identity(params, max_image_pixels, max_member_bytes)
        known, n_known = None, 0  # scores the last build kept (an incremental build)
        if graph_cache is not None:
            known = graph_cache.known_scores(graph_cache.previous_scores(ident), todo)
        if known is not None:
            (known,) = dask.persist(known)
            n_known = int(known.shape[0].compute())
        if n_known:  # verified again: only the pairs not kept
            todo = todo.merge(known[["from", "to"]].assign(_kept=True), on=["from", "to"], how="left")
            todo = todo[todo["_kept"].isna()][["from", "to", "_part"]]
        scores, cost = verify_frame(
            todo, files, _file_bounds(col, files), n_verify - n_known,
            storage_options=storage_options, max_image_pixels=max_image_pixels,
            max_member_bytes=max_member_bytes, early_accept=params.early_accept,
            keypoints=params.keypoints,
        )  # fmt: skip
        if n_known:  # in this build's columns (a score kept before records existed has a null one)
            meta = scores._meta
            scores = dd.concat([scores, known.map_partitions(_as_scores, meta, meta=meta, enforce_metadata=False)])
        cost["reused"] = n_known
        if graph_cache is not None:
            graph_cache.keep_scores(scores, ident)
        cost["seconds"] = round(time.perf_counter() - t0, 3)
        back = route(scores, "_part", tuple(range(first.npartitions + 1)))
        decided = first.map_partitions(
            _redecide, back, params, meta=final_meta, align_dataframes=False, enforce_metadata=False
        )
    else:
        decided = first.map_partitions(_unverified, meta=final_meta, enforce_metadata=False)
    (decided,) = dask.persist(decided)
    comp = edges.map_partitions(
        _component_edges, decided, params.ccthreshold,
        meta=pd.DataFrame({"from": _I64(0), "to": _I64(0)}, index=[]),
        align_dataframes=False, enforce_metadata=False,
    )  # fmt: skip

    (per_part,) = dask.compute(decided.map_partitions(_counts, meta=_counts(final_meta)))
    totals = {c: int(per_part[c].sum()) for c in per_part.columns}
    counts = {c: totals[c] for c in tier_counts(final_meta)}
    cost = finish_cost(cost, totals["verified_accepted"], totals["verified_rejected"])
    out_graph = graph[list(GRAPH_COLUMNS)]
    return TierFrames(decided, comp, out_graph, counts, cost, dct_knn, white_about)


def _check_columns(*frames: tuple[Any, str, tuple[str, ...]]) -> None:
    for frame, name, cols in frames:
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{name} has no column {missing[0]!r} (columns: {list(frame.columns)})"
            )


def _file_bounds(col: Any, files: Any) -> np.ndarray:
    """First global index of each partition of ``files`` (``col.files()``)."""
    if files.npartitions != len(col.partition_archives()):
        raise ValueError(
            f"files has {files.npartitions} partitions, col.files() has {len(col.partition_archives())}: "
            "pass col.files()"
        )
    return col.partition_bounds()
