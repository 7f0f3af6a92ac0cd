"""Removal lists (#18 point 1, #21 point 4): one table per source archive, keep rules,
samples with several images, issue types and outliers as reasons, the CLI."""

from __future__ import annotations

import glob
import os

import dask.dataframe as dd
import pandas as pd
import pytest
from cleandata import NAMES, make_clean_shards

import dedupdask as ddk
from dedupdask.cli import main
from dedupdask.removals import REMOVAL_COLUMNS, parse_issues


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("removals")
    shards = make_clean_shards(str(root / "shards"))
    res = ddk.run(shards.root, str(root / "wd"), model_path="dct", client="sync", progress=False)
    return shards, res


def _by_key(rm: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["key"]: r for _, r in rm.iterrows()}


def test_one_partition_per_archive_with_columns(run):
    shards, res = run
    rm = res.removals()
    assert rm.npartitions == len(res.archives) == 3
    assert tuple(rm.columns) == REMOVAL_COLUMNS
    for i, name in enumerate(res.archives):
        part = rm.partitions[i].compute()
        url = shards.paths[{"00000.tar": "a", "00001.zip": "b", "sub__00002.tgz": "c"}[name]]
        assert (part["archive"] == url).all()
    got = _by_key(rm.compute())
    # default: largest resolution, then largest file, then first seen
    assert set(got) == {"a001", "a_broken", "b_copy0", "c_copy2", "c_copy2b"}
    assert got["a_broken"]["reason"] == "invalid" and pd.isna(got["a_broken"]["component_id"])
    assert list(got["a_broken"]["members"]) == ["a_broken.jpg"]
    a001 = got["a001"]  # the larger copy in shard c is kept
    assert (a001["reason"], a001["kind"], a001["keep_archive"], a001["keep_key"]) == (
        "duplicate", "copy", shards.paths["c"], "c_big1")
    assert 0.99 < a001["similarity"] <= 1.0
    b = got["b_copy0"]  # same bytes: a tie, the first seen (shard a) is kept
    assert (b["kind"], b["keep_archive"], b["keep_key"], b["similarity"]) == (
        "exact", shards.paths["a"], "a000", 1.0)
    assert got["c_copy2"]["component_id"] == got["c_copy2b"]["component_id"]


def test_sample_with_a_kept_image_stays(run):
    _, res = run
    dup = res.duplicates_to_remove()
    assert "a_multi" in set(dup["key"])  # its jpg is a copy of a003...
    assert "a_multi" not in set(res.removals().compute()["key"])  # ...its png is not


@pytest.mark.parametrize(
    "keep, kept",
    [
        ("first", {"a000", "a001", "a002", "a003"}),
        ("largest_resolution", {"a000", "c_big1", "a002", "a003"}),
        ("longest_caption", {"b_copy0", "a001", "c_copy2b", "a_multi"}),  # "two images" > "picture 3"
        (lambda row: row["index"], {"b_copy0", "c_big1", "c_copy2b", "a_multi"}),
    ],
)
def test_keep_rules_and_duplicates_to_remove_agree(run, keep, kept):
    _, res = run
    dup = res.duplicates_to_remove(keep=keep)
    keepers = set(res.files.compute().set_index("index").loc[dup["keeper_index"].unique(), "key"])
    assert keepers == kept
    rm = res.removals(keep=keep, invalid=False).compute()
    multi = {"a_multi"} if "a_multi" not in kept else set()
    assert set(rm["key"]) == set(dup["key"]) - multi
    assert set(rm["key"]) & kept == set()
    assert (rm["reason"] == "duplicate").all()


def test_keep_rules_are_validated(run):
    _, res = run
    with pytest.raises(ValueError, match="keep must be one of"):
        res.removals(keep="newest")
    with pytest.raises(TypeError, match="must return a number"):
        res.removals(keep=lambda row: "big").compute()


def test_issue_types_and_outliers_as_reasons(run):
    _, res = run
    got = _by_key(res.removals(remove_issues="low_information,odd_size").compute())
    assert got["a_blank"]["reason"] == "low_information"
    assert "a_blank" not in _by_key(res.removals().compute())
    out = res.removals(outliers=True).compute()
    flagged = set(res.files.compute().set_index("index").loc[res.outliers.compute()["index"], "key"])
    assert flagged <= set(out["key"])
    assert (out.set_index("key").loc[sorted(flagged), "reason"] == "outlier").all()
    with pytest.raises(ValueError, match="unknown issue type 'blury'"):
        parse_issues("blury")


def test_a_flagged_image_is_never_the_kept_one(run):
    _, res = run
    # drop a000 for an issue: its exact copy b_copy0 becomes the component's kept image
    issues = res.issues
    a000 = int(res.files.compute().set_index("key").loc["a000", "index"])
    first = issues.head(1)
    fake = pd.DataFrame([{**first.iloc[0].to_dict(), "index": a000, "issue": "dark"}]).astype(first.dtypes)
    res.issues = dd.concat([issues, dd.from_pandas(fake, npartitions=1)])
    try:
        got = _by_key(res.removals(remove_issues=["dark"]).compute())
    finally:
        res.issues = issues
    assert got["a000"]["reason"] == "dark" and "b_copy0" not in got


def test_write_removals_and_cli(run, tmp_path, capsys):
    shards, res = run
    out = tmp_path / "rm"
    summary = res.write_removals(str(out), keep="first")
    files = sorted(os.path.basename(p) for p in glob.glob(str(out / "*.parquet")))
    assert files == sorted(f"{n}.parquet" for n in res.archives)
    assert int(summary["samples"].sum()) == len(res.removals(keep="first").compute())
    back = pd.read_parquet(out / "00000.tar.parquet")
    assert list(back.columns) == list(REMOVAL_COLUMNS)
    assert list(back["members"].iloc[0]) == list(res.removals(keep="first").partitions[0].compute()["members"].iloc[0])
    cli_out = tmp_path / "cli"
    code = main(["removals", res.work_dir, str(cli_out), "--keep", "first",
                 "--remove-issues", "low_information,odd_size", "--client", "sync"])
    assert code == 0
    assert "a_blank" in set(pd.read_parquet(cli_out / "00000.tar.parquet")["key"])
    assert "samples" in capsys.readouterr().out
    assert main(["removals", res.work_dir, str(cli_out), "--remove-issues", "blury"]) == 2
    assert NAMES  # the shard layout the names come from


def test_tables_that_name_an_image_carry_archive_member_key(run, tmp_path):
    shards, res = run
    for r in (res, ddk.load(res.work_dir)):
        sim = r.similarity.compute()
        for sfx in ("_from", "_to"):
            assert (sim[f"archive{sfx}"] + "/" + sim[f"member{sfx}"] == sim[f"filename{sfx}"]).all()
            assert (sim[f"member{sfx}"].str.rsplit(".", n=1).str[0] == sim[f"key{sfx}"]).all()
        out = r.outliers.compute()
        assert (out["archive"] + "/" + out["member"] == out["filename"]).all()
        assert (out["archive_nearest"] + "/" + out["member_nearest"] == out["filename_nearest"]).all()
        assert r.invalid.compute()["key"].tolist() == ["a_broken"]
        assert {"archive", "member", "key"} <= set(r.stats.columns)
    sub = next(p for p in shards.paths.values() if "/sub/" in p)
    assert sub in set(res.similarity.compute()["archive_to"])  # a nested archive, split without guessing


def test_runs_written_before_the_name_columns_still_load(run, tmp_path):
    import shutil

    _, res = run
    wd = tmp_path / "old"
    shutil.copytree(res.work_dir, wd)
    for table, drop in (("similarity", ["archive_from", "key_to"]), ("outliers", ["key", "member_nearest"]),
                        ("invalid", ["key"])):  # fmt: skip
        path = wd / "results" / table / "part.0.parquet"
        pd.read_parquet(path).drop(columns=drop).to_parquet(path)
    old = ddk.load(str(wd))
    assert old.similarity.compute()["archive_from"].isna().all() and old.invalid.compute()["key"].isna().all()
    assert len(old.removals().compute()) == len(res.removals().compute())


def test_archive_removals_groups_the_members_of_each_sample():
    # a sample's rows need not be next to each other; it goes only when all its images go, with
    # its members in archive order; samples in the order they first appear
    import numpy as np

    from dedupdask.removals import ArchivePart, RemovalPlan, archive_removals

    members = ["s1.jpg", "s0.jpg", "s1.png", "s2.jpg", "s0.png", "s3.jpg", "s2.png"]
    files = pd.DataFrame({"key": [m.split(".")[0] for m in members], "member": members,
                          "index": pd.array([0, 1, 2, 3, 4, None, 5], dtype="Int64"),
                          "error_code": pd.array([None] * 5 + ["broken"] + [None], dtype="string")})  # fmt: skip
    comps = pd.DataFrame({"index": [0, 1, 2, 3, 4, 5], "component_id": [9, 9, 8, 8, 7, 7]})
    pairs = pd.DataFrame({"index": [0, 1, 2, 3, 4, 5], "kind_rank": [0, 0, 1, 1, 2, 2], "similarity": 0.9})
    flagged = pd.DataFrame({"index": pd.Series([], dtype="int64"), "reason": pd.Series([], dtype="string")})
    part = ArchivePart("a.tar", "/d/a.tar", 0, 6, comps, pairs, flagged)
    # kept: index 0 (s1.jpg) for component 9, 99 (another archive) for 8 and 7
    keepers = pd.DataFrame({"component_id": [9, 8, 7], "index": [0, 99, 99], "archive": ["/d/a.tar", "/d/b", "/d/b"],
                            "key": ["s1", "x", "x"]}).set_index("component_id")  # fmt: skip
    rm = archive_removals(files, part, keepers, RemovalPlan.make("first"))
    # s1: its jpg is kept -> stays; s0: both images duplicates; s2: both duplicates; s3: invalid
    assert rm["key"].tolist() == ["s0", "s2", "s3"]
    assert [list(m) for m in rm["members"]] == [["s0.jpg", "s0.png"], ["s2.jpg", "s2.png"], ["s3.jpg"]]
    assert rm["reason"].tolist() == ["duplicate", "duplicate", "invalid"]
    assert rm["component_id"].tolist()[:2] == [9, 8] and rm["kind"].tolist()[:2] == ["exact", "copy"]
    assert rm["component_id"].isna().tolist() == [False, False, True] and np.isnan(rm["similarity"].iloc[2])
