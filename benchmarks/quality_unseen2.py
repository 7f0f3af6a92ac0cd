"""Benchmark: ten more web edits that no benchmark set makes, dedupdask against fastdup 2.54 -- a third held-out set.

``quality_families.py`` shaped the matcher (its tuning families) and reported on it (its held-out
ones); ``quality_unseen.py`` was a second held-out set until its turned row pointed at a
mechanism (stop 64). These ten edits were written at stop 65, after the code they measure
(cdf8129), and measured once per draw without a change to them or to the code: a clean exam.
They are what re-encoders, apps and sharing sites do and no family or unseen edit does: WebP
re-encoding, a GIF's palette, posterizing, equalizing, an app's per-channel curves, motion blur,
shifted colour channels (chromatic aberration), lens barrel distortion, a card with rounded
corners and a shadow, and a picture padded to a square with its own blurred copy. As in
``quality_unseen.py``, each packaged photo, wallpaper and Tux Paint stamp gets two copies, the
edits cycling, each then resized to 70-100 % and saved as JPEG q75-90; openclipart drawings and
game textures are added as distractors (the run whitens, as a large one does). ``ddk.run()`` and
fastdup run at their defaults on the same shards.

    python benchmarks/quality_unseen2.py
    python benchmarks/quality_unseen2.py --seed 1 --no-fastdup

Prints recall per edit and kind of picture, the share of planted pairs dedupdask verified, the
precision on pairs involving a copy and the false pairs (``quality_orientation.py`` does the
work). Figures are printed, not asserted.
"""

from __future__ import annotations

import io
import os
import sys

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality_orientation as qo  # noqa: E402


def webp(img, rng, backgrounds):
    """Re-encoded as lossy WebP q15-35 (a CDN's or a chat app's re-encoding)."""
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=int(rng.integers(15, 36)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def palette(img, rng, backgrounds):
    """Reduced to a 24-64 colour palette with Floyd-Steinberg dithering (saved as a GIF)."""
    return img.quantize(colors=int(rng.integers(24, 65)), dither=Image.Dither.FLOYDSTEINBERG).convert("RGB")


def posterized(img, rng, backgrounds):
    """Posterized to 3-4 bits per channel (an app's poster effect)."""
    return ImageOps.posterize(img, int(rng.integers(3, 5)))


def equalized(img, rng, backgrounds):
    """Histogram equalized (an editor's auto-tone)."""
    return ImageOps.equalize(img)


def curves(img, rng, backgrounds):
    """An app filter's per-channel curves: warm highlights, cool shadows, lifted blacks."""
    a = np.asarray(img, np.float32) / 255.0
    gammas = np.array([rng.uniform(0.8, 0.92), rng.uniform(0.95, 1.05), rng.uniform(1.08, 1.25)], np.float32)
    lift = float(rng.uniform(0.05, 0.12))
    a = lift + (1.0 - lift) * a**gammas
    return Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8))


def motion_blur(img, rng, backgrounds):
    """Blurred along a line of 2-3 % of the width, at any angle (a shaken camera)."""
    n = max(3, round(img.width * float(rng.uniform(0.02, 0.03))) | 1)
    k = np.zeros((n, n), np.float32)
    k[n // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), float(rng.uniform(0, 180)), 1.0)
    k = cv2.warpAffine(k, rot, (n, n))
    k /= k.sum()
    return Image.fromarray(cv2.filter2D(np.asarray(img), -1, k, borderType=cv2.BORDER_REFLECT))


def channels_shifted(img, rng, backgrounds):
    """Red and blue moved 0.5-1 % of the width apart (chromatic aberration, a glitch effect)."""
    a = np.asarray(img).copy()
    d = max(1, round(img.width * float(rng.uniform(0.005, 0.01))))
    dy = int(rng.integers(-1, 2))
    a[..., 0] = np.roll(a[..., 0], (dy, d), axis=(0, 1))
    a[..., 2] = np.roll(a[..., 2], (-dy, -d), axis=(0, 1))
    return Image.fromarray(a)


def barrel(img, rng, backgrounds):
    """Lens barrel distortion, k1 0.08-0.18 (a wide-angle lens or a fisheye filter)."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    k1 = float(rng.uniform(0.08, 0.18))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, r0 = (w - 1) / 2, (h - 1) / 2, np.hypot(w / 2, h / 2)
    x, y = (xx - cx) / r0, (yy - cy) / r0
    f = (1.0 + k1 * (x * x + y * y)) / (1.0 + k1)  # corners stay corners, the middle bulges out
    mx, my = (x * f * r0 + cx).astype(np.float32), (y * f * r0 + cy).astype(np.float32)
    return Image.fromarray(cv2.remap(a, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))


def card(img, rng, backgrounds):
    """Shrunk to 85-92 % with rounded corners and a soft shadow on a light canvas (a post card)."""
    w, h = img.size
    s = float(rng.uniform(0.85, 0.92))
    pw, ph = max(8, round(w * s)), max(8, round(h * s))
    pic = img.resize((pw, ph), Image.Resampling.LANCZOS)
    radius = max(2, round(min(pw, ph) * float(rng.uniform(0.06, 0.12))))
    mask = Image.new("L", (pw, ph), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, pw - 1, ph - 1), radius, fill=255)
    grey = int(rng.integers(228, 248))
    canvas = Image.new("RGB", (w, h), (grey, grey, grey))
    x, y = (w - pw) // 2, (h - ph) // 2
    shadow = Image.new("L", (w, h), 0)
    off = max(1, round(min(w, h) * 0.015))
    shadow.paste(mask, (x + off, y + off))
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(1, off * 2)))
    canvas.paste(Image.new("RGB", (w, h), (grey - 70, grey - 70, grey - 70)), (0, 0), shadow.point(lambda v: v * 0.6))
    canvas.paste(pic, (x, y), mask)
    return canvas


def blur_padded(img, rng, backgrounds):
    """Padded to a square with its own enlarged, blurred and darkened copy (a story's or a feed's fill)."""
    w, h = img.size
    side = max(w, h)
    if w == h:  # a square picture is shown in a taller frame instead
        side_w, side_h = w, round(h * 1.4)
    else:
        side_w = side_h = side
    cover = max(side_w / w, side_h / h)
    bg = img.resize((round(w * cover) + 1, round(h * cover) + 1), Image.Resampling.BILINEAR)
    bg = bg.crop(((bg.width - side_w) // 2, (bg.height - side_h) // 2,
                  (bg.width - side_w) // 2 + side_w, (bg.height - side_h) // 2 + side_h))  # fmt: skip
    bg = bg.filter(ImageFilter.GaussianBlur(max(side_w, side_h) * float(rng.uniform(0.03, 0.05))))
    bg = Image.eval(bg, lambda v: int(v * 0.75))
    bg.paste(img, ((side_w - w) // 2, (side_h - h) // 2))
    return bg


UNSEEN2 = {
    "WebP q15-35": webp,
    "24-64 colour palette, dithered": palette,
    "posterized 3-4 bits": posterized,
    "equalized": equalized,
    "per-channel curves filter": curves,
    "motion blur": motion_blur,
    "channels shifted": channels_shifted,
    "barrel distortion": barrel,
    "card: rounded corners + shadow": card,
    "padded with its own blur": blur_padded,
}

if __name__ == "__main__":
    raise SystemExit(qo.main(edits=UNSEEN2, copies=2, name="unseen2", doc=__doc__))
