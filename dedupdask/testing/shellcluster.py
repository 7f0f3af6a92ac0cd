"""A real ``dask scheduler`` + ``dask worker`` cluster on 127.0.0.1, for tests and benchmarks.

The processes are started with the commands a user types, each in its own session, so a test
can kill one (a worker under its nanny is restarted as on a real cluster) and a benchmark can
sample their memory from outside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["shell_cluster"]


def _dask_cmd() -> list[str]:
    exe = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "dask"]


@contextlib.contextmanager
def shell_cluster(
    tmp: str | os.PathLike[str],
    n_workers: int = 2,
    nthreads: int = 1,
    env: dict[str, str] | None = None,
    *,
    memory_limit: str | None = None,
    start_timeout: float = 60.0,
    workers_timeout: float = 120.0,
    stop_timeout: float = 20.0,
) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes; yield
    (address, processes: the scheduler's first).

    ``tmp`` holds the scheduler file, the logs (``scheduler.log``, ``worker<i>.log``) and the
    workers' local directories. ``env``: their environment (default: this process's);
    ``memory_limit``: each worker's ``--memory-limit`` (default: dask's). The scheduler must
    write its file (and answer) within ``start_timeout`` s, the workers join within
    ``workers_timeout`` s;
    on exit each process gets SIGTERM, then SIGKILL after ``stop_timeout`` s.
    """
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    sched_file = tmp / "scheduler.json"
    logs = []
    procs: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = open(tmp / f"{name}.log", "wb")
        logs.append(log)
        p = subprocess.Popen(_dask_cmd() + args, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, env=env)  # fmt: skip
        procs.append(p)
        return p

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)], "scheduler")  # fmt: skip
        deadline = time.time() + start_timeout
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        if not sched_file.exists():
            raise RuntimeError("dask scheduler did not start: " + (tmp / "scheduler.log").read_text())
        limit = ["--memory-limit", memory_limit] if memory_limit else []
        for i in range(n_workers):
            start(["worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                   "--nthreads", str(nthreads), *limit, "--no-dashboard", "--name", f"w{i}",
                   "--local-directory", str(tmp / f"w{i}"), "--death-timeout", "60"], f"worker{i}")  # fmt: skip
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=start_timeout) as c:
            c.wait_for_workers(n_workers, timeout=workers_timeout)
            address = c.scheduler.address
        yield address, procs
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
        for log in logs:
            log.close()
