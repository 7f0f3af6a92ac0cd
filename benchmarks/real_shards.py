"""Benchmarks helper: webdataset tar shards of real packaged pictures with planted copies.

The originals are the packaged pictures of ``quality_families.py``
(:func:`family_data.load_pool`: scikit-image / scikit-learn photos, Debian wallpapers, Tux
Paint photo and cartoon stamps, Plasma wallpapers, Colobot textures, an Openclipart subset;
RGB on white, <= 512 px, one per picture), fetched once into the cache (``pip download`` /
``apt-get download``) by ``quality.py``'s loaders. A random ``1 - copies`` share of the
images are distinct originals (JPEG q90); the rest are one planted copy each of a random
original, the edit cycling through :data:`dedupdask.datasets.EDITS` (exact bytes, resize 50 %,
JPEG q30, crop 5 % per side, horizontal flip, brightness x1.2 -- what the sample shards and
``vs_fastdup.py --real-photos`` plant), written to another shard than its original.
``truth.csv`` (beside ``shards/``) names each image's origin, so a reported pair is *planted* when both images
come from one original and a look-alike otherwise. Used by ``scale_build.py --real``.

Usage::

    from real_shards import make_real_shards, pair_truth

    info = make_real_shards(Path("real3000"), 3000)  # real3000/shards/*.tar, real3000/truth.csv
    found = pair_truth(similarity_frame, info["truth"])
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CACHE = Path.home() / ".cache" / "dedupdask" / "quality"
TRUTH = "truth.csv"
TRUTH_COLUMNS = ["shard", "member", "role", "origin", "edit"]


def make_real_shards(
    root: Path,
    n: int,
    *,
    cache: Path = DEFAULT_CACHE,
    copies: float = 0.2,
    per_shard: int = 250,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write (or reuse) ``n`` images in tar shards under ``root/shards``; what was written.

    Returns ``{"shards": [paths], "truth": DataFrame of TRUTH_COLUMNS, "sources": {prefix:
    originals}, "edits": {edit: copies}}``. Raises ValueError when the pool holds fewer
    pictures than the originals asked for.
    """
    from bench_images import flatten
    from PIL import Image

    from dedupdask.datasets import EDITS, edit_image, write_shard

    key = json.dumps(dict(n=n, copies=copies, per_shard=per_shard, seed=seed))
    out, done = root / "shards", root / "done.json"
    if done.exists() and json.loads(done.read_text()).get("key") == key:
        truth = pd.read_csv(root / TRUTH, keep_default_na=False)
        return _about(out, truth)
    from family_data import load_pool

    pool, _ = load_pool(cache, log)
    n_copies = int(round(n * copies))
    n_orig = n - n_copies
    if n_orig > len(pool):
        raise ValueError(
            f"--real {n} needs {n_orig} distinct pictures ({1 - copies:.0%} originals); the "
            f"packaged pool holds {len(pool)} (at most --real {int(len(pool) / (1 - copies))})"
        )
    rng = np.random.default_rng(seed)
    names = sorted(pool)
    originals = [names[i] for i in rng.choice(len(names), n_orig, replace=False)]
    n_shards = max(2, -(-n // per_shard))
    shard_names = [f"{s:05d}.tar" for s in range(n_shards)]
    members: list[list[tuple[str, bytes]]] = [[] for _ in range(n_shards)]
    rows, home = [], {}
    for pos, name in enumerate(originals):
        shard = pos % n_shards
        data = _jpeg(flatten(pool[name]))
        members[shard] += [(f"o{pos:05d}.jpg", data), (f"o{pos:05d}.txt", name.encode())]
        rows.append((shard_names[shard], f"o{pos:05d}.jpg", "original", name, ""))
        home[name] = (shard, data)
    for j, src in enumerate(rng.choice(n_orig, n_copies, replace=n_copies > n_orig)):
        name = originals[int(src)]
        shard, data = home[name]
        edit = EDITS[j % len(EDITS)]
        img = Image.open(io.BytesIO(data)).convert("RGB")
        copy = data if edit == "exact" else edit_image(img, edit)
        target = (shard + 1 + int(rng.integers(0, n_shards - 1))) % n_shards
        members[target] += [(f"c{j:05d}.jpg", copy), (f"c{j:05d}.txt", b"")]
        rows.append((shard_names[target], f"c{j:05d}.jpg", "copy", name, edit))
    done.unlink(missing_ok=True)  # written last: a half-written set is never reused
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    for s in range(n_shards):  # originals and copies interleaved
        pairs = [members[s][i : i + 2] for i in range(0, len(members[s]), 2)]
        order = rng.permutation(len(pairs))
        write_shard(str(out / shard_names[s]), [m for i in order for m in pairs[i]], "tar")
    truth = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    truth.to_csv(root / TRUTH, index=False)
    done.write_text(json.dumps({"key": key}))
    return _about(out, truth)


def _jpeg(im: Any, q: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _about(out: Path, truth: pd.DataFrame) -> dict[str, Any]:
    orig = truth[truth["role"] == "original"]
    return {
        "shards": sorted(str(p) for p in out.glob("*.tar")),
        "truth": truth,
        "sources": orig["origin"].str.split("/").str[0].value_counts().to_dict(),
        "edits": truth.loc[truth["role"] == "copy", "edit"].value_counts().to_dict(),
    }


def pair_truth(similarity: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Recall of the planted copies among ``similarity``'s pairs (any kind) and the pairs
    that are not planted (their two images come from different originals).

    ``similarity`` needs ``archive_from, member_from, archive_to, member_to, kind``.
    """
    origin = {(s, m): o for s, m, o in truth[["shard", "member", "origin"]].itertuples(index=False)}
    orig_of = {o: (s, m) for s, m, r, o, _ in truth.itertuples(index=False) if r == "original"}
    ends = [
        [(os.path.basename(str(a)), str(m)) for a, m in zip(similarity[f"archive_{e}"], similarity[f"member_{e}"], strict=True)]
        for e in ("from", "to")
    ]  # fmt: skip
    found = {frozenset(p) for p in zip(*ends, strict=True)}
    unplanted = [
        (a, b, k)
        for a, b, k in zip(*ends, similarity["kind"], strict=True)
        if origin.get(a) is None or origin.get(a) != origin.get(b)
    ]
    copies = truth[truth["role"] == "copy"]
    hit = [
        frozenset([(s, m), orig_of[o]]) in found
        for s, m, o in copies[["shard", "member", "origin"]].itertuples(index=False)
    ]
    by_edit = (
        pd.DataFrame({"edit": copies["edit"].to_numpy(), "hit": hit}).groupby("edit")["hit"].agg(["mean", "size"])
    )  # fmt: skip
    kinds = pd.Series([k for *_, k in unplanted], dtype="object").value_counts().to_dict()
    return {
        "planted_pairs": len(hit),
        "recall": float(np.mean(hit)) if hit else float("nan"),
        "recall_by_edit": {e: [round(float(r["mean"]), 4), int(r["size"])] for e, r in by_edit.iterrows()},
        "found_pairs": len(similarity),
        "not_planted_pairs": len(unplanted),
        "not_planted_by_kind": {str(k): int(v) for k, v in kinds.items()},
        "not_planted_examples": [f"{origin.get(a)} ~ {origin.get(b)} ({k})" for a, b, k in unplanted[:5]],
    }
