"""run_mode=2 at scale (issue 17 point 5): a synthetic work_dir, a real Dask cluster, memory from outside.

For each ``--n`` the script writes (or reuses, under ``--data-dir``) a synthetic work_dir of
``--archives`` archives holding what extraction writes (``WorkDir.write_archive``:
``features.dat``, ``features.parquet`` with every column of the schema, ``done.json``):
clustered ``--d``-dimensional unit vectors with planted pairs -- 1 % of each archive's rows
are near duplicates (cosine 0.9-0.999) of rows of the previous archive, 0.5 % exact
duplicates (same vector, ``md5`` and ``pixel_md5``) of rows of their own archive. Then it
starts ``dask scheduler`` and ``--workers`` ``dask worker --nthreads 1 --memory-limit``
processes, the commands a user types, and runs ``dedupdask build WD --no-verify --client
tcp://...`` as its own process, sampling the resident memory of that process and of each
worker's process tree (nanny + worker, PSS) every 50 ms from here (``benchmarks/rss.py``).

It prints per N: the wall time of the build, where it analysed (``run.json``'s
``analysed_on``), the client's peak and, apart, the import baseline (a process that imports
what ``dedupdask build`` imports and nothing else), each worker's peak against its memory
limit, the stage timings and kNN method from ``run.json``, and the recall of the planted
pairs with cosine >= 0.9 in ``results/similarity/`` (exact pairs as ``kind ==
"exact"``). Not measured here: verification on real images, and equality with the
single-machine path (``tests/test_scheduler.py`` and ``tests/test_scale.py`` check that on
small work_dirs).

Usage::

    python benchmarks/scale_build.py --n 500000 --d 128
    python benchmarks/scale_build.py --n 500000 5000000 --d 128 --archives-per-million 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rss import RssSampler  # noqa: E402

NEAR = 0.01  # share of an archive's rows that are near duplicates of the previous archive's
EXACT = 0.005  # share that are exact copies of a row of their own archive
SIGMA = 1.0  # within-cluster noise: cosine ~ 1 / (1 + SIGMA**2) inside a cluster
PER_CLUSTER = 50


def _hex(*parts: int) -> str:
    return hashlib.md5(np.array(parts, dtype=np.int64).tobytes()).hexdigest()


def write_archive(spec: tuple) -> dict[str, np.ndarray]:
    """Archive ``a`` of a synthetic work_dir; returns its planted pairs (global indices)."""
    from dedupdask.store import FILE_COLUMNS, WorkDir

    root, a, n_arch, rows, d, n_total, seed = spec
    rng = np.random.default_rng([seed, a])
    centres = np.random.default_rng([seed, 2**31]).standard_normal(
        (max(1, n_total // PER_CLUSTER), d), dtype=np.float32
    )
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def block(arch: int) -> np.ndarray:
        r = np.random.default_rng([seed, arch, 1])
        x = centres[r.integers(0, len(centres), rows)]
        x = x + (SIGMA / np.sqrt(d)) * r.standard_normal((rows, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = block(a)
    h = rows // 2
    n_near = int(rows * NEAR) if n_arch > 1 else 0
    src = np.sort(rng.choice(h, n_near, replace=False))
    dst = h + np.sort(rng.choice(rows - h, n_near, replace=False))
    prev = (a - 1) % n_arch
    base = block(prev)[src]
    t = rng.uniform(0.045, 0.48, (n_near, 1)).astype(np.float32)  # cosine ~0.9-0.999
    dup = base + t * rng.standard_normal((n_near, d), dtype=np.float32) / np.sqrt(d)
    x[dst] = dup / np.linalg.norm(dup, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", base, x[dst])
    free = np.setdiff1d(np.arange(h, rows), dst)  # exact copies: second-half rows left
    # (the first half stays as generated: the next archive's near duplicates are made from it)
    n_exact = int(rows * EXACT)
    pick = rng.choice(free, 2 * n_exact, replace=False)
    e_src, e_dst = np.minimum(pick[::2], pick[1::2]), np.maximum(pick[::2], pick[1::2])
    x[e_dst] = x[e_src]
    md5 = np.array([_hex(seed, a, i) for i in range(rows)], dtype=object)
    md5[e_dst] = md5[e_src]
    name = f"{a:06d}.tar"
    url = f"synthetic://{name}"
    members = [f"{i:07d}.jpg" for i in range(rows)]
    files = pd.DataFrame({c: pd.Series([None] * rows, dtype="object") for c in FILE_COLUMNS})
    files["filename"] = [f"{url}/{m}" for m in members]
    files["archive"] = url
    files["member"] = members
    files["key"] = [m[:-4] for m in members]
    files["width"], files["height"] = 256, 192
    files["file_size"] = rng.integers(10_000, 60_000, rows)
    files["md5"] = md5
    files["pixel_md5"] = md5
    files["input_md5"] = md5
    for c in ("mean", "stdv", "blur", "contrast", "p01", "p99", "chroma"):
        files[c] = rng.uniform(10, 200, rows).astype(np.float32)
    files["min"], files["max"], files["unique"] = np.float32(0), np.float32(255), 255
    files["index"] = np.arange(rows, dtype=np.int64)
    files = files.astype({"width": "int32", "height": "int32", "unique": "int32", "index": "Int64",
                          "member_offset": "Int64", "file_size": "int64"})  # fmt: skip
    done = {
        "url": url, "status": "done", "d": d, "model_id": "onnx:synthetic", "model_sha256": "0" * 64,
        "model_threshold": 0.9, "model_ccthreshold": 0.9, "decode_version": 2, "stats_version": 2,
        "counts": {"valid": rows, "images": rows},
    }  # fmt: skip
    skipped = pd.DataFrame(columns=["filename", "member", "reason", "filesize"])
    WorkDir(root).write_archive(name, x, files, skipped, done)
    off, off_prev = a * rows, prev * rows
    return {"near_a": off_prev + src, "near_b": off + dst, "near_cos": cos,
            "exact_a": off + e_src, "exact_b": off + e_dst}  # fmt: skip


def generate(root: str, n: int, d: int, archives: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the work_dir (reused when complete); the planted pairs."""
    truth = os.path.join(root, "truth.npz")
    key = json.dumps(dict(n=n, d=d, archives=archives, seed=seed, near=NEAR, exact=EXACT))
    if os.path.exists(truth):
        z = np.load(truth, allow_pickle=False)
        if str(z["key"]) == key:
            return {k: z[k] for k in z.files if k != "key"}
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rows = n // archives
    specs = [(root, a, archives, rows, d, n, seed) for a in range(archives)]
    with ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(write_archive, specs))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    np.savez(truth, key=key, **out)
    return out


BASELINE = "import dedupdask.cli, dedupdask.pipeline, dedupdask.results, distributed, time; time.sleep(1)"


def sampled(cmd: list[str], workers: list[int], log: str) -> tuple[float, dict[str, float]]:
    """Run ``cmd``; its wall time and the peaks (MB) of it and of each worker tree."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        pids = {"client": proc.pid, **{f"worker{i}": pid for i, pid in enumerate(workers)}}
        with RssSampler(pids, tree=False) as client, RssSampler(
            {k: v for k, v in pids.items() if k != "client"}, tree=True
        ) as trees:
            rc = proc.wait()
        wall = time.perf_counter() - t0
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}):\n" + open(log, errors="replace").read()[-3000:])
    return wall, {"client": client.peak_mb()["client"], **trees.peak_mb()}


def recall(wd: str, truth: dict[str, np.ndarray]) -> dict[str, float]:
    sim = pd.read_parquet(os.path.join(wd, "results", "similarity"), columns=["from", "to", "kind"])
    n = int(max(sim["to"].max() if len(sim) else 0, truth["near_b"].max(), truth["exact_b"].max())) + 1
    found = set((sim["from"].to_numpy(np.int64) * n + sim["to"].to_numpy(np.int64)).tolist())

    def share(a: np.ndarray, b: np.ndarray) -> float:
        keys = np.minimum(a, b) * n + np.maximum(a, b)
        return float(np.mean([k in found for k in keys.tolist()])) if keys.size else float("nan")

    near = truth["near_cos"] >= 0.9
    exact = sim[sim["kind"] == "exact"]
    return {
        "near_pairs_ge_0_9": int(near.sum()),
        "near_recall": share(truth["near_a"][near], truth["near_b"][near]),
        "exact_pairs": int(truth["exact_a"].size),
        "exact_recall": share(truth["exact_a"], truth["exact_b"]),
        "exact_kind_rows": int(len(exact)),
        "similar_pairs": int(len(sim)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[500_000])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--archives-per-million", type=int, default=200, help="archives per 1M images")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "dedupdask-scale-build"))
    p.add_argument("--extra", default="", help="more `dedupdask build` flags, e.g. '--max-client-memory 8GB'")
    p.add_argument("--keep", action="store_true", help="keep the work_dirs")
    args = p.parse_args(argv)
    import dedupdask
    from dedupdask.testing.shellcluster import shell_cluster

    print(f"# dedupdask {dedupdask.__version__} at {os.path.dirname(dedupdask.__file__)}; "
          f"{args.workers} x `dask worker --nthreads 1 --memory-limit {args.memory_limit}`, "
          f"{os.cpu_count()} cores; RSS sampled every 50 ms from outside (client: RSS of the "
          "`dedupdask build` process; workers: PSS of nanny + worker)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ddk-scale-") as tmp:
        _, base = sampled([sys.executable, "-c", BASELINE], [], os.path.join(tmp, "baseline.log"))
        print(f"client import baseline (dedupdask.cli, pipeline, results, distributed): {base['client']:.0f} MB",
              flush=True)
        for n in args.n:
            archives = max(2, round(n * args.archives_per_million / 1_000_000))
            wd = os.path.join(args.data_dir, f"n{n}-d{args.d}-a{archives}")
            t0 = time.perf_counter()
            truth = generate(wd, n, args.d, archives)
            gen = time.perf_counter() - t0
            shutil.rmtree(os.path.join(wd, "results"), ignore_errors=True)
            load0 = os.getloadavg()[0]
            with shell_cluster(tmp, args.workers, memory_limit=args.memory_limit, start_timeout=120,
                               workers_timeout=180, stop_timeout=30) as (address, procs):
                workers = [p.pid for p in procs[1:]]
                cmd = [sys.executable, "-m", "dedupdask", "build", wd, "--no-verify", "--no-progress",
                       "--client", address, *args.extra.split()]  # fmt: skip
                wall, peaks = sampled(cmd, workers, os.path.join(tmp, f"build-{n}.log"))
            run = json.load(open(os.path.join(wd, "results", "run.json")))
            rec = recall(wd, truth)
            knn = run.get("knn", {})
            out = {
                "n": n, "d": args.d, "archives": archives, "generate_s": round(gen, 1), "wall_s": round(wall, 1),
                "analysed_on": run.get("analysed_on"), "knn_method": run["parameters"]["knn_method"],
                "client_peak_mb": round(peaks["client"]), "client_baseline_mb": round(base["client"]),
                "worker_peak_mb": [round(v) for k, v in peaks.items() if k != "client"],
                "memory_limit": args.memory_limit, "timings": run.get("timings"),
                "knn": {k: knn.get(k) for k in ("buckets", "centroids", "sample", "kmeans_levels", "sample_per_centroid")
                        if k in knn},
                **rec, "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)],
            }  # fmt: skip
            print(f"N={n:>11,}: {archives} archives, build {wall:.1f} s on {out['analysed_on']} "
                  f"({out['knn_method']}) | client peak {peaks['client']:.0f} MB (baseline {base['client']:.0f} MB) | "
                  f"worker peaks {', '.join(f'{v:,.0f}' for v in out['worker_peak_mb'])} MB of {args.memory_limit} | "
                  f"recall of planted pairs >= 0.9: {rec['near_recall']:.4f} ({rec['near_pairs_ge_0_9']}), "
                  f"exact {rec['exact_recall']:.4f} ({rec['exact_pairs']}) | load average {out['load_avg'][0]} -> "
                  f"{out['load_avg'][1]}", flush=True)  # fmt: skip
            print("    " + json.dumps(out), flush=True)
            if not args.keep:
                shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
