"""Clean-shard stage, byte level: find the member records of an uncompressed tar or a zip and
copy the kept ones in runs, without ``tarfile``/``zipfile`` per-member objects.

:func:`copy_tar` reads the 512-byte headers itself (ustar, GNU and pax; GNU long names
``L``/``K`` and pax ``x`` headers belong to the member that follows them) and verifies each
header checksum; :func:`copy_zip` walks the central directory (end record, zip64 end record)
entry by entry. Both ask ``decide(name, size, start)`` whether a member stays, and copy each run of
consecutive kept records byte for byte: between two local files in a second thread while the
headers are read, through one reused 1 MiB buffer (``os.preadv`` / ``os.pwrite``) or with
``os.copy_file_range`` where that can be cheaper (:meth:`Sink.copy`); from other sources (an
object store) in 1 MiB blocks. A tar gets new end-of-archive blocks, a zip a new central directory listing
the kept members at their new offsets (zip64 where needed), both as ``tarfile``/``zipfile``
write them. Memory does not depend on the shard: a read-ahead block, one run's bounds and
(zip) the new central directory, spooled to disk past 8 MiB.

Anything these readers do not handle (sparse files, pax global headers, other header types,
zip members out of order or data before the zip) raises :class:`Fallback` before the caller
trusts the output; :mod:`dedupdask.clean` then starts over with ``tarfile``/``zipfile``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import struct
import sys
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Directory", "Fallback", "Sink", "Source", "Stop", "copy_tar", "copy_zip"]

_BLOCK = 2**20
_RUN_MAX = 256 * _BLOCK  # a run is copied at the latest when it is this long
_HINT = 16 * _BLOCK  # how far ahead of the header reads the kernel is asked to read a local file
_AHEAD = 4096  # bytes read at a tar header: a sample's small members and the next header
_BEHIND = 64 * _BLOCK  # a local output is written back and dropped from the page cache in steps of this
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


def _sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """Linux's ``sync_file_range(fd, offset, nbytes, flags)`` (not in :mod:`os`), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if call(fd, offset, nbytes, flags) != 0:  # (a ctypes call releases the GIL)
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    return sync_file_range


sync_file_range = _sync_file_range()
_START_WRITE, _WAIT_WRITTEN = 2, 1 | 2 | 4  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER

# (regular member's name or None, size, start: a tar record's offset, a zip entry's position
# in the central directory) -> kept
Decide = Callable[[str | None, int, int], bool]


class Fallback(Exception):
    """The archive uses a feature these readers leave to ``tarfile``/``zipfile``."""


class Stop(Exception):
    """Raised by ``decide`` to end the copy early: the members after it are not needed."""


class Source:
    """Random reads of a source archive: ``os.pread`` on a local file, else seek and read
    (a :class:`dedupdask.remote.RetryingReader`).

    The header reads of a local file come with ``posix_fadvise(WILLNEED)`` of the next
    16 MiB (each byte hinted once): they jump from header to header, which the kernel's
    read-ahead takes for random reads of a few KB each, so on a file not in the page cache
    every header was a small disk read -- a 1 GB tar of 85,000 members took 4-7 s to scan
    cold and 5.6 s to clean, against 1-1.6 s and 2.8 s with the hint (and ~2.5 s for ``cp``);
    on a cached file the hint costs ~0.02 s per GB (measured on ext4, virtio disk).
    """

    def __init__(self, f: IO[bytes], fd: int | None = None) -> None:
        self.f, self.fd = f, fd
        self._hinted = -(2**62)  # the end of the range hinted last
        if fd is None:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                self.fd = f.fileno()

    @property
    def failure(self) -> Exception | None:
        """The storage error the reader raised, if any (a broken archive is not one)."""
        return getattr(self.f, "failure", None)

    def size(self) -> int:
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        return self.f.seek(0, os.SEEK_END)

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer only at the end of the file)."""
        if self.fd is not None:
            far = offset < self._hinted - 2 * _HINT  # far behind: start over (a zip's records after its directory)
            if far or offset >= self._hinted - _HINT // 2:
                start = offset if far or offset >= self._hinted else self._hinted
                with contextlib.suppress(OSError, AttributeError):  # (no posix_fadvise on macOS)
                    os.posix_fadvise(self.fd, start, offset + _HINT - start, os.POSIX_FADV_WILLNEED)
                self._hinted = offset + _HINT
            data = os.pread(self.fd, n, offset)
            while 0 < len(data) < n:
                more = os.pread(self.fd, n - len(data), offset + len(data))
                if not more:
                    break
                data += more
            return data
        self.f.seek(offset)
        parts, got = [], 0
        while got < n:
            block = self.f.read(n - got)
            if not block:
                break
            parts.append(block)
            got += len(block)
        return b"".join(parts)


class Sink:
    """The output file, written through its descriptor at a position of our own (the file
    object is flushed first and set to the end when done, :meth:`close`). ``Sink(None)``
    writes nothing and only counts (a dry run).

    With ``write_behind`` (a local output file, Linux), every 64 MiB written is handed to the
    disk at once (``sync_file_range``), and the 64 MiB before it, once on disk, leave the page
    cache (``POSIX_FADV_DONTNEED``): a shard's output holds at most ~128 MiB of page cache and
    its final fsync waits for that much. Without it a dataset's clean copy filled the page
    cache with dirty pages on top of the sources read; with 10 x 1 GB on a 24 GB VM the
    kernel's copies then slowed 3-4x per byte: 55-62 CPU s, against 24-43 with write-behind
    (cp -r 26-36; ext4, Linux 6.18, see benchmarks/results/clean.txt). The pages dropped are
    the cleaner's own output; the sources' pages are left alone.
    """

    def __init__(self, out: IO[bytes] | None, *, write_behind: bool = False) -> None:
        self.out, self.fd, self.start = out, None, 0
        self._offloaded, self._align = False, 4096
        if out is not None:
            out.flush()
            self.fd = out.fileno()
            self.start = os.lseek(self.fd, 0, os.SEEK_CUR)
            with contextlib.suppress(OSError, AttributeError):
                st = os.fstat(self.fd)
                self._offloaded = os.major(st.st_dev) == 0
                self._align = max(st.st_blksize, 512)
        self.pos = self.start
        self._kernel = True
        self._buffer: memoryview | None = None
        self._behind = write_behind and self.fd is not None and sync_file_range is not None
        self._synced = self._dropped = self.start  # written back from ``_dropped``, started to ``_synced``

    def _write_behind(self) -> None:
        """Start the write-back of the output since the last step, once it is ``_BEHIND`` long;
        wait for the step before and drop its pages."""
        if self.pos - self._synced < _BEHIND or not self._behind:
            return
        try:
            sync_file_range(self.fd, self._synced, self.pos - self._synced, _START_WRITE)
            if self._synced > self._dropped:
                sync_file_range(self.fd, self._dropped, self._synced - self._dropped, _WAIT_WRITTEN)
                os.posix_fadvise(self.fd, self._dropped, self._synced - self._dropped, os.POSIX_FADV_DONTNEED)
        except OSError:  # a file system without it: write as before (fsync at the end)
            self._behind = False
            return
        self._dropped, self._synced = self._synced, self.pos

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fd is None:
            self.pos += len(data)
            return
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.pos)
            self.pos += n
            view = view[n:]
        self._write_behind()

    def copy(self, src: Source, offset: int, n: int) -> int:
        """Copy ``n`` bytes of ``src`` from ``offset``; return how many there were.

        Between two local files: ``os.copy_file_range`` when the output is not on a block
        device (a network or FUSE file system may copy on the server; tmpfs, btrfs, ZFS...)
        or when both offsets are block-aligned (a reflink on XFS or btrfs); otherwise a read
        and a write per MiB through one reused buffer. On a block device's file system (ext4,
        XFS) the kernel copy of a run that starts off the block boundary goes page by page
        through a pipe: 0.45-0.6 CPU s per GB for a tar whose runs are cut by every 10th
        sample, against 0.26-0.30 for the buffer (and 0.30 for ``cp``'s single aligned kernel
        copy of the whole file), measured on ext4, Linux 6.18.
        """
        if self.fd is None:
            self.pos += n
            return n
        done = 0
        if src.fd is not None and self._kernel and (self._offloaded or not (offset | self.pos) % self._align):
            try:
                while done < n:
                    k = os.copy_file_range(src.fd, self.fd, min(n - done, _BEHIND), offset + done, self.pos)
                    if k == 0:
                        return done
                    done += k
                    self.pos += k
                    self._write_behind()
                return done
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                self._kernel = False  # another file system or an old kernel: copy in blocks
        if src.fd is not None:
            if self._buffer is None:
                self._buffer = memoryview(bytearray(_BLOCK))
            buf = self._buffer
            while done < n:
                k = os.preadv(src.fd, [buf[: min(_BLOCK, n - done)]], offset + done)
                if not k:
                    break
                self.write(buf[:k])
                done += k
            return done
        while done < n:
            block = src.pread(min(_BLOCK, n - done), offset + done)
            if not block:
                break
            self.write(block)
            done += len(block)
        return done

    def truncate(self, pos: int) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, pos)
        self.pos = pos
        self._synced, self._dropped = min(self._synced, pos), min(self._dropped, pos)

    def close(self) -> None:
        if self.out is not None:
            self.out.seek(self.pos)  # the file object's idea of its position, for its owner


class _Runs:
    """Kept records not yet copied: one run of consecutive records ``[start, end)``, and
    (zip) the central directory entries of its members, handed to ``on_copied`` once copied.

    From a local file the runs are copied by a second thread while this one reads headers
    (the kernel copy releases the GIL); from other sources, at once. A copy that comes up
    short keeps the whole records that were there and raises ``error``.
    """

    def __init__(self, src: Source, sink: Sink, error: type[Exception],
                 on_copied: Callable[[list[bytes]], None] | None = None) -> None:  # fmt: skip
        self.src, self.sink, self.error, self.on_copied = src, sink, error, on_copied
        self.start = self.end = -1
        self.ends: list[int] = []  # record ends in the run, to cut a short copy at a whole record
        self.entries: list[bytes] = []
        self.pos = sink.pos  # where the next run starts in the output
        self.failure: BaseException | None = None
        self.thread: threading.Thread | None = None
        if src.fd is not None and sink.fd is not None:
            self.jobs: queue.Queue[Any] = queue.Queue(maxsize=64)
            self.thread = threading.Thread(target=self._work, name="dedupdask-copy", daemon=True)
            self.thread.start()

    def at(self, start: int) -> int:
        """The output offset (from the sink's start) a record at ``start`` will get."""
        pos = self.pos - self.sink.start
        if start == self.end:
            return pos + start - self.start
        return pos + (self.end - self.start if self.ends else 0)

    def add(self, start: int, end: int, entry: bytes | None = None) -> None:
        """Queue a record, and (zip) its central directory entry."""
        if start != self.end:
            self.flush()
            self.start = start
        if entry is not None:
            self.entries.append(entry)
        self.end = end
        self.ends.append(end)
        if end - self.start >= _RUN_MAX:
            self.flush()

    def flush(self) -> None:
        """Copy the run (or hand it to the copying thread)."""
        if self.failure is not None:
            raise self.failure
        if not self.ends:
            return
        job = (self.start, self.end - self.start, self.ends, self.entries)
        self.ends, self.entries, self.start, self.end = [], [], -1, -1
        self.pos += job[1]
        if self.thread is not None:
            self.jobs.put(job)
        else:
            self._copy(job)

    def finish(self, check: bool = True) -> None:
        """Wait for the queued copies; with ``check``, raise the first copy's failure."""
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join()
            self.thread = None
        if check and self.failure is not None:
            raise self.failure

    def _copy(self, job: tuple[int, int, list[int], list[bytes]]) -> None:
        start, n, ends, entries = job
        base = self.sink.pos
        got = self.sink.copy(self.src, start, n)
        if got < n:
            whole = sum(1 for e in ends if e - start <= got)
            self.sink.truncate(base + (ends[whole - 1] - start if whole else 0))
            entries = entries[:whole]
        if self.on_copied is not None and entries:
            self.on_copied(entries)
        if got < n:
            self.failure = self.error(f"unexpected end of data at byte {start + got}")
            raise self.failure

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.failure is None:
                try:
                    self._copy(job)
                except BaseException as e:  # noqa: BLE001 - raised in the reading thread
                    self.failure = e


# -- tar ------------------------------------------------------------------------------------
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_OTHER = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE)
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)


def _blocks(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _number(field: bytes) -> int:
    """A numeric header field, as ``tarfile.nti`` reads it (octal, or GNU base-256)."""
    if field[0] in (0o200, 0o377):
        return tarfile.nti(field)
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(hdr: bytes) -> bool:
    """The header checksum, as ``tarfile`` checks it (unsigned or signed byte sum). An ASCII
    header sums to at most 65,024, so adler32's low half (1 + sum, mod 65,521) is its sum.

    Examples
    --------
    >>> hdr = tarfile.TarInfo("a.jpg").tobuf()
    >>> _checksum_ok(hdr), _checksum_ok(hdr[:10] + b"b" + hdr[11:])
    (True, False)
    """
    try:
        stored = _number(hdr[148:156])
    except ValueError:
        return False
    if hdr.isascii():
        return stored == (zlib.adler32(hdr) & 0xFFFF) - 1 - sum(hdr[148:156]) + 256
    return stored in tarfile.calc_chksums(hdr)


def _pax(data: bytes) -> dict[bytes, bytes]:
    """The records of a pax extended header (``"%d %s=%s\\n"``)."""
    out, i = {}, 0
    while i < len(data) and data[i] != 0:
        sp = data.find(b" ", i)
        try:
            n = int(data[i:sp]) if sp > i else 0
        except ValueError:
            n = 0
        rec = data[sp + 1 : i + n]
        if n <= 0 or not rec.endswith(b"\n") or b"=" not in rec:
            raise tarfile.ReadError(f"invalid pax header at byte {i} of its data")
        k, v = rec[:-1].split(b"=", 1)
        out[k] = v
        i += n
    return out


def copy_tar(src: Source, sink: Sink, decide: Decide, *, end: bool = True, offset: int = 0) -> None:
    """Copy the kept member records of an uncompressed tar from the record at ``offset``,
    then (``end``) the end-of-archive blocks.

    Each record (extended headers, header, padded payload) is copied as it is; a break
    (bad header checksum, end of data inside a record) keeps the whole records before it,
    ends the output as a valid tar and raises ``tarfile.ReadError``. ``decide`` may raise
    :class:`Stop` to end early.
    """
    runs = _Runs(src, sink, tarfile.ReadError)
    try:
        try:
            with contextlib.suppress(Stop):
                _scan_tar(src, runs, decide, offset)
            runs.flush()
        except Fallback:
            runs.finish(check=False)
            raise
        except BaseException:
            if src.failure is None:  # a broken archive, not unreachable storage: keep the
                with contextlib.suppress(tarfile.ReadError, OSError):  # whole records before it
                    runs.flush()
            runs.finish(check=False)
            raise
        runs.finish()  # a copy that came up short raises here
    finally:
        if end:
            end_tar(sink)


def end_tar(sink: Sink) -> None:
    """The end-of-archive blocks, padded to a whole record (as ``tarfile`` writes them)."""
    sink.write(_ZERO_BLOCK * 2)
    sink.write(bytes((-(sink.pos - sink.start)) % tarfile.RECORDSIZE))


_HEADER = tarfile.BLOCKSIZE
_KINDS = frozenset(_REGULAR + _OTHER)
_REGULAR_KINDS = frozenset(_REGULAR)
_EXTENDED = frozenset((tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE))


def _scan_tar(src: Source, runs: _Runs, decide: Decide, pos: int = 0) -> None:
    """Read the headers from ``pos`` to the end of the archive; queue each kept member's record.
    (The hot loop of cleaning a tar, ~3 us per member: constants are module globals bound
    once, the common header -- ASCII, octal numbers, no extended header -- read inline.)"""
    buf, at = b"", 0  # a read-ahead block of the source starting at ``at``
    adler, pread, add, flush = zlib.adler32, src.pread, runs.add, runs.flush
    bs, zero, kinds, regular, extended = _HEADER, _ZERO_BLOCK, _KINDS, _REGULAR_KINDS, _EXTENDED
    while True:
        start, long_name, size = pos, None, None
        while True:  # extended headers, then the member's header
            rel = pos - at
            if rel < 0 or rel + bs > len(buf):
                at, buf, rel = pos, pread(_AHEAD, pos), 0
            hdr = buf[rel : rel + bs]
            if len(hdr) < bs:
                if pos == 0:
                    raise tarfile.ReadError("empty file")
                if hdr or pos != start or not pread(1, pos - 1):
                    raise tarfile.ReadError(f"unexpected end of data at byte {pos + len(hdr)}")
                return  # the end of the file, without end-of-archive blocks
            if hdr == zero:
                if pos != start:
                    raise tarfile.ReadError(f"end-of-archive block after an extended header at byte {pos}")
                return
            ascii_ = hdr.isascii()
            if ascii_:  # the common case of _checksum_ok, inline
                field = hdr[148:156]
                try:
                    ok = int(field.split(b"\0", 1)[0].strip() or b"0", 8) == (
                        adler(hdr) & 0xFFFF) - 1 - sum(field) + 256  # fmt: skip
                except ValueError:
                    ok = False
            else:
                ok = _checksum_ok(hdr)
            if not ok:
                raise tarfile.ReadError(f"bad checksum in the header at byte {pos}")
            kind = hdr[156:157]
            if kind in kinds:
                break
            if kind not in extended:
                raise Fallback(f"tar header type {kind!r}")
            n = _number(hdr[124:136])
            if n > _BLOCK:
                raise Fallback(f"an extended header of {n} bytes")
            data = pread(n, pos + bs)
            if len(data) < n:
                raise tarfile.ReadError(f"unexpected end of data at byte {pos + bs + len(data)}")
            if kind == tarfile.GNUTYPE_LONGNAME:
                long_name = _text(data)
            elif kind == tarfile.XHDTYPE:
                pax = _pax(data)
                if b"hdrcharset" in pax or any(k.startswith(b"GNU.sparse.") for k in pax):
                    raise Fallback("pax sparse file or header charset")
                if b"path" in pax:
                    long_name = pax[b"path"].decode("utf-8", "surrogateescape")
                if b"size" in pax:
                    size = int(pax[b"size"])
            pos += bs + _blocks(n)
        if long_name is not None:
            name = long_name
        elif ascii_ and not hdr[345]:  # no ustar prefix: the name field (ASCII needs no escapes)
            name = hdr[:100].split(b"\0", 1)[0].decode("ascii")
        else:
            name = _text(hdr[0:100])
            if hdr[345]:  # a ustar prefix
                name = _text(hdr[345:500]) + "/" + name
        if kind in regular and not (kind == tarfile.AREGTYPE and name.endswith("/")):
            if size is None:
                size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8) if ascii_ else _number(hdr[124:136])
            end = pos + bs + (size + 511) // bs * bs
            kept = decide(name, size, start)
        else:
            end = pos + bs
            kept = decide(None, 0, start)
        if kept:
            add(start, end)
        else:
            flush()
        pos = end


# -- zip ------------------------------------------------------------------------------------
_CD = struct.Struct("<4s4B4HL2L5H2L")  # a central directory entry (zipfile.structCentralDir)
_OFFSET = struct.Struct("<L")
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOC64 = struct.Struct("<4sLQL")
_ZIP64_LIMIT = (1 << 31) - 1  # zipfile's: sizes and offsets past it are written as zip64
_COUNT_LIMIT = (1 << 16) - 1


def _end_record(src: Source, size: int) -> tuple[int, int, int, bytes]:
    """(entries, central directory size, its offset, archive comment), as zipfile finds them."""
    tail_n = min(size, _EOCD.size + 65535)
    tail = src.pread(tail_n, size - tail_n)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and at + _EOCD.size > len(tail):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        raise zipfile.BadZipFile("File is not a zip file")
    _, disk, disk_cd, n_here, n, cd_size, cd_off, clen = _EOCD.unpack_from(tail, at)
    comment = tail[at + _EOCD.size : at + _EOCD.size + clen]
    where = size - tail_n + at
    if disk or disk_cd or n_here != n:
        raise Fallback("a multi-disk zip")
    loc = src.pread(_LOC64.size, where - _LOC64.size) if where >= _LOC64.size else b""
    if len(loc) == _LOC64.size and loc[:4] == b"PK\x06\x07":
        _, disk64, _, disks = _LOC64.unpack(loc)
        if disk64 or disks > 1:
            raise zipfile.BadZipFile("zipfiles that span multiple disks are not supported")
        rec = src.pread(_EOCD64.size, where - _LOC64.size - _EOCD64.size)
        if len(rec) != _EOCD64.size or rec[:4] != b"PK\x06\x06":
            raise zipfile.BadZipFile("Corrupt zip64 end of central directory record")
        _, _, _, _, d1, d2, n_here, n, cd_size, cd_off = _EOCD64.unpack(rec)
        if d1 or d2 or n_here != n:
            raise Fallback("a multi-disk zip")
        where -= _LOC64.size + _EOCD64.size
    if where - cd_size != cd_off:  # data before the zip (a self-extractor): zipfile's business
        raise Fallback("bytes before the zip")
    return n, cd_size, cd_off, comment


def _zip64_values(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    i = 0
    while i + 4 <= len(extra):
        xid, n = struct.unpack_from("<HH", extra, i)
        if xid == 1:
            vals = list(struct.unpack_from(f"<{n // 8}Q", extra, i + 4))
            if usize == 0xFFFFFFFF and vals:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF and vals:
                csize = vals.pop(0)
            if offset == 0xFFFFFFFF and vals:
                offset = vals.pop(0)
            break
        i += 4 + n
    return usize, csize, offset


def _strip_zip64(extra: bytes) -> bytes:
    """``extra`` without its zip64 field (its offset is the source's)."""
    out, i = b"", 0
    while i + 4 <= len(extra):
        xid, n = struct.unpack_from("<HH", extra, i)
        if xid != 1:
            out += extra[i : i + 4 + n]
        i += 4 + n
    return out


def _entry(f: tuple[Any, ...], name: bytes, extra: bytes, comment: bytes, usize: int, csize: int, offset: int) -> bytes:
    """A central directory entry as ``zipfile`` writes it for these values at ``offset``."""
    _, cv, system, ev, reserved, flags, method, t, d, crc = f[:10]
    extra = _strip_zip64(extra) if extra else extra
    z64: list[int] = []
    if usize > _ZIP64_LIMIT or csize > _ZIP64_LIMIT:
        z64 += [usize, csize]
        usize = csize = 0xFFFFFFFF
    if offset > _ZIP64_LIMIT:
        z64.append(offset)
        offset = 0xFFFFFFFF
    least = 0
    if z64:
        extra = struct.pack(f"<HH{len(z64)}Q", 1, 8 * len(z64), *z64) + extra
        least = zipfile.ZIP64_VERSION
    if method == zipfile.ZIP_BZIP2:
        least = max(zipfile.BZIP2_VERSION, least)
    elif method == zipfile.ZIP_LZMA:
        least = max(zipfile.LZMA_VERSION, least)
    head = _CD.pack(b"PK\x01\x02", max(least, cv), system, max(least, ev), reserved, flags, method, t, d, crc,
                    csize, usize, len(name), len(extra), len(comment), 0, f[16], f[17], offset)  # fmt: skip
    return head + name + extra + comment


def _central_directory(src: Source, cd_off: int, cd_size: int, skip: int = 0) -> Any:
    """Yield (fields, entry bytes, entry position in the directory) per central directory
    entry from the one at ``skip``, read 1 MiB at a time."""
    buf, at, i, base = b"", cd_off + skip, 0, skip  # ``buf`` holds the directory from ``base``
    end = cd_off + cd_size
    unpack, size = _CD.unpack_from, _CD.size
    while True:
        if i + size > len(buf) and at < end:
            buf, base = buf[i:] + src.pread(min(_BLOCK, end - at), at), base + i
            at += min(_BLOCK, end - at)
            i = 0
        if i + size > len(buf):
            if i < len(buf):
                raise zipfile.BadZipFile("Truncated central directory")
            return
        f = unpack(buf, i)
        if f[0] != b"PK\x01\x02":
            raise zipfile.BadZipFile("Bad magic number for central directory")
        n = size + f[12] + f[13] + f[14]
        while i + n > len(buf) and at < end:
            buf, base = buf[i:] + src.pread(min(_BLOCK, end - at), at), base + i
            at += min(_BLOCK, end - at)
            i = 0
        if i + n > len(buf):
            raise zipfile.BadZipFile("Truncated central directory")
        yield f, buf[i : i + n], base + i
        i += n


def _new_entry(f: tuple[Any, ...], raw: bytes, usize: int, csize: int, offset: int) -> bytes:
    """The central directory entry ``raw`` at ``offset``: its bytes with the offset patched
    when that is what ``zipfile`` writes (no extra field, no zip64, stored or deflated),
    else built field by field (:func:`_entry`)."""
    if not f[13] and offset <= _ZIP64_LIMIT and usize <= _ZIP64_LIMIT and csize <= _ZIP64_LIMIT \
            and f[6] in (0, 8) and not f[15]:  # fmt: skip
        return raw[:42] + _OFFSET.pack(offset) + raw[46:]
    n, x = _CD.size + f[12], _CD.size + f[12] + f[13]
    return _entry(f, raw[_CD.size : n], raw[n:x], raw[x:], usize, csize, offset)


def copy_zip(src: Source, sink: Sink, decide: Decide, *, directory: Directory | None = None,
             entry: int = 0) -> None:  # fmt: skip
    """Copy the kept members' local records (header, data, data descriptor) of a zip in its
    central directory's order, then a central directory of them at their new offsets.

    Members must be stored in the central directory's order (as every zip writer does);
    otherwise :class:`Fallback`. A bad local header raises ``zipfile.BadZipFile`` after the
    records before it and their central directory are written. With ``directory``, the
    entries go there and the caller writes it (:meth:`Directory.write_to`) after more
    records; ``decide`` may raise :class:`Stop` to end early. For a zip member ``decide``'s
    ``start`` is the position of its entry in the central directory, where ``entry`` starts
    the walk.
    """
    n_entries, cd_size, cd_off, comment = _end_record(src, src.size())
    cd = Directory() if directory is None else directory
    runs = _Runs(src, sink, zipfile.BadZipFile, cd.add)

    ahead = [0, b""]  # a read-ahead block at a local header: small records follow each other

    def place(entry: tuple[Any, ...], end: int) -> None:
        f, raw, usize, csize, offset = entry
        if end < offset:  # (the central directory ends before the last record starts)
            raise Fallback("zip members out of the central directory's order")
        rel = offset - ahead[0]
        if rel < 0 or rel + 4 > len(ahead[1]):
            ahead[:], rel = [offset, src.pread(_AHEAD, offset)], 0
        if ahead[1][rel : rel + 4] != b"PK\x03\x04":
            label = raw[_CD.size : _CD.size + f[12]].decode("utf-8" if f[5] & 0x800 else "cp437")
            raise zipfile.BadZipFile(f"no local header for {label!r} at byte {offset}")
        runs.add(offset, end, _new_entry(f, raw, usize, csize, runs.at(offset)))

    try:
        try:
            prev, count, last = None, 0, -1
            for f, raw, pos in _central_directory(src, cd_off, cd_size, entry):
                usize, csize, offset = f[11], f[10], f[18]
                if 0xFFFFFFFF in (usize, csize, offset):
                    n = _CD.size + f[12]
                    usize, csize, offset = _zip64_values(raw[n : n + f[13]], usize, csize, offset)
                if offset <= last:
                    raise Fallback("zip members out of the central directory's order")
                last = offset
                if prev is not None:
                    place(prev, offset)  # its record ends where this one starts
                    prev = None
                label = raw[_CD.size : _CD.size + f[12]]
                # an ASCII name reads the same in cp437 and UTF-8 (cp437's codec is Python code)
                label = label.decode("ascii") if label.isascii() else label.decode("utf-8" if f[5] & 0x800 else "cp437")
                if "\0" in label:
                    label = label.split("\0", 1)[0]
                try:
                    kept = decide(None if label.endswith("/") else label, usize, pos)
                except Stop:
                    count = n_entries  # the rest is not wanted
                    break
                count += 1
                if kept:
                    prev = (f, raw, usize, csize, offset)
                else:
                    runs.flush()
            if prev is not None:
                place(prev, cd_off)
            runs.flush()
            if count != n_entries and not entry:
                raise zipfile.BadZipFile(f"the central directory lists {count} of {n_entries} entries")
        except Fallback:
            runs.finish(check=False)
            raise
        except BaseException:
            if src.failure is None:  # a broken archive: the records copied so far stay listed
                with contextlib.suppress(zipfile.BadZipFile, OSError):
                    runs.flush()
            runs.finish(check=False)
            raise
        runs.finish()
    finally:
        if directory is None:
            cd.write_to(sink, comment)


class Directory:
    """The new central directory, spooled (to disk past 8 MiB) until the records are copied."""

    def __init__(self) -> None:
        self.spool = tempfile.SpooledTemporaryFile(max_size=8 * _BLOCK)
        self.count = 0

    def add(self, entries: list[bytes]) -> None:
        if entries:
            self.spool.write(b"".join(entries))
            self.count += len(entries)

    def write_to(self, sink: Sink, comment: bytes) -> None:
        """The entries, then the end records (as ``zipfile`` writes them)."""
        start = sink.pos - sink.start
        self.spool.seek(0)
        while block := self.spool.read(_BLOCK):
            sink.write(block)
        self.spool.close()
        count, size = self.count, sink.pos - sink.start - start
        if count > _COUNT_LIMIT or start > _ZIP64_LIMIT or size > _ZIP64_LIMIT:
            here = sink.pos - sink.start
            sink.write(_EOCD64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start))
            sink.write(_LOC64.pack(b"PK\x06\x07", 0, here, 1))
            count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
        sink.write(_EOCD.pack(b"PK\x05\x06", 0, 0, count, count, size, start, len(comment)) + comment)
