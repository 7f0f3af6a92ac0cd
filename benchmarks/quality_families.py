"""Benchmarks stage: near-duplicate recall per family of web edits, on held-out families, vs fastdup.

Usage::

    python benchmarks/quality_families.py > benchmarks/results/quality_families.txt   # ~15 min, 2 cores
    python benchmarks/quality_families.py --quick                                     # a few minutes
    python benchmarks/quality_families.py --holdout family                            # leave-one-family-out

What it does:

1. builds tar shards (``family_data.py``) of packaged pictures: photos, wallpapers and stamps
   that each get ``--copies`` (3) copies, each of a different group of edit families and in
   another shard than its original; distractor drawings and textures without copies; and
   labelled look-alike groups (emoji skin tones, light/dark wallpapers, texture series, ...);
   the families, their strengths and the fixed tune / held-out split are in
   ``edit_families.py``;
2. runs dedupdask as a user would (``ddk.run(run_mode=0)``, default settings, a LocalCluster
   of ``--cores`` single-threaded workers) and fastdup 2.54 with its defaults
   (``nearest_neighbors_k=2``, threshold 0.9; its own virtualenv, offline with
   ``SENTRY_OPT_OUT=1``, as ``vs_fastdup.py`` runs it) on the same shards;
3. scores every reported pair: a pair is true when both pictures come from the same original;
   recall is over (original, copy) pairs; ``pp`` is the precision on reported pairs that
   involve a copy of the family; look-alike pairs are reported pairs inside a labelled
   look-alike group; "other false pairs" join two distinct originals outside those groups;
4. shows where dedupdask loses the planted pairs it misses, from a second, untimed analysis
   of the same work_dir in which every kNN candidate is verified (``quality_tiers.LOOSE``):
   below both candidate cuts (embedding cosine < ``verify_threshold`` and DCT cosine <
   ``copy_threshold``), not among the 5 nearest neighbours of either image, or rejected by
   pixel verification (with the scores);
5. tunes dedupdask's four thresholds (``threshold``, ``verify_threshold``,
   ``copy_threshold``, ``verify_score``) on the tuning families only, from that loose
   analysis and :func:`dedupdask.analyses.tiers.decide`, and reports the held-out families
   with them: the fixed split, and ``--holdout group`` (default; each group of families held
   out in turn, tuned on the single-edit families of the other groups) or ``--holdout
   family`` (each family in turn). Tuning maximises near recall with pp >= 0.97 and no more
   look-alike pairs than fastdup reports, on the tuning families.

When changing dedupdask's duplicate decision, look only at the tuning families (and
``planted_pairs.csv`` rows of tuning families) while developing; the held-out families, and
``--seed 1`` (other copies, other strengths drawn), are the exam. Adding a family to the
tuning side moves it out of the exam: say so when reporting.

Figures are printed, not asserted. The shards, the work_dirs and the loose analysis are
cached under ``--work-root`` (default ``<cache-dir>/families``) and reused when the code that
makes them has not changed; ``--fresh`` rebuilds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import features

if importlib.util.find_spec("dedupdask") is None:  # a checkout without an install; an installed or
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # PYTHONPATH tree is not overridden
sys.path.insert(0, str(Path(__file__).resolve().parent))

import edit_families as ef  # noqa: E402
import family_data as fdata  # noqa: E402
import quality_tiers  # noqa: E402
import vs_fastdup  # noqa: E402

TARGET_RECALL = 0.90
TARGET_PP = 0.97
N_RESERVED = {"tuxpaint-stamps-default/": 30, "openclipart-png/": 60}  # kept out of the shards
SIZES = {  # sources that get copies (None = all), distractors
    "full": (None, 600),
    "quick": (90, 120),
}
SWEEP = {  # dedupdask's thresholds searched when tuning; the loose analysis bounds them below
    "threshold": (0.9, 0.93, 0.95, 0.97, 0.99),  # (candidates: embedding >= 0.5 or DCT >= 0.9)
    "verify_threshold": (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8),
    "copy_threshold": (0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995),
    "verify_score": (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9),
}
SOURCE_PREFIXES = ("skimage/", "sklearn/", "deb/", "plasma-workspace-wallpapers/", "tuxpaint-stamps-default/")
DISTRACTOR_PREFIXES = ("openclipart-png/", "colobot-common-textures/")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data -------------------------------------------------------------------------------------
def _code_hash(*modules: Any) -> str:
    h = hashlib.sha1()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()[:10]


def prepare(args: argparse.Namespace) -> tuple[Path, pd.DataFrame, dict[str, Any]]:
    """Build (or reuse) the shards; return their folder, ``images.csv`` and a description."""
    cache = args.cache_dir
    pool, dropped = fdata.load_pool(cache, log)
    extra, groups = fdata.lookalike_groups(cache, pool, log)
    pool.update(extra)
    members = set(groups["name"])
    rank = lambda n: fdata._h(f"{args.seed}:{n}")  # noqa: E731
    reserved = []
    for prefix, k in N_RESERVED.items():
        reserved += sorted((n for n in pool if n.startswith(prefix) and n not in members), key=rank)[:k]
    free = [n for n in sorted(pool) if n not in members and n not in reserved]
    n_src, n_dis = SIZES["quick" if args.quick else "full"]
    sources = sorted((n for n in free if n.startswith(SOURCE_PREFIXES)), key=rank)[:n_src]
    dis_all = [n for n in free if n.startswith(DISTRACTOR_PREFIXES) and not fdata.in_texture_series(n)]
    distractors = sorted(dis_all, key=rank)[:n_dis]
    key = hashlib.sha1(json.dumps([sources, distractors, sorted(members), reserved, args.copies, args.seed,
                                   _code_hash(ef, fdata)]).encode()).hexdigest()[:12]  # fmt: skip
    root = args.work_root / f"shards-{key}"
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    if not (root / "images.csv").exists():
        log(f"building shards in {root}: {len(sources)} sources x {args.copies} copies, "
            f"{len(distractors)} distractors, {len(members)} look-alikes")  # fmt: skip
        assets = fdata.make_assets(cache, pool, reserved, log)
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        fdata.build_shards(pool, groups, sources, distractors, assets, tmp, copies=args.copies,
                           n_shards=args.shards, seed=args.seed)  # fmt: skip
        for f in ("images.csv", "ground_truth.csv"):  # file names inside the final folder
            p = tmp / f
            p.write_text(p.read_text().replace(str(tmp), str(root)))
        os.replace(tmp, root)
    images = pd.read_csv(root / "images.csv", keep_default_na=False)
    by = lambda names: pd.Series([n.split("/")[0] for n in names]).value_counts().to_dict()  # noqa: E731
    notes = [] if features.check("raqm") else ["Pillow has no raqm layout: no skin-tone look-alikes"]
    desc = {"sources": by(sources), "distractors": by(distractors), "dropped": dropped, "notes": notes,
            "reserved": len(reserved), "lookalike_groups": groups}  # fmt: skip
    return root, images, desc


# -- runs -------------------------------------------------------------------------------------
def run_dedupdask(root: Path, wd: Path, cores: int, keypoints: bool = False) -> dict[str, Any]:
    """``ddk.run(run_mode=0)`` with defaults, then the loose analysis (every candidate verified)."""
    from distributed import Client, LocalCluster

    import dedupdask as ddk
    from dedupdask.analysis import build
    from dedupdask.config import RunConfig

    out: dict[str, Any] = {}
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:  # fmt: skip
        t0 = time.perf_counter()
        res = ddk.run(str(root), str(wd), run_mode=0, client=client, progress=False, verify_keypoints=keypoints)
        out["seconds"] = time.perf_counter() - t0
        out["similarity"] = res.similarity.compute()
        out["params"] = res.params
        out["verification"] = res.run.get("verification", {})
        out["invalid"] = len(res.invalid)
        log(f"dedupdask: {len(res.similarity)} pairs in {out['seconds']:.0f} s; loose analysis")
        t0 = time.perf_counter()
        with quality_tiers.raw_band():
            loose = build(str(wd), config=RunConfig(run_mode=2, progress=False, verify_keypoints=keypoints,
                                                    **quality_tiers.LOOSE),
                          client=client, write=False)  # fmt: skip
        out["loose_seconds"] = time.perf_counter() - t0
        out["loose"] = loose.similarity.compute()
        out["loose_verification"] = loose.run.get("verification", {})
    return out


def run_fastdup(root: Path, wd: Path, cores: int, fd_cache: Path, fd_python: str | None) -> dict[str, Any]:
    """fastdup 2.54, defaults (k=2, threshold 0.9): run_mode=1 then run_mode=2, as vs_fastdup.py."""
    py = vs_fastdup.fastdup_python(fd_cache, fd_python)
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    script = wd.parent / "fastdup_child.py"
    script.write_text(vs_fastdup.FASTDUP_CHILD)
    env = {**os.environ, "SENTRY_OPT_OUT": "1"}
    seconds = 0.0
    for mode in (1, 2):
        out = wd.parent / f"fastdup.mode{mode}.json"
        a = {"input_dir": str(root), "work_dir": str(wd), "run_mode": mode, "cores": cores, "k": 2,
             "turi_param": "", "out": str(out)}  # fmt: skip
        vs_fastdup.run_step([str(py), str(script), json.dumps(a)], out.with_suffix(".log"), wd.parent, env)
        seconds += json.loads(out.read_text())["seconds"]
    shards = vs_fastdup.list_shards(root)
    pairs, _, unmapped = vs_fastdup.fastdup_tables(wd, vs_fastdup.FastdupNames(shards))
    return {"pairs": pairs, "unmapped": unmapped, "seconds": seconds}


# -- scoring ----------------------------------------------------------------------------------
class Truth:
    """The images of the shards, indexed by ``<shard>/<member>``, and their planted pairs."""

    def __init__(self, images: pd.DataFrame) -> None:
        self.images = images.reset_index(drop=True)
        self.id = {k: i for i, k in enumerate(self.images["key"])}
        self.src = self.images["source"].to_numpy(np.int64)
        self.role = self.images["role"].to_numpy(object)
        self.family = self.images["family"].to_numpy(object)
        self.lookalike = self.images["lookalike"].to_numpy(object)
        orig = {s: i for i, (s, r) in enumerate(zip(self.src, self.role, strict=True)) if r != "copy"}
        cp = np.flatnonzero(self.role == "copy")
        self.planted = pd.DataFrame({
            "orig": [orig[s] for s in self.src[cp]], "copy": cp,
            "family": self.family[cp], "level": self.images["level"].to_numpy(np.int64)[cp],
        })  # fmt: skip
        self.fam_bit = {f: 1 << i for i, f in enumerate(ef.FAMILIES)}

    def pair_ids(self, keys: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        a = np.array([self.id.get(x, -1) for x, _ in keys], np.int64)
        b = np.array([self.id.get(y, -1) for _, y in keys], np.int64)
        ok = (a >= 0) & (b >= 0) & (a != b)
        return np.minimum(a, b)[ok], np.maximum(a, b)[ok]

    def bits(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Families of the copies at either end of each pair, as a bit mask."""
        fb = np.array([self.fam_bit.get(f, 0) for f in self.family], np.int64)
        return fb[a] | fb[b]

    def mask(self, families) -> int:
        return sum(self.fam_bit[f] for f in families)

    def score(self, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        """Recall per family and level, pp per family, look-alike and other false pairs."""
        found = set(zip(a.tolist(), b.tolist(), strict=True))
        p = self.planted
        lo, hi = np.minimum(p["orig"], p["copy"]).to_numpy(), np.maximum(p["orig"], p["copy"]).to_numpy()
        hit = np.array([(x, y) in found for x, y in zip(lo.tolist(), hi.tolist(), strict=True)], bool)
        same = self.src[a] == self.src[b]
        bits = self.bits(a, b)
        copy_end = (self.role[a] == "copy") | (self.role[b] == "copy")
        la_a, la_b = self.lookalike[a], self.lookalike[b]
        lookalike = ~same & (la_a != "") & (la_a == la_b)
        linked = np.zeros(len(self.images), bool)
        linked[a[same]] = True
        linked[b[same]] = True
        return {"hit": hit, "same": same, "bits": bits, "copy_end": copy_end, "lookalike": lookalike,
                "other_false": ~same & ~copy_end & ~lookalike, "linked": linked[p["copy"].to_numpy()],
                "a": a, "b": b, "n": len(a)}  # fmt: skip

    def family_row(self, s: dict[str, Any], families) -> dict[str, Any]:
        sel = self.planted["family"].isin(list(families)).to_numpy()
        inv = (s["bits"] & self.mask(families)) != 0
        levels = {}
        if len(families) == 1:
            lv = self.planted["level"].to_numpy()
            levels = {int(v): float(s["hit"][sel & (lv == v)].mean()) for v in np.unique(lv[sel])}
        return {"n": int(sel.sum()), "recall": float(s["hit"][sel].mean()) if sel.any() else float("nan"),
                "linked": float(s["linked"][sel].mean()) if sel.any() else float("nan"),
                "pp": float(s["same"][inv].mean()) if inv.any() else float("nan"), "pp_n": int(inv.sum()),
                "levels": levels}  # fmt: skip


def f3(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"


def f2(v: float) -> str:
    return "-" if v != v else f"{v:.2f}"


def table(rows: list[list[str]], head: list[str]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def family_tables(truth: Truth, sd: dict, sf: dict | None) -> list[str]:
    lines = []
    head = ["family", "group", "copies", "recall dedupdask", "recall fastdup", "dedupdask by strength",
            "fastdup by strength", "pp dedupdask", "pp fastdup"]  # fmt: skip
    for title, fams in (("Held-out families (never tuned on)", ef.HELD_OUT), ("Tuning families", ef.TUNE)):
        rows = []
        for f in fams:
            d = truth.family_row(sd, [f])
            x = truth.family_row(sf, [f]) if sf else None
            lv = ef.FAMILIES[f].levels
            rows.append([f, ef.FAMILIES[f].group, str(d["n"]), f3(d["recall"]), f3(x["recall"]) if x else "-",
                         " / ".join(f"{lv[k]} {f2(v)}" for k, v in d["levels"].items()),
                         " / ".join(f2(v) for v in x["levels"].values()) if x else "-",
                         f3(d["pp"]), f3(x["pp"]) if x else "-"])  # fmt: skip
        d = truth.family_row(sd, fams)
        x = truth.family_row(sf, fams) if sf else None
        rows.append([f"**all {'held-out' if fams is ef.HELD_OUT else 'tuning'}**", "", str(d["n"]),
                     f"**{f3(d['recall'])}**", f"**{f3(x['recall'])}**" if x else "-", "", "",
                     f3(d["pp"]), f3(x["pp"]) if x else "-"])  # fmt: skip
        lines += ["", f"### {title}", "", *table(rows, head)]
    return lines


def lookalike_table(truth: Truth, groups: pd.DataFrame, sd: dict, sf: dict | None) -> list[str]:
    rows = []
    for kind, g in groups.groupby("kind", sort=True):
        sizes = g.groupby("group").size()
        possible = int((sizes * (sizes - 1) // 2).sum())
        ids = set(truth.images.index[truth.images["lookalike_kind"] == kind])

        def count(s: dict | None, ids: set = ids) -> str:
            if s is None:
                return "-"
            return str(int(sum(1 for x, la in zip(s["a"], s["lookalike"], strict=True) if la and x in ids)))

        rows.append([kind, str(len(sizes)), str(len(g)), str(possible), count(sd), count(sf)])
    rows.append(["**all labelled look-alikes**", str(groups["group"].nunique()), str(len(groups)), "",
                 f"**{int(sd['lookalike'].sum())}**", f"**{int(sf['lookalike'].sum())}**" if sf else "-"])  # fmt: skip
    rows.append(["other false pairs between two originals (unlabelled)", "", "", "",
                 str(int(sd["other_false"].sum())), str(int(sf["other_false"].sum())) if sf else "-"])  # fmt: skip
    bad = lambda s: int((~s["same"] & s["copy_end"]).sum())  # noqa: E731
    rows.append(["false pairs involving a copy", "", "", "", str(bad(sd)), str(bad(sf)) if sf else "-"])
    return table(rows, ["look-alike kind", "groups", "images", "pairs inside groups", "dedupdask pairs",
                        "fastdup pairs"])  # fmt: skip


# -- where dedupdask loses pairs --------------------------------------------------------------
def candidate_frame(truth: Truth, sim: pd.DataFrame) -> pd.DataFrame:
    """A similarity table keyed by our ids (``a < b``), with its columns."""
    keys = [(vs_fastdup.archive_key(x), vs_fastdup.archive_key(y))
            for x, y in zip(sim["filename_from"], sim["filename_to"], strict=True)]  # fmt: skip
    a = np.array([truth.id.get(x, -1) for x, _ in keys], np.int64)
    b = np.array([truth.id.get(y, -1) for _, y in keys], np.int64)
    df = sim.assign(a=np.minimum(a, b), b=np.maximum(a, b))
    return df[(df["a"] >= 0) & (df["b"] >= 0)].reset_index(drop=True)


def planted_cosines(truth: Truth, wd: Path) -> pd.DataFrame:
    """Embedding, DCT and whitened embedding cosine of every planted pair, from the work_dir's
    vectors (the whitening fitted as the run fits it: on every row, fewer than its sample)."""
    from dedupdask.collect import collect
    from dedupdask.fusion import DCT_DIM, pair_cosines
    from dedupdask.whitening import fit_whitening

    names = pd.read_csv(wd / "atrain_features.dat.csv", keep_default_na=False)["filename"]
    gidx = {vs_fastdup.archive_key(f): i for i, f in enumerate(names)}
    col = collect(str(wd))
    p = truth.planted
    ka = [gidx.get(k, -1) for k in truth.images["key"].to_numpy()[p["orig"]]]
    kb = [gidx.get(k, -1) for k in truth.images["key"].to_numpy()[p["copy"]]]
    ga, gb = np.array(ka, np.int64), np.array(kb, np.int64)
    ok = (ga >= 0) & (gb >= 0)
    emb = np.full(len(p), np.nan, np.float32)
    dct = np.full(len(p), np.nan, np.float32)
    emb[ok] = pair_cosines(col.vector_rows, ga[ok], gb[ok])
    dct[ok] = pair_cosines(lambda r: col.vector_rows(r, which="dct", d=DCT_DIM), ga[ok], gb[ok])
    w = fit_whitening(col)
    white = np.full(len(p), np.nan, np.float32)
    white[ok] = pair_cosines(lambda r: w.apply(col.vector_rows(r)), ga[ok], gb[ok])
    return pd.DataFrame({"emb": emb, "dct": dct, "white": white})


LOSS_KINDS = ("copy", "near direct", "near verified", "below cuts", "not in 5-NN", "no alignment",
              "verify rejected", "other")


def loss_table(truth: Truth, ddk: dict, loose: pd.DataFrame, cos: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """Per family: how dedupdask accepted its planted pairs, and where it lost the others."""
    prm = ddk["params"]
    t, vt, ct, vs = (float(prm[k]) for k in ("threshold", "verify_threshold", "copy_threshold", "verify_score"))
    wt = prm.get("whitened_threshold")  # the band of the run: whitened cosine, or raw
    band_of, band = (cos["white"].to_numpy(), f"whitened >= {wt}") if wt is not None else (cos["emb"].to_numpy(), f"embedding >= {vt}")
    share = f"lost: share with {band}"  # the cut alone
    if wt is not None and prm.get("whitened_margin") is not None:
        band += f" or {prm['whitened_margin']} above the 5th neighbour"
    cut = float(wt) if wt is not None else vt
    acc = candidate_frame(truth, ddk["similarity"]).set_index(["a", "b"])
    lz = loose.set_index(["a", "b"])
    p = truth.planted
    lo = np.minimum(p["orig"], p["copy"]).to_numpy()
    hi = np.maximum(p["orig"], p["copy"]).to_numpy()
    idx = pd.MultiIndex.from_arrays([lo, hi])
    in_acc = idx.isin(acc.index)
    in_loose = idx.isin(lz.index)
    kind = acc.reindex(idx)["kind"].astype("string").fillna("").to_numpy(object)
    vsc_acc = acc.reindex(idx)["verify_score"].to_numpy(np.float64)
    vsc = lz.reindex(idx)["verify_score"].to_numpy(np.float64)
    emb, dct = cos["emb"].to_numpy(), cos["dct"].to_numpy()
    with np.errstate(invalid="ignore"):
        why = np.select(
            [in_acc & (kind == "exact"), in_acc & (kind == "copy"), in_acc & np.isnan(vsc_acc), in_acc,
             (band_of < cut) & ~(dct >= ct), ~in_loose, vsc <= -1 + 1e-6, vsc < vs],
            ["exact", "copy", "near direct", "near verified", "below cuts", "not in 5-NN", "no alignment",
             "verify rejected"],
            "other",
        )  # fmt: skip
    diag = pd.DataFrame({"family": p["family"], "why": why, "emb": emb, "dct": dct, "verify": vsc, "band": band_of})
    rows = []
    for f in [*ef.HELD_OUT, *ef.TUNE]:
        d = diag[diag["family"] == f]
        c = d["why"].value_counts()
        miss = d[~d["why"].isin(["exact", "copy", "near direct", "near verified"])]
        rej = d[d["why"].isin(["no alignment", "verify rejected"])]
        rows.append([f + (" (held out)" if ef.FAMILIES[f].held_out else ""), str(len(d)),
                     *(str(int(c.get(k, 0))) for k in LOSS_KINDS),
                     f2(miss["emb"].median()), f"{miss['dct'].median():.3f}" if len(miss) else "-",
                     f"{rej['verify'].median():.2f}" if len(rej) else "-",
                     f"{(miss['band'] >= cut).mean():.2f}" if len(miss) else "-"])  # fmt: skip
    c = diag["why"].value_counts()
    miss = diag[~diag["why"].isin(["exact", "copy", "near direct", "near verified"])]
    rej = diag[diag["why"].isin(["no alignment", "verify rejected"])]
    rows.append(["**all**", str(len(diag)),
                 *(f"**{int(c.get(k, 0))}**" for k in LOSS_KINDS),
                 f2(miss["emb"].median()), f"{miss['dct'].median():.3f}" if len(miss) else "-",
                 f"{rej['verify'].median():.2f}" if len(rej) else "-",
                 f"{(miss['band'] >= cut).mean():.2f}" if len(miss) else "-"])  # fmt: skip
    head = ["family", "pairs", f"found: copy tier (DCT >= {ct}, verified)", f"found: near, embedding >= {t}",
            f"found: near, verified ({band}, score >= {vs})", "lost: below both cuts",
            "lost: not among 5 nearest", "lost: verification found no alignment (score -1)",
            f"lost: verification scored < {vs} (both matchers)", "lost: other",
            "lost: median embedding cos", "lost: median DCT cos", "rejected: median verify score",
            share]  # fmt: skip
    return table(rows, head), diag


# -- tuning -----------------------------------------------------------------------------------
class Sweep:
    """dedupdask's decision at every grid point, replayed on the loose analysis' candidates."""

    def __init__(self, truth: Truth, loose: pd.DataFrame) -> None:
        self.truth = truth
        self.grid = [dict(zip(SWEEP, v, strict=True)) for v in itertools.product(*SWEEP.values())]
        table = loose.assign(row=np.arange(len(loose)))
        acc = np.zeros((len(self.grid), len(table)), bool)
        for g, prm in enumerate(self.grid):
            rows = quality_tiers.simulate(table, prm["threshold"], prm["verify_threshold"],
                                          prm["copy_threshold"], prm["verify_score"])["row"]  # fmt: skip
            acc[g, rows.to_numpy(np.int64)] = True
        self.acc = acc
        a, b = table["a"].to_numpy(np.int64), table["b"].to_numpy(np.int64)
        self.a, self.b = a, b
        self.same = truth.src[a] == truth.src[b]
        self.bits = truth.bits(a, b)
        la = truth.lookalike
        self.lookalike = ~self.same & (la[a] != "") & (la[a] == la[b])
        pos = pd.Series(np.arange(len(a)), index=pd.MultiIndex.from_arrays([a, b]))
        p = truth.planted
        idx = pd.MultiIndex.from_arrays([np.minimum(p["orig"], p["copy"]), np.maximum(p["orig"], p["copy"])])
        self.planted_row = pos.reindex(idx).fillna(-1).to_numpy(np.int64)
        self.n_lookalike = (acc & self.lookalike).sum(axis=1)

    def metrics(self, families) -> tuple[np.ndarray, np.ndarray]:
        """Near recall and pp of every grid point on ``families``."""
        sel = self.truth.planted["family"].isin(list(families)).to_numpy()
        rows = self.planted_row[sel]
        hits = np.where(rows >= 0, self.acc[:, np.maximum(rows, 0)], False)
        recall = hits.mean(axis=1) if rows.size else np.full(len(self.grid), np.nan)
        inv = (self.bits & self.truth.mask(families)) != 0
        n = (self.acc & inv).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pp = (self.acc & inv & self.same).sum(axis=1) / n
        return recall, np.where(n > 0, pp, 1.0)

    def tune(self, families, max_lookalike: int | None) -> tuple[int, str]:
        recall, pp = self.metrics(families)
        ok = pp >= TARGET_PP
        rule = f"pp >= {TARGET_PP}"
        if max_lookalike is not None and (ok & (self.n_lookalike <= max_lookalike)).any():
            ok &= self.n_lookalike <= max_lookalike
            rule += f", look-alike pairs <= {max_lookalike}"
        if not ok.any():
            ok, rule = pp >= pp.max() - 1e-12, "best pp (no grid point reaches the pp target)"
        key = np.lexsort((self.n_lookalike, -np.round(recall, 3)))
        best = next(int(g) for g in key if ok[g])
        return best, rule

    def pairs(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        return self.a[self.acc[g]], self.b[self.acc[g]]


def sweep_lines(truth: Truth, sweep: Sweep, sf: dict | None, holdout: str) -> list[str]:
    max_la = int(sf["lookalike"].sum()) if sf else None
    fmt_p = lambda g: ", ".join(f"{k[0:1] if k == 'threshold' else ''.join(w[0] for w in k.split('_'))}="  # noqa: E731
                                f"{v}" for k, v in sweep.grid[g].items())  # fmt: skip
    lines = ["", "Grid: " + "; ".join(f"{k} {list(v)}" for k, v in SWEEP.items()) +
             " (t = threshold, vt = verify_threshold, ct = copy_threshold, vs = verify_score).", ""]  # fmt: skip
    g, rule = sweep.tune(ef.TUNE, max_la)
    s = truth.score(*sweep.pairs(g))
    lines += [f"Fixed split: tuned on the {len(ef.TUNE)} tuning families ({rule}): {fmt_p(g)}; on them near "
              f"recall {f3(truth.family_row(s, ef.TUNE)['recall'])}, pp {f3(truth.family_row(s, ef.TUNE)['pp'])}; "
              f"look-alike pairs {int(s['lookalike'].sum())}.", ""]  # fmt: skip
    rows = []
    for f in [*ef.HELD_OUT, "all held-out"]:
        fams = ef.HELD_OUT if f == "all held-out" else [f]
        d, x = truth.family_row(s, fams), truth.family_row(sf, fams) if sf else None
        rows.append([f, str(d["n"]), f3(d["recall"]), f3(x["recall"]) if x else "-", f3(d["pp"]),
                     f3(x["pp"]) if x else "-"])  # fmt: skip
    lines += table(rows, ["held-out family", "copies", "recall dedupdask (tuned)", "recall fastdup",
                          "pp dedupdask (tuned)", "pp fastdup"])  # fmt: skip
    if holdout == "none":
        return lines
    units = ([(g_, [f for f in ef.FAMILIES if ef.FAMILIES[f].group == g_]) for g_ in ef.GROUPS]
             if holdout == "group" else [(f, [f]) for f in ef.FAMILIES])  # fmt: skip
    lines += ["", f"Leave-one-{holdout}-out: each {holdout} held out in turn, thresholds tuned on the "
              "single-edit families outside it (combinations, which mix every family, are never tuned on).", ""]  # fmt: skip
    rows, hits, n_all, fd_hits = [], 0.0, 0, 0.0
    for name, fams in units:
        tune_on = [f for f in ef.SINGLE if f not in fams]
        g, rule = sweep.tune(tune_on, max_la)
        s = truth.score(*sweep.pairs(g))
        d, x = truth.family_row(s, fams), truth.family_row(sf, fams) if sf else None
        hits += d["recall"] * d["n"]
        n_all += d["n"]
        fd_hits += x["recall"] * x["n"] if x else float("nan")
        rows.append([name, str(d["n"]), fmt_p(g), f3(d["recall"]), f3(x["recall"]) if x else "-", f3(d["pp"]),
                     f3(x["pp"]) if x else "-", str(int(s["lookalike"].sum()))])  # fmt: skip
    rows.append(["**all**", str(n_all), "", f"**{f3(hits / n_all)}**", f"**{f3(fd_hits / n_all)}**" if sf else "-",
                 "", "", ""])  # fmt: skip
    lines += table(rows, [f"held-out {holdout}", "copies", "tuned on the rest", "recall dedupdask (tuned)",
                          "recall fastdup", "pp dedupdask (tuned)", "pp fastdup", "look-alike pairs (tuned)"])  # fmt: skip
    return lines


# -- report -----------------------------------------------------------------------------------
def targets(truth: Truth, sd: dict, sf: dict | None) -> list[str]:
    d = truth.family_row(sd, ef.HELD_OUT)
    lines = [f"- held-out near recall >= {TARGET_RECALL}: {f3(d['recall'])} -> {'met' if d['recall'] >= TARGET_RECALL else 'NOT met'}",
             f"- held-out pp >= {TARGET_PP}: {f3(d['pp'])} -> {'met' if d['pp'] >= TARGET_PP else 'NOT met'}"]  # fmt: skip
    if sf:
        worse = [f for f in ef.HELD_OUT
                 if truth.family_row(sd, [f])["recall"] < truth.family_row(sf, [f])["recall"]]  # fmt: skip
        lines.append(f"- held-out recall >= fastdup's in every family: {len(ef.HELD_OUT) - len(worse)} of "
                     f"{len(ef.HELD_OUT)}" + (f" (below: {', '.join(worse)})" if worse else ""))  # fmt: skip
        la, lf = int(sd["lookalike"].sum()), int(sf["lookalike"].sum())
        lines.append(f"- look-alike pairs <= fastdup's: {la} vs {lf} -> {'met' if la <= lf else 'NOT met'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dedupdask"
    ap.add_argument("--quick", action="store_true", help=f"{SIZES['quick'][0]} sources, {SIZES['quick'][1]} distractors")
    ap.add_argument("--copies", type=int, default=3, help="copies per source, each of another group (default 3)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cores", type=int, default=2, help="dedupdask workers = fastdup threads")
    ap.add_argument("--holdout", choices=("group", "family", "none"), default="group",
                    help="leave-one-out unit of the threshold sweep (besides the fixed split)")
    ap.add_argument("--no-fastdup", action="store_true", help="skip fastdup (no install, no run)")
    ap.add_argument("--verify-keypoints", action=argparse.BooleanOptionalAction, default=True,
                    help="dedupdask's verify_keypoints (default: on, as the library's)")
    ap.add_argument("--fastdup-python", default=None, help="interpreter for fastdup's venv (3.9-3.12)")
    ap.add_argument("--cache-dir", type=Path, default=cache_root / "quality", help="photos (shared with quality.py)")
    ap.add_argument("--fastdup-cache", type=Path, default=cache_root / "vs_fastdup", help="fastdup's venv")
    ap.add_argument("--work-root", type=Path, default=None, help="shards and work_dirs (default <cache-dir>/families)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the shards and rerun both tools")
    args = ap.parse_args(argv)
    args.work_root = (args.work_root or args.cache_dir / "families").resolve()
    args.work_root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    root, images, desc = prepare(args)
    truth = Truth(images)
    run_dir = root.with_name(root.name.replace("shards-", "runs-"))
    import dedupdask

    h = hashlib.sha1()
    for f in sorted(Path(dedupdask.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    h.update(b"keypoints" if args.verify_keypoints else b"")
    ddk_key = h.hexdigest()[:10]  # a rerun with other library code reruns dedupdask
    ddk_dir = run_dir / f"dedupdask-{ddk_key}"
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    cached = ddk_dir / "result.pkl"
    if cached.exists():
        log(f"dedupdask: reusing {ddk_dir}")
        ddk = pd.read_pickle(cached)
    else:
        shutil.rmtree(ddk_dir, ignore_errors=True)
        log(f"dedupdask: ddk.run(run_mode=0) on {root}")
        ddk = run_dedupdask(root, ddk_dir / "work", args.cores, args.verify_keypoints)
        pd.to_pickle(ddk, cached)
    fd = None
    if not args.no_fastdup:
        fd_cached = run_dir / "fastdup.pkl"
        if fd_cached.exists():
            fd = pd.read_pickle(fd_cached)
        else:
            log("fastdup 2.54: run_mode=1, run_mode=2")
            fd = run_fastdup(root, run_dir / "fastdup", args.cores, args.fastdup_cache, args.fastdup_python)
            pd.to_pickle(fd, fd_cached)
            with contextlib.suppress(OSError):
                shutil.rmtree(run_dir / "fastdup" / "tmp")

    dk_pairs = candidate_frame(truth, ddk["similarity"])
    sd = truth.score(dk_pairs["a"].to_numpy(), dk_pairs["b"].to_numpy())
    sf = None
    if fd is not None:
        sf = truth.score(*truth.pair_ids([tuple(p) for p in fd["pairs"] if len(p) == 2]))
    loose = candidate_frame(truth, ddk["loose"])
    log("where the pairs are lost; threshold sweep")
    cos = planted_cosines(truth, ddk_dir / "work")
    loss, diag = loss_table(truth, ddk, loose, cos)
    planted = truth.planted.assign(
        level_label=[ef.FAMILIES[f].levels[lv] for f, lv in zip(truth.planted["family"], truth.planted["level"], strict=True)],
        original=truth.images["key"].to_numpy()[truth.planted["orig"]],
        copy_key=truth.images["key"].to_numpy()[truth.planted["copy"]],
        edit=truth.images["edit"].to_numpy()[truth.planted["copy"]],
        dedupdask=diag["why"], embedding_cos=diag["emb"], dct_cos=diag["dct"], verify_score=diag["verify"],
        fastdup_found=sf["hit"] if sf else np.nan,
    ).drop(columns=["orig", "copy"])  # fmt: skip
    planted.to_csv(run_dir / "planted_pairs.csv", index=False)
    sweep = Sweep(truth, loose)

    # ---- report
    out: list[str] = []
    p = out.append
    import dedupdask as ddkmod
    from dedupdask.match_keypoints import FEW_HUES, MIN_INLIERS

    p(f"# python benchmarks/quality_families.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
      + f" (seed {args.seed}, {args.copies} copies per source) -- {time.strftime('%Y-%m-%d %H:%M %Z')}")  # fmt: skip
    p(f"# {vs_fastdup.machine_line()} (shared with other jobs: times are not comparable)")
    p("")
    n = images["role"].value_counts()
    p(f"images: {len(images)} in {args.shards} tar shards: {n.get('source', 0)} sources "
      f"({', '.join(f'{k} {v}' for k, v in desc['sources'].items())}) with {n.get('copy', 0)} copies, "
      f"{n.get('distractor', 0)} distractors ({', '.join(f'{k} {v}' for k, v in desc['distractors'].items())}), "
      f"{n.get('lookalike', 0)} look-alikes in {desc['lookalike_groups']['group'].nunique()} labelled groups; "
      f"{desc['reserved']} pictures kept out as stickers / insets; {len(desc['dropped'])} repeated pictures dropped.")  # fmt: skip
    for note in desc["notes"]:
        p(f"NOTE: {note}")
    p(f"dedupdask {ddkmod.__version__}: ddk.run(run_mode=0) defaults {json.dumps({k: ddk['params'][k] for k in ('threshold', 'ccthreshold', 'copy_threshold', 'verify_threshold', 'whitened_threshold', 'whitened_margin', 'verify_score', 'knn_k') if k in ddk['params']})}; "
      f"{len(ddk['similarity'])} pairs, {ddk['invalid']} invalid, {ddk['seconds']:.0f} s wall; verification: "
      f"{ddk['verification'].get('candidates', 0)} candidates, {ddk['verification'].get('accepted', 0)} accepted.")  # fmt: skip
    if fd is not None:
        p(f"fastdup {vs_fastdup.FASTDUP_VERSION}: defaults (nearest_neighbors_k=2, threshold 0.9); "
          f"{len(fd['pairs'])} pairs, {fd['unmapped']} unmapped names, {fd['seconds']:.0f} s wall.")  # fmt: skip
    p("recall = share of (original, copy) pairs reported; pp = precision on reported pairs that involve a copy of "
      "the family(ies); a pair is true when both images come from the same original. About "
      f"{round(len(truth.planted) / len(ef.cells()))} copies per family and strength: a family's recall (n ~ "
      f"{round(len(truth.planted) / len(ef.FAMILIES))}) has a standard error up to ~"
      f"{0.5 / (len(truth.planted) / len(ef.FAMILIES)) ** 0.5:.2f}.")  # fmt: skip
    p("")
    p("## Targets (held-out families, default settings)")
    p("")
    out.extend(targets(truth, sd, sf))
    p("")
    p("## Recall and pair precision per family (default settings)")
    out.extend(family_tables(truth, sd, sf))
    p("")
    d_all, x_all = truth.family_row(sd, list(ef.FAMILIES)), truth.family_row(sf, list(ef.FAMILIES)) if sf else None
    p(f"All families: near recall dedupdask {f3(d_all['recall'])}, fastdup {f3(x_all['recall']) if x_all else '-'}; "
      f"pp dedupdask {f3(d_all['pp'])}, fastdup {f3(x_all['pp']) if x_all else '-'}. Copies linked to any image of "
      f"their original (not only the original itself): dedupdask {f3(d_all['linked'])}, "
      f"fastdup {f3(x_all['linked']) if x_all else '-'}.")  # fmt: skip
    p("")
    p("Recall by the kind of original (a pair of two graphics is decided by the pixel alignment, under its own "
      "alignment or the keypoint warp, never by the keypoint matcher's overlay rules; "
      "most Tux Paint stamps are drawings, a few are photos of objects):")  # fmt: skip
    p("")
    origin = truth.images["name"].to_numpy(object)[truth.planted["orig"].to_numpy()]
    stamp = np.array([str(n).startswith("tuxpaint-stamps-default/") for n in origin])
    held = truth.planted["family"].map(lambda f: ef.FAMILIES[f].held_out).to_numpy(bool)
    rows = []
    for label, sel in (("photos and wallpapers", ~stamp), ("Tux Paint stamps", stamp)):
        row = [label]
        for part in (held, ~held):
            m = sel & part
            row += [f"{f3(sd['hit'][m].mean())} ({int(m.sum())})", f3(sf["hit"][m].mean()) if sf else "-"]
        rows.append(row)
    out.extend(table(rows, ["originals", "held-out recall dedupdask (copies)", "fastdup",
                            "tuning recall dedupdask (copies)", "fastdup"]))  # fmt: skip
    p("")
    p("## Look-alikes (distinct pictures, labelled; none has a copy)")
    p("")
    out.extend(lookalike_table(truth, desc["lookalike_groups"], sd, sf))
    p("")
    p("## Where dedupdask accepts and loses the planted pairs (default settings)")
    p("")
    lv = ddk["loose_verification"]
    p(f"Found pairs by their similarity-table tier; lost pairs classified from a loose analysis of the same "
      f"work_dir (kNN k=5 per descriptor, every candidate with embedding >= {quality_tiers.LOOSE['verify_threshold']} "
      f"or DCT >= {quality_tiers.LOOSE['copy_threshold']} verified: {lv.get('candidates', 0)} pairs, "
      f"{ddk['loose_seconds']:.0f} s; the raw band whatever the run's size) and the work_dir's vectors. 'below "
      "both cuts' = below the run's band (whitened cosine < whitened_threshold in runs that whiten, else embedding < "
      "verify_threshold) and DCT < copy_threshold (never a candidate, unless its whitened cosine stood whitened_margin "
      "out of its picture's neighbourhood and verification rejected it); 'not among 5 nearest' = a cosine above a cut "
      "but neither image "
      "lists the other among its 5 nearest in that descriptor; 'no alignment' = a candidate whose score is -1: "
      f"the pixel alignment's correlation too low, or its residual so large that the score is clipped at -1 (an "
      f"alignment found, but colours neither its one brightness gain nor a global colour edit maps; a picture "
      f"of {FEW_HUES} hues or fewer gets no colour edit), and fewer "
      f"than {MIN_INLIERS} keypoints agreeing with one upright plane warp (for two graphics: no such warp, or the "
      "pixel residuals under it clipped at -1); 'scored < verify_score' = aligned, but the pixel residuals were too "
      "large (under the pixel alignment's alignment and, for two graphics, under the keypoint warp) and the "
      "keypoint matcher found an implausible colour edit, too large a differing share, content redrawn or "
      "repainted, or neither picture inside the other (dedupdask/match.py, dedupdask/match_keypoints.py).")  # fmt: skip
    p("")
    out.extend(loss)
    sim_default = sweep.grid.index({k: float(ddk["params"][k]) for k in SWEEP}) if \
        {k: float(ddk["params"][k]) for k in SWEEP} in sweep.grid else None  # fmt: skip
    p("")
    p("## Thresholds tuned on the tuning families, reported on held-out ones")
    if sim_default is not None:
        ra, rb = sweep.pairs(sim_default)
        s1, s2 = set(zip(ra.tolist(), rb.tolist(), strict=True)), set(zip(sd["a"].tolist(), sd["b"].tolist(), strict=True))
        p("")
        p(f"(Replay check: the default thresholds replayed on the loose candidates give {len(s1)} pairs, the real run "
          f"{len(s2)}; {len(s1 & s2)} in common.)")  # fmt: skip
    out.extend(sweep_lines(truth, sweep, sf, args.holdout))
    p("")
    p(f"Total {time.perf_counter() - t_start:.0f} s; shards {root}; runs {run_dir}; every planted pair with "
      "its edit, dedupdask's outcome, cosines and verify score, and whether fastdup found it: "
      f"{run_dir / 'planted_pairs.csv'}.")  # fmt: skip
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
