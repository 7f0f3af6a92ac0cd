"""Per-image issue labels: each type on tiny generated images, grouped outliers, files, galleries."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

import dedupdask as ddk
from dedupdask.analyses import exact_groups
from dedupdask.analyses.groups import QUERIES_PER_GROUP, best_outside, outlier_groups
from dedupdask.analyses.issues import (
    ISSUE_COLUMNS,
    LOW_INFORMATION_PARTS,
    STAT_ISSUES,
    find_issues,
    image_scores,
    issues_frame,
    issues_partition,
    size_histogram,
    size_reference,
)
from dedupdask.analysis import build as analyse
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


WORDS = "the quick brown fox jumps over a lazy dog while data shards hold many pictures".split()


def _text_page(seed: int, size=(360, 480), font_size: int = 16, ink=(0, 0, 0), paper=(255, 255, 255),
               centred: bool = False) -> Image.Image:  # fmt: skip
    """Lines of words and nothing else (Pillow's built-in font: no system font needed)."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(font_size)
    y = 12
    while y < size[1] - font_size - 8:
        line = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
        x = (size[0] - draw.textlength(line, font=font)) / 2 if centred else 10
        draw.text((x, y), line, fill=ink, font=font)
        y += int(font_size * rng.uniform(1.3, 1.7))
    return im


def _line_drawing(seed: int, size=(360, 300), caption: bool = False) -> Image.Image:
    """Clip-art-like line art on white: outlines, hatching, a few filled shapes, coloured ink."""
    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 8))):
        x0, y0 = int(rng.integers(0, w * 2 // 3)), int(rng.integers(0, h * 2 // 3))
        box = (x0, y0, x0 + int(rng.integers(40, w // 2)), y0 + int(rng.integers(40, h // 2)))
        ink = tuple(int(v) for v in rng.integers(0, 160, 3))
        if rng.uniform() < 0.5:
            draw.ellipse(box, outline=ink, width=int(rng.integers(2, 5)))
        else:
            draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])],
                         outline=ink, width=int(rng.integers(2, 5)))  # fmt: skip
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    for y in range(y0, y0 + h // 3, 5):  # hatching: many parallel horizontal strokes
        draw.line((x0, y, x0 + w // 3, y), fill=(30, 30, 30), width=1)
    draw.rectangle((w - 70, h - 60, w - 20, h - 20), fill=(200, 40, 40))
    if caption:
        draw.text((20, h - 30), "a drawing of a fox", fill=(0, 0, 0), font=ImageFont.load_default(18))
    return im


def _noise(seed: int, size=SIZE) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _faint_page(seed: int, size=(400, 520)) -> Image.Image:
    """A near-blank scan: a gradient of 30 grey levels from top to bottom plus a few dark specks."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.linspace(215, 245, h)[:, None, None] + np.zeros((1, w, 3)) + rng.normal(0, 1.5, (h, w, 3))
    a[rng.uniform(size=(h, w)) < 0.002] = 90
    return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8), "RGB")


# one image per issue type (key -> (bytes, the types it must get))
def _junk() -> dict[str, tuple[bytes, set[str]]]:
    rng = np.random.default_rng(3)
    return {
        "solid": (_enc(Image.new("RGB", SIZE, (40, 120, 200)), "PNG"), {"low_information"}),
        "text": (_enc(_text_page(7), "PNG"), {"low_information"}),
        "strip": (_enc(_natural(101, (256, 12))), {"odd_aspect_ratio"}),
        "tiny": (_enc(_natural(102, (12, 12)), "PNG"), {"odd_size"}),
        "dark": (_enc(_scale(_natural(103), 0.04)), {"dark"}),
        "light": (_enc(_scale(_natural(104), 0.04, 255.0)), {"light"}),
        "grey": (_enc(_natural(105).convert("L").convert("RGB")), {"grayscale"}),
        "blurred": (_enc(_natural(106).filter(ImageFilter.GaussianBlur(12))), {"blurry", "low_information"}),
        "noise": (_enc(Image.fromarray(rng.integers(0, 256, (168, 224, 3), dtype=np.uint8)), "PNG"),
                  {"noisy", "low_information"}),
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


def test_decode_records_residual_range_and_text_lines():
    # a smooth gradient: a wide grey range, nothing left once the surface is removed
    ramp = np.repeat(np.linspace(40, 220, 200)[None, :, None], 150, axis=0).repeat(3, axis=2)
    d = decode_image(_enc(Image.fromarray(ramp.round().astype(np.uint8)), "PNG"), (160, 160))
    assert d.stats["p99"] - d.stats["p01"] > 150 and d.stats["residual_range"] <= 2
    d = decode_image(_enc(_natural(5)), (160, 160))
    assert d.stats["residual_range"] > 60
    # a page of text is all text lines, dark on light or light on dark; a drawing is not
    assert decode_image(_enc(_text_page(1), "PNG"), (160, 160)).stats["text_lines"] >= 0.9
    quote = _text_page(2, (480, 320), 30, ink=(255, 255, 255), paper=(30, 60, 140), centred=True)
    assert decode_image(_enc(quote), (160, 160)).stats["text_lines"] >= 0.9
    for seed in range(3):
        d = decode_image(_enc(_line_drawing(seed, caption=True), "PNG"), (160, 160))
        assert d.stats["text_lines"] < 0.5, seed
    assert decode_image(_enc(Image.new("RGB", (64, 48), "white"), "PNG"), (32, 32)).stats["text_lines"] == 0


def _decoded_scores(images: dict[str, Image.Image], fmt: str = "PNG") -> pd.DataFrame:
    rows = []
    for name, im in images.items():
        d = decode_image(_enc(im, fmt), (160, 160))
        rows.append({"name": name, "width": d.width, "height": d.height, **d.stats})
    files = pd.DataFrame(rows).assign(index=range(len(rows)))
    return image_scores(files, 300.0).set_index(files["name"])


def test_low_information_parts_flag_text_noise_blur_and_faint_pages():
    """Pages of text, noise, heavily blurred pictures and faint gradient pages have nothing to
    see: each is flagged low_information by its part; drawings and pictures are not."""
    cut = issue_row_for("effnet-lite0").low_information
    junk = {
        "text": _text_page(3),
        "small text": _text_page(4, (600, 800), 12, ink=(40, 40, 90), paper=(250, 245, 230)),
        "quote": _text_page(5, (480, 320), 32, ink=(20, 20, 20), paper=(250, 200, 60), centred=True),
        "dense page": _text_page(6, (1240, 1754), 22),  # letters ~2 px high at 160 px
        "noise": _noise(6, (400, 300)),
        "blurred": _natural(7, (400, 300)).filter(ImageFilter.GaussianBlur(12)),
        "faint page": _faint_page(8),
    }
    s = _decoded_scores(junk, "JPEG")
    part = {"text": "page", "small text": "page", "quote": "page", "dense page": "page", "noise": "structureless",
            "blurred": "featureless", "faint page": "flat"}  # fmt: skip
    for name, p in part.items():
        assert s.loc[name, "low_information"] < cut, (name, s.loc[name].to_dict())
        assert s.loc[name, f"low_information_{p}"] < cut, (name, s.loc[name].to_dict())
        assert s.loc[name, "low_information"] == min(s.loc[name, f"low_information_{q}"] for q in LOW_INFORMATION_PARTS)
    keep = {f"drawing {i}": _line_drawing(10 + i, caption=bool(i % 2)) for i in range(6)}
    icons = Image.new("RGB", (480, 200), "white")  # a row of icons: marks side by side, one band
    for i in range(6):
        ImageDraw.Draw(icons).ellipse((20 + 78 * i, 85, 50 + 78 * i, 115), outline=(0, 0, 0), width=3)
    keep["icons"] = icons
    keep.update({f"picture {i}": _natural(20 + i, (400, 300)) for i in range(6)})
    s = _decoded_scores(keep)
    assert (s["low_information"] >= 2 * cut).all(), s.loc[s["low_information"] < 2 * cut].T.to_dict()


def test_done_json_records_the_stats_version(junk_run):
    _, work = junk_run
    done = json.loads(open(os.path.join(work, "a.tardone.json")).read())
    assert done["stats_version"] == STATS_VERSION == 3
    cols = pq.read_schema(os.path.join(work, "a.tarfeatures.parquet")).names
    assert {"p01", "p99", "chroma", "residual_range", "text_lines"} <= set(cols)


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
    res2 = analyse(work, config=cfg, write=False)
    assert "odd_aspect_ratio" not in set(res2.issues["issue"].compute())
    assert len(_flagged(res2, "dark")) > len(_flagged(res, "dark"))
    assert res2.run["issues"]["set_by_user"] == {"dark": 0.9, "odd_aspect_ratio": 0.0}
    # low_information's one cut-off applies to the minimum of its parts
    scores = res.issue_scores.compute(scheduler="sync").set_index("index")
    for cut in (0.0, 0.7):
        res3 = analyse(work, config=RunConfig(run_mode=2, progress=False,
                                                        issue_thresholds={"low_information": cut}), write=False)  # fmt: skip
        issues3 = res3.issues.compute()
        got = set(issues3.loc[issues3["issue"] == "low_information", "index"])
        assert got == set(scores.index[scores["low_information"] < np.float32(cut)])
        assert (len(got) > len(_flagged(res, "low_information"))) == (cut > 0)
    assert res2.run["issues"]["resolved"]["dark"] == 0.9
    with pytest.raises(ValueError, match="unknown name 'darkness'"):
        RunConfig(issue_thresholds="darkness=0.1")
    with pytest.raises(ValueError, match="score in"):
        RunConfig(issue_thresholds={"blurry": 2})
    assert resolve_issues(RunConfig(issue_thresholds="outlier_group_size=3"), {}).outlier_group_size == 3
    capped = resolve_issues(RunConfig(issue_thresholds="outlier_search_members=0"), {})
    assert capped.outlier_search_members == 0 and isinstance(capped.outlier_search_members, int)
    for bad in ("-1", "2.5"):
        with pytest.raises(ValueError, match="outlier_search_members must be an integer >= 0"):
            RunConfig(issue_thresholds=f"outlier_search_members={bad}")


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
    assert list(scores.columns) == ["index", *STAT_ISSUES, *(f"low_information_{p}" for p in LOW_INFORMATION_PARTS)]
    assert len(scores) == col.n


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


def _old_work_dir(work: str, dest, version: int):
    """A copy of ``work`` as extracted with ``stats_version`` 1 or 2 (their columns only)."""
    drop = ["residual_range", "text_lines"] + (["p01", "p99", "chroma"] if version < 2 else [])
    dest.mkdir()
    for name in os.listdir(work):
        src = os.path.join(work, name)
        if not os.path.isfile(src):
            continue
        if name.endswith("features.parquet"):
            pq.write_table(pq.read_table(src).drop(drop), dest / name)
        elif name.endswith("done.json"):
            done = json.loads(open(src).read())
            if version < 2:
                done.pop("stats_version")
            else:
                done["stats_version"] = version
            (dest / name).write_text(json.dumps(done))
        elif not name.startswith(("atrain_", "image_issues", "similarity", "outliers", "connected")):
            (dest / name).write_bytes(open(src, "rb").read())
    return dest


def test_old_work_dir_without_the_new_stats(junk_run, tmp_path):
    """A work_dir extracted before stats_version 2: the types that need them are not reported;
    low_information is scored from the parts that need only version 1 (featureless,
    structureless) and says so."""
    res, work = junk_run
    old = _old_work_dir(work, tmp_path / "old", 1)
    res1 = ddk.run(None, str(old), run_mode=2, client="sync", progress=False)
    got = set(res1.issues["issue"].compute())
    assert not got & {"dark", "light", "grayscale"}
    assert {"odd_size", "odd_aspect_ratio", "blurry", "noisy", "low_information"} <= got
    assert {"j_blurred", "j_noise"} <= _flagged(res1, "low_information") <= _flagged(res, "low_information")
    assert "j_text" not in _flagged(res1, "low_information")  # its page part needs stats_version 3
    why = res1.summary()["issues_not_reported"]
    assert set(why) == {"dark", "light", "grayscale"}
    assert "stats_version 2" in why["dark"] and "resume=False" in why["dark"]
    partly = res1.run["issues"]["partly_scored"]["low_information"]
    assert "flat and page parts" in partly and "resume=False" in partly
    n = len(res1.issue_scores.compute(scheduler="sync"))
    assert res1.run["issues"]["unscored"] == {"dark": n, "light": n, "grayscale": n,
                                              "low_information_flat": n, "low_information_page": n}  # fmt: skip
    scores = res1.issue_scores.compute(scheduler="sync")
    assert scores["low_information_flat"].isna().all() and scores["low_information_page"].isna().all()
    assert scores["low_information"].notna().all()


def test_work_dir_of_stats_version_2(junk_run, tmp_path):
    """Before stats_version 3: low_information without its page part (never flagged there),
    its flat part without detrending; every other type as before."""
    res, work = junk_run
    res2 = ddk.run(None, str(_old_work_dir(work, tmp_path / "v2", 2)), run_mode=2, client="sync", progress=False)
    assert res2.summary()["issues_not_reported"] == {}
    partly = res2.run["issues"]["partly_scored"]["low_information"]
    n = len(res2.issue_scores.compute(scheduler="sync"))
    assert partly.startswith(f"{n} of {n} images have no text_lines/residual_range")
    assert res2.run["issues"]["unscored"] == {"low_information_page": n}  # counted as not scored
    assert "text_lines" in partly and "without its page part" in partly and "detrending" in partly
    assert "j_text" not in _flagged(res2, "low_information") and "j_solid" in _flagged(res2, "low_information")
    for t in ("dark", "light", "blurry", "noisy", "odd_size", "odd_aspect_ratio", "grayscale"):
        assert _flagged(res2, t) == _flagged(res, t), t
    assert res.run["issues"]["partly_scored"] == {}


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


def _isolated_groups(k: int) -> tuple:
    """Unit vectors: 80 around one direction, then 6 tight groups of k+1..8 elsewhere that no
    list outside them reaches (only a search finds their nearest image); exact k-NN lists."""
    rng = np.random.default_rng(k)
    d = 16
    e0 = np.eye(d)[0]
    loose = [3 * e0 + rng.standard_normal(d) for _ in range(80)]
    centres = rng.standard_normal((6, d))
    tight = [c + 0.02 * rng.standard_normal(d) for c in centres for _ in range(int(rng.integers(k + 1, 9)))]
    vecs = np.array(loose + tight, np.float64)
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    sim = vecs @ vecs.T
    np.fill_diagonal(sim, -np.inf)
    nbr_idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return vecs, nbr_idx, np.take_along_axis(sim, nbr_idx, 1).astype(np.float32)


def test_outlier_search_cap_keeps_the_highest_bounds():
    """``max_searched`` (``outlier_search_members``): at or above the members chosen nothing
    changes; below, exactly that many are searched, those whose full lists reached the highest
    similarity (the bound, ties to the smaller index), the rest counted as unsearched, and a
    group none of whose members was searched keeps what the edges gave (mostly nothing here)."""
    k = 2
    vecs, nbr_idx, nbr_sim = _isolated_groups(k)
    n = len(vecs)
    groups = exact_groups([str(i) for i in range(n)])
    asked: list[np.ndarray] = []

    def search(q, lab):
        asked.append(np.asarray(q).copy())
        return best_outside(vecs[q], lab[q], vecs, lab, 0)

    def run(cap):
        asked.clear()
        return outlier_groups(groups, np.arange(n), nbr_idx, nbr_sim, link=0.9, max_size=100, search=search,
                              max_searched=cap)  # fmt: skip

    full = run(None)
    chosen = asked[0]
    m = full.searched
    closed = np.unique(full.group[full.size > 1])
    assert m == chosen.size >= 2 * closed.size and closed.size == 6 and full.unsearched == 0
    assert np.isfinite(full.similarity).all()  # every isolated group found its nearest image
    np.testing.assert_allclose(full.similarity, _brute(vecs, full.group), atol=1e-6)
    bound = nbr_sim[chosen, -1]  # reps are 0..n-1: a member's bound is its list's last entry
    edges_only = outlier_groups(groups, np.arange(n), nbr_idx, nbr_sim, link=0.9, max_size=100)
    assert np.unique(edges_only.group[np.isnan(edges_only.similarity)]).size >= 4  # no edge out
    for cap in (m, m + 5):  # at or above what is chosen: the same result
        og = run(cap)
        assert (og.searched, og.unsearched) == (m, 0)
        for f in ("group", "size", "pictures", "similarity", "nearest"):
            np.testing.assert_array_equal(getattr(og, f), getattr(full, f), err_msg=f)
    for cap in (m - 1, m // 2, 3, 1, 0):
        og = run(cap)
        assert (og.searched, og.unsearched) == (cap, m - cap)
        want = np.sort(chosen[np.lexsort((chosen, -bound))[:cap]])
        np.testing.assert_array_equal(asked[0] if asked else np.empty(0, np.int64), want)
        hit = np.isin(og.group, og.group[want])
        np.testing.assert_array_equal(og.similarity[~hit], edges_only.similarity[~hit])
        np.testing.assert_array_equal(og.nearest[~hit], edges_only.nearest[~hit])
        assert np.isfinite(og.similarity[hit]).all()


def test_best_outside_in_chunks_is_one_product(monkeypatch):
    """Queries in chunks of QUERY_CHUNK against rows in slices of BLOCK_ROWS give what one
    product gives, ties (equal similarities, in different slices) to the smaller index."""
    import dedupdask.analyses.groups as groups_mod

    rng = np.random.default_rng(5)
    x = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 40)]  # every similarity exactly 0 or 1
    q, q_lab = x[:23], rng.integers(0, 4, 23)
    block, b_lab = x, rng.integers(0, 4, 40)
    s = q @ block.T
    s[q_lab[:, None] == b_lab[None, :]] = -np.inf
    want_idx = np.array([min(np.flatnonzero(r == r.max())) if np.isfinite(r.max()) else -1 for r in s]) + 100
    want_idx[~np.isfinite(s.max(axis=1))] = -1
    whole = best_outside(q, q_lab, block, b_lab, 100)
    monkeypatch.setattr(groups_mod, "QUERY_CHUNK", 3)
    monkeypatch.setattr(groups_mod, "BLOCK_ROWS", 4)
    chunked = best_outside(q, q_lab, block, b_lab, 100)
    for got in (whole, chunked):
        np.testing.assert_array_equal(got[1], want_idx)
        np.testing.assert_array_equal(got[0], s.max(axis=1).astype(np.float32))


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
                      "chroma": [120.0, 0.0], "residual_range": [200.0, 1.0], "text_lines": [0.25, 0.0]})  # fmt: skip
    s = image_scores(f, 100.0).set_index("index").astype("float64").round(6)  # scores have 6 decimals
    assert s.loc[0, "odd_size"] == pytest.approx(1.0) and s.loc[1, "odd_size"] == pytest.approx(1.0)
    assert s.loc[1, "odd_aspect_ratio"] == pytest.approx(0.01)
    assert s.loc[0, "blurry"] == pytest.approx(1 - np.exp(-5), rel=1e-5) and s.loc[1, "blurry"] == 0
    assert s.loc[0, "low_information_flat"] == round(200 / 255, 6) and s.loc[1, "low_information_flat"] == round(1 / 255, 6)
    assert s.loc[0, "low_information_featureless"] == s.loc[0, "blurry"]
    assert s.loc[0, "low_information_structureless"] == round(1 - 500 / (20 * 120.0**2) / 0.55, 6)
    assert s.loc[0, "low_information_page"] == 0.75 and s.loc[1, "low_information_page"] == 1
    assert s.loc[0, "low_information"] == 0.75 and s.loc[1, "low_information"] == 0  # the lowest part
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
    # the page of text is the one outlier among the pictures (nearest other image: the strip)
    assert "j_text.png" in pages["issue_outlier"].html and pages["issue_outlier"].n_rows == 1
    quiet = analyse(work, config=RunConfig(run_mode=2, progress=False, issue_thresholds={"outlier": 0.1}),
                              write=False)  # fmt: skip
    assert "no image has this issue (cut-off 0.1)" in quiet.galleries(str(tmp_path / "q"), num_images=10)[
        "issue_outlier"].html  # fmt: skip
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
