"""Benchmark: copies under other light, dedupdask against fastdup 2.54 -- the light field's exam.

Matcher /26 reads a pair's residuals under a smooth light field (``dedupdask.match._light_field``).
It was written at stop 66 from one edit, ``quality_unseen.py``'s vintage filter, whose dark
vignette sank drawings and photos alike. These eight edits were written after that code and
before it ran on them, to ask whether the mechanism holds for light it was not shaped on:
albumentations 2.0.8's ``Illumination`` (a linear gradient, a lit or shaded corner, a spotlight)
and plasma fields (``PlasmaBrightnessContrast``, ``PlasmaShadow``: fractal, not smooth), a lens's
natural cos^4 falloff, and two edits the field does not model by construction -- a white
vignette (the corners faded towards white: light added, not multiplied) and a graduated tinted
filter (a sunset gradient, a different colour cast in each region). As in ``quality_unseen.py``,
each packaged photo, wallpaper and Tux Paint stamp gets two copies, the edits cycling, each then
resized to 70-100 % and saved as JPEG q75-90; openclipart drawings and game textures are added as
distractors. ``ddk.run()`` and fastdup run at their defaults on the same shards.

    python benchmarks/quality_light.py
    python benchmarks/quality_light.py --seed 1 --no-fastdup

Prints recall per edit and kind of picture, the share of planted pairs dedupdask verified, the
precision on pairs involving a copy and the false pairs (``quality_orientation.py`` does the
work). Figures are printed, not asserted.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edit_families as ef  # noqa: E402
import quality_orientation as qo  # noqa: E402


def linear_light(img, rng, backgrounds):
    """Light falling off across the picture at any angle, +-10-20 % (albumentations Illumination, linear)."""
    import albumentations as A

    i = float(rng.uniform(0.1, 0.2))  # the library allows at most 0.2: a gain of 1 -+ 0.2
    return ef._alb(img, A.Illumination(mode="linear", intensity_range=(i, i), effect_type="both", p=1.0), rng)


def corner_light(img, rng, backgrounds):
    """One corner lit or shaded by 10-20 % (albumentations Illumination, corner)."""
    import albumentations as A

    i = float(rng.uniform(0.1, 0.2))  # the library allows at most 0.2: a gain of 1 -+ 0.2
    return ef._alb(img, A.Illumination(mode="corner", intensity_range=(i, i), effect_type="both", p=1.0), rng)


def spotlight(img, rng, backgrounds):
    """A soft spotlight or shade, 10-20 % (albumentations Illumination, gaussian)."""
    import albumentations as A

    i = float(rng.uniform(0.1, 0.2))  # the library allows at most 0.2: a gain of 1 -+ 0.2
    t = A.Illumination(mode="gaussian", intensity_range=(i, i), effect_type="both", sigma_range=(0.3, 0.8), p=1.0)
    return ef._alb(img, t, rng)


def plasma_light(img, rng, backgrounds):
    """Brightness and contrast varying over a fractal field, +-15 % (albumentations PlasmaBrightnessContrast)."""
    import albumentations as A

    t = A.PlasmaBrightnessContrast(brightness_range=(-0.15, 0.15), contrast_range=(-0.15, 0.15), roughness=3.0, p=1.0)
    return ef._alb(img, t, rng)


def plasma_shadow(img, rng, backgrounds):
    """A cloud's shadow of 20-40 % over a fractal field (albumentations PlasmaShadow)."""
    import albumentations as A

    return ef._alb(img, A.PlasmaShadow(shadow_intensity_range=(0.2, 0.4), roughness=3.0, p=1.0), rng)


def lens_falloff(img, rng, backgrounds):
    """A wide lens's natural vignetting: cos^4 of the angle off axis, corners at 45-70 %."""
    a = np.asarray(img, np.float32)
    h, w = a.shape[:2]
    corner = float(rng.uniform(0.45, 0.7))
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - (w - 1) / 2) / ((w - 1) / 2 or 1), (yy - (h - 1) / 2) / ((h - 1) / 2 or 1)) / np.sqrt(2)
    tan_edge = np.sqrt(corner ** -0.5 - 1.0)  # cos^4 = corner at r = 1
    v = np.cos(np.arctan(r * tan_edge)) ** 4
    return Image.fromarray(np.clip(a * v[..., None] + 0.5, 0, 255).astype(np.uint8))


def white_vignette(img, rng, backgrounds):
    """The corners faded towards white by up to 45-70 % (a soft-focus frame): light added, not multiplied."""
    a = np.asarray(img, np.float32)
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)) / np.sqrt(2)
    alpha = float(rng.uniform(0.45, 0.7)) * np.clip((r - 0.35) / 0.65, 0, 1) ** 2
    a = a * (1 - alpha[..., None]) + 255.0 * alpha[..., None]
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def graduated_tint(img, rng, backgrounds):
    """A graduated filter: an orange or blue cast, 20-35 % strong at one edge, fading to none past the middle."""
    a = np.asarray(img, np.float32)
    h, w = a.shape[:2]
    colour = np.array((255, 140, 40) if rng.uniform() < 0.5 else (40, 110, 255), np.float32)
    t = np.linspace(1.0, 0.0, h)[:, None] if rng.uniform() < 0.5 else np.linspace(0.0, 1.0, h)[:, None]
    alpha = float(rng.uniform(0.2, 0.35)) * np.clip((t - 0.4) / 0.6, 0, 1) * np.ones((1, w))
    a = a * (1 - alpha[..., None]) + colour * alpha[..., None]
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


LIGHT = {
    "linear light falloff": linear_light,
    "corner lit or shaded": corner_light,
    "spotlight or shade": spotlight,
    "plasma brightness/contrast": plasma_light,
    "plasma shadow": plasma_shadow,
    "lens falloff (cos^4)": lens_falloff,
    "white vignette": white_vignette,
    "graduated tint": graduated_tint,
}

if __name__ == "__main__":
    raise SystemExit(qo.main(edits=LIGHT, copies=2, name="light", doc=__doc__))
