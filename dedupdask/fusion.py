"""Fusion stage: the duplicate tiers of one analysis run, from kNN graphs to accepted pairs.

Given the exact groups and the embedding kNN graph that :func:`dedupdask.analysis.build`
computed, :func:`run_tiers` builds the DCT kNN graph (63-d ``dct.dat`` vectors, stacked like
the embeddings, one block per archive) and, in runs large enough, the kNN graph of the run's
whitened embedding (:mod:`dedupdask.whitening`), collects the candidate pairs of every tier
(:func:`dedupdask.analyses.tiers.candidate_pairs`), fills in the similarity a graph did not
give (exact cosines of the two vectors), verifies the uncertain pairs on the cluster
(:func:`dedupdask.verify.verify_pairs`) and decides
(:func:`dedupdask.analyses.tiers.decide`).

This is the in-process path (numpy arrays and pandas tables on the calling process); the
same decisions on the workers, from Dask DataFrames that are never gathered, are
:func:`dedupdask.analyses.tiers_dask.run_tiers_frames`. Both apply the rules of
:mod:`dedupdask.analyses.tiers`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from dask.base import tokenize

from .analyses.exact import ExactGroups, expand_graph
from .analyses.tiers import (
    TierParams,
    candidate_pairs,
    component_edges,
    decide,
    decided_columns,
    tier_counts,
    verified_counts,
)
from .collect import Collection, read_archive_vectors
from .knn import DEFAULT_RANDOM_STATE
from .knn_incremental import scores_identity
from .knn_partitioned import knn_graph_work_dir
from .store import SUFFIXES
from .verify import finish_cost, verify_pairs
from .verify_frames import image_info
from .whitening import run_whitening

__all__ = ["DCT_DIM", "TierOutcome", "dct_vectors", "has_dct", "pair_cosines", "run_tiers"]

DCT_DIM = 63


def has_dct(col: Collection) -> bool:
    """Whether every archive with valid images has its ``dct.dat`` (one listing).

    Examples
    --------
    >>> has_dct(collect("work"))  # doctest: +SKIP
    True
    """
    wd = col.work_dir
    if not any(a.n_valid for a in col.archives):
        return False
    try:
        names = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in wd.fs.ls(wd.path, detail=False)}
    except FileNotFoundError:
        return False
    return all(a.name + SUFFIXES["dct"] in names for a in col.archives if a.n_valid)


def dct_vectors(col: Collection) -> da.Array:
    """All DCT descriptors as a float32 ``[N, 63]`` dask array, one block per archive.

    Examples
    --------
    >>> dct_vectors(collect("work")).shape  # doctest: +SKIP
    (3000, 63)
    """
    blocks = [
        da.from_delayed(
            dask.delayed(read_archive_vectors, pure=True)(
                col.work_dir, a.name, DCT_DIM, a.n_valid, which="dct"
            ),
            shape=(a.n_valid, DCT_DIM),
            dtype=np.float32,
            name="dedupdask-dct-" + tokenize(col.work_dir.url, a.name, a.n_valid),
        )
        for a in col.archives
        if a.n_valid
    ]
    if not blocks:
        return da.zeros((0, DCT_DIM), dtype=np.float32, chunks=((0,), (DCT_DIM,)))
    return da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]


def pair_cosines(
    x: da.Array | Callable[[np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Cosine similarity of rows ``a[i]`` and ``b[i]`` of ``x`` (only those rows are read).

    ``x`` is a dask array, or a function returning the given rows (e.g.
    :meth:`Collection.vector_rows`).

    Examples
    --------
    >>> x = da.from_array(np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32), chunks=2)
    >>> [round(float(c), 2) for c in pair_cosines(x, np.array([0]), np.array([1]))]
    [0.6]
    """
    if not len(a):
        return np.empty(0, np.float32)
    rows, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    v = np.asarray(x(rows) if callable(x) else x[rows].compute(), dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, n, out=v, where=n > 0)
    ia, ib = inv[: len(a)], inv[len(a) :]
    return np.clip(np.einsum("ij,ij->i", v[ia], v[ib]), -1.0, 1.0).astype(np.float32)


@dataclass
class TierOutcome:
    """What the tiers found.

    Attributes
    ----------
    decided : DataFrame
        Every candidate representative pair with both similarities, ``verify_score``,
        ``kind``, ``direct``, ``to_verify``, ``accepted``.
    edges : (ndarray, ndarray)
        Representative edges of connected components.
    counts : dict
        Candidates and accepted pairs per tier.
    dct_knn : dict
        How the DCT kNN graph was computed (method, memory per task, buckets...).
    whitening : dict
        The whitening and how its kNN graph was computed (empty without one).
    verification : dict
        Cost of verification (see :func:`dedupdask.verify.verify_pairs`) plus ``seconds``
        (wall time) and ``accepted`` / ``rejected``.
    """

    decided: pd.DataFrame
    edges: tuple[np.ndarray, np.ndarray]
    counts: dict[str, int] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    dct_knn: dict[str, Any] = field(default_factory=dict)
    whitening: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> pd.DataFrame:
        return self.decided[self.decided["accepted"]].reset_index(drop=True)


def run_tiers(
    col: Collection,
    groups: ExactGroups,
    reps: np.ndarray,
    emb_graph: tuple[np.ndarray, np.ndarray],
    params: TierParams,
    files: pd.DataFrame,
    *,
    embeddings: da.Array | None = None,
    input_groups: ExactGroups | None = None,
    method: str = "auto",
    random_state: int = DEFAULT_RANDOM_STATE,
    storage_options: dict[str, Any] | None = None,
    max_image_pixels: int = 100_000_000,
    max_member_bytes: int = 256 * 2**20,
    knn_config: Any = None,
    graph_cache: Any = None,
) -> TierOutcome:
    """Find, verify and decide the tiered pairs of one run (on the current Dask scheduler).

    Parameters
    ----------
    col : Collection
        The done archives.
    groups : ExactGroups
        Exact-duplicate groups over 0..N-1.
    reps : ndarray
        Global index of each row of ``emb_graph``.
    emb_graph : (ndarray, ndarray)
        Embedding kNN graph over ``reps`` (positions, similarities), ``params.k`` wide.
    params : TierParams
        Resolved thresholds.
    files : DataFrame
        Every image row of the archives in archive order (``archive, member, index``, and
        ``member_offset``, ``file_size`` when known), to find the images to verify.
    embeddings : dask array, optional
        The ``[N, d]`` vectors (default: ``col.embeddings()``).
    input_groups : ExactGroups, optional
        Images with equal model inputs (:func:`dedupdask.analyses.exact.expand_graph`):
        pairs inside one are verified whatever their similarity.
    method, random_state
        kNN method and seed for the DCT graph.
    storage_options : dict, optional
        fsspec options for reading the archives.
    max_image_pixels, max_member_bytes : int
        Limits when reading images back.
    knn_config : RunConfig, optional
        ``max_memory_per_task`` of the DCT graph (:func:`dedupdask.knn_partitioned.knn_graph_work_dir`).
    graph_cache : GraphCache, optional
        The build's kept graphs (:mod:`dedupdask.knn_incremental`): the DCT graph is reused
        from it, or kept in it.

    Returns
    -------
    TierOutcome
    """
    dct_graph = None
    dct = None
    dct_knn: dict[str, Any] = {}
    local = col.reads_locally()
    if params.copy_threshold is not None and reps.size > 1:
        dct = dct_vectors(col)  # the same path as the embeddings' graph: one task or partitioned
        di, ds, _, dct_knn = knn_graph_work_dir(
            col, reps, params.k, config=knn_config, method=method, random_state=random_state,  # type: ignore[arg-type]
            which="dct", d=DCT_DIM, vectors=dct, cache=graph_cache, groups=groups.rep,
        )  # fmt: skip
        dct_graph = (di, ds)
    white_graph, white_about = None, {}
    if params.whitened_threshold is not None and reps.size > 1:
        white_graph, white_about = _whitened_graph(
            col, groups, input_groups, params.k, knn_config, method, random_state, graph_cache
        )
    cands = candidate_pairs(
        reps, emb_graph, dct_graph, params,
        input_rep=None if input_groups is None else input_groups.rep, white_graph=white_graph,
    )  # fmt: skip
    a, b = cands["from"].to_numpy(np.int64), cands["to"].to_numpy(np.int64)
    miss = cands["similarity"].isna().to_numpy()
    if miss.any():  # on the local path rows are sliced from the files, not from a Dask graph
        if local:
            src: Any = col.vector_rows
        else:
            src = embeddings if embeddings is not None else col.embeddings()
        sims = cands["similarity"].to_numpy(np.float32).copy()
        sims[miss] = pair_cosines(src, a[miss], b[miss])
        cands["similarity"] = sims
    miss = cands["copy_similarity"].isna().to_numpy()
    if miss.any() and (dct is not None or params.copy_threshold is not None):
        if local:
            src = functools.partial(col.vector_rows, which="dct", d=DCT_DIM)
        else:
            src = dct if dct is not None else dct_vectors(col)
        sims = cands["copy_similarity"].to_numpy(np.float32).copy()
        sims[miss] = pair_cosines(src, a[miss], b[miss])
        cands["copy_similarity"] = sims
    decided = decide(cands, params)
    todo = decided[decided["to_verify"]]
    cost: dict[str, Any] = {}
    if len(todo):
        t0 = time.perf_counter()
        pairs = todo.loc[:, ["from", "to"]]
        ident = scores_identity(params, max_image_pixels, max_member_bytes)
        known = None  # scores the last build kept (an incremental build): not verified again
        if graph_cache is not None:
            known = graph_cache.known_scores(graph_cache.previous_scores(ident), pairs)
        if known is not None and len(known):
            hit = pairs.merge(known[["from", "to"]], how="left", indicator=True)["_merge"].eq("both")
            pairs = pairs[~hit.to_numpy()]
        res = known
        if len(pairs):
            res, cost = verify_pairs(
                pairs,
                image_info(files),
                storage_options=storage_options,
                max_image_pixels=max_image_pixels,
                max_member_bytes=max_member_bytes,
                early_accept=params.early_accept,
                keypoints=params.keypoints,
            )
            res = pd.concat([res, known], ignore_index=True) if known is not None and len(known) else res
        cost["reused"] = 0 if known is None else len(known)
        cost["seconds"] = round(time.perf_counter() - t0, 3)
        if graph_cache is not None:
            graph_cache.keep_scores(res, ident)
        cands = cands.merge(res, on=["from", "to"], how="left")
        decided = decide(cands, params)
    decided = decided_columns(decided)  # one column order, verified or not
    cost = finish_cost(cost, **verified_counts(decided))
    edges = component_edges(reps, emb_graph, decided, params.ccthreshold)
    return TierOutcome(decided, edges, tier_counts(decided), cost, dct_knn, white_about)


def _whitened_graph(
    col: Collection, groups: ExactGroups, inputs: ExactGroups | None, k: int, knn_config: Any,
    method: str, random_state: int, graph_cache: Any,
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:  # fmt: skip
    """The whitened embedding's kNN graph over ``groups.reps`` (searched over the input
    representatives, as the embedding graph is, then expanded), and what to record of it."""
    inputs = groups if inputs is None else inputs
    w, about = run_whitening(col, graph_cache, random_state=random_state)
    wi, ws, _, knn = knn_graph_work_dir(
        col, inputs.reps, k, config=knn_config, method=method, random_state=random_state,  # type: ignore[arg-type]
        transform=w, cache=graph_cache, groups=inputs.rep,
    )  # fmt: skip
    wi, ws = expand_graph(groups, inputs, wi, ws)
    return (wi, ws), {**about, "knn": knn}
