"""Decoding: sizes, modes, stats and error codes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from dedupdask.decode import decode_image, sniff_image


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_valid_jpeg_draft_and_stats():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    d = decode_image(_enc(Image.fromarray(arr), "JPEG"), (224, 224))
    assert d.error_code == "VALID" and (d.width, d.height) == (800, 600)
    assert d.pixels.shape == (224, 224, 3) and d.pixels.dtype == np.uint8
    assert d.stats["blur"] > 1000 and d.stats["unique"] > 50


def test_flat_image_stats():
    d = decode_image(_enc(Image.new("RGB", (50, 40), (0, 0, 0)), "PNG"), (32, 32))
    assert d.stats == {"mean": 0.0, "min": 0.0, "max": 0.0, "stdv": 0.0, "blur": 0.0, "unique": 1.0, "contrast": 0.0,
                       "p01": 0.0, "p99": 0.0, "chroma": 0.0, "residual_range": 0.0, "text_lines": 0.0}
    w = decode_image(_enc(Image.new("RGB", (50, 40), (255, 255, 255)), "PNG"), (32, 32))
    assert w.stats["mean"] == 255.0


def _numpy_stats(px: np.ndarray) -> dict[str, float]:
    """The stats written out in numpy, one array operation at a time (the compiled pass must agree)."""
    p = px.astype(np.int64)
    gray = ((p[..., 0] * 299 + p[..., 1] * 587 + p[..., 2] * 114 + 500) // 1000).astype(np.uint8)
    g = gray.astype(np.float64)
    n = g.size

    def level(values: np.ndarray, q: float) -> float:  # the smallest v with count(<= v) >= q n
        return float(np.searchsorted(np.cumsum(np.bincount(values.ravel(), minlength=511)), q * values.size))

    lap = -4.0 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    h, w = gray.shape
    x = ((np.arange(w) - (w - 1) / 2) / max(w, 2)).astype(np.float32)[None, :]
    y = ((np.arange(h) - (h - 1) / 2) / max(h, 2)).astype(np.float32)[:, None]
    basis = np.stack([np.ones((h, w)), x + 0 * y, y + 0 * x, x * x + 0 * y, x * y, y * y + 0 * x], -1).reshape(n, 6)
    c = np.linalg.lstsq(basis.astype(np.float64), g.ravel(), rcond=None)[0].astype(np.float32)
    fit = (c[0] + c[2] * y + c[5] * y * y) + ((c[1] + c[3] * x) * x + c[4] * y * x)
    res = np.clip(gray.astype(np.float32) - fit + np.float32(255.5), 0, 510).astype(np.int64)
    spread = (px.max(axis=2).astype(np.int64) - px.min(axis=2))
    lo, hi = float(gray.min()), float(gray.max())
    return {
        "mean": g.mean(), "min": lo, "max": hi, "stdv": g.std(), "blur": lap.var() if lap.size else 0.0,
        "unique": float(np.unique(gray).size), "contrast": (hi - lo) / (hi + lo) if hi + lo else 0.0,
        "p01": level(gray, 0.01), "p99": level(gray, 0.99), "chroma": level(spread, 0.99),
        "residual_range": level(res, 0.99) - level(res, 0.01) if h >= 3 and w >= 3 else hi - lo,
    }  # fmt: skip


@pytest.mark.parametrize("size", [(96, 128), (31, 7), (3, 3), (2, 9), (1, 1)])
def test_the_compiled_stats_are_the_numpy_formulas(size):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    pictures = [
        rng.integers(0, 256, (h, w, 3)),  # noise
        np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1),  # ramps
        np.clip(40 + 0.02 * (xx - w / 2) ** 2 + 30 * yy / h + rng.normal(0, 3, (h, w)), 0, 255)[..., None]
        .repeat(3, -1),  # a grey page under uneven light
        np.full((h, w, 3), (250, 10, 128)),
    ]
    for arr in pictures:
        px = np.asarray(arr, np.uint8)
        got = decode_image(_enc(Image.fromarray(px), "PNG"), (h, w), min_image_size=1)
        assert np.array_equal(got.pixels, px)
        want = _numpy_stats(px)
        for key, value in want.items():
            tol = 1e-6 * max(abs(value), 1.0) if key in ("mean", "stdv", "blur", "contrast") else 0.0
            assert abs(got.stats[key] - value) <= tol, (key, got.stats[key], value)


def test_blurred_less_sharp_than_original():
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    from PIL import ImageFilter

    sharp = decode_image(_enc(im, "PNG"), (128, 128)).stats["blur"]
    blurred = decode_image(_enc(im.filter(ImageFilter.GaussianBlur(4)), "PNG"), (128, 128)).stats["blur"]
    assert blurred < sharp / 10


@pytest.mark.parametrize(
    "mode,color",
    [("L", 128), ("P", 3), ("RGBA", (255, 0, 0, 0)), ("CMYK", (0, 255, 0, 0)), ("I;16", 40000), ("LA", (10, 255))],
)
def test_modes_become_rgb(mode, color):
    im = Image.new(mode, (40, 30), color)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    d = decode_image(_enc(im, fmt), (16, 16))
    assert d.error_code == "VALID", d.message
    assert d.pixels.shape == (16, 16, 3)
    if mode == "RGBA":  # fully transparent -> white background
        assert d.pixels.min() == 255


def test_error_codes():
    assert decode_image(b"", (16, 16)).error_code == "ERROR_CORRUPT_IMAGE"
    assert decode_image(b"not an image at all", (16, 16)).error_code == "ERROR_CORRUPT_IMAGE"
    good = _enc(Image.new("RGB", (300, 200), (1, 2, 3)), "JPEG")
    assert decode_image(good[: len(good) // 2], (16, 16)).error_code == "ERROR_CORRUPT_IMAGE"
    tiny = decode_image(_enc(Image.new("RGB", (5, 5)), "PNG"), (16, 16))
    assert (tiny.error_code, tiny.width, tiny.height) == ("ERROR_IMAGE_TOO_SMALL", 5, 5)
    big = decode_image(good, (16, 16), max_image_pixels=300 * 200 - 1)
    assert big.error_code == "ERROR_IMAGE_TOO_LARGE" and big.pixels is None


def _png_claiming(width: int, height: int) -> bytes:
    """A 1-bit PNG whose header claims ``width x height`` pixels, with one row of data: what a
    decompression bomb's header says, without spending seconds encoding a real one."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" + b"\0" * ((width + 7) // 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")


def test_decompression_bomb_header_only():
    # A PNG whose header claims 12000 x 12000 pixels: refused before decoding.
    d = decode_image(_png_claiming(12000, 12000), (16, 16), max_image_pixels=100_000_000)
    assert d.error_code == "ERROR_IMAGE_TOO_LARGE" and (d.width, d.height) == (12000, 12000)
    # past Pillow's own hard limit the size is not even reported, but the outcome is the same
    assert decode_image(_png_claiming(40000, 40000), (16, 16)).error_code == "ERROR_IMAGE_TOO_LARGE"
    # and under the limit the same kind of file is let through to the decoder
    small = decode_image(_png_claiming(64, 64), (16, 16))
    assert small.error_code != "ERROR_IMAGE_TOO_LARGE" and (small.width, small.height) == (64, 64)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (30, 30), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    d = decode_image(buf.getvalue(), (8, 8))
    assert d.error_code == "VALID" and d.pixels[..., 0].mean() > 200


def test_sniff():
    assert sniff_image(_enc(Image.new("RGB", (4, 4)), "JPEG"))
    assert sniff_image(_enc(Image.new("RGB", (4, 4)), "PNG"))
    assert sniff_image(_enc(Image.new("RGB", (4, 4)), "WEBP"))
    assert not sniff_image(b"hello world")
    assert not sniff_image(b"")


# -- what the model sees is what a viewer shows (issue 22, point 6) ----------------------------
def _picture(size=(800, 400), seed=3) -> Image.Image:
    from dedupdask.datasets import random_picture

    return random_picture(np.random.default_rng(seed), size)


def _with_orientation(im: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _enc(im, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


def _shown(im: Image.Image, orientation: int) -> Image.Image:
    """What a viewer shows for ``im`` stored with ``orientation``: Pillow's own
    ``ImageOps.exif_transpose`` (the oracle), applied to a lossless copy carrying the tag."""
    with Image.open(io.BytesIO(_with_orientation(im, orientation, "PNG"))) as stored:
        return ImageOps.exif_transpose(stored).convert("RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt,size", [("JPEG", (160, 160)), ("JPEG", (64, 64)), ("PNG", (160, 160))])
def test_exif_orientation_applied_even_in_draft_mode(orientation, fmt, size):
    """A file stored sideways with an EXIF Orientation decodes like its turned twin; draft
    mode (JPEG scaled in the DCT domain first) still applies it; sizes are as displayed."""
    im = _picture()
    stored = _with_orientation(im, orientation, fmt)
    twin_im = _shown(im, orientation)
    twin = _enc(twin_im, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    a, b = decode_image(stored, size), decode_image(twin, size)
    assert a.error_code == b.error_code == "VALID"
    assert (a.width, a.height) == (b.width, b.height) == twin_im.size
    diff = np.abs(a.pixels.astype(np.int16) - b.pixels).mean()
    assert diff < 2.0, diff
    if orientation in (5, 6, 7, 8):  # and not what the unturned picture gives
        assert np.abs(a.pixels.astype(np.int16) - decode_image(_enc(im, fmt), size).pixels).mean() > 20
    if fmt == "PNG":  # the full-resolution pixels of a lossless file are the twin's exactly
        assert a.pixel_md5 == b.pixel_md5 is not None
    # verification keeps the aspect ratio: of the image as displayed
    from dedupdask.match import prepare_image

    pa_, pb_ = prepare_image(stored), prepare_image(twin)
    portrait = orientation in (5, 6, 7, 8)
    assert pa_.rgb.shape == pb_.rgb.shape == ((256, 128, 3) if portrait else (128, 256, 3))


def test_broken_exif_is_ignored_not_an_error():
    im = _picture((300, 200))
    for exif in (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff", b"Exif\x00\x00garbage"):
        d = decode_image(_enc(im, "JPEG", exif=exif), (64, 64))
        assert d.error_code == "VALID" and (d.width, d.height) == (300, 200)
    odd = Image.Exif()
    odd[0x0112] = 9  # not an orientation
    assert decode_image(_enc(im, "JPEG", exif=odd.tobytes()), (64, 64)).width == 300


def test_pixel_md5_hashes_full_resolution_input_md5_the_model_input():
    """pixel_md5 is what its name says: equal only for equal full-resolution pixels (any
    encoding); input_md5 is the hash of the model input. Pixels changed only at full
    resolution keep the input_md5 and change the pixel_md5."""
    import hashlib

    im = _picture((400, 300), seed=5)
    png = decode_image(_enc(im, "PNG"), (160, 160))
    bmp = decode_image(_enc(im, "BMP"), (160, 160))
    assert png.pixel_md5 == bmp.pixel_md5 == hashlib.md5(im.tobytes() + b"400x300").hexdigest()
    arr = np.asarray(im).copy()
    for y, x in ((150, 200), (10, 10), (77, 301), (299, 399), (123, 45)):
        arr2 = arr.copy()
        arr2[y, x, 0] ^= 1
        other = decode_image(_enc(Image.fromarray(arr2), "PNG"), (160, 160))
        if other.input_md5 == png.input_md5:
            break
    else:
        pytest.fail("no one-pixel change was invisible at 160 px")
    assert np.array_equal(other.pixels, png.pixels) and other.pixel_md5 != png.pixel_md5
    # a JPEG decoded at a reduced scale (draft mode) has no full-resolution hash; a small one has
    big = decode_image(_enc(im, "JPEG"), (64, 64))
    assert big.pixel_md5 is None and big.input_md5 is not None
    small_jpeg = _enc(im.resize((100, 75)), "JPEG")
    small = decode_image(small_jpeg, (64, 64))
    full = Image.open(io.BytesIO(small_jpeg)).convert("RGB")
    assert small.pixel_md5 == hashlib.md5(full.tobytes() + b"100x75").hexdigest()
    # files whose 8-bit RGB is not all there is to them get no pixel_md5: two animations
    # with the same first frame, pictures that differ under transparent pixels
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    gifs = [_enc(frames[0], "GIF", save_all=True, append_images=[f]) for f in frames[1:]]
    g1, g2 = (decode_image(g, (16, 16)) for g in gifs)
    assert g1.input_md5 == g2.input_md5 and g1.pixel_md5 is None and g2.pixel_md5 is None
    under = [Image.new("RGBA", (30, 30), (v, 0, 0, 0)) for v in (0, 200)]
    r1, r2 = (decode_image(_enc(u, "PNG"), (16, 16)) for u in under)
    assert r1.input_md5 == r2.input_md5 and r1.pixel_md5 is None and r2.pixel_md5 is None
    i16 = decode_image(_enc(Image.new("I;16", (30, 30), 40000), "PNG"), (16, 16))
    assert i16.error_code == "VALID" and i16.pixel_md5 is None


def test_transparency_composited_on_white_everywhere():
    """One conversion: colour-keyed, palette and alpha transparency all become white, in the
    model input and in the thumbnail alike."""
    from dedupdask.decode import to_rgb
    from dedupdask.readback import make_thumbnail

    rgb_key = Image.new("RGB", (40, 40), (0, 0, 0))
    grey_key = Image.new("L", (40, 40), 0)
    alpha = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    for im, kw in ((rgb_key, {"transparency": (0, 0, 0)}), (grey_key, {"transparency": 0}), (alpha, {})):
        data = _enc(im, "PNG", **kw)
        assert decode_image(data, (16, 16)).pixels.min() == 255
        assert to_rgb(Image.open(io.BytesIO(data))).getpixel((5, 5)) == (255, 255, 255)
        t = make_thumbnail(data, max_side=20)
        import base64

        shown = Image.open(io.BytesIO(base64.b64decode(t.uri.split(",", 1)[1])))
        assert np.asarray(shown.convert("L")).min() > 245


def test_large_images_are_resized_by_pillow_to_the_same_pixels(monkeypatch):
    """Past KERNEL_RESIZE_PIXELS the resize is Pillow's own (no full-size numpy copy beside
    Pillow's image); both paths give the same model input, stats and hashes, shrinking and
    enlarging, for a PNG and for a draft-decoded JPEG."""
    import dedupdask.decode as dec

    rng = np.random.default_rng(3)
    px = np.cumsum(rng.integers(0, 9, (300, 420, 3)), axis=1).astype(np.uint8)
    for fmt, size in (("PNG", (160, 160)), ("PNG", (500, 90)), ("JPEG", (64, 64))):
        data = _enc(Image.fromarray(px), fmt)
        kernel = decode_image(data, size)
        monkeypatch.setattr(dec, "KERNEL_RESIZE_PIXELS", 0)
        pillow = decode_image(data, size)
        monkeypatch.undo()
        assert kernel.error_code == pillow.error_code == "VALID"
        assert np.array_equal(kernel.pixels, pillow.pixels), (fmt, size)
        assert (kernel.stats, kernel.pixel_md5, kernel.input_md5) == (pillow.stats, pillow.pixel_md5, pillow.input_md5)
