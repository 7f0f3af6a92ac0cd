"""Benchmarks helper: packaged pictures as the benchmarks use them (RGB on white, <= 512 px).

Shared by ``quality_tiers.py`` and ``quality_families.py``.
"""

from __future__ import annotations

from PIL import Image

from dedupdask.decode import to_rgb

MAX_SIDE = 512


def flatten(img: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """dedupdask's one RGB conversion (:func:`dedupdask.decode.to_rgb`: EXIF orientation applied,
    transparency composited on white), shrunk (Lanczos) to at most ``max_side`` px.

    Examples
    --------
    >>> flatten(Image.new("RGBA", (1024, 256), (0, 0, 0, 0))).getpixel((0, 0)), flatten(Image.new("L", (600, 60))).size
    ((255, 255, 255), (512, 51))
    """
    img = to_rgb(img)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img
