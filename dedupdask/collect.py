"""Loading stage: every done archive of a ``work_dir`` as one dask array and one dask DataFrame.

The per-archive files written by extraction (see :mod:`dedupdask.store`) are stacked in the
**sorted archive order** -- by the ``url`` recorded in each ``done.json``, then by name -- and
the valid images get one global ``index`` 0..N-1 in that order; this is the order of
``atrain_features.dat.csv``. Nothing is read to guess shapes: row counts come from
``done.json`` and are checked against the ``.dat`` sizes of one directory listing.

Archives without ``done.json`` are reported, not used: ``failed`` (a ``failed.json`` says the
archive could not be read) and ``missing`` (stray per-archive files only, e.g. an extraction
that is still running or crashed). Features of different models, or of different decode
versions (:data:`dedupdask.decode.DECODE_VERSION`), are never mixed; archives extracted before
``done.json`` recorded a decode version (version 1) read with their old meaning: their
``pixel_md5`` hashed the model-input pixels, so it becomes ``input_md5``.

A done archive whose files are damaged is never skipped silently (its images would vanish
from the results): reading it raises :class:`~dedupdask.store.WorkDirError`, one line naming
the file, what is wrong and the way out (remove the archive's ``done.json``; extraction then
redoes it). The command line prints it and exits with code 2. What is read, and checked:

=========================  =================================================================
``done.json``              valid JSON; an object with ``url``, ``status``, model id and
                           hash, a positive integer ``d``, integer counts
                           ``0 <= valid <= images`` (:func:`dedupdask.store.check_done`)
``features.dat``           present when ``valid > 0``; size ``valid * d * 4`` bytes
``dct.dat``                when present: size ``valid * perceptual.d * 4`` bytes
``features.parquet``       a Parquet file with every column of ``FILE_COLUMNS``
                           (``member_offset``, ``input_md5`` may be absent: older work_dirs), each readable
                           as its type; ``index`` numbers the valid rows ``0..valid-1``
=========================  =================================================================

Only the presence of ``failed.json`` counts (its contents are for people). The per-archive
``.dat.csv``, ``bad.csv`` and ``skipped.csv`` are for fastdup-style tools and are not read
here. The run-level files that :func:`dedupdask.results.load` reads (``results/run.json``,
``results/<table>/part.<i>.parquet``) are checked the same way there.
"""

from __future__ import annotations

import math
import posixpath
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.base import tokenize

from .config import IMAGES_PER_PARTITION
from .decode import DECODE_VERSION
from .store import FILE_COLUMNS, SUFFIXES, WorkDir, empty_files_frame, file_dtypes

__all__ = [
    "ArchiveInfo", "Collection", "collect", "read_archive_files", "read_archives_files", "read_archive_vectors",
    "PARTITIONS_PER_THREAD",
]

PARTITIONS_PER_THREAD = 4
"""Partitions per Dask thread that :meth:`Collection.spread` keeps at least (when the archives
allow): a cluster stays busy through the shuffles, whose slowest partition sets their pace."""

# Names that run-level outputs produce when matched against per-archive suffixes
# (``atrain_features.dat.csv`` looks like the ``.dat.csv`` of an archive named ``atrain_``).
_RUN_LEVEL_NAMES = frozenset({"atrain_"})
_MODEL_KEYS = ("model_id", "model_sha256", "d")


@dataclass(frozen=True)
class ArchiveInfo:
    """One done archive and where its rows sit in the global index.

    Attributes
    ----------
    name : str
        Archive name (the per-archive file prefix in work_dir).
    url : str
        The archive's URL as recorded in ``done.json``.
    offset : int
        Global index of the archive's first valid image.
    n_valid : int
        Rows in the archive's ``.dat`` (valid images).
    n_images : int
        Image members, valid or not (rows of its Parquet file).
    status : str
        ``"done"`` or ``"partial"`` (the archive ended early; ``archive_error`` says why).
    archive_error : str or None
        Why a partial archive ended early.
    """

    name: str
    url: str
    offset: int
    n_valid: int
    n_images: int
    status: str = "done"
    archive_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "offset": self.offset,
            "n_valid": self.n_valid,
            "n_images": self.n_images,
            "status": self.status,
            "archive_error": self.archive_error,
        }


@dataclass
class Collection:
    """The done archives of a work_dir, ready to be read lazily.

    Attributes
    ----------
    work_dir : WorkDir
        Where the per-archive files are.
    archives : tuple of ArchiveInfo
        Done archives in sorted order, with their global offsets.
    d : int
        Vector width.
    model : dict
        ``model_id``, ``model_sha256``, ``model_threshold``, ``model_ccthreshold`` of the run.
    failed : list of str
        Archives with ``failed.json`` and no ``done.json``.
    missing : list of str
        Archives with per-archive files but neither ``done.json`` nor ``failed.json``.
    decode_version : int
        How every archive's images were decoded (``done.json``; 1 when it does not say).
    images_per_partition : int
        Consecutive archives are read into one partition of the per-image tables
        (:meth:`files`) up to this many image members (an archive with more is a partition of
        its own); 0 = one partition per archive. See :data:`IMAGES_PER_PARTITION`.
    """

    work_dir: WorkDir
    archives: tuple[ArchiveInfo, ...]
    d: int
    model: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    decode_version: int = DECODE_VERSION
    images_per_partition: int = IMAGES_PER_PARTITION

    @property
    def n(self) -> int:
        """Number of valid images (rows of the global index)."""
        return sum(a.n_valid for a in self.archives)

    @property
    def n_images(self) -> int:
        """Number of image members, valid or not."""
        return sum(a.n_images for a in self.archives)

    def embeddings(self) -> da.Array:
        """All vectors as a float32 ``[N, d]`` dask array, one block per archive (memmapped).

        Examples
        --------
        >>> col.embeddings()  # doctest: +SKIP
        dask.array<concatenate, shape=(3000, 1280), dtype=float32, chunksize=(1000, 1280), ...>
        """
        blocks = [
            da.from_delayed(
                dask.delayed(read_archive_vectors, pure=True)(
                    self.work_dir, a.name, self.d, a.n_valid
                ),
                shape=(a.n_valid, self.d),
                dtype=np.float32,
                name="dedupdask-vectors-" + tokenize(self.work_dir.url, a.name, a.n_valid, self.d),
            )
            for a in self.archives
            if a.n_valid
        ]
        if not blocks:
            return da.zeros((0, self.d), dtype=np.float32, chunks=((0,), (self.d,)))
        return da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]

    def vector_rows(
        self, rows: np.ndarray | None = None, *, which: str = "dat", d: int | None = None
    ) -> np.ndarray:
        """Rows ``rows`` (global indices; None = all) of the vectors, read here (no Dask).

        For small local work_dirs, where building and running a Dask graph costs more than
        slicing the memory-mapped files; ``which="dct"`` (with ``d=63``) reads the DCT
        descriptors.

        Returns
        -------
        ndarray
            float32 ``[len(rows), d]`` in the order of ``rows``.
        """
        d = self.d if d is None else int(d)
        sel = None if rows is None else np.asarray(rows, dtype=np.int64)
        res = np.empty((self.n if sel is None else sel.size, d), np.float32)
        filled = 0
        for a in self.archives:
            if not a.n_valid:
                continue
            if sel is None:
                arr = read_archive_vectors(self.work_dir, a.name, d, a.n_valid, which=which)
                res[a.offset : a.offset + a.n_valid] = arr
                filled += a.n_valid
                continue
            hit = np.flatnonzero((sel >= a.offset) & (sel < a.offset + a.n_valid))
            if hit.size:  # only the archives holding asked rows are read
                arr = read_archive_vectors(self.work_dir, a.name, d, a.n_valid, which=which)
                res[hit] = arr[sel[hit] - a.offset]
                filled += hit.size
        if filled != res.shape[0]:
            raise IndexError(f"rows outside 0..{self.n - 1} asked of {self.work_dir.url}")
        return res

    def reads_locally(self) -> bool:
        """Whether :meth:`vector_rows` is the cheap way here: a local work_dir, local threads."""
        return bool(self.work_dir.local) and not on_distributed()

    def partition_archives(self) -> list[tuple[int, ...]]:
        """The archives (positions in :attr:`archives`) of each partition of :meth:`files`.

        Consecutive archives are packed while their image members add up to at most
        :attr:`images_per_partition`; every archive belongs to exactly one partition.

        Examples
        --------
        >>> from dedupdask.store import WorkDir
        >>> a = [ArchiveInfo(f"{i}.tar", f"{i}.tar", 0, n, n) for i, n in enumerate([3, 3, 5, 1])]
        >>> Collection(WorkDir("."), tuple(a), 4, images_per_partition=6).partition_archives()
        [(0, 1), (2, 3)]
        >>> Collection(WorkDir("."), tuple(a), 4, images_per_partition=0).partition_archives()
        [(0,), (1,), (2,), (3,)]
        """
        limit = int(self.images_per_partition)
        parts: list[tuple[int, ...]] = []
        cur: list[int] = []
        size = 0
        for i, a in enumerate(self.archives):
            if cur and (limit <= 0 or size + a.n_images > limit):
                parts.append(tuple(cur))
                cur, size = [], 0
            cur.append(i)
            size += a.n_images
        if cur:
            parts.append(tuple(cur))
        return parts

    def spread(self, threads: int) -> Collection:
        """This collection with partitions small enough to give ``threads`` Dask threads
        :data:`PARTITIONS_PER_THREAD` partitions each (where the archives allow it); never more
        images per partition than :attr:`images_per_partition` asks.

        Examples
        --------
        >>> from dedupdask.store import WorkDir
        >>> a = tuple(ArchiveInfo(f"{i}.tar", f"{i}.tar", 10 * i, 10, 10) for i in range(40))
        >>> len(Collection(WorkDir("."), a, 4).partition_archives())  # 400 images, one partition
        1
        >>> len(Collection(WorkDir("."), a, 4).spread(2).partition_archives())
        8
        """
        if self.images_per_partition <= 0:
            return self
        fair = max(1, math.ceil(self.n_images / (PARTITIONS_PER_THREAD * max(1, int(threads)))))
        return replace(self, images_per_partition=min(self.images_per_partition, fair))

    def partition_bounds(self) -> np.ndarray:
        """First global index of each partition of :meth:`files`, for
        :func:`dedupdask.analyses.expand_dask.owner` (a partition without valid images owns none)."""
        from .analyses.expand_dask import start_bounds

        plan = self.partition_archives()
        lows = np.array([self.archives[p[0]].offset for p in plan], dtype=np.int64)
        nonempty = np.array([sum(self.archives[i].n_valid for i in p) > 0 for p in plan], bool)
        return start_bounds(lows, nonempty)

    def _specs(self, positions: Sequence[int]) -> tuple[tuple[Any, ...], ...]:
        return tuple(
            (self.work_dir, a.name, a.offset, a.n_valid, self.decode_version)
            for a in (self.archives[i] for i in positions)
        )

    def files(self) -> dd.DataFrame:
        """One row per image member (valid or not), in archive order; each partition holds
        the consecutive archives of one entry of :meth:`partition_archives`.

        Columns are :data:`dedupdask.store.FILE_COLUMNS`; ``index`` is the global index
        (null for invalid images).

        Examples
        --------
        >>> col.files().npartitions == len(col.partition_archives())  # doctest: +SKIP
        True
        """
        meta = empty_files_frame()
        if not self.archives:
            return dd.from_pandas(meta, npartitions=1)
        specs = [self._specs(p) for p in self.partition_archives()]
        return dd.from_map(
            read_archives_files, specs, meta=meta, label="dedupdask-files", enforce_metadata=False
        )

    def archive_files(self) -> dd.DataFrame:
        """:meth:`files` with one partition per archive (partition ``i`` = ``archives[i]``),
        for the jobs whose output is per archive (removal lists, galleries' reads)."""
        return replace(self, images_per_partition=0).files()

    def files_frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        """:meth:`files` as one pandas DataFrame, in archive order.

        On a distributed scheduler the archives' Parquet files are read by the workers; on
        local threads they are read here in a loop (dask's graph set-up would cost more than
        the reads for a work_dir small enough to be analysed locally).
        """
        if on_distributed():  # only the columns asked for leave the workers, archive by archive
            from .scheduler import gather_frames

            ddf = self.files()
            (df,) = gather_frames(ddf if columns is None else ddf[list(columns)])
        else:
            parts = [
                read_archive_files((self.work_dir, a.name, a.offset, a.n_valid, self.decode_version))
                for a in self.archives
            ]
            df = pd.concat(parts, ignore_index=True) if parts else empty_files_frame()
        df = df.reset_index(drop=True)
        return df if columns is None else df.loc[:, columns]

    def archive_frame(self) -> pd.DataFrame:
        """The archives as a table (name, url, offset, n_valid, n_images, status, archive_error)."""
        cols = ["name", "url", "offset", "n_valid", "n_images", "status", "archive_error"]
        return pd.DataFrame([a.to_dict() for a in self.archives], columns=cols)


def on_distributed() -> bool:
    """Whether dask computations run on a distributed Client now (not local threads)."""
    from .scheduler import dask_client

    return dask_client() is not None


def read_archive_vectors(
    wd: WorkDir, name: str, d: int, n: int, *, which: str = "dat"
) -> np.ndarray:
    """The ``[n, d]`` vectors of one archive (memory-mapped when work_dir is local).

    Parameters
    ----------
    wd : WorkDir
        The work_dir.
    name : str
        Archive name.
    d, n : int
        Width and the row count from ``done.json``.
    which : {"dat", "dct"}
        The embeddings or the DCT descriptors.

    Returns
    -------
    ndarray
        float32 ``[n, d]``.

    Examples
    --------
    >>> read_archive_vectors(WorkDir(work_dir), "00000.tar", 1280, 1000).shape  # doctest: +SKIP
    (1000, 1280)
    """
    arr = wd.open_features(name, d, which=which)
    if arr.shape != (n, d):
        try:
            got = int(wd.fs.size(wd.file(name, which)))
        except Exception:  # noqa: BLE001 - the disagreement matters, not this lookup
            got = arr.shape[0] * d * 4
        raise wd.damaged(name, which, _size_problem(name, n, d, got))
    return arr


def _size_problem(name: str, n: int, d: int, got: int) -> str:
    """Why a vector file cannot be read: its size disagrees with the count in done.json."""
    return (
        f"is {got} bytes, but {name}{SUFFIXES['done']} counts {n} valid images x d={d} "
        f"float32 ({n * d * 4} bytes)"
    )


def read_archive_files(spec: tuple[Any, ...], columns: list[str] | None = None) -> pd.DataFrame:
    """One archive's Parquet rows with the global ``index`` (a ``dd.from_map`` partition).

    Parameters
    ----------
    spec : (WorkDir, str, int, int[, int])
        work_dir, archive name, global offset of its first valid image, valid count, and its
        decode version (default: the current one); for version 1 the ``pixel_md5`` column is
        read as ``input_md5`` (that is what it hashed) and ``pixel_md5`` is null.
    columns : list of str, optional
        Only these columns, in this order (``index`` is always read: it is checked against
        ``done.json``). Dask passes the columns a computation uses (``from_map``'s column
        projection), so ``col.files()[["index", "md5"]]`` decodes two columns of each file.

    Returns
    -------
    DataFrame
        Columns :data:`dedupdask.store.FILE_COLUMNS` (or ``columns``).

    Examples
    --------
    >>> read_archive_files((WorkDir(work_dir), "00000.tar", 0, 1000))  # doctest: +SKIP
    """
    wd, name, offset, n_valid = spec[:4]
    version = spec[4] if len(spec) > 4 else DECODE_VERSION
    want = list(FILE_COLUMNS if columns is None else columns)
    read = list(dict.fromkeys(["index", *want]))
    if version < 2 and ("input_md5" in read or "pixel_md5" in read):
        read = list(dict.fromkeys([*read, "pixel_md5", "input_md5"]))
    df = wd.read_files(name, read)  # the schema's columns and dtypes, or WorkDirError
    local = df["index"]
    found = local.dropna().to_numpy(dtype=np.int64)
    if found.size != n_valid:
        raise wd.damaged(
            name, "parquet",
            f"has {found.size} valid rows but {name}{SUFFIXES['done']} counts {n_valid}",
        )
    if not np.array_equal(found, np.arange(n_valid)):
        raise wd.damaged(name, "parquet", f"its index column does not number the valid rows 0..{n_valid - 1}")
    df["index"] = (local + offset).astype(file_dtypes()["index"])
    if version < 2 and "pixel_md5" in df:  # decode version 1 hashed the model-input pixels under this name
        df["input_md5"] = df["pixel_md5"]
        df["pixel_md5"] = pd.NA
        df = df.astype({"pixel_md5": file_dtypes()["pixel_md5"]})
    return df[want]


def read_archives_files(
    specs: Sequence[tuple[Any, ...]], columns: list[str] | None = None
) -> pd.DataFrame:
    """:func:`read_archive_files` of consecutive archives, concatenated (one partition of
    :meth:`Collection.files`).

    Examples
    --------
    >>> read_archives_files([(WorkDir(work_dir), "00000.tar", 0, 1000)])  # doctest: +SKIP
    """
    parts = [read_archive_files(spec, columns) for spec in specs]
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts, ignore_index=True)


def _scan(wd: WorkDir) -> tuple[set[str], set[str], set[str], dict[str, int]]:
    """One listing of work_dir: done, failed, other per-archive names and file sizes."""
    if not wd.fs.exists(wd.path):
        raise FileNotFoundError(f"work_dir {wd.url} does not exist")
    entries = wd.fs.ls(wd.path, detail=True, refresh=True)
    sizes = {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0) for e in entries}
    done, failed, other = set(), set(), set()
    for base in sizes:
        for which, suffix in SUFFIXES.items():
            if base.endswith(suffix):
                name = base[: -len(suffix)]
                {"done": done, "failed": failed}.get(which, other).add(name)
                break
    return done, failed, other, sizes


def collect(
    work_dir: str | WorkDir,
    storage_options: dict[str, Any] | None = None,
    *,
    names: Sequence[str] | None = None,
    warn: bool = True,
    images_per_partition: int = IMAGES_PER_PARTITION,
) -> Collection:
    """Find the done archives of ``work_dir`` and describe them for lazy reading.

    Parameters
    ----------
    work_dir : str or WorkDir
        Local path or URL of the work_dir.
    storage_options : dict, optional
        fsspec options (ignored when ``work_dir`` is already a :class:`WorkDir`).
    names : sequence of str, optional
        Use exactly these archives (``load`` passes the archives of a finished run); each
        must be done. By default every done archive is used.
    warn : bool
        Emit a ``UserWarning`` listing failed and missing archives.
    images_per_partition : int
        See :class:`Collection` (0 = one partition per archive).

    Returns
    -------
    Collection

    Raises
    ------
    WorkDirError
        If a ``done.json`` is damaged or a ``.dat`` file's size does not match it (the
        message names the file).
    ValueError
        If archives were extracted with different models (id, file hash or width differ).

    Examples
    --------
    >>> col = collect("work")  # doctest: +SKIP
    >>> col.embeddings().shape, col.files().npartitions  # doctest: +SKIP
    ((3000, 1280), 3)
    """
    wd = work_dir if isinstance(work_dir, WorkDir) else WorkDir(work_dir, storage_options)
    done, failed_set, other, sizes = _scan(wd)
    if names is not None:
        absent = [n for n in names if n not in done]
        if absent:
            raise FileNotFoundError(
                f"work_dir {wd.url}: archive(s) {absent[:5]} of the run are no longer done "
                f"(no {SUFFIXES['done']})"
            )
        done = set(names)
    failed = sorted(failed_set - done)
    missing = sorted(other - done - failed_set - _RUN_LEVEL_NAMES) if names is None else []
    dones = wd.read_dones(sorted(done))  # concurrently; checked, or WorkDirError
    order = sorted(dones, key=lambda n: (dones[n]["url"], n))

    models: dict[tuple[Any, ...], str] = {}
    for name in order:
        models.setdefault(tuple(dones[name].get(k) for k in _MODEL_KEYS), name)
    if len(models) > 1:
        (m1, ex1), (m2, ex2) = list(models.items())[:2]

        def describe(m: tuple[Any, ...]) -> str:
            return f"{m[0]} (sha256 {str(m[1])[:12]}, d={m[2]})"

        raise ValueError(
            f"work_dir {wd.url} mixes features of different models: {describe(m1)} e.g. in "
            f"archive {ex1!r}, and {describe(m2)} e.g. in archive {ex2!r}"
            + (f" ({len(models)} models in all)" if len(models) > 2 else "")
            + "; extract every archive with one model or use separate work_dirs"
        )

    versions: dict[Any, str] = {}
    for name in order:
        versions.setdefault(dones[name].get("decode_version", 1), name)
    if len(versions) > 1:
        (v1, ex1), (v2, ex2) = list(versions.items())[:2]
        raise ValueError(
            f"work_dir {wd.url} mixes images decoded two ways: decode_version {v1} e.g. in "
            f"archive {ex1!r}, and {v2} e.g. in archive {ex2!r} (version 1 = extracted before "
            "EXIF orientation was applied); extract every archive again with resume=False "
            "(--no-resume) or use separate work_dirs"
        )
    version = next(iter(versions), DECODE_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= DECODE_VERSION:
        raise ValueError(
            f"work_dir {wd.url}: {order[0]}{SUFFIXES['done']} has decode_version {version!r}; "
            f"this dedupdask reads 1 to {DECODE_VERSION} (a newer dedupdask wrote it?)"
        )

    archives: list[ArchiveInfo] = []
    offset = 0
    d = 0
    for name in order:
        info = dones[name]
        d, n_valid = info["d"], info["counts"]["valid"]
        _check_sizes(wd, name, sizes, n_valid, d, (info.get("perceptual") or {}).get("d"))
        archives.append(
            ArchiveInfo(
                name=name,
                url=info["url"],
                offset=offset,
                n_valid=n_valid,
                n_images=info["counts"]["images"],
                status=info["status"],
                archive_error=info.get("archive_error"),
            )
        )
        offset += n_valid
    model: dict[str, Any] = {}
    if order:
        first = dones[order[0]]
        model = {
            k: first.get(k)
            for k in ("model_id", "model_sha256", "model_threshold", "model_ccthreshold", "d")
        }
    if warn and (failed or missing):
        parts = []
        if failed:
            parts.append(f"{len(failed)} failed archive(s) (failed.json): {_preview(failed)}")
        if missing:
            parts.append(f"{len(missing)} archive(s) without done.json: {_preview(missing)}")
        warnings.warn(
            f"work_dir {wd.url}: not used: " + "; ".join(parts), UserWarning, stacklevel=2
        )
    return Collection(wd, tuple(archives), d, model, failed, missing, version, int(images_per_partition))


def _check_sizes(
    wd: WorkDir, name: str, sizes: dict[str, int], n_valid: int, d: int, d_dct: int | None
) -> None:
    """The archive's vector files hold ``n_valid`` rows (sizes from the one listing)."""
    got = sizes.get(name + SUFFIXES["dat"])
    if got is None and n_valid:
        raise wd.damaged(name, "dat", f"is missing, but {name}{SUFFIXES['done']} counts {n_valid} valid images")
    if got is not None and got != n_valid * d * 4:
        raise wd.damaged(name, "dat", _size_problem(name, n_valid, d, got))
    got = sizes.get(name + SUFFIXES["dct"])
    if got is not None and d_dct and got != n_valid * d_dct * 4:
        raise wd.damaged(name, "dct", _size_problem(name, n_valid, d_dct, got))


def _preview(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")
