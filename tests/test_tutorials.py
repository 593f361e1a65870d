"""The tutorial notebooks run top to bottom from a fresh kernel; each asserts its own key claims in cells."""

import os
import pathlib
import re

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
