"""The report: plots counted on the partitions, every row paged, a hashed script, real Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import member_bytes
from PIL import Image

import dedupdask as ddk
from dedupdask import report as rep
from dedupdask import report_plots as rp
from dedupdask.cli import main as cli_main
from dedupdask.datasets import make_sample_shards

HOSTILE = '<script>alert("x")</script>&.jpg'


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Sample shards (tar, tgz, zip; a corrupt JPEG) + a tar with a hostile member name, analysed
    with the packaged model."""
    root = tmp_path_factory.mktemp("rep")
    shards = root / "shards"
    s = make_sample_shards(str(shards), n_shards=3, images_per_shard=12, n_near=6, n_exact=3,
                           size=(160, 120), seed=11)  # fmt: skip
    data = member_bytes(s.truth.iloc[0]["filename_a"])
    with tarfile.open(shards / "zz_hostile.tar", "w") as tf:
        ti = tarfile.TarInfo(HOSTILE)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    work = root / "work"
    res = ddk.run(str(shards), str(work), client="sync", progress=False)  # the real model: pairs get verified
    return res, str(work), root


@pytest.fixture(scope="module")
def site(run, tmp_path_factory):
    res, _, _ = run
    out = tmp_path_factory.mktemp("site")
    return res.report(str(out), rows_per_page=4, thumbnail_rows=6), out


def _pages(out: Path, table: str) -> list[Path]:
    """Follow the 'next' links from a table's first page to its last."""
    page = out / table / "page-000001.html"
    seen = []
    while True:
        seen.append(page)
        m = re.search(r'<a href="([^"]+)">next', page.read_text(encoding="utf-8"))
        if not m:
            return seen
        page = page.parent / m.group(1)
        assert page not in seen


def _rows(page: Path) -> int:
    return len(re.findall(r"<tr data-", page.read_text(encoding="utf-8")))


# -- every row, paged ------------------------------------------------------------------------------
def test_paging_reaches_every_row_of_every_table(run, site):
    res, _, _ = run
    report, out = site
    expected = {
        "pairs": len(res.similarity),
        "components": int((res.components["component_size"] > 1).sum().compute()),
        "outliers": len(res.outliers),
        "invalid": len(res.invalid),
        "issues": len(res.issues),
    }
    assert expected["pairs"] > 8 and expected["invalid"] >= 1 and expected["components"] > 4
    for name, n in expected.items():
        pages = _pages(out, name)
        assert [_rows(p) for p in pages] and sum(_rows(p) for p in pages) == n, name
        assert report.tables[name]["rows"] == n and report.tables[name]["pages"] == len(pages)
        assert all(_rows(p) <= 4 for p in pages)
        last = pages[-1].read_text(encoding="utf-8")
        assert f"page {len(pages)} of {len(pages)}" in last and "next" not in last.split("<table")[0]
    # the pairs pages hold the similarity table's rows in its order
    sims = [float(v) for p in _pages(out, "pairs")
            for v in re.findall(r'<td class="kind-[a-z]+">[a-z]+</td><td class="num" data-v="([^"]+)">',
                                p.read_text(encoding="utf-8"))]  # fmt: skip
    assert len(sims) == expected["pairs"] and sims == sorted(sims, reverse=True)


def test_thumbnails_decode_on_the_first_rows_only_and_later_pages_say_so(site):
    report, out = site
    pages = _pages(out, "pairs")
    shown = 0
    for i, p in enumerate(pages):
        text = p.read_text(encoding="utf-8")
        uris = re.findall(r'<div class="thumb"><img src="data:image/jpeg;base64,([^"]+)"', text)
        for u in uris:
            with Image.open(io.BytesIO(base64.b64decode(u))) as im:
                im.load()
                assert max(im.size) <= rep.THUMB_SIDE
        shown += len(uris)
        assert ("no thumbnail" not in text) and (bool(uris) == (i * 4 < 6))
        assert ("Thumbnails are shown for the first 6 rows" in text) == ((i + 1) * 4 > 6)
    assert shown == report.tables["pairs"]["thumbnails"] == 12 and report.tables["pairs"]["missing"] == 0


def test_pages_escape_names_and_allow_only_their_own_script(site):
    _, out = site
    for p in out.rglob("*.html"):
        text = p.read_text(encoding="utf-8")
        assert "<script>alert" not in text
        csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
        assert "default-src 'none'" in csp and "http" not in csp
        scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
        for s in scripts:  # each inline script is allowed by its own hash, nothing else runs
            digest = base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
        assert not re.search(r"\son[a-z]+=", text.split("<script>")[0])  # no inline handlers
    hostile = [p for p in out.glob("invalid/*.html")] + [p for p in out.glob("pairs/*.html")]
    assert any("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;.jpg" in p.read_text(encoding="utf-8")
               for p in hostile)  # fmt: skip


def test_index_has_counters_plots_and_links_to_every_table(run, site):
    res, _, _ = run
    report, out = site
    text = (out / "index.html").read_text(encoding="utf-8")
    s = res.summary()
    assert f'valid images analysed</td><td class="num">{s["images"]:,}<' in text
    assert text.count("<svg") == len(re.findall(r'<figure class="plot">', text)) >= 10
    for name in rep.TABLES:
        assert f'href="{name}/page-000001.html"' in text
    assert str(report) == str(out / "index.html") and report.html in text
    assert "Duplicate rate per archive" in text and "Similar pairs by kind" in text


def test_plot_counts_add_up_to_the_tables(run):
    res, _, _ = run
    hists, archives = rp.distributions(res)
    by = {h.title: h for h in hists}
    sim = res.similarity.compute()
    kinds = by["Similar pairs by kind"].series
    for k in rp.KINDS:
        assert int(kinds[k].sum()) == int((sim["kind"] == k).sum())
    assert by["Outliers: similarity to the nearest neighbour"].total() == len(res.outliers)
    n_images = res.summary()["images"]
    assert by["Blur: variance of the Laplacian"].total() == n_images
    assert by["Issue score: dark"].marks and by["Issue score: dark"].total() == n_images
    comp = res.components.compute()
    assert int(archives["in_groups"].sum()) == int((comp["component_size"] > 1).sum())
    assert int(archives["images"].sum()) == n_images + len(res.invalid)
    assert archives["duplicate_rate"].between(0, 1).all()


def test_histogram_clips_into_the_end_bins_and_ignores_missing():
    edges = np.linspace(0.0, 1.0, 5)
    counts = rp._count([-3.0, 0.1, 0.5, 1.0, 7.0, np.nan], edges)
    assert counts.tolist() == [2, 0, 1, 2]


def test_options_are_checked(run, tmp_path):
    res, _, _ = run
    with pytest.raises(ValueError, match="rows_per_page"):
        rep.write_report(res, tmp_path, rows_per_page=0)
    with pytest.raises(ValueError, match="thumbnail_rows"):
        rep.write_report(res, tmp_path, thumbnail_rows=-1)


def test_cli_report(run, tmp_path, capsys):
    _, work, _ = run
    assert cli_main(["report", work, str(tmp_path / "r"), "--rows-per-page", "50", "--thumbnail-rows", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"pairs: \d+ rows on \d+ pages, 0 thumbnails", out) and "index.html" in out
    assert "<img" not in (tmp_path / "r" / "pairs" / "page-000001.html").read_text(encoding="utf-8")
    assert cli_main(["report", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "no results/run.json" in capsys.readouterr().err


# -- in a real browser --------------------------------------------------------------------------------
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and os.path.exists(p)), None)  # fmt: skip
# Added to a copy of a page, allowed by its hash: after load, type into the archive filter,
# sort by a column, and report what the page's own script did.
PROBE = """
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const rows = [...document.querySelectorAll("table.rows > tbody > tr")];
  const out = {ready: document.body.dataset.ready || "", images: imgs.length,
               loaded: imgs.filter((i) => i.complete && i.naturalWidth > 0).length,
               svgs: document.querySelectorAll("svg").length, rows: rows.length,
               resources: performance.getEntriesByType("resource").map((r) => r.name)};
  const form = document.querySelector("form.filters");
  if (form && rows.length) {
    const first = rows[0].dataset.archive.split("\\n")[0];
    form.elements.archive.value = first;
    form.dispatchEvent(new Event("input", {bubbles: true}));
    out.filtered = rows.filter((r) => !r.hidden).length;
    out.expected = rows.filter((r) => r.dataset.archive.toLowerCase().includes(first.toLowerCase())).length;
    out.shown = document.getElementById("shown").textContent;
    const th = document.querySelector("table.rows th[data-type=num]");
    th.click(); th.click();  // ascending, then descending by row number
    out.order = [...document.querySelectorAll("table.rows > tbody > tr")].map((r) => r.cells[0].dataset.v);
  }
  document.getElementById("ddk-probe").textContent = JSON.stringify(out);
});"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
        "--hide-scrollbars", "--window-size=1280,1600",
    ]  # fmt: skip
    return subprocess.run([*flags, *args], capture_output=True, text=True, timeout=120, check=False)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install -y chromium)")
def test_pages_in_headless_chromium(site, tmp_path):
    report, out = site
    pages = {"index": out / "index.html"}
    for name in rep.TABLES:
        got = _pages(out, name)
        pages[f"{name}-first"], pages[f"{name}-last"] = got[0], got[-1]
    every = [out / "index.html", *(p for name in rep.TABLES for p in _pages(out, name))]
    assert len(every) == 1 + sum(t["pages"] for t in report.tables.values())
    for page in every:  # every page as written: it loads, its script runs, no console message
        r = _chromium(tmp_path, "--dump-dom", page.as_uri())
        assert r.returncode == 0 and not _console(r.stderr), (page, _console(r.stderr))
        if page.name != "index.html":
            assert re.search(r'<body data-ready="1"', r.stdout), (page, r.stdout[:300])
    for label, page in pages.items():  # the first and last page of each table, probed
        text = page.read_text(encoding="utf-8")
        digest = base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
        text = text.replace("script-src '", f"script-src 'sha256-{digest}' '")
        if "script-src" not in text:
            text = text.replace("default-src 'none';", f"default-src 'none'; script-src 'sha256-{digest}';")
        text = text.replace("</body>", f'<div id="ddk-probe">pending</div><script>{PROBE}</script></body>')
        probe = page.with_name(f"probe-{page.name}")
        probe.write_text(text, encoding="utf-8")
        r = _chromium(tmp_path, "--dump-dom", probe.as_uri())
        probe.unlink()
        m = re.search(r'<div id="ddk-probe">([^<]*)</div>', r.stdout)
        assert m and not _console(r.stderr), (label, r.stderr[-2000:])
        check = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        assert check["images"] == check["loaded"] and check["resources"] == [], (label, check)
        if label == "index":
            assert check["svgs"] >= 10
            continue
        assert check["ready"] == "1" and check["rows"] == _rows(page), (label, check)
        if check["rows"]:
            assert check["filtered"] == check["expected"] >= 1 and check["shown"].startswith(f"{check['filtered']} of")
            assert check["order"] == sorted(check["order"], key=int, reverse=True)
    assert report.tables["pairs"]["thumbnails"] > 0 and report.tables["pairs"]["explained"] > 0
    # one explain view open, the other rows hidden: what a user sees after clicking "why"
    page = next(p for p in _pages(out, "pairs") if '<figure class="explain">' in p.read_text(encoding="utf-8"))
    text = page.read_text(encoding="utf-8")
    rows = text.split("<tr data-")
    k = next(i for i, r in enumerate(rows) if '<figure class="explain">' in r)
    rows[k] = rows[k].replace('<details class="why">', '<details class="why" open>')
    text = "<tr data-".join(rows).replace("</style>", "table.rows>tbody>tr:not(:has(details[open])){display:none}</style>")
    explain = page.with_name("explain-view.html")
    explain.write_text(text, encoding="utf-8")
    keep = os.environ.get("DEDUPDASK_SCREENSHOT_DIR") or str(Path(__file__).resolve().parents[1] / "test-artifacts")
    os.makedirs(keep, exist_ok=True)
    for label, page in (("index", pages["index"]), ("explain-view", explain)):
        shot = tmp_path / f"report-{label}.png"
        r = _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
        assert shot.is_file(), r.stderr[-2000:]
        with Image.open(shot) as im:
            assert len(np.unique(np.asarray(im.convert("L")))) > 50  # plots / pictures, not blank
        shutil.copy(shot, keep)  # the test's artifacts: the index and one explain view


def test_report_of_an_empty_table_has_one_page(run, tmp_path):
    res, _, _ = run
    r = res.report(str(tmp_path / "r"), rows_per_page=1000, thumbnail_rows=0)
    assert r.tables["pairs"]["pages"] == 1
    assert pd.notna(r.seconds)


# -- why each pair is a duplicate ---------------------------------------------------------------------
def test_every_pair_has_an_explain_view_and_verified_ones_show_their_alignment(run, site):
    res, _, _ = run
    report, out = site
    sim = res.similarity.compute()
    verified = sim["verify_h"].notna()
    assert verified.any() and (sim.loc[verified, "verify_score"] >= res.params["verify_score"]).all()
    assert sim.loc[verified, "verify_matcher"].isin(["pixel", "pixel_framed", "pixel_turned", "warped", "keypoints"]).all()
    assert sim.loc[sim["kind"] == "exact", "verify_matcher"].isna().all()
    whys = figures = 0
    for page in _pages(out, "pairs"):
        text = page.read_text(encoding="utf-8")
        whys += text.count('<details class="why">')
        for uri in re.findall(r'<figure class="explain"><img src="data:image/jpeg;base64,([^"]+)"', text):
            with Image.open(io.BytesIO(base64.b64decode(uri))) as im:
                im.load()
            figures += 1
    assert whys == len(sim)
    # figures (the pair with outlines, the difference map) for the verified pairs of the thumbnail rows
    n_drawn = int(verified.iloc[:6].sum())
    assert figures == 2 * n_drawn == 2 * report.tables["pairs"]["explained"]
    first = _pages(out, "pairs")[0].read_text(encoding="utf-8")
    assert "exact duplicate: identical files" in first or "accepted by pixel verification" in first


def test_candidates_keep_rejected_scores_and_the_plots_count_them(run):
    res, _, _ = run
    cand = res.candidates.compute()
    assert len(cand) == res.run["counts"]["candidate_pairs"] and (~cand["accepted"]).any()
    rejected = cand[~cand["accepted"] & cand["verify_score"].notna()]
    assert len(rejected) and (rejected["verify_score"] < res.params["verify_score"]).all()
    assert cand["similarity"].is_monotonic_decreasing and cand["member_to"].notna().all()
    hists, _ = rp.distributions(res)
    by = {h.title: h for h in hists}
    scores = by["Candidate pairs: verification scores"].series
    assert int(scores["rejected"].sum()) == len(rejected)
    assert int(scores["accepted"].sum()) == int((cand["accepted"] & cand["verify_score"].notna()).sum())
    assert sum(int(v.sum()) for v in by["Candidate pairs: embedding similarity"].series.values()) == len(cand)


def test_show_pair_and_the_notebook_summary(run):
    res, _, _ = run
    sim = res.similarity.compute()
    i = int(np.flatnonzero(sim["verify_h"].notna().to_numpy())[0])
    view = res.show_pair(i)
    assert view.row["from"] == sim["from"].iloc[i] and view._repr_html_().count("<img") == 4
    assert "accepted by pixel verification" in view.html and "difference map" in view.html
    with pytest.raises(IndexError, match="not a row"):
        res.show_pair(len(sim))
    html_ = res._repr_html_()
    assert html_ is res._repr_html_()  # built once
    assert html_.count("<svg") >= 2 and "First pairs" in html_ and "&lt;script&gt;" not in html_[:0]


@pytest.mark.slow  # ~12 s: a shell cluster
def test_report_on_a_dask_scheduler_cluster_writes_the_same_pages(run, site, tmp_path):
    from cluster import shell_cluster

    res, work, _ = run
    _, local = site
    out = tmp_path / "on-cluster"
    with shell_cluster(tmp_path / "cluster", n_workers=2) as (address, _):
        from distributed import Client

        with Client(address) as c:
            c.get_task_stream(start=0)  # the scheduler records the tasks from here
            got = rep.write_report(work, str(out), rows_per_page=4, thumbnail_rows=6, client=address)
            ran = {r["key"][0] if isinstance(r["key"], tuple) else r["key"] for r in c.get_task_stream()}
    assert any("_write_pages" in str(k) for k in ran)  # the pages were written by the workers
    for page in sorted(local.rglob("page-*.html")):
        mine = (out / page.relative_to(local)).read_text(encoding="utf-8")
        assert mine == page.read_text(encoding="utf-8"), page.relative_to(local)
    assert got.tables == rep.write_report(work, str(tmp_path / "again"), rows_per_page=4, thumbnail_rows=6).tables
