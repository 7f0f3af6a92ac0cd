"""Galleries: thumbnails streamed from the archives, self-contained escaped HTML, real Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import zipfile

import fsspec
import numpy as np
import pytest
from conftest import jpeg_bytes, member_bytes, png_bytes
from PIL import Image

import dedupdask as ddk
from dedupdask import galleries as gal
from dedupdask.cli import main as cli_main
from dedupdask.datasets import make_sample_shards
from dedupdask.thresholds import ISSUE_TYPES

HOSTILE_NAME = '<script>alert("name")</script>&x.jpg'
HOSTILE_CAPTION = "<img src=x onerror=alert('caption')> \"quoted\" & </div>"


def _colour_jpeg(rgb, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _tar(path, members) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def _decoded_colour(t: gal.Thumbnail) -> tuple[int, ...]:
    raw = base64.b64decode(t.uri.split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as im:
        return tuple(int(v) for v in np.asarray(im.convert("RGB")).reshape(-1, 3).mean(0))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Sample shards (tar, tgz, zip) + a loose-image folder + a tar with hostile names, analysed."""
    root = tmp_path_factory.mktemp("gal")
    shards = root / "shards"
    s = make_sample_shards(str(shards), n_shards=3, images_per_shard=10, n_near=6, n_exact=2,
                           size=(200, 150), seed=5)  # fmt: skip
    data = member_bytes(s.truth.iloc[0]["filename_a"])
    (shards / "loose").mkdir()
    (shards / "loose" / "copy of one.jpg").write_bytes(data)
    _tar(shards / "zz_hostile.tar", [(HOSTILE_NAME, data),
                                     (HOSTILE_NAME[:-4] + ".txt", HOSTILE_CAPTION.encode())])  # fmt: skip
    work = root / "work"
    res = ddk.run(str(shards), str(work), model_path="dct", client="sync", progress=False)
    return res, str(work), str(root)


@pytest.fixture(scope="module")
def pages(run_dir, tmp_path_factory):
    res, _, _ = run_dir
    return res.galleries(str(tmp_path_factory.mktemp("pages")))


# -- thumbnails ------------------------------------------------------------------------------------
def test_make_thumbnail_modes_and_failures():
    t = gal.make_thumbnail(png_bytes((640, 320), color=(10, 20, 30, 0), mode="RGBA"))
    assert (t.width, t.height) == (200, 100) and t.uri.startswith("data:image/jpeg;base64,")
    assert _decoded_colour(t)[0] > 240  # transparent -> white background
    buf = io.BytesIO()
    Image.fromarray(np.arange(50 * 40, dtype=np.uint16).reshape(40, 50) * 30).save(buf, "PNG")
    assert gal.make_thumbnail(buf.getvalue(), max_side=32).width == 32
    bad = gal.make_thumbnail(b"not an image at all")
    assert bad.uri is None and "cannot decode" in bad.reason
    big = gal.make_thumbnail(jpeg_bytes(1, (300, 200)), max_image_pixels=1000)
    assert big.uri is None and "larger than 1000 pixels" in big.reason


def test_tar_read_once_stops_early_and_tells_duplicate_names(tmp_path, monkeypatch):
    members = [(f"k{i:03d}.jpg", _colour_jpeg((i * 8, 0, 0))) for i in range(30)]
    members.insert(3, ("same.jpg", _colour_jpeg((0, 250, 0))))
    members.insert(6, ("same.jpg", _colour_jpeg((0, 0, 250))))  # same name, other picture
    path = str(tmp_path / "a.tar")
    _tar(path, members)
    calls, yielded = [], []
    import dedupdask.readback as readback

    real = readback.iter_members

    def spy(source, storage_options=None, **kw):
        calls.append((source.url, storage_options))
        for m in real(source, storage_options, **kw):
            yielded.append(m.name)
            yield m

    monkeypatch.setattr(readback, "iter_members", spy)
    wanted = [(path, "k001.jpg", 0), (path, "same.jpg", 1), (path, "k003.jpg", 0)]
    out = gal.read_thumbnails(wanted, {"anon": True})
    assert calls == [(path, {"anon": True})]  # one pass, the run's storage_options
    assert len(yielded) == 7  # stopped right after the last wanted member (the 2nd same.jpg)
    assert _decoded_colour(out[(path, "same.jpg", 1)])[2] > 200  # the second "same.jpg"
    assert all(out[k].uri for k in wanted)
    miss = gal.read_thumbnails([(path, "nope.jpg", 0), (path, "same.jpg", 5)])
    assert all(t.reason == "member not found in the archive" for t in miss.values())


def test_zip_folder_memory_and_broken_sources(tmp_path):
    zpath = str(tmp_path / "b.zip")
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("dir/x.jpg", jpeg_bytes(2))
        zf.writestr("y.jpg", b"garbage")
    folder = tmp_path / "loose"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "z.png").write_bytes(png_bytes((40, 30)))
    trunc = str(tmp_path / "c.tgz")
    with tarfile.open(trunc, "w:gz") as tf:
        for i in range(20):
            data = jpeg_bytes(10 + i)
            ti = tarfile.TarInfo(f"m{i}.jpg")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = open(trunc, "rb").read()
    open(trunc, "wb").write(raw[: len(raw) // 2])
    mem = "memory://galtest/d.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = jpeg_bytes(3)
        ti = tarfile.TarInfo("remote.jpg")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    fsspec.filesystem("memory").pipe(mem, buf.getvalue())
    wanted = [
        (zpath, "dir/x.jpg", 0), (zpath, "y.jpg", 0), (zpath, "gone.jpg", 0),
        (str(folder), "sub/z.png", 0), (str(folder), "sub/none.png", 0),
        (trunc, "m1.jpg", 0), (trunc, "m19.jpg", 0),
        (mem, "remote.jpg", 0),
        (str(tmp_path / "missing.tar"), "a.jpg", 0), (str(tmp_path / "missing.zip"), "a.jpg", 0),
    ]  # fmt: skip
    out = gal.read_thumbnails(wanted)
    assert set(out) == set(wanted)
    ok = {k for k, t in out.items() if t.uri}
    assert ok == {(zpath, "dir/x.jpg", 0), (str(folder), "sub/z.png", 0), (trunc, "m1.jpg", 0),
                  (mem, "remote.jpg", 0)}  # fmt: skip
    assert "cannot decode" in out[(zpath, "y.jpg", 0)].reason
    assert "not found" in out[(zpath, "gone.jpg", 0)].reason
    assert "cannot read file" in out[(str(folder), "sub/none.png", 0)].reason
    assert "archive broken" in out[(trunc, "m19.jpg", 0)].reason
    assert "cannot read archive" in out[(str(tmp_path / "missing.tar"), "a.jpg", 0)].reason
    assert "cannot read archive" in out[(str(tmp_path / "missing.zip"), "a.jpg", 0)].reason


# -- pages -----------------------------------------------------------------------------------------
def _labels(html: str) -> list[float]:
    return [float(x) for x in re.findall(r'class="sim">[a-z_]+ (-?[0-9.]+)</span>', html)]


def test_galleries_pages_rows_and_protocols(run_dir, pages):
    res, _, _ = run_dir
    issue_pages = [f"issue_{t}" for t in ISSUE_TYPES]
    names = ["duplicates", "outliers", "components", "blur", "dark", "bright", "size", *issue_pages, "index"]
    assert list(pages) == names
    for name, g in pages.items():
        assert os.path.basename(str(g)) == f"{name}.html" and os.fspath(g) == g.path
        assert os.path.isfile(g.path)
        assert g._repr_html_() == g.html and g.html.startswith('<div class="ddk-gallery">')
        assert g.n_missing == 0
        page = open(g.path, encoding="utf-8").read()
        assert g.html in page
        assert page.count("<img ") == g.n_thumbnails
        assert page.count('class="row"') == (0 if name == "index" else g.n_rows)
    n_pairs = len(res.similarity)
    assert pages["duplicates"].n_rows == min(20, n_pairs) > 0
    assert pages["duplicates"].n_thumbnails == 2 * pages["duplicates"].n_rows
    assert pages["outliers"].n_rows == min(20, len(res.outliers)) > 0
    sizes = res.components.compute().drop_duplicates("component_id")["component_size"]
    assert pages["components"].n_rows == min(20, int((sizes >= 2).sum())) > 0
    assert pages["blur"].n_rows == 20
    dup = open(pages["duplicates"].path, encoding="utf-8").read()
    sims = [float(x) for x in re.findall(r'class="sim">similarity ([0-9.]+)<', dup)]
    assert sims == sorted(sims, reverse=True)
    dark = _labels(open(pages["dark"].path, encoding="utf-8").read())
    bright = _labels(open(pages["bright"].path, encoding="utf-8").read())
    assert dark == sorted(dark) and bright == sorted(bright, reverse=True) and dark[0] < bright[0]
    # every archive kind and the loose folder show up with caption and size
    for text in ("00000.tar", "00001.tgz", "00002.zip", "copy of one.jpg", "an exact copy", "\u00d7"):
        assert text in dup or text in open(pages["components"].path, encoding="utf-8").read()


def test_pages_are_self_contained_and_escaped(pages):
    for g in pages.values():
        page = open(g.path, encoding="utf-8").read()
        assert "Content-Security-Policy" in page and "default-src 'none'" in page
        assert not re.search(r"(src|href)\s*=\s*\"(?!data:image/jpeg;base64,)(?!#)(?![a-z_]+\.html)", page)
        assert "http://" not in page and "https://" not in page and "url(" not in page
        assert "<script" not in page and "onerror=" not in page.replace("onerror=alert", "")
    comp = open(pages["components"].path, encoding="utf-8").read()
    assert "&lt;script&gt;alert(&quot;name&quot;)&lt;/script&gt;&amp;x.jpg" in comp
    assert "&lt;img src=x onerror=alert(&#x27;caption&#x27;)&gt;" in comp


def test_gallery_functions_options_and_work_dir_path(run_dir, tmp_path):
    res, work, _ = run_dir
    g = ddk.create_duplicates_gallery(work, str(tmp_path / "one.html"), num_images=3,
                                      descending=False)  # fmt: skip
    assert g.path == str(tmp_path / "one.html") and g.n_rows == 3
    sims = [float(x) for x in re.findall(r'similarity ([0-9.]+)</span>', g.html)]
    assert sims == sorted(sims) and sims[0] == pytest.approx(res.similarity.compute()["similarity"].min(), abs=1e-4)
    g = ddk.create_duplicates_gallery(res, tmp_path, threshold=1.01)
    assert g.n_rows == 0 and "no pair of images" in g.html
    g = ddk.create_components_gallery(res, tmp_path, num_images=1, max_items=1)
    assert g.n_rows == 1 and g.n_thumbnails == 1 and "more</div>" in g.html
    g = ddk.create_outliers_gallery(res, tmp_path, num_images=2, threshold=0.99)
    assert str(g).endswith("outliers.html") and g.n_rows == 2
    g = ddk.create_stats_gallery(res, tmp_path, metric="size", num_images=4, descending=True)
    assert os.path.basename(g.path) == "size.html" and _labels(g.html) == sorted(_labels(g.html))[::-1]
    g = ddk.create_stats_gallery(res, tmp_path, metric="blur", threshold=1e9, num_images=0)
    assert g.n_rows == 0
    with pytest.raises(ValueError, match="metric"):
        ddk.create_stats_gallery(res, tmp_path, metric="sharpness")
    with pytest.raises(ValueError, match="num_images"):
        ddk.create_duplicates_gallery(res, tmp_path, num_images=-1)
    with pytest.raises(TypeError, match="DedupResult or a work_dir"):
        ddk.create_duplicates_gallery(42, tmp_path)
    pages = ddk.load(work).galleries("memory://galleries-out", metrics=["dark"], num_images=2)
    assert re.fullmatch(r"memory:///?galleries-out/dark\.html", pages["dark"].path)
    assert b"ddk-gallery" in fsspec.filesystem("memory").cat("/galleries-out/index.html")


def test_missing_and_broken_archives_give_placeholders(tmp_path):
    s = make_sample_shards(str(tmp_path / "sh"), n_shards=3, images_per_shard=4, n_near=3,
                           n_exact=3, size=(96, 72), broken=False, seed=2)  # fmt: skip
    work = str(tmp_path / "work")
    ddk.run(s.root, work, model_path="dct", client="sync", progress=False)
    os.remove(s.shards[1])  # the tgz is gone
    with open(s.shards[2], "wb") as f:  # the zip is now garbage
        f.write(b"PK\x03\x04 not a zip any more")
    g = ddk.create_duplicates_gallery(work, str(tmp_path / "out"))
    assert g.n_rows > 0 and g.n_missing > 0 and g.n_thumbnails + g.n_missing == 2 * g.n_rows
    assert 'class="ph">no thumbnail: cannot read archive' in g.html


def test_cli_gallery(run_dir, tmp_path, capsys):
    _, work, _ = run_dir
    assert cli_main(["gallery", work, str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / "index.html").is_file() and (tmp_path / "all" / "bright.html").is_file()
    assert cli_main(["gallery", work, str(tmp_path / "st"), "--kind", "stats", "--metric",
                     "dark,contrast", "--num-images", "3"]) == 0  # fmt: skip
    assert sorted(os.listdir(tmp_path / "st")) == ["contrast.html", "dark.html"]
    assert cli_main(["gallery", work, str(tmp_path / "d"), "--kind", "duplicates",
                     "--threshold", "0.99"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "duplicates.html: " in out and "rows" in out
    assert cli_main(["gallery", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2


# -- in a real browser -----------------------------------------------------------------------------
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and os.path.exists(p)), None)  # fmt: skip
# Written into a copy of each page (the pages themselves forbid scripts): after load, count the
# images that really decoded, the rows, and any resource fetched from outside the page.
CHECK = """<div id="ddk-check">pending</div><script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.getElementById("ddk-check").textContent = JSON.stringify({
    images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    rows: document.querySelectorAll(".ddk-gallery .row").length,
    placeholders: document.querySelectorAll(".ddk-gallery .ph").length,
    resources: performance.getEntriesByType("resource").map(r => r.name),
    width: document.documentElement.scrollWidth,
  });
});
</script>"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        # networking off: no name resolves, every connection goes to a dead proxy
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
        "--hide-scrollbars", "--window-size=1280,1400",
    ]  # fmt: skip
    return subprocess.run([*flags, *args], capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install -y chromium)")
@pytest.mark.slow  # ~15 s: a browser; test_report's browser check stays in the default run
def test_pages_in_headless_chromium(pages, tmp_path):
    for name, g in pages.items():
        page = open(g.path, encoding="utf-8").read()
        page = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
        page = page.replace("</body>", CHECK + "</body>")
        probe = tmp_path / f"{name}-probe.html"
        probe.write_text(page, encoding="utf-8")
        r = _chromium(tmp_path, "--dump-dom", probe.as_uri())
        m = re.search(r'<div id="ddk-check">([^<]*)</div>', r.stdout)
        assert m, f"{name}: no DOM from chromium: {r.stderr[-2000:]}"
        check = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        assert check["images"] == check["loaded"] == g.n_thumbnails, (name, check)
        assert check["rows"] == (g.n_rows if name != "index" else 0), (name, check)
        assert check["placeholders"] == g.n_missing == 0
        assert check["resources"] == [] and check["width"] <= 1280, (name, check)
    for name in ("duplicates", "components", "blur"):
        shot = tmp_path / f"{name}.png"
        r = _chromium(tmp_path, f"--screenshot={shot}", pages[name].path)
        assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]
        with Image.open(shot) as im:
            assert im.size == (1280, 1400)
            assert len(np.unique(np.asarray(im.convert("L")))) > 50  # thumbnails, not a blank page
        keep = os.environ.get("DEDUPDASK_SCREENSHOT_DIR")
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(shot, keep)


# -- thumbnails from a real S3 server (SeaweedFS on loopback, telemetry off: the shared fixture) --
from s3server import s3_server  # noqa: E402,F401  (pytest fixture)


@pytest.fixture
def s3_endpoint(s3_server):  # noqa: F811  (the fixture imported above)
    s3_server.make_bucket("gallery-test")
    return s3_server.storage_options()


def test_thumbnails_streamed_from_s3(s3_endpoint, tmp_path):
    s = make_sample_shards(str(tmp_path / "sh"), n_shards=2, images_per_shard=5, n_near=2,
                           n_exact=2, formats=("tgz", "zip"), size=(96, 72), seed=4)  # fmt: skip
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_endpoint)
    fs.put(s.shards, "s3://gallery-test/shards/")
    work = "s3://gallery-test/work"
    ddk.run("s3://gallery-test/shards/", work, model_path="dct", client="sync", progress=False,
            storage_options=s3_endpoint)  # fmt: skip
    g = ddk.create_duplicates_gallery(work, tmp_path / "out", storage_options=s3_endpoint)
    assert g.n_rows > 0 and g.n_missing == 0 and g.n_thumbnails == 2 * g.n_rows
    assert "s3://gallery-test/shards/00000.tgz" in g.html
