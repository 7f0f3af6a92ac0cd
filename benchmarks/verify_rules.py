"""Benchmarks stage: the verification rules replayed pair by pair, tuned on some edits, read on others.

Changing a rule of the keypoint matcher (:mod:`dedupdask.match_keypoints`) and re-running
``quality_families.py`` and ``vs_fastdup.py`` end to end costs ~10 minutes per variant. This
script scores every candidate pair once, keeps what the matchers found, and replays the
decision for variants of the matcher's budgets in seconds:

1. builds (or reuses) the shards of ``quality_families.py`` (web edits in 22 families, a fixed
   tuning / held-out split, labelled look-alikes) and of ``quality.py --tiers`` (2,600 clip-art
   drawings, card decks, clocks, flags: design series whose members are look-alikes; halves A/B
   by a hash of the original's name);
2. extracts them (``ddk.run(run_mode=1)``) and lists the pairs a default run verifies: kNN
   pairs with embedding cosine >= ``verify_threshold`` and DCT pairs >= ``copy_threshold``
   (``build(verify=False, threshold=verify_threshold)``);
3. scores each with the pixel alignment and the keypoint matcher and keeps the keypoint
   matcher's record (inliers, differing share, moved share, colour edit), and the pixel
   alignment's score under the keypoint warp (``warped``, what a pair of two graphics gets:
   :func:`dedupdask.match.warped_score`), cached as Parquet;
4. replays the default decision (embedding >= ``threshold``, or a matcher >= ``verify_score``)
   for each variant of ``MAX_DIFFERING`` x ``MAX_MOVED`` x ``MAX_REPAINTED`` x ``MAX_FLAT`` x
   ``MIN_UNIFORM`` x ``MIN_CONTAINED`` x warp (``--warp yes no``: whether two graphics get
   the warped pixel score) given on the command line and prints,
   per variant: near recall on the tuning and the held-out families, precision on pairs that
   involve a copy, labelled look-alike pairs, and false pairs on the clip-art halves.

Choose on the tuning families and clip-art half A; read the held-out families and half B.
The replay keeps the direction the matcher chose (it asks the other way only when the first
fails), so a variant that changes which direction passes is approximated; confirm a choice end
to end with ``quality_families.py`` and ``vs_fastdup.py`` (the keypoint matcher is on by default).

    python benchmarks/verify_rules.py --max-moved 0.01 0.005 --max-repainted 1 0.05 0.02 0.01
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import edit_families as ef  # noqa: E402


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


# -- the two sets ---------------------------------------------------------------------------------
def tier_shards(cache: Path, root: Path) -> tuple[Path, pd.DataFrame]:
    """``quality.py --tiers``'s shards: filename, source, half (edit = the planted edit or orig)."""
    import quality
    import quality_tiers as qt

    shards = root / "tiers" / "shards"
    if not (shards / "images.csv").exists():
        photos = {k: v for k, v in quality.load_photos(cache, log).items() if k != quality.STEREO[0]}
        photos.update(qt.load_extra_photos(cache, log))
        qt.build_shards(qt.dedupe_pixels(photos), shards, seed=0)
    return shards, pd.read_csv(shards / "images.csv")


def family_shards(cache: Path, root: Path) -> tuple[Path, pd.DataFrame]:
    """``quality_families.py``'s shards and ``images.csv`` (source, role, family, lookalike)."""
    import quality_families as qf

    args = argparse.Namespace(cache_dir=cache, seed=0, quick=False, copies=3, shards=8, work_root=root / "families",
                              fresh=False)  # fmt: skip
    shards, images, _ = qf.prepare(args)
    return shards, images


def candidates(shards: Path, wd: Path, client: Any) -> pd.DataFrame:
    """The pairs a default run verifies (and those it accepts on the embedding alone)."""
    import dedupdask as ddk
    from dedupdask.analysis import build
    from dedupdask.config import RunConfig
    from dedupdask.thresholds import row_for

    if not (wd / "atrain_features.dat.csv").exists():
        ddk.run(str(shards), str(wd), run_mode=1, client=client, progress=False)
    t = row_for("effnet-lite0")
    cfg = RunConfig(run_mode=2, progress=False, verify=False, threshold=t.verify_threshold, ccthreshold=1.0)
    sim = build(str(wd), config=cfg, client=client, write=False).similarity.compute()
    return sim[sim["kind"] != "exact"].reset_index(drop=True)


# -- scoring --------------------------------------------------------------------------------------
_DATA: dict[str, bytes] = {}
_VIEWS: dict[str, Any] = {}


def _view(name: str) -> Any:
    from dedupdask.match import View, prepare_image

    if name not in _VIEWS:
        if len(_VIEWS) > 400:  # pairs come sorted by their first image: a small cache suffices
            _VIEWS.pop(next(iter(_VIEWS)))
        p = prepare_image(_DATA[name])
        _VIEWS[name] = None if isinstance(p, str) else View(p)
    return _VIEWS[name]


def _score(pair: tuple[str, str]) -> dict[str, Any]:
    from dedupdask.match import score_views, warped_score
    from dedupdask.match_keypoints import match_keypoints
    from dedupdask.thresholds import row_for

    va, vb = _view(pair[0]), _view(pair[1])
    if va is None or vb is None:
        return {"pixel": np.nan, "keypoints": np.nan}
    m = match_keypoints(va.keypoints, vb.keypoints, max_flat=1.0, min_contained=0.0)  # MAX_FLAT... replayed
    c = m.colour or {}
    early = row_for("effnet-lite0").early_accept
    pixel = score_views(va, vb, early, keypoints=False)
    warped = warped_score(va, vb) if pixel < early else np.nan  # asked only past the pixel alignment
    return {"pixel": pixel, "warped": warped, "keypoints": m.score, "inliers": m.inliers,
            "differing": m.differing, "moved": m.moved, "repainted": m.repainted,
            "plausible": bool(c.get("plausible", False)), "flat": m.flat, "uniform": m.uniform,
            "contained": m.contained}  # fmt: skip


def _load(shards: str) -> None:
    """Pool initializer: every image member of the shards, by ``<shard path>/<member>``."""
    for t in sorted(Path(shards).glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.isfile() and not m.name.endswith((".txt", ".json", ".cls")):
                    _DATA[f"{t}/{m.name}"] = tf.extractfile(m).read()


def score_pairs(shards: Path, sim: pd.DataFrame, cores: int) -> pd.DataFrame:
    from multiprocessing import get_context

    sim = sim.sort_values(["filename_from", "filename_to"]).reset_index(drop=True)
    pairs = list(zip(sim["filename_from"], sim["filename_to"], strict=True))
    # spawned, not forked: this process has run a Dask cluster, whose threads a fork would copy mid-lock
    with get_context("spawn").Pool(cores, initializer=_load, initargs=(str(shards),)) as pool:
        rows = pool.map(_score, pairs, chunksize=200)
    cols = ["filename_from", "filename_to", "similarity", "copy_similarity", "kind"]
    return pd.concat([sim[cols], pd.DataFrame(rows)], axis=1)


# -- replay ---------------------------------------------------------------------------------------
def decide(
    s: pd.DataFrame, max_differing: float, max_moved: float, max_repainted: float, max_flat: float,
    min_uniform: float, min_contained: float, warp: bool = True,
) -> np.ndarray:
    """The default decision with the keypoint matcher's budgets replaced (``warp``: pairs of two
    graphics also pass on the pixel alignment's score under the keypoint warp)."""
    from dedupdask.match_keypoints import rule_score
    from dedupdask.thresholds import row_for

    t = row_for("effnet-lite0")
    kp = rule_score(s["differing"].to_numpy(np.float64), s["moved"].to_numpy(np.float64),
                    s["inliers"].fillna(0).to_numpy(np.float64), s["repainted"].to_numpy(np.float64),
                    max_differing=max_differing, max_moved=max_moved, max_repainted=max_repainted)  # fmt: skip
    # plausible: a warp with MIN_INLIERS matches was found and its colour edit is one an editor makes
    kp = np.where(s["plausible"].fillna(False).to_numpy(bool), kp, -1.0)
    kp = np.where(s["contained"].fillna(0.0).to_numpy(np.float64) >= min_contained, kp, -1.0)
    two = graphics(s, max_flat, min_uniform)
    kp = np.where(two, s["warped"].fillna(-1.0).to_numpy(np.float64) if warp else -1.0, kp)  # two graphics
    return ((s["similarity"] >= t.threshold) | (s["pixel"] >= t.verify_score) | (kp >= t.verify_score)).to_numpy()


def graphics(s: pd.DataFrame, max_flat: float, min_uniform: float) -> np.ndarray:
    """Pairs of two graphics: each picture flat and uniform enough (the pair records the smaller shares)."""
    from dedupdask.match_keypoints import is_graphic

    flat = s["flat"].fillna(1.0).to_numpy(np.float64)
    uniform = s["uniform"].fillna(1.0).to_numpy(np.float64)
    return is_graphic(flat, uniform, max_flat=max_flat, min_uniform=min_uniform)


def main(argv: list[str] | None = None) -> int:
    cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dedupdask"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-differing", type=float, nargs="+", default=None, help="overlay budgets to replay")
    ap.add_argument("--max-moved", type=float, nargs="+", default=None, help="'added on both sides' budgets")
    ap.add_argument("--max-repainted", type=float, nargs="+", default=None, help="'repainted' budgets")
    ap.add_argument("--max-flat", type=float, nargs="+", default=None,
                    help="flat shares over which both pictures of a pair are graphics (1: every pair asked)")
    ap.add_argument("--min-uniform", type=float, nargs="+", default=None,
                    help="uniform shares over which a flat picture is a graphic (0: every flat picture)")
    ap.add_argument("--min-contained", type=float, nargs="+", default=None,
                    help="shares of one picture inside the other that a warp needs (0: any overlap)")
    ap.add_argument("--warp", nargs="+", choices=["yes", "no"], default=None,
                    help="whether pairs of two graphics get the pixel score under the keypoint warp")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=cache_root / "quality")
    ap.add_argument("--work-root", type=Path, default=cache_root / "quality" / "verify_rules")
    args = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    from dedupdask import match_keypoints as mk
    from dedupdask.match import MATCHER
    from dedupdask.thresholds import row_for

    sets: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for name, make in (("families", family_shards), ("tiers", tier_shards)):
        shards, images = make(args.cache_dir, args.work_root)
        cached = args.work_root / name / f"scores-{MATCHER.replace('/', '-')}.parquet"
        if not cached.exists():
            log(f"{name}: extracting and listing candidates")
            with LocalCluster(n_workers=args.cores, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
                    Client(cl) as client:  # fmt: skip
                sim = candidates(shards, args.work_root / name / "work", client)
            log(f"{name}: scoring {len(sim)} pairs with both matchers")
            score_pairs(shards, sim, args.cores).to_parquet(cached)
        sets[name] = (pd.read_parquet(cached), images)

    import quality_families as qf

    fam, fimg = sets["families"]
    truth = qf.Truth(fimg)
    fam = qf.candidate_frame(truth, fam)  # adds our ids a < b
    held = truth.planted["family"].map(lambda f: ef.FAMILIES[f].held_out).to_numpy(bool)
    origin = truth.images["name"].to_numpy(object)[truth.planted["orig"].to_numpy()]
    photo = np.array([not str(n).startswith("tuxpaint-stamps-default/") for n in origin])  # photos, wallpapers

    tie, timg = sets["tiers"]
    tb = timg.set_index("filename")
    t_same = tb.loc[tie["filename_from"], "source"].to_numpy() == tb.loc[tie["filename_to"], "source"].to_numpy()
    t_half = tb.loc[tie["filename_from"], "half"].to_numpy()

    print(f"# python benchmarks/verify_rules.py ({MATCHER}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"families: {len(fam)} candidate pairs, {len(held)} planted (held out {int(held.sum())}); "
          f"clip art: {len(tie)} candidate pairs, {int((~t_same).sum())} of distinct originals")  # fmt: skip
    print("near recall of the planted pairs (tuning / held-out families; held-out copies of photos and wallpapers), "
          "pp = precision on pairs with a copy, "
          "look-alikes = labelled look-alike pairs; clip art: pairs of distinct originals accepted, half A / B")  # fmt: skip
    print()
    print("| MAX_DIFFERING | MAX_MOVED | MAX_REPAINTED | MAX_FLAT | MIN_UNIFORM | MIN_CONTAINED | warp | tuning recall "
          "| held-out recall | held-out photos | held-out stamps | pp | look-alikes | clip-art false A | B "
          "| clip-art pairs asked: matcher / warp |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    mds = args.max_differing or [mk.MAX_DIFFERING]
    mms = args.max_moved or [mk.MAX_MOVED]
    mrs = args.max_repainted or [mk.MAX_REPAINTED]
    mfs = args.max_flat or [mk.MAX_FLAT]
    mus = args.min_uniform or [mk.MIN_UNIFORM]
    mcs = args.min_contained or [mk.MIN_CONTAINED]
    wps = [w == "yes" for w in (args.warp or ["yes"])]
    library = (mk.MAX_DIFFERING, mk.MAX_MOVED, mk.MAX_REPAINTED, mk.MAX_FLAT, mk.MIN_UNIFORM, mk.MIN_CONTAINED, True)
    unsure = (tie["pixel"] < row_for("effnet-lite0").verify_score).to_numpy()
    for md, mm, mr, mf, mu, mc, wp in itertools.product(mds, mms, mrs, mfs, mus, mcs, wps):
        acc = decide(fam, md, mm, mr, mf, mu, mc, wp)
        sc = truth.score(fam["a"].to_numpy()[acc], fam["b"].to_numpy()[acc])
        hit, pp = sc["hit"], sc["same"][sc["copy_end"]].mean()
        t_acc = decide(tie, md, mm, mr, mf, mu, mc, wp) & ~t_same
        two = graphics(tie, mf, mu)
        asked = f"{int((unsure & ~two).sum())} / {int((unsure & two).sum()) if wp else 0}"
        mark = " (the library's)" if (md, mm, mr, mf, mu, mc, wp) == library else ""
        print(f"| {md:g}{mark} | {mm:g} | {mr:g} | {mf:g} | {mu:g} | {mc:g} | {'yes' if wp else 'no'} | "
              f"{hit[~held].mean():.3f} | {hit[held].mean():.3f} | {hit[held & photo].mean():.3f} | "
              f"{hit[held & ~photo].mean():.3f} | "
              f"{pp:.3f} | {int(sc['lookalike'].sum())} | {int((t_acc & (t_half == 'A')).sum())} | "
              f"{int((t_acc & (t_half == 'B')).sum())} | {asked} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
