"""Galleries of a reference run: each query image beside the reference image it copies.

The pages of :mod:`dedupdask.galleries` (same HTML, inline in notebooks), for the cross pairs of
:class:`dedupdask.reference.ReferenceResult`, whose two images live in two work_dirs: each side's
rows are read from its own archives' Parquet files and its thumbnails with its own storage
options.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from .collect import read_archive_files
from .galleries import (
    _INFO_COLS,
    Gallery,
    _Card,
    _check_count,
    _e,
    _out_dir,
    _page,
    _Plan,
    _render,
    _Row,
    _sim,
    _thumb_opts,
    _write,
)
from .readback import read_thumbnails
from .results import RESULTS_DIR, RUN_JSON, _recorded_archives
from .store import WorkDir
from .verify_frames import image_info

__all__ = ["create_reference_gallery"]


def _side_info(wd: WorkDir, archives: list[Any], decode: int, ids: np.ndarray, key: Any) -> pd.DataFrame:
    """``_INFO_COLS`` and ``occ`` of global ``ids`` of one work_dir, indexed by ``key(id)``."""
    cols = [*(c for c in _INFO_COLS if c != "index"), "occ"]
    offsets = np.array([a.offset for a in archives], dtype=np.int64)
    pos = np.searchsorted(offsets, ids, side="right") - 1
    frames = []
    for p in sorted({int(x) for x in pos if x >= 0}):
        a = archives[p]
        info = image_info(read_archive_files((wd, a.name, a.offset, a.n_valid, decode)), cols)
        frames.append(info[info.index.isin(ids)])
    info = pd.concat(frames) if frames else pd.DataFrame(columns=cols)
    info.index = [key(int(i)) for i in info.index]
    return info


def create_reference_gallery(
    result: Any,
    save_path: str | os.PathLike[str],
    *,
    num_images: int = 20,
    kind: str | None = None,
    storage_options: dict[str, Any] | None = None,
    reference_storage_options: dict[str, Any] | None = None,
    max_side: int = 192,
    quality: int = 80,
) -> Gallery:
    """Write ``reference.html``: the most similar cross pairs, query image left, reference right.

    Parameters
    ----------
    result : ReferenceResult or str
        A reference run's result, or its query work_dir (read with :func:`dedupdask.load`).
    save_path : str
        Folder (or ``.html`` file) to write.
    num_images : int
        Pairs shown.
    kind : {"exact", "copy", "near"}, optional
        Only pairs of this kind.
    storage_options, reference_storage_options : dict, optional
        fsspec options of the query's and the reference's work_dirs and archives (the
        reference's default: the query's).
    max_side, quality : int
        Thumbnail size and JPEG quality.

    Returns
    -------
    Gallery

    Examples
    --------
    >>> g = create_reference_gallery(res, "galleries", num_images=10)  # doctest: +SKIP
    """
    from .results import load

    if isinstance(result, (str, os.PathLike)):
        result = load(os.fspath(result), storage_options)
    n = _check_count("num_images", num_images)
    so = dict(storage_options or {})
    rso = dict(so if reference_storage_options is None else reference_storage_options)
    sim = result.similarity[["from", "to", "similarity", "kind"]]
    if kind is not None:
        sim = sim[sim["kind"] == kind]
    top = sim.nlargest(n, "similarity").compute() if n else sim.head(0, compute=True)
    total = int(result.run.get("counts", {}).get("cross_pairs", len(top)))
    rows = [
        _Row(f"#{i + 1} &middot; {_e(k)} &middot; {_sim(float(s))}",
             [_Card(int(q), "query", shown=int(q)), _Card(-(int(r) + 1), "reference", shown=int(r))])
        for i, (q, r, s, k) in enumerate(zip(top["from"], top["to"], top["similarity"], top["kind"], strict=True))
    ]  # fmt: skip
    qwd = WorkDir(result.work_dir, so)
    ref_url = result.run["reference"]["work_dir"]
    rwd = WorkDir(ref_url, rso)
    rrun = rwd.read_json(rwd.join(RESULTS_DIR, RUN_JSON))
    q_arch = _recorded_archives(qwd.url, {"archives": result.run.get("archives", [])})
    r_arch = _recorded_archives(rwd.url, rrun)
    decode = int(result.run.get("decode_version", 2))
    qi = _side_info(qwd, q_arch, decode, top["from"].to_numpy(np.int64), lambda i: i)
    ri = _side_info(rwd, r_arch, decode, top["to"].to_numpy(np.int64), lambda i: -(i + 1))
    info = pd.concat([qi, ri])
    opts = _thumb_opts(max_side, quality)
    thumbs = {}
    for side, opt in ((qi, so), (ri, rso)):
        keys = {(str(r.archive), str(r.member), int(r.occ)) for r in side.itertuples()}
        thumbs.update(read_thumbnails(keys, opt, **opts))
    meta = (f"{len(rows)} of {total} cross pairs{'' if kind is None else f' of kind {_e(kind)}'}, most similar "
            f"first &middot; query <code>{_e(qwd.url)}</code> &middot; reference <code>{_e(ref_url)}</code>")  # fmt: skip
    plan = _Plan("reference", "Query images found in the reference", meta, rows, layout="pairs",
                 empty="no query image is in the reference")  # fmt: skip
    body, shown, missing = _render(plan, info, thumbs)
    out, fname = _out_dir(save_path, so)
    path = _write(out, fname or "reference.html", _page(plan.title, body))
    return Gallery(path, body, plan.title, len(rows), shown, missing)
