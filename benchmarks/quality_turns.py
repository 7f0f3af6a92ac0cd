"""Benchmark: copies turned by 12-40 degrees, scored by the matcher alone.

The families of ``quality_families.py`` tilt copies by 3-10 degrees; a photo straightened in an
editor, a scan laid askew or a picture turned for a collage is turned farther. This scores such
copies pair by pair with this checkout's matcher (:func:`dedupdask.match.match_record`, as a run
scores a candidate), without a run: it measures verification, not whether the pair was a
candidate.

Each original of a ``quality_families.py`` draw (its shards' sources: packaged photos and
wallpapers, and Tux Paint stamps) gets one copy per angle, the sign alternating:

* a photo or wallpaper is turned and cut to the largest box of its shape that the turn leaves
  whole, as an editor's straighten tool does (the copy keeps 62-85 % of the side);
* a stamp (a drawing or an object on white) is turned on its white ground and cut by 5 % on
  each side.

Each copy is saved as JPEG q90 and scored against its original (recall) and against the next
original of the same kind, turned alike (a false pair if accepted). Figures are printed, not
asserted.

    python benchmarks/quality_turns.py                         # the newest families shards
    python benchmarks/quality_turns.py --shards DIR --angles 12 17 22 30 40 --limit 60
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from quality_unseen import straightened  # the unseen set's turned edit, at a given angle

from dedupdask.match import MATCHER, match_record, prepare_image
from dedupdask.thresholds import row_for

CACHE = Path.home() / ".cache" / "dedupdask" / "quality" / "families"
PHOTO_POOLS = ("deb", "plasma-workspace-wallpapers", "skimage", "sklearn")


def on_ground(img: Image.Image, degrees: float) -> Image.Image:
    """Turned anticlockwise on a white ground and cut by 5 % on each side."""
    w, h = img.size
    out = img.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    return out.crop((int(w * 0.05), int(h * 0.05), int(w * 0.95), int(h * 0.95)))


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def load_sources(shards: Path, limit: int) -> pd.DataFrame:
    """The draw's originals (key, kind, bytes): up to ``limit`` photos and ``limit`` stamps."""
    im = pd.read_csv(shards / "images.csv")
    im = im[im["role"] == "source"].copy()
    pool = im["name"].str.split("/").str[0]
    im["kind"] = np.where(pool.isin(PHOTO_POOLS), "photo or wallpaper", np.where(pool == "tuxpaint-stamps-default", "Tux Paint stamp", ""))
    im = pd.concat([g.head(limit) for k, g in im[im["kind"] != ""].groupby("kind")])
    data = []
    for key in im["key"]:
        shard, member = key.split("/", 1)
        with tarfile.open(shards / shard) as tf:
            f = tf.extractfile(member)
            assert f is not None
            data.append(f.read())
    return im.assign(data=data)[["key", "kind", "data"]].reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, help="a quality_families.py shards folder (default: the newest)")
    ap.add_argument("--angles", type=float, nargs="+", default=[12.0, 17.0, 22.0, 30.0, 40.0])
    ap.add_argument("--limit", type=int, default=60, help="originals of each kind")
    a = ap.parse_args(argv)
    shards = a.shards
    if shards is None:
        found = sorted(CACHE.glob("shards-*/images.csv"), key=lambda p: p.stat().st_mtime)
        if not found:
            print("no families shards: run python benchmarks/quality_families.py first", file=sys.stderr)
            return 2
        shards = found[-1].parent
    bar = row_for("effnet-lite0").verify_score
    src = load_sources(shards, a.limit)
    print(f"# python benchmarks/quality_turns.py  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"matcher {MATCHER}; verify_score {bar}; originals: {src['kind'].value_counts().to_dict()} from {shards}")
    rows = []
    t0, n = time.perf_counter(), 0
    for kind, group in src.groupby("kind", sort=False):
        group = group.reset_index(drop=True)
        edit = straightened if kind == "photo or wallpaper" else on_ground
        originals = [Image.open(io.BytesIO(d)).convert("RGB") for d in group["data"]]
        prepared = [prepare_image(d) for d in group["data"]]
        for j, angle in enumerate(a.angles):
            for i in range(len(group)):
                degrees = angle if (i + j) % 2 == 0 else -angle
                copy = prepare_image(_jpeg(edit(originals[i], degrees)))
                own = match_record(prepared[i], copy)
                other = match_record(prepared[(i + 1) % len(group)], copy)
                n += 2
                rows.append({"kind": kind, "angle": angle, "found": own.score >= bar, "by": own.matcher if own.score >= bar else "",
                             "false": other.score >= bar})  # fmt: skip
    seconds = time.perf_counter() - t0
    df = pd.DataFrame(rows)
    print(f"{n} pairs scored in {seconds:.0f} s ({1e3 * seconds / n:.1f} ms a pair, one process)\n")
    print("| kind of original | " + " | ".join(f"{x:g} deg" for x in a.angles) + " | false pairs (copy vs another original) |")
    print("|---|" + "---|" * (len(a.angles) + 1))
    for kind, g in df.groupby("kind", sort=False):
        cells = [f"{g[g['angle'] == x]['found'].mean():.3f}" for x in a.angles]
        print(f"| {kind} ({len(g) // len(a.angles)}) | " + " | ".join(cells) + f" | {int(g['false'].sum())} of {len(g)} |")
    by = df[df["found"]].groupby(["kind", "by"]).size().unstack(fill_value=0)
    print("\naccepted by matcher:\n" + by.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
