"""What a new user meets first: a complete keras-hub policy, Keras callbacks, figures that are never silently wrong."""

import pathlib

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_ppo import Callback, PPOTrainer, export, train
from tf_ppo.export import load_run
from tf_ppo.rl.logs import DriftWatch

PROBE = {"token_ids": np.array([[762, 5, 7, 9]]), "padding_mask": np.ones([1, 4], bool)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sft_policy_path):
    """A finished 2-update run, with Keras' CSVLogger attached."""
    tmp_path = tmp_path_factory.mktemp("finished")
    csv_path = tmp_path / "keras_log.csv"
    result = train(tiny_config(tmp_path, total_updates=2), callbacks=[keras.callbacks.CSVLogger(str(csv_path))],
                   show_progress=False)
    return result, csv_path


def test_the_policy_is_a_complete_keras_hub_causal_lm(finished, tmp_path):
    result, _ = finished
    completion = result.policy.generate("the movie was", max_length=24)
    assert completion.startswith("the movie was") and len(completion.split()) > 3, completion
    result.policy.save_to_preset(str(tmp_path / "preset"))
    loaded = keras_hub.models.CausalLM.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(loaded(PROBE), result.policy(PROBE), atol=1e-6)
    again = train(result.config.replace(model=str(tmp_path / "preset"), total_updates=1, run_dir=str(tmp_path / "r")),
                  show_progress=False)
    assert len(again.history) == 1
    # From the result (a bare policy's export: tests/integration/test_export.py).
    assert (export(result, tmp_path / "from_result") / "saved_model.pb").is_file()


def test_keras_csv_logger_writes_one_row_per_update(finished):
    _, csv_path = finished
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 3 and "score_mean" in rows[0].split(",") and rows[1].startswith("0,")


def test_rerunning_a_finished_run_changes_nothing(finished, capsys):
    result, _ = finished
    metrics = (result.run_dir / "metrics.csv").read_bytes()
    again = train(result.config, resume=True, show_progress=False)
    assert "already complete at 2/2 updates" in capsys.readouterr().out
    assert again.evaluation_before == result.evaluation_before
    assert again.evaluation_after == result.evaluation_after
    assert again.evaluation_before["score_mean"] != again.evaluation_after["score_mean"]
    assert (result.run_dir / "metrics.csv").read_bytes() == metrics


def test_early_stopping_stops_when_the_score_stops_improving_and_says_so(tmp_path, sft_policy_path, capsys):
    stopper = keras.callbacks.EarlyStopping(monitor="score_mean", mode="max", patience=1)
    result = train(tiny_config(tmp_path, total_updates=10), reward_fn=lambda texts: [0.0] * len(texts),
                   callbacks=[stopper], show_progress=False)
    assert len(result.history) == 2 and stopper.stopped_epoch == 1
    assert ("update 2: EarlyStopping (score_mean did not improve for 1 updates; best 0 at update 1) stopped the "
            "run") in capsys.readouterr().out


def test_terminate_on_nan_stops_after_an_update_with_no_applied_step(tmp_path, sft_policy_path):
    with pytest.warns(UserWarning, match="update 1 skipped"):
        result = train(tiny_config(tmp_path, total_updates=5), reward_fn=lambda texts: [1e39] * len(texts),
                       callbacks=[keras.callbacks.TerminateOnNaN()], show_progress=False)
    assert len(result.history) == 1 and np.isnan(result.history[0]["loss"])


def test_a_plain_function_as_callback_fails_before_anything_is_built(tmp_path):
    with pytest.raises(TypeError, match=r"callbacks\[1\] is a function"):
        PPOTrainer(tiny_config(tmp_path), callbacks=[Callback(), lambda update, logs: None])


def test_a_skipped_rollout_does_not_move_the_adaptive_kl_coefficient(tmp_path, sft_policy):
    trainer = PPOTrainer(tiny_config(tmp_path, total_updates=3, target_kl=1.0, beta=0.1), policy=sft_policy,
                         show_progress=False)
    assert [type(callback) for callback in trainer.callbacks.ours] == [DriftWatch]  # every run watches its KL
    poisoned = trainer.reference.weights[0]
    kept = poisoned.numpy().copy()
    poisoned.assign(np.full_like(kept, np.nan))  # the reference's log-probs, and so the KL, are NaN

    class HealAfterFirstUpdate(Callback):
        def on_update_end(self, update, logs):
            if update == 1:
                poisoned.assign(kept)

    trainer.callbacks.append(HealAfterFirstUpdate())
    with pytest.warns(UserWarning, match="update 1 skipped: non-finite ref_logprobs"):
        result = trainer.train()
    assert [row["kl_coef"] for row in result.history[:2]] == [0.1, 0.1]
    assert result.history[1]["skipped_steps"] == 0 and np.isfinite(result.history[2]["kl_coef"])


def test_loss_metrics_average_the_applied_steps_only(tmp_path, sft_policy):
    trainer = PPOTrainer(tiny_config(tmp_path), policy=sft_policy, show_progress=False)
    batch = trainer.rollout(trainer.prompt_ids[:32], trainer.prompt_lengths[:32], tf.constant([1, 2]))
    experience, _ = trainer.advantages(batch.experience, tf.constant(0.1))
    advantages = experience.advantages.numpy()
    advantages[0] = 3e38  # finite, but the minibatch holding row 0 overflows to an infinite loss
    losses = trainer.optimise(experience._replace(advantages=tf.constant(advantages)), update=1)
    assert losses["skipped_steps"] == 4 and losses["applied_steps"] == 4  # one of the two minibatches per epoch
    assert all(np.isfinite(losses[key]) for key in ("loss", "policy_loss", "value_loss", "approx_kl"))


def test_a_small_evaluation_reuses_the_compiled_rollout(tmp_path, sft_policy):
    trainer = PPOTrainer(tiny_config(tmp_path, eval_size=8), policy=sft_policy, show_progress=False)
    trainer.rollout(trainer.prompt_ids[:32], trainer.prompt_lengths[:32], tf.constant([1, 2]))
    evaluation = trainer.evaluate()
    assert len(evaluation["samples"]) == 8
    assert trainer.engine._generate.experimental_get_tracing_count() == 1
    assert trainer.engine._score.experimental_get_tracing_count() == 1


def test_prompt_texts_keep_their_first_token_when_the_tokenizer_has_no_start_token(tmp_path, sft_policy):
    sft_policy.preprocessor.tokenizer.start_token_id = None  # as Qwen's tokenizer: no start token
    trainer = PPOTrainer(tiny_config(tmp_path), policy=sft_policy, show_progress=False)
    prompts = ["the film was", "i thought the plot was"] * 16
    token_ids, lengths = trainer.engine.encode(prompts)
    assert lengths[0] == len(trainer.tokenizer("the film was"))  # no start token was added
    batch = trainer.rollout(token_ids, lengths, tf.constant([1, 2]))
    assert batch.prompt_texts == prompts


def test_evaluation_pairs_each_sample_with_the_prompt_prefix_it_continued(tmp_path, sft_policy):
    trainer = PPOTrainer(tiny_config(tmp_path, prompt_tokens_min=2, prompt_tokens_max=3), policy=sft_policy,
                         show_progress=False)
    samples = trainer.evaluate()["samples"]
    for (prompt, _), full_prompt in zip(samples, trainer.evaluator.prompts):
        assert full_prompt.startswith(prompt) and 2 <= len(trainer.tokenizer(prompt)) <= 3, (prompt, full_prompt)
    assert any(prompt != full for (prompt, _), full in zip(samples, trainer.evaluator.prompts))


def test_export_of_an_unfinished_lora_run_keeps_its_adapters(tmp_path, sft_policy_path):
    result = train(tiny_config(tmp_path, total_updates=2, lora_rank=2, learning_rate=1e-2), show_progress=False)
    for name in ("policy.keras", "value_model.keras", "evaluation_after.json"):
        (result.run_dir / name).unlink()  # as if the run had stopped after its last checkpoint
    policy, _, _, _ = load_run(result.run_dir)
    np.testing.assert_allclose(policy(PROBE), result.policy(PROBE), atol=1e-5)
    assert (export(result.run_dir, tmp_path / "exported") / "saved_model.pb").is_file()
    pathlib.Path(result.run_dir / "config.json").write_text(result.config.replace(lora_rank=4).to_json())
    with pytest.raises(ValueError, match="does not match"):
        load_run(result.run_dir)  # rank-4 adapters cannot take rank-2 values: fail, never drop them


def test_an_offline_preset_name_is_one_config_error(monkeypatch):
    import requests

    from tf_ppo import ConfigError, PPOConfig
    from tf_ppo.models import policy_from_config

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'www.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.CausalLM, "from_preset", offline)  # the network, not the code under test
    with pytest.raises(ConfigError, match="could not download preset 'gpt2_base_en' \\(no network\\?\\)"):
        policy_from_config(PPOConfig(model="gpt2_base_en"), tokenizer=None)
