"""Benchmark: copies shown on their side or upside down, dedupdask against fastdup 2.54.

A photo whose orientation tag one copy lost (or gained, or a user turned it by hand) is shown
turned by a quarter, a half or three quarters: the web's most common turned copy, which the
families of ``quality_families.py`` (tilts of 3-10 degrees, mirrors) do not make. Each packaged
picture of the families' pools -- the photos and wallpapers, and the Tux Paint stamps (most of
them drawings) -- gets one copy, turned by a quarter clockwise, a half, three quarters, or a
quarter and mirrored (cycling), resized to 70-100 % and saved as JPEG q75-90. Openclipart
drawings and game textures are added as distractors, enough for the run to whiten its
embedding as a large run does (:data:`dedupdask.whitening.MIN_IMAGES`). ``ddk.run()`` and
fastdup run at their defaults on the same shards.

Usage::

    python benchmarks/quality_orientation.py              # 8 shards, ~2,200 images
    python benchmarks/quality_orientation.py --no-fastdup

It prints, per edit (turn) and per kind of picture, the recall of the planted (original, copy)
pairs, how many of them dedupdask verified (a candidate) and rejected, the precision on pairs
involving a copy, and the false pairs between two originals. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import family_data as fdata  # noqa: E402
import quality_families as qf  # noqa: E402
import vs_fastdup  # noqa: E402

Edit = Callable[[Image.Image, np.random.Generator, list[Image.Image]], Image.Image]
"""An edit: (picture, generator, background pictures) -> the edited picture."""


def _turn(how: Image.Transpose) -> Edit:
    return lambda img, rng, backgrounds: img.transpose(how)


TURNS: dict[str, Edit] = {  # Image.Transpose.ROTATE_270 turns clockwise by a quarter
    "quarter": _turn(Image.Transpose.ROTATE_270),
    "half": _turn(Image.Transpose.ROTATE_180),
    "three quarters": _turn(Image.Transpose.ROTATE_90),
    "quarter, mirrored": _turn(Image.Transpose.TRANSPOSE),
}
PHOTOS = ("skimage/", "sklearn/", "deb/", "plasma-workspace-wallpapers/")
STAMPS = ("tuxpaint-stamps-default/",)
N_IMAGES = 2200  # originals, copies and distractors


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(cache: Path, root: Path, n_shards: int, seed: int, edits: dict[str, Edit] = TURNS,
          copies: int = 1) -> pd.DataFrame:  # fmt: skip
    """Write the shards and ``images.csv`` (key, role, source name, edit, kind): ``copies``
    copies of each source, the edits cycling, each then resized to 70-100 % and saved as JPEG
    q75-90 (a web copy is re-encoded)."""
    from dedupdask.datasets import write_shard

    pool, _ = fdata.load_pool(cache, log)
    rank = lambda n: fdata._h(f"{seed}:{n}")  # noqa: E731
    sources = sorted((n for n in pool if n.startswith(PHOTOS + STAMPS)), key=rank)
    dis = sorted((n for n in pool if n.startswith(qf.DISTRACTOR_PREFIXES) and not fdata.in_texture_series(n)), key=rank)
    n_dis = max(0, N_IMAGES - (1 + copies) * len(sources))
    backgrounds = [pool[n] for n in dis[n_dis : n_dis + 50]]  # pictures an edit may lay a copy on, not in the shards
    dis = dis[:n_dis]
    rng = np.random.default_rng(seed)
    labels = list(edits)
    items, rows = [], []
    for i, name in enumerate(sources):
        img = pool[name]
        kind = "photo or wallpaper" if name.startswith(PHOTOS) else "Tux Paint stamp"
        items.append((f"o{i:05d}", fdata._jpeg(img), "original", name, "", kind))
        for j in range(copies):
            label = labels[(i * copies + j) % len(labels)]
            c = edits[label](img, rng, backgrounds).convert("RGB")
            s = float(rng.uniform(0.7, 1.0))
            c = c.resize((max(16, round(c.width * s)), max(16, round(c.height * s))), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            c.save(buf, "JPEG", quality=int(rng.integers(75, 91)))
            items.append((f"c{i:05d}" + (f"_{j}" if copies > 1 else ""), buf.getvalue(), "copy", name, label, kind))
    for j, name in enumerate(dis):
        items.append((f"d{j:05d}", fdata._jpeg(pool[name]), "distractor", name, "", ""))
    order = rng.permutation(len(items))
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    members: list[list[tuple[str, bytes]]] = [[] for _ in range(n_shards)]
    for pos, k in enumerate(order):
        key, data, role, name, edit, kind = items[int(k)]
        shard = f"{pos % n_shards:05d}.tar"
        members[pos % n_shards].append((f"{key}.jpg", data))
        rows.append((f"{shard}/{key}.jpg", role, name, edit, kind))
    for s in range(n_shards):
        write_shard(str(tmp / f"{s:05d}.tar"), members[s], "tar")
    images = pd.DataFrame(rows, columns=["key", "role", "name", "edit", "kind"])
    images.to_csv(tmp / "images.csv", index=False)
    os.replace(tmp, root)
    return images


def run_dedupdask(root: Path, wd: Path, cores: int) -> dict[str, Any]:
    """``ddk.run(run_mode=0)`` with defaults: pairs and candidates as ``<shard>/<member>`` keys."""
    from distributed import Client, LocalCluster

    import dedupdask as ddk

    shutil.rmtree(wd, ignore_errors=True)
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:  # fmt: skip
        t0 = time.perf_counter()
        res = ddk.run(str(root), str(wd), run_mode=0, client=client, progress=False)
        seconds = time.perf_counter() - t0
        sim, cand = res.similarity.compute(), res.candidates.compute()
    key = lambda t, end: [f"{Path(a).name}/{m}" for a, m in zip(t[f"archive_{end}"], t[f"member_{end}"], strict=True)]  # noqa: E731
    pairs = {frozenset(p) for p in zip(key(sim, "from"), key(sim, "to"), strict=True)}
    cands = dict(zip(map(frozenset, zip(key(cand, "from"), key(cand, "to"), strict=True)), cand["verify_score"], strict=True))
    return {"pairs": pairs, "candidates": cands, "seconds": seconds, "whitened": res.run.get("whitening") is not None,
            "matcher": res.run.get("verification", {}).get("matcher", "")}  # fmt: skip


def score(images: pd.DataFrame, pairs: set[frozenset], cands: dict | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Each planted pair found (and, with ``cands``, verified) or not; precision and false pairs."""
    src = dict(zip(images["key"], images["name"], strict=True))
    role = dict(zip(images["key"], images["role"], strict=True))
    orig = images[images.role == "original"].set_index("name")["key"]
    cp = images[images.role == "copy"].copy()
    cp["pair"] = [frozenset((orig[n], k)) for n, k in zip(cp["name"], cp["key"], strict=True)]
    cp["found"] = cp["pair"].map(lambda p: p in pairs)
    if cands is not None:
        cp["candidate"] = cp["pair"].map(lambda p: p in cands)
    same = [len({src.get(k) for k in p}) == 1 for p in pairs]
    with_copy = [any(role.get(k) == "copy" for k in p) for p in pairs]
    n_copy = sum(with_copy)
    pp = sum(s for s, w in zip(same, with_copy, strict=True) if w) / n_copy if n_copy else float("nan")
    return cp, {"pairs": len(pairs), "pp": pp, "false": sum(not s for s in same),
                "false_originals": sum(not s and not w for s, w in zip(same, with_copy, strict=True))}  # fmt: skip


def main(argv: list[str] | None = None, *, edits: dict[str, Edit] = TURNS, copies: int = 1, name: str = "orientation",
         doc: str | None = None) -> int:  # fmt: skip
    """Build (or reuse) the shards of ``edits``, run both tools, print the tables (``name``:
    the script's and the cache folder's)."""
    ap = argparse.ArgumentParser(description=(doc or __doc__).splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dedupdask"
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cores", type=int, default=2, help="dedupdask workers = fastdup threads")
    ap.add_argument("--no-fastdup", action="store_true", help="skip fastdup (no install, no run)")
    ap.add_argument("--fastdup-python", default=None, help="interpreter for fastdup's venv (3.9-3.12)")
    ap.add_argument("--cache-dir", type=Path, default=cache_root / "quality", help="photos (shared with quality.py)")
    ap.add_argument("--fastdup-cache", type=Path, default=cache_root / "vs_fastdup", help="fastdup's venv")
    ap.add_argument("--work-root", type=Path, default=None, help=f"shards and work_dirs (default <cache-dir>/{name})")
    args = ap.parse_args(argv)
    work_root = (args.work_root or args.cache_dir / name).resolve()
    here = b"".join(Path(f).read_bytes() for f in (__file__, fdata.__file__, Path(__file__).with_name(f"quality_{name}.py")))
    key = hashlib.sha1(here + json.dumps([args.shards, args.seed, list(edits), copies]).encode()).hexdigest()[:12]
    root = work_root / f"shards-{key}"
    if not (root / "images.csv").exists():
        log(f"building shards in {root}")
        build(args.cache_dir, root, args.shards, args.seed, edits, copies)
    images = pd.read_csv(root / "images.csv", keep_default_na=False)
    log("dedupdask: ddk.run(run_mode=0), defaults")
    ddk = run_dedupdask(root, work_root / f"runs-{key}" / "dedupdask", args.cores)
    cp, sd = score(images, ddk["pairs"], ddk["candidates"])
    fd_cp = sf = None
    if not args.no_fastdup:
        log("fastdup 2.54: run_mode=1, run_mode=2, defaults")
        fd = qf.run_fastdup(root, work_root / f"runs-{key}" / "fastdup", args.cores, args.fastdup_cache, args.fastdup_python)
        fd_cp, sf = score(images, set(fd["pairs"]))

    counts = images.role.value_counts()
    print(f"# python benchmarks/quality_{name}.py {' '.join(sys.argv[1:] if argv is None else argv)}  "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")  # fmt: skip
    print(f"# {vs_fastdup.machine_line()}")
    print(f"images: {len(images)} in {args.shards} tar shards: {counts.get('original', 0)} originals, each with {copies} "
          f"edited cop{'y' if copies == 1 else 'ies'} ({counts.get('copy', 0)}), {counts.get('distractor', 0)} distractors "
          f"(openclipart drawings, game textures)")  # fmt: skip
    print(f"dedupdask {ddk['matcher']}: {sd['pairs']} pairs in {ddk['seconds']:.0f} s, embedding whitened: "
          f"{ddk['whitened']}" + (f"; fastdup 2.54: {sf['pairs']} pairs" if sf else ""))  # fmt: skip
    print()
    head = ["edit", "kind of original", "copies", "dedupdask recall", "candidates (verified)", "fastdup recall"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    kinds = ("photo or wallpaper", "Tux Paint stamp")
    groups = [(e, k) for e in edits for k in kinds] + [("all", k) for k in (*kinds, "all")]
    for e, k in groups:
        sel = (cp.edit == e if e != "all" else cp.edit != "") & (cp.kind == k if k != "all" else cp.kind != "")
        fr = f"{fd_cp.found[sel.to_numpy()].mean():.3f}" if fd_cp is not None else "-"
        bold = "**" if e == "all" else ""
        print(f"| {bold}{e}{bold} | {k} | {int(sel.sum())} | {bold}{cp.found[sel].mean():.3f}{bold} | "
              f"{cp.candidate[sel].mean():.3f} | {fr} |")  # fmt: skip
    print()
    for tool, s in (("dedupdask", sd), ("fastdup", sf)):
        if s:
            print(f"{tool}: precision on pairs involving a copy {s['pp']:.3f}; false pairs {s['false']} "
                  f"({s['false_originals']} between two originals)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
