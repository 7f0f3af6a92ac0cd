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
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import remote

__all__ = [
    "FILE_COLUMNS",
    "SKIPPED_COLUMNS",
    "SUFFIXES",
    "SkippedRows",
    "WorkDir",
    "empty_files_frame",
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
            import os

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

    def remove_stale_tmp(self, name: str) -> int:
        """Remove the temporary files a killed writer left for archive ``name`` (local only).

        :meth:`write_bytes` writes ``<file>.tmp-<id>`` and renames it; a process killed in
        between leaves the temporary behind. The task that (re)processes the archive owns its
        files, so it clears them first. Object stores have no temporaries (a PUT is atomic).
        Returns how many were removed.
        """
        if not self.local:
            return 0
        import glob
        import os

        removed = 0
        for which in SUFFIXES:
            for tmp in glob.glob(glob.escape(self.file(name, which)) + ".tmp-*"):
                try:
                    os.unlink(tmp)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

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
            import os

            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    _copy_into(f, data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
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
        out = self.fs.open(path, "wb", autocommit=False)
        try:
            shutil.copyfileobj(src, out, _COPY_BLOCK)
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

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

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
        return self.read_json(self.file(name, "done"))

    def read_files(self, name: str) -> pd.DataFrame:
        """The archive's Parquet file as pandas, with the schema's dtypes."""
        table = pq.read_table(io.BytesIO(self.read_bytes(self.file(name, "parquet"))))
        return table.to_pandas(types_mapper=_types_mapper)

    def open_features(self, name: str, d: int, which: str = "dat") -> np.ndarray:
        """The archive's vectors (``which="dct"``: its DCT descriptors), memory-mapped locally."""
        path = self.file(name, which)
        if self.local:
            import os

            n = os.path.getsize(path) // (4 * d) if d else 0
            if n == 0:
                return np.zeros((0, d), dtype="<f4")
            return np.memmap(path, dtype="<f4", mode="r", shape=(n, d))
        return np.frombuffer(self.read_bytes(path), dtype="<f4").reshape(-1, d)


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
