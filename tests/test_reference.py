"""Reference runs (issue 19): a query set against an indexed reference work_dir.

The pictures are real photographs (scikit-learn's two sample images, cut into overlapping
tiles: tiles of one photo are look-alikes, which the tiers must not call copies); the query
holds planted copies of reference tiles (exact bytes and the edits of the sample shards), a
planted copy of one of its own tiles, and tiles the reference does not have.
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
from s3server import bucket, s3_server, scrub_env  # noqa: F401

import dedupdask as ddk
from dedupdask.collect import collect
from dedupdask.datasets import EDITS, edit_image, write_shard
from dedupdask.store import WorkDirError

EDIT_CYCLE = list(EDITS)  # exact, resize, jpeg, crop, flip, bright


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Reference shards (3 x 20 tiles), query shards (12 planted copies of reference tiles,
    20 tiles of its own, one planted copy of one of those), both extracted and the
    reference built (with its index); the truth by member name."""
    root = tmp_path_factory.mktemp("reference")
    tiles = photos.tiles()
    order = np.random.default_rng(0).permutation(len(tiles))
    ref_ids, new_ids = order[:60], order[60:80]
    (root / "ref").mkdir()
    (root / "query").mkdir()
    for s in range(3):
        ids = ref_ids[s * 20 : (s + 1) * 20]
        write_shard(str(root / "ref" / f"{s:05d}.tar"), [(f"r{i:04d}.jpg", jpg(tiles[i])) for i in ids])
    planted = {}
    members = []
    for j, i in enumerate(ref_ids[:12]):
        edit = EDIT_CYCLE[j % len(EDIT_CYCLE)]
        name = f"q{i:04d}_{edit}.jpg"
        members.append((name, jpg(tiles[i]) if edit == "exact" else edit_image(tiles[i], edit)))
        planted[name] = (f"r{i:04d}.jpg", edit)
    members += [(f"n{i:04d}.jpg", jpg(tiles[i])) for i in new_ids]
    members.append((f"n{new_ids[0]:04d}_copy.jpg", jpg(tiles[new_ids[0]])))  # a query-internal copy
    write_shard(str(root / "query" / "00000.tar"), members[:16])
    write_shard(str(root / "query" / "00001.tar"), members[16:])
    ref_wd = str(root / "refwork")
    ddk.run(str(root / "ref"), ref_wd, client="threads", progress=False)
    ddk.extract(str(root / "query"), str(root / "qextract"), client="threads", progress=False)
    return {"root": root, "ref": ref_wd, "query": str(root / "query"), "planted": planted}


def _query_wd(sets: dict, name: str) -> str:
    """A fresh query work_dir holding the extracted query archives (no results)."""
    out = sets["root"] / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(sets["root"] / "qextract", out)
    return str(out)


def _listing(path: str) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in Path(path).rglob("*") if p.is_file()}


def _names(sim: pd.DataFrame) -> set[tuple[str, str, str]]:
    return set(zip(sim["member_from"].astype(str), sim["member_to"].astype(str), sim["kind"].astype(str), strict=True))


def test_query_finds_its_copies_in_the_reference_with_the_tiers_of_a_normal_run(sets: dict) -> None:
    before = _listing(sets["ref"])
    qwd = _query_wd(sets, "q1")
    res = ddk.run(None, qwd, run_mode=2, reference=sets["ref"], client="threads", progress=False,
                  query_duplicates=True)  # fmt: skip
    assert isinstance(res, ddk.ReferenceResult)
    sim = res.similarity.compute()
    # every planted copy of a reference tile that a normal run of both sets accepts (below), each
    # with both sides' names; nothing else (tiles of one photo are look-alikes, not copies)
    found = {(m, t): k for m, t, k in _names(sim)}
    assert {m for m, _ in found} <= set(sets["planted"])
    assert len(found) >= 10
    for (m, t), kind in found.items():
        assert sets["planted"][m][0] == t
        assert kind == ("exact" if sets["planted"][m][1] == "exact" else kind)
    assert {k for k in found.values()} >= {"exact", "copy"}
    assert (sim["archive_from"].str.endswith(".tar")).all() and sim["key_to"].notna().all()
    assert sim["filename_to"].str.contains("/ref/").all() and sim["filename_from"].str.contains("/query/").all()
    # similarity.csv as fastdup's test_dir runs write it: from = query index, to = reference index
    csv = pd.read_csv(os.path.join(qwd, "similarity.csv"))
    assert list(csv.columns) == ["from", "to", "distance"] and len(csv) == len(sim)
    assert csv["distance"].is_monotonic_decreasing
    qidx = pd.read_csv(os.path.join(qwd, "atrain_features.dat.csv")).set_index("index")["filename"]
    ridx = pd.read_csv(os.path.join(sets["ref"], "atrain_features.dat.csv")).set_index("index")["filename"]
    for row in csv.itertuples():
        q, r = qidx[row._1], ridx[row.to]
        assert (q.rsplit("/", 1)[1], r.rsplit("/", 1)[1]) in found
    # the contamination summary: one row per query archive
    cont = res.contamination
    assert cont["name"].tolist() == ["00000.tar", "00001.tar"]
    assert cont["contaminated"].sum() == len({m for m, _ in found}) == res.summary()["contaminated_images"]
    assert cont["images"].tolist() == [16, 17]
    assert (cont[["exact", "copy", "near"]].sum(axis=1) == cont["contaminated"]).all()
    assert os.path.exists(os.path.join(qwd, "contamination.csv"))
    # the query's own duplicates, in their own file
    qs = res.query_similarity.compute()
    assert len(qs) == 1 and set(qs[["member_from", "member_to"]].iloc[0]) == {
        f"n{int(m[1:5]):04d}.jpg" for m in qs["member_from"]} | {f"n{int(m[1:5]):04d}_copy.jpg" for m in qs["member_from"]}  # fmt: skip
    assert len(pd.read_csv(os.path.join(qwd, "query_similarity.csv"))) == 2  # both directions
    # the reference was only read
    assert _listing(sets["ref"]) == before
    # and it reads back
    again = ddk.load(qwd)
    assert isinstance(again, ddk.ReferenceResult) and len(again.similarity.compute()) == len(sim)


def test_cross_pairs_are_those_a_full_run_of_both_sets_finds(sets: dict, tmp_path: Path) -> None:
    """The same tiers and verification as a normal run: a build of both sets together gives
    the same cross-set pairs (by file name, global indices differ) and kinds."""
    qwd = _query_wd(sets, "q2")
    res = ddk.run(None, qwd, run_mode=2, reference=sets["ref"], client="threads", progress=False)
    both = tmp_path / "both"
    both.mkdir()
    for src in (sets["root"] / "ref", sets["root"] / "query"):
        for p in src.iterdir():
            os.symlink(p, both / f"{src.name}-{p.name}")
    full = ddk.run(str(both), str(tmp_path / "bothwork"), client="threads", progress=False).similarity.compute()
    cross = full[full["archive_from"].str.contains("/ref-") != full["archive_to"].str.contains("/ref-")]

    def key(m1: str, m2: str, kind: str) -> tuple[str, str, str]:
        return (m1, m2, kind) if m1.startswith(("q", "n")) else (m2, m1, kind)

    want = {key(a, b, k) for a, b, k in _names(cross)}
    assert want and _names(res.similarity.compute()) == want


@pytest.mark.slow  # ~10 s: a shell cluster
def test_query_on_a_real_cluster_gives_the_same_tables(sets: dict, tmp_path: Path) -> None:
    from cluster import shell_cluster

    local = ddk.run(None, _query_wd(sets, "q3"), run_mode=2, reference=sets["ref"], client="threads",
                    progress=False)  # fmt: skip
    qwd = _query_wd(sets, "q4")
    with shell_cluster(tmp_path / "cluster", n_workers=2) as (address, _):
        res = ddk.run(None, qwd, run_mode=2, reference=sets["ref"], client=address, progress=False,
                      max_client_memory="1MB")  # fmt: skip
    cols = ["from", "to", "kind", "member_from", "member_to"]
    a = local.similarity.compute()[cols].sort_values(["from", "to"]).reset_index(drop=True)
    b = res.similarity.compute()[cols].sort_values(["from", "to"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    pd.testing.assert_frame_equal(local.contamination, res.contamination)


def test_fastdup_test_dir_form_and_the_cli(sets: dict, tmp_path: Path) -> None:
    # fastdup's form: input_dir/work_dir are the reference, test_dir the query
    wd = tmp_path / "train"
    shutil.copytree(sets["ref"], wd)
    res = ddk.run(str(sets["root"] / "ref"), str(wd), test_dir=sets["query"], client="threads", progress=False)
    assert isinstance(res, ddk.ReferenceResult) and res.work_dir.endswith("train/test")
    assert len(pd.read_csv(wd / "test" / "similarity.csv")) == len(res.similarity.compute()) > 0
    # the CLI: --reference on run and build, and the index command
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "dedupdask", "build", _query_wd(sets, "q5"), "--reference",
                          sets["ref"], "--client", "threads", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "contaminated images" in out.stdout and "similarity.csv" in out.stdout
    out = subprocess.run([sys.executable, "-m", "dedupdask", "index", str(wd), "--client", "threads"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "buckets, nprobe" in out.stdout


def _cli_error(args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "dedupdask", *args, "--client", "threads", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_a_reference_that_cannot_answer_is_refused_in_one_line(sets: dict, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    shutil.copytree(sets["ref"], ref)
    qwd = _query_wd(sets, "q6")
    # an index of another version
    meta = json.loads((ref / "index" / "index.json").read_text())
    (ref / "index" / "index.json").write_text(json.dumps({**meta, "version": 99}))
    assert "index of version 99" in _cli_error(["build", qwd, "--reference", str(ref)])
    # an index of other archives than the run's (the work_dir was rebuilt without it)
    (ref / "index" / "index.json").write_text(json.dumps({**meta, "fingerprint": "0" * 64}))
    assert "index of other archives" in _cli_error(["build", qwd, "--reference", str(ref)])
    # no index
    shutil.rmtree(ref / "index")
    msg = _cli_error(["build", qwd, "--reference", str(ref)])
    assert "has no index" in msg and "dedupdask index" in msg
    # no finished run_mode=2
    shutil.rmtree(ref / "results")
    assert "not a finished reference" in _cli_error(["build", qwd, "--reference", str(ref)])
    # another model: the query extracted with the DCT model
    other = tmp_path / "dctquery"
    ddk.extract(sets["query"], str(other), model_path="dct", client="threads", progress=False)
    msg = _cli_error(["build", str(other), "--reference", sets["ref"]])
    assert "extracted with model 'dct'" in msg and "'effnet-lite0'" in msg
    # the same folder on both sides
    assert "same folder" in _cli_error(["build", sets["ref"], "--reference", sets["ref"]])
    with pytest.raises(WorkDirError):
        ddk.run(None, qwd, run_mode=2, reference=str(ref), client="threads", progress=False)


def test_index_buckets_hold_every_vector_once_and_probes_find_close_pairs(tmp_path: Path) -> None:
    """A work_dir of several buckets (bucket_rows small): each row in exactly one bucket with its
    own vector, and a query row close to a reference row probes that row's bucket."""
    from dedupdask.datasets import make_sample_shards
    from dedupdask.vector_index import build_index, open_index, probe_need

    shards = make_sample_shards(str(tmp_path / "s"), n_shards=2, images_per_shard=40, seed=3)
    wd = str(tmp_path / "w")
    ddk.extract(shards.root, wd, model_path="dct", client="threads", progress=False)
    col = collect(wd)
    meta = build_index(col, bucket_rows=10)
    idx = open_index(col.work_dir)
    assert meta["centroids"] == idx.centroids.shape[0] > 4 and idx.nprobe >= 1
    assert_every_row_once_in_its_best_bucket(col, idx)
    vecs = col.vector_rows()
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    need = probe_need(vecs.astype(np.float32), idx.centroids)
    assert (need >= 1).all() and np.quantile(need, 0.995) <= max(idx.nprobe, 1) + 1e-9


@pytest.mark.slow
def test_a_reference_on_s3_is_read_with_its_own_storage_options(sets: dict, s3_server, bucket, monkeypatch) -> None:  # noqa: F811
    """Reference shards and work_dir on S3, the query local: only ``reference_storage_options``
    reach the server (no AWS variables), for the index, the Parquet rows and the pixels."""
    scrub_env(monkeypatch)
    so = s3_server.storage_options()
    fs = s3_server.filesystem()
    for p in sorted((sets["root"] / "ref").iterdir()):
        fs.put_file(str(p), f"{bucket}/shards/{p.name}")
    ref = f"s3://{bucket}/work"
    ddk.run(f"s3://{bucket}/shards", ref, storage_options=so, client="threads", progress=False)
    res = ddk.run(None, _query_wd(sets, "q7"), run_mode=2, reference=ref, reference_storage_options=so,
                  client="threads", progress=False)  # fmt: skip
    local = ddk.run(None, _query_wd(sets, "q8"), run_mode=2, reference=sets["ref"], client="threads", progress=False)
    assert res.run["verification"]["pairs"] > 0 and res.run["verification"]["errors"] == 0
    assert _names(res.similarity.compute()) == _names(local.similarity.compute())
    assert res.similarity.compute()["archive_to"].str.startswith(f"s3://{bucket}/shards/").all()
    g = res.gallery(str(sets["root"] / "s3gallery"), reference_storage_options=so, num_images=4)
    assert g.n_thumbnails == 2 * g.n_rows > 0 and g.n_missing == 0


def test_the_index_command_covers_the_built_run_not_archives_extracted_since(sets: dict, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    shutil.copytree(sets["ref"], ref)
    ddk.extract(sets["query"], str(ref), client="threads", progress=False)  # two archives more, not built
    meta = ddk.index(str(ref), client="threads")
    assert meta["archives"] == 3 and meta["n"] == 60
    res = ddk.run(None, _query_wd(sets, "q9"), run_mode=2, reference=str(ref), client="threads", progress=False)
    assert len(res.similarity.compute()) > 0
    shutil.rmtree(ref / "results")
    with pytest.raises(FileNotFoundError, match="build it first"):
        ddk.index(str(ref), client="threads")
