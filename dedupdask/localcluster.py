"""Local cluster stage: the one way dedupdask starts a ``LocalCluster`` on this machine.

Every process it starts listens on 127.0.0.1 only (scheduler, nannies, workers, and the
scheduler's dashboard unless ``dashboard_address`` says otherwise): task names carry archive
URLs and bucket names, and the dashboard serves worker logs and call stacks.

Dask starts its worker processes with multiprocessing's ``spawn``, which re-imports the main
script in each of them. A script that calls ``ddk.run`` at top level, without
``if __name__ == "__main__":``, would run again in every worker; Dask then fails with pages of
"Nanny failed to start". :func:`check_main_guard` says what to do instead, in one line.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["DEFAULT_DASHBOARD", "MAIN_GUARD_MESSAGE", "check_main_guard", "local_cluster"]

DEFAULT_DASHBOARD = "127.0.0.1:0"
"""Where a local run serves its dashboard: this machine only, on a free port."""

MAIN_GUARD_MESSAGE = (
    "{where}calls dedupdask at top level, and the local Dask cluster it starts re-imports that "
    "script in each worker process (multiprocessing 'spawn'); put the call under "
    "'if __name__ == \"__main__\":', or pass client=\"threads\" or a Client / scheduler address"
)


def _spawn_reimports_main() -> bool:
    """Whether a process started by Dask re-runs this process's main module (as multiprocessing does)."""
    import dask

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    if method not in ("spawn", "forkserver"):
        return False
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None:  # python -m pkg.mod: re-imported unless it is a package's __main__
        return spec_name != "__main__" and not spec_name.endswith(".__main__")
    path = getattr(main, "__file__", None)
    return path is not None and os.path.splitext(os.path.basename(path))[0] != "ipython"


def _module_frame(name: str) -> types.FrameType | None:
    """The frame running the top level of the module called ``name`` (``__main__``...), if any."""
    f: types.FrameType | None = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "<module>" and f.f_globals.get("__name__") == name:
            return f
        f = f.f_back
    return None


def _guarded(frame: types.FrameType) -> bool | None:
    """Whether ``frame``'s current line is inside a top-level ``if __name__ ...:`` block.

    None when the script's source cannot be read (then only a failed start tells).
    """
    try:
        with open(frame.f_code.co_filename, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    for stmt in tree.body:
        if stmt.lineno <= line <= (stmt.end_lineno or stmt.lineno):
            return (
                isinstance(stmt, ast.If)
                and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(stmt.test))
                and any(s.lineno <= line <= (s.end_lineno or s.lineno) for s in stmt.body)
            )
    return None


def _where(frame: types.FrameType) -> str:
    return f"{frame.f_code.co_filename} (line {frame.f_lineno}) "


def check_main_guard() -> None:
    """Refuse, in one line, to start a LocalCluster from a script's unguarded top level.

    In the script's own process this raises ``RuntimeError`` before any worker starts. In a
    worker process that is re-importing the script (``__mp_main__``), the process exits with the
    same line instead of starting a cluster of its own.

    Raises
    ------
    RuntimeError
        When the caller is the top level of a script that worker processes will re-run.
    """
    child = _module_frame("__mp_main__")
    if child is not None:
        raise SystemExit("dedupdask: error: " + MAIN_GUARD_MESSAGE.format(where=_where(child)))
    top = _module_frame("__main__")
    if top is not None and _spawn_reimports_main() and _guarded(top) is False:
        raise RuntimeError(MAIN_GUARD_MESSAGE.format(where=_where(top)))


@contextlib.contextmanager
def local_cluster(
    n_workers: int,
    *,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    silence_logs: int = logging.WARNING,
    **worker_kwargs: Any,
) -> Iterator[Any]:
    """Start a ``LocalCluster`` of ``n_workers`` one-thread processes bound to 127.0.0.1.

    Parameters
    ----------
    n_workers : int
        Worker processes.
    dashboard_address : str or None
        ``host:port`` of the scheduler's dashboard (``"127.0.0.1:0"``: this machine, a free
        port; ``"0.0.0.0:8787"`` would show it to the network). None or ``""``: no dashboard,
        and the scheduler's HTTP server (Dask always starts one) serves ``/health`` only, on
        127.0.0.1.
    silence_logs : int
        Level below which Dask's log messages are dropped.
    **worker_kwargs
        Passed to the workers (``memory_limit``...).

    Yields
    ------
    distributed.Client
        A client of the cluster, closed with it.

    Examples
    --------
    >>> with local_cluster(1) as client:  # doctest: +SKIP
    ...     client.dashboard_link
    'http://127.0.0.1:40123/status'
    """
    check_main_guard()
    import dask
    from distributed import Client, LocalCluster

    show = bool(dashboard_address)
    routes = {} if show else {"distributed.scheduler.http.routes": ["distributed.http.health"]}
    try:
        with dask.config.set(routes):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=dashboard_address if show else DEFAULT_DASHBOARD,
                scheduler_kwargs={"dashboard": show},
                worker_dashboard_address=None,
                silence_logs=silence_logs,
                **worker_kwargs,
            )
    except Exception as e:
        top = _module_frame("__main__")
        if top is not None and _spawn_reimports_main() and _guarded(top) is not True:
            raise RuntimeError(
                "the local Dask cluster did not start; if " + MAIN_GUARD_MESSAGE.format(where=_where(top))
                + f" (Dask said: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
            ) from e
        raise
    with cluster, Client(cluster) as client:
        yield client
