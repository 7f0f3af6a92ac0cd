"""Persistence stage: the per-archive files in ``work_dir`` and how to read them back.

For an archive named ``<name>`` (its path relative to the input root, ``/`` -> ``__``):

=============================  ===========================================================
``<name>features.dat``         raw little-endian float32, row-major N x d (fastdup format)
``<name>features.dat.csv``     ``index,filename``: row order of the .dat, index 0..N-1
``<name>dct.dat``              float32 N x 63 weight-free DCT descriptors, rows as in .dat
``<name>features.parquet``     one row per image member (valid or not), columns ``FILE_COLUMNS``
``<name>features.bad.csv``     ``index,filename,error_code,filesize`` (fastdup's columns)
``<name>skipped.csv``          ``filename,member,reason,filesize``: members that are not images
``<name>done.json``            written last: counts, d, model id + sha256, decode_version, timings
``<name>failed.json``          an archive that could not be read (storage error); no done.json
=============================  ===========================================================

Every file is written under a temporary name and renamed (local disks) or uploaded as one
object (object stores, where a PUT or a completed multipart upload is atomic), and
``done.json`` goes last, so a crash never leaves an archive that looks done.

Temporaries are named ``<file>.tmp-<machine>-<pid>-<random>`` (:func:`tmp_path`): ``machine``
is a short hash of the host name and PID namespace, ``pid`` the writing process. Several jobs
may share one work_dir (e.g. two ``--no-resume`` runs), so a job removes only temporaries
whose writer is dead (:func:`tmp_is_stale`): on this machine, when the process no longer
exists; elsewhere, or for names without an owner, when the file has not changed for
:data:`STALE_TMP_AGE` seconds (liveness cannot be checked there, and writing one file never
takes that long). A live writer's temporary is never removed.

Reading back, a file that is not what extraction writes (a ``done.json`` that is not a JSON
object or lacks a count, a Parquet file that cannot be parsed or lacks columns, a ``.dat``
whose size disagrees with its count) raises :class:`WorkDirError`, whose one-line message
names the file, what is wrong and how to redo the archive.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import remote

__all__ = [
    "FILE_COLUMNS",
    "SKIPPED_COLUMNS",
    "STALE_TMP_AGE",
    "SUFFIXES",
    "SkippedRows",
    "WorkDir",
    "WorkDirError",
    "check_done",
    "tmp_is_stale",
    "tmp_path",
    "empty_files_frame",
    "parquet_table",
    "load_binary_feature",
    "save_binary_feature",
]

SUFFIXES = {
    "dat": "features.dat",
    "dct": "dct.dat",
    "csv": "features.dat.csv",
    "parquet": "features.parquet",
    "bad": "features.bad.csv",
    "skipped": "skipped.csv",
    "done": "done.json",
    "failed": "failed.json",
}

# The Parquet schema of <name>features.parquet, defined once.
FILE_SCHEMA = pa.schema(
    [
        ("filename", pa.string()),
        ("archive", pa.string()),
        ("member", pa.string()),
        ("key", pa.string()),
        ("caption", pa.string()),
        ("json", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("file_size", pa.int64()),
        ("md5", pa.string()),
        ("pixel_md5", pa.string()),  # full-resolution pixels, when decoded at full size
        ("input_md5", pa.string()),  # the model-input pixels (decode_version >= 2)
        ("mean", pa.float32()),
        ("min", pa.float32()),
        ("max", pa.float32()),
        ("stdv", pa.float32()),
        ("blur", pa.float32()),
        ("unique", pa.int32()),
        ("contrast", pa.float32()),
        ("p01", pa.float32()),  # stats_version 2 (decode.STATS_VERSION): null in older work_dirs
        ("p99", pa.float32()),
        ("chroma", pa.float32()),
        ("residual_range", pa.float32()),  # stats_version 3: null in older work_dirs
        ("text_lines", pa.float32()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("index", pa.int64()),
        ("member_offset", pa.int64()),  # where the bytes start in an uncompressed tar, else null
    ]
)
FILE_COLUMNS = tuple(FILE_SCHEMA.names)
SKIPPED_COLUMNS = ("filename", "member", "reason", "filesize")
SPOOL_MEMORY = 2**20
"""Bytes of encoded skipped rows kept in memory before they go to a temporary file."""


class SkippedRows:
    r"""The rows of one archive's ``<name>skipped.csv``, encoded as they come.

    A tar of a million tiny non-image members must not cost a worker a Python tuple per
    member: each row is encoded at once as CSV -- the dialect of ``DataFrame.to_csv``, so the
    file is byte for byte what ``pd.DataFrame(rows, columns=SKIPPED_COLUMNS).to_csv(index=False)``
    gives -- into a temporary file that stays in memory up to ``max_memory`` bytes.
    :meth:`WorkDir.write_archive` copies it to the work_dir in blocks.

    Examples
    --------
    >>> rows = SkippedRows()
    >>> rows.append("s3://b/a.tar/x.cls", "x.cls", "not_image", 1)
    >>> len(rows), rows.open().read().decode()
    (1, 'filename,member,reason,filesize\ns3://b/a.tar/x.cls,x.cls,not_image,1\n')
    >>> rows.close()
    """

    _FLUSH = 64 * 2**10  # characters buffered before they are encoded into the spool

    def __init__(self, max_memory: int = SPOOL_MEMORY) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=max_memory)
        self._buf = io.StringIO()
        # pandas' to_csv: csv.writer, QUOTE_MINIMAL, '"' doubled, "\n" (os.linesep) line ends
        self._writer = csv.writer(self._buf, lineterminator="\n")
        self._writer.writerow(SKIPPED_COLUMNS)
        self._n = 0

    def append(self, filename: str, member: str, reason: str, filesize: int) -> None:
        """Add one skipped member."""
        self._writer.writerow((filename, member, reason, int(filesize)))
        self._n += 1
        if self._buf.tell() >= self._FLUSH:
            self._drain()

    def _drain(self) -> None:
        self._spool.write(self._buf.getvalue().encode("utf-8"))
        self._buf.seek(0)
        self._buf.truncate()

    def __len__(self) -> int:
        return self._n

    def open(self) -> IO[bytes]:
        """The encoded file (header included), positioned at its start."""
        self._drain()
        self._spool.seek(0)
        return self._spool  # type: ignore[return-value]

    def close(self) -> None:
        """Free the buffer and the temporary file."""
        self._spool.close()

    def __enter__(self) -> SkippedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Parquet columns that work_dirs written by older versions may lack (read back as null):
# member_offset (added after the first release), input_md5 (decode version 2), p01/p99/chroma
# (stats version 2), residual_range/text_lines (stats version 3).
OPTIONAL_FILE_COLUMNS = frozenset({
    "member_offset", "input_md5", "p01", "p99", "chroma", "residual_range", "text_lines",
})  # fmt: skip

#: Seconds after its last change when a temporary whose writer's liveness cannot be checked
#: (another machine, an object store, a name without an owner) is taken as abandoned.
READ_BATCH = 1000
"""Files read by one ``fs.cat`` of a list (:meth:`WorkDir.read_many`); s3fs runs its own
``batch_size`` of them at once."""
STALE_TMP_AGE = 3600.0
#: Seconds after which a temporary is abandoned even if a process with its writer's pid runs
#: on this machine (the pid was reused: the writer itself renames its file within seconds).
REUSED_PID_AGE = 24 * 3600.0
_TMP_MARK = ".tmp-"
_TMP_OWNER = re.compile(r"^(?P<machine>[0-9a-f]{12})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8,32}$")


class WorkDirError(ValueError):
    """A work_dir file is damaged or is not what dedupdask writes; the message names it.

    The command line prints the message as one line and exits with code 2.

    Attributes
    ----------
    url : str
        The file (local path or full URL).
    problem : str
        What is wrong with it, and how to recover.

    Examples
    --------
    >>> print(WorkDirError("/w/a.tardone.json", "holds an array, not a JSON object"))
    /w/a.tardone.json: holds an array, not a JSON object
    """

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(url, problem)
        self.url, self.problem = url, problem

    def __str__(self) -> str:
        return re.sub(r"\s*[\r\n]+\s*", " ", f"{self.url}: {self.problem}")


@functools.cache
def _machine() -> str:
    """12 hex digits naming this machine and PID namespace (the scope in which a pid means
    one process): containers that share a host name but not their processes differ."""
    ident = socket.gethostname()
    try:
        ident += "|" + os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    return hashlib.sha1(ident.encode(errors="replace")).hexdigest()[:12]


def tmp_path(path: str, pid: int | None = None) -> str:
    """The temporary name under which ``path`` is written before it is renamed.

    ``<path>.tmp-<machine>-<pid>-<random>``: the owner (this machine, this process, or
    ``pid``) is part of the name, so :func:`tmp_is_stale` can tell a live writer's file from
    an abandoned one.

    Examples
    --------
    >>> tmp_path("/w/a.tarfeatures.dat", pid=42).startswith("/w/a.tarfeatures.dat.tmp-")
    True
    >>> tmp_is_stale(tmp_path("/w/a.tarfeatures.dat"), age=0.0)  # this process is alive
    False
    """
    return f"{path}{_TMP_MARK}{_machine()}-{os.getpid() if pid is None else int(pid)}-{uuid.uuid4().hex[:16]}"


@contextlib.contextmanager
def local_atomic_file(path: str, *, drop_cache: bool = False) -> Iterator[IO[bytes]]:
    """A local file opened for writing whose contents appear at ``path`` whole (synced, then
    renamed from :func:`tmp_path`) when the block ends without error; nothing otherwise.
    ``drop_cache``: once synced, its pages leave the page cache (``POSIX_FADV_DONTNEED``: a
    big output written once, such as a clean shard, should not push other files out).

    Examples
    --------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> with local_atomic_file(p) as f:
    ...     _ = f.write(b"abc")
    >>> open(p, "rb").read(), [n for n in os.listdir(os.path.dirname(p)) if ".tmp-" in n]
    (b'abc', [])
    """
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if drop_cache:
                with contextlib.suppress(OSError, AttributeError):  # (no posix_fadvise on macOS)
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or os.name != "posix":  # Windows' os.kill would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def tmp_is_stale(name: str, age: float) -> bool:
    """Whether the temporary file ``name`` was abandoned by its writer (safe to remove).

    Parameters
    ----------
    name : str
        The temporary's name or path (``<file>.tmp-<owner>``, see :func:`tmp_path`).
    age : float
        Seconds since it last changed.

    Returns
    -------
    bool
        True when its writer is a process of this machine that no longer exists, or when
        the writer cannot be checked (another machine, no owner in the name) and the file
        has not changed for :data:`STALE_TMP_AGE` seconds. A live writer's file: False.

    Examples
    --------
    >>> tmp_is_stale("a.tarfeatures.dat.tmp-0123456789abcdef", age=60.0)  # no owner, fresh
    False
    >>> tmp_is_stale("a.tarfeatures.dat.tmp-0123456789abcdef", age=2 * STALE_TMP_AGE)
    True
    """
    owner = _TMP_OWNER.match(name.rpartition(_TMP_MARK)[2])
    if owner is None or owner["machine"] != _machine():
        return age > STALE_TMP_AGE
    if not _pid_alive(int(owner["pid"])):
        return True
    return age > REUSED_PID_AGE


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return {dict: "a JSON object", list: "an array", str: "a string", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def check_done(done: Any) -> str | None:
    """What is wrong with the contents of a ``done.json`` (None: nothing).

    Checks what reading an archive back relies on: a JSON object with ``url``, ``status``
    (``done``/``partial``), ``model_id``, ``model_sha256``, a positive integer ``d``, and
    ``counts`` whose ``valid`` and ``images`` are integers with ``0 <= valid <= images``.

    Examples
    --------
    >>> check_done([])
    'holds an array, not a JSON object'
    >>> check_done({"url": "a.tar", "status": "done", "model_id": "dct", "model_sha256": "0",
    ...             "d": 63, "counts": {"valid": "3", "images": 3}})
    "counts.valid is '3' (a string), not a non-negative integer"
    """
    if not isinstance(done, dict):
        return f"holds {_json_type(done)}, not a JSON object"
    for key in ("url", "status", "model_id", "model_sha256", "d", "counts"):
        if key not in done:
            return f"has no {key!r}"
    for key in ("url", "status", "model_id", "model_sha256"):
        if not isinstance(done[key], str):
            return f"{key} is {done[key]!r} ({_json_type(done[key])}), not a string"
    if done["status"] not in ("done", "partial"):
        return f"status is {done['status']!r}, not 'done' or 'partial'"
    if not _count(done["d"]) or done["d"] == 0:
        return f"d is {done['d']!r} ({_json_type(done['d'])}), not a positive integer"
    counts = done["counts"]
    if not isinstance(counts, dict):
        return f"counts is {_json_type(counts)}, not a JSON object"
    for key in ("valid", "images"):
        if key not in counts:
            return f"counts has no {key!r}"
        if not _count(counts[key]):
            v = counts[key]
            return f"counts.{key} is {v!r} ({_json_type(v)}), not a non-negative integer"
    if counts["valid"] > counts["images"]:
        return f"counts.valid ({counts['valid']}) exceeds counts.images ({counts['images']})"
    error = done.get("archive_error")
    if error is not None and not isinstance(error, str):
        return f"archive_error is {_json_type(error)}, not a string or null"
    for key in ("model_threshold", "model_ccthreshold"):
        if not _number_or_null(done.get(key)):
            return f"{key} is {done[key]!r}, not a number or null"
    perceptual = done.get("perceptual")
    if perceptual is not None and not (
        isinstance(perceptual, dict) and _count(perceptual.get("d")) and perceptual["d"] > 0
    ):
        return "perceptual is not a JSON object with a positive integer 'd'"
    return None


def parquet_table(data: bytes | pa.Buffer, columns: Sequence[str] | None = None) -> pa.Table:
    """The Parquet file ``data`` as an Arrow table (only ``columns``, when given).

    The bytes are copied into Arrow's own memory first. Parquet's reader hands slices of its
    input to background threads that may drop them after this returns; were the input a
    Python object (``bytes``, ``io.BytesIO``), such a thread would need Python to release it
    and, if the interpreter is exiting (a command that fails right after the read), abort
    it: "terminate called without an active exception" (apache/arrow#33975, #34314).

    Examples
    --------
    >>> buf = io.BytesIO(); pq.write_table(pa.table({"a": [1, 2]}), buf)
    >>> parquet_table(buf.getvalue()).num_rows
    2
    """
    source = pa.BufferReader(_arrow_copy(data))
    return pq.read_table(source, columns=None if columns is None else list(columns))


def _arrow_copy(data: bytes | pa.Buffer) -> pa.Buffer:
    """``data`` in Arrow's own memory (see :func:`parquet_table`); an Arrow buffer as is."""
    if isinstance(data, pa.Buffer):
        return data
    out = pa.BufferOutputStream()
    out.write(data)
    return out.getvalue()


def empty_files_frame() -> pd.DataFrame:
    """An empty DataFrame with the dtypes of the per-archive Parquet files (Dask meta)."""
    return FILE_SCHEMA.empty_table().to_pandas(types_mapper=_types_mapper)


def file_dtypes() -> dict[str, Any]:
    """Column -> pandas dtype of the per-archive Parquet files (computed once)."""
    return dict(_file_dtypes())


@functools.cache
def _file_dtypes() -> dict[str, Any]:
    return empty_files_frame().dtypes.to_dict()


def _types_mapper(t: pa.DataType) -> Any:
    if pa.types.is_string(t):
        return pd.StringDtype()
    if pa.types.is_integer(t):
        return pd.Int64Dtype() if t == pa.int64() else pd.Int32Dtype()
    if pa.types.is_floating(t):
        return pd.Float32Dtype()
    return None


class WorkDir:
    """A ``work_dir`` on any fsspec file system.

    Parameters
    ----------
    url : str
        Local path or URL (``s3://bucket/run1``).
    storage_options : dict, optional
        fsspec options.
    attempts : int
        Attempts per storage operation on network/server errors (:mod:`dedupdask.remote`).
    deadline : float
        Seconds one failing storage operation may spend retrying.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, attempts: int = remote.DEFAULT_ATTEMPTS,
        deadline: float = remote.DEFAULT_DEADLINE,
    ) -> None:  # fmt: skip
        self.storage_options = dict(storage_options or {})
        self.attempts, self.deadline = attempts, deadline
        self.fs, path = remote.filesystem(str(url), self.storage_options)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocol or "local" in protocol
        if self.local:
            path = os.path.abspath(os.path.expanduser(path))
        self.path = path.rstrip("/") or "/"
        self.url = self.path if self.local else self.fs.unstrip_protocol(self.path)

    def __repr__(self) -> str:
        return f"WorkDir({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkDir, (self.url, self.storage_options, self.attempts, self.deadline))

    # -- paths -------------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        """Path (file-system form, no protocol) of ``parts`` under work_dir."""
        return posixpath.join(self.path, *parts)

    def file(self, name: str, which: str) -> str:
        """Path of one per-archive file, ``which`` in :data:`SUFFIXES`."""
        return self.join(name + SUFFIXES[which])

    def remove_stale_tmp(self, names: Iterable[str], listing: Iterable[str] | None = None) -> list[str]:
        """Remove the temporaries of archives ``names`` that a dead writer left behind.

        :meth:`write_bytes` writes ``<file>.tmp-<owner>`` and renames it; a process killed in
        between leaves the temporary behind. Another job writing the same archive into this
        work_dir (``resume=False`` twice at once) has live temporaries: only those
        :func:`tmp_is_stale` calls abandoned are removed.

        Parameters
        ----------
        names : iterable of str
            Archive names whose per-archive files' temporaries are considered.
        listing : iterable of str, optional
            Base names of the files in work_dir (one listing the caller already has). Without
            it, a local work_dir is searched per name; an object store is left alone (nothing
            there is written under a temporary name, and a listing per archive would be costly).

        Returns
        -------
        list of str
            Paths removed.
        """
        names = set(names)
        if listing is None:
            if not self.local:
                return []
            import glob

            listing = [
                posixpath.basename(p)
                for name in names
                for p in glob.glob(glob.escape(self.join(name)) + "*" + _TMP_MARK + "*")
            ]
        suffixes = tuple(SUFFIXES.values())
        removed = []
        for base in listing:
            target, mark, _ = base.rpartition(_TMP_MARK)
            if not mark or not any(
                target.endswith(sfx) and target[: -len(sfx)] in names for sfx in suffixes
            ):
                continue
            path = self.join(base)
            try:
                age = time.time() - self._mtime(path)
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
            if tmp_is_stale(base, age):
                self.remove(path)
                removed.append(path)
        return removed

    def _mtime(self, path: str) -> float:
        """When ``path`` last changed (epoch seconds); now when the file system cannot say."""
        if self.local:
            return os.stat(path).st_mtime
        try:
            return self._call(self.fs.modified, path, path=path, action="stat").timestamp()
        except NotImplementedError:
            return time.time()  # unknown age: a live writer's file is never taken as stale

    def url_of(self, path: str) -> str:
        """Full URL (``s3://...``) or local path of a file-system path, for messages."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def _call(self, fn: Any, *args: Any, path: str, action: str) -> Any:
        """``fn(*args)`` with bounded retries; storage errors name the file's URL."""
        return remote.call(
            fn, *args, url=self.url_of(path), action=action, attempts=self.attempts, deadline=self.deadline
        )

    def makedirs(self, *parts: str) -> None:
        path = self.join(*parts)
        self._call(self.fs.makedirs, path, True, path=path, action="create")

    # -- atomic writes -------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes | IO[bytes]) -> None:
        """Write ``data`` to ``path`` so that readers see all of it or nothing.

        ``data`` is bytes, or a binary file that is copied from its start in blocks (a large
        file is never held in memory whole; on an object store, one past ``_PIPE_MAX`` is
        streamed as a multipart upload).
        """
        if self.local:
            with local_atomic_file(path) as f:
                _copy_into(f, data)
        else:
            if not isinstance(data, bytes | bytearray | memoryview) and _size(data) <= _PIPE_MAX:
                data.seek(0)
                data = data.read()
            if isinstance(data, bytes | bytearray | memoryview):
                # An object store PUT (or multipart upload) becomes visible only when complete.
                self._call(self.fs.pipe_file, path, data, path=path, action="write")
            else:
                self._call(self._upload, path, data, path=path, action="write")

    def _upload(self, path: str, src: IO[bytes]) -> None:
        """Stream ``src`` (from its start) to ``path``; a failed upload leaves no object.

        fsspec's transactional protocol: the file is opened with ``autocommit=False``, so
        ``close()`` uploads the parts and only ``commit()`` makes the object appear (s3fs:
        completes the multipart upload); on an error it is closed and discarded instead
        (s3fs: aborts the upload). File systems without transactions commit on close.
        """
        src.seek(0)
        self._upload_with(path, lambda out: shutil.copyfileobj(src, out, _COPY_BLOCK))

    def write_joined(self, path: str, parts: Sequence[str]) -> None:
        """Write the files ``parts``, one after the other, to ``path``, atomically.

        The bytes stream through this process one block (``_COPY_BLOCK``) at a time: a local
        file is written under a temporary name and renamed; on an object store it is one
        multipart upload that appears only when complete (object stores cannot append).
        """

        def copy(out: IO[bytes]) -> None:
            for part in parts:
                with self.fs.open(part, "rb") as src:
                    shutil.copyfileobj(src, out, _COPY_BLOCK)

        if self.local:
            with local_atomic_file(path) as f:
                copy(f)
        else:
            self._call(self._upload_with, path, copy, path=path, action="write")

    def _upload_with(self, path: str, copy: Callable[[IO[bytes]], None]) -> None:
        """``copy(out)`` into ``path`` opened for a transactional upload (see :meth:`_upload`)."""
        out = self.fs.open(path, "wb", autocommit=False)
        try:
            copy(out)
            out.close()
        except BaseException:
            for step in (out.close, out.discard):  # the copy's error is the one to report
                with contextlib.suppress(Exception):
                    step()
            raise
        out.commit()

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def remove(self, path: str) -> None:
        try:
            self._call(self.fs.rm_file, path, path=path, action="remove")
        except FileNotFoundError:
            pass

    def read_bytes(self, path: str) -> bytes:
        """The whole file (bounded retries on remote stores)."""
        return self._call(self.fs.cat_file, path, path=path, action="read")

    def parquet_metadata(self, path: str) -> pq.FileMetaData:
        """The footer of a Parquet file (schema, row count) without reading its data.

        Raises ``FileNotFoundError`` or Arrow's error for a file that is not Parquet.
        """

        def footer() -> pq.FileMetaData:
            with self.fs.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata

        return self._call(footer, path=path, action="read")

    def read_many(self, paths: Sequence[str], batch: int = READ_BATCH) -> dict[str, bytes]:
        """Whole files, ``batch`` at a time in one ``fs.cat`` of a list (concurrent GETs on
        object stores); a file whose read failed there is read again alone with the retry
        policy of :meth:`read_bytes`, so errors are those of :meth:`read_bytes`.

        Examples
        --------
        >>> wd.read_many([wd.join("a.json"), wd.join("b.json")])  # doctest: +SKIP
        {'/w/a.json': b'{}', '/w/b.json': b'{}'}
        """
        out: dict[str, bytes] = {}
        for i in range(0, len(paths), max(1, int(batch))):
            group = list(paths[i : i + batch])
            try:
                got = self.fs.cat(group, on_error="return")
            except Exception:  # noqa: BLE001 - the group as a whole failed: each file alone below
                got = {}
            for p in group:
                data = got.get(self.fs._strip_protocol(p)) if isinstance(got, dict) else None
                out[p] = data if isinstance(data, bytes) else self.read_bytes(p)
        return out

    def read_json(self, path: str) -> Any:
        """The JSON value in ``path``; :class:`WorkDirError` when it is not valid JSON."""
        data = self.read_bytes(path)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise WorkDirError(self.url_of(path), f"not valid JSON ({e})") from e

    def damaged(self, name: str, which: str, problem: str) -> WorkDirError:
        """The error for archive ``name``'s file ``which`` (a :data:`SUFFIXES` key), with the
        way out: extraction redoes an archive once its ``done.json`` is gone."""
        done = self.url_of(self.file(name, "done"))
        fix = "remove it" if which == "done" else f"remove {done}"
        return WorkDirError(
            self.url_of(self.file(name, which)),
            f"{problem}; {fix} and rerun the extraction (run_mode=1) to redo archive {name!r}",
        )

    # -- per-archive outputs ---------------------------------------------------------------------
    def write_archive(
        self,
        name: str,
        features: np.ndarray,
        files: pd.DataFrame,
        skipped: pd.DataFrame | SkippedRows,
        done: dict[str, Any] | Callable[[], dict[str, Any]],
        perceptual: np.ndarray | None = None,
    ) -> None:
        """Write every file of one archive, ``done.json`` last.

        Parameters
        ----------
        name : str
            Archive name (file prefix).
        features : ndarray
            float32 ``[N, d]`` in the order of ``files[files.index >= 0]``.
        files : DataFrame
            One row per image member, columns :data:`FILE_COLUMNS`.
        skipped : DataFrame or SkippedRows
            Columns ``filename, member, reason, filesize`` (extraction streams them into a
            :class:`SkippedRows`).
        done : dict or callable
            The contents of ``done.json``, or a function called once the other files are
            written that returns them (so they can say how long the writing took).
        perceptual : ndarray, optional
            float32 ``[N, 63]`` DCT descriptors, rows as in ``features``.
        """
        valid = files[files["index"].notna()]
        if len(valid) != features.shape[0]:
            raise ValueError(f"{name}: {len(valid)} valid rows but {features.shape[0]} vectors")
        self.write_bytes(self.file(name, "dat"), np.ascontiguousarray(features, dtype="<f4").tobytes())
        if perceptual is not None:
            if perceptual.shape[0] != features.shape[0]:
                raise ValueError(f"{name}: {perceptual.shape[0]} descriptors for {features.shape[0]} vectors")
            self.write_bytes(self.file(name, "dct"), np.ascontiguousarray(perceptual, dtype="<f4").tobytes())
        dat_csv = pd.DataFrame({"index": valid["index"].astype("int64"), "filename": valid["filename"]})
        self.write_bytes(self.file(name, "csv"), dat_csv.to_csv(index=False).encode())
        bad = files[files["index"].isna()]
        bad_csv = pd.DataFrame(
            {
                "index": bad.index.astype("int64"),  # row of the image in the archive's parquet
                "filename": bad["filename"],
                "error_code": bad["error_code"],
                "filesize": bad["file_size"],
            }
        )
        self.write_bytes(self.file(name, "bad"), bad_csv.to_csv(index=False).encode())
        if isinstance(skipped, SkippedRows):
            self.write_bytes(self.file(name, "skipped"), skipped.open())
        else:
            self.write_bytes(
                self.file(name, "skipped"), skipped.loc[:, list(SKIPPED_COLUMNS)].to_csv(index=False).encode()
            )
        table = pa.Table.from_pandas(files.reset_index(drop=True), schema=FILE_SCHEMA, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", use_dictionary=["archive", "error_code"])
        self.write_bytes(self.file(name, "parquet"), buf.getvalue())
        self.remove(self.file(name, "failed"))
        self.write_json(self.file(name, "done"), done() if callable(done) else done)

    def write_failed(self, name: str, info: dict[str, Any]) -> None:
        """Record an archive that could not be processed (it stays not-done)."""
        self.write_json(self.file(name, "failed"), info)

    def listing(self) -> list[str]:
        """Base names of the files directly in work_dir (one listing call; none if it does not exist).

        Not ``fs.exists`` first: s3fs answers False for a bucket it cannot reach, and an
        outage must not look like an empty work_dir.
        """
        try:
            names = remote.call(self.fs.ls, self.path, detail=False, refresh=True, url=self.url,
                                action="list", attempts=self.attempts, deadline=self.deadline)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in names)

    def done_names(self) -> set[str]:
        """Names of the archives whose ``done.json`` exists."""
        suffix = SUFFIXES["done"]
        return {n[: -len(suffix)] for n in self.listing() if n.endswith(suffix)}

    def failed_names(self) -> set[str]:
        suffix = SUFFIXES["failed"]
        return {n[: -len(suffix)] for n in self.listing() if n.endswith(suffix)}

    def read_done(self, name: str) -> dict[str, Any]:
        """The archive's ``done.json``, checked (:func:`check_done`).

        Raises
        ------
        WorkDirError
            If it is not valid JSON or not what extraction writes.
        """
        return self._done(name, self.read_bytes(self.file(name, "done")))

    def read_dones(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The ``done.json`` of every named archive, checked, read concurrently (:meth:`read_many`).

        Raises
        ------
        WorkDirError
            If one is not valid JSON or not what extraction writes (the first in ``names``).
        """
        paths = [self.file(n, "done") for n in names]
        data = self.read_many(paths)
        return {n: self._done(n, data[p]) for n, p in zip(names, paths, strict=True)}

    def _done(self, name: str, data: bytes) -> dict[str, Any]:
        try:
            done = json.loads(data)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise self.damaged(name, "done", f"not valid JSON ({e})") from e
        problem = check_done(done)
        if problem:
            raise self.damaged(name, "done", problem)
        return done

    def read_files(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The archive's Parquet file as pandas, with the schema's columns and dtypes.

        ``columns``: only these (in this order) are decoded -- the captions and JSON of a
        LAION shard are most of its Parquet bytes, and an exact-group pass needs four hashes.

        Raises
        ------
        WorkDirError
            If it is not a Parquet file, lacks a column, or a column cannot be read as the
            schema's type.
        """
        data = _arrow_copy(self.read_bytes(self.file(name, "parquet")))
        want = FILE_COLUMNS if columns is None else tuple(columns)
        unknown = [c for c in want if c not in FILE_COLUMNS]
        if unknown:
            raise ValueError(f"no column(s) {', '.join(unknown)} in the per-archive files")
        try:
            present = set(pq.read_schema(pa.BufferReader(data)).names)  # the footer only
            table = parquet_table(data, [c for c in want if c in present])
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self.damaged(name, "parquet", f"not a readable Parquet file ({e})") from e
        missing = [c for c in FILE_COLUMNS if c not in present and c not in OPTIONAL_FILE_COLUMNS]
        if missing:
            raise self.damaged(name, "parquet", f"has no column(s) {', '.join(missing)}")
        fields = [FILE_SCHEMA.field(c) for c in want]
        arrays = []
        for f in fields:
            if f.name not in present:
                arrays.append(pa.nulls(table.num_rows, f.type))
                continue
            try:
                col = table.column(f.name)
                arrays.append(col if col.type == f.type else col.cast(f.type))
            except (pa.ArrowException, KeyError) as e:
                problem = f"column {f.name!r} cannot be read as {f.type} ({e})"
                raise self.damaged(name, "parquet", problem) from e
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
        return table.to_pandas(types_mapper=_types_mapper)

    def open_features(self, name: str, d: int, which: str = "dat") -> np.ndarray:
        """The archive's vectors (``which="dct"``: its DCT descriptors), memory-mapped locally."""
        path = self.file(name, which)
        if self.local:
            n = os.path.getsize(path) // (4 * d) if d else 0
            if n == 0:
                return np.zeros((0, d), dtype="<f4")
            return np.memmap(path, dtype="<f4", mode="r", shape=(n, d))
        raw = self.read_bytes(path)
        n = len(raw) // (4 * d) if d else 0  # a damaged size shows as a row count to check
        return np.frombuffer(raw, dtype="<f4", count=n * d).reshape(n, d)


_COPY_BLOCK = 2**20
_PIPE_MAX = 8 * 2**20  # a file up to this size goes to an object store in one PUT


def _size(f: IO[bytes]) -> int:
    return f.seek(0, io.SEEK_END)


def _copy_into(f: IO[bytes], data: bytes | IO[bytes]) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        f.write(data)
    else:
        data.seek(0)
        shutil.copyfileobj(data, f, _COPY_BLOCK)


def save_binary_feature(
    save_path: str,
    filenames: list[str],
    np_array: np.ndarray,
    save_prefix: str = "",
    *,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write vectors in fastdup's format: ``<prefix>features.dat`` + ``.dat.csv``.

    Parameters
    ----------
    save_path : str
        Folder (local or URL) to write into.
    filenames : list of str
        One name per row.
    np_array : ndarray
        float32 ``[N, d]``.
    save_prefix : str
        Prefix of the file names (fastdup's ``atrain_`` style).
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    str
        Path of the ``.dat`` file.

    Examples
    --------
    >>> import tempfile; d = tempfile.mkdtemp()
    >>> p = save_binary_feature(d, ["a.jpg", "b.jpg"], np.eye(2, 4, dtype=np.float32))
    >>> load_binary_feature(p, d=4)[0]
    ['a.jpg', 'b.jpg']
    """
    arr = np.asarray(np_array)
    if arr.dtype != np.float32 or arr.ndim != 2:
        raise ValueError(f"np_array must be a 2-D float32 array, got {arr.dtype} {arr.shape}")
    if len(filenames) != arr.shape[0]:
        raise ValueError(f"{len(filenames)} filenames for {arr.shape[0]} rows")
    wd = WorkDir(save_path, storage_options)
    wd.makedirs()
    dat = wd.join(f"{save_prefix}features.dat")
    wd.write_bytes(dat, np.ascontiguousarray(arr, dtype="<f4").tobytes())
    csv = pd.DataFrame({"index": np.arange(len(filenames)), "filename": list(filenames)})
    wd.write_bytes(dat + ".csv", csv.to_csv(index=False).encode())
    return dat if wd.local else wd.fs.unstrip_protocol(dat)


def load_binary_feature(
    filename: str, d: int = 576, *, storage_options: dict[str, Any] | None = None
) -> tuple[list[str], np.ndarray]:
    """Read a fastdup-format ``features.dat`` and its ``.dat.csv``.

    Parameters
    ----------
    filename : str
        Path or URL of the ``.dat`` file.
    d : int
        Vector width (fastdup's default model: 576; dedupdask's default: 1280).

    Returns
    -------
    (list of str, ndarray)
        File names and the float32 ``[N, d]`` array.
    """
    fs, path = remote.filesystem(filename, storage_options)
    with fs.open(path, "rb") as f:
        raw = f.read()
    if len(raw) % (4 * d):
        raise ValueError(f"{filename}: {len(raw)} bytes is not a whole number of {d}-d float32 rows")
    arr = np.frombuffer(raw, dtype="<f4").reshape(-1, d).astype(np.float32)
    with fs.open(path + ".csv", "rt") as f:
        names = pd.read_csv(f, dtype={"filename": str}, keep_default_na=False)["filename"].tolist()
    if len(names) != arr.shape[0]:
        raise ValueError(f"{filename}: {arr.shape[0]} rows but {len(names)} names in the .csv")
    return names, arr
