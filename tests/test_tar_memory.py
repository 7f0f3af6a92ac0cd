"""A worker's memory does not grow with the number of members of an archive (issue 22, 3).

``tarfile`` keeps every header it reads in ``TarFile.members``, and the skipped list was a
Python tuple per member until the end of the archive: a tar of 200,000 one-byte members plus
10 images peaked at 449 MB against 255 MB for the 10 images alone. Measured here without
timing or machine dependence: the headers ``tarfile`` holds while the stream is read, and
the Python allocations (``tracemalloc``) of extracting a tar of 2,000 vs 30,000 members.
``benchmarks/tar_members_memory.py`` measures the peak RSS of a worker process.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc

import pandas as pd
import pytest
from conftest import jpeg_bytes
from s3server import bucket, s3_env, s3_server  # noqa: F401

from dedupdask.archives import iter_members
from dedupdask.config import RunConfig
from dedupdask.partition import ArchiveTask, process_archive
from dedupdask.sources import ArchiveSource
from dedupdask.store import SKIPPED_COLUMNS, WorkDir


def tiny_members_tar(path, n_tiny: int, n_images: int = 3) -> None:
    """``n_images`` JPEGs, then ``n_tiny`` one-byte non-image members (all skipped)."""
    with tarfile.open(path, "w") as tf:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))

        for i in range(n_images):
            add(f"img{i:02d}.jpg", jpeg_bytes(i))
        for i in range(n_tiny):
            add(f"t{i:07d}.bin", b"x")


def test_tar_stream_keeps_no_headers(tmp_path, monkeypatch):
    tiny_members_tar(tmp_path / "a.tar", 3000)
    held = []
    real_next = tarfile.TarFile.next

    def next_and_count(self):
        ti = real_next(self)
        held.append(len(self.members))
        return ti

    monkeypatch.setattr(tarfile.TarFile, "next", next_and_count)
    src = ArchiveSource(url=str(tmp_path / "a.tar"), name="a.tar", kind="tar")
    got = sum(1 for _ in iter_members(src))
    assert got == 3003 and len(held) >= got
    assert max(held) <= 1, f"tarfile held {max(held)} headers at once"


def _traced_peak(tar: str, wd: str) -> tuple[int, pd.DataFrame]:
    """Peak Python allocations (bytes, beyond what was allocated before) of one archive."""
    WorkDir(wd).makedirs()  # the pipeline makes it before the tasks run
    task = ArchiveTask(ArchiveSource(url=tar, name="a.tar", kind="tar"), wd,
                       RunConfig(model_path="dct", progress=False))  # fmt: skip
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = process_archive(task)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, out


def test_extraction_memory_does_not_grow_with_members(tmp_path):
    """19,000 more skipped members cost less than 4 MB (the spool and copy buffers, whatever
    the count); they used to cost ~13 MB."""
    tiny_members_tar(tmp_path / "warm.tar", 10)
    _traced_peak(str(tmp_path / "warm.tar"), str(tmp_path / "warm"))  # imports, model cache
    peaks = {}
    for n in (1000, 20_000):
        tiny_members_tar(tmp_path / f"{n}.tar", n)
        wd = str(tmp_path / f"wd{n}")
        peaks[n], out = _traced_peak(str(tmp_path / f"{n}.tar"), wd)
        assert out["status"].tolist() == ["done"] and int(out["skipped"].iloc[0]) == n
        skipped = pd.read_csv(WorkDir(wd).file("a.tar", "skipped"))
        assert list(skipped.columns) == list(SKIPPED_COLUMNS) and len(skipped) == n
        assert skipped["member"].iloc[-1] == f"t{n - 1:07d}.bin"
        assert set(skipped["reason"]) == {"not_image"} and set(skipped["filesize"]) == {1}
    growth = (peaks[20_000] - peaks[1000]) / 2**20
    print(f"peak Python allocations: {peaks[1000] / 2**20:.1f} MB (1,000 members), "
          f"{peaks[20_000] / 2**20:.1f} MB (20,000)")  # fmt: skip
    assert growth < 4, f"peak Python memory grew by {growth:.1f} MB for 19,000 more members"


# -- the skipped list: same bytes as before, in bounded memory -------------------------------------
ROWS = [
    ("s3://b/a.tar/x.cls", "x.cls", "not_image", 1),
    ('/data/we,ird "dir"/a.tar/m,1.bin', 'm,1 "q".bin', "empty", 0),
    ("/d/a.tar/caf\u00e9/\u00f1.txt", "caf\u00e9/\u00f1.txt", "orphan_sidecar", 12),
    ("/d/a.tar/line\nbreak", "line\nbreak", "not_image", 3),
    ("/d/a.tar/ lead space", " lead space", "symlink", 0),
    ("", "", "dir", 0),
    ("/d/a.tar/\\u0007bell", "\\u0007bell", "extra_sidecar", 2**40),
]


def test_skipped_rows_are_what_pandas_wrote():
    from dedupdask.store import SkippedRows

    for rows in (ROWS, [], ROWS * 5000):
        with SkippedRows(max_memory=4096) as spool:  # 35,000 rows: the spool goes to disk
            for r in rows:
                spool.append(*r)
            got = spool.open().read()
            assert len(spool) == len(rows)
        want = pd.DataFrame(rows, columns=list(SKIPPED_COLUMNS)).to_csv(index=False).encode()
        assert got == want


class _Failing(io.RawIOBase):
    """A readable file of ``size`` bytes whose reading fails after ``ok`` bytes."""

    def __init__(self, ok: int, size: int) -> None:
        self.ok, self.size, self.left = ok, size, ok

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == io.SEEK_END:
            return self.size
        self.left = self.ok
        return pos

    def readinto(self, b) -> int:
        if self.left <= 0:
            raise ValueError("source broke")
        n = min(len(b), self.left)
        b[:n] = b"z" * n
        self.left -= n
        return n


@pytest.mark.parametrize("url", ["local", "memory://skipped-stream"])
def test_write_bytes_streams_a_file_or_nothing(tmp_path, url):
    wd = WorkDir(str(tmp_path) if url == "local" else url)
    wd.makedirs()
    data = bytes(range(256)) * 20_000  # 5 MB: several copy blocks
    f = io.BytesIO(data)
    f.seek(12345)  # copied from the start whatever the position
    wd.write_bytes(wd.join("a.csv"), f)
    assert wd.read_bytes(wd.join("a.csv")) == data
    with pytest.raises(ValueError, match="source broke"):
        wd.write_bytes(wd.join("b.csv"), _Failing(3 * 2**20, 4 * 2**20))
    assert not wd.fs.exists(wd.join("b.csv"))
    if url == "local":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]  # no temporary left


def test_skipped_list_streamed_to_s3(s3_server, s3_env, bucket, tmp_path):  # noqa: F811
    """On an object store the list is uploaded in parts (multipart past the block size) and a
    failed upload leaves no object; the file is the one a local work_dir gets."""
    so = {"default_block_size": 5 * 2**20}
    wd = WorkDir(f"s3://{bucket}/wd", so)
    data = bytes(range(256)) * 48_000  # 12 MB: three parts
    wd.write_bytes(wd.join("big.csv"), io.BytesIO(data))
    assert wd.read_bytes(wd.join("big.csv")) == data
    with pytest.raises(ValueError, match="source broke"):
        wd.write_bytes(wd.join("broken.csv"), _Failing(7 * 2**20, 12 * 2**20))
    assert not wd.fs.exists(wd.join("broken.csv"))

    tiny_members_tar(tmp_path / "a.tar", 500)
    cfg = RunConfig(model_path="dct", progress=False)
    src = ArchiveSource(url=str(tmp_path / "a.tar"), name="a.tar", kind="tar")
    for work_dir in (f"s3://{bucket}/run", str(tmp_path / "run")):
        WorkDir(work_dir, so if work_dir.startswith("s3") else None).makedirs()
        out = process_archive(ArchiveTask(src, work_dir, cfg, so if work_dir.startswith("s3") else {}))
        assert out["status"].tolist() == ["done"]
    remote = WorkDir(f"s3://{bucket}/run", so)
    local = WorkDir(str(tmp_path / "run"))
    got = remote.read_bytes(remote.file("a.tar", "skipped"))
    assert got.count(b"\n") == 501
    assert got == local.read_bytes(local.file("a.tar", "skipped"))
