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

from tests.conftest import assert_same_weights, kill_after, sigterm_after_first_update, tiny_config
from tests.environments import Echo, NaNOnce
from tf_ppo import PPOTrainer, train

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
# PPO: its critic, GAE bootstrapped across the environment's tokens and step rewards; 16 episodes per update.
RUN = {"total_updates": 4, "batch_size": 16, "eval_size": 16, "max_turns": 3, "response_length": 24}
# The same run in a subprocess, to be stopped or killed: `python -c SCRIPT RUN_DIR new|resume`.
SCRIPT = """
import pathlib, sys
from tests.conftest import tiny_config
from tests.environments import Echo
from tests.integration.test_episode_runs import RUN
from tf_ppo import train
run_dir, resume = sys.argv[1], sys.argv[2] == "resume"
config = tiny_config(pathlib.Path(run_dir), **RUN, checkpoint_every=1, run_dir=run_dir)
train(config, environment=Echo, resume=resume, show_progress=False)
"""


def run_script(run_dir, resume=False):
    """The run in a subprocess, a checkpoint after every update."""
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(run_dir), "resume" if resume else "new"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, sft_policy_path):
    """An uninterrupted multi-turn run: what every resumed run must reproduce."""
    return train(tiny_config(tmp_path_factory.mktemp("straight"), **RUN, checkpoint_every=2), environment=Echo,
                 show_progress=False)


def test_the_runs_episodes_have_several_turns_and_the_environments_tokens(straight):
    history = straight.history
    assert max(row["episodes/turns"] for row in history) > 1.5, history
    assert all(np.isfinite(row["loss"]) and row["skipped_steps"] == 0 for row in history)


def test_sigterm_then_sigkill_then_resume_ends_at_the_uninterrupted_weights(tmp_path, straight):
    run_dir = tmp_path / "preempted"
    # SIGTERM (a preemption): the run checkpoints after the update in flight and exits 0.
    _, done = sigterm_after_first_update(run_script(run_dir), run_dir)
    assert 1 <= done < 3
    # Resumed, then SIGKILL somewhere in update 4 (or still loading): nothing written after ckpt-3 is trusted.
    resumed = run_script(run_dir, resume=True)
    delay = kill_after(resumed, run_dir / "checkpoints" / "ckpt-3.index", 0.3)
    assert not (run_dir / "policy.keras").exists(), f"the run finished before the kill (delay {delay:.2f} s)"
    finished = train(tiny_config(tmp_path, **RUN, run_dir=str(run_dir)), environment=Echo, resume=True,
                     show_progress=False)
    assert [row["update"] for row in finished.history] == [1, 2, 3, 4]
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


# PPO above, GRPO with LoRA and on two devices; the other estimators here, one update each on episodes (Dr. GRPO
# and GSPO are GRPO's loss with other knobs). Every algorithm's maths with the environment's holes in the mask:
# tests/unit/rl/test_episodes.py.
@pytest.mark.parametrize("name", ["rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_every_algorithm_runs_an_update_on_episodes(name, tmp_path, sft_policy):
    config = tiny_config(tmp_path, **{**RUN, "batch_size": 8}, algorithm=name, num_generations=4)
    trainer = PPOTrainer(config, environment=Echo, policy=sft_policy, show_progress=False)
    before = [v.numpy().copy() for v in trainer.learner.variables]
    logs = trainer.run_update({"prompt_ids": trainer.prompt_ids[:2], "prompt_lengths": trainer.prompt_lengths[:2]}, 1)
    assert logs["skipped_steps"] == 0 and np.isfinite(logs["loss"]) and logs["episodes/turns"] > 1, logs
    assert any(not np.array_equal(old, v.numpy()) for old, v in zip(before, trainer.learner.variables))
