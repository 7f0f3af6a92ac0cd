"""Analysis stage, duplicate tiers: exact, copy and near pairs, fused and verified.

No single descriptor finds every kind of duplicate (``research/quality.md``): the perceptual
DCT descriptor is near-perfect on resized, recompressed, brightened and flipped copies and
blind to crops; the CNN embedding sees crops and edits but also calls look-alikes
duplicates. So pairs are found in tiers and each pair is labelled with the strongest:

``exact``
    Same encoded bytes (``md5``) or same decoded full-resolution pixels (``pixel_md5``).
``copy``
    DCT cosine >= ``copy_threshold`` (a kNN graph over the 63-d ``dct.dat`` vectors).
``near``
    Embedding cosine >= ``threshold`` (the model's kNN graph), or a *candidate* that
    :mod:`dedupdask.verify` confirms: a pair of the kNN graph of the run's whitened embedding
    (:mod:`dedupdask.whitening`) with whitened cosine >= ``whitened_threshold``, or standing
    ``whitened_margin`` above the cosine of either picture's :data:`TIER_K`-th neighbour (a
    copy stands out of its neighbourhood however crowded it is: :func:`stands_out`), or, in
    runs too small to whiten, a pair with embedding cosine >= ``verify_threshold``.

Verification (pixel alignment, ~1-3 ms of a core per pair) decides every pair that is not certain:
the candidates of that looser band (below ``threshold``) and every copy
candidate, because on clip art the DCT also matches colour variants and near-identical
drawings (measured in ``benchmarks/results/quality_tiers.txt``). Pairs at or above
``threshold`` are accepted without it, except pairs whose model inputs are equal
(``input_md5``) but that are not known to be exact: their embedding cosine (1.0) says
nothing, so they are verified too and labelled ``copy`` or ``near``. With ``verify=False``,
or when an archive cannot be read, a pair stands on its tier's threshold alone (copy
candidates and equal-input pairs are then accepted).

Connected components link exact groups, accepted copy pairs, verified pairs, and kNN edges
at or above ``ccthreshold`` that verification did not reject (the single-tier semantics
when nothing is verified).

Every threshold comes from the model's row of :data:`dedupdask.thresholds.TABLE`;
:func:`resolve_params` applies the run's mode to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..match_record import RECORD_COLUMNS, empty_records, invert_homography_text
from ..thresholds import Thresholds
from .exact import ExactGroups
from .similarity import (
    MAX_GROUP_PAIRS,
    SIMILARITY_COLUMNS,
    across_group_pairs,
    within_group_pairs,
)

__all__ = [
    "DECIDED_COLUMNS",
    "DECIDED_DTYPES",
    "candidates_table",
    "decided_columns",
    "empty_candidates",
    "KINDS",
    "TIER_K",
    "TierParams",
    "candidate_cut",
    "candidate_pairs",
    "decide",
    "expand_pairs",
    "component_edges",
    "fused_edges",
    "merge_candidates",
    "resolve_params",
    "stands_out",
    "tier_counts",
    "unique_pairs",
    "verified_counts",
]

KINDS = ("exact", "copy", "near")
DECIDED_COLUMNS = (
    "from", "to", "similarity", "copy_similarity", "whitened_similarity", "same_input", "kind", "direct",
    "to_verify", "accepted", "verify_score", "verify_error", *RECORD_COLUMNS,
)  # fmt: skip
"""Columns of the tiers' decided pairs (``TierOutcome.decided``, ``TierFrames.decided``): the
candidate pairs of representatives, their similarities, the decision, and the verification's
score and match record (:data:`~dedupdask.match_record.RECORD_COLUMNS`; null when not
verified)."""
DECIDED_DTYPES = {"verify_score": "float32", "verify_error": "string", **RECORD_COLUMNS}
"""dtypes of the verification's columns of the decided pairs."""
TIER_K = 5
"""Neighbours per image searched for candidates (at least ``nearest_neighbors_k``)."""


@dataclass(frozen=True)
class TierParams:
    """Resolved thresholds of one analysis run, as its mode applies them.

    Attributes
    ----------
    threshold : float
        Embedding cosine of a near pair accepted without verification.
    ccthreshold : float
        Embedding cosine of a kNN edge in connected components.
    copy_threshold : float or None
        DCT cosine of a copy candidate; None when the work_dir has no ``dct.dat``.
    verify_threshold : float or None
        Embedding cosine of a verification candidate; None = no embedding candidates.
    verify_score : float
        Verification score that confirms a pair.
    verify : bool
        Whether candidates are verified at all.
    k : int
        Neighbours searched per image in each kNN graph.
    early_accept : float
        Verification score at which the search for a better alignment stops.
    keypoints : bool
        Verification also asks the keypoint matcher.
    whitened_threshold : float or None
        Whitened embedding cosine of a verification candidate, which then replaces
        ``verify_threshold``'s band (None: the raw band, or none).
    whitened_margin : float or None
        With ``whitened_threshold``: a whitened pair under it is a candidate too when it
        stands this much above its picture's :data:`TIER_K`-th neighbour (:func:`stands_out`).
    """

    threshold: float
    ccthreshold: float
    copy_threshold: float | None
    verify_threshold: float | None
    verify_score: float
    verify: bool
    k: int
    early_accept: float
    keypoints: bool = False
    whitened_threshold: float | None = None
    whitened_margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_params(
    thresholds: Thresholds,
    *,
    has_dct: bool,
    verify: bool,
    nearest_neighbors_k: int,
    keypoints: bool = False,
    whiten: bool = False,
) -> TierParams:
    """Apply a run's mode to its resolved thresholds (:func:`dedupdask.thresholds.resolve`).

    Parameters
    ----------
    thresholds : Thresholds
        The model's row with the user's overrides.
    has_dct : bool
        Whether every archive has its ``dct.dat`` (else there is no copy tier).
    verify : bool
        Whether candidates are verified (else there are no embedding candidates).
    nearest_neighbors_k : int
        The user's k; the tiers search at least :data:`TIER_K` neighbours.
    keypoints : bool
        Verification also asks the keypoint matcher (``verify_keypoints``).
    whiten : bool
        The run is large enough to whiten (:data:`dedupdask.whitening.MIN_IMAGES`): the
        candidates to verify come from the whitened graph when the model has a
        ``whitened_threshold``.

    Examples
    --------
    >>> from dedupdask.thresholds import row_for
    >>> p = resolve_params(row_for("effnet-lite0"), has_dct=True, verify=True, nearest_neighbors_k=2)
    >>> p.threshold, p.copy_threshold, p.verify_threshold, p.k
    (0.99, 0.995, 0.65, 5)
    >>> resolve_params(row_for("effnet-lite0"), has_dct=False, verify=False, nearest_neighbors_k=2).k
    2
    """
    copy_threshold = thresholds.copy_threshold if has_dct else None
    verify_threshold = thresholds.verify_threshold if verify else None
    whitened = thresholds.whitened_threshold if (verify and whiten) else None
    k = int(nearest_neighbors_k)
    if copy_threshold is not None or verify_threshold is not None or whitened is not None:
        k = max(k, TIER_K)
    return TierParams(
        threshold=thresholds.threshold,
        ccthreshold=thresholds.ccthreshold,
        copy_threshold=copy_threshold,
        verify_threshold=verify_threshold,
        verify_score=thresholds.verify_score,
        verify=bool(verify),
        k=k,
        early_accept=thresholds.early_accept,
        keypoints=bool(keypoints and verify),
        whitened_threshold=whitened,
        whitened_margin=thresholds.whitened_margin if whitened is not None else None,
    )


def unique_pairs(
    a: np.ndarray, b: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``a -- b`` as unique pairs ``lo < hi`` with their largest similarity.

    The rule both graphs' candidates and the components' kNN edges follow, on the calling
    process (:func:`candidate_pairs`) and per partition on the workers
    (:mod:`dedupdask.analyses.tiers_dask`). Self-edges are dropped.

    Examples
    --------
    >>> lo, hi, s = unique_pairs(np.array([2, 0, 1]), np.array([0, 2, 1]),
    ...                          np.array([0.9, 0.95, 1.0], np.float32))
    >>> lo.tolist(), hi.tolist(), s.tolist()
    ([0], [2], [0.949999988079071])
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    s = np.asarray(s, dtype=np.float32)
    keep = lo != hi
    df = pd.DataFrame({"a": lo[keep], "b": hi[keep], "s": s[keep]})
    df = df.sort_values(["a", "b", "s"], ascending=[True, True, False]).drop_duplicates(["a", "b"])
    return df["a"].to_numpy(np.int64), df["b"].to_numpy(np.int64), df["s"].to_numpy(np.float32)


def stands_out(sim: np.ndarray, background: np.ndarray, margin: float | None) -> np.ndarray:
    """Which neighbours stand ``margin`` above their picture's background.

    ``background`` is the similarity of the picture's :data:`TIER_K`-th neighbour (NaN when
    its row is shorter: nothing stands out of it). How high a cosine is depends on how crowded
    the picture's part of the space is (hubness: a photo among many like it has close
    neighbours that are other photos, a drawing in an empty region has none), and a copy
    whose edits moved it far (a pad, an inset, a crop with a caption) still stands out of its
    original's neighbourhood. One rule for both paths: float32 differences.

    Examples
    --------
    >>> sim = np.array([[0.44, 0.30, 0.29, 0.28, 0.27]], np.float32)
    >>> stands_out(sim, sim[:, 4:], 0.15).tolist()
    [[True, False, False, False, False]]
    >>> stands_out(sim, np.full((1, 1), np.nan, np.float32), 0.15).any() | stands_out(sim, sim[:, 4:], None).any()
    np.False_
    """
    if margin is None:
        return np.zeros(np.shape(sim), bool)
    with np.errstate(invalid="ignore"):
        return (np.asarray(sim, np.float32) - np.asarray(background, np.float32)) >= np.float32(margin)


def _edges(
    reps: np.ndarray, idx: np.ndarray, sim: np.ndarray, cut: float, margin: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique rep-level pairs ``lo < hi`` of a kNN graph with similarity >= ``cut``, or
    standing ``margin`` above the row's :data:`TIER_K`-th neighbour (:func:`stands_out`)."""
    ok = sim >= np.float32(cut)
    if margin is not None and sim.shape[1] >= TIER_K:
        ok |= stands_out(sim, sim[:, TIER_K - 1 : TIER_K], margin)
    ok &= idx >= 0
    rows, cols = np.nonzero(ok)
    return unique_pairs(reps[rows], reps[idx[rows, cols]], sim[rows, cols])


def _graph_pairs(
    reps: np.ndarray,
    graph: tuple[np.ndarray, np.ndarray] | None,
    cut: float | None,
    column: str,
    margin: float | None = None,
) -> pd.DataFrame | None:
    """``from, to, <column>``: the unique pairs of one kNN graph at or above ``cut`` or
    standing ``margin`` out (None without the graph or the cut)."""
    if graph is None or cut is None:
        return None
    a, b, s = _edges(reps, graph[0], graph[1], cut, margin)
    return pd.DataFrame({"from": a, "to": b, column: s})


def candidate_cut(params: TierParams) -> float:
    """Embedding similarity from which a kNN edge is a candidate pair of some tier.

    With a ``whitened_threshold`` the band's candidates come from the whitened graph, so the
    embedding graph proposes only the pairs accepted without verification."""
    cut = params.threshold
    if params.verify_threshold is not None and params.whitened_threshold is None:
        cut = min(cut, params.verify_threshold)
    return cut


def merge_candidates(
    emb: pd.DataFrame, dct: pd.DataFrame | None, white: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The candidate pairs of the graphs, each with what each graph says.

    Parameters
    ----------
    emb : DataFrame
        ``from, to, similarity``: unique embedding pairs (:func:`unique_pairs`).
    dct : DataFrame or None
        ``from, to, copy_similarity``: unique DCT pairs; None without a copy tier.
    white : DataFrame or None
        ``from, to, whitened_similarity``: unique whitened-graph pairs; None without one.

    Returns
    -------
    DataFrame
        ``from, to, similarity, copy_similarity, whitened_similarity`` (NaN where a graph
        does not have the pair), sorted by ``from, to``, with any other columns of the inputs.
    """
    out = emb
    for other, col in ((dct, "copy_similarity"), (white, "whitened_similarity")):
        if other is not None:
            out = out.merge(other, on=["from", "to"], how="outer")
        else:
            out = out.assign(**{col: np.float32(np.nan)})
    out = out.sort_values(["from", "to"], kind="stable").reset_index(drop=True)
    return out.astype({"from": "int64", "to": "int64", "similarity": "float32", "copy_similarity": "float32",
                       "whitened_similarity": "float32"})  # fmt: skip


def candidate_pairs(
    reps: np.ndarray,
    emb_graph: tuple[np.ndarray, np.ndarray],
    dct_graph: tuple[np.ndarray, np.ndarray] | None,
    params: TierParams,
    *,
    input_rep: np.ndarray | None = None,
    white_graph: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Representative pairs that some tier proposes, with what each graph says.

    Parameters
    ----------
    white_graph : (ndarray, ndarray), optional
        The whitened embedding's kNN graph over ``reps`` (with ``params.whitened_threshold``).
    input_rep : ndarray, optional
        int64 ``[N]``: each image's input group (see
        :func:`dedupdask.analyses.exact.expand_graph`); pairs inside one are ``same_input``.

    Returns
    -------
    DataFrame
        ``from, to`` (global indices, ``from < to``), ``similarity`` (embedding cosine from
        the graph, NaN when only another graph has the pair), ``copy_similarity`` and
        ``whitened_similarity`` (likewise from the DCT and whitened graphs), ``same_input``
        (equal model inputs, not exact duplicates).

    Examples
    --------
    >>> p = TierParams(0.9, 0.95, 0.99, 0.7, 0.85, True, 1, 0.98)
    >>> reps = np.array([0, 1, 2])
    >>> emb = (np.array([[1], [0], [0]]), np.array([[0.8], [0.8], [0.1]], np.float32))
    >>> dct = (np.array([[2], [2], [0]]), np.array([[0.995], [0.5], [0.995]], np.float32))
    >>> candidate_pairs(reps, emb, dct, p)[["from", "to"]].values.tolist()
    [[0, 1], [0, 2]]
    """
    emb = _graph_pairs(reps, emb_graph, candidate_cut(params), "similarity")
    dct = _graph_pairs(reps, dct_graph, params.copy_threshold, "copy_similarity")
    white = _graph_pairs(reps, white_graph, params.whitened_threshold, "whitened_similarity", params.whitened_margin)
    assert emb is not None  # the embedding graph and its cut are always there
    out = merge_candidates(emb, dct, white)
    if input_rep is None:
        out["same_input"] = False
    else:
        rep = np.asarray(input_rep, dtype=np.int64)
        out["same_input"] = rep[out["from"].to_numpy()] == rep[out["to"].to_numpy()]
    return out


def decide(cands: pd.DataFrame, params: TierParams) -> pd.DataFrame:
    """Kind, need for verification and (once ``verify_score`` is filled) acceptance per pair.

    Parameters
    ----------
    cands : DataFrame
        :func:`candidate_pairs` output with both similarities filled in, and optionally
        ``verify_score`` / ``verify_error`` from :func:`dedupdask.verify.verify_pairs`.
    params : TierParams

    Returns
    -------
    DataFrame
        ``cands`` plus ``kind`` (``copy`` or ``near``), ``direct`` (accepted without
        verification), ``to_verify`` and ``accepted`` (bool). A ``same_input`` pair (when
        ``cands`` has that column) is never direct: it is verified like a copy candidate.

    Examples
    --------
    >>> p = TierParams(0.95, 0.95, 0.99, 0.7, 0.85, True, 5, 0.98)
    >>> c = pd.DataFrame({"from": [0, 0, 1], "to": [1, 2, 2], "similarity": [0.97, 0.8, 0.5],
    ...                   "copy_similarity": [0.5, 0.5, 0.995], "verify_score": [np.nan, 0.9, 0.2]})
    >>> decide(c, p)[["kind", "to_verify", "accepted"]].values.tolist()
    [['near', False, True], ['near', True, True], ['copy', True, False]]
    """
    out = cands.copy()
    emb = out["similarity"].to_numpy(np.float32)
    dct = out["copy_similarity"].to_numpy(np.float32)
    with np.errstate(invalid="ignore"):
        copy = (dct >= np.float32(params.copy_threshold)) if params.copy_threshold is not None else np.zeros(len(out), bool)
        direct = emb >= np.float32(params.threshold)
        if params.whitened_threshold is not None:
            # the whitened graph proposes its band only: the cut, or a pair standing out
            band = ~np.isnan(out["whitened_similarity"].to_numpy(np.float32))
        elif params.verify_threshold is not None:
            band = emb >= np.float32(params.verify_threshold)
        else:
            band = np.zeros(len(out), bool)
    same = out["same_input"].to_numpy(bool) if "same_input" in out else np.zeros(len(out), bool)
    direct &= ~same
    stands = copy | same  # what an unverifiable pair is accepted on
    verify = np.full(len(out), bool(params.verify))
    to_verify = verify & ~direct & (stands | band)
    if "verify_score" in out:
        score = out["verify_score"].to_numpy(np.float64)
    else:
        score = np.full(len(out), np.nan)
    err = out["verify_error"].notna().to_numpy() if "verify_error" in out else np.zeros(len(out), bool)
    with np.errstate(invalid="ignore"):
        confirmed = score >= params.verify_score
    # an unreadable image leaves the pair to its tier: a copy candidate stands, a band one does not
    accepted = direct | (to_verify & confirmed) | (to_verify & err & stands) | (~verify & stands)
    out["kind"] = pd.array(np.where(copy, "copy", "near"), dtype="string")
    out["direct"] = direct
    out["to_verify"] = to_verify
    out["accepted"] = accepted
    return out


def decided_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (decided pairs) in :data:`DECIDED_COLUMNS` and their dtypes; a pair not verified
    gets a null score and record (the columns are added when no pair was verified).

    Examples
    --------
    >>> d = pd.DataFrame({c: [0] for c in DECIDED_COLUMNS[:10]})
    >>> out = decided_columns(d)
    >>> list(out.columns) == list(DECIDED_COLUMNS), bool(out["verify_matcher"].isna().all())
    (True, True)
    """
    missing = {c: pd.Series([None] * len(df), dtype=d, index=df.index) for c, d in DECIDED_DTYPES.items() if c not in df}
    out = df.assign(**missing) if missing else df
    return out.loc[:, list(DECIDED_COLUMNS)].astype(DECIDED_DTYPES)


def empty_candidates() -> pd.DataFrame:
    """An empty candidates table (:func:`candidates_table`) with its dtypes.

    Examples
    --------
    >>> empty_candidates().columns[:3].tolist()
    ['from', 'to', 'similarity']
    """
    from .names import PAIR_NAMES, named_columns

    types = {"from": "int64", "to": "int64", "similarity": "float32", "copy_similarity": "float32",
             "whitened_similarity": "float32", "same_input": "bool", "kind": "string", "direct": "bool",
             "to_verify": "bool", "accepted": "bool", **DECIDED_DTYPES,
             **dict.fromkeys(named_columns(PAIR_NAMES), "string")}  # fmt: skip
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in types.items()})


def candidates_table(decided: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """The candidates table: every decided pair of representatives (:data:`DECIDED_COLUMNS`,
    accepted or not, verified or not, with the match record) with the names of both images
    (``names``: one row per valid image in global-index order), most similar first.

    Examples
    --------
    >>> d = pd.DataFrame({c: [None, None] for c in DECIDED_COLUMNS}).assign(
    ...     **{"from": [0, 0], "to": [1, 2], "similarity": [0.7, 0.9]})
    >>> n = pd.DataFrame({"archive": ["a"] * 3, "member": ["x", "y", "z"], "key": ["x", "y", "z"]})
    >>> candidates_table(d, n)[["to", "member_to"]].values.tolist()
    [[2, 'z'], [1, 'y']]
    """
    from .names import PAIR_NAMES, add_names

    out = decided.loc[:, list(DECIDED_COLUMNS)]
    out = out.sort_values(["similarity", "from", "to"], ascending=[False, True, True], kind="stable")
    return add_names(out.reset_index(drop=True), names, PAIR_NAMES)


def _expanded_records(pairs: pd.DataFrame, e: np.ndarray, n_exact: int, swapped: np.ndarray) -> pd.DataFrame:
    """The match records of expanded pairs: each accepted pair's for its members' pairs (the
    members of an exact group have the same pixels), with the alignment inverted where the
    expanded pair reads the other way; null for the pairs inside a group."""
    if all(c in pairs for c in RECORD_COLUMNS):
        rec = pairs.loc[:, list(RECORD_COLUMNS)].reset_index(drop=True).iloc[e].reset_index(drop=True)
    else:  # pairs decided before match records existed
        rec = empty_records(len(e))
    rec = pd.concat([rec.astype(RECORD_COLUMNS), empty_records(n_exact)], ignore_index=True)
    if swapped.any():
        h = rec["verify_h"].to_numpy(dtype=object)
        h[swapped] = [invert_homography_text(t) for t in h[swapped]]
        rec["verify_h"] = pd.array(h, dtype="string")
    return rec


def expand_pairs(
    groups: ExactGroups,
    pairs: pd.DataFrame,
    filenames: np.ndarray | pd.Series,
    *,
    max_group_pairs: int = MAX_GROUP_PAIRS,
) -> pd.DataFrame:
    """The similarity table: accepted representative pairs expanded to exact-group members.

    Parameters
    ----------
    groups : ExactGroups
    pairs : DataFrame
        Accepted representative pairs: ``from, to, similarity, copy_similarity, kind,
        verify_score``.
    filenames : array-like
        File name of each global index.
    max_group_pairs : int
        Largest group expansion written in full (see :mod:`dedupdask.analyses.similarity`).

    Returns
    -------
    DataFrame
        Columns :data:`SIMILARITY_COLUMNS`, one row per pair (strongest kind), sorted by
        similarity descending, then ``from``, ``to``.

    Examples
    --------
    >>> from dedupdask.analyses import exact_groups
    >>> g = exact_groups(["a", "a", "b"])
    >>> p = pd.DataFrame({"from": [0], "to": [2], "similarity": [0.9], "copy_similarity": [0.995],
    ...                   "kind": ["copy"], "verify_score": [0.97]})
    >>> expand_pairs(g, p, ["x", "y", "z"])[["from", "to", "kind"]].values.tolist()
    [[0, 1, 'exact'], [0, 2, 'copy'], [1, 2, 'copy']]
    """
    x1, y1, e = across_group_pairs(
        pairs["from"].to_numpy(np.int64), pairs["to"].to_numpy(np.int64), groups, max_group_pairs
    )
    x2, y2 = within_group_pairs(groups, max_group_pairs)
    cols = {
        "similarity": np.concatenate(
            [pairs["similarity"].to_numpy(np.float32)[e], np.ones(x2.size, np.float32)]
        ),
        "copy_similarity": np.concatenate(
            [pairs["copy_similarity"].to_numpy(np.float32)[e], np.ones(x2.size, np.float32)]
        ),
        "kind": np.concatenate(
            [pairs["kind"].to_numpy(dtype=object)[e], np.full(x2.size, "exact", dtype=object)]
        ),
        "verify_score": np.concatenate(
            [pairs["verify_score"].to_numpy(np.float32)[e], np.full(x2.size, np.nan, np.float32)]
        ),
    }
    x = np.concatenate([x1, x2]).astype(np.int64)
    y = np.concatenate([y1, y2]).astype(np.int64)
    record = _expanded_records(pairs, e, x2.size, x > y)
    df = pd.DataFrame({"from": np.minimum(x, y), "to": np.maximum(x, y), **cols})
    df = pd.concat([df, record.set_axis(df.index)], axis=1)
    df = df[df["from"] != df["to"]]
    rank = df["kind"].map({k: i for i, k in enumerate(KINDS)}).to_numpy()
    df = (
        df.assign(_rank=rank)
        .sort_values(["from", "to", "_rank", "similarity"], ascending=[True, True, True, False], kind="stable")
        .drop_duplicates(["from", "to"], keep="first")
        .drop(columns="_rank")
        .sort_values(["similarity", "from", "to"], ascending=[False, True, True], kind="stable")
        .reset_index(drop=True)
    )
    names = np.asarray(filenames, dtype=object)
    df["kind"] = pd.array(df["kind"].to_numpy(dtype=object), dtype="string")
    df = df.astype(RECORD_COLUMNS)
    df["filename_from"] = pd.array(names[df["from"].to_numpy()], dtype="string")
    df["filename_to"] = pd.array(names[df["to"].to_numpy()], dtype="string")
    return df.loc[:, list(SIMILARITY_COLUMNS)]


def component_edges(
    reps: np.ndarray,
    emb_graph: tuple[np.ndarray, np.ndarray],
    decided: pd.DataFrame,
    ccthreshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Representative edges of connected components (exact groups are added by the caller).

    kNN edges >= ``ccthreshold`` that verification did not reject, plus accepted copy pairs
    and accepted verified pairs.

    Examples
    --------
    >>> reps = np.array([0, 1, 2])
    >>> g = (np.array([[1], [0], [0]]), np.array([[0.99], [0.99], [0.1]], np.float32))
    >>> d = pd.DataFrame({"from": [0], "to": [2], "kind": ["copy"], "to_verify": [True],
    ...                   "accepted": [True]})
    >>> [e.tolist() for e in component_edges(reps, g, d, 0.95)]
    [[0, 0], [1, 2]]
    """
    a, b, _ = _edges(reps, emb_graph[0], emb_graph[1], ccthreshold)
    return fused_edges(a, b, decided)


def fused_edges(
    a: np.ndarray, b: np.ndarray, decided: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`component_edges` from the unique kNN pairs ``a < b`` at or above ``ccthreshold``.

    Drops the pairs verification rejected and adds accepted copy and verified pairs (on the
    workers, per partition of pairs routed by ``from``).

    Examples
    --------
    >>> d = pd.DataFrame({"from": [0, 1], "to": [2, 3], "kind": ["copy", "near"],
    ...                   "to_verify": [True, True], "accepted": [True, False]})
    >>> [e.tolist() for e in fused_edges(np.array([1, 4]), np.array([3, 5]), d)]
    [[4, 0], [5, 2]]
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    rejected = decided[decided["to_verify"] & ~decided["accepted"]]
    if len(rejected) and len(a):
        bad = pd.MultiIndex.from_arrays([rejected["from"].to_numpy(), rejected["to"].to_numpy()])
        keep = ~pd.MultiIndex.from_arrays([a, b]).isin(bad)
        a, b = a[keep], b[keep]
    extra = decided[decided["accepted"] & ((decided["kind"] == "copy") | decided["to_verify"])]
    a = np.concatenate([a, extra["from"].to_numpy(np.int64)])
    b = np.concatenate([b, extra["to"].to_numpy(np.int64)])
    return a, b


def tier_counts(decided: pd.DataFrame) -> dict[str, int]:
    """Candidates and accepted pairs per tier (sums: those of partitions add up).

    Examples
    --------
    >>> d = pd.DataFrame({"kind": ["copy", "near"], "direct": [False, True],
    ...                   "to_verify": [True, False], "accepted": [False, True],
    ...                   "same_input": [False, False]})
    >>> tier_counts(d)["accepted_near"], verified_counts(d)
    (1, {'accepted': 0, 'rejected': 1})
    """
    acc = decided[decided["accepted"]]
    return {
        "candidate_pairs": int(len(decided)),
        "copy_candidates": int((decided["kind"] == "copy").sum()),
        "near_direct": int(decided["direct"].sum()),
        "accepted_copy": int((acc["kind"] == "copy").sum()),
        "accepted_near": int((acc["kind"] == "near").sum()),
        "same_input_candidates": int(decided["same_input"].sum()),
    }


def verified_counts(decided: pd.DataFrame) -> dict[str, int]:
    """Pairs that were to be verified, accepted and rejected (sums, like :func:`tier_counts`)."""
    ver = decided[decided["to_verify"]]
    return {"accepted": int(ver["accepted"].sum()), "rejected": int((~ver["accepted"]).sum())}
