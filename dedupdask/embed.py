"""Embedding stage: batches of model-size RGB arrays -> L2-normalised float32 vectors.

The onnxruntime session is built where it runs: a per-process cache keyed by model file and
thread count, so the synchronous scheduler, threads, processes and distributed workers all
build it once per process and never pickle it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

    from .models import ModelSpec

__all__ = ["get_session", "embed_batch"]

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
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return np.ascontiguousarray(out, dtype="<f4")
