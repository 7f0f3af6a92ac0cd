"""Empty and degenerate inputs: no bucket, merge piece, archive or graph is too small.

Issue 22 (2): the partitioned kNN crashed (``IndexError`` in ``_best``) when a merge piece
was empty -- a row range that none of a group of buckets holds, or a bucket whose only member
has no neighbour. Whether that happened depended on the k-means bucket assignment, which
depends on the BLAS kernel and thread count (reproduced with ``OPENBLAS_CORETYPE=Haswell
OPENBLAS_NUM_THREADS=1``), and on ``os.cpu_count()`` (the number of row ranges). Here the
assignment is fixed by the test, not by floating point, so each path is taken on every
machine; then every function of the analysis is called with empty and degenerate inputs,
and run_mode=2 runs on real extractions with archives that hold no valid image.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace

import dask
import numpy as np
import pandas as pd
import pytest
from conftest import jpeg_bytes, png_bytes, write_tar
from test_knn_partitioned import write_source

from dedupdask import knn_buckets, knn_fit
from dedupdask import knn_partitioned as kp
from dedupdask.analyses import (
    components_table,
    duplicates_to_remove,
    exact_groups,
    invalid_table,
    nearest_neighbours,
    outliers_table,
    similarity_table,
)
from dedupdask.analyses.tiers import (
    TierParams,
    candidate_pairs,
    component_edges,
    decide,
    expand_pairs,
)
from dedupdask.analysis import build
from dedupdask.config import RunConfig
from dedupdask.fusion import pair_cosines
from dedupdask.knn import exact_knn, exact_knn_block, knn_graph, knn_graph_dask, normalize_rows
from dedupdask.knn_partitioned import (
    VectorBlock,
    VectorSource,
    exact_bucket_knn,
    knn_graph_partitioned,
    spherical_kmeans,
)
from dedupdask.match import Prepared, match_score
from dedupdask.results import load
from dedupdask.store import WorkDir, empty_files_frame
from dedupdask.verify import score_pairs, verify_pairs
from dedupdask.verify_frames import image_info


# -- the merge: empty pieces, rows without any candidate ------------------------------------------
def test_best_of_nothing_is_empty():
    e = np.empty(0, np.int64)
    for rows, cand, sim in [
        (e, e, np.empty(0, np.float32)),  # an empty piece
        (np.array([4, 4]), np.array([4, -1]), np.array([1.0, np.nan], np.float32)),  # self, -1
        (np.array([2]), np.array([7]), np.array([np.nan], np.float32)),  # no similarity
    ]:
        r, c, s = kp._best(rows, cand, sim, 3)
        assert r.size == c.size == s.size == 0
    r, c, s = kp._best(
        np.array([1, 1, 1, 0]), np.array([5, 5, 1, 3]), np.array([0.2, 0.6, 1.0, 0.5], np.float32), 3
    )
    assert (r.tolist(), c.tolist(), s.tolist()) == ([0, 1], [3, 5], [0.5, np.float32(0.6)])


def _candidates(rows, cand, sim) -> pd.DataFrame:
    """A row range's candidates as the shuffle delivers them (indexed by row)."""
    return pd.DataFrame({"cand": np.asarray(cand, np.int64), "sim": np.asarray(sim, np.float32)},
                        index=pd.Index(np.asarray(rows, np.int64), name="row"))  # fmt: skip


def test_merges_of_empty_ranges():
    """A row range that no bucket sent anything to, or only self / padding: no rows."""
    k, src = 2, VectorSource((), D)
    for part in (_candidates([], [], []), _candidates([4, 4, 2], [4, 7, -1], [1.0, np.nan, 0.5])):
        out = knn_buckets._merge_range_rows(src, k, part)
        assert len(out) == 0 and out.dtypes.astype(str).tolist() == ["int64", "int64", "float32", "int16"]
    out = knn_buckets._merge_range_rows(src, k, _candidates([10, 10, 10, 11], [11, 11, 12, 10], [0.8, 0.9, 0.9, 0.9]))
    assert out[["from", "to", "rank"]].values.tolist() == [[10, 11, 0], [10, 12, 1], [11, 10, 0]]
    assert out["similarity"].tolist() == [np.float32(0.9)] * 3  # a repeat keeps its best


def test_merge_keeps_wide_ids():
    """Ids past int32 stay int64 through the merge."""
    big = 2**31 + 5
    out = knn_buckets._merge_range_rows(VectorSource((), D), 2, _candidates([0, 0], [1, big], [0.5, 0.9]))
    assert out["to"].tolist() == [big, 1] and out["to"].dtype == np.int64


# -- the partitioned graph for any bucket assignment ------------------------------------------------
N_BLOCKS, PER_BLOCK, D, K = 8, 30, 8, 3


def _assignment() -> np.ndarray:
    """Buckets of every row (-1 = none): 12 centroids, 11 non-empty buckets.

    Buckets 0-7: block b's rows. Bucket 8: every third row of blocks 0 and 1; bucket 9: of
    blocks 6 and 7; bucket 10: one row of block 2 and nothing else (a bucket of one member);
    bucket 11: nobody (an empty partition of the shuffle on the bucket). Buckets 8-10 hold
    no row of blocks 3-5: those row ranges get their candidates from one bucket each.
    """
    lab = np.full((N_BLOCKS * PER_BLOCK, 2), -1, np.int32)
    for b in range(N_BLOCKS):
        rows = np.arange(b * PER_BLOCK, (b + 1) * PER_BLOCK)
        lab[rows, 0] = b
        if b in (0, 1):
            lab[rows[::3], 1] = 8
        if b in (6, 7):
            lab[rows[::3], 1] = 9
    lab[2 * PER_BLOCK + 5, 1] = 10
    return lab


def _capacity_budget(rerank: bool) -> int:
    """A task budget whose bucket capacity holds any bucket above but not all rows."""
    for budget in range(20_000, 4_000_000, 2_000):
        try:
            cap = kp.bucket_capacity(budget, D, 2 if rerank else 4, K + 8 if rerank else K,
                                     "exact", D, rerank)  # fmt: skip
        except ValueError:
            continue
        if cap >= 2 * PER_BLOCK:
            assert cap < N_BLOCKS * PER_BLOCK
            return budget
    raise AssertionError("no budget found")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_partitioned_graph_for_a_fixed_assignment(tmp_path, monkeypatch, dtype):
    """Empty merge pieces, a one-member bucket, an unused centroid: the exact graph of each
    row among the members of its buckets, whatever the assignment (here fixed by the test)."""
    rng = np.random.default_rng(7)
    x = normalize_rows(rng.standard_normal((N_BLOCKS * PER_BLOCK, D)))
    labels = _assignment()
    source = write_source(tmp_path, x, PER_BLOCK)

    def fixed_top_m(v, centroids, m, margin=0.0):
        rows = np.argmax(v @ x.T, axis=1)  # which row each vector is (they are all distinct)
        assert np.allclose(v, x[rows], atol=1e-5)
        return labels[rows]

    centroids = normalize_rows(rng.standard_normal((12, D)))
    monkeypatch.setattr(knn_fit, "_fit_centroids", lambda *a: (centroids, 0.0))  # what fit_centroids runs
    monkeypatch.setattr(knn_buckets, "_top_m", fixed_top_m)
    monkeypatch.setattr(kp, "_n_workers", lambda: 4)  # 8 row ranges, one per block, any machine
    searched: list[np.ndarray] = []
    search = knn_buckets._search_bucket
    monkeypatch.setattr(
        knn_buckets, "_search_bucket", lambda s, o, p, members, *a: searched.append(members) or search(s, o, p, members, *a)
    )
    budget = _capacity_budget(rerank=dtype == "float16")
    with dask.config.set(scheduler="sync"):
        idx, sim, info = knn_graph_partitioned(
            source, K, max_memory_per_task=budget, method="exact", dtype=dtype, m=2, margin=0
        )
    assert info["buckets"] == 11 and info["row_ranges"] == N_BLOCKS and info["split_buckets"] == 0
    assert sorted(b.size for b in searched) == [1, 20, 20] + [PER_BLOCK] * N_BLOCKS

    # expected: each row's best K among the members of its buckets (ties by index)
    n = x.shape[0]
    exp_idx = np.full((n, K), -1)
    exp_sim = np.full((n, K), np.nan, np.float32)
    for r in range(n):
        cand = np.unique(np.concatenate([b for b in searched if r in b]))
        cand = cand[cand != r]
        s = x[cand] @ x[r]
        order = np.lexsort((cand, -s))[:K]
        exp_idx[r, : order.size], exp_sim[r, : order.size] = cand[order], s[order]
    assert np.allclose(sim, exp_sim, atol=2e-6, equal_nan=True)
    assert np.array_equal(idx, exp_idx)
    lone = 2 * PER_BLOCK + 5  # its second bucket had nobody else: its list comes from block 2
    assert set(idx[lone].tolist()) <= set(range(2 * PER_BLOCK, 3 * PER_BLOCK))


def test_partitioned_single_vector_and_identical_vectors(tmp_path):
    """One vector (no neighbour at all); identical vectors, which k-means cannot split, so
    oversized buckets are cut in order: into equal parts, never a one-member remainder."""
    for sub in ("one", "same"):
        (tmp_path / sub).mkdir()
    with dask.config.set(scheduler="sync"):
        one = write_source(tmp_path / "one", np.ones((1, D), np.float32), 1)
        for dtype in ("float32", "float16"):
            idx, sim, info = knn_graph_partitioned(one, 2, max_memory_per_task="1MB", dtype=dtype)
            assert idx.tolist() == [[-1, -1]] and np.isnan(sim).all()
        budget = _capacity_budget(rerank=True)
        cap = kp.bucket_capacity(budget, D, 2, K + 8, "exact", D, True)
        n = cap + 1
        same = write_source(tmp_path / "same", np.ones((n, D), np.float32), 20)
        idx, sim, info = knn_graph_partitioned(
            same, K, max_memory_per_task=budget, dtype="float16", method="exact"
        )
    assert info["buckets"] >= 2 and info["bucket_size_max"] <= cap
    assert (idx >= 0).all() and np.allclose(sim, 1.0)
    assert not (idx == np.arange(n)[:, None]).any()


def test_empty_block_in_a_source(tmp_path):
    """A zero-row block (an archive with no valid image) among others."""
    rng = np.random.default_rng(3)
    x = normalize_rows(rng.standard_normal((90, D)))
    src = write_source(tmp_path, x, 30)
    wd = src.blocks[0].wd
    open(wd.join("empty.dat"), "wb").close()
    empty = VectorBlock(wd, wd.join("empty.dat"), D, 0)
    source = VectorSource((src.blocks[0], empty, src.blocks[1], empty, src.blocks[2]), D)
    assert source.n == 90 and source.read(np.array([0, 30, 89])).shape == (3, D)
    with dask.config.set(scheduler="sync"):
        idx, sim, info = knn_graph_partitioned(source, K, max_memory_per_task=_capacity_budget(True),
                                               dtype="float16", method="exact")  # fmt: skip
    e_idx, e_sim = exact_knn(x, K)
    assert info["buckets"] >= 2
    assert (idx == e_idx).mean() > 0.9 and np.allclose(sim[idx == e_idx], e_sim[idx == e_idx], atol=2e-6)


def test_margin_without_held_out_rows(tmp_path):
    """A sample of a few rows where the seed holds none out (or all) still gets a margin."""
    n, seed = 15, next(s for s in range(1000) if not (np.random.default_rng(s).random(15) < 0.2).any())
    x = normalize_rows(np.random.default_rng(0).standard_normal((n, D)))
    c, margin = kp._fit_centroids([x], None, 4, seed, 2, None)
    assert c.shape == (4, D) and margin > 0
    seed_all = next(s for s in range(10**5) if (np.random.default_rng(s).random(3) < 0.2).all())
    c, margin = kp._fit_centroids([x[:3]], None, 3, seed_all, 2, None)
    assert c.shape == (3, D) and margin >= 0
    assert kp._auto_margin(np.empty((0, D), np.float32), c, 1) == 0.0
    with pytest.raises(ValueError, match="no rows"):
        spherical_kmeans(np.empty((0, D), np.float32), 2)
    # the whole graph, with that seed: 15 vectors, buckets of at most 14
    src = write_source(tmp_path, x, 5)
    with dask.config.set(scheduler="sync"):
        idx, sim, info = knn_graph_partitioned(src, 1, max_memory_per_task=6000, method="exact",
                                               random_state=seed)  # fmt: skip
    assert info["buckets"] > 1 and (idx[:, 0] >= 0).all()


def test_exact_search_degenerate_shapes():
    for n in (0, 1, 2, 5):
        x = normalize_rows(np.random.default_rng(n).standard_normal((n, D)))
        for k in (1, 4, 9):  # k larger than n - 1
            idx, sim = exact_knn(x, k)
            assert idx.shape == sim.shape == (n, k)
            assert ((idx >= 0).sum(axis=1) == max(0, min(k, n - 1))).all()
            assert not (idx == np.arange(n)[:, None]).any()
            b_idx, b_sim = exact_bucket_knn(x.astype(np.float16), k)
            assert np.array_equal(b_idx >= 0, idx >= 0)
            d_idx, _, _ = knn_graph_dask(dask.array.from_array(x), n, D, k)
            assert np.array_equal(d_idx, idx)
    assert exact_knn_block(np.ones((3, D), np.float32), 1, 1, 2)[0].shape == (0, 2)
    # identical and zero vectors: ties go to the smallest index
    idx, sim = knn_graph(np.ones((5, D)), 2, method="exact")
    assert idx.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]] and np.allclose(sim, 1.0)
    idx, sim = knn_graph(np.zeros((3, D)), 2, method="exact")
    assert idx.tolist() == [[1, 2], [0, 2], [0, 1]] and (sim == 0).all()


# -- the analyses with nothing to analyse -------------------------------------------------------------
def test_analyses_of_empty_and_single_inputs():
    k = 2
    e_idx, e_sim = np.empty((0, k), np.int64), np.empty((0, k), np.float32)
    for n in (0, 1):
        groups = exact_groups(pd.Series([f"m{i}" for i in range(n)], dtype="string"),
                              pd.Series([None] * n, dtype="string"))  # fmt: skip
        assert groups.start.shape == groups.size.shape == groups.rep.shape == (n,)
        reps = groups.reps
        idx = np.full((n, k), -1, np.int64) if n else e_idx
        sim = np.full((n, k), np.nan, np.float32) if n else e_sim
        names = np.array([f"f{i}" for i in range(n)], dtype=object)
        assert len(similarity_table(groups, reps, idx, sim, 0.9, names)) == 0
        comps = components_table(groups, reps, idx, sim, 0.9)
        assert comps["component_size"].tolist() == [1] * n
        nearest, near_sim = nearest_neighbours(groups, reps, idx, sim)
        assert (nearest == -1).all() and len(outliers_table(nearest, near_sim, 0.5, names)) == 0
        images = pd.DataFrame({"index": np.arange(n), "filename": names, "width": 1, "height": 1,
                               "file_size": 1})  # fmt: skip
        assert len(duplicates_to_remove(comps, images)) == 0
        params = TierParams(0.9, 0.9, 0.99, 0.5, 0.9, True, k, early_accept=0.98)
        cands = candidate_pairs(reps, (idx, sim), (idx, sim), params)
        decided = decide(cands, params)
        assert len(decided) == 0 and list(decided.columns)[-4:] == ["kind", "direct", "to_verify", "accepted"]
        a, b = component_edges(reps, (idx, sim), decided, 0.9)
        assert a.size == b.size == 0
        pairs = decided.assign(verify_score=np.float32(np.nan))
        assert len(expand_pairs(groups, pairs, names)) == 0
    assert len(invalid_table(empty_files_frame())) == 0
    assert pair_cosines(lambda rows: np.ones((rows.size, D)), np.empty(0, int), np.empty(0, int)).shape == (0,)
    assert image_info(empty_files_frame()).empty


def test_verification_of_nothing_and_of_flat_images():
    out, cost = verify_pairs(pd.DataFrame({"from": [], "to": []}), image_info(empty_files_frame()))
    assert len(out) == 0 and cost["candidates"] == 0
    df, _ = score_pairs(np.empty((0, 2), np.int64))
    assert len(df) == 0
    flat = Prepared(128, 96, np.full((96, 128, 3), 200, np.uint8))
    assert match_score(flat, flat) == -1.0  # nothing to align: not confirmed, no crash


# -- run_mode=2 on real extractions with archives that hold no valid image -------------------------
def _no_valid_image_archives(root) -> None:
    write_tar(root / "broken.tar", [("a.jpg", b"not a jpeg", None), ("b.png", png_bytes((3, 3)), None),
                                    ("c.jpg", jpeg_bytes(3)[:200], None)])  # fmt: skip
    with tarfile.open(root / "empty.tar", "w"):
        pass
    with tarfile.open(root / "sidecars.tar", "w") as tf:
        for name in ("x.txt", "y.cls"):
            ti = tarfile.TarInfo(name)
            ti.size = 2
            tf.addfile(ti, io.BytesIO(b"hi"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The same two sample shards extracted alone, and with three no-valid-image archives."""
    from dedupdask.datasets import make_sample_shards
    from dedupdask.pipeline import extract

    root = tmp_path_factory.mktemp("mixed")
    shards = make_sample_shards(str(root / "with"), n_shards=2, images_per_shard=15, n_near=5,
                                n_exact=3, size=(128, 96), formats=("tar", "zip"), seed=4)  # fmt: skip
    make_sample_shards(str(root / "alone"), n_shards=2, images_per_shard=15, n_near=5, n_exact=3,
                       size=(128, 96), formats=("tar", "zip"), seed=4)  # fmt: skip
    _no_valid_image_archives(root / "with")
    for name in ("with", "alone"):
        report = extract(str(root / name), str(root / f"wd_{name}"), model_path="dct",
                         client="sync", progress=False)  # fmt: skip
        assert (report["status"] == "done").all()
    return root, shards


@pytest.mark.parametrize(
    "options",
    [{}, {"max_memory_per_task": "600kB", "knn_dtype": "float16"}],
    ids=["single-task", "partitioned-float16"],
)
def test_build_with_archives_of_no_valid_image(mixed, options):
    root, shards = mixed
    cfg = replace(RunConfig(run_mode=2, progress=False, lower_threshold=0.05), **options)
    with dask.config.set(scheduler="sync"):
        res = build(str(root / "wd_with"), config=cfg)
        ref = build(str(root / "wd_alone"), config=cfg, write=False)
    if options:
        assert res.params["knn_method"].startswith("partitioned-")
    assert {"broken.tar", "empty.tar", "sidecars.tar"} <= set(res.archives)
    assert len(res.components) == len(ref.components) == res.embeddings.shape[0]
    for name in ("similarity", "components", "outliers"):
        a, b = getattr(res, name).compute(), getattr(ref, name).compute()
        names = ("filename", "archive")  # where the archives are differs; members and keys do not
        pd.testing.assert_frame_equal(a.drop(columns=[c for c in a if c.startswith(names)]),
                                      b.drop(columns=[c for c in b if c.startswith(names)]))  # fmt: skip
    assert len(res.similarity) >= 3
    broken = res.invalid.compute()[res.invalid.compute()["archive"].str.endswith("broken.tar")]
    assert sorted(broken["member"]) == ["a.jpg", "b.png", "c.jpg"]
    pd.testing.assert_frame_equal(load(str(root / "wd_with")).components.compute(), res.components.compute())


def test_build_when_no_image_is_valid(tmp_path):
    """Every archive done, none with a valid image: empty tables, files written, galleries."""
    from dedupdask.pipeline import extract

    _no_valid_image_archives(tmp_path)
    wd = str(tmp_path / "wd")
    extract(str(tmp_path), wd, model_path="dct", client="sync", progress=False)
    for cfg in (RunConfig(run_mode=2, progress=False),
                RunConfig(run_mode=2, progress=False, max_memory_per_task="600kB", knn_dtype="float16")):  # fmt: skip
        with dask.config.set(scheduler="sync"):
            res = build(wd, config=cfg)
        s = res.summary()
        assert (s["images"], s["invalid"], s["similar_pairs"], s["outliers"]) == (0, 3, 0, 0)
        assert res.embeddings.shape[0] == 0
    back = load(wd)
    assert len(back.components) == 0 and len(back.invalid) == 3
    assert pd.read_csv(WorkDir(wd).join("connected_components.csv")).empty
    pages = res.galleries(str(tmp_path / "galleries"))
    assert "index" in pages
