"""Rescore the candidates a quality benchmark's loose analysis rejected, with this checkout's matcher.

The precision guard of a matcher change. ``benchmarks/quality.py --tiers`` and
``benchmarks/quality_families.py`` each cache a *loose analysis*: every candidate pair of their
shards verified, with the matcher of that run. A rule that accepts more pairs is checked here on
the candidates that run rejected (``verify_score`` under the default bar): how many the current
matcher accepts now, how many of them are true (both images from one original) and which are
false. Its scores are written beside the loose table (``rescored-<matcher>.parquet``, or
``--out``: a rule tried without a new ``MATCHER`` must not overwrite the scores it is compared
with), so that two checkouts can be compared pair by pair (``--against``: the pairs one accepts
and the other does not).

    python benchmarks/rescore_rejected.py --tiers ROOT        # quality.py --tiers --work-root ROOT
    python benchmarks/rescore_rejected.py --families RUNS     # the runs-<key> folder quality_families.py prints
    python benchmarks/rescore_rejected.py --families RUNS --against EARLIER.parquet  # another checkout's scores
    python benchmarks/rescore_rejected.py --tiers ROOT --upside-down   # what a vertical mirror would add

``--upside-down`` scores each pair with its second picture turned upside down (mirrored about
the horizontal axis; with the matcher's own horizontal mirror, a half turn too): an upper bound
of what a vertical-mirror hypothesis in the pixel alignment would accept.

Each pair is scored as a run scores it (:func:`dedupdask.match.match_record` with the default
``early_accept`` and the keypoint matcher), on ``--cores`` processes. The tier shards' loose
table holds ~15,000 rejected candidates (~10 minutes on 2 cores), the families' ~5,000 (~3).
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tarfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

_IMAGES: dict[str, bytes] = {}
_UPSIDE_DOWN = [False]


def _load(tars: list[str], upside_down: bool = False) -> None:
    """Every member of the shards, by ``<tar path>/<member>`` (one copy per process)."""
    _UPSIDE_DOWN[0] = upside_down
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf:
                if m.isfile():
                    _IMAGES[f"{t}/{m.name}"] = tf.extractfile(m).read()  # type: ignore[union-attr]


def _score(pair: tuple[str, str]) -> tuple[float, str]:
    from dedupdask.match import Prepared, match_record, prepare_image
    from dedupdask.thresholds import row_for

    a, b = (prepare_image(_IMAGES[f]) for f in pair)
    if isinstance(a, str) or isinstance(b, str):
        return float("nan"), "unreadable"
    if _UPSIDE_DOWN[0]:
        b = Prepared(b.width, b.height, np.ascontiguousarray(b.rgb[::-1]))
    r = match_record(a, b, early_accept=row_for("effnet-lite0").early_accept)
    return float(r.score), r.matcher


def _member(path: object) -> str:
    """``<shard>/<member>`` of an image's path: how the benchmarks' tables and this script name
    it, wherever the shards folder now is."""
    return "/".join(str(path).split("/")[-2:])


def tier_pairs(root: Path) -> tuple[pd.DataFrame, Path]:
    """The rejected loose candidates of ``quality.py --tiers`` (the newest cached table), with
    ``true`` from its ground truth and the image files' own names."""
    tables = sorted(root.glob("loose-*.parquet"), key=lambda p: p.stat().st_mtime)
    if not tables:
        raise SystemExit(f"no loose-*.parquet under {root}: run python benchmarks/quality.py --tiers --work-root {root}")
    d = pd.read_parquet(tables[-1])
    gt = pd.read_csv(root / "shards" / "ground_truth.csv")
    shards = str(root / "shards")
    local = lambda f: f"{shards}/{_member(f)}"  # noqa: E731  the shards may have moved
    original = {local(b): local(a) for a, b in zip(gt.filename_a, gt.filename_b, strict=True)}
    out = pd.DataFrame({"a": d.filename_from.map(local), "b": d.filename_to.map(local), "old": d.verify_score})
    out["true"] = [original.get(a, a) == original.get(b, b) for a, b in zip(out.a, out.b, strict=True)]
    out["what"] = ""
    return out, tables[-1]


def family_pairs(runs: Path) -> tuple[pd.DataFrame, Path]:
    """The rejected loose candidates of ``quality_families.py``, with ``true`` (one source) and
    what each pair is (the copies' family, or the look-alikes' kind)."""
    found = sorted(runs.glob("dedupdask-*/result.pkl"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no dedupdask-*/result.pkl under {runs}: run python benchmarks/quality_families.py")
    with open(found[-1], "rb") as f:
        d = pickle.load(f)["loose"]
    shards = runs.with_name(runs.name.replace("runs-", "shards-"))
    im = pd.read_csv(shards / "images.csv").set_index("filename")
    local = lambda f: str(shards / _member(f))  # noqa: E731
    im.index = im.index.map(local)
    out = pd.DataFrame({"a": d.filename_from.map(local), "b": d.filename_to.map(local), "old": d.verify_score})
    ia, ib = im.loc[out.a], im.loc[out.b]
    out["true"] = ia["source"].to_numpy() == ib["source"].to_numpy()
    fam = zip(ia["family"].fillna("").to_numpy(), ib["family"].fillna("").to_numpy(), strict=True)
    kinds = zip(ia["lookalike_kind"].fillna("").to_numpy(), ib["lookalike_kind"].fillna("").to_numpy(), strict=True)
    out["what"] = [fa or fb or "|".join(k for k in ks if k) for (fa, fb), ks in zip(fam, kinds, strict=True)]
    return out, found[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiers", type=Path, help="quality.py --tiers' work root (loose-*.parquet, shards/)")
    src.add_argument("--families", type=Path, help="quality_families.py's runs-<key> folder")
    ap.add_argument("--against", type=Path, help="an earlier rescored-*.parquet of the same table: compare pair by pair")
    ap.add_argument("--out", type=Path, help="where the scores go (default: beside the loose table, named by the matcher)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="rescore only the first N rejected pairs (a quick look)")
    ap.add_argument("--upside-down", action="store_true", help="the second picture of each pair turned upside down")
    args = ap.parse_args(argv)

    from dedupdask.match import MATCHER
    from dedupdask.thresholds import row_for

    bar = row_for("effnet-lite0").verify_score
    pairs, table = tier_pairs(args.tiers) if args.tiers else family_pairs(args.families)
    out = args.out or table.parent / f"rescored-{MATCHER.replace('/', '-')}{'-upside-down' * args.upside_down}.parquet"
    if args.against is not None and out.resolve() == args.against.resolve():
        raise SystemExit(f"the scores would overwrite --against {args.against} (an unchanged MATCHER): pass --out")
    prev = pd.read_parquet(args.against) if args.against is not None else None
    rejected = pairs[pairs.old.notna() & (pairs.old < bar)].reset_index(drop=True)
    if args.limit:
        rejected = rejected.head(args.limit)
    tars = sorted({f.rsplit("/", 1)[0] for f in pd.concat([rejected.a, rejected.b])})
    print(f"# python benchmarks/rescore_rejected.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# matcher {MATCHER}; loose table {table}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with Pool(args.cores, initializer=_load, initargs=(tars, args.upside_down)) as pool:
        got = pool.map(_score, list(zip(rejected.a, rejected.b, strict=True)), chunksize=16)
    rejected["new"] = [g[0] for g in got]
    rejected["matcher"] = [g[1] for g in got]
    if not args.limit:
        rejected.to_parquet(out)
    now = rejected[rejected.new >= bar]
    short = lambda t: t.assign(a=t.a.map(_member), b=t.b.map(_member))  # noqa: E731
    print(f"rejected candidates (loose verify_score < {bar}) rescored: {len(rejected)}; "
          f"now >= {bar}: {len(now)} ({int(now.true.sum())} true, {int((~now.true).sum())} false)")  # fmt: skip
    if args.families:
        print("true pairs now accepted, by family:", now[now.true].what.value_counts().to_dict())
    show = ["a", "b", "what", "old", "new", "matcher"]
    if (~now.true).any():
        print("\nfalse pairs now accepted:")
        print(short(now[~now.true])[show].to_string(index=False))
    if prev is not None:
        m = rejected.merge(prev[["a", "b", "new"]], on=["a", "b"], suffixes=("", "_before"))
        up = m[(m.new >= bar) & (m.new_before < bar)]
        down = m[(m.new < bar) & (m.new_before >= bar)]
        print(f"\nagainst {args.against} ({len(m)} pairs in both): accepted now and not there {len(up)} "
              f"({int(up.true.sum())} true, {int((~up.true).sum())} false); accepted there and not now {len(down)} "
              f"({int(down.true.sum())} true, {int((~down.true).sum())} false)")  # fmt: skip
        for name, part in (("accepted now, not there", up), ("accepted there, not now", down)):
            if len(part):
                print(f"\n{name}:")
                print(short(part)[show + ["new_before", "true"]].to_string(index=False))
    if not args.limit:
        print(f"\nscores: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
