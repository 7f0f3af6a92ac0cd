"""Analysis stage (run_mode=2): loading, exact groups, kNN, tables, files, load() round trip.

Work_dirs are synthetic: vectors with planted exact duplicates (same md5), pixel duplicates
(same pixel_md5, different md5), optionally images equal only at model size (same input_md5),
near duplicates, outliers and invalid images, written with ``WorkDir.write_archive`` exactly as
extraction writes them.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass, field

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dedupdask.analysis import build
from dedupdask.collect import collect
from dedupdask.config import RunConfig
from dedupdask.decode import DECODE_VERSION
from dedupdask.knn import ARGMAX_MAX_K, exact_knn, knn_graph, nndescent_knn, normalize_rows
from dedupdask.results import load
from dedupdask.store import WorkDir, empty_files_frame

D = 64
MODEL = {
    "d": D,
    "model_id": "test-model",
    "model_sha256": "ab" * 32,
    "model_threshold": 0.91,
    "model_ccthreshold": 0.955,
}
CFG = RunConfig(run_mode=2, progress=False, nearest_neighbors_k=2, lower_threshold=0.01)


@dataclass
class Planted:
    """A synthetic dataset: per-image rows in archive order plus what was planted."""

    rows: list[dict] = field(default_factory=list)  # one per image (valid or invalid)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # filename -> vector
    groups: list[set[str]] = field(default_factory=list)  # sets that must be mutually similar
    exact_groups: list[set[str]] = field(default_factory=list)
    input_pairs: list[set[str]] = field(default_factory=list)  # equal model inputs only
    outliers: set[str] = field(default_factory=set)
    n_archives: int = 0

    def pairs(self) -> set[tuple[str, str]]:
        out = set()
        for g in self.groups:
            out |= {tuple(sorted(p)) for p in itertools.combinations(g, 2)}
        return out


def _url(a: int) -> str:
    return f"s3://bucket/shards/{a:05d}.tar"


def make_dataset(
    n: int = 3000,
    n_archives: int = 6,
    seed: int = 0,
    n_near: int = 40,
    n_exact: int = 25,
    n_pixel: int = 10,
    n_input: int = 0,
    n_outliers: int = 10,
    n_invalid: int = 12,
) -> Planted:
    """Clustered background + planted structure, spread over archives at random positions."""
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.standard_normal((30, D)))
    base = centres[rng.integers(0, 30, n)] + 0.7 * rng.standard_normal((n, D)).astype(
        np.float32
    ) / np.sqrt(D)
    base = normalize_rows(base)
    vecs: list[np.ndarray] = list(base)
    md5 = [f"m{i}" for i in range(n)]
    pix: list[str | None] = [f"p{i}" for i in range(n)]
    inp: list[str | None] = [None] * n
    groups: list[list[int]] = []
    exact: list[list[int]] = []
    same_input: list[list[int]] = []
    free = iter(rng.permutation(n))

    def add(vec: np.ndarray, m: str, p: str | None, i: str | None = None) -> int:
        vecs.append(vec)
        md5.append(m)
        pix.append(p)
        inp.append(i)
        return len(vecs) - 1

    def near(i: int) -> np.ndarray:
        t = rng.uniform(0.05, 0.2)
        return normalize_rows(
            (vecs[i] + t * rng.standard_normal(D).astype(np.float32) / np.sqrt(D))[None]
        )[0]

    for _ in range(n_near):
        i = int(next(free))
        groups.append([i, add(near(i), f"near{len(vecs)}", f"nearp{len(vecs)}")])
    for g in range(n_exact):  # exact copies (same bytes), groups of 2..5
        i = int(next(free))
        members = [i] + [
            add(vecs[i].copy(), md5[i], f"x{g}-{c}") for c in range(rng.integers(1, 5))
        ]
        groups.append(members)
        exact.append(members)
    for g in range(n_pixel):  # same decoded pixels, different bytes
        i = int(next(free))
        j = add(vecs[i].copy(), f"pixel-md5-{g}", pix[i])
        groups.append([i, j])
        exact.append([i, j])
    for g in range(n_input):  # same model input, different bytes and full pixels
        i = int(next(free))
        inp[i] = f"in{g}"
        j = add(vecs[i].copy(), f"input-md5-{g}", None, inp[i])
        groups.append([i, j])
        same_input.append([i, j])
    for _ in range(5):  # an exact group that also has a near duplicate
        i = int(next(free))
        j = add(vecs[i].copy(), md5[i], f"y{i}")
        k = add(near(i), f"z{i}", f"zp{i}")
        groups.append([i, j, k])
        exact.append([i, j])
    outl = [
        add(normalize_rows(rng.standard_normal((1, D)))[0], f"o{c}", f"op{c}")
        for c in range(n_outliers)
    ]

    total = len(vecs)
    order = rng.permutation(total)
    archive_of = np.sort(rng.integers(0, n_archives, total))
    invalid_archive = rng.integers(0, n_archives, n_invalid)
    out = Planted(n_archives=n_archives)
    names = {}
    for pos, img in enumerate(order):
        a = int(archive_of[pos])
        member = f"{pos:06d}.jpg" if pos % 97 else f"{pos:06d},with comma.jpg"
        fname = f"{_url(a)}/{member}"
        names[int(img)] = fname
        out.vectors[fname] = vecs[img]
        out.rows.append(
            {
                "archive_no": a,
                "filename": fname,
                "member": member,
                "md5": md5[img],
                "pixel_md5": pix[img],
                "input_md5": inp[img],
                "valid": True,
                "width": int(100 + img % 50),
                "height": 80,
                "file_size": int(1000 + img),
            }
        )
    for c, a in enumerate(invalid_archive):
        member = f"broken{c}.jpg"
        row = {
            "archive_no": int(a),
            "filename": f"{_url(int(a))}/{member}",
            "member": member,
            "md5": f"bad{c}",
            "pixel_md5": None,
            "input_md5": None,
            "valid": False,
            "width": None,
            "height": None,
            "file_size": 10 + c,
        }
        # insert among the archive's rows so invalid rows sit between valid ones
        idxs = [i for i, r in enumerate(out.rows) if r["archive_no"] == a]
        out.rows.insert(idxs[len(idxs) // 2] if idxs else len(out.rows), row)
    out.groups = [{names[i] for i in g} for g in groups]
    out.exact_groups = [{names[i] for i in g} for g in exact]
    out.input_pairs = [{names[i] for i in g} for g in same_input]
    out.outliers = {names[i] for i in outl}
    return out


def write_dataset(
    wd_url: str,
    ds: Planted,
    archives: list[int] | None = None,
    model: dict | None = None,
    decode_version: int | None = DECODE_VERSION,
) -> WorkDir:
    """Write the dataset's archives (all, or the given ones) into a work_dir.

    ``decode_version=None`` writes them as dedupdask did before it recorded one: no
    ``decode_version`` in ``done.json``, no ``input_md5`` column, and the model-input hash
    (the planted ``input_md5``, else ``pixel_md5``) in ``pixel_md5``.
    """
    wd = WorkDir(wd_url)
    wd.makedirs()
    meta = empty_files_frame()
    for a in archives if archives is not None else range(ds.n_archives):
        rows = [r for r in ds.rows if r["archive_no"] == a]
        local = 0
        recs, feats = [], []
        for r in rows:
            idx = None
            if r["valid"]:
                idx = local
                local += 1
                feats.append(ds.vectors[r["filename"]])
            recs.append(
                {
                    "filename": r["filename"],
                    "archive": _url(a),
                    "member": r["member"],
                    "key": r["member"].rsplit(".", 1)[0],
                    "caption": None,
                    "json": None,
                    "width": r["width"],
                    "height": r["height"],
                    "file_size": r["file_size"],
                    "md5": r["md5"],
                    "pixel_md5": r["pixel_md5"],
                    "input_md5": r["input_md5"],
                    "mean": 100.0,
                    "min": 0.0,
                    "max": 255.0,
                    "stdv": 50.0,
                    "blur": 500.0,
                    "unique": 256,
                    "contrast": 1.0,
                    "error_code": "VALID" if r["valid"] else "ERROR_CORRUPT_IMAGE",
                    "error_message": None if r["valid"] else "cannot identify image file",
                    "index": idx,
                }
            )
        files = pd.DataFrame(recs, columns=list(meta.columns)).astype(meta.dtypes.to_dict())
        features = np.asarray(feats, dtype=np.float32).reshape(-1, D)
        n_valid = int(features.shape[0])
        done = {
            "name": f"{a:05d}.tar",
            "url": _url(a),
            "kind": "tar",
            "status": "done",
            "archive_error": None,
            "counts": {
                "members": len(rows),
                "images": len(rows),
                "valid": n_valid,
                "invalid": len(rows) - n_valid,
                "sidecars": 0,
                "skipped": 0,
            },
            **(model or MODEL),
            "dedupdask_version": "test",
            "timings": {},
        }
        if decode_version is not None:
            done["decode_version"] = decode_version
        skipped = pd.DataFrame(columns=["filename", "member", "reason", "filesize"])
        wd.write_archive(f"{a:05d}.tar", features, files, skipped, done)
        if decode_version is None:
            downgrade_parquet(wd, f"{a:05d}.tar")
    return wd


def downgrade_parquet(wd: WorkDir, name: str) -> None:
    """Rewrite an archive's Parquet file as decode version 1 wrote it: the model-input hash
    in ``pixel_md5``, no ``input_md5`` column."""
    import io

    import pyarrow.parquet as pq

    df = wd.read_files(name)
    df["pixel_md5"] = df["input_md5"].fillna(df["pixel_md5"])
    table = pa.Table.from_pandas(df.drop(columns="input_md5"), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    wd.write_bytes(wd.file(name, "parquet"), buf.getvalue())


@pytest.fixture(scope="module")
def dataset() -> Planted:
    return make_dataset()


@pytest.fixture(scope="module")
def built(dataset, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("analysis_wd"))
    write_dataset(wd, dataset)
    with dask.config.set(scheduler="sync"):
        res = build(wd, config=CFG)
    return wd, res


def _index_of(wd: str) -> dict[str, int]:
    csv = pd.read_csv(f"{wd}/atrain_features.dat.csv", keep_default_na=False)
    assert csv["index"].tolist() == list(range(len(csv)))
    return dict(zip(csv["filename"], csv["index"], strict=True))


def _tables(res) -> dict[str, pd.DataFrame]:
    return {
        "similarity": res.similarity.compute(),
        "outliers": res.outliers.compute(),
        "components": res.components.compute(),
        "invalid": res.invalid.compute(),
        "remove": res.duplicates_to_remove(),
    }


# -- kNN ---------------------------------------------------------------------------------------
def test_exact_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    x = normalize_rows(rng.standard_normal((500, 16)))
    idx, sim = exact_knn(x, 3, block_rows=64)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    want = np.argsort(-s, axis=1, kind="stable")[:, :3]
    assert (idx == want).all()
    assert np.allclose(sim, np.take_along_axis(s, want, axis=1), atol=1e-6)
    # fewer points than k: padded
    idx, sim = knn_graph(x[:2], 3, method="exact")
    assert idx[:, 0].tolist() == [1, 0] and (idx[:, 1:] == -1).all() and np.isnan(sim[:, 1:]).all()


@pytest.mark.parametrize("k", [1, 2, ARGMAX_MAX_K, ARGMAX_MAX_K + 1])
def test_exact_knn_small_and_large_k_agree_and_break_ties_by_index(k):
    """Small k picks by repeated argmax, larger k by argpartition: the same similarities, and
    ties (here everywhere: entries +-1/4 make every dot product exact) lowest index first
    where argmax is used."""
    rng = np.random.default_rng(2)
    x = (rng.integers(0, 2, (300, 16)) * 0.5 - 0.25).astype(np.float32)  # unit rows, exactly
    x[[5, 9, 40]] = x[7]
    idx, sim = exact_knn(x, k, block_rows=128)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    want = np.argsort(-s, axis=1, kind="stable")[:, :k]
    assert np.array_equal(sim, np.take_along_axis(s, want, axis=1))
    if k <= ARGMAX_MAX_K:
        assert (idx == want).all()
        assert idx[7].tolist() == [5, 9, 40][:k] + want[7, 3:].tolist()


@pytest.mark.slow  # ~30 s of pynndescent's numba JIT, in no cache; CI runs the slow cases too
def test_pynndescent_recall_and_determinism():
    """The one test that pays pynndescent's numba JIT."""
    rng = np.random.default_rng(2)
    centres = normalize_rows(rng.standard_normal((40, 32)))
    x = normalize_rows(
        centres[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, 32)) / np.sqrt(32)
    )
    dup = normalize_rows(x[:200] + 0.05 * rng.standard_normal((200, 32)) / np.sqrt(32))
    x = np.concatenate([x, dup])
    a_idx, a_sim = nndescent_knn(x, 3, random_state=7)
    b_idx, b_sim = nndescent_knn(x, 3, random_state=7)
    assert np.array_equal(a_idx, b_idx) and np.array_equal(a_sim, b_sim)
    e_idx, _ = exact_knn(x, 3)
    recall = np.mean([len(set(a_idx[i]) & set(e_idx[i])) / 3 for i in range(len(x))])
    assert recall >= 0.99, recall
    found = {(i, int(j)) for i in range(200) for j in a_idx[i]}
    assert sum((i, 4000 + i) in found for i in range(200)) / 200 >= 0.99


# -- loading -------------------------------------------------------------------------------------
def test_collect_is_lazy_and_ordered(dataset, built):
    wd, res = built
    col = collect(wd)
    assert [a.url for a in col.archives] == sorted(a.url for a in col.archives)
    emb = col.embeddings()
    assert emb.shape == (col.n, D) and emb.dtype == np.float32
    assert emb.numblocks[0] == len([a for a in col.archives if a.n_valid])
    files = col.files()
    assert files.npartitions == 1  # 3,000 images: one partition of IMAGES_PER_PARTITION
    assert collect(wd, images_per_partition=0).files().npartitions == dataset.n_archives
    index = _index_of(wd)
    x = emb.compute()
    for name, i in itertools.islice(index.items(), 0, None, 37):
        assert np.array_equal(x[i], dataset.vectors[name])
    f = files.compute()
    valid = f[f["index"].notna()]
    assert dict(zip(valid["filename"], valid["index"].astype(int), strict=True)) == index
    assert res.embeddings.shape == emb.shape and res.stats.npartitions == files.npartitions


def test_vector_rows_reads_any_rows_in_order(built):
    wd, _ = built
    col = collect(wd)
    x = col.embeddings().compute()
    assert np.array_equal(col.vector_rows(), x)
    rows = np.array([5, 0, col.n - 1, 17, 5, col.archives[1].offset])
    assert np.array_equal(col.vector_rows(rows), x[rows])
    assert col.vector_rows(np.array([], np.int64)).shape == (0, D)
    with pytest.raises(IndexError, match="rows outside"):
        col.vector_rows(np.array([0, col.n]))
    assert col.reads_locally()


def test_mixing_models_raises(dataset, tmp_path):
    write_dataset(str(tmp_path), dataset, archives=[0, 1])
    other = dict(MODEL, model_id="other-model", model_sha256="cd" * 32)
    write_dataset(str(tmp_path), dataset, archives=[2], model=other)
    with pytest.raises(ValueError, match=r"test-model.*00000\.tar.*other-model.*00002\.tar"):
        build(str(tmp_path), config=CFG)


def _kinds(res) -> dict[tuple[int, int], str]:
    s = res.similarity.compute()
    return dict(zip(zip(s["from"], s["to"], strict=True), s["kind"], strict=True))


def test_equal_model_inputs_are_not_exact(tmp_path):
    """Images equal only at model size (same input_md5, no common pixel_md5) share the kNN row
    of their input group but are decided like any pair (here unverified: near), never exact."""
    ds = make_dataset(n=600, n_archives=3, seed=3, n_exact=5, n_pixel=4, n_input=6)
    write_dataset(str(tmp_path), ds)
    res = build(str(tmp_path), config=dataclasses.replace(CFG, verify=False))
    index = _index_of(str(tmp_path))
    kinds = _kinds(res)
    s = res.similarity.compute()
    sims = dict(zip(zip(s["from"], s["to"], strict=True), s["similarity"], strict=True))
    comp = res.components.compute().set_index("index")["component_id"]
    nearest = dict(zip(res.outliers.compute()["index"], res.outliers.compute()["nearest"], strict=True))
    for g in ds.input_pairs:
        a, b = sorted(index[f] for f in g)
        assert kinds[(a, b)] == "near" and sims[(a, b)] == 1.0
        assert comp[a] == comp[b]
        assert nearest.get(a, b) == b and nearest.get(b, a) == a
    for g in ds.exact_groups:
        for a, b in itertools.combinations(sorted(index[f] for f in g), 2):
            assert kinds[(a, b)] == "exact"
    counts = res.run["counts"]
    assert counts["exact_groups"] == len(ds.exact_groups)
    assert counts["knn_representatives"] == counts["representatives"] - len(ds.input_pairs)
    assert counts["same_input_candidates"] == len(ds.input_pairs)
    assert res.run["decode_version"] == DECODE_VERSION


def test_work_dir_without_decode_version_reads_its_pixel_md5_as_input_md5(tmp_path):
    """Before done.json recorded a decode version, pixel_md5 hashed the model-input pixels:
    such work_dirs still load, and their pixel duplicates are no longer called exact."""
    ds = make_dataset(n=600, n_archives=3, seed=4, n_exact=5, n_pixel=4, n_input=0)
    write_dataset(str(tmp_path), ds, decode_version=None)
    assert "decode_version" not in WorkDir(str(tmp_path)).read_done("00000.tar")
    res = build(str(tmp_path), config=dataclasses.replace(CFG, verify=False))
    assert res.run["decode_version"] == 1
    files = res.files.compute()
    assert files["pixel_md5"].isna().all() and files["input_md5"].notna().any()
    index = _index_of(str(tmp_path))
    md5 = {r["filename"]: r["md5"] for r in ds.rows}
    kinds = _kinds(res)
    for g in ds.exact_groups:
        same_bytes = len({md5[f] for f in g}) == 1
        for a, b in itertools.combinations(sorted(index[f] for f in g), 2):
            assert kinds[(a, b)] == ("exact" if same_bytes else "near")
    again = load(str(tmp_path))
    pd.testing.assert_frame_equal(again.similarity.compute(), res.similarity.compute())


def test_mixing_decode_versions_raises(dataset, tmp_path, capsys):
    write_dataset(str(tmp_path), dataset, archives=[0, 1], decode_version=None)
    write_dataset(str(tmp_path), dataset, archives=[2])
    with pytest.raises(ValueError, match=r"decode_version 1 .*00000\.tar.*2 .*00002\.tar"):
        build(str(tmp_path), config=CFG)
    from dedupdask.cli import main

    assert main(["build", str(tmp_path), "--no-progress", "--client", "sync"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "00000.tar" in err and "00002.tar" in err, err


def test_failed_and_missing_archives_reported(dataset, tmp_path):
    wd = write_dataset(str(tmp_path), dataset, archives=[0, 1])
    wd.write_failed("broken.tar", {"url": "s3://bucket/shards/broken.tar", "error": "403"})
    wd.write_bytes(wd.file("halfway.tar", "dat"), b"\0" * 4 * D)  # crashed extraction
    with pytest.warns(UserWarning, match=r"failed.*broken\.tar.*halfway\.tar"):
        res = build(str(tmp_path), config=CFG)
    assert res.failed == ["broken.tar"] and res.missing == ["halfway.tar"]
    assert res.archives == ["00000.tar", "00001.tar"]
    s = res.summary()
    assert (s["archives_done"], s["archives_failed"], s["archives_missing"]) == (2, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load(str(tmp_path))
    assert again.failed == ["broken.tar"] and again.missing == ["halfway.tar"]


def test_dat_size_mismatch_is_an_error(dataset, tmp_path):
    wd = write_dataset(str(tmp_path), dataset, archives=[0])
    wd.write_bytes(wd.file("00000.tar", "dat"), b"\0" * 4 * D * 3)
    with pytest.raises(ValueError, match="00000.tar.*bytes"):
        collect(str(tmp_path))


# -- the analyses ------------------------------------------------------------------------------
def test_planted_duplicates_precision_recall(dataset, built):
    wd, res = built
    index = _index_of(wd)
    name = {i: f for f, i in index.items()}
    found = {
        tuple(sorted((name[a], name[b])))
        for a, b in zip(res.similarity.compute()["from"], res.similarity.compute()["to"], strict=True)
    }
    planted = dataset.pairs()
    tp = len(found & planted)
    precision, recall = tp / max(1, len(found)), tp / len(planted)
    print(
        f"similarity: {len(planted)} planted pairs, precision {precision:.4f}, recall {recall:.4f}"
    )
    assert precision >= 0.99 and recall >= 0.99
    assert (res.similarity.compute()["from"] < res.similarity.compute()["to"]).all()
    assert not res.similarity.compute().duplicated(["from", "to"]).any()
    assert res.similarity.compute()["similarity"].is_monotonic_decreasing
    # exact groups are pairs with similarity exactly 1.0
    sim = {
        (a, b): s
        for a, b, s in zip(
            res.similarity.compute()["from"], res.similarity.compute()["to"], res.similarity.compute()["similarity"], strict=True
        )
    }
    for g in dataset.exact_groups:
        for a, b in itertools.combinations(sorted(index[f] for f in g), 2):
            assert sim[(a, b)] == 1.0
    assert res.run["counts"]["exact_groups"] == len(dataset.exact_groups)
    assert res.run["counts"]["representatives"] == len(index) - sum(
        len(g) - 1 for g in dataset.exact_groups
    )
    assert set(res.similarity.compute()["filename_from"]) <= set(index)


def test_components_line_up_with_dat_csv(dataset, built):
    """fastdup #324: ids must index atrain_features.dat.csv even with invalid images."""
    wd, res = built
    index = _index_of(wd)
    assert len(res.invalid) == 12 and len(res.components) == len(index)
    cc = pd.read_csv(f"{wd}/connected_components.csv")
    assert list(cc.columns) == ["__id", "component_id", "component_size"]
    assert cc["__id"].tolist() == list(range(len(index)))
    comp = dict(zip(cc["__id"], cc["component_id"], strict=True))
    size = dict(zip(cc["__id"], cc["component_size"], strict=True))
    for g in dataset.groups:
        ids = {comp[index[f]] for f in g}
        assert len(ids) == 1 and ids == {min(index[f] for f in g)}
        assert all(size[index[f]] == len(g) for f in g)  # images, not edges (#74/#306)
    in_groups = {index[f] for g in dataset.groups for f in g}
    assert all(size[i] == 1 and comp[i] == i for i in range(len(index)) if i not in in_groups)
    n_multi = cc.loc[cc["component_size"] > 1, "component_id"].nunique()
    assert n_multi == len(dataset.groups) == res.summary()["duplicate_groups"]


def test_outliers_rank_on_top(dataset, built):
    wd, res = built
    index = _index_of(wd)
    n_out = len(res.outliers)
    assert n_out == int(np.ceil(0.01 * len(index)))
    top = set(res.outliers.compute()["filename"].head(len(dataset.outliers)))
    assert top == dataset.outliers
    assert res.outliers.compute()["similarity"].is_monotonic_increasing
    csv = pd.read_csv(f"{wd}/outliers.csv")
    assert (
        list(csv.columns) == ["from", "to", "distance"]
        and csv["distance"].is_monotonic_increasing is False
    )
    assert csv["from"].iloc[-1] == res.outliers.compute()["index"].iloc[0]


def test_duplicates_to_remove_keeps_one_per_component(dataset, built):
    wd, res = built
    for keep in ("largest_resolution", "largest_file", "first"):
        rm = res.duplicates_to_remove(keep=keep)
        assert list(rm.columns) == [
            "index",
            "filename",
            "archive",
            "member",
            "key",
            "component_id",
            "keeper_index",
            "keeper_filename",
        ]
        assert len(rm) == res.summary()["removable"] == sum(len(g) - 1 for g in dataset.groups)
        assert not set(rm["index"]) & set(rm["keeper_index"])
    first = res.duplicates_to_remove(keep="first")
    assert (first["keeper_index"] == first["component_id"]).all()
    big = res.duplicates_to_remove(keep="largest_file")
    stats = res.stats.compute().set_index("index")
    for kp, grp in big.groupby("keeper_index"):
        assert stats.loc[kp, "file_size"] >= stats.loc[grp["index"], "file_size"].max()
    with pytest.raises(ValueError, match="keep"):
        res.duplicates_to_remove(keep="newest")


def test_csv_files(dataset, built):
    wd, res = built
    sim = pd.read_csv(f"{wd}/similarity.csv")
    assert list(sim.columns) == ["from", "to", "distance"] and len(sim) == 2 * len(res.similarity)
    assert sim["distance"].is_monotonic_decreasing
    assert set(zip(sim["from"], sim["to"], strict=True)) >= set(
        zip(res.similarity.compute()["to"], res.similarity.compute()["from"], strict=True)
    )
    stats = pd.read_csv(f"{wd}/atrain_stats.csv")
    assert list(stats.columns) == [
        "index",
        "filename",
        "width",
        "height",
        "unique",
        "blur",
        "mean",
        "min",
        "max",
        "stdv",
        "file_size",
        "contrast",
    ]
    assert stats["filename"].str.contains(",").any()  # quoted properly, not one big field
    assert len(stats) == len(res.components)
    bad = pd.read_csv(f"{wd}/atrain_features.bad.csv")
    assert list(bad.columns) == ["index", "filename", "error_code", "filesize"] and len(bad) == 12
    assert (bad["error_code"] == "ERROR_CORRUPT_IMAGE").all()
    assert set(bad["filename"]) == {r["filename"] for r in dataset.rows if not r["valid"]}
    assert "DedupResult(" in repr(res) and "12 invalid" in repr(res)


def test_model_thresholds_and_config(dataset, built, tmp_path):
    wd, res = built
    assert res.params["threshold"] == 0.91 and res.params["ccthreshold"] == 0.955  # the model's
    assert res.params["knn_method"] == "exact"
    # run.json prints the table the stages read: the model's row, what was set, what was used
    th = res.run["thresholds"]
    assert th["model_id"] == "test-model" and th["set_by_user"] == {"lower_threshold": 0.01}
    assert th["table"]["threshold"] == 0.91 and th["table"]["lower_threshold"] == 0.05
    assert th["resolved"] == {**th["table"], "lower_threshold": 0.01}
    assert res.params["lower_threshold"] == 0.01
    assert len(res.outliers) == -(-len(res.components) // 100)  # 1 % of the valid images
    assert load(wd).run["thresholds"] == th
    strict = build(
        wd,
        config=RunConfig(run_mode=2, progress=False, threshold=0.999, ccthreshold=0.999),
        write=False,
    )
    assert strict.params["threshold"] == 0.999
    assert (strict.similarity.compute()["similarity"] >= 0.999).all() and len(strict.similarity) < len(
        res.similarity.compute()
    )


# -- reproducibility ----------------------------------------------------------------------------
def _files_of(wd: str) -> dict[str, bytes]:
    names = [
        "atrain_features.dat.csv",
        "similarity.csv",
        "outliers.csv",
        "connected_components.csv",
        "atrain_stats.csv",
        "atrain_features.bad.csv",
    ]
    return {n: open(f"{wd}/{n}", "rb").read() for n in names}


def test_two_jobs_into_one_work_dir_equal_one_job(dataset, built, tmp_path):
    wd, res = built
    # two "jobs" with disjoint archive slices, the second one finishing first
    write_dataset(str(tmp_path), dataset, archives=[3, 4, 5])
    write_dataset(str(tmp_path), dataset, archives=[0, 1, 2])
    with dask.config.set(scheduler="sync"):
        other = build(str(tmp_path), config=CFG)
    for key, table in _tables(res).items():
        pd.testing.assert_frame_equal(table, _tables(other)[key], obj=key)
    assert _files_of(wd) == _files_of(str(tmp_path))


@pytest.mark.slow  # ~15 s: a cluster; test_scale compares every table of a cluster build too
def test_sync_and_local_cluster_agree(built):
    from distributed import Client, LocalCluster

    wd, res = built
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        dist = build(wd, config=CFG, client=client, write=False)
    assert dist.run["analysed_on"] == "workers"
    for key, table in _tables(res).items():
        pd.testing.assert_frame_equal(table, _tables(dist)[key], obj=key)
    pd.testing.assert_frame_equal(dist.issues.compute(), res.issues.compute(), obj="issues")
    assert dist.run["counts"] == res.run["counts"] and dist.run["issues"] == res.run["issues"]


def test_load_round_trips(built):
    wd, res = built
    back = load(wd)
    for key, table in _tables(res).items():
        pd.testing.assert_frame_equal(table, _tables(back)[key], obj=key, check_dtype=False)
    assert back.summary() == res.summary()
    assert back.params == res.params and back.archives == res.archives
    assert back.embeddings.shape == res.embeddings.shape
    pd.testing.assert_frame_equal(back.stats.compute(), res.stats.compute())
    with pytest.raises(FileNotFoundError, match="run.json"):
        load(wd + "/results")


# -- end to end on real extracted images -------------------------------------------------------
def test_end_to_end_on_sample_shards(tmp_path):
    from dedupdask.datasets import make_sample_shards
    from dedupdask.pipeline import extract

    shards = make_sample_shards(str(tmp_path / "shards"))
    wd = str(tmp_path / "work")
    extract(shards.root, wd, model_path="dct", client="sync", progress=False)
    with dask.config.set(scheduler="sync"):
        res = build(wd, config=RunConfig(run_mode=2, progress=False))
    index = _index_of(wd)
    assert len(index) == len(res.components) == res.embeddings.shape[0]
    pairs = {(a, b) for a, b in zip(res.similarity.compute()["from"], res.similarity.compute()["to"], strict=True)}
    comp = res.components.compute().set_index("index")["component_id"]
    planted = set()
    for a, b, edit in shards.truth.itertuples(index=False):
        i, j = sorted((index[a], index[b]))
        planted.add((i, j))
        if edit == "exact":
            assert (i, j) in pairs and comp[i] == comp[j]
    tp = len(pairs & planted)
    precision, recall = tp / max(1, len(pairs)), tp / len(planted)
    print(f"sample shards (dct): precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= 0.9 and recall >= 0.75
    bad = set(zip(res.invalid.compute()["filename"], res.invalid.compute()["error_code"], strict=True))
    expected = {(f, e) for f, e in shards.broken.itertuples(index=False) if e != "skipped"}
    assert bad == expected
    back = load(wd)
    pd.testing.assert_frame_equal(back.components.compute(), res.components.compute())


def test_large_exact_groups_stay_bounded():
    """Groups too large to list every pair become stars; components still hold them whole."""
    from dedupdask.analyses import components_table, exact_groups, similarity_table

    md5 = ["same"] * 6 + ["x", "y"]
    groups = exact_groups(md5)
    reps = groups.reps  # [0, 6, 7]
    nbr_idx = np.array([[1], [0], [1]])
    nbr_sim = np.array([[0.95], [0.95], [0.2]], np.float32)
    names = [f"f{i}" for i in range(8)]
    full = similarity_table(groups, reps, nbr_idx, nbr_sim, 0.9, names)
    assert len(full) == 15 + 6  # C(6,2) exact pairs + 6 x 1 expanded near pairs
    star = similarity_table(groups, reps, nbr_idx, nbr_sim, 0.9, names, max_group_pairs=4)
    assert len(star) == 5 + 6 and set(star.loc[star["similarity"] == 1.0, "from"]) == {0}
    comps = components_table(groups, reps, nbr_idx, nbr_sim, 0.9)
    assert comps["component_size"].tolist() == [7] * 7 + [1]


def test_empty_work_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no archive is done"):
        build(str(tmp_path), config=CFG)


@pytest.mark.slow  # ~12 s: a cluster; the empty tables are compared in-process too
def test_cluster_build_without_candidates_or_outliers(tmp_path):
    """The workers path with almost nothing to report: no candidate pair (only a few exact
    copies), no invalid image and lower_threshold 0 (no outlier) gives the same tables, empty
    ones included, as the sync build."""
    from distributed import Client, LocalCluster

    ds = make_dataset(n=240, n_archives=3, n_near=0, n_exact=0, n_pixel=0, n_outliers=0, n_invalid=0)
    cfg = dataclasses.replace(CFG, lower_threshold=0.0, threshold=0.999, ccthreshold=0.999)
    for name in ("sync", "cluster"):
        write_dataset(str(tmp_path / name), ds)
    with dask.config.set(scheduler="sync"):
        ref = build(str(tmp_path / "sync"), config=cfg)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        dist = build(str(tmp_path / "cluster"), config=cfg, client=client)
    assert dist.run["analysed_on"] == "workers"
    assert ref.run["counts"]["candidate_pairs"] == ref.run["counts"]["outliers"] == ref.run["counts"]["invalid"] == 0
    assert dist.run["counts"] == ref.run["counts"]
    for key in ("similarity", "outliers", "components", "invalid", "issues"):
        got, want = getattr(dist, key).compute(), getattr(ref, key).compute()
        pd.testing.assert_frame_equal(got, want, obj=key)
    for name in ("similarity.csv", "outliers.csv", "connected_components.csv", "atrain_features.bad.csv"):
        assert (tmp_path / "cluster" / name).read_bytes() == (tmp_path / "sync" / name).read_bytes(), name
