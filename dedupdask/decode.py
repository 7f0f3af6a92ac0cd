"""Decode stage: encoded image bytes -> model-size RGB array, size, pixel hashes and stats.

Pillow decodes; JPEGs use draft mode so libjpeg scales down in the DCT domain before the
resize, which is Pillow 13's antialiased bilinear resize in compiled form, bit for bit
(:func:`dedupdask.kernels.resize_bilinear`; Pillow's own past :data:`KERNEL_RESIZE_PIXELS`).
A pixel-count guard runs on the header before any pixel is decoded, so a decompression bomb
costs nothing. Every failure becomes an ``error_code``, never an exception.

:func:`to_rgb` is the one conversion from a decoded Pillow image to what a viewer shows:
EXIF orientation applied, transparency composited on white, 8-bit RGB. Embeddings,
verification, thumbnails and the benchmarks all go through it (via :func:`open_rgb`), so the
model sees what the gallery shows. :data:`DECODE_VERSION` names these choices in every
``done.json``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = [
    "DECODE_VERSION",
    "ERROR_CODES",
    "KERNEL_RESIZE_PIXELS",
    "STATS_VERSION",
    "STAT_COLUMNS",
    "Decoded",
    "ImageRefused",
    "decode_image",
    "exif_orientation",
    "load_rgb",
    "open_image",
    "open_rgb",
    "pixel_hash",
    "sniff_image",
    "text_line_bands",
    "to_rgb",
]

# Truncated images are errors, not half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DECODE_VERSION = 2
"""How images are decoded; every ``done.json`` records it as ``decode_version``.

1 (``done.json`` without ``decode_version``): EXIF orientation ignored, ``width``/``height``
as stored in the file, ``pixel_md5`` the md5 of the model-input pixels.
2: EXIF orientation applied before anything else, ``width``/``height`` as displayed,
``pixel_md5`` the md5 of the full-resolution pixels (null when the file was decoded at a
reduced scale) and ``input_md5`` the md5 of the model-input pixels.
Features of different decode versions are never analysed together (a rotated photo would be
embedded one way in one archive and the other way in the next)."""

KERNEL_RESIZE_PIXELS = 4_000_000
"""Decoded images of at most this many pixels (every draft-decoded JPEG, most other files) are
resized by :func:`dedupdask.kernels.resize_bilinear`, larger ones by Pillow's ``Image.resize``:
the same pixels either way, but the kernel reads a numpy copy of the image, which for a
100-megapixel PNG would be 300 MB more beside Pillow's own."""

STAT_COLUMNS = (
    "mean", "min", "max", "stdv", "blur", "unique", "contrast", "p01", "p99", "chroma",
    "residual_range", "text_lines",
)  # fmt: skip

STATS_VERSION = 3
"""Version of the per-image stats, recorded as ``stats_version`` in every ``done.json``.

1 (no ``stats_version`` in done.json): mean, min, max, stdv, blur, unique, contrast.
2: also ``p01``/``p99`` (grey levels of the 1st/99th percentile) and ``chroma``; archives
extracted before read as null there, so the issue types that need them are not reported.
3: also ``residual_range`` and ``text_lines`` (:func:`_residual_range`, :func:`_text_lines`);
null in archives extracted before, where the parts of ``low_information`` that need them are
not scored.
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
    ``error_code != "VALID"``. ``width``/``height`` are the original size as displayed
    (EXIF orientation applied, so a portrait photo stored sideways is taller than wide); for
    an image refused on its header (too large, too small) the size as stored; 0 if unknown.
    ``pixel_md5`` is the md5 of the full-resolution RGB pixels (see :func:`pixel_hash`), None
    when the decoder worked at a reduced scale (JPEG draft mode) or the conversion to 8-bit
    RGB dropped something (see :func:`decode_image`); ``input_md5`` the same hash of
    ``pixels`` with the full size.
    """

    error_code: str
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    stats: dict[str, float] | None = None
    pixel_md5: str | None = None
    message: str | None = None
    input_md5: str | None = None


class ImageRefused(ValueError):
    """An image refused on its header: ``code`` is ``ERROR_IMAGE_TOO_LARGE`` or ``..._TOO_SMALL``."""

    def __init__(self, code: str, width: int, height: int, message: str) -> None:
        super().__init__(message)
        self.code, self.width, self.height = code, width, height


# ImageOps.exif_transpose's table: EXIF Orientation -> the transpose that displays the image.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS = frozenset({5, 6, 7, 8})  # orientations whose displayed width is the stored height


def exif_orientation(im: Image.Image) -> int:
    """The EXIF Orientation (1..8) of an opened image; 1 when absent, invalid or unreadable.

    Broken metadata never makes a picture unreadable: viewers ignore it, and so do we.

    Examples
    --------
    >>> exif_orientation(Image.new("RGB", (4, 2)))
    1
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": library code stays silent
            value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF: shown as stored, like viewers do
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _mode_to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> RGB; alpha is composited on white, 16-bit and float scaled to 8 bits."""
    if im.mode in ("P", "L", "RGB") and im.info.get("transparency") is not None:
        im = im.convert("RGBA")  # a transparent palette entry or colour key
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        lo = 0.0 if im.mode.startswith("I;16") else min(float(a.min()), 0.0)
        a = np.clip((a - lo) * (255.0 / (hi - lo if hi > lo else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def to_rgb(im: Image.Image, orientation: int | None = None) -> Image.Image:
    """The one RGB conversion: a decoded image as a viewer shows it, in 8-bit RGB.

    EXIF orientation is applied exactly as :func:`PIL.ImageOps.exif_transpose` does;
    transparency (alpha channels, transparent palette entries, colour keys) is composited on
    white; 16-bit images are
    scaled from 0..65535, 32-bit integer and float images from ``min(0, min)..max(1, max)``;
    every other mode goes through Pillow's ``convert("RGB")``.

    Parameters
    ----------
    im : PIL.Image.Image
        An opened (possibly draft-mode, possibly not yet loaded) image.
    orientation : int, optional
        Its EXIF orientation when already read (default: read it here).

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``, displayed orientation.

    Examples
    --------
    >>> im = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    >>> out = to_rgb(im, orientation=6)
    >>> out.mode, out.size, out.getpixel((0, 0))
    ('RGB', (2, 4), (255, 255, 255))
    """
    if orientation is None:
        orientation = exif_orientation(im)
    rgb = _mode_to_rgb(im)
    method = _TRANSPOSE.get(orientation)
    return rgb if method is None else rgb.transpose(method)


def open_rgb(
    data: bytes,
    *,
    draft: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
    max_image_pixels: int = 100_000_000,
    min_image_size: int = 1,
) -> tuple[Image.Image, int, int]:
    """Decode encoded bytes through :func:`to_rgb`, at a reduced scale when the format allows.

    Parameters
    ----------
    data : bytes
        The encoded file.
    draft : (width, height) or callable, optional
        The smallest size (as displayed) the caller needs; JPEGs are then decoded at the
        largest DCT scale (1/2, 1/4, 1/8) that still covers it. A callable gets the displayed
        ``(width, height)`` and returns the box. None decodes at full resolution.
    max_image_pixels : int
        Header pixel count above which nothing is decoded.
    min_image_size : int
        Images narrower or shorter are refused.

    Returns
    -------
    (PIL.Image.Image, int, int)
        The RGB image (full size, or the draft scale) and the full size as displayed
        ``(width, height)``: full resolution when ``image.size == (width, height)``.

    Raises
    ------
    ImageRefused
        Too many pixels or too small, from the header alone (size as stored).
    Exception
        Whatever Pillow raises for bytes it cannot decode.

    Examples
    --------
    >>> buf = io.BytesIO(); Image.new("RGB", (64, 48), "red").save(buf, "PNG")
    >>> im, w, h = open_rgb(buf.getvalue())
    >>> im.mode, im.size, (w, h)
    ('RGB', (64, 48), (64, 48))
    """
    im = open_image(data, max_image_pixels=max_image_pixels, min_image_size=min_image_size)
    return load_rgb(im, draft=draft)


def open_image(
    data: bytes, *, max_image_pixels: int = 100_000_000, min_image_size: int = 1
) -> Image.Image:
    """Open encoded bytes and check the header's size; nothing is decoded yet.

    Raises :class:`ImageRefused` past ``max_image_pixels`` or under ``min_image_size`` (a
    decompression bomb costs nothing), or what Pillow raises for bytes it cannot identify.

    Examples
    --------
    >>> buf = io.BytesIO(); Image.new("L", (640, 480)).save(buf, "PNG")
    >>> open_image(buf.getvalue(), max_image_pixels=1000)
    Traceback (most recent call last):
    ...
    dedupdask.decode.ImageRefused: 640x480 image is larger than 1000 pixels (max_image_pixels)
    """
    with warnings.catch_warnings():
        # Our own max_image_pixels guard replaces Pillow's DecompressionBombWarning (its hard
        # limit, 2 x Image.MAX_IMAGE_PIXELS, still raises DecompressionBombError); its other
        # warnings ("Corrupt EXIF data", ...) say nothing a caller can act on: library code
        # stays silent, a broken image becomes an error row.
        warnings.simplefilter("ignore")
        im = Image.open(io.BytesIO(data))
    sw, sh = im.size
    if sw * sh > max_image_pixels:
        raise ImageRefused("ERROR_IMAGE_TOO_LARGE", sw, sh,
                           f"{sw}x{sh} image is larger than {max_image_pixels} pixels "
                           "(max_image_pixels)")  # fmt: skip
    if sw < min_image_size or sh < min_image_size:
        raise ImageRefused("ERROR_IMAGE_TOO_SMALL", sw, sh,
                           f"{sw}x{sh} is under {min_image_size}x{min_image_size}")  # fmt: skip
    return im


def load_rgb(
    im: Image.Image,
    *,
    draft: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
) -> tuple[Image.Image, int, int]:
    """Decode an image from :func:`open_image` through :func:`to_rgb` (see :func:`open_rgb`).

    Examples
    --------
    >>> exif = Image.Exif(); exif[0x0112] = 6  # stored sideways
    >>> buf = io.BytesIO(); Image.new("RGB", (640, 480)).save(buf, "JPEG", exif=exif.tobytes())
    >>> im, w, h = load_rgb(open_image(buf.getvalue()), draft=(100, 100))
    >>> im.size, (w, h)  # decoded at 1/4 scale, turned as displayed
    ((120, 160), (480, 640))
    """
    sw, sh = im.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # see open_image
        if im.format == "JPEG":
            orientation = exif_orientation(im)  # from the header: nothing decoded yet
            swap = orientation in _SWAPS
            width, height = (sh, sw) if swap else (sw, sh)
            if draft is not None:
                box = draft(width, height) if callable(draft) else draft
                im.draft("RGB", (box[1], box[0]) if swap else (box[0], box[1]))
        else:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated GIF / multi-page TIFF: the first frame
            im.load()  # decoding errors are the image's, not its metadata's
            orientation = exif_orientation(im)
            width, height = (sh, sw) if orientation in _SWAPS else (sw, sh)
        return to_rgb(im, orientation), width, height


def _rgb_is_lossless(im: Image.Image) -> bool:
    """Whether :func:`to_rgb` keeps everything that tells two decoded images apart.

    Not so for transparency (composited away), more than 8 bits per channel, CMYK, or frames
    after the first: equal RGB pixels would not make such files the same image.
    """
    return (
        im.mode in ("RGB", "L", "1", "P")
        and im.info.get("transparency") is None
        and getattr(im, "n_frames", 1) == 1
    )


def pixel_hash(pixels: Image.Image | np.ndarray, width: int, height: int) -> str:
    """md5 of 8-bit RGB pixels' raw bytes (row-major, 3 per pixel) followed by ``b"WxH"``.

    ``width``/``height`` are the image's size as displayed: for full-resolution pixels their
    own shape (runs of bytes that only differ in shape differ), for model-input pixels the
    original size (a picture and its resized copy look alike at the model's size but are not
    the same image).

    Examples
    --------
    >>> import hashlib
    >>> px = np.zeros((2, 3, 3), np.uint8)
    >>> pixel_hash(px, 3, 2) == hashlib.md5(px.tobytes() + b"3x2").hexdigest()
    True
    >>> pixel_hash(Image.fromarray(px), 3, 2) == pixel_hash(px, 3, 2)
    True
    """
    if isinstance(pixels, Image.Image):
        h = hashlib.md5(pixels.tobytes())
    else:
        h = hashlib.md5(np.ascontiguousarray(pixels, dtype=np.uint8))
    h.update(f"{width}x{height}".encode())
    return h.hexdigest()


def _level(counts: np.ndarray, q: float) -> int:
    """The bin below which a share ``q`` of the counted pixels lies (``np.percentile``'s
    ``inverted_cdf`` on binned values)."""
    cum = np.cumsum(counts)
    return int(np.searchsorted(cum, q * max(int(cum[-1]), 1)))


def _stats(px: np.ndarray) -> dict[str, float]:
    """fastdup-style stats of the model-size RGB image, on its grey image (BT.601 luma).

    ``blur`` is the variance of the 4-neighbour Laplacian (low = blurry), ``unique`` the number
    of distinct grey levels, ``contrast`` Michelson's (max - min) / (max + min), ``p01`` /
    ``p99`` the grey levels below which 1 % / 99 % of the pixels lie; ``residual_range``,
    ``text_lines`` and ``chroma`` see :func:`_residual_range`, :func:`_text_lines` and
    :func:`_chroma`. One compiled pass gives the histograms they are read from
    (:func:`dedupdask.kernels.grey_measures`).
    """
    from .kernels import grey_measures  # numba: loaded when the first image is measured

    h, w = px.shape[:2]
    gray, hist, spread, lap_var, residual = grey_measures(px, _surface_basis(h, w))
    levels = np.flatnonzero(hist)
    n = max(h * w, 1)
    mean = float(hist @ _LEVELS) / n
    var = max(float(hist @ _LEVELS_SQ) / n - mean * mean, 0.0)
    mn, mx = (float(levels[0]), float(levels[-1])) if levels.size else (0.0, 0.0)
    return {
        "mean": mean,
        "min": mn,
        "max": mx,
        "stdv": var**0.5,
        "blur": float(lap_var),
        "unique": float(levels.size),
        "contrast": (mx - mn) / (mx + mn) if mx + mn > 0 else 0.0,
        "p01": float(_level(hist, 0.01)),
        "p99": float(_level(hist, 0.99)),
        "residual_range": _residual_range(residual) if h >= 3 and w >= 3 else mx - mn,
        "text_lines": _text_lines(gray, hist),
        "chroma": _chroma(spread),
    }


@functools.lru_cache(maxsize=8)
def _surface_basis(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred coordinates ``x`` (length ``w``), ``y`` (length ``h``) and the inverse Gram
    matrix of the surfaces ``1, x, y, x^2, xy, y^2`` over the ``h x w`` grid (cached: every
    image of a run has the model's size)."""
    x = (np.arange(w) - (w - 1) / 2) / max(w, 2)
    y = (np.arange(h) - (h - 1) / 2) / max(h, 2)
    px, py = [np.ones(w), x, x * x], [np.ones(h), y, y * y]
    terms = ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))  # powers of (x, y)
    gram = np.array([[(px[a] * px[c]).sum() * (py[b] * py[d]).sum() for c, d in terms] for a, b in terms])
    return x, y, np.linalg.pinv(gram)


def _residual_range(residual: np.ndarray) -> float:
    """p99 - p01 of the grey levels after removing the best-fitting quadratic surface.

    A blank page under uneven light, a vignette or a smooth colour gradient has a wide
    ``p99 - p01`` but nothing left once the surface (the lighting) is removed. ``residual``
    counts the residuals rounded to whole levels, like ``p01``/``p99``, -255..255 in bins
    0..510 (:func:`dedupdask.kernels.grey_measures`; the least-squares fit goes through the
    rows' moments, without BLAS: a worker's cores stay with the model).
    """
    return float(_level(residual, 0.99) - _level(residual, 0.01))


TEXT_INK = 48
"""Grey levels from the background beyond which a pixel is a mark (ink) for :func:`_text_lines`."""
TEXT_LINE_HEIGHT = 1 / 6
"""Largest height (share of the picture's) of a line of text (:func:`text_line_bands`): six
such lines fit, as on a page."""


def _text_lines(gray: np.ndarray, hist: np.ndarray) -> float:
    """The share of the marked rows of the picture that are lines of text, 0 without marks.

    The background is the most common grey level (its histogram smoothed over +-4 levels);
    a page has one: it is 0 unless at least half of the pixels lie within 12 levels of it
    (a fine periodic texture has bands of "marks" too, but no paper between them). A pixel
    is a mark when it is more than :data:`TEXT_INK` levels from the background (either side:
    dark text on paper, light text on a dark or coloured background). A row is marked when
    more than 2 % of its pixels (at least 3) are marks, so a vertical rule, a frame or scanner
    dust does not mark every row. Consecutive marked rows form bands; a band is a **line of
    text** when it is at most 1/6 of the picture high (so at least six such lines fit) and its
    rows start a mark at least 3 times on average (letters, or at small sizes words, side by
    side, where a drawing's outline crosses a row once or twice per shape). A page has at
    least three lines: with fewer it is 0 (a caption, a row of icons). A page of text is all
    lines (1.0); a drawing, a photo or a picture with a caption is mostly not. Text under
    about 3 px high at this size merges into blobs of several words and is not always read
    as lines.
    """
    h, w = gray.shape
    if not h or not w:
        return 0.0
    bg = int(np.argmax(np.convolve(hist, np.ones(9), "same")))
    if hist[max(bg - 12, 0) : bg + 13].sum() < 0.5 * h * w:
        return 0.0
    from .kernels import ink_rows

    top, bottom, n_marked = text_line_bands(*ink_rows(gray, bg, TEXT_INK), w)
    if top.size < 3:
        return 0.0
    return float((bottom - top).sum()) / n_marked


def text_line_bands(per_row: np.ndarray, starts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The lines of text among a picture's rows of marks, as :func:`_text_lines` reads a page.

    A row is marked when more than 2 % of its ``width`` pixels (at least 3) are marks
    (``per_row``); consecutive marked rows form a band, and a band is a line of text when it is
    at most :data:`TEXT_LINE_HEIGHT` of the picture high and its rows start a run of marks
    (``starts``) at least 3 times on average. Also read by the pixel alignment on the pixels
    two pictures differ in (:func:`dedupdask.match._text_lines`).

    Returns
    -------
    (ndarray, ndarray, int)
        The lines' first rows and the rows after their last, and the number of marked rows.

    Examples
    --------
    >>> per_row = np.array([0, 9, 9, 0, 9, 0, 0, 0, 0, 0, 0, 0])
    >>> starts = np.array([0, 3, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    >>> top, bottom, n_marked = text_line_bands(per_row, starts, 40)
    >>> top.tolist(), bottom.tolist(), n_marked
    ([1], [3], 3)
    """
    h = len(per_row)
    marked = per_row > max(2.0, 0.02 * width)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], marked.astype(np.int8), [0]))))
    top, bottom = edges[::2], edges[1::2]
    tall = bottom - top
    cum = np.concatenate(([0], np.cumsum(starts)))
    line = (tall <= TEXT_LINE_HEIGHT * h) & (cum[bottom] - cum[top] >= 3 * tall)
    return top[line], bottom[line], int(marked.sum())


def _chroma(spread: np.ndarray) -> float:
    """99th percentile of the per-pixel spread max(R, G, B) - min(R, G, B) (``spread`` counts
    each value): 0 = grey image."""
    return float(_level(spread, 0.99))


_LEVELS = np.arange(256, dtype=np.float64)
_LEVELS_SQ = _LEVELS * _LEVELS


def decode_image(
    data: bytes,
    size: tuple[int, int] | Callable[[int, int], tuple[int, int]],
    *,
    max_image_pixels: int = 100_000_000,
    min_image_size: int = 10,
    stats: bool = True,
) -> Decoded:
    """Decode one encoded image to a model-size RGB array, with its stats and pixel hashes.

    Parameters
    ----------
    data : bytes
        The encoded file.
    size : (height, width) or callable
        The model input size; the image (as displayed, see :func:`to_rgb`) is squashed to it
        (aspect not kept, as the models were evaluated). A callable gets the displayed
        ``(width, height)`` and returns ``(height, width)`` (verification keeps the aspect).
    max_image_pixels : int
        Header pixel count above which decoding is refused (``ERROR_IMAGE_TOO_LARGE``).
    min_image_size : int
        Images narrower or shorter are ``ERROR_IMAGE_TOO_SMALL``.
    stats : bool
        Also measure the image stats and hash the pixels (extraction); ``False`` returns the
        pixels only (verification's read-back, where they would be thrown away).

    Returns
    -------
    Decoded
        Never raises for bad bytes. ``pixel_md5`` is set when the file was decoded at full
        resolution anyway (every format but JPEG, and JPEGs under twice the model size;
        hashing a JPEG at full size would cost the full decode that draft mode avoids) and its
        8-bit RGB pixels are all there is to it (no transparency, no 16-bit or CMYK samples,
        one frame): equal ``pixel_md5`` then means the same image.

    Examples
    --------
    >>> buf = io.BytesIO(); Image.new("RGB", (64, 48), "red").save(buf, "PNG")
    >>> d = decode_image(buf.getvalue(), (32, 32))
    >>> d.error_code, d.width, d.height, d.pixels.shape, d.pixel_md5 is not None
    ('VALID', 64, 48, (32, 32, 3), True)
    """
    def fit(w_: int, h_: int) -> tuple[int, int]:
        return size(w_, h_) if callable(size) else size

    width = height = 0
    try:
        opened = open_image(data, max_image_pixels=max_image_pixels, min_image_size=min_image_size)
        width, height = opened.size  # as stored, until decoded
        exact_rgb = _rgb_is_lossless(opened)  # before decoding changes the mode
        im, width, height = load_rgb(opened, draft=lambda w_, h_: fit(w_, h_)[::-1])
        h, w = fit(width, height)
        full = pixel_hash(im, width, height) if stats and exact_rgb and im.size == (width, height) else None
        if im.size == (w, h):
            px = np.asarray(im, dtype=np.uint8)
        elif im.width * im.height <= KERNEL_RESIZE_PIXELS:
            from .kernels import resize_bilinear  # numba: Pillow's BILINEAR resize, bit for bit

            px = resize_bilinear(np.asarray(im, dtype=np.uint8), (w, h))
        else:  # Pillow's own: the same pixels, without a full-size array beside Pillow's image
            px = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.uint8)
    except ImageRefused as e:
        return Decoded(e.code, e.width, e.height, message=str(e))
    except Image.DecompressionBombError as e:
        return Decoded("ERROR_IMAGE_TOO_LARGE", message=str(e))
    except UnidentifiedImageError:
        return Decoded("ERROR_CORRUPT_IMAGE", message="cannot identify image file")
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError,
            struct.error, ZeroDivisionError, MemoryError, RuntimeError) as e:
        return Decoded("ERROR_CORRUPT_IMAGE", width, height, message=f"{type(e).__name__}: {e}")
    if px.shape != (h, w, 3):
        return Decoded("ERROR_CORRUPT_IMAGE", width, height, message=f"decoded shape {px.shape}")
    px = np.ascontiguousarray(px)
    if not stats:
        return Decoded("VALID", width, height, px)
    return Decoded("VALID", width, height, px, _stats(px), full, input_md5=pixel_hash(px, width, height))
