"""The critic-free algorithms on the shared loop: models held, checkpoints and exact resume, the guards, errors.

One short run per algorithm (a shared module fixture) serves several tests, so
the suite builds and compiles as few trainers as it can.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import kill_after, tiny_config
from tf_ppo import Callback, ConfigError, PPOConfig, PPOTrainer, export
from tf_ppo.cli import build_parser, config_from_args, parse_args
from tf_ppo.models import AdaptersOff

CRITIC_FREE = {"grpo": {"beta": 0.04, "loss_type": "grpo"}, "rloo": {}, "reinforce_pp": {},
               "reinforce_pp_baseline": {}}


def varied_reward(texts):
    """Cheap and different within a group: the count of 'good' words, plus a little for length."""
    return [sum(word in ("good", "great", "best", "fun") for word in text.split()) + 0.01 * len(text)
            for text in texts]


def algorithm_config(tmp_path, name, **changes):
    settings = {"algorithm": name, "num_generations": 4, "batch_size": 16, "eval_size": 16, "total_updates": 2,
                "checkpoint_every": 1, **CRITIC_FREE[name], **changes}
    return tiny_config(tmp_path, **settings)


@pytest.fixture(scope="module", params=list(CRITIC_FREE))
def finished(request, tmp_path_factory, sft_policy_path):
    """`(name, trainer, result)` of a finished 2-update run of each critic-free algorithm."""
    name = request.param
    trainer = PPOTrainer(algorithm_config(tmp_path_factory.mktemp(name), name), reward_fn=varied_reward,
                         show_progress=False)
    return name, trainer, trainer.train()


def resume_to_the_end(config, straight):
    """Resume `config`'s run to its last update; assert it ends at the uninterrupted run's weights (1e-6)."""
    resumed = PPOTrainer(config, reward_fn=varied_reward, resume=True, show_progress=False).train()
    assert [row["update"] for row in resumed.history] == [1, 2]
    for expected, got in zip(straight.policy.get_weights(), resumed.policy.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    return resumed


def test_no_critic_is_built_checkpointed_or_saved(finished):
    name, trainer, result = finished
    assert trainer.value_model is None and result.value_model is None
    assert "value model: none" in trainer.parameter_report
    assert trainer.reference is not None  # every run here has a KL term (beta > 0)
    checkpoint = tf.train.load_checkpoint(str(result.run_dir / "checkpoints" / "ckpt-2"))
    assert not any(key.startswith("value_model") for key in checkpoint.get_variable_to_shape_map())
    assert (result.run_dir / "policy.keras").is_file() and not (result.run_dir / "value_model.keras").exists()
    row = result.history[-1]
    assert {"kl", "loss", "policy_loss", "clipfrac", "frac_reward_zero_std"} <= set(row)
    assert "value_loss" not in row and "explained_variance" not in row
    assert row["skipped_steps"] == 0 and np.isfinite(row["loss"])


# Checkpoints and resume are the run's and the learner's, which read no algorithm's fields
# (tests/unit/test_structure.py); the critic-free algorithms keep no state of their own across updates (a fixed
# KL coefficient). So each way in (a lost checkpoint, SIGKILL, SIGTERM) is shown on GRPO with a reference, and
# PPO's adaptive KL controller and its critic in tests/integration/test_reliability.py.
@pytest.mark.parametrize("finished", ["grpo"], indirect=True)
def test_resume_from_the_first_checkpoint_ends_at_the_same_weights(finished, tmp_path):
    name, _, straight = finished
    run_dir = tmp_path / "resumed"
    shutil.copytree(straight.run_dir, run_dir)
    for part in run_dir.glob("checkpoints/ckpt-2.*"):  # as if the run died during update 2
        part.unlink()
    state = tf.train.get_checkpoint_state(str(run_dir / "checkpoints"))  # the manager's list, less ckpt-2
    del state.all_model_checkpoint_paths[1:], state.all_model_checkpoint_timestamps[1:]
    state.model_checkpoint_path = state.all_model_checkpoint_paths[0]
    (run_dir / "checkpoints" / "checkpoint").write_text(str(state))
    (run_dir / "evaluation_after.json").unlink()
    resume_to_the_end(straight.config.replace(run_dir=str(run_dir)), straight)


# The module's run of one algorithm (argv: the test's tmp_path, the algorithm), in a process of its own to kill.
TRAIN_IN_A_PROCESS = """
import pathlib, sys
from tests.integration.test_algorithms import algorithm_config, varied_reward
from tf_ppo import PPOTrainer
PPOTrainer(algorithm_config(pathlib.Path(sys.argv[1]), sys.argv[2]), reward_fn=varied_reward, show_progress=False).train()
"""


@pytest.mark.parametrize("finished", ["grpo"], indirect=True)
def test_sigkill_mid_run_then_resume_ends_at_the_uninterrupted_runs_weights(finished, tmp_path):
    name, _, straight = finished
    root = pathlib.Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, "-c", TRAIN_IN_A_PROCESS, str(tmp_path), name], cwd=root,
                               env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "run"  # algorithm_config's
    delay = kill_after(process, run_dir / "checkpoints" / "ckpt-1.index", 0.3)  # in update 2, or just after
    assert not (run_dir / "evaluation_after.json").exists(), f"the run finished before the kill (delay {delay:.2f} s)"
    resume_to_the_end(straight.config.replace(run_dir=str(run_dir)), straight)


class SigtermAfterTheFirstUpdate(Callback):
    """A preemption that lands while the callbacks of update 1 run, after its metrics are written."""

    def on_update_end(self, update, logs):
        if update == 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("finished", ["grpo"], indirect=True)
def test_sigterm_saves_the_update_in_flight_and_the_run_resumes_to_the_same_weights(finished, tmp_path):
    name, _, straight = finished
    config = straight.config.replace(run_dir=str(tmp_path / "preempted"), checkpoint_every=2)  # no ckpt-1 but SIGTERM's
    stopped = PPOTrainer(config, reward_fn=varied_reward, callbacks=[SigtermAfterTheFirstUpdate()],
                         show_progress=False).train()
    assert stopped.preempted and [row["update"] for row in stopped.history] == [1]
    assert tf.train.latest_checkpoint(str(tmp_path / "preempted" / "checkpoints")).endswith("ckpt-1")
    assert not resume_to_the_end(config, straight).preempted


def test_a_failing_reward_function_skips_the_update_and_names_it(finished):
    _, trainer, _ = finished
    before = [w.copy() for w in trainer.policy.get_weights()]

    def broken_reward(texts):
        raise ValueError("no judge today")

    good = trainer.engine.reward_fns
    trainer.engine.reward_fns, trainer.learner.skips.count = [broken_reward], 0
    try:
        batch = {"prompt_ids": trainer.prompt_ids[:4], "prompt_lengths": trainer.prompt_lengths[:4]}
        with pytest.warns(UserWarning, match="update 9 skipped: reward function broken_reward raised ValueError"):
            logs = trainer.run_update(batch, 9)
    finally:
        trainer.engine.reward_fns = good
    assert logs["skipped_steps"] == 2 and np.isnan(logs["loss"])
    for old, new in zip(before, trainer.policy.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_nan_advantage_skips_the_step_inside_the_graph(finished):
    _, trainer, _ = finished
    rollout = trainer.rollout(trainer.prompt_ids[:16], trainer.prompt_lengths[:16], tf.constant([3, 4]))
    experience, _ = trainer.advantages(rollout.experience, tf.constant(0.1))
    advantages = experience.advantages.numpy()
    advantages[0, 0] = np.nan
    before = [v.numpy().copy() for v in trainer.learner.variables]
    step = trainer.train_step(experience._replace(advantages=tf.constant(advantages)).rows(tf.range(8)))
    assert not bool(step["applied"])
    for old, variable in zip(before, trainer.learner.variables):
        np.testing.assert_array_equal(old, variable.numpy())


@pytest.mark.parametrize("finished", ["grpo"], indirect=True)  # the export reads no algorithm's fields
def test_export_serves_generation_without_a_value_signature(finished, tmp_path):
    name, _, result = finished
    export(result, tmp_path / "export")
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    assert "value" not in loaded.signatures, name
    out = loaded.generate(tf.constant(["the film was"]), 8, 1.0, 0, 7)
    assert out["completions"].shape == (1,)


@pytest.mark.parametrize("finished", ["grpo"], indirect=True)
def test_config_json_records_the_versions_and_no_section_the_run_did_not_read(finished):
    _, _, result = finished
    recorded = json.loads((result.run_dir / "config.json").read_text())
    assert "sft" in recorded and "reward" not in recorded and "dpo" not in recorded  # GRPO from the SFT policy
    assert recorded["provenance"]["tensorflow"] == tf.__version__ and "git_commit" in recorded["provenance"]
    assert PPOConfig.from_file(result.run_dir / "config.json") == result.config  # the sections left out: defaults


# Each dtype with and without a reference model (GRPO at beta 0 has none); the algorithms differ in their
# advantages only (float64-tested), not in how LoRA or a dtype policy enters the loop.
@pytest.mark.parametrize("name, dtype", [("grpo", "mixed_bfloat16"), ("grpo", "mixed_float16"),
                                         ("reinforce_pp_baseline", "mixed_bfloat16")])
def test_lora_and_mixed_precision_with_and_without_a_reference(name, dtype, tmp_path, sft_policy_path):
    beta = 0.0 if name == "grpo" else None  # GRPO with beta 0: no reference; the others: their default beta
    config = algorithm_config(tmp_path, name, lora_rank=4, dtype=dtype, total_updates=1, beta=beta)
    trainer = PPOTrainer(config, reward_fn=varied_reward, show_progress=False)
    if name == "grpo":
        assert trainer.reference is None and "reference: none" in trainer.parameter_report
    else:
        assert isinstance(trainer.reference, AdaptersOff)
    # float16 needs loss scaling (its gradients underflow); bfloat16 has float32's exponent range and does not.
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (dtype == "mixed_float16")
    assert trainer.policy.dtype_policy.name == dtype
    adapters = [w.numpy() for w in trainer.policy.trainable_weights]
    result = trainer.train()
    assert result.history[0]["skipped_steps"] == 0 and np.isfinite(result.history[0]["loss"])
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(adapters, trainer.policy.trainable_weights))
    assert ("heldout_kl" in result.evaluation_after) == (name != "grpo")


# --- several samples per prompt


def test_each_prompt_is_sampled_num_generations_times_side_by_side(finished):
    name, trainer, _ = finished
    prompts = {"prompt_ids": trainer.prompt_ids[:4], "prompt_lengths": trainer.prompt_lengths[:4]}
    generations = trainer.algorithm.num_generations
    rollout = trainer.rollout(tf.repeat(prompts["prompt_ids"], generations, axis=0),
                              tf.repeat(prompts["prompt_lengths"], generations, axis=0), tf.constant([5, 6]))
    groups = np.array(rollout.prompt_texts).reshape(4, generations)
    assert all(len(set(group)) == 1 for group in groups)  # contiguous blocks of one prompt
    tokens = rollout.experience.responses.token_ids.numpy().reshape(4, generations, -1)
    assert all(len({row.tobytes() for row in group}) > 1 for group in tokens)  # each row its own noise


# --- configuration and errors, before any model is built

@pytest.mark.parametrize("changes, message", [
    ({"algorithm": "grpo", "num_generations": 1}, "num_generations must be >= 2 for algorithm='grpo'"),
    ({"algorithm": "rloo", "num_generations": 3}, "batch_size counts rollouts, so it must be a multiple of "
                                                  "num_generations=3, got 64"),
    ({"algorithm": "grpo", "num_generations": 4, "vf_coef": 0.5}, "vf_coef is not used by algorithm='grpo'"),
    ({"algorithm": "grpo", "num_generations": 4, "target_kl": 1.0}, "target_kl is not used by algorithm='grpo'"),
    ({"algorithm": "grpo", "num_generations": 4, "epsilon_high": 0.1}, "epsilon_high must be >= epsilon=0.2"),
    ({"dual_clip": 1.0}, "dual_clip must be > 1"),
    ({"algorithm": "grpo", "num_generations": 4, "loss_type": "sum"}, "loss_type must be one of"),
    ({"algorithm": "grpo", "num_generations": 4, "scale_rewards": "max"}, "scale_rewards must be one of"),
    ({"algorithm": "dr_grpo", "num_generations": 4, "scale_rewards": "batch"}, "scale_rewards is not used"),
    ({"algorithm": "a2c"}, "algorithm must be one of"),
    ({"overlong_buffer": 17}, "overlong_buffer must be in [0, response_length=16]"),
])
def test_bad_algorithm_settings_name_the_field(changes, message):
    with pytest.raises(ConfigError, match="PPOConfig." + message.replace("[", r"\[").replace("(", r"\(")):
        PPOConfig(**changes)


def test_reward_weights_must_match_the_reward_functions(tmp_path):
    config = PPOConfig(run_dir=str(tmp_path), reward_weights=[1.0, 0.1])
    with pytest.raises(ConfigError, match="reward_weights has 2 weights for 3 reward functions"):
        PPOTrainer(config, reward_fn=[varied_reward] * 3, show_progress=False)


def test_algorithm_flags_and_json_round_trip():
    args = parse_args(build_parser(), ["train", "--algorithm", "grpo", "--num_generations", "4", "--beta", "0.04",
                                       "--reward_weights", "1,0.1"])
    config = config_from_args(args)
    assert (config.algorithm, config.num_generations, config.beta, config.reward_weights) == \
        ("grpo", 4, 0.04, (1.0, 0.1))
    assert PPOConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["reward_weights"] == [1.0, 0.1]


def test_several_reward_functions_are_weighted_and_logged_by_name(finished):
    _, trainer, _ = finished
    good = trainer.engine.reward_fns, trainer.engine.reward_weights

    def length(texts):
        return [len(text) for text in texts]

    trainer.engine.reward_fns, trainer.engine.reward_weights = [varied_reward, length], (1.0, 0.5)
    try:
        rollout = trainer.rollout(trainer.prompt_ids[:16], trainer.prompt_lengths[:16], tf.constant([7, 8]))
    finally:
        trainer.engine.reward_fns, trainer.engine.reward_weights = good
    each = rollout.reward_scores
    np.testing.assert_allclose(rollout.experience.scores.numpy(), each["varied_reward"] + 0.5 * each["length"],
                               rtol=1e-6)
    assert set(each) == {"varied_reward", "length"}
