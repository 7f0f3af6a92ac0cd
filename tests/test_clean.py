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


def _s3_work_dir(shards, server, bucket_name: str, prefix: str):
    """The test shards uploaded under ``<prefix>in/`` and extracted into ``<prefix>wd`` on S3;
    (filesystem, work_dir URL)."""
    fs = server.filesystem()
    for shard, rel in NAMES.items():
        fs.put_file(shards.paths[shard], f"{bucket_name}/{prefix}in/{rel}")
    wd = f"s3://{bucket_name}/{prefix}wd"
    ddk.run(f"s3://{bucket_name}/{prefix}in", wd, model_path="dct", client="sync", progress=False)
    return fs, wd


def test_clean_on_s3(run, s3_server, s3_env, bucket, tmp_path):  # noqa: F811
    shards, _, _ = run
    fs, wd = _s3_work_dir(shards, s3_server, bucket, "")
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
    members = _big_shards(str(tmp_path / "in"))
    wd = str(tmp_path / "wd")
    ddk.run(str(tmp_path / "in"), wd, model_path="dct", client="sync", progress=False)
    quiet = str(tmp_path / "quiet")
    ref = ddk.write_clean_shards(wd, quiet, keep="first", client="sync")
    assert list(ref["samples_removed"]) == [0, 6]
    out = str(tmp_path / "out")
    _clean_on_cluster_killing_a_writer(tmp_path, wd, out, "00001.tgz")  # the tgz, once under way
    for name in members:
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(quiet, name), "rb").read()
        a = json.load(open(os.path.join(out, "_dedupdask", f"{name}.stats.json")))
        b = json.load(open(os.path.join(quiet, "_dedupdask", f"{name}.stats.json")))
        for key in ("samples", "members", "bytes", "removed_by_reason", "removals_sha256", "status"):
            assert a[key] == b[key]
    kept = read_members(os.path.join(out, "00001.tgz"), "tgz")
    assert kept == [(n, d) for n, d in members["00001.tgz"] if int(n[1:4]) % 4]


def _clean_on_cluster_killing_a_writer(tmp_path, wd: str, out: str, prefix: str, **options) -> pd.DataFrame:
    """``write_clean_shards`` on a real ``dask scheduler`` cluster whose worker writing the output
    file ``prefix`` + ``.tmp-...`` is killed (SIGKILL) once 1 MiB of it is written."""
    import signal
    import threading
    import time

    from cluster import shell_cluster

    from dedupdask.store import _TMP_OWNER

    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for n in os.listdir(out) if os.path.isdir(out) else []:
                if n.startswith(prefix + ".tmp-") and os.path.getsize(os.path.join(out, n)) > 2**20:
                    pid = int(_TMP_OWNER.match(n.rpartition(".tmp-")[2])["pid"])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.02)

    with shell_cluster(tmp_path / "cluster", n_workers=2) as (address, _):
        t = threading.Thread(target=killer)
        t.start()
        report = ddk.write_clean_shards(wd, out, keep="first", client=address, **options)
        t.join()
    assert killed, f"{prefix} was written too fast to be interrupted"
    # a shard finished on the killed worker lost its result there: redone, it finds its marker
    assert (report["status"].isin(["done", "already_done"])).all()
    assert not [n for n in os.listdir(out) if ".tmp-" in n]  # the dead writer's temporary went
    return report


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



# -- the own tar and zip readers (shardcopy) against tarfile / zipfile -------------------------
def _clean_bytes(path: str, fmt: str, removed: set[str], *, fast: bool, fd: bool = True) -> tuple[bytes, dict]:
    """The clean output of ``path`` and its counts, by the own readers (``fast``; ``fd``: kernel
    copies from a local descriptor, else reads) or by the tarfile/zipfile code they stand for."""
    import tempfile

    from dedupdask import clean, shardcopy

    counts = clean._Counts(dict.fromkeys(removed, "duplicate"))
    with open(path, "rb") as f, tempfile.TemporaryFile() as out:
        if fast:  # no fallback here: shardcopy.Fallback would fail the test
            src = shardcopy.Source(f) if fd else shardcopy.Source(io.BytesIO(f.read()))
            sink = shardcopy.Sink(out)
            (shardcopy.copy_zip if fmt == "zip" else shardcopy.copy_tar)(src, sink, clean._decider(removed, counts))
            sink.close()
        else:
            (clean._copy_zip_raw if fmt == "zip" else clean._copy_tar_raw)(f, out, removed, counts)
        out.seek(0)
        return out.read(), {k: v for k, v in vars(counts).items() if k not in ("reasons", "_last")}


LONG = "d" * 30 + "/" + "x" * 90


def _odd_tar(path: str, fmt: int) -> None:
    """A tar with long names (GNU ``L``/``K``, pax ``x`` or a ustar prefix), a non-ASCII name,
    a directory, links, an empty and a one-block member."""
    long = LONG  # over 100 characters, but a ustar prefix and name can hold it
    members = [("a0.jpg", b"j" * 1000), ("a0.txt", b"caption"), ("a1", None), (long + ".jpg", b"L" * 700),
               (long + ".txt", b"long"), ("\u00e91.jpg", b"e" * 30), ("a2.lnk", "a0.jpg"), ("a3.jpg", b""),
               ("a4.jpg", b"4" * 512), ("a4.json", b"{}")]  # fmt: skip
    if fmt == tarfile.USTAR_FORMAT:
        members += [("p" * 90 + "/" + "q" * 60 + ".jpg", b"prefix")]
    else:
        members += [("a5.lnk", "l" * 150)]
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if data is None:
                ti.type = tarfile.DIRTYPE
            elif isinstance(data, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, data
            else:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if isinstance(data, bytes) else None)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("removed", [set(), {"a0", LONG, "a4", "\u00e91"}])
def test_own_tar_reader_writes_what_tarfile_did(tmp_path, fmt, removed):
    path = str(tmp_path / "in.tar")
    _odd_tar(path, fmt)
    old, old_counts = _clean_bytes(path, "tar", removed, fast=False)
    for fd in (True, False):  # kernel copies from a file, reads from any other source
        new, counts = _clean_bytes(path, "tar", removed, fast=True, fd=fd)
        assert new == old and counts == old_counts
    assert counts["found"] == removed and counts["members_in"] == 11
    if not removed:
        assert new == open(path, "rb").read()


@pytest.mark.parametrize("offloaded", [False, True])
def test_kernel_copies_only_where_they_pay(tmp_path, monkeypatch, offloaded):
    # On a block device's file system (ext4, XFS) the kernel copy of a run that starts off a
    # block boundary goes page by page through a pipe and costs ~1.7x of a read and a write
    # through a buffer: those runs go through the buffer. Block-aligned runs (a reflink on
    # XFS/btrfs) and file systems not on a block device (NFS/SMB copy on the server) keep it.
    path = str(tmp_path / "in.tar")
    with tarfile.open(path, "w") as tf:
        for i in range(40):
            ti = tarfile.TarInfo(f"s{i:02d}.jpg")
            ti.size = 700 + 1900 * i + (3 * 2**20 if i == 7 else 0)  # one run over several buffers
            tf.addfile(ti, io.BytesIO(bytes([i]) * ti.size))
    removed = {f"s{i:02d}" for i in range(2, 40, 5)}
    calls: list[tuple[int, int]] = []
    real = os.copy_file_range

    def spy(src, dst, count, offset_src=None, offset_dst=None):
        calls.append((offset_src, offset_dst))
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", spy)
    monkeypatch.setattr(os, "major", lambda dev: 0 if offloaded else 8)
    new, counts = _clean_bytes(path, "tar", removed, fast=True)
    old, old_counts = _clean_bytes(path, "tar", removed, fast=False)
    assert new == old and counts == old_counts and counts["found"] == removed
    runs = len(removed) + 1  # the removed samples are apart: each cuts a run
    if offloaded:
        assert len(calls) >= runs
    else:
        assert calls and all(s % 4096 == 0 and d % 4096 == 0 for s, d in calls)  # the first run: 0 -> 0
        assert len({s for s, _ in calls}) < runs


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_header_reads_ask_the_kernel_to_read_ahead(tmp_path, monkeypatch, fmt):
    # headers jump over the payloads, which the kernel's read-ahead takes for random reads: on
    # a file out of the page cache each header was a small disk read (2-2.5x slower cleaning
    # a cold 1 GB shard). The scan hints the next stretch of the file, each byte once.
    from dedupdask import shardcopy
    from dedupdask.datasets import write_shard

    monkeypatch.setattr(shardcopy, "_HINT", 64 * 1024)
    path = str(tmp_path / f"in.{fmt}")
    members = [(f"s{i:03d}.{e}", bytes([i]) * (9000 if e == "jpg" else 40)) for i in range(120) for e in ("jpg", "txt")]
    write_shard(path, members, fmt)
    hints: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def spy(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            hints.append((offset, offset + length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    removed = {f"s{i:03d}" for i in range(0, 120, 7)}
    new, counts = _clean_bytes(path, fmt, removed, fast=True)
    assert new == _clean_bytes(path, fmt, removed, fast=False)[0] and counts["found"] == removed
    size = os.path.getsize(path)
    back = [k for k in range(1, len(hints)) if hints[k][0] < hints[k - 1][0]]  # a zip: its directory's first
    assert len(back) == (fmt == "zip")
    record = hints[back[0] if back else 0 :]
    assert record[0][0] < 64 * 1024
    assert all(b[0] == a[1] for a, b in zip(record, record[1:], strict=False))  # each byte once
    assert record[-1][1] >= size - 64 * 1024 and len(hints) <= 2 * size // (64 * 1024) + 3  # not one per header


@pytest.mark.parametrize(("fmt", "offloaded"), [("tar", False), ("tar", True), ("zip", False)])
def test_output_is_written_back_and_dropped_from_the_page_cache_as_it_grows(tmp_path, monkeypatch, fmt, offloaded):
    # a dataset's clean copy left every output page dirty in the page cache: 10 x 1 GB filled
    # a 24 GB machine's cache on top of the sources and the kernel's copies then cost 1.5-2.5x
    # the CPU (55-62 CPU s against 24-43). Each step of the output is handed to the disk as it is
    # written, the step before it is waited for and dropped, the rest once the shard is synced.
    from dedupdask import shardcopy
    from dedupdask.datasets import write_shard

    if shardcopy.sync_file_range is None or not hasattr(os, "posix_fadvise"):
        pytest.skip("Linux only")
    monkeypatch.setattr(shardcopy, "_BEHIND", 64 * 1024)
    monkeypatch.setattr(os, "major", lambda dev: 0 if offloaded else 8)  # kernel copies, or the buffer
    path = str(tmp_path / f"in.{fmt}")
    members = [(f"s{i:03d}.{e}", bytes([i]) * (9000 if e == "jpg" else 40)) for i in range(120) for e in ("jpg", "txt")]
    write_shard(path, members, fmt)
    events: list[tuple[str, int, int, int]] = []
    real_sync, real_advise, real_fsync = shardcopy.sync_file_range, os.posix_fadvise, os.fsync

    def sync(fd, offset, n, flags):
        events.append(("sync", offset, n, flags))
        return real_sync(fd, offset, n, flags)

    def advise(fd, offset, n, advice):
        if advice == os.POSIX_FADV_DONTNEED:
            events.append(("drop", offset, n, fd))
        return real_advise(fd, offset, n, advice)

    def fsync(fd):
        events.append(("fsync", 0, 0, fd))
        return real_fsync(fd)

    monkeypatch.setattr(shardcopy, "sync_file_range", sync)
    monkeypatch.setattr(os, "posix_fadvise", advise)
    monkeypatch.setattr(os, "fsync", fsync)
    removed = {f"s{i:03d}" for i in range(0, 120, 7)}
    stats = _clean_task(path, str(tmp_path / "out"), fmt, removed)
    assert stats["status"] == "done"
    assert open(tmp_path / "out" / f"x.{fmt}", "rb").read() == _clean_bytes(path, fmt, removed, fast=False)[0]
    size = os.path.getsize(tmp_path / "out" / f"x.{fmt}")
    started = [(o, o + n) for kind, o, n, f in events if kind == "sync" and f == 2]  # SYNC_FILE_RANGE_WRITE
    waited = [(o, o + n) for kind, o, n, f in events if kind == "sync" and f == 7]  # and wait for it
    dropped = [(o, o + n) for kind, o, n, _ in events if kind == "drop" and n]
    assert started[0][0] == 0 and all(b[0] == a[1] for a, b in zip(started, started[1:], strict=False))
    steps = [e - s for s, e in started]
    assert len(started) >= 4 and min(steps) >= 64 * 1024 and size - started[-1][1] < 2 * max(steps)
    assert waited == started[:-1] == dropped  # each step on disk, then out of the cache, in order
    for (s0, e0), (s1, e1) in zip(started, started[1:], strict=False):  # waited for once the next one started
        assert events.index(("sync", s0, e0 - s0, 7)) > events.index(("sync", s1, e1 - s1, 2))
    last = [i for i, e in enumerate(events) if e[0] == "drop" and e[2] == 0]  # the whole file, once synced
    assert last and events[last[0] - 1][0] == "fsync" and events[last[0] - 1][3] == events[last[0]][3]


def test_tar_with_a_global_pax_header_goes_the_tarfile_way(tmp_path):
    from dedupdask import shardcopy

    path = str(tmp_path / "g.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}) as tf:
        for name in ("k0.jpg", "k1.jpg"):
            ti = tarfile.TarInfo(name)
            ti.size = 3
            tf.addfile(ti, io.BytesIO(b"abc"))
    with pytest.raises(shardcopy.Fallback):
        _clean_bytes(path, "tar", {"k0"}, fast=True)
    out = tmp_path / "out"
    stats = _clean_task(path, str(out), "tar", {"k0"})
    assert stats["status"] == "done" and stats["members"] == {"in": 2, "kept": 1, "removed": 1}
    assert (out / "x.tar").read_bytes() == _clean_bytes(path, "tar", {"k0"}, fast=False)[0]


def _clean_task(path: str, out_dir: str, fmt: str, removed: set[str]) -> dict:
    from dedupdask.clean import ShardTask, clean_archive

    task = ShardTask("x." + fmt, path, out_dir, "x." + fmt, fmt, {}, resume=False)
    return clean_archive(task, pd.DataFrame({"key": sorted(removed), "reason": "duplicate"}))


def test_a_corrupt_tar_header_gives_a_partial_shard(tmp_path):
    # tarfile ends a tar at a header with a bad checksum as if it were the end of the archive:
    # the members after it would be lost without a word
    path = str(tmp_path / "in.tar")
    with tarfile.open(path, "w") as tf:
        for i in range(6):
            ti = tarfile.TarInfo(f"s{i}.jpg")
            ti.size = 600
            tf.addfile(ti, io.BytesIO(bytes([i]) * 600))
    with tarfile.open(path) as tf:
        at = tf.getmembers()[4].offset
    raw = bytearray(open(path, "rb").read())
    raw[at + 1] ^= 0x20  # "s4.jpg" -> "S4.jpg" in the header, its checksum unchanged
    open(path, "wb").write(raw)
    out = tmp_path / "out"
    stats = _clean_task(path, str(out), "tar", {"s1"})
    assert stats["status"] == "partial"
    assert f"bad checksum in the header at byte {at}" in stats["error"]
    assert [n for n, _ in read_members(str(out / "x.tar"), "tar")] == ["s0.jpg", "s2.jpg", "s3.jpg"]


def _odd_zip(path: str, reverse: bool = False) -> None:
    """A zip with stored and deflated members, data descriptors (written to a stream), a
    directory, a UTF-8 name, an extra field and a member comment."""

    class Stream(io.RawIOBase):  # not seekable: zipfile writes data descriptors
        def __init__(self, f):
            self.f = f

        def writable(self):
            return True

        def write(self, b):
            return self.f.write(b)

    with open(path, "wb") as f, zipfile.ZipFile(Stream(f), "w") as zf:
        for i in range(6):
            zi = zipfile.ZipInfo(f"z{i}.{'jpg' if i % 2 else 'txt'}", (2024, 1, 2, 3, 4, 6))
            zi.compress_type = zipfile.ZIP_DEFLATED if i % 3 else zipfile.ZIP_STORED
            if i == 2:
                zi.extra, zi.comment = b"\xfe\xca\x02\x00ok", b"member comment"
            zf.writestr(zi, bytes([65 + i]) * (300 * i))
        zf.writestr(zipfile.ZipInfo("dir/"), b"")
        zf.writestr("\u00e9.jpg", b"utf-8 name")
        if reverse:  # a central directory in another order than the records
            zf.filelist.reverse()


@pytest.mark.parametrize("removed", [set(), {"z1", "z4", "\u00e9"}])
def test_own_zip_reader_writes_what_zipfile_did(tmp_path, removed):
    path = str(tmp_path / "in.zip")
    _odd_zip(path)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("z1.jpg").flag_bits & 0x08  # data descriptors
    old, old_counts = _clean_bytes(path, "zip", removed, fast=False)
    for fd in (True, False):
        new, counts = _clean_bytes(path, "zip", removed, fast=True, fd=fd)
        assert new == old and counts == old_counts
    assert counts["members_in"] == 8 and counts["found"] == removed
    with zipfile.ZipFile(io.BytesIO(new)) as zf:
        assert zf.testzip() is None
        assert zf.getinfo("z2.txt").comment == b"member comment"


def test_zip_in_another_order_goes_the_zipfile_way(tmp_path):
    from dedupdask import shardcopy

    path = str(tmp_path / "r.zip")
    _odd_zip(path, reverse=True)
    with pytest.raises(shardcopy.Fallback):
        _clean_bytes(path, "zip", {"z1"}, fast=True)
    out = tmp_path / "out"
    stats = _clean_task(path, str(out), "zip", {"z1"})
    assert stats["status"] == "done" and stats["members"]["removed"] == 1
    assert (out / "x.zip").read_bytes() == _clean_bytes(path, "zip", {"z1"}, fast=False)[0]


def test_zip64_end_records_past_65535_members(tmp_path):
    path = str(tmp_path / "many.zip")
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(33_000):
            zf.writestr(f"{i:05d}.jpg", b"j")
            zf.writestr(f"{i:05d}.txt", b"t")
    removed = {f"{i:05d}" for i in range(0, 33_000, 1000)}
    old, _ = _clean_bytes(path, "zip", removed, fast=False)
    new, counts = _clean_bytes(path, "zip", removed, fast=True)
    assert new == old and counts["members_kept"] == 66_000 - 66
    assert b"PK\x06\x06" in new[-200:]  # 65,934 entries: a zip64 end record
    with zipfile.ZipFile(io.BytesIO(new)) as zf:
        assert len(zf.infolist()) == 65_934
    # the archive comment is kept (zipfile's writer dropped it)
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = b"an archive comment"
    new, _ = _clean_bytes(path, "zip", removed, fast=True)
    assert zipfile.ZipFile(io.BytesIO(new)).comment == b"an archive comment"


# -- resharding (#18 point 2) -------------------------------------------------------------------
def _samples(members: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """Members grouped into samples: runs of one webdataset key."""
    out: list[list[tuple[str, bytes]]] = []
    last = None
    for name, data in members:
        key = split_key(name)[0]
        if key != last:
            out.append([])
            last = key
        out[-1].append((name, data))
    return out


def check_resharded(out: str, sources: list[tuple[str, list[tuple[str, bytes]]]], removed: set[tuple[str, str]],
                    n: int, fmt: str, report: pd.DataFrame) -> None:  # fmt: skip
    """Names contiguous, ``n`` samples per shard but the last, every kept member's bytes in
    source order, the mapping table complete, counts that add up."""
    from dedupdask.reshard import read_mapping

    want = [(path, s) for path, members in sources for s in _samples(members)
            if (path, split_key(s[0][0])[0]) not in removed]  # fmt: skip
    ext = {"tar": ".tar", "tgz": ".tar.gz", "zip": ".zip"}[fmt]
    names = sorted(n_ for n_ in os.listdir(out) if n_.endswith(ext))
    assert names == [f"{i:05d}{ext}" for i in range(-(-len(want) // n))]
    assert list(report["name"]) == names and (report["status"].isin(["done", "already_done"])).all()
    got = [_samples(read_members(os.path.join(out, name), "zip" if fmt == "zip" else "tar")) for name in names]
    assert [len(g) for g in got] == [n] * (len(names) - 1) + [len(want) - n * (len(names) - 1)]
    assert [s for g in got for s in g] == [s for _, s in want]  # names, bytes and order
    mapping = read_mapping(out).compute().reset_index(drop=True)
    assert list(mapping.columns) == ["shard", "position", "archive", "key", "source_position"]
    assert list(zip(mapping["archive"], mapping["key"], strict=True)) == [(p, split_key(s[0][0])[0]) for p, s in want]
    assert list(mapping["shard"]) == [name for name, g in zip(names, got, strict=True) for _ in g]
    assert list(mapping["position"]) == [i for g in got for i in range(len(g))]
    summary = json.load(open(os.path.join(out, "_dedupdask", "summary.json")))
    assert summary["samples_in"] == summary["samples_kept"] + summary["samples_removed"]
    assert summary["samples_kept"] == len(want) == summary["shards"]["samples"]
    assert summary["samples_removed"] == len(removed)


def _removed(wd: str, **opts) -> set[tuple[str, str]]:
    rm = ddk.load(wd).removals(**opts).compute()
    return set(zip(rm["archive"], rm["key"], strict=True))


@pytest.mark.parametrize("shard_format", [None, "zip", "tgz"])
def test_reshard_mixed_sources(run, tmp_path, shard_format):
    shards, wd, _ = run
    out = str(tmp_path / "out")
    report = ddk.write_clean_shards(wd, out, samples_per_shard=4, shard_format=shard_format, client="sync")
    sources = [(shards.paths[s], shards.members[s]) for s in ("a", "b", "c")]
    check_resharded(out, sources, _removed(wd), 4, shard_format or "tar", report)  # mixed sources: tar
    counts = pd.DataFrame(report.attrs["sources"])
    assert list(counts["status"]) == ["done"] * 3
    assert (counts["samples_in"] == counts["samples_kept"] + counts["samples_removed"]).all()


def _own_shards(root: str, fmt: str) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """Three shards of one format, 7 samples each (jpg, txt, json), with exact copies across
    them so that some samples go."""
    import numpy as np

    from dedupdask.datasets import random_picture, write_shard

    rng = np.random.default_rng(5)
    pics = []
    for _ in range(16):
        buf = io.BytesIO()
        random_picture(rng, (96, 72)).save(buf, "JPEG", quality=90)
        pics.append(buf.getvalue())
    out = []
    for s in range(3):
        members = []
        for i in range(7):
            img = pics[(s * 7 + i) % 16]  # 21 samples over 16 pictures: 5 exact copies
            members += [(f"s{s}_{i:02d}.jpg", img), (f"s{s}_{i:02d}.txt", f"caption {s} {i}".encode()),
                        (f"s{s}_{i:02d}.json", b"{}")]  # fmt: skip
        path = os.path.join(root, f"{s:05d}.{fmt}")
        os.makedirs(root, exist_ok=True)
        write_shard(path, members, fmt)
        out.append((path, members))
    return out


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_reshard_copies_records_and_resumes(tmp_path, fmt):
    sources = _own_shards(str(tmp_path / "in"), fmt)
    wd = str(tmp_path / "wd")
    ddk.run(str(tmp_path / "in"), wd, model_path="dct", client="sync", progress=False)
    removed = _removed(wd, keep="first")
    assert len(removed) == 5
    out = str(tmp_path / "out")
    report = ddk.write_clean_shards(wd, out, keep="first", samples_per_shard=6, client="sync")
    check_resharded(out, sources, removed, 6, fmt, report)
    counted = [json.load(open(os.path.join(out, "_dedupdask", "reshard", f"{s:05d}.{fmt}.count.json"))) for s in range(3)]
    assert [c["indexed"] for c in counted] == [True] * 3  # a slice's task starts at its first sample
    slices = [sl for n in report["name"] for sl in json.load(open(os.path.join(out, "_dedupdask", f"{n}.stats.json")))["slices"]]
    assert any(sl["skip"] > 0 for sl in slices)
    if fmt == "tar":  # the records are the sources' own, byte for byte: the first shard starts
        first = open(os.path.join(out, "00000.tar"), "rb").read()  # like the first source
        with tarfile.open(sources[0][0]) as tf:
            cut = tf.getmembers()[3].offset  # s0_00 (3 records, with their pax headers) is kept
        assert first[:cut] == open(sources[0][0], "rb").read()[:cut]
    # a rerun skips every shard; a shard whose marker is gone is redone, the same bytes
    names = list(report["name"])
    before = {n: open(os.path.join(out, n), "rb").read() for n in names}
    mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
    again = ddk.write_clean_shards(wd, out, keep="first", samples_per_shard=6, client="sync")
    assert (again["status"] == "already_done").all()
    assert mtimes == {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
    os.remove(os.path.join(out, "_dedupdask", f"{names[1]}.stats.json"))
    os.remove(os.path.join(out, names[1]))
    third = ddk.write_clean_shards(wd, out, keep="first", samples_per_shard=6, client="sync").set_index("name")
    assert third.loc[names[1], "status"] == "done" and (third.drop(index=names[1])["status"] == "already_done").all()
    assert before == {n: open(os.path.join(out, n), "rb").read() for n in names}
    # another shard size: the shards of the old plan that the new one lacks are removed
    fourth = ddk.write_clean_shards(wd, out, keep="first", samples_per_shard=10, client="sync")
    check_resharded(out, sources, removed, 10, fmt, fourth)
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_reshard_on_s3(run, s3_server, s3_env, bucket, tmp_path):  # noqa: F811
    shards, wd_local, _ = run
    fs, wd = _s3_work_dir(shards, s3_server, bucket, "r")
    out = f"s3://{bucket}/reshard"
    report = ddk.write_clean_shards(wd, out, samples_per_shard=4, client="threads")
    assert (report["status"] == "done").all(), report["error"].tolist()
    local = str(tmp_path / "local")
    ddk.write_clean_shards(wd_local, local, samples_per_shard=4, client="sync")
    for name in report["name"]:  # the same bytes as a local run of the same shards
        assert fs.cat_file(f"{bucket}/reshard/{name}") == open(os.path.join(local, name), "rb").read()
    assert not [p for p in fs.find(f"{bucket}/reshard") if ".tmp-" in p]
    again = ddk.write_clean_shards(wd, out, samples_per_shard=4, client="sync")
    assert (again["status"] == "already_done").all()


def test_cli_clean_reshard(run, tmp_path, capsys):
    shards, wd, _ = run
    out = str(tmp_path / "cli")
    assert main(["clean", wd, out, "--samples-per-shard", "5", "--shard-format", "zip", "--client", "sync"]) == 0
    text = capsys.readouterr().out
    assert "resharded: 5 new shards of 5 samples (done 5), 23 samples" in text and "00000.zip" in os.listdir(out)
    assert main(["clean", wd, out, "--samples-per-shard", "0", "--client", "sync"]) == 2


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_reshard_tasks_on_archives_only_tarfile_or_zipfile_read(tmp_path, fmt):
    """A zip whose records are in another order than its central directory and a tar with a
    global pax header: both passes take the zipfile/tarfile way, the samples are the same."""
    from dedupdask.reshard import (
        CountTask,
        OutputTask,
        count_source,
        plan_outputs,
        read_mapping,
        write_output,
    )

    zpath = str(tmp_path / "r.zip")
    _odd_zip(zpath, reverse=True)
    tpath = str(tmp_path / "g.tar")
    with tarfile.open(tpath, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}) as tf:
        for i in range(4):
            for ext in ("jpg", "txt"):
                ti = tarfile.TarInfo(f"k{i}.{ext}")
                ti.size = 5
                tf.addfile(ti, io.BytesIO(f"{i}{ext}".encode().ljust(5)))
    removed = {zpath: {"z1", "\u00e9"}, tpath: {"k2"}}
    out = str(tmp_path / "out")
    counts = []
    for path, kind in ((zpath, "zip"), (tpath, "tar")):
        task = CountTask(os.path.basename(path), path, kind, out)
        counts.append(count_source(task, pd.DataFrame({"key": sorted(removed[path]), "reason": "duplicate"})))
    assert [c["samples"] for c in counts] == [{"in": 7, "kept": 5, "removed": 2}, {"in": 4, "kept": 3, "removed": 1}]
    stats = [write_output(OutputTask(name, out, fmt, first, tuple(sl)))
             for name, first, sl in plan_outputs(counts, 3, fmt)]  # fmt: skip
    assert [s["status"] for s in stats] == ["done"] * 3
    want = []
    with zipfile.ZipFile(zpath) as zf:  # zipfile's order: the central directory's
        want += [(i.filename, zf.read(i)) for i in zf.infolist()
                 if not i.is_dir() and split_key(i.filename)[0] not in removed[zpath]]  # fmt: skip
    with tarfile.open(tpath) as tf:
        want += [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if not m.name.startswith("k2.")]
    got = [m for s in stats for m in read_members(os.path.join(out, s["name"]), fmt)]
    assert got == want
    assert len(read_mapping(out)) == 8


@pytest.mark.slow  # ~40 s: a cluster, a 100 MB tgz read twice
def test_worker_killed_mid_reshard_gives_the_undisturbed_output(tmp_path):
    from dedupdask.reshard import read_mapping

    _big_shards(str(tmp_path / "in"))
    wd = str(tmp_path / "wd")
    ddk.run(str(tmp_path / "in"), wd, model_path="dct", client="sync", progress=False)
    quiet = str(tmp_path / "quiet")
    ref = ddk.write_clean_shards(wd, quiet, keep="first", samples_per_shard=8, client="sync")
    assert list(ref["samples_kept"]) == [8, 8, 8]  # 6 + 18 kept samples
    out = str(tmp_path / "out")
    # the worker writing the second new shard (from the tgz), once under way
    _clean_on_cluster_killing_a_writer(tmp_path, wd, out, "00001.tar", samples_per_shard=8)
    for name in ref["name"]:
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(quiet, name), "rb").read()
    pd.testing.assert_frame_equal(read_mapping(out).compute(), read_mapping(quiet).compute())


def test_reshard_a_source_broken_after_extraction(run, tmp_path):
    shards, wd, _ = run
    src = shards.paths["a"]
    saved = open(src, "rb").read()
    try:  # the tar broke after extraction: its samples before the break are resharded
        open(src, "wb").write(saved[: len(saved) // 2])
        out = str(tmp_path / "out")
        report = ddk.write_clean_shards(wd, out, samples_per_shard=4, client="sync")
        counts = pd.DataFrame(report.attrs["sources"]).set_index("name")
        assert counts.loc["00000.tar", "status"] == "partial" and "archive broken" in counts.loc["00000.tar", "error"]
        assert 0 < counts.loc["00000.tar", "samples_kept"] < 9
        first = report.set_index("name").loc["00000.tar"]
        assert first["status"] == "partial" and src in first["error"]
        got = read_members(os.path.join(out, "00000.tar"), "tar")
        assert got and all(dict(shards.members["a"]).get(n, dict(shards.members["b"]).get(n)) == d for n, d in got)
        mapping = pd.read_parquet(os.path.join(out, "_dedupdask", "mapping"))
        assert len(mapping) == int(counts["samples_kept"].sum()) == int(report["samples_kept"].sum())
        assert main(["clean", wd, str(tmp_path / "cli"), "--samples-per-shard", "4", "--client", "sync"]) == 1
    finally:
        open(src, "wb").write(saved)
