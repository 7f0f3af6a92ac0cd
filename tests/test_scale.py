"""run_mode=2 at scale (issue 17): collect, the k-means sample, the cluster path of build."""

from __future__ import annotations

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from dedupdask.collect import collect
from dedupdask.store import WorkDir, WorkDirError


def write_vectors(root, blocks: list[np.ndarray]) -> WorkDir:
    """A work_dir of ``.dat`` files and ``done.json`` only (what :func:`collect` reads)."""
    wd = WorkDir(str(root))
    wd.makedirs()
    for a, x in enumerate(blocks):
        name = f"{a:05d}.tar"
        np.ascontiguousarray(x, dtype="<f4").tofile(wd.file(name, "dat"))
        wd.write_json(wd.file(name, "done"), {
            "url": f"synthetic://{name}", "status": "done", "d": int(x.shape[1]),
            "model_id": "synthetic", "model_sha256": "0" * 64,
            "counts": {"valid": int(x.shape[0]), "images": int(x.shape[0])},
        })  # fmt: skip
    return wd


def test_collect_reads_done_files_concurrently(tmp_path, monkeypatch):
    """Every done.json in one ``fs.cat`` of a list (concurrent GETs on S3), not one GET after
    another; a file whose read failed in the group is read again alone, under the retry policy."""
    rng = np.random.default_rng(0)
    write_vectors(tmp_path, [rng.random((3, 4), dtype=np.float32) for _ in range(6)])
    calls: list[int] = []
    real = LocalFileSystem.cat
    flaky: set[str] = set()

    def cat(self, path, recursive=False, on_error="raise", **kw):
        out = real(self, path, recursive=recursive, on_error=on_error, **kw)
        if isinstance(path, list):
            calls.append(len(path))
            for p in out:
                if p.endswith("00002.tardone.json") and p not in flaky:
                    flaky.add(p)
                    out[p] = ConnectionResetError("connection reset by peer")
        return out

    def one_by_one(self, name):
        raise AssertionError("done.json read one at a time")

    monkeypatch.setattr(LocalFileSystem, "cat", cat)
    monkeypatch.setattr(WorkDir, "read_done", one_by_one)
    col = collect(str(tmp_path))
    assert calls == [6] and len(flaky) == 1
    assert [a.offset for a in col.archives] == [0, 3, 6, 9, 12, 15] and col.n == 18

    (tmp_path / "00004.tardone.json").write_text("{not json")
    with pytest.raises(WorkDirError, match="00004.tardone.json"):
        collect(str(tmp_path))


def test_kmeans_sample_grows_with_the_centroids(tmp_path):
    """Past what one task holds, the k-means sample keeps SAMPLE_PER_CENTROID rows per centroid
    (two levels of fit tasks) instead of being capped by the task budget; the graph is as good."""
    import dask
    from test_knn_partitioned import check_graph, planted, write_source

    from dedupdask.knn import exact_knn
    from dedupdask.knn_partitioned import SAMPLE_PER_CENTROID, knn_graph_partitioned

    x, _ = planted(16000, 48, seed=2)
    source = write_source(tmp_path, x, 2000)
    with dask.config.set(scheduler="sync"):
        idx, sim, info = knn_graph_partitioned(source, 3, max_memory_per_task="1MB", method="exact")
    cap = 10**6 // (16 * 48)  # rows of a one-task sample: 1302, ~5 per centroid before
    assert info["kmeans_levels"] == 2 and info["centroids"] * SAMPLE_PER_CENTROID > cap
    assert info["sample"] == min(16000, max(20_000, SAMPLE_PER_CENTROID * info["centroids"]))
    assert info["coarse_centroids"] >= 2 and info["fit_tasks"] >= 2
    e_idx, e_sim = exact_knn(x, 3)
    check_graph(x, idx, sim, e_idx, e_sim, min_recall=0.99)


@pytest.mark.parametrize("seed", range(6))
def test_lowest_fraction_on_workers_selects_what_outliers_table_selects(seed):
    """The global lowest fraction from histograms and counts equals the in-process selection:
    ties (many equal similarities, also across partitions) by index, rows without a nearest
    image left out, any fraction."""
    import dask
    import dask.dataframe as dd
    import pandas as pd

    from dedupdask.analyses.outliers import outliers_table
    from dedupdask.analyses.outliers_dask import lowest_fraction

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    levels = rng.choice([3, 50, 10**6])  # few distinct values: ties across partitions
    sim = (np.round(rng.uniform(-1, 1, n) * levels) / levels).astype(np.float32)
    sim[rng.random(n) < 0.05] = -0.0
    nearest = rng.integers(0, n, n)
    none = rng.random(n) < 0.1
    nearest[none] = -1
    sim[none] = np.nan
    frame = pd.DataFrame({"index": np.arange(n), "nearest": nearest, "similarity": sim})
    ddf = dd.from_pandas(frame, npartitions=int(rng.integers(1, 7)))  # increasing index ranges
    for fraction in (0.0, 0.01, 0.05, 0.3, 0.9, 1.0):
        want = outliers_table(nearest, sim, fraction, np.array(["x"] * n, dtype=object))
        with dask.config.set(scheduler="sync"):
            got = lowest_fraction(ddf, fraction, n).compute()
        got = got.sort_values(["similarity", "index"], kind="stable")
        assert got["index"].tolist() == want["index"].tolist(), fraction


@pytest.fixture(scope="module")
def dct_work(tmp_path_factory):
    """Three shards with planted exact and near duplicates, DCT model, extracted sync."""
    import dedupdask as ddk
    from dedupdask.datasets import make_sample_shards

    root = tmp_path_factory.mktemp("scale")
    shards = make_sample_shards(str(root / "shards"), n_shards=3, images_per_shard=20, n_near=8,
                                n_exact=4, formats=("tar",), broken=False, seed=6)  # fmt: skip
    wd = str(root / "work")
    ddk.extract(shards.root, wd, model_path="dct", client="sync", progress=False)
    return wd


TABLES = ("similarity", "outliers", "components", "stats", "invalid", "issues")


def _builds(
    src: str, tmp_path, cfg, before_cluster=lambda: None, after_cluster=lambda: None
) -> dict:
    """``src``'s run_mode=2 built in a copy on the sync scheduler and in another copy on a
    LocalCluster of two worker processes (``before_cluster()`` is called between them,
    ``after_cluster()`` right after the cluster build, before its tables are read back)."""
    import shutil

    import dask
    from distributed import Client, LocalCluster, get_task_stream

    from dedupdask.analysis import build

    out: dict = {}
    for name in ("sync", "cluster"):
        shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("results", "*.csv"))
    # the in-process build sets one BLAS thread itself, as in the worker processes (a matrix
    # product's last float32 bit depends on the BLAS threads: a 6-decimal score, ties' order)
    with dask.config.set(scheduler="sync"):
        out["sync"] = build(str(tmp_path / "sync"), config=cfg)
    before_cluster()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as ts,
    ):
        out["cluster"] = build(str(tmp_path / "cluster"), config=cfg, client=client)
        after_cluster()
    out["tables"] = {name: getattr(out["cluster"], name).compute() for name in TABLES}  # read back
    out["tasks"] = {str(t["key"][0] if isinstance(t["key"], tuple) else t["key"]) for t in ts.data}
    return out


def _assert_same(tmp_path, got: dict) -> None:
    """Every table, count, issue report and CSV byte of the cluster build equals the sync one's."""
    import pandas as pd

    from dedupdask.csvs import CSV_FILES

    ref, dist = got["sync"], got["cluster"]
    assert dist.run["analysed_on"] == "workers" and ref.run["analysed_on"] == "this process"
    for name in TABLES:
        pd.testing.assert_frame_equal(got["tables"][name], getattr(ref, name).compute(), obj=name)
    assert dist.run["counts"] == ref.run["counts"]
    assert dist.run["issues"] == ref.run["issues"]
    rows = {name: t["rows"] for name, t in ref.run["tables"].items()}  # the partitions differ
    assert {name: t["rows"] for name, t in dist.run["tables"].items()} == rows
    for name in CSV_FILES:
        assert (tmp_path / "cluster" / name).read_bytes() == (
            tmp_path / "sync" / name
        ).read_bytes(), name


@pytest.mark.slow  # ~13 s: a cluster; test_no_per_image_table_reaches_the_client keeps the client check in the default run
def test_exact_groups_and_components_run_on_the_workers(dct_work, tmp_path):
    """On a distributed client the md5 / pixel_md5 groups (a shuffle) and the connected
    components (FastSV) are found by worker tasks, the hashes never reach this process, and
    every table, count and CSV equals the in-process build's (with verification)."""
    from dedupdask.collect import collect
    from dedupdask.config import RunConfig

    # archives 0 and 1 share a partition of the per-image tables, archive 2 has its own
    assert collect(dct_work, images_per_partition=50).partition_archives() == [(0, 1), (2,)]
    got = _builds(dct_work, tmp_path, RunConfig(run_mode=2, progress=False, images_per_partition=50))
    names = got["tasks"]
    assert any(k.startswith("_key_minima") for k in names), sorted(names)[:20]  # exact groups
    assert any(k.startswith("_hook") for k in names), sorted(names)[:20]  # FastSV iterations
    # no table is concatenated into one task (what compute() of a collection does)
    assert not any(k.startswith("repartitiontofewer") for k in names), sorted(names)
    assert got["sync"].run["counts"]["exact_groups"] >= 2
    # nothing to verify (the dct model has no band; its copy candidates pass the threshold): run.json
    # says no verification ran anywhere, on both paths
    for run in (got["sync"].run, got["cluster"].run):
        ver = run["verification"]
        assert (ver["candidates"], ver["ran_on"], ver["workers"]) == (0, None, 0), ver
    assert got["sync"].run["counts"]["outliers"] >= 1 and got["sync"].run["counts"]["issues"] >= 1
    _assert_same(tmp_path, got)


def test_no_per_image_table_reaches_the_client(tmp_path, monkeypatch):
    """Issue 17 points 1 and 3: on a distributed client the build never reads the files
    table here (``files_frame``) nor builds a per-image or per-pair table with pandas
    (tiers, similarity, names, outliers, components, invalid, issues, outlier groups): worker tasks
    make each of them, and they equal the in-process ones."""
    import dedupdask.analyses.issues as issues
    import dedupdask.analysis as analysis
    from dedupdask.collect import Collection
    from dedupdask.config import RunConfig

    def forbid() -> None:
        def boom(name):
            def f(*a, **k):
                raise AssertionError(f"{name} ran on the client of a distributed build")

            return f

        monkeypatch.setattr(Collection, "files_frame", boom("Collection.files_frame"))
        monkeypatch.setattr(issues, "outlier_groups", boom("outlier_groups"))  # the numpy one

        for name in ("expand_pairs", "add_names", "nearest_neighbours", "outliers_table", "components_table",
                     "invalid_table", "find_issues", "exact_groups", "run_tiers", "expand_graph",
                     "knn_graph_work_dir"):  # fmt: skip
            if hasattr(analysis, name):
                monkeypatch.setattr(analysis, name, boom(name))

    from test_analysis import make_dataset, write_dataset

    # planted exact, pixel and near duplicates, outliers and invalid images in 3 archives; k = 2
    # and outlier groups loose enough that groups fill their lists: their members are searched
    write_dataset(str(tmp_path / "src"), make_dataset(n=600, n_archives=3))
    cfg = RunConfig(run_mode=2, progress=False, verify=False, nearest_neighbors_k=2, lower_threshold=0.01,
                    issue_thresholds={"outlier": 0.9, "outlier_link": 0.7}, images_per_partition=0)  # fmt: skip
    got = _builds(str(tmp_path / "src"), tmp_path, cfg, forbid)
    # only records per partition, bucket or group, and scalars (600 images, 3 archives)
    about = got["sync"].run["issues"]["outlier_groups"]
    assert about["searched_members"] > 0 and about["groups"] > 0, about
    for task in ("_across", "_within", "_attach", "_nearest", "_best_here", "_select", "_sorted_part",
                 "_attach_asked", "_chosen", "_top", "_query_piece", "_against", "merge_best"):  # fmt: skip
        assert any(task in k for k in got["tasks"]), task  # names of (fused) worker tasks
    assert got["sync"].run["counts"]["similar_pairs"] >= 5
    _assert_same(tmp_path, got)


@pytest.mark.slow  # ~17 s: a cluster; test_no_per_image_table_reaches_the_client keeps the client check in the default run
def test_cluster_build_computes_no_per_image_rows_here(tmp_path, monkeypatch):
    """Issue 17 point 1: with the kNN partitioned (a small task budget; the single-task graph
    gathers by design, bounded by that budget), everything the distributed build computes to
    this process is a record per partition, bucket or group, a fixed-size histogram or a
    scalar -- never a row per image or pair, nor the outlier groups' searched members or their
    vectors -- and its tables equal the in-process build's."""
    import dask
    import pandas as pd
    from test_analysis import make_dataset, write_dataset
    from test_knn_edges import _largest

    from dedupdask.analyses.issues import size_histogram
    from dedupdask.analyses.outliers_dask import BINS
    from dedupdask.analyses.routing import SAMPLES
    from dedupdask.config import RunConfig

    gathered: list[int] = []
    recording = [True]

    def record() -> None:
        real = dask.base.compute

        def compute(*args, **kwargs):  # the largest thing each compute brings here
            out = real(*args, **kwargs)
            if recording:
                gathered.append(_largest(out))
            return out

        monkeypatch.setattr(dask, "compute", compute)
        monkeypatch.setattr(dask.base, "compute", compute)

    write_dataset(str(tmp_path / "src"), make_dataset(n=600, n_archives=3))
    # outlier groups loose enough that many groups fill their lists: their members are searched
    cfg = RunConfig(run_mode=2, progress=False, verify=False, nearest_neighbors_k=2, lower_threshold=0.01,
                    max_memory_per_task="1MB", issue_thresholds={"outlier": 0.9, "outlier_link": 0.7},
                    images_per_partition=0)  # fmt: skip
    got = _builds(str(tmp_path / "src"), tmp_path, cfg, record, recording.clear)
    assert got["cluster"].run["knn"]["method"].startswith("partitioned"), got["cluster"].run["knn"]
    # enough searched members that gathering them (or their vectors) would show below
    assert got["cluster"].run["issues"]["outlier_groups"]["searched_members"] >= 600 // 20
    # the same size at any N: histograms, a sort's quantiles per partition
    fixed = {BINS, len(size_histogram(pd.DataFrame())), SAMPLES}
    assert gathered and max(g for g in gathered if g not in fixed) < 600 // 20, sorted(gathered)[
        -5:
    ]
    assert got["sync"].run["counts"]["similar_pairs"] >= 5
    _assert_same(tmp_path, got)


@pytest.mark.parametrize("cap", [0, 1, 7, 40, 1000])
def test_search_cut_in_a_tree_keeps_what_one_cut_keeps(cap, monkeypatch):
    """The workers' cut (each partition's best, then the best of every FAN_IN of those) keeps
    the members that within_cap keeps of all of them at once: highest bound, ties (many equal
    bounds, across partitions) to the smaller index."""
    import dask
    import pandas as pd

    import dedupdask.analyses.groups_search as search_mod
    from dedupdask.analyses.groups import within_cap

    monkeypatch.setattr(search_mod, "FAN_IN", 2)
    rng = np.random.default_rng(cap)
    reps = rng.permutation(500)[:300]
    bound = rng.choice(np.array([0.5, 0.7, 0.9], np.float32), 300)
    frame = pd.DataFrame({"rep": reps, "group": reps // 10, "bound": bound})
    parts = [frame.iloc[i : i + 37] for i in range(0, 300, 37)]  # 9 partitions: 4 merge levels
    picks = [dask.delayed(search_mod._top)([p], cap) for p in parts]
    with dask.config.set(scheduler="sync"):
        (kept,) = dask.compute(search_mod._tree(search_mod._top, picks, cap))
    want = frame[within_cap(bound, reps, cap)]
    assert sorted(kept["rep"]) == sorted(want["rep"]) and len(kept) == min(cap, 300)
    assert set(kept.columns) == {"rep", "group", "bound"}


@pytest.mark.slow  # two builds on a cluster: ~1-3 min; the cap itself is unit-tested in test_issues
def test_outlier_search_cap_is_the_same_on_both_paths(tmp_path, monkeypatch):
    """``outlier_search_members`` below the members chosen: both paths search the same ones
    (every table, count and CSV equal), run.json counts the searched and the unsearched, and
    the cap changes the result; several query chunks and merge levels on the workers."""
    import dask
    from test_analysis import make_dataset, write_dataset

    import dedupdask.analyses.groups as groups_mod
    import dedupdask.analyses.groups_search as search_mod
    from dedupdask.analysis import build
    from dedupdask.config import RunConfig

    for mod in (groups_mod, search_mod):  # the client cuts the chunks, the sync build's products
        monkeypatch.setattr(mod, "QUERY_CHUNK", 48)
    monkeypatch.setattr(search_mod, "FAN_IN", 2)  # the cut and the merges in several levels
    write_dataset(str(tmp_path / "src"), make_dataset(n=600, n_archives=3))
    loose = {"outlier": 0.9, "outlier_link": 0.7}
    with dask.config.set(scheduler="sync"):
        free = build(str(tmp_path / "src"), config=RunConfig(run_mode=2, progress=False, verify=False,
                     nearest_neighbors_k=2, issue_thresholds=loose), write=False)  # fmt: skip
    chosen = free.run["issues"]["outlier_groups"]["searched_members"]
    assert chosen >= 4 * 48 and free.run["issues"]["outlier_groups"]["unsearched_members"] == 0
    cap = chosen // 2 + 1  # > 2 x 48: three chunks or more on the workers
    cfg = RunConfig(run_mode=2, progress=False, verify=False, nearest_neighbors_k=2, lower_threshold=0.01,
                    issue_thresholds={**loose, "outlier_search_members": cap},
                    images_per_partition=510)  # two partitions: archives 0 + 1 (507 members), and 2  # fmt: skip
    got = _builds(str(tmp_path / "src"), tmp_path, cfg)
    about = got["cluster"].run["issues"]["outlier_groups"]
    assert (about["searched_members"], about["unsearched_members"]) == (cap, chosen - cap), about
    assert got["cluster"].run["issues"]["resolved"]["outlier_search_members"] == cap
    _assert_same(tmp_path, got)
    key = ["index", "issue", "score", "other"]
    capped = got["sync"].issues.compute()
    capped, free_rows = (t[t["issue"] == "outlier"][key].reset_index(drop=True) for t in (capped, free.issues.compute()))
    assert not capped.equals(free_rows)  # the members left out change some groups' scores


@pytest.mark.parametrize("k", [2, 12, 40])
def test_one_top_k_with_one_tie_rule(k):
    """Every exact search -- one block by argmax (small k) or argpartition (large k), a bucket
    of the partitioned kNN in float32 or float16 -- picks the lowest indices among equal
    similarities (here basis vectors: every similarity is exactly 0 or 1)."""
    from dedupdask.knn import exact_knn_block
    from dedupdask.knn_buckets import exact_bucket_knn

    rng = np.random.default_rng(3)
    n = 60
    x = np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)]
    s = x @ x.T
    want = np.array(
        [[j for j in sorted(range(n), key=lambda j: (-s[i, j], j)) if j != i][:k] for i in range(n)]
    )
    assert np.array_equal(exact_knn_block(x, 0, n, k)[0], want)
    assert np.array_equal(exact_knn_block(x, 7, 19, k)[0], want[7:19])
    assert np.array_equal(exact_bucket_knn(x, k)[0], want)
    assert np.array_equal(exact_bucket_knn(x.astype(np.float16), k)[0], want)


def test_dct_graph_takes_the_partitioned_path(dct_work):
    """The DCT descriptors' kNN graph goes through the embeddings' path: one task while it
    fits ``max_memory_per_task``, partitioned buckets past it -- not one task whatever its size."""
    import dask
    import pandas as pd

    from dedupdask.analysis import build
    from dedupdask.config import RunConfig

    with dask.config.set(scheduler="sync"):
        one = build(dct_work, config=RunConfig(run_mode=2, progress=False), write=False)
        part = build(dct_work, config=RunConfig(run_mode=2, progress=False, max_memory_per_task="150kB"),
                     write=False, method="exact")  # fmt: skip
    assert one.run["knn_dct"]["method"] == "exact" and one.params["copy_threshold"] is not None
    info = part.run["knn_dct"]
    assert info["method"] == "partitioned-exact" and info["buckets"] >= 2, info
    assert info["single_task_bytes"] > info["memory_per_task"]
    key = ["from", "to", "kind"]
    pd.testing.assert_frame_equal(part.similarity.compute()[key], one.similarity.compute()[key])


def test_archives_share_partitions_of_the_per_image_tables(tmp_path):
    """Consecutive archives are read into one partition up to ``images_per_partition`` image
    members: files, names and the owner bounds agree with the plan for every setting, an
    archive without a valid image included (first in its partition, and alone)."""
    import dask
    import numpy as np
    import pandas as pd
    from test_analysis import make_dataset, write_dataset

    from dedupdask.analyses.expand_dask import owner
    from dedupdask.analyses.names_dask import names_frame
    from dedupdask.collect import collect

    ds = make_dataset(n=300, n_archives=5, n_invalid=6)
    for r in ds.rows:  # archive 2 holds no valid image
        if r["archive_no"] == 2:
            r["valid"], r["pixel_md5"], r["width"], r["height"] = False, None, None, None
    write_dataset(str(tmp_path / "wd"), ds)
    sizes = [a.n_images for a in collect(str(tmp_path / "wd"), warn=False).archives]
    assert sizes[2] > 0 and collect(str(tmp_path / "wd"), warn=False).archives[2].n_valid == 0
    ref = collect(str(tmp_path / "wd"), images_per_partition=0, warn=False).files_frame()
    plans = {}
    for limit in (0, 1, sizes[0] + sizes[1], sum(sizes[:2]) + 1, 10**9):
        col = collect(str(tmp_path / "wd"), images_per_partition=limit, warn=False)
        plan = col.partition_archives()
        plans[limit] = plan
        assert [i for p in plan for i in p] == list(range(5))  # every archive once, in order
        assert all(len(p) == 1 or sum(sizes[i] for i in p) <= limit for p in plan)
        files = col.files()
        assert files.npartitions == len(plan)
        with dask.config.set(scheduler="sync"):
            parts = [files.get_partition(j).compute() for j in range(files.npartitions)]
            names = names_frame(col)
            got_names = names.compute()
        for j, p in enumerate(plan):  # each partition holds exactly its archives' members
            assert parts[j]["archive"].drop_duplicates().tolist() == [col.archives[i].url for i in p]
        pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), ref)
        assert names.known_divisions and len(got_names) == col.n
        assert got_names.index.tolist() == list(range(col.n))
        bounds = col.partition_bounds()
        valid = ref[ref["index"].notna()]
        for j, part in enumerate(parts):  # owner() finds every valid image's partition
            idx = part["index"].dropna().to_numpy(np.int64)
            assert (owner(bounds, idx) == j).all()
        assert len(valid) == col.n
    assert plans[0] == plans[1] == [(i,) for i in range(5)]
    assert plans[sizes[0] + sizes[1]][0] == (0, 1) and plans[10**9] == [tuple(range(5))]
    assert any(len(p) > 1 and p[0] == 2 for plan in plans.values() for p in plan), plans
