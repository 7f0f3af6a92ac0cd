"""Decode stage: encoded image bytes -> model-size RGB array, size, md5 and image stats.

Pillow decodes; JPEGs use draft mode so libjpeg scales down in the DCT domain before the
resize. A pixel-count guard runs on the header before any pixel is decoded, so a
decompression bomb costs nothing. Every failure becomes an ``error_code``, never an exception.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["Decoded", "decode_image", "sniff_image", "STAT_COLUMNS", "STATS_VERSION", "ERROR_CODES"]

# Truncated images are errors, not half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False

STAT_COLUMNS = ("mean", "min", "max", "stdv", "blur", "unique", "contrast", "p01", "p99", "chroma")

STATS_VERSION = 2
"""Version of the per-image stats, recorded as ``stats_version`` in every ``done.json``.

1 (no ``stats_version`` in done.json): mean, min, max, stdv, blur, unique, contrast.
2: also ``p01``/``p99`` (grey levels of the 1st/99th percentile) and ``chroma``; archives
extracted before read as null there, so the issue types that need them are not reported.
"""

ERROR_CODES = (
    "VALID",
    "ERROR_CORRUPT_IMAGE",
    "ERROR_IMAGE_TOO_SMALL",
    "ERROR_IMAGE_TOO_LARGE",
    "ERROR_MEMBER_TOO_LARGE",
    "ERROR_READ_MEMBER",
    "ERROR_MISSING_FILE",
    "ERROR_ARCHIVE_TOO_LARGE",
)

_MAGIC = (
    (b"\xff\xd8\xff", 0),
    (b"\x89PNG\r\n\x1a\n", 0),
    (b"GIF87a", 0),
    (b"GIF89a", 0),
    (b"BM", 0),
    (b"II*\x00", 0),
    (b"MM\x00*", 0),
    (b"WEBP", 8),
)


def sniff_image(data: bytes | None) -> bool:
    """True when the bytes start like a JPEG, PNG, GIF, BMP, TIFF or WebP file."""
    if not data:
        return False
    return any(data[off : off + len(sig)] == sig for sig, off in _MAGIC) and (
        data[8:12] != b"WEBP" or data[:4] == b"RIFF"
    )


@dataclass
class Decoded:
    """Outcome of decoding one image.

    ``pixels`` is uint8 ``[height, width, 3]`` at the model's input size, or None when
    ``error_code != "VALID"``. ``width``/``height`` are the original size (0 if unknown).
    """

    error_code: str
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    stats: dict[str, float] | None = None
    pixel_md5: str | None = None
    message: str | None = None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> RGB; alpha is composited on white, 16-bit and float scaled to 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        lo = 0.0 if im.mode.startswith("I;16") else min(float(a.min()), 0.0)
        a = np.clip((a - lo) * (255.0 / (hi - lo if hi > lo else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def _stats(gray: np.ndarray) -> dict[str, float]:
    """fastdup-style stats on the grey model-size image.

    ``blur`` is the variance of the 4-neighbour Laplacian (low = blurry), ``unique`` the number
    of distinct grey levels, ``contrast`` Michelson's (max - min) / (max + min), ``p01`` /
    ``p99`` the grey levels below which 1 % / 99 % of the pixels lie.
    """
    hist = np.bincount(gray.ravel(), minlength=256)  # one pass gives all but blur
    levels = np.flatnonzero(hist)
    n = max(int(gray.size), 1)
    mean = float(hist @ _LEVELS) / n
    var = max(float(hist @ _LEVELS_SQ) / n - mean * mean, 0.0)
    mn, mx = (float(levels[0]), float(levels[-1])) if levels.size else (0.0, 0.0)
    g = gray.astype(np.float32)
    lap = -4.0 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    cum = np.cumsum(hist)
    return {
        "mean": mean,
        "min": mn,
        "max": mx,
        "stdv": var**0.5,
        "blur": float(lap.var()) if lap.size else 0.0,
        "unique": float(levels.size),
        "contrast": (mx - mn) / (mx + mn) if mx + mn > 0 else 0.0,
        "p01": float(np.searchsorted(cum, 0.01 * n)),
        "p99": float(np.searchsorted(cum, 0.99 * n)),
    }


def _chroma(px: np.ndarray) -> float:
    """99th percentile of the per-pixel spread max(R, G, B) - min(R, G, B): 0 = grey image."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    cum = np.cumsum(np.bincount(spread.ravel(), minlength=256))
    return float(np.searchsorted(cum, 0.99 * max(int(spread.size), 1)))


_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS_SQ = _LEVELS * _LEVELS


def decode_image(
    data: bytes,
    size: tuple[int, int],
    *,
    max_image_pixels: int = 100_000_000,
    min_image_size: int = 10,
) -> Decoded:
    """Decode one encoded image to a model-size RGB array, with its stats.

    Parameters
    ----------
    data : bytes
        The encoded file.
    size : (height, width)
        The model input size; the image is squashed to it (aspect not kept, as the models
        were evaluated).
    max_image_pixels : int
        Header pixel count above which decoding is refused (``ERROR_IMAGE_TOO_LARGE``).
    min_image_size : int
        Images narrower or shorter are ``ERROR_IMAGE_TOO_SMALL``.

    Returns
    -------
    Decoded
        Never raises for bad bytes.

    Examples
    --------
    >>> buf = io.BytesIO(); Image.new("RGB", (64, 48), "red").save(buf, "PNG")
    >>> d = decode_image(buf.getvalue(), (32, 32))
    >>> d.error_code, d.width, d.height, d.pixels.shape
    ('VALID', 64, 48, (32, 32, 3))
    """
    h, w = size
    try:
        with warnings.catch_warnings():
            # Our own max_image_pixels guard below replaces Pillow's warning; Pillow's hard
            # limit (2 x Image.MAX_IMAGE_PIXELS) still raises DecompressionBombError.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_image_pixels:
                return Decoded(
                    "ERROR_IMAGE_TOO_LARGE", width, height,
                    message=f"{width}x{height} exceeds max_image_pixels={max_image_pixels}",
                )
            if width < min_image_size or height < min_image_size:
                return Decoded("ERROR_IMAGE_TOO_SMALL", width, height,
                               message=f"{width}x{height} is under {min_image_size}x{min_image_size}")
            if im.format == "JPEG":
                im.draft("RGB", (w, h))
            elif getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF / multi-page TIFF: the first frame
            im = _to_rgb(im)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
            px = np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        return Decoded("ERROR_IMAGE_TOO_LARGE", message=str(e))
    except UnidentifiedImageError:
        return Decoded("ERROR_CORRUPT_IMAGE", message="cannot identify image file")
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError,
            struct.error, ZeroDivisionError, MemoryError, RuntimeError) as e:
        w0, h0 = (locals().get("width", 0), locals().get("height", 0))
        return Decoded("ERROR_CORRUPT_IMAGE", w0, h0, message=f"{type(e).__name__}: {e}")
    if px.shape != (h, w, 3):
        return Decoded("ERROR_CORRUPT_IMAGE", width, height, message=f"decoded shape {px.shape}")
    px = np.ascontiguousarray(px)
    p32 = px.astype(np.uint32)
    gray = ((p32[..., 0] * 299 + p32[..., 1] * 587 + p32[..., 2] * 114 + 500) // 1000).astype(np.uint8)
    pixel_md5 = hashlib.md5(px.tobytes() + f"{width}x{height}".encode()).hexdigest()
    return Decoded("VALID", width, height, px, {**_stats(gray), "chroma": _chroma(px)}, pixel_md5)

