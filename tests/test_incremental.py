"""Incremental builds (issue 19): a build after new archives were extracted reuses the last
build's kNN graphs and searches only new-vs-all, and gives what a full rebuild gives.

The pictures are real photographs (tiles of scikit-learn's two sample images: tiles of one
photo are look-alikes). The first build has shards 00000, 00002, 00004; then 00001 (which
sorts between the old ones, so every later global index moves) and 00005 arrive. 00001 holds an
exact copy of a tile of 00002 -- the group's representative moves to the new, smaller index --
and edited copies of old tiles; 00005 copies of tiles of 00001 and 00004.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import photos
import pytest
from indexcheck import assert_every_row_once_in_its_best_bucket
from photos import jpg

import dedupdask as ddk
import dedupdask.knn_incremental as ki
from dedupdask.collect import collect
from dedupdask.datasets import edit_image, write_shard
from dedupdask.vector_index import build_index, open_index


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A work_dir built once, then grown by two archives (extracted, not built), and a copy of it."""
    root = tmp_path_factory.mktemp("incremental")
    tiles = photos.tiles()
    o = np.random.default_rng(0).permutation(len(tiles))
    src = root / "in"
    src.mkdir()

    def shard(s: int, ids: np.ndarray, extra: list[tuple[str, bytes]] = ()) -> None:  # type: ignore[assignment]
        members = [(f"t{i:04d}_{s}.jpg", jpg(tiles[i])) for i in ids] + list(extra)
        write_shard(str(src / f"{s:05d}.tar"), members)

    shard(0, o[0:20])
    shard(2, o[20:40], [(f"e{o[0]:04d}_resize.jpg", edit_image(tiles[o[0]], "resize"))])
    shard(4, o[40:60])
    wd = root / "wd"
    first = ddk.run(str(src), str(wd), client="threads", progress=False)
    build_index(collect(str(wd)), bucket_rows=8)  # an index of several buckets, to grow
    shard(1, o[60:75], [
        (f"x{o[25]:04d}_exact.jpg", jpg(tiles[o[25]])),  # the group's representative moves here
        (f"x{o[30]:04d}_crop.jpg", edit_image(tiles[o[30]], "crop")),
        (f"x{o[5]:04d}_flip.jpg", edit_image(tiles[o[5]], "flip")),
    ])  # fmt: skip
    shard(5, o[75:90], [
        (f"y{o[62]:04d}_exact.jpg", jpg(tiles[o[62]])),
        (f"y{o[45]:04d}_jpeg.jpg", edit_image(tiles[o[45]], "jpeg")),
    ])  # fmt: skip
    ddk.extract(str(src), str(wd), client="threads", progress=False)
    shutil.copytree(wd, root / "extracted")  # the grown work_dir before its second build
    full = _copy(root, "full")
    res = ddk.run(None, full, run_mode=2, client="threads", progress=False, incremental=False)
    return {"root": root, "src": src, "first": first.run, "full": res, "full_wd": full}


def _copy(root: Path, name: str) -> str:
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root / "extracted", out)
    return str(out)


def _pairs(res: ddk.DedupResult) -> dict[tuple[str, str], tuple[str, float]]:
    sim = res.similarity.compute()
    name = sim["filename_from"].str.rsplit("/", n=1).str[-1], sim["filename_to"].str.rsplit("/", n=1).str[-1]
    return {(a, b): (k, float(s)) for a, b, k, s in zip(*name, sim["kind"], sim["similarity"], strict=True)}


def _components(res: ddk.DedupResult) -> set[frozenset[str]]:
    comp = res.components.compute().merge(res.stats.compute()[["index", "filename"]], on="index")
    return {frozenset(g["filename"].str.rsplit("/", n=1).str[-1]) for _, g in comp.groupby("component_id")}


def _outliers(res: ddk.DedupResult) -> set[tuple[str, str]]:
    out = res.outliers.compute()
    a, b = (out[c].str.rsplit("/", n=1).str[-1] for c in ("filename", "filename_nearest"))
    return set(zip(a, b, strict=True))


def _graph(wd: str, which: str) -> pd.DataFrame:
    meta = json.loads((Path(wd) / "graphs" / f"{which}.json").read_text())
    parts = [pd.read_parquet(Path(wd) / p) for p, _, _ in meta["parts"]]
    return pd.concat(parts).sort_values(["from", "rank"]).reset_index(drop=True)


def _same_as_full(res: ddk.DedupResult, grown: dict) -> None:
    full = grown["full"]
    got, want = _pairs(res), _pairs(full)
    assert set(got) == set(want) and len(want) >= 5
    for key, (kind, s) in want.items():
        assert got[key][0] == kind and got[key][1] == pytest.approx(s, abs=1e-5)
    assert _components(res) == _components(full)
    assert _outliers(res) == _outliers(full)
    for which in ("dat", "dct"):  # the kept graphs are equal, neighbour for neighbour
        a, b = _graph(res.work_dir, which), _graph(grown["full_wd"], which)
        pd.testing.assert_frame_equal(a[["from", "to", "rank"]], b[["from", "to", "rank"]])
        np.testing.assert_allclose(a["similarity"], b["similarity"], atol=1e-5)


def _reused_scores(res: ddk.DedupResult, grown: dict) -> None:
    """Pixel verification ran only for the pairs the last build did not score."""
    got, full = res.run["verification"], grown["full"].run["verification"]
    assert res.run["graphs"]["verified"]["reused"] is True and full["reused"] == 0
    assert got["reused"] > 0 and got["candidates"] > 0
    assert got["reused"] + got["candidates"] == full["candidates"]


def test_first_build_keeps_its_graphs(grown: dict) -> None:
    run = grown["first"]
    assert run["build"] == 1 and set(run["archive_builds"].values()) == {1}
    for which in ("dat", "dct"):
        assert run["graphs"][which]["reused"] is False
        assert run["graphs"][which]["reason"] == "nothing kept (the first build)"
        assert run["graphs"][which]["kept"]["build"] == 1


def test_incremental_build_equals_a_full_rebuild(grown: dict) -> None:
    wd = _copy(grown["root"], "inc")
    res = ddk.run(None, wd, run_mode=2, client="threads", progress=False)
    run = res.run
    assert run["parameters"]["knn_method"] == "incremental" and run["knn"]["new_archives"] == 2
    for which in ("dat", "dct"):
        assert run["graphs"][which]["reused"] is True and run["graphs"][which]["previous_build"] == 1
    _same_as_full(res, grown)
    _reused_scores(res, grown)
    # the moved representative: the new exact copy in 00001 and its older twin in 00002
    pairs = _pairs(res)
    assert any(a.startswith("x") and a.endswith("_exact.jpg") and k == "exact" for (a, b), (k, _) in pairs.items())
    # each pair says which build found it: pairs of two images of the first build are build 1
    sim = res.similarity.compute()
    first = sim["archive_from"].str.contains("/0000[024].tar") & sim["archive_to"].str.contains("/0000[024].tar")
    assert (sim.loc[first, "build"] == 1).all() and (sim.loc[~first, "build"] == 2).all() and (~first).sum() >= 4
    assert run["build"] == 2 and run["archive_builds"]["00001.tar"] == 2 and run["archive_builds"]["00002.tar"] == 1
    # the previous build's graph files are gone; the new ones are named in graphs/<which>.json
    assert sorted(p.name for p in (Path(wd) / "graphs" / "dat").iterdir()) == ["2"]
    # the index grew by a segment: the old rows moved to their new indices (00001 sorts between),
    # the new rows went to their best buckets, every row once with its own vector
    col = collect(wd)
    idx = open_index(col.work_dir, archives=col.archives)
    assert idx.meta["update"]["appended"] is True and idx.meta["update"]["moved_rows"] == 61
    assert idx.meta["segments"] == 2 and idx.centroids.shape[0] > 4
    assert_every_row_once_in_its_best_bucket(col, idx)
    # and a reference run reads the grown index: each image of a new shard, queried, finds itself
    q = ddk.run(str(grown["src"] / "00001.tar"), str(Path(wd).parent / "query-inc"), reference=wd,
                client="threads", progress=False).similarity.compute()  # fmt: skip
    same = q[q["kind"] == "exact"]
    assert (same["member_from"] == same["member_to"]).sum() == 18


@pytest.mark.slow  # ~40 s: a shell cluster (the default run stays near ten minutes)
def test_incremental_on_a_real_cluster_in_blocks_and_chunks(grown: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cluster import shell_cluster

    monkeypatch.setattr(ki, "NEW_CHUNK_ROWS", 7)  # each new archive a chunk of its own (planned here)
    wd = _copy(grown["root"], "inc-cluster")
    with shell_cluster(tmp_path / "cluster", n_workers=2) as (address, _):
        res = ddk.run(None, wd, run_mode=2, client=address, progress=False, max_client_memory=1000,
                      images_per_partition=20)  # fmt: skip
        res.similarity.compute()
    assert res.run["analysed_on"] == "workers"
    assert res.run["knn"]["blocks"] == 5 and res.run["knn"]["chunks"] == 2
    _same_as_full(res, grown)
    _reused_scores(res, grown)


@pytest.mark.slow  # ~15 s: the CLI in a subprocess, a full rebuild
def test_full_flag_and_a_changed_archive_search_everything(grown: dict) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    wd = _copy(grown["root"], "cli")
    out = subprocess.run([sys.executable, "-m", "dedupdask", "build", wd, "--full", "--client", "threads",
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = json.loads((Path(wd) / "results" / "run.json").read_text())
    assert run["parameters"]["knn_method"] != "incremental"
    assert run["graphs"]["dat"]["reason"] == "a full rebuild was asked (--full)"
    _same_as_full(ddk.load(wd), grown)
    # an archive extracted again with other contents is new again: its edges are not reused
    wd = _copy(grown["root"], "changed")
    shard = grown["src"] / "00004.tar"
    keep = shard.read_bytes()
    try:
        tiles = photos.tiles()
        write_shard(str(shard), [(f"z{i:03d}.jpg", jpg(tiles[i])) for i in range(100, 110)])
        for f in Path(wd).glob("00004.tar*"):
            f.unlink()
        ddk.extract(str(grown["src"]), wd, client="threads", progress=False)
        res = ddk.run(None, wd, run_mode=2, client="threads", progress=False)
    finally:
        shard.write_bytes(keep)
    assert res.run["graphs"]["dat"]["reused"] is False
    assert res.run["graphs"]["dat"]["reason"] == "archive 00004.tar changed since build 1"
    assert res.run["archive_builds"]["00004.tar"] == 2 and res.run["archive_builds"]["00000.tar"] == 1
    # what was kept but is gone costs a full search, not an error
    wd = _copy(grown["root"], "gone")
    shutil.rmtree(Path(wd) / "graphs" / "dat")
    res = ddk.run(None, wd, run_mode=2, client="threads", progress=False)
    assert res.run["graphs"]["dat"] == {"reused": False, "reason": "the files kept by build 1 are missing",
                                        "kept": {"build": 2, "edges": len(_graph(grown["full_wd"], "dat"))}}
    assert res.run["graphs"]["dct"]["reused"] is True
    _same_as_full(res, grown)


def test_past_the_exact_budget_new_rows_probe_the_index(grown: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large work_dir: the new rows probe the last build's index (several buckets here) instead
    of an exact search against all; the DCT graph, which has no index, is searched in full."""
    monkeypatch.setattr(ki, "DELTA_EXACT_MAX_WORK", 0)
    monkeypatch.setattr(ki, "INDEX_MAX_PROBED_SHARE", 1.0)  # 8 buckets here, a few probed
    wd = _copy(grown["root"], "inc-index")
    res = ddk.run(None, wd, run_mode=2, client="threads", progress=False)
    run = res.run
    assert run["knn"]["search"] == "index" and run["knn"]["buckets_touched"] >= 2
    assert run["graphs"]["dct"]["reused"] is False and "no index" in run["graphs"]["dct"]["reason"]
    got, want = _pairs(res), _pairs(grown["full"])
    assert {key: kind for key, (kind, _) in got.items()} == {key: kind for key, (kind, _) in want.items()}
    a, b = _graph(wd, "dat"), _graph(grown["full_wd"], "dat")
    shared = len(a.merge(b, on=["from", "to"]))
    assert len(a) == len(b) and shared >= 0.9 * len(b)
    print(f"index path: {shared} of {len(b)} edges of the full graph")
    # an index that makes each new row probe most buckets is not used: a full search, and why
    monkeypatch.setattr(ki, "INDEX_MAX_PROBED_SHARE", 0.01)
    res = ddk.run(None, _copy(grown["root"], "inc-index2"), run_mode=2, client="threads", progress=False)
    assert res.run["graphs"]["dat"]["reused"] is False and "not selective" in res.run["graphs"]["dat"]["reason"]
    _same_as_full(res, grown)


@pytest.mark.parametrize("seed", range(6))
def test_top_grouped_is_top_k_ties_included(seed: int) -> None:
    """The grouped top-k of the new-vs-all search picks what knn.top_k picks: the same columns
    in the same order, ties to the lower column (coarse integer values make many ties), -inf last."""
    from dedupdask.knn import top_k

    rng = np.random.default_rng(seed)
    rows, cols, k = int(rng.integers(1, 40)), int(rng.integers(1000, 3000)), int(rng.integers(1, 12))
    s = rng.integers(0, 20, (rows, cols)).astype(np.float32)
    s[rng.random(s.shape) < 0.3] = -np.inf
    want = top_k(s, k)
    got = ki.top_grouped(s, k, group=int(rng.integers(2, 8)))  # groups, not the small-row path
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0][np.isfinite(want[1])], want[0][np.isfinite(want[1])])


def test_whitened_graph_grows_in_the_whitening_it_was_searched_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that whitens keeps its whitening and whitened graph; the next build reuses both
    and searches only the new rows in the same space: the same graph and pairs as searching
    everything in that whitening."""
    from dedupdask import whitening

    monkeypatch.setattr(whitening, "MIN_IMAGES", 10)  # a few dozen images: whitened to 8 axes
    monkeypatch.setattr(whitening, "DIMS", 8)
    tiles = photos.tiles()
    o = np.random.default_rng(1).permutation(len(tiles))
    src, wd = tmp_path / "in", tmp_path / "wd"
    src.mkdir()
    write_shard(str(src / "00000.tar"), [(f"a{i:04d}.jpg", jpg(tiles[i])) for i in o[:30]])
    write_shard(str(src / "00002.tar"), [(f"b{i:04d}.jpg", jpg(tiles[i])) for i in o[30:50]]
                + [(f"c{o[3]:04d}_crop.jpg", edit_image(tiles[o[3]], "crop"))])  # fmt: skip
    first = ddk.run(str(src), str(wd), client="threads", progress=False).run
    assert first["whitening"]["reused"] is False and first["graphs"]["white"]["kept"]["build"] == 1
    assert first["graphs"]["whitening"]["kept"]["dims"] == 8
    write_shard(str(src / "00001.tar"), [(f"d{i:04d}.jpg", jpg(tiles[i])) for i in o[50:70]]
                + [(f"e{o[40]:04d}_flip.jpg", edit_image(tiles[o[40]], "flip")),
                   (f"e{o[10]:04d}_resize.jpg", edit_image(tiles[o[10]], "resize"))])  # fmt: skip
    ddk.extract(str(src), str(wd), client="threads", progress=False)
    full = tmp_path / "full"
    shutil.copytree(wd, full)
    (full / "graphs" / "white.json").unlink()  # the kept whitening, but the whitened graph searched in full
    inc = ddk.run(None, str(wd), run_mode=2, client="threads", progress=False)
    ref = ddk.run(None, str(full), run_mode=2, client="threads", progress=False)
    assert inc.run["whitening"]["reused"] is True and ref.run["whitening"]["reused"] is True
    assert inc.run["graphs"]["white"]["reused"] is True and inc.run["whitening"]["knn"]["method"] == "incremental"
    assert ref.run["graphs"]["white"]["reused"] is False
    a, b = _graph(str(wd), "white"), _graph(str(full), "white")
    pd.testing.assert_frame_equal(a[["from", "to", "rank"]], b[["from", "to", "rank"]])
    np.testing.assert_allclose(a["similarity"], b["similarity"], atol=1e-5)
    got, want = _pairs(inc), _pairs(ref)
    assert set(got) == set(want) and len(want) >= 3
    for key, (kind, sim) in want.items():
        assert got[key][0] == kind and got[key][1] == pytest.approx(sim, abs=1e-5)
    # a full rebuild fits the whitening anew
    again = ddk.run(None, str(full), run_mode=2, client="threads", progress=False, incremental=False)
    assert again.run["whitening"]["reused"] is False
