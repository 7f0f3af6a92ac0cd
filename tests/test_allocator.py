"""Worker-process allocator set-up (dedupdask.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import dedupdask.allocator as a; r = a.tune(); "
    "print(r, a.tune(), sorted(k for k in a._state))"
)


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "DEDUPDASK_MALLOC"))}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_acts_only_under_a_nanny_and_once():
    assert _run({}) == "False False ['done']"  # glibc's dynamic thresholds are in force
    assert _run({"MALLOC_TRIM_THRESHOLD_": "65536"}) == "True True ['done']"
    assert _run({"MALLOC_TRIM_THRESHOLD_": "65536", "DEDUPDASK_MALLOC_TUNE": "0"}) == "False False ['done']"


def test_dask_workers_get_the_nanny_variable_and_tasks_tune_it():
    """The premise: Dask's nanny sets the variable; an archive task then tunes its worker."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(env.values()) == {"65536"}

        def tuned() -> bool:
            from dedupdask.allocator import tune

            return tune()

        assert client.submit(tuned).result() is sys.platform.startswith("linux")
