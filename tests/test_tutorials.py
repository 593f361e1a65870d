"""The tutorial notebooks run top to bottom from a fresh kernel; each asserts its own key claims in cells."""

import os
import pathlib
import re
import shutil
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))


def test_eight_chapters_linked_from_the_readme_in_order():
    assert [path.stem[:2] for path in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 9)]
    linked = re.findall(r"\(tutorials/(\d\d_\w+)\.ipynb\)", (ROOT / "README.md").read_text())
    assert linked == [path.stem for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_from_a_fresh_kernel(path, sft_policy_path, monkeypatch):
    # The kernel inherits this environment: the session's policy cache, and tf_ppo importable from a checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_notebooks_installs_jupyterlab_then_opens_the_tutorials():
    # -n: print the commands only; -B: as on first use, when JupyterLab is not installed yet.
    commands = subprocess.run(["make", "-n", "-B", "notebooks"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.splitlines()
    assert ".venv/bin/pip install --quiet jupyterlab" in commands
    assert commands[-1] == ".venv/bin/jupyter lab tutorials/"


def test_notebooks_use_no_private_trainer_methods():
    for path in NOTEBOOKS:
        code = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
        assert not re.findall(r"\btrainer\._\w+", code), path.stem
