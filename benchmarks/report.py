"""The report at scale (issue 20 point 5): time and peak memory of ``dedupdask report`` on
synthetic work_dirs of 100k and 1M images, on a real Dask cluster, memory sampled from outside.

For each ``--n``: the synthetic work_dir of ``benchmarks/scale_build.py`` (N images in
``--archives-per-million`` archives, clustered vectors with planted near and exact pairs,
every Parquet column; written, or reused under ``--data-dir``), built once with ``dedupdask build
WD --no-verify --client tcp://...`` (synthetic vectors have no pixels), then ``dedupdask report
WD OUT --client tcp://...`` -- the command a user types -- with the resident memory of the
report process (the client) and of each worker's process tree sampled every 50 ms
(``benchmarks/rss.py``). Printed per N: the report's wall time, client and worker peaks, the
rows and pages of each table, the pages' bytes on disk, and one JSON line.

The synthetic archives are not real files (their URLs are ``synthetic://``), so no thumbnail
can be read: every thumbnail row gets its placeholder, and the time measured is that of
counting the plots, paging every row and writing the pages (thumbnail reads cost what the
galleries' do: each archive once, ``benchmarks/results/`` of the galleries and extraction).

    python benchmarks/report.py                      # N = 100,000 and 1,000,000
    python benchmarks/report.py --n 100000 --keep    # keep the work_dir under --data-dir
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from scale_build import BASELINE, generate, read_run, sampled  # noqa: E402


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def one(args: argparse.Namespace, n: int, tmp: str, base: float) -> dict:
    from dedupdask.testing.shellcluster import shell_cluster

    archives = max(2, round(n * args.archives_per_million / 1_000_000))
    wd = os.path.join(args.data_dir, f"n{n}-d{args.d}-a{archives}")
    generate(wd, n, args.d, archives)
    out_dir = os.path.join(tmp, f"report-{n}")
    load0 = os.getloadavg()[0]
    with shell_cluster(tmp, args.workers, memory_limit=args.memory_limit, start_timeout=120,
                       workers_timeout=180, stop_timeout=30) as (address, procs):  # fmt: skip
        workers = [p.pid for p in procs[1:]]
        built = os.path.exists(os.path.join(wd, "results", "run.json"))
        build_s = 0.0
        if not built:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dedupdask", "build", wd, "--no-verify", "--no-progress",
                            "--client", address], check=True, capture_output=True)  # fmt: skip
            build_s = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "dedupdask", "report", wd, out_dir, "--client", address,
               "--rows-per-page", str(args.rows_per_page), "--thumbnail-rows", str(args.thumbnail_rows)]  # fmt: skip
        wall, peaks = sampled(cmd, workers, os.path.join(tmp, f"report-{n}.log"), scheduler=procs[0].pid)
    printed = open(os.path.join(tmp, f"report-{n}.log"), errors="replace").read()
    run = read_run(wd)
    tables = {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^(\w+): (\d+) rows on (\d+) pages", printed, re.M)}
    out = {
        "n": n, "archives": archives, "build_s": round(build_s, 1), "report_s": round(wall, 1),
        "client_peak_mb": round(peaks["client"]), "client_baseline_mb": round(base),
        "worker_peak_mb": [round(v) for k, v in peaks.items() if k.startswith("worker")],
        "memory_limit": args.memory_limit, "tables": {k: {"rows": v[0], "pages": v[1]} for k, v in tables.items()},
        "candidates": run.get("tables", {}).get("candidates", {}).get("rows"),
        "site_mb": round(_du(out_dir) / 1e6, 1), "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }  # fmt: skip
    print(f"N={n:>10,}: report {wall:.1f} s | client peak {peaks['client']:.0f} MB (baseline {base:.0f} MB) | "
          f"worker peaks {', '.join(f'{v:,.0f}' for v in out['worker_peak_mb'])} MB of {args.memory_limit} | "
          + " | ".join(f"{k} {v['rows']:,} rows / {v['pages']:,} pages" for k, v in out["tables"].items())
          + f" | site {out['site_mb']} MB | load average {out['load_avg'][0]} -> {out['load_avg'][1]}", flush=True)  # fmt: skip
    print("    " + json.dumps(out), flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--archives-per-million", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--rows-per-page", type=int, default=100)
    p.add_argument("--thumbnail-rows", type=int, default=1000)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "ddk-report-bench"))
    p.add_argument("--keep", action="store_true", help="keep the synthetic work_dirs under --data-dir")
    args = p.parse_args(argv)
    from rss import RssSampler

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-c", BASELINE])
        with RssSampler({"base": proc.pid}, tree=False) as s:
            proc.wait()
        base = s.peak_mb()["base"]
        import dedupdask

        print(f"# dedupdask {dedupdask.__version__}; {args.workers} x `dask worker --nthreads 1 --memory-limit "
              f"{args.memory_limit}`, {os.cpu_count()} cores; RSS sampled every 50 ms from outside "
              "(client: the `dedupdask report` process; workers: nanny + worker trees)", flush=True)  # fmt: skip
        for n in args.n:
            one(args, n, tmp, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
