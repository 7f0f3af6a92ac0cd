"""Two jobs on one work_dir: a job removes only the temporaries a dead writer left.

Each temporary is named after its writer (``<file>.tmp-<machine>-<pid>-<random>``). The race of
issue 22 (job B, started with ``--no-resume`` while job A writes, deletes A's in-flight file
and A fails with ``FileNotFoundError``) is reproduced deterministically: A pauses between
writing a temporary and renaming it, B runs to the end, A resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from s3server import bucket, s3_env, s3_server  # noqa: F401

import dedupdask as ddk
from dedupdask import store
from dedupdask.store import REUSED_PID_AGE, STALE_TMP_AGE, WorkDir, tmp_is_stale, tmp_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "00000.tar"


def extract(inp, wd, **kw):
    kw.setdefault("model_path", "dct")
    kw.setdefault("client", "sync")
    kw.setdefault("progress", False)
    return ddk.extract(inp, wd, **kw)


def dead_pid() -> int:
    """The pid of a process of this machine that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """The pid of another live process on this machine (a writer busy elsewhere)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def snapshot(wd) -> dict[str, str]:
    """Hash of every file of work_dir; done.json without its timings."""
    out = {}
    for name in sorted(os.listdir(wd)):
        data = open(os.path.join(wd, name), "rb").read()
        if name.endswith("done.json"):
            done = json.loads(data)
            done.pop("timings")
            data = json.dumps(done, sort_keys=True).encode()
        out[name] = hashlib.sha256(data).hexdigest()
    return out


# -- the decision ------------------------------------------------------------------------------


def test_only_a_dead_writers_temporary_is_stale(live_pid):
    base = "/w/00000.tarfeatures.dat"
    mine, live, dead = tmp_path(base), tmp_path(base, pid=live_pid), tmp_path(base, pid=dead_pid())
    # this machine: the writer's process decides, whatever the age (up to a reused pid)
    assert not tmp_is_stale(mine, 0.0) and not tmp_is_stale(live, 2 * STALE_TMP_AGE)
    assert tmp_is_stale(dead, 0.0)
    assert tmp_is_stale(live, REUSED_PID_AGE + 1)
    # another machine (or container) and names without an owner: only age can tell
    other = f"{base}.tmp-{'0' * 12}-{live_pid}-0123456789abcdef"
    assert store._machine() != "0" * 12
    for name in (other, f"{base}.tmp-{'ab' * 16}", f"{base}.tmp-crash"):
        assert not tmp_is_stale(name, 60.0) and tmp_is_stale(name, STALE_TMP_AGE + 1), name


def test_writer_names_its_temporary(tmp_path, monkeypatch):
    """write_bytes' temporary carries this process as its owner."""
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(src), real(src, dst)))
    wd = WorkDir(str(tmp_path))
    wd.write_bytes(wd.join("x"), b"data")
    assert len(seen) == 1 and seen[0].startswith(wd.join("x") + ".tmp-")
    assert not tmp_is_stale(seen[0], 0.0)  # its writer (this process) is alive
    assert open(wd.join("x"), "rb").read() == b"data"


# -- the cleanups of a job (job start and each archive task) ------------------------------------


def _plant(wd: WorkDir, name: str, owner_pid: int | None, age: float = 0.0) -> str:
    """A half-written temporary of ``name``'s features.dat, written by ``owner_pid``."""
    final = wd.file(name, "dat")
    path = tmp_path(final, pid=owner_pid) if owner_pid else f"{final}.tmp-{os.urandom(16).hex()}"
    wd.fs.pipe_file(path, b"half a file")
    if age and wd.local:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_no_resume_keeps_a_live_writers_temporary(sample_shards, tmp_path, live_pid):
    wd = WorkDir(str(tmp_path / "wd"))
    wd.makedirs()
    live = _plant(wd, NAME, live_pid)
    dead = _plant(wd, NAME, dead_pid())
    unknown_fresh = _plant(wd, NAME, None)
    unknown_old = _plant(wd, NAME, None, age=2 * STALE_TMP_AGE)
    report = extract(sample_shards.root, wd.url, resume=False)
    assert (report["status"] == "done").all()
    assert os.path.exists(live) and os.path.exists(unknown_fresh)
    assert not os.path.exists(dead) and not os.path.exists(unknown_old)


def test_archive_task_keeps_a_live_writers_temporary(sample_shards, tmp_path, live_pid):
    """The task that (re)writes an archive clears only dead writers' temporaries."""
    from dedupdask.config import RunConfig
    from dedupdask.partition import ArchiveTask, process_archive
    from dedupdask.sources import list_sources

    src = list_sources(sample_shards.root)[0]
    wd = WorkDir(str(tmp_path / "wd"))
    wd.makedirs()
    live, dead = _plant(wd, src.name, live_pid), _plant(wd, src.name, dead_pid())
    cfg = RunConfig(run_mode=1, model_path="dct", progress=False)
    assert process_archive(ArchiveTask(src, wd.url, cfg))["status"].iloc[0] == "done"
    assert os.path.exists(live) and not os.path.exists(dead)


@pytest.mark.timeout(300)
def test_no_resume_on_s3_keeps_a_live_writers_temporary(sample_shards, tmp_path, live_pid, s3_env, bucket):  # noqa: F811
    wd = WorkDir(f"s3://{bucket}/wd")
    live = _plant(wd, NAME, live_pid)
    dead = _plant(wd, NAME, dead_pid())
    unknown_fresh = _plant(wd, NAME, None)
    report = extract(sample_shards.root, wd.url, resume=False)
    assert (report["status"] == "done").all()
    wd.fs.invalidate_cache()
    assert wd.fs.exists(live) and wd.fs.exists(unknown_fresh)
    assert not wd.fs.exists(dead)


# -- two real jobs -----------------------------------------------------------------------------

PAUSED_JOB = """
import os, sys, time
import dedupdask as ddk
inp, wd, flag = sys.argv[1:4]
real = os.replace
def replace(src, dst, *a, **k):
    if ".tmp-" in str(src) and not os.path.exists(flag + ".paused"):
        with open(flag + ".paused", "w") as f:  # a temporary written, not yet renamed
            f.write(str(src))
        deadline = time.time() + 240
        while not os.path.exists(flag + ".go"):
            if time.time() > deadline:
                os._exit(3)
            time.sleep(0.05)
    return real(src, dst, *a, **k)
os.replace = replace
report = ddk.extract(inp, wd, model_path="dct", client="sync", progress=False, resume=False)
print(report.summary_text())
sys.exit(0 if (report["status"] == "done").all() else 1)
"""


@pytest.mark.timeout(400)
def test_two_no_resume_jobs_on_one_work_dir(sample_shards, tmp_path):
    clean, wd, flag = tmp_path / "clean", tmp_path / "wd", str(tmp_path / "flag")
    extract(sample_shards.root, clean)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    job_a = subprocess.Popen(
        [sys.executable, "-c", PAUSED_JOB, sample_shards.root, str(wd), flag],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 240
        while not os.path.exists(flag + ".paused"):
            assert job_a.poll() is None, job_a.communicate()[0]
            assert time.time() < deadline, "job A never wrote a temporary"
            time.sleep(0.05)
        in_flight = open(flag + ".paused").read()
        job_b = subprocess.run(
            [sys.executable, "-m", "dedupdask", "extract", sample_shards.root, str(wd), "--no-resume",
             "--client", "sync", "--model-path", "dct", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert job_b.returncode == 0, job_b.stdout + job_b.stderr
        assert os.path.exists(in_flight), "job B removed job A's in-flight temporary"
    finally:
        open(flag + ".go", "w").close()
        out_a = job_a.communicate(timeout=300)[0]
    assert job_a.returncode == 0, out_a
    assert not [n for n in os.listdir(wd) if ".tmp-" in n]
    assert snapshot(wd) == snapshot(clean)
