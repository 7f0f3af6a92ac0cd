"""Benchmarks helper: families of web edits at several strengths, and their fixed split.

Used by ``quality_families.py``. A *family* is one kind of edit that keeps a picture's content
(a near-duplicate is the same picture after it), with three strengths ``s1 < s2 < s3`` (two
for flips and combinations). Families are grouped by what they do to the pixels; the split
into tuning and held-out families is fixed here, so nothing is fitted to the families that
report generalisation:

========================  ===========================================  =================
group                     tuning families                              held-out families
========================  ===========================================  =================
geometric: rigid          flip, crop                                   rotate
geometric: shape          perspective, pad                             aspect
colour                    greyscale, saturation, tone                  hue
degradation               blur, sharpen, jpeg, lowres                  noise
overlay                   text, emoji_logo, border                     meme, pip
combination               combo2 (two tuning families)                 combo3 (any three)
========================  ===========================================  =================

Edits come from albumentations 2.0.8 where it has them (rotation, perspective, crops,
resizes, flips, greyscale/sepia, colour jitter, gamma, brightness/contrast, blur, sharpen,
noise, JPEG, pasting stickers and insets with ``OverlayElements``); text, caption bars,
frames and padding onto a blurred or picture background are drawn with Pillow (AugLy's
``overlay_text``, ``meme_format``, ``overlay_emoji`` and ``pad`` are the models; AugLy itself
pins Pillow < 9). Text uses Pillow's bundled default font, emoji are rendered from Debian's
``fonts-noto-color-emoji``. Every edit is drawn from a ``numpy`` Generator: same seed, same
bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FINAL_QUALITY = 90  # JPEG quality of every copy unless its edit sets one


@dataclass(frozen=True)
class Family:
    name: str
    group: str
    levels: tuple[str, ...]  # one label per strength, mildest first
    held_out: bool


GROUPS = ("geometric-rigid", "geometric-shape", "colour", "degradation", "overlay", "combination")
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("rotate", "geometric-rigid", ("3deg", "6deg", "10deg"), True),
        Family("flip", "geometric-rigid", ("horizontal", "vertical"), False),
        Family("crop", "geometric-rigid", ("side 88%", "side 75%", "side 60%"), False),
        Family("perspective", "geometric-shape", ("0.03", "0.06", "0.09"), False),
        Family("aspect", "geometric-shape", ("x1.15", "x1.3", "x1.5"), True),
        Family("pad", "geometric-shape", ("letterbox 10%", "to square", "square + 20%"), False),
        Family("greyscale", "colour", ("luma", "desaturate", "sepia"), False),
        Family("saturation", "colour", ("x0.6|x1.4", "x0.35|x1.8", "x0.15|x2.4"), False),
        Family("hue", "colour", ("10deg", "25deg", "45deg"), True),
        Family("tone", "colour", ("gamma 0.8|1.25", "gamma 0.6|1.6 + contrast", "bright/contrast/gamma"), False),
        Family("blur", "degradation", ("sigma 1", "sigma 2", "sigma 3.5"), False),
        Family("sharpen", "degradation", ("alpha 0.3", "alpha 0.6", "alpha 1.0"), False),
        Family("noise", "degradation", ("std 3%", "std 7%", "std 12%"), True),
        Family("jpeg", "degradation", ("q30", "q18", "q10"), False),
        Family("lowres", "degradation", ("200 px", "128 px", "80 px"), False),
        Family("text", "overlay", ("corner mark", "big diagonal", "tiled"), False),
        Family("emoji_logo", "overlay", ("one 12%", "two 18%", "three 25%"), False),
        Family("meme", "overlay", ("top text", "top + bottom", "caption bar"), True),
        Family("pip", "overlay", ("inset 6%", "inset 12%", "inset 20%"), True),
        Family("border", "overlay", ("3%", "6%", "10%"), False),
        Family("combo2", "combination", ("mild", "medium"), False),
        Family("combo3", "combination", ("mild", "medium"), True),
    ]
}  # fmt: skip
TUNE = tuple(n for n, f in FAMILIES.items() if not f.held_out)
HELD_OUT = tuple(n for n, f in FAMILIES.items() if f.held_out)
SINGLE = tuple(n for n, f in FAMILIES.items() if f.group != "combination")
# order in which a combination applies its edits, as a web pipeline would
_COMBO_ORDER = ("geometric-rigid", "geometric-shape", "colour", "overlay", "degradation")

WATERMARKS = (
    "© 2024 Photo Studio", "SAMPLE", "www.example-photos.com", "stock image", "@pixel_hunter",
    "PREVIEW", "Copyright Jane Doe", "shutterpix", "DO NOT COPY", "#travel #nature",
)  # fmt: skip
MEME_WORDS = (
    "when you", "finally", "nobody:", "me at 3 am", "this is fine", "monday again", "wait for it",
    "true story", "one does not simply", "so much win", "expectation", "reality", "plot twist",
)  # fmt: skip


@dataclass
class Assets:
    """Pictures that copies borrow and that are never in the shards themselves."""

    stickers: list[Image.Image]  # RGBA emoji and logos
    insets: list[Image.Image]  # RGB pictures for picture-in-picture and picture padding
    notes: list[str] = field(default_factory=list)


# -- albumentations ---------------------------------------------------------------------------
def _alb(img: Image.Image, transform, rng: np.random.Generator, **data) -> Image.Image:
    import albumentations as A

    pipe = A.Compose([transform], seed=int(rng.integers(0, 2**31 - 1)))
    return Image.fromarray(pipe(image=np.asarray(img), **data)["image"])


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.uniform() < 0.5 else -1


def _fill(rng: np.random.Generator) -> tuple[int, int, int]:
    return (0, 0, 0) if rng.uniform() < 0.5 else (255, 255, 255)


# -- geometric ---------------------------------------------------------------------------------
def rotate(img, level, rng, assets):
    import albumentations as A
    import cv2

    angle = (3.0, 6.0, 10.0)[level] * _sign(rng) + rng.uniform(-0.5, 0.5)
    crop = bool(rng.uniform() < 0.5)  # cropped to the largest upright rectangle, else corners filled
    t = A.Rotate(limit=(angle, angle), crop_border=crop, border_mode=cv2.BORDER_CONSTANT,
                 fill=_fill(rng), p=1.0)  # fmt: skip
    return _alb(img, t, rng)


def flip(img, level, rng, assets):
    import albumentations as A

    return _alb(img, A.HorizontalFlip(p=1.0) if level == 0 else A.VerticalFlip(p=1.0), rng)


def crop(img, level, rng, assets):
    import albumentations as A

    w, h = img.size
    keep = (0.88, 0.75, 0.60)[level]
    kw = min(1.0, keep + rng.uniform(-0.02, 0.04))
    kh = min(1.0, keep + rng.uniform(-0.02, 0.04))
    cw, ch = max(16, round(w * kw)), max(16, round(h * kh))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return _alb(img, A.Crop(x_min=x0, y_min=y0, x_max=x0 + cw, y_max=y0 + ch, p=1.0), rng)


def perspective(img, level, rng, assets):
    import albumentations as A
    import cv2

    s = (0.03, 0.06, 0.09)[level]
    t = A.Perspective(scale=(s, s), keep_size=True, fit_output=bool(rng.uniform() < 0.5),
                      border_mode=cv2.BORDER_CONSTANT, fill=_fill(rng), p=1.0)  # fmt: skip
    return _alb(img, t, rng)


def aspect(img, level, rng, assets):
    import albumentations as A

    f = (1.15, 1.3, 1.5)[level] * rng.uniform(0.98, 1.02)
    w, h = img.size
    if rng.uniform() < 0.5:  # stretch one axis or squeeze the other
        w2, h2 = (round(w * f), h) if rng.uniform() < 0.5 else (w, round(h * f))
    else:
        w2, h2 = (round(w / f), h) if rng.uniform() < 0.5 else (w, round(h / f))
    return _alb(img, A.Resize(height=max(8, h2), width=max(8, w2), p=1.0), rng)


def _canvas(img: Image.Image, size: tuple[int, int], rng, assets: Assets) -> Image.Image:
    kind = int(rng.integers(0, 4))
    if kind < 2:
        return Image.new("RGB", size, _fill(rng))
    if kind == 2:  # the picture itself, blurred, behind it (social-media style)
        return img.resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(max(size) / 30))
    bg = assets.insets[int(rng.integers(0, len(assets.insets)))]
    return bg.resize(size, Image.Resampling.BILINEAR)


def pad(img, level, rng, assets):
    w, h = img.size
    if level == 0:  # letterbox / pillarbox bars of ~10 % a side on the short axis
        m = rng.uniform(0.08, 0.12)
        cw, ch = (w, round(h * (1 + 2 * m))) if w >= h else (round(w * (1 + 2 * m)), h)
    else:
        side = max(w, h)
        if level == 1 and abs(w - h) < 0.15 * side:
            side = round(side * 1.2)
        if level == 2:
            side = round(side * rng.uniform(1.15, 1.25))
        cw = ch = side
    canvas = _canvas(img, (cw, ch), rng, assets)
    if level == 2:
        x, y = int(rng.integers(0, cw - w + 1)), int(rng.integers(0, ch - h + 1))
    else:
        x, y = (cw - w) // 2, (ch - h) // 2
    canvas.paste(img, (x, y))
    return canvas


# -- colour -----------------------------------------------------------------------------------
def greyscale(img, level, rng, assets):
    import albumentations as A

    t = (A.ToGray(method="weighted_average", p=1.0), A.ToGray(method="desaturation", p=1.0),
         A.ToSepia(p=1.0))[level]  # fmt: skip
    return _alb(img, t, rng)


def _jitter(img, rng, *, saturation=1.0, hue=0.0):
    import albumentations as A

    t = A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(saturation, saturation),
                      hue=(hue, hue), p=1.0)  # fmt: skip
    return _alb(img, t, rng)


def saturation(img, level, rng, assets):
    lo, hi = ((0.6, 1.4), (0.35, 1.8), (0.15, 2.4))[level]
    return _jitter(img, rng, saturation=(lo if rng.uniform() < 0.5 else hi) * rng.uniform(0.97, 1.03))


def hue(img, level, rng, assets):
    deg = (10.0, 25.0, 45.0)[level] * _sign(rng) + rng.uniform(-2, 2)
    return _jitter(img, rng, hue=deg / 360.0)


def tone(img, level, rng, assets):
    import albumentations as A

    up = rng.uniform() < 0.5
    if level == 0:
        g = 0.8 if up else 1.25
        return _alb(img, A.RandomGamma(gamma_limit=(g * 100, g * 100), p=1.0), rng)
    g = (0.6 if up else 1.6) if level == 1 else (0.7 if up else 1.45)
    img = _alb(img, A.RandomGamma(gamma_limit=(g * 100, g * 100), p=1.0), rng)
    c = 0.2 * _sign(rng) if level == 1 else 0.35 * _sign(rng)
    b = 0.0 if level == 1 else 0.2 * _sign(rng)
    return _alb(img, A.RandomBrightnessContrast(brightness_limit=(b, b), contrast_limit=(c, c), p=1.0), rng)


# -- degradation ------------------------------------------------------------------------------
def blur(img, level, rng, assets):
    import albumentations as A

    s = (1.0, 2.0, 3.5)[level]
    return _alb(img, A.GaussianBlur(blur_limit=0, sigma_limit=(s, s), p=1.0), rng)


def sharpen(img, level, rng, assets):
    import albumentations as A

    a = (0.3, 0.6, 1.0)[level]
    return _alb(img, A.Sharpen(alpha=(a, a), lightness=(1.0, 1.0), p=1.0), rng)


def noise(img, level, rng, assets):
    import albumentations as A

    s = (0.03, 0.07, 0.12)[level]
    return _alb(img, A.GaussNoise(std_range=(s, s), per_channel=bool(rng.uniform() < 0.5), p=1.0), rng)


def jpeg(img, level, rng, assets):
    # the copy is stored at this quality (see make_copy), so nothing to do to the pixels
    return img


JPEG_QUALITY = (30, 18, 10)


def lowres(img, level, rng, assets):
    import albumentations as A
    import cv2

    m = (200, 128, 80)[level]
    if max(img.size) <= m:
        m = round(max(img.size) * 0.6)
    return _alb(img, A.LongestMaxSize(max_size=m, interpolation=cv2.INTER_AREA, p=1.0), rng)


# -- overlays ---------------------------------------------------------------------------------
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, int(size)))


def _text_layer(size, text, font, fill, stroke, angle=0.0):
    """A transparent RGBA layer of ``size`` with ``text`` centred, rotated by ``angle``."""
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font, stroke_width=stroke)
    tile = Image.new("RGBA", (x1 - x0 + 4, y1 - y0 + 4), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((2 - x0, 2 - y0), text, font=font, fill=fill, stroke_width=stroke,
                              stroke_fill=(0, 0, 0, fill[3]) if fill[0] > 127 else (255, 255, 255, fill[3]))  # fmt: skip
    if angle:
        tile = tile.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    return tile


def text(img, level, rng, assets):
    w, h = img.size
    base = img.convert("RGBA")
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    words = WATERMARKS[int(rng.integers(0, len(WATERMARKS)))]
    light = rng.uniform() < 0.6
    if level == 0:  # a small mark in a corner
        alpha = int(rng.integers(150, 220))
        tile = _text_layer((w, h), words, _font(h * 0.06), (255, 255, 255, alpha) if light else (0, 0, 0, alpha), 1)
        tile.thumbnail((int(w * 0.6), h))
        x = int(w * 0.03) if rng.uniform() < 0.5 else w - tile.width - int(w * 0.03)
        y = h - tile.height - int(h * 0.03) if rng.uniform() < 0.7 else int(h * 0.03)
        layer.alpha_composite(tile, (max(0, x), max(0, y)))
    elif level == 1:  # one big diagonal watermark across the middle
        alpha = int(rng.integers(90, 140))
        tile = _text_layer((w, h), words, _font(h * 0.13), (255, 255, 255, alpha) if light else (0, 0, 0, alpha), 2,
                           angle=float(rng.uniform(15, 35)) * _sign(rng))  # fmt: skip
        tile.thumbnail((int(w * 0.95), int(h * 0.95)))
        layer.alpha_composite(tile, ((w - tile.width) // 2, (h - tile.height) // 2))
    else:  # tiled over the whole picture
        alpha = int(rng.integers(70, 110))
        tile = _text_layer((w, h), words, _font(h * 0.07), (255, 255, 255, alpha) if light else (0, 0, 0, alpha), 1,
                           angle=30.0)  # fmt: skip
        tile.thumbnail((int(w * 0.5), int(h * 0.5)))
        for yy in range(-tile.height // 2, h, max(8, int(tile.height * 1.1))):
            off = int(rng.integers(0, max(1, tile.width)))
            for xx in range(-off, w, max(8, int(tile.width * 1.2))):
                layer.paste(tile, (xx, yy))  # tiles do not overlap: paste keeps their alpha
    return Image.alpha_composite(base, layer).convert("RGB")


def _overlay_elements(img, elements, rng):
    """Paste ``(RGBA element, (x, y))`` pairs with albumentations' OverlayElements."""
    import albumentations as A

    w, h = img.size
    meta = []
    for el, (x, y) in elements:
        arr = np.asarray(el)
        x1, y1 = min(w, x + el.width), min(h, y + el.height)
        arr = arr[: y1 - y, : x1 - x]
        meta.append({"image": np.ascontiguousarray(arr[..., :3]), "mask": (arr[..., 3] > 127).astype(np.uint8),
                     "bbox": [x / w, y / h, x1 / w, y1 / h]})  # fmt: skip
    return _alb(img, A.OverlayElements(p=1.0), rng, overlay_metadata=meta)


def emoji_logo(img, level, rng, assets):
    w, h = img.size
    n, frac = ((1, 0.12), (2, 0.18), (3, 0.25))[level]
    elements = []
    for _ in range(n):
        el = assets.stickers[int(rng.integers(0, len(assets.stickers)))].copy()
        side = max(8, int(min(w, h) * frac * rng.uniform(0.9, 1.1)))
        el.thumbnail((side, side), Image.Resampling.LANCZOS)
        x, y = int(rng.integers(0, max(1, w - el.width))), int(rng.integers(0, max(1, h - el.height)))
        elements.append((el, (x, y)))
    return _overlay_elements(img, elements, rng)


def pip(img, level, rng, assets):
    w, h = img.size
    area = (0.06, 0.12, 0.20)[level] * rng.uniform(0.9, 1.1)
    ins = assets.insets[int(rng.integers(0, len(assets.insets)))]
    s = (area * w * h / (ins.width * ins.height)) ** 0.5
    iw, ih = max(8, round(ins.width * s)), max(8, round(ins.height * s))
    ins = ins.resize((iw, ih), Image.Resampling.LANCZOS)
    b = max(1, round(min(iw, ih) * 0.04))
    framed = Image.new("RGBA", (iw + 2 * b, ih + 2 * b), (255, 255, 255, 255))
    framed.paste(ins, (b, b))
    m = int(min(w, h) * 0.03)
    x = m if rng.uniform() < 0.5 else w - framed.width - m
    y = m if rng.uniform() < 0.5 else h - framed.height - m
    return _overlay_elements(img, [(framed, (max(0, x), max(0, y)))], rng)


def _meme_line(img, words, top: bool):
    w, h = img.size
    size = h * 0.11
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while size > 8 and probe.textlength(words, font=font) > w * 0.92:
        size *= 0.9
        font = _font(size)
    d = ImageDraw.Draw(img)
    tw = probe.textlength(words, font=font)
    y = int(h * 0.03) if top else int(h * 0.97 - size * 1.15)
    d.text(((w - tw) / 2, y), words, font=font, fill=(255, 255, 255),
           stroke_width=max(1, int(size / 12)), stroke_fill=(0, 0, 0))  # fmt: skip


def meme(img, level, rng, assets):
    pick = lambda: MEME_WORDS[int(rng.integers(0, len(MEME_WORDS)))].upper()  # noqa: E731
    img = img.copy()
    if level < 2:
        _meme_line(img, pick(), top=True)
        if level == 1:
            _meme_line(img, pick(), top=False)
        return img
    w, h = img.size  # a white caption bar above the picture, text in black
    bar = int(h * rng.uniform(0.2, 0.3))
    out = Image.new("RGB", (w, h + bar), (255, 255, 255))
    out.paste(img, (0, bar))
    words = pick().lower().capitalize() + " " + pick().lower()
    size = bar * 0.35
    font = _font(size)
    probe = ImageDraw.Draw(out)
    while size > 8 and probe.textlength(words, font=font) > w * 0.92:
        size *= 0.9
        font = _font(size)
    probe.text((int(w * 0.04), int((bar - size) / 2)), words, font=font, fill=(0, 0, 0))
    return out


def border(img, level, rng, assets):
    w, h = img.size
    width = max(2, round(min(w, h) * (0.03, 0.06, 0.10)[level]))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    out = img.copy()
    d = ImageDraw.Draw(out)
    d.rectangle((0, 0, w - 1, h - 1), outline=colour, width=width)
    if rng.uniform() < 0.5:  # a thin second line inside, like a passe-partout
        inner = tuple(255 - c for c in colour)
        d.rectangle((width, width, w - 1 - width, h - 1 - width), outline=inner, width=max(1, width // 4))
    return out


EDIT_FUNCS: dict[str, Callable] = {
    "rotate": rotate, "flip": flip, "crop": crop, "perspective": perspective, "aspect": aspect,
    "pad": pad, "greyscale": greyscale, "saturation": saturation, "hue": hue, "tone": tone,
    "blur": blur, "sharpen": sharpen, "noise": noise, "jpeg": jpeg, "lowres": lowres,
    "text": text, "emoji_logo": emoji_logo, "meme": meme, "pip": pip, "border": border,
}  # fmt: skip


def combo_parts(family: str, level: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """The single edits of a combination: 2 tuning families or 3 of any, each of another group.

    ``level`` 0 uses the mildest strength of each part, 1 the middle one.
    """
    pool = [n for n in (TUNE if family == "combo2" else FAMILIES) if FAMILIES[n].group != "combination"]
    k = 2 if family == "combo2" else 3
    parts: list[str] = []
    for n in rng.permutation(pool):
        if all(FAMILIES[str(n)].group != FAMILIES[p].group for p in parts):
            parts.append(str(n))
        if len(parts) == k:
            break
    parts.sort(key=lambda n: (_COMBO_ORDER.index(FAMILIES[n].group), n in ("jpeg", "lowres")))
    return [(n, min(level, len(FAMILIES[n].levels) - 1)) for n in parts]


def make_copy(img: Image.Image, family: str, level: int, rng: np.random.Generator,
              assets: Assets) -> tuple[bytes, str]:  # fmt: skip
    """The JPEG bytes of one copy of ``img`` and a description of what was done."""
    if FAMILIES[family].group == "combination":
        parts = combo_parts(family, level, rng)
    else:
        parts = [(family, level)]
    quality = FINAL_QUALITY
    for name, lv in parts:
        img = EDIT_FUNCS[name](img, lv, rng, assets).convert("RGB")
        if name == "jpeg":
            quality = JPEG_QUALITY[lv]
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    desc = " + ".join(f"{n} {FAMILIES[n].levels[lv]}" for n, lv in parts)
    return buf.getvalue(), desc


def cells(families: Sequence[str] = tuple(FAMILIES)) -> list[tuple[str, int]]:
    """Every ``(family, level)`` of ``families``."""
    return [(f, lv) for f in families for lv in range(len(FAMILIES[f].levels))]
