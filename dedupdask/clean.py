"""Clean-shard stage: write each source archive again without the removed samples.

:func:`write_clean_shards` runs one Dask task per source archive
(:func:`clean_archive`) that streams the archive once -- a tar one header at a time, a zip
through its central directory -- and copies every member of each kept sample to a new
archive with the same relative name under ``out_dir``: same container (``.tar``; ``.tgz`` /
``.tar.gz`` gzip level 6; ``.zip``; other tar compressions become ``.tar.gz``), same member
names, headers and payload bytes, in the original order. An uncompressed tar's member
records and a zip's local records (compressed data included) are copied byte for byte, so
with nothing removed the output is the source file; a compressed tar is decompressed, its
members written again with their headers, and compressed at gzip level 6. A member goes when its webdataset key is a removed sample's key
(:mod:`dedupdask.removals`), whatever its extension; directories and links are kept. A task
holds its archive's removal set and one member block at a time, never a shard.

Each shard is written under a temporary name (``<file>.tmp-<machine>-<pid>-<random>``,
:func:`dedupdask.store.tmp_path`) and renamed -- or, on an object store, uploaded as one
object -- and then its stats file ``_dedupdask/<name>.stats.json`` is written: that file is
the done marker. A rerun skips a shard whose marker names the same source and the same
removal set (``removals_sha256``) and redoes the others; temporaries left by killed writers
are removed (:func:`dedupdask.store.tmp_is_stale`). Output is deterministic (tar headers
copied, gzip header time 0), so a shard redone after a worker died is byte for byte the
shard of an undisturbed run.

Stats per shard: samples and members in, kept and removed (by reason), payload bytes,
``status`` (``done``; ``partial`` when the source archive is broken part-way: the kept
samples read before the break are written; ``failed`` for a storage failure: nothing is
marked, the next run retries).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import dask
import pandas as pd

from . import remote, shardcopy
from .archives import _DATA_ERRORS, _is_data_error, clean_name, open_tar_stream, split_key
from .removals import RemovalPlan, compute_on, removal_tasks
from .sources import archive_kind
from .store import WorkDir, local_atomic_file, tmp_is_stale

if TYPE_CHECKING:
    from .analyses.keep import KeepRule
    from .results import DedupResult

__all__ = ["CleanReport", "STATS_DIR", "clean_archive", "output_name", "write_clean_shards"]

STATS_DIR = "_dedupdask"
GZIP_LEVEL = 6
_BLOCK = 2**20
_SPOOL = 16 * 2**20  # a member up to this size is held in memory while it is checked
_OTHER_TAR = (".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")


def output_name(rel: str) -> tuple[str, str]:
    """The clean shard's relative name and format (``tar``, ``tgz``, ``zip``) for a source.

    Examples
    --------
    >>> output_name("a/00000.tar"), output_name("00001.TGZ"), output_name("x.tar.xz")
    (('a/00000.tar', 'tar'), ('00001.TGZ', 'tgz'), ('x.tar.gz', 'tgz'))
    """
    low = rel.lower()
    if low.endswith(".zip"):
        return rel, "zip"
    if low.endswith((".tgz", ".tar.gz")):
        return rel, "tgz"
    if low.endswith(".tar"):
        return rel, "tar"
    for sfx in _OTHER_TAR:
        if low.endswith(sfx):
            return rel[: -len(sfx)] + ".tar.gz", "tgz"
    raise ValueError(f"{rel}: not a .tar, .tgz, .tar.gz or .zip archive (loose images are not cleaned)")


def relative_path(url: str, name: str) -> str:
    """The archive's path relative to the input root, from its URL and work_dir name
    (the name is that path with ``/`` replaced by ``__``).

    Examples
    --------
    >>> relative_path("s3://b/in/a/00000.tar", "a__00000.tar")
    'a/00000.tar'
    >>> relative_path("/data/x__y.tar", "x__y.tar")
    'x__y.tar'
    """
    path = url.split("://", 1)[-1]
    parts = path.split("/")
    for i in range(len(parts)):
        rel = "/".join(parts[i:])
        if rel.replace("/", "__") == name:
            return rel
    return name  # a name extraction did not derive from the URL: keep it flat


@dataclass(frozen=True)
class ShardTask:
    """One archive to clean (small and picklable)."""

    name: str
    source: str
    out_dir: str
    rel: str
    fmt: str
    plan: dict[str, Any]
    resume: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)
    attempts: int = remote.DEFAULT_ATTEMPTS
    deadline: float = remote.DEFAULT_DEADLINE


class _Counts:
    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        self.samples_in = self.samples_removed = 0
        self.members_in = self.members_kept = 0
        self.bytes_in = self.bytes_kept = 0
        self.by_reason: dict[str, int] = {}
        self.found: set[str] = set()
        self._last: str | None = None

    def member(self, key: str | None, size: int, kept: bool) -> None:
        """Count one member; consecutive regular members of one key are one sample."""
        self.members_in += 1
        self.bytes_in += size
        if kept:
            self.members_kept += 1
            self.bytes_kept += size
        if key is None or key == self._last:
            return
        self._last = key
        self.samples_in += 1
        if not kept:
            self.samples_removed += 1
            reason = self.reasons[key]
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            self.found.add(key)


    def reset(self) -> None:
        self.__init__(self.reasons)  # type: ignore[misc]


def _member_key(name: str) -> str:
    """``split_key(clean_name(name))[0]``, with a shortcut for printable ASCII names (which
    ``clean_name`` leaves as they are): up to the first dot of the last path part.

    Examples
    --------
    >>> [_member_key(n) for n in ("a/b.c.jpg", "x/.hidden", "README", "d/", "é.jpg", "a" + chr(9) + "b.c")]
    ['a/b', 'x/.hidden', 'README', 'd/', 'é', 'a\\\\u0009b']
    """
    if name.isascii() and name.isprintable():
        i = name.rfind("/") + 1
        j = name.find(".", i)
        return name[:j] if j > i else name
    return split_key(clean_name(name))[0]


def _decider(removed: dict[str, str], counts: _Counts, starts: list[int] | None = None) -> shardcopy.Decide:
    """``decide(name, size, start)`` for :mod:`dedupdask.shardcopy`: whether a member stays
    (None: not a regular member, it stays), counted in ``counts``; ``starts`` gets the record
    start of each kept sample's first member."""
    member = counts.member

    def decide(name: str | None, size: int, start: int) -> bool:
        if name is None:
            member(None, size, True)
            return True
        key = _member_key(name)
        kept = key not in removed
        if starts is not None and kept and key != counts._last:
            starts.append(start)
        member(key, size, kept)
        return kept

    return decide


def _copy_records(
    src: shardcopy.Source, out: IO[bytes] | None, fmt: str, removed: dict[str, str], counts: _Counts,
    starts: list[int] | None = None, write_behind: bool = False,
) -> None:  # fmt: skip
    """Uncompressed tar or zip: the kept records copied byte for byte in runs
    (:mod:`dedupdask.shardcopy`); what its readers leave to ``tarfile``/``zipfile`` starts
    over with :func:`_copy_tar_raw` / :func:`_copy_zip_raw` (``starts`` then stays empty).
    ``out`` None: count only; ``write_behind``: see :class:`~dedupdask.shardcopy.Sink`."""
    sink = shardcopy.Sink(out, write_behind=write_behind)
    try:
        (shardcopy.copy_zip if fmt == "zip" else shardcopy.copy_tar)(src, sink, _decider(removed, counts, starts))
        return
    except shardcopy.Fallback:
        sink.truncate(sink.start)
        counts.reset()
        if starts is not None:
            starts.clear()
    finally:
        sink.close()
    src.f.seek(0)
    with contextlib.ExitStack() as stack:
        dst = out if out is not None else stack.enter_context(tempfile.TemporaryFile())
        (_copy_zip_raw if fmt == "zip" else _copy_tar_raw)(src.f, dst, removed, counts)


class _Discard(io.RawIOBase):
    """A sink that keeps nothing (counting a compressed tar)."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def read_source(
    source: str, fmt: str, storage_options: dict[str, Any], removed: dict[str, str], counts: _Counts,
    output: contextlib.AbstractContextManager[IO[bytes]] | None = None, *,
    attempts: int = remote.DEFAULT_ATTEMPTS, deadline: float = remote.DEFAULT_DEADLINE,
    starts: list[int] | None = None, write_behind: bool = False,
) -> tuple[str, str | None]:  # fmt: skip
    """Stream ``source`` once, counting its members in ``counts`` and writing the kept ones
    to the file ``output`` opens (None: count only); ``starts`` gets the byte offset of each
    kept sample's first record when the source is read by :mod:`dedupdask.shardcopy`;
    ``write_behind`` (``output`` is the local file the shard ends in): its pages are written
    back and dropped from the page cache as it grows (:class:`dedupdask.shardcopy.Sink`).

    Returns ``("done", None)`` or ``("partial", error)`` for an archive broken part-way (the
    whole records before the break are written); raises :class:`_Unreadable` for a source
    with no readable member, :class:`dedupdask.remote.StorageError` / ``OSError`` when the
    storage fails (``output`` then discards what it got).
    """
    status, error = "done", None
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(remote.open_input(source, storage_options, attempts=attempts, deadline=deadline))
        out = stack.enter_context(output) if output is not None else None
        try:
            if fmt == "zip" or (fmt == "tar" and _plain_tar(src)):
                fd = _local_fd(stack, source, storage_options)
                _copy_records(shardcopy.Source(src, fd), out, fmt, removed, counts, starts, write_behind)
            else:
                _copy_tar(src, out if out is not None else _Discard(), fmt if out is not None else "tar",
                          removed, counts)  # fmt: skip
        except (*_DATA_ERRORS, OSError) as e:
            if getattr(src, "failure", None) is not None:
                raise src.failure from e
            if isinstance(e, OSError) and not _is_data_error(e):
                raise
            if counts.members_in == 0:  # not an archive at all: write nothing
                raise _Unreadable(f"not a readable archive: {e}") from e
            status, error = "partial", f"archive broken after {counts.members_in} members: {e}"
    return status, error


def _copy_tar(src: IO[bytes], out: IO[bytes], fmt: str, removed: dict[str, str], counts: _Counts) -> None:
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) if fmt == "tgz" else None
    sink: Any = gz if gz is not None else out
    tin = open_tar_stream(src)
    tout = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                        errors="surrogateescape", copybufsize=_BLOCK)  # fmt: skip
    try:
        with tin:
            while True:
                ti = tin.next()
                tin.members.clear()  # a stream keeps no headers (see archives._iter_tar)
                if ti is None:
                    break
                if not ti.isreg():
                    tout.addfile(ti)
                    counts.member(None, 0, True)
                    continue
                key = _member_key(ti.name)
                if key in removed:
                    counts.member(key, ti.size, False)
                    continue  # the stream skips the payload at the next header
                # read the payload whole before its header is written, so a source that
                # breaks inside a member never leaves half a member in the output
                with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as spool:
                    f = tin.extractfile(ti)
                    got = _copy_counted(f, spool) if f is not None else 0
                    if got != ti.size:
                        raise tarfile.ReadError(f"member {ti.name!r} truncated ({got} of {ti.size} bytes)")
                    spool.seek(0)
                    tout.addfile(ti, spool)
                counts.member(key, ti.size, True)
    finally:
        tout.close()  # the end-of-archive blocks, also after a break (a valid, shorter tar)
        if gz is not None:
            gz.close()


def _plain_tar(src: IO[bytes]) -> bool:
    """Whether ``src`` (at 0, seekable) starts with a tar header: an uncompressed tar, whose
    records can be copied raw (compressed data has no header checksum there)."""
    head = src.read(tarfile.BLOCKSIZE)
    src.seek(0)
    if len(head) < tarfile.BLOCKSIZE or head.count(0) == tarfile.BLOCKSIZE:
        return False
    try:
        return tarfile.nti(head[148:156]) in tarfile.calc_chksums(head)
    except tarfile.TarError:
        return False


def _copy_tar_raw(src: IO[bytes], out: IO[bytes], removed: dict[str, str], counts: _Counts) -> None:
    """Uncompressed tar to uncompressed tar: the kept members' records (their extended
    headers, header and padded payload) are copied byte for byte, consecutive ones in one go;
    only the end-of-archive blocks are new. Headers are read with ``tarfile`` (which seeks
    past the payloads); payloads are read once, when their run of records is copied."""
    tin = tarfile.open(fileobj=src, mode="r:", encoding="utf-8", errors="surrogateescape")
    run: list[tuple[int, int]] = []  # kept records not yet copied: (start, end)

    def flush() -> None:
        if not run:
            return
        start, end = run[0][0], run[-1][1]
        src.seek(start)
        done = 0
        while done < end - start:
            block = src.read(min(_BLOCK, end - start - done))
            if not block:  # truncated: keep the whole records only
                whole = max([e - start for _, e in run if e - start <= done], default=0)
                out.seek(out.tell() - done + whole)
                out.truncate()
                run.clear()
                raise tarfile.ReadError(f"unexpected end of data at byte {start + done}")
            out.write(block)
            done += len(block)
        run.clear()

    try:
        while True:
            try:
                ti = tin.next()
            except (*_DATA_ERRORS, OSError):
                if getattr(src, "failure", None) is None:  # broken, not unreachable: keep
                    with contextlib.suppress(*_DATA_ERRORS, OSError):  # the whole records
                        flush()
                raise
            tin.members.clear()
            if ti is None:
                break
            start, end = ti.offset, tin.offset
            key = _member_key(ti.name) if ti.isreg() else None
            kept = key not in removed if key is not None else True
            counts.member(key, ti.size if ti.isreg() else 0, kept)
            if not kept:
                flush()
                continue
            if run and run[-1][1] != start:
                flush()
            run.append((start, end))
            if end - run[0][0] >= 64 * _BLOCK:
                flush()
        flush()
    finally:
        run.clear()  # a break: what was copied ends there
        out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        pad = (-out.tell()) % tarfile.RECORDSIZE
        out.write(b"\0" * pad)


def _copy_counted(src: IO[bytes], dst: IO[bytes]) -> int:
    n = 0
    while block := src.read(_BLOCK):
        dst.write(block)
        n += len(block)
    return n


def _copy_zip_raw(src: IO[bytes], out: IO[bytes], removed: dict[str, str], counts: _Counts) -> None:
    """Zip to zip: each kept member's local record (local header, compressed data, data
    descriptor) is copied byte for byte -- no decompression, no recompression -- and a new
    central directory lists them at their new offsets, in the source's order."""
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        order = sorted(infos, key=lambda i: i.header_offset)
        ends = {id(a): b.header_offset for a, b in zip(order, order[1:], strict=False)}
        if order:
            ends[id(order[-1])] = zin.start_dir  # where the central directory starts
        zout = zipfile.ZipFile(out, "w", allowZip64=True)
        try:
            for info in infos:
                key = None if info.is_dir() else _member_key(info.filename)
                kept = key not in removed if key is not None else True
                counts.member(key, info.file_size, kept)
                if not kept:
                    continue
                start, end = info.header_offset, ends[id(info)]
                src.seek(start)
                if src.read(4) != b"PK\x03\x04":
                    raise zipfile.BadZipFile(f"no local header for {info.filename!r} at byte {start}")
                src.seek(start)
                zi = _zipinfo(info)
                zi.compress_size, zi.CRC, zi.flag_bits = info.compress_size, info.CRC, info.flag_bits
                zi.extract_version, zi.create_version = info.extract_version, info.create_version
                zi.extra = _strip_zip64(info.extra)
                zi.header_offset = out.tell()
                left = end - start
                while left:
                    block = src.read(min(_BLOCK, left))
                    if not block:
                        raise zipfile.BadZipFile(f"{info.filename!r} truncated at byte {end - left}")
                    out.write(block)
                    left -= len(block)
                zout.filelist.append(zi)
                zout.NameToInfo[zi.filename] = zi
        finally:  # the central directory of what was copied (also after a break)
            zout.start_dir = out.tell()
            zout._didModify = True
            zout.close()


def _strip_zip64(extra: bytes) -> bytes:
    """``extra`` without its ZIP64 field (its offsets are the source's; the writer adds one
    when the new offsets need it)."""
    out, i = b"", 0
    while i + 4 <= len(extra):
        xid, n = int.from_bytes(extra[i : i + 2], "little"), int.from_bytes(extra[i + 2 : i + 4], "little")
        if xid != 1:
            out += extra[i : i + 4 + n]
        i += 4 + n
    return out


def _zipinfo(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    zi.compress_type = info.compress_type
    zi.external_attr, zi.create_system, zi.comment = info.external_attr, info.create_system, info.comment
    zi.file_size = info.file_size
    return zi


def _digest(source: str, fmt: str, removed: dict[str, str]) -> str:
    h = hashlib.sha256(f"{source}\n{fmt}\n".encode("utf-8", "surrogateescape"))
    for key in sorted(removed):
        h.update(f"{key}\t{removed[key]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@contextlib.contextmanager
def _atomic_output(wd: WorkDir, path: str) -> Iterator[IO[bytes]]:
    """A file whose contents appear at ``path`` whole, when the block ends without error.

    Local: a temporary in the same folder, synced, dropped from the page cache (the
    cleaner's own output, written once) and renamed (stale ones of dead writers removed
    first). Object store: a local temporary file, then one upload (a PUT or a multipart
    upload, visible only when complete) with the retry policy of :mod:`dedupdask.remote`.
    """
    if wd.local:
        import glob

        os.makedirs(os.path.dirname(path), exist_ok=True)
        for old in glob.glob(glob.escape(path) + ".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                if tmp_is_stale(old, time.time() - os.stat(old).st_mtime):
                    os.unlink(old)
        with local_atomic_file(path, drop_cache=True) as f:
            yield f
        return
    with tempfile.TemporaryFile(prefix="dedupdask-clean-") as f:
        yield f
        wd.write_bytes(path, f)


def _local_fd(stack: contextlib.ExitStack, url: str, storage_options: dict[str, Any]) -> int | None:
    """A descriptor of ``url`` if it is a local file (for kernel copies), else None."""
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    fs, path = url_to_fs(url, **storage_options)
    if not isinstance(fs, LocalFileSystem):
        return None
    return stack.enter_context(open(path, "rb", buffering=0)).fileno()


class _Unreadable(Exception):
    """The source is not a readable archive (no member could be read): no shard is written."""


def earlier_stats(wd: WorkDir, marker: str, base: dict[str, Any]) -> dict[str, Any] | None:
    """The stats an earlier run of the same task wrote to ``marker`` (every key of ``base``
    equal), or None when there are none, they cannot be read, or they belong to another plan."""
    with contextlib.suppress(FileNotFoundError, ValueError, OSError):
        old = wd.read_json(marker)
        if isinstance(old, dict) and {k: old.get(k) for k in base} == base:
            return old
    return None


def failed_stats(base: dict[str, Any], error: Exception, t0: float) -> dict[str, Any]:
    """The stats of a task that wrote nothing: ``failed``, the error, the seconds since ``t0``."""
    return {**base, "status": "failed", "error": str(error), "seconds": round(time.perf_counter() - t0, 3)}


def clean_archive(task: ShardTask, removal: pd.DataFrame) -> dict[str, Any]:
    """Write one clean shard and its stats file; return the stats (a Dask task).

    Parameters
    ----------
    task : ShardTask
        The source, the output folder and name, the options.
    removal : DataFrame
        The archive's removal list (:func:`dedupdask.removals.removals`: ``key``, ``reason``).

    Returns
    -------
    dict
        The stats (also in ``<out_dir>/_dedupdask/<name>.stats.json`` unless ``failed``).
    """
    t0 = time.perf_counter()
    wd = WorkDir(task.out_dir, task.storage_options, task.attempts, task.deadline)
    out_path = wd.join(task.rel)
    marker = wd.join(STATS_DIR, f"{task.name}.stats.json")
    removed = dict(zip(removal["key"].astype(str), removal["reason"].astype(str), strict=True))
    digest = _digest(task.source, task.fmt, removed)
    base = {"name": task.name, "source": task.source, "output": wd.url_of(out_path), "format": task.fmt,
            "removals_sha256": digest}  # fmt: skip
    if task.resume and (old := earlier_stats(wd, marker, base)) is not None:
        return {**old, "status": "already_done"}
    counts = _Counts(removed)
    try:
        status, error = read_source(task.source, task.fmt, task.storage_options, removed, counts,
                                    _atomic_output(wd, out_path), attempts=task.attempts,
                                    deadline=task.deadline, write_behind=wd.local)  # fmt: skip
    except (_Unreadable, remote.StorageError) as e:
        return failed_stats(base, e, t0)
    except OSError as e:
        return failed_stats(base, remote.storage_error(e, task.source, "read"), t0)
    stats = {
        **base,
        "status": status,
        "error": error,
        "samples": {"in": counts.samples_in, "kept": counts.samples_in - counts.samples_removed,
                    "removed": counts.samples_removed},
        "removed_by_reason": dict(sorted(counts.by_reason.items())),
        "members": {"in": counts.members_in, "kept": counts.members_kept,
                    "removed": counts.members_in - counts.members_kept},
        "bytes": {"in": counts.bytes_in, "kept": counts.bytes_kept},
        "removals_not_found": sorted(set(removed) - counts.found)[:20],
        "n_removals_not_found": len(set(removed) - counts.found),
        "plan": task.plan,
        "seconds": round(time.perf_counter() - t0, 3),
    }  # fmt: skip
    wd.makedirs(STATS_DIR)
    wd.write_json(marker, stats)
    return stats


class CleanReport(pd.DataFrame):
    """One row per source archive: name, source, output, format, status, samples_in,
    samples_kept, samples_removed, members_in, members_kept, bytes_in, bytes_kept,
    removed_<reason>..., error, seconds. ``report.failed`` lists shards not done."""

    @property
    def _constructor(self) -> type[CleanReport]:
        return CleanReport

    @property
    def failed(self) -> pd.DataFrame:
        """Shards whose status is ``failed`` or ``partial``."""
        return pd.DataFrame(self[self["status"].isin(["failed", "partial"])])

    def summary_text(self) -> str:
        """A few lines for people."""
        status = self["status"].value_counts()
        reasons = [c for c in self.columns if c.startswith("removed_")]
        lines = [
            f"clean shards: {len(self)} archives ({', '.join(f'{k} {v}' for k, v in status.items())})",
            f"samples: {int(self['samples_in'].sum())} in, {int(self['samples_kept'].sum())} kept, "
            f"{int(self['samples_removed'].sum())} removed"
            + (" (" + ", ".join(f"{c[len('removed_'):]} {int(self[c].sum())}" for c in reasons) + ")" if reasons else ""),
        ]
        for _, r in self.failed.iterrows():
            lines.append(f"  {str(r['status']).upper()}: {r['source']}: {r['error']}")
        return "\n".join(lines)


def _row(stats: dict[str, Any]) -> dict[str, Any]:
    s, m, b = stats.get("samples") or {}, stats.get("members") or {}, stats.get("bytes") or {}
    return {
        "name": stats["name"], "source": stats["source"], "output": stats["output"], "format": stats["format"],
        "status": stats["status"], "samples_in": s.get("in", 0), "samples_kept": s.get("kept", 0),
        "samples_removed": s.get("removed", 0), "members_in": m.get("in", 0), "members_kept": m.get("kept", 0),
        "bytes_in": b.get("in", 0), "bytes_kept": b.get("kept", 0),
        **{f"removed_{k}": v for k, v in (stats.get("removed_by_reason") or {}).items()},
        "error": stats.get("error"), "seconds": stats.get("seconds", 0.0),
    }  # fmt: skip


def write_clean_shards(
    work_dir: str | DedupResult,
    out_dir: str,
    *,
    keep: KeepRule = "largest_resolution",
    duplicates: bool = True,
    invalid: bool = True,
    outliers: bool = False,
    remove_issues: str | Iterable[str] | None = None,
    resume: bool = True,
    samples_per_shard: int | None = None,
    shard_format: str | None = None,
    storage_options: dict[str, Any] | None = None,
    client: Any = None,
) -> CleanReport:
    """Write every source archive of an analysed work_dir without its removed samples.

    Parameters
    ----------
    work_dir : str or DedupResult
        An analysed work_dir (``run_mode`` 0 or 2 done), or its loaded result.
    out_dir : str
        Folder or URL (``s3://bucket/clean``) for the clean shards; each keeps its path
        relative to the input root; ``_dedupdask/<name>.stats.json`` per shard, written last,
        and ``_dedupdask/summary.json``.
    keep, duplicates, invalid, outliers, remove_issues
        What goes (:func:`dedupdask.removals.removals`).
    resume : bool
        Skip shards whose stats file says they were written from the same source with the
        same removal set.
    samples_per_shard : int, optional
        Reshard: write the kept samples of all archives, in source order, into new shards of
        this many samples each (the last one: the rest) named ``00000.tar``, ``00001.tar``,
        ... directly in ``out_dir``, with the mapping table ``_dedupdask/mapping/`` (one
        Parquet file per shard; :func:`dedupdask.reshard.read_mapping`: ``shard, position,
        archive, key, source_position``); see :mod:`dedupdask.reshard`. The report then
        has one row per new shard, and ``report.attrs["sources"]`` the counts per source
        archive (records: name, source, status, samples_in, samples_kept, ...).
        None (default): one clean shard per source archive, with its name. Reshard into an
        ``out_dir`` of its own (or of an earlier resharding, whose extra shards are removed),
        not one that holds per-archive clean shards.
    shard_format : {"tar", "tgz", "zip"}, optional
        The new shards' container when resharding; default: that of the sources when they
        all have the same, else ``tar``.
    storage_options : dict, optional
        fsspec options for the work_dir, the source archives and out_dir (default: none, or
        the loaded result's).
    client : distributed.Client, str or None
        A Client, a scheduler address, or ``"sync"``/``"threads"``/``"processes"``; None:
        dask's current scheduler (a current Client, else threads).

    Returns
    -------
    CleanReport
        One row per archive (resharding: per new shard).

    Examples
    --------
    >>> import dedupdask as ddk
    >>> report = ddk.write_clean_shards("work/", "clean/", keep="longest_caption")  # doctest: +SKIP
    >>> resharded = ddk.write_clean_shards("work/", "s3://b/new/", samples_per_shard=10_000)  # doctest: +SKIP
    >>> print(report.summary_text())  # doctest: +SKIP
    """
    from .results import load

    res = load(work_dir, storage_options) if isinstance(work_dir, str) else work_dir
    so = dict(res._collection.work_dir.storage_options if storage_options is None else storage_options)
    plan = RemovalPlan.make(keep, duplicates=duplicates, invalid=invalid, outliers=outliers,
                            remove_issues=remove_issues)  # fmt: skip
    if samples_per_shard is not None and (isinstance(samples_per_shard, bool) or
                                          not isinstance(samples_per_shard, int) or samples_per_shard < 1):
        raise ValueError(f"samples_per_shard must be a positive integer, not {samples_per_shard!r}")
    if shard_format is not None and shard_format not in ("tar", "tgz", "zip"):
        raise ValueError(f"shard_format must be 'tar', 'tgz' or 'zip', not {shard_format!r}")
    wd = WorkDir(out_dir, so)
    wd.makedirs(STATS_DIR)
    parts, rem = removal_tasks(res, plan)
    tasks: list[tuple[ShardTask, Any]] = []
    outputs: dict[str, str] = {}
    skipped = []
    for part, r in zip(parts, rem, strict=True):
        if archive_kind(part.url) is None:  # a chunk of loose images: there is no archive to write
            skipped.append({"name": part.name, "source": part.url, "output": None, "format": "folder",
                            "status": "skipped", "error": "loose images are not cleaned (not an archive)"})
            continue
        rel, fmt = output_name(relative_path(part.url, part.name))
        if rel in outputs and samples_per_shard is None:
            raise ValueError(f"archives {outputs[rel]} and {part.url} would both be written to {rel}")
        outputs[rel] = part.url
        tasks.append((ShardTask(part.name, part.url, wd.url, rel, fmt, plan.describe(), resume, so), r))
    if samples_per_shard is not None:
        from .reshard import write_resharded

        sources = [(t.name, t.source, t.fmt, r) for t, r in tasks]
        report, counts = write_resharded(sources, wd, samples_per_shard=samples_per_shard,
                                         shard_format=shard_format, resume=resume, client=client)  # fmt: skip
        counts = pd.concat([counts, pd.DataFrame(skipped)], ignore_index=True) if skipped else counts
        report.attrs["sources"] = counts.to_dict("records")
        _write_summary(wd, res, plan, counts, shards=report)
        return report
    graph = [dask.delayed(clean_archive, pure=False)(t, r) for t, r in tasks]
    stats = compute_on(client, *graph) if graph else ()
    report = CleanReport([_row(s) for s in [*stats, *skipped]])
    reasons = [c for c in report.columns if c.startswith("removed_")]
    if reasons:
        report[reasons] = report[reasons].fillna(0).astype("int64")
    _write_summary(wd, res, plan, report)
    return report


def _write_summary(wd: WorkDir, res: DedupResult, plan: RemovalPlan, counts: pd.DataFrame,
                   shards: pd.DataFrame | None = None) -> None:  # fmt: skip
    """``_dedupdask/summary.json``: the totals per source archive (and of the new shards)."""
    reasons = [c for c in counts.columns if c.startswith("removed_")]
    summary = {
        "work_dir": res.work_dir, "plan": plan.describe(), "archives": len(counts),
        "status": counts["status"].value_counts().to_dict() if len(counts) else {},
        **{c: int(counts[c].fillna(0).sum()) for c in ("samples_in", "samples_kept", "samples_removed",
                                                        "members_in", "members_kept", "bytes_in", "bytes_kept")
           if c in counts},
        **{c: int(counts[c].fillna(0).sum()) for c in reasons},
    }  # fmt: skip
    if shards is not None:
        summary["shards"] = {"count": len(shards), "samples": int(shards["samples_kept"].sum()) if len(shards) else 0,
                             "status": shards["status"].value_counts().to_dict() if len(shards) else {}}  # fmt: skip
    wd.write_json(wd.join(STATS_DIR, "summary.json"), json.loads(json.dumps(summary, default=str)))


def read_stats(out_dir: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The per-shard stats files of a clean ``out_dir`` as a :class:`CleanReport`-shaped table."""
    wd = WorkDir(out_dir, storage_options)
    names = wd.fs.glob(posixpath.join(wd.join(STATS_DIR), "*.stats.json"))
    return CleanReport([_row(wd.read_json(p)) for p in sorted(names)])
