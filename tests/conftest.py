"""Shared fixtures: small generated shards, never downloaded data."""

from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from dedupdask.datasets import make_sample_shards, random_picture


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 72), quality: int = 90) -> bytes:
    buf = io.BytesIO()
    random_picture(np.random.default_rng(seed), size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(size: tuple[int, int], color=(10, 200, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


# (member name, data or a tar member type, expected outcome)
# outcome: "valid", an error code, "sidecar", or "skipped:<reason>"
HOSTILE_MEMBERS: list[tuple[str, object, str]] = [
    ("s0001.jpg", jpeg_bytes(1), "valid"),
    ("s0001.txt", b"a caption\n", "sidecar"),
    ("s0001.json", b'{"url": "http://example.invalid/1.jpg"}', "sidecar"),
    ("s0002.jpg", jpeg_bytes(2)[:300], "ERROR_CORRUPT_IMAGE"),
    ("s0002.txt", b"broken image caption", "sidecar"),
    ("s0003.png", png_bytes((5, 5)), "ERROR_IMAGE_TOO_SMALL"),
    ("s0004.cls", b"7", "skipped:not_image"),
    ("caf\u00e9/\u00f1and\u00fa.jpg", jpeg_bytes(3), "valid"),
    ("../evil.jpg", jpeg_bytes(4), "valid"),
    ("s0005.jpg", jpeg_bytes(1), "valid"),  # exact copy of s0001.jpg
    ("s0006.dat", jpeg_bytes(5), "valid"),  # an image recognised by content
    ("s0007.jpg", b"this is text, not a jpeg", "ERROR_CORRUPT_IMAGE"),
    ("orphan.txt", b"no image with this key", "skipped:orphan_sidecar"),
    ("somedir/", "dir", "skipped:dir"),
    ("link.jpg", "symlink", "skipped:symlink"),
]


def member_bytes(filename: str) -> bytes:
    """The bytes of ``<archive>/<member>`` (a tar, tgz or zip of the sample shards)."""
    arch, member = filename.rsplit("/", 1)
    if arch.endswith(".zip"):
        return zipfile.ZipFile(arch).read(member)
    with tarfile.open(arch) as tf:
        return tf.extractfile(member).read()


def write_tar(path, members, mode: str = "w") -> None:
    with tarfile.open(path, mode) as tf:
        for name, data, _ in members:
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mtime = 1_700_000_000
            if data == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif data == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = "s0001.jpg"
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def write_zip(path, members) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, _ in members:
            if data == "dir":
                zf.writestr(zipfile.ZipInfo(name), b"")
            elif data == "symlink":
                zi = zipfile.ZipInfo(name)
                zi.external_attr = (0o120777 << 16)
                zf.writestr(zi, b"s0001.jpg")
            else:
                zf.writestr(name, data)


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory):
    """Three shards (tar, tgz, zip) with planted exact and near duplicates."""
    root = tmp_path_factory.mktemp("shards")
    return make_sample_shards(str(root), n_shards=3, images_per_shard=30, n_near=10, n_exact=3, seed=1)


@pytest.fixture(scope="session")
def hostile_dir(tmp_path_factory):
    """One tar, one tgz and one zip of HOSTILE_MEMBERS."""
    root = tmp_path_factory.mktemp("hostile")
    write_tar(root / "a.tar", HOSTILE_MEMBERS)
    write_tar(root / "b.TGZ", HOSTILE_MEMBERS, mode="w:gz")
    write_zip(root / "c.zip", HOSTILE_MEMBERS)
    return root
