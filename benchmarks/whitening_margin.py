"""How many pairs would verify if a whitened pair under the cut that stands out of its
neighbourhood were verified too (``whitened_margin``), and what would it find?

A whitened cosine means more or less depending on how crowded the picture's part of the space
is (hubness): a copy moved far by its edits (a pad to square, an inset, a crop with a caption)
may sit under ``whitened_threshold`` and still stand well above every other neighbour of its
original. The rule: a pair of the whitened kNN graph is verified when its cosine stands
``whitened_margin`` above the cosine of the picture's 5th neighbour
(:func:`dedupdask.analyses.tiers.stands_out`).

This replays the rule, without a run, on what the quality benchmarks cached: the whitened graph
of each run's work_dir (``graphs/white``, the run's own whitening) and the *loose analysis*
(every candidate with embedding >= 0.5 or DCT >= 0.9 verified with the matcher of that run).
For each margin it prints the pairs the rule adds (and the share of the images: the extra
verifications), how many of them the loose scores accept, true (one source) and false, and the
planted (original, copy) pairs it finds that the run lost, held-out and tuning families apart.

The default margin is the smallest of the grid whose extra verifications stay within
:data:`BUDGET` of the images on the first families draw (a cost bound, no label read); the
other draws and the tier shards are reported at it.

    python benchmarks/whitening_margin.py                  # the three families draws and the tiers
    python benchmarks/whitening_margin.py --families RUNS ... --tiers ROOT

Pairs the loose analysis did not verify (under both of its cuts) count as extra verifications
with no score. The planted pairs "found" are those the cached run lost: on runs made with the
margin already on (``quality_families.py`` since it shipped) they are the ones it still loses, so
``benchmarks/results/whitening_margin.txt`` was printed from the runs made before it. Figures
are printed, not asserted.
"""

from __future__ import annotations

import argparse
import glob
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import edit_families as ef  # noqa: E402
from rescore_rejected import _member  # noqa: E402

MARGINS = (0.08, 0.10, 0.12, 0.15, 0.18, 0.20)
BUDGET = 0.05
"""Most extra verifications, as a share of the images, the default margin may add."""


def _work(root: Path) -> Path:
    found = sorted(root.glob("dedupdask-*/work"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no dedupdask-*/work under {root}: run python benchmarks/quality_families.py")
    return found[-1]


def _index(work: Path) -> dict[str, int]:
    """``<shard>/<member>`` -> the run's global image index."""
    meta = json.loads((work / "graphs" / "white.json").read_text())
    out = {}
    for a in meta["archives"]:
        c = pd.read_csv(work / f"{a['name']}features.dat.csv")
        for i, f in zip(c["index"], c["filename"], strict=True):
            out[_member(f)] = int(a["offset"]) + int(i)
    return out


def families(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, float]:
    """The loose pairs (``a < b``, score, embedding and DCT cosines, ``true``), the whitened
    graph, the planted pairs with both indices, and the run's whitened_threshold."""
    work = _work(root)
    with open(sorted(root.glob("dedupdask-*/result.pkl"), key=lambda p: p.stat().st_mtime)[-1], "rb") as f:
        res = pickle.load(f)
    d = res["loose"]
    shards = root.with_name(root.name.replace("runs-", "shards-"))
    im = pd.read_csv(shards / "images.csv").set_index("filename")
    im.index = im.index.map(_member)
    ia, ib = im.loc[d.filename_from.map(_member)], im.loc[d.filename_to.map(_member)]
    loose = _loose(d, ia["source"].to_numpy() == ib["source"].to_numpy())
    idx = _index(work)
    planted = pd.read_csv(root / "planted_pairs.csv")
    ends = np.array([(idx[o], idx[c]) for o, c in zip(planted.original, planted.copy_key, strict=True)])
    planted["a"], planted["b"] = ends.min(axis=1), ends.max(axis=1)
    return loose, _graph(work), planted, float(res["params"]["whitened_threshold"])


def tiers(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, None, float]:
    """As :func:`families`, for ``quality.py --tiers``' work root (no families)."""
    from dedupdask.thresholds import row_for

    d = pd.read_parquet(sorted(root.glob("loose-*.parquet"), key=lambda p: p.stat().st_mtime)[-1])
    gt = pd.read_csv(root / "shards" / "ground_truth.csv")
    original = {_member(b): _member(a) for a, b in zip(gt.filename_a, gt.filename_b, strict=True)}
    a, b = d.filename_from.map(_member), d.filename_to.map(_member)
    true = np.array([original.get(x, x) == original.get(y, y) for x, y in zip(a, b, strict=True)])
    return _loose(d, true), _graph(root / "work"), None, float(row_for("effnet-lite0").whitened_threshold)


def _loose(d: pd.DataFrame, true: np.ndarray) -> pd.DataFrame:
    f, t = d["from"].to_numpy(np.int64), d["to"].to_numpy(np.int64)
    return pd.DataFrame({"a": np.minimum(f, t), "b": np.maximum(f, t), "score": d.verify_score.to_numpy(np.float64),
                         "emb": d.similarity.to_numpy(np.float64), "dct": d.copy_similarity.to_numpy(np.float64),
                         "true": true})  # fmt: skip


def _graph(work: Path) -> pd.DataFrame:
    parts = sorted(glob.glob(str(work / "graphs" / "white" / "*" / "*.parquet")))
    if not parts:
        raise SystemExit(f"no whitened graph under {work}/graphs/white (a run too small to whiten?)")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def added(graph: pd.DataFrame, cut: float, margin: float) -> pd.DataFrame:
    """Pairs ``a < b`` the margin adds: under the cut in both rows that list them, standing
    ``margin`` out of one row (:func:`~dedupdask.analyses.tiers.stands_out`)."""
    from dedupdask.analyses.tiers import TIER_K, stands_out

    n = int(max(graph["from"].max(), graph["to"].max())) + 1
    last = graph[graph["rank"] == TIER_K - 1].drop_duplicates("from")
    background = np.full(n, np.nan, np.float32)
    background[last["from"].to_numpy()] = last["similarity"].to_numpy(np.float32)
    sim = graph["similarity"].to_numpy(np.float32)
    g = graph.assign(a=np.minimum(graph["from"], graph["to"]), b=np.maximum(graph["from"], graph["to"]))
    above = g[sim >= np.float32(cut)][["a", "b"]].drop_duplicates()
    out = g[stands_out(sim, background[graph["from"].to_numpy()], margin) & (sim < np.float32(cut))]
    out = out[["a", "b"]].drop_duplicates().merge(above, how="left", indicator=True)
    return out[out["_merge"] == "left_only"].drop(columns="_merge")


def report(name: str, data: tuple, margins: tuple[float, ...]) -> list[tuple[float, int, int]]:
    loose, graph, planted, cut = data
    n = int(max(graph["from"].max(), graph["to"].max())) + 1
    print(f"\n## {name}: {n} images, whitened_threshold {cut}\n")
    head = ["margin", "pairs added", "share of images", "not in the loose table", "accepted true", "accepted false"]
    if planted is not None:
        head += ["planted pairs found: held-out", "tuning", "by family"]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    sizes = []
    for m in margins:
        x = added(graph, cut, m).merge(loose, on=["a", "b"], how="left")
        x = x[~((x["dct"] >= 0.995) | (x["emb"] >= 0.99))]  # candidates of another tier already
        acc = x[x["score"] >= 0.9]
        row = [f"{m:.2f}", str(len(x)), f"{len(x) / n:.1%}", str(int(x["score"].isna().sum())),
               str(int(acc["true"].sum())), str(int((~acc["true"].astype(bool)).sum()))]  # fmt: skip
        if planted is not None:
            lost = planted[~planted.dedupdask.str.startswith(("copy", "near"))]
            got = lost.merge(acc[["a", "b"]], on=["a", "b"])
            held = got.family.isin(ef.HELD_OUT)
            row += [str(int(held.sum())), str(int((~held).sum())), str(got.family.value_counts().to_dict())]
        print("| " + " | ".join(row) + " |")
        sizes.append((m, len(x), n))
    return sizes


def default_runs() -> list[Path]:
    """The runs folders of the three families draws, in draw order, as their results name them."""
    out = []
    for name in ("quality_families.txt", "quality_families_seed1.txt", "quality_families_seed2.txt"):
        text = (HERE / "results" / name).read_text()
        out += [Path(w.rstrip(";,")) for w in text.split() if "/runs-" in w and not w.endswith(".csv")][:1]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", type=Path, nargs="*", help="quality_families.py runs-<key> folders, first draw first")
    ap.add_argument("--tiers", type=Path, default=Path("/tmp/w/tiers"), help="quality.py --tiers' work root")
    args = ap.parse_args(argv)
    runs = args.families or default_runs()
    print(f"# python benchmarks/whitening_margin.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"Rule: a whitened kNN pair under whitened_threshold is verified when it stands the margin above its "
          f"picture's 5th neighbour. Default = the smallest margin of {list(MARGINS)} adding at most "
          f"{BUDGET:.0%} of the images as verifications on the first draw.")  # fmt: skip
    pick = None
    for i, root in enumerate(runs):
        data = families(root)
        seed = pd.read_csv(root / "planted_pairs.csv").shape[0]
        sizes = report(f"families {root.name} ({seed} planted pairs)", data, MARGINS)
        if i == 0:
            pick = min((m for m, k, n in sizes if k <= BUDGET * n), default=None)
    if args.tiers and (args.tiers / "work").exists():
        report(f"tier shards {args.tiers}", tiers(args.tiers), MARGINS)
    print(f"\ndefault margin (first draw, extra verifications <= {BUDGET:.0%} of the images): {pick}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
