"""Scheduler stage: the one place where ``client=`` becomes what every stage of a call runs on.

dask resolves its scheduler in :func:`dask.base.get_scheduler`: the argument, then
``dask.config``, then the default ``Client``. A call of :func:`dedupdask.run`,
:func:`dedupdask.extract` or :func:`dedupdask.build` does the same once, in :func:`resolve`,
and every stage of that call -- extraction, the analysis, pixel verification -- asks the
resulting :class:`RunScheduler` (:func:`current`) instead of deciding again:

==================  ===========================================================================
``client=``         what the call runs on
==================  ===========================================================================
a ``Client``        that client (kind ``"distributed"``)
``"tcp://..."``     a client connected for the call, closed at its end
``"sync"``...       that local scheduler (kind ``"local"``; ``processes`` too); no cluster
None                the scheduler dask would use: a ``dask.config`` scheduler other than
                    ``threads`` (``"local"``),
                    else the default ``Client`` (``"distributed"``), else kind ``"auto"``:
                    local threads, and a ``LocalCluster`` of this machine's cores for the
                    process-parallel stages (extraction, verification of many pairs), started
                    the first time one asks and kept to the end of the call -- at most one
                    per call (:mod:`dedupdask.localcluster`: 127.0.0.1 only)
==================  ===========================================================================

The analysis of a small work_dir runs here on local threads, even when a cluster is given
(only verification goes to the workers): while what it would hold here
(:func:`in_process_bytes`) stays within ``max_client_memory`` (default
:data:`MAX_CLIENT_MEMORY`). A larger one runs on the workers -- the given cluster, or the
call's LocalCluster (:meth:`RunScheduler.analysis`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from typing import Any

from .exprlocks import unlock_expression_properties
from .localcluster import DEFAULT_DASHBOARD

__all__ = [
    "IN_PROCESS_BYTES_PER_IMAGE",
    "LOCAL_SCHEDULERS",
    "MAX_CLIENT_MEMORY",
    "RunScheduler",
    "current",
    "dask_client",
    "gather_frames",
    "in_process_bytes",
    "resolve",
]

LOCAL_SCHEDULERS = frozenset(
    {"sync", "synchronous", "single-threaded", "threads", "threading", "processes"}
)
"""Names of dask's local schedulers that ``client=`` accepts."""

MAX_CLIENT_MEMORY = 2**30
"""Default ``max_client_memory``: the memory this process may use to analyse a work_dir on
local threads. Below it that is the fast way (shipping a few MB to fresh workers, which
first import dask, pyarrow and dedupdask, costs seconds); above it the workers do it."""

IN_PROCESS_BYTES_PER_IMAGE = 2000
"""What the in-process analysis holds per image besides its vectors: the per-image tables,
the kNN graph and their temporaries (issue 17: 3M images of d=64 grew the build past 6 GB)."""


def in_process_bytes(n: int, d: int) -> int:
    """Memory the in-process analysis of ``n`` images of width ``d`` holds here (estimate).

    Examples
    --------
    >>> in_process_bytes(500_000, 128) / 2**30 > MAX_CLIENT_MEMORY / 2**30
    True
    """
    return int(n) * (4 * int(d) + IN_PROCESS_BYTES_PER_IMAGE)


_CURRENT: contextvars.ContextVar[RunScheduler | None] = contextvars.ContextVar(
    "dedupdask_run_scheduler", default=None
)


def dask_client(scheduler: Any = None) -> Any:
    """The distributed ``Client`` a ``dask.compute(..., scheduler=scheduler)`` here would run
    on now, or None (``scheduler`` None: dask's current one).

    Examples
    --------
    >>> import dask
    >>> with dask.config.set(scheduler="sync"):
    ...     dask_client() is None
    True
    """
    if "distributed" not in sys.modules:  # no Client can exist (and importing it costs 0.3 s)
        return None
    from dask.base import get_scheduler

    owner = getattr(get_scheduler(scheduler=scheduler), "__self__", None)
    return owner if "Client" in type(owner).__name__ else None


def gather_frames(*frames: Any) -> tuple[Any, ...]:
    """Dask DataFrames / Series brought here as pandas, one partition at a time.

    ``frame.compute()`` first concatenates every partition in one task on a worker (dask
    finalises a collection as ``Repartition(frame, 1)``), so gathering a per-image table of
    millions of rows needed all of it in one worker's memory -- at 5M images the workers of
    ``benchmarks/scale_build.py`` were restarted over and over at 95 % of 4 GiB. Here each
    partition travels on its own and only this process concatenates. Index and order are
    those of ``frame.compute()``.

    Examples
    --------
    >>> import dask, dask.dataframe as dd, pandas as pd
    >>> f = dd.from_pandas(pd.DataFrame({"a": range(5)}), npartitions=3)
    >>> with dask.config.set(scheduler="sync"):
    ...     (out,) = gather_frames(f)
    >>> out["a"].tolist()
    [0, 1, 2, 3, 4]
    """
    import dask
    from dask.dataframe.methods import concat  # what compute() concatenates with

    delayed = [f.to_delayed() for f in frames]
    parts = dask.compute(*[p for d in delayed for p in d])
    out, at = [], 0
    for f, d in zip(frames, delayed, strict=True):
        got = parts[at : at + len(d)]
        at += len(d)
        out.append(concat(list(got)) if got else f._meta)
    return tuple(out)


class RunScheduler:
    """What one call of ``run`` / ``extract`` / ``build`` computes on (see the module's table).

    Attributes
    ----------
    kind : {"distributed", "local", "auto"}
        A distributed client; a local scheduler; or local threads with a LocalCluster on demand.
    local : str or None
        The local scheduler's name (kind ``"local"``; None = the one ``dask.config`` names).
    clusters_started : int
        LocalClusters this call started (0 or 1).
    """

    def __init__(
        self, client: Any, *, dashboard_address: str | None, stack: contextlib.ExitStack
    ) -> None:
        self._stack = stack
        self._dashboard = dashboard_address
        self._client: Any = None
        self.local: str | None = None
        self.clusters_started = 0
        if isinstance(client, str) and client in LOCAL_SCHEDULERS:
            self.kind, self.local = "local", client
            return
        if client is None:
            self._from_dask()
            return
        from distributed import Client

        if isinstance(client, Client):
            self.kind, self._client = "distributed", client
        elif isinstance(client, str):
            self.kind, self._client = "distributed", stack.enter_context(Client(client))
        else:
            raise TypeError(
                "client must be a distributed.Client, a scheduler address or one of "
                f"{sorted(LOCAL_SCHEDULERS)}, got {client!r}"
            )

    def _from_dask(self) -> None:
        """``client=None``: what dask would use (config, then the default Client), else auto."""
        import dask

        chosen = dask.config.get("scheduler", None) or dask.config.get("get", None)
        if chosen in ("threads", "threading"):  # dask's default, said out loud
            chosen = None
        if chosen is not None and not callable(chosen) and str(chosen) in LOCAL_SCHEDULERS:
            self.kind = "local"
            return
        owner = dask_client()
        if owner is None and "distributed" in sys.modules:
            from distributed import get_client

            try:
                owner = get_client()
            except ValueError:  # no default Client
                owner = None
        if owner is not None:
            self.kind, self._client = "distributed", owner
        elif chosen is not None:  # a scheduler function set in dask.config
            self.kind = "local"
        else:
            self.kind = "auto"

    def __repr__(self) -> str:
        what = self.local if self.kind == "local" else self._client
        return f"RunScheduler({self.kind!r}, {what!r}, clusters_started={self.clusters_started})"

    @property
    def client(self) -> Any:
        """The distributed Client of the call so far (given, current, or started), or None."""
        return self._client

    def processes(self, n_workers: int | None = None) -> Any:
        """A distributed Client for process-parallel work, or None under a local scheduler.

        Kind ``"auto"`` starts the call's LocalCluster the first time (``n_workers`` processes,
        default and at most this machine's cores) and returns it again afterwards.
        """
        if self._client is not None or self.kind == "local":
            return self._client
        from .localcluster import local_cluster

        cores = os.cpu_count() or 1
        n = max(1, min(cores, n_workers or cores))
        self._client = self._stack.enter_context(
            local_cluster(n, dashboard_address=self._dashboard)
        )
        self.clusters_started += 1
        return self._client

    @contextlib.contextmanager
    def analysis(self, need: int | None, bound: int | None = None) -> Iterator[None]:
        """Make the analysis' ``dask.compute`` calls run where they should, inside this block.

        ``need`` is what analysing here would hold (:func:`in_process_bytes`; None: unknown,
        every stage goes to the workers). A named local scheduler is used as is. Within
        ``bound`` (default :data:`MAX_CLIENT_MEMORY`) the analysis runs on local threads and only verification goes to a
        distributed client; past it, every stage runs on the client -- for kind ``"auto"``
        the call's LocalCluster, started here.
        """
        import dask

        bound = MAX_CLIENT_MEMORY if bound is None else bound
        if self.kind == "local":
            with dask.config.set(scheduler=self.local) if self.local else contextlib.nullcontext():
                yield
        elif need is not None and need <= bound:
            with dask.config.set(scheduler="threads") if self._client is not None else contextlib.nullcontext():
                yield
        else:
            client = self.processes()
            with client.as_current(), dask.config.set(scheduler=client):
                yield


@contextlib.contextmanager
def resolve(
    client: Any = None, *, dashboard_address: str | None = DEFAULT_DASHBOARD
) -> Iterator[RunScheduler]:
    """Resolve ``client`` once for a call, make it :func:`current`, and close what it opened.

    Inside a call that already resolved one (``run`` -> ``build``), ``client=None`` gives that
    call's :class:`RunScheduler` back, so nested stages never start a second cluster.

    Parameters
    ----------
    client : distributed.Client, str, RunScheduler or None
        A Client, a scheduler address, a local scheduler name, or None (see the module).
    dashboard_address : str or None
        Dashboard of a LocalCluster the call starts (:func:`dedupdask.localcluster.local_cluster`).

    Yields
    ------
    RunScheduler

    Examples
    --------
    >>> with resolve("sync") as run:
    ...     run.kind, run.processes()
    ('local', None)
    """
    unlock_expression_properties()  # no hang between this thread and an in-process scheduler's
    outer = _CURRENT.get()
    if isinstance(client, RunScheduler) or (client is None and outer is not None):
        run = client if isinstance(client, RunScheduler) else outer
        token = _CURRENT.set(run)
        try:
            yield run
        finally:
            _CURRENT.reset(token)
        return
    with contextlib.ExitStack() as stack:
        run = RunScheduler(client, dashboard_address=dashboard_address, stack=stack)
        token = _CURRENT.set(run)
        try:
            yield run
        finally:
            _CURRENT.reset(token)


def current() -> RunScheduler | None:
    """The :class:`RunScheduler` of the call in progress (None outside ``run``/``extract``/``build``)."""
    return _CURRENT.get()
