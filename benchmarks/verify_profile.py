"""Profile pixel verification: where a candidate pair's time goes, on one core.

Usage::

    python benchmarks/verify_profile.py --work-dir WORK            # a run_mode=1 work_dir
    python benchmarks/verify_profile.py --shards SHARDS --work-dir WORK   # extract first
    python benchmarks/verify_profile.py --work-dir WORK --max-pairs 2000 --top 25

The candidate pairs are the ones ``ddk.run(run_mode=2)`` sends to verification with the
default thresholds (captured from :func:`dedupdask.verify.verify_pairs`). Their images are
read back and decoded once (timed), then every pair is scored in this process under
``cProfile``; the table gives each stage's share of the scoring time (cumulative time of the
stage's function, so nested stages overlap their parents) and the figures a note needs:
ms per pair, ms per image read, accepted pairs, and (timed again without the profiler) the
time per pair by outcome and by kind of pair. Nothing is asserted. BLAS runs one thread, as
in Dask's worker processes (their nanny sets ``OPENBLAS_NUM_THREADS=1``): with its default
threads, a vector product of the residuals (``np.vdot``) took 5.5 ms instead of 0.7 when
another process kept the second core busy, and the profile described neither case a run meets.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import numpy as np

# (label, attribute path in dedupdask.match or match_keypoints) -- the stages of match.score_views
STAGES = [
    ("views: grey, coarse image, FFT plan (per image)", "View.__init__"),
    ("coarse search: all hypotheses at 48 px", "_hypotheses"),
    ("  template stacks (per image and outer shape)", "_Stack.build"),
    ("  correlations of the stacks", "_stack_best"),
    ("refinement of the best hypotheses at 128 px (and 256 px: the finer reading)", "_refine"),
    ("  fine FFT plans (per image)", "_Plan.__init__"),
    ("  fine correlations", "_ncc"),
    ("  resizes of the inner image", "View.resized"),
    ("  residuals (blur, fit, cells, blob)", "_residuals"),
    ("    blur", "_blur_pair"),
    ("the finer reading at 256 px (pairs that agree as a whole)", "_finer_record"),
    ("keypoint matcher (pairs the alignment did not accept)", "match_keypoints"),
    ("  ORB keypoints (per image, as is and mirrored)", "Keypoints.features"),
    ("  descriptor matching + RANSAC homography", "_homography"),
    ("  warp + colour edit + overlay share", "_compare"),
]


def _code_key(path: str) -> tuple[str, int, str]:
    from dedupdask import match, match_keypoints, verify

    head = path.split(".")[0]
    obj: Any = next(m for m in (match, match_keypoints, verify) if hasattr(m, head))
    for part in path.split("."):
        obj = getattr(obj, part)
    code = obj.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def capture_candidates(work_dir: str) -> tuple[np.ndarray, Any]:
    """The (from, to) pairs run_mode=2 verifies, and the image table it passes along."""
    import dedupdask as ddk
    import dedupdask.fusion as fusion

    got: dict[str, Any] = {}
    real = fusion.verify_pairs

    def spy(pairs: Any, images: Any, **kw: Any) -> Any:
        got["pairs"], got["images"] = pairs.copy(), images.copy()
        return real(pairs, images, **kw)

    fusion.verify_pairs = spy
    try:
        ddk.run(None, work_dir, run_mode=2, client="sync", progress=False, incremental=False)
    finally:
        fusion.verify_pairs = real
    if "pairs" not in got:
        return np.empty((0, 2), np.int64), None
    return got["pairs"].loc[:, ["from", "to"]].to_numpy(np.int64), got["images"]


def by_outcome(pairs: np.ndarray, loaded: dict[int, Any], df: Any, seconds: list[float], row: Any) -> str:
    """Markdown tables of the scoring time (without the profiler) by the pair's outcome and by
    its kind (two graphics, a graphic and a photo, two photos: what decides a pair and what it
    costs differ), from each pair's seconds in :func:`dedupdask.match.record_views`."""
    import pandas as pd

    from dedupdask.match_keypoints import Keypoints, is_graphic

    ok = df["verify_error"].isna().to_numpy()
    t = np.full(len(pairs), np.nan)
    t[ok] = seconds
    s = df["verify_score"].to_numpy(np.float64)
    outcome = np.select(
        [~ok, s >= row.early_accept, s >= row.verify_score, s <= -1],
        ["not verified (an image not read, or the matcher failed)", f"accepted, clear (>= early_accept {row.early_accept})", f"accepted (>= {row.verify_score})",
         "scored -1 (no alignment, or one that left the pictures at -1 or under)"],
        "rejected, scored over -1",
    )  # fmt: skip
    graphic = {}
    for i in np.unique(pairs).tolist():
        v = loaded.get(i)
        if v is not None and not isinstance(v, str):
            fills = v.fills if v.fills is not None else Keypoints(v.rgb).fills
            graphic[i] = bool(is_graphic(*fills))
    ga = np.array([graphic.get(int(a), False) for a in pairs[:, 0]])
    gb = np.array([graphic.get(int(b), False) for b in pairs[:, 1]])
    kind = np.select([ga & gb, ga | gb], ["two graphics", "a graphic and a photo"], "two photos")
    d = pd.DataFrame({"outcome": outcome, "kind": kind, "s": t, "accepted": s >= row.verify_score})
    lines = []
    for col in ("outcome", "kind"):
        lines.append(f"| {col} | pairs | accepted | s | ms per pair |\n|---|---|---|---|---|")
        for key, g in d.groupby(col, sort=False):
            lines.append(f"| {key} | {len(g)} | {int(g['accepted'].sum())} | {g['s'].sum():.2f} | {1000 * g['s'].mean():.2f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--shards", help="extract these shards into --work-dir first (run_mode=1)")
    ap.add_argument("--max-pairs", type=int, default=0, help="profile the first N pairs (0: all)")
    ap.add_argument("--top", type=int, default=0, help="also print cProfile's top N functions")
    ap.add_argument("--verify-keypoints", action=argparse.BooleanOptionalAction, default=True,
                    help="also ask the keypoint matcher, as verify_keypoints (default: on, as the library's)")
    args = ap.parse_args(argv)

    import dedupdask as ddk
    from dedupdask import verify
    from dedupdask.thresholds import row_for

    if args.shards:
        ddk.run(args.shards, args.work_dir, run_mode=1, client="sync", progress=False)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # for the rest of this process, as in a worker
    pairs, images = capture_candidates(args.work_dir)
    if args.max_pairs:
        pairs = pairs[: args.max_pairs]
    print(f"# verification profile of {args.work_dir} (dedupdask {ddk.__version__}"
          f"{', keypoint matcher on' if args.verify_keypoints else ''})")  # fmt: skip
    print(f"candidate pairs: {len(pairs)}")
    if not len(pairs):
        return 0
    need = images.loc[np.unique(pairs)]
    t0 = time.perf_counter()
    loaded: dict[int, Any] = {}
    for url, sub in need.groupby("archive", sort=True):
        wanted = [
            (m, int(o), int(i)) for i, m, o in zip(sub.index, sub["member"], sub["occ"], strict=True)
        ]
        loaded.update(verify.load_archive_images(str(url), wanted))
    read_s = time.perf_counter() - t0
    print(f"images read back and decoded: {len(loaded)} in {read_s:.2f} s "
          f"({1000 * read_s / max(1, len(loaded)):.2f} ms per image)")  # fmt: skip

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    row = row_for("effnet-lite0")  # the verifier's defaults (dedupdask.thresholds)
    df, _ = verify.score_pairs(pairs, loaded, early_accept=row.early_accept, keypoints=args.verify_keypoints)
    prof.disable()
    wall = time.perf_counter() - t0
    score = df["verify_score"].to_numpy()
    print(f"scoring: {wall:.2f} s under cProfile, {1000 * wall / len(pairs):.2f} ms per pair; "
          f"accepted (score >= {row.verify_score}): {int((score >= row.verify_score).sum())}, "
          f"score -1 (no alignment passed the gates, or the best left the pictures at -1 or under): {int((score == -1).sum())}")  # fmt: skip
    seconds: list[float] = []  # each scored pair's, in order (pairs with an unreadable image are not scored)
    real = verify.record_views

    def timed(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        got = real(*a, **kw)
        seconds.append(time.perf_counter() - t)
        return got

    verify.record_views = timed
    t0 = time.perf_counter()
    try:
        plain_df, _ = verify.score_pairs(pairs, loaded, early_accept=row.early_accept, keypoints=args.verify_keypoints)
    finally:
        verify.record_views = real
    plain = time.perf_counter() - t0
    print(f"scoring without the profiler: {plain:.2f} s, {1000 * plain / len(pairs):.2f} ms per pair")
    print()
    print(by_outcome(pairs, loaded, plain_df, seconds, row))
    st = pstats.Stats(prof)
    stats = st.stats  # type: ignore[attr-defined]
    total = stats[_code_key("score_pairs")][3]
    print()
    print("| stage | s | share of scoring |\n|---|---|---|")
    for label, fn in STAGES:
        row = stats.get(_code_key(fn))
        if row is not None:
            print(f"| {label} | {row[3]:.2f} | {100 * row[3] / total:.0f} % |")
    if args.top:
        print()
        st.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
