"""Storage outages on cue: a storage failure is never recorded as a broken archive.

A :class:`~dedupdask.testing.FaultProxy` sits between the S3 client and SeaweedFS and fails
at the n-th request that matches a pattern, before it is sent or after k bytes of its
response, so each case hits one stage exactly (a zip's end record, its central directory,
a member; a tar's first block or a block mid-stream; an output upload), with no timer
racing the job. Each outage must leave the archive not done with a storage error (CLI exit
1), and a rerun once the storage is back must produce what a clean run produces. A dead
endpoint must fail after the one retry policy's attempts and deadline, not minutes later.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
import zipfile

import pytest
from s3server import s3_env, s3_server  # noqa: F401

import dedupdask as ddk
from dedupdask import archives, remote
from dedupdask.cli import main as cli_main
from dedupdask.datasets import make_sample_shards
from dedupdask.sources import list_sources
from dedupdask.store import WorkDir
from dedupdask.testing import FaultProxy
from dedupdask.testing.faultproxy import _RequestParser

pytestmark = pytest.mark.timeout(120)

BLOCK = 16 * 2**10  # small ranged GETs, so an archive is read in several requests


def extract(inp, wd, **kw):
    kw.setdefault("model_path", "dct")
    kw.setdefault("client", "sync")  # same process: the fast backoff below applies
    kw.setdefault("progress", False)
    return ddk.extract(inp, wd, **kw)


def outputs(work_dir: str, so=None) -> dict[str, tuple]:
    """Per done archive: vectors' bytes, counts, and (member, error_code, md5, index) rows."""
    wd = WorkDir(work_dir, so)
    out = {}
    for name in sorted(wd.done_names()):
        files = wd.read_files(name)
        rows = list(zip(files["member"], files["error_code"], files["md5"], files["index"], strict=True))
        out[name] = (wd.read_bytes(wd.file(name, "dat")), wd.read_done(name)["counts"], rows)
    return out


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF", 0.01)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A tar, a tgz and a zip (with a corrupt and a non-image member) and their clean extraction."""
    root = tmp_path_factory.mktemp("fault-shards")
    s = make_sample_shards(str(root), n_shards=3, images_per_shard=8, n_near=3, n_exact=1,
                           size=(256, 192), seed=11)
    ref = str(tmp_path_factory.mktemp("fault-ref"))
    report = extract(s.root, ref)
    assert (report["status"] == "done").all()
    return {os.path.basename(p): p for p in s.shards}, ref


@pytest.fixture(scope="module")
def proxy(s3_server):  # noqa: F811
    with FaultProxy(s3_server.endpoint) as p:
        yield p


@pytest.fixture(scope="module")
def s3_input(s3_server, s3_env, shards):  # noqa: F811
    """The shards uploaded (directly, not through the proxy) under ``s3://<bucket>/in/``."""
    files, _ = shards
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    fs = s3_server.filesystem()
    for base, path in files.items():
        fs.put_file(path, f"{bucket}/in/{base}")
    return bucket


@pytest.fixture
def so(proxy, s3_server):  # noqa: F811
    """storage_options through the proxy; the outage ends with the test."""
    proxy.heal()
    proxy.clear()
    yield {"key": s3_server.key, "secret": s3_server.secret, "default_block_size": BLOCK,
           "client_kwargs": {"endpoint_url": proxy.endpoint, "region_name": "us-east-1"}}
    proxy.heal()


# -- the proxy's own framing (no server) ---------------------------------------------------------


def test_request_framing_survives_bodies_chunks_and_split_reads():
    """Requests are found at their offsets whatever the body framing and however TCP splits it."""
    stream = (b"PUT /b/k HTTP/1.1\r\nContent-Length: 7\r\n\r\nGET /\r\n"
              b"PUT /b/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-amz-checksum: 1\r\n\r\n"
              b"GET /b/k?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")  # fmt: skip
    for cut in range(1, len(stream)):
        p = _RequestParser()
        found = [(off, r.line) for off, r in p.feed(stream[:cut])]
        found += [(off + cut, r.line) for off, r in p.feed(stream[cut:])]
        assert [line for _, line in found] == ["PUT /b/k", "PUT /b/c", "GET /b/k?x=1"], cut
        starts = [stream.index(b"PUT /b/k"), stream.index(b"PUT /b/c"), stream.index(b"GET /b/k?x=1")]
        # a request begun in an earlier read is reported at offset 0 of the read that ends it
        assert all(off in (s, cut) for (off, _), s in zip(found, starts, strict=True)), (cut, found)


# -- zipfile hides storage errors (no server) -----------------------------------------------------


class DeadFrom(io.BytesIO):
    """A remote file whose every read touching bytes at or after ``at`` fails (an outage)."""

    def __init__(self, data: bytes, at: int) -> None:
        super().__init__(data)
        self.at = at

    def read(self, size=-1):
        end = len(self.getbuffer()) if size is None or size < 0 else self.tell() + size
        if end > self.at:
            raise ConnectionResetError(104, "connection reset by peer")
        return super().read(size)


def _zip_bytes() -> tuple[bytes, int, int]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(4):
            zf.writestr(f"{i:03d}.bin", bytes([i]) * 3000)
    data = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return data, zf.start_dir, zf.infolist()[2].header_offset


@pytest.mark.parametrize("where", ["end_record", "central_directory", "member_header", "member_data"])
def test_zip_storage_error_is_not_a_broken_archive(where):
    """Each zipfile read path: the reader's StorageError comes out, never ArchiveReadError
    (zipfile turns an OSError met while it reads the directory into BadZipFile)."""
    data, start_dir, third = _zip_bytes()
    at = {"end_record": len(data) - 10, "central_directory": start_dir + 5,
          "member_header": third + 4, "member_data": third + 100}[where]  # fmt: skip
    reader = remote.RetryingReader(lambda: DeadFrom(data, at), "s3://b/x.zip", attempts=2)
    got = []
    with pytest.raises(remote.StorageError, match=r"cannot read s3://b/x.zip: storage unreachable"):
        for m in archives._iter_zip(reader, 2**20, archives._Budget(2**30)):
            got.append(m)
    assert reader.failure is not None and reader.failure.kind == "transient"
    assert all(m.error_code is None for m in got)  # no member was blamed for the outage


def test_truncated_zip_is_still_a_broken_archive():
    """The other side: bad bytes (no storage error) stay ArchiveReadError."""
    data, start_dir, _ = _zip_bytes()
    reader = remote.RetryingReader(lambda: io.BytesIO(data[: start_dir + 5]), "s3://b/x.zip")
    with pytest.raises(archives.ArchiveReadError):
        list(archives._iter_zip(reader, 2**20, archives._Budget(2**30)))
    assert reader.failure is None


# -- outages while an archive is read, per format and stage --------------------------------------

# (archive, which GET of it fails, response bytes let through first): for the zip with
# 16 KiB blocks the GETs are the end record, the zip64 locator, the central directory, then
# the members; a tar's are consecutive blocks.
READ_CASES = {
    "zip-end-record": ("00002.zip", 1, 0),
    "zip-zip64-locator": ("00002.zip", 2, 0),
    "zip-central-directory": ("00002.zip", 3, 0),
    "zip-central-directory-cut-mid-response": ("00002.zip", 3, 1200),
    "zip-member": ("00002.zip", 4, 0),
    "zip-member-cut-mid-response": ("00002.zip", 5, 3000),
    "tar-first-block": ("00000.tar", 1, 0),
    "tar-mid-stream": ("00000.tar", 3, 0),
    "tar-cut-mid-response": ("00000.tar", 2, 3000),
    "tgz-first-block": ("00001.tgz", 1, 0),
    "tgz-mid-stream": ("00001.tgz", 3, 0),
    "tgz-cut-mid-response": ("00001.tgz", 2, 3000),
}


@pytest.mark.parametrize("case", list(READ_CASES))
def test_outage_while_reading_fails_the_archive_and_rerun_completes_it(case, s3_input, so, proxy, shards, tmp_path):
    base, nth, response_bytes = READ_CASES[case]
    url = f"s3://{s3_input}/in/{base}"
    wd = str(tmp_path / "wd")
    proxy.fail_on(rf"^GET /{s3_input}/in/{base.replace('.', '[.]')}$", nth=nth,
                  response_bytes=response_bytes, mode="reset")
    report = extract(url, wd, storage_options=so, storage_attempts=2)
    assert proxy.fired.is_set(), "the cue never fired: fewer GETs than the case assumes"
    (row,) = report.itertuples()
    assert row.status == "failed" and row.images == 0, (row.status, row.error)
    assert row.error.startswith(f"StorageError: cannot read {url}: storage unreachable"), row.error
    w = WorkDir(wd)
    assert w.done_names() == set() and w.failed_names() == {base}
    info = w.read_json(w.file(base, "failed"))
    assert info["error_kind"] == "transient" and url in info["error"]
    proxy.heal()
    again = extract(url, wd, storage_options=so)
    assert list(again["status"]) == ["done"], again[["status", "error"]]
    assert w.failed_names() == set()
    assert outputs(wd) == {base: outputs(shards[1])[base]}


def test_cli_exits_1_on_a_zip_lost_to_an_outage(s3_input, so, proxy, shards, tmp_path, capsys):
    """The reported case: storage fails while the zip's directory is read and stays down;
    the run must say so (exit 1, FAILED line) and the resumed run must process the zip,
    not skip it."""
    wd = str(tmp_path / "wd")
    inp = f"s3://{s3_input}/in/"
    proxy.fail_on(rf"^GET /{s3_input}/in/00002[.]zip$", nth=1, mode="reset")
    args = ["extract", inp, wd, "--model-path", "dct", "--client", "sync", "--no-progress",
            "--storage-attempts", "2", "--storage-options", json.dumps(so)]
    rc = cli_main(args)
    out = capsys.readouterr().out
    assert rc == 1 and f"FAILED: s3://{s3_input}/in/00002.zip: StorageError" in out, out
    w = WorkDir(wd)
    assert "00002.zip" in w.failed_names() and "00002.zip" not in w.done_names()
    proxy.heal()
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "0 partial, 0 failed" in out, out
    assert w.failed_names() == set() and outputs(wd) == outputs(shards[1])


def test_blip_on_a_zip_member_is_retried_at_its_offset(s3_input, so, proxy, shards, tmp_path):
    """A connection cut once mid-response is ridden out: done, same outputs as a clean run."""
    base = "00002.zip"
    proxy.fail_on(rf"^GET /{s3_input}/in/00002[.]zip$", nth=5, response_bytes=3000, once=True)
    wd = str(tmp_path / "wd")
    report = extract(f"s3://{s3_input}/in/{base}", wd, storage_options=so, storage_attempts=2)
    assert proxy.fired.is_set() and list(report["status"]) == ["done"], report[["status", "error"]]
    assert outputs(wd) == {base: outputs(shards[1])[base]}


@pytest.mark.parametrize("nth", [1, 4])
def test_reading_members_back_names_the_outage(nth, s3_input, so, proxy, shards):
    """Galleries and verification read zip members back: an outage there is reported as a
    storage error for every member, not as "File is not a zip file" or as one bad member."""
    from dedupdask.readback import read_archive_members

    with zipfile.ZipFile(shards[0]["00002.zip"]) as zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
    proxy.fail_on(rf"^GET /{s3_input}/in/00002[.]zip$", nth=nth, mode="reset")
    got = read_archive_members(f"s3://{s3_input}/in/00002.zip", [(n, 0) for n in names], len, str, so)
    assert proxy.fired.is_set() and len(got) == len(names)
    for reason in got.values():
        assert isinstance(reason, str) and "StorageError: cannot read s3://" in reason, reason
        assert "unreachable" in reason and "zip file" not in reason, reason


# -- outages while outputs are written to an S3 work_dir ------------------------------------------


@pytest.mark.parametrize("nth,which", [(1, "features.dat"), (4, "features.bad.csv"), (7, "done.json")])
def test_outage_while_writing_leaves_the_archive_not_done(nth, which, s3_input, s3_server, so, proxy, shards,  # noqa: F811
                                                          tmp_path):
    """The n-th upload fails and the store stays down: no done.json, status failed (even
    failed.json cannot be written: the summary says so), and the rerun completes it."""
    files, ref = shards
    base = "00000.tar"
    wd = f"s3://{s3_input}/work-{nth}"
    proxy.fail_on(rf"^PUT /{s3_input}/work-{nth}/", nth=nth, mode="reset")
    report = extract(files[base], wd, storage_options=so, storage_attempts=2)
    assert proxy.fired.is_set()
    puts = proxy.matching(rf"^PUT /{s3_input}/work-{nth}/")
    assert puts[-1].target.endswith(f"/{base}{which}"), [r.target for r in puts]
    (row,) = report.itertuples()
    assert row.status == "failed", (row.status, row.error)
    assert f"cannot write {wd}/{base}{which}: storage unreachable" in row.error, row.error
    assert "failed.json could not be written" in row.error
    direct = WorkDir(wd, s3_server.storage_options())
    assert direct.done_names() == set()
    proxy.heal()
    again = extract(files[base], wd, storage_options=so)
    assert list(again["status"]) == ["done"], again[["status", "error"]]
    assert outputs(wd, so) == {base: outputs(ref)[base]}


def test_blip_while_writing_is_retried(s3_input, so, proxy, shards, tmp_path):
    files, ref = shards
    base, wd = "00001.tgz", f"s3://{s3_input}/work-blip"
    proxy.fail_on(rf"^PUT /{s3_input}/work-blip/", nth=3, mode="reset", once=True)
    report = extract(files[base], wd, storage_options=so, storage_attempts=2)
    assert proxy.fired.is_set() and list(report["status"]) == ["done"], report[["status", "error"]]
    assert outputs(wd, so) == {base: outputs(ref)[base]}


# -- listing, and a dead endpoint -------------------------------------------------------------------


@pytest.mark.parametrize("what", ["input", "archive", "work_dir"])
def test_outage_while_listing_is_one_line_and_exit_2(what, s3_input, so, proxy, shards, tmp_path, capsys):
    """Input prefix, input archive (its HEAD fails: fs.isfile would answer "no such file")
    and work_dir: one line naming the URL, exit 2, before any work."""
    files, _ = shards
    inp = {"input": f"s3://{s3_input}/in/", "archive": f"s3://{s3_input}/in/00000.tar",
           "work_dir": files["00000.tar"]}[what]  # fmt: skip
    wd = f"s3://{s3_input}/work-list" if what == "work_dir" else str(tmp_path / "wd")
    shown = wd if what == "work_dir" else inp
    if what == "archive":
        proxy.fail_on(rf"^HEAD /{s3_input}/in/00000[.]tar$", mode="reset")
    else:
        proxy.fail("reset")
    rc = cli_main(["extract", inp, wd, "--model-path", "dct", "--client", "sync", "--no-progress",
                   "--storage-attempts", "2", "--storage-options", json.dumps(so)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(rf"dedupdask: error: cannot (list|create) {shown}: storage unreachable or failing "
                    r"after 2 attempts", err), err


def test_work_dir_listing_at_a_bucket_root_does_not_look_empty(s3_input, so, proxy):
    """s3fs's exists() answers False for a bucket it cannot reach: every archive would look
    not done."""
    proxy.fail("reset")
    with pytest.raises(remote.StorageError, match=rf"cannot list s3://{s3_input}: storage unreachable"):
        WorkDir(f"s3://{s3_input}", so, attempts=2).done_names()


@pytest.fixture
def black_hole(so, proxy, monkeypatch):
    """A server that accepts and never answers; 1 s client timeouts, the real backoff."""
    monkeypatch.setattr(remote, "BACKOFF", 0.5)
    proxy.fail("hang")
    return {**so, "config_kwargs": {"connect_timeout": 1, "read_timeout": 1}}


@pytest.mark.timeout(60)
def test_one_retry_layer_on_a_black_hole(black_hole, proxy):
    """Each attempt is one request that times out: botocore's and s3fs's own retries are off
    (stacked, 3 attempts were 3 x 5 x 5 requests and took minutes)."""
    t0 = time.monotonic()
    with pytest.raises(remote.StorageError, match=r"after 3 attempts .*ReadTimeoutError"):
        list_sources("s3://nowhere/in/", black_hole, attempts=3)
    assert len(proxy.requests) == 3, [r.line for r in proxy.requests]
    assert time.monotonic() - t0 < 3 * 1 + 0.5 + 1 + 5


@pytest.mark.timeout(60)
def test_no_attempt_starts_after_the_deadline(black_hole, proxy):
    t0 = time.monotonic()
    with pytest.raises(remote.StorageError, match=r"after 2 attempts"):
        # attempt 1 ends at ~1 s, attempt 2 at ~2.5 s; a 3rd would start past the deadline
        list_sources("s3://nowhere/in/", black_hole, attempts=10, deadline=3)
    elapsed = time.monotonic() - t0
    assert len(proxy.requests) == 2 and elapsed < 3 + 1 + 2, (elapsed, [r.line for r in proxy.requests])


@pytest.mark.timeout(60)
def test_refused_endpoint_fails_within_the_backoff(so, proxy, monkeypatch):
    """Nothing listening: 3 attempts cost the 0.5 s + 1 s backoff, not minutes of stacked retries."""
    monkeypatch.setattr(remote, "BACKOFF", 0.5)
    proxy.fail("refuse")
    t0 = time.monotonic()
    with pytest.raises(remote.StorageError, match=r"after 3 attempts"):
        list_sources("s3://nowhere/in/", so, attempts=3)
    assert time.monotonic() - t0 < 1.5 + 3
