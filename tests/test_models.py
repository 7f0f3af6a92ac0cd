"""Tests for the models stage: built-in graphs, user ONNX detection, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from dedupdask.models import (
    DEFAULT_MODEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    available_models,
    file_sha256,
    resolve_model,
)
from dedupdask.models.build_dct import build_dct_model, dct_matrix, dct_reference

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _session(spec: ModelSpec) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(spec.path, opts, providers=["CPUExecutionProvider"])


def _embed(spec: ModelSpec, images: np.ndarray) -> np.ndarray:
    sess = _session(spec)
    return sess.run([spec.output_name], {spec.input_name: spec.prepare(images)})[0]


def _photo(seed: int, size: int = 256) -> Image.Image:
    """A smooth random 'scene': blurred colour blobs plus edges, deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, r = rng.random(3) * [1, 1, 0.4] + [0, 0, 0.1]
        colour = rng.random(3)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        img[mask] = colour
    for _ in range(4):
        a, b, c = rng.normal(size=3)
        img += 0.15 * np.sin(8 * (a * xx + b * yy) + c)[..., None] * rng.random(3)
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(img)


def _batch(images: list[Image.Image], size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.stack([np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR)) for im in images])


# -- resolve_model -------------------------------------------------------------------------


def test_available_models_and_default():
    assert DEFAULT_MODEL == "effnet-lite0"
    assert available_models()[0] == DEFAULT_MODEL
    assert "dct" in available_models()


@pytest.mark.parametrize("name", [None, "effnet-lite0", "dct"])
def test_resolve_builtin(name):
    spec = resolve_model(name)
    assert spec.model_id == (name or DEFAULT_MODEL)
    assert spec.layout == "NHWC" and spec.dtype == "uint8"
    assert spec.input_name == "image" and spec.output_name == "embedding"
    assert spec.mean is None and spec.std is None
    assert len(spec.sha256) == 64 and spec.sha256 == file_sha256(spec.path)
    assert 0 < spec.threshold <= spec.ccthreshold < 1
    sess = _session(spec)
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    assert inp.shape[1:] == [spec.height, spec.width, 3] or inp.shape[3] == 3
    assert sess.get_outputs()[0].shape[1] == spec.dim
    batch = np.zeros((2, spec.height, spec.width, 3), np.uint8)
    assert spec.prepare(batch) is batch


def test_resolve_builtin_rejects_options():
    with pytest.raises(ValueError, match="built in"):
        resolve_model("dct", mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="built in"):
        resolve_model("effnet-lite0", input_size=(160, 160))


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        resolve_model(str(missing))


def test_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(ValueError, match="notes.onnx"):
        resolve_model(str(bad))


def test_prepare_checks_shape():
    spec = resolve_model("dct")
    with pytest.raises(ValueError, match="64, 64, 3"):
        spec.prepare(np.zeros((1, 32, 32, 3), np.uint8))


# -- DCT -----------------------------------------------------------------------------------


def test_dct_matrix_matches_fft():
    """The DCT-II matrix equals an FFT-based DCT (Makhoul's algorithm), not just its formula."""
    n = 32
    x = np.random.default_rng(0).normal(size=(n, 5))
    v = np.concatenate([x[::2], x[1::2][::-1]])
    f = np.fft.fft(v, axis=0)
    k = np.arange(n)[:, None]
    ref = np.real(f * np.exp(-1j * np.pi * k / (2 * n))) * np.sqrt(2 / n)
    ref[0] /= np.sqrt(2)
    np.testing.assert_allclose(dct_matrix(n) @ x, ref, atol=1e-10)


def test_dct_matrix_matches_scipy():
    fft = pytest.importorskip("scipy.fft")
    np.testing.assert_allclose(dct_matrix(32), fft.dct(np.eye(32), norm="ortho", axis=0))


def test_dct_graph_matches_numpy_reference():
    spec = resolve_model("dct")
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    photos = _batch([_photo(s) for s in range(3)], (64, 64))
    x = np.concatenate([noise, photos])
    got = _embed(spec, x)
    assert got.shape == (6, 63) and got.dtype == np.float32
    np.testing.assert_allclose(got, dct_reference(x), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_dct_reference_resize_matches_pillow():
    """The reference's resize is Pillow's antialiased bilinear filter."""
    from dedupdask.models.build_dct import LUMA, resize_matrix

    x = _batch([_photo(7)], (64, 64))[0]
    y = (x.astype(np.float64) @ LUMA).astype(np.float32)
    pil = np.asarray(Image.fromarray(y, mode="F").resize((32, 32), Image.BILINEAR))
    r = resize_matrix(64, 32)
    np.testing.assert_allclose(r @ y @ r.T, pil, atol=1e-6)


def test_dct_flip_invariant_and_flat():
    spec = resolve_model("dct")
    x = _batch([_photo(3)], (64, 64))
    e, ef = _embed(spec, np.concatenate([x, np.ascontiguousarray(x[:, :, ::-1])]))
    np.testing.assert_allclose(e, ef, atol=1e-5)
    flat = _embed(spec, np.full((1, 64, 64, 3), 128, np.uint8))
    assert np.linalg.norm(flat) < 0.05


def test_dct_committed_file_is_reproducible(tmp_path):
    out = tmp_path / "dct.onnx"
    onnx.save(build_dct_model(), str(out))
    assert file_sha256(out) == resolve_model("dct").sha256


# -- EfficientNet-Lite0 ----------------------------------------------------------------------


def test_effnet_provenance_matches_file():
    spec = resolve_model("effnet-lite0")
    prov = json.loads(Path(spec.path).with_name("effnet_lite0.json").read_text())
    assert prov["sha256"] == spec.sha256
    assert prov["input"]["shape"][1:] == [spec.height, spec.width, 3]
    assert Path(spec.path).with_name("LICENSE-effnet-lite0").is_file()
    assert "effnet_lite0.onnx" in Path(spec.path).with_name("NOTICE").read_text()


def test_effnet_embeddings_normalised():
    spec = resolve_model("effnet-lite0")
    x = _batch([_photo(s) for s in range(4)], (spec.height, spec.width))
    emb = _embed(spec, x)
    assert emb.shape == (4, 1280) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    # deterministic and batch-independent
    np.testing.assert_allclose(_embed(spec, x[1:2]), emb[1:2], atol=1e-4)


@pytest.mark.parametrize("name", ["effnet-lite0", "dct"])
def test_edited_copies_more_similar_than_unrelated(name):
    spec = resolve_model(name)
    size = (spec.height, spec.width)
    originals = [_photo(s, size=320) for s in range(10, 16)]
    flipped = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in originals]
    halved = [im.resize((160, 160), Image.BICUBIC) for im in originals]
    emb = _embed(spec, _batch(originals + flipped + halved, size))
    n = len(originals)
    o, f, h = emb[:n], emb[n : 2 * n], emb[2 * n :]
    near = np.concatenate([(o * f).sum(1), (o * h).sum(1)])
    sims = o @ o.T
    unrelated = sims[~np.eye(n, dtype=bool)]
    assert near.min() > unrelated.max(), (near.min(), unrelated.max())


# -- user ONNX files -----------------------------------------------------------------------


def _tiny_model(path, *, layout: str, elem: int, shape: list, dim: int = 3) -> None:
    """A 'model' that averages each channel: enough to test layout/dtype handling."""
    axes = [1, 2] if layout == "NHWC" else [2, 3]
    nodes = []
    src = "x"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        src = "xf"
    nodes.append(helper.make_node("ReduceMean", [src], ["m"], axes=axes, keepdims=0))
    nodes.append(helper.make_node("MatMul", ["m", "w"], ["out"]))
    channels = shape[3] if layout == "NHWC" else shape[1]
    w = numpy_helper.from_array(np.eye(channels, dim, dtype=np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", dim])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_user_nchw_float(tmp_path):
    path = tmp_path / "nchw.onnx"
    _tiny_model(path, layout="NCHW", elem=TensorProto.FLOAT, shape=["B", 3, 96, 80], dim=5)
    spec = resolve_model(str(path))
    assert spec.model_id == "onnx:nchw.onnx"
    assert (spec.layout, spec.dtype, spec.height, spec.width, spec.dim) == (
        "NCHW",
        "float32",
        96,
        80,
        5,
    )
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    assert spec.input_name == "x" and spec.output_name == "out"
    batch = np.random.default_rng(0).integers(0, 256, (2, 96, 80, 3), dtype=np.uint8)
    fed = spec.prepare(batch)
    assert fed.shape == (2, 3, 96, 80) and fed.dtype == np.float32 and fed.flags.c_contiguous
    expect = (batch / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(fed, expect.transpose(0, 3, 1, 2), atol=1e-5)
    out = _embed(spec, batch)
    np.testing.assert_allclose(out[:, :3], expect.mean(axis=(1, 2)), atol=1e-4)
    with pytest.raises(ValueError, match="contradicts"):
        resolve_model(str(path), input_size=(224, 224))


def test_user_nchw_float_custom_stats_dynamic_size(tmp_path):
    path = tmp_path / "dyn.onnx"
    _tiny_model(path, layout="NCHW", elem=TensorProto.FLOAT, shape=["B", 3, "H", "W"])
    spec = resolve_model(str(path), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert (spec.height, spec.width) == (224, 224)
    assert spec.mean == (0.5, 0.5, 0.5)
    spec = resolve_model(str(path), input_size=(128, 96))
    assert (spec.height, spec.width) == (128, 96)
    fed = spec.prepare(np.full((1, 128, 96, 3), 255, np.uint8))
    np.testing.assert_allclose(fed[0, :, 0, 0], (1 - np.array(IMAGENET_MEAN)) / IMAGENET_STD)


def test_user_nhwc_uint8(tmp_path):
    path = tmp_path / "nhwc.onnx"
    _tiny_model(path, layout="NHWC", elem=TensorProto.UINT8, shape=["B", 112, 112, 3])
    spec = resolve_model(path)
    assert (spec.layout, spec.dtype, spec.height, spec.width, spec.dim) == (
        "NHWC",
        "uint8",
        112,
        112,
        3,
    )
    assert spec.mean is None and spec.std is None
    batch = np.zeros((1, 112, 112, 3), np.uint8)
    assert spec.prepare(batch) is batch
    with pytest.raises(ValueError, match="uint8"):
        resolve_model(path, mean=(0.5, 0.5, 0.5))


def test_user_dynamic_output_dim(tmp_path):
    path = tmp_path / "dyn_out.onnx"
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["xf"], ["out"], axis=1),
        ],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["B", 4, 4, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "D"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    assert resolve_model(str(path)).dim == 48


def test_user_layout_undetectable(tmp_path):
    path = tmp_path / "gray.onnx"
    _tiny_model(path, layout="NCHW", elem=TensorProto.FLOAT, shape=["B", 1, 64, 64], dim=1)
    with pytest.raises(ValueError, match="3-channel"):
        resolve_model(str(path))
