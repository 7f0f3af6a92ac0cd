"""Project every stage of a distributed run_mode=2 to 50M and 400M images from measured runs.

Usage::

    python benchmarks/scale_projection.py                 # reads the two results files below
    python benchmarks/scale_projection.py --n 50e6 400e6 --workers 16 64 256 --d 1280

Inputs, all measured:

* ``benchmarks/results/scale_build.txt``: the JSON lines ``benchmarks/scale_build.py`` prints, one per
  build of a synthetic work_dir against a real ``dask scheduler`` + ``dask worker`` processes (stage
  timings from ``run.json``, client and worker peaks sampled from outside; the bytes read and written
  at 5M were sampled apart and are quoted in the README). Those runs use d = 128; every stage but the kNN handles per-image rows whose size
  does not depend on d.
* ``benchmarks/results/knn_partitioned.txt`` via :mod:`knn_projection` for the kNN at the model's
  width (``--d``, 1280 for the default model): its cost per vector does not depend on N except for
  the assignment to the centroids, which that script projects.
* verification (duplicate tiers on real photos) per image, from ``--verify-ms-per-image``: the
  measured cost of a real-image build with verification (``scale_build.py --real``), or the figures
  quoted in the README's "Performance" section.

How it projects: per stage, the core-seconds per image of the largest run (stage wall time x the
worker processes, each one thread on its own core), shown next to the same figure at the smaller
runs so the reader sees whether it grows with N; time at W workers is core-hours / W (the stages
are partitioned: one task per archive, bucket or partition), plus the k-means fit, one task.
Memory per worker is the measured peak (partitions and buckets have a fixed size at any N); the
client is the measured import baseline + a cost per archive and per kNN bucket fitted on the runs.
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STAGES = {
    "read + exact groups": ("collect", "read_files", "exact_groups"),
    "kNN (d=128 measured)": ("knn",),
    "tiers + analyses": ("tiers", "analyses"),
    "write results": ("write",),
}
"""run.json's timings grouped as the stages are computed: the workers path is lazy, so ``tiers``
only plans and its partitions run in ``analyses``."""


_SUMMARY = re.compile(
    r"N=\s*(?P<n>[\d,]+): (?P<archives>\d+) archives, build (?P<wall>[\d.]+) s on (?P<on>\w+) \((?P<knn>[\w-]+)\)"
    r" \| client peak (?P<client>[\d,]+) MB \(baseline (?P<base>[\d,]+) MB\) \| worker peaks (?P<workers>[\d, ]+) MB"
)


def _summary(line: str, timings: str) -> dict | None:
    """A run from the two printed lines of an older ``scale_build.py`` (before it printed JSON)."""
    m = _SUMMARY.search(line)
    if m is None:
        return None
    num = lambda v: float(v.replace(",", ""))  # noqa: E731
    return {
        "n": int(num(m["n"])), "d": 128, "archives": int(m["archives"]), "wall_s": float(m["wall"]),
        "analysed_on": m["on"], "knn_method": m["knn"], "client_peak_mb": num(m["client"]),
        "client_baseline_mb": num(m["base"]), "worker_peak_mb": [num(v) for v in m["workers"].split(", ")],
        "timings": {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", timings.split("timings:", 1)[1])},
    }  # fmt: skip


def load_runs(path: Path) -> list[dict]:
    """The distributed, partitioned-kNN builds in a ``scale_build.py`` output file (its JSON lines,
    or the two printed lines of runs recorded before it printed JSON); the latest run of each N."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    by_n: dict[int, dict] = {}
    for i, line in enumerate(lines):
        r = None
        if line.startswith("{") and '"timings"' in line:
            r = json.loads(line)
        elif line.startswith("N=") and i + 1 < len(lines) and lines[i + 1].startswith("timings:"):
            r = _summary(line, lines[i + 1])
        if r and r.get("analysed_on") == "workers" and str(r.get("knn_method", "")).startswith("partitioned"):
            by_n[r["n"]] = r
    return [by_n[n] for n in sorted(by_n)]


def per_image(run: dict, names: tuple[str, ...], workers: int) -> float:
    """Core-seconds per image of a group of stages."""
    return sum(run["timings"].get(s, 0.0) for s in names) * workers / run["n"]


def client_fit(runs: list[dict]) -> tuple[float, float]:
    """(baseline MB, MB per archive): least squares of the client's growth over its baseline."""
    xs = [r["archives"] for r in runs]
    ys = [r["client_peak_mb"] - r["client_baseline_mb"] for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return my - slope * mx, slope


def _gib(b: float) -> str:
    return f"{b / 2**40:,.2f} TiB" if b >= 2**40 else f"{b / 2**30:,.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    import knn_projection as kp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=Path, default=HERE / "results" / "scale_build.txt")
    ap.add_argument("--knn", type=Path, default=HERE / "results" / "knn_partitioned.txt")
    ap.add_argument("--n", type=float, nargs="+", default=[50e6, 400e6])
    ap.add_argument("--workers", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--d", type=int, default=1280, help="embedding width of the projected runs")
    ap.add_argument("--images-per-archive", type=int, default=10_000)
    ap.add_argument("--verify-ms-per-image", type=float, default=None,
                    help="core-ms of verification per image (measured on real photos)")  # fmt: skip
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--gflops", type=float, default=None,
                    help="one core's sgemm speed for the kNN's assignment and fit (default: measured here, "
                         "which a loaded machine underestimates)")  # fmt: skip
    args = ap.parse_args(argv)

    runs = load_runs(args.scale)
    if not runs:
        print(f"no distributed partitioned run in {args.scale}")
        return 1
    big = runs[-1]
    w0 = len(big["worker_peak_mb"])
    print(f"# from {args.scale.name}: {len(runs)} distributed builds, N = "
          + ", ".join(f"{r['n']:,}" for r in runs) + f" (d = {big['d']}, {w0} workers x 1 thread)")  # fmt: skip
    print("# core-seconds per image by stage (does it grow with N?):")
    for label, names in STAGES.items():
        cells = ", ".join(f"{per_image(r, names, len(r['worker_peak_mb'])) * 1e3:.3f} ms" for r in runs)
        print(f"#   {label:<22} {cells}")
    base, per_arch = client_fit(runs)
    print(f"# client over its import baseline ({big['client_baseline_mb']} MB): {base:.0f} MB + "
          f"{per_arch * 1e3:.0f} KB per archive (least squares over the runs; includes the kNN buckets, "
          "whose number grows with the archives at a fixed memory per task)")  # fmt: skip
    worker_peak = max(max(r["worker_peak_mb"]) for r in runs)
    knn_runs = [r for r in kp.load_runs([args.knn]) if r["variant"] == "full" and "timings" in r]
    knn_ref = max((r for r in knn_runs if r["d"] == args.d), key=lambda r: r["n"], default=None)
    flops = args.gflops * 1e9 if args.gflops else kp.gemm_flops() if knn_ref else 0.0
    if knn_ref:
        print(f"# kNN at d = {args.d} from {args.knn.name} (N = {knn_ref['n']:,}); one core's sgemm "
              f"{flops / 1e9:.1f} GFLOP/s ({'given' if args.gflops else 'measured now'})")  # fmt: skip

    for n in args.n:
        n = int(n)
        archives = math.ceil(n / args.images_per_archive)
        print(f"\n## N = {n / 1e6:,.0f}M images, {archives:,} archives, d = {args.d}")
        rows = []
        for label, names in STAGES.items():
            if names == ("knn",) and knn_ref is not None:
                continue
            rows.append((label, per_image(big, names, w0) * n / 3600, worker_peak))
        fit_h = 0.0
        if knn_ref is not None:
            e = kp.estimate(knn_ref, n, flops)
            fit_h = e["fit_s"] / 3600
            rows.insert(1, (f"kNN (d={args.d}, {e['buckets']:,} buckets; knn_projection.py)", e["core_h"], e["rss_mb"]))
        if args.verify_ms_per_image is not None:
            rows.insert(-1, ("pixel verification", args.verify_ms_per_image * 1e-3 * n / 3600, worker_peak))
        total = sum(r[1] for r in rows)
        head = "| stage | core-hours | " + " | ".join(f"{w} workers" for w in args.workers) + " | peak per worker |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for label, ch, mem in rows:
            walls = " | ".join(f"{ch / w:,.2f} h" for w in args.workers)
            print(f"| {label} | {ch:,.1f} | {walls} | {mem / 1024:.1f} GB |")
        walls = " | ".join(f"{total / w + fit_h:,.2f} h" for w in args.workers)
        print(f"| **all** (+ k-means fit {fit_h * 60:.0f} min, one task) | **{total:,.1f}** | {walls} | |")
        client = big["client_baseline_mb"] + base + per_arch * archives
        print(f"client (distributed): ~{client:,.0f} MB ({big['client_baseline_mb']} MB import baseline + "
              f"{per_arch * 1e3:.0f} KB x {archives:,} archives); no per-image row")  # fmt: skip
        vec = n * args.d * 4
        print(f"vectors on storage {_gib(vec)} (float32 x {args.d})", end="")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
