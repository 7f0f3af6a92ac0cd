"""Analysis stage, connected components on the workers: a Dask DataFrame of edges in, one out.

The same table as :func:`dedupdask.analyses.components.components_table` -- one row per node,
``component_id`` the smallest node id of its component (a singleton's is its own id),
``component_size`` the number of nodes -- computed without gathering the graph: the nodes
live in partitions that own a range of ids (``partition_rows`` each), the edges stay in the
partitions they came in, and the two exchange messages through shuffles on the workers
(:mod:`dedupdask.analyses.routing`). The client holds one scalar per iteration.

Algorithm (FastSV, Zhang, Azad & Hu, "FastSV: a distributed-memory connected component
algorithm with fast convergence", 2020, on hyper-edges):

1. *Local contraction*, once: scipy's ``connected_components`` inside each edge partition
   turns its edges into local components (a path that lies in one partition becomes one
   hyper-edge).
2. Each node ``x`` holds a parent ``f[x] <= x`` (initially itself). In an iteration every
   node partition sends ``f[x]`` to each edge partition that holds ``x``, with the
   grandparent ``g[x] = f[f[x]]`` when it owns ``f[x]``; otherwise it asks the owner, which
   answers those edge partitions directly. Each edge partition takes the minimum ``m`` of
   ``g`` over every local component and sends home the min-updates ``f[x] <- m``
   (aggressive hooking, and as ``m <= g[x]`` a shortcut) and ``f[f[x]] <- m`` (stochastic
   hooking), only values below the current ones.
3. It stops when no parent changed. Then ``f[f[x]] == f[x]`` everywhere and ``f`` is
   constant on every local component, so every component is a star around one of its
   nodes; parents only decrease and stay inside the component, so that node is its
   smallest id.

Iterations grow with the logarithm of the diameter (17-18 for a path of 100,000 nodes
whose edges are spread over several partitions; 2-11 for random and kNN-like graphs),
three shuffles each. Without stochastic hooking the same path took ~30,000 iterations.

Memory per task is bounded by the partition sizes, not by N or by the largest component:
every sender keeps one message per distinct destination, so a node of degree one million
receives one row per edge partition that holds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .components import COMPONENT_COLUMNS
from .exact import ExactGroups
from .routing import NODE, find, locate, lookup, route

__all__ = [
    "COMPONENT_COLUMNS",
    "DaskComponents",
    "PARTITION_ROWS",
    "components_frame_of_groups",
    "components_of_groups",
    "components_table_dask",
]

PARTITION_ROWS = 1_000_000
"""Default number of nodes per node partition (16 MB of state; messages a few times that)."""

_I64 = np.int64


@dataclass(frozen=True)
class DaskComponents:
    """The result of :func:`components_table_dask` (and of ``exact_groups_dask``).

    Attributes
    ----------
    table : dask.dataframe.DataFrame
        Columns :data:`COMPONENT_COLUMNS` (``index, component_id, component_size``; the exact
        groups name the last two ``rep, group_size``), one row per node in increasing
        ``index`` order, indexed by the node id as well (known divisions: partition ``i``
        holds a contiguous range of ids). Persisted: its partitions live on the workers (or
        in this process under a local scheduler).
    changed : tuple of int
        Parents changed in each FastSV iteration (the last one is 0): how fast the work
        shrinks.
    """

    table: Any
    changed: tuple[int, ...]

    @property
    def iterations(self) -> int:
        """FastSV iterations until no parent changed."""
        return len(self.changed)


def components_table_dask(
    edges: Any,
    n: int | None = None,
    *,
    nodes: Any = None,
    partition_rows: int = PARTITION_ROWS,
) -> DaskComponents:
    """Connected components of a graph given as a Dask DataFrame of edges, on the workers.

    Runs on Dask's current scheduler (the default ``Client`` if there is one).

    Parameters
    ----------
    edges : dask.dataframe.DataFrame or pandas.DataFrame
        Integer columns ``from`` and ``to`` (other columns are ignored). Direction, duplicate
        edges and self-loops do not matter. Each partition must fit in a task.
    n : int, optional
        The nodes are ``0..n-1`` (the global image index); nodes without edges are
        singletons.
    nodes : dask.dataframe.Series, optional
        Instead of ``n``: the node ids (int64, any values, duplicates ignored).
    partition_rows : int
        Nodes per node partition.

    Returns
    -------
    DaskComponents
        ``table`` with ``index, component_id, component_size``, and the parents changed per
        iteration.

    Raises
    ------
    ValueError
        Neither or both of ``n`` and ``nodes``; missing, non-integer or null edge columns; an
        edge endpoint that is not a node (found on the workers, raised here).

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> e = dd.from_pandas(pd.DataFrame({"from": [3, 1, 4], "to": [1, 0, 5]}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     res = components_table_dask(e, 7)
    ...     res.table.compute().values.tolist()
    [[0, 0, 3], [1, 0, 3], [2, 2, 1], [3, 0, 3], [4, 4, 2], [5, 4, 2], [6, 6, 1]]
    """
    import dask
    import dask.dataframe as dd

    if (n is None) == (nodes is None):
        raise ValueError("components_table_dask needs exactly one of n and nodes")
    if not isinstance(partition_rows, int | np.integer) or partition_rows < 1:
        raise ValueError(f"partition_rows must be a positive integer, got {partition_rows!r}")
    if isinstance(edges, pd.DataFrame):
        edges = dd.from_pandas(edges, npartitions=1, sort=False)
    _check_edge_columns(edges._meta)
    edges = edges[["from", "to"]]

    if n is not None:
        if not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        state = _dense_state(int(n), int(partition_rows)) if n else None
    else:
        state = _state_from_series(nodes, int(partition_rows))
    raw = edges.map_partitions(
        _local_components,
        None if n is None else int(n),
        meta=pd.DataFrame({"_part": _I64(0), NODE: _I64(0), "comp": _I64(0)}, index=[]),
    )
    if state is None:  # no nodes: the edges must be empty (checked on the workers)
        if int(raw.shape[0].compute()):
            raise ValueError("edges has endpoints but there are no nodes")
        return DaskComponents(table=dd.from_pandas(_table_meta(), npartitions=1), changed=())
    node_divs = tuple(int(d) for d in state.divisions)
    edge_divs = tuple(range(edges.npartitions + 1))
    local = raw.set_index("_part", sorted=True, divisions=edge_divs)
    routes = route(raw[[NODE, "_part"]], NODE, node_divs)
    state, local, routes = dask.persist(state, local, routes)

    changes: list[int] = []
    while not changes or changes[-1]:
        state, changed = dask.persist(*_iteration(state, local, routes, edge_divs, node_divs))
        changes.append(int(changed.compute()))
    del local, routes
    (table,) = dask.persist(_finish(state))
    return DaskComponents(table=table, changed=tuple(changes))


def _check_edge_columns(meta: pd.DataFrame) -> None:
    for col in ("from", "to"):
        if col not in meta.columns:
            raise ValueError(f"edges must have integer columns 'from' and 'to'; missing {col!r}")
        if not pd.api.types.is_integer_dtype(meta[col].dtype):
            raise ValueError(f"edges column {col!r} must be integer, got {meta[col].dtype}")


def _state_meta() -> pd.DataFrame:
    return pd.DataFrame({"parent": _I64(0)}, index=pd.Index([], dtype=_I64, name=NODE))


def _dense_state(n: int, rows: int) -> Any:
    """Node partitions of ``0..n-1``, ``rows`` ids each, built on the workers."""
    import dask.dataframe as dd

    k = math.ceil(n / rows)
    starts = [i * rows for i in range(k)]
    bounds = [(s, min(s + rows, n)) for s in starts]
    return dd.from_map(
        _dense_nodes, bounds, meta=_state_meta(), divisions=(*starts, n - 1),
        label="components-nodes", enforce_metadata=False,
    )


def _dense_nodes(bounds: tuple[int, int]) -> pd.DataFrame:
    ids = np.arange(bounds[0], bounds[1], dtype=_I64)
    return pd.DataFrame({"parent": ids}, index=pd.Index(ids, name=NODE))


def _state_from_series(nodes: Any, rows: int) -> Any:
    """Node partitions of arbitrary ids, range-partitioned on the workers; None without ids."""
    import dask

    if not pd.api.types.is_integer_dtype(nodes._meta.dtype):
        raise ValueError(f"nodes must be an integer Series, got {nodes._meta.dtype}")
    ids = nodes.map_partitions(_node_ids, meta=pd.Series(dtype=_I64, name=NODE))
    count, lo, hi = dask.compute(ids.shape[0], ids.min(), ids.max())
    if count == 0:
        return None
    k = math.ceil(count / rows)
    frame = ids.to_frame()
    if k > 1:  # divisions at quantiles of the ids (computed on the workers)
        ranged = frame.set_index(NODE, npartitions=k)
    else:
        ranged = frame.set_index(NODE, divisions=(int(lo), int(hi)))
    return ranged.map_partitions(_node_chunk, meta=_state_meta())


def _node_ids(s: pd.Series) -> pd.Series:
    if s.isna().any():
        raise ValueError("nodes has nulls")
    return pd.Series(s.to_numpy(dtype=_I64), name=NODE)


def _node_chunk(df: pd.DataFrame) -> pd.DataFrame:
    ids = np.unique(df.index.to_numpy(dtype=_I64))
    return pd.DataFrame({"parent": ids}, index=pd.Index(ids, name=NODE))


def _local_components(
    df: pd.DataFrame, n: int | None, partition_info: dict | None = None
) -> pd.DataFrame:
    """Edges of one partition -> (node, local component) rows, one per distinct endpoint."""
    part = partition_info["number"] if partition_info else 0
    cols = []
    for col in ("from", "to"):
        s = df[col]
        if s.isna().any():
            raise ValueError(f"edges column {col!r} has nulls (partition {part})")
        cols.append(s.to_numpy(dtype=_I64))
    a, b = cols
    if n is not None and a.size:
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise ValueError(f"edge endpoint {int(bad)} is outside the nodes 0..{n - 1}")
    ids, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    m = a.size
    graph = coo_matrix((np.ones(m, dtype=np.int8), (inv[:m], inv[m:])), shape=(ids.size, ids.size))
    _, comp = connected_components(graph, directed=False)
    return pd.DataFrame(
        {"_part": np.full(ids.size, part, dtype=_I64), NODE: ids, "comp": comp.astype(_I64)}
    )


def _iteration(state: Any, local: Any, routes: Any, edge_divs: tuple, node_divs: tuple) -> tuple:
    """One FastSV round in three shuffles. Returns (new state, number of parents changed).

    1. Each node partition sends, per edge partition holding its node ``x``, the parent
       ``f[x]`` and -- when ``f[x]`` is its own -- the grandparent; for a parent owned
       elsewhere it asks the owner once per (parent, edge partition).
    2. The owners answer the edge partitions directly.
    3. Each edge partition hooks and shortcuts its members and sends min-updates home.
    """
    import dask.dataframe as dd

    ask_meta = pd.DataFrame({NODE: _I64(0), "_part": _I64(0)}, index=[])
    asks = state.map_partitions(_asks, routes, meta=ask_meta, align_dataframes=False,
                                enforce_metadata=False)
    at_owner = route(asks, NODE, node_divs)
    msg_meta = pd.DataFrame(
        {"_part": _I64(0), "kind": np.int8(0), NODE: _I64(0), "parent": _I64(0), "grand": _I64(0)},
        index=[],
    )
    answers = state.map_partitions(_answers, at_owner, meta=msg_meta, align_dataframes=False,
                                   enforce_metadata=False)
    members = state.map_partitions(_members, routes, meta=msg_meta, align_dataframes=False,
                                   enforce_metadata=False)
    arrived = route(dd.concat([members, answers]), "_part", edge_divs)
    upd_meta = pd.DataFrame({NODE: _I64(0), "value": _I64(0)}, index=[])
    updates = local.map_partitions(_hook, arrived, meta=upd_meta, align_dataframes=False,
                                   enforce_metadata=False)
    received = route(updates, NODE, node_divs)
    meta = _state_meta().assign(changed=_I64(0))
    new = state.map_partitions(_apply, received, meta=meta, align_dataframes=False,
                               enforce_metadata=False)
    return new[["parent"]], new["changed"].sum()


def _parents(state: pd.DataFrame, routes: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """(node, edge partition, parent, grandparent or -1 when the parent is owned elsewhere)."""
    ids = state.index.to_numpy(dtype=_I64)
    f = state["parent"].to_numpy(dtype=_I64)
    x = routes.index.to_numpy(dtype=_I64)
    part = routes["_part"].to_numpy(dtype=_I64)
    p = f[find(ids, x, "edge endpoint")]
    grand = np.full(p.size, -1, dtype=_I64)
    at, own = locate(ids, p)
    grand[own] = f[at[own]]
    return x, part, p, grand


def _asks(state: pd.DataFrame, routes: pd.DataFrame) -> pd.DataFrame:
    """One request per distinct (parent owned elsewhere, edge partition)."""
    _, part, p, grand = _parents(state, routes)
    remote = grand < 0
    return pd.DataFrame({NODE: p[remote], "_part": part[remote]}).drop_duplicates(ignore_index=True)


def _answers(state: pd.DataFrame, asked: pd.DataFrame) -> pd.DataFrame:
    """The owner's reply: a parent's own parent, to each edge partition that asked."""
    pairs = pd.DataFrame(
        {"p": asked.index.to_numpy(dtype=_I64), "part": asked["_part"].to_numpy(dtype=_I64)}
    ).drop_duplicates()
    p, part = pairs["p"].to_numpy(dtype=_I64), pairs["part"].to_numpy(dtype=_I64)
    fp = state["parent"].to_numpy(dtype=_I64)[find(state.index.to_numpy(dtype=_I64), p, "node")]
    return pd.DataFrame(
        {"_part": part, "kind": np.ones(p.size, np.int8), NODE: p, "parent": fp, "grand": fp}
    )


def _members(state: pd.DataFrame, routes: pd.DataFrame) -> pd.DataFrame:
    x, part, p, grand = _parents(state, routes)
    return pd.DataFrame(
        {"_part": part, "kind": np.zeros(x.size, np.int8), NODE: x, "parent": p, "grand": grand}
    )


def _hook(local: pd.DataFrame, arrived: pd.DataFrame) -> pd.DataFrame:
    """Min-updates of one edge partition.

    With ``m`` the smallest grandparent in a local component, each member ``x`` sends
    ``f[x] <- m`` and ``f[f[x]] <- m``; only values below the current ones, the smallest per
    target.
    """
    members = local[NODE].to_numpy(dtype=_I64)
    comp = local["comp"].to_numpy(dtype=_I64)
    kind = arrived["kind"].to_numpy()
    node = arrived[NODE].to_numpy(dtype=_I64)
    mine, known = kind == 0, kind == 1
    got = node[mine]
    order = np.argsort(got)
    if not np.array_equal(got[order], members):  # one message per member, by construction
        raise RuntimeError("components_table_dask: an edge partition got messages for other nodes")
    pos = np.flatnonzero(mine)[order]
    parent = arrived["parent"].to_numpy(dtype=_I64)[pos]
    grand = arrived["grand"].to_numpy(dtype=_I64)[pos]
    ask = grand < 0
    if ask.any():
        asked = node[known]
        order = np.argsort(asked, kind="stable")
        ans = arrived["grand"].to_numpy(dtype=_I64)[np.flatnonzero(known)[order]]
        grand[ask] = ans[find(asked[order], parent[ask], "node")]
    low = np.full(int(comp.max()) + 1 if comp.size else 0, np.iinfo(_I64).max, dtype=_I64)
    np.minimum.at(low, comp, grand)
    m = low[comp]  # <= g[x], so f[x] <- m also shortcuts x to its grandparent
    hook_self = m < parent  # aggressive hooking
    hook_parent = m < grand  # stochastic hooking: f[f[x]] is g[x]
    target = np.concatenate([members[hook_self], parent[hook_parent]])
    value = np.concatenate([m[hook_self], m[hook_parent]])
    return _min_by_target(target, value)


def _min_by_target(target: np.ndarray, value: np.ndarray) -> pd.DataFrame:
    """One update per target: the smallest value."""
    order = np.argsort(target)
    target, value = target[order], value[order]
    first = np.flatnonzero(np.r_[True, target[1:] != target[:-1]]) if target.size else order[:0]
    low = np.minimum.reduceat(value, first) if target.size else value[:0]
    return pd.DataFrame({NODE: target[first], "value": low})


def _apply(state: pd.DataFrame, received: pd.DataFrame) -> pd.DataFrame:
    """New parents: the smallest of the parent and the updates received."""
    ids = state.index.to_numpy(dtype=_I64)
    old = state["parent"].to_numpy(dtype=_I64)
    new = old.copy()
    if len(received):
        pos = find(ids, received.index.to_numpy(dtype=_I64), "node")
        np.minimum.at(new, pos, received["value"].to_numpy(dtype=_I64))
    changed = np.zeros(ids.size, dtype=_I64)
    changed[:1] = int(np.count_nonzero(new != old))  # one count per partition, summed
    return pd.DataFrame({"parent": new, "changed": changed}, index=state.index)


def _finish(state: Any) -> Any:
    """Component sizes: counts per root sent to the root, then looked up by every node."""
    node_divs = tuple(int(d) for d in state.divisions)
    count_meta = pd.DataFrame({NODE: _I64(0), "count": _I64(0)}, index=[])
    counts = state.map_partitions(_count_roots, meta=count_meta)
    received = route(counts, NODE, node_divs)
    meta = _state_meta().assign(root_size=_I64(0))
    at_root = state.map_partitions(_sum_at_root, received, meta=meta, align_dataframes=False)
    sized = lookup(at_root, "parent", "root_size", "component_size")
    return sized.map_partitions(_table, meta=_table_meta())


def _table_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=_I64) for c in COMPONENT_COLUMNS}, index=pd.Index([], dtype=_I64)
    )


def _count_roots(state: pd.DataFrame) -> pd.DataFrame:
    roots, counts = np.unique(state["parent"].to_numpy(dtype=_I64), return_counts=True)
    return pd.DataFrame({NODE: roots, "count": counts.astype(_I64)})


def _sum_at_root(state: pd.DataFrame, received: pd.DataFrame) -> pd.DataFrame:
    size = np.zeros(len(state), dtype=_I64)
    if len(received):
        pos = find(state.index.to_numpy(dtype=_I64), received.index.to_numpy(dtype=_I64), "node")
        np.add.at(size, pos, received["count"].to_numpy(dtype=_I64))
    return state.assign(root_size=size)


def _table(sized: pd.DataFrame) -> pd.DataFrame:
    ids = sized.index.to_numpy(dtype=_I64)
    return pd.DataFrame(
        {
            "index": ids,
            "component_id": sized["parent"].to_numpy(dtype=_I64),
            "component_size": sized["component_size"].to_numpy(dtype=_I64),
        },
        index=pd.Index(ids),
    )


EDGE_PARTITION_ROWS = 4_000_000
"""Edges per partition when :func:`components_of_groups` makes a Dask DataFrame of them."""


def components_frame_of_groups(
    groups: ExactGroups,
    edges: tuple[np.ndarray, np.ndarray],
    *,
    partition_rows: int = PARTITION_ROWS,
) -> Any:
    """:func:`components_of_groups` left on the workers: the persisted Dask DataFrame
    (:data:`COMPONENT_COLUMNS`, int64, one partition per ``partition_rows`` images in index
    order), nothing gathered.

    Examples
    --------
    >>> import dask
    >>> from dedupdask.analyses import exact_groups
    >>> g = exact_groups(["a", "a", "b", "c"])
    >>> with dask.config.set(scheduler="sync"):
    ...     t = components_frame_of_groups(g, (np.array([2]), np.array([1]))).compute()
    >>> t.values.tolist()
    [[0, 0, 3], [1, 0, 3], [2, 0, 3], [3, 3, 1]]
    """
    import dask.dataframe as dd

    n = groups.n
    rep = groups.rep
    linked = np.flatnonzero(rep != np.arange(n))
    a = np.concatenate([np.asarray(edges[0], dtype=_I64), linked])
    b = np.concatenate([np.asarray(edges[1], dtype=_I64), rep[linked]])
    frame = pd.DataFrame({"from": a, "to": b})
    parts = max(1, math.ceil(len(frame) / EDGE_PARTITION_ROWS))
    res = components_table_dask(
        dd.from_pandas(frame, npartitions=parts, sort=False), n, partition_rows=partition_rows
    )
    return res.table


def components_of_groups(
    groups: ExactGroups,
    edges: tuple[np.ndarray, np.ndarray],
    *,
    partition_rows: int = PARTITION_ROWS,
) -> pd.DataFrame:
    """:func:`dedupdask.analyses.components.components_table` with ``edges``, on the workers.

    The exact groups and the given edges (global indices) become a Dask DataFrame of edges
    whose components :func:`components_table_dask` finds; the table (24 bytes per image)
    comes back, equal to the in-process one.

    Examples
    --------
    >>> import dask
    >>> from dedupdask.analyses import exact_groups
    >>> g = exact_groups(["a", "a", "b", "c"])
    >>> with dask.config.set(scheduler="sync"):
    ...     t = components_of_groups(g, (np.array([2]), np.array([1])))
    >>> t.values.tolist()
    [[0, 0, 3], [1, 0, 3], [2, 0, 3], [3, 3, 1]]
    """
    table = components_frame_of_groups(groups, edges, partition_rows=partition_rows)
    from ..scheduler import gather_frames

    (table,) = gather_frames(table)
    table = table.reset_index(drop=True)
    return table.astype({c: _I64 for c in COMPONENT_COLUMNS}).loc[:, list(COMPONENT_COLUMNS)]
