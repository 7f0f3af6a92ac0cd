"""Archive-reading stage: stream the members of one tar / zip / folder chunk.

Tars (plain or compressed) are read in ``r|*`` stream mode, one header at a time, so nothing
is indexed up front and nothing is extracted to disk; zips are read through their central
directory. Members are grouped into webdataset samples by key (``a/b/000123.jpg`` and
``a/b/000123.txt`` share the key ``a/b/000123``), consecutive members of one key forming one
sample, as webdataset does.
"""

from __future__ import annotations

import errno
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import remote
from .sources import ArchiveSource

__all__ = ["Member", "ArchiveReadError", "iter_members", "group_samples", "split_key", "clean_name"]


# Exceptions that mean "the bytes are bad", as opposed to "the storage failed".
_DATA_ERRORS = (tarfile.TarError, EOFError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)


class ArchiveReadError(Exception):
    """The archive itself is broken (truncated, bad header, not an archive).

    Members read before the error keep their outcomes; the archive is marked partial.
    Never raised for a storage failure, even one a parser swallowed (see :func:`_storage_failure`).
    """


def _storage_failure(fileobj: Any) -> remote.StorageError | None:
    """The storage error the reader under a parser raised, if any.

    ``zipfile`` catches the ``OSError`` of a failed read while it looks for the central
    directory and raises ``BadZipFile("File is not a zip file")``; other parsers may do the
    same. The :class:`~dedupdask.remote.RetryingReader` keeps what it raised, so the archive
    is reported as a storage failure (not done, retried by the next run), not as broken.
    """
    return getattr(fileobj, "failure", None)


class _Budget:
    """Bytes an archive may still have read into memory (``max_archive_bytes``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.exhausted = False

    def take(self, m: Member, size: int) -> bool:
        """Reserve ``size`` bytes for member ``m``; mark it and return False when over budget."""
        if size > self.left:
            m.error = f"archive read more than max_archive_bytes={self.limit}; reading stopped"
            m.error_code = "ERROR_ARCHIVE_TOO_LARGE"
            self.exhausted = True
            return False
        self.left -= size
        return True

    def check(self) -> None:
        if self.exhausted:
            raise ArchiveReadError(f"archive exceeds max_archive_bytes={self.limit}; the rest was not read")


@dataclass
class Member:
    """One archive member as read from the stream.

    Attributes
    ----------
    name : str
        Member path inside the archive (non-UTF-8 bytes shown as ``\\xNN`` escapes).
    kind : str
        ``file``, ``dir``, ``symlink``, ``hardlink``, ``device``, ``fifo`` or ``other``.
    size : int
        Size in bytes as recorded in the archive header.
    data : bytes or None
        The content for regular files that were read; None otherwise.
    error : str or None
        Why a regular file could not be read (too large, bad CRC...).
    offset : int or None
        Where the member's bytes start in the archive file, for an uncompressed tar: reading
        ``size`` bytes from there gives the member back without streaming the archive.
    """

    name: str
    kind: str
    size: int
    data: bytes | None = None
    error: str | None = None
    error_code: str | None = None
    offset: int | None = None


def clean_name(name: str) -> str:
    """Make a member name printable and UTF-8 safe without making two names equal.

    Undecodable bytes (surrogate escapes) become ``\\xNN`` and control characters ``\\uNNNN``.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        name = "".join(c if 32 <= ord(c) != 127 else f"\\u{ord(c):04x}" for c in name)
    return name


_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


def split_key(name: str) -> tuple[str, str]:
    """Split a member name into webdataset ``(key, extension)``; extension lower-cased.

    Examples
    --------
    >>> split_key("shard/000123.seg.jpg")
    ('shard/000123', 'seg.jpg')
    >>> split_key("README")
    ('README', '')
    """
    m = _KEY_RE.match(name)
    if not m:
        return name, ""
    return m.group(1), m.group(2).lower()


def _tar_kind(ti: tarfile.TarInfo) -> str:
    if ti.isreg():
        return "file"
    if ti.isdir():
        return "dir"
    if ti.issym():
        return "symlink"
    if ti.islnk():
        return "hardlink"
    if ti.isfifo():  # before isdev(), which counts FIFOs as devices
        return "fifo"
    if ti.isdev():
        return "device"
    return "other"


def open_tar_stream(fileobj: Any) -> tarfile.TarFile:
    """``tarfile.open(fileobj, "r|*")`` (any compression, read as a stream; names that are not
    UTF-8 kept as surrogates), where a broken start is a :class:`tarfile.ReadError` like any
    other: CPython's stream reader parses a gzip header cut inside its first ten bytes with
    ``ord()`` of an empty read (``tarfile._Stream._init_read_gz``) and raises TypeError.

    Examples
    --------
    >>> import io
    >>> try:
    ...     open_tar_stream(io.BytesIO(b"\\x1f\\x8b\\x08"))  # three bytes of a gzip header
    ... except tarfile.ReadError as e:
    ...     str(e).startswith("gzip header cut short")
    True
    """
    try:
        return tarfile.open(fileobj=fileobj, mode="r|*", encoding="utf-8", errors="surrogateescape")
    except TypeError as e:
        raise tarfile.ReadError(f"gzip header cut short ({e})") from e


def _iter_tar(fileobj: Any, max_member_bytes: int, budget: _Budget) -> Iterator[Member]:
    try:
        tf = open_tar_stream(fileobj)
    except (*_DATA_ERRORS, OSError) as e:
        if isinstance(e, OSError) and not _is_data_error(e):
            raise
        raise ArchiveReadError(f"not a readable tar archive: {e}") from e
    plain = getattr(tf.fileobj, "comptype", None) == "tar"  # offsets are file offsets
    with tf:
        while True:
            try:
                ti = tf.next()
            except (*_DATA_ERRORS, OSError) as e:
                if isinstance(e, OSError) and not _is_data_error(e):
                    raise
                raise ArchiveReadError(f"tar stream broken after {tf.offset} bytes: {e}") from e
            # TarFile keeps every header it has read (``members``, for getmembers() and link
            # targets); a stream needs none of them, and a tar of many small members would
            # otherwise hold ~0.5 kB per member until the end (webdataset clears it too)
            tf.members.clear()
            if ti is None:
                _check_stream_end(tf.fileobj)
                return
            kind = _tar_kind(ti)
            m = Member(name=clean_name(ti.name), kind=kind, size=int(ti.size))
            if plain:
                m.offset = int(ti.offset_data)
            if kind == "file":
                if ti.size > max_member_bytes:
                    m.error = f"member of {ti.size} bytes exceeds max_member_bytes={max_member_bytes}"
                    m.error_code = "ERROR_MEMBER_TOO_LARGE"
                elif budget.take(m, ti.size):
                    try:
                        f = tf.extractfile(ti)
                        m.data = f.read() if f is not None else b""
                    except (*_DATA_ERRORS, OSError) as e:
                        if isinstance(e, OSError) and not _is_data_error(e):
                            raise
                        raise ArchiveReadError(f"tar stream broken inside member {m.name!r}: {e}") from e
                    if len(m.data) != ti.size:
                        raise ArchiveReadError(
                            f"tar truncated inside member {m.name!r} "
                            f"({len(m.data)} of {ti.size} bytes)"
                        )
            yield m
            budget.check()


def _check_stream_end(stream: Any) -> None:
    """A gzip-compressed tar must also end its gzip stream: its trailer follows, with the size.

    ``tarfile`` stops at the tar's end-of-archive blocks and reads no further. Data past a gzip
    header that is not a gzip stream can decode to such blocks (about 1 random file in 700) and
    would read as an empty tar; the trailer's size (``ISIZE``) then does not match what was
    decompressed.
    """
    if getattr(stream, "comptype", None) != "gz" or not all(hasattr(stream, a) for a in ("cmp", "pos", "fileobj")):
        return  # not gzip, or a tarfile whose stream keeps other names (the check is then skipped)
    try:
        while stream.read(1 << 16):  # the padding after the end-of-archive blocks
            pass
        trailer = stream.cmp.unused_data
        if len(trailer) < 8:
            trailer += stream.fileobj.read(8 - len(trailer))
    except (*_DATA_ERRORS, OSError) as e:
        if isinstance(e, OSError) and not _is_data_error(e):
            raise
        raise ArchiveReadError(f"gzip stream broken after the end of the tar: {e}") from e
    if not stream.cmp.eof or len(trailer) < 8:
        raise ArchiveReadError("gzip stream ends before its end marker (truncated)")
    if int.from_bytes(trailer[4:8], "little") != stream.pos % 2**32:
        raise ArchiveReadError("gzip trailer does not match the data: not a gzip stream, or a damaged one")


def _is_data_error(e: OSError) -> bool:
    """gzip/bz2/lzma raise OSError subclasses for corrupt data; network errors have errno."""
    import gzip

    if isinstance(e, gzip.BadGzipFile):
        return True
    return e.errno is None and type(e) is OSError  # zlib/lzma data errors: plain OSError, no errno


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "dir"
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return "symlink"
    if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        return "device"
    if mode and stat.S_ISFIFO(mode):
        return "fifo"
    return "file"


def _iter_zip(fileobj: Any, max_member_bytes: int, budget: _Budget) -> Iterator[Member]:
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as e:
        if failure := _storage_failure(fileobj):
            raise failure from e
        raise ArchiveReadError(f"not a readable zip archive: {e}") from e
    except OSError as e:
        if e.errno != errno.EINVAL:  # a corrupt offset: seek before the file's start
            raise
        raise ArchiveReadError(f"not a readable zip archive: {e}") from e
    if failure := _storage_failure(fileobj):  # swallowed, yet the directory was read
        zf.close()
        raise failure
    with zf:
        for info in zf.infolist():
            kind = _zip_kind(info)
            m = Member(name=clean_name(info.filename), kind=kind, size=int(info.file_size))
            if kind == "file":
                if info.file_size > max_member_bytes:
                    m.error = f"member of {info.file_size} bytes exceeds max_member_bytes={max_member_bytes}"
                    m.error_code = "ERROR_MEMBER_TOO_LARGE"
                elif budget.take(m, info.file_size):
                    try:
                        with zf.open(info) as f:
                            m.data = f.read(max_member_bytes + 1)
                    except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError, RuntimeError) as e:
                        if failure := _storage_failure(fileobj):
                            raise failure from e
                        m.data = None
                        m.error = f"cannot read zip member: {e}"
                        m.error_code = "ERROR_READ_MEMBER"
                    except OSError as e:
                        # EINVAL: a corrupt offset made zipfile seek before the file's start
                        if not (_is_data_error(e) or e.errno == errno.EINVAL):
                            raise
                        m.data = None
                        m.error = f"cannot read zip member: {e}"
                        m.error_code = "ERROR_READ_MEMBER"
            yield m
            budget.check()


def _iter_folder(
    source: ArchiveSource, storage_options: dict[str, Any], max_member_bytes: int, budget: _Budget,
    attempts: int = remote.DEFAULT_ATTEMPTS, deadline: float = remote.DEFAULT_DEADLINE,
) -> Iterator[Member]:
    fs, _ = remote.filesystem(source.url, storage_options)
    root = source.url.rstrip("/") + "/"

    def read(url: str) -> bytes:
        with fs.open(url, "rb") as f:
            return f.read(max_member_bytes + 1)

    for url in source.members:
        name = clean_name(url[len(root):] if url.startswith(root) else url.rsplit("/", 1)[-1])
        try:
            size = int(remote.call(fs.size, url, url=url, attempts=attempts, deadline=deadline))
        except FileNotFoundError:
            yield Member(name=name, kind="file", size=0, error="file vanished before it was read",
                         error_code="ERROR_MISSING_FILE")
            continue
        m = Member(name=name, kind="file", size=size)
        if size > max_member_bytes:
            m.error = f"file of {size} bytes exceeds max_member_bytes={max_member_bytes}"
            m.error_code = "ERROR_MEMBER_TOO_LARGE"
        elif budget.take(m, size):
            try:
                m.data = remote.call(read, url, url=url, attempts=attempts, deadline=deadline)
            except FileNotFoundError:
                m.error, m.error_code = "file vanished before it was read", "ERROR_MISSING_FILE"
        yield m
        budget.check()


def iter_members(
    source: ArchiveSource,
    storage_options: dict[str, Any] | None = None,
    *,
    max_member_bytes: int = 256 * 2**20,
    max_archive_bytes: int = 64 * 2**30,
    local_path: str | None = None,
    attempts: int = remote.DEFAULT_ATTEMPTS,
    deadline: float = remote.DEFAULT_DEADLINE,
) -> Iterator[Member]:
    """Stream the members of one archive, in archive order.

    Parameters
    ----------
    source : ArchiveSource
        What to read.
    storage_options : dict, optional
        fsspec options for ``source.url``.
    max_member_bytes : int
        Members declared larger than this are not read (``error_code`` is set instead).
    max_archive_bytes : int
        Total member bytes one archive may read (against zip/gzip bombs made of many members);
        the member that would pass it is recorded unread and the archive stops as broken.
    local_path : str, optional
        Read this copy (a path or URL, opened with ``storage_options``) instead of
        ``source.url`` (``keep_archives``).
    attempts : int
        Attempts per open/read on network or server errors: a remote archive is re-opened at
        the offset reached, so a dropped connection does not restart it
        (:class:`dedupdask.remote.RetryingReader`).
    deadline : float
        Seconds one failing open/read may spend retrying.

    Yields
    ------
    Member

    Raises
    ------
    ArchiveReadError
        When the archive's structure is broken; members yielded so far stay valid.
    dedupdask.remote.StorageError
        An ``OSError`` naming the URL, when the archive cannot be opened or read (missing,
        permission, network) after ``attempts``, whatever a parser made of it. Members
        yielded before it must not be recorded as the archive's outcome.
    """
    storage_options = dict(storage_options or {})
    budget = _Budget(max_archive_bytes)
    if source.kind == "folder":
        yield from _iter_folder(source, storage_options, max_member_bytes, budget, attempts, deadline)
        return
    url = local_path or source.url
    with remote.open_input(url, storage_options, attempts=attempts, deadline=deadline) as f:
        try:
            if source.kind == "zip":
                yield from _iter_zip(f, max_member_bytes, budget)
            else:
                yield from _iter_tar(f, max_member_bytes, budget)
        except ArchiveReadError as e:  # whatever the parser said, storage failed first
            if failure := _storage_failure(f):
                raise failure from e
            raise
        if failure := _storage_failure(f):  # swallowed by a parser that then went on
            raise failure


def group_samples(members: Iterable[Member]) -> Iterator[tuple[str, list[Member]]]:
    """Group consecutive members that share a webdataset key.

    Yields
    ------
    (key, members)
        Non-file members (directories, links...) each form a group of their own.
    """
    key: str | None = None
    group: list[Member] = []
    try:
        for m in members:
            k = split_key(m.name)[0] if m.kind == "file" else f"\0{m.name}"
            if group and k != key:
                yield key, group  # type: ignore[misc]
                group = []
            key = k
            group.append(m)
    except ArchiveReadError:
        if group:  # the members read before the break keep their outcomes
            yield key, group  # type: ignore[misc]
        raise
    if group:
        yield key, group  # type: ignore[misc]
