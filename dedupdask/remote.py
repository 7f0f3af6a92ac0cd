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
at the offset reached when a read fails, so a long streamed archive survives a server blip.
"""

from __future__ import annotations

import errno
import io
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_ATTEMPTS",
    "StorageError",
    "StorageAuthError",
    "StorageNotFoundError",
    "RetryingReader",
    "classify",
    "call",
    "copy_once",
    "open_input",
    "storage_error",
]

DEFAULT_ATTEMPTS = 3
BACKOFF = 0.5  # seconds before the 2nd attempt; doubled each time, capped at BACKOFF_MAX
BACKOFF_MAX = 8.0
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


def storage_error(exc: BaseException, url: str, action: str = "read", attempts: int = 1) -> StorageError:
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
    detail = str(exc).strip() or type(exc).__name__
    msg = f"cannot {action} {url}: {_HINTS[kind]}{tries} ({type(exc).__name__}: {detail})"
    cls = {"auth": StorageAuthError, "missing": StorageNotFoundError}.get(kind, StorageError)
    err = cls(msg, url, kind, attempts)
    err.__cause__ = exc
    return err


def _sleep(attempt: int) -> None:
    time.sleep(min(BACKOFF * 2 ** (attempt - 1), BACKOFF_MAX))


def call(
    fn: Callable[..., T],
    *args: Any,
    url: str,
    action: str = "read",
    attempts: int = DEFAULT_ATTEMPTS,
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
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - classified right here
            kind = classify(e)
            if kind is None:
                raise
            if kind != "transient" or attempt == attempts or isinstance(e, StorageError):
                raise storage_error(e, url, action, attempt) from e
            _sleep(attempt)
    raise AssertionError("unreachable")  # pragma: no cover


class RetryingReader(io.RawIOBase):
    """A read-only binary file that re-opens itself at its offset after a transient error.

    Streaming a multi-GB tar from an object store takes minutes; one dropped connection
    should cost a retry, not the archive. Each read failure is retried up to ``attempts``
    times in a row (a successful read resets the count); auth errors and missing objects
    fail at once. Errors are raised as :class:`StorageError` naming the URL.

    Parameters
    ----------
    opener : callable
        ``opener()`` returns a fresh file object positioned at 0 (``fs.open(path, "rb")``).
    url : str
        For error messages.
    attempts : int
        Attempts per failing read (and for the first open).
    """

    def __init__(self, opener: Callable[[], Any], url: str, attempts: int = DEFAULT_ATTEMPTS) -> None:
        super().__init__()
        self._opener, self.url, self.attempts = opener, url, max(1, int(attempts))
        self._pos = 0
        self._f: Any = call(opener, url=url, action="open", attempts=self.attempts)

    def _drop(self) -> None:
        """Forget the handle after a failure; the next attempt re-opens at ``tell()``."""
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - the old handle is broken anyway
                pass

    def _retry(self, op: Callable[[], T], action: str) -> T:
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
                if kind != "transient" or attempt == self.attempts:
                    raise storage_error(e, self.url, action, attempt) from e
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
            pos = self._retry(lambda: self._f.seek(offset, io.SEEK_END), "read")
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        else:
            pos = offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos  # the next read seeks the handle there
        return pos

    def read(self, size: int = -1) -> bytes:
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
    block_size: int | None = None,
) -> Any:
    """Open ``url`` for a forward streaming read, with bounded retries on remote stores.

    Parameters
    ----------
    url : str
        Local path or URL.
    storage_options : dict, optional
        fsspec options.
    attempts : int
        See :class:`RetryingReader`.
    block_size : int, optional
        Bytes fetched per request from an object store. None: ``storage_options``'s
        ``default_block_size`` if given, else 8 MiB (s3fs's default of 50 MiB costs memory
        for no speed when a tar is read front to back).

    Returns
    -------
    file object
        A plain local file, or a :class:`RetryingReader` over the remote file.

    Examples
    --------
    >>> import tempfile, os; p = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> _ = open(p, "wb").write(b"abc")
    >>> with open_input(p) as f: f.read()
    b'abc'
    """
    from fsspec.core import url_to_fs

    so = dict(storage_options or {})
    fs, path = call(url_to_fs, url, url=url, action="open", attempts=attempts, **so)
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocol or "local" in protocol:
        try:
            return fs.open(path, "rb")
        except OSError as e:
            raise storage_error(e, url, "open") from e
    kwargs: dict[str, Any] = {}
    if "s3" in protocol or "s3a" in protocol:
        kwargs["block_size"] = block_size or so.get("default_block_size") or 8 * 2**20
        kwargs["cache_type"] = so.get("default_cache_type", "readahead")
    elif block_size:
        kwargs["block_size"] = block_size
    return RetryingReader(lambda: fs.open(path, "rb", **kwargs), url, attempts)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def copy_once(
    src_url: str,
    dest_url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
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
    attempts : int
        Attempts per storage operation (reads resume at their offset).

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

    from fsspec.core import url_to_fs

    so = dict(storage_options or {})
    sfs, spath = url_to_fs(src_url, **so)
    dfs, dpath = url_to_fs(dest_url, **so)
    size = call(sfs.size, spath, url=src_url, action="read", attempts=attempts)
    try:
        if call(dfs.size, dpath, url=dest_url, action="read", attempts=attempts) == size:
            return False
    except FileNotFoundError:
        pass
    chunk = 8 * 2**20
    if _is_local(dfs):
        os.makedirs(os.path.dirname(dpath), exist_ok=True)
        tmp = f"{dpath}.tmp-{uuid.uuid4().hex}"
        try:
            with open_input(src_url, so, attempts=attempts) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, chunk)
            os.replace(tmp, dpath)
        except OSError as e:
            raise storage_error(e, dest_url, "write") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    elif dfs is sfs:
        dfs.invalidate_cache(dpath)
        call(dfs.copy, spath, dpath, url=dest_url, action="copy to", attempts=attempts)
    else:
        fout = call(dfs.open, dpath, "wb", url=dest_url, action="write", attempts=attempts)
        try:
            with open_input(src_url, so, attempts=attempts) as fin:
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
