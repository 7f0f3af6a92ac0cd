"""The duplicate tiers on the workers (:mod:`dedupdask.analyses.tiers_dask`): the in-process
tiers' decisions, edges and counts from graph tables, group tables and the files frame."""

from __future__ import annotations

import io
import tarfile

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dedupdask.analyses import exact_groups, expand_graph
from dedupdask.analyses.expand_dask import expand_graph_frame
from dedupdask.analyses.graph import graph_arrays, graph_frame
from dedupdask.datasets import make_sample_shards, random_picture
from dedupdask.match_record import MATCHERS


def group_table(groups, npartitions: int = 3) -> dd.DataFrame:
    """``index, rep, group_size`` of in-process groups, as exact_groups_dask gives them."""
    rep = groups.rep
    df = pd.DataFrame({"index": np.arange(rep.size), "rep": rep, "group_size": np.bincount(rep, minlength=rep.size)[rep]})
    return dd.from_pandas(df.set_index(df["index"].rename("node")), npartitions=npartitions)


def random_input_graph(rng, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A kNN-like graph: distinct neighbours, not self, padding only at the end of a row."""
    idx = np.full((n, k), -1, np.int64)
    sim = np.full((n, k), np.nan, np.float32)
    for r in range(n):
        m = int(rng.integers(0, min(k, n - 1) + 1)) if n > 1 else 0
        nb = rng.choice(np.delete(np.arange(n), r), size=m, replace=False) if m else []
        idx[r, :m] = nb
        sim[r, :m] = np.sort(rng.uniform(0, 0.99, m))[::-1]
    return idx, sim


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expand_graph_frame_matches_expand_graph(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(50, 400)), int(rng.integers(1, 6))
    md5 = [f"m{i}" for i in rng.integers(0, int(n * 0.8), n)]
    inp = [f"i{i}" for i in rng.integers(0, int(n * 0.3), n)]
    groups, inputs = exact_groups(md5), exact_groups(md5, inp)
    fine, coarse = groups.reps, inputs.reps
    idx, sim = random_input_graph(rng, coarse.size, k)
    want = expand_graph(groups, inputs, idx, sim)
    table = graph_frame(coarse, idx, sim, partition_rows=max(1, coarse.size * k // 4))
    with dask.config.set(scheduler="sync"):
        got = expand_graph_frame(table, group_table(groups), group_table(inputs, 4), k).compute()
        ref = graph_frame(fine, *want).compute()
    pd.testing.assert_frame_equal(got[list(ref.columns)].reset_index(drop=True), ref.reset_index(drop=True))
    g_idx, g_sim = graph_arrays(got, fine, k)
    np.testing.assert_array_equal(g_idx, want[0])
    np.testing.assert_array_equal(g_sim, want[1])
    # each end's input representative
    np.testing.assert_array_equal(got["from_input"].to_numpy(), inputs.rep[got["from"].to_numpy()])
    np.testing.assert_array_equal(got["to_input"].to_numpy(), inputs.rep[got["to"].to_numpy()])
    # a graph table whose divisions are of another index (a RangeIndex) expands the same
    with dask.config.set(scheduler="sync"):
        whole = table.compute().reset_index(drop=True)  # split at image boundaries, numbered rows
        cuts = [0, *np.searchsorted(whole["from"], np.quantile(whole["from"], [1 / 3, 2 / 3])), len(whole)]
        parts = [dask.delayed(whole.iloc[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        flat = dd.from_delayed(parts, meta=whole.iloc[:0], divisions=(*cuts[:-1], cuts[-1] - 1))
        again = expand_graph_frame(flat, group_table(groups), group_table(inputs), k).compute()
    pd.testing.assert_frame_equal(again.reset_index(drop=True), got.reset_index(drop=True))


def test_graph_partitions_out_of_order_are_a_clear_error():
    from dedupdask.analyses.expand_dask import graph_bounds

    rows = pd.DataFrame({"from": [5, 6, 0, 1], "to": [6, 5, 1, 0], "similarity": np.ones(4, np.float32),
                         "rank": np.zeros(4, np.int16)})  # fmt: skip
    with dask.config.set(scheduler="sync"), pytest.raises(ValueError, match="increasing"):
        graph_bounds(dd.from_pandas(rows, npartitions=2, sort=False))


# -- against the in-process tiers, on extracted shards --------------------------------------------
def _jpeg(im: Image.Image, q: int = 90, comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q, comment=comment)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards_work_dir(tmp_path_factory) -> str:
    """Sample shards (exact, copy and near duplicates) plus a tar of look-alikes (verified and
    rejected), crop+resize+JPEG copies (verified and accepted) and large JPEGs that differ
    only in a comment: equal at model size, not exact (input groups of 2 and 3 exact groups,
    one of them with a byte copy)."""
    from dedupdask.pipeline import extract

    root = tmp_path_factory.mktemp("tiers_dask")
    shards = make_sample_shards(
        str(root / "shards"), n_shards=2, images_per_shard=16, n_near=10, n_exact=3,
        formats=("tar",), broken=False, seed=7,
    )  # fmt: skip
    rng = np.random.default_rng(21)
    extra = []
    for i in range(4):
        im = random_picture(rng, (512, 384))
        extra += [(f"x{i:03d}.jpg", _jpeg(im)), (f"y{i:03d}.jpg", _jpeg(_lookalike(im, i)))]
        if i % 2 == 0:
            extra.append((f"z{i:03d}.jpg", _jpeg(_crop_resize(im), 35)))
    for i, n in enumerate((2, 3)):
        big = random_picture(rng, (1024, 768))
        extra += [(f"w{i}{j}.jpg", _jpeg(big, comment=f"copy {j}".encode())) for j in range(n)]
    extra.append(("w1x.jpg", extra[-1][1]))  # a byte copy inside the input group of 3
    with tarfile.open(root / "shards" / "00009.tar", "w") as tf:
        for name, data in extra:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    extract(shards.root, str(root / "work"), client="sync", progress=False)
    return str(root / "work")


def _lookalike(im: Image.Image, seed: int) -> Image.Image:
    out = im.copy()
    w, h = out.size
    other = random_picture(np.random.default_rng(seed), (w, h))
    out.paste(other.crop((w // 2, 0, w, h)), (w // 2, 0))
    return out


def _crop_resize(im: Image.Image) -> Image.Image:
    w, h = im.size
    c = im.crop((int(w * 0.04), int(h * 0.07), int(w * 0.95), int(h * 0.94)))
    return c.resize((int(c.width * 0.6), int(c.height * 0.6)), Image.Resampling.BICUBIC)


def _inputs(
    wd: str, *, verify: bool = True, copy_tier: bool = True, no_embedding_edges: bool = False,
    whiten: bool = False,
):  # fmt: skip
    """What analysis gives both tiers: groups, their tables, the input graph, the params."""
    from dedupdask.analyses.exact_dask import EXACT_KEYS, INPUT_KEYS, exact_groups_dask
    from dedupdask.analyses.tiers import resolve_params
    from dedupdask.collect import collect
    from dedupdask.config import RunConfig
    from dedupdask.fusion import has_dct
    from dedupdask.knn_partitioned import knn_graph_work_dir
    from dedupdask.thresholds import resolve

    col = collect(wd)
    cfg = RunConfig(run_mode=2, progress=False)
    files = col.files_frame()
    valid = files[files["index"].notna()].sort_values("index")
    groups = exact_groups(valid["md5"], valid["pixel_md5"])
    inputs = exact_groups(valid["md5"], valid["pixel_md5"], valid["input_md5"])
    params = resolve_params(
        resolve(cfg, col.model), has_dct=copy_tier and has_dct(col), verify=verify,
        nearest_neighbors_k=cfg.nearest_neighbors_k, whiten=whiten,
    )  # fmt: skip
    idx, sim, _, _ = knn_graph_work_dir(col, inputs.reps, params.k, config=cfg, method="exact")
    if no_embedding_edges:  # every pair then comes from the DCT graph (or the ring of siblings)
        idx, sim = np.full_like(idx, -1), np.full_like(sim, np.nan)
    tables = [exact_groups_dask(col.files(), col.n, keys=keys).table for keys in (EXACT_KEYS, INPUT_KEYS)]
    return col, cfg, files, groups, inputs, params, (idx, sim), tables


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["from", "to"], kind="stable").reset_index(drop=True)


def _same_tiers(wd: str, *, reads_may_differ: bool = False, **modes: bool) -> dict:
    """run_tiers_frames on the current scheduler against run_tiers; returns the outcome."""
    from dedupdask.analyses.tiers_dask import run_tiers_frames
    from dedupdask.fusion import run_tiers
    from dedupdask.scheduler import gather_frames

    col, cfg, files, groups, inputs, params, (idx, sim), (ex_t, in_t) = _inputs(wd, **modes)
    expanded = expand_graph(groups, inputs, idx, sim)
    kw = dict(method="exact", storage_options=None, knn_config=cfg)
    want = run_tiers(col, groups, groups.reps, expanded, params, files, input_groups=inputs, **kw)
    got = run_tiers_frames(col, col.files(), ex_t, in_t, graph_frame(inputs.reps, idx, sim), params, **kw)
    decided, edges, graph = gather_frames(got.decided, got.edges, got.graph)
    pd.testing.assert_frame_equal(_sorted(decided), _sorted(want.decided[list(decided.columns)]))
    assert list(decided.columns) == list(want.decided.columns)
    a, b = want.edges
    pd.testing.assert_frame_equal(_sorted(edges), _sorted(pd.DataFrame({"from": a, "to": b})))
    g_idx, g_sim = graph_arrays(graph, groups.reps, params.k)
    np.testing.assert_array_equal(g_idx, expanded[0])
    np.testing.assert_array_equal(g_sim, expanded[1])
    assert got.counts == want.counts
    # cost and placement, not results: run_tiers scores fewer than CLUSTER_MIN_PAIRS on threads here
    timing = {"seconds", "seconds_per_pair", "read_seconds", "score_seconds", "tasks", "ran_on", "workers"}
    if reads_may_differ:  # chunks of ranged reads re-read images found in several chunks
        timing.add("images_read")
    assert {k: v for k, v in got.verification.items() if k not in timing} == {
        k: v for k, v in want.verification.items() if k not in timing
    }
    assert got.verification.keys() == want.verification.keys()
    assert got.dct_knn == want.dct_knn
    assert got.whitening == want.whitening
    return {"decided": decided, "counts": got.counts, "verification": got.verification, "groups": (groups, inputs)}


def test_tiers_on_the_workers_decide_like_in_process(shards_work_dir):
    with dask.config.set(scheduler="sync"):
        out = _same_tiers(shards_work_dir)
    d, c, v = out["decided"], out["counts"], out["verification"]
    assert (v["ran_on"], v["workers"]) == ("this process", 0)  # the sync scheduler
    groups, inputs = out["groups"]
    # the data has every kind of pair the tiers handle
    assert groups.n_groups(2) >= 3  # exact groups
    assert inputs.reps.size < groups.reps.size - 1  # input groups of several exact groups
    assert c["same_input_candidates"] >= 3 and c["accepted_copy"] >= 1 and c["near_direct"] >= 0
    assert v["candidates"] >= 5 and v["accepted"] >= 1 and v["rejected"] >= 1
    assert (d["to_verify"] & d["accepted"] & (d["kind"] == "near")).any()  # verified near pairs
    # every scored pair keeps its match record (the same on both paths: compared above)
    scored = d["verify_score"].notna()
    assert d.loc[scored, "verify_matcher"].notna().all() and d.loc[~scored, "verify_matcher"].isna().all()
    good = d["verify_score"] >= 0.9
    assert d.loc[good, "verify_h"].notna().all() and d.loc[good, "verify_matcher"].isin(MATCHERS).all()


def test_tiers_on_a_local_cluster_decide_like_in_process(shards_work_dir):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        # both sides size their kNN tasks from the workers' memory limit: with none registered
        # yet, the first would take this machine's memory instead (a race, not a difference)
        client.wait_for_workers(2)
        out = _same_tiers(shards_work_dir)
    assert (out["verification"]["ran_on"], out["verification"]["workers"]) == ("workers", 2)


def test_ranged_reads_in_many_partitions_decide_like_in_process(shards_work_dir, monkeypatch):
    """Past STREAM_MAX_ARCHIVES, images are read by byte range; small PAIRS_PER_TASK splits
    the pairs into many partitions and chunks: the decisions stay those of run_tiers."""
    import dedupdask.verify as verify

    monkeypatch.setattr(verify, "STREAM_MAX_ARCHIVES", 0)
    monkeypatch.setattr(verify, "PAIRS_PER_TASK", 7)
    with dask.config.set(scheduler="sync"):
        out = _same_tiers(shards_work_dir, reads_may_differ=True)
    v = out["verification"]
    assert v["ranged_pairs"] == v["candidates"] > 7 and v["tasks"] > v["candidates"] // 7


def test_a_pair_of_archives_with_many_pairs_is_spread_over_partitions(monkeypatch):
    from dedupdask import verify
    from dedupdask.verify_frames import _spread

    monkeypatch.setattr(verify, "PAIRS_PER_TASK", 10)
    pairs = pd.DataFrame({"from": np.arange(100), "to": np.arange(100) + 1000,
                          "_key": pd.array(["a\nb"] * 95 + ["a\nc"] * 5, dtype="string")})  # fmt: skip
    out = _spread(pairs, {"a\nb": 10})
    shards = out.groupby("_key")["_shard"].nunique()
    assert shards["a\nb"] == 10 and shards["a\nc"] == 1
    assert out.groupby("_shard").size().max() <= 20


def test_dct_pairs_get_the_input_representative_of_both_ends():
    """A pair only the DCT graph has learns whether its ends have equal model inputs: each
    end's input representative (its own index unless its input group has other exact groups),
    asked of the inputs table: the edges keep their partitions and order, a hub included."""
    from dedupdask.analyses.tiers_dask import _input_reps

    hub = 40  # an image with an edge from every partition
    edges = pd.DataFrame(
        {"from": [1, 2, 5, *range(10, 40)], "to": [3, 4, 6, *[hub] * 30], "s": np.ones(33, np.float32),
         "src": np.ones(33, np.int8)}
    )  # fmt: skip
    edges["c_from"], edges["c_to"] = edges["from"], edges["to"]
    reps = np.arange(41)
    reps[[1, 3]], reps[4] = 0, 2  # input groups {0, 1, 3} and {2, 4}; every other image alone
    inputs = dd.from_pandas(pd.DataFrame({"index": np.arange(41), "rep": reps, "group_size": 1}), npartitions=3)
    e = dd.from_pandas(edges, npartitions=4)
    with dask.config.set(scheduler="sync"):
        got = _input_reps(e, inputs)
        parts = [got.get_partition(i).compute() for i in range(got.npartitions)]
    assert got.npartitions == 4 and [len(p) for p in parts] == [len(e.get_partition(i).compute()) for i in range(4)]
    out = pd.concat(parts, ignore_index=True)
    assert out[["from", "to"]].values.tolist() == edges[["from", "to"]].values.tolist()  # rows in place
    assert out[["c_from", "c_to"]].values.tolist()[:3] == [[0, 0], [2, 2], [5, 6]]
    assert (out["c_to"].iloc[3:] == hub).all() and (out["c_from"].iloc[3:] == out["from"].iloc[3:]).all()
    assert list(out.columns) == list(edges.columns)


@pytest.mark.parametrize("modes", [{"verify": False}, {"copy_tier": False}], ids=["no-verify", "no-copy-tier"])
def test_tiers_without_verification_or_copy_tier_decide_like_in_process(shards_work_dir, modes):
    with dask.config.set(scheduler="sync"):
        out = _same_tiers(shards_work_dir, **modes)
    if not modes.get("verify", True):
        assert out["verification"]["candidates"] == 0 and out["counts"]["accepted_copy"] >= 1
    else:
        assert out["counts"]["copy_candidates"] == 0 and out["verification"]["accepted"] >= 1


def test_pairs_only_the_dct_graph_has_get_their_embedding_cosine(shards_work_dir):
    """With no embedding edge, copy pairs come from the DCT graph alone: their embedding
    cosine is read from the vectors of just those rows, as in process."""
    with dask.config.set(scheduler="sync"):
        out = _same_tiers(shards_work_dir, no_embedding_edges=True)
    d = out["decided"]
    dct_only = d[~d["same_input"]]
    assert len(dct_only) >= 5 and dct_only["similarity"].notna().all()
    assert (dct_only["similarity"] < 1).any()


def test_a_frame_without_its_columns_is_a_clear_error(shards_work_dir):
    from dedupdask.analyses.tiers_dask import run_tiers_frames

    col, cfg, _, groups, inputs, params, (idx, sim), (ex_t, in_t) = _inputs(shards_work_dir)
    graph = graph_frame(inputs.reps, idx, sim).drop(columns="rank")
    with pytest.raises(ValueError, match="emb_graph has no column 'rank'"):
        run_tiers_frames(col, col.files(), ex_t, in_t, graph, params)


@pytest.mark.parametrize("margin", [None, 0.05])
def test_whitened_candidates_decide_like_in_process(shards_work_dir, monkeypatch, margin):
    """With a whitened_threshold the band's candidates are the whitened graph's pairs: the
    same on the workers as in process, each verified pair of the band at or above the cut
    unless it stands ``whitened_margin`` out of its picture's neighbourhood, and the embedding
    graph proposes only what is accepted without verification."""
    import dataclasses

    from dedupdask import thresholds, whitening

    monkeypatch.setattr(whitening, "DIMS", 8)  # 40 images: 8 axes are what they can estimate
    row = thresholds.TABLE["effnet-lite0"]
    monkeypatch.setitem(thresholds.TABLE, "effnet-lite0", dataclasses.replace(row, whitened_margin=margin))
    with dask.config.set(scheduler="sync"):
        out = _same_tiers(shards_work_dir, whiten=True)
        raw = _same_tiers(shards_work_dir)
    d = out["decided"]
    cut = np.float32(0.457)
    assert d["whitened_similarity"].notna().any() and raw["decided"]["whitened_similarity"].isna().all()
    band = d["to_verify"] & ~(d["copy_similarity"] >= np.float32(0.995)) & ~d["same_input"]
    assert band.any()
    under = d.loc[band, "whitened_similarity"] < cut
    assert under.any() if margin else not under.any()  # (40 images: a loose margin to see some)
    only_raw = d["whitened_similarity"].isna() & d["copy_similarity"].isna()
    assert (d.loc[only_raw, "similarity"] >= np.float32(0.99)).all()
    assert (d["similarity"].notna()).all()  # the pairs only other graphs have get their cosine


def test_run_json_says_how_the_candidates_to_verify_were_chosen(shards_work_dir, monkeypatch):
    from dedupdask import whitening
    from dedupdask.analysis import build
    from dedupdask.config import RunConfig

    cfg = RunConfig(run_mode=2, progress=False)
    with dask.config.set(scheduler="sync"):
        small = build(shards_work_dir, config=cfg, write=False).run
        monkeypatch.setattr(whitening, "MIN_IMAGES", 10)
        monkeypatch.setattr(whitening, "DIMS", 8)
        white = build(shards_work_dir, config=cfg, write=False).run
        off = build(shards_work_dir, config=RunConfig(run_mode=2, progress=False, verify=False), write=False).run
        mine = build(shards_work_dir, config=RunConfig(run_mode=2, progress=False, whitened_threshold=0.3), write=False).run
    n = small["counts"]["images"]
    assert small["whitening"] == {"used": False, "reason": f"{n} images < 2000: candidates by verify_threshold"}
    assert small["parameters"]["whitened_threshold"] is None
    assert white["parameters"]["whitened_threshold"] == 0.457
    assert white["whitening"]["dims"] == 8 and white["whitening"]["sample"] == n
    assert white["whitening"]["knn"]["method"] == "exact"
    assert off["whitening"] == {"used": False, "reason": "verify=False"}
    assert mine["parameters"]["whitened_threshold"] == 0.3 and mine["thresholds"]["set_by_user"] == {"whitened_threshold": 0.3}
    assert mine["verification"]["candidates"] >= white["verification"]["candidates"]  # a lower cut verifies more
