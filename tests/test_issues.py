"""Per-image issue labels: each type on tiny generated images, grouped outliers, files, galleries."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

import dedupdask as ddk
from dedupdask.analyses import exact_groups
from dedupdask.analyses.groups import QUERIES_PER_GROUP, best_outside, outlier_groups
from dedupdask.analyses.issues import (
    ISSUE_COLUMNS,
    STAT_ISSUES,
    find_issues,
    image_scores,
    issues_frame,
    issues_partition,
    size_histogram,
    size_reference,
)
from dedupdask.cli import main as cli_main
from dedupdask.collect import collect
from dedupdask.config import RunConfig
from dedupdask.datasets import random_picture, write_shard
from dedupdask.decode import STATS_VERSION, decode_image
from dedupdask.thresholds import ISSUE_TYPES, issue_row_for, resolve_issues

SIZE = (224, 168)
PNG = b"\x89PNG"


def _natural(seed: int, size=SIZE) -> Image.Image:
    return random_picture(np.random.default_rng(seed), size)


def _enc(im: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _scale(im: Image.Image, f: float, towards: float = 0.0) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    return Image.fromarray(np.round(towards + (a - towards) * f).astype(np.uint8), "RGB")


# one image per issue type (key -> (bytes, the types it must get))
def _junk() -> dict[str, tuple[bytes, set[str]]]:
    rng = np.random.default_rng(3)
    return {
        "solid": (_enc(Image.new("RGB", SIZE, (40, 120, 200)), "PNG"), {"low_information"}),
        "strip": (_enc(_natural(101, (256, 12))), {"odd_aspect_ratio"}),
        "tiny": (_enc(_natural(102, (12, 12)), "PNG"), {"odd_size"}),
        "dark": (_enc(_scale(_natural(103), 0.04)), {"dark"}),
        "light": (_enc(_scale(_natural(104), 0.04, 255.0)), {"light"}),
        "grey": (_enc(_natural(105).convert("L").convert("RGB")), {"grayscale"}),
        "blurred": (_enc(_natural(106).filter(ImageFilter.GaussianBlur(12))), {"blurry"}),
        "noise": (_enc(Image.fromarray(rng.integers(0, 256, (168, 224, 3), dtype=np.uint8)), "PNG"), {"noisy"}),
    }


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    write_shard(str(path), members)


def _shards(root, members: list[tuple[str, bytes]]):
    order = np.random.default_rng(0).permutation(len(members))
    shards = root / "shards"
    shards.mkdir()
    _tar(shards / "a.tar", [members[i] for i in order[: len(order) // 2]])
    _tar(shards / "b.tar", [members[i] for i in order[len(order) // 2 :]])
    return shards


def _naturals() -> list[tuple[str, bytes]]:
    return [(f"n{i:03d}.jpg", _enc(_natural(i))) for i in range(24)]


@pytest.fixture(scope="module")
def junk_run(tmp_path_factory):
    """Natural-looking pictures and one image per issue type in two tars, default model."""
    root = tmp_path_factory.mktemp("issues")
    junk = [(f"j_{k}." + ("png" if data.startswith(PNG) else "jpg"), data) for k, (data, _) in _junk().items()]
    shards = _shards(root, _naturals() + junk)
    work = root / "work"
    res = ddk.run(str(shards), str(work), client="sync", progress=False)
    return res, str(work)


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    """Natural-looking pictures, 6 identical blank pages and 6 near-identical ones (other sizes
    and tints: distinct pictures, each other's nearest neighbours)."""
    root = tmp_path_factory.mktemp("grouped")
    blank = _enc(Image.new("RGB", SIZE, (250, 250, 250)), "PNG")
    same = [(f"b_same{i}.png", blank) for i in range(6)]
    near = [(f"b_near{i}.png", _enc(Image.new("RGB", (200 + 8 * i, 150 + 4 * i), (244 + i, 244 + i, 240)), "PNG"))
            for i in range(6)]  # fmt: skip
    shards = _shards(root, _naturals() + same + near)
    work = root / "work"
    res = ddk.run(str(shards), str(work), client="sync", progress=False)
    return res, str(work)


def _flagged(res, issue: str) -> set[str]:
    rows = res.issues[res.issues["issue"] == issue].compute()
    return {m.rsplit(".", 1)[0] for m in rows["member"]}


# -- extraction stats ---------------------------------------------------------------------------
def test_decode_records_percentiles_and_chroma():
    d = decode_image(_enc(Image.new("RGB", (64, 48), (200, 200, 200)), "PNG"), (32, 32))
    assert (d.stats["p01"], d.stats["p99"], d.stats["chroma"]) == (200.0, 200.0, 0.0)
    d = decode_image(_enc(Image.new("RGB", (64, 48), (250, 20, 20)), "PNG"), (32, 32))
    assert d.stats["chroma"] == 230.0
    half = np.zeros((48, 64, 3), np.uint8)
    half[:, 32:] = 255
    d = decode_image(_enc(Image.fromarray(half), "PNG"), (32, 32))
    assert d.stats["p01"] == 0.0 and d.stats["p99"] == 255.0


def test_done_json_records_the_stats_version(junk_run):
    _, work = junk_run
    done = json.loads(open(os.path.join(work, "a.tardone.json")).read())
    assert done["stats_version"] == STATS_VERSION == 2
    cols = pq.read_schema(os.path.join(work, "a.tarfeatures.parquet")).names
    assert {"p01", "p99", "chroma"} <= set(cols)


# -- every type on tiny generated images -----------------------------------------------------------
@pytest.mark.parametrize("key", list(_junk()))
def test_each_type_flags_its_junk(junk_run, key):
    res, _ = junk_run
    for issue in _junk()[key][1]:
        assert key in {m[2:] for m in _flagged(res, issue)}, (key, issue, res.issues.compute().to_string())


def test_natural_pictures_are_not_flagged(junk_run):
    res, _ = junk_run
    stat = res.issues[~res.issues["issue"].str.endswith("_duplicate")].compute()
    natural = stat[stat["member"].str.startswith("n")]
    assert natural.empty, natural.to_string()
    # and every junk image is flagged only by what it is (+ the low information of blank pages)
    junk = stat[stat["member"].str.startswith("j_")]
    for key, (_, want) in _junk().items():
        got = set(junk.loc[junk["member"].str.startswith(f"j_{key}."), "issue"])
        assert want <= got, (key, got)


def test_grouped_junk_is_an_outlier_but_not_in_outliers_csv(grouped_run):
    res, _ = grouped_run
    out = res.issues[res.issues["issue"] == "outlier"].compute()
    assert set(out["member"].str[:2]) == {"b_"}, out.to_string()  # the pages, no natural picture
    same = out[out["member"].str.startswith("b_same")]
    near = out[out["member"].str.startswith("b_near")]
    assert len(same) == 6 and same["score"].nunique() == 1
    assert len(near) == 6 and out["group"].nunique() <= 2
    assert (out["score"] < issue_row_for("effnet-lite0").outlier).all()
    members = res.files[["index", "member"]].compute().dropna().set_index("index")["member"]
    other = members.reindex(out["other"].astype("int64")).tolist()
    assert all(m.startswith("n") for m in other)  # the nearest image outside the group
    # the near-identical pages fill each other's neighbour lists: found by the search
    about = res.run["issues"]["outlier_groups"]
    assert about["searched_members"] > 0 and about["largest_labelled"] >= 6
    # fastdup's meaning: their nearest neighbour is their twin, so outliers.csv never lists them
    listed = set(members.reindex(res.outliers["index"].compute()).astype(str))
    assert not any(m.startswith("b_") for m in listed)
    assert res.summary()["issues"]["outlier"] == 12


def test_overrides_per_type(junk_run):
    res, work = junk_run
    cfg = RunConfig(run_mode=2, progress=False, issue_thresholds={"odd_aspect_ratio": 0, "dark": 0.9})
    res2 = ddk.results.build(work, config=cfg, write=False)
    assert "odd_aspect_ratio" not in set(res2.issues["issue"].compute())
    assert len(_flagged(res2, "dark")) > len(_flagged(res, "dark"))
    assert res2.run["issues"]["set_by_user"] == {"dark": 0.9, "odd_aspect_ratio": 0.0}
    assert res2.run["issues"]["resolved"]["dark"] == 0.9
    with pytest.raises(ValueError, match="unknown name 'darkness'"):
        RunConfig(issue_thresholds="darkness=0.1")
    with pytest.raises(ValueError, match="score in"):
        RunConfig(issue_thresholds={"blurry": 2})
    assert resolve_issues(RunConfig(issue_thresholds="outlier_group_size=3"), {}).outlier_group_size == 3


# -- files, load, summary ------------------------------------------------------------------------
def test_files_and_load_round_trip(grouped_run):
    res, work = grouped_run
    assert list(res.issues.columns) == list(ISSUE_COLUMNS) and len(res.issues)
    csv = pd.read_csv(os.path.join(work, "image_issues.csv"), keep_default_na=False, na_values=[""])
    assert list(csv.columns) == list(ISSUE_COLUMNS) and len(csv) == len(res.issues)
    assert csv["index"].tolist() == res.issues["index"].compute().tolist()
    assert csv["issue"].tolist() == res.issues["issue"].compute().tolist()
    back = ddk.load(work)
    pd.testing.assert_frame_equal(back.issues.compute(), res.issues.compute())
    assert back.summary()["issues"] == res.summary()["issues"]
    run = json.loads(open(os.path.join(work, "results", "run.json")).read())
    assert run["issues"]["resolved"] == issue_row_for("effnet-lite0").to_dict()
    # exact duplicates point at their pair; every duplicate row has one
    dup = res.issues[res.issues["issue"].str.endswith("_duplicate")].compute()
    assert len(dup) and dup["other"].notna().all()
    exact = dup[dup["issue"] == "exact_duplicate"]
    assert set(exact["member"]) == {f"b_same{i}.png" for i in range(6)}
    assert (exact["score"] == 0).all() and set(exact["other"]) <= set(exact["index"])
    s = res.summary()
    assert s["issues"]["exact_duplicate"] == 6 and s["issue_images"] == 12  # outlier + low information
    assert s["issues_not_reported"] == {}


def test_scores_per_archive_equal_scores_in_process(junk_run):
    res, work = junk_run
    col = collect(work)
    files = col.files_frame()
    ref = size_reference(size_histogram(files))
    cut = issue_row_for("effnet-lite0").cutoffs()
    local = issues_partition(files, cut, ref)
    per_archive = issues_frame(col.files(), cut, ref).compute(scheduler="threads")
    key = ["issue", "index"]
    pd.testing.assert_frame_equal(
        local.sort_values(key).reset_index(drop=True), per_archive.sort_values(key).reset_index(drop=True)
    )
    scores = res.issue_scores.compute(scheduler="threads")
    assert list(scores.columns) == ["index", *STAT_ISSUES] and len(scores) == col.n


def test_find_issues_on_the_workers_path_gives_the_same_table(junk_run):
    res, work = junk_run
    col = collect(work)
    files = col.files_frame()
    valid = files[files["index"].notna()].sort_values("index")
    groups = exact_groups(valid["md5"], valid["pixel_md5"])
    reps = groups.reps
    info = valid.set_index(valid["index"].astype("int64"))[["filename", "archive", "member", "key"]]
    t = issue_row_for("effnet-lite0")
    graph = (np.full((reps.size, 1), -1), np.zeros((reps.size, 1), np.float32))
    a, about_a = find_issues(col, files, groups, reps, graph, res.similarity.compute(), t, info)
    b, about_b = find_issues(col, None, groups, reps, graph, res.similarity.compute(), t, info)
    pd.testing.assert_frame_equal(a, b)
    assert about_a["size_reference"] == about_b["size_reference"]


def test_old_work_dir_without_the_new_stats(junk_run, tmp_path):
    """A work_dir extracted before stats_version 2: the types that need them are not reported."""
    _, work = junk_run
    old = tmp_path / "old"
    old.mkdir()
    for name in os.listdir(work):
        src = os.path.join(work, name)
        if not os.path.isfile(src):
            continue
        if name.endswith("features.parquet"):
            t = pq.read_table(src)
            pq.write_table(t.drop(["p01", "p99", "chroma"]), old / name)
        elif name.endswith("done.json"):
            done = json.loads(open(src).read())
            done.pop("stats_version")
            (old / name).write_text(json.dumps(done))
        elif not name.startswith(("atrain_", "image_issues", "similarity", "outliers", "connected")):
            (old / name).write_bytes(open(src, "rb").read())
    res = ddk.run(None, str(old), run_mode=2, client="sync", progress=False)
    got = set(res.issues["issue"].compute())
    assert not got & {"dark", "light", "low_information", "grayscale"}
    assert {"odd_size", "odd_aspect_ratio", "blurry", "noisy"} <= got
    why = res.summary()["issues_not_reported"]
    assert set(why) == {"dark", "light", "low_information", "grayscale"}
    assert "stats_version 2" in why["dark"] and "resume=False" in why["dark"]


# -- outlier groups against brute force -------------------------------------------------------------
def _brute(vecs: np.ndarray, label: np.ndarray) -> np.ndarray:
    s = vecs @ vecs.T
    s[label[:, None] == label[None, :]] = -np.inf
    best = s.max(axis=1)
    return np.array([best[label == lab].max() for lab in label], np.float32)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_outlier_groups_match_brute_force(k):
    rng = np.random.default_rng(k)
    d = 16
    centres = rng.standard_normal((6, d))
    base = [rng.standard_normal(d) for _ in range(60)]
    tight = [c + 0.02 * rng.standard_normal(d) for c in centres for _ in range(int(rng.integers(2, 9)))]
    vecs = np.array(base + tight, np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs.astype(np.float32)
    n = len(vecs)
    sim = vecs @ vecs.T
    np.fill_diagonal(sim, -np.inf)
    nbr_idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    nbr_sim = np.take_along_axis(sim, nbr_idx, 1).astype(np.float32)
    groups = exact_groups([str(i) for i in range(n)])
    calls = []

    def search(q, lab):
        calls.append(q.size)
        s, i = best_outside(vecs[q], lab[q], vecs, lab, 0)
        return s, i

    og = outlier_groups(groups, np.arange(n), nbr_idx, nbr_sim, link=0.9, max_size=100, search=search)
    # groups: the tight clusters, everything else alone
    assert int((og.size > 1).sum()) == len(tight) and np.unique(og.group[og.size > 1]).size == len(centres)
    lab = og.group
    np.testing.assert_allclose(og.similarity, _brute(vecs, lab), atol=1e-5)
    for i in range(n):  # the nearest image is outside the group and is where the score comes from
        members = np.flatnonzero(lab == lab[i])
        assert lab[og.nearest[i]] != lab[i]
        assert float((vecs[members] @ vecs[og.nearest[i]]).max()) == pytest.approx(float(og.similarity[i]), abs=1e-5)
    big = og.size > k
    assert (og.searched > 0) == bool(big.any()) and sum(calls) == og.searched
    assert og.searched <= QUERIES_PER_GROUP * len(centres)
    # searching only what could fall below a cut-off decides every image the same way
    for cut in (0.2, 0.4):
        fast = outlier_groups(groups, np.arange(n), nbr_idx, nbr_sim, link=0.9, max_size=100,
                              search=search, below=cut)  # fmt: skip
        assert fast.searched <= og.searched
        np.testing.assert_array_equal(fast.similarity < cut, og.similarity < cut)
        flagged = og.similarity < cut
        np.testing.assert_allclose(fast.similarity[flagged], og.similarity[flagged])


def test_outlier_groups_respect_max_size_and_exact_groups():
    # four identical images (one exact group) and three others; k=1
    groups = exact_groups(["a", "a", "a", "a", "b", "c", "d"])
    reps = groups.reps  # [0, 4, 5, 6]
    nbr_idx = np.array([[1], [2], [1], [2]])
    nbr_sim = np.array([[0.1], [0.8], [0.8], [0.7]], np.float32)
    og = outlier_groups(groups, reps, nbr_idx, nbr_sim, link=0.9, max_size=3)
    assert og.group.tolist() == [0, 0, 0, 0, 4, 5, 6] and og.size.tolist() == [4, 4, 4, 4, 1, 1, 1]
    assert [round(float(v), 2) for v in og.similarity] == [0.1] * 4 + [0.8, 0.8, 0.7]
    assert og.nearest.tolist() == [4, 4, 4, 4, 5, 4, 5]
    from dedupdask.analyses.issues import outlier_issues

    assert og.pictures.tolist() == [1, 1, 1, 1, 1, 1, 1]  # exact copies are one picture
    assert outlier_issues(og, 0.5, 1)["index"].tolist() == [0, 1, 2, 3]
    # two look-alike pictures (linked at 0.95) are a group of 2: too large for max_size 1
    og = outlier_groups(groups, reps, nbr_idx, np.array([[0.1], [0.95], [0.95], [0.7]], np.float32),
                        link=0.9, max_size=1)  # fmt: skip
    assert og.pictures.tolist() == [1, 1, 1, 1, 2, 2, 1] and og.group.tolist() == [0, 0, 0, 0, 4, 4, 6]
    assert outlier_issues(og, 0.75, 1)["index"].tolist() == [0, 1, 2, 3, 6]
    # image 6's edge into the pair bounds the pair's similarity to the rest: 0.7, to image 6
    assert [round(float(v), 2) for v in og.similarity[4:]] == [0.7, 0.7, 0.7] and og.nearest[4] == 6
    assert outlier_issues(og, 0.75, 2)["index"].tolist() == [0, 1, 2, 3, 4, 5, 6]



def test_scores_are_documented_values():
    f = pd.DataFrame({"index": [0, 1], "width": [100, 1000], "height": [100, 10], "p01": [0.0, 250.0],
                      "p99": [255.0, 252.0], "blur": [500.0, 0.0], "stdv": [120.0, 0.0],
                      "chroma": [120.0, 0.0]})  # fmt: skip
    s = image_scores(f, 100.0).set_index("index").astype("float64").round(6)  # scores have 6 decimals
    assert s.loc[0, "odd_size"] == pytest.approx(1.0) and s.loc[1, "odd_size"] == pytest.approx(1.0)
    assert s.loc[1, "odd_aspect_ratio"] == pytest.approx(0.01)
    assert s.loc[0, "blurry"] == pytest.approx(1 - np.exp(-5), rel=1e-5) and s.loc[1, "blurry"] == 0
    assert s.loc[1, "low_information"] == round(2 / 255, 6) and s.loc[0, "low_information"] == 1
    assert s.loc[1, "light"] == round(5 / 255, 6) and s.loc[0, "dark"] == 1
    assert s.loc[0, "grayscale"] == round(120 / 255, 6) and s.loc[1, "grayscale"] == 0
    assert s.loc[0, "noisy"] == round(1 - 500 / (20 * 120.0**2), 6) and s.loc[1, "noisy"] == 1  # stdv 0: no noise
    assert set(ISSUE_TYPES) == {*STAT_ISSUES, "outlier"}


# -- galleries and CLI ---------------------------------------------------------------------------------
def test_issue_galleries(junk_run, grouped_run, tmp_path):
    res, work = junk_run
    pages = res.galleries(str(tmp_path / "all"), num_images=10)
    for t in ISSUE_TYPES:
        g = pages[f"issue_{t}"]
        assert os.path.isfile(g.path) and os.path.basename(g.path) == f"issue_{t}.html"
        assert g.n_missing == 0
    index = open(pages["index"].path, encoding="utf-8").read()
    assert all(f'href="issue_{t}.html"' in index for t in ISSUE_TYPES)
    low = pages["issue_low_information"]
    assert low.n_rows == len(_flagged(res, "low_information")) > 0
    assert "j_solid.png" in low.html and "low_information 0.000" in low.html
    assert 'no image has this issue (cut-off 0.45)' in pages["issue_outlier"].html
    grouped, gwork = grouped_run
    out = ddk.create_issues_gallery(gwork, str(tmp_path / "out"), issue="outlier")
    n_groups = grouped.issues.loc[grouped.issues["issue"] == "outlier", "group"].nunique().compute()
    assert out.n_rows == n_groups and "group of " in out.html and "nearest other image" in out.html
    assert out.n_missing == 0 and out.n_thumbnails >= 12
    g = ddk.create_issues_gallery(gwork, str(tmp_path / "one"), issue="exact_duplicate")
    assert g.n_rows == 6 and "its pair" in g.html and g.n_thumbnails == 12
    with pytest.raises(ValueError, match="issue must be one of"):
        ddk.create_issues_gallery(res, str(tmp_path / "x"), issue="sepia")


def test_cli_build_and_gallery_issue_pages(junk_run, tmp_path, capsys):
    _, work = junk_run
    assert cli_main(["build", work, "--client", "sync", "--no-progress",
                     "--issue-thresholds", "grayscale=0,outlier=0.3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "issues: " in out and "image_issues.csv" in out
    assert "grayscale" not in pd.read_csv(os.path.join(work, "image_issues.csv"))["issue"].tolist()
    assert cli_main(["gallery", work, str(tmp_path / "g"), "--kind", "issues", "--issue", "odd_size,dark"]) == 0
    assert sorted(os.listdir(tmp_path / "g")) == ["issue_dark.html", "issue_odd_size.html"]
    assert cli_main(["gallery", work, str(tmp_path / "all")]) == 0
    assert (tmp_path / "all" / "issue_outlier.html").is_file()
    assert cli_main(["build", work, "--client", "sync", "--no-progress"]) == 0  # back to the defaults
