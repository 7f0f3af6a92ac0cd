"""One table of thresholds: what a default run uses, that nothing else defines one, the README."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from dedupdask.analyses.tiers import resolve_params
from dedupdask.config import RunConfig
from dedupdask.models import available_models, resolve_model
from dedupdask.thresholds import (
    FIELDS,
    ISSUE_FIELDS,
    ISSUE_TABLE,
    ISSUE_TYPES,
    TABLE,
    USER_MODEL,
    USER_MODEL_ISSUES,
    issue_markdown_table,
    markdown_table,
    resolve,
    row_for,
)

ROOT = Path(__file__).resolve().parents[1]
TABLE_MODULE = "dedupdask/thresholds.py"


def _tier(model: dict, config: RunConfig | None = None, *, has_dct: bool = True):
    config = config or RunConfig()
    t = resolve(config, model)
    return t, resolve_params(
        t, has_dct=has_dct, verify=config.verify, nearest_neighbors_k=config.nearest_neighbors_k
    )


# -- what a default run uses (the values in effect before the table, kept) ------------------------
def test_effnet_default_run_uses_the_tier_values():
    t, p = _tier({"model_id": "effnet-lite0", "model_threshold": 0.79, "model_ccthreshold": 0.9})
    # TIER_DEFAULTS won over done.json's 0.79/0.90 and over COPY_THRESHOLD's 0.99
    assert (p.threshold, p.ccthreshold, p.copy_threshold, p.verify_threshold) == (0.99, 0.99, 0.995, 0.65)
    assert (p.verify_score, p.early_accept, p.verify, p.k) == (0.9, 0.98, True, 5)
    assert t.lower_threshold == 0.05


def test_dct_and_user_models():
    _, p = _tier({"model_id": "dct"})
    assert (p.threshold, p.ccthreshold, p.copy_threshold, p.verify_threshold, p.verify_score) == (
        0.98, 0.99, 0.99, None, 0.9,
    )  # fmt: skip
    _, p = _tier({"model_id": "onnx:mine.onnx", "model_threshold": 0.9, "model_ccthreshold": 0.95})
    assert (p.threshold, p.ccthreshold, p.copy_threshold, p.verify_threshold) == (0.9, 0.95, 0.99, None)
    # a user model keeps what its work_dir recorded; without a record, the user row
    assert _tier({"model_id": "onnx:m.onnx", "model_threshold": 0.8})[1].threshold == 0.8
    assert _tier({"model_id": "onnx:m.onnx"})[0] == USER_MODEL
    assert _tier({})[0] == USER_MODEL


def test_overrides_win_and_the_mode_applies():
    cfg = RunConfig(threshold=0.95, copy_threshold=0.9, lower_threshold=0.1, verify=False)
    t, p = _tier({"model_id": "effnet-lite0"}, cfg, has_dct=False)
    assert (t.threshold, t.copy_threshold, t.lower_threshold, t.ccthreshold) == (0.95, 0.9, 0.1, 0.99)
    assert p.copy_threshold is None and p.verify_threshold is None and p.k == 2
    # a verify_score above early_accept raises it: stopping early must not change a decision
    t, p = _tier({"model_id": "effnet-lite0"}, RunConfig(verify_score=0.995))
    assert t.early_accept == p.early_accept == 0.995


def test_model_spec_and_done_json_carry_the_tables_values():
    for name in available_models():
        spec = resolve_model(name)
        assert (spec.threshold, spec.ccthreshold) == (TABLE[name].threshold, TABLE[name].ccthreshold)
    assert set(TABLE) == set(available_models())


def test_every_row_is_complete_and_in_range():
    for row in [*TABLE.values(), USER_MODEL]:
        for name in FIELDS:
            v = getattr(row, name)
            assert v is None and name in ("verify_threshold", "whitened_threshold", "whitened_margin") or 0.0 <= v <= 1.0, (row, name)
        assert row.threshold <= row.ccthreshold and row.early_accept >= row.verify_score
        if row.verify_threshold is not None:
            assert row.verify_threshold < row.threshold


# -- no threshold anywhere else ------------------------------------------------------------------
_NAME = re.compile(r"THRESHOLD|SCORE|ACCEPT")
_KEYS = set(FIELDS) | set(ISSUE_FIELDS) | {"model_threshold", "model_ccthreshold"}


def _is_float(node: ast.AST | None) -> bool:
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, float)


def _stray_thresholds(source: str) -> list[str]:
    """Threshold-like floats written in code: what only the table may define."""
    tree = ast.parse(source)
    out = []
    for node in tree.body:  # module-level UPPER_CASE constants
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name) and t.id.isupper() and _NAME.search(t.id) and any(
                _is_float(n) for n in ast.walk(node.value) if node.value is not None
            ):
                out.append(f"line {node.lineno}: constant {t.id}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):  # {"threshold": 0.99, ...}
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value in _KEYS and _is_float(v):
                    out.append(f"line {node.lineno}: dict entry {k.value!r}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):  # def f(threshold=0.9)
            a = node.args
            named = list(zip(a.args[len(a.args) - len(a.defaults):], a.defaults, strict=True))
            named += [(x, d) for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]
            out += [f"line {node.lineno}: default {x.arg}" for x, d in named if x.arg in _KEYS and _is_float(d)]
        elif isinstance(node, ast.ClassDef):  # dataclass field: threshold: float = 0.9
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                    if st.target.id in _KEYS and _is_float(st.value):
                        out.append(f"line {st.lineno}: field {st.target.id}")
        elif isinstance(node, ast.Call):  # f(threshold=0.9), pick("threshold", ..., 0.9)
            out += [
                f"line {node.lineno}: keyword {k.arg}"
                for k in node.keywords
                if k.arg in _KEYS and _is_float(k.value)
            ]
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and a.value in _KEYS]
            if names and any(_is_float(a) for a in node.args):
                out.append(f"line {node.lineno}: call with {names[0]!r} and a float")
    return out


def test_the_checker_finds_what_the_old_code_had():
    old = '''
USER_THRESHOLD = 0.9
COPY_THRESHOLD: float = 0.99
EARLY_ACCEPT = 0.98
TIER_DEFAULTS = {"effnet-lite0": {"threshold": 0.99, "verify_score": 0.9}}
class RunConfig:
    lower_threshold: float = 0.05
def run(*, lower_threshold: float = 0.05): ...
def resolve(config):
    return pick("threshold", "model_threshold", 0.9)
'''
    found = _stray_thresholds(old)
    assert len(found) == 8, found
    # the issue cut-offs too: a per-type table of its own elsewhere is caught
    assert len(_stray_thresholds('CUTS = {"dark": 0.2, "blurry": 0.1}\ndef f(*, outlier=0.5): ...\n')) == 3
    assert _stray_thresholds("M_TRIM_THRESHOLD = -1\nBLOB_LEVEL = 0.2\nx = f(scale=0.5)\n") == []


def test_no_threshold_is_defined_outside_the_table():
    found = {}
    for p in sorted((ROOT / "dedupdask").rglob("*.py")):
        rel = str(p.relative_to(ROOT))
        if rel != TABLE_MODULE:
            stray = _stray_thresholds(p.read_text())
            if stray:
                found[rel] = stray
    assert not found, f"thresholds belong in {TABLE_MODULE}: {found}"


# -- the README states the table -------------------------------------------------------------------
def _readme() -> str:
    return (ROOT / "README.md").read_text()


def _table_rows(text: str, header_has: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|") and header_has in ln)
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def test_readme_states_the_tables_thresholds():
    readme = _readme()
    assert markdown_table() in readme, (
        "the README's Thresholds table differs from dedupdask/thresholds.py; paste the output of "
        "`python -m dedupdask.thresholds`"
    )
    # the Models table: "default threshold / ccthreshold" per model
    rows = _table_rows(readme, "threshold / ccthreshold")
    header = [c.strip() for c in next(
        ln for ln in readme.splitlines() if ln.startswith("|") and "threshold / ccthreshold" in ln
    ).strip("|").split("|")]  # fmt: skip
    col = next(i for i, c in enumerate(header) if "threshold / ccthreshold" in c)
    got = {}
    for r in rows:
        name = re.match(r"`([^`]+)`", r[0])
        got[name.group(1) if name else "user"] = r[col]
    expected = {name: row for name, row in TABLE.items()} | {"user": USER_MODEL}
    assert set(got) == set(expected)
    for name, row in expected.items():
        t, cc = (float(x) for x in got[name].split("/"))
        assert (t, cc) == (row.threshold, row.ccthreshold), (name, got[name])
    # the keyword table defers to the model's row for every threshold
    for r in _table_rows(readme, "| keyword | default |"):
        names = re.findall(r"`([a-z_]+)`", r[0])
        defaults = [d.strip() for d in r[1].split(",")]
        for n, d in zip(names, defaults, strict=False):
            if n in FIELDS:
                assert d == "model's", (n, d)


def test_readme_prose_agrees_with_the_default_model():
    """A number written after a threshold's name is the default model's value."""
    default = row_for("effnet-lite0")
    pattern = re.compile(r"`(" + "|".join(FIELDS) + r")` (\d\.\d+)")
    found = pattern.findall(_readme())
    assert found  # the Models section names effnet-lite0's verify_threshold and threshold
    for name, value in found:
        assert float(value) == getattr(default, name), (name, value)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_documented(name):
    from dedupdask import thresholds

    assert f"``{name}``" in thresholds.__doc__
    assert name in {f.name for f in dataclasses.fields(RunConfig)} or name == "early_accept"


# -- the issue cut-offs ----------------------------------------------------------------------------
def test_issue_rows_are_complete_and_in_range():
    assert set(ISSUE_TABLE) == set(available_models())
    for row in [*ISSUE_TABLE.values(), USER_MODEL_ISSUES]:
        for name in ISSUE_TYPES:
            v = getattr(row, name)
            assert v is None and name == "outlier" or 0.0 <= v <= 1.0, (row, name)
        assert 0.0 < row.outlier_link <= 1.0 and row.outlier_group_size >= 1
        if row.outlier is not None:
            assert row.outlier < row.outlier_link  # a group's members are closer than its rest
    assert ISSUE_TABLE["effnet-lite0"].outlier is not None  # measured for the default model


def test_readme_states_the_issue_cut_offs():
    assert issue_markdown_table() in _readme(), (
        "the README's issue cut-off table differs from dedupdask/thresholds.py; paste the output "
        "of `python -m dedupdask.thresholds`"
    )


@pytest.mark.parametrize("name", ISSUE_FIELDS)
def test_every_issue_field_is_documented(name):
    from dedupdask import thresholds
    from dedupdask.analyses import issues

    assert f"``{name}``" in thresholds.__doc__
    if name in ISSUE_TYPES:
        assert f"``{name}``" in issues.__doc__
