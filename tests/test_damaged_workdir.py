"""Damaged work_dir files: one line naming the file and what is wrong, exit code 2.

Every file that run_mode=2 (``dedupdask build``) and ``ddk.load`` (``dedupdask gallery``) read
is damaged in each way a careless operator, a bad sync tool or a full disk could: a JSON value
of the wrong type, invalid JSON, a missing key, a count that is not a non-negative integer or
disagrees with the files, a truncated vector file, a Parquet file that is garbage, truncated,
lacks columns or holds the wrong types. The command line must print exactly one line on
stderr (naming the file), exit with 2 and never show a traceback; the Python API raises
:class:`~dedupdask.store.WorkDirError` with the same message.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dedupdask as ddk
from dedupdask.analysis import build
from dedupdask.config import RunConfig
from dedupdask.store import WorkDirError

NAME = "00000.tar"  # the damaged archive (the first of the sample shards)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clean(sample_shards, tmp_path_factory):
    """An extracted and analysed work_dir (DCT model: no weights to load)."""
    wd = str(tmp_path_factory.mktemp("clean") / "wd")
    report = ddk.extract(sample_shards.root, wd, model_path="dct", client="sync", progress=False)
    assert (report["status"] == "done").all()
    build(wd, config=RunConfig(run_mode=2, progress=False))
    assert NAME + "done.json" in os.listdir(wd)
    return wd


def _path(wd: str, suffix: str) -> str:
    return os.path.join(wd, suffix if suffix.startswith("results/") else NAME + suffix)


def _write(wd: str, suffix: str, data: bytes) -> None:
    with open(_path(wd, suffix), "wb") as f:
        f.write(data)


def _edit_done(change):
    def damage(wd: str) -> None:
        done = json.load(open(_path(wd, "done.json")))
        change(done)
        _write(wd, "done.json", json.dumps(done).encode())

    return damage


def _edit_parquet(change, suffix: str = "features.parquet"):
    def damage(wd: str) -> None:
        table = pq.read_table(_path(wd, suffix))
        buf = io.BytesIO()
        pq.write_table(change(table), buf)
        _write(wd, suffix, buf.getvalue())

    return damage


def _set_column(name: str, values):
    def change(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(name)
        return t.set_column(i, name, values(t))

    return change


def _truncate(suffix: str, keep: float = 0.5):
    def damage(wd: str) -> None:
        data = open(_path(wd, suffix), "rb").read()
        _write(wd, suffix, data[: int(len(data) * keep)])

    return damage


def _index_values(shift: int):
    """The Parquet's local index, valid rows renumbered from ``shift``."""

    def values(t: pa.Table):
        n = 0
        out = []
        for v in t.column("index").to_pylist():
            out.append(None if v is None else n + shift)
            n += v is not None
        return pa.array(out, pa.int64())

    return values


def _one_valid_row_invalid(t: pa.Table):
    vals = t.column("index").to_pylist()
    vals[vals.index(0)] = None
    return pa.array(vals, pa.int64())


# (case id, damaged file, damage, words the message must contain)
ARCHIVE_CASES = [
    ("done-array", "done.json", lambda wd: _write(wd, "done.json", b"[]"), "array"),
    ("done-null", "done.json", lambda wd: _write(wd, "done.json", b"null"), "null"),
    ("done-string", "done.json", lambda wd: _write(wd, "done.json", b'"done"'), "string"),
    ("done-number", "done.json", lambda wd: _write(wd, "done.json", b"17"), "number"),
    ("done-invalid-json", "done.json", lambda wd: _write(wd, "done.json", b'{"counts": '), "not valid JSON"),
    ("done-empty", "done.json", lambda wd: _write(wd, "done.json", b""), "not valid JSON"),
    ("done-not-utf8", "done.json", lambda wd: _write(wd, "done.json", b"\xff\xfe\x00{"), "not valid JSON"),
    ("done-no-counts", "done.json", _edit_done(lambda d: d.pop("counts")), "counts"),
    ("done-no-d", "done.json", _edit_done(lambda d: d.pop("d")), "'d'"),
    ("done-no-url", "done.json", _edit_done(lambda d: d.pop("url")), "url"),
    ("done-counts-array", "done.json", _edit_done(lambda d: d.update(counts=[1, 2])), "counts"),
    ("done-valid-missing", "done.json", _edit_done(lambda d: d["counts"].pop("valid")), "valid"),
    ("done-valid-string", "done.json", _edit_done(lambda d: d["counts"].update(valid="23")), "counts.valid"),
    ("done-valid-float", "done.json", _edit_done(lambda d: d["counts"].update(valid=1.5)), "counts.valid"),
    ("done-valid-bool", "done.json", _edit_done(lambda d: d["counts"].update(valid=True)), "counts.valid"),
    ("done-valid-negative", "done.json", _edit_done(lambda d: d["counts"].update(valid=-1)), "counts.valid"),
    ("done-images-null", "done.json", _edit_done(lambda d: d["counts"].update(images=None)), "counts.images"),
    ("done-valid-over-images", "done.json",
     _edit_done(lambda d: d["counts"].update(valid=d["counts"]["images"] + 1)), "exceeds"),
    ("done-d-string", "done.json", _edit_done(lambda d: d.update(d="63")), "d is"),
    ("done-d-zero", "done.json", _edit_done(lambda d: d.update(d=0)), "d is"),
    ("done-status", "done.json", _edit_done(lambda d: d.update(status="finished")), "status"),
    ("done-threshold", "done.json", _edit_done(lambda d: d.update(model_threshold="high")), "model_threshold"),
    # a count that is an integer but wrong: the vector file's size disagrees with it
    ("done-valid-off-by-one", "features.dat",
     _edit_done(lambda d: d["counts"].update(valid=d["counts"]["valid"] - 1)), "bytes"),
    ("dat-truncated", "features.dat", _truncate("features.dat"), "bytes"),
    ("dat-missing", "features.dat", lambda wd: os.remove(_path(wd, "features.dat")), "missing"),
    ("dat-longer", "features.dat", lambda wd: open(_path(wd, "features.dat"), "ab").write(b"\0" * 7), "bytes"),
    ("dct-truncated", "dct.dat", _truncate("dct.dat", 0.9), "bytes"),
    ("parquet-garbage", "features.parquet",
     lambda wd: _write(wd, "features.parquet", b"this is not parquet" * 50), "Parquet"),
    ("parquet-empty", "features.parquet", lambda wd: _write(wd, "features.parquet", b""), "Parquet"),
    ("parquet-truncated", "features.parquet", _truncate("features.parquet", 0.6), "Parquet"),
    ("parquet-no-index", "features.parquet", _edit_parquet(lambda t: t.drop_columns(["index"])), "index"),
    ("parquet-no-filename-md5", "features.parquet",
     _edit_parquet(lambda t: t.drop_columns(["filename", "md5"])), "filename, md5"),
    ("parquet-index-strings", "features.parquet",
     _edit_parquet(_set_column("index", lambda t: pa.array(["x"] * t.num_rows))), "index"),
    ("parquet-width-strings", "features.parquet",
     _edit_parquet(_set_column("width", lambda t: pa.array(["wide"] * t.num_rows))), "width"),
    ("parquet-index-renumbered", "features.parquet",
     _edit_parquet(_set_column("index", _index_values(shift=5))), "index"),
    ("parquet-fewer-valid-rows", "features.parquet",
     _edit_parquet(_set_column("index", _one_valid_row_invalid)), "valid rows"),
]

# Files only ddk.load (``dedupdask gallery``) reads: damaged after a finished analysis.
RESULTS_CASES = [
    ("run-json-array", "results/run.json", lambda wd: _write(wd, "results/run.json", b"[]"), "JSON object"),
    ("run-json-invalid", "results/run.json", lambda wd: _write(wd, "results/run.json", b"{"), "not valid JSON"),
    ("run-json-archives", "results/run.json",
     lambda wd: _write(wd, "results/run.json", json.dumps({"archives": [{"name": 1}]}).encode()), "archives"),
    ("run-json-archives-type", "results/run.json",
     lambda wd: _write(wd, "results/run.json", json.dumps({"archives": "all"}).encode()), "archives"),
    ("similarity-garbage", "results/similarity/part.0.parquet",
     lambda wd: _write(wd, "results/similarity/part.0.parquet", b"PAR1 garbage"), "Parquet"),
    ("outliers-no-columns", "results/outliers/part.0.parquet",
     _edit_parquet(lambda t: t.drop_columns(["nearest"]), "results/outliers/part.0.parquet"), "nearest"),
    ("components-truncated", "results/components/part.0.parquet",
     _truncate("results/components/part.0.parquet"), "Parquet"),
    # per-archive files are checked when loading too
    ("load-done-array", "done.json", lambda wd: _write(wd, "done.json", b"[]"), "array"),
]


def _damaged(clean: str, tmp_path, damage) -> str:
    wd = str(tmp_path / "wd")
    shutil.copytree(clean, wd)
    damage(wd)
    return wd


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "dedupdask", *args], capture_output=True, env=env, timeout=300)
    # bytes, decoded here: text mode would turn a progress bar's carriage returns into newlines
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def _visible_lines(stderr: str) -> list[str]:
    """What a terminal shows: per line, the text after the last carriage return (a progress
    bar that is cleared leaves nothing)."""
    return [seen for line in stderr.split("\n") if (seen := line.rsplit("\r", 1)[-1]).strip()]


def _check_cli(proc: subprocess.CompletedProcess, path: str, words: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = _visible_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    line = lines[0]
    assert line.startswith("dedupdask: error: ") and path in line and words in line, line
    return line


def _check_api(excinfo: pytest.ExceptionInfo, path: str, words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(path + ": ") and words in message, message
    return message


# Cases whose command line runs by default (each costs a Python start-up with dask, pandas
# and pyarrow, ~3 s); the others run with the slow cases. Every case runs through the API.
CLI_DEFAULT = {
    "done-array", "done-null", "done-string", "done-invalid-json", "done-valid-string",
    "done-valid-float", "dat-truncated", "dct-truncated", "parquet-garbage",
    "parquet-no-filename-md5", "parquet-index-renumbered",
    "run-json-array", "similarity-garbage", "load-done-array",
}  # fmt: skip


def _params(cases, cli: bool) -> list:
    marks = lambda c: [] if not cli or c[0] in CLI_DEFAULT else [pytest.mark.slow]  # noqa: E731
    return [pytest.param(*c, id=c[0], marks=marks(c)) for c in cases]


def _api_build(wd: str, path: str, words: str) -> str:
    with pytest.raises(WorkDirError) as excinfo:
        ddk.run(None, wd, run_mode=2, progress=False)
    assert excinfo.value.url == path
    return _check_api(excinfo, path, words)


def _api_load(wd: str, path: str, words: str) -> str:
    with pytest.raises(WorkDirError) as excinfo:
        ddk.load(wd)
    return _check_api(excinfo, path, words)


@pytest.mark.parametrize("case,suffix,damage,words", _params(ARCHIVE_CASES, cli=False))
def test_build_names_the_damaged_file(clean, tmp_path, case, suffix, damage, words):
    wd = _damaged(clean, tmp_path, damage)
    message = _api_build(wd, _path(wd, suffix), words)
    if suffix != "done.json":  # the way out names the archive's done.json
        assert f"remove {_path(wd, 'done.json')} and rerun the extraction" in message


@pytest.mark.parametrize("case,suffix,damage,words", _params(ARCHIVE_CASES, cli=True))
def test_cli_build_names_the_damaged_file(clean, tmp_path, case, suffix, damage, words):
    wd = _damaged(clean, tmp_path, damage)
    path = _path(wd, suffix)
    line = _check_cli(_cli("build", wd), path, words)
    assert line == f"dedupdask: error: {_api_build(wd, path, words)}"


@pytest.mark.parametrize("case,suffix,damage,words", _params(RESULTS_CASES, cli=False))
def test_load_names_the_damaged_file(clean, tmp_path, case, suffix, damage, words):
    wd = _damaged(clean, tmp_path, damage)
    _api_load(wd, _path(wd, suffix), words)


@pytest.mark.parametrize("case,suffix,damage,words", _params(RESULTS_CASES, cli=True))
def test_cli_gallery_names_the_damaged_file(clean, tmp_path, case, suffix, damage, words):
    wd = _damaged(clean, tmp_path, damage)
    path = _path(wd, suffix)
    line = _check_cli(_cli("gallery", wd, str(tmp_path / "pages"), "--kind", "duplicates"), path, words)
    assert line == f"dedupdask: error: {_api_load(wd, path, words)}"


def test_error_pickles():
    """The error raised on a Dask worker process reaches the caller intact."""
    import pickle

    err = WorkDirError("/w/a.tarfeatures.parquet", "not a readable Parquet file (x)")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is WorkDirError and str(back) == str(err) and back.url == err.url
    assert ddk.WorkDirError is WorkDirError and issubclass(WorkDirError, ValueError)


def test_files_not_read_by_the_analysis_may_be_damaged(clean, tmp_path):
    """failed.json only counts by its presence; the per-archive CSVs are for other tools."""

    def damage(wd: str) -> None:
        for suffix in ("features.dat.csv", "features.bad.csv", "skipped.csv"):
            _write(wd, suffix, b"\xff garbage, not csv\n\"")
        _write(wd, "failed.json", b"[")  # stale, next to done.json: the archive is done

    wd = _damaged(clean, tmp_path, damage)
    res = ddk.run(None, wd, run_mode=2, progress=False)
    assert NAME in res.archives and res.failed == []


def test_rerun_of_extraction_redoes_an_archive_after_the_advice(clean, sample_shards, tmp_path):
    """The way out the message gives works: remove done.json, extract again, build."""
    wd = _damaged(clean, tmp_path, lambda wd: _write(wd, "features.parquet", b"garbage"))
    with pytest.raises(WorkDirError, match="remove .*done.json and rerun the extraction"):
        ddk.run(None, wd, run_mode=2, progress=False)
    os.remove(_path(wd, "done.json"))
    report = ddk.extract(sample_shards.root, wd, model_path="dct", client="sync", progress=False)
    assert report.set_index("name")["status"][NAME] == "done"
    res = ddk.run(None, wd, run_mode=2, progress=False)
    assert NAME in res.archives


def test_files_read_only_the_columns_a_computation_uses(clean, tmp_path):
    """Column projection reaches the Parquet reads: a column nobody asks for is not decoded
    (a caption that cannot be read as a string does not stop the hashes being read), and
    the columns asked for equal the full read's; the full read still names the bad column."""
    from dedupdask.collect import collect

    full = collect(clean, warn=False).files()[["index", "md5", "pixel_md5"]].compute(scheduler="sync")
    wd = _damaged(clean, tmp_path, _edit_parquet(_set_column("caption", lambda t: pa.array([[1]] * t.num_rows))))
    files = collect(wd, warn=False).files()
    got = files[["index", "md5", "pixel_md5"]].compute(scheduler="sync")
    assert got.reset_index(drop=True).equals(full.reset_index(drop=True))
    assert files["md5"].compute(scheduler="sync").reset_index(drop=True).equals(full["md5"].reset_index(drop=True))
    with pytest.raises(WorkDirError, match="column 'caption' cannot be read"):
        files.compute(scheduler="sync")
