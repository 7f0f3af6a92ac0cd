"""Clean shards (#18 points 2 and 3): same names and formats, kept samples byte for byte in
order, counts that add up, resume, a rerun on the clean shards, S3, the CLI."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import zipfile

import pandas as pd
import pytest
from cleandata import NAMES, make_clean_shards
from s3server import bucket, s3_env, s3_server  # noqa: F401

import dedupdask as ddk
from dedupdask.archives import split_key
from dedupdask.cli import main


def read_members(path: str | bytes, fmt: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every regular member, in order."""
    raw = path if isinstance(path, bytes) else open(path, "rb").read()
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return [(i.filename, zf.read(i)) for i in zf.infolist() if not i.is_dir()]
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]


FMT = {"a": "tar", "b": "zip", "c": "tgz"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    shards = make_clean_shards(str(root / "shards"))
    wd = str(root / "wd")
    ddk.run(shards.root, wd, model_path="dct", client="sync", progress=False)
    return shards, wd, root


def check_output(shards, wd, out: str, keep="largest_resolution", **opts) -> pd.DataFrame:
    """The clean shards hold exactly the source members whose key was not removed, same
    order and bytes, same format; the stats add up."""
    res = ddk.load(wd)
    rm = res.removals(keep=keep, **opts).compute()
    report = ddk.write_clean_shards(wd, out, keep=keep, client="sync", **opts)
    assert (report["status"].isin(["done", "already_done"])).all()
    for shard, rel in NAMES.items():
        src = shards.members[shard]
        removed = set(rm.loc[rm["archive"] == shards.paths[shard], "key"])
        want = [(n, d) for n, d in src if split_key(n)[0] not in removed]
        path = os.path.join(out, rel)
        with open(path, "rb") as f:
            head = f.read(4)
        assert (head[:2] == b"\x1f\x8b") == (FMT[shard] == "tgz")
        assert (head == b"PK\x03\x04") == (FMT[shard] == "zip")
        assert read_members(path, FMT[shard]) == want
        if FMT[shard] == "tgz":
            assert gzip.open(path).read()  # a gzip stream holding a tar
        stats = json.load(open(os.path.join(out, "_dedupdask", rel.replace("/", "__") + ".stats.json")))
        s, m = stats["samples"], stats["members"]
        assert s["in"] == s["kept"] + s["removed"] and m["in"] == m["kept"] + m["removed"]
        assert m["in"] == len(src) and m["kept"] == len(want)
        assert s["removed"] == len(removed) == sum(stats["removed_by_reason"].values())
        assert stats["n_removals_not_found"] == 0
        assert stats["bytes"]["kept"] == sum(len(d) for _, d in want)
    total = json.load(open(os.path.join(out, "_dedupdask", "summary.json")))
    assert total["samples_in"] == total["samples_kept"] + total["samples_removed"]
    assert total["samples_removed"] == len(rm)
    return report


def test_clean_shards_hold_the_kept_samples(run, tmp_path):
    shards, wd, _ = run
    report = check_output(shards, wd, str(tmp_path / "out"))
    assert int(report["removed_duplicate"].sum()) == 4 and int(report["removed_invalid"].sum()) == 1
    # a00x.cls of a removed sample goes with it, that of a kept sample stays
    names_b = [n for n, _ in read_members(str(tmp_path / "out" / NAMES["b"]), "zip")]
    assert "b_copy0.cls" not in names_b and "b_copy0.txt" not in names_b
    assert "a005.cls" in [n for n, _ in read_members(str(tmp_path / "out" / NAMES["a"]), "tar")]


def test_issue_types_and_the_keep_rule_reach_the_shards(run, tmp_path):
    shards, wd, _ = run
    check_output(shards, wd, str(tmp_path / "out"), keep="longest_caption", remove_issues="low_information")
    names_a = [n for n, _ in read_members(str(tmp_path / "out" / NAMES["a"]), "tar")]
    assert "a_blank.jpg" not in names_a and "a000.jpg" not in names_a  # b_copy0 has the longer caption


def test_resume_skips_done_shards_and_redoes_changed_ones(run, tmp_path):
    shards, wd, _ = run
    out = str(tmp_path / "out")
    ddk.write_clean_shards(wd, out, client="sync")
    mtimes = {r: os.stat(os.path.join(out, r)).st_mtime_ns for r in NAMES.values()}
    again = ddk.write_clean_shards(wd, out, client="sync")
    assert (again["status"] == "already_done").all()
    assert mtimes == {r: os.stat(os.path.join(out, r)).st_mtime_ns for r in NAMES.values()}
    # a killed writer's temporary (a pid that does not exist) and no marker: redone, tidied
    os.remove(os.path.join(out, "_dedupdask", "00001.zip.stats.json"))
    stale = os.path.join(out, NAMES["b"]) + ".tmp-" + "0" * 12 + "-999999999-" + "ab" * 8
    open(stale, "wb").write(b"half a shard")
    third = ddk.write_clean_shards(wd, out, client="sync", keep="first")  # another rule: redo all
    assert (third["status"] == "done").all()
    check_output(shards, wd, out, keep="first")
    leftovers = [n for n in os.listdir(out) if ".tmp-" in n]
    assert leftovers == [os.path.basename(stale)]  # another machine's: too fresh to remove
    os.utime(stale, (1, 1))
    os.remove(os.path.join(out, "_dedupdask", "00001.zip.stats.json"))
    ddk.write_clean_shards(wd, out, client="sync", keep="first")
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_a_run_on_the_clean_shards_finds_no_duplicates(run, tmp_path):
    shards, wd, root = run
    res = ddk.load(wd)
    last = lambda row: row["index"]  # noqa: E731 - keeps a_multi, so a003 (its copy) goes
    rm = res.removals(keep=last).compute()
    out = str(tmp_path / "out")
    ddk.write_clean_shards(res, out, keep=last, client="sync")
    again = ddk.run(out, str(tmp_path / "wd2"), model_path="dct", client="sync", progress=False)
    assert len(again.similarity) == 0 and len(again.invalid) == 0
    keys = set(again.files.compute()["key"])
    assert not keys & set(rm["key"])
    assert len(again.components) == len(res.components) - int((rm["reason"] == "duplicate").sum())
    # the default rule keeps a003 and the two-image sample a_multi: their exact pair remains
    out2 = str(tmp_path / "out2")
    ddk.write_clean_shards(res, out2, client="sync")
    again2 = ddk.run(out2, str(tmp_path / "wd3"), model_path="dct", client="sync", progress=False)
    pairs = {(a.rsplit("/", 1)[1], b.rsplit("/", 1)[1]) for a, b in
             zip(again2.similarity.compute()["filename_from"], again2.similarity.compute()["filename_to"], strict=True)}
    assert pairs == {("a003.jpg", "a_multi.jpg")}


def test_cli_clean(run, tmp_path, capsys):
    shards, wd, _ = run
    out = str(tmp_path / "cli")
    assert main(["clean", wd, out, "--keep", "first", "--remove-issues", "low_information", "--client", "sync"]) == 0
    text = capsys.readouterr().out
    assert "clean shards: 3 archives (done 3)" in text and "low_information 1" in text
    names_a = [n for n, _ in read_members(os.path.join(out, NAMES["a"]), "tar")]
    assert "a_blank.jpg" not in names_a


def test_broken_source_gives_a_partial_shard(run, tmp_path):
    shards, wd, root = run
    import shutil

    src = shards.paths["a"]
    saved = open(src, "rb").read()
    try:  # the archive broke after extraction: what was readable is written, status partial
        open(src, "wb").write(saved[: len(saved) // 2])
        out = str(tmp_path / "out")
        report = ddk.write_clean_shards(wd, out, client="sync").set_index("name")
        assert report.loc["00000.tar", "status"] == "partial"
        assert "archive broken" in report.loc["00000.tar", "error"]
        got = read_members(os.path.join(out, NAMES["a"]), "tar")
        assert 0 < len(got) < len(shards.members["a"])
        assert all(dict(shards.members["a"])[n] == d for n, d in got)
        assert main(["clean", wd, str(tmp_path / "cli"), "--client", "sync"]) == 1
    finally:
        open(src, "wb").write(saved)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_clean_on_s3(run, s3_server, s3_env, bucket, tmp_path):  # noqa: F811
    shards, _, _ = run
    fs = s3_server.filesystem()
    for shard, rel in NAMES.items():
        fs.put_file(shards.paths[shard], f"{bucket}/in/{rel}")
    wd = f"s3://{bucket}/wd"
    ddk.run(f"s3://{bucket}/in", wd, model_path="dct", client="sync", progress=False)
    out = f"s3://{bucket}/clean"
    report = ddk.write_clean_shards(wd, out, client="threads")
    assert (report["status"] == "done").all()
    local = str(tmp_path / "local")
    ddk.write_clean_shards(run[1], local, client="sync")
    for rel in NAMES.values():  # the same bytes as a local run of the same shards
        assert fs.cat_file(f"{bucket}/clean/{rel}") == open(os.path.join(local, rel), "rb").read()
        assert fs.exists(f"{bucket}/clean/_dedupdask/{rel.replace('/', '__')}.stats.json")
    assert not [p for p in fs.find(f"{bucket}/clean") if ".tmp-" in p]
    again = ddk.write_clean_shards(wd, out, client="sync")
    assert (again["status"] == "already_done").all()


# -- a real `dask scheduler` cluster, a worker killed in the middle of a shard -------------------
def _big_shards(root) -> dict[str, list[tuple[str, bytes]]]:
    """A small tar and a ~100 MB tgz of samples with large random members (slow to gzip) whose
    images repeat some of the tar's, so the tgz loses samples."""
    import numpy as np

    from dedupdask.datasets import random_picture, write_shard

    rng = np.random.default_rng(3)
    jpgs = []
    for _ in range(6):
        buf = io.BytesIO()
        random_picture(rng, (96, 72)).save(buf, "JPEG", quality=90)
        jpgs.append(buf.getvalue())
    small = [(f"s{i}.jpg", j) for i, j in enumerate(jpgs)]
    big = []
    for i in range(24):
        if i % 4 == 0:
            img = jpgs[i // 4]  # an exact copy of s<i/4>.jpg: the sample goes
        else:
            b = io.BytesIO()
            random_picture(rng, (96, 72)).save(b, "JPEG", quality=90)
            img = b.getvalue()
        big += [(f"k{i:03d}.jpg", img), (f"k{i:03d}.bin", rng.bytes(4 * 2**20))]
    os.makedirs(root, exist_ok=True)
    write_shard(os.path.join(root, "00000.tar"), small, "tar")
    write_shard(os.path.join(root, "00001.tgz"), big, "tgz")
    return {"00000.tar": small, "00001.tgz": big}


@pytest.mark.slow  # ~30 s: a cluster, a 100 MB tgz written twice
def test_worker_killed_mid_shard_gives_the_undisturbed_output(tmp_path):
    import signal
    import threading
    import time

    from cluster import shell_cluster

    from dedupdask.store import _TMP_OWNER

    members = _big_shards(str(tmp_path / "in"))
    wd = str(tmp_path / "wd")
    ddk.run(str(tmp_path / "in"), wd, model_path="dct", client="sync", progress=False)
    quiet = str(tmp_path / "quiet")
    ref = ddk.write_clean_shards(wd, quiet, keep="first", client="sync")
    assert list(ref["samples_removed"]) == [0, 6]
    out = str(tmp_path / "out")
    killed: list[int] = []

    def killer() -> None:  # kill the worker process that writes the tgz once it is under way
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for n in os.listdir(out) if os.path.isdir(out) else []:
                if n.startswith("00001.tgz.tmp-") and os.path.getsize(os.path.join(out, n)) > 2**20:
                    pid = int(_TMP_OWNER.match(n.rpartition(".tmp-")[2])["pid"])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)

    with shell_cluster(tmp_path / "cluster", n_workers=2) as (address, _):
        t = threading.Thread(target=killer)
        t.start()
        report = ddk.write_clean_shards(wd, out, keep="first", client=address)
        t.join()
    assert killed, "the tgz was written too fast to be interrupted"
    assert (report["status"] == "done").all()
    for name in members:
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(quiet, name), "rb").read()
        a = json.load(open(os.path.join(out, "_dedupdask", f"{name}.stats.json")))
        b = json.load(open(os.path.join(quiet, "_dedupdask", f"{name}.stats.json")))
        for key in ("samples", "members", "bytes", "removed_by_reason", "removals_sha256", "status"):
            assert a[key] == b[key]
    assert not [n for n in os.listdir(out) if ".tmp-" in n]  # the dead writer's temporary went
    kept = read_members(os.path.join(out, "00001.tgz"), "tgz")
    assert kept == [(n, d) for n, d in members["00001.tgz"] if int(n[1:4]) % 4]


def test_nothing_removed_gives_the_source_tar_byte_for_byte(run, tmp_path):
    shards, wd, _ = run
    out = tmp_path / "same"
    report = ddk.write_clean_shards(wd, str(out), duplicates=False, invalid=False, client="sync")
    assert (report["samples_removed"] == 0).all()
    # an uncompressed tar's member records (headers included) are copied as they are
    # so are a zip's local records (its central directory is written anew)
    for shard in ("a", "b"):
        assert (out / NAMES[shard]).read_bytes() == open(shards.paths[shard], "rb").read()
    for shard in ("c",):
        assert read_members(str(out / NAMES[shard]), FMT[shard]) == shards.members[shard]


def test_unreadable_source_and_loose_images(run, tmp_path):
    import shutil

    shards, _, _ = run
    root = tmp_path / "in"
    shutil.copytree(shards.root, root)
    (root / "loose").mkdir()
    (root / "loose" / "x.jpg").write_bytes(shards.members["a"][0][1])  # a copy of a000.jpg
    wd = str(tmp_path / "wd")
    ddk.run(str(root), wd, model_path="dct", client="sync", progress=False)
    (root / NAMES["b"]).write_bytes(b"not a zip any more")  # broke after extraction
    out = tmp_path / "out"
    report = ddk.write_clean_shards(wd, str(out), keep="first", client="sync").set_index("name")
    assert report.loc["00001.zip", "status"] == "failed"
    assert "not a readable archive" in report.loc["00001.zip", "error"]
    assert not (out / NAMES["b"]).exists() and not (out / "_dedupdask" / "00001.zip.stats.json").exists()
    loose = [n for n in report.index if report.loc[n, "format"] == "folder"]
    assert len(loose) == 1 and report.loc[loose[0], "status"] == "skipped"
    assert report.loc["00000.tar", "status"] == "done"
    assert "FAILED" in ddk.CleanReport(report.reset_index()).summary_text()
