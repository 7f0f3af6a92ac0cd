"""run_mode=2 at scale (issue 17 point 5): synthetic work_dirs and real images, a real Dask cluster, memory from outside.

Every mode starts ``dask scheduler`` and ``--workers`` ``dask worker --nthreads 1 --memory-limit``
processes, the commands a user types (:func:`dedupdask.testing.shellcluster.shell_cluster`),
runs the dedupdask command under test as its own process, and samples the resident memory
of that process (the client) and of each worker's process tree (nanny + worker, PSS) every
50 ms from here (``benchmarks/rss.py``). The client's import baseline is printed apart: a
process that imports what ``dedupdask build`` imports and nothing else. Each run prints its
figures and one JSON line.

``--n N`` (the default mode, N = 500,000): a synthetic work_dir of N images in
``--archives-per-million`` archives, written (or reused, under ``--data-dir``) as extraction
writes it (``WorkDir.write_archive``: ``features.dat``, ``features.parquet`` with every column of
the schema, ``done.json``): clustered ``--d``-dimensional unit vectors with planted pairs --
1 % of each archive's rows are near duplicates (cosine 0.9-0.999) of rows of the previous
archive, 0.5 % exact duplicates (same vector, ``md5`` and ``pixel_md5``) of rows of their own
archive -- built by ``dedupdask build WD --no-verify --client tcp://...``. Printed: the build's
wall time, where it analysed (``run.json``'s ``analysed_on``), client peak, each worker's peak
against its memory limit, the stage timings and kNN method, and the recall of the planted
pairs with cosine >= 0.9 in ``results/similarity/`` (exact pairs as ``kind == "exact"``).

``--compare N``: the same synthetic work_dir built twice with exact kNN search and
``--no-verify`` (synthetic vectors have no pixels): once in a process without a client and a
``max_client_memory`` it fits (``analysed_on`` "this process"), once on the cluster with
``max_client_memory`` 1 MB (``analysed_on`` "workers"). No option of the CLI or of
``ddk.build`` chooses the kNN method, so both run :data:`EXACT_BUILD`: what ``ddk.build``
does, with ``dedupdask.analysis.build(method="exact")``. Every result table
(``results/``: similarity, outliers, components, stats, invalid, issues), every fastdup-named
CSV and ``run.json``'s counts / issues / verification blocks are compared by content, order
ignored (``benchmarks/result_diff.py``): per table its rows and identical yes/no, with the
rows only one side has (and, when only float values differ, by how much). The in-process
reference runs with one BLAS thread, as a ``dask worker`` does (``--compare-blas one``; an
OpenBLAS matrix product's last float32 bit depends on its thread count); ``default`` or
``both`` also build it with the default BLAS threads. Exits 1 when a compared table differs.

``--real N``: N real pictures in webdataset tar shards (``benchmarks/real_shards.py``: the
packaged photos, wallpapers, stamps, textures and clip art of ``quality_families.py``, one per
picture, and a ``--real-copies`` share of planted copies -- exact, resize, JPEG q30, crop,
flip, brightness -- in another shard than their original), then on the cluster
``dedupdask extract SHARDS WD --client ...`` (the default model) and ``dedupdask build WD
--client ...`` with verification (the default) twice: as typed, and with
``--max-client-memory 1MB`` so that every stage runs on the workers. Printed per command: wall
time, client and worker peaks; per build: ``run.json``'s ``analysed_on``, timings and
verification block (``ran_on``: the in-process analysis scores fewer than
``dedupdask.verify.CLUSTER_MIN_PAIRS`` pairs on its own threads), the verification tasks each
worker ran (the scheduler's task stream), the recall of the planted
copies (pairs of any kind) and the found pairs whose images come from different originals
(look-alikes); then the two builds' tables compared.

``--n N --real-subset R``: verification on a real-image subset of a large work_dir. The
real shards of ``--real R`` are extracted on the cluster (``dedupdask extract SHARDS REAL_WD
--client ...``, the default model) and their archives are written into the synthetic work_dir
of N images with the WorkDir API (:func:`merge_real`: files tables with the real archive URLs,
so verification reads the real pixels; ``dct.dat``, ``skipped.csv`` and ``done.json`` as
extracted), their vectors brought to ``--d`` by a fixed truncated SVD (uncentred PCA) fitted
on the R real vectors, unit rows after projection -- how it moved the cosines of the planted
copies and of pairs of distinct pictures is printed. Then ONE ``dedupdask build WD --client
...`` with the default settings (verification on) analyses all of them. What the work_dir
format requires of mixed archives (``dedupdask/collect.py``, ``thresholds.py``,
``fusion.py``): every ``done.json`` agrees on model id, model hash and ``d`` (collect refuses
a mix) and on ``decode_version`` (2 for both); the thresholds are the model's row of
``dedupdask.thresholds.TABLE`` (recorded ``model_threshold`` s are only read for user models,
from the first archive: archives sort by URL, so the real ones, local paths, come first and
take global indices 0..R-1); the copy tier runs only when EVERY archive has a ``dct.dat``. So
here the synthetic archives are written with the real model's id and hash (effnet-lite0:
threshold 0.99, verification band [0.65, 0.99), copy_threshold 0.995) and a ``dct.dat`` of
independent random unit descriptors, and the synthetic data differ from ``--n`` alone
(:data:`SUBSET`) so that no synthetic pair is ever sent to verification (it could not read a
``synthetic://`` archive): planted near pairs have cosine 0.992-0.999 (>= threshold: accepted
without verification), the cluster noise is sigma 4 (two members of a cluster: cosine ~0.06;
the largest non-planted neighbour cosine expected at 5M is ~0.6, below the band's 0.65),
exact copies share ``md5`` (exact groups, never verified), and random DCT descriptors make no
copy candidate. Printed: the extraction, the projection, the build's wall time, where it
analysed and where verification ran (run.json's ``verification`` block: ``ran_on``,
``workers``, ``tasks``; and the scheduler's task stream), client and worker peaks,
synthetic recall (planted pairs >= 0.9, exact), the real subset's recall of planted copies by
edit and its look-alikes (pairs of two real images only; real-synthetic pairs are counted, 0
expected). Exits 1 when verification had errors or a real-synthetic pair was reported.

Not measured here: S3 (``benchmarks/s3_memory.py``), real images past the ~3,200 packaged
pictures, the kNN's recall against exact search at scale (``benchmarks/knn.py``).

Usage::

    python benchmarks/scale_build.py --n 500000 --d 128
    python benchmarks/scale_build.py --n 500000 5000000 --d 128 --archives-per-million 200
    python benchmarks/scale_build.py --compare 200000 --compare-blas both
    python benchmarks/scale_build.py --real 3000
    python benchmarks/scale_build.py --n 500000 --real-subset 3000
    python benchmarks/scale_build.py --n 5000000 --real-subset 3000 --extra "--max-memory-per-task 256MB"
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_shards import make_real_shards, pair_truth  # noqa: E402
from result_diff import compare, move_results  # noqa: E402
from rss import RssSampler  # noqa: E402

NEAR = 0.01  # share of an archive's rows that are near duplicates of the previous archive's
EXACT = 0.005  # share that are exact copies of a row of their own archive
SIGMA = 1.0  # within-cluster noise: cosine ~ 1 / (1 + SIGMA**2) inside a cluster
PER_CLUSTER = 50
DCT_DIM = 63  # dedupdask.fusion.DCT_DIM: width of dct.dat rows
# the synthetic part of --real-subset: keeps every synthetic pair out of the real model's
# verification band (see the module docstring)
SUBSET = {"sigma": 4.0, "near_cos": [0.992, 0.999]}


def _hex(*parts: int) -> str:
    return hashlib.md5(np.array(parts, dtype=np.int64).tobytes()).hexdigest()


def archive_vectors(
    a: int, n_arch: int, rows: int, d: int, n_total: int, seed: int, subset: dict | None, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The unit vectors of archive ``a`` and its planted pairs (local rows; ``near_src`` in
    archive ``prev``), drawn from ``rng`` (``default_rng([seed, a])``)."""
    sigma = subset["sigma"] if subset else SIGMA
    centres = np.random.default_rng([seed, 2**31]).standard_normal(
        (max(1, n_total // PER_CLUSTER), d), dtype=np.float32
    )
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def block(arch: int) -> np.ndarray:
        r = np.random.default_rng([seed, arch, 1])
        x = centres[r.integers(0, len(centres), rows)]
        x = x + (sigma / np.sqrt(d)) * r.standard_normal((rows, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = block(a)
    h = rows // 2
    n_near = int(rows * NEAR) if n_arch > 1 else 0
    src = np.sort(rng.choice(h, n_near, replace=False))
    dst = h + np.sort(rng.choice(rows - h, n_near, replace=False))
    prev = (a - 1) % n_arch
    base = block(prev)[src]
    if subset:  # cosine exactly in subset["near_cos"]: base turned towards a random orthogonal direction
        c = rng.uniform(*subset["near_cos"], (n_near, 1))
        u = rng.standard_normal((n_near, d))
        u -= np.einsum("ij,ij->i", u, base)[:, None] * base
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        dup = (c * base + np.sqrt(1 - c**2) * u).astype(np.float32)
    else:
        t = rng.uniform(0.045, 0.48, (n_near, 1)).astype(np.float32)  # cosine ~0.81-0.999
        dup = base + t * rng.standard_normal((n_near, d), dtype=np.float32) / np.sqrt(d)
    x[dst] = dup / np.linalg.norm(dup, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", base, x[dst])
    free = np.setdiff1d(np.arange(h, rows), dst)  # exact copies: second-half rows left
    # (the first half stays as generated: the next archive's near duplicates are made from it)
    n_exact = int(rows * EXACT)
    pick = rng.choice(free, 2 * n_exact, replace=False)
    e_src, e_dst = np.minimum(pick[::2], pick[1::2]), np.maximum(pick[::2], pick[1::2])
    x[e_dst] = x[e_src]
    return x, {"prev": np.int64(prev), "near_src": src, "near_dst": dst, "near_cos": cos,
               "exact_src": e_src, "exact_dst": e_dst}  # fmt: skip


def synthetic_tables(url: str, rows: int, d: int, md5: np.ndarray, rng: np.random.Generator) -> tuple[pd.DataFrame, dict]:
    """The files table (every column of the schema, members ``0000000.jpg``...) and ``done.json``
    of a synthetic archive at ``url`` of ``rows`` valid images with these ``md5`` s."""
    from dedupdask.store import FILE_COLUMNS

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
    return files, done


def write_archive(spec: tuple) -> dict[str, np.ndarray]:
    """Archive ``a`` of a synthetic work_dir; returns its planted pairs (global indices)."""
    from dedupdask.store import WorkDir

    root, a, n_arch, rows, d, n_total, seed, subset = spec
    rng = np.random.default_rng([seed, a])
    x, p = archive_vectors(a, n_arch, rows, d, n_total, seed, subset, rng)
    prev, src, dst, cos = int(p["prev"]), p["near_src"], p["near_dst"], p["near_cos"]
    e_src, e_dst = p["exact_src"], p["exact_dst"]
    md5 = np.array([_hex(seed, a, i) for i in range(rows)], dtype=object)
    md5[e_dst] = md5[e_src]
    name = f"{a:06d}.tar"
    url = f"synthetic://{name}"
    files, done = synthetic_tables(url, rows, d, md5, rng)
    perceptual = None
    if subset:  # the real model's id and hash; random unit DCT descriptors: no synthetic copy candidate
        done.update(subset["model"])
        perceptual = np.random.default_rng([seed, a, 2]).standard_normal((rows, DCT_DIM), dtype=np.float32)
        perceptual /= np.linalg.norm(perceptual, axis=1, keepdims=True)
        perceptual[e_dst] = perceptual[e_src]  # exact copies: the same pixels
        done["perceptual"] = {"model_id": "dct:synthetic", "sha256": "0" * 64, "d": DCT_DIM}
    skipped = pd.DataFrame(columns=["filename", "member", "reason", "filesize"])
    WorkDir(root).write_archive(name, x, files, skipped, done, perceptual=perceptual)
    off, off_prev = a * rows, prev * rows
    return {"near_a": off_prev + src, "near_b": off + dst, "near_cos": cos,
            "exact_a": off + e_src, "exact_b": off + e_dst}  # fmt: skip


def reuse_truth(path: str, key: str) -> dict[str, np.ndarray] | None:
    """The planted pairs saved at ``path`` when they were made with ``key`` (the data is reused)."""
    if not os.path.exists(path):
        return None
    z = np.load(path, allow_pickle=False)
    return {k: z[k] for k in z.files if k != "key"} if str(z["key"]) == key else None


def generate(
    root: str, n: int, d: int, archives: int, seed: int = 0, subset: dict | None = None
) -> dict[str, np.ndarray]:
    """Write the work_dir (reused when complete); the planted pairs. ``subset``: the
    synthetic part of ``--real-subset`` (:data:`SUBSET`, plus ``model``: done.json's model
    fields) -- cluster noise ``sigma``, near pairs of cosine ``near_cos``, a ``dct.dat``."""
    truth = os.path.join(root, "truth.npz")
    key = json.dumps(dict(n=n, d=d, archives=archives, seed=seed, near=NEAR, exact=EXACT, **({"subset": subset} if subset else {})))
    kept = reuse_truth(truth, key)
    if kept is not None:
        return kept
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rows = n // archives
    specs = [(root, a, archives, rows, d, n, seed, subset) for a in range(archives)]
    with ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(write_archive, specs))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    np.savez(truth, key=key, **out)
    return out


BASELINE = "import dedupdask.cli, dedupdask.pipeline, dedupdask.results, distributed, time; time.sleep(1)"

# `dedupdask build` with exact kNN search: no option of the CLI or of ddk.build chooses the
# method (dedupdask.analysis.build's `method`), so this does what ddk.build does -- resolve
# the client, analyse here while in_process_bytes fits max_client_memory, else on the
# client's workers -- with method="exact". argv: work_dir, scheduler address ("" = none),
# max_client_memory, n, d.
EXACT_BUILD = """
import sys
from dedupdask.analysis import build
from dedupdask.config import RunConfig
from dedupdask.knn_budget import parse_memory
from dedupdask.scheduler import in_process_bytes, resolve
wd, client, bound, n, d = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
config = RunConfig.from_kwargs(run_mode=2, verify=False, progress=False, max_client_memory=bound)
with resolve(client) as run, run.analysis(in_process_bytes(n, d), parse_memory(bound)):
    build(wd, config=config, method="exact")
"""
# One BLAS thread, as in `dask worker` processes (dask's nanny sets these before it spawns a
# worker): an OpenBLAS matrix product's last float32 bit depends on its thread count.
ONE_BLAS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# task prefixes of pixel verification (dedupdask.verify, dedupdask.verify_frames) as the task
# stream names them (dask.utils.key_split drops a leading underscore)
VERIFY_TASKS = ("score_pairs", "score_ranged", "timed_load", "load_cost", "verify_partition")


def sampled(
    cmd: list[str], workers: list[int], log: str, env: dict[str, str] | None = None, scheduler: int | None = None
) -> tuple[float, dict[str, float]]:
    """Run ``cmd``; its wall time and the peaks (MB) of it, of each worker tree and (given its
    pid) of the ``dask scheduler`` process."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        pids = {"client": proc.pid, **({"scheduler": scheduler} if scheduler else {})}
        with RssSampler(pids, tree=False) as client, RssSampler(
            {f"worker{i}": pid for i, pid in enumerate(workers)}, tree=True
        ) as trees:
            rc = proc.wait()
        wall = time.perf_counter() - t0
    if rc:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}):\n" + open(log, errors="replace").read()[-3000:])
    return wall, {**client.peak_mb(), **trees.peak_mb()}


@contextlib.contextmanager
def task_stream(address: str) -> Iterator[dict[str, dict[str, list[float]]]]:
    """Tasks the cluster finished inside the block, filled in at its end: ``{worker name:
    {task prefix: [tasks, compute seconds]}}``, from the scheduler's task stream."""
    from dask.utils import key_split
    from distributed import Client

    out: dict[str, dict[str, list[float]]] = {}
    with Client(address, timeout=60) as c:
        c.get_task_stream(start=time.time())  # starts the scheduler's recording
        t0 = time.time()
        yield out
        names = {a: str(w.get("name", a)) for a, w in c.scheduler_info(n_workers=-1)["workers"].items()}
        for rec in c.get_task_stream(start=t0):
            per = out.setdefault(names.get(rec["worker"], rec["worker"]), {})
            got = per.setdefault(key_split(rec["key"]), [0, 0.0])
            got[0] += 1
            got[1] += sum(s["stop"] - s["start"] for s in rec.get("startstops", ()) if s["action"] == "compute")


def tasks_summary(stream: dict[str, dict[str, list[float]]], only: tuple[str, ...] = ()) -> dict[str, list]:
    """``{worker: [tasks, compute seconds]}`` over every prefix, or those of ``only``."""
    return {
        w: [sum(v[0] for k, v in per.items() if not only or k in only),
            round(sum(v[1] for k, v in per.items() if not only or k in only), 1)]
        for w, per in sorted(stream.items())
    }  # fmt: skip


def clear_outputs(wd: str) -> None:
    """Remove a previous build's ``results/`` and CSV files from ``wd``."""
    from dedupdask.csvs import CSV_FILES

    shutil.rmtree(os.path.join(wd, "results"), ignore_errors=True)
    for name in CSV_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(wd, name))


def read_run(wd: str) -> dict:
    with open(os.path.join(wd, "results", "run.json")) as f:
        return json.load(f)


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


def synthetic(args: argparse.Namespace, n: int, tmp: str, base: float) -> int:
    """``dedupdask build WD --no-verify --client ...`` of a synthetic work_dir of ``n`` images."""
    from dedupdask.testing.shellcluster import shell_cluster

    archives = max(2, round(n * args.archives_per_million / 1_000_000))
    wd = os.path.join(args.data_dir, f"n{n}-d{args.d}-a{archives}")
    t0 = time.perf_counter()
    truth = generate(wd, n, args.d, archives)
    gen = time.perf_counter() - t0
    shutil.rmtree(os.path.join(wd, "results"), ignore_errors=True)
    load0 = os.getloadavg()[0]
    with shell_cluster(tmp, args.workers, memory_limit=args.memory_limit, start_timeout=120,
                       workers_timeout=180, stop_timeout=30) as (address, procs):  # fmt: skip
        workers = [p.pid for p in procs[1:]]
        cmd = [sys.executable, "-m", "dedupdask", "build", wd, "--no-verify", "--no-progress",
               "--client", address, *args.extra.split()]  # fmt: skip
        with task_stream(address) as stream:
            wall, peaks = sampled(cmd, workers, os.path.join(tmp, f"build-{n}.log"), scheduler=procs[0].pid)
    run = read_run(wd)
    rec = recall(wd, truth)
    knn = run.get("knn", {})
    out = {
        "n": n, "d": args.d, "archives": archives, "generate_s": round(gen, 1), "wall_s": round(wall, 1),
        "analysed_on": run.get("analysed_on"), "knn_method": run["parameters"]["knn_method"],
        "client_peak_mb": round(peaks["client"]), "client_baseline_mb": round(base),
        "worker_peak_mb": [round(v) for k, v in peaks.items() if k.startswith("worker")],
        "scheduler_peak_mb": round(peaks["scheduler"]), "tasks": sum(v[0] for v in tasks_summary(stream).values()),
        "partitions": len(run.get("tables", {}).get("stats", {}).get("part_rows") or []),
        "memory_limit": args.memory_limit, "timings": run.get("timings"),
        "knn": {k: knn.get(k) for k in ("buckets", "centroids", "sample", "kmeans_levels", "sample_per_centroid")
                if k in knn},
        **rec, "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }  # fmt: skip
    print(f"N={n:>11,}: {archives} archives, build {wall:.1f} s on {out['analysed_on']} "
          f"({out['knn_method']}) | client peak {peaks['client']:.0f} MB (baseline {base:.0f} MB) | "
          f"worker peaks {', '.join(f'{v:,.0f}' for v in out['worker_peak_mb'])} MB of {args.memory_limit} | "
          f"scheduler peak {out['scheduler_peak_mb']:,} MB, {out['tasks']:,} tasks | "
          f"recall of planted pairs >= 0.9: {rec['near_recall']:.4f} ({rec['near_pairs_ge_0_9']}), "
          f"exact {rec['exact_recall']:.4f} ({rec['exact_pairs']}) | load average {out['load_avg'][0]} -> "
          f"{out['load_avg'][1]}", flush=True)  # fmt: skip
    print("    " + json.dumps(out), flush=True)
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)
    return 0


def _print_diff(rows: list[dict], labels: tuple[str, str]) -> bool:
    """Print one line per table of :func:`result_diff.compare`; whether all are identical."""
    print(f"    {'table':<26} {'rows (' + ' / '.join(labels) + ')':>32}  identical", flush=True)
    for r in rows:
        a, b = r["rows"]
        count = "" if a is None else f"{a:,} / {b:,}"
        print(f"    {r['table']:<26} {count:>32}  {'yes' if r['identical'] else 'NO'}", flush=True)
        for note in r["notes"]:
            print(f"        {note[:400]}", flush=True)
    return all(r["identical"] for r in rows)


def compare_paths(args: argparse.Namespace, n: int, tmp: str, base: float) -> int:
    """``--compare``: exact search in this process and on the cluster; every table compared."""
    from dedupdask.testing.shellcluster import shell_cluster

    archives = max(2, round(n * args.archives_per_million / 1_000_000))
    wd = os.path.join(args.data_dir, f"n{n}-d{args.d}-a{archives}")
    side = os.path.join(args.data_dir, f"compare-n{n}-d{args.d}-a{archives}")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    truth = generate(wd, n, args.d, archives)
    gen = time.perf_counter() - t0
    clear_outputs(wd)
    shutil.rmtree(side, ignore_errors=True)
    blas = {"one": ["one"], "default": ["default"], "both": ["one", "default"]}[args.compare_blas]
    builds, refs = {}, {}
    for threads in blas:  # the single-machine path: no client, a bound it fits
        env = {k: v for k, v in os.environ.items() if k not in ONE_BLAS}
        env.update(ONE_BLAS if threads == "one" else {})
        cmd = [sys.executable, "-c", EXACT_BUILD, wd, "", "1000GB", str(n), str(args.d)]
        wall, peaks = sampled(cmd, [], os.path.join(tmp, f"compare-{n}-{threads}.log"), env)
        run = read_run(wd)
        label = f"in_process_blas_{threads}"
        builds[label] = {"wall_s": round(wall, 1), "analysed_on": run["analysed_on"],
                         "knn_method": run["parameters"]["knn_method"], "client_peak_mb": round(peaks["client"]),
                         "timings": run["timings"]}  # fmt: skip
        refs[label] = os.path.join(side, label)
        move_results(wd, refs[label])
    with shell_cluster(tmp, args.workers, memory_limit=args.memory_limit, start_timeout=120,
                       workers_timeout=180, stop_timeout=30) as (address, procs):  # fmt: skip
        workers = [p.pid for p in procs[1:]]
        cmd = [sys.executable, "-c", EXACT_BUILD, wd, address, "1MB", str(n), str(args.d)]
        with task_stream(address) as stream:
            wall, peaks = sampled(cmd, workers, os.path.join(tmp, f"compare-{n}-workers.log"))
    run = read_run(wd)
    rec = recall(wd, truth)
    builds["workers"] = {
        "wall_s": round(wall, 1), "analysed_on": run["analysed_on"], "knn_method": run["parameters"]["knn_method"],
        "client_peak_mb": round(peaks["client"]), "worker_peak_mb": [round(v) for k, v in peaks.items() if k != "client"],
        "timings": run["timings"], "worker_tasks": tasks_summary(stream),
    }  # fmt: skip
    print(f"N={n:>11,}: {archives} archives, d={args.d}, exact kNN search, --no-verify | client import baseline "
          f"{base:.0f} MB | planted pairs >= 0.9 found by the workers' build: {rec['near_recall']:.4f} "
          f"({rec['near_pairs_ge_0_9']}), exact {rec['exact_recall']:.4f}", flush=True)  # fmt: skip
    for label, b in builds.items():
        extra = (f" | worker peaks {', '.join(f'{v:,}' for v in b['worker_peak_mb'])} MB of {args.memory_limit}"
                 f" | tasks [count, compute s] per worker {b['worker_tasks']}") if "worker_peak_mb" in b else ""  # fmt: skip
        print(f"  {label}: {b['wall_s']:.1f} s, analysed_on {b['analysed_on']!r} ({b['knn_method']}), client peak "
              f"{b['client_peak_mb']:,} MB{extra}", flush=True)  # fmt: skip
        print(f"      timings: {', '.join(f'{k} {v:.1f} s' for k, v in b['timings'].items())}", flush=True)
    same = {}
    tables = {}
    for label, ref in refs.items():
        print(f"  {label} (A) vs workers (B):", flush=True)
        rows = compare(ref, wd)
        same[label] = _print_diff(rows, ("A", "B"))
        tables[label] = {r["table"]: [r["rows"][0], r["identical"]] for r in rows}
    out = {
        "compare": n, "d": args.d, "archives": archives, "generate_s": round(gen, 1),
        "client_baseline_mb": round(base), "memory_limit": args.memory_limit, "builds": builds,
        "identical": same, "tables": tables, **rec, "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }  # fmt: skip
    print("    " + json.dumps(out), flush=True)
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)
        shutil.rmtree(side, ignore_errors=True)
    return 0 if all(same.values()) else 1


def _print_stages(timings: dict, verification: dict, verify_tasks: dict, worker_tasks: dict) -> None:
    """A verified build's stage timings, run.json verification block and tasks per worker."""
    print(f"      timings: {', '.join(f'{k} {t:.1f} s' for k, t in timings.items())}", flush=True)
    print(f"      verification (run.json): {json.dumps(verification)}", flush=True)
    print(f"      verification tasks [count, compute s] per worker (scheduler's task stream): "
          f"{verify_tasks or 'none'}; all tasks {worker_tasks or 'none'}", flush=True)  # fmt: skip


def real_images(args: argparse.Namespace, n: int, tmp: str, base: float) -> int:
    """``--real``: extraction and the build with verification, of real pictures, on the cluster."""
    from dedupdask.testing.shellcluster import shell_cluster

    root = os.path.join(args.data_dir, f"real{n}")
    wd, side = os.path.join(root, "work"), os.path.join(root, "as-typed")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    info = make_real_shards(Path(root), n, cache=Path(args.cache_dir), copies=args.real_copies,
                            per_shard=args.real_per_shard, log=lambda m: print(f"  {m}", file=sys.stderr))  # fmt: skip
    make_s = time.perf_counter() - t0
    truth = info["truth"]
    shutil.rmtree(wd, ignore_errors=True)
    shutil.rmtree(side, ignore_errors=True)
    dd_cmd = [sys.executable, "-m", "dedupdask"]
    builds = {}
    with shell_cluster(tmp, args.workers, memory_limit=args.memory_limit, start_timeout=120,
                       workers_timeout=180, stop_timeout=30) as (address, procs):  # fmt: skip
        workers = [p.pid for p in procs[1:]]
        cmd = [*dd_cmd, "extract", os.path.join(root, "shards"), wd, "--no-progress", "--client", address]
        with task_stream(address) as stream:
            ext_wall, ext_peaks = sampled(cmd, workers, os.path.join(tmp, f"extract-real{n}.log"))
        extract = {"wall_s": round(ext_wall, 1), "client_peak_mb": round(ext_peaks["client"]),
                   "worker_peak_mb": [round(v) for k, v in ext_peaks.items() if k != "client"],
                   "worker_tasks": tasks_summary(stream)}  # fmt: skip
        # as a user types it; then with every stage on the workers (past max_client_memory)
        for label, extra in (("as_typed", []), ("on_workers", ["--max-client-memory", "1MB"])):
            clear_outputs(wd)
            cmd = [*dd_cmd, "build", wd, "--no-progress", "--client", address, *extra, *args.extra.split()]
            with task_stream(address) as stream:
                wall, peaks = sampled(cmd, workers, os.path.join(tmp, f"build-real{n}-{label}.log"))
            run = read_run(wd)
            sim = pd.read_parquet(os.path.join(wd, "results", "similarity"))
            builds[label] = {
                "command": " ".join(["dedupdask build WD --client tcp://...", *extra, *args.extra.split()]),
                "wall_s": round(wall, 1), "analysed_on": run["analysed_on"],
                "knn_method": run["parameters"]["knn_method"], "knn_dct": run.get("knn_dct", {}).get("method"),
                "client_peak_mb": round(peaks["client"]),
                "worker_peak_mb": [round(v) for k, v in peaks.items() if k != "client"],
                "timings": run["timings"], "verification": run["verification"],
                "kinds": {k: run["counts"][f"{k}_pairs"] for k in ("exact", "copy", "near")},
                "verify_tasks": tasks_summary(stream, VERIFY_TASKS), "worker_tasks": tasks_summary(stream),
                "counts": {k: run["counts"][k] for k in ("images", "invalid", "candidate_pairs", "similar_pairs")},
                **pair_truth(sim, truth),
            }  # fmt: skip
            if label == "as_typed":
                move_results(wd, side)
    copies = truth[truth["role"] == "copy"]
    print(f"--real {n}: {len(truth)} images in {len(info['shards'])} tar shards ({len(truth) - len(copies)} "
          f"originals: {info['sources']}; {len(copies)} planted copies: {info['edits']}) | shards made in "
          f"{make_s:.0f} s | client import baseline {base:.0f} MB", flush=True)  # fmt: skip
    print(f"  extraction (dedupdask extract SHARDS WD --client tcp://...): {ext_wall:.1f} s | client peak "
          f"{extract['client_peak_mb']:,} MB | worker peaks {', '.join(f'{v:,}' for v in extract['worker_peak_mb'])} "
          f"MB of {args.memory_limit} | tasks [count, compute s] per worker {extract['worker_tasks']}", flush=True)  # fmt: skip
    for label, b in builds.items():
        v = b["verification"]
        print(f"  build {label} ({b['command']}): {b['wall_s']:.1f} s, analysed_on {b['analysed_on']!r} "
              f"(kNN {b['knn_method']}, DCT kNN {b['knn_dct']}) | client peak {b['client_peak_mb']:,} MB | worker "
              f"peaks {', '.join(f'{x:,}' for x in b['worker_peak_mb'])} MB of {args.memory_limit}", flush=True)  # fmt: skip
        _print_stages(b["timings"], v, b["verify_tasks"], b["worker_tasks"])
        print(f"      counts {b['counts']}, pairs by kind {b['kinds']} | recall of the planted copies (any kind): "
              f"{b['recall']:.4f} of {b['planted_pairs']}, by edit {b['recall_by_edit']} | found pairs not "
              f"planted (look-alikes): {b['not_planted_pairs']} {b['not_planted_by_kind']}", flush=True)  # fmt: skip
        for e in b["not_planted_examples"]:
            print(f"        e.g. {e}", flush=True)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"  as_typed (A) vs on_workers (B) (A analysed in the `dedupdask build` process, BLAS threads: {blas}; "
          "with more than one, float32 values may differ in the last bit, see --compare-blas):", flush=True)  # fmt: skip
    rows = compare(side, wd)
    same = _print_diff(rows, ("A", "B"))
    out = {
        "real": n, "images": len(truth), "copies": len(copies), "shards": len(info["shards"]),
        "sources": info["sources"], "edits": info["edits"], "make_s": round(make_s, 1),
        "client_baseline_mb": round(base), "memory_limit": args.memory_limit, "extract": extract,
        "builds": builds, "paths_identical": same, "client_blas_threads": blas,
        "tables": {r["table"]: [r["rows"][0], r["identical"]] for r in rows},
        "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }  # fmt: skip
    print("    " + json.dumps(out), flush=True)
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)
        shutil.rmtree(side, ignore_errors=True)
    return 0


def _project(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed projection of ``--real-subset``: a truncated SVD (uncentred PCA: the rank-``d``
    least-squares fit of every dot product) fitted on ``x``; ``(x projected to unit rows, basis)``."""
    if x.shape[1] < d:
        raise ValueError(f"--d {d} is wider than the real model's {x.shape[1]}-d vectors")
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    basis = vt[:d].T
    y = x.astype(np.float64) @ basis
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return y.astype(np.float32), basis


def _cosines_kept(x: np.ndarray, y: np.ndarray, rows: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How the projection moved cosines: planted copy pairs (each copy and its original) and
    pairs of different pictures (originals only), before (``x``) and after (``y``)."""
    pos = {(os.path.basename(str(a)), str(m)): int(i) for a, m, i in rows.itertuples(index=False)}
    home = {o: pos[(s, m)] for s, m, r, o, _ in truth.itertuples(index=False) if r == "original"}
    copies = truth[truth["role"] == "copy"]
    a = np.array([pos[(s, m)] for s, m in zip(copies["shard"], copies["member"], strict=True)], np.int64)
    b = np.array([home[o] for o in copies["origin"]], np.int64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    before, after = np.einsum("ij,ij->i", xn[a], xn[b]), np.einsum("ij,ij->i", y[a], y[b])
    diff = after - before
    by_edit = {
        e: [round(float(before[m].mean()), 4), round(float(after[m].mean()), 4)]
        for e in sorted(copies["edit"].unique()) for m in [copies["edit"].to_numpy() == e]
    }  # fmt: skip
    orig = np.array(sorted(home.values()), np.int64)  # one image per distinct picture
    iu = np.triu_indices(orig.size, 1)
    g_x, g_y = (xn[orig] @ xn[orig].T)[iu], (y[orig] @ y[orig].T)[iu]
    return {
        "copy_pairs": int(a.size),
        "copy_cos_mean_1280_to_d": [round(float(before.mean()), 4), round(float(after.mean()), 4)],
        "copy_cos_min_1280_to_d": [round(float(before.min()), 4), round(float(after.min()), 4)],
        "copy_cos_abs_change_mean_max": [round(float(np.abs(diff).mean()), 4), round(float(np.abs(diff).max()), 4)],
        "copy_cos_corr": round(float(np.corrcoef(before, after)[0, 1]), 4),
        "copy_ge_0_9_1280_to_d": [int((before >= 0.9).sum()), int((after >= 0.9).sum())],
        "copy_cos_mean_by_edit_1280_to_d": by_edit,
        "distinct_pairs": int(g_x.size),
        "distinct_cos_mean_1280_to_d": [round(float(g_x.mean()), 4), round(float(g_y.mean()), 4)],
        "distinct_ge_0_9_1280_to_d": [int((g_x >= 0.9).sum()), int((g_y >= 0.9).sum())],
        "distinct_cos_corr": round(float(np.corrcoef(g_x, g_y)[0, 1]), 4),
    }  # fmt: skip


def read_model(work_dir: str) -> dict:
    """``done.json``'s model fields of the first done archive of ``work_dir``."""
    from dedupdask.collect import collect

    col = collect(work_dir)
    done = col.work_dir.read_done(col.archives[0].name)
    return {k: done[k] for k in ("model_id", "model_sha256", "model_threshold", "model_ccthreshold")}


def merge_real(real_wd: str, wd: str, d: int, truth: pd.DataFrame) -> dict:
    """Write every done archive of ``real_wd`` into the synthetic work_dir ``wd`` (as
    ``real__<name>``) with its vectors projected to ``d`` (:func:`_project`); what changed.

    Through the WorkDir API, as extraction writes an archive: the files table (real archive
    URLs, so verification reads the real pixels), ``skipped.csv`` and ``dct.dat`` as
    extracted; ``done.json`` as extracted but with ``d`` the synthetic archives' width
    (``collect`` refuses a work_dir whose archives disagree on model id, hash or ``d``; the
    synthetic archives were written with the real model's id and hash) and the projection
    recorded under ``projection``.
    """
    from dedupdask.collect import collect
    from dedupdask.store import WorkDir

    src, dst = collect(real_wd), WorkDir(wd)
    x = src.vector_rows()
    y, _ = _project(x, d)
    kept = _cosines_kept(x, y, src.files_frame(columns=["archive", "member", "index"]).dropna(subset=["index"]), truth)
    for stale in [n for n in dst.listing() if os.path.basename(n).startswith("real__")]:
        dst.remove(stale if "/" in stale else dst.join(stale))  # an earlier merge
    for a in src.archives:
        done = src.work_dir.read_done(a.name)
        files = src.work_dir.read_files(a.name)
        skipped = pd.read_csv(io.BytesIO(src.work_dir.read_bytes(src.work_dir.file(a.name, "skipped"))),
                              keep_default_na=False)  # fmt: skip
        dct = src.work_dir.open_features(a.name, DCT_DIM, which="dct")[: a.n_valid]
        projection = {"from_model_id": done["model_id"], "from_model_sha256": done["model_sha256"],
                      "from_d": done["d"], "to_d": d, "method": "truncated SVD fitted on the real subset"}  # fmt: skip
        name = "real__" + a.name
        dst.write_archive(name, y[a.offset : a.offset + a.n_valid], files, skipped,
                          {**done, "d": d, "name": name, "projection": projection}, perceptual=np.array(dct))  # fmt: skip
    return {"archives": len(src.archives), "images": src.n, "from_d": int(x.shape[1]), **kept}


def real_subset(args: argparse.Namespace, n: int, tmp: str, base: float) -> int:
    """``--n N --real-subset R``: one build with verification of N synthetic and R real images."""
    from dedupdask.collect import collect
    from dedupdask.testing.shellcluster import shell_cluster

    r = args.real_subset
    archives = max(2, round(n * args.archives_per_million / 1_000_000))
    wd = os.path.join(args.data_dir, f"rs-n{n}-d{args.d}-a{archives}")
    root = os.path.join(args.data_dir, f"real{r}")
    real_wd = os.path.join(root, "work")
    load0 = os.getloadavg()[0]
    info = make_real_shards(Path(root), r, cache=Path(args.cache_dir), copies=args.real_copies,
                            per_shard=args.real_per_shard, log=lambda m: print(f"  {m}", file=sys.stderr))  # fmt: skip
    real_truth = info["truth"]
    shutil.rmtree(real_wd, ignore_errors=True)
    dd_cmd = [sys.executable, "-m", "dedupdask"]
    with shell_cluster(tmp, args.workers, memory_limit=args.memory_limit, start_timeout=120,
                       workers_timeout=180, stop_timeout=30) as (address, procs):  # fmt: skip
        workers = [p.pid for p in procs[1:]]
        cmd = [*dd_cmd, "extract", os.path.join(root, "shards"), real_wd, "--no-progress", "--client", address]
        ext_wall, ext_peaks = sampled(cmd, workers, os.path.join(tmp, f"extract-real{r}.log"))
        first = read_model(real_wd)
        t0 = time.perf_counter()
        truth = generate(wd, n, args.d, archives, subset={**SUBSET, "model": first})
        gen = time.perf_counter() - t0
        clear_outputs(wd)
        t1 = time.perf_counter()
        merged = merge_real(real_wd, wd, args.d, real_truth)
        merge_s = time.perf_counter() - t1
        cmd = [*dd_cmd, "build", wd, "--no-progress", "--client", address, *args.extra.split()]
        with task_stream(address) as stream:
            wall, peaks = sampled(cmd, workers, os.path.join(tmp, f"build-rs{n}-{r}.log"))
    run = read_run(wd)
    # the synthetic archives' rows come after the real ones (archives sorted by URL)
    col = collect(wd, warn=False)
    shift = min(a.offset for a in col.archives if a.url.startswith("synthetic://"))
    rec = recall(wd, {k: v + shift if k != "near_cos" else v for k, v in truth.items()})
    sim = pd.read_parquet(os.path.join(wd, "results", "similarity"))
    synth_from = sim["archive_from"].astype(str).str.startswith("synthetic://")
    synth_to = sim["archive_to"].astype(str).str.startswith("synthetic://")
    real_pairs = pair_truth(sim[~synth_from & ~synth_to], real_truth)
    ver = run["verification"]
    out = {
        "n": n, "real_subset": r, "d": args.d, "archives": archives, "real_archives": merged["archives"],
        "images": col.n, "generate_s": round(gen, 1), "extract_s": round(ext_wall, 1), "merge_s": round(merge_s, 1),
        "extract_client_peak_mb": round(ext_peaks["client"]),
        "extract_worker_peak_mb": [round(v) for k, v in ext_peaks.items() if k != "client"],
        "wall_s": round(wall, 1), "analysed_on": run["analysed_on"], "knn_method": run["parameters"]["knn_method"],
        "knn_dct": run.get("knn_dct", {}).get("method"), "thresholds": {k: run["parameters"][k] for k in (
            "threshold", "ccthreshold", "copy_threshold", "verify_threshold", "verify_score")},
        "client_peak_mb": round(peaks["client"]), "client_baseline_mb": round(base),
        "worker_peak_mb": [round(v) for k, v in peaks.items() if k != "client"], "memory_limit": args.memory_limit,
        "timings": run["timings"], "verification": ver,
        "verify_tasks": tasks_summary(stream, VERIFY_TASKS), "worker_tasks": tasks_summary(stream),
        "kinds": {k: run["counts"][f"{k}_pairs"] for k in ("exact", "copy", "near")},
        "cross_pairs": int((synth_from != synth_to).sum()), "projection": merged,
        **rec, "real": real_pairs, "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }  # fmt: skip
    print(f"--n {n:,} --real-subset {r:,}: {archives} synthetic + {merged['archives']} real archives, {col.n:,} images, "
          f"d={args.d} | synthetic generated in {gen:.0f} s | client import baseline {base:.0f} MB", flush=True)  # fmt: skip
    print(f"  real extraction (dedupdask extract SHARDS REAL_WD --client tcp://...): {ext_wall:.1f} s, client peak "
          f"{out['extract_client_peak_mb']:,} MB, worker peaks {', '.join(f'{v:,}' for v in out['extract_worker_peak_mb'])} "
          f"MB; merged into the work_dir in {merge_s:.1f} s", flush=True)  # fmt: skip
    m = merged
    print(f"  projection {m['from_d']} -> {args.d} (truncated SVD of the {m['images']:,} real vectors, unit rows): planted "
          f"copy pairs ({m['copy_pairs']}) cosine mean {m['copy_cos_mean_1280_to_d'][0]} -> {m['copy_cos_mean_1280_to_d'][1]}, "
          f"min {m['copy_cos_min_1280_to_d'][0]} -> {m['copy_cos_min_1280_to_d'][1]}, |change| mean "
          f"{m['copy_cos_abs_change_mean_max'][0]} max {m['copy_cos_abs_change_mean_max'][1]}, correlation "
          f"{m['copy_cos_corr']}, >= 0.9: {m['copy_ge_0_9_1280_to_d'][0]} -> {m['copy_ge_0_9_1280_to_d'][1]}; by edit "
          f"{m['copy_cos_mean_by_edit_1280_to_d']} | pairs of distinct pictures ({m['distinct_pairs']:,}): mean "
          f"{m['distinct_cos_mean_1280_to_d'][0]} -> {m['distinct_cos_mean_1280_to_d'][1]}, >= 0.9: "
          f"{m['distinct_ge_0_9_1280_to_d'][0]} -> {m['distinct_ge_0_9_1280_to_d'][1]}, correlation "
          f"{m['distinct_cos_corr']}", flush=True)  # fmt: skip
    print(f"  build (dedupdask build WD --client tcp://... {args.extra}): {wall:.1f} s, analysed_on "
          f"{run['analysed_on']!r} (kNN {out['knn_method']}, DCT kNN {out['knn_dct']}), thresholds {out['thresholds']} | "
          f"client peak {peaks['client']:.0f} MB (baseline {base:.0f}) | worker peaks "
          f"{', '.join(f'{v:,}' for v in out['worker_peak_mb'])} MB of {args.memory_limit}", flush=True)  # fmt: skip
    _print_stages(run["timings"], ver, out["verify_tasks"], out["worker_tasks"])
    print(f"      synthetic: recall of planted pairs >= 0.9 {rec['near_recall']:.4f} ({rec['near_pairs_ge_0_9']}), exact "
          f"{rec['exact_recall']:.4f} ({rec['exact_pairs']}) | pairs by kind {out['kinds']}, real-synthetic pairs "
          f"{out['cross_pairs']}", flush=True)  # fmt: skip
    print(f"      real subset: recall of the planted copies (any kind) {real_pairs['recall']:.4f} of "
          f"{real_pairs['planted_pairs']}, by edit {real_pairs['recall_by_edit']} | found pairs not planted "
          f"(look-alikes): {real_pairs['not_planted_pairs']} of {real_pairs['found_pairs']} "
          f"{real_pairs['not_planted_by_kind']} | load average {out['load_avg'][0]} -> {out['load_avg'][1]}", flush=True)  # fmt: skip
    for e in real_pairs["not_planted_examples"]:
        print(f"        e.g. {e}", flush=True)
    print("    " + json.dumps(out), flush=True)
    if not args.keep:
        shutil.rmtree(wd, ignore_errors=True)
        shutil.rmtree(real_wd, ignore_errors=True)
    return 0 if ver.get("errors", 0) == 0 and out["cross_pairs"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=None,
                   help="synthetic work_dirs built with --no-verify (default 500000 when no mode is given)")  # fmt: skip
    p.add_argument("--compare", type=int, nargs="+", default=[],
                   help="N: exact search in this process vs on the cluster, every table compared")  # fmt: skip
    p.add_argument("--compare-blas", choices=("one", "default", "both"), default="one",
                   help="BLAS threads of the in-process reference: one (as in a dask worker), the "
                   "default, or one build with each")  # fmt: skip
    p.add_argument("--real", type=int, nargs="+", default=[],
                   help="N: extraction and the build with verification of N real images")  # fmt: skip
    p.add_argument("--real-subset", type=int, default=0,
                   help="with --n: R real images extracted on the cluster and merged into each synthetic "
                   "work_dir, built with verification")  # fmt: skip
    p.add_argument("--real-copies", type=float, default=0.2, help="share of --real images that are planted copies")
    p.add_argument("--real-per-shard", type=int, default=250, help="images per tar shard of --real")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "dedupdask" / "quality"),
                   help="packaged pictures of --real (fetched once, as quality.py does)")  # fmt: skip
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--archives-per-million", type=int, default=200, help="archives per 1M images")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "dedupdask-scale-build"))
    p.add_argument("--extra", default="", help="more `dedupdask build` flags, e.g. '--max-client-memory 8GB'")
    p.add_argument("--keep", action="store_true", help="keep the work_dirs")
    args = p.parse_args(argv)
    if args.n is None and not args.compare and not args.real:
        args.n = [500_000]
    import dedupdask

    print(f"# dedupdask {dedupdask.__version__} at {os.path.dirname(dedupdask.__file__)}; "
          f"{args.workers} x `dask worker --nthreads 1 --memory-limit {args.memory_limit}`, "
          f"{os.cpu_count()} cores; RSS sampled every 50 ms from outside (client: RSS of the "
          "`dedupdask build` process; workers: PSS of nanny + worker)", flush=True)  # fmt: skip
    rc = 0
    with tempfile.TemporaryDirectory(prefix="ddk-scale-") as tmp:
        _, base = sampled([sys.executable, "-c", BASELINE], [], os.path.join(tmp, "baseline.log"))
        print(f"client import baseline (dedupdask.cli, pipeline, results, distributed): {base['client']:.0f} MB",
              flush=True)  # fmt: skip
        for n in args.n or []:
            rc |= (real_subset if args.real_subset else synthetic)(args, n, tmp, base["client"])
        for n in args.compare:
            rc |= compare_paths(args, n, tmp, base["client"])
        for n in args.real:
            rc |= real_images(args, n, tmp, base["client"])
    return rc


if __name__ == "__main__":
    sys.exit(main())
