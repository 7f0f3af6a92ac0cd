"""Benchmarks stage: would a whitened embedding pick the pairs to verify better than raw cosine?

Every candidate pair that is not a copy costs verification time (#16 point 5: most of
run_mode=2 on ``vs_fastdup.py``'s default shards is ruling out 8,000 pairs of unrelated
random pictures, all at raw cosine 0.65-0.85), and a copy that never becomes a candidate is
lost whatever the matchers can do. The raw cosine of EfficientNet-Lite0's pooled features
depends on the dataset: a set of similar-looking pictures (synthetic shapes, product shots on
white) shares a large common component, so ``verify_threshold`` passes nearly every kNN pair.

This probe measures, without changing the package, what a PCA whitening fitted on the run's own
vectors (no labels: centred, projected on the top ``d`` principal axes, each divided by its
standard deviation, then L2-normalised; Jegou & Chum 2012) does to that choice, on three sets:

- ``families``: ``quality_families.py``'s shards (web edits in 22 families, a fixed tuning /
  held-out split, labelled look-alikes); the work_dir of ``verify_rules.py``;
- ``tiers``: ``quality.py --tiers``'s shards (clip art, card decks, photos; planted copies);
- ``synthetic``: ``vs_fastdup.py``'s default shards (extracted here when needed).

For each vector form (raw, centred, whitened to 128/256/512 dims, and ``package``: the
package's own :class:`dedupdask.whitening.Whitening`, whose ``own`` row at 97 % tuning fixed
the default ``whitened_threshold``) it lists the kNN pairs
(k = 5 per image, exact search, in that form; and, for the cheaper change, the raw vectors'
kNN pairs scored with that form's cosine), fixes the cosine cut on the *tuning families* alone (the
cut that keeps 95 % / 97 % / 99 % of their planted pairs among the kNN pairs), and applies
that same cut to every set: candidates to verify, planted pairs kept, pairs of two distinct
originals (unrelated or look-alike). A good form keeps the held-out and other sets' planted
pairs with fewer candidates, at one cut. Nothing is asserted.

``--end-to-end CUT ...`` then replays the whole default decision on the families and the
tiers with the verification candidates chosen on the whitened (256 dims) cosine of the raw
kNN pairs instead of raw cosine >= ``verify_threshold`` (copy-tier and direct pairs as
before): it reuses ``verify_rules.py``'s scores of the default candidates, scores the pairs
only the whitened cut adds with the same matchers, and decides each pair as
``verify_rules.py`` does (embedding >= ``threshold``, or a matcher >= ``verify_score``).

    python benchmarks/whitening_probe.py
    python benchmarks/whitening_probe.py --end-to-end 0.542 0.465 0.359
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vs_fastdup import archive_key  # noqa: E402

K = 5


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def read_vectors(wd: Path) -> tuple[np.ndarray, list[str]]:
    """Every valid image's embedding (``<name>features.dat``) and its ``archive/member`` name."""
    xs, names = [], []
    for dat in sorted(wd.glob("*features.dat")):
        csv = pd.read_csv(f"{dat}.csv")
        x = np.fromfile(dat, "<f4")
        xs.append(x.reshape(len(csv), -1))
        names += [archive_key(f) for f in csv["filename"]]
    return np.concatenate(xs).astype(np.float64), names


class Set:
    """Vectors (and their forms: :func:`forms`), planted pairs (row indices), each image's
    origin, tuning / held-out flags."""

    def __init__(self, name: str, x: np.ndarray, names: list[str], planted: np.ndarray, origin: np.ndarray,
                 split: np.ndarray | None = None) -> None:  # fmt: skip
        self.name, self.x, self.names, self.planted, self.origin, self.split = name, x, names, planted, origin, split
        self.forms = forms(x)


def families(cache: Path, work_root: Path) -> Set:
    shards = sorted((cache / "families").glob("shards-*/images.csv"))[-1]
    img = pd.read_csv(shards)
    x, names = read_vectors(work_root / "families" / "work")
    row = {n: i for i, n in enumerate(names)}
    orig = img[img["role"] == "source"].set_index("source")["key"]
    cp = img[(img["role"] == "copy") & img["source"].isin(orig.index)]
    keep = cp["key"].isin(row) & cp["source"].map(orig).isin(row)
    cp = cp[keep]
    planted = np.stack([cp["source"].map(orig).map(row).to_numpy(), cp["key"].map(row).to_numpy()], axis=1)
    src = img.set_index("key")["source"]
    origin = np.array([-1 - i if pd.isna(src.get(n)) else src[n] for i, n in enumerate(names)], dtype=np.int64)
    return Set("families", x, names, planted, origin, cp["split"].to_numpy())


def tiers(work_root: Path) -> Set:
    shards = work_root / "tiers" / "shards"
    img = pd.read_csv(shards / "images.csv")
    gt = pd.read_csv(shards / "ground_truth.csv")
    x, names = read_vectors(work_root / "tiers" / "work")
    row = {n: i for i, n in enumerate(names)}
    a, b = gt["filename_a"].map(archive_key), gt["filename_b"].map(archive_key)
    ok = a.isin(row) & b.isin(row)
    planted = np.stack([a[ok].map(row).to_numpy(), b[ok].map(row).to_numpy()], axis=1)
    src = dict(zip(img["filename"].map(archive_key), img["source"], strict=True))
    origin = np.array([int(src.get(n, -1 - i)) for i, n in enumerate(names)], dtype=np.int64)
    return Set("tiers", x, names, planted, origin)


def synthetic(cache_root: Path, cores: int) -> Set:
    data = cache_root / "vs_fastdup" / "data" / "synthetic_4x500_n100_e20_seed0"
    wd = cache_root / "vs_fastdup" / "probe_work"
    if not any(wd.glob("*features.dat")):
        import vs_fastdup  # noqa: F401  (builds the default shards)
        from distributed import Client, LocalCluster

        import dedupdask as ddk

        if not (data / "ground_truth.csv").exists():
            sys.exit(f"run benchmarks/vs_fastdup.py once first: it builds {data}")
        with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
                Client(cl) as client:  # fmt: skip
            ddk.run(str(data), str(wd), run_mode=1, client=client, progress=False)
    x, names = read_vectors(wd)
    row = {n: i for i, n in enumerate(names)}
    gt = pd.read_csv(data / "ground_truth.csv")
    a, b = gt["filename_a"].map(archive_key), gt["filename_b"].map(archive_key)
    ok = a.isin(row) & b.isin(row)
    planted = np.stack([a[ok].map(row).to_numpy(), b[ok].map(row).to_numpy()], axis=1)
    origin = np.arange(len(names))  # every image its own origin, then planted pairs joined
    for p, q in planted:
        origin[origin == origin[q]] = origin[p]
    return Set("synthetic", x, names, planted, origin)


def forms(x: np.ndarray) -> dict[str, np.ndarray]:
    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    mu = x.mean(axis=0)
    lam, vec = np.linalg.eigh(np.cov((x - mu).T))
    lam, vec = lam[::-1], vec[:, ::-1]
    out = {"raw": unit(x), "centred": unit(x - mu)}
    for d in (128, 256, 512):
        out[f"whitened {d}"] = unit((x - mu) @ vec[:, :d] / np.sqrt(np.maximum(lam[:d], 1e-12)))
    from dedupdask.whitening import Whitening

    # the package's own whitening (dedupdask.whitening; the rows it is fitted on are every row
    # here, as in a run of fewer than whitening.SAMPLE images): its "own" row at 97 % tuning
    # is how the default ``whitened_threshold`` was fixed
    out["package"] = Whitening.fit(x.astype(np.float32)).apply(x.astype(np.float32)).astype(np.float64)
    return out


def knn_pairs(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    nn = np.argpartition(-s, K, axis=1)[:, :K]
    i = np.repeat(np.arange(len(e)), K)
    p = np.unique(np.sort(np.stack([i, nn.ravel()], axis=1), axis=1), axis=0)
    return p, s[p[:, 0], p[:, 1]]


def _rows(sets: list[Set], form: str, graph: str) -> list[dict[str, str]]:
    """The table rows of one vector form, on its own kNN pairs or (``graph="raw"``) the raw ones."""
    per = {}
    for s in sets:
        p, sim = knn_pairs(s.forms[form if graph == "own" else "raw"])
        if graph == "raw":  # the raw vectors' kNN pairs, cut on this form's cosine
            e = s.forms[form]
            sim = np.einsum("ij,ij->i", e[p[:, 0]], e[p[:, 1]])
        index = {(int(a), int(b)): k for k, (a, b) in enumerate(p)}
        at = np.array([index.get((min(a, b), max(a, b)), -1) for a, b in s.planted])
        ps = np.where(at >= 0, sim[np.maximum(at, 0)], -np.inf)
        distinct = s.origin[p[:, 0]] != s.origin[p[:, 1]]
        per[s.name] = (sim, ps, distinct, s.split)
    _, ps_f, _, split_f = per["families"]
    tune = ps_f[split_f == "tune"]
    cuts = {f"{q:.0%} tuning": float(np.quantile(tune[np.isfinite(tune)], 1 - q)) for q in (0.95, 0.97, 0.99)}
    if form == "raw":
        cuts = {"0.65 (verify_threshold)": 0.65, **cuts}
    rows = []
    for label, cut in cuts.items():
        r = {"form": form if graph == "own" else f"{form}, raw kNN pairs", "cut": f"{label}: {cut:.3f}"}
        for name, (sim, ps, distinct, split) in per.items():
            kept = sim >= cut
            if name == "families":
                held = f"{np.mean(ps[split == 'tune'] >= cut):.3f} / {np.mean(ps[split == 'held-out'] >= cut):.3f}"
                r["families tuning / held-out recall"] = held
            else:
                r[f"{name} recall"] = f"{np.mean(ps >= cut):.3f}"
            r[f"{name} candidates (distinct)"] = f"{int(kept.sum())} ({int((kept & distinct).sum())})"
        rows.append(r)
    return rows


def end_to_end(cuts: list[float], probed: dict[str, Set], cache: Path, work_root: Path, cores: int) -> None:
    """The default decision replayed with verification candidates cut on the whitened cosine
    (256 dims, as ``probed``, the sets of the table above, have it)."""
    import edit_families as ef
    import quality_families as qf
    import verify_rules as vr
    from distributed import Client, LocalCluster

    from dedupdask import match_keypoints as mk
    from dedupdask.analysis import build
    from dedupdask.config import RunConfig
    from dedupdask.match import MATCHER
    from dedupdask.thresholds import row_for

    t = row_for("effnet-lite0")
    library = (mk.MAX_DIFFERING, mk.MAX_MOVED, mk.MAX_REPAINTED, mk.MAX_FLAT, mk.MIN_UNIFORM, mk.MIN_CONTAINED, True)
    sets = {}
    for name, make in (("families", vr.family_shards), ("tiers", vr.tier_shards)):
        shards, images = make(cache, work_root)
        scored = work_root / name / f"scores-{MATCHER.replace('/', '-')}.parquet"
        if not scored.exists():
            sys.exit(f"{scored} is missing: run benchmarks/verify_rules.py once first")
        loose = work_root / name / "loose-0.3.parquet"
        if not loose.exists():  # every kNN pair down to raw cosine 0.3, and the copy tier's
            log(f"{name}: listing kNN pairs down to cosine 0.3")
            with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
                    Client(cl) as client:  # fmt: skip
                cfg = RunConfig(run_mode=2, progress=False, verify=False, threshold=0.3, ccthreshold=1.0)
                sim = build(str(work_root / name / "work"), config=cfg, client=client, write=False).similarity.compute()
            sim[sim["kind"] != "exact"].reset_index(drop=True).to_parquet(loose)
        sim = pd.read_parquet(loose)
        row = {n: i for i, n in enumerate(probed[name].names)}
        w = probed[name].forms["whitened 256"]
        ia = sim["filename_from"].map(archive_key).map(row).to_numpy()
        ib = sim["filename_to"].map(archive_key).map(row).to_numpy()
        sim["whitened"] = np.einsum("ij,ij->i", w[ia], w[ib])
        sets[name] = (images, pd.read_parquet(scored), sim, shards)
    truth = qf.Truth(sets["families"][0])
    held = truth.planted["family"].map(lambda f: ef.FAMILIES[f].held_out).to_numpy(bool)
    tb = sets["tiers"][0].set_index("filename")
    print("\nEnd to end (the default decision replayed; candidates to verify: raw cosine >= 0.65, or whitened 256 >= cut):\n")
    print("| candidates | families tuning / held-out recall | pp | look-alike pairs | tiers: true pairs accepted | "
          "tiers: false pairs half A / B | candidates families / tiers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for cut in [None, *cuts]:
        chosen = {}
        for name, (_, scored, sim, shards) in sets.items():
            if cut is None:
                chosen[name] = scored
                continue
            pick = sim[(sim["whitened"] >= cut) | (sim["kind"] == "copy") | (sim["similarity"] >= t.threshold)]
            have = set(zip(scored["filename_from"], scored["filename_to"], strict=True))
            new = pick[[k not in have for k in zip(pick["filename_from"], pick["filename_to"], strict=True)]]
            extra = work_root / name / f"scores-whitened-{cut}-{MATCHER.replace('/', '-')}.parquet"
            if len(new) and not extra.exists():
                log(f"{name}: scoring the {len(new)} pairs the cut {cut} adds")
                vr.score_pairs(shards, new.drop(columns=["whitened"]), cores).to_parquet(extra)
            both = pd.concat([scored] + ([pd.read_parquet(extra)] if len(new) else []), ignore_index=True)
            keep = set(zip(pick["filename_from"], pick["filename_to"], strict=True))
            chosen[name] = both[[k in keep for k in zip(both["filename_from"], both["filename_to"], strict=True)]]
        fam = qf.candidate_frame(truth, chosen["families"].reset_index(drop=True))
        acc = vr.decide(fam, *library)
        sc = truth.score(fam["a"].to_numpy()[acc], fam["b"].to_numpy()[acc])
        tie = chosen["tiers"]
        same = tb.loc[tie["filename_from"], "source"].to_numpy() == tb.loc[tie["filename_to"], "source"].to_numpy()
        half = tb.loc[tie["filename_from"], "half"].to_numpy()
        t_acc = vr.decide(tie, *library)
        label = "raw >= 0.65 (verify_threshold)" if cut is None else f"whitened >= {cut:g}"
        print(f"| {label} | {sc['hit'][~held].mean():.3f} / {sc['hit'][held].mean():.3f} | "
              f"{sc['same'][sc['copy_end']].mean():.3f} | {int(sc['lookalike'].sum())} | {int((t_acc & same).sum())} | "
              f"{int((t_acc & ~same & (half == 'A')).sum())} / {int((t_acc & ~same & (half == 'B')).sum())} | "
              f"{len(fam)} / {len(tie)} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dedupdask"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=cache_root / "quality")
    ap.add_argument("--work-root", type=Path, default=cache_root / "quality" / "verify_rules")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--end-to-end", type=float, nargs="*", default=None, metavar="CUT",
                    help="also replay the default decision with candidates cut on the whitened cosine")
    args = ap.parse_args(argv)
    for need in (args.work_root / "families" / "work", args.work_root / "tiers" / "work"):
        if not any(need.glob("*features.dat")):
            sys.exit(f"{need} has no features: run benchmarks/verify_rules.py once first")
    sets = [families(args.cache_dir, args.work_root), tiers(args.work_root), synthetic(cache_root, args.cores)]
    print(f"# python benchmarks/whitening_probe.py -- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for s in sets:
        print(f"{s.name}: {len(s.x)} images, {len(s.planted)} planted pairs")
    print(f"kNN pairs: k={K} per image, exact. Cut: the cosine that keeps the share of the tuning families' planted pairs "
          "that are kNN pairs; the same cut on every set. 'distinct' = candidate pairs of two distinct originals.")  # fmt: skip
    print("The package's default in runs of 2,000+ images: the 'package' form's own kNN pairs at >= whitened_threshold "
          "(dedupdask.whitening); in smaller runs raw cosine >= verify_threshold 0.65.\n")
    rows = []
    for form in sets[0].forms:
        for graph in ("own", "raw") if form != "raw" else ("own",):
            rows += _rows(sets, form, graph)
    table = pd.DataFrame(rows)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in r) + " |")
    if args.end_to_end is not None:
        end_to_end(args.end_to_end, {s.name: s for s in sets}, args.cache_dir, args.work_root, args.cores)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
