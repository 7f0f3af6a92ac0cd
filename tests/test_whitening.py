"""The whitening of the embeddings (dedupdask/whitening.py) and the kNN graphs searched in it."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from dedupdask.knn import exact_knn
from dedupdask.knn_partitioned import knn_graph_partitioned
from dedupdask.knn_rows import VectorBlock, VectorSource
from dedupdask.store import WorkDir
from dedupdask.whitening import Whitening


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def look_alike_set(n: int = 3000, d: int = 64, seed: int = 0):
    """A set whose pictures share one large component (every raw cosine is high) and whose
    variety lies in a few strong and many weak directions; rows n-100.. are near copies of
    rows 0..99 (a small change along every direction)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    scale = np.r_[np.full(8, 1.0), np.full(d - 8, 0.15)]
    x = 4.0 * common + rng.standard_normal((n, d)) * scale
    x[n - 100 :] = x[:100] + 0.05 * rng.standard_normal((100, d)) * scale
    return _unit(x)


def cos(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x[a], x[b])


def test_whitening_separates_unrelated_pictures_of_a_look_alike_set():
    x = look_alike_set()
    w = Whitening.fit(x, dims=32)
    y = w.apply(x)
    rng = np.random.default_rng(1)
    a, b = rng.integers(100, 2900, 2000), rng.integers(100, 2900, 2000)
    keep = a != b
    raw_unrelated, white_unrelated = cos(x, a[keep], b[keep]), cos(y, a[keep], b[keep])
    copies = np.arange(100)
    raw_copies, white_copies = cos(x, copies, copies + 2900), cos(y, copies, copies + 2900)
    # raw: unrelated pairs are as close as some copies -- no raw cut separates them
    assert np.quantile(raw_unrelated, 0.99) > np.quantile(raw_copies, 0.01) - 0.05
    assert raw_unrelated.min() > 0.8
    # whitened: unrelated pairs spread around 0, the copies stay close
    assert abs(float(np.median(white_unrelated))) < 0.1
    assert np.quantile(white_unrelated, 0.99) < 0.5 < np.quantile(white_copies, 0.01)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    assert y.shape == (3000, 32) and y.dtype == np.float32
    assert w.to_dict() == {"dims": 32, "sample": 3000, "variance_kept": round(w.kept, 4)}
    assert 0.5 < w.kept <= 1.0


def test_fit_gives_the_same_whitening_every_time():
    x = look_alike_set(n=600, d=16)
    a, b = Whitening.fit(x, dims=8), Whitening.fit(x.copy(), dims=8)
    np.testing.assert_array_equal(a.projection, b.projection)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert dask.base.tokenize(a) == dask.base.tokenize(b)
    assert dask.base.tokenize(a) != dask.base.tokenize(Whitening.fit(x[:500], dims=8))


def _source(root, x: np.ndarray, rows: int, post=None) -> VectorSource:
    wd = WorkDir(str(root))
    blocks = []
    for i, s in enumerate(range(0, x.shape[0], rows)):
        path = wd.join(f"{i:05d}.dat")
        x[s : s + rows].astype("<f4").tofile(path)
        blocks.append(VectorBlock(wd, path, x.shape[1], min(rows, x.shape[0] - s), post=post))
    return VectorSource(tuple(blocks), x.shape[1] if post is None else post.dims)


def test_a_whitened_source_reads_whitened_rows(tmp_path):
    x = look_alike_set(n=700, d=24)
    w = Whitening.fit(x, dims=12)
    src = _source(tmp_path, x, 300, post=w)
    rows = np.array([0, 5, 299, 300, 650])
    assert src.d == 12
    np.testing.assert_allclose(src.read(rows), w.apply(x[rows]), atol=1e-6)


def test_partitioned_search_in_whitened_space_finds_the_whitened_neighbours(tmp_path):
    """The partitioned kNN reads through the whitening in every task (sample, buckets,
    rescoring): its similarities are whitened cosines and it finds the near copies."""
    x = look_alike_set(n=4000, d=48, seed=3)
    w = Whitening.fit(x, dims=24)
    y = w.apply(x)
    src = _source(tmp_path, x, 700, post=w)
    with dask.config.set(scheduler="sync"):
        idx, sim, info = knn_graph_partitioned(src, 3, max_memory_per_task="2MB", method="exact")
    assert info["buckets"] >= 4
    e_idx, _ = exact_knn(y, 3)
    ok = idx >= 0
    np.testing.assert_allclose(
        sim[ok], np.einsum("ij,ikj->ik", y, y[np.where(ok, idx, 0)])[ok], atol=2e-6
    )
    copies = np.arange(100)  # each near copy's nearest whitened neighbour is its original
    assert (e_idx[copies + 3900, 0] == copies).all()
    assert (idx[copies + 3900, 0] == copies).mean() >= 0.98


@pytest.mark.slow  # ~2 min: 2,100 images extracted, analysed twice
def test_a_look_alike_set_verifies_its_copies_not_every_pair(tmp_path, monkeypatch):
    """vs_fastdup.py's default kind of shards: random pictures of one style, which raw cosine
    puts at 0.65-0.85 from each other. The whitened candidates find the same planted pairs
    while verifying a small fraction of the pairs the raw band sends."""
    from dedupdask import whitening
    from dedupdask.analysis import build
    from dedupdask.config import RunConfig
    from dedupdask.datasets import make_sample_shards
    from dedupdask.pipeline import extract

    shards = make_sample_shards(
        str(tmp_path / "shards"), n_shards=4, images_per_shard=500, n_near=100, n_exact=20,
        formats=("tar",), broken=False, seed=3,
    )  # fmt: skip
    extract(shards.root, str(tmp_path / "work"), progress=False)
    cfg = RunConfig(run_mode=2, progress=False)
    white = build(str(tmp_path / "work"), config=cfg, write=False)
    monkeypatch.setattr(whitening, "MIN_IMAGES", 10**9)
    raw = build(str(tmp_path / "work"), config=cfg, write=False)
    assert white.run["whitening"]["dims"] == 256 and white.run["parameters"]["whitened_threshold"] == 0.457
    assert raw.run["whitening"]["used"] is False

    def found(res) -> set:
        sim = res.similarity.compute() if hasattr(res.similarity, "compute") else res.similarity
        return {frozenset(p) for p in zip(sim["filename_from"], sim["filename_to"], strict=True)}

    truth = {frozenset(p) for p in zip(shards.truth["filename_a"], shards.truth["filename_b"], strict=True)}
    got_white, got_raw = found(white), found(raw)
    assert len(truth & got_raw) >= 0.95 * len(truth)
    assert truth & got_raw <= got_white  # every planted pair the raw band found
    assert len(got_white - truth) <= len(got_raw - truth)
    n_white = white.run["verification"]["candidates"]
    n_raw = raw.run["verification"]["candidates"]
    assert n_white < 0.1 * n_raw, (n_white, n_raw)
