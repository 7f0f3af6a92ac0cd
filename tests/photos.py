"""Real photographs for tests: overlapping tiles of scikit-learn's two sample images (tiles of
one photo are look-alikes, which the tiers must not call copies)."""

from __future__ import annotations

import io

from PIL import Image


def tiles() -> list[Image.Image]:
    """200 x 150 tiles of ``china.jpg`` and ``flower.jpg``, 55 px / 45 px apart."""
    from sklearn.datasets import load_sample_image

    out = []
    for name in ("china.jpg", "flower.jpg"):
        im = Image.fromarray(load_sample_image(name))
        w, h = im.size
        for y in range(0, h - 150, 45):
            for x in range(0, w - 200, 55):
                out.append(im.crop((x, y, x + 200, y + 150)))
    return out


def jpg(im: Image.Image, q: int = 90) -> bytes:
    """``im`` as JPEG bytes."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()
