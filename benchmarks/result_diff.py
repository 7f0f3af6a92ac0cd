"""Benchmarks helper: compare the result files of two builds of one work_dir, by content.

A build writes ``results/<table>/part.*.parquet`` (the tables of ``run.json["tables"]``),
``results/run.json`` and fastdup's CSV files into the work_dir (:data:`dedupdask.csvs.CSV_FILES`).
:func:`move_results` moves them aside so the same work_dir can be built again, and
:func:`compare` tells, per table and per CSV, whether the two builds wrote the same rows:
same columns, same dtypes, and the same multiset of rows, order ignored (each row is compared
as the text of its values -- float32 values by their shortest repr -- with every kind of
missing value as one ``<NA>``); when rows differ, whether they differ only in their float
values (and by how much) or also in other columns (which rows). Used by ``scale_build.py --compare`` and ``--real``.

Usage::

    from result_diff import compare, move_results

    move_results(wd, "in_process/")  # after the first build
    ...                               # build again
    for row in compare("in_process/", wd):
        print(row["table"], row["rows"], row["identical"])
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from typing import Any

import numpy as np
import pandas as pd

from dedupdask.csvs import CSV_FILES

__all__ = ["compare", "move_results", "RUN_KEYS"]

RESULTS = "results"
RUN_KEYS = ("counts", "issues", "verification")
"""``run.json`` blocks compared besides the tables (their cost entries left out)."""
# how long verification took, how its work was split and where it ran: not results (the in-process planner
# and the one on the workers split the same pairs into different tasks, which read images
# once per task)
_COST = ("seconds", "read_seconds", "score_seconds", "seconds_per_pair", "tasks", "images_read", "archives_read",
         "ran_on", "workers")


def move_results(wd: str, dest: str) -> list[str]:
    """Move ``results/`` and the CSV files of ``wd`` into ``dest`` (created); what was moved."""
    os.makedirs(dest, exist_ok=True)
    moved = []
    for name in (RESULTS, *CSV_FILES):
        src = os.path.join(wd, name)
        if os.path.exists(src):
            shutil.rmtree(os.path.join(dest, name), ignore_errors=True)
            shutil.move(src, os.path.join(dest, name))
            moved.append(name)
    return moved


def _run(root: str) -> dict[str, Any]:
    with open(os.path.join(root, RESULTS, "run.json")) as f:
        return json.load(f)


def _text_rows(df: pd.DataFrame) -> list[tuple[str, ...]]:
    """The rows of ``df`` as tuples of text (one ``<NA>`` for every missing value)."""
    cols = []
    for c in df.columns:
        s = df[c]
        text = s.astype(str).to_numpy(dtype=object)
        text[s.isna().to_numpy()] = "<NA>"
        cols.append(text)
    return list(zip(*cols, strict=True)) if cols else [()] * len(df)


def _diff_rows(a: list[tuple], b: list[tuple], show: int) -> tuple[bool, list[str]]:
    ca, cb = collections.Counter(a), collections.Counter(b)
    if ca == cb:
        return True, []
    only_a = sorted((ca - cb).elements())
    only_b = sorted((cb - ca).elements())
    out = [f"{len(only_a)} rows only in A, {len(only_b)} only in B"]
    out += [f"A: {r}" for r in only_a[:show]] + [f"B: {r}" for r in only_b[:show]]
    return False, out


def _beside_floats(a: pd.DataFrame, b: pd.DataFrame, show: int) -> list[str]:
    """Notes on two tables whose rows differ: when they hold the same rows but for the values
    of their float columns, how many of those differ and by how much; else the rows that
    differ in the other columns (up to ``show`` of each side)."""
    floats = [c for c in a.columns if pd.api.types.is_float_dtype(a[c]) and pd.api.types.is_float_dtype(b[c])]
    keys = [c for c in a.columns if c not in floats]
    if not floats or not keys:
        return []
    same, diff = _diff_rows(_text_rows(a[keys]), _text_rows(b[keys]), show)
    if not same:
        return [f"without the float columns ({', '.join(floats)}): {diff[0]}", *(f"  {d}" for d in diff[1:])]
    a, b = (x.sort_values(keys + floats, kind="mergesort").reset_index(drop=True) for x in (a, b))
    gaps = {}
    for c in floats:
        x, y = a[c].to_numpy("float64", na_value=np.nan), b[c].to_numpy("float64", na_value=np.nan)
        if not np.array_equal(np.isnan(x), np.isnan(y)):
            return [f"same rows but float values; {c} is missing in different rows"]
        d = np.abs(x - y)[~np.isnan(x)]
        gaps[c] = (int((d > 0).sum()), float(d.max()) if d.size else 0.0)
    return ["same rows but float values: " + ", ".join(
        f"{c} differs in {k} rows, max |diff| {g:.2g}" for c, (k, g) in gaps.items() if k
    )]  # fmt: skip


def _table(a_root: str, b_root: str, name: str, show: int) -> dict[str, Any]:
    a = pd.read_parquet(os.path.join(a_root, RESULTS, name))
    b = pd.read_parquet(os.path.join(b_root, RESULTS, name))
    notes = []
    if list(a.columns) != list(b.columns):
        notes.append(f"columns differ: A {list(a.columns)} / B {list(b.columns)}")
    common = [c for c in a.columns if c in b.columns]
    dtypes = [f"{c}: {a[c].dtype} / {b[c].dtype}" for c in common if a[c].dtype != b[c].dtype]
    if dtypes:
        notes.append("dtypes differ (A / B): " + "; ".join(dtypes))
    same, diff = _diff_rows(_text_rows(a[common]), _text_rows(b[common]), show)
    diff = diff if same else [*_beside_floats(a[common], b[common], show), *diff]
    return {"table": name, "rows": [len(a), len(b)], "identical": same and not notes,
            "notes": notes + diff}  # fmt: skip


def _csv(a_root: str, b_root: str, name: str, show: int) -> dict[str, Any]:
    paths = [os.path.join(r, name) for r in (a_root, b_root)]
    if not all(os.path.exists(p) for p in paths):
        have = [os.path.exists(p) for p in paths]
        return {"table": name, "rows": [None, None], "identical": have[0] == have[1],
                "notes": [] if have[0] == have[1] else [f"exists in A {have[0]}, in B {have[1]}"]}  # fmt: skip
    lines = []
    for p in paths:
        with open(p, newline="") as f:
            lines.append(f.read().splitlines())
    (ha, *ra), (hb, *rb) = (x or [""] for x in lines)
    notes = [] if ha == hb else [f"header differs: A {ha!r} / B {hb!r}"]
    same, diff = _diff_rows([(r,) for r in ra], [(r,) for r in rb], show)
    if not same and not notes:
        diff = [*_beside_floats(*(pd.read_csv(p) for p in paths), show), *diff]
    return {"table": name, "rows": [len(ra), len(rb)], "identical": same and not notes, "notes": notes + diff}


def _strip_cost(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: _strip_cost(v) for k, v in block.items() if k not in _COST}
    return block


def compare(a_root: str, b_root: str, *, show: int = 3) -> list[dict[str, Any]]:
    """Per result table, CSV file and ``run.json`` block of :data:`RUN_KEYS`: ``table``,
    ``rows`` (A, B), ``identical`` and ``notes`` (what differs, and up to ``show`` of the
    rows only one side has)."""
    run_a, run_b = _run(a_root), _run(b_root)
    names = sorted(set(run_a.get("tables", {})) | set(run_b.get("tables", {})))
    out = [_table(a_root, b_root, n, show) for n in names]
    out += [_csv(a_root, b_root, n, show) for n in CSV_FILES]
    for key in RUN_KEYS:
        va, vb = _strip_cost(run_a.get(key)), _strip_cost(run_b.get(key))
        notes = [] if va == vb else [f"A {json.dumps(va, sort_keys=True)}", f"B {json.dumps(vb, sort_keys=True)}"]
        out.append({"table": f"run.json {key}", "rows": [None, None], "identical": va == vb, "notes": notes})
    return out
