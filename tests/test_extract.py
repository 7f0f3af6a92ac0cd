"""run_mode=1 end to end: formats, accounting, duplicates, offsets, resume, schedulers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import HOSTILE_MEMBERS

import dedupdask as ddk
from dedupdask.store import WorkDir
from dedupdask.store import tmp_path as tmp_path_of


def extract(inp, wd, **kw):
    kw.setdefault("model_path", "dct")
    kw.setdefault("client", "sync")
    kw.setdefault("progress", False)
    return ddk.extract(inp, str(wd), **kw)


def snapshot(work_dir) -> dict[str, bytes]:
    """Every per-archive file's bytes; done.json without its timings."""
    out = {}
    for name in sorted(os.listdir(work_dir)):
        path = os.path.join(work_dir, name)
        if not os.path.isfile(path):
            continue
        data = open(path, "rb").read()
        if name.endswith("done.json"):
            d = json.loads(data)
            d.pop("timings")
            data = json.dumps(d, sort_keys=True).encode()
        out[name] = data
    return out


@pytest.mark.parametrize("archive", ["a.tar", "b.TGZ", "c.zip"])
def test_every_member_accounted(hostile_dir, tmp_path, archive):
    report = extract(str(hostile_dir / archive), tmp_path)
    assert report["status"].tolist() == ["done"]
    wd = WorkDir(str(tmp_path))
    files = wd.read_files(archive)
    skipped = pd.read_csv(wd.file(archive, "skipped"))
    done = wd.read_done(archive)
    got = {m: c for m, c in zip(files["member"], files["error_code"], strict=True)}
    got.update({m.rstrip("/"): f"skipped:{r}" for m, r in zip(skipped["member"], skipped["reason"], strict=True)})
    n_sidecars = 0
    for name, _, expected in HOSTILE_MEMBERS:
        if expected == "sidecar":
            n_sidecars += 1
            continue
        assert got.pop(name.rstrip("/")) == ("VALID" if expected == "valid" else expected), name
    assert got == {}, "members with an unexpected outcome"
    c = done["counts"]
    assert c["members"] == len(HOSTILE_MEMBERS) == c["images"] + c["sidecars"] + c["skipped"]
    assert c["sidecars"] == n_sidecars
    # captions and json joined by key
    row = files.set_index("member").loc["s0001.jpg"]
    assert row["caption"] == "a caption" and json.loads(row["json"])["url"].endswith("1.jpg")
    assert files.set_index("member").loc["s0002.jpg", "caption"] == "broken image caption"
    # .dat / .dat.csv / .bad.csv agree with the parquet
    valid = files[files["error_code"] == "VALID"]
    names, vecs = ddk.load_binary_feature(wd.file(archive, "dat"), d=done["d"])
    assert names == valid["filename"].tolist() == [f"{hostile_dir / archive}/{m}" for m in valid["member"]]
    assert vecs.shape == (len(valid), done["d"]) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert valid["index"].tolist() == list(range(len(valid)))
    bad = pd.read_csv(wd.file(archive, "bad"))
    assert list(bad.columns) == ["index", "filename", "error_code", "filesize"]
    assert sorted(bad["error_code"]) == sorted(files.loc[files["error_code"] != "VALID", "error_code"])
    # the exact copy: same md5, same vector
    md5 = files.set_index("member")["md5"]
    assert md5["s0001.jpg"] == md5["s0005.jpg"]
    i1, i5 = (int(files.set_index("member").loc[m, "index"]) for m in ("s0001.jpg", "s0005.jpg"))
    assert np.array_equal(vecs[i1], vecs[i5])
    assert done["model_id"] == "dct" and len(done["model_sha256"]) == 64


def test_planted_duplicates_are_closest(sample_shards, tmp_path):
    extract(sample_shards.root, tmp_path)
    names, vecs = [], []
    for shard in sample_shards.shards:
        n, v = ddk.load_binary_feature(str(tmp_path / (os.path.basename(shard) + "features.dat")), d=63)
        names += n
        vecs.append(v)
    vecs = np.concatenate(vecs)
    pos = {n: i for i, n in enumerate(names)}
    sims = vecs @ vecs.T
    for a, b, edit in sample_shards.truth.itertuples(index=False):
        s = sims[pos[a], pos[b]]
        if edit == "exact":
            assert s == pytest.approx(1.0, abs=1e-6)
        elif edit in ("resize", "jpeg", "flip"):  # what the DCT descriptor is made for
            row = np.delete(sims[pos[a]], [pos[a], pos[b]])
            assert s > 0.98 and s > row.max(), (edit, s, row.max())


def test_offsets_into_one_work_dir_equal_one_job(sample_shards, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    extract(sample_shards.root, whole)
    r1 = extract(sample_shards.root, parts, min_offset=0, max_offset=1)
    r2 = extract(sample_shards.root, parts, min_offset=1, max_offset=0)
    assert r1["name"].tolist() == ["00000.tar"] and r2["name"].tolist() == ["00001.tgz", "00002.zip"]
    assert snapshot(whole) == snapshot(parts)
    r3 = extract(sample_shards.root, parts)  # everything done: nothing recomputed
    assert set(r3["status"]) == {"already_done"}


CRASH_SCRIPT = """
import os, sys
import dedupdask as ddk
from dedupdask import partition, store
where, after = sys.argv[3], int(sys.argv[4])
calls = [0]
if where == "decode":
    real = partition.decode_image
    def decode_image(*a, **k):
        calls[0] += 1
        if calls[0] > after:
            os._exit(17)  # the process dies in the middle of an archive
        return real(*a, **k)
    partition.decode_image = decode_image
else:
    real = store.WorkDir.write_bytes
    def write_bytes(self, path, data):
        calls[0] += 1
        if calls[0] > after:
            with open(store.tmp_path(path), "wb") as f:
                f.write(data[: len(data) // 2])  # a half-written temporary file, then death
            os._exit(17)
        return real(self, path, data)
    store.WorkDir.write_bytes = write_bytes
ddk.extract(sys.argv[1], sys.argv[2], model_path="dct", client="sync", progress=False)
"""


@pytest.mark.parametrize("where,after", [("decode", 40), ("write", 8)])
def test_crash_mid_archive_then_resume(sample_shards, tmp_path, where, after):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    extract(sample_shards.root, clean)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, sample_shards.root, str(crashed), where, str(after)],
        timeout=300,
    )
    assert proc.returncode == 17
    done_before = WorkDir(str(crashed)).done_names()
    assert len(done_before) == 1, done_before  # one archive done, the next one interrupted
    report = extract(sample_shards.root, crashed)
    status = report.set_index("name")["status"].to_dict()
    assert status == {n: ("already_done" if n in done_before else "done") for n in status}
    assert len(status) == 3
    assert snapshot(clean) == snapshot(crashed)
    assert not [n for n in os.listdir(crashed) if ".tmp-" in n]


def test_sync_and_local_cluster_write_same_bytes(sample_shards, tmp_path):
    from distributed import Client, LocalCluster

    extract(sample_shards.root, tmp_path / "sync")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, Client(cl) as c:
        report = extract(sample_shards.root, tmp_path / "cluster", client=c)
    assert (report["status"] == "done").all()
    assert snapshot(tmp_path / "sync") == snapshot(tmp_path / "cluster")


def test_keep_images_stays_inside_work_dir(hostile_dir, tmp_path):
    wd = tmp_path / "wd"
    extract(str(hostile_dir / "a.tar"), wd, turi_param="delete_tar=0,delete_img=0")
    kept = sorted(str(p.relative_to(wd)) for p in wd.rglob("*") if p.is_file() and "tmp" in p.parts)
    assert "tmp/archives/a.tar" in kept  # the archive copy
    assert "tmp/a.tar/evil.jpg" in kept and "tmp/a.tar/café/ñandú.jpg" in kept
    assert not (tmp_path / "evil.jpg").exists() and not (wd / "evil.jpg").exists()
    assert any(k.endswith("evil.jpg") for k in kept)
    assert all(os.path.realpath(wd / k).startswith(str(wd)) for k in kept)


def test_broken_archive_is_partial_and_others_finish(tmp_path, hostile_dir):
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(hostile_dir / "a.tar", src / "a.tar")
    (src / "garbage.tgz").write_bytes(b"\x1f\x8b\x08" + np.random.default_rng(0).bytes(500))
    # these bytes after a gzip header decode to a tar's end-of-archive blocks: an "empty tar"
    (src / "empty_garbage.tgz").write_bytes(b"\x1f\x8b\x08" + np.random.default_rng(687).bytes(500))
    data = (hostile_dir / "a.tar").read_bytes()
    (src / "truncated.tar").write_bytes(data[: len(data) * 2 // 3])
    report = extract(str(src), tmp_path / "wd")
    st = dict(zip(report["name"], report["status"], strict=True))
    assert st == {"a.tar": "done", "garbage.tgz": "partial", "empty_garbage.tgz": "partial", "truncated.tar": "partial"}
    assert len(report.failed) == 3
    trunc = WorkDir(str(tmp_path / "wd")).read_done("truncated.tar")
    c = trunc["counts"]
    assert trunc["archive_error"] and 0 < c["members"] == c["images"] + c["sidecars"] + c["skipped"]


def test_perceptual_descriptor_stored_without_second_decode(sample_shards, tmp_path):
    """Each archive also stores the DCT descriptor of every valid image, rows as in .dat."""
    extract(sample_shards.root, tmp_path / "effnet", model_path="effnet-lite0")
    extract(sample_shards.root, tmp_path / "dct", model_path="dct")
    for shard in sample_shards.shards:
        name = os.path.basename(shard)
        eff, dct = WorkDir(str(tmp_path / "effnet")), WorkDir(str(tmp_path / "dct"))
        done = eff.read_done(name)
        assert done["model_id"] == "effnet-lite0" and done["perceptual"]["model_id"] == "dct"
        n = done["counts"]["valid"]
        stored = eff.open_features(name, 63, which="dct")
        direct = dct.open_features(name, 63)
        assert stored.shape == direct.shape == (n, 63)
        # derived from the 160 px model input instead of a direct 64 px decode: nearly equal
        cos = np.sum(np.asarray(stored) * np.asarray(direct), axis=1)
        assert cos.min() > 0.99, cos.min()


@pytest.mark.parametrize("archive", ["a.tar", "b.TGZ", "c.zip"])
def test_member_offsets_point_at_the_bytes_of_uncompressed_tars(hostile_dir, tmp_path, archive):
    """member_offset lets run_mode=2 read an image back by byte range (plain tars only)."""
    import hashlib

    wd = tmp_path / "wd"
    extract(str(hostile_dir / archive), wd)
    files = WorkDir(str(wd)).read_files(archive)
    if archive != "a.tar":  # compressed or zipped: no file offsets
        assert files["member_offset"].isna().all()
        return
    data = (hostile_dir / archive).read_bytes()
    read = files[files["md5"].notna()]
    assert len(read) >= 5 and read["member_offset"].notna().all()
    for off, size, md5 in zip(read["member_offset"], read["file_size"], read["md5"], strict=True):
        assert hashlib.md5(data[int(off) : int(off) + int(size)]).hexdigest() == md5


def test_archive_task_clears_temporaries_a_killed_worker_left(sample_shards, tmp_path):
    """A worker killed mid-write leaves <file>.tmp-<owner>; the task that redoes the archive
    (Dask reruns it within the same job, after the job-start cleanup) removes them."""
    from dedupdask.config import RunConfig
    from dedupdask.partition import ArchiveTask, process_archive
    from dedupdask.sources import list_sources

    src = list_sources(sample_shards.root)[0]
    wd = tmp_path / "wd"
    wd.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    stale = Path(tmp_path_of(str(wd / f"{src.name}features.dat"), pid=killed.pid))
    stale.write_bytes(b"half a file")
    other = wd / "someone-else.dat.tmp-1"
    other.write_bytes(b"not ours")
    cfg = RunConfig(run_mode=1, model_path="dct", progress=False)
    assert process_archive(ArchiveTask(src, str(wd), cfg))["status"].iloc[0] == "done"
    assert not stale.exists() and other.exists()


def test_done_json_timings_are_measured(sample_shards, tmp_path):
    """done.json's write and total times are measured, not 0.0, and add up."""
    shard = sample_shards.shards[0]
    report = extract(shard, tmp_path)
    done = WorkDir(str(tmp_path)).read_done(os.path.basename(shard))
    t = done["timings"]
    assert set(t) == {"read", "decode", "embed", "write", "total"}
    assert t["write"] > 0 and t["total"] > 0 and t["decode"] > 0
    assert t["total"] >= t["read"] + t["decode"] + t["embed"] + t["write"]
    # the report's row also counts writing done.json itself
    row = report.iloc[0]
    assert row["t_write"] >= t["write"] and row["t_total"] >= t["total"]
