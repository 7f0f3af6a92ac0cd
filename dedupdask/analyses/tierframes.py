"""Analysis stage, what the duplicate tiers hand on when they run on the workers.

:class:`TierFrames` is the workers-path counterpart of :class:`dedupdask.fusion.TierOutcome`:
every per-pair and per-image table is a Dask DataFrame (never gathered), the counts and cost
reports are small dicts. The stages after the tiers (:mod:`dedupdask.analyses.pairs_dask`,
:mod:`dedupdask.analyses.outliers_dask`, components, issues) read only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .tiers import DECIDED_COLUMNS

__all__ = ["DECIDED_COLUMNS", "TierFrames"]


@dataclass
class TierFrames:
    """What the tiers found, as Dask DataFrames.

    Attributes
    ----------
    decided : dask.dataframe.DataFrame
        Every candidate representative pair, columns :data:`DECIDED_COLUMNS`: ``from < to``
        (global indices of exact representatives), both similarities, ``kind`` (``copy`` or
        ``near``), ``direct``, ``to_verify``, ``accepted``, ``verify_score`` (float32),
        ``verify_error``.
    edges : dask.dataframe.DataFrame
        int64 ``from, to``: representative edges of connected components
        (:func:`dedupdask.analyses.tiers.component_edges`; the exact groups are added after).
    graph : dask.dataframe.DataFrame
        The embedding kNN graph over the exact representatives (expanded from the input
        groups' graph), :mod:`dedupdask.analyses.graph`'s contract.
    counts : dict
        Candidates and accepted pairs per tier (the keys of ``TierOutcome.counts``).
    verification : dict
        Cost of verification (``TierOutcome.verification``).
    dct_knn : dict
        How the DCT kNN graph was computed (``TierOutcome.dct_knn``).
    whitening : dict
        The whitening and its kNN graph (``TierOutcome.whitening``).

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> e = dd.from_pandas(pd.DataFrame({"from": [0], "to": [1]}), npartitions=1)
    >>> TierFrames(decided=e, edges=e, graph=e).counts
    {}
    """

    decided: Any
    edges: Any
    graph: Any
    counts: dict[str, int] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    dct_knn: dict[str, Any] = field(default_factory=dict)
    whitening: dict[str, Any] = field(default_factory=dict)
