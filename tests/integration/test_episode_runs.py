"""Multi-turn runs keep every guarantee of single-turn ones: exact resume after SIGKILL and SIGTERM, the NaN
guard, LoRA. (MirroredStrategy on 2 logical CPUs: tests/integration/test_distribute.py.)

The runs use the tiny sentiment policy with `tests.environments.Echo`, which answers every turn, so the
episodes hold the environment's tokens between the model's turns.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import assert_resumed_to, assert_same_weights, kill_after, sigterm_after_first_update, tiny_config
from tests.environments import Echo, NaNOnce
from tf_ppo import PPOTrainer, train

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
# PPO: its critic, GAE bootstrapped across the environment's tokens and step rewards; 16 episodes per update.
RUN = {"total_updates": 4, "batch_size": 16, "eval_size": 16, "max_turns": 3, "response_length": 24}
# The same run in a subprocess, to be killed or stopped: `python -c SCRIPT RUN_DIR RESUME CHECKPOINT_EVERY`.
SCRIPT = """
import pathlib, sys
from tests.conftest import tiny_config
from tests.environments import Echo
from tests.integration.test_episode_runs import RUN
from tf_ppo import train
run_dir, resume, every = sys.argv[1], sys.argv[2] == "resume", int(sys.argv[3])
config = tiny_config(pathlib.Path(run_dir), **RUN, checkpoint_every=every, run_dir=run_dir)
train(config, environment=Echo, resume=resume, show_progress=False)
"""


def run_script(run_dir, resume=False, checkpoint_every=1):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(run_dir), "resume" if resume else "new",
                             str(checkpoint_every)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, sft_policy_path):
    """An uninterrupted multi-turn run: what every resumed run must reproduce."""
    return train(tiny_config(tmp_path_factory.mktemp("straight"), **RUN, checkpoint_every=2), environment=Echo,
                 show_progress=False)


def test_the_runs_episodes_have_several_turns_and_the_environments_tokens(straight):
    history = straight.history
    assert max(row["episodes/turns"] for row in history) > 1.5, history
    assert all(np.isfinite(row["loss"]) and row["skipped_steps"] == 0 for row in history)


def test_sigkill_mid_update_then_resume_matches_the_uninterrupted_run(tmp_path, straight):
    run_dir = tmp_path / "killed"
    process = run_script(run_dir)
    delay = kill_after(process, run_dir / "checkpoints" / "ckpt-2.index", 0.3)  # somewhere in update 3 or 4
    assert not (run_dir / "policy.keras").exists(), f"the run finished before the kill (delay {delay:.2f} s)"
    assert_resumed_to(run_script(run_dir, resume=True), run_dir, straight.policy)


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_ends_at_the_uninterrupted_weights(tmp_path, straight):
    run_dir = tmp_path / "preempted"
    process = run_script(run_dir, checkpoint_every=1000)
    _, done = sigterm_after_first_update(process, run_dir)
    assert 1 <= done < 4
    resumed = train(tiny_config(tmp_path, **RUN, run_dir=str(run_dir)), environment=Echo, resume=True,
                    show_progress=False)
    assert [row["update"] for row in resumed.history] == [1, 2, 3, 4]
    assert_same_weights(straight.policy, run_dir)


def test_a_nan_step_reward_skips_the_update_and_leaves_the_weights(tmp_path, sft_policy):
    NaNOnce.made = 0
    trainer = PPOTrainer(tiny_config(tmp_path, **RUN), environment=NaNOnce, policy=sft_policy,
                         show_progress=False)
    before = [v.numpy().copy() for v in trainer.learner.variables]
    batch = {"prompt_ids": trainer.prompt_ids[:16], "prompt_lengths": trainer.prompt_lengths[:16]}
    with pytest.warns(UserWarning, match="update 1 skipped"):
        logs = trainer.run_update(batch, 1)
    assert np.isnan(logs["loss"])
    for old, variable in zip(before, trainer.learner.variables):
        np.testing.assert_array_equal(old, variable.numpy())


def test_lora_trains_only_the_adapters_on_episodes(tmp_path, sft_policy_path):
    config = tiny_config(tmp_path, **{**RUN, "total_updates": 1}, algorithm="grpo", num_generations=4, beta=0.04,
                         lora_rank=4)
    trainer = PPOTrainer(config, environment=Echo, show_progress=False)
    frozen = [w.numpy().copy() for w in trainer.policy.non_trainable_weights]
    adapters = [w.numpy().copy() for w in trainer.policy.trainable_weights]
    result = trainer.train()
    assert result.history[0]["skipped_steps"] == 0 and result.history[0]["episodes/turns"] > 1
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(adapters, trainer.policy.trainable_weights))
    for old, weight in zip(frozen, trainer.policy.non_trainable_weights):
        np.testing.assert_array_equal(old, weight.numpy())
