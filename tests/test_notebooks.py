"""The example notebooks run top to bottom in a real Jupyter kernel (nbclient), in a scratch folder,
and show what the run folders hold. Skipped without the `notebook` extra."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = REPO_ROOT / "experiments" / "notebooks"


def execute(notebook: Path, cwd: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run every cell in a kernel of this very Python (a kernelspec written into `cwd`)."""
    spec = cwd / "jupyter" / "kernels" / "fedtorch-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "fedtorch test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(cwd / "jupyter"))
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="fedtorch-test", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


def outputs(nb, mime: str) -> list:
    return [out["data"][mime] for cell in nb.cells for out in cell.get("outputs", []) if mime in out.get("data", {})]


def test_the_sweep_notebook_runs_and_shows_its_runs(tmp_path, monkeypatch):
    nb = execute(NOTEBOOKS / "sweep.ipynb", tmp_path, monkeypatch)
    sweep = tmp_path / "outputs" / "notebook_sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]

    # What the notebook printed is what the run folders say.
    printed = "".join(
        out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []) if out.get("name") == "stdout"
    )
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        lr = re.search(r"trainer.lr=(\S+)", overrides).group(1)
        seed = re.search(r"seed=(\S+)", overrides).group(1)
        assert f"trainer.lr={lr} seed={seed}: eval/accuracy={summary['metrics']['eval/accuracy']!r}" in printed
        assert summary["rounds"] == 6

    # The DataFrames rendered as tables, the curves as a figure, the progress bar as tqdm's widget.
    tables = outputs(nb, "text/html")
    assert any("trainer.lr" in t and "run/status" in t and "completed" in t for t in tables)
    assert any("mean" in t and "std" in t for t in tables)
    assert len(outputs(nb, "image/png")) == 1
    assert outputs(nb, "application/vnd.jupyter.widget-view+json"), "no tqdm widget: is ipywidgets installed?"
