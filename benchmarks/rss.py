"""Benchmarks' one memory sampler: peak resident memory of processes, polled from outside.

``ru_maxrss`` is no use for this: Linux keeps a parent's peak across fork+exec, so spawned
workers would report the benchmark process's own peak, and a process cannot see another's
peak after the fact. A thread here polls ``psutil`` every ``interval`` seconds instead.

Each sampled entry is a name and a pid. With ``tree=True`` an entry's value is the sum over
the process and all its descendants of the PSS (proportional set size: shared pages divided
among the processes that share them) where Linux gives it, else the RSS; a child with its
parent's command line is a fork that has not exec'ed yet (with vfork/CLONE_VM it reports its
parent's very address space) and is left out -- Dask's workers are spawned processes with
their own command line, so they count.

Sampling is not free: the kernel walks a process's page tables to give its PSS, about 2 ms
per 450 MB process on a 2-core EPYC, so one sample of a LocalCluster's tree took 18 ms, and
every 50 ms that was a quarter of a core taken from the cores being measured (dedupdask's
extraction ran in 16.75 s instead of 14.13). The sampler therefore keeps its own share of one
core under ``max_share`` (default 2 %): after a sample that took ``t`` seconds it waits at
least ``t / max_share``. A plateau of memory is still seen; a spike shorter than the wait may
not be.

Usage::

    from rss import RssSampler

    with RssSampler({"client": os.getpid(), "worker0": pid0}) as rss:
        ...
    rss.peak_mb()  # {"client": 412.3, "worker0": 1033.0}
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Mapping

__all__ = ["RssSampler"]


class RssSampler:
    """Peak memory per named process (or process tree), sampled every ``interval`` seconds.

    Parameters
    ----------
    pids : mapping of name to pid, or iterable of pids (named by their pid)
        The processes.
    interval : float
        Seconds between samples.
    tree : bool
        Sum each process's tree (PSS), see the module.
    max_share : float
        Longest share of one core the sampling may take (it waits longer between samples
        when a sample is slow), see the module.

    Attributes
    ----------
    peak : dict of name to int
        Peak bytes seen so far (the first sample is taken at start).
    """

    def __init__(
        self,
        pids: Mapping[str, int] | Iterable[int],
        *,
        interval: float = 0.05,
        tree: bool = False,
        max_share: float = 0.02,
    ) -> None:
        import psutil

        self._ps = psutil
        named = dict(pids) if isinstance(pids, Mapping) else {str(p): int(p) for p in pids}
        self.procs = {name: psutil.Process(pid) for name, pid in named.items()}
        self.interval = interval
        self.max_share = max_share
        self.tree = tree
        self.pss = True
        self.peak = dict.fromkeys(self.procs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict[str, int]:
        """One sample now: bytes per name (0 for a process that went away)."""
        return {name: self._bytes(p) for name, p in self.procs.items()}

    def _bytes(self, proc: object) -> int:
        ps = self._ps
        try:
            if not self.tree:
                return int(proc.memory_info().rss)  # type: ignore[attr-defined]
            total = 0
            for p in [proc, *proc.children(recursive=True)]:  # type: ignore[attr-defined]
                with contextlib.suppress(ps.Error):
                    if p is not proc and p.cmdline() == self._cmdline(p.ppid()):
                        continue
                    total += self._one(p)
            return total
        except ps.Error:  # a process that went away
            return 0

    def _one(self, p: object) -> int:
        if self.pss:
            try:
                return int(p.memory_full_info().pss)  # type: ignore[attr-defined]
            except (AttributeError, self._ps.AccessDenied):
                self.pss = False
        return int(p.memory_info().rss)  # type: ignore[attr-defined]

    def _cmdline(self, pid: int) -> list[str] | None:
        try:
            return self._ps.Process(pid).cmdline()
        except self._ps.Error:
            return None

    def _loop(self) -> None:
        while True:
            t0 = time.perf_counter()
            for name, b in self.sample().items():
                self.peak[name] = max(self.peak[name], b)
            took = time.perf_counter() - t0
            if self._stop.wait(max(self.interval, took / self.max_share)):
                return

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop sampling; the peaks in MB (MiB)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.peak_mb()

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def peak_mb(self) -> dict[str, float]:
        """Peak per name in MB (MiB)."""
        return {name: b / 2**20 for name, b in self.peak.items()}

    def max_mb(self) -> float:
        """The largest peak of any entry, in MB (MiB)."""
        return max(self.peak.values(), default=0) / 2**20
