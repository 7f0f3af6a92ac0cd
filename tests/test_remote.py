"""Storage error classification, bounded retries and the re-opening reader (no server)."""

from __future__ import annotations

import errno
import io
import pickle
import tarfile
import zipfile

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from dedupdask import remote


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF", 0.0)


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def s3fs_style(code: str, status: int, err: int) -> OSError:
    """What s3fs raises: an OSError with the ClientError as its cause."""
    e = OSError(err, code)
    e.__cause__ = client_error(code, status)
    return e


@pytest.mark.parametrize(
    "exc,kind",
    [
        (PermissionError("Forbidden"), "auth"),
        (s3fs_style("SignatureDoesNotMatch", 403, errno.EACCES), "auth"),
        (NoCredentialsError(), "auth"),
        (FileNotFoundError("x"), "missing"),
        (client_error("NoSuchBucket", 404), "missing"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "transient"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "transient"),
        (ConnectionResetError(), "transient"),
        (s3fs_style("InternalError", 500, 121), "transient"),
        (s3fs_style("SlowDown", 503, errno.EBUSY), "transient"),
        (client_error("InvalidRange", 416), "fatal"),
        (OSError(errno.ENOSPC, "disk full"), "fatal"),
        (ValueError("a bug, not storage"), None),
    ],
)
def test_classify(exc, kind):
    assert remote.classify(exc) == kind


def test_botocore_connection_errors_are_not_oserror_but_are_handled():
    e = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert not isinstance(e, OSError)
    err = remote.storage_error(e, "s3://b/x.tar", "read", 3)
    assert isinstance(err, OSError) and err.kind == "transient"
    assert str(err).startswith("cannot read s3://b/x.tar: storage unreachable or failing after 3 attempts")


def test_call_retries_transient_errors_a_bounded_number_of_times():
    calls = []

    def flaky():
        calls.append(1)
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(remote.StorageError, match=r"cannot list s3://b/p: .* after 4 attempts") as ei:
        remote.call(flaky, url="s3://b/p", action="list", attempts=4)
    assert len(calls) == 4 and ei.value.attempts == 4 and ei.value.url == "s3://b/p"

    calls.clear()
    seq = iter([ConnectionResetError(), ConnectionResetError(), "ok"])

    def twice_then_ok():
        calls.append(1)
        v = next(seq)
        if isinstance(v, Exception):
            raise v
        return v

    assert remote.call(twice_then_ok, url="s3://b/k", attempts=3) == "ok" and len(calls) == 3


@pytest.mark.parametrize("exc,cls", [(PermissionError("Forbidden"), remote.StorageAuthError),
                                     (FileNotFoundError("gone"), remote.StorageNotFoundError)])
def test_auth_and_missing_are_not_retried(exc, cls):
    calls = []

    def fail():
        calls.append(1)
        raise exc

    with pytest.raises(cls) as ei:
        remote.call(fail, url="s3://b/k", attempts=5)
    assert len(calls) == 1 and "s3://b/k" in str(ei.value)
    assert isinstance(ei.value, type(exc))  # still a PermissionError / FileNotFoundError


def test_other_errors_pass_through_unchanged():
    with pytest.raises(ValueError, match="^bug$"):
        remote.call(lambda: (_ for _ in ()).throw(ValueError("bug")), url="s3://b/k")


def test_storage_errors_pickle():
    err = remote.storage_error(PermissionError("Forbidden"), "s3://b/k")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is remote.StorageAuthError and str(back) == str(err) and back.url == "s3://b/k"


class FlakyFile(io.BytesIO):
    """A file whose reads fail once at given offsets (a connection dropping mid-stream)."""

    def __init__(self, data: bytes, fail_at: set[int], log: list) -> None:
        super().__init__(data)
        self.fail_at, self.log = fail_at, log

    def read(self, size=-1):
        pos = self.tell()
        end = len(self.getbuffer()) if size is None or size < 0 else pos + size
        hit = [o for o in self.fail_at if pos <= o < end]
        if hit:
            self.fail_at.discard(hit[0])
            self.log.append(pos)
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        return super().read(size)


def test_retrying_reader_resumes_a_tar_stream_at_its_offset():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(20):
            data = bytes([i]) * 5000
            ti = tarfile.TarInfo(f"{i:03d}.bin")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    data = buf.getvalue()
    fail_at, log, opens = {30_000, 61_000, 90_000}, [], []

    def opener():
        opens.append(1)
        return FlakyFile(data, fail_at, log)

    reader = remote.RetryingReader(opener, "s3://b/x.tar", attempts=2)
    with tarfile.open(fileobj=reader, mode="r|*") as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf}
    assert got == {f"{i:03d}.bin": bytes([i]) * 5000 for i in range(20)}
    assert len(log) == 3 and len(opens) == 4  # each failure re-opened once, at its offset


def test_retrying_reader_reads_a_zip_and_gives_up_after_attempts():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(5):
            zf.writestr(f"{i}.txt", str(i) * 1000)
    data = buf.getvalue()
    once = {2500}  # shared by every handle: fails once
    reader = remote.RetryingReader(lambda: FlakyFile(data, once, []), "s3://b/x.zip")
    with zipfile.ZipFile(reader) as zf:
        assert [zf.read(n) for n in zf.namelist()] == [str(i).encode() * 1000 for i in range(5)]

    always = remote.RetryingReader(lambda: FlakyFile(data, set(range(100, 200)), []), "s3://b/y.zip", attempts=3)
    with pytest.raises(remote.StorageError, match=r"cannot read s3://b/y.zip: .*after 3 attempts"):
        always.read(1000)


class FakeClock:
    """Time that passes only when an attempt or a backoff says so."""

    def __init__(self, monkeypatch) -> None:
        self.now = 0.0
        monkeypatch.setattr(remote, "_clock", lambda: self.now)
        monkeypatch.setattr(remote, "_sleep", lambda attempt: self.advance(remote._backoff(attempt)))

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_no_attempt_starts_after_the_deadline(monkeypatch):
    """Attempts that each time out after 10 s: with a 30 s deadline the 3rd is the last,
    however many attempts are allowed."""
    clock, calls = FakeClock(monkeypatch), []

    def times_out():
        calls.append(clock.now)
        clock.advance(10)
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(remote.StorageError, match=r"after 3 attempts in 30.0 s \(ReadTimeoutError"):
        remote.call(times_out, url="s3://b/k", attempts=10, deadline=30)
    assert calls == [0, 10, 20]
    calls.clear()
    with pytest.raises(remote.StorageError, match=r"after 2 attempts in 20.0 s"):  # attempts first
        remote.call(times_out, url="s3://b/k", attempts=2, deadline=300)


def test_reader_deadline_is_per_failing_read(monkeypatch):
    """A read that keeps failing stops at the deadline and is remembered as the reader's
    failure; the deadline counts from that read's first failure, not from the open."""
    clock = FakeClock(monkeypatch)
    state = {"dead": False}

    class File(io.BytesIO):
        def read(self, size=-1):
            if state["dead"]:
                clock.advance(4)
                raise ConnectionResetError(errno.ECONNRESET, "reset")
            return super().read(size)

    r = remote.RetryingReader(lambda: File(b"abcdef"), "s3://b/k", attempts=100, deadline=10)
    assert r.read(2) == b"ab" and r.failure is None
    clock.advance(1000)  # a long healthy stream does not use up the deadline
    state["dead"] = True
    with pytest.raises(remote.StorageError, match=r"cannot read s3://b/k: .* after 3 attempts in 12.0 s") as ei:
        r.read(2)
    assert r.failure is ei.value and r.failure.kind == "transient"


def test_filesystem_turns_the_lower_retry_layers_off():
    fs, path = remote.filesystem("s3://bucket/key", {"anon": True})
    assert path == "bucket/key" and fs.retries == 1
    assert fs.config_kwargs["retries"] == {"total_max_attempts": 1}
    mine = {"anon": True, "config_kwargs": {"retries": {"mode": "standard"}, "read_timeout": 3}}
    fs, _ = remote.filesystem("s3://bucket/key", mine)
    assert fs.config_kwargs == {"retries": {"mode": "standard"}, "read_timeout": 3} and fs.retries == 1
    assert mine == {"anon": True, "config_kwargs": {"retries": {"mode": "standard"}, "read_timeout": 3}}
    local, _ = remote.filesystem("/tmp/x", {})
    assert "config_kwargs" not in local.storage_options
