"""Hostile and broken input: every member gets one recorded outcome, nothing escapes work_dir."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
import zlib

import numpy as np
import pandas as pd
import pytest
from conftest import jpeg_bytes, png_bytes
from PIL import Image

import dedupdask as ddk
from dedupdask.cli import main as cli_main
from dedupdask.store import WorkDir


def enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def outcomes(wd: WorkDir, name: str) -> dict[str, list[str]]:
    """member -> list of outcomes (an error code, 'sidecar' is implicit, 'skipped:<reason>')."""
    out: dict[str, list[str]] = {}
    files = wd.read_files(name)
    for m, c in zip(files["member"], files["error_code"], strict=True):
        out.setdefault(m, []).append(c)
    sk = pd.read_csv(wd.file(name, "skipped"), keep_default_na=False)
    for m, r in zip(sk["member"], sk["reason"], strict=True):
        out.setdefault(m.rstrip("/"), []).append(f"skipped:{r}")
    return out


def check_accounting(wd: WorkDir, name: str) -> dict:
    done = wd.read_done(name)
    c = done["counts"]
    files = wd.read_files(name)
    sk = pd.read_csv(wd.file(name, "skipped"))
    assert c["members"] == c["images"] + c["sidecars"] + c["skipped"]
    assert c["images"] == len(files) and c["skipped"] == len(sk)
    assert c["valid"] == int((files["error_code"] == "VALID").sum())
    dat = os.path.getsize(wd.file(name, "dat"))
    assert dat == c["valid"] * done["d"] * 4
    return done


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes | None = None, **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime = 1_700_000_000
    for k, v in attrs.items():
        setattr(ti, k, v)
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Archives of every kind of hostile content, with the outcome each member must get."""
    root = tmp_path_factory.mktemp("corpus")
    expect: dict[str, dict[str, str]] = {}

    # 1. a tar full of odd images and odd members
    multipage = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(multipage, "TIFF", save_all=True,
                                            append_images=[Image.new("RGB", (40, 40), "blue")])
    gif = io.BytesIO()
    Image.new("P", (30, 30), 1).save(gif, "GIF", save_all=True, append_images=[Image.new("P", (30, 30), 2)])
    cmyk = enc(Image.new("CMYK", (64, 48), (10, 200, 30, 0)), "JPEG")
    png16 = enc(Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20), "PNG")
    pal = enc(Image.new("RGB", (40, 40), (9, 99, 199)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    alpha = enc(Image.new("RGBA", (40, 40), (255, 0, 0, 128)), "PNG")
    webp = enc(Image.new("RGB", (40, 40), (1, 2, 3)), "WEBP")
    bomb = enc(Image.new("1", (12000, 12000)), "PNG", optimize=True)
    members = [
        ("cmyk.jpg", cmyk, "VALID"),
        ("png16.png", png16, "VALID"),
        ("palette.png", pal, "VALID"),
        ("alpha.png", alpha, "VALID"),
        ("anim.gif", gif.getvalue(), "VALID"),
        ("photo.webp", webp, "VALID"),
        ("pages.tiff", multipage.getvalue(), "VALID"),
        ("one.png", png_bytes((1, 1)), "ERROR_IMAGE_TOO_SMALL"),
        ("bomb.png", bomb, "ERROR_IMAGE_TOO_LARGE"),
        ("text.jpg", b"Hello, I am a text file pretending to be a JPEG.\n", "ERROR_CORRUPT_IMAGE"),
        ("zero.jpg", b"", "ERROR_CORRUPT_IMAGE"),
        ("zero.bin", b"", "skipped:empty"),
        ("/abs/path.jpg", jpeg_bytes(11), "VALID"),
        ("../../escape.jpg", jpeg_bytes(12), "VALID"),
        ("dup.jpg", jpeg_bytes(13), "VALID"),
    ]
    with tarfile.open(root / "odd.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, _ in members:
            _tar_add(tf, name, data)
        _tar_add(tf, "dup.jpg", jpeg_bytes(14))  # duplicate member name: both kept
        _tar_add(tf, "hard.jpg", type=tarfile.LNKTYPE, linkname="dup.jpg")
        _tar_add(tf, "soft.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _tar_add(tf, "dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _tar_add(tf, "fifo", type=tarfile.FIFOTYPE)
    expect["odd.tar"] = {n: e for n, _, e in members} | {
        "hard.jpg": "skipped:hardlink", "soft.jpg": "skipped:symlink", "dev": "skipped:device",
        "fifo": "skipped:fifo",
    }

    # 2. non-UTF-8 member names (raw latin-1 bytes in a GNU tar)
    with tarfile.open(root / "latin1.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        _tar_add(tf, "caf\xe9.jpg", jpeg_bytes(15))
        _tar_add(tf, "caf\xe9.txt", "légende".encode("latin-1"))
    expect["latin1.tar"] = {"caf\\xe9.jpg": "VALID"}

    # 3. empty archives and archives with no image
    with tarfile.open(root / "empty.tar", "w"):
        pass
    expect["empty.tar"] = {}
    with zipfile.ZipFile(root / "empty.zip", "w"):
        pass
    expect["empty.zip"] = {}
    with tarfile.open(root / "noimages.tgz", "w:gz") as tf:
        _tar_add(tf, "a.txt", b"caption without image")
        _tar_add(tf, "b.json", b"{}")
        _tar_add(tf, "c.parquet", b"PAR1....")
    expect["noimages.tgz"] = {"a.txt": "skipped:orphan_sidecar", "b.json": "skipped:orphan_sidecar",
                              "c.parquet": "skipped:not_image"}

    # 4. zip with a bad CRC and a zip bomb member (declared size over max_member_bytes)
    good = jpeg_bytes(16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("ok.jpg", good)
        zf.writestr("crc.jpg", good)
    raw = bytearray(buf.getvalue())
    second = raw.find(b"crc.jpg") + len("crc.jpg") + 200  # inside crc.jpg's data
    raw[second] ^= 0xFF
    (root / "badcrc.zip").write_bytes(bytes(raw))
    expect["badcrc.zip"] = {"ok.jpg": "VALID", "crc.jpg": "ERROR_READ_MEMBER"}
    with zipfile.ZipFile(root / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.jpg", good)
        zf.writestr("zeros.jpg", bytes(300 * 2**20))  # 300 MiB of zeros, ~300 KiB compressed
        zf.writestr("zeros.bin", bytes(300 * 2**20))
    expect["bomb.zip"] = {"ok.jpg": "VALID", "zeros.jpg": "ERROR_MEMBER_TOO_LARGE",
                          "zeros.bin": "skipped:ERROR_MEMBER_TOO_LARGE"}
    return root, expect


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    root, expect = corpus
    wd = tmp_path_factory.mktemp("wd")
    report = ddk.extract(str(root), str(wd), model_path="dct", client="sync", progress=False,
                         keep_images=True)
    return report, WorkDir(str(wd)), expect


def test_every_member_has_its_outcome(corpus_run):
    report, wd, expect = corpus_run
    assert set(report["status"]) == {"done"}, report[["name", "status", "error"]]
    for name, members in expect.items():
        check_accounting(wd, name)
        got = outcomes(wd, name)
        if name == "odd.tar":
            assert got.pop("dup.jpg") == ["VALID", "VALID"]
            members = {k: v for k, v in members.items() if k != "dup.jpg"}
        assert {k: v[0] for k, v in got.items()} == members, name
        assert all(len(v) == 1 for v in got.values())


def test_caption_in_latin1_and_names_escaped(corpus_run):
    _, wd, _ = corpus_run
    files = wd.read_files("latin1.tar")
    assert files["member"].tolist() == ["caf\\xe9.jpg"]
    assert files["caption"].iloc[0].startswith("l")  # undecodable byte replaced, not a crash


def test_keep_images_never_writes_outside(corpus_run):
    _, wd, _ = corpus_run
    kept = []
    for dirpath, _, names in os.walk(wd.path):
        kept += [os.path.realpath(os.path.join(dirpath, n)) for n in names]
    root = os.path.realpath(wd.path)
    assert all(p.startswith(root + os.sep) for p in kept)
    odd = os.path.join(root, "tmp", "odd.tar")
    assert os.path.exists(os.path.join(odd, "abs", "path.jpg"))
    assert os.path.exists(os.path.join(odd, "escape.jpg"))
    assert os.path.exists(os.path.join(odd, "dup.jpg")) and os.path.exists(os.path.join(odd, "dup~1.jpg"))
    assert not os.path.exists(os.path.join(odd, "soft.jpg"))


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    with tarfile.open(root / "good.tar", "w") as tf:
        for i in range(4):
            _tar_add(tf, f"{i:03d}.jpg", jpeg_bytes(20 + i))
    data = (root / "good.tar").read_bytes()
    (root / "truncated.tar").write_bytes(data[: len(data) // 2 + 100])
    gz = zlib.compressobj(wbits=31)
    (root / "garbage.tgz").write_bytes(gz.compress(os.urandom(2000)) + gz.flush())
    (root / "zerobyte.tar").write_bytes(b"")
    (root / "notazip.zip").write_bytes(b"PK\x03\x04 but nothing else")
    return root


def test_broken_archives_recorded_run_goes_on(broken_dir, tmp_path):
    report = ddk.extract(str(broken_dir), str(tmp_path), model_path="dct", client="sync", progress=False)
    st = report.set_index("name")["status"].to_dict()
    assert st == {"good.tar": "done", "truncated.tar": "partial", "garbage.tgz": "partial",
                  "zerobyte.tar": "partial", "notazip.zip": "partial"}
    wd = WorkDir(str(tmp_path))
    for name, status in st.items():
        done = check_accounting(wd, name)
        assert done["status"] == status
        assert (done["archive_error"] is None) == (status == "done")
    trunc = wd.read_done("truncated.tar")
    assert 0 < trunc["counts"]["valid"] < 4
    assert "truncated" in trunc["archive_error"] or "broken" in trunc["archive_error"]
    text = report.summary_text()
    assert "PARTIAL" in text and "truncated.tar" in text


def test_cli_exit_code_on_failures(broken_dir, tmp_path, capsys):
    opts = ["--model-path", "dct", "--client", "sync", "--no-progress"]
    assert cli_main(["extract", str(broken_dir), str(tmp_path / "a"), *opts]) == 1
    out = capsys.readouterr().out
    assert "4 partial" in out and "garbage.tgz" in out
    assert cli_main(["extract", str(broken_dir), str(tmp_path / "b"), *opts, "--allow-failures"]) == 0
    assert cli_main(["extract", str(tmp_path / "missing"), str(tmp_path / "c")]) == 2


def test_archive_byte_budget(tmp_path):
    with tarfile.open(tmp_path / "many.tar", "w") as tf:
        for i in range(6):
            _tar_add(tf, f"{i}.jpg", jpeg_bytes(30 + i, size=(200, 150)))
    size = os.path.getsize(tmp_path / "many.tar")
    report = ddk.extract(str(tmp_path / "many.tar"), str(tmp_path / "wd"), model_path="dct",
                         client="sync", progress=False, max_archive_bytes=size // 3)
    assert report["status"].tolist() == ["partial"]
    wd = WorkDir(str(tmp_path / "wd"))
    done = check_accounting(wd, "many.tar")
    codes = wd.read_files("many.tar")["error_code"].tolist()
    assert codes[-1] == "ERROR_ARCHIVE_TOO_LARGE" and set(codes[:-1]) == {"VALID"}
    assert "max_archive_bytes" in done["archive_error"]


def test_full_disk_leaves_nothing_complete_and_rerun_finishes(tmp_path, monkeypatch):
    import errno

    from dedupdask import store

    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for i in range(3):
            _tar_add(tf, f"{i}.jpg", jpeg_bytes(40 + i))
    real = store.WorkDir.write_bytes
    calls = {"n": 0}

    def full_disk(self, path, data):
        calls["n"] += 1
        if calls["n"] >= 3:  # .dat and .dat.csv written, then the disk is full
            tmp = path + ".tmp-x"
            open(tmp, "wb").close()
            os.unlink(tmp)
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(self, path, data)

    monkeypatch.setattr(store.WorkDir, "write_bytes", full_disk)
    wd_path = tmp_path / "wd"
    report = ddk.extract(str(tmp_path / "a.tar"), str(wd_path), model_path="dct", client="sync", progress=False)
    assert report["status"].tolist() == ["failed"] and "No space left" in report["error"].iloc[0]
    wd = WorkDir(str(wd_path))
    assert wd.done_names() == set()
    assert not [n for n in os.listdir(wd_path) if ".tmp-" in n]
    monkeypatch.setattr(store.WorkDir, "write_bytes", real)
    report = ddk.extract(str(tmp_path / "a.tar"), str(wd_path), model_path="dct", client="sync", progress=False)
    assert report["status"].tolist() == ["done"]
    check_accounting(wd, "a.tar")
    assert json.loads(open(wd.file("a.tar", "done")).read())["counts"]["valid"] == 3
