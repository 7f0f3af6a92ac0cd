"""One place decides the scheduler: ``client=`` resolved once per call, at most one LocalCluster."""

from __future__ import annotations

import os

import dask
import distributed
import pandas as pd
import pytest

import dedupdask as ddk
from dedupdask import scheduler
from dedupdask.datasets import make_sample_shards


@pytest.fixture(scope="module")
def dct_work(tmp_path_factory):
    """Two small shards extracted with the weight-free DCT model on the sync scheduler."""
    root = tmp_path_factory.mktemp("sched")
    shards = make_sample_shards(str(root / "shards"), n_shards=2, images_per_shard=20, n_near=6,
                                n_exact=2, formats=("tar",), broken=False, seed=4)  # fmt: skip
    wd = str(root / "work")
    ddk.extract(shards.root, wd, model_path="dct", client="sync", progress=False)
    return shards, wd


@pytest.fixture
def cluster_starts(monkeypatch):
    """LocalClusters constructed while the test runs (dedupdask builds its one in localcluster)."""
    started = []

    class Counting(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            started.append(kwargs.get("n_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", Counting)
    return started


def test_resolve_kinds():
    with scheduler.resolve("sync") as run:
        assert (run.kind, run.local, run.processes(), run.client) == ("local", "sync", None, None)
        with scheduler.resolve() as inner:  # a stage inside the call gets the call's
            assert inner is run and scheduler.current() is run
    assert scheduler.current() is None
    with dask.config.set(scheduler="sync"), scheduler.resolve() as run:
        assert run.kind == "local" and run.local is None  # dask.config wins, as in dask
    with dask.config.set(scheduler="threads"), scheduler.resolve() as run:
        assert run.kind == "auto" and run.client is None and run.clusters_started == 0
    with pytest.raises(TypeError, match="client must be"):
        with scheduler.resolve(3):
            pass


def test_build_and_run_without_input_dir(dct_work):
    """``ddk.build(work_dir)`` beside ``ddk.extract``; ``ddk.run(work_dir=..., run_mode=2)``."""
    shards, wd = dct_work
    a = ddk.build(wd, client="sync", progress=False)
    b = ddk.run(work_dir=wd, run_mode=2, client="sync", progress=False)
    assert isinstance(a, ddk.DedupResult) and a.summary()["images"] == shards.n_images
    pd.testing.assert_frame_equal(a.similarity.compute(), b.similarity.compute())
    pd.testing.assert_frame_equal(a.components.compute(), b.components.compute())
    with pytest.raises(TypeError, match="needs work_dir"):
        ddk.run(run_mode=2, client="sync")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="verification uses processes only with >= 2 cores")
def test_run_mode_0_starts_one_local_cluster(dct_work, tmp_path, cluster_starts, monkeypatch):
    """Extraction and verification of many pairs share the call's one LocalCluster (it used to
    start a second one for verification past PROCESS_MIN_PAIRS)."""
    import dedupdask.verify as verify

    monkeypatch.setattr(verify, "PROCESS_MIN_PAIRS", 1)
    monkeypatch.setattr(verify, "CLUSTER_MIN_PAIRS", 1)
    shards, ref_wd = dct_work
    res = ddk.run(shards.root, str(tmp_path / "wd"), model_path="dct", progress=False,
                  dashboard_address=None, verify_threshold=0.5)  # fmt: skip
    assert res.run["verification"]["candidates"] > 0  # verification ran, on the cluster
    assert len(cluster_starts) == 1, cluster_starts
    with dask.config.set(scheduler="sync"):
        ref = ddk.build(ref_wd, progress=False, verify_threshold=0.5)
    pd.testing.assert_frame_equal(res.similarity.compute(), ref.similarity.compute())


def test_named_local_scheduler_never_starts_a_cluster(dct_work, cluster_starts, monkeypatch):
    import dedupdask.verify as verify

    monkeypatch.setattr(verify, "PROCESS_MIN_PAIRS", 1)
    _, wd = dct_work
    # incremental=False: the work_dir is built before, and its kept scores would be reused
    res = ddk.build(wd, client="threads", progress=False, verify_threshold=0.5, incremental=False)
    assert res.run["verification"]["candidates"] > 0
    assert cluster_starts == []


def test_client_memory_bound_sends_the_analysis_to_the_workers(dct_work, cluster_starts):
    """Past ``max_client_memory`` the analysis runs on the workers -- here the call's one
    LocalCluster -- with the same results; below it, here, without a cluster."""
    _, wd = dct_work
    with dask.config.set(scheduler="sync"):
        ref = ddk.build(wd, progress=False)
    here = ddk.build(wd, progress=False)
    assert cluster_starts == [] and here.run["analysed_on"] == "this process"
    names = ("similarity", "components", "outliers", "issues")
    want = {name: getattr(ref, name).compute() for name in names}  # read before the next build rewrites them
    res = ddk.build(wd, progress=False, max_client_memory=1, dashboard_address=None)
    assert len(cluster_starts) == 1 and res.run["analysed_on"] == "workers"
    assert res.run["counts"] == ref.run["counts"]
    for name in names:
        pd.testing.assert_frame_equal(getattr(res, name).compute(), want[name], obj=name)
    with pytest.raises(ValueError, match="max_client_memory"):
        ddk.build(wd, max_client_memory="lots")


OPPOSITE_ORDERS = """
import os, sys, threading, time
import dask, dask.dataframe as dd, pandas as pd
from dask.dataframe.dask_expr._expr import Expr, PartitionsFiltered
if sys.argv[1] == "resolved":  # what every run, extract and build does first
    from dedupdask.scheduler import resolve
    with resolve("sync"):
        pass
meta = pd.DataFrame({"x": [1]}).iloc[:0]
def frame():
    return dd.from_delayed([dask.delayed(pd.DataFrame)({"x": [i]}) for i in range(2)], meta=meta,
                           verify_meta=False)
# A: a FromDelayed's divisions (PartitionsFiltered's property, then Expr's, via super());
# B: a Blockwise's divisions (Expr's property, then its frame's PartitionsFiltered one)
a, b = frame().expr, (frame() + 1).expr
for prop in (PartitionsFiltered.__dict__["divisions"], Expr.__dict__["divisions"]):
    prop.func = (lambda f: lambda self: (time.sleep(0.3), f(self))[1])(prop.func)  # both at once
threads = [threading.Thread(target=lambda e=e: e.divisions, daemon=True) for e in (a, b)]
threads[0].start(); time.sleep(0.1); threads[1].start()
for t in threads:
    t.join(3)
if any(t.is_alive() for t in threads):
    print("hung", flush=True)
    os._exit(0)  # the two threads still hold the locks
print("finished", a.divisions, b.divisions)
"""


def test_two_threads_never_wait_for_each_other_on_dask_expressions():
    """With a LocalCluster the scheduler materialises graphs in a thread of this process while
    this thread builds the next expression. On Python 3.11 each cached property of dask's
    expressions holds one lock for all instances, and two threads reading ``divisions`` in
    opposite orders hung a cluster build in CI; a resolved scheduler drops those locks
    (:mod:`dedupdask.exprlocks`), as Python 3.12 does."""
    import subprocess
    import sys

    def run(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", OPPOSITE_ORDERS, mode], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    assert run("resolved") == "finished (None, None, None) (None, None, None)"
    if sys.version_info < (3, 12):  # the hang itself, without dedupdask: the test can fail
        assert run("plain") == "hung"
