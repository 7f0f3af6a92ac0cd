"""Test helpers: a real ``dask scheduler`` + ``dask worker`` cluster on 127.0.0.1
(:func:`dedupdask.testing.shellcluster.shell_cluster`), and a slow model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dedupdask.testing.shellcluster import shell_cluster

__all__ = ["shell_cluster", "slow_model"]


def slow_model(path: Path, size: int = 128, channels: int = 24) -> str:
    """Write a deliberately heavy user ONNX model (uint8 NHWC in, ~20 ms per image on one core).

    Two 5x5 convolutions at full resolution with small random weights: slow enough that a test
    can kill a worker in the middle of an archive, tiny on disk, and deterministic.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.05, (channels, 3, 5, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.05, (channels, channels, 5, 5)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[2, 2, 2, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", channels])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)
