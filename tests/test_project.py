"""The project's own promises: declared dependencies, doctests in the default run, one option list.

* Every third-party module that dedupdask imports is a declared dependency (and what the tests,
  benchmarks and notebooks import is declared in the ``test`` extra), each pinned in
  ``constraints.txt``: a fresh install must not depend on what another package pulls in.
* The default test run (``scripts/test.sh``: pytest with the project's configuration) runs the
  docstring examples of every module of dedupdask.
* ``ddk.run``'s keywords, :class:`RunConfig`'s fields, ``ddk.extract`` and the CLI flags are the
  same options with the same defaults.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.metadata as md
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dedupdask
from dedupdask import pipeline
from dedupdask.cli import build_parser
from dedupdask.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dedupdask"

# Files of the package that are build tools, not library code: their imports may come from the
# ``test`` extra (``onnx`` rebuilds dct.onnx; see the module's docstring).
BUILD_TOOLS = {"dedupdask/models/build_dct.py"}

def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    assert m, req
    return _canon(m.group(1))


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    proj = _project()["project"]
    core = {_req_name(r) for r in proj["dependencies"]}
    extras = {k: {_req_name(r) for r in v} for k, v in proj.get("optional-dependencies", {}).items()}
    return core, extras


def _imports_of_source(source: str) -> set[str]:
    """Top-level names of absolute imports, anywhere in the code, and of importorskip calls."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("importorskip", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            out.add(node.args[0].value.split(".")[0])
    return out


def _notebook_source(path: Path) -> str:
    nb = json.loads(path.read_text())
    lines = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"])
            lines += [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def _third_party(files: dict[str, str], local: set[str]) -> dict[str, set[str]]:
    """module -> files importing it, for modules neither in the standard library nor local."""
    found: dict[str, set[str]] = {}
    for rel, source in files.items():
        for mod in _imports_of_source(source):
            if mod in sys.stdlib_module_names or mod in local or mod == "__future__":
                continue
            found.setdefault(mod, set()).add(rel)
    return found


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


# Import names of optional (``bench``) distributions, which the test run does not install.
IMPORT_NAMES = {"cv2": "opencv-python-headless"}


def _undeclared(found: dict[str, set[str]], allowed: set[str], optional: frozenset[str] = frozenset()) -> list[str]:
    """Imports no allowed distribution provides; a module of an ``optional`` distribution may
    be missing from this environment (it is then matched by its import name)."""
    dists = _distributions()
    bad = []
    for mod, where in sorted(found.items()):
        provided = {_canon(d) for d in dists.get(mod, [])}
        if not provided and _canon(IMPORT_NAMES.get(mod, mod)) in optional:
            continue
        if not provided:
            bad.append(f"{mod} (no installed distribution provides it; imported by {sorted(where)})")
        elif not provided & allowed:
            bad.append(f"{mod} (distribution {sorted(provided)}, imported by {sorted(where)})")
    return bad


def _package_files() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_imports_parse_as_expected():
    src = "import a.b\nfrom c.d import e\nfrom . import f\ndef g():\n    import h\npytest.importorskip('i.j')\n"
    assert _imports_of_source(src) == {"a", "c", "h", "i"}


def test_every_import_of_the_package_is_a_declared_dependency():
    core, extras = _declared()
    files = _package_files()
    library = {k: v for k, v in files.items() if k not in BUILD_TOOLS}
    tools = {k: v for k, v in files.items() if k in BUILD_TOOLS}
    assert len(tools) == len(BUILD_TOOLS), "a build tool listed here no longer exists"
    bad = _undeclared(_third_party(library, {"dedupdask"}), core)
    assert not bad, "imported by dedupdask but not in [project].dependencies: " + "; ".join(bad)
    bad = _undeclared(_third_party(tools, {"dedupdask"}), core | extras["test"])
    assert not bad, "imported by a build tool but not declared: " + "; ".join(bad)


def test_tests_benchmarks_and_notebooks_imports_are_in_the_test_extra():
    """Tests and notebooks need only the ``test`` extra; benchmarks may also use ``bench``."""
    core, extras = _declared()
    local = {"dedupdask"}
    files: dict[str, dict[str, str]] = {"tests": {}, "benchmarks": {}}
    for folder in files:
        for p in sorted((ROOT / folder).glob("*.py")):
            files[folder][str(p.relative_to(ROOT))] = p.read_text()
            local.add(p.stem)  # tests import conftest, s3server, cluster... from their folder
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files["tests"][str(p.relative_to(ROOT))] = _notebook_source(p)
    bad = _undeclared(_third_party(files["tests"], local), core | extras["test"])
    assert not bad, "imported by tests/notebooks but not in the test extra: " + "; ".join(bad)
    bad = _undeclared(
        _third_party(files["benchmarks"], local), core | extras["test"] | extras["bench"], frozenset(extras["bench"])
    )
    assert not bad, "imported by benchmarks but not in the test or bench extra: " + "; ".join(bad)


def test_every_declared_dependency_is_pinned_in_constraints():
    core, extras = _declared()
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: {line!r} is not a name==version pin"
            pins[_canon(name)] = version.strip()
    declared = core.union(*extras.values())
    missing = sorted(declared - set(pins))
    assert not missing, f"declared but not pinned in constraints.txt: {missing}"


# -- doctests ----------------------------------------------------------------------------------
def _modules_with_examples() -> set[str]:
    out = set()
    for p in PACKAGE.rglob("*.py"):
        if p.name == "__main__.py":  # pytest never imports it for doctests
            continue
        tree = ast.parse(p.read_text())
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
        if any(">>>" in (ast.get_docstring(n, clean=False) or "") for n in nodes):
            out.add(str(p.relative_to(ROOT)))
    return out


def test_the_default_test_run_collects_every_modules_doctests():
    """The project's pytest configuration (what scripts/test.sh runs) collects the examples.

    Collecting only ``dedupdask/`` keeps this cheap (a few seconds); that the default run, which
    has no path argument, looks there is read from ``testpaths``.
    """
    ini = _project()["tool"]["pytest"]["ini_options"]
    assert "dedupdask" in ini["testpaths"] and "tests" in ini["testpaths"]
    script = (ROOT / "scripts" / "test.sh").read_text()
    default = [ln for ln in script.splitlines() if "pytest" in ln and "not slow" in ln]
    assert default and all("tests/" not in ln for ln in default), default  # no path: testpaths
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "dedupdask"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    collected = {ln.split("::", 1)[0] for ln in out.stdout.splitlines() if "::" in ln}
    expected = _modules_with_examples()
    assert len(expected) > 20
    assert collected == expected, {
        "examples not collected": sorted(expected - collected),
        "unexpected": sorted(collected - expected),
    }
    assert "dedupdask/thresholds.py::dedupdask.thresholds.resolve" in out.stdout


# -- one list of options -----------------------------------------------------------------------
def _config_defaults() -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(RunConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        else:
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def test_run_keywords_are_the_config_fields_with_the_same_defaults():
    sig = inspect.signature(dedupdask.run)
    kwonly = {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
    fields = _config_defaults()
    assert set(kwonly) - {"client"} == set(fields), {
        "run() only": sorted(set(kwonly) - {"client"} - set(fields)),
        "RunConfig only": sorted(set(fields) - set(kwonly)),
    }
    # storage_options: None in run() is RunConfig's empty dict
    differ = {
        n: (kwonly[n], d)
        for n, d in fields.items()
        if kwonly[n] != d and not (n == "storage_options" and kwonly[n] is None and d == {})
    }
    assert not differ, f"run() and RunConfig disagree on defaults: {differ}"
    positional = [n for n, p in sig.parameters.items() if p.kind is not p.KEYWORD_ONLY]
    assert positional == ["input_dir", "work_dir"]


def test_run_forwards_every_keyword_to_the_config(monkeypatch, tmp_path):
    """Each keyword given to run()/extract() arrives in the RunConfig the stages get."""
    seen = []
    monkeypatch.setattr(pipeline, "_extract", lambda i, w, config, client: seen.append(config) or "report")
    changed = {
        "run_mode": 1, "min_offset": 1, "max_offset": 3, "model_path": "dct",
        "model_mean": (0.5, 0.5, 0.5), "model_std": (0.2, 0.2, 0.2), "batch_size": 3,
        "num_threads": 2, "nearest_neighbors_k": 4, "distance": "cosine", "threshold": 0.5,
        "lower_threshold": 0.2, "ccthreshold": 0.6, "copy_threshold": 0.7,
        "verify_threshold": 0.4, "whitened_threshold": 0.3, "whitened_margin": 0.2, "verify_score": 0.8, "verify": False,
        "verify_keypoints": True,
        "issue_thresholds": (("dark", 0.2), ("outlier", 0.4)),
        "max_memory_per_task": "1GB", "max_client_memory": "2GB", "d_reduce": 8, "knn_dtype": "float16", "images_per_partition": 1000,
        "write_csv": False,
        "keep_archives": True, "keep_images": True, "turi_param": "delete_tar=0",
        "resume": False, "max_image_pixels": 5, "max_member_bytes": 6, "max_archive_bytes": 7,
        "min_image_size": 2, "storage_attempts": 4, "storage_deadline": 12.5, "progress": False,
        "storage_options": {"anon": True}, "dashboard_address": "0.0.0.0:8787", "index": False, "incremental": False,
        "reference": "ref/", "reference_storage_options": {"anon": False}, "query_duplicates": True,
    }  # fmt: skip
    other = {"test_dir": "test/"}  # fastdup's form of a reference run: not with reference=
    assert set(changed) | set(other) == set(_config_defaults()), "give the new option a non-default value here"
    assert dedupdask.run("in/", str(tmp_path), **changed) == "report"
    assert dedupdask.extract("in/", str(tmp_path), **changed) == "report"
    for config in seen:
        got = {n: getattr(config, n) for n in changed}
        assert got == changed
    seen.clear()
    fastdup_form = {**changed, "reference": None, **other}
    assert dedupdask.run("in/", str(tmp_path), **fastdup_form) == "report"  # run_mode=1: both sets extracted
    assert len(seen) == 2 and all(c.test_dir == "test/" and c.index is False for c in seen)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_cli_flags_are_the_run_keywords():
    sig = inspect.signature(dedupdask.run)
    kwonly = {n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
    subs = _subcommands()

    def dests(name: str) -> set[str]:
        return {a.dest for a in subs[name]._actions if a.dest != "help"}

    cli_only = {"input", "work_dir", "allow_failures"}
    assert dests("run") - cli_only == kwonly - {"run_mode"}  # the subcommand is the run_mode
    for name in ("extract", "build"):
        assert dests(name) - cli_only <= kwonly, name
    # every option is on the subcommand whose stage uses it
    assert dests("extract") | dests("build") == dests("run")
