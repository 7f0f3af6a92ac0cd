"""Partition stage: one archive -> its feature files in work_dir (one Dask task).

:func:`process_archive` is the plain top-level function that ``dd.from_map`` calls once per
archive. It streams the members, joins sidecars to images by webdataset key, decodes, embeds
in batches, and writes the archive's files with ``done.json`` last. Every member gets exactly
one outcome: an image row (valid, or with an ``error_code``), a joined sidecar, or a skipped
row. Broken archive structure keeps the members read so far (status ``partial``); a storage
failure writes ``failed.json`` and leaves the archive not done, so a rerun retries it.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import __version__, remote
from .allocator import tune as tune_allocator
from .archives import ArchiveReadError, Member, group_samples, iter_members, split_key
from .config import RunConfig
from .decode import DECODE_VERSION, STATS_VERSION, decode_image, sniff_image
from .embed import embed_batch, perceptual_batch
from .sources import IMAGE_EXTENSIONS, ArchiveSource
from .store import FILE_COLUMNS, SkippedRows, WorkDir, empty_files_frame

__all__ = ["ArchiveTask", "process_archive", "SUMMARY_META", "safe_member_path"]

_COUNTS = ("members", "images", "valid", "invalid", "sidecars", "skipped")
_TIMINGS = ("read", "decode", "embed", "write", "total")
SUMMARY_META = pd.DataFrame(
    {
        "name": pd.Series(dtype="string"),
        "url": pd.Series(dtype="string"),
        "status": pd.Series(dtype="string"),
        **{c: pd.Series(dtype="int64") for c in _COUNTS},
        "error": pd.Series(dtype="string"),
        **{f"t_{t}": pd.Series(dtype="float64") for t in _TIMINGS},
    }
)


@dataclass(frozen=True)
class ArchiveTask:
    """Everything a worker needs for one archive (small and picklable)."""

    source: ArchiveSource
    work_dir: str
    config: RunConfig
    storage_options: dict[str, Any] = field(default_factory=dict)


def safe_member_path(member: str) -> str:
    """A relative path for writing a member under work_dir: no ``..``, no absolute parts.

    Examples
    --------
    >>> safe_member_path("../../etc/passwd")
    'etc/passwd'
    >>> safe_member_path("/abs/./x.jpg")
    'abs/x.jpg'
    """
    parts = [p for p in member.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    parts = [p.replace("\0", "_").replace(":", "_") for p in parts]
    return "/".join(parts) or "_unnamed"


class _Timer:
    def __init__(self) -> None:
        self.t = dict.fromkeys(_TIMINGS, 0.0)

    def timed_iter(self, it: Any, key: str) -> Any:
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.t[key] += time.perf_counter() - t0
                return
            self.t[key] += time.perf_counter() - t0
            yield item


def _resolve(config: RunConfig) -> Any:
    from .models import resolve_model

    return resolve_model(config.model_path, mean=config.model_mean, std=config.model_std)


def _dct_spec() -> Any:
    from .models import resolve_model

    return resolve_model("dct")


class _Archive:
    """Mutable state of one archive being processed."""

    def __init__(self, task: ArchiveTask, spec: Any) -> None:
        self.task = task
        self.src = task.source
        self.cfg = task.config
        self.spec = spec
        self.rows: list[dict[str, Any]] = []
        self.skipped = SkippedRows()  # encoded as they come: O(1) memory per skipped member
        self.vectors: list[np.ndarray] = []
        self.pending: list[np.ndarray] = []
        self.dct = _dct_spec()
        self.dct_vectors: list[np.ndarray] = []
        self.n_members = 0
        self.n_sidecars = 0
        self.n_valid = 0
        self.timer = _Timer()
        self.threads = self.cfg.worker_threads()
        self.kept_names: set[str] = set()

    def filename(self, member: str) -> str:
        if self.src.kind == "folder":
            return f"{self.src.url.rstrip('/')}/{member}"
        return f"{self.src.url}/{member}"

    def skip(self, m: Member, reason: str) -> None:
        self.skipped.append(self.filename(m.name), m.name, reason, int(m.size))

    def flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        batch = np.stack(self.pending)
        self.vectors.append(embed_batch(self.spec, batch, self.threads))
        self.dct_vectors.append(perceptual_batch(batch))
        self.timer.t["embed"] += time.perf_counter() - t0
        self.pending = []

    def add_group(self, key: str, group: list[Member]) -> None:
        images: list[Member] = []
        captions: list[Member] = []
        jsons: list[Member] = []
        for m in group:
            self.n_members += 1
            if m.kind != "file":
                self.skip(m, m.kind)
                continue
            last_ext = split_key(m.name)[1].rsplit(".", 1)[-1]
            if last_ext in IMAGE_EXTENSIONS:
                images.append(m)
            elif last_ext == "txt":
                captions.append(m)
            elif last_ext == "json":
                jsons.append(m)
            elif m.error_code is not None:
                self.skip(m, m.error_code)
            elif sniff_image(m.data):
                images.append(m)
            else:
                self.skip(m, "not_image" if m.data else "empty")
        caption = json_text = None
        for kind, found in (("caption", captions), ("json", jsons)):
            for i, m in enumerate(found):
                if not images:
                    self.skip(m, "orphan_sidecar")
                elif i > 0:
                    self.skip(m, "extra_sidecar")
                elif m.error_code is not None:
                    self.skip(m, m.error_code)
                else:
                    self.n_sidecars += 1
                    text = (m.data or b"").decode("utf-8", "replace")
                    if kind == "caption":
                        caption = text.strip()
                    else:
                        json_text = text
        for m in images:
            self.add_image(key, m, caption, json_text)

    def add_image(self, key: str, m: Member, caption: str | None, json_text: str | None) -> None:
        row: dict[str, Any] = {
            "filename": self.filename(m.name),
            "archive": self.src.url,
            "member": m.name,
            "key": key,
            "caption": caption,
            "json": json_text,
            "file_size": int(m.size if m.data is None else len(m.data)),
            "index": None,
            "member_offset": m.offset,
        }
        if m.data is None:
            row["error_code"] = m.error_code or "ERROR_READ_MEMBER"
            row["error_message"] = m.error
            self.rows.append(row)
            return
        row["md5"] = hashlib.md5(m.data).hexdigest()
        if self.cfg.keep_images:
            self.keep_image(m)
        t0 = time.perf_counter()
        d = decode_image(
            m.data,
            (self.spec.height, self.spec.width),
            max_image_pixels=self.cfg.max_image_pixels,
            min_image_size=self.cfg.min_image_size,
        )
        self.timer.t["decode"] += time.perf_counter() - t0
        row.update(width=d.width, height=d.height, error_code=d.error_code, error_message=d.message)
        if d.error_code == "VALID":
            row.update(d.stats or {}, pixel_md5=d.pixel_md5, input_md5=d.input_md5, index=self.n_valid)
            self.n_valid += 1
            self.pending.append(d.pixels)
            if len(self.pending) >= self.cfg.batch_size:
                self.flush()
        self.rows.append(row)

    def keep_image(self, m: Member) -> None:
        wd = WorkDir(self.task.work_dir, self.task.storage_options, self.cfg.storage_attempts,
                     self.cfg.storage_deadline)
        rel = safe_member_path(m.name)
        base, n = rel, 1
        while rel in self.kept_names:  # duplicate member names keep every copy
            stem, ext = posixpath.splitext(base)
            rel, n = f"{stem}~{n}{ext}", n + 1
        self.kept_names.add(rel)
        path = wd.join("tmp", self.src.name, rel)
        wd.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        wd.write_bytes(path, m.data or b"")

    def files_frame(self) -> pd.DataFrame:
        if not self.rows:
            return empty_files_frame()
        df = pd.DataFrame(self.rows)
        for col in FILE_COLUMNS:
            if col not in df:
                df[col] = None
        meta = empty_files_frame()
        return df.loc[:, list(FILE_COLUMNS)].astype(meta.dtypes.to_dict())


def _keep_archive(task: ArchiveTask) -> str:
    """Copy the archive to ``work_dir/tmp/archives/<name>`` once; return the copy's path or URL.

    Works for a local or an object-store work_dir (on the source's own store the copy is
    server-side). (Images kept with ``keep_images`` go to ``work_dir/tmp/<name>/``, as fastdup
    extracts them, so the archive copy cannot also be ``tmp/<name>``.)
    """
    cfg = task.config
    wd = WorkDir(task.work_dir, task.storage_options, cfg.storage_attempts, cfg.storage_deadline)
    dest = wd.url_of(wd.join("tmp", "archives", task.source.name))
    remote.copy_once(task.source.url, dest, task.storage_options, attempts=cfg.storage_attempts,
                     deadline=cfg.storage_deadline)
    return dest


def process_archive(task: ArchiveTask) -> pd.DataFrame:
    """Process one archive end to end and return its one-row summary.

    Parameters
    ----------
    task : ArchiveTask

    Returns
    -------
    DataFrame
        One row with the columns of :data:`SUMMARY_META`; ``status`` is ``done``, ``partial``
        (archive structure broken part-way; members before the break are kept) or ``failed``
        (nothing written but ``failed.json``).
    """
    tune_allocator()  # under a Dask nanny: see dedupdask.allocator
    t_start = time.perf_counter()
    src, cfg = task.source, task.config
    wd = WorkDir(task.work_dir, task.storage_options, cfg.storage_attempts, cfg.storage_deadline)
    state: _Archive | None = None
    archive_error: str | None = None
    try:
        spec = _resolve(cfg)
        state = _Archive(task, spec)
        local_path = _keep_archive(task) if cfg.keep_archives and src.kind != "folder" else None
        members = iter_members(
            src,
            task.storage_options,
            max_member_bytes=cfg.max_member_bytes,
            max_archive_bytes=cfg.max_archive_bytes,
            local_path=local_path,
            attempts=cfg.storage_attempts,
            deadline=cfg.storage_deadline,
        )
        try:
            for key, group in state.timer.timed_iter(group_samples(members), "read"):
                state.add_group(key, group)
        except ArchiveReadError as e:
            archive_error = str(e)
        state.flush()
        files = state.files_frame()
        d = spec.dim
        vectors = np.concatenate(state.vectors) if state.vectors else np.zeros((0, d), "<f4")
        dct = state.dct
        perceptual = (
            np.concatenate(state.dct_vectors) if state.dct_vectors else np.zeros((0, dct.dim), "<f4")
        )
        n_images, n_valid = len(files), state.n_valid
        counts = {
            "members": state.n_members,
            "images": n_images,
            "valid": n_valid,
            "invalid": n_images - n_valid,
            "sidecars": state.n_sidecars,
            "skipped": len(state.skipped),
        }
        if counts["members"] != n_images + counts["sidecars"] + counts["skipped"]:
            raise AssertionError(f"member accounting broken: {counts}")
        status = "partial" if archive_error else "done"
        t_write = time.perf_counter()
        timings = dict(state.timer.t)
        done = {
            "name": src.name,
            "url": src.url,
            "kind": src.kind,
            "status": status,
            "archive_error": archive_error,
            "counts": counts,
            "d": d,
            "model_id": spec.model_id,
            "model_sha256": spec.sha256,
            "model_threshold": spec.threshold,
            "model_ccthreshold": spec.ccthreshold,
            "perceptual": {
                "model_id": dct.model_id,
                "sha256": dct.sha256,
                "d": dct.dim,
                "input": f"{spec.height}x{spec.width}",
            },
            "decode_version": DECODE_VERSION,
            "dedupdask_version": __version__,
            "stats_version": STATS_VERSION,  # which per-image stats the Parquet file holds
        }

        def finish() -> dict[str, Any]:  # called when every file but done.json is written
            timings["write"] = time.perf_counter() - t_write
            timings["total"] = time.perf_counter() - t_start
            return {**done, "timings": dict(timings)}

        wd.remove_stale_tmp([src.name])  # a writer killed mid-file left <file>.tmp-<owner>
        wd.write_archive(src.name, vectors, files, state.skipped, finish, perceptual=perceptual)
        timings["write"] = time.perf_counter() - t_write  # done.json included
        timings["total"] = time.perf_counter() - t_start
        return _summary(src, status, counts, archive_error, timings)
    except Exception as e:  # storage, network, botocore...: the archive stays not-done
        message = f"{type(e).__name__}: {e}"
        info = {
            "name": src.name,
            "url": src.url,
            "error": message,
            "error_kind": remote.classify(e) or "error",
            "traceback": traceback.format_exc(limit=6),
            "dedupdask_version": __version__,
        }
        try:
            wd.write_failed(src.name, info)
        except Exception as e2:  # noqa: BLE001 - the summary row still carries the error
            message += f" (and failed.json could not be written: {e2})"
        timings = dict.fromkeys(_TIMINGS, 0.0)
        timings["total"] = time.perf_counter() - t_start
        return _summary(src, "failed", dict.fromkeys(_COUNTS, 0), message, timings)
    finally:
        if state is not None:
            state.skipped.close()


def _summary(
    src: ArchiveSource, status: str, counts: dict[str, int], error: str | None, timings: dict[str, float]
) -> pd.DataFrame:
    row = {
        "name": src.name,
        "url": src.url,
        "status": status,
        **{c: int(counts.get(c, 0)) for c in _COUNTS},
        "error": error,
        **{f"t_{t}": float(timings.get(t, 0.0)) for t in _TIMINGS},
    }
    return pd.DataFrame([row]).astype(SUMMARY_META.dtypes.to_dict())
