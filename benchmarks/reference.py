"""Reference runs (issue 19 point 2): a query against a large reference vs a full re-run.

A synthetic reference work_dir of ``--n-ref`` images (``scale_build.generate``: clustered
``--d``-dimensional unit vectors in ``--archives-per-million`` archives, written as extraction
writes them) is built once on a real cluster (``dask scheduler`` and ``--workers`` ``dask
worker`` processes, the commands a user types) with ``dedupdask build REF --no-verify``, which
also writes its index (``work_dir/index/``, :mod:`dedupdask.vector_index`). Then, for each ``--queries``
size Q, a query work_dir of Q images: :data:`PLANTED` of them near copies of random reference
rows (cosine uniform in ``[0.9, 0.999]``, the reference row turned towards a random orthogonal
direction), :data:`EXACT` exact copies (same vector and ``md5``), the rest new vectors of the
same clusters. Measured per query, from outside the process (``benchmarks/rss.py``):

- ``dedupdask build QUERY --reference REF --no-verify --client ...``: wall time, client and
  worker peaks, the buckets touched and reference rows read, recall of the planted cross pairs
  (found in ``results/cross_similarity``) and of the exact copies (``kind == "exact"``);
- the full re-run it replaces (the largest query only, ``--full``): one work_dir holding the
  reference's and the query's archives (links to the same files), ``dedupdask build ALL
  --no-verify --no-index``: wall time and peaks, and the share of its cross-set pairs
  (one end in each set) that the reference run found.

Synthetic vectors have no pixels, so verification is off on both sides (the candidate cut is
then the model's ``threshold``: 0.9 for these user-model vectors); the tiers and verification of
a reference run are tested on real images in ``tests/test_reference.py``.

Usage::

    python benchmarks/reference.py --n-ref 2000000 --queries 10000 100000 --d 128 --full
    python benchmarks/reference.py --n-ref 200000 --queries 10000 --full   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale_build import PER_CLUSTER, SIGMA, _hex, generate, reuse_truth, sampled, synthetic_tables  # noqa: E402

PLANTED = 0.1
"""Share of a query's images that are near copies of reference images."""
EXACT = 0.01
"""Share of a query's images that are exact copies of reference images."""


def _ref_rows(ref: str, rows: np.ndarray) -> np.ndarray:
    """Reference vectors of global rows (sorted), read from its ``.dat`` files."""
    from dedupdask.collect import collect

    return collect(ref).vector_rows(rows)


def write_query(root: str, ref: str, n_ref: int, q: int, d: int, per_archive: int, seed: int = 1) -> dict:
    """The query work_dir (reused when complete) and its planted cross pairs."""
    from dedupdask.store import WorkDir

    truth_path = os.path.join(root, "truth.npz")
    key = json.dumps(dict(ref=ref, n_ref=n_ref, q=q, d=d, per=per_archive, seed=seed, planted=PLANTED, exact=EXACT))
    kept = reuse_truth(truth_path, key)
    if kept is not None:
        return kept
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(seed)
    n_plant, n_exact = int(q * PLANTED), int(q * EXACT)
    rows = rng.choice(n_ref, n_plant + n_exact, replace=False)
    order = np.argsort(rows)
    base = np.empty((rows.size, d), np.float32)
    base[order] = _ref_rows(ref, rows[order])
    from dedupdask.collect import collect

    rcol = collect(ref)  # the exact copies take their originals' md5
    want = np.sort(rows[n_plant:])
    files = rcol.files_frame(["index", "md5"])
    files = files[files["index"].notna()].astype({"index": "int64"}).set_index("index")
    ref_md5 = files.loc[want, "md5"].astype(str).to_dict()
    # the query's vectors: new rows of the reference's clusters, then the planted ones at random places
    centres = np.random.default_rng([0, 2**31]).standard_normal((max(1, n_ref // PER_CLUSTER), d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), q)]
    x = x + (SIGMA / np.sqrt(d)) * rng.standard_normal((q, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    at = rng.choice(q, n_plant + n_exact, replace=False)
    c = rng.uniform(0.9, 0.999, (n_plant, 1)).astype(np.float32)
    u = rng.standard_normal((n_plant, d)).astype(np.float32)
    b = base[:n_plant]
    u -= np.einsum("ij,ij->i", u, b)[:, None] * b
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x[at[:n_plant]] = c * b + np.sqrt(1 - c**2) * u
    x[at[n_plant:]] = base[n_plant:]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", x[at[:n_plant]], b)
    md5 = np.array([_hex(seed, 7, i) for i in range(q)], dtype=object)
    for i, r in zip(at[n_plant:].tolist(), rows[n_plant:].tolist(), strict=True):
        md5[i] = ref_md5[r]
    wd = WorkDir(root)
    for a in range(0, q, per_archive):
        n = min(per_archive, q - a)
        name = f"q{a // per_archive:06d}.tar"
        url = f"synthetic://{name}"
        f, done = synthetic_tables(url, n, d, md5[a : a + n], rng)
        skipped = pd.DataFrame(columns=["filename", "member", "reason", "filesize"])
        wd.write_archive(name, x[a : a + n], f, skipped, done)
    out = {"near_q": at[:n_plant], "near_r": rows[:n_plant], "near_cos": cos,
           "exact_q": at[n_plant:], "exact_r": rows[n_plant:]}  # fmt: skip
    np.savez(truth_path, key=key, **out)
    return out


def _pairs(frame: pd.DataFrame, n: int) -> set[int]:
    return set((frame["from"].to_numpy(np.int64) * n + frame["to"].to_numpy(np.int64)).tolist())


def _share(found: set[int], q: np.ndarray, r: np.ndarray, n: int) -> float:
    keys = (q.astype(np.int64) * n + r.astype(np.int64)).tolist()
    return float(np.mean([k in found for k in keys])) if keys else float("nan")


def combined(ref: str, query: str, out: str) -> None:
    """A work_dir holding both sets' per-archive files (links): what a full re-run reads."""
    links(out, ref, query)


def links(out: str, *sources: str) -> None:
    """A work_dir holding the per-archive files of ``sources`` (links; not results/, index/, CSVs)."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for src in sources:
        for p in Path(src).iterdir():
            if p.is_file() and ".tar" in p.name:
                os.symlink(p, os.path.join(out, p.name))


@contextlib.contextmanager
def cli_cluster(args: argparse.Namespace, prefix: str) -> Iterator[tuple[Callable[..., tuple[float, dict]], Callable[[dict], str]]]:
    """A ``dask scheduler`` with ``args.workers`` ``dask worker`` processes of ``args.memory_limit``;
    ``timed(cmd, log)`` runs ``dedupdask CMD`` against it (``args.extra`` appended) and returns its
    wall time and the peaks of it, the workers and the scheduler; ``peaks(pk)`` says them."""
    from dedupdask.testing.shellcluster import shell_cluster

    extra = args.extra.split()
    tmp = tempfile.mkdtemp(prefix=prefix)
    with shell_cluster(tmp, args.workers, memory_limit=args.memory_limit, start_timeout=120,
                       workers_timeout=180, stop_timeout=30) as (address, procs):  # fmt: skip
        workers = [pr.pid for pr in procs[1:]]

        def timed(cmd: list[str], log: str) -> tuple[float, dict]:
            return sampled([sys.executable, "-m", "dedupdask", *cmd, "--no-progress", "--client", address, *extra],
                           workers, os.path.join(tmp, log), scheduler=procs[0].pid)  # fmt: skip

        def peaks(pk: dict) -> str:
            w = [v for k, v in pk.items() if k.startswith("worker")]
            return f"client peak {pk['client']:.0f} MB, worker peaks {', '.join(f'{v:,.0f}' for v in w)} MB of {args.memory_limit}"

        yield timed, peaks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-ref", type=int, default=2_000_000)
    p.add_argument("--queries", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--archives-per-million", type=int, default=200)
    p.add_argument("--query-per-archive", type=int, default=5000)
    p.add_argument("--full", action="store_true", help="also the full re-run of the largest query")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "dedupdask-reference"))
    p.add_argument("--extra", default="", help="more `dedupdask build` flags for every build")
    args = p.parse_args(argv)

    archives = max(2, round(args.n_ref * args.archives_per_million / 1_000_000))
    ref = os.path.join(args.data_dir, f"ref-n{args.n_ref}-d{args.d}-a{archives}")
    t0 = time.perf_counter()
    generate(ref, args.n_ref, args.d, archives)
    queries = {}
    for q in args.queries:
        qwd = os.path.join(args.data_dir, f"query-q{q}-of-{os.path.basename(ref)}")
        queries[q] = (qwd, write_query(qwd, ref, args.n_ref, q, args.d, args.query_per_archive))
    print(f"data: reference {args.n_ref:,} x {args.d} in {archives} archives, queries {args.queries} "
          f"({time.perf_counter() - t0:.0f} s to write or reuse)", flush=True)  # fmt: skip
    with cli_cluster(args, "ddk-ref-") as (timed, peaks):
        have = os.path.exists(os.path.join(ref, "index", "index.json")) and os.path.exists(
            os.path.join(ref, "results", "run.json"))  # fmt: skip
        if not have:
            wall, pk = timed(["build", ref, "--no-verify"], "ref-build.log")
            meta = json.load(open(os.path.join(ref, "index", "index.json")))
            run = json.load(open(os.path.join(ref, "results", "run.json")))
            print(f"reference build (once): {wall:.1f} s ({peaks(pk)}); of which the index "
                  f"{meta['timings']['fit'] + meta['timings']['write']:.1f} s: {meta['centroids']} buckets, "
                  f"nprobe {meta['nprobe']} (probe pairs found {meta['probe_found']}); stages "
                  f"{run.get('timings')}", flush=True)  # fmt: skip
        else:
            print("reference: built and indexed before (reused)", flush=True)
        n_all = args.n_ref + max(args.queries)
        results = {}
        for q, (qwd, truth) in queries.items():
            wall, pk = timed(["build", qwd, "--no-verify", "--reference", ref], f"query-{q}.log")
            run = json.load(open(os.path.join(qwd, "results", "reference.json")))
            sim = pd.read_parquet(os.path.join(qwd, "results", "cross_similarity"), columns=["from", "to", "kind"])
            found = _pairs(sim, n_all)
            near = truth["near_cos"] >= 0.9
            rec = _share(found, truth["near_q"][near], truth["near_r"][near], n_all)
            ex = _pairs(sim[sim["kind"] == "exact"], n_all)
            rec_exact = _share(ex, truth["exact_q"], truth["exact_r"], n_all)
            s = run["search"]
            results[q] = (qwd, sim)
            print(f"query Q={q:,}: {wall:.1f} s ({peaks(pk)}) | {s['buckets_touched']} of {s['centroids']} "
                  f"buckets touched, {s['reference_rows_read']:,} reference rows read, nprobe {s['nprobe']} | "
                  f"cross pairs {run['counts']['cross_pairs']:,}, contaminated images "
                  f"{run['counts']['contaminated_images']:,} | recall of planted near copies {rec:.4f} "
                  f"({int(near.sum())}), exact {rec_exact:.4f} ({truth['exact_q'].size}) | timings {run['timings']}",
                  flush=True)  # fmt: skip
            print("    " + json.dumps({"q": q, "n_ref": args.n_ref, "wall_s": round(wall, 1), "peaks_mb": {k: round(v) for k, v in pk.items()},
                                       "near_recall": rec, "exact_recall": rec_exact, "search": s, "counts": run["counts"]}), flush=True)  # fmt: skip
        if args.full:
            q = max(args.queries)
            qwd, sim = results[q]
            allwd = os.path.join(args.data_dir, f"all-q{q}")
            combined(ref, qwd, allwd)
            wall, pk = timed(["build", allwd, "--no-verify", "--no-index"], "full.log")
            full = pd.read_parquet(os.path.join(allwd, "results", "similarity"), columns=["from", "to"])
            a, b = full["from"].to_numpy(np.int64), full["to"].to_numpy(np.int64)
            cross = (a < args.n_ref) != (b < args.n_ref)
            qi = np.where(a >= args.n_ref, a, b)[cross] - args.n_ref
            ri = np.where(a >= args.n_ref, b, a)[cross]
            got = _share(_pairs(sim, n_all), qi, ri, n_all)
            run = json.load(open(os.path.join(allwd, "results", "run.json")))
            print(f"full re-run of reference + Q={q:,}: {wall:.1f} s ({peaks(pk)}) | its cross-set pairs "
                  f"{int(cross.sum()):,}, found by the reference run: {got:.4f} | stages {run.get('timings')}",
                  flush=True)  # fmt: skip
            shutil.rmtree(allwd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
