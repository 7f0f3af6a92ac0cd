"""results/ as partitioned Parquet: the layout written, lazy reading, the one-file layout of
earlier versions, damaged partitions (#17 point 3)."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

import dedupdask as ddk
from dedupdask import tables
from dedupdask.analysis import build
from dedupdask.config import RunConfig
from dedupdask.store import WorkDir, WorkDirError

TABLES = ("similarity", "outliers", "components", "stats", "invalid", "issues")
ROWS = 7  # rows per partition in these tests: every table of the sample shards has several


@pytest.fixture(scope="module")
def small_parts(sample_shards, tmp_path_factory):
    """The sample shards extracted (DCT model) and analysed with 7 rows per partition."""
    wd = str(tmp_path_factory.mktemp("tables") / "wd")
    ddk.extract(sample_shards.root, wd, model_path="dct", client="sync", progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tables, "ROWS_PER_PART", ROWS)
        res = build(wd, config=RunConfig(run_mode=2, progress=False))
    return wd, res


def _run(wd: str) -> dict:
    return json.load(open(os.path.join(wd, "results", "run.json")))


def test_every_table_is_a_folder_of_bounded_parts(small_parts):
    wd, res = small_parts
    layouts = _run(wd)["tables"]
    assert set(layouts) == {*TABLES, "candidates"}
    for name in (*TABLES, "candidates"):
        entry = layouts[name]
        parts = sorted(os.listdir(os.path.join(wd, "results", name)))
        assert parts == sorted(f"part.{i}.parquet" for i in range(len(entry["part_rows"])))
        assert sum(entry["part_rows"]) == entry["rows"] and max(entry["part_rows"]) <= ROWS
        got = [len(pd.read_parquet(os.path.join(wd, "results", name, f"part.{i}.parquet")))
               for i in range(len(parts))]  # fmt: skip
        assert got == entry["part_rows"], name
        assert not os.path.exists(os.path.join(wd, "results", f"{name}.parquet"))
    assert layouts["components"]["rows"] == len(res.components.compute()) > 2 * ROWS
    back = ddk.load(wd)
    for name in ("similarity", "outliers", "components", "invalid", "issues", "candidates"):
        pd.testing.assert_frame_equal(getattr(back, name).compute(), getattr(res, name).compute(), obj=name)


def test_a_rebuild_leaves_no_stale_part(small_parts, tmp_path):
    """A table with fewer partitions than the run before keeps none of the old files."""
    wd = str(tmp_path / "wd")
    shutil.copytree(small_parts[0], wd)
    build(wd, config=RunConfig(run_mode=2, progress=False))  # 1M rows per part: one file each
    for name in (*TABLES, "candidates"):
        assert os.listdir(os.path.join(wd, "results", name)) == ["part.0.parquet"], name
    assert _run(wd)["tables"]["components"]["part_rows"] == [_run(wd)["tables"]["components"]["rows"]]


def _to_one_file_layout(wd: str) -> None:
    """Rewrite results/ as the previous version wrote it: results/<name>.parquet, no "tables"."""
    run = _run(wd)
    for name, entry in run.pop("tables").items():
        folder = os.path.join(wd, "results", name)
        parts = [pd.read_parquet(os.path.join(folder, f"part.{i}.parquet"))
                 for i in range(len(entry["part_rows"]))]  # fmt: skip
        pd.concat(parts, ignore_index=True).to_parquet(os.path.join(wd, "results", f"{name}.parquet"), index=False)
        shutil.rmtree(folder)
    json.dump(run, open(os.path.join(wd, "results", "run.json"), "w"))


def test_work_dirs_of_the_one_file_layout_still_load(small_parts, tmp_path):
    wd = str(tmp_path / "old")
    shutil.copytree(small_parts[0], wd)
    _to_one_file_layout(wd)
    old, new = ddk.load(wd), ddk.load(small_parts[0])
    for name in ("similarity", "outliers", "components", "invalid", "issues"):
        pd.testing.assert_frame_equal(getattr(old, name).compute(), getattr(new, name).compute(), obj=name)
    # a damaged file of that layout is still named
    with open(os.path.join(wd, "results", "components.parquet"), "wb") as f:
        f.write(b"PAR1 garbage")
    with pytest.raises(WorkDirError, match=r"results/components\.parquet: not a readable Parquet"):
        ddk.load(wd)


def test_load_reads_only_the_first_file_of_a_table(tmp_path):
    """1000 partitions: opening the table reads part.0's footer only; the others are read
    (and a damaged or missing one is named) when computed."""
    wd = WorkDir(str(tmp_path))
    df = pd.DataFrame({"index": range(2000), "component_id": range(2000), "component_size": 1})
    layout = tables.write_table(wd, "components", df, rows_per_part=2)
    assert len(layout["part_rows"]) == 1000
    for i in range(2, 1000):  # gone: opening must not need them
        os.remove(tables.part_path(wd, "components", i))
    with open(tables.part_path(wd, "components", 1), "wb") as f:
        f.write(b"not parquet")
    t = tables.open_table(wd, "components", layout, required=("index",))
    assert t.npartitions == 1000 and t.divisions[:3] == (0, 2, 4)
    assert t.head(2)["index"].tolist() == [0, 1]  # the first partition only
    with pytest.raises(WorkDirError, match=r"components/part\.1\.parquet: not a readable Parquet"):
        t.partitions[1].compute()
    with pytest.raises(WorkDirError, match=r"components/part\.2\.parquet: is missing"):
        t.partitions[2].compute()
    # 400M images in 40,000 files: opening and head() still touch part.0 only
    big = {"layout": "parts", "rows": 80_000, "part_rows": [2] * 40_000}
    t = tables.open_table(wd, "components", big, required=("index",))
    assert t.npartitions == 40_000 and t.head(2)["index"].tolist() == [0, 1]


def test_a_part_with_other_rows_than_recorded_is_named(tmp_path):
    wd = WorkDir(str(tmp_path))
    layout = tables.write_table(wd, "outliers", pd.DataFrame({"index": range(6)}), rows_per_part=3)
    pd.DataFrame({"index": [9]}).to_parquet(tables.part_path(wd, "outliers", 1), index=False)
    t = tables.open_table(wd, "outliers", layout, required=("index",))
    with pytest.raises(WorkDirError, match=r"outliers/part\.1\.parquet: has 1 rows, run.json records 3"):
        t.compute()


def test_build_and_load_give_the_same_dask_tables(small_parts):
    """One type per table whatever the path: build's result reads back results/ as load does."""
    import dask.dataframe as dd

    wd, res = small_parts
    back = ddk.load(wd)
    for name in ("similarity", "outliers", "components", "invalid", "issues"):
        a, b = getattr(res, name), getattr(back, name)
        assert isinstance(a, dd.DataFrame) and isinstance(b, dd.DataFrame), name
        assert a.npartitions == b.npartitions == len(_run(wd)["tables"][name]["part_rows"]), name
        assert a.divisions == b.divisions
    assert res.components.npartitions > 1 and res.components.known_divisions
    unwritten = build(wd, config=RunConfig(run_mode=2, progress=False), write=False)
    assert isinstance(unwritten.similarity, dd.DataFrame)
    pd.testing.assert_frame_equal(unwritten.similarity.compute(), res.similarity.compute())


def test_summary_reads_the_recorded_counts(small_parts, tmp_path):
    """summary() needs no table: with every part file gone it still answers from run.json."""
    wd = str(tmp_path / "wd")
    shutil.copytree(small_parts[0], wd)
    res = ddk.load(wd)
    expected = res.summary()
    comps = res.components.compute()
    sizes = comps.drop_duplicates("component_id")["component_size"]
    assert expected["images"] == len(comps) and expected["removable"] == int((sizes[sizes > 1] - 1).sum())
    assert expected["duplicate_groups"] == int((sizes > 1).sum()) > 0
    for name in TABLES:
        for part in set(os.listdir(os.path.join(wd, "results", name))) - {"part.0.parquet"}:
            os.remove(os.path.join(wd, "results", name, part))
    assert ddk.load(wd).summary() == expected


def _previous_csvs(res) -> dict[str, bytes]:
    """The CSVs as the previous version wrote them: from whole pandas tables in this process."""
    from dedupdask.analyses import BAD_CSV_COLUMNS, ISSUE_COLUMNS, STATS_CSV_COLUMNS

    def csv(df: pd.DataFrame) -> bytes:
        return df.to_csv(index=False).encode()

    files = res.files.compute()
    valid = files[files["index"].notna()].sort_values("index", kind="stable").reset_index(drop=True)
    sim, out, comp, inv, iss = (getattr(res, n).compute() for n in ("similarity", "outliers", "components",
                                                                      "invalid", "issues"))  # fmt: skip
    both = pd.concat(
        [pd.DataFrame({"from": sim["from"], "to": sim["to"], "distance": sim["similarity"]}),
         pd.DataFrame({"from": sim["to"], "to": sim["from"], "distance": sim["similarity"]})],
        ignore_index=True,
    ).sort_values(["distance", "from", "to"], ascending=[False, True, True], kind="stable")  # fmt: skip
    out = out.iloc[::-1]
    bad = pd.DataFrame({"index": range(len(inv)), "filename": inv["filename"], "error_code": inv["error_code"],
                        "filesize": inv["file_size"]})  # fmt: skip
    stats = res.stats.compute().sort_values("index", kind="stable")
    return {
        "atrain_features.dat.csv": csv(valid.loc[:, ["index", "filename"]]),
        "similarity.csv": csv(both),
        "outliers.csv": csv(pd.DataFrame({"from": out["index"], "to": out["nearest"], "distance": out["similarity"]})),
        "connected_components.csv": csv(comp.rename(columns={"index": "__id"})),
        "atrain_stats.csv": csv(stats.loc[:, list(STATS_CSV_COLUMNS)]),
        "atrain_features.bad.csv": csv(bad.loc[:, list(BAD_CSV_COLUMNS)]),
        "image_issues.csv": csv(iss.loc[:, list(ISSUE_COLUMNS)]),
    }


def test_csvs_written_by_partition_are_the_previous_bytes(small_parts):
    """Every CSV joined from 7-row partitions (similarity.csv sorted across them) is byte for
    byte what the previous version wrote from whole pandas tables; no part is left behind."""
    wd, res = small_parts
    about = _run(wd)["csv"]["files"]
    assert about["similarity.csv"]["parts"] > 1 and about["connected_components.csv"]["parts"] > 2
    sim = pd.read_csv(os.path.join(wd, "similarity.csv"))
    assert sim["distance"].nunique() < len(sim) // 2  # ties: the order across partitions is tested
    for name, data in _previous_csvs(res).items():
        got = open(os.path.join(wd, name), "rb").read()
        assert got == data, name
        assert about[name]["bytes"] == len(data), name
    assert not os.path.exists(os.path.join(wd, "results", ".csv-parts"))


def test_write_csv_off_leaves_only_the_parquet_tables(small_parts, tmp_path):
    wd = str(tmp_path / "wd")
    shutil.copytree(small_parts[0], wd)
    res = ddk.build(wd, write_csv=False, client="sync", progress=False)
    run = _run(wd)
    assert run["csv"] == {"written": False} and run["parameters"]["write_csv"] is False
    left = [n for n in ("similarity.csv", "connected_components.csv", "image_issues.csv", "atrain_stats.csv",
                        "outliers.csv", "atrain_features.bad.csv", "atrain_features.dat.csv")
            if os.path.exists(os.path.join(wd, n))]  # fmt: skip
    assert left == []  # the earlier run's are gone too
    assert len(res.components) == run["tables"]["components"]["rows"] > 0


@pytest.mark.slow  # ~13 s: a cluster; test_scheduler sends an analysis to the workers in the default run
def test_the_workers_path_writes_components_and_stats_from_the_workers(small_parts, tmp_path):
    """Past max_client_memory (the call's LocalCluster): components and stats go from the
    workers to results/ partition by partition (stats: one part per archive), and every
    table, count and CSV equals the in-process run's."""
    wd = str(tmp_path / "wd")
    shutil.copytree(small_parts[0], wd)
    ref = ddk.load(small_parts[0])
    ref_csv = {n: open(os.path.join(small_parts[0], n), "rb").read() for n in _run(small_parts[0])["csv"]["files"]}
    res = ddk.build(wd, progress=False, max_client_memory=1, dashboard_address=None)
    run = _run(wd)
    assert run["analysed_on"] == "workers"
    assert run["tables"]["stats"]["part_rows"] == [a["n_valid"] for a in run["archives"]]
    assert run["tables"]["components"]["rows"] == run["counts"]["images"]
    assert run["counts"] == ref.run["counts"]
    for name in ("similarity", "outliers", "components", "invalid", "issues"):
        pd.testing.assert_frame_equal(getattr(res, name).compute(), getattr(ref, name).compute(), obj=name)
    pd.testing.assert_frame_equal(ddk.load(wd).components.compute(), ref.components.compute())
    for name, data in ref_csv.items():
        assert open(os.path.join(wd, name), "rb").read() == data, name
