"""Benchmark: web edits no benchmark family makes, dedupdask against fastdup 2.54 -- a second held-out set.

The families of ``quality_families.py`` shaped the matcher (the tuning ones) or reported on it
(the held-out ones). These twelve edits, modelled on AugLy's image augmentations (the
copy-detection challenge's) and on what sharing sites do, are in neither: nothing was tuned on
them before they were first measured (stop 60). Each packaged photo, wallpaper and Tux Paint
stamp gets two copies, the edits cycling; each copy is then resized to 70-100 % and saved as
JPEG q75-90. Openclipart drawings and game textures are added as distractors (the run whitens,
as a large one does). ``ddk.run()`` and fastdup run at their defaults on the same shards.

    python benchmarks/quality_unseen.py
    python benchmarks/quality_unseen.py --no-fastdup

Prints recall per edit and kind of picture, the share of planted pairs dedupdask verified, the
precision on pairs involving a copy and the false pairs (``quality_orientation.py`` does the
work). Figures are printed, not asserted.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edit_families as ef  # noqa: E402
import quality_orientation as qo  # noqa: E402


def opacity(img, rng, backgrounds):
    """Made see-through over white (AugLy ``opacity``): 50-70 % of the picture left."""
    return Image.blend(Image.new("RGB", img.size, "white"), img, float(rng.uniform(0.5, 0.7)))


def pixelated(img, rng, backgrounds):
    """Shrunk to 10-25 % and blown up again in blocks (AugLy ``pixelization``)."""
    w, h = img.size
    r = float(rng.uniform(0.1, 0.25))
    small = img.resize((max(2, round(w * r)), max(2, round(h * r))), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.NEAREST)


def on_background(img, rng, backgrounds):
    """Shrunk to 50-80 % and laid on another picture (AugLy ``overlay_onto_background_image``)."""
    w, h = img.size
    bg = backgrounds[int(rng.integers(0, len(backgrounds)))].resize((w, h), Image.Resampling.BILINEAR)
    s = float(rng.uniform(0.5, 0.8))
    small = img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.LANCZOS)
    bg.paste(small, (int(rng.integers(0, w - small.width + 1)), int(rng.integers(0, h - small.height + 1))))
    return bg


def sheared(img, rng, backgrounds):
    """Slanted by 10-20 degrees on a white canvas (AugLy ``skew``)."""
    w, h = img.size
    t = float(np.tan(np.radians(rng.uniform(10, 20)))) * ef._sign(rng)
    W = w + round(abs(t) * h)
    off = -abs(t) * h if t > 0 else 0.0
    return img.transform((W, h), Image.Transform.AFFINE, (1, t, off, 0, 1, 0), Image.Resampling.BICUBIC,
                         fillcolor="white")  # fmt: skip


def stripes(img, rng, backgrounds):
    """Opaque stripes over a fifth of the picture (AugLy ``overlay_stripes``)."""
    out = img.copy()
    d = ImageDraw.Draw(out)
    w, h = img.size
    across = rng.uniform() < 0.5
    n = int(rng.integers(4, 8))
    side = h if across else w
    width = max(1, round(side * 0.2 / n))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    for k in range(n):
        p = round((k + 0.5) * side / n)
        d.rectangle((0, p, w, p + width) if across else (p, 0, p + width, h), fill=colour)
    return out


def colour_jitter(img, rng, backgrounds):
    """Brightness, contrast and saturation each x0.6-1.4 (torchvision's ``ColorJitter(0.4, 0.4, 0.4)``)."""
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.6, 1.4)))
    return img


def straightened(img: Image.Image, degrees: float) -> Image.Image:
    """Turned anticlockwise by ``degrees`` and cut to the largest box of its shape inside the
    turned frame, as an editor's straighten tool does."""
    w, h = img.size
    out = img.rotate(degrees, Image.Resampling.BICUBIC, expand=False)
    c, s = abs(np.cos(np.radians(degrees))), abs(np.sin(np.radians(degrees)))
    k = min(w, h) / (max(w, h) * s + min(w, h) * c)  # the largest same-shape box inside the turned frame
    cw, ch = round(w * k), round(h * k)
    return out.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def rotated_more(img, rng, backgrounds):
    """Turned by 15-25 degrees, then cropped to what the turn left whole."""
    return straightened(img, float(rng.uniform(15, 25)) * ef._sign(rng))


def screenshot(img, rng, backgrounds):
    """A social post's screenshot: a header bar with a name, the picture at 80 % width, a caption."""
    w, h = img.size
    pw = round(w * 0.8)
    pic = img.resize((pw, max(8, round(h * pw / w))), Image.Resampling.LANCZOS)
    head, foot = round(h * 0.14), round(h * 0.18)
    canvas = Image.new("RGB", (w, head + pic.height + foot), (250, 250, 250))
    d = ImageDraw.Draw(canvas)
    font = ef._font(max(8, head * 0.4))
    d.ellipse((w * 0.02, head * 0.2, w * 0.02 + head * 0.6, head * 0.8), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    d.text((w * 0.04 + head * 0.6, head * 0.3), ef.WATERMARKS[int(rng.integers(0, len(ef.WATERMARKS)))], fill="black", font=font)
    canvas.paste(pic, ((w - pw) // 2, head))
    d.text((w * 0.05, head + pic.height + foot * 0.3), ef.MEME_WORDS[int(rng.integers(0, len(ef.MEME_WORDS)))],
           fill=(40, 40, 40), font=font)  # fmt: skip
    return canvas


def cropped_half(img, rng, backgrounds):
    """A 50-60 % (a side) window of the picture, anywhere."""
    w, h = img.size
    s = float(rng.uniform(0.5, 0.6))
    cw, ch = round(w * s), round(h * s)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def crushed(img, rng, backgrounds):
    """Halved and saved at JPEG q5-8 (a thumbnail of a thumbnail)."""
    import io

    w, h = img.size
    small = img.resize((max(8, w // 2), max(8, h // 2)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=int(rng.integers(5, 9)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def mirrored_framed_warm(img, rng, backgrounds):
    """Mirrored, cropped to 85 %, warmed and brightened: a repost's three edits."""
    w, h = img.size
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((round(w * 0.075), round(h * 0.075),
                                                              round(w * 0.925), round(h * 0.925)))  # fmt: skip
    r, g, b = img.split()
    img = Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.1 + 8))), g, b.point(lambda v: int(v * 0.9))))
    return ImageEnhance.Brightness(img).enhance(float(rng.uniform(1.05, 1.2)))


def vintage(img, rng, backgrounds):
    """An app filter: faded contrast, a sepia tint, a dark vignette and grain."""
    w, h = img.size
    a = np.asarray(ImageEnhance.Contrast(img).enhance(0.75), np.float32)
    grey = a @ np.array([0.299, 0.587, 0.114], np.float32)
    tint = np.stack([grey * 1.07 + 10, grey * 0.95 + 5, grey * 0.8], -1)
    a = 0.5 * a + 0.5 * tint
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2))
    a *= (1 - 0.45 * np.clip(r - 0.4, 0, None) ** 1.5)[..., None]
    a += rng.normal(0, 6, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


UNSEEN = {
    "opacity 50-70 % over white": opacity,
    "pixelated": pixelated,
    "on a background picture": on_background,
    "sheared 10-20 deg": sheared,
    "stripes over a fifth": stripes,
    "colour jitter": colour_jitter,
    "rotated 15-25 deg, cropped": rotated_more,
    "social post screenshot": screenshot,
    "crop 50-60 %": cropped_half,
    "half size, JPEG q5-8": crushed,
    "mirror + crop + warm": mirrored_framed_warm,
    "vintage filter": vintage,
}

if __name__ == "__main__":
    raise SystemExit(qo.main(edits=UNSEEN, copies=2, name="unseen", doc=__doc__))
