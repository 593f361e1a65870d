"""Shared fixtures: one SFT policy per session, tiny PPO configs."""

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# A private policy cache for the run. It is made by the first process that loads this file: the pytest-xdist
# controller, whose environment the workers and every process they start (CLI runs, notebook kernels) inherit,
# so the SFT policies are trained once per run. That process removes it at the end (pytest_sessionfinish).
MADE_THE_CACHE = "TF_PPO_CACHE" not in os.environ
if MADE_THE_CACHE:
    os.environ["TF_PPO_CACHE"] = tempfile.mkdtemp(prefix="tf_ppo_cache_")
# XLA's persistent compilation cache, in the same place: most tests build a trainer of the same shapes, and each
# would otherwise compile the same programs. Set before TensorFlow reads its flags.
os.environ.setdefault("TF_XLA_FLAGS",
                      f"--tf_xla_persistent_cache_directory={os.path.join(os.environ['TF_PPO_CACHE'], 'xla')}")
# Under pytest-xdist, each worker's TensorFlow (and the processes it starts) gets its share of the cores: by
# default each would use them all, and two workers on 2 cores then spend CPU time on contention. Measured on
# two integration modules with -n 2 on 2 cores: 8 min 48 s of CPU time in 5 min 1 s, 6 min 57 s in 4 min 40 s.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _THREADS)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", _THREADS)

import filelock  # noqa: E402
import pytest  # noqa: E402

from tf_ppo.config import PPOConfig  # noqa: E402
from tf_ppo.sft import default_policy  # noqa: E402


# The longest scopes first (module, or class for the notebooks; `make test` runs `--dist loadscope
# --no-loadscope-reorder`), so the two workers end together: by default xdist starts the scopes with the most
# tests, leaving the few long notebook runs to the end with one worker idle. The first two train the two SFT
# policies (each trained once per run, under a lock) at the same time. About 3 to 8 worker-minutes each.
LONGEST_SCOPES_FIRST = (
    "tests/notebooks/test_tutorials.py::TestNotebooksWithTheArticlesCode", "tests/unit/tasks/test_arithmetic.py",
    "tests/notebooks/test_tutorials.py::TestNotebooksProjectScaleAndFAQ", "tests/integration/test_distribute.py",
    "tests/integration/test_every_family.py", "tests/integration/test_algorithms.py",
    "tests/integration/test_reliability.py", "tests/integration/test_episode_runs.py",
    "tests/integration/test_readme_examples.py",
    "tests/integration/test_rl_trainer.py", "tests/integration/test_presets.py", "tests/integration/test_first_run.py",
    "tests/unit/preference/test_reward_model.py", "tests/integration/test_benchmarks.py",
    "tests/integration/test_dpo.py", "tests/integration/test_export.py", "tests/unit/models/test_precision.py",
)


def pytest_sessionfinish(session):
    """The run's cache (SFT policies and XLA programs, about 400 MB) goes when the process that made it ends.

    Under xdist that is the controller, after every worker has finished; a `TF_PPO_CACHE` set by the user is kept.
    """
    if MADE_THE_CACHE:
        shutil.rmtree(os.environ["TF_PPO_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(items):
    rank = {scope: i for i, scope in enumerate(LONGEST_SCOPES_FIRST)}
    items.sort(key=lambda item: min(rank.get(scope, len(rank)) for scope in _scopes(item.nodeid)))  # stable


def _scopes(nodeid):
    """`a.py::Class::test[x]` -> (`a.py::Class`, `a.py`): the item's xdist scope and its module."""
    return nodeid.rsplit("::", 1)[0], nodeid.split("::")[0]


def tiny_config(tmp_path, **changes):
    """A PPO config small enough for a unit test: 32 rollouts per update, 32 held-out prompts."""
    return PPOConfig(run_dir=str(tmp_path / "run"), batch_size=32, eval_size=32, total_updates=4,
                     checkpoint_every=2).replace(**changes)


def cli(*args, **popen_kwargs):
    """Start `tf-ppo ARGS` in a fresh process (it inherits the session's policy cache)."""
    return subprocess.Popen([sys.executable, "-m", "tf_ppo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen_kwargs)


def assert_same_weights(expected_model, run_dir):
    """The run's saved policy has `expected_model`'s weights (1e-6)."""
    import keras
    import numpy as np
    resumed = keras.saving.load_model(pathlib.Path(run_dir) / "policy.keras", compile=False)
    for expected, got in zip(expected_model.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-6)


def assert_resumed_to(process, run_dir, expected_model):
    """`process` (a resumed 4-update run) exits 0 with updates 1-4 in the metrics and `expected_model`'s weights."""
    from tf_ppo.training.reporting import read_history
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert [row["update"] for row in read_history(pathlib.Path(run_dir) / "metrics.csv")] == [1, 2, 3, 4]
    assert_same_weights(expected_model, run_dir)
    return stdout


def sigterm_after_first_update(process, run_dir):
    """SIGTERM `process` once its first update is in `run_dir`'s metrics; its stdout and the updates done.

    The run must exit 0 with a checkpoint of its last update.
    """
    from tf_ppo.training.reporting import read_history
    metrics = pathlib.Path(run_dir) / "metrics.csv"
    while len(read_history(metrics)) < 1:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    done = len(read_history(metrics))
    assert (pathlib.Path(run_dir) / "checkpoints" / f"ckpt-{done}.index").exists()
    return stdout, done


def kill_after(process, path, max_delay):
    """SIGKILL `process` at a random 0 to `max_delay` s after `path` (a checkpoint's index) appears.

    Returns the delay, for the message of a test that finds the run finished before the kill.
    """
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.01)
    delay = random.uniform(0.0, max_delay)
    time.sleep(delay)
    process.kill()
    process.wait()
    return delay


@pytest.fixture(scope="session")
def sft_policy_path():
    """Trains the default tiny policy once per run (then every load is a fresh copy); other workers wait for it."""
    with filelock.FileLock(os.path.join(os.environ["TF_PPO_CACHE"], ".sft.lock")):
        default_policy(PPOConfig(), show_progress=False)
    return os.environ["TF_PPO_CACHE"]


@pytest.fixture(scope="session")
def arithmetic_sft_path():
    """The arithmetic task's SFT policy, trained once per run (tests and tutorial 09 share it)."""
    with filelock.FileLock(os.path.join(os.environ["TF_PPO_CACHE"], ".sft-arithmetic.lock")):
        default_policy(PPOConfig(task="arithmetic"), show_progress=False)
    return os.environ["TF_PPO_CACHE"]


@pytest.fixture
def sft_policy(sft_policy_path):
    """A fresh, trainable copy of the session's SFT policy."""
    return default_policy(PPOConfig(), show_progress=False)
