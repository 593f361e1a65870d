"""tf_ppo compiles every function through `tf_ppo.training.compiled.compiled`, without AutoGraph (see that module)."""

import pathlib
import re

import pytest
import tensorflow as tf

from tf_ppo.training.compiled import compiled

PACKAGE = pathlib.Path(__file__).resolve().parents[3] / "tf_ppo"


def test_no_module_calls_tf_function_directly():
    direct = [f"{path.name}:{number}" for path in sorted(PACKAGE.glob("*.py")) if path.name != "compiled.py"
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if re.search(r"(?<![\w`])tf\.function\(", line)]
    assert not direct, f"use tf_ppo.training.compiled.compiled instead of tf.function at {direct}"


def test_python_control_flow_on_a_tensor_is_not_converted():
    def branch(x):
        if x > 0:  # AutoGraph would turn this into a tf.cond
            return x
        return -x

    assert int(tf.function(branch)(tf.constant(-2))) == 2
    with pytest.raises(TypeError, match="tf.Tensor"):
        compiled(branch)(tf.constant(-2))
