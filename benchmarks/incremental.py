"""Incremental builds (issue 19 point 3): a build after new archives arrived vs a full rebuild.

A synthetic work_dir of ``--n`` images (``scale_build.generate``: clustered ``--d``-dimensional
unit vectors in ``--archives-per-million`` archives, written as extraction writes them) is
built once on a real cluster (``dask scheduler`` and ``--workers`` ``dask worker`` processes)
with ``dedupdask build W --no-verify``, which keeps its kNN graphs (``graphs/``) and writes its
index. Then ``--new`` images arrive in new archives (``reference.write_query``: 10 % near copies
of old images, 1 % exact copies, the rest new vectors of the same clusters; ``q*.tar``, which
sort after the old archives, as a crawl that grows does) and, measured from outside the process
(``benchmarks/rss.py``):

- ``dedupdask build W --no-verify``: the incremental build (the kept graphs plus a new-vs-all
  search; the index gets a segment);
- ``dedupdask build W2 --no-verify --full`` on a copy (links to the same files): the full
  rebuild it replaces (graphs searched again, index built anew);

wall time, client and worker peaks, the stages' timings, and how the two agree: the share of
the full rebuild's pairs the incremental build has and the other way round (the kNN graph is
partitioned, i.e. approximate, past one task: equal only with exact search, which
``tests/test_incremental.py`` checks), and the recall of the planted cross pairs (new image,
old image) in both.

Usage::

    python benchmarks/incremental.py --n 1000000 --new 20000 100000
    python benchmarks/incremental.py --n 200000 --new 10000        # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import _pairs, _share, cli_cluster, links, write_query  # noqa: E402
from scale_build import generate  # noqa: E402


def _copy_results(src: str, out: str) -> None:
    """The built state of ``src`` (results, graphs, index: real copies; archives: links)."""
    for name in ("results", "graphs", "index"):
        if os.path.isdir(os.path.join(src, name)):
            shutil.copytree(os.path.join(src, name), os.path.join(out, name), symlinks=True)
    for p in Path(src).iterdir():
        if p.is_file() and not p.is_symlink():
            shutil.copy2(p, os.path.join(out, p.name))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--new", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--archives-per-million", type=int, default=200)
    p.add_argument("--new-per-archive", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "dedupdask-incremental"))
    p.add_argument("--extra", default="", help="more `dedupdask build` flags for every build")
    args = p.parse_args(argv)

    archives = max(2, round(args.n * args.archives_per_million / 1_000_000))
    base = os.path.join(args.data_dir, f"base-n{args.n}-d{args.d}-a{archives}")
    generate(base, args.n, args.d, archives)
    tmp = tempfile.mkdtemp(prefix="ddk-inc-")
    with cli_cluster(args, "ddk-inc-cluster-") as (timed, peaks):
        first = os.path.join(args.data_dir, f"built-n{args.n}")
        if not os.path.exists(os.path.join(first, "graphs", "dat.json")):
            links(first, base)
            wall, pk = timed(["build", first, "--no-verify"], "first.log")
            run = json.load(open(os.path.join(first, "results", "run.json")))
            print(f"first build of {args.n:,} x {args.d} ({archives} archives): {wall:.1f} s ({peaks(pk)}); "
                  f"stages {run['timings']}", flush=True)  # fmt: skip
        else:
            print(f"first build of {args.n:,}: built before (reused)", flush=True)
        for q in args.new:
            new = os.path.join(args.data_dir, f"new-q{q}-of-n{args.n}")
            truth = write_query(new, base, args.n, q, args.d, args.new_per_archive)  # q*.tar: after the old
            got = {}
            for mode in ("incremental", "full"):
                wd = os.path.join(tmp, f"{mode}-q{q}")
                links(wd, base, new)
                _copy_results(first, wd)
                cmd = ["build", wd, "--no-verify"] + (["--full"] if mode == "full" else [])
                wall, pk = timed(cmd, f"{mode}-{q}.log")
                run = json.load(open(os.path.join(wd, "results", "run.json")))
                sim = pd.read_parquet(os.path.join(wd, "results", "similarity"), columns=["from", "to", "build"])
                n_all = args.n + q
                near = truth["near_cos"] >= 0.9
                rec = _share(_pairs(sim, n_all), truth["near_r"][near], truth["near_q"][near] + args.n, n_all)
                got[mode] = _pairs(sim, n_all)
                idx = json.load(open(os.path.join(wd, "index", "index.json")))
                print(f"{mode} build after {q:,} new images: {wall:.1f} s ({peaks(pk)}) | knn "
                      f"{run['parameters']['knn_method']} | pairs {len(sim):,} (build 2: {int((sim['build'] == 2).sum()):,}) | "
                      f"recall of planted new-old near pairs {rec:.4f} ({int(near.sum())}) | index "
                      f"{'appended' if idx.get('update', {}).get('appended') else 'built'} | stages {run['timings']}",
                      flush=True)  # fmt: skip
                print("    " + json.dumps({"mode": mode, "n": args.n, "new": q, "wall_s": round(wall, 1),
                                           "peaks_mb": {k: round(v) for k, v in pk.items()}, "knn": run["knn"],
                                           "index_update": idx.get("update"), "recall": rec}), flush=True)  # fmt: skip
                shutil.rmtree(wd, ignore_errors=True)
            inc, full = got["incremental"], got["full"]
            both = len(inc & full)
            print(f"agreement after {q:,} new: the incremental build has {both / max(1, len(full)):.4f} of the "
                  f"full rebuild's {len(full):,} pairs; the full rebuild has {both / max(1, len(inc)):.4f} of "
                  f"the incremental build's {len(inc):,}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
