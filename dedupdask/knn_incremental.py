"""Incremental builds: a build reuses the previous build's kNN graphs and verification scores
and searches only new-vs-all.

Every build that writes its results keeps both kNN graphs (the embeddings' over the input
representatives, ``which="dat"``, and the DCT descriptors' over the exact representatives,
``which="dct"``) and its pixel verification scores (``"verified"``) in ``work_dir/graphs/``:

- ``graphs/<name>/<build>/part.<i>.parquet`` -- the graph table (:data:`GRAPH_COLUMNS`,
  global indices of that build, partitions in ``from`` order), or the scores (``from, to,
  verify_score, verify_error``; not the pairs whose images could not be read);
- ``graphs/<name>.json``, written last -- the build number, ``k``, the method, the model, the
  decode version, what else the contents depend on (``identity``: the vector width and search
  options of a graph, the matcher and its options of the scores), the archives (name, url, row
  counts, offset) and each part's ``from`` range.

The next build (:class:`GraphCache`) reuses what was kept when every archive it covered is
still there unchanged (same url and row counts) and the model, decode version and identity
agree (and a graph's ``k`` is at least this build's); otherwise it searches or verifies
everything and says why in ``run.json["graphs"]``. Reuse is exact, not an approximation:

- global indices move (archives are sorted, new ones may sort between old ones), but each old
  archive moves as a whole, so an old index maps to a new one by its archive's shift;
- an old row's neighbours among all rows are the best ``k`` of its kept list (old rows) and of
  its best ``k`` among the new rows; a new row's, the best ``k`` of its best among old rows and
  among new rows. One pass of blocks of all representatives against chunks of the new ones
  gives both (:func:`incremental_graph`): work ``N * N_new * d`` instead of ``N**2 * d``;
- an old representative whose group gained a new member with a smaller index stops being a
  representative (``demoted``); its edges go, and the new representative -- the same vector --
  comes in through the new-vs-all search with the same similarity;
- a verification score depends only on the two images and the matcher: a candidate pair scored
  before keeps its score, the others are verified (:func:`scores_identity`).

So with exact search the merged graph is the graph a full rebuild computes (ties by the smaller
index, as :func:`dedupdask.knn.top_k`), and every stage after the kNN (tiers, components,
outliers, issues) reruns on it as in a full build. An approximate previous graph (pynndescent,
partitioned) stays as approximate for old-old pairs; the new-vs-all part is exact.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .analyses.graph import GRAPH_COLUMNS, empty_graph
from .knn import normalize_rows
from .knn_rows import read_file_rows
from .match_record import RECORD_COLUMNS
from .store import WorkDir

__all__ = [
    "GRAPHS_DIR", "GRAPH_VERSION", "GraphCache", "PreviousGraph", "archive_identity", "incremental_graph", "move",
    "scores_identity", "shifts",
]

GRAPHS_DIR = "graphs"
GRAPH_VERSION = 1
"""Layout version of ``work_dir/graphs/``; another one is not reused (the build searches all)."""

NEW_CHUNK_ROWS = 16_384
"""New representatives per chunk of the new-vs-all search (their vectors are read once per
block of all representatives)."""

DELTA_EXACT_MAX_WORK = 4 * 30_000**2 * 1280
"""New-vs-all by exact search while ``N * N_new * d`` is at most this (four exact searches of a
30k-image work_dir at d = 1280: a few minutes of one thread); past it the embeddings' new rows
probe the previous build's index (:mod:`dedupdask.vector_index`) as a reference query does, and
a graph without an index (the DCT descriptors') is searched in full."""

INDEX_MAX_PROBED_SHARE = 0.1
"""The index path only while a new row probes at most this share of the buckets: a less
selective index compares each new row with most old rows, and costs more than searching
everything (``benchmarks/incremental.py``: 1M synthetic rows in 20 buckets, nprobe 9, 100k new:
457 s against a full rebuild's 298 s)."""

SLICE_BYTES = 64 * 2**20
"""Similarities held at once by one task of the new-vs-all search."""

_I64 = np.int64


def archive_identity(a: Any) -> list[Any]:
    """What says an archive is unchanged between builds: name, url and row counts (of an
    :meth:`~dedupdask.collect.ArchiveInfo.to_dict`)."""
    return [a["name"], a["url"], int(a["n_valid"]), int(a["n_images"])]


@dataclass(frozen=True)
class PreviousGraph:
    """A graph kept by an earlier build (``graphs/<which>.json``)."""

    which: str
    build: int
    k: int
    method: str
    folder: str
    archives: tuple[dict[str, Any], ...]
    parts: tuple[tuple[str, int, int], ...]  # (path, lowest from, highest from)


class GraphCache:
    """One build's kNN graphs: the previous ones it may reuse, the ones it keeps for the next.

    Parameters
    ----------
    col : Collection
        The build's archives.
    build : int
        This build's number (the previous build's plus one).
    reuse : bool
        Reuse kept graphs (False: ``--full``, search everything).
    options : dict
        Search options that must agree for a kept graph to be reused (e.g. ``d_reduce``).
    """

    def __init__(self, col: Any, *, build: int, reuse: bool, options: dict[str, Any]) -> None:
        self.col = col
        self.build = int(build)
        self.reuse = bool(reuse)
        self.options = dict(options)
        self.kept: dict[str, tuple[Any, str, int, dict[str, Any]]] = {}
        self.about: dict[str, dict[str, Any]] = {}
        self.whitening: Any = None  # kept for the next build (keep_whitening)

    def _json(self, which: str) -> str:
        return self.col.work_dir.join(GRAPHS_DIR, f"{which}.json")

    def _previous(self, which: str, identity: dict[str, Any]) -> dict[str, Any] | None:
        """``graphs/<which>.json`` if this build can reuse what it describes (else None, with
        the reason in :attr:`about`)."""
        about = self.about.setdefault(which, {})
        if not self.reuse:
            about.update(reused=False, reason="a full rebuild was asked (--full)")
            return None
        wd: WorkDir = self.col.work_dir
        try:
            meta = wd.read_json(self._json(which))
        except FileNotFoundError:
            about.update(reused=False, reason="nothing kept (the first build)")
            return None
        except Exception as e:  # noqa: BLE001 - a damaged cache only costs a full search
            about.update(reused=False, reason=f"what was kept is unreadable ({type(e).__name__})")
            return None
        want = {
            "version": GRAPH_VERSION,
            "model_id": self.col.model.get("model_id"),
            "model_sha256": self.col.model.get("model_sha256"),
            "decode_version": self.col.decode_version,
            "identity": identity,
        }
        for key, value in want.items():
            if meta.get(key) != value:
                about.update(reused=False, reason=f"it was kept with another {key}")
                return None
        if not _all_there(wd, meta):
            about.update(reused=False, reason=f"the files kept by build {meta.get('build')} are missing")
            return None
        now = {a.name: archive_identity(a.to_dict()) for a in self.col.archives}
        for a in meta["archives"]:
            if now.get(a["name"]) != archive_identity(a):
                gone = "is gone" if a["name"] not in now else "changed"
                about.update(reused=False, reason=f"archive {a['name']} {gone} since build {meta['build']}")
                return None
        about.update(reused=True, previous_build=int(meta["build"]), new_archives=len(now) - len(meta["archives"]))
        return meta

    def previous(self, which: str, k: int, d: int, tag: str | None = None) -> PreviousGraph | None:
        """The kept graph of ``which`` if this build can reuse it (else None, with the reason
        in :attr:`about`); ``tag`` (e.g. the whitening searched in) must be the kept one's."""
        meta = self._previous(which, _identity(d, self.options, tag))
        if meta is None:
            return None
        if int(meta.get("k", 0)) < k:
            self.refuse(which, f"the kept graph has k {meta.get('k')} < {k}")
            return None
        return _previous_of(which, meta)

    def refuse(self, which: str, reason: str) -> None:
        """Record that what was kept for ``which`` is not used, and why."""
        self.about[which] = {"reused": False, "reason": reason}

    def previous_scores(self, matcher: dict[str, Any]) -> PreviousGraph | None:
        """The kept verification scores if this build's ``matcher`` (its version and options)
        made them (else None, with the reason in :attr:`about`)."""
        meta = self._previous("verified", matcher)
        return None if meta is None else _previous_of("verified", meta)

    def known_scores(self, previous: PreviousGraph | None, pairs: Any) -> Any:
        """The kept scores of ``pairs`` (``from, to`` of this build; pandas or Dask), moved to
        this build's indices: ``from, to, verify_score, verify_error`` and the match record of
        the pairs found."""
        import dask
        import dask.dataframe as dd

        if previous is None:
            return None
        old_offsets, shift = _shifts(self.col, previous)
        parts = [dask.delayed(_moved_scores)(self.col.work_dir, p, old_offsets, shift) for p, _, _ in previous.parts]
        if not hasattr(pairs, "dask"):
            frames = dask.compute(*parts) if parts else []
            kept = pd.concat([_empty_scores(), *frames], ignore_index=True)
            return pairs.loc[:, ["from", "to"]].merge(kept, on=["from", "to"], how="inner")
        if not parts:
            return None
        kept = dd.from_delayed(parts, meta=_empty_scores(), verify_meta=False)
        return pairs.merge(kept, on=["from", "to"], how="inner")

    def keep_scores(self, scores: Any, matcher: dict[str, Any]) -> None:
        """Remember this build's verification scores (``from, to, verify_score, verify_error``,
        the match record);
        not the pairs whose images could not be read (a storage error may pass)."""
        scores = scores[scores["verify_error"].isna()][list(_SCORE_COLUMNS)]
        self.kept["verified"] = (scores, "verify", 0, matcher)

    def demoted(self, previous: PreviousGraph, groups: Any) -> Any:
        """Old rows whose representative is now a new row: ``groups`` is the ``rep`` array of
        every image, or a Dask frame with ``index`` and ``rep`` (then so is the answer)."""
        kept = {a["name"] for a in previous.archives}
        new = [a for a in self.col.archives if a.n_valid and a.name not in kept]
        starts = np.array([a.offset for a in new], _I64)
        ends = starts + np.array([a.n_valid for a in new], _I64)
        if hasattr(groups, "dask"):
            return groups.map_partitions(
                _demoted_part, starts, ends, meta=pd.Series([], dtype="int64", name="index")
            )
        rep = np.asarray(groups, _I64)
        idx = np.arange(rep.size, dtype=_I64)
        return idx[~_inside(idx, starts, ends) & _inside(rep, starts, ends)]

    def keep(self, which: str, graph: Any, used: str, k: int, d: int, tag: str | None = None) -> Any:
        """Remember the graph table of ``which`` (persisted on the workers) to save it."""
        if hasattr(graph, "dask"):
            graph = graph.persist()
        self.kept[which] = (graph, used, int(k), _identity(d, self.options, tag))
        return graph

    def previous_whitening(self) -> Any:
        """The whitening an earlier build fitted (``graphs/whitening.npz``), if every archive
        it was fitted on is still there unchanged: an incremental build searches the whitened
        graph of the new rows in the same space as the kept one (else None: fit anew)."""
        from .whitening import Whitening

        meta = self._previous("whitening", {"dims": "any"})
        if meta is None:
            return None
        try:
            with self.col.work_dir.fs.open(self.col.work_dir.join(meta["folder"], "whitening.npz"), "rb") as f:
                return Whitening.from_bytes(f.read())
        except Exception as e:  # noqa: BLE001 - a damaged file only costs a new fit
            self.refuse("whitening", f"what was kept is unreadable ({type(e).__name__})")
            return None

    def keep_whitening(self, w: Any) -> None:
        """Remember this build's whitening (:mod:`dedupdask.whitening`) to save it."""
        self.whitening = w

    def save(self) -> dict[str, Any]:
        """Write the kept graphs (parts, then ``graphs/<which>.json``; the previous build's
        parts go after); what ``run.json["graphs"]`` records."""
        import dask

        from .tables import write_part_file

        wd: WorkDir = self.col.work_dir
        if self.whitening is not None:
            self._save_whitening(self.whitening)
        for which, (graph, used, k, identity) in self.kept.items():
            folder = f"{GRAPHS_DIR}/{which}/{self.build}"  # relative: a work_dir may be moved
            if wd.fs.exists(wd.join(folder)):
                wd.fs.rm(wd.join(folder), recursive=True)
            wd.makedirs(folder)
            parts = graph.to_delayed() if hasattr(graph, "dask") else [graph]
            paths = [f"{folder}/part.{i}.parquet" for i in range(len(parts))]
            ranges = dask.compute(*[
                dask.delayed(_write_part, pure=False)(write_part_file, wd, wd.join(p), part)
                for p, part in zip(paths, parts, strict=True)
            ])  # fmt: skip
            parts_kept = [[p, lo, hi] for p, (lo, hi, n) in zip(paths, ranges, strict=True) if n]
            self._commit(which, folder, identity, parts_kept, k=k, method=used)
            self.about.setdefault(which, {})["kept"] = {"build": self.build, "edges": int(sum(r[2] for r in ranges))}
        return self.about

    def _save_whitening(self, w: Any) -> None:
        wd: WorkDir = self.col.work_dir
        folder = f"{GRAPHS_DIR}/whitening/{self.build}"
        wd.makedirs(folder)
        with wd.fs.open(wd.join(folder, "whitening.npz"), "wb") as f:
            f.write(w.to_bytes())
        self._commit("whitening", folder, {"dims": "any"}, [[f"{folder}/whitening.npz", 0, 0]])
        self.about.setdefault("whitening", {})["kept"] = {"build": self.build, **w.to_dict()}

    def _commit(
        self, which: str, folder: str, identity: dict[str, Any], parts: list[list[Any]], **extra: Any
    ) -> None:
        """Write ``graphs/<which>.json`` naming what ``folder`` now holds (last, once it is
        all written), then remove the previous build's folder of ``which``."""
        wd: WorkDir = self.col.work_dir
        old = self._previous_folder(which)
        wd.write_json(self._json(which), {
            "version": GRAPH_VERSION, "which": which, "build": self.build, **extra,
            "model_id": self.col.model.get("model_id"), "model_sha256": self.col.model.get("model_sha256"),
            "decode_version": self.col.decode_version, "identity": identity,
            "folder": folder, "archives": [a.to_dict() for a in self.col.archives], "parts": parts,
        })  # fmt: skip
        if old and old != folder and wd.fs.exists(wd.join(old)):
            wd.fs.rm(wd.join(old), recursive=True)

    def _previous_folder(self, which: str) -> str | None:
        try:
            return str(self.col.work_dir.read_json(self._json(which))["folder"])
        except Exception:  # noqa: BLE001 - nothing to remove
            return None


def _identity(d: int, options: dict[str, Any], tag: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"d": int(d), "options": options}
    if tag is not None:
        out["tag"] = tag
    return out


def _all_there(wd: WorkDir, meta: dict[str, Any]) -> bool:
    """Whether every part ``meta`` names is there (one listing)."""
    try:
        names = {posixpath.basename(str(p)) for p in wd.fs.ls(wd.join(meta["folder"]), detail=False)}
    except (FileNotFoundError, KeyError):
        return False
    return all(posixpath.basename(p) in names for p, _, _ in meta.get("parts", []))


def scores_identity(params: Any, max_image_pixels: int, max_member_bytes: int) -> dict[str, Any]:
    """What a kept verification score depends on besides the two images: the matcher (its
    version) and its options; a build with another one verifies again."""
    from .match import MATCHER, PIXEL_MATCHER

    return {
        "matcher": MATCHER if params.keypoints else PIXEL_MATCHER,
        "early_accept": params.early_accept,
        "max_image_pixels": int(max_image_pixels),
        "max_member_bytes": int(max_member_bytes),
    }


def _previous_of(which: str, meta: dict[str, Any]) -> PreviousGraph:
    return PreviousGraph(
        which, int(meta["build"]), int(meta["k"]), str(meta["method"]), str(meta["folder"]),
        tuple(meta["archives"]), tuple(tuple(p) for p in meta["parts"]),  # type: ignore[misc]
    )  # fmt: skip


_SCORE_COLUMNS = ("from", "to", "verify_score", "verify_error", *RECORD_COLUMNS)
"""A kept score: with its match record (:data:`dedupdask.match_record.RECORD_COLUMNS`), so
that a reused pair still shows why it was accepted; scores kept before records existed
read back with a null record."""


def _empty_scores() -> pd.DataFrame:
    return pd.DataFrame({
        "from": pd.Series([], dtype="int64"), "to": pd.Series([], dtype="int64"),
        "verify_score": pd.Series([], dtype="float32"), "verify_error": pd.Series([], dtype="string"),
        **{c: pd.Series([], dtype=d) for c, d in RECORD_COLUMNS.items()},
    })  # fmt: skip


def shifts(col: Any, old: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The first global index an earlier build gave each archive with rows (``old``: name ->
    offset), sorted, and how far each moved in ``col``: what :func:`move` needs."""
    where = {a.name: int(a.offset) for a in col.archives}
    pairs = sorted((o, where[name] - o) for name, o in old.items())
    if not pairs:
        return np.zeros(1, _I64), np.zeros(1, _I64)
    return np.array([o for o, _ in pairs], _I64), np.array([s for _, s in pairs], _I64)


def move(x: np.ndarray, old_offsets: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Global indices of an earlier build (``x``) as this build's (:func:`shifts`)."""
    return x + shift[np.searchsorted(old_offsets, x, side="right") - 1]


def _shifts(col: Any, previous: PreviousGraph) -> tuple[np.ndarray, np.ndarray]:
    return shifts(col, {a["name"]: int(a["offset"]) for a in previous.archives if int(a["n_valid"])})


def _moved_scores(wd: WorkDir, path: str, old_offsets: np.ndarray, shift: np.ndarray) -> pd.DataFrame:
    import io

    df = pd.read_parquet(io.BytesIO(wd.read_bytes(wd.join(path))))
    out = pd.DataFrame({
        "from": move(df["from"].to_numpy(_I64), old_offsets, shift),
        "to": move(df["to"].to_numpy(_I64), old_offsets, shift),
        "verify_score": df["verify_score"].to_numpy(np.float32),
        "verify_error": df["verify_error"].astype("string"),
    })  # fmt: skip
    for c, d in RECORD_COLUMNS.items():  # null for scores kept before records existed
        out[c] = df[c].astype(d).to_numpy() if c in df else pd.Series([None] * len(df), dtype=d)
    return out


def _inside(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each of ``x`` falls in one of the sorted ranges ``starts[i] <= x < ends[i]``."""
    at = np.searchsorted(starts, x, side="right") - 1
    return (at >= 0) & (x < ends[np.maximum(at, 0)]) if starts.size else np.zeros(x.shape, bool)


def _demoted_part(part: pd.DataFrame, starts: np.ndarray, ends: np.ndarray) -> pd.Series:
    idx = part["index"].to_numpy(_I64)
    rep = part["rep"].to_numpy(_I64)
    return pd.Series(idx[~_inside(idx, starts, ends) & _inside(rep, starts, ends)], name="index")


def _write_part(write: Any, wd: WorkDir, path: str, part: pd.DataFrame) -> tuple[int, int, int]:
    n = write(wd, path, part.loc[:, [c for c in part.columns if c in GRAPH_COLUMNS or c in _SCORE_COLUMNS]])
    if not n:
        return -1, -1, 0
    frm = part["from"].to_numpy(_I64)
    return int(frm.min()), int(frm.max()), int(n)


# -- the merged graph ------------------------------------------------------------------------------
def _ranges(col: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Offsets, row counts and names of the archives with rows."""
    arcs = [a for a in col.archives if a.n_valid]
    return (
        np.array([a.offset for a in arcs], _I64),
        np.array([a.n_valid for a in arcs], _I64),
        [a.name for a in arcs],
    )


def _read_vectors(col: Any, rows: np.ndarray, which: str, d: int, post: Any = None) -> np.ndarray:
    """Unit vectors of sorted global ``rows`` (read from the per-archive files; whitened by
    ``post`` when given)."""
    offsets, sizes, names = _ranges(col)
    out = np.empty((rows.size, d), np.float32)
    if not rows.size:
        return out if post is None else np.empty((0, post.dims), np.float32)
    at = np.searchsorted(offsets, rows, side="right") - 1
    bounds = np.flatnonzero(np.diff(at)) + 1
    wd = col.work_dir
    for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), rows.size], strict=True):
        a = int(at[lo])
        local = rows[lo:hi] - offsets[a]
        out[lo:hi] = read_file_rows(wd, wd.file(names[a], which), d, "<f4", local)
    return normalize_rows(out if post is None else post.apply(out), copy=False)


def _merge(frm: np.ndarray, to: np.ndarray, sim: np.ndarray, k: int) -> pd.DataFrame:
    """The best ``k`` edges of each ``from`` (ties by the smaller ``to``) as graph rows."""
    order = np.lexsort((to, -sim, frm))
    frm, to, sim = frm[order], to[order], sim[order]
    starts = np.searchsorted(frm, frm, side="left")
    rank = np.arange(frm.size) - starts
    keep = rank < k
    return pd.DataFrame({
        "from": frm[keep].astype(_I64), "to": to[keep].astype(_I64),
        "similarity": sim[keep].astype(np.float32), "rank": rank[keep].astype(np.int16),
    })  # fmt: skip


GROUP_COLUMNS = 64
"""Columns per group of :func:`top_grouped`."""


def top_grouped(s: np.ndarray, k: int, group: int = GROUP_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest entries of ``s`` (largest first, ties to the lower column, as
    :func:`dedupdask.knn.top_k`), reading ``s`` about twice instead of ``k`` times.

    The row's ``k`` largest entries lie in its ``k`` groups of ``group`` consecutive columns
    with the largest maxima (a group holding one of them has a maximum at least the ``k``-th
    largest, and at most ``k`` groups do), so one pass takes the groups' maxima, ``k`` argmax
    passes over those pick the groups, and the entries are chosen among their ``k * group``
    columns. Overwrites nothing.

    Examples
    --------
    >>> s = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    >>> from dedupdask.knn import top_k
    >>> [np.array_equal(a, b) for a, b in zip(top_grouped(s, 4), top_k(s, 4))]
    [True, True]
    """
    from .reference_search import top_few

    r, c = s.shape
    k = min(k, c)
    if c <= 4 * k * group or k == 0:
        return top_few(s.copy(), k)
    n_g = c // group
    main = s[:, : n_g * group].reshape(r, n_g, group).max(axis=2)
    if n_g * group < c:  # the last, shorter group
        main = np.concatenate([main, s[:, n_g * group :].max(axis=1, keepdims=True)], axis=1)
    g, _ = top_few(main, min(k, main.shape[1]))
    g.sort(axis=1)  # candidate columns in column order: argmax keeps the lower one of a tie
    cols = (g[:, :, None] * group + np.arange(group)).reshape(r, -1)
    cols = np.minimum(cols, c - 1)  # the short group's overhang repeats its last column
    cand = np.take_along_axis(s, cols, axis=1)
    dup = np.zeros(cols.shape, bool)
    dup[:, 1:] = cols[:, 1:] == cols[:, :-1]
    cand[dup] = -np.inf
    idx, val = top_few(cand, k)
    return np.take_along_axis(cols, idx, axis=1), val


def _best(rows: np.ndarray, cols: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Each row's best ``k`` columns of ``s`` as edge arrays (``-inf`` entries never; ties by
    the lower column, as :func:`dedupdask.knn.top_k`: columns are in index order)."""
    kk = min(k, s.shape[1])
    if kk == 0 or not s.shape[0]:
        return np.empty(0, _I64), np.empty(0, _I64), np.empty(0, np.float32)
    idx, val = top_grouped(s, kk)
    ok = np.isfinite(val).ravel()
    return (
        np.repeat(rows, kk)[ok], cols[idx.ravel()[ok]], np.clip(val.ravel()[ok], -1.0, 1.0).astype(np.float32)
    )


def _cross(
    col: Any, block: np.ndarray, is_old: np.ndarray, chunk: np.ndarray, k: int, which: str, d: int,
    post: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """One task: block rows' best ``k`` among the chunk's new rows, and the chunk's rows' best
    ``k`` among the block's old rows (edge frames)."""
    from .reference_search import top_few

    if not block.size or not chunk.size:
        return empty_graph(), empty_graph()
    y = _read_vectors(col, chunk, which, d, post)
    x_all = _read_vectors(col, block, which, d, post)
    step = max(64, SLICE_BYTES // max(1, 4 * chunk.size))
    a: list[tuple[np.ndarray, ...]] = []
    kb = min(k, int(is_old.sum()))
    best_v = np.full((chunk.size, kb), -np.inf, np.float32)  # the chunk rows' best old rows so far
    best_i = np.zeros((chunk.size, kb), _I64)
    for s0 in range(0, block.size, step):
        rows, x = block[s0 : s0 + step], x_all[s0 : s0 + step]
        s = x @ y.T
        same_r, same_c = _same(rows, chunk)
        s[same_r, same_c] = -np.inf
        old = is_old[s0 : s0 + step]
        sb = np.ascontiguousarray(s[old].T) if old.any() and kb else None
        a.append(_best(rows, chunk, s, k))  # complete: the chunk is all of this task's columns
        if sb is not None:  # the running best: kept ones first, so ties keep the lower index
            top, val = top_grouped(sb, min(kb, sb.shape[1]))
            cand_v = np.concatenate([best_v, val], axis=1)
            cand_i = np.concatenate([best_i, rows[old][top]], axis=1)
            top, best_v = top_few(cand_v, kb)
            best_i = np.take_along_axis(cand_i, top, axis=1)
    ok = np.isfinite(best_v).ravel()
    b = (np.repeat(chunk, kb)[ok], best_i.ravel()[ok], np.clip(best_v.ravel()[ok], -1.0, 1.0))
    return _edges(a, k), _edges([b], k)


def _edges(parts: list[tuple[np.ndarray, ...]], k: int) -> pd.DataFrame:
    if not parts:
        return empty_graph()
    f, t, v = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return _merge(f, t, v, k)


def _same(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    common, ri, ci = np.intersect1d(rows, cols, assume_unique=True, return_indices=True)
    return ri, ci


def _cut(frames: list[pd.DataFrame], k: int) -> pd.DataFrame:
    df = pd.concat(frames, ignore_index=True)
    return _merge(df["from"].to_numpy(_I64), df["to"].to_numpy(_I64), df["similarity"].to_numpy(np.float32), k)


def _reduce(k: int, *frames: pd.DataFrame) -> pd.DataFrame:
    return _cut(list(frames), k)


def _old_edges(
    wd: WorkDir, parts: list[str], lo: int, hi: int, old_offsets: np.ndarray, shift: np.ndarray,
    block: np.ndarray, demoted: np.ndarray,
) -> pd.DataFrame:  # fmt: skip
    """The kept edges of old rows ``lo..hi-1`` (old indices), moved to this build's indices and
    cut to rows and neighbours that still are representatives."""
    import io

    out = [empty_graph()]
    for path in parts:
        df = pd.read_parquet(io.BytesIO(wd.read_bytes(wd.join(path))))
        df = df[(df["from"] >= lo) & (df["from"] < hi)]
        if len(df):
            out.append(df)
    df = pd.concat(out, ignore_index=True)
    if not len(df):
        return empty_graph()
    frm = df["from"].to_numpy(_I64)
    to = df["to"].to_numpy(_I64)
    frm, to = move(frm, old_offsets, shift), move(to, old_offsets, shift)
    keep = np.isin(frm, block, assume_unique=False) & ~np.isin(to, demoted)
    return pd.DataFrame({
        "from": frm[keep], "to": to[keep], "similarity": df["similarity"].to_numpy(np.float32)[keep],
        "rank": df["rank"].to_numpy(np.int16)[keep],
    })  # fmt: skip


def _select(block: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return block[(block >= lo) & (block < hi)]


def _concat(*arrays: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(a, _I64) for a in arrays]) if arrays else np.empty(0, _I64)


def _rows_of(b: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    return b[(b["from"] >= lo) & (b["from"] < hi)]


def _tree(k: int, items: list[Any], fan_in: int = 16) -> Any:
    import dask

    while len(items) > 1:
        items = [dask.delayed(_reduce)(k, *items[i : i + fan_in]) for i in range(0, len(items), fan_in)]
    return items[0]


def incremental_graph(
    col: Any, reps: Any, k: int, previous: PreviousGraph, *, which: str, d: int, demoted: Any,
    transform: Any = None,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The kNN graph of rows ``reps`` from ``previous`` plus a new-vs-all search, or None.

    The new-vs-all search is exact (blocks of all representatives against chunks of the new
    ones) while ``N * N_new * d`` is at most :data:`DELTA_EXACT_MAX_WORK`. Past it, for the
    embeddings, the new rows probe the index the previous build left (``index/``, the same
    archives as ``previous``, probing at most :data:`INDEX_MAX_PROBED_SHARE` of its buckets):
    each new row's best old rows in its ``nprobe`` buckets, each old row's best new rows among
    those that probed its bucket, and the new rows among themselves exactly. Otherwise (no such
    index, or the DCT graph) None: the caller searches in full.

    Parameters
    ----------
    col : Collection
        This build's archives (a superset of ``previous``'s, unchanged).
    reps : ndarray or dask Series
        Global indices of the representatives (this build's).
    k : int
        Neighbours per row.
    previous : PreviousGraph
        The kept graph (:meth:`GraphCache.previous`).
    which, d : str, int
        ``"dat"`` (embeddings) or ``"dct"`` and the vector width (in the files).
    transform : Whitening, optional
        Search the embeddings whitened by it (the whitened graph: exact new-vs-all only).
    demoted : ndarray or dask Series
        Old rows (this build's indices) whose representative is now a new row: at least every
        old representative that no longer is one.

    Returns
    -------
    (dask.dataframe.DataFrame or None, dict)
        The graph table (partitions in ``from`` order, one per block of archives) and details;
        or None and ``reason``.
    """
    import dask
    import dask.dataframe as dd

    offsets, sizes, names = _ranges(col)
    old_names = {a["name"] for a in previous.archives}
    is_old_arc = np.array([n in old_names for n in names], bool)
    work = float(col.n) * int(sizes[~is_old_arc].sum()) * d
    index = None
    if work > DELTA_EXACT_MAX_WORK:
        if which != "dat" or transform is not None:
            return None, {"reason": f"new-vs-all exact search would cost {work:.2g} > {DELTA_EXACT_MAX_WORK:.2g} "
                                    f"and the {'whitened embeddings' if transform is not None else 'DCT descriptors'} "
                                    "have no index"}  # fmt: skip
        index, why = _usable_index(col, previous, d)
        if index is None:
            return None, {"reason": f"new-vs-all exact search would cost {work:.2g} > {DELTA_EXACT_MAX_WORK:.2g} and {why}"}
    back = {a["name"]: int(a["offset"]) for a in previous.archives if int(a["n_valid"])}
    old_offsets, shift = shifts(col, back)

    # blocks of consecutive archives (this build's partitions of the per-image tables)
    valid = [a for a in col.archives if a.n_valid]
    at = {j: i for i, j in enumerate(j for j, a in enumerate(col.archives) if a.n_valid)}
    blocks_arc = [got for part in col.partition_archives() if (got := [at[j] for j in part if j in at])]
    starts = [int(offsets[b[0]]) for b in blocks_arc]
    ends = [int(offsets[b[-1]] + sizes[b[-1]]) for b in blocks_arc]
    block_reps = _route(reps, starts, ends)

    # the new rows, in chunks of consecutive new archives
    new_arcs = np.flatnonzero(~is_old_arc).tolist()
    chunks: list[list[int]] = []
    for i in new_arcs:
        if chunks and sum(int(sizes[j]) for j in chunks[-1]) + int(sizes[i]) <= NEW_CHUNK_ROWS:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    chunk_rows = []
    for ch in chunks:
        parts = []
        for i in ch:
            lo, hi = int(offsets[i]), int(offsets[i] + sizes[i])
            b = int(np.searchsorted(starts, lo, side="right") - 1)
            parts.append(dask.delayed(_select)(block_reps[b], lo, hi))
        chunk_rows.append(dask.delayed(_concat)(*parts))

    dem = demoted
    if hasattr(dem, "dask"):
        dem = dask.delayed(_concat)(*dem.to_delayed())
    else:
        dem = np.asarray(dem, _I64)

    parts_meta = list(previous.parts)
    wd = col.work_dir
    b_parts: list[list[Any]] = [[] for _ in chunks]
    a_final = []
    for p, arcs in enumerate(blocks_arc):
        rows_p = block_reps[p]
        if index is not None:  # new rows against new rows only; old ones through the index
            if not any(not is_old_arc[i] for i in arcs):
                a_final.append(dask.delayed(empty_graph)())
                continue
            rows_p = dask.delayed(_old_out)(rows_p, offsets[arcs], sizes[arcs], is_old_arc[arcs])
        old_mask = dask.delayed(_old_mask)(rows_p, offsets[arcs], sizes[arcs], is_old_arc[arcs])
        a_parts = []
        for q, rows in enumerate(chunk_rows):
            sub = replace(col, archives=tuple(valid[i] for i in sorted({*arcs, *chunks[q]})))
            ab = dask.delayed(_cross, nout=2)(sub, rows_p, old_mask, rows, k, which, d, transform)
            a_parts.append(ab[0])
            b_parts[q].append(ab[1])
        a_final.append(_tree(k, a_parts) if a_parts else dask.delayed(empty_graph)())
    b_final = [_tree(k, bp) for bp in b_parts]
    routed: list[Any] = []
    about: dict[str, Any] = {"search": "exact"}
    if index is not None:
        routed, about = _index_search(
            col, [valid[i] for i in new_arcs], index, k, block_reps, old_offsets, shift, starts, ends
        )

    finals = []
    for p, arcs in enumerate(blocks_arc):
        old_in = [i for i in arcs if is_old_arc[i]]
        if old_in:  # the old rows of this block are consecutive in the previous build's order
            lo = back[names[old_in[0]]]
            hi = back[names[old_in[-1]]] + int(sizes[old_in[-1]])
            files = [path for path, plo, phi in parts_meta if phi >= lo and plo < hi]
            old = dask.delayed(_old_edges)(wd, files, lo, hi, old_offsets, shift, block_reps[p], dem)
        else:
            old = dask.delayed(empty_graph)()
        mine = [
            dask.delayed(_rows_of)(b_final[q], starts[p], ends[p])
            for q, ch in enumerate(chunks) if any(i in arcs for i in ch)
        ]  # fmt: skip
        if routed:
            mine.append(routed[p])
        # the block's graph: its kept edges, its best new neighbours, its new rows' best old ones
        finals.append(dask.delayed(_reduce)(k, old, a_final[p], *mine))
    graph = dd.from_delayed(finals, meta=empty_graph(), verify_meta=False)
    info = {
        "method": "incremental",
        "previous_build": previous.build,
        "new_archives": len(new_arcs),
        "new_rows": int(sizes[new_arcs].sum()) if new_arcs else 0,
        "blocks": len(blocks_arc),
        "chunks": len(chunks),
        "delta_work": work,
        **about,
    }
    return graph, info


def _old_out(block: np.ndarray, offs: np.ndarray, sizes: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The rows of ``block`` in new archives."""
    return block[~_old_mask(block, offs, sizes, old)]


def _usable_index(col: Any, previous: PreviousGraph, d: int) -> tuple[Any, str]:
    """The previous build's index when it covers exactly ``previous``'s archives."""
    from .collect import ArchiveInfo
    from .vector_index import archives_fingerprint, open_index

    try:
        index = open_index(col.work_dir)
    except Exception as e:  # noqa: BLE001 - no index: the caller searches in full
        return None, f"no index to search ({str(e).split(':')[0]})"
    share = index.nprobe / max(1, index.centroids.shape[0])
    if share > INDEX_MAX_PROBED_SHARE:
        return None, (f"the index is not selective enough (a row probes {index.nprobe} of "
                      f"{index.centroids.shape[0]} buckets)")  # fmt: skip
    arcs = [ArchiveInfo(a["name"], a["url"], int(a["offset"]), int(a["n_valid"]), int(a["n_images"])) for a in previous.archives]
    if index.meta.get("fingerprint") != archives_fingerprint(arcs) or index.d != d:
        return None, "the index covers other archives than the kept graph"
    if index.meta.get("model") != col.model:
        return None, "the index is of another model"
    return index, ""


def _bitmap(n: int, *arrays: np.ndarray) -> np.ndarray:
    """Packed bits of the rows in ``arrays`` (global indices below ``n``): ``n / 8`` bytes, set
    in place (no ``n``-byte array of flags first: 50 MB, not 450 MB, for 400M rows).

    Examples
    --------
    >>> bits = _bitmap(20, np.array([0, 9]), np.array([19, 9]))
    >>> len(bits), np.flatnonzero(_bit(bits, np.arange(20))).tolist()
    (3, [0, 9, 19])
    """
    bits = np.zeros(-(-n // 8), np.uint8)
    for a in arrays:
        x = np.asarray(a, _I64)
        np.bitwise_or.at(bits, x >> 3, (128 >> (x & 7)).astype(np.uint8))
    return bits


def _bit(bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((bits[x >> 3] >> (7 - (x & 7))) & 1).astype(bool)


def _index_search(
    col: Any, new_arcs: list[Any], index: Any, k: int, block_reps: list[Any], old_offsets: np.ndarray,
    shift: np.ndarray, starts: list[int], ends: list[int],
) -> tuple[list[Any], dict[str, Any]]:  # fmt: skip
    """New rows probe the index's buckets (as a reference query): per touched bucket, each new
    row's best old rows and each old row's best new rows (of those that probed it); the edges
    routed to the blocks of their ``from`` (one delayed frame per block)."""
    import uuid

    import dask
    import dask.dataframe as dd

    from .analyses.routing import route, route_touched
    from .knn_budget import _n_workers
    from .knn_rows import VectorSource
    from .reference_search import QUERY_ROWS_PER_TASK, _probe, _probe_meta

    sub = replace(col, archives=tuple(new_arcs))
    qsrc = VectorSource.from_collection(sub)
    token = uuid.uuid4().hex[:12]
    cents = dask.delayed(index.centroids, name=f"dedupdask-inc-centroids-{token}")
    probes = [dask.delayed(_probe, pure=True)(b, int(b.offset), cents, index.nprobe) for b in qsrc.blocks]
    frame = dd.from_delayed(probes, meta=_probe_meta(), verify_meta=False).persist()
    memberships = int(qsrc.n) * min(index.nprobe, index.centroids.shape[0])
    by_bucket, touched, _ = route_touched(
        frame, "bucket", index.centroids.shape[0], max(2 * _n_workers(), math.ceil(memberships / QUERY_ROWS_PER_TASK))
    )  # fmt: skip
    bits = dask.delayed(_bitmap, pure=True)(int(col.n), *block_reps)
    idx = dask.delayed(index, name=f"dedupdask-inc-index-{token}")
    found = dd.from_delayed(
        [dask.delayed(_bucket_edges, pure=True)(p, sub, idx, k, bits, old_offsets, shift)
         for p in by_bucket.to_delayed()],
        meta=empty_graph(), verify_meta=False,
    )  # fmt: skip
    routed = route(found, "from", [*starts, ends[-1]]).to_delayed()
    about = {
        "search": "index", "nprobe": int(index.nprobe), "centroids": int(index.centroids.shape[0]),
        "buckets_touched": int(touched.size), "old_rows_read": int(index.bucket_rows[touched].sum()),
    }  # fmt: skip
    return [dask.delayed(_from_index)(r) for r in routed], about


def _from_index(part: pd.DataFrame) -> pd.DataFrame:
    return part.reset_index().loc[:, list(GRAPH_COLUMNS)]


def _bucket_edges(
    part: pd.DataFrame, sub: Any, index: Any, k: int, bits: np.ndarray, old_offsets: np.ndarray, shift: np.ndarray,
) -> pd.DataFrame:  # fmt: skip
    """One task of touched buckets: new rows' best old rows and old rows' best new rows."""
    part = part.reset_index(drop=True)
    out = [empty_graph()]
    for bucket, grp in part.groupby("bucket", sort=True):
        q = np.unique(grp["q"].to_numpy(_I64))
        q = q[_bit(bits, q)]
        if not q.size:
            continue
        ridx, rvec = index.read_bucket(int(bucket))
        ridx = move(ridx, old_offsets, shift)
        keep = _bit(bits, ridx)
        ridx, rvec = ridx[keep], rvec[keep]
        if not ridx.size:
            continue
        order = np.argsort(ridx)
        ridx, rvec = ridx[order], rvec[order]
        qv = _read_vectors(sub, q, "dat", index.d)
        step = max(1, SLICE_BYTES // (4 * ridx.size))
        back = []
        for s0 in range(0, q.size, step):
            s = qv[s0 : s0 + step] @ rvec.T
            sb = np.ascontiguousarray(s.T)
            out.append(_edges([_best(q[s0 : s0 + step], ridx, s, k)], k))
            back.append(_best(ridx, q[s0 : s0 + step], sb, k))
        out.append(_edges(back, k))
    return _cut(out, k)


def _old_mask(block: np.ndarray, offs: np.ndarray, sizes: np.ndarray, old: np.ndarray) -> np.ndarray:
    at = np.searchsorted(offs, block, side="right") - 1
    return old[at] if block.size else np.zeros(0, bool)


def _route(reps: Any, starts: list[int], ends: list[int]) -> list[Any]:
    """The sorted representatives of each block (delayed arrays), without gathering them here."""
    import dask

    if not hasattr(reps, "dask"):
        r = np.sort(np.asarray(reps, _I64))
        return [r[np.searchsorted(r, s) : np.searchsorted(r, e)] for s, e in zip(starts, ends, strict=True)]
    pieces = [dask.delayed(_split, nout=len(starts))(p, starts, ends) for p in reps.to_delayed()]
    return [dask.delayed(_sorted)(*[pc[b] for pc in pieces]) for b in range(len(starts))]


def _split(part: Any, starts: list[int], ends: list[int]) -> list[np.ndarray]:
    r = np.sort(np.asarray(part, _I64))
    return [r[np.searchsorted(r, s) : np.searchsorted(r, e)] for s, e in zip(starts, ends, strict=True)]


def _sorted(*arrays: np.ndarray) -> np.ndarray:
    return np.sort(_concat(*arrays))

