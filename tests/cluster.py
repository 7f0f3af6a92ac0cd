"""Test helpers: a real ``dask scheduler`` + ``dask worker`` cluster on 127.0.0.1, and a slow model."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _dask_cmd() -> list[str]:
    exe = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    return [exe] if exe else [sys.executable, "-m", "dask"]


@contextlib.contextmanager
def shell_cluster(
    tmp: Path, n_workers: int = 2, nthreads: int = 1, env: dict[str, str] | None = None
) -> Iterator[tuple[str, list]]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes; yield (address, procs).

    The commands are the ones a user types (dask 2026.x); each worker runs under its nanny, so a
    killed worker process is restarted as on a real cluster. ``env``: their environment
    (default: this process's).
    """
    tmp.mkdir(parents=True, exist_ok=True)
    sched_file = tmp / "scheduler.json"
    logs = []
    procs: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = open(tmp / f"{name}.log", "wb")
        logs.append(log)
        p = subprocess.Popen(_dask_cmd() + args, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, env=env)
        procs.append(p)
        return p

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)], "scheduler")
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        if not sched_file.exists():
            raise RuntimeError("dask scheduler did not start: " + (tmp / "scheduler.log").read_text())
        for i in range(n_workers):
            start(["worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                   "--nthreads", str(nthreads), "--no-dashboard", "--name", f"w{i}",
                   "--local-directory", str(tmp / f"w{i}"), "--death-timeout", "60"], f"worker{i}")
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=60) as c:
            c.wait_for_workers(n_workers, timeout=120)
            address = c.scheduler.address
        yield address, procs
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
        for log in logs:
            log.close()


def slow_model(path: Path, size: int = 128, channels: int = 24) -> str:
    """Write a deliberately heavy user ONNX model (uint8 NHWC in, ~20 ms per image on one core).

    Two 5x5 convolutions at full resolution with small random weights: slow enough that a test
    can kill a worker in the middle of an archive, tiny on disk, and deterministic.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.05, (channels, 3, 5, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.05, (channels, channels, 5, 5)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[2, 2, 2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", channels])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)
