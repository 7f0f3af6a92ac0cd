"""Storage-access stage: classify storage errors, retry them a bounded number of times.

Local disks and object stores (S3, MinIO, SeaweedFS...) are reached through fsspec; this
module decides what a failure means and how to report it:

=============  =====================================================  ==============
kind           examples                                               retried
=============  =====================================================  ==============
``auth``       wrong key/secret (``PermissionError``), no credentials  no
``missing``    no such bucket / object (``FileNotFoundError``)         no
``transient``  server unreachable or gone (botocore                    yes, bounded
               ``EndpointConnectionError``, which is *not* an
               ``OSError``), timeouts, resets, HTTP 5xx / SlowDown
``fatal``      any other storage error (disk full, bad parameters)     no
=============  =====================================================  ==============

Every storage failure surfaces as a :class:`StorageError` (an ``OSError``; its subclasses
are also ``PermissionError`` / ``FileNotFoundError``) whose message names the URL, so callers
catch one type and users read one clear line. :class:`RetryingReader` re-opens a remote file
at the offset reached when a read fails, so a long streamed archive survives a server blip,
and remembers a failure it raised (:attr:`RetryingReader.failure`) even when a parser such
as ``zipfile`` swallows it, so a storage failure is never taken for a broken archive.

There is one retry policy, here: ``attempts`` tries per operation with a 0.5 s, 1 s, 2 s...
backoff, and no new attempt once ``deadline`` seconds have passed since the first. The
layers below are told not to retry on their own (:func:`filesystem`: botocore gets
``retries={"total_max_attempts": 1}``, s3fs ``retries = 1``); stacked, their retries
multiplied ours and a dead endpoint took minutes to fail. A dead endpoint now fails after
at most ``deadline`` plus one request's timeout (botocore's ``connect_timeout`` 5 s and
``read_timeout`` 15 s, s3fs's defaults, unless ``config_kwargs`` sets them).
"""

from __future__ import annotations

import errno
import io
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .config import RunConfig

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_DEADLINE",
    "StorageError",
    "StorageAuthError",
    "StorageNotFoundError",
    "RetryingReader",
    "classify",
    "call",
    "copy_once",
    "filesystem",
    "open_input",
    "storage_error",
]

# the defaults of the run options storage_attempts / storage_deadline, defined once there
DEFAULT_ATTEMPTS: int = RunConfig.storage_attempts
DEFAULT_DEADLINE: float = RunConfig.storage_deadline  # seconds; no new attempt after it
BACKOFF = 0.5  # seconds before the 2nd attempt; doubled each time, capped at BACKOFF_MAX
BACKOFF_MAX = 8.0
_S3_PROTOCOLS = ("s3", "s3a")
T = TypeVar("T")

_TRANSIENT_ERRNOS = {
    errno.EIO, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
    errno.EPIPE, errno.EAGAIN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
    errno.EHOSTDOWN, errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO),
}  # fmt: skip  (s3fs maps InternalError/500 to EREMOTEIO, SlowDown/503 to EBUSY)
_AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "AllAccessDisabled", "AccountProblem", "403",
}  # fmt: skip
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "NotFound", "404"}
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "OperationAborted",
}  # fmt: skip
_HINTS = {
    "auth": "access denied: check the key and secret (storage_options 'key'/'secret' or "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the endpoint",
    "missing": "not found: no such bucket or object",
    "transient": "storage unreachable or failing",
    "fatal": "storage error",
}


class StorageError(OSError):
    """A storage operation failed; the message names the URL.

    Attributes
    ----------
    url : str
        The file, prefix or bucket being accessed.
    kind : str
        ``"auth"``, ``"missing"``, ``"transient"`` or ``"fatal"`` (see :func:`classify`).
    attempts : int
        How many attempts were made.
    """

    def __init__(self, message: str, url: str = "", kind: str = "fatal", attempts: int = 1) -> None:
        super().__init__(message)
        self.url, self.kind, self.attempts = url, kind, attempts

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling between Dask processes
        return (type(self), (str(self), self.url, self.kind, self.attempts))


class StorageAuthError(StorageError, PermissionError):
    """Credentials were refused or missing (not retried)."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The bucket or object does not exist (not retried)."""


def _client_error(exc: BaseException | None) -> tuple[str | None, int | None]:
    """``(error code, HTTP status)`` of a botocore ClientError (or of what s3fs made of one)."""
    for e in (exc, getattr(exc, "__cause__", None)):  # s3fs keeps the ClientError as __cause__
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return (str(code) if code is not None else None), (int(status) if status else None)
    return None, None


def classify(exc: BaseException) -> str | None:
    """What a failure means for storage access.

    Parameters
    ----------
    exc : BaseException
        An exception raised by fsspec, s3fs, aiobotocore or the OS.

    Returns
    -------
    str or None
        ``"auth"``, ``"missing"``, ``"transient"`` (worth retrying) or ``"fatal"``; None when
        the exception is not a storage error at all (a bug, bad data...), which callers let
        through unchanged.

    Examples
    --------
    >>> classify(PermissionError("Forbidden")), classify(ConnectionResetError())
    ('auth', 'transient')
    >>> classify(ValueError("not storage")) is None
    True
    """
    if isinstance(exc, StorageError):
        return exc.kind
    code, status = _client_error(exc)
    if code in _AUTH_CODES or status == 403:
        return "auth"
    if code in _MISSING_CODES or status == 404:
        return "missing"
    if code in _TRANSIENT_CODES or (status is not None and (status >= 500 or status in (408, 429))):
        return "transient"
    if status is not None and 400 <= status < 500:
        return "fatal"  # a request the server will refuse again
    if isinstance(exc, PermissionError):
        return "auth"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return "missing"
    if isinstance(exc, (ConnectionError, TimeoutError)):  # builtins: resets, refused, timeouts
        return "transient"
    mod = type(exc).__module__ or ""
    if mod.startswith("botocore") or mod.startswith("aiobotocore"):
        from botocore import exceptions as bx

        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
            return "auth"
        if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError)):
            return "transient"
        return "fatal"  # a ClientError with a 4xx code, bad parameters, configuration...
    if mod.startswith("aiohttp") or mod.startswith("asyncio") or type(exc).__name__ == "FSTimeoutError":
        return "transient"
    if isinstance(exc, OSError):
        return "transient" if exc.errno in _TRANSIENT_ERRNOS else "fatal"
    return None


def storage_error(
    exc: BaseException, url: str, action: str = "read", attempts: int = 1, elapsed: float | None = None
) -> StorageError:
    """Turn ``exc`` into a :class:`StorageError` whose message names ``url``.

    Examples
    --------
    >>> print(storage_error(PermissionError("Forbidden"), "s3://b/x.tar"))  # doctest: +ELLIPSIS
    cannot read s3://b/x.tar: access denied: check the key and secret ... (PermissionError: Forbidden)
    """
    if isinstance(exc, StorageError):
        return exc
    kind = classify(exc) or "fatal"
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if tries and elapsed is not None:
        tries += f" in {elapsed:.1f} s"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    msg = f"cannot {action} {url}: {_HINTS[kind]}{tries} ({type(exc).__name__}: {detail})"
    cls = {"auth": StorageAuthError, "missing": StorageNotFoundError}.get(kind, StorageError)
    err = cls(msg, url, kind, attempts)
    err.__cause__ = exc
    return err


def _backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return min(BACKOFF * 2 ** (attempt - 1), BACKOFF_MAX)


def _sleep(attempt: int) -> None:
    time.sleep(_backoff(attempt))


_clock = time.monotonic  # what the deadline is measured with (tests replace it)


def _give_up(kind: str | None, attempt: int, attempts: int, t0: float, deadline: float) -> bool:
    """The one retry rule: only transient errors, at most ``attempts`` tries, and no attempt
    that would start after ``deadline`` seconds."""
    if kind != "transient" or attempt >= attempts:
        return True
    return _clock() - t0 + _backoff(attempt) >= deadline


def call(
    fn: Callable[..., T],
    *args: Any,
    url: str,
    action: str = "read",
    attempts: int = DEFAULT_ATTEMPTS,
    deadline: float = DEFAULT_DEADLINE,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)``, retrying transient storage errors.

    Parameters
    ----------
    fn : callable
        A storage operation (``fs.pipe_file``, ``fs.find``...).
    url : str
        What is accessed, for the error message.
    action : str
        Verb for the message: ``"read"``, ``"write"``, ``"list"``...
    attempts : int
        Attempts in all (>= 1); waits 0.5 s, 1 s, 2 s... between them.
    deadline : float
        Seconds after the first attempt when no further attempt starts.

    Returns
    -------
    The result of ``fn``.

    Raises
    ------
    StorageError
        After the last attempt, or at once for auth errors and missing objects. Exceptions
        that are not storage errors are raised unchanged.

    Examples
    --------
    >>> call(lambda: 42, url="s3://b/k")
    42
    """
    attempts = max(1, int(attempts))
    t0 = _clock()
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - classified right here
            kind = classify(e)
            if kind is None:
                raise
            if isinstance(e, StorageError) or _give_up(kind, attempt, attempts, t0, deadline):
                raise storage_error(e, url, action, attempt, _clock() - t0) from e
            _sleep(attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs(url, **storage_options)`` with dedupdask's retry policy.

    On S3 (s3fs over botocore) the client's own retries are turned off, so that
    :func:`call` and :class:`RetryingReader` are the only retry layer: botocore gets
    ``config_kwargs={"retries": {"total_max_attempts": 1}}`` and the file system
    ``retries = 1`` (s3fs retries each call 5 times otherwise, with no way to say so in
    ``storage_options``). A ``retries`` entry the caller put in ``config_kwargs`` is kept.
    Creating the file system does no I/O.

    Returns
    -------
    (fs, path)

    Examples
    --------
    >>> fs, path = filesystem("s3://bucket/shards/", {"anon": True})
    >>> fs.retries, fs.config_kwargs["retries"]
    (1, {'total_max_attempts': 1})
    """
    import fsspec
    from fsspec.core import split_protocol, url_to_fs

    so = dict(storage_options or {})
    s3 = (split_protocol(url)[0] or "file") in _S3_PROTOCOLS
    if s3:
        env = (fsspec.config.conf.get("s3") or {}).get("config_kwargs") or {}  # FSSPEC_S3_CONFIG_KWARGS
        ck = {**env, **(so.get("config_kwargs") or {})}
        ck.setdefault("retries", {"total_max_attempts": 1})
        so["config_kwargs"] = ck
    fs, path = url_to_fs(url, **so)
    if s3 and hasattr(fs, "retries"):
        fs.retries = 1
    return fs, path


class RetryingReader(io.RawIOBase):
    """A read-only binary file that re-opens itself at its offset after a transient error.

    Streaming a multi-GB tar from an object store takes minutes; one dropped connection
    should cost a retry, not the archive. Each read failure is retried up to ``attempts``
    times in a row within ``deadline`` seconds (a successful read resets both); auth errors
    and missing objects fail at once. Errors are raised as :class:`StorageError` naming the
    URL, and the last one is kept in :attr:`failure`: ``zipfile`` turns any ``OSError`` met
    while it reads the central directory into ``BadZipFile``, and the reader's owner must
    still know that storage, not the archive, failed.

    Parameters
    ----------
    opener : callable
        ``opener()`` returns a fresh file object positioned at 0 (``fs.open(path, "rb")``).
    url : str
        For error messages.
    attempts : int
        Attempts per failing read (and for the first open).
    deadline : float
        Seconds one failing read (or the first open) may spend retrying.

    Attributes
    ----------
    failure : StorageError or None
        The storage error this reader raised last, if any.
    """

    def __init__(
        self, opener: Callable[[], Any], url: str, attempts: int = DEFAULT_ATTEMPTS,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:  # fmt: skip
        super().__init__()
        self._opener, self.url, self.attempts = opener, url, max(1, int(attempts))
        self.deadline = float(deadline)
        self.failure: StorageError | None = None
        self._pos = 0
        self._f: Any = call(opener, url=url, action="open", attempts=self.attempts, deadline=self.deadline)

    def _drop(self) -> None:
        """Forget the handle after a failure; the next attempt re-opens at ``tell()``."""
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - the old handle is broken anyway
                pass

    def _retry(self, op: Callable[[], T], action: str) -> T:
        t0 = _clock()
        for attempt in range(1, self.attempts + 1):
            try:
                if self._f is None:
                    self._f = self._opener()
                    self._f.seek(self._pos)
                return op()
            except Exception as e:  # noqa: BLE001 - classified right here
                kind = classify(e)
                if kind is None:
                    raise
                if _give_up(kind, attempt, self.attempts, t0, self.deadline):
                    self._drop()  # a later read starts from a fresh connection
                    self.failure = storage_error(e, self.url, action, attempt, _clock() - t0)
                    raise self.failure from e
                self._drop()
                _sleep(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- io.RawIOBase ---------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            pos = self._retry(lambda: self._f.seek(0, io.SEEK_END), "read") + offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        else:
            pos = offset
        if pos < 0:  # what a real file says (zipfile expects an OSError here)
            raise OSError(errno.EINVAL, f"negative seek position {pos}")
        self._pos = pos  # the next read seeks the handle there
        return pos

    def read(self, size: int | None = -1) -> bytes:
        def op() -> bytes:
            if self._f.tell() != self._pos:
                self._f.seek(self._pos)
            return self._f.read(size)

        data = self._retry(op, "read")
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            f.close()
        super().close()


def open_input(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    deadline: float = DEFAULT_DEADLINE,
    block_size: int | None = None,
) -> RetryingReader:
    """Open ``url`` for reading, with the retry policy of this module.

    Parameters
    ----------
    url : str
        Local path or URL.
    storage_options : dict, optional
        fsspec options.
    attempts, deadline
        See :class:`RetryingReader`.
    block_size : int, optional
        Bytes fetched per request from an object store. None: ``storage_options``'s
        ``default_block_size`` if given, else 8 MiB (s3fs's default of 50 MiB costs memory
        for no speed when a tar is read front to back).

    Returns
    -------
    RetryingReader
        Over a local file too, so every reader knows its :attr:`RetryingReader.failure`.

    Examples
    --------
    >>> import tempfile, os; p = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> _ = open(p, "wb").write(b"abc")
    >>> with open_input(p) as f: f.read()
    b'abc'
    """
    so = dict(storage_options or {})
    fs, path = call(filesystem, url, so, url=url, action="open", attempts=attempts, deadline=deadline)
    kwargs: dict[str, Any] = {}
    if _is_local(fs):
        pass
    elif _protocols(fs) & set(_S3_PROTOCOLS):
        kwargs["block_size"] = block_size or so.get("default_block_size") or 8 * 2**20
        kwargs["cache_type"] = so.get("default_cache_type", "readahead")
    elif block_size:
        kwargs["block_size"] = block_size
    return RetryingReader(lambda: fs.open(path, "rb", **kwargs), url, attempts, deadline)


def _protocols(fs: Any) -> set[str]:
    return set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _is_local(fs: Any) -> bool:
    return bool(_protocols(fs) & {"file", "local"})


def copy_once(
    src_url: str,
    dest_url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    deadline: float = DEFAULT_DEADLINE,
) -> bool:
    """Copy ``src_url`` to ``dest_url`` unless a copy of the same size is already there.

    The copy appears whole or not at all: a local destination is written to a temporary name
    and renamed; on an object store it is one server-side copy (source on the same store) or
    one multipart upload, which becomes visible only when complete (and is aborted on error).

    Parameters
    ----------
    src_url, dest_url : str
        Local paths or URLs (``s3://...``); ``storage_options`` are used for both.
    storage_options : dict, optional
        fsspec options.
    attempts, deadline
        Retry policy per storage operation (see :func:`call`; reads resume at their offset).

    Returns
    -------
    bool
        True if the file was copied, False if a copy of the same size existed.

    Raises
    ------
    StorageError
        Naming the URL that failed.

    Examples
    --------
    >>> import tempfile, os; d = tempfile.mkdtemp(); p = os.path.join(d, "a.tar")
    >>> _ = open(p, "wb").write(b"x" * 10)
    >>> copy_once(p, os.path.join(d, "kept", "a.tar")), copy_once(p, os.path.join(d, "kept", "a.tar"))
    (True, False)
    """
    import os
    import shutil
    import uuid

    so = dict(storage_options or {})
    policy = {"attempts": attempts, "deadline": deadline}
    sfs, spath = filesystem(src_url, so)
    dfs, dpath = filesystem(dest_url, so)
    size = call(sfs.size, spath, url=src_url, action="read", **policy)
    try:
        if call(dfs.size, dpath, url=dest_url, action="read", **policy) == size:
            return False
    except FileNotFoundError:
        pass
    chunk = 8 * 2**20
    if _is_local(dfs):
        os.makedirs(os.path.dirname(dpath), exist_ok=True)
        tmp = f"{dpath}.tmp-{uuid.uuid4().hex}"
        try:
            with open_input(src_url, so, **policy) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, chunk)
            os.replace(tmp, dpath)
        except StorageError:
            raise
        except OSError as e:
            raise storage_error(e, dest_url, "write") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    elif dfs is sfs:
        dfs.invalidate_cache(dpath)
        call(dfs.copy, spath, dpath, url=dest_url, action="copy to", **policy)
    else:
        fout = call(dfs.open, dpath, "wb", url=dest_url, action="write", **policy)
        try:
            with open_input(src_url, so, **policy) as fin:
                while data := fin.read(chunk):
                    call(fout.write, data, url=dest_url, action="write", attempts=1)
        except BaseException:
            discard = getattr(fout, "discard", None)  # s3fs: abort the multipart upload
            if discard is not None:
                try:
                    discard()
                except Exception:  # noqa: BLE001 - the original error matters
                    pass
            raise
        call(fout.close, url=dest_url, action="write", attempts=1)
    return True
