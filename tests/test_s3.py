"""S3 end to end against a real server (SeaweedFS on 127.0.0.1, started by the fixtures).

Inputs and work_dir on ``s3://``, credentials from the environment or ``storage_options``
(``client_kwargs.endpoint_url`` or top-level ``endpoint_url``), list files, offsets,
LocalCluster workers, keep_archives, and failures: wrong secret, missing bucket/object,
a server killed mid-archive (failed.json, the rest finishes, resume completes it) and a
server blip that bounded retries ride out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from s3server import bucket, new_server, s3_cluster, s3_env, s3_server, scrub_env  # noqa: F401

import dedupdask as ddk
from dedupdask import partition, remote
from dedupdask.store import WorkDir

pytestmark = pytest.mark.timeout(300)

# archive layout under the input prefix: nested, so listing must be recursive
LAYOUT = {"00000.tar": "a/00000.tar", "00001.tgz": "a/00001.tgz", "00002.zip": "b/00002.zip"}


def extract(inp, wd, **kw):
    kw.setdefault("model_path", "dct")
    kw.setdefault("client", "sync")
    kw.setdefault("progress", False)
    return ddk.extract(inp, wd, **kw)


def upload(server, files: dict[str, str], prefix: str) -> None:
    """``files``: local path -> key under ``prefix`` (``bucket/some/prefix``)."""
    fs = server.filesystem()
    for local, key in files.items():
        fs.put_file(local, f"{prefix}/{key}")


def outputs(work_dir: str, so=None) -> dict[str, tuple]:
    """Per done archive: vectors' bytes, counts, and (member, error_code, md5, index) rows."""
    wd = WorkDir(work_dir, so)
    out = {}
    for name in sorted(wd.done_names()):
        done = wd.read_done(name)
        files = wd.read_files(name)
        rows = list(zip(files["member"], files["error_code"], files["md5"], files["index"], strict=True))
        out[name] = (wd.read_bytes(wd.file(name, "dat")), done["counts"], rows)
    return out


@pytest.fixture(scope="module")
def nested(sample_shards, tmp_path_factory):
    """The sample shards in the nested LAYOUT on local disk, and their local extraction."""
    root = tmp_path_factory.mktemp("nested")
    for base, rel in LAYOUT.items():
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(sample_shards.root, base), root / rel)
    ref = str(tmp_path_factory.mktemp("ref"))
    report = extract(str(root), ref)
    assert (report["status"] == "done").all()
    return {"root": str(root), "ref": ref, "files": {str(root / r): r for r in LAYOUT.values()}}


@pytest.fixture
def s3_input(s3_server, s3_env, bucket, nested):  # noqa: F811
    upload(s3_server, nested["files"], f"{bucket}/in")
    return f"s3://{bucket}/in/"


# -- happy paths ---------------------------------------------------------------------------------


def test_prefix_to_s3_work_dir_with_explicit_options(s3_server, s3_env, bucket, nested, monkeypatch):  # noqa: F811
    """storage_options with client_kwargs.endpoint_url (no AWS_* env at all); run_mode 1 then 2."""
    upload(s3_server, nested["files"], f"{bucket}/in")
    scrub_env(monkeypatch)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    so = s3_server.storage_options()
    wd = f"s3://{bucket}/work"
    report = extract(f"s3://{bucket}/in", wd, storage_options=so)
    assert report["status"].tolist() == ["done"] * 3
    assert report["name"].tolist() == ["a__00000.tar", "a__00001.tgz", "b__00002.zip"]
    got, ref = outputs(wd, so), outputs(nested["ref"])
    assert list(got) == list(ref) and got == ref  # same vectors, counts and rows as from disk
    files = WorkDir(wd, so).read_files("a__00000.tar")
    assert files["filename"].str.startswith(f"s3://{bucket}/in/a/00000.tar/").all()
    again = extract(f"s3://{bucket}/in", wd, storage_options=so)
    assert set(again["status"]) == {"already_done"}
    # run_mode=2 reads the s3 work_dir and writes its results there
    res = ddk.run(None, wd, run_mode=2, storage_options=so, client="sync", progress=False)
    assert len(res.similarity) > 0
    fs = s3_server.filesystem()
    assert fs.exists(f"{bucket}/work/similarity.csv") and fs.exists(f"{bucket}/work/atrain_features.dat.csv")


def test_prefix_on_local_cluster_through_env(s3_input, s3_cluster, bucket, nested):  # noqa: F811
    """Worker processes reach the server through the inherited AWS_* variables only."""
    wd = f"s3://{bucket}/work"
    report = extract(s3_input, wd, client=s3_cluster)
    assert (report["status"] == "done").all() and len(report) == 3
    pids = set(s3_cluster.run(os.getpid).values())
    assert len(pids) == 2
    assert outputs(wd) == outputs(nested["ref"])


def test_list_file_offsets_and_top_level_endpoint(s3_server, s3_env, bucket, nested, monkeypatch):  # noqa: F811
    """A list file on s3 naming s3 URLs; two offset jobs into one s3 work_dir equal one job."""
    upload(s3_server, nested["files"], f"{bucket}/in")
    fs = s3_server.filesystem()
    urls = [f"s3://{bucket}/in/{rel}" for rel in LAYOUT.values()]
    fs.pipe_file(f"{bucket}/lists/shards.txt", ("# shards\n" + "\n".join(reversed(urls)) + "\n").encode())
    scrub_env(monkeypatch)
    so = {"endpoint_url": s3_server.endpoint, "key": s3_server.key, "secret": s3_server.secret}
    listfile = f"s3://{bucket}/lists/shards.txt"
    whole, parts = f"s3://{bucket}/whole", f"s3://{bucket}/parts"
    extract(listfile, whole, storage_options=so)
    r1 = extract(listfile, parts, storage_options=so, min_offset=0, max_offset=2)
    r2 = extract(listfile, parts, storage_options=so, min_offset=2)
    assert r1["name"].tolist() == ["a__00000.tar", "a__00001.tgz"] and r2["name"].tolist() == ["b__00002.zip"]
    assert outputs(whole, so) == outputs(parts, so) == outputs(nested["ref"])
    # a local list file of s3 URLs works too
    local_list = os.path.join(nested["root"], "..", "s3-shards.txt")
    with open(local_list, "w") as f:
        f.write("\n".join(urls[:1]) + "\n")
    r3 = extract(local_list, f"s3://{bucket}/one", storage_options=so)
    assert r3["status"].tolist() == ["done"]


def test_keep_archives_from_s3(s3_input, bucket, nested, tmp_path):  # noqa: F811
    """keep_archives copies each archive once into work_dir/tmp/archives/ (s3 or local)."""
    from s3fs import S3FileSystem

    fs = S3FileSystem()
    wd = f"s3://{bucket}/kept"
    report = extract(s3_input, wd, keep_archives=True)
    assert (report["status"] == "done").all()
    for name, rel in zip(("a__00000.tar", "a__00001.tgz", "b__00002.zip"), LAYOUT.values(), strict=True):
        copy = f"{bucket}/kept/tmp/archives/{name}"
        assert fs.cat_file(copy) == fs.cat_file(f"{bucket}/in/{rel}")
    mtime = fs.info(f"{bucket}/kept/tmp/archives/a__00000.tar", refresh=True)["LastModified"]
    extract(s3_input, wd, keep_archives=True, resume=False)  # the copy is not made twice
    assert fs.info(f"{bucket}/kept/tmp/archives/a__00000.tar", refresh=True)["LastModified"] == mtime
    # a local input kept into an s3 work_dir: streamed up as one multipart upload
    report = extract(nested["root"], f"s3://{bucket}/kept2", keep_archives=True)
    assert (report["status"] == "done").all()
    assert fs.cat_file(f"{bucket}/kept2/tmp/archives/a__00001.tgz") == fs.cat_file(f"{bucket}/in/a/00001.tgz")
    local = tmp_path / "wd"
    report = extract(s3_input, str(local), keep_archives=True)
    assert (report["status"] == "done").all()
    assert (local / "tmp/archives/b__00002.zip").read_bytes() == fs.cat_file(f"{bucket}/in/b/00002.zip")


# -- failures ------------------------------------------------------------------------------------


def test_wrong_secret_is_a_clear_listing_error(s3_input, s3_server, tmp_path):  # noqa: F811
    so = s3_server.storage_options(secret="not-the-secret")
    with pytest.raises(PermissionError) as ei:
        extract(s3_input, str(tmp_path / "wd"), storage_options=so)
    err = ei.value
    assert isinstance(err, remote.StorageAuthError) and err.attempts == 1  # not retried
    assert s3_input in str(err) and "access denied" in str(err)
    assert "SignatureDoesNotMatch" in str(err) or "signature" in str(err).lower()


def test_missing_bucket_and_object(s3_env, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-ddk/shards"):
        extract("s3://no-such-bucket-ddk/shards/", str(tmp_path / "wd"))
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-ddk/x.tar"):
        extract(["s3://no-such-bucket-ddk/x.tar"], str(tmp_path / "wd"))


def test_object_missing_at_read_is_failed_then_resumed(s3_input, s3_server, bucket, nested, monkeypatch):  # noqa: F811
    """An object deleted after listing: failed.json, not retried, the others done, CLI exit 1;
    a rerun (resume) after it is back completes it."""
    fs = s3_server.filesystem()
    real = ddk.pipeline.list_sources

    def list_then_delete(*a, **k):
        out = real(*a, **k)
        fs.rm_file(f"{bucket}/in/a/00001.tgz")
        return out

    monkeypatch.setattr(ddk.pipeline, "list_sources", list_then_delete)
    wd = f"s3://{bucket}/work"
    from dedupdask.cli import main as cli_main

    rc = cli_main(["extract", s3_input, wd, "--model-path", "dct", "--client", "sync", "--no-progress"])
    assert rc == 1  # an archive failed
    w = WorkDir(wd)
    assert w.done_names() == {"a__00000.tar", "b__00002.zip"} and w.failed_names() == {"a__00001.tgz"}
    failed = w.read_json(w.file("a__00001.tgz", "failed"))
    assert failed["error_kind"] == "missing"
    assert re.search(f"cannot (open|read) s3://{bucket}/in/a/00001.tgz: not found", failed["error"])
    monkeypatch.setattr(ddk.pipeline, "list_sources", real)
    upload(s3_server, {os.path.join(nested["root"], "a/00001.tgz"): "a/00001.tgz"}, f"{bucket}/in")
    again = extract(s3_input, wd)
    assert dict(zip(again["name"], again["status"], strict=True)) == {
        "a__00000.tar": "already_done", "a__00001.tgz": "done", "b__00002.zip": "already_done"
    }  # fmt: skip
    assert "a__00001.tgz" not in w.failed_names()
    assert outputs(wd) == outputs(nested["ref"])


@pytest.fixture
def flaky(tmp_path, s3_env, sample_shards):  # noqa: F811
    """A second server holding 4 tar shards (input only), killed and restarted by the tests."""
    from dedupdask.datasets import make_sample_shards

    shards = make_sample_shards(str(tmp_path / "shards"), n_shards=4, images_per_shard=16,
                                formats=("tar",), n_near=4, n_exact=2, size=(256, 192), seed=3)
    server = new_server(str(tmp_path))
    server.make_bucket("input")
    upload(server, {p: os.path.basename(p) for p in shards.shards}, "input/shards")
    ref = str(tmp_path / "ref")
    extract(shards.root, ref)
    # small reads so the archive really streams (many GETs), one botocore attempt, short timeouts
    so = server.storage_options(fail_fast=True, default_block_size=64 * 2**10)
    try:
        yield server, so, ref
    finally:
        server.close()


def _kill_after_decodes(monkeypatch, n: int, action) -> dict:
    """Patch decoding (sync scheduler: same process) to run ``action`` once after n images."""
    real = partition.decode_image
    state = {"calls": 0, "fired": False}

    def decode_image(*a, **k):
        state["calls"] += 1
        if state["calls"] == n and not state["fired"]:
            state["fired"] = True
            action()
        return real(*a, **k)

    monkeypatch.setattr(partition, "decode_image", decode_image)
    return state


def test_server_killed_mid_archive_then_resume(flaky, monkeypatch, tmp_path):
    """The input server dies inside the 2nd archive processed: it and the two not started fail
    with their URL named, after bounded retries, and get failed.json; the 1st stays done. After a restart a rerun with
    resume=True completes them, with the same bytes as a clean run. (The work_dir is local
    here: one storage_options dict serves input and work_dir, and the input server is down.)"""
    server, so, ref = flaky
    wd = str(tmp_path / "wd")
    _kill_after_decodes(monkeypatch, 30, lambda: server.stop(kill=True))  # inside shard 2
    report = extract("s3://input/shards/", wd, storage_options=so, storage_attempts=2)
    st = report.set_index("name")["status"]
    done, failed = set(st.index[st == "done"]), set(st.index[st == "failed"])
    assert len(done) == 1 and len(failed) == 3, report[["name", "status", "error"]]
    errors = report.set_index("name").loc[sorted(failed), ["url", "error"]]
    for url, error in errors.itertuples(index=False):
        assert error.startswith(("StorageError: cannot open " + url, "StorageError: cannot read " + url))
        assert "unreachable" in error and "after 2 attempts" in error, error
    # one archive was being streamed when the server died (the others could not be opened)
    assert sum(e.startswith("StorageError: cannot read") for e in errors["error"]) == 1
    w = WorkDir(wd)
    assert w.failed_names() == failed and w.done_names() == done
    info = w.read_json(w.file(sorted(failed)[0], "failed"))
    assert info["error_kind"] == "transient" and info["url"] in info["error"]
    server.start()
    again = extract("s3://input/shards/", wd, storage_options=so)  # default: 3 attempts
    assert dict(zip(again["name"], again["status"], strict=True)) == {
        n: "already_done" if n in done else "done" for n in st.index
    }
    assert w.failed_names() == set()
    assert outputs(wd) == outputs(ref)


def test_server_blip_is_retried_at_the_offset(flaky, monkeypatch, tmp_path):
    """The server is killed in the middle of streaming an archive and is back before the
    next attempt: the read resumes at its offset, every archive is done, output identical."""
    server, so, ref = flaky
    sleeps, reopened_at = [], []
    real_sleep, real_drop = remote._sleep, remote.RetryingReader._drop

    def sleep(attempt):  # the backoff after a failure: the server comes back meanwhile
        sleeps.append(attempt)
        if not server.running:
            server.start()
        real_sleep(attempt)

    def drop(self):
        reopened_at.append(self.tell())
        real_drop(self)

    monkeypatch.setattr(remote, "_sleep", sleep)
    monkeypatch.setattr(remote.RetryingReader, "_drop", drop)
    _kill_after_decodes(monkeypatch, 30, lambda: server.stop(kill=True))
    wd = str(tmp_path / "wd")
    report = extract("s3://input/shards/", wd, storage_options=so)
    assert (report["status"] == "done").all(), report[["name", "status", "error"]]
    assert sleeps and any(pos > 0 for pos in reopened_at), (sleeps, reopened_at)
    assert outputs(wd) == outputs(ref)


@pytest.mark.slow
def test_server_killed_during_local_cluster_run(s3_cluster, tmp_path):  # noqa: F811
    """Two worker processes stream shards; the server is killed when the first archive is
    done. The archives cut off fail (failed.json), the run returns, a rerun after the
    restart completes them with the same bytes as a clean run."""
    import time

    from dedupdask.datasets import make_sample_shards

    shards = make_sample_shards(str(tmp_path / "shards"), n_shards=6, images_per_shard=60,
                                formats=("tar",), n_near=6, n_exact=2, seed=5)
    server = new_server(str(tmp_path))
    try:
        server.make_bucket("input")
        upload(server, {p: os.path.basename(p) for p in shards.shards}, "input/shards")
        so = server.storage_options(fail_fast=True, default_block_size=256 * 2**10)
        ref, wd = str(tmp_path / "ref"), str(tmp_path / "wd")
        extract(shards.root, ref)
        w = WorkDir(wd)
        stop = {"at": None}

        def kill_after_first_done():
            while not stop["at"]:
                if os.path.isdir(wd) and w.done_names():
                    server.stop(kill=True)
                    stop["at"] = time.monotonic()
                time.sleep(0.02)

        import threading

        watcher = threading.Thread(target=kill_after_first_done, daemon=True)
        watcher.start()
        report = extract("s3://input/shards/", wd, storage_options=so, client=s3_cluster, storage_attempts=2)
        stop["at"] = stop["at"] or -1.0
        watcher.join()
        st = report.set_index("name")["status"]
        failed = set(st.index[st == "failed"])
        assert failed and (st == "done").sum() >= 1 and set(st) <= {"done", "failed"}
        assert w.failed_names() == failed
        for url, error in report.loc[report["status"] == "failed", ["url", "error"]].itertuples(index=False):
            assert url in error and "unreachable" in error
        server.start()
        again = extract("s3://input/shards/", wd, storage_options=so, client=s3_cluster)
        assert set(again.loc[again["name"].isin(failed), "status"]) == {"done"}
        assert w.failed_names() == set() and outputs(wd) == outputs(ref)
    finally:
        server.close()


# -- command line ----------------------------------------------------------------------------------


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "dedupdask", *args], env=env, capture_output=True,
                          text=True, timeout=240)


def test_cli_fsspec_env_and_wrong_secret(s3_input, s3_server, bucket):  # noqa: F811
    """FSSPEC_S3_* variables alone configure the CLI; a wrong secret exits 2 naming the URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_S3"))}
    env.update(FSSPEC_S3_ENDPOINT_URL=s3_server.endpoint, FSSPEC_S3_KEY=s3_server.key,
               FSSPEC_S3_SECRET=s3_server.secret, AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    args = ["extract", s3_input, f"s3://{bucket}/cli", "--model-path", "dct", "--client", "sync", "--no-progress"]
    ok = _cli(args, env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "3 done now" in ok.stdout
    bad = _cli(args, {**env, "FSSPEC_S3_SECRET": "wrong"})
    assert bad.returncode == 2
    assert s3_input in bad.stderr and "access denied" in bad.stderr and "Traceback" not in bad.stderr


def test_verification_reads_tar_members_by_range_from_s3(s3_server, s3_env, bucket, tmp_path):  # noqa: F811
    """Candidate images come back from an s3 tar by byte range, equal to streaming it."""
    import io
    import tarfile

    from conftest import jpeg_bytes

    from dedupdask.verify import Prepared, load_archive_images, load_ranged_images

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(5):
            data = jpeg_bytes(i, (120, 90))
            ti = tarfile.TarInfo(f"{i:04d}.jpg")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    fs = s3_server.filesystem()
    fs.pipe_file(f"{bucket}/t/00000.tar", raw)
    url = f"s3://{bucket}/t/00000.tar"
    so = s3_server.storage_options()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        infos = [ti for ti in tf.getmembers() if ti.name in ("0001.jpg", "0003.jpg")]
    ranged = load_ranged_images(
        [(k, url, ti.offset_data, ti.size) for k, ti in enumerate(infos)], so
    )
    streamed = load_archive_images(url, [(ti.name, 0, k) for k, ti in enumerate(infos)], so)
    assert set(ranged) == set(streamed) == {0, 1}
    for k in (0, 1):
        assert isinstance(ranged[k], Prepared)
        np.testing.assert_array_equal(ranged[k].rgb, streamed[k].rgb)


def test_no_server_port_is_another_ports_grpc_twin(monkeypatch):
    """SeaweedFS refuses a port that is another of its ports' gRPC twin (port + 10000): the
    ports of one server never include one, whichever order the system hands them out in."""
    import socket as socket_mod
    from types import SimpleNamespace

    from dedupdask.testing import s3server

    handed = iter([30001, 40001, 20001, 30002, 40002, 30003, 30004])

    class FakeSocket:
        def __init__(self, *a, **k):
            self.port = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, addr):
            self.port = next(handed)

        def getsockname(self):
            return ("127.0.0.1", self.port)

    # only the module's own view of the socket module: other threads of the session keep theirs
    fake = SimpleNamespace(socket=FakeSocket, AF_INET=socket_mod.AF_INET, SOCK_STREAM=socket_mod.SOCK_STREAM)
    monkeypatch.setattr(s3server, "socket", fake)
    monkeypatch.setattr(s3server, "_port_free", lambda port: True)
    taken: set[int] = set()
    ports = [s3server.free_port(taken) for _ in range(4)]
    assert ports == [30001, 30002, 30003, 30004]  # 40001 is 30001's twin, 30001 20001's, 40002 30002's
    assert not {p + 10000 for p in ports} & set(ports)
