"""A real `dask scheduler` + two `dask worker` processes: runs, worker deaths, killed jobs, offsets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from cluster import shell_cluster, slow_model
from distributed import Client
from test_extract import snapshot

import dedupdask as ddk
from dedupdask.datasets import make_sample_shards
from dedupdask.store import WorkDir


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with shell_cluster(tmp_path_factory.mktemp("cluster")) as (address, procs):
        yield address


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """Six shards of 60 images and a model slow enough (~1 s per archive) to interrupt."""
    root = tmp_path_factory.mktemp("slow")
    shards = make_sample_shards(str(root / "shards"), n_shards=6, images_per_shard=60, n_near=12,
                                n_exact=4, formats=("tar", "tgz", "zip"), size=(256, 192), seed=3)
    model = slow_model(root / "slow.onnx")
    ref = root / "reference"
    ddk.extract(shards.root, str(ref), model_path=model, client="sync", progress=False)
    return shards, model, ref


@pytest.fixture
def analysis_on_cluster(monkeypatch):
    """Send the analysis to the cluster even for these small work_dirs."""
    import dedupdask.scheduler

    monkeypatch.setattr(dedupdask.scheduler, "MAX_CLIENT_MEMORY", 0)


def test_run_through_shell_cluster_equals_sync(cluster, sample_shards, tmp_path, analysis_on_cluster):
    # outlier groups loose enough that a group's lists are full: its members are searched on the cluster
    kw = {"model_path": "dct", "progress": False, "issue_thresholds": {"outlier": 0.9, "outlier_link": 0.7}}
    res = ddk.run(sample_shards.root, str(tmp_path / "c"), client=cluster, **kw)
    ref = ddk.run(sample_shards.root, str(tmp_path / "s"), client="sync", **kw)
    assert (res.extract_report["status"] == "done").all()
    assert snapshot(tmp_path / "c") == snapshot(tmp_path / "s")
    pd.testing.assert_frame_equal(res.similarity.compute(), ref.similarity.compute())
    pd.testing.assert_frame_equal(res.components.compute(), ref.components.compute())
    pd.testing.assert_frame_equal(res.outliers.compute(), ref.outliers.compute())
    pd.testing.assert_frame_equal(res.issues.compute(), ref.issues.compute())  # per archive on the workers vs in process
    assert res.run["issues"]["outlier_groups"] == ref.run["issues"]["outlier_groups"]
    assert res.run["issues"]["outlier_groups"]["searched_members"] > 0


def test_worker_killed_mid_archive(cluster, slow, tmp_path):
    shards, model, ref = slow
    wd = tmp_path / "wd"
    with Client(cluster) as client:
        pids = client.run(os.getpid)
        box: dict = {}
        job = threading.Thread(target=lambda: box.setdefault("report", ddk.extract(
            shards.root, str(wd), model_path=model, client=client, progress=False)))
        job.start()
        killed = None
        deadline = time.time() + 120
        while killed is None and time.time() < deadline:
            busy = {w: t for w, t in client.processing().items() if t}
            if busy and len(WorkDir(str(wd)).done_names()) >= 1:
                worker = sorted(busy)[0]
                time.sleep(0.3)  # well inside its archive (~1 s each)
                if client.processing().get(worker):
                    os.kill(pids[worker], signal.SIGKILL)
                    killed = worker
            time.sleep(0.02)
        job.join(timeout=300)
    assert killed is not None, "no worker was busy"
    report = box["report"]
    assert sorted(report["name"]) == sorted(os.path.basename(s) for s in shards.shards)  # none doubled
    assert (report["status"] == "done").all(), report[["name", "status", "error"]]
    assert snapshot(wd) == snapshot(ref)  # byte-identical to the undisturbed run


JOB = """
import sys, dedupdask as ddk
ddk.extract(sys.argv[1], sys.argv[2], model_path=sys.argv[3], client=sys.argv[4], progress=False)
"""


def test_job_killed_then_resumed(cluster, slow, tmp_path):
    shards, model, ref = slow
    wd = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, "-c", JOB, shards.root, str(wd), model, cluster])
    deadline = time.time() + 120
    while time.time() < deadline and not WorkDir(str(wd)).done_names():
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    time.sleep(2.0)  # tasks already running on the workers finish; the others are released
    before = WorkDir(str(wd)).done_names()
    assert 1 <= len(before) < 6, before
    report = ddk.extract(shards.root, str(wd), model_path=model, client=cluster, progress=False)
    status = report.set_index("name")["status"].to_dict()
    assert status == {n: ("already_done" if n in before else "done") for n in status}
    assert snapshot(wd) == snapshot(ref)


@pytest.mark.slow  # ~25 s: three jobs on a shell cluster; test_extract splits by offsets in-process
def test_offset_jobs_then_build_equal_one_job(cluster, sample_shards, tmp_path, analysis_on_cluster):
    shared, whole = tmp_path / "shared", tmp_path / "whole"
    jobs = [
        subprocess.Popen([sys.executable, "-c",
                          "import sys, dedupdask as ddk; ddk.extract(sys.argv[1], sys.argv[2], model_path='dct', "
                          "client=sys.argv[3], progress=False, min_offset=int(sys.argv[4]), max_offset=int(sys.argv[5]))",
                          sample_shards.root, str(shared), cluster, lo, hi])
        for lo, hi in (("0", "1"), ("1", "2"), ("2", "0"))
    ]
    assert [j.wait(timeout=300) for j in jobs] == [0, 0, 0]
    parts = ddk.run(None, str(shared), run_mode=2, client=cluster, progress=False)
    one = ddk.run(sample_shards.root, str(whole), model_path="dct", client=cluster, progress=False)
    assert snapshot(shared) == snapshot(whole)
    for table in ("similarity", "outliers", "components", "invalid"):
        pd.testing.assert_frame_equal(getattr(parts, table).compute(), getattr(one, table).compute(), obj=table)
