"""The package's structure: every module in the README's layout, module and class sizes, and a run loop
that reads no algorithm's own config field and names no algorithm."""

import ast
import pathlib
import re

import pytest

from tf_ppo.config import PPOConfig
from tf_ppo.rl.algorithms import ALGORITHMS

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tf_ppo"
MODULES = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py"))
RUN_MODULES = ("rl/trainer.py", "rl/learner.py", "rl/rollout.py", "rl/evaluator.py", "rl/callbacks.py", "rl/logs.py")


def parsed(module):
    return ast.parse((PACKAGE / module).read_text())


def test_every_module_is_in_the_readme_layout_and_every_listed_one_exists():
    layout = (ROOT / "README.md").read_text().split("\n## Layout", 1)[1]
    listed = set(re.findall(r"^\s+([\w/]+\.py)\s", layout, flags=re.M))
    assert sorted(set(MODULES) - listed) == [], "modules missing from README.md's Layout"
    assert sorted(listed - set(MODULES)) == [], "README.md's Layout lists modules that do not exist"


@pytest.mark.parametrize("module", MODULES)
def test_no_module_over_400_lines_and_no_class_over_300(module):
    assert len((PACKAGE / module).read_text().splitlines()) <= 400
    for node in ast.walk(parsed(module)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= 300, f"class {node.name}"


def config_reads(tree):
    """The field names read from a config: `config.X`, `c.X` and `self.config.X`."""
    def is_config(value):
        return ((isinstance(value, ast.Name) and value.id in ("c", "config"))
                or (isinstance(value, ast.Attribute) and value.attr == "config"))
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and is_config(node.value)}


@pytest.mark.parametrize("module", RUN_MODULES)
def test_the_run_reads_no_algorithm_owned_field_and_names_no_algorithm(module):
    tree = parsed(module)
    owned = set().union(*(cls.fields for cls in ALGORITHMS.values()))
    assert config_reads(tree) & owned == set()
    assert config_reads(tree) <= set(PPOConfig.__dataclass_fields__) | {"mini_batch_size", "sequence_length", "to_json"}
    names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in ALGORITHMS}
    assert names == set()


def test_the_check_sees_a_config_read():
    """The AST check itself: it finds `c.vf_coef` and `self.config.beta`, and ignores other attributes."""
    tree = ast.parse("c.vf_coef\nself.config.beta\nself.algorithm.num_generations\n")
    assert config_reads(tree) == {"vf_coef", "beta"}
