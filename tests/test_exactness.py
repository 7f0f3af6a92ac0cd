"""What the model sees is what the user sees, and ``exact`` means identical (issue 22, point 6).

Real extraction with the default model: a photo stored sideways with an EXIF Orientation is
embedded and shown like its physically turned twin; only byte-identical files or images with
identical full-resolution pixels are ``exact``; images equal only at the model's input size
are verified and labelled ``copy``/``near``. Work_dirs written before ``done.json`` recorded a
decode version still load, and mixing decode versions is a one-line error.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import dedupdask as ddk
from dedupdask.analysis import build
from dedupdask.config import RunConfig
from dedupdask.datasets import random_picture, write_shard
from dedupdask.decode import DECODE_VERSION, decode_image
from dedupdask.readback import make_thumbnail
from dedupdask.store import WorkDir


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    write_shard(str(path), members)


def _one_pixel_twin(im: Image.Image) -> bytes:
    """``im`` as PNG with one pixel changed by one level, invisible at the model's 160 px."""
    ref = decode_image(_enc(im, "PNG"), (160, 160))
    arr = np.asarray(im)
    for y, x in itertools.product(range(7, im.height, 37), range(11, im.width, 41)):
        twin = arr.copy()
        twin[y, x, 1] ^= 1
        data = _enc(Image.fromarray(twin), "PNG")
        d = decode_image(data, (160, 160))
        if d.input_md5 == ref.input_md5 and d.pixel_md5 != ref.pixel_md5:
            return data
    raise AssertionError("no one-pixel change is invisible at 160 px")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("exactness")
    rng = np.random.default_rng(22)
    a = random_picture(rng, (400, 300))
    c = random_picture(rng, (800, 600))  # a JPEG well over twice 160 px: decoded in draft mode
    c_jpeg = _enc(c, "JPEG", quality=90)
    tagged = Image.Exif()
    tagged[0x010E] = "the same picture with a caption in its EXIF"  # ImageDescription
    c_tagged = _enc(c, "JPEG", quality=90, exif=tagged.tobytes())
    sideways = random_picture(rng, (640, 320))
    turned = Image.Exif()
    turned[0x0112] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    members0 = [
        ("a.png", _enc(a, "PNG")),
        ("a_copy.png", _enc(a, "PNG")),  # the same bytes
        ("b.png", _one_pixel_twin(a)),  # equal at 160 px, not at full resolution
        ("rot_exif.jpg", _enc(sideways, "JPEG", quality=95, exif=turned.tobytes())),
    ] + [(f"x{i}.jpg", _enc(random_picture(rng, (320, 240)), "JPEG")) for i in range(4)]
    members1 = [
        ("a.bmp", _enc(a, "BMP")),  # other bytes, the same pixels
        ("c.jpg", c_jpeg),
        ("c_tagged.jpg", c_tagged),  # other bytes, the same pixels, but only known at 160 px
        ("rot_twin.jpg", _enc(sideways.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)),
    ] + [(f"y{i}.jpg", _enc(random_picture(rng, (320, 240)), "JPEG")) for i in range(4)]
    shards = root / "shards"
    shards.mkdir()
    _tar(shards / "00000.tar", members0)
    _tar(shards / "00001.tar", members1)
    work = root / "work"
    ddk.extract(str(shards), str(work), client="sync", progress=False)  # the default model
    return root, {name: data for name, data in members0 + members1}


def _build(work) -> ddk.DedupResult:
    with dask.config.set(scheduler="sync"):
        return build(str(work), config=RunConfig(run_mode=2, progress=False))


def _kinds(res) -> dict[frozenset, tuple[str, float]]:
    s = res.similarity.compute()
    return {
        frozenset((f.rsplit("/", 1)[1], t.rsplit("/", 1)[1])): (k, v)
        for f, t, k, v in zip(s["filename_from"], s["filename_to"], s["kind"], s["verify_score"], strict=True)
    }


def test_exif_rotated_photo_is_embedded_and_shown_like_its_turned_twin(planted):
    root, data = planted
    work = root / "work"
    vecs = {}
    for shard in ("00000.tar", "00001.tar"):
        names, v = ddk.load_binary_feature(str(work / f"{shard}features.dat"), d=1280)
        vecs.update({n.rsplit("/", 1)[1]: row for n, row in zip(names, v, strict=True)})
    cos = float(vecs["rot_exif.jpg"] @ vecs["rot_twin.jpg"])
    assert cos > 0.98, cos
    for shard in ("00000.tar", "00001.tar"):
        df = WorkDir(str(work)).read_files(shard).set_index("member")
        for m in ("rot_exif.jpg", "rot_twin.jpg"):
            if m in df.index:
                assert (df.loc[m, "width"], df.loc[m, "height"]) == (320, 640)  # as displayed
    t1, t2 = make_thumbnail(data["rot_exif.jpg"]), make_thumbnail(data["rot_twin.jpg"])
    assert (t1.width, t1.height) == (t2.width, t2.height) == (100, 200)
    px = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(t.uri.split(",", 1)[1]))), np.int16)
        for t in (t1, t2)
    ]
    assert np.abs(px[0] - px[1]).mean() < 3
    done = json.loads((work / "00000.tardone.json").read_text())
    assert done["decode_version"] == DECODE_VERSION


def test_exact_only_for_identical_files_or_full_resolution_pixels(planted):
    root, _ = planted
    res = _build(root / "work")
    kinds = _kinds(res)

    def kind(a, b):
        return kinds[frozenset((a, b))]

    for pair in (("a.png", "a_copy.png"), ("a.png", "a.bmp"), ("a_copy.png", "a.bmp")):
        assert kind(*pair)[0] == "exact", pair
    for pair in (("a.png", "b.png"), ("c.jpg", "c_tagged.jpg")):  # equal only at 160 px
        k, score = kind(*pair)
        assert k in ("copy", "near") and score >= 0.9, (pair, k, score)  # verified
    assert kind("rot_exif.jpg", "rot_twin.jpg")[0] in ("copy", "near")
    comp = res.components.compute().set_index("index")["component_id"]
    names = res.files.compute().dropna(subset=["index"]).set_index("member")["index"].astype(int)
    assert comp[names["a.png"]] == comp[names["b.png"]] == comp[names["a.bmp"]]
    counts = res.run["counts"]
    assert counts["exact_groups"] == 1 and counts["same_input_candidates"] >= 2
    assert res.run["decode_version"] == DECODE_VERSION


def _downgrade(work, name: str) -> None:
    """Make one archive look as dedupdask wrote it before decode versions: no
    ``decode_version`` in done.json, the model-input hash in ``pixel_md5``, no ``input_md5``."""
    wd = WorkDir(str(work))
    done = wd.read_done(name)
    del done["decode_version"]
    df = wd.read_files(name)
    df["pixel_md5"] = df["input_md5"]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df.drop(columns="input_md5"), preserve_index=False), buf)
    wd.write_bytes(wd.file(name, "parquet"), buf.getvalue())
    wd.write_json(wd.file(name, "done"), done)


def test_older_work_dir_loads_and_mixing_versions_is_one_line(planted, tmp_path, capsys):
    root, _ = planted
    old = tmp_path / "old"
    shutil.copytree(root / "work", old)
    _downgrade(old, "00000.tar")
    with pytest.raises(ValueError, match=r"decode_version.*00000\.tar.*00001\.tar|decode_version.*00001\.tar.*00000\.tar"):
        _build(old)
    from dedupdask.cli import main

    assert main(["build", str(old), "--no-progress", "--client", "sync"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "00000.tar" in err and "00001.tar" in err, err

    _downgrade(old, "00001.tar")  # now wholly version 1: analysable, with what it recorded
    res = _build(old)
    assert res.run["decode_version"] == 1
    kinds = _kinds(res)
    assert kinds[frozenset(("a.png", "a_copy.png"))][0] == "exact"  # same bytes
    for pair in (("a.png", "a.bmp"), ("a.png", "b.png")):  # only the model input was hashed
        assert kinds[frozenset(pair)][0] in ("copy", "near"), pair
    again = ddk.load(str(old))
    assert again.run["decode_version"] == 1
