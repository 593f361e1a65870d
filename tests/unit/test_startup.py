"""TensorFlow's C++ start-up banner is left out of stderr; everything else TensorFlow prints still shows."""

import os
import subprocess
import sys

from tf_ppo.startup import START_UP_NOTE, _write_back

BANNER = "I0000 00:00:1796586786.286011   16170 port.cc:153] oneDNN custom operations are on."


def stderr_of(code, **env):
    environ = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env={**environ, **env})
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stderr


def test_help_prints_the_help_and_nothing_on_stderr():
    completed = subprocess.run([sys.executable, "-m", "tf_ppo.cli", "--help"], capture_output=True, text=True,
                               timeout=300, env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert completed.returncode == 0
    assert completed.stderr == ""
    assert completed.stdout.startswith("usage: tf-ppo")


def test_a_user_who_sets_the_log_level_gets_tensorflows_own_output():
    # The same import with TF_CPP_MIN_LOG_LEVEL set prints TensorFlow's notes: the test above could fail.
    assert START_UP_NOTE.search(stderr_of("import tf_ppo", TF_CPP_MIN_LOG_LEVEL="0"))


def test_only_the_start_up_notes_are_left_out(capsys):
    error = "E0000 00:00:1796586841.994010   16266 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)"
    warning = "/site-packages/x.py:3: DeprecationWarning: something"
    _write_back("\n".join(["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                           BANNER, error, "To enable the following instructions: AVX2 FMA, in other operations",
                           warning, ""]))
    assert capsys.readouterr().err == f"{error}\n{warning}\n"
