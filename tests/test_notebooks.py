"""The notebooks in notebooks/ run end to end (small parameters, the weight-free model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e .[test])")
nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e .[test])")
pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e .[test])")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Injected after each notebook's "parameters" cell, papermill-style.
SMALL = {
    "01_quickstart.ipynb": {"N_SHARDS": 3, "IMAGES_PER_SHARD": 12, "MODEL_PATH": "dct"},
    "02_s3_and_cluster.ipynb": {"N_SHARDS": 4, "IMAGES_PER_SHARD": 8, "MODEL_PATH": "dct", "N_WORKERS": 2},
    "03_results.ipynb": {"N_SHARDS": 3, "IMAGES_PER_SHARD": 15, "MODEL_PATH": "dct"},
    "04_clean_shards.ipynb": {"N_SHARDS": 3, "IMAGES_PER_SHARD": 12, "MODEL_PATH": "dct"},
    "05_reference.ipynb": {"N_SHARDS": 2, "IMAGES_PER_SHARD": 12, "MODEL_PATH": "dct"},
}


def _html_outputs(nb) -> str:
    return "\n".join(
        str(out.get("data", {}).get("text/html", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def _text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(str(out.get("text", "")))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_every_notebook_is_tested_and_committed_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == sorted(SMALL)
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: strip outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: one cell tagged 'parameters'"
        for key in SMALL[name]:
            assert f"{key} = " in tagged[0].source, f"{name}: parameter {key}"


# The quickstart runs in the default test run; the others (~40 s together, each a kernel and a
# run of its own) with the slow cases, which CI runs too.
@pytest.mark.parametrize(
    "name", [n if n.startswith("01_") else pytest.param(n, marks=pytest.mark.slow) for n in sorted(SMALL)]
)
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.delenv("DEDUPDASK_S3_ENDPOINT", raising=False)  # the S3 cell is skipped
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))  # no user kernelspecs
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {json.dumps(v)}" for k, v in SMALL[name].items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    html = _html_outputs(nb)
    assert 'class="ddk-gallery"' in html and "data:image/jpeg;base64," in html  # rendered inline
    text = _text_outputs(nb)
    if name == "02_s3_and_cluster.ipynb":
        assert "DEDUPDASK_S3_ENDPOINT is not set" in text
    data = next(p for p in tmp_path.iterdir() if p.name.endswith("_data"))
    assert any(f.endswith(".html") for _, _, files in os.walk(data) for f in files)
