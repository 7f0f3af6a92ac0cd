"""run_mode=2 of several revisions of dedupdask, back to back on one extracted work_dir.

Usage::

    python benchmarks/run_mode2_revs.py --work-dir WORK --revs 70498c5 HEAD --rounds 2
    python benchmarks/run_mode2_revs.py --work-dir WORK --revs 70498c5 254e681 . --rounds 2
    python benchmarks/run_mode2_revs.py --work-dir WORK --revs b2f6f52@OLDWORK HEAD --rounds 3

A speed target stated against an earlier revision ("at most 1.5x the run_mode=2 time of the
day the issue was filed") cannot be checked against a figure measured on another day: this
machine runs the same code 1.5-2x faster or slower from one hour to the next
(``benchmarks/results/vs_fastdup_tiers.txt``). This script measures the revisions in the same
hour, alternating (A B A B ...), so that a slow minute falls on all of them.

Each revision's ``dedupdask`` package is taken from git (``git archive REV dedupdask``; ``.``
is the working tree as it is) into ``--cache-dir``/<commit> (kept: numba caches the kernels it
compiles beside them, so only a revision's first run ever compiles) and put first on ``PYTHONPATH``;
the rest of the environment (numpy, onnxruntime, ...) is this checkout's. Each run is a fresh
subprocess: a ``LocalCluster`` of ``--cores`` single-threaded worker processes (started and
warmed up untimed, as in ``vs_fastdup.py``), then ``ddk.run(run_mode=2)`` with the defaults on
a fresh copy of the work_dir's ``run_mode=1`` outputs (no score cache: every candidate pair
is verified). ``REV@DIR`` runs a revision on the outputs of its own run_mode=1 in ``DIR``
(the same shards extracted by that revision), for revisions that cannot read a newer work_dir.
Printed per run: the seconds of ``ddk.run``, of its pixel verification, the
candidates verified and accepted, the seconds its tasks took (reading images and scoring, summed over the
workers: against the verification's wall time times the workers, what the workers idled) and the matcher. Nothing is asserted; the work_dir is not
changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from distributed import Client, LocalCluster
import dedupdask as ddk

def warm():
    import dedupdask.verify, dedupdask.match, dedupdask.match_keypoints  # noqa: F401
    return True

if __name__ == "__main__":
    work, cores = sys.argv[1], int(sys.argv[2])
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.run(warm)
        t0 = time.perf_counter()
        res = ddk.run(None, work, run_mode=2, client=client, progress=False)
        sim = res.similarity  # a dask DataFrame; a pandas one in early revisions
        pairs = len(sim.compute() if hasattr(sim, "compute") else sim)
        seconds = time.perf_counter() - t0
    ver = (getattr(res, "run", None) or {}).get("verification", {})
    print(json.dumps({"seconds": seconds, "pairs": pairs, "verify_s": ver.get("seconds"),
                      "task_s": (ver.get("score_seconds") or 0.0) + (ver.get("read_seconds") or 0.0),
                      "candidates": ver.get("candidates"), "accepted": ver.get("accepted"),
                      "matcher": ver.get("matcher"), "dedupdask": ddk.__file__}))
"""


def _tree(rev: str, cache: Path) -> Path:
    """A directory whose ``dedupdask`` is the package at ``rev`` (``.``: the working tree), kept
    in ``cache`` under the commit's id: the numba kernels an archived package compiles on its
    first run are cached beside its files, so a kept tree compiles them once, not in every
    invocation's first round."""
    if rev == ".":
        return ROOT
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)  # fmt: skip
    if sha.returncode != 0:
        raise SystemExit(f"no package at revision {rev!r}: not a commit of {ROOT}")
    into = cache / sha.stdout.strip()
    if (into / "dedupdask" / "__init__.py").exists():
        return into
    got = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "dedupdask"], capture_output=True)
    if got.returncode != 0:
        raise SystemExit(f"no package at revision {rev!r}: {got.stderr.decode().strip().splitlines()[-1]}")
    part = into.with_name(into.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(part)], input=got.stdout, check=True)
    part.rename(into)
    return into


def _spec(spec: str, work: Path) -> tuple[str, Path]:
    """``REV`` or ``REV@DIR`` -> the revision and the work_dir it runs on (``@`` followed by a
    directory that exists; otherwise the ``@`` belongs to the revision, as in ``HEAD@{1}``)."""
    rev, at, d = spec.rpartition("@")
    return (rev, Path(d)) if at and rev and Path(d).is_dir() else (spec, work)


def _outputs(work: Path) -> list[Path]:
    """The run_mode=1 outputs of a work_dir: the files of each archive it extracted (named
    after the archive, as its ``<name>done.json`` is), without run_mode=2's."""
    names = [p.name[: -len("done.json")] for p in work.glob("*done.json")]
    return sorted(p for p in work.iterdir() if p.is_file() and any(p.name.startswith(n) for n in names))


def run_once(tree: Path, work: Path, scratch: Path, cores: int) -> dict:
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for p in _outputs(work):
        shutil.copy2(p, scratch / p.name)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # run from the scratch directory: with -c, the current directory comes first on sys.path
    got = subprocess.run([sys.executable, "-c", CHILD, str(scratch), str(cores)], env=env, cwd=scratch,
                         capture_output=True, text=True)  # fmt: skip
    if got.returncode != 0:
        raise SystemExit(f"run_mode=2 failed with {tree}: {got.stderr.strip().splitlines()[-1] if got.stderr.strip() else got.returncode}")
    out = json.loads(got.stdout.strip().splitlines()[-1])
    if not out["dedupdask"].startswith(str(tree)):
        raise SystemExit(f"the run did not import dedupdask from {tree}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True, type=Path, help="a run_mode=1 work_dir (not changed)")
    ap.add_argument("--revs", nargs="+", required=True,
                    help="git revisions; '.' is the working tree; REV@DIR: on REV's own run_mode=1 outputs in DIR")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dedupdask" / "revs",
                    help="where each revision's package is kept (default ~/.cache/dedupdask/revs)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    specs = {spec: _spec(spec, a.work_dir) for spec in a.revs}
    for w in {w for _, w in specs.values()}:
        if not _outputs(w):
            raise SystemExit(f"no run_mode=1 outputs in {w}")
    with tempfile.TemporaryDirectory(prefix="ddk-revs-") as tmp:
        trees = {spec: _tree(rev, a.cache_dir) for spec, (rev, _) in specs.items()}
        print(f"# run_mode=2 of {len(a.revs)} revisions on {a.work_dir}, {a.cores} worker processes, "
              f"{a.rounds} rounds alternating; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
        for rev, w in specs.values():
            if w != a.work_dir:
                print(f"# {rev} runs on its own run_mode=1 outputs in {w}")
        runs: dict[str, list[dict]] = {rev: [] for rev in a.revs}
        for r in range(a.rounds):
            for rev, tree in trees.items():
                got = run_once(tree, specs[rev][1], Path(tmp) / "work", a.cores)
                runs[rev].append(got)
                ver = "-" if got["verify_s"] is None else f"{got['verify_s']:7.2f}"
                print(f"round {r + 1} {specs[rev][0]:>10}: run_mode=2 {got['seconds']:7.2f} s, verification {ver} s "
                      f"({got['task_s']:.1f} s in its tasks, summed) "
                      f"of {got['candidates']} candidates, {got['accepted']} accepted, {got['pairs']} pairs, "
                      f"{got['matcher']}", flush=True)  # fmt: skip
        first = statistics.median(x["seconds"] for x in runs[a.revs[0]])
        print("\n| revision | run_mode=2 s (each round) | median | / first |")
        print("|---|---|---|---|")
        for rev in a.revs:
            s = [x["seconds"] for x in runs[rev]]
            med = statistics.median(s)
            print(f"| {specs[rev][0]} | {' / '.join(f'{x:.2f}' for x in s)} | {med:.2f} | {med / first:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
