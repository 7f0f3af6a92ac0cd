"""Benchmarks stage: would window-pooled vectors of the backbone's last feature map make the
copies the whitened global cosine misses into candidates, within a verification budget?

Issue #16 point 4 names regional pooling (R-MAC / GeM over the backbone's feature maps) as a
direction for candidates. A copy that never becomes a candidate is lost whatever the matchers
can do, and on the first held-out set (``quality_unseen.py``) most losses are there: a picture
laid on a background, a crop to 50-60 %, a post's screenshot hold the original as a *part*.

This probe measures it without changing the package. The default model (EfficientNet-Lite0,
int8, 160 px) is run with its last feature map (1280 x 5 x 5, before the global average) as a
second output; each image gets its global vector (the package's embedding: the mean of the
map, checked equal) and 13 windows (four 4 x 4 and nine 3 x 3 cells of the map, mean-pooled),
all whitened with the package's :class:`dedupdask.whitening.Whitening` fitted on the global
vectors of the set. A pair's *regional* score is the best cosine of a window of either picture
against the other picture as a whole (a part of one is all of the other). The current rule is
replayed exactly (brute force, not the kNN graph): whitened cosine >= ``whitened_threshold`` or
``whitened_margin`` above either picture's 5th neighbour; the DCT tier is not replayed, so some
pairs counted "missed" here are copies the DCT descriptor finds. For regional cuts and margins
(over either picture's 5th regional neighbour) it prints the pairs the regional rule adds (the
extra verifications, as a share of the images) and the planted pairs it adds, by edit.

    python benchmarks/regional_probe.py SHARDS ...   # shards folders of quality_families.py / quality_unseen.py

Figures are printed, not asserted; ``benchmarks/results/regional_probe.txt`` has the run.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dedupdask.analyses.tiers import TIER_K  # noqa: E402
from dedupdask.decode import decode_image  # noqa: E402
from dedupdask.thresholds import row_for  # noqa: E402
from dedupdask.whitening import Whitening  # noqa: E402

MAP = "/_swish_1/Clip_output_0_DequantizeLinear_Output"
"""The last feature map of the packaged EfficientNet-Lite0 graph (input of the global mean)."""
CUTS = (0.45, 0.50, 0.55, 0.60)
MARGINS = (0.10, 0.15, 0.20)


def _session():
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(HERE.parent / "dedupdask" / "models" / "effnet_lite0.onnx"))
    m.graph.output.append(onnx.helper.make_tensor_value_info(MAP, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def windows(fmap: np.ndarray) -> np.ndarray:
    """``[B, C, 5, 5]`` -> ``[B, 14, C]``: the whole map, its four 4 x 4 and nine 3 x 3 windows."""
    out = [fmap.mean(axis=(2, 3))]
    size = fmap.shape[2]
    for s in (size - 1, size - 2):
        for y in range(size - s + 1):
            for x in range(size - s + 1):
                out.append(fmap[:, :, y : y + s, x : x + s].mean(axis=(2, 3)))
    return np.stack(out, 1)


def _images(shards: Path) -> tuple[pd.DataFrame, list[str], dict[str, bytes]]:
    data = {}
    for t in sorted(shards.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".jpg"):
                    data[f"{t.name}/{m.name}"] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return pd.read_csv(shards / "images.csv"), sorted(data), data


def _planted(shards: Path, images: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """(i, j, edit) of each planted (original, copy) pair, as indices into ``keys``."""
    idx = {k: i for i, k in enumerate(keys)}
    if (shards / "ground_truth.csv").exists():  # quality_families.py
        gt = pd.read_csv(shards / "ground_truth.csv")
        member = lambda p: "/".join(str(p).split("/")[-2:])  # noqa: E731
        return pd.DataFrame({"i": [idx[member(a)] for a in gt.filename_a], "j": [idx[member(b)] for b in gt.filename_b],
                             "edit": [e.split(":")[0] for e in gt.edit]})  # fmt: skip
    orig = images[images.role == "original"].set_index("name")["key"]  # quality_unseen.py and its kin
    c = images[images.role == "copy"]
    return pd.DataFrame({"i": [idx[orig[n]] for n in c.name], "j": [idx[k] for k in c.key], "edit": c.edit.to_numpy()})


def probe(shards: Path) -> None:
    images, keys, data = _images(shards)
    sess = _session()
    g_raw, w_raw = [], []
    t0 = time.perf_counter()
    for s in range(0, len(keys), 32):
        px = np.stack([decode_image(data[k], (160, 160), stats=False).pixels for k in keys[s : s + 32]])
        emb, fmap = sess.run(None, {"image": px})
        g_raw.append(emb)
        w_raw.append(windows(fmap))
    g, r = np.concatenate(g_raw), np.concatenate(w_raw)
    n = len(keys)
    check = np.abs(g - r[:, 0] / np.linalg.norm(r[:, 0], axis=1, keepdims=True)).max()
    print(f"\n## {shards}: {n} images ({time.perf_counter() - t0:.0f} s); embedding vs the map's mean: max diff {check:.1e}\n")
    wh = Whitening.fit(g)
    gw = wh.apply(g)
    rw = wh.apply(r.reshape(-1, r.shape[-1])).reshape(n, r.shape[1], -1)
    row = row_for("effnet-lite0")
    cos = gw @ gw.T
    np.fill_diagonal(cos, -1.0)
    kth = np.sort(cos, axis=1)[:, -TIER_K]
    now = (cos >= row.whitened_threshold) | (cos >= kth[:, None] + row.whitened_margin) | (cos >= kth[None, :] + row.whitened_margin)
    reg = np.full((n, n), -1.0, np.float32)
    for q in range(1, rw.shape[1]):
        np.maximum(reg, rw[:, q] @ gw.T, out=reg)
    reg = np.maximum(reg, reg.T)
    np.fill_diagonal(reg, -1.0)
    rkth = np.sort(reg, axis=1)[:, -TIER_K]
    planted = _planted(shards, images, keys)
    planted["now"] = now[planted.i, planted.j]
    missed = planted[~planted.now]
    print(f"planted pairs {len(planted)}; candidates by the whitened rule now {planted.now.mean():.3f} "
          f"({len(missed)} missed; median whitened cosine {np.median(cos[missed.i, missed.j]):.3f}, "
          f"regional {np.median(reg[missed.i, missed.j]):.3f})\n")  # fmt: skip
    iu = np.triu_indices(n, 1)
    print("| regional rule | pairs added | share of images | missed planted pairs added | by edit |\n|---|---|---|---|---|")
    rules = [(f"cosine >= {c:.2f}", reg >= c) for c in CUTS]
    rules += [(f"{m:.2f} above the 5th neighbour", (reg >= rkth[:, None] + m) | (reg >= rkth[None, :] + m)) for m in MARGINS]
    for name, add in rules:
        extra = int((add[iu] & ~now[iu]).sum())
        got = missed[add[missed.i, missed.j]]
        print(f"| {name} | {extra} | {extra / n:.1%} | {len(got)} | {got.edit.value_counts().to_dict()} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards", type=Path, nargs="+", help="shards folders (images.csv; ground_truth.csv for families)")
    args = ap.parse_args(argv)
    print(f"# python benchmarks/regional_probe.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    for s in args.shards:
        probe(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
