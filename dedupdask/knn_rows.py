"""kNN stage, partitioned -- rows: where the vectors are, how tasks read them, the shared plan.

A :class:`VectorSource` is the vectors of a work_dir spread over per-archive files in one
global order; every task reads just the rows it needs (``pread`` locally, ranged reads on
object stores). The :class:`KnnPlan` (projection, centroids, search settings) is fitted on
the client side and shipped to every task.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from .knn import DEFAULT_RANDOM_STATE
from .knn_budget import _CHUNK_BYTES
from .store import WorkDir

__all__ = ["KnnPlan", "VectorBlock", "VectorSource", "read_file_rows"]


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) positions in ``rows`` of its runs of consecutive values."""
    if rows.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    brk = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([[0], brk]).astype(np.int64), np.concatenate([brk, [rows.size]]).astype(
        np.int64
    )


def read_file_rows(wd: WorkDir, path: str, width: int, dtype: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a raw row-major file of ``width``-wide ``dtype`` rows.

    Local files are read with one ``pread`` per run of consecutive rows (nothing is
    memory-mapped, so the file's pages do not count in the process' RSS; a
    ``POSIX_FADV_RANDOM`` hint made cached reads 30x slower here, so there is none); other
    filesystems with one ranged request per run.

    Examples
    --------
    >>> read_file_rows(WorkDir("work"), "work/00000.tarfeatures.dat", 1280, "<f4",
    ...                np.array([0, 5]))  # doctest: +SKIP
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, width), dtype=dtype)
    if rows.size == 0:
        return out
    rb = width * out.itemsize
    buf = out.reshape(-1).view(np.uint8)
    starts, ends = _runs(rows)
    if wd.local:
        fd = os.open(path, os.O_RDONLY)
        try:
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                view = memoryview(buf[s * rb : e * rb])
                offset = int(rows[s]) * rb
                while len(view):
                    got = os.preadv(fd, [view], offset)
                    if got <= 0:
                        raise OSError(f"{path}: short read at byte {offset} (file truncated?)")
                    view, offset = view[got:], offset + got
        finally:
            os.close(fd)
        return out
    first = rows[starts] * rb
    last = (rows[ends - 1] + 1) * rb
    parts = wd.fs.cat_ranges([path] * starts.size, first.tolist(), last.tolist())
    for s, e, part in zip(starts.tolist(), ends.tolist(), parts, strict=True):
        if isinstance(part, Exception):
            raise part
        if len(part) != (e - s) * rb:
            raise OSError(f"{path}: short read of rows {rows[s]}..{rows[e - 1]}")
        buf[s * rb : e * rb] = np.frombuffer(part, dtype=np.uint8)
    return out


@dataclass(frozen=True)
class VectorBlock:
    """The rows of one raw row-major file that take part in the kNN (one archive).

    Attributes
    ----------
    wd : WorkDir
        Filesystem and root of ``path``.
    path : str
        The file (e.g. an archive's ``features.dat``).
    width : int
        Values per row.
    n_rows : int
        Rows in the file.
    rows : ndarray or None
        Sorted file rows that take part (e.g. exact-duplicate representatives); None = all.
    dtype : str
        Row dtype in the file (``"<f4"`` or ``"<f2"``).
    offset : int or None
        Global index of the file's row 0 (an archive's first image); None on every block of a
        source whose positions are the global indices.
    post : Whitening or None
        Applied to every row read (its ``apply``): the block then gives whitened rows
        (:mod:`dedupdask.whitening`), ``post.dims`` wide.
    """

    wd: WorkDir
    path: str
    width: int
    n_rows: int
    rows: np.ndarray | None = None
    dtype: str = "<f4"
    offset: int | None = None
    post: Any = None

    @property
    def size(self) -> int:
        """Rows taking part."""
        return self.n_rows if self.rows is None else int(self.rows.size)

    def read(self, local: np.ndarray | None = None) -> np.ndarray:
        """Rows ``local`` (positions among the taking-part rows; None = all), as stored.

        Examples
        --------
        >>> block.read(np.array([0, 1])).shape  # doctest: +SKIP
        (2, 1280)
        """
        if local is None:
            local = np.arange(self.size, dtype=np.int64)
        file_rows = local if self.rows is None else self.rows[local]
        out = read_file_rows(self.wd, self.path, self.width, self.dtype, file_rows)
        return out if self.post is None else self.post.apply(out)


@dataclass(frozen=True)
class VectorSource:
    """Vectors spread over per-archive files, in one global order (position 0..n-1).

    Examples
    --------
    >>> src = VectorSource.from_collection(collect("work"))  # doctest: +SKIP
    >>> src.n, src.d, src.read(np.array([0, 10])).shape  # doctest: +SKIP
    (3000, 1280, (2, 1280))
    """

    blocks: tuple[VectorBlock, ...]
    d: int
    offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = [b.size for b in self.blocks]
        object.__setattr__(
            self, "offsets", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        )

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def global_index(self, positions: np.ndarray) -> np.ndarray:
        """Global indices (int64) of ``positions``: the block's ``offset`` plus the file row.

        Positions themselves when the blocks carry no ``offset``.

        Examples
        --------
        >>> src = VectorSource.from_collection(collect("work"), reps)  # doctest: +SKIP
        >>> bool((src.global_index(np.arange(src.n)) == reps).all())  # doctest: +SKIP
        True
        """
        positions = np.asarray(positions, dtype=np.int64)
        if not self.blocks or self.blocks[0].offset is None:
            return positions
        which = np.searchsorted(self.offsets, positions, side="right") - 1
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(self.blocks) + 1))
        out = np.empty(positions.size, dtype=np.int64)
        for b in np.flatnonzero(np.diff(bounds)).tolist():
            at = order[bounds[b] : bounds[b + 1]]
            block, local = self.blocks[b], positions[at] - self.offsets[b]
            out[at] = int(block.offset) + (local if block.rows is None else block.rows[local])  # type: ignore[arg-type]
        return out

    @classmethod
    def from_collection(
        cls, col: Any, reps: np.ndarray | None = None, *, which: str = "dat", d: int | None = None,
        post: Any = None,
    ) -> VectorSource:  # fmt: skip
        """The ``.dat`` files of a :class:`~dedupdask.collect.Collection`, rows ``reps`` only.

        Parameters
        ----------
        col : Collection
            Loaded work_dir.
        reps : ndarray, optional
            Sorted global indices taking part (default: all rows).
        which, d : str, int
            ``"dct"`` and 63: the DCT descriptors (``dct.dat``) instead of the embeddings.
        post : Whitening, optional
            Every row read is whitened (:attr:`VectorBlock.post`); the source is
            ``post.dims`` wide.
        """
        width = int(col.d if d is None else d)
        blocks = []
        for a in col.archives:
            if not a.n_valid:
                continue
            rows = None
            if reps is not None:
                lo, hi = np.searchsorted(reps, [a.offset, a.offset + a.n_valid])
                if hi - lo == a.n_valid:
                    rows = None
                elif hi == lo:
                    continue
                else:
                    rows = (reps[lo:hi] - a.offset).astype(np.int64)
            path = col.work_dir.file(a.name, which)
            blocks.append(
                VectorBlock(col.work_dir, path, width, a.n_valid, rows, offset=int(a.offset), post=post)
            )
        return cls(tuple(blocks), width if post is None else int(post.dims))

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at sorted global ``positions`` (as stored in the files).

        Examples
        --------
        >>> src.read(np.array([0, 1, 2])).shape  # doctest: +SKIP
        (3, 1280)
        """
        positions = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.offsets, positions, side="right") - 1
        parts = []
        for b in np.unique(which).tolist():
            lo, hi = np.searchsorted(which, [b, b + 1])
            parts.append(self.blocks[b].read(positions[lo:hi] - self.offsets[b]))
        if not parts:
            dt = self.blocks[0].dtype if self.blocks else "<f4"
            return np.empty((0, self.blocks[0].width if self.blocks else self.d), dtype=dt)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _chunk_rows(width: int, itemsize: int = 4) -> int:
    return max(256, _CHUNK_BYTES // max(1, width * itemsize))


# -- the plan (fitted on the client side, shipped to tasks) -----------------------------------
@dataclass(frozen=True)
class KnnPlan:
    """What every task needs to know: projection, centroids, widths, the search settings.

    Attributes
    ----------
    projection : ndarray or None
        float32 ``[d, d_search]`` (PCA), None = search on the original vectors.
    centroids : ndarray
        float32 ``[C, d_search]`` unit rows.
    dtype : str
        Storage of the search vectors (``"float32"`` or ``"float16"``).
    m : int
        Buckets per vector.
    margin : float
        Up to ``m`` more buckets whose centroid is within this similarity of the best.
    k : int
        Neighbours per row in the result.
    k_search : int
        Neighbours per row found in a bucket (``k + max(k, RERANK_EXTRA)`` when reranking).
    rerank : bool
        Similarities are re-scored on the original float32 rows.
    method : str
        Search inside a bucket: ``"exact"`` or ``"pynndescent"``.
    capacity : int
        Most vectors per bucket.
    scratch : str or None
        Folder of the projected rows (one file per archive) when ``rerank``.
    budget : int
        Memory per task (bytes).
    """

    projection: np.ndarray | None
    centroids: np.ndarray
    dtype: str
    m: int
    margin: float
    k: int
    k_search: int
    rerank: bool
    method: str
    capacity: int
    scratch: str | None
    budget: int
    random_state: int = DEFAULT_RANDOM_STATE

    @property
    def d_search(self) -> int:
        return int(self.centroids.shape[1])

    def to_search(self, x: np.ndarray) -> np.ndarray:
        """Original rows -> unit search vectors (float32)."""
        x = _unit(x)
        if self.projection is not None:
            x = _unit(x @ self.projection)
        return x


def _search_source(source: VectorSource, plan: KnnPlan) -> VectorSource:
    """Where the search vectors are: the scratch files, or the original rows."""
    if plan.scratch is None:
        return source
    width = plan.d_search
    dtype = np.dtype(plan.dtype).newbyteorder("<").str
    blocks = tuple(
        VectorBlock(b.wd, _scratch_file(plan.scratch, i), width, b.size, None, dtype)
        for i, b in enumerate(source.blocks)
    )
    return VectorSource(blocks, width)


def _scratch_file(scratch: str, i: int) -> str:
    return posixpath.join(scratch, f"{i:07d}.vec")


def _read_search(src: VectorSource, plan: KnnPlan, positions: np.ndarray) -> np.ndarray:
    """Unit search vectors (float32) of sorted ``positions``, read in chunks."""
    out = np.empty((positions.size, plan.d_search), dtype=np.float32)
    step = _chunk_rows(src.d)
    for s in range(0, positions.size, step):
        raw = src.read(positions[s : s + step])
        out[s : s + step] = raw if plan.scratch is not None else plan.to_search(raw)
    return out


def _compute(*args: Any) -> Any:
    """``dask.compute``, without distributed's warning about graphs that carry member lists."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        return dask.compute(*args)
