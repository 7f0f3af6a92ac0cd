"""Clean-shard stage, resharding: the kept samples of every source archive, in source order,
in new shards of ``samples_per_shard`` samples (``00000.tar``, ``00001.tar``, ...) with a
mapping table.

Two Dask passes; neither gathers a per-sample row in the calling process:

1. :func:`count_source`, one task per source archive, reads it once without writing (an
   uncompressed tar or a zip: its headers only) and counts its kept samples. It leaves the
   archive's removal set in ``out_dir/_dedupdask/reshard/<name>.json``, and its count in
   ``<name>.count.json`` for a rerun with the same removal set.
   For an uncompressed tar it also keeps where each kept sample starts (``<name>.index``,
   8 bytes per sample: the record's offset; in a zip, the position of its central directory
   entry), so that the second pass starts reading a slice there.
2. The caller turns the counts (one number per archive) into slices: output shard ``j``
   holds the kept samples ``j * n`` to ``(j + 1) * n - 1`` in source order, a range of kept
   samples of one or more consecutive archives. :func:`write_output`, one task per output
   shard, reads those ranges (stopping after its last sample) and writes the shard
   atomically (a temporary name renamed, or one upload), its part of the mapping table
   ``_dedupdask/mapping/<shard>.parquet`` (:data:`MAPPING_COLUMNS`), then its done marker
   ``_dedupdask/<shard>.stats.json``. A rerun skips shards whose marker names the same
   slices and removal sets, and removes shards of an earlier resharding that the new plan
   does not have.

Container: ``shard_format`` or, by default, the sources' own when they all share one, else
tar. Same container in and out, an uncompressed tar's records and a zip's local records are
copied byte for byte (:mod:`dedupdask.shardcopy`); anything else is read member by member
and written with its header (tar: as ``tarfile`` writes PAX headers; zip: the member's
compression, or stored for a member from a tar). Directories and links are no sample's
members and are not carried over.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import posixpath
import struct
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

from . import remote, shardcopy
from .archives import _DATA_ERRORS, open_tar_stream
from .clean import (
    GZIP_LEVEL,
    STATS_DIR,
    CleanReport,
    _atomic_output,
    _Counts,
    _digest,
    _local_fd,
    _member_key,
    _plain_tar,
    _row,
    _Unreadable,
    _zipinfo,
    earlier_stats,
    failed_stats,
    read_source,
)
from .removals import compute_on
from .store import WorkDir

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = ["MAPPING_COLUMNS", "count_source", "plan_outputs", "read_mapping", "write_output", "write_resharded"]

RESHARD_DIR = "reshard"
MAPPING_DIR = "mapping"
MAPPING_COLUMNS = ("shard", "position", "archive", "key", "source_position")
EXTENSIONS = {"tar": ".tar", "tgz": ".tar.gz", "zip": ".zip"}
_SPOOL = 16 * 2**20


@dataclass(frozen=True)
class CountTask:
    """One source archive to count (small and picklable)."""

    name: str
    source: str
    fmt: str
    out_dir: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    attempts: int = remote.DEFAULT_ATTEMPTS
    deadline: float = remote.DEFAULT_DEADLINE


def count_source(task: CountTask, removal: pd.DataFrame) -> dict[str, Any]:
    """Count one source archive's samples (in, kept, removed by reason); keep its removal
    set for :func:`write_output` (a Dask task).

    Returns
    -------
    dict
        ``name, source, format, removals_sha256, status`` (``done``, ``partial`` for an
        archive broken part-way: the samples before the break count, ``failed``), ``error``,
        ``samples``, ``members``, ``bytes``, ``removed_by_reason``.
    """
    wd = WorkDir(task.out_dir, task.storage_options, task.attempts, task.deadline)
    removed = dict(zip(removal["key"].astype(str), removal["reason"].astype(str), strict=True))
    digest = _digest(task.source, task.fmt, removed)
    base = {"name": task.name, "source": task.source, "format": task.fmt, "removals_sha256": digest}
    marker = wd.join(STATS_DIR, RESHARD_DIR, f"{task.name}.count.json")
    if (old := earlier_stats(wd, marker, base)) is not None:
        return old
    counts = _Counts(removed)
    starts: list[int] = []
    try:
        status, error = read_source(task.source, task.fmt, task.storage_options, removed, counts,
                                    attempts=task.attempts, deadline=task.deadline, starts=starts)  # fmt: skip
    except (_Unreadable, remote.StorageError) as e:
        return {**base, "status": "failed", "error": str(e)}
    except OSError as e:
        return {**base, "status": "failed", "error": str(remote.storage_error(e, task.source, "read"))}
    kept = counts.samples_in - counts.samples_removed
    indexed = task.fmt in ("tar", "zip") and kept > 0 and len(starts) == kept
    stats = {
        **base, "status": status, "error": error, "indexed": indexed,
        "samples": {"in": counts.samples_in, "kept": kept, "removed": counts.samples_removed},
        "removed_by_reason": dict(sorted(counts.by_reason.items())),
        "members": {"in": counts.members_in, "kept": counts.members_kept,
                    "removed": counts.members_in - counts.members_kept},
        "bytes": {"in": counts.bytes_in, "kept": counts.bytes_kept},
    }  # fmt: skip
    wd.makedirs(STATS_DIR, RESHARD_DIR)
    wd.write_json(wd.join(STATS_DIR, RESHARD_DIR, f"{task.name}.json"), {**base, "removed": removed})
    if indexed:  # where each kept sample starts: a new shard's task starts reading there
        wd.write_bytes(wd.join(STATS_DIR, RESHARD_DIR, f"{task.name}.index"), struct.pack(f"<{kept}q", *starts))
    wd.write_json(marker, stats)
    return stats


@dataclass(frozen=True)
class Slice:
    """Kept samples ``skip`` to ``skip + take - 1`` of one source archive."""

    name: str
    source: str
    fmt: str
    removals_sha256: str
    skip: int
    take: int
    broken: str | None = None  # the counting pass's error for an archive broken part-way
    indexed: bool = False  # ``<name>.index`` holds the byte offset of each kept sample


@dataclass(frozen=True)
class OutputTask:
    """One output shard (small and picklable)."""

    name: str
    out_dir: str
    fmt: str
    first: int  # the global position of its first sample
    slices: tuple[Slice, ...]
    resume: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)
    attempts: int = remote.DEFAULT_ATTEMPTS
    deadline: float = remote.DEFAULT_DEADLINE

    def digest(self) -> str:
        text = json.dumps([self.fmt, self.first, [s.__dict__ for s in self.slices]], sort_keys=True)
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class _Range:
    """``decide`` for one slice: the members of kept samples ``skip`` .. ``skip + take - 1``
    (a sample is a run of members with one key, as :class:`dedupdask.clean._Counts` counts)."""

    def __init__(self, removed: dict[str, str], skip: int, take: int) -> None:
        self.removed, self.skip, self.stop = removed, skip, skip + take
        self.reset()

    def reset(self) -> None:
        """Start again from the archive's first member."""
        self.index, self.last, self.taking = -1, None, False
        self.keys: list[str] = []
        self.members = self.bytes = 0

    def __call__(self, name: str | None, size: int, start: int = 0) -> bool:
        if name is None:
            return False  # directories and links belong to no sample
        key = _member_key(name)
        if key != self.last:
            self.last = key
            if key in self.removed:
                self.taking = False
            else:
                self.index += 1
                if self.index >= self.stop:
                    raise shardcopy.Stop
                self.taking = self.index >= self.skip
                if self.taking:
                    self.keys.append(key)
        if self.taking:
            self.members += 1
            self.bytes += size
        return self.taking


def _tar_info(name: str, size: int, zinfo: zipfile.ZipInfo | None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = size, 0o644
    if zinfo is not None:
        ti.mtime = int(time.mktime((*zinfo.date_time, 0, 0, -1)))
    return ti


def _zip_info(name: str, ti: tarfile.TarInfo) -> zipfile.ZipInfo:
    t = time.localtime(max(ti.mtime, 315532800 + 86400))  # zip dates start in 1980
    zi = zipfile.ZipInfo(name, date_time=t[:6])
    zi.external_attr = (ti.mode & 0xFFFF) << 16
    return zi


class _Writer:
    """The output shard: records from sources of its own container copied as they are,
    other members written one at a time with their header."""

    def __init__(self, out: IO[bytes], fmt: str, raw_zip: bool, write_behind: bool = False) -> None:
        self.out, self.fmt = out, fmt
        self.sink = shardcopy.Sink(out, write_behind=write_behind) if fmt == "tar" or raw_zip else None
        self.directory = shardcopy.Directory() if raw_zip else None
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) \
            if fmt == "tgz" else None  # fmt: skip
        self.zip = zipfile.ZipFile(out, "w", allowZip64=True) if fmt == "zip" and not raw_zip else None

    def _write(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.write(data)
        else:
            self.gz.write(data)  # type: ignore[union-attr]

    def member(self, name: str, size: int, payload: IO[bytes], ti: Any = None, zi: Any = None) -> None:
        """Write one member (``ti``: its tar header, ``zi``: its zip entry, if it has one). The
        payload is read whole first (up to 16 MiB in memory, larger ones spooled to disk), so
        a source that breaks inside it leaves nothing of it in the output."""
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as spool:
            got = _copy(payload, spool.write)
            if got != size:
                raise tarfile.ReadError(f"member {name!r} truncated ({got} of {size} bytes)")
            spool.seek(0)
            if self.zip is not None:
                info = _zipinfo(zi) if zi is not None else _zip_info(name, ti)
                info.compress_type = zi.compress_type if zi is not None else zipfile.ZIP_STORED
                with self.zip.open(info, "w", force_zip64=size > zipfile.ZIP64_LIMIT) as w:
                    _copy(spool, w.write)
            else:
                info = ti if ti is not None else _tar_info(name, size, zi)
                self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                _copy(spool, self._write)
                self._write(bytes(-size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
        elif self.directory is not None:
            self.directory.write_to(self.sink, b"")  # type: ignore[arg-type]
            self.sink.close()  # type: ignore[union-attr]
        elif self.sink is not None:
            shardcopy.end_tar(self.sink)
            self.sink.close()
        else:
            self.gz.write(bytes(2 * tarfile.BLOCKSIZE))  # type: ignore[union-attr]
            self.gz.close()  # type: ignore[union-attr]


def _copy(src: IO[bytes], write: Any) -> int:
    n = 0
    while block := src.read(2**20):
        write(block)
        n += len(block)
    return n


def _write_slice(stack: contextlib.ExitStack, w: _Writer, sl: Slice, removed: dict[str, str], wd: WorkDir) -> _Range:
    """Write the slice's samples; return the :class:`_Range` that took them."""
    so = wd.storage_options
    src = stack.enter_context(remote.open_input(sl.source, so, attempts=wd.attempts, deadline=wd.deadline))
    rng = _Range(removed, sl.skip, sl.take)
    try:
        if w.fmt == "tar" and sl.fmt == "tar" and _plain_tar(src):
            source = shardcopy.Source(src, _local_fd(stack, sl.source, so))
            start = w.sink.pos  # type: ignore[union-attr]
            offset = _sample_offset(wd, sl) if sl.indexed and sl.skip else 0
            if offset:
                rng = _Range(removed, 0, sl.take)  # counts from the slice's first sample
            try:
                shardcopy.copy_tar(source, w.sink, rng, end=False, offset=offset)  # type: ignore[arg-type]
                return rng
            except shardcopy.Fallback:  # the member by member way, from the archive's start
                w.sink.truncate(start)  # type: ignore[union-attr]
                rng = _Range(removed, sl.skip, sl.take)
        if w.directory is not None:  # (a Fallback here: write_output starts over with zipfile)
            source = shardcopy.Source(src, _local_fd(stack, sl.source, so))
            entry = _sample_offset(wd, sl) if sl.indexed and sl.skip else 0
            if entry:
                rng = _Range(removed, 0, sl.take)  # counts from the slice's first sample
            shardcopy.copy_zip(source, w.sink, rng, directory=w.directory, entry=entry)  # type: ignore[arg-type]
            return rng
        src.seek(0)
        with contextlib.suppress(shardcopy.Stop):
            if sl.fmt == "zip":
                with zipfile.ZipFile(src) as zf:
                    for info in zf.infolist():
                        if rng(None if info.is_dir() else info.filename, info.file_size):
                            with zf.open(info) as f:
                                w.member(info.filename, info.file_size, f, zi=info)
            else:
                with open_tar_stream(src) as tin:
                    for ti in tin:
                        tin.members.clear()
                        if rng(ti.name if ti.isreg() else None, ti.size):
                            w.member(ti.name, ti.size, tin.extractfile(ti), ti=ti)  # type: ignore[arg-type]
    except (*_DATA_ERRORS, OSError) as e:
        if getattr(src, "failure", None) is not None:
            raise src.failure from e
        if sl.broken is None:
            raise
        # the archive broke part-way when it was counted too: its range ends at the break
    return rng


def _sample_offset(wd: WorkDir, sl: Slice) -> int:
    """Where the slice's first sample starts in its source: the offset of its first record in
    an uncompressed tar, the position of its first central directory entry in a zip."""
    path = wd.join(STATS_DIR, RESHARD_DIR, f"{sl.name}.index")
    with wd.fs.open(path, "rb") as f:
        f.seek(8 * sl.skip)
        (offset,) = struct.unpack("<q", f.read(8))
    return int(offset)


def write_output(task: OutputTask) -> dict[str, Any]:
    """Write one output shard, its part of the mapping table and its stats file (a Dask task).

    Returns
    -------
    dict
        The stats (also in ``<out_dir>/_dedupdask/<name>.stats.json`` unless ``failed``).
    """
    t0 = time.perf_counter()
    wd = WorkDir(task.out_dir, task.storage_options, task.attempts, task.deadline)
    out_path = wd.join(task.name)
    marker = wd.join(STATS_DIR, f"{task.name}.stats.json")
    sources = [s.source for s in task.slices]
    base = {"name": task.name, "source": "; ".join(dict.fromkeys(sources)), "output": wd.url_of(out_path),
            "format": task.fmt, "plan_sha256": task.digest()}  # fmt: skip
    if task.resume and (old := earlier_stats(wd, marker, base)) is not None:
        return {**old, "status": "already_done"}
    try:
        removed = {}
        for sl in task.slices:
            saved = wd.read_json(wd.join(STATS_DIR, RESHARD_DIR, f"{sl.name}.json"))
            if saved.get("removals_sha256") != sl.removals_sha256:
                raise ValueError(f"{sl.source}: its removal set changed since it was counted")
            removed[sl.name] = saved["removed"]
        raw_zip = task.fmt == "zip" and all(s.fmt == "zip" for s in task.slices)
        try:
            rows, members, nbytes = _write_shard(task, wd, out_path, removed, raw_zip)
        except shardcopy.Fallback:  # a zip that only zipfile reads: all of the shard through zipfile
            rows, members, nbytes = _write_shard(task, wd, out_path, removed, False)
    except (*_DATA_ERRORS, ValueError, OSError) as e:
        err = e if isinstance(e, (remote.StorageError, *_DATA_ERRORS, ValueError)) else \
            remote.storage_error(e, "; ".join(sources), "read")  # fmt: skip
        return failed_stats(base, err, t0)
    position = sum(len(r) for r in rows)
    mapping = pd.concat(rows, ignore_index=True).astype({"position": "int64", "source_position": "int64"})
    wd.makedirs(STATS_DIR, MAPPING_DIR)
    wd.write_bytes(wd.join(STATS_DIR, MAPPING_DIR, f"{task.name}.parquet"), _parquet(mapping))
    broken = [f"{s.source}: {s.broken}" for s in task.slices if s.broken]
    stats = {
        **base, "status": "partial" if broken else "done", "error": "; ".join(broken) or None,
        "samples": {"in": position, "kept": position, "removed": 0}, "removed_by_reason": {},
        "members": {"in": members, "kept": members, "removed": 0}, "bytes": {"in": nbytes, "kept": nbytes},
        "first_sample": task.first, "slices": [{"source": s.source, "skip": s.skip, "take": s.take}
                                                for s in task.slices],
        "seconds": round(time.perf_counter() - t0, 3),
    }  # fmt: skip
    wd.write_json(marker, stats)
    return stats


def _write_shard(task: OutputTask, wd: WorkDir, out_path: str, removed: dict[str, dict[str, str]],
                 raw_zip: bool) -> tuple[list[pd.DataFrame], int, int]:  # fmt: skip
    """Write the shard (atomically); return its mapping rows per slice, members and bytes."""
    rows: list[pd.DataFrame] = []
    members = nbytes = position = 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(_atomic_output(wd, out_path))
        w = _Writer(out, task.fmt, raw_zip, write_behind=wd.local)
        for sl in task.slices:
            with contextlib.ExitStack() as inner:
                rng = _write_slice(inner, w, sl, removed[sl.name], wd)
            if len(rng.keys) != sl.take:
                raise ValueError(f"{sl.source}: {len(rng.keys)} kept samples from the {sl.skip}th, "
                                 f"{sl.take} expected (the archive changed since it was counted)")  # fmt: skip
            rows.append(pd.DataFrame({
                "shard": task.name, "position": range(position, position + sl.take), "archive": sl.source,
                "key": rng.keys, "source_position": range(sl.skip, sl.skip + sl.take)}))  # fmt: skip
            position += sl.take
            members += rng.members
            nbytes += rng.bytes
        w.close()
    return rows, members, nbytes


def _parquet(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df.loc[:, list(MAPPING_COLUMNS)], preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(None), buf, compression="zstd")
    return buf.getvalue()


def plan_outputs(counts: list[dict[str, Any]], samples_per_shard: int, fmt: str) -> list[tuple[str, int, list[Slice]]]:
    """The output shards -- (name, first sample, slices) -- for the counted sources in order.

    Examples
    --------
    >>> c = [{"name": n, "source": n, "format": "tar", "removals_sha256": "", "status": "done",
    ...       "samples": {"kept": k}} for n, k in (("a", 3), ("b", 0), ("c", 4))]
    >>> [(n, f, [(s.name, s.skip, s.take) for s in sl]) for n, f, sl in plan_outputs(c, 3, "tar")]
    [('00000.tar', 0, [('a', 0, 3)]), ('00001.tar', 3, [('c', 0, 3)]), ('00002.tar', 6, [('c', 3, 1)])]
    """
    total = sum(c["samples"]["kept"] for c in counts)
    n_out = -(-total // samples_per_shard)
    width = max(5, len(str(max(n_out - 1, 0))))
    out: list[tuple[str, int, list[Slice]]] = []
    current: list[Slice] = []
    room, first = samples_per_shard, 0
    for c in counts:
        kept, skip = c["samples"]["kept"], 0
        broken = c.get("error") if c["status"] == "partial" else None
        while skip < kept:
            take = min(room, kept - skip)
            current.append(Slice(c["name"], c["source"], c["format"], c["removals_sha256"], skip, take, broken,
                                 bool(c.get("indexed"))))  # fmt: skip
            skip, room = skip + take, room - take
            if room == 0:
                out.append((f"{len(out):0{width}d}{EXTENSIONS[fmt]}", first, current))
                first, current, room = first + samples_per_shard, [], samples_per_shard
    if current:
        out.append((f"{len(out):0{width}d}{EXTENSIONS[fmt]}", first, current))
    return out


def write_resharded(
    sources: list[tuple[str, str, str, Any]], wd: WorkDir, *, samples_per_shard: int,
    shard_format: str | None, resume: bool, client: Any,
) -> tuple[CleanReport, pd.DataFrame]:  # fmt: skip
    """Both passes for ``sources`` -- (name, url, container, delayed removal table) in
    source order; return the report (one row per output shard) and the counts (one row
    per source archive)."""
    import dask

    so, attempts, deadline = wd.storage_options, wd.attempts, wd.deadline
    count_graph = [dask.delayed(count_source, pure=False)(CountTask(n, u, f, wd.url, so, attempts, deadline), r)
                   for n, u, f, r in sources]  # fmt: skip
    counts = list(compute_on(client, *count_graph)) if count_graph else []
    fmts = {f for _, _, f, _ in sources}
    fmt = shard_format or (fmts.pop() if len(fmts) == 1 else "tar")
    usable = [c for c in counts if c["status"] in ("done", "partial")]
    plan = plan_outputs(usable, samples_per_shard, fmt)
    _remove_stale(wd, {name for name, _, _ in plan})
    tasks = [OutputTask(name, wd.url, fmt, first, tuple(sl), resume, so, attempts, deadline)
             for name, first, sl in plan]  # fmt: skip
    graph = [dask.delayed(write_output, pure=False)(t) for t in tasks]
    stats = list(compute_on(client, *graph)) if graph else []
    report = CleanReport([_row(s) for s in stats]) if stats else CleanReport(columns=list(_row(_EMPTY)))
    table = pd.DataFrame([{
        "name": c["name"], "source": c["source"], "format": c["format"], "status": c["status"],
        "samples_in": (c.get("samples") or {}).get("in", 0), "samples_kept": (c.get("samples") or {}).get("kept", 0),
        "samples_removed": (c.get("samples") or {}).get("removed", 0),
        **{f"removed_{k}": v for k, v in (c.get("removed_by_reason") or {}).items()}, "error": c.get("error"),
    } for c in counts])  # fmt: skip
    reasons = [c for c in table.columns if c.startswith("removed_")]
    if reasons:
        table[reasons] = table[reasons].fillna(0).astype("int64")
    return report, table


_EMPTY = {"name": "", "source": "", "output": "", "format": "", "status": ""}


def _remove_stale(wd: WorkDir, names: set[str]) -> None:
    """Remove the shards (with their marker and mapping part) of an earlier resharding into
    ``out_dir`` that the new plan does not have."""
    for path in wd.fs.glob(posixpath.join(wd.join(STATS_DIR), "*.stats.json")):
        name = posixpath.basename(path)[: -len(".stats.json")]
        if name in names:
            continue
        with contextlib.suppress(FileNotFoundError, ValueError, OSError):
            old = wd.read_json(path)
            if not isinstance(old, dict) or "plan_sha256" not in old:
                continue  # not a resharded shard
            for p in (wd.join(name), wd.join(STATS_DIR, MAPPING_DIR, f"{name}.parquet"), path):
                with contextlib.suppress(FileNotFoundError):
                    wd.fs.rm_file(p)


def read_mapping(out_dir: str, storage_options: dict[str, Any] | None = None) -> dd.DataFrame:
    """The mapping table of a resharded ``out_dir``, read lazily: one row per sample, in output
    order, one partition per new shard (``_dedupdask/mapping/<shard>.parquet``); nothing is read
    until asked (``.compute()`` gives pandas), so it costs the same at 400M samples.

    Examples
    --------
    >>> m = read_mapping("clean/")  # doctest: +SKIP
    >>> m.columns.tolist()  # doctest: +SKIP
    ['shard', 'position', 'archive', 'key', 'source_position']
    >>> m[m["archive"].str.endswith("00042.tar")].compute()  # doctest: +SKIP
    """
    import dask.dataframe as dd

    wd = WorkDir(out_dir, storage_options)
    parts = sorted(wd.fs.glob(posixpath.join(wd.join(STATS_DIR, MAPPING_DIR), "*.parquet")))
    meta = pd.DataFrame({c: pd.Series(dtype="int64" if "position" in c else object) for c in MAPPING_COLUMNS})
    if not parts:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(_read_mapping_part, parts, wd=wd, meta=meta, enforce_metadata=False)


def _read_mapping_part(path: str, wd: WorkDir) -> pd.DataFrame:
    with wd.fs.open(path, "rb") as f:
        return pd.read_parquet(io.BytesIO(f.read()))
