"""No telemetry: a run writes nothing into the user's home, cache or config folders.

onnxruntime 1.32's wheels record telemetry events for upload in
``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime/`` (``onnxruntime.db``, ``deviceid``)
and ``$TMPDIR/.ses`` as soon as onnxruntime is imported, unless ``ORT_DISABLE_TELEMETRY=1``
is set before that, or a CI variable (``CI``, ``GITHUB_ACTIONS``...) is set: the processes
here run without those, with HOME, the XDG folders and TMPDIR pointing at empty folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from cluster import shell_cluster

import dedupdask
from dedupdask.datasets import make_sample_shards

# Variables under which onnxruntime keeps quiet by itself (strings of its 1.32 library).
CI_VARIABLES = (
    "CI", "GITHUB_ACTIONS", "TF_BUILD", "BUILDKITE", "CIRCLECI", "GITLAB_CI", "JENKINS_URL",
    "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI", "TEAMCITY_VERSION", "TRAVIS",
)
REPO = str(Path(dedupdask.__file__).resolve().parents[1])


def user_env(root: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """An environment whose home, cache, config, data and temp folders are empty folders of ``root``."""
    dirs = {name: root / name for name in ("home", "tmp", "cwd")}
    for d in dirs.values():
        d.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items()
           if k not in CI_VARIABLES and not k.startswith(("ORT_", "XDG_", "DASK_"))}
    home = dirs["home"]
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local/share"), XDG_STATE_HOME=str(home / ".local/state"),
               TMPDIR=str(dirs["tmp"]), PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
    return env, dirs


def created(folder: Path, allowed: str | None = None) -> list[str]:
    """Everything under ``folder`` except what is under ``allowed`` (a top-level name)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if allowed is None or p.relative_to(folder).parts[0] != allowed)


def test_onnxruntime_telemetry_store_exists_without_dedupdask(tmp_path):
    """The control: in this environment plain onnxruntime does write its store (so the tests
    below, which find nothing, are not blind), and dedupdask imported first prevents it."""
    env, dirs = user_env(tmp_path / "plain")
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env=env, cwd=dirs["cwd"], check=True)
    assert any(p.endswith("onnxruntime.db") for p in created(dirs["home"])), (
        "onnxruntime no longer writes its telemetry store here: this file's checks prove nothing, "
        "review them: " + repr(created(dirs["home"])))
    env, dirs = user_env(tmp_path / "first")
    subprocess.run([sys.executable, "-c", "import dedupdask, onnxruntime"], env=env, cwd=dirs["cwd"], check=True)
    assert created(dirs["home"]) == [] and created(dirs["tmp"]) == []


def test_onnxruntime_imported_before_dedupdask_warns(tmp_path):
    env, dirs = user_env(tmp_path)
    out = subprocess.run([sys.executable, "-c", "import onnxruntime, dedupdask"], env=env, cwd=dirs["cwd"],
                         capture_output=True, text=True, check=True)
    assert "onnxruntime was imported before dedupdask" in out.stderr
    assert "ORT_DISABLE_TELEMETRY=1" in out.stderr
    env["ORT_DISABLE_TELEMETRY"] = "1"  # the user's own opt-out: nothing to warn about, nothing written
    env["HOME"] = str(tmp_path / "home2")
    env["XDG_CACHE_HOME"] = str(tmp_path / "home2" / ".cache")
    out = subprocess.run([sys.executable, "-c", "import onnxruntime, dedupdask"], env=env, cwd=dirs["cwd"],
                         capture_output=True, text=True, check=True)
    assert "onnxruntime" not in out.stderr
    assert not (tmp_path / "home2").exists()


RUN_SCRIPT = textwrap.dedent("""
    import json, sys
    import dedupdask as ddk

    if __name__ == "__main__":
        res = ddk.run(sys.argv[1], sys.argv[2], run_mode=0, progress=False)
        rep = res.extract_report
        print(json.dumps({"done": int((rep["status"] == "done").sum()), "images": res.summary()["images"]}))
""")


def test_local_run_writes_nothing_outside_work_dir(tmp_path):
    """``ddk.run`` (run_mode=0, the default model, a LocalCluster of worker processes) in a
    process whose HOME, XDG folders, TMPDIR and cwd are empty: afterwards only Dask's scratch
    folder (its workers' local directory, left with two lock files) is in TMPDIR."""
    shards = make_sample_shards(str(tmp_path / "shards"), n_shards=2, images_per_shard=6, n_near=2, n_exact=1)
    env, dirs = user_env(tmp_path / "user")
    (dirs["cwd"] / "job.py").write_text(RUN_SCRIPT)
    out = subprocess.run([sys.executable, "job.py", shards.root, str(tmp_path / "work")], env=env,
                         cwd=dirs["cwd"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["done"] == 2 and summary["images"] >= 12  # 2 x 6 pictures, their copies, broken ones
    assert created(dirs["home"]) == []
    assert created(dirs["tmp"], allowed="dask-scratch-space") == []
    assert created(dirs["cwd"]) == ["job.py"]


def test_dask_worker_processes_write_nothing(tmp_path):
    """Real ``dask worker`` processes started without dedupdask's environment (as on another
    machine): they import dedupdask to run a task before the task imports onnxruntime."""
    shards = make_sample_shards(str(tmp_path / "shards"), n_shards=2, images_per_shard=4, n_near=2, n_exact=1)
    env, dirs = user_env(tmp_path / "user")
    with shell_cluster(tmp_path / "cluster", n_workers=1, env=env) as (address, _):
        report = dedupdask.extract(shards.root, str(tmp_path / "work"), client=address, progress=False)
    assert list(report["status"]) == ["done", "done"]
    assert created(dirs["home"]) == []
    assert created(dirs["tmp"], allowed="dask-scratch-space") == []  # the scheduler's scratch folder
