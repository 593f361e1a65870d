"""End-to-end PPO runs on tiny models: learning, artefacts, reproducibility, the non-finite guard."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_ppo import Callback, NonFiniteError, PPOConfig, PPOTrainer, train
from tf_ppo.training.reporting import read_history
from tf_ppo.rl.rewards import word_count_reward
from tf_ppo.sft import default_policy


@pytest.fixture(scope="module")
def great_run(tmp_path_factory, sft_policy_path):
    """PPO toward the word 'great' (a custom reward), 20 updates; shared by several tests."""
    tmp_path = tmp_path_factory.mktemp("great")
    config = tiny_config(tmp_path, total_updates=20, checkpoint_every=5, beta=0.02, target_kl=0.5,
                         kl_horizon=500, eval_every=10)  # adaptive beta: it must move without retracing
    trainer = PPOTrainer(config, reward_fn=word_count_reward("great"), show_progress=False)
    return trainer, trainer.train()


def test_custom_reward_rises(great_run):
    _, result = great_run
    scores = [row["score_mean"] for row in result.history]
    assert np.mean(scores[-5:]) > np.mean(scores[:5]) + 0.2, scores
    assert result.evaluation_after["score_mean"] > result.evaluation_before["score_mean"] + 0.2


def test_history_has_every_metric(great_run):
    _, result = great_run
    expected = {"score_mean", "score_std", "kl", "kl_coef", "entropy", "clipfrac", "approx_kl", "policy_loss",
                "value_loss", "explained_variance", "response_length", "fluency", "seconds_generate",
                "seconds_score", "seconds_optimise", "grad_norm"}
    assert expected <= set(result.history[0])
    assert all(np.isfinite(value) for row in result.history for value in row.values())


def test_run_directory_artifacts(great_run):
    _, result = great_run
    run_dir = result.run_dir
    assert len(read_history(run_dir / "metrics.csv")) == 20
    assert (run_dir / "curves.png").stat().st_size > 0
    assert list((run_dir / "tensorboard").iterdir())
    assert PPOConfig.from_json((run_dir / "config.json").read_text()) == result.config
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-10.index", "ckpt-15.index", "ckpt-20.index"]
    policy = keras.saving.load_model(run_dir / "policy.keras", compile=False)
    probe = {"token_ids": np.array([[0, 5, 7]]), "padding_mask": np.ones([1, 3], bool)}
    np.testing.assert_allclose(policy(probe), result.policy(probe), atol=1e-6)


def test_parameter_report_counts_trainable_frozen_and_bytes(great_run):
    trainer, _ = great_run
    lines = dict(line.split(": ", 1) for line in trainer.parameter_report.splitlines())
    policy_count = trainer.policy.count_params()
    assert lines["policy"] == f"{policy_count:,} trainable, 0 frozen parameters, {policy_count * 4 / 2**20:.1f} MB of weights"
    assert lines["reference"].startswith(f"0 trainable, {policy_count:,} frozen")
    assert lines["value model"].startswith(f"{trainer.value_model.count_params():,} trainable")


def test_compiled_steps_trace_once(great_run):
    trainer, result = great_run
    assert len({row["kl_coef"] for row in result.history}) > 1
    for fn in (trainer.engine._generate, trainer.engine._score, trainer._advantages, trainer.learner.step._step):
        assert fn.experimental_get_tracing_count() == 1, fn


def test_same_seed_same_run_and_chunked_packed_rollouts_with_gradient_checkpointing_give_the_same_update(
        tmp_path, sft_policy_path):
    # The third run samples and scores its 16 rollouts 8 at a time, on packed rows (no padding), and recomputes
    # every block's activations in the backward pass: the same samples, the same update.
    changes = [{}, {}, {"rollout_batch_size": 8, "gradient_checkpointing": True, "padding_free": True}]
    runs = [train(tiny_config(tmp_path / str(i), total_updates=2, batch_size=16, eval_size=16, **change),
                  show_progress=False)
            for i, change in enumerate(changes)]
    strip = [[{k: v for k, v in row.items() if not k.startswith("seconds")} for row in r.history] for r in runs]
    assert strip[0] == strip[1]
    for a, b in zip(runs[0].policy.get_weights(), runs[1].policy.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [run.evaluation_before["samples"] for run in runs[1:]] == [runs[0].evaluation_before["samples"]] * 2
    assert [row["score_mean"] for row in strip[2]] == [row["score_mean"] for row in strip[0]]  # the same texts
    for model in ("policy", "value_model"):
        for a, b in zip(getattr(runs[0], model).get_weights(), getattr(runs[2], model).get_weights()):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_callback_can_stop_training(tmp_path, sft_policy):
    class StopAfterTwo(Callback):
        def on_update_end(self, update, logs):
            self.seen = update
            if update == 2:
                self.trainer.stop_training = True

    callback = StopAfterTwo()
    result = train(tiny_config(tmp_path, total_updates=10), policy=sft_policy, callbacks=[callback],
                   show_progress=False)
    assert len(result.history) == 2 and callback.seen == 2


def test_article_bigram_model_with_value_clipping_early_stop_and_eos_penalty(tmp_path):
    """The article's Embedding -> Dense model through SFT (clip by value, as the article) and PPO."""
    config = tiny_config(tmp_path, total_updates=2, model={"architecture": "bigram"},
                         sft={"epochs": 1, "clip_mode": "value"}, clip_mode="value",
                         max_approx_kl=1e-12, missing_eos_penalty=1.0, response_length=4)
    trainer = PPOTrainer(config, reward_fn=lambda texts: [0.0] * len(texts), show_progress=False)
    result = trainer.train()
    assert type(result.policy).__name__ == "BigramLM"
    assert all(row["ppo_epochs"] == 1 for row in result.history)  # approx-KL bound stops after one epoch
    batch = trainer.rollout(trainer.prompt_ids[:32], trainer.prompt_lengths[:32], tf.constant([1, 2]))
    ended = np.any(batch.experience.responses.token_ids.numpy() == trainer.tokenizer.end_token_id, axis=1)
    np.testing.assert_array_equal(batch.experience.scores.numpy(), np.where(ended, 0.0, -1.0))


def test_default_policy_is_cached(sft_policy_path, sft_policy):
    cached = [p for p in pathlib.Path(sft_policy_path).iterdir() if p.name.startswith("sft-")]
    again = default_policy(PPOConfig(), show_progress=False)  # loads, does not retrain
    assert cached == [p for p in pathlib.Path(sft_policy_path).iterdir() if p.name.startswith("sft-")]
    for a, b in zip(sft_policy.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_non_finite_rollout_skips_the_update_and_keeps_the_weights(tmp_path, sft_policy):
    calls = []

    def overflowing_reward(texts):  # 1e39 is finite in float64 but inf in float32: the first update only
        calls.append(1)
        return [1e39 if len(calls) == 2 else float(len(t)) for t in texts]  # call 1 is the held-out evaluation

    class Snapshot(Callback):
        def on_update_end(self, update, logs):
            if update == 1:
                self.weights = [w.copy() for w in self.trainer.policy.get_weights()]

    initial = [w.copy() for w in sft_policy.get_weights()]
    snapshot = Snapshot()
    with pytest.warns(UserWarning, match="update 1 skipped: non-finite scores"):
        result = train(tiny_config(tmp_path, total_updates=2), reward_fn=overflowing_reward, policy=sft_policy,
                       callbacks=[snapshot], show_progress=False)
    assert result.history[0]["skipped_steps"] == 8 and result.history[1]["skipped_steps"] == 0
    for before, after_skip in zip(initial, snapshot.weights):
        np.testing.assert_array_equal(before, after_skip)
    assert not all(np.array_equal(a, b) for a, b in zip(initial, result.policy.get_weights()))


def test_consecutive_non_finite_updates_stop_the_run(tmp_path, sft_policy):
    config = tiny_config(tmp_path, total_updates=5, max_consecutive_skips=2)
    with pytest.warns(UserWarning), pytest.raises(NonFiniteError, match="2 updates in a row skipped.*scores"):
        train(config, reward_fn=lambda texts: [1e39] * len(texts), policy=sft_policy, show_progress=False)


def test_train_step_skips_a_nan_loss_inside_the_graph(tmp_path, sft_policy):
    trainer = PPOTrainer(tiny_config(tmp_path), policy=sft_policy, show_progress=False)
    batch = trainer.rollout(trainer.prompt_ids[:32], trainer.prompt_lengths[:32], tf.constant([1, 2]))
    advantages = np.ones(batch.experience.logprobs.shape, np.float32)
    advantages[0, 0] = np.nan  # a real (unmasked) token
    minibatch = batch.experience._replace(advantages=tf.constant(advantages),
                                          returns=tf.zeros_like(batch.experience.values))
    before = [v.numpy().copy() for v in trainer.learner.variables]
    assert not bool(trainer.train_step(minibatch)["applied"])
    for old, variable in zip(before, trainer.learner.variables):
        np.testing.assert_array_equal(old, variable.numpy())
    assert int(trainer.optimizer.iterations.numpy()) == 0  # Adam's step and moments untouched too
