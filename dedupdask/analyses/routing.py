"""Analysis stage helper, routing: messages between the partitions of Dask DataFrames.

The distributed analyses keep per-image state in partitions that own a range of keys (known
``divisions``) and exchange messages between them. A message is a row whose destination is a
key: :func:`route` sends every row to the partition that owns it (``set_index`` with given
divisions, so a shuffle on the workers — p2p on a distributed cluster — and nothing computed
on the client), and a partition-wise function then meets each partition of the state with the
messages addressed to it (``dd.map_partitions`` of frames with equal divisions).

Every sender removes duplicate destinations before it sends, so what a partition receives
is bounded by (distinct keys it owns) x (partitions that send to it), never by how many rows
share a key: a component of a million images or a placeholder image copied a million times
costs its owner one row per sending partition.

:func:`lookup` is the round trip built from two routes: each row asks for a column of the
row its key points to (``parent[parent[x]]``, a root's size...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "NODE", "REPLY", "ask", "find", "locate", "lookup", "numbered", "partition_sums", "route", "route_touched",
    "shuffle_method", "sort_by_key",
]  # fmt: skip

NODE = "node"
"""Name of the key index of node-owning partitions and of a message's destination column."""

REPLY = "_reply"
"""Message column: a key owned by the partition that waits for the answer."""


def route(messages: Any, column: str, divisions: Sequence[int]) -> Any:
    """Send each row of ``messages`` to the partition of ``divisions`` that owns ``column``.

    Parameters
    ----------
    messages : dask.dataframe.DataFrame
        Rows with an int64 destination ``column``.
    column : str
        The destination key; it becomes the (sorted) index of the result.
    divisions : sequence of int
        The divisions of the receiving frame: partition ``i`` owns keys in
        ``[divisions[i], divisions[i + 1])`` (the last one includes its upper bound).

    Returns
    -------
    dask.dataframe.DataFrame
        ``len(divisions) - 1`` partitions aligned with the receiving frame.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> m = dd.from_pandas(pd.DataFrame({"to": [5, 0, 9, 3], "v": [1, 2, 3, 4]}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     r = route(m, "to", (0, 4, 9))
    ...     [r.partitions[i].compute()["v"].tolist() for i in range(r.npartitions)]
    [[2, 4], [1, 3]]
    """
    return messages.set_index(
        column, divisions=tuple(int(d) for d in divisions), shuffle_method=shuffle_method()
    )


def _tag_part(df: pd.DataFrame, column: str, part_of: np.ndarray) -> pd.DataFrame:
    return df.assign(_part=part_of[df[column].to_numpy(np.int64)])


def route_touched(
    frame: Any, column: str, n_keys: int, n_parts: int | Callable[[int], int]
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Send the rows of ``frame`` to at most ``n_parts`` partitions, each holding the rows of a
    run of consecutive values of the int64 key ``column`` (in ``0 .. n_keys - 1``) that occur.
    ``n_parts`` may be a function of the number of touched keys.

    Only the distinct keys come here (at most ``n_keys`` integers), so a task can be planned per
    group of touched buckets or archives without a partition per possible key.

    Returns
    -------
    (dask.dataframe.DataFrame, ndarray, ndarray)
        The routed frame (a ``_part`` index), the touched keys (sorted), and each key's partition.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> m = dd.from_pandas(pd.DataFrame({"k": [7, 2, 7, 5]}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     r, touched, part_of = route_touched(m, "k", 10, 2)
    ...     touched.tolist(), part_of[touched].tolist(), r.npartitions
    ([2, 5, 7], [0, 0, 1], 2)
    """
    import dask

    (keys,) = dask.compute(frame[column].unique())
    touched = np.sort(np.asarray(keys, dtype=np.int64))
    n_parts = max(1, min(touched.size, n_parts(touched.size) if callable(n_parts) else n_parts))
    part_of = np.zeros(n_keys, np.int64)
    part_of[touched] = np.arange(touched.size, dtype=np.int64) * n_parts // max(1, touched.size)
    tagged = frame.map_partitions(_tag_part, column, part_of, meta=frame._meta.assign(_part=np.int64(0)))
    return route(tagged, "_part", range(n_parts + 1)), touched, part_of


def shuffle_method() -> str:
    """How :func:`route` shuffles: ``dataframe.shuffle.method`` if set, else by the scheduler.

    Dask's own default looks for a default ``Client`` only; this asks
    :func:`dask.base.get_scheduler` (the one place dask resolves the scheduler), so a
    ``scheduler="sync"`` setting wins over a live client: ``p2p`` on a distributed scheduler,
    in-memory ``tasks`` on a local one (whose data is small; ``disk`` writes every message).
    """
    import dask
    from dask.base import get_scheduler

    configured = dask.config.get("dataframe.shuffle.method", None)
    if configured:
        return str(configured)
    sched = get_scheduler()
    owner = getattr(sched, "__self__", None)
    return "p2p" if type(owner).__module__.startswith("distributed") else "tasks"


def numbered(frame: Any) -> tuple[Any, tuple[int, ...]]:
    """``frame`` indexed by its partition number (``_part``), with divisions ``0..npartitions``.

    Messages routed on a ``_part`` column with these divisions meet the partition they name.
    The frame is not computed: every row of partition ``i`` gets index ``i``.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f, divs = numbered(dd.from_pandas(pd.DataFrame({"a": range(5)}), npartitions=2))
    >>> divs
    (0, 1, 2)
    >>> with dask.config.set(scheduler="sync"):
    ...     f.compute().index.tolist()
    [0, 0, 0, 1, 1]
    """
    n = frame.npartitions
    meta = frame._meta.assign(_part=np.int64(0))
    tagged = frame.map_partitions(_tag_partition, meta=meta)
    divisions = tuple(range(n + 1))
    return tagged.set_index("_part", sorted=True, divisions=divisions), divisions


def _tag_partition(df: pd.DataFrame, partition_info: dict | None = None) -> pd.DataFrame:
    return df.assign(_part=np.int64(partition_info["number"] if partition_info else 0))


def locate(ids: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in the sorted unique array ``ids``, and which keys are there.

    A contiguous ``ids`` (the dense node partitions) is indexed by subtraction.

    Examples
    --------
    >>> pos, ok = locate(np.array([2, 5, 7]), np.array([7, 3]))
    >>> pos[ok].tolist(), ok.tolist()
    ([2], [True, False])
    """
    if ids.size == 0:
        return np.zeros(keys.size, dtype=np.int64), np.zeros(keys.size, dtype=bool)
    if int(ids[-1]) - int(ids[0]) == ids.size - 1:
        pos = keys - ids[0]
        ok = (pos >= 0) & (pos < ids.size)
        return np.where(ok, pos, 0), ok
    order = np.argsort(keys)  # sorted queries: several times faster than random ones
    pos = np.empty(keys.size, dtype=np.int64)
    pos[order] = np.searchsorted(ids, keys[order])
    pos = pos.clip(max=ids.size - 1)
    return pos, ids[pos] == keys


def find(ids: np.ndarray, keys: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``keys`` in the sorted unique array ``ids``; ValueError names a missing key.

    Examples
    --------
    >>> find(np.array([2, 5, 7]), np.array([7, 2]), "node").tolist()
    [2, 0]
    >>> find(np.array([2, 5, 7]), np.array([3]), "node")
    Traceback (most recent call last):
    ...
    ValueError: node 3 is not among the nodes
    """
    pos, ok = locate(ids, keys)
    if not ok.all():
        raise ValueError(f"{what} {int(keys[np.flatnonzero(~ok)[0]])} is not among the nodes")
    return pos


def lookup(frame: Any, key: str, value: str, out: str) -> Any:
    """Add column ``out`` = ``value`` of the row whose index equals this row's ``key``.

    ``frame`` is indexed by unique int64 node ids with known divisions and every ``key``
    value is one of its ids. Keys a partition owns are answered in place; the others go to
    their owner as one request per distinct key, and come back to the asking partition.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> ids = pd.Index([0, 1, 2, 3], name=NODE)
    >>> f = dd.from_pandas(pd.DataFrame({"p": [0, 0, 1, 2]}, index=ids), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     lookup(f, "p", "p", "pp").compute()["pp"].tolist()
    [0, 0, 0, 1]
    """
    divisions = tuple(int(d) for d in frame.divisions)
    req = frame.map_partitions(
        _requests, key, meta=pd.DataFrame({NODE: np.int64(0), REPLY: np.int64(0)}, index=[])
    )
    asked = route(req, NODE, divisions)
    ans_meta = pd.DataFrame({REPLY: np.int64(0), "_key": np.int64(0), "_value": np.int64(0)}, index=[])
    answers = frame.map_partitions(_answer, asked, value, meta=ans_meta, align_dataframes=False)
    back = route(answers, REPLY, divisions)
    meta = frame._meta.assign(**{out: np.int64(0)})
    return frame.map_partitions(_attach, back, key, value, out, meta=meta, align_dataframes=False)


def _requests(df: pd.DataFrame, key: str, partition_info: dict | None = None) -> pd.DataFrame:
    keys = np.unique(df[key].to_numpy(dtype=np.int64))
    remote = keys[~locate(df.index.to_numpy(dtype=np.int64), keys)[1]]
    reply = partition_info["division"] if partition_info else 0
    return pd.DataFrame({NODE: remote, REPLY: np.full(remote.size, reply, dtype=np.int64)})


def _answer(df: pd.DataFrame, asked: pd.DataFrame, value: str) -> pd.DataFrame:
    keys = asked.index.to_numpy(dtype=np.int64)
    pos = find(df.index.to_numpy(dtype=np.int64), keys, "node")
    return pd.DataFrame(
        {
            REPLY: asked[REPLY].to_numpy(dtype=np.int64),
            "_key": keys,
            "_value": df[value].to_numpy(dtype=np.int64)[pos],
        }
    )


def _attach(df: pd.DataFrame, back: pd.DataFrame, key: str, value: str, out: str) -> pd.DataFrame:
    ids = df.index.to_numpy(dtype=np.int64)
    keys = df[key].to_numpy(dtype=np.int64)
    res = np.empty(keys.size, dtype=np.int64)
    pos, local = locate(ids, keys)
    res[local] = df[value].to_numpy(dtype=np.int64)[pos[local]]
    if not local.all():
        order = np.argsort(back["_key"].to_numpy(dtype=np.int64), kind="stable")
        got = back["_key"].to_numpy(dtype=np.int64)[order]
        vals = back["_value"].to_numpy(dtype=np.int64)[order]
        res[~local] = vals[find(got, keys[~local], "node")]
    return df.assign(**{out: res})


def ask(frame: Any, table: Any, value: str, columns: dict[str, str]) -> Any:
    """Add, for each ``key: out`` of ``columns``, column ``out`` = ``value`` of the row of
    ``table`` whose index equals this row's ``key``.

    ``table`` is indexed by unique int64 node ids with known divisions and holds every key;
    ``frame`` may be partitioned any way (its rows stay where they are). Each partition of
    ``frame`` sends one request per distinct key of all ``columns`` and gets the answers back
    by partition number: an image that a million rows point to (a hub of a kNN graph, a
    placeholder picture) costs its owner one request per asking partition, where routing
    the rows themselves would pile them all onto that owner.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> t = dd.from_pandas(pd.DataFrame({"g": [10, 11, 12]}, index=pd.Index([0, 1, 2], name=NODE)),
    ...                    npartitions=2)
    >>> f = dd.from_pandas(pd.DataFrame({"a": [2, 0, 2], "b": [1, 1, 0]}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     ask(f, t, "g", {"a": "ga", "b": "gb"}).compute().values.tolist()
    [[2, 1, 12, 11], [0, 1, 10, 11], [2, 0, 12, 10]]
    """
    n = frame.npartitions
    req_meta = pd.DataFrame({NODE: np.int64(0), REPLY: np.int64(0)}, index=[])
    req = frame.map_partitions(_asks, list(columns), meta=req_meta, enforce_metadata=False)
    asked = route(req, NODE, tuple(int(d) for d in table.divisions))
    ans_meta = pd.DataFrame({REPLY: np.int64(0), "_key": np.int64(0), "_value": np.int64(0)}, index=[])
    answers = table.map_partitions(_answer, asked, value, meta=ans_meta, align_dataframes=False)
    back = route(answers, REPLY, tuple(range(n + 1)))
    meta = frame._meta.assign(**{out: np.int64(0) for out in columns.values()})
    return frame.map_partitions(
        _attach_asked, back, columns, meta=meta, align_dataframes=False, enforce_metadata=False
    )


def _asks(df: pd.DataFrame, columns: list[str], partition_info: dict | None = None) -> pd.DataFrame:
    keys = np.unique(np.concatenate([df[c].to_numpy(dtype=np.int64) for c in columns]))
    reply = partition_info["number"] if partition_info else 0
    return pd.DataFrame({NODE: keys, REPLY: np.full(keys.size, reply, dtype=np.int64)})


def _attach_asked(df: pd.DataFrame, back: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    order = np.argsort(back["_key"].to_numpy(dtype=np.int64), kind="stable")
    got = back["_key"].to_numpy(dtype=np.int64)[order]
    vals = back["_value"].to_numpy(dtype=np.int64)[order]
    return df.assign(
        **{out: vals[find(got, df[key].to_numpy(dtype=np.int64), "node")] for key, out in columns.items()}
    )


SAMPLES = 64
"""Quantiles each partition sends to choose the boundaries of :func:`sort_by_key`."""


def _key_sample(df: pd.DataFrame, column: str) -> tuple[np.ndarray, int]:
    keys = np.sort(df[column].to_numpy(dtype=np.int64))
    if not keys.size:
        return keys, 0
    at = np.linspace(0, keys.size - 1, min(SAMPLES, keys.size)).round().astype(np.int64)
    return keys[at], int(keys.size)


def _sorted_part(df: pd.DataFrame, column: str, then: list[str], columns: list[str]) -> pd.DataFrame:
    df = df.reset_index().loc[:, columns]
    return df.sort_values([column, *then], kind="stable").reset_index(drop=True)


def sort_by_key(frame: Any, column: str, then: Sequence[str] = (), *, npartitions: int | None = None) -> Any:
    """``frame`` sorted by the int64 ``column`` (then ``then``) across partitions, on the workers.

    Each partition sends :data:`SAMPLES` quantiles of its keys and its row count (the only
    data that comes here); the boundaries that split the rows evenly are chosen from them,
    every row is routed to its range (:func:`route`) and each partition sorted there. A
    key's rows all land in one partition, so make keys (nearly) unique.

    Returns
    -------
    dask.dataframe.DataFrame
        ``frame``'s columns (``column`` included), partitions in increasing key ranges, not
        computed; ``frame`` itself when it has no row.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f = dd.from_pandas(pd.DataFrame({"k": [5, 1, 4, 2, 3], "v": list("abcde")}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     sort_by_key(f, "k").compute()["v"].tolist()
    ['b', 'd', 'e', 'c', 'a']
    """
    import dask

    parts = frame.to_delayed()
    got = dask.compute(*[dask.delayed(_key_sample)(p, column) for p in parts])
    total = sum(c for _, c in got)
    if not total:
        return frame
    keys = np.concatenate([k for k, c in got if c])
    weight = np.concatenate([np.full(k.size, c / k.size) for k, c in got if c])
    order = np.argsort(keys, kind="stable")
    keys, cum = keys[order], np.cumsum(weight[order])
    n = max(1, int(npartitions or frame.npartitions))
    inner = keys[np.searchsorted(cum, total * np.arange(1, n) / n).clip(max=keys.size - 1)]
    divisions = np.unique(np.concatenate([[keys[0]], inner, [keys[-1]]]))
    if divisions.size < 2:
        divisions = np.array([keys[0], keys[0] + 1])
    routed = route(frame, column, divisions.tolist())
    return routed.map_partitions(
        _sorted_part, column, list(then), list(frame.columns), meta=frame._meta, enforce_metadata=False
    )


def partition_sums(frame: Any, fn: Any, *args: Any) -> np.ndarray:
    """The sum over partitions of ``fn(partition, *args)`` (a small numeric array each):
    counts computed where the partitions live, without concatenating any of them.

    Examples
    --------
    >>> import dask, dask.dataframe as dd
    >>> f = dd.from_pandas(pd.DataFrame({"a": range(5)}), npartitions=2)
    >>> with dask.config.set(scheduler="sync"):
    ...     partition_sums(f, lambda p: np.array([len(p), p["a"].sum()])).tolist()
    [5, 10]
    """
    import dask

    parts = frame.to_delayed()
    got = dask.compute(*[dask.delayed(fn)(p, *args) for p in parts])
    return np.sum(np.stack([np.asarray(g) for g in got]), axis=0)
