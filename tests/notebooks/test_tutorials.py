"""The tutorial notebooks run top to bottom from a fresh kernel; each asserts its own key claims in cells."""

import os
import pathlib
import re
import shutil
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))


def test_the_eight_chapters_then_the_notebooks_beyond_the_article_are_linked_from_the_readme_in_order():
    assert [path.stem[:2] for path in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 11)]
    linked = re.findall(r"\(tutorials/(\d\d_\w+)\.ipynb\)", (ROOT / "README.md").read_text())
    assert linked == [path.stem for path in NOTEBOOKS]


def run_notebook(path, monkeypatch):
    # The kernel inherits this environment: the session's policy cache, and tf_ppo importable from a checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    # The per-cell timeout only catches a hung kernel: the longest cell (08's sweep, 5 short PPO runs) takes
    # about 100 s here, but a CI run on a slower machine took the whole suite 2.6x longer and cut it at 300 s.
    client = NotebookClient(notebook, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails


# Two classes, so `pytest -n 2 --dist loadscope` runs the two halves on both workers (about 5.5 minutes each).
LONG = {"05_project", "07_scale_and_export", "08_faq", "10_calculator_agent"}


class TestNotebooksWithTheArticlesCode:
    @pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem not in LONG], ids=lambda path: path.stem)
    def test_notebook_runs_from_a_fresh_kernel(self, path, sft_policy_path, arithmetic_sft_path, monkeypatch):
        run_notebook(path, monkeypatch)


class TestNotebooksProjectScaleAndFAQ:
    @pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in LONG], ids=lambda path: path.stem)
    def test_notebook_runs_from_a_fresh_kernel(self, path, sft_policy_path, monkeypatch):
        run_notebook(path, monkeypatch)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_notebooks_installs_jupyterlab_then_opens_the_tutorials():
    # -n: print the commands only; -B: as on first use, when JupyterLab is not installed yet.
    commands = subprocess.run(["make", "--no-print-directory", "-n", "-B", "notebooks"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.splitlines()
    assert '.venv/bin/pip install --quiet -e ".[notebooks]"' in commands
    assert commands[-1] == ".venv/bin/jupyter lab tutorials/"


def test_notebooks_use_no_private_trainer_methods():
    for path in NOTEBOOKS:
        code = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
        assert not re.findall(r"\btrainer\._\w+", code), path.stem


# The article's numbered headings (its sections, and the subsections it numbers itself), verbatim.
ARTICLE_HEADINGS = {
    "1": "背景介绍", "2": "核心概念与联系", "3": "核心算法原理 & 具体操作步骤",
    "4": "数学模型和公式 & 详细讲解 & 举例说明", "5": "项目实战：代码实际案例和详细解释说明",
    "5.1": "开发环境搭建", "5.2": "源代码详细实现和代码解读", "5.3": "代码解读与分析", "6": "实际应用场景",
    "7": "工具和资源推荐", "7.1": "学习资源推荐", "7.2": "开发工具框架推荐", "7.3": "相关论文著作推荐",
    "8": "总结：未来发展趋势与挑战", "9": "附录：常见问题与解答", "10": "扩展阅读 & 参考资料",
}
# The article's sections each notebook follows (07 covers two; the article's 10, further reading, has none).
CHAPTER_SECTIONS = {"01": ["1"], "02": ["2"], "03": ["3"], "04": ["4"], "05": ["5"], "06": ["6"],
                    "07": ["7", "8"], "08": ["9"]}
CHAPTERS = [path for path in NOTEBOOKS if path.stem[:2] in CHAPTER_SECTIONS]
BEYOND = [path for path in NOTEBOOKS if path.stem[:2] not in CHAPTER_SECTIONS]  # 09: verifiable rewards


def markdown_headings(path):
    notebook = nbformat.read(path, as_version=4)
    return [line for cell in notebook.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.startswith("#")]


def section_number(number):
    return tuple(int(part) for part in number.split("."))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_title_is_the_articles_section_with_an_english_translation(path):
    title = markdown_headings(path)[0]
    sections = CHAPTER_SECTIONS[path.stem[:2]]
    expected = " · ".join(f"{number}. {ARTICLE_HEADINGS[number]}" for number in sections)
    assert re.fullmatch(rf"# {re.escape(expected)} \([A-Z][^()]+\)", title), title


@pytest.mark.parametrize("path", BEYOND, ids=lambda path: path.stem)
def test_a_notebook_beyond_the_article_says_so_and_numbers_no_heading(path):
    headings = markdown_headings(path)
    assert headings[0].startswith("# Beyond the article: "), headings[0]
    assert not [line for line in headings if re.match(r"#+ \d", line)]  # numbers name the article's sections


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda path: path.stem)
def test_numbered_headings_are_the_articles_own_in_its_order(path):
    # A heading that starts with a number names an article section by it ("1.1 ..." was the notebook's own).
    numbered = [re.match(r"#+ (\d+(?:\.\d+)*)\.? (.*)", line).groups() for line in markdown_headings(path)
                if re.match(r"#+ \d", line)]
    for number, text in numbered:
        assert number in ARTICLE_HEADINGS and text.startswith(ARTICLE_HEADINGS[number]), (number, text)
    order = [section_number(number) for number, _ in numbered]
    assert order == sorted(order), order


def cell_drawing(path, marker):
    """The one code cell of a notebook whose source contains `marker`."""
    cells = [cell for cell in nbformat.read(path, as_version=4).cells
             if cell.cell_type == "code" and marker in cell.source]
    assert len(cells) == 1, (path.stem, marker, len(cells))
    return cells[0]


@pytest.mark.parametrize("stem, marker", [("05_project", "curves = {"), ("08_faq", "axis.bar("),
                                          ("09_verifiable_rewards", "figure = curves_figure("),
                                          ("10_calculator_agent", "axes = history.plot(")])
def test_stored_notebook_shows_its_figure(stem, marker):
    # The saved file, not a re-execution: what a reader sees on opening it (or on GitHub).
    cell = cell_drawing(ROOT / "tutorials" / f"{stem}.ipynb", marker)
    assert any("image/png" in output.get("data", {}) for output in cell.outputs), [o.output_type for o in cell.outputs]
