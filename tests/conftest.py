"""Shared fixtures: one SFT policy per session, tiny PPO configs."""

import os
import tempfile

# A private policy cache, so the suite never reads or writes the user's; under pytest-xdist (`-n 2`) one
# per run, shared by its workers, so the SFT policy is trained once.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_CACHE = os.path.join(tempfile.gettempdir(), f"tf_ppo_cache_{_RUN}") if _RUN else tempfile.mkdtemp(prefix="tf_ppo_cache_")
os.makedirs(_CACHE, exist_ok=True)
os.environ.setdefault("TF_PPO_CACHE", _CACHE)

import filelock  # noqa: E402
import pytest  # noqa: E402

from tf_ppo.config import PPOConfig  # noqa: E402
from tf_ppo.sft import default_policy  # noqa: E402


def tiny_config(tmp_path, **changes):
    """A PPO config small enough for a unit test: 32 rollouts per update, 32 held-out prompts."""
    return PPOConfig(run_dir=str(tmp_path / "run"), batch_size=32, eval_size=32, total_updates=4,
                     checkpoint_every=2).replace(**changes)


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
