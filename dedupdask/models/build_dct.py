"""Models stage: build the weight-free DCT embedding graph ``dct.onnx``.

The graph is a perceptual-hash-like descriptor written as plain ONNX ops with constant
matrices, so it has no learned weights and is fully deterministic:

1. input ``image``: uint8 ``[B, H, W, 3]`` RGB (``H = W = 64``, dynamic batch);
2. luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601), scaled to ``[0, 1]``;
3. resize to ``32 x 32`` with an antialiased bilinear (triangle) filter, the same filter
   Pillow's ``Image.resize(..., BILINEAR)`` uses when shrinking;
4. orthonormal 2-D DCT-II of the ``32 x 32`` luma;
5. keep the ``8 x 8`` lowest frequencies and drop DC (63 values);
6. take ``abs()`` of the coefficients with odd horizontal frequency: a horizontal flip of
   the image multiplies exactly those by ``-1``, so the descriptor is flip invariant;
7. L2-normalise; output ``embedding``: float32 ``[B, 63]``.

Steps 3-5 are linear and separable, so they are folded into one constant ``8 x 64``
matrix ``M = D[:8] @ R`` applied on both sides: ``C = M @ Y @ M.T``. An image without any
luma variation (a flat colour) has no AC energy and maps to (nearly) the zero vector; see
``NORM_FLOOR``.

``onnx`` is needed only to run this script (a build/test-time dependency); the generated
``dct.onnx`` is committed and shipped in the package.

Run ``python -m dedupdask.models.build_dct`` to rewrite ``dedupdask/models/dct.onnx``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

__all__ = ["LUMA", "build_dct_model", "dct_matrix", "dct_reference", "resize_matrix"]

#: BT.601 luma weights for RGB in ``[0, 255]``, scaled so that luma lies in ``[0, 1]``.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64) / 255.0

#: Opset and IR version of the graph: old enough for onnxruntime >= 1.17.
OPSET = 17
IR_VERSION = 8

#: Floor of the L2 norm. Luma is in ``[0, 1]``; float32 rounding leaves AC energy of about
#: ``1e-7`` on a flat image, while a visible gradient has an AC norm above ``1e-2``. Images
#: whose AC norm is below the floor are scaled by ``1 / NORM_FLOOR`` instead of normalised,
#: so a flat colour maps to (nearly) the zero vector, not to amplified rounding noise.
NORM_FLOOR = 1e-4


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Return the ``[n_out, n_in]`` matrix of an antialiased bilinear (triangle) resize.

    This is the separable filter Pillow uses for ``Image.BILINEAR``: when shrinking, the
    triangle kernel is widened by the scale factor, so every input pixel contributes.

    Parameters
    ----------
    n_in, n_out : int
        Input and output lengths of one axis.

    Returns
    -------
    numpy.ndarray
        float64 ``[n_out, n_in]``, rows summing to 1.

    Examples
    --------
    >>> resize_matrix(4, 2).round(3)
    array([[0.429, 0.429, 0.143, 0.   ],
           [0.   , 0.143, 0.429, 0.429]])
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    out = np.zeros((n_out, n_in), dtype=np.float64)
    centers = (np.arange(n_out) + 0.5) * scale
    pos = np.arange(n_in) + 0.5
    for i, c in enumerate(centers):
        w = np.clip(1.0 - np.abs(pos - c) / support, 0.0, None)
        out[i] = w / w.sum()
    return out


def dct_matrix(n: int) -> np.ndarray:
    """Return the orthonormal DCT-II matrix ``D`` of size ``n`` (``X = D @ x``).

    Parameters
    ----------
    n : int
        Transform length.

    Returns
    -------
    numpy.ndarray
        float64 ``[n, n]`` with ``D @ D.T == I``; equals ``scipy.fft.dct(np.eye(n),
        norm="ortho", axis=0)``.

    Examples
    --------
    >>> d = dct_matrix(8)
    >>> bool(np.allclose(d @ d.T, np.eye(8)))
    True
    """
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _projection(size: int, dct_size: int, keep: int) -> np.ndarray:
    """Fold resize and DCT into one ``[keep, size]`` matrix."""
    return dct_matrix(dct_size)[:keep] @ resize_matrix(size, dct_size)


def dct_reference(
    images: np.ndarray, *, dct_size: int = 32, keep: int = 8, flip_invariant: bool = True
) -> np.ndarray:
    """Compute the DCT embedding in numpy, step by step (the graph's specification).

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``[B, H, W, 3]`` RGB.
    dct_size, keep : int
        Side of the resized luma and of the kept low-frequency block.
    flip_invariant : bool
        Take ``abs()`` of odd horizontal frequencies.

    Returns
    -------
    numpy.ndarray
        float32 ``[B, keep * keep - 1]``, L2-normalised rows.

    Examples
    --------
    >>> x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    >>> dct_reference(x).shape
    (2, 63)
    """
    y = images.astype(np.float64) @ LUMA
    rh = resize_matrix(y.shape[1], dct_size)
    rw = resize_matrix(y.shape[2], dct_size)
    small = rh @ y @ rw.T
    d = dct_matrix(dct_size)
    coef = (d @ small @ d.T)[:, :keep, :keep]
    if flip_invariant:
        coef[:, :, 1::2] = np.abs(coef[:, :, 1::2])
    flat = coef.reshape(len(images), -1)[:, 1:]
    norm = np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), NORM_FLOOR)
    return (flat / norm).astype(np.float32)


def build_dct_model(
    size: int = 64, *, dct_size: int = 32, keep: int = 8, flip_invariant: bool = True
):
    """Build the DCT embedding graph.

    Parameters
    ----------
    size : int
        Input height and width in pixels.
    dct_size : int
        Side of the resized luma the DCT is taken of.
    keep : int
        Side of the low-frequency block kept; the output has ``keep * keep - 1`` values.
    flip_invariant : bool
        Take ``abs()`` of the odd horizontal frequencies.

    Returns
    -------
    onnx.ModelProto
        Checked model with input ``image`` and output ``embedding``.

    Examples
    --------
    >>> m = build_dct_model()
    >>> [o.name for o in m.graph.output]
    ['embedding']
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dim = keep * keep - 1
    proj = _projection(size, dct_size, keep)
    mask = np.zeros((keep, keep), dtype=np.float32)
    if flip_invariant:
        mask[:, 1::2] = 1.0
    inits = [
        numpy_helper.from_array(LUMA.astype(np.float32).reshape(3, 1), "luma_weights"),
        numpy_helper.from_array(proj.astype(np.float32), "proj_rows"),
        numpy_helper.from_array(proj.T.astype(np.float32).copy(), "proj_cols"),
        numpy_helper.from_array(np.array([-1, keep * keep], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ac_start"),
        numpy_helper.from_array(np.array([keep * keep], dtype=np.int64), "ac_end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "channel_axis"),
        numpy_helper.from_array(mask.reshape(1, -1), "odd_mask"),
        numpy_helper.from_array(1.0 - mask.reshape(1, -1), "even_mask"),
        numpy_helper.from_array(np.array(NORM_FLOOR, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["image_f", "luma_weights"], ["luma4"]),  # [B,H,W,1]
        helper.make_node("Squeeze", ["luma4", "channel_axis"], ["luma"]),  # [B,H,W]
        helper.make_node("MatMul", ["proj_rows", "luma"], ["rows"]),  # [B,k,W]
        helper.make_node("MatMul", ["rows", "proj_cols"], ["coef"]),  # [B,k,k]
        helper.make_node("Reshape", ["coef", "flat_shape"], ["flat"]),  # [B,k*k]
    ]
    if flip_invariant:
        nodes += [
            helper.make_node("Abs", ["flat"], ["flat_abs"]),
            helper.make_node("Mul", ["flat_abs", "odd_mask"], ["odd_part"]),
            helper.make_node("Mul", ["flat", "even_mask"], ["even_part"]),
            helper.make_node("Add", ["odd_part", "even_part"], ["sym"]),
        ]
        src = "sym"
    else:
        src = "flat"
    nodes += [
        helper.make_node("Slice", [src, "ac_start", "ac_end", "last_axis"], ["ac"]),
        helper.make_node("ReduceL2", ["ac"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["norm_safe"]),
        helper.make_node("Div", ["ac", "norm_safe"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dedupdask_dct",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dedupdask.models.build_dct",
        doc_string=(
            f"Weight-free DCT descriptor: BT.601 luma, antialiased bilinear resize to "
            f"{dct_size}x{dct_size}, orthonormal DCT-II, {keep}x{keep} low frequencies minus "
            f"DC{', odd horizontal frequencies abs()' if flip_invariant else ''}, L2 norm."
        ),
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> None:
    """Write the DCT graph (default: ``dedupdask/models/dct.onnx``)."""
    import onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(Path(__file__).with_name("dct.onnx")))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dct-size", type=int, default=32)
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--signed", action="store_true", help="no flip invariance")
    args = parser.parse_args(argv)
    model = build_dct_model(
        args.size, dct_size=args.dct_size, keep=args.keep, flip_invariant=not args.signed
    )
    onnx.save(model, args.output)


if __name__ == "__main__":
    main()
