"""Embedding stage: batches of model-size RGB arrays -> L2-normalised float32 vectors.

The onnxruntime session is built where it runs: a per-process cache keyed by model file and
thread count, so the synchronous scheduler, threads, processes and distributed workers all
build it once per process and never pickle it.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

    from .models import ModelSpec

__all__ = ["get_session", "embed_batch", "perceptual_batch", "BUILTIN_NORMALISED"]

#: Built-in graphs L2-normalise inside the graph; the DCT graph maps a flat image to a
#: (nearly) zero vector on purpose, which must not be re-normalised into noise.
BUILTIN_NORMALISED = frozenset({"effnet-lite0", "dct"})

_SESSIONS: dict[tuple[str, str, int], ort.InferenceSession] = {}
_LOCK = threading.Lock()


def get_session(spec: ModelSpec, threads: int = 1) -> ort.InferenceSession:
    """Return this process's onnxruntime session for ``spec`` (built on first use).

    Parameters
    ----------
    spec : ModelSpec
        The resolved model.
    threads : int
        Intra-op threads; one per archive task by default (see ``RunConfig.worker_threads``).
    """
    key = (spec.path, spec.sha256, threads)
    sess = _SESSIONS.get(key)
    if sess is not None:
        return sess
    with _LOCK:
        sess = _SESSIONS.get(key)
        if sess is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if threads == 1:
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(spec.path, opts, providers=["CPUExecutionProvider"])
            _SESSIONS[key] = sess
    return sess


def embed_batch(spec: ModelSpec, batch: np.ndarray, threads: int = 1) -> np.ndarray:
    """Embed a batch of images.

    Parameters
    ----------
    spec : ModelSpec
        The resolved model.
    batch : ndarray
        uint8 ``[B, spec.height, spec.width, 3]`` RGB.
    threads : int
        onnxruntime intra-op threads.

    Returns
    -------
    ndarray
        float32 ``[B, spec.dim]``, each row L2-normalised (rows of zeros stay zero).
    """
    if batch.shape[0] == 0:
        return np.zeros((0, spec.dim), dtype=np.float32)
    sess = get_session(spec, threads)
    out = sess.run([spec.output_name], {spec.input_name: spec.prepare(batch)})[0]
    out = np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)
    if out.shape[1] != spec.dim:
        raise ValueError(f"model {spec.model_id} returned width {out.shape[1]}, expected {spec.dim}")
    if spec.model_id not in BUILTIN_NORMALISED:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
    return np.ascontiguousarray(out, dtype="<f4")


@functools.lru_cache(maxsize=8)
def _dct_projections(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    from .models.build_dct import _projection

    return (
        _projection(height, 32, 8).astype(np.float32),
        np.ascontiguousarray(_projection(width, 32, 8).T.astype(np.float32)),
    )


def perceptual_batch(batch: np.ndarray) -> np.ndarray:
    """The ``dct`` model's 63-d descriptor, computed in numpy from any input size.

    The DCT graph is linear up to its last steps (luma, antialiased resize to 32x32 and the
    8x8 low DCT block fold into ``C = P_h @ Y @ P_w.T``), so it can be applied straight to the
    main model's input pixels: no second decode, no second resize, no ONNX call. Same maths as
    ``dedupdask/models/dct.onnx`` (flip-invariant, DC dropped, L2 with its norm floor).

    Parameters
    ----------
    batch : ndarray
        uint8 ``[B, H, W, 3]`` RGB.

    Returns
    -------
    ndarray
        float32 ``[B, 63]``.

    Examples
    --------
    >>> x = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3), dtype=np.uint8)
    >>> perceptual_batch(x).shape
    (2, 63)
    """
    from .models.build_dct import LUMA, NORM_FLOOR

    ph, pw = _dct_projections(batch.shape[1], batch.shape[2])
    lw = LUMA.astype(np.float32)
    y = batch[..., 0] * lw[0] + batch[..., 1] * lw[1] + batch[..., 2] * lw[2]
    coef = ph @ y.astype(np.float32) @ pw  # [B, 8, 8]
    coef[:, :, 1::2] = np.abs(coef[:, :, 1::2])
    flat = coef.reshape(len(batch), -1)[:, 1:]
    norm = np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), NORM_FLOOR)
    return np.ascontiguousarray(flat / norm, dtype="<f4")
