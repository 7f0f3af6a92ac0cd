"""Benchmarks stage: per-image issue labels on real packaged images with planted junk.

Usage::

    python benchmarks/issues.py --fastdup > benchmarks/results/issues.txt   # the committed output
    python benchmarks/issues.py                # without fastdup 2.54's outliers.csv on the same shards
    python benchmarks/issues.py --reuse --work-root /tmp/issues   # re-analyse the same shards

1. Real images: every image ``benchmarks/quality_tiers.py`` gathers from packages (the
   photos and wallpapers of ``quality.py``, Tux Paint stamps, openclipart clip art, colobot
   game textures, KDE wallpapers; <= 512 px, one copy per identical picture), through its
   functions. A few (``--junk-copies`` per photo-derived kind, chosen by a hash of the name,
   never clip art) are held out as the sources of junk and are not part of the real set.
2. Planted junk, ``--junk-copies`` (default 8) distinct images of each **tuning** kind: ``blank``
   (empty white or paper-tinted page), ``solid`` (one random colour), ``noise`` (uniform RGB
   noise), ``text`` (words in black on white, nothing else), ``tiny`` (a 16 px thumbnail),
   ``strip`` (a 512 x 16 or 16 x 512 sliver), ``blurred`` (Gaussian blur, radius 10-16),
   ``near_black`` (exposure x0.02-0.05) and ``near_white`` (the same towards white). Then as
   many of each **held-out** kind (:data:`HELD_OUT_KINDS`), generated differently and never
   used to pick a cut-off, so they say whether a mechanism generalises: ``text_page`` (serif,
   mono, bold or italic fonts, grey-blue ink on cream, title and paragraphs), ``quote`` (2-4
   large centred lines on a coloured background), ``screenshot`` (title bar, side menu, small
   UI text), ``gauss_noise``, ``salt_pepper``, ``blotches`` (random colours at 4-12 px),
   ``motion_blur`` (30-60 px line kernel), ``box_blur``, ``defocus`` (disk kernel),
   ``faint_page`` (a near-blank page with a faint gradient and scanner speckle),
   ``gradient`` (two colours), ``tiny_other`` (10-32 px thumbnails, any aspect) and
   ``strip_other`` (600-900 x 12-40). The cut-offs come from the real images' score
   quantiles and the tuning kinds only.
3. Everything as 8 tar shards (JPEG q90; PNG for text, tiny and half the blank/solid
   pages), junk at random places; ``ddk.run`` end to end with the default model.
4. Per issue type: the share of each junk kind it flags (recall) and the share of the real
   images it flags, per source (photos, textures, stamps, clip art), for the tuning and the
   held-out kinds; the score quantiles of
   the real images behind the cut-offs of :data:`dedupdask.thresholds.ISSUE_TABLE`; the
   outlier groups at several ``outlier_link`` values; the junk-like types' recall on fresh
   draws of every kind (``--fresh-seeds``, from the statistics alone); and, with ``--fastdup``, how many junk
   images fastdup's and dedupdask's ``outliers.csv`` list. Galleries per issue type are
   written next to the work_dir (``--galleries``).

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
if importlib.util.find_spec("dedupdask") is None:  # a checkout without an install; an installed or
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # PYTHONPATH tree is not overridden

import quality  # noqa: E402  - same folder: the packaged photos
import quality_tiers  # noqa: E402  - same folder: the extra packaged images

JUNK_KINDS = (
    "blank", "solid", "noise", "text", "tiny", "strip", "blurred", "near_black", "near_white",
)  # fmt: skip
HELD_OUT_KINDS = (
    "text_page", "quote", "screenshot", "gauss_noise", "salt_pepper", "blotches", "motion_blur",
    "box_blur", "defocus", "faint_page", "gradient", "tiny_other", "strip_other",
)  # fmt: skip
PHOTO_DERIVED = ("tiny", "strip", "blurred", "near_black", "near_white")
HELD_OUT_PHOTO_DERIVED = ("motion_blur", "box_blur", "defocus", "tiny_other", "strip_other")
JUNK_LIKE = ("low_information", "odd_size", "odd_aspect_ratio")  # the issue's "junk-like" types
FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
WORDS = (
    "the quick brown fox jumps over lazy dog lorem ipsum dolor sit amet data image shard "
    "archive clean label score group outlier dark light blurry size ratio sample"
).split()
LINKS = (0.8, 0.85, 0.9, 0.95)  # outlier_link values compared


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little")


def source_group(name: str) -> str:
    """Which kind of real image a packaged name is (for the per-source shares)."""
    if name.startswith("openclipart"):
        return "clip art"
    if name.startswith("tuxpaint"):
        return "stamps"
    if name.startswith("colobot"):
        return "textures"
    return "photos"  # scikit-image, scikit-learn, Debian and KDE wallpapers


# -- junk ----------------------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for p in FONT_PATHS:
        try:
            return ImageFont.truetype(p, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(320, 513)), int(rng.integers(240, 513))


def make_junk(kind: str, photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One planted junk picture of ``kind`` (``photo``: the real picture some kinds start from)."""
    if kind == "blank":  # an empty page: white or paper-tinted, nothing on it
        tone = int(rng.integers(235, 256))
        return Image.new("RGB", _size(rng), (tone, tone, max(0, tone - int(rng.integers(0, 6)))))
    if kind == "solid":
        return Image.new("RGB", _size(rng), tuple(int(v) for v in rng.integers(0, 256, 3)))
    if kind == "noise":
        w, h = _size(rng)
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if kind == "text":  # text only: dark words on a white page
        w, h = _size(rng)
        im = Image.new("RGB", (w, h), (255, 255, 255))
        draw = ImageDraw.Draw(im)
        fs = int(rng.integers(14, 30))
        font = _font(fs)
        y = int(rng.integers(5, 25))
        while y < h - fs:
            line = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
            draw.text((int(rng.integers(5, 30)), y), line, fill=(0, 0, 0), font=font)
            y += int(fs * rng.uniform(1.3, 1.8))
        return im
    if kind == "tiny":  # a 16 px thumbnail (at least 10 px a side: smaller is an invalid image)
        w, h = photo.size
        size = (16, max(10, round(16 * h / w))) if w >= h else (max(10, round(16 * w / h)), 16)
        return photo.resize(size, Image.Resampling.LANCZOS)
    if kind == "strip":  # a 512 x 16 (or 16 x 512) sliver of a picture
        im = photo.resize((512, 512), Image.Resampling.BILINEAR)
        off = int(rng.integers(0, 512 - 16))
        if rng.uniform() < 0.5:
            return im.crop((0, off, 512, off + 16))
        return im.crop((off, 0, off + 16, 512))
    if kind == "blurred":
        return photo.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(10, 16))))
    if kind == "near_black":  # exposure almost nothing: every level below ~13
        a = np.asarray(photo, dtype=np.float32) * float(rng.uniform(0.02, 0.05))
        return Image.fromarray(a.round().astype(np.uint8), "RGB")
    if kind == "near_white":  # burnt out: every level above ~242
        a = 255.0 - (255.0 - np.asarray(photo, dtype=np.float32)) * float(rng.uniform(0.02, 0.05))
        return Image.fromarray(a.round().astype(np.uint8), "RGB")
    raise ValueError(kind)


# Held-out kinds: generated differently from the tuning kinds (other fonts, layouts, noise
# models, blur kernels, sizes) and never used to pick a cut-off; they say whether the
# mechanisms generalise beyond the pictures they were tuned on.
HELD_OUT_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Italic.ttf",
)


def _held_font(rng: np.random.Generator, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for p in rng.permutation(list(HELD_OUT_FONTS)):
        try:
            return ImageFont.truetype(str(p), size)
        except OSError:
            continue
    return _font(size)


def _paragraphs(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rng: np.random.Generator,
                font, fs: int, ink: tuple[int, int, int], *, centred: bool = False) -> None:  # fmt: skip
    """Lines of words inside ``box`` (x0, y0, x1, y1), with paragraph breaks."""
    x0, y0, x1, y1 = box
    y = y0
    while y < y1 - fs:
        words = list(rng.choice(WORDS, int(rng.integers(2, 14))))
        line = " ".join(words)
        while len(words) > 1 and draw.textlength(line, font=font) > x1 - x0:
            words.pop()
            line = " ".join(words)
        width = draw.textlength(line, font=font)
        x = x0 + (x1 - x0 - width) / 2 if centred else x0
        draw.text((x, y), line, fill=ink, font=font)
        y += int(fs * rng.uniform(1.2, 1.6)) + (int(fs * 1.2) if rng.uniform() < 0.15 else 0)


def _blur_kernel(photo: Image.Image, kernel: np.ndarray) -> Image.Image:
    """``photo`` convolved with ``kernel`` (FFT, edges wrap; the kernel sums to 1)."""
    a = np.asarray(photo, dtype=np.float64)
    h, w = a.shape[:2]
    k = np.zeros((h, w))
    kh, kw = kernel.shape
    k[:kh, :kw] = kernel
    k = np.roll(k, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    f = np.fft.rfft2(k)
    out = np.stack([np.fft.irfft2(np.fft.rfft2(a[..., c]) * f, s=(h, w)) for c in range(3)], axis=-1)
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8), "RGB")


def make_held_out(kind: str, photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One held-out junk picture of ``kind`` (see :data:`HELD_OUT_KINDS`)."""
    w, h = _size(rng)
    if kind == "text_page":  # a printed page: serif/mono fonts, grey-blue ink on cream, margins
        paper = tuple(int(v) for v in (rng.integers(236, 256), rng.integers(232, 252), rng.integers(215, 245)))
        w, h = int(rng.integers(360, 641)), int(rng.integers(460, 801))
        im = Image.new("RGB", (w, h), paper)
        draw = ImageDraw.Draw(im)
        fs = int(rng.integers(10, 22))
        ink = tuple(int(v) for v in rng.integers(10, 90, 3))
        m = int(rng.integers(15, 60))
        title = _held_font(rng, int(fs * 1.8))
        draw.text((m, m), " ".join(rng.choice(WORDS, 3)).title(), fill=ink, font=title)
        _paragraphs(draw, (m, m + int(fs * 3.2), w - m, h - m), rng, _held_font(rng, fs), fs, ink)
        return im
    if kind == "quote":  # a few large centred lines on a coloured background
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        ink = (255, 255, 255) if sum(bg) < 384 else (20, 20, 20)
        im = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(im)
        fs = int(rng.integers(24, 44))
        lines = int(rng.integers(2, 5))
        top = (h - lines * int(fs * 1.4)) // 2
        _paragraphs(draw, (20, max(10, top), w - 20, min(h - 10, top + lines * int(fs * 1.4) + fs)), rng,
                    _held_font(rng, fs), fs, ink, centred=True)  # fmt: skip
        return im
    if kind == "screenshot":  # a light UI page: title bar, side menu, lines of small text
        w, h = int(rng.integers(480, 801)), int(rng.integers(320, 601))
        im = Image.new("RGB", (w, h), (int(rng.integers(240, 256)),) * 3)
        draw = ImageDraw.Draw(im)
        bar = tuple(int(v) for v in rng.integers(30, 200, 3))
        draw.rectangle((0, 0, w, 22), fill=bar)
        fs = int(rng.integers(11, 16))
        font = _held_font(rng, fs)
        menu = int(rng.integers(90, 160))
        draw.line((menu, 22, menu, h), fill=(200, 200, 200))
        _paragraphs(draw, (8, 32, menu - 6, h - 8), rng, font, fs, (60, 60, 60))
        _paragraphs(draw, (menu + 12, 32, w - 12, h - 8), rng, font, fs, (20, 20, 20))
        return im
    if kind == "gauss_noise":  # Gaussian noise around a random level, grey or colour
        mu, sd = rng.uniform(60, 200), rng.uniform(15, 60)
        shape = (h, w, 3) if rng.uniform() < 0.5 else (h, w, 1)
        a = np.broadcast_to(rng.normal(mu, sd, shape), (h, w, 3))
        return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8), "RGB")
    if kind == "salt_pepper":  # a grey page with 5-30 % of the pixels black or white
        a = np.full((h, w), int(rng.integers(90, 170)), np.uint8)
        hit = rng.uniform(size=(h, w)) < rng.uniform(0.05, 0.3)
        a[hit] = np.where(rng.uniform(size=int(hit.sum())) < 0.5, 0, 255)
        return Image.fromarray(a, "L").convert("RGB")
    if kind == "blotches":  # coloured noise at a coarser scale: random colour blobs
        f = int(rng.integers(4, 13))
        small = rng.integers(0, 256, (h // f + 2, w // f + 2, 3), dtype=np.uint8)
        return Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    if kind == "motion_blur":  # a line kernel 30-60 px long at a random angle
        n = int(rng.integers(30, 61))
        ang = rng.uniform(0, np.pi)
        k = np.zeros((n, n))
        t = np.linspace(-(n - 1) / 2, (n - 1) / 2, 4 * n)
        k[np.round(n // 2 + t * np.sin(ang)).astype(int), np.round(n // 2 + t * np.cos(ang)).astype(int)] = 1
        return _blur_kernel(photo, k / k.sum())
    if kind == "box_blur":
        return photo.filter(ImageFilter.BoxBlur(float(rng.uniform(8, 14))))
    if kind == "defocus":  # a disk kernel: an out-of-focus lens
        r = float(rng.uniform(8, 14))
        n = int(2 * np.ceil(r) + 1)
        yy, xx = np.mgrid[:n, :n] - n // 2
        k = (xx * xx + yy * yy <= r * r).astype(np.float64)
        return _blur_kernel(photo, k / k.sum())
    if kind == "faint_page":  # a near-blank scan: faint gradient, scanner speckle
        top, bottom = rng.uniform(215, 245), rng.uniform(235, 255)
        ramp = np.linspace(top, bottom, h)[:, None, None] + np.zeros((1, w, 3))
        ramp[..., 2] -= rng.uniform(0, 8)
        a = ramp + rng.normal(0, 1.5, ramp.shape)
        dots = rng.uniform(size=(h, w)) < rng.uniform(0.0005, 0.004)
        a[dots] = rng.uniform(40, 160)
        return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8), "RGB")
    if kind == "gradient":  # a smooth two-colour gradient, nothing else
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[:h, :w]
        t = (xx * np.cos(ang) + yy * np.sin(ang)).astype(np.float64)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        a = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
        return Image.fromarray(a.round().astype(np.uint8), "RGB")
    if kind == "tiny_other":  # thumbnails of 10-32 px, any aspect
        side = int(rng.integers(10, 33))
        other = int(rng.integers(10, side + 1))
        return photo.resize((side, other) if rng.uniform() < 0.5 else (other, side), Image.Resampling.BICUBIC)
    if kind == "strip_other":  # slivers of other sizes: 600-900 x 12-40
        long, short = int(rng.integers(600, 901)), int(rng.integers(12, 41))
        long = max(long, short * 15)
        im = photo.resize((long, long), Image.Resampling.BILINEAR)
        off = int(rng.integers(0, long - short))
        return im.crop((0, off, long, off + short)) if rng.uniform() < 0.5 else im.crop((off, 0, off + short, long))
    raise ValueError(kind)


def encode(im: Image.Image, kind: str, copy: int) -> tuple[str, bytes]:
    """(extension, bytes): JPEG q90; PNG for text, tiny, screenshots and every other blank/solid
    page, quote, faint page and gradient (a held-out text page is a JPEG, like a scan)."""
    buf = io.BytesIO()
    png = ("text", "tiny", "screenshot", "tiny_other")
    if kind in png or (kind in ("blank", "solid", "quote", "faint_page", "gradient") and copy % 2):
        im.save(buf, "PNG")
        return "png", buf.getvalue()
    im.save(buf, "JPEG", quality=90)
    return "jpg", buf.getvalue()


# -- shards --------------------------------------------------------------------------------------
def build_shards(photos: dict[str, Image.Image], out: Path, *, copies: int, seed: int,
                 n_shards: int = 8) -> pd.DataFrame:  # fmt: skip
    """Write the real images and the junk as tar shards; return ``key, kind, group, name``."""
    from dedupdask.datasets import write_shard

    rng = np.random.default_rng(seed)
    names = sorted(photos)
    donors = sorted((n for n in names if source_group(n) != "clip art"), key=_h)
    held = donors[: copies * len(PHOTO_DERIVED)]  # the held-out kinds reuse them, in reverse
    real = [n for n in names if n not in set(held)]
    items: list[tuple[str, str, str, bytes, str]] = []  # kind, group, name, bytes, ext
    for n in real:
        buf = io.BytesIO()
        photos[n].save(buf, "JPEG", quality=90)
        items.append(("real", source_group(n), n, buf.getvalue(), "jpg"))
    donor = iter(held)
    for kind in JUNK_KINDS:
        for c in range(copies):
            src = photos[next(donor)] if kind in PHOTO_DERIVED else photos[held[0]]
            ext, data = encode(make_junk(kind, src, rng), kind, c)
            items.append((kind, "junk", f"{kind}{c}", data, ext))
    donor = iter(held[::-1])
    for kind in HELD_OUT_KINDS:
        for c in range(copies):
            src = photos[next(donor)] if kind in HELD_OUT_PHOTO_DERIVED else photos[held[0]]
            ext, data = encode(make_held_out(kind, src, rng), kind, c)
            items.append((kind, "held_out", f"{kind}{c}", data, ext))
    order = rng.permutation(len(items))
    members: list[list[tuple[str, bytes]]] = [[] for _ in range(n_shards)]
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for pos, i in enumerate(order):
        kind, group, name, data, ext = items[int(i)]
        shard = pos % n_shards
        key = f"{'j' if kind != 'real' else 'r'}{pos:06d}"
        members[shard].append((f"{key}.{ext}", data))
        members[shard].append((f"{key}.txt", name.encode()))
        rows.append((f"{shard:05d}.tar/{key}.{ext}", kind, group, name))
    for s in range(n_shards):
        write_shard(str(out / f"{s:05d}.tar"), members[s])
    truth = pd.DataFrame(rows, columns=["key", "kind", "group", "name"])
    truth.to_csv(out / "images.csv", index=False)
    return truth


def shard_key(filename: str) -> str:
    """``<shard name>/<member>`` of ``<shard path>/<member>``."""
    parts = str(filename).split("/")
    return f"{parts[-2]}/{parts[-1]}"


# -- evaluation ------------------------------------------------------------------------------------
def per_type(issues: pd.DataFrame, images: pd.DataFrame, types: list[str],
             kinds: tuple[str, ...] = JUNK_KINDS) -> pd.DataFrame:  # fmt: skip
    """Rows: issue types (+ "any"); columns: recall per junk kind of ``kinds``, their recall
    together, real shares."""
    flagged = {t: set(issues.loc[issues["issue"] == t, "key"]) for t in types}
    flagged["any"] = set().union(*flagged.values()) if flagged else set()
    flagged["any but grayscale"] = set().union(*(v for t, v in flagged.items() if t not in ("any", "grayscale")))
    flagged["any junk-like"] = set().union(*(flagged.get(t, set()) for t in JUNK_LIKE))
    flagged["junk-like or noisy"] = flagged["any junk-like"] | flagged.get("noisy", set())
    junk = images[images["kind"].isin(kinds)]
    real = images[images["kind"] == "real"]
    out = []
    for t, keys in flagged.items():
        row = {"type": t}
        for kind in kinds:
            sel = junk.loc[junk["kind"] == kind, "key"]
            row[kind] = sel.isin(keys).mean()
        row["junk"] = junk["key"].isin(keys).mean()
        row["real"] = real["key"].isin(keys).mean()
        for g in ("photos", "textures", "stamps", "clip art"):
            row[g] = real.loc[real["group"] == g, "key"].isin(keys).mean()
        out.append(row)
    return pd.DataFrame(out).set_index("type")


def fmt_table(df: pd.DataFrame, pct: bool = True) -> str:
    cols = list(df.columns)
    lines = ["| type | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for t, r in df.iterrows():
        cells = [f"{100 * v:.1f} %" if pct else f"{v:.3g}" for v in r]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grey_truth(photos: dict[str, Image.Image], names: list[str]) -> set[str]:
    """Names of the real images that are grey: the 99th percentile of max - min over R, G, B is
    at most 2 in the packaged file (before any JPEG)."""
    out = set()
    for n in names:
        a = np.asarray(photos[n].convert("RGB"), dtype=np.int16)
        if np.percentile(a.max(axis=2) - a.min(axis=2), 99) <= 2:
            out.add(n)
    return out


def outlier_links(wd: str, images: pd.DataFrame, links: tuple[float, ...], cutoff: float) -> list[str]:
    """The outlier score of every image at several ``outlier_link`` values (from the kNN graph)."""
    from dedupdask.analyses import exact_groups
    from dedupdask.analyses.groups import outlier_groups, search_outside
    from dedupdask.analyses.tiers import TIER_K
    from dedupdask.collect import collect
    from dedupdask.config import RunConfig
    from dedupdask.knn_partitioned import knn_graph_work_dir

    col = collect(wd)
    files = col.files_frame(["md5", "pixel_md5", "index", "filename"])
    valid = files[files["index"].notna()].sort_values("index").reset_index(drop=True)
    groups = exact_groups(valid["md5"], valid["pixel_md5"])
    reps = groups.reps
    nbr_idx, nbr_sim, _, _ = knn_graph_work_dir(col, reps, TIER_K, config=RunConfig(run_mode=2, progress=False))
    keys = valid["filename"].map(shard_key).to_numpy()
    kind = images.set_index("key").reindex(keys)
    is_junk = (kind["kind"] != "real").to_numpy()
    lines = []
    for link in links:
        og = outlier_groups(groups, reps, nbr_idx, nbr_sim, link=link, max_size=10**9,
                            search=lambda q, lab: search_outside(col, q, lab))  # fmt: skip
        s = np.clip(og.similarity, 0, 1)
        real_s = s[~is_junk & np.isfinite(s)]
        qs = {q: float(np.quantile(real_s, q)) for q in (0.005, 0.01, 0.02, 0.05)}
        parts = []
        for kd in JUNK_KINDS:
            sel = (kind["kind"] == kd).to_numpy()
            parts.append(f"{kd} {np.nanmedian(s[sel]):.2f}/{int(np.nanmax(og.size[sel]))}")
        big = og.size[is_junk]
        below = (s < cutoff) & np.isfinite(s)
        lines.append(
            f"link {link}: real score quantiles 0.5 % {qs[0.005]:.3f}, 1 % {qs[0.01]:.3f}, "
            f"2 % {qs[0.02]:.3f}, 5 % {qs[0.05]:.3f}; below {cutoff}: {100 * below[~is_junk].mean():.2f} % "
            f"of the real images, {int(below[is_junk].sum())} junk; junk median score / largest group: "
            + ", ".join(parts) + f"; largest real group {int(og.size[~is_junk].max())}, "
            f"junk groups up to {int(big.max())} images; {og.searched} members searched"
        )
    return lines


def low_information_part(res) -> dict[int, str]:
    """Index -> ``" (<part>)"``: which part of ``low_information`` is the lowest (the one that
    flags it), when the scores have parts."""
    sc = res.issue_scores.compute()
    cols = [c for c in sc.columns if c.startswith("low_information_")]
    if not cols:
        return {}
    low = sc[cols].idxmin(axis=1).str.replace("low_information_", "")
    return {int(i): f" ({p})" for i, p in zip(sc["index"], low, strict=True)}


def score_quantiles(res, images: pd.DataFrame) -> list[str]:
    """Quantiles of the real images' scores per statistics type, and the junk's medians."""
    from dedupdask.analyses import issues as mod

    parts = [f"low_information_{p}" for p in getattr(mod, "LOW_INFORMATION_PARTS", ())]
    sc = res.issue_scores.compute()
    names = res.files[["index", "filename"]].compute().dropna()
    key = pd.Series(names["filename"].map(shard_key).to_numpy(), index=names["index"].astype("int64").to_numpy())
    sc["key"] = key.reindex(sc["index"]).to_numpy()
    sc = sc.merge(images[["key", "kind", "group"]], on="key", how="left")
    real = sc[sc["kind"] == "real"]
    cut = res.run["issues"]["resolved"]
    lines = ["| type | cut-off | real 0.1 % | 0.5 % | 1 % | 2 % | 5 % | real below cut-off | junk below cut-off |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in (*mod.STAT_ISSUES, *parts):
        c = cut[t if t in cut else "low_information"]
        r = real[t].dropna()
        q = [r.quantile(p) for p in (0.001, 0.005, 0.01, 0.02, 0.05)]
        below = sc[sc[t] < c]
        jk = below[below["kind"] != "real"]["kind"].value_counts()
        lines.append(
            f"| {t} | {c} | " + " | ".join(f"{v:.3f}" for v in q)
            + f" | {100 * (r < c).mean():.2f} % | "
            + (", ".join(f"{k} {v}" for k, v in jk.items()) or "none") + " |"
        )
    return lines


def fresh_draws(photos: dict[str, Image.Image], res, *, seeds: tuple[int, ...], copies: int) -> list[str]:
    """Recall of the junk-like types on fresh draws of every junk kind (new seeds, ``copies``
    per kind), from the statistics alone: decoded at the model's input size and scored with
    the run's median side and cut-offs, without shards or embeddings. It says how much the
    recall of the committed draw owes to luck."""
    from dedupdask.analyses.issues import image_scores
    from dedupdask.decode import decode_image
    from dedupdask.models import resolve_model

    spec = resolve_model(res.run["model"].get("model_id"))
    cut = res.run["issues"]["resolved"]
    ref = float(res.run["issues"]["size_reference"])
    donors = sorted((n for n in photos if source_group(n) != "clip art"), key=_h)[: 5 * copies]
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        for kind in (*JUNK_KINDS, *HELD_OUT_KINDS):
            make = make_junk if kind in JUNK_KINDS else make_held_out
            for c in range(copies):
                ext, data = encode(make(kind, photos[donors[int(rng.integers(0, len(donors)))]], rng), kind, c)
                d = decode_image(data, (spec.height, spec.width))
                rows.append({"seed": seed, "kind": kind, "width": d.width, "height": d.height, **(d.stats or {})})
    df = pd.DataFrame(rows).assign(index=lambda f: np.arange(len(f)))
    sc = image_scores(df, ref)
    df["hit"] = ((sc["low_information"] < cut["low_information"]) | (sc["odd_size"] < cut["odd_size"])
                 | (sc["odd_aspect_ratio"] < cut["odd_aspect_ratio"])).to_numpy()  # fmt: skip
    by = df.pivot_table(index="kind", columns="seed", values="hit", aggfunc="mean")
    lines = ["| kind | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for kind in (*JUNK_KINDS, *HELD_OUT_KINDS):
        lines.append(f"| {kind} | " + " | ".join(f"{100 * by.loc[kind, s]:.1f} %" for s in seeds) + " |")
    for name, kinds in (("tuning kinds", JUNK_KINDS), ("held-out kinds", HELD_OUT_KINDS)):
        got = df[df["kind"].isin(kinds)].groupby("seed")["hit"].mean()
        lines.append(f"| **{name}** | " + " | ".join(f"**{100 * got[s]:.1f} %**" for s in seeds) + " |")
    return lines


# -- fastdup ---------------------------------------------------------------------------------------
def fastdup_outliers(shards: Path, work: Path, cache: Path, cores: int) -> list[str]:
    """fastdup 2.54 run_mode=1+2 on the shards; its outliers, strongest first, as shard keys."""
    import vs_fastdup  # noqa: PLC0415 - same folder

    py = vs_fastdup.fastdup_python(cache, None)
    script = work / "fastdup_child.py"
    script.write_text(vs_fastdup.FASTDUP_CHILD)
    wd = work / "fastdup"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    env = {**os.environ, "SENTRY_OPT_OUT": "1"}
    for mode in (1, 2):
        out = work / f"fastdup.mode{mode}.json"
        a = {"input_dir": str(shards), "work_dir": str(wd), "run_mode": mode, "cores": cores, "k": 2,
             "turi_param": None, "out": str(out)}  # fmt: skip
        vs_fastdup.run_step([str(py), str(script), json.dumps(a)], out.with_suffix(".log"), work, env)
    names = vs_fastdup.FastdupNames(vs_fastdup.list_shards(shards))
    return vs_fastdup.fastdup_tables(wd, names)[1]


def junk_in(listed: list[str], images: pd.DataFrame, top: int) -> str:
    kind = images.set_index("key")["kind"]
    got = kind.reindex(listed[:top]).dropna()
    junk = got[got != "real"]
    by = junk.value_counts()
    return (f"{len(junk)} junk of {min(top, len(listed))} listed"
            + (f" ({', '.join(f'{k} {v}' for k, v in by.items())})" if len(by) else ""))


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dedupdask" / "quality")
    ap.add_argument("--fastdup-cache", type=Path, default=Path.home() / ".cache" / "dedupdask" / "vs_fastdup")
    ap.add_argument("--work-root", type=Path, default=None, help="shards + work_dir (default: a temp dir)")
    ap.add_argument("--junk-copies", type=int, default=8, help="planted images per junk kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="reuse the shards and features under --work-root")
    ap.add_argument("--fastdup", action="store_true", help="also run fastdup 2.54 on the same shards")
    ap.add_argument("--galleries", type=Path, default=None, help="folder for the galleries (default: <work-root>/galleries)")
    ap.add_argument("--client", default=None, help="scheduler (default: a local cluster)")
    ap.add_argument("--fresh-seeds", type=int, default=3, help="fresh draws of every junk kind (0: none)")
    ap.add_argument("--fresh-copies", type=int, default=16, help="images per kind in each fresh draw")
    args = ap.parse_args(argv)

    import dedupdask as ddk
    from dedupdask.thresholds import ISSUE_TYPES, issue_row_for

    root = (args.work_root or Path(tempfile.mkdtemp(prefix="dedupdask-issues-"))).resolve()
    shards, wd = root / "shards", root / "work"
    photos = {k: v for k, v in quality.load_photos(args.cache_dir, log).items() if k != quality.STEREO[0]}
    photos.update(quality_tiers.load_extra_photos(args.cache_dir, log))
    photos = quality_tiers.dedupe_pixels(photos)
    if args.reuse and (shards / "images.csv").exists():
        images = pd.read_csv(shards / "images.csv")
    else:
        shutil.rmtree(root / "shards", ignore_errors=True)
        shutil.rmtree(wd, ignore_errors=True)
        images = build_shards(photos, shards, copies=args.junk_copies, seed=args.seed)
    t0 = time.perf_counter()
    if args.reuse and (wd / "results" / "run.json").exists():
        what = "analysis only, features reused"
        res = ddk.run(None, str(wd), run_mode=2, progress=False, client=args.client)
    else:
        what = "extract + analyse"
        res = ddk.run(str(shards), str(wd), progress=False, client=args.client)
    t_run = time.perf_counter() - t0
    issues = res.issues.compute()
    issues = issues.assign(key=issues["filename"].map(shard_key))
    real = images[images["kind"] == "real"]
    p = print
    p(f"# Output of benchmarks/issues.py (seed {args.seed}, {args.junk_copies} copies per junk kind)")
    try:
        la = os.getloadavg()
        p(f"# machine: {os.cpu_count()} CPUs, load average {la[0]:.1f} {la[1]:.1f} (other jobs ran too)")
    except OSError:
        pass
    p("")
    by_group = real["group"].value_counts()
    p(f"real images: {len(real)} ({', '.join(f'{g} {n}' for g, n in by_group.items())}); photos = "
      "scikit-image/scikit-learn samples and Debian/KDE wallpapers, textures = colobot, stamps = "
      "Tux Paint, clip art = openclipart")  # fmt: skip
    n_tune = int(images["kind"].isin(JUNK_KINDS).sum())
    p(f"planted junk: {len(images) - len(real)}: {n_tune} of the tuning kinds ({args.junk_copies} each of "
      f"{', '.join(JUNK_KINDS)}) and {len(images) - len(real) - n_tune} of the held-out kinds, never used "
      f"to pick a cut-off ({args.junk_copies} each of {', '.join(HELD_OUT_KINDS)}); "
      f"{len(images)} images in {len(list(shards.glob('*.tar')))} tar shards; ddk.run "
      f"({what}, default model {res.run['model'].get('model_id')}) {t_run:.0f} s; "
      f"analysis stages (s): {res.run.get('timings')}")  # fmt: skip
    inv = res.invalid.compute()
    inv = inv.assign(key=inv["filename"].map(shard_key))
    if len(inv):
        p(f"invalid images: {len(inv)} ({', '.join(inv['error_code'].astype(str))})")
    p("")
    p("## Recall on planted junk and share of real images flagged, per issue type")
    p("")
    p("Default cut-offs (dedupdask.thresholds.ISSUE_TABLE): "
      + json.dumps({k: v for k, v in issue_row_for(res.run['model'].get('model_id')).to_dict().items()}))
    types = list(ISSUE_TYPES)
    table = per_type(issues, images, types)
    p("")
    p(fmt_table(table))
    p("")
    held = per_type(issues, images, types, HELD_OUT_KINDS)
    p("Held-out kinds (generated differently: other fonts, layouts, noise models, blur kernels and "
      "sizes; never used to pick a cut-off); 'junk' is their recall together:")
    p("")
    p(fmt_table(held.drop(columns=["real", "photos", "textures", "stamps", "clip art"])))
    p("")
    hl = held.loc["any junk-like"]
    p(f"junk-like types on the held-out kinds: {100 * hl['junk']:.1f} % of the held-out junk "
      f"(tuning kinds {100 * table.loc['any junk-like', 'junk']:.1f} %); any issue type: "
      f"{100 * held.loc['any', 'junk']:.1f} %; any type but grayscale: {100 * held.loc['any but grayscale', 'junk']:.1f} %")  # fmt: skip
    p("")
    a = table.loc["any"]
    jl = table.loc["any junk-like"]
    p(f"any issue type: {100 * a['junk']:.1f} % of the junk flagged, {100 * a['real']:.1f} % of the real images; "
      f"junk-like types ({', '.join(JUNK_LIKE)}): {100 * jl['junk']:.1f} % of the junk, "
      f"{100 * jl['real']:.2f} % of the real images ({', '.join(f'{g} {100 * jl[g]:.2f} %' for g in ('photos', 'textures', 'stamps', 'clip art'))})")  # fmt: skip
    ab = table.loc["any but grayscale"]
    jn = table.loc["junk-like or noisy"]
    p(f"any type but grayscale: {100 * ab['junk']:.1f} % of the junk, {100 * ab['real']:.1f} % of the real images; "
      f"junk-like types or noisy: {100 * jn['junk']:.1f} % of the junk, {100 * jn['real']:.2f} % of the real images")  # fmt: skip
    grey = grey_truth(photos, real["name"].tolist())
    flagged_grey = set(issues.loc[issues["issue"] == "grayscale", "key"])
    is_grey = real["name"].isin(grey)
    hit = real["key"].isin(flagged_grey)
    p(f"grayscale against the packaged files (grey = 99 % of the pixels within 2 levels across R, G, B): "
      f"{int(is_grey.sum())} grey real images, {int((hit & is_grey).sum())} flagged; "
      f"{int((hit & ~is_grey).sum())} colour images flagged ({100 * (hit & ~is_grey).mean():.2f} % of the real images)")  # fmt: skip
    low = issues[issues["issue"].isin(JUNK_LIKE)]
    low = low[low["key"].isin(real["key"])].merge(images[["key", "name"]], on="key")
    part = low_information_part(res)
    p(f"real images flagged by the junk-like types ({low['key'].nunique()}): "
      + "; ".join(f"{r.issue}{part.get(int(r.index), '') if r.issue == 'low_information' else ''} "
                  f"{r.score:.3f} {r.name.rsplit('/', 1)[-1][-40:]}" for r in low.itertuples()))  # fmt: skip
    p(f"issue rows: {len(issues)} ({', '.join(f'{k} {v}' for k, v in res.summary()['issues'].items())}); "
      f"not reported: {res.summary()['issues_not_reported'] or 'none'}; outlier groups: "
      f"{res.run['issues']['outlier_groups']}; median image side {res.run['issues']['size_reference']} px")  # fmt: skip
    p("")
    p("## Cut-offs: scores of the real images")
    p("")
    p("Quantiles of each statistics type's score over the real images (a cut-off at the 1 % "
      "quantile flags 1 % of them), and the planted junk (tuning and held-out kinds) under the "
      "default cut-off; the low_information_<part> rows are the parts of low_information (its "
      "score is their minimum) under its cut-off:")
    p("")
    for line in score_quantiles(res, images):
        p(line)
    p("")
    if args.fresh_seeds:
        log("fresh draws")
        p("## Fresh draws of the junk kinds")
        p("")
        p(f"Every junk kind drawn again ({args.fresh_copies} per kind, seeds "
          f"{', '.join(str(1000 + s) for s in range(1, args.fresh_seeds + 1))}) and scored from the "
          "statistics alone (decoded at the model's input size, this run's median side and "
          "cut-offs); share flagged by the junk-like types:")
        p("")
        for line in fresh_draws(photos, res, seeds=tuple(range(1, args.fresh_seeds + 1)), copies=args.fresh_copies):
            p(line)
        p("")
    p("## Outlier groups at several outlier_link values")
    p("")
    p("The outlier score of every image (its group's similarity to the nearest image outside "
      "the group); per junk kind the median score and the largest group:")
    p("")
    for line in outlier_links(str(wd), images, LINKS, res.run["issues"]["resolved"]["outlier"]):
        p(f"- {line}")
    p("")
    p("## Who lists the junk as outliers")
    p("")
    out_keys = [shard_key(f) for f in res.outliers["filename"].compute()]
    n_junk = int((images["kind"] != "real").sum())
    p(f"- dedupdask outliers.csv (fastdup's meaning, {len(out_keys)} rows at lower_threshold "
      f"{res.params.get('lower_threshold')}): top {n_junk}: {junk_in(out_keys, images, n_junk)}; "
      f"all rows: {junk_in(out_keys, images, len(out_keys))}")  # fmt: skip
    out_issue = issues[issues["issue"] == "outlier"].sort_values(["score", "index"])
    p(f"- dedupdask issue 'outlier' (grouped, cut-off {res.run['issues']['resolved']['outlier']}): "
      f"{junk_in(list(dict.fromkeys(out_issue['key'])), images, len(out_issue))}")
    if args.fastdup:
        log("fastdup 2.54 on the same shards")
        fd = fastdup_outliers(shards, root, args.fastdup_cache, os.cpu_count() or 2)
        p(f"- fastdup 2.54 outliers.csv ({len(fd)} rows): top {n_junk}: {junk_in(fd, images, n_junk)}; "
          f"all rows: {junk_in(fd, images, len(fd))}")  # fmt: skip
    gal = args.galleries or (root / "galleries")
    pages = res.galleries(str(gal), num_images=24)
    p("")
    p("## Galleries")
    p("")
    p(f"written to {gal} (not kept in the repository): "
      + ", ".join(f"{k}.html ({g.n_rows} rows)" for k, g in pages.items() if k.startswith("issue_")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
