"""Sample-data stage: generate small webdataset shards with known duplicates.

:func:`make_sample_shards` writes LAION-style shards (``key.jpg`` + ``key.txt`` + ``key.json``)
in tar, tgz and zip form, with varied procedural pictures, planted exact copies and
near-duplicates (resize, JPEG recompression, crop, flip, brightness) spread across shards,
and a few broken members, plus ``ground_truth.csv`` naming every planted pair. It is the
embedded default of the README's demo command and the data of the tests.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

__all__ = ["make_sample_shards", "random_picture", "edit_image", "write_shard", "SampleShards", "EDITS"]

EDITS = ("exact", "resize", "jpeg", "crop", "flip", "bright")


@dataclass
class SampleShards:
    """What :func:`make_sample_shards` wrote.

    Attributes
    ----------
    root : str
        Folder holding the shards.
    shards : list of str
        Shard paths, sorted.
    truth : DataFrame
        Planted pairs: ``filename_a, filename_b, edit`` (``edit`` in :data:`EDITS`).
    broken : DataFrame
        Planted bad members: ``filename, expected`` (an ``error_code`` or ``skipped``).
    n_images : int
        Image members written (valid and broken).
    """

    root: str
    shards: list[str]
    truth: pd.DataFrame
    broken: pd.DataFrame
    n_images: int


def _palette(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(n)]


def random_picture(rng: np.random.Generator, size: tuple[int, int] = (512, 384)) -> Image.Image:
    """A varied synthetic picture: textured background, shapes, lines and noise.

    Parameters
    ----------
    rng : numpy Generator
    size : (width, height)
    """
    w, h = size
    style = rng.integers(0, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2, c3 = (np.array(c, np.float32) for c in _palette(rng, 3))
    if style == 0:  # linear gradient
        ang = rng.uniform(0, np.pi)
        t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif style == 1:  # sinusoidal texture
        fx, fy = rng.uniform(2, 25, 2)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * xx / w + rng.uniform()) ) * np.cos(2 * np.pi * fy * yy / h)
        bg = c1 * (1 - t[..., None]) + c3 * t[..., None]
    elif style == 2:  # 1/f noise
        f = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
        spec = (rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) / np.maximum(f, 1e-4) ** rng.uniform(0.6, 1.1)
        t = np.real(np.fft.ifft2(spec))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:  # radial
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        t = (t / (t.max() + 1e-6)) ** rng.uniform(0.5, 2)
        bg = c2 * (1 - t[..., None]) + c3 * t[..., None]
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 14))):
        kind = rng.integers(0, 4)
        col = _palette(rng, 1)[0]
        x0, y0 = rng.integers(-w // 4, w), rng.integers(-h // 4, h)
        x1, y1 = x0 + rng.integers(2, max(3, w // 2)), y0 + rng.integers(2, max(3, h // 2))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=col)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=col)
        elif kind == 2:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(pts, fill=col)
        else:
            draw.line((x0, y0, x1, y1), fill=col, width=int(rng.integers(2, 12)))
    if rng.uniform() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    noise = rng.normal(0, rng.uniform(0, 6), (h, w, 3))
    arr = np.clip(np.asarray(im, np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def edit_image(im: Image.Image, edit: str) -> bytes:
    """A planted near-duplicate of ``im`` as JPEG bytes (q90 unless the edit says).

    ``edit`` is one of ``resize`` (half size), ``jpeg`` (q30), ``crop`` (5 % off each side),
    ``flip`` (horizontal) or ``bright`` (x1.2); the sample shards and
    ``benchmarks/vs_fastdup.py --real-photos`` plant the same edits.

    Examples
    --------
    >>> len(edit_image(Image.new("RGB", (64, 48)), "flip")) > 0
    True
    """
    w, h = im.size
    if edit == "resize":
        return _jpeg(im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS))
    if edit == "jpeg":
        return _jpeg(im, quality=30)
    if edit == "crop":
        dx, dy = int(w * 0.05), int(h * 0.05)
        return _jpeg(im.crop((dx, dy, w - dx, h - dy)))
    if edit == "flip":
        return _jpeg(ImageOps.mirror(im))
    if edit == "bright":
        return _jpeg(ImageEnhance.Brightness(im).enhance(1.2))
    raise ValueError(edit)


def write_shard(path: str, members: Sequence[tuple[str, bytes]], fmt: str = "tar") -> None:
    """Write ``(name, bytes)`` members as a ``tar``, ``tgz`` or ``zip`` archive, reproducibly
    (fixed mtime, PAX tars) and atomically (a temporary file renamed at the end)."""
    tmp = path + ".tmp"
    if fmt == "zip":
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in members:
                zf.writestr(name, data)
    else:
        mode = "w:gz" if fmt == "tgz" else "w"
        with tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tf:
            for name, data in members:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mtime = 1_700_000_000
                tf.addfile(ti, io.BytesIO(data))
    os.replace(tmp, path)


def make_sample_shards(
    out_dir: str,
    *,
    n_shards: int = 3,
    images_per_shard: int = 40,
    formats: Sequence[str] = ("tar", "tgz", "zip"),
    n_near: int = 12,
    n_exact: int = 4,
    broken: bool = True,
    size: tuple[int, int] = (512, 384),
    seed: int = 0,
) -> SampleShards:
    """Write LAION-style sample shards with planted duplicates and broken members.

    Parameters
    ----------
    out_dir : str
        Folder to write into (created).
    n_shards : int
        Number of shards; their formats cycle through ``formats``.
    images_per_shard : int
        Original pictures per shard (copies and broken members come on top).
    formats : sequence of {"tar", "tgz", "zip"}
    n_near : int
        Near-duplicates planted, edits cycling through resize, jpeg, crop, flip, bright.
    n_exact : int
        Byte-identical copies planted.
    broken : bool
        Add a corrupt JPEG, a 5x5 image and a non-image member to the first shard.
    size : (width, height)
        Size of the original pictures.
    seed : int

    Returns
    -------
    SampleShards

    Examples
    --------
    >>> import tempfile
    >>> s = make_sample_shards(tempfile.mkdtemp(), n_shards=2, images_per_shard=5, n_near=2, n_exact=1)
    >>> len(s.shards), len(s.truth)
    (2, 3)
    """
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = {"tar": ".tar", "tgz": ".tgz", "zip": ".zip"}
    shard_paths = [
        os.path.join(os.path.abspath(out_dir), f"{i:05d}{ext[formats[i % len(formats)]]}") for i in range(n_shards)
    ]
    members: list[list[tuple[str, bytes]]] = [[] for _ in range(n_shards)]
    originals: list[tuple[int, str, Image.Image, bytes]] = []
    counter = 0

    def add(shard: int, data: bytes, caption: str, meta: dict, ext_: str = "jpg") -> str:
        nonlocal counter
        key = f"{shard:05d}{counter:04d}"
        counter += 1
        members[shard].append((f"{key}.{ext_}", data))
        members[shard].append((f"{key}.txt", caption.encode()))
        members[shard].append((f"{key}.json", json.dumps({"key": key, **meta}).encode()))
        return f"{shard_paths[shard]}/{key}.{ext_}"

    for s in range(n_shards):
        for _ in range(images_per_shard):
            im = random_picture(rng, size)
            data = _jpeg(im)
            fn = add(s, data, f"a picture number {counter}", {"width": size[0], "height": size[1]})
            originals.append((s, fn, im, data))
    truth = []
    picks = rng.choice(len(originals), size=min(len(originals), n_near + n_exact), replace=False)
    for j, p in enumerate(picks):
        s, fn, im, data = originals[int(p)]
        target = (s + 1) % n_shards  # copies land in another shard: cross-archive duplicates
        if j < n_exact:
            copy = add(target, data, "an exact copy", {"planted": "exact"})
            truth.append((fn, copy, "exact"))
        else:
            edit = EDITS[1 + (j - n_exact) % (len(EDITS) - 1)]
            copy = add(target, edit_image(im, edit), f"an edited copy ({edit})", {"planted": edit})
            truth.append((fn, copy, edit))
    bad = []
    if broken:
        good = _jpeg(random_picture(rng, (64, 48)))
        members[0].append(("broken0001.jpg", good[: len(good) // 3]))
        bad.append((f"{shard_paths[0]}/broken0001.jpg", "ERROR_CORRUPT_IMAGE"))
        tiny = io.BytesIO()
        Image.new("RGB", (5, 5), (200, 10, 10)).save(tiny, "PNG")
        members[0].append(("tiny0001.png", tiny.getvalue()))
        bad.append((f"{shard_paths[0]}/tiny0001.png", "ERROR_IMAGE_TOO_SMALL"))
        members[0].append(("notes0001.cls", b"3\n"))
        bad.append((f"{shard_paths[0]}/notes0001.cls", "skipped"))
    n_images = 0
    for s in range(n_shards):
        n_images += sum(1 for name, _ in members[s] if name.rsplit(".", 1)[-1] in ("jpg", "png"))
        write_shard(shard_paths[s], members[s], formats[s % len(formats)])
    truth_df = pd.DataFrame(truth, columns=["filename_a", "filename_b", "edit"])
    broken_df = pd.DataFrame(bad, columns=["filename", "expected"])
    truth_df.to_csv(os.path.join(out_dir, "ground_truth.csv"), index=False)
    broken_df.to_csv(os.path.join(out_dir, "broken.csv"), index=False)
    return SampleShards(os.path.abspath(out_dir), sorted(shard_paths), truth_df, broken_df, n_images)
