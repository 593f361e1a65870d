"""DPO: pairs and their encoding, log-probs against a float64 reference, one shared short run, resume
(from a mid-epoch checkpoint, and after SIGKILL of a `tf-ppo dpo` process), SIGTERM, the precomputed reference
against a live one, LoRA, mixed precision, export, the CLI and the pipeline's DPO route (its report, config.json).

One finished 2-epoch run on 48 training pairs (a module fixture) serves most tests.
"""

import dataclasses
import importlib
import json
import os
import shutil
import signal

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tf_ppo
from tests.conftest import cli, kill_after
from tf_ppo import DPOConfig, PPOConfig
from tf_ppo.data import DataError
from tf_ppo.cli import main
from tf_ppo.preference.pairs import encode_responses, preference_pairs
from tf_ppo.preference.dpo import DPOTrainer, dpo, preference_settings, sequence_logps
from tf_ppo.models import BigramLM, load_tokenizer
from tf_ppo.training.reporting import read_history

# The pipeline's DPO summary and `tf-ppo dpo`'s: no reward model, no proxy.
DPO_SUMMARY_KEYS = {"method", "implicit_reward_heldout_accuracy", "gold_before", "gold_after", "heldout_kl", "fluency",
                    "updates", "seconds", "run_dir"}
PIPELINE = importlib.import_module("tf_ppo.pipeline")  # the module, which `tf_ppo.pipeline` (the function) hides


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    """48 training and 16 held-out pairs of the shipped preference file."""
    frame = pd.read_csv(PPOConfig().dpo.preferences_csv)
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    pd.concat([frame[frame.split == "train"].head(48), frame[frame.split == "heldout"].head(16)]).to_csv(path,
                                                                                                         index=False)
    return str(path)


def dpo_config(run_dir, pairs_csv, **dpo):
    settings = {"preferences_csv": pairs_csv, "epochs": 2, "batch_size": 16, "checkpoint_every": 2, **dpo}
    return PPOConfig(run_dir=str(run_dir), dpo=settings)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, pairs_csv, sft_policy_path):
    """A finished 6-step run (2 epochs x 3 steps, a checkpoint every 2) with precomputed reference log-probs."""
    config = dpo_config(tmp_path_factory.mktemp("dpo") / "run", pairs_csv)
    return tf_ppo.dpo(config, show_progress=False)


def test_best_of_n_rows_become_a_pair_per_other_response():
    prompts, chosen, rejected = preference_pairs(["p", "q"], [["a", "b", "c"], ["x", "y", "z"]], [2, 0])
    assert list(zip(prompts, chosen, rejected)) == [("p", "c", "a"), ("p", "c", "b"), ("q", "x", "y"),
                                                     ("q", "x", "z")]


def test_the_response_mask_marks_exactly_the_response_tokens():
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    prompts, responses = ["the film was", "i have to say the script was"], ["great.", "lovely and excellent."]
    ids, padding, response = encode_responses(tokenizer, prompts, responses, 24)
    for row, text in enumerate(responses):
        targets = ids[row, 1:][response[row]]  # the next tokens the mask selects
        expected = np.asarray(tokenizer(" " + text)).tolist() + [tokenizer.end_token_id]
        assert targets.tolist() == expected
        assert padding[row].sum() == 1 + len(np.asarray(tokenizer(prompts[row]))) + len(expected)
    cut_ids, cut_padding, cut_response = encode_responses(tokenizer, prompts, responses, 5)  # cut inside the response
    assert cut_padding.all() and cut_response.sum(axis=1).tolist() == [1, 0]


def test_sequence_logps_match_a_float64_reference():
    policy = BigramLM(vocabulary_size=7, hidden_dim=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=(3, 5)).astype(np.int32)
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)  # last row: no response at all
    response = np.array([[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    logps, counts = sequence_logps(policy, tf.constant(ids), tf.constant(padding), tf.constant(response))
    logits = policy({"token_ids": tf.constant(ids), "padding_mask": tf.constant(padding)}).numpy().astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    token_logps = np.take_along_axis(log_softmax[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(logps.numpy(), (token_logps * response).sum(1), rtol=1e-6, atol=1e-6)
    assert counts.numpy().tolist() == [3, 1, 0] and logps.numpy()[2] == 0.0


def test_config_json_holds_the_sections_dpo_read_and_the_provenance(finished):
    recorded = json.loads((finished.run_dir / "config.json").read_text())
    assert {"sft", "dpo", "provenance"} <= set(recorded) and "reward" not in recorded
    assert PPOConfig.from_file(finished.run_dir / "config.json") == finished.config


def test_a_finished_run_holds_no_reference_and_logs_every_metric(finished):
    assert "reference: none (log-probs precomputed once" in finished.parameter_report
    assert len(finished.steps) == 6 and [row["epoch"] for row in finished.history] == [1, 2]
    keys = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "grad_norm"}
    assert keys <= set(finished.steps[0])
    assert {"heldout_accuracy", "heldout_loss", "heldout_margin"} <= set(finished.steps[2])  # the epoch's last step
    # The first step starts at the reference: every log-ratio is 0, so the loss is log 2 and the margins 0.
    first = finished.steps[0]
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-5) and abs(first["rewards/margins"]) < 1e-5
    assert finished.history[-1]["heldout_loss"] < np.log(2) and finished.history[-1]["heldout_accuracy"] >= 0.75
    run_dir = finished.run_dir
    for name in ("policy.keras", "curves.png", "evaluation.json", "reference_logps.npz", "preset/config.json"):
        assert (run_dir / name).exists(), name
    assert any((run_dir / "tensorboard").iterdir())


def test_rerunning_a_finished_run_changes_nothing_and_returns_the_trained_policy(finished):
    before = (finished.run_dir / "metrics.csv").read_text()
    again = tf_ppo.dpo(finished.config, resume=True, show_progress=False)
    assert again.history == finished.history and (finished.run_dir / "metrics.csv").read_text() == before
    for got, expected in zip(again.policy.get_weights(), finished.policy.get_weights()):  # not the starting one
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_resume_from_a_mid_epoch_checkpoint_ends_at_the_same_weights(finished, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(finished.run_dir, run_dir)
    for name in ("policy.keras", "evaluation.json", "curves.png"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "preset")
    for part in run_dir.glob("checkpoints/ckpt-6.*"):  # as if killed during step 6: ckpt-4 is mid-epoch 2
        part.unlink()
    state = tf.train.get_checkpoint_state(str(run_dir / "checkpoints"))
    del state.all_model_checkpoint_paths[1:], state.all_model_checkpoint_timestamps[1:]
    state.model_checkpoint_path = state.all_model_checkpoint_paths[0]
    (run_dir / "checkpoints" / "checkpoint").write_text(str(state))
    resumed = tf_ppo.dpo(finished.config.replace(run_dir=str(run_dir)), resume=True, show_progress=False)
    for got, expected in zip(resumed.policy.get_weights(), finished.policy.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [row["step"] for row in resumed.steps] == [1, 2, 3, 4, 5, 6]
    assert resumed.history[-1]["train_loss"] == pytest.approx(finished.history[-1]["train_loss"], abs=1e-6)


def test_sigkill_mid_run_then_cli_resume_ends_at_the_same_weights(finished, tmp_path, pairs_csv):
    run_dir = tmp_path / "killed"
    flags = ["--dpo.preferences_csv", pairs_csv, "--dpo.epochs", "2", "--dpo.batch_size", "16"]
    process = cli("dpo", "--run_dir", str(run_dir), *flags, "--dpo.checkpoint_every", "1")
    delay = kill_after(process, run_dir / "checkpoints" / "ckpt-2.index", 0.2)  # somewhere in steps 3 to 6
    assert not (run_dir / "evaluation.json").exists(), f"the run finished before the kill (delay {delay:.2f} s)"

    resumed = cli("dpo", "--resume", str(run_dir), "--eval_size", "16", "--batch_size", "16")  # judged on 16 prompts
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert [row["step"] for row in read_history(run_dir / "metrics.csv")] == [1, 2, 3, 4, 5, 6]
    policy = keras.saving.load_model(run_dir / "policy.keras", compile=False)
    for got, expected in zip(policy.get_weights(), finished.policy.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_live_reference_trains_to_the_same_weights_as_precomputed_log_probs(finished, tmp_path, pairs_csv):
    settings = dataclasses.replace(finished.config.dpo, precompute_ref_log_probs=False)
    live = tf_ppo.dpo(finished.config.replace(run_dir=str(tmp_path / "live"), dpo=settings), show_progress=False)
    assert "reference: " in live.parameter_report and "none (" not in live.parameter_report
    for got, expected in zip(live.policy.get_weights(), finished.policy.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_sigterm_stops_after_the_step_in_flight_with_a_checkpoint(tmp_path, pairs_csv, sft_policy_path):
    config = dpo_config(tmp_path / "run", pairs_csv, checkpoint_every=100)
    trainer = DPOTrainer(config, show_progress=False)
    step = trainer.loop.train_step

    def step_then_preempt(batch):  # the signal arrives while step 2 runs
        if int(trainer.loop.step.numpy()) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(batch)

    trainer.loop.train_step = step_then_preempt
    result = trainer.train()
    assert result.preempted and len(result.steps) == 2
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-2")
    assert not (tmp_path / "run" / "evaluation.json").exists()
    finished = tf_ppo.dpo(config, resume=True, show_progress=False)
    assert len(finished.steps) == 6 and not finished.preempted


def test_lora_trains_only_adapters_against_the_adapters_off_reference(tmp_path, pairs_csv, sft_policy_path):
    config = dpo_config(tmp_path / "lora", pairs_csv, epochs=1, precompute_ref_log_probs=False).replace(lora_rank=2,
                                                                                                       dtype="mixed_bfloat16")
    trainer = DPOTrainer(config, show_progress=False)
    assert type(trainer.reference).__name__ == "AdaptersOff"
    frozen = [v.numpy() for v in trainer.policy.non_trainable_weights]
    result = trainer.train()
    assert all(np.isfinite(row["loss"]) for row in result.steps)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(frozen, result.policy.non_trainable_weights))
    assert (result.run_dir / "adapters.lora.h5").is_file()


def test_float16_uses_loss_scaling_and_stays_finite(tmp_path, pairs_csv, sft_policy_path):
    config = dpo_config(tmp_path / "fp16", pairs_csv, epochs=1).replace(dtype="mixed_float16")
    trainer = DPOTrainer(config, show_progress=False)
    assert isinstance(trainer.loop.optimizer, keras.optimizers.LossScaleOptimizer)
    result = trainer.train()
    assert all(np.isfinite(row["loss"]) for row in result.steps) and result.history[-1]["heldout_loss"] < np.log(2)


def test_the_finished_run_exports_a_saved_model_that_generates(finished, tmp_path):
    export_dir = tf_ppo.export(finished.run_dir, tmp_path / "exported")
    served = tf.saved_model.load(str(export_dir))
    texts = served.signatures["serving_default"](prompts=tf.constant(["the film was"]))
    assert texts and all(value.shape[0] == 1 for value in texts.values())


def test_cli_names_a_bad_preference_file(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,chosen\nthe film was,great.\n")
    assert main(["dpo", "--dpo.preferences_csv", str(bad), "--run_dir", str(tmp_path / "run")]) == 2
    assert f"{bad}: missing column(s) ['rejected']" in capsys.readouterr().err


def test_bad_dpo_settings_name_the_field():
    with pytest.raises(tf_ppo.ConfigError, match="DPOConfig.loss_type"):
        PPOConfig(dpo={"loss_type": "kto"})
    with pytest.raises(tf_ppo.ConfigError, match="DPOConfig.label_smoothing"):
        PPOConfig(dpo={"label_smoothing": 0.5})
    with pytest.raises(tf_ppo.ConfigError, match="DPOConfig.max_length 80 exceeds the model's context"):
        DPOTrainer(PPOConfig(dpo={"max_length": 80}))
    config = PPOConfig(dpo={"beta": 0.3, "precompute_ref_log_probs": False})
    assert PPOConfig.from_json(config.to_json()) == config


@pytest.fixture(scope="module")
def dpo_pipeline(tmp_path_factory, pairs_csv, sft_policy_path):
    """`pipeline(method="dpo")` given no policy, where training an SFT policy fails the test: the cache's must do."""
    config = dpo_config(tmp_path_factory.mktemp("pipeline") / "run", pairs_csv, epochs=1).replace(eval_size=32,
                                                                                                   batch_size=32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PIPELINE, "sft", lambda *args, **kwargs: pytest.fail("the pipeline trained SFT again"))
        return tf_ppo.pipeline(config, show_progress=False, method="dpo")


def test_pipeline_dpo_starts_from_the_cached_sft_policy(dpo_pipeline):
    saved = keras.saving.load_model(dpo_pipeline.run_dir / "sft" / "policy.keras", compile=False)
    for got, cached in zip(saved.get_weights(), tf_ppo.default_policy(PPOConfig(), show_progress=False).get_weights()):
        np.testing.assert_array_equal(got, cached)


def test_pipeline_dpo_summary_has_the_gold_score_and_kl_and_no_reward_model(dpo_pipeline):
    summary = json.loads((dpo_pipeline.run_dir / "summary.json").read_text())
    assert set(summary) == DPO_SUMMARY_KEYS and summary["method"] == "dpo" and summary == dpo_pipeline.summary
    assert summary["updates"] == 3 and summary["heldout_kl"] > 0 and summary["gold_after"] is not None
    assert summary["implicit_reward_heldout_accuracy"] == dpo_pipeline.reward_history[-1]["heldout_accuracy"]
    recorded = json.loads((dpo_pipeline.run_dir / "config.json").read_text())
    assert {"sft", "dpo", "provenance"} <= set(recorded) and "reward" not in recorded


def test_the_dpo_command_reports_what_the_pipeline_does(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished.run_dir, run_dir)  # a finished run: no training, only the judging
    assert main(["dpo", "--resume", str(run_dir), "--eval_size", "16", "--batch_size", "16"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary) == DPO_SUMMARY_KEYS and json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["heldout_kl"] > 0 and None not in (summary["gold_before"], summary["gold_after"])
    assert "Held-out completions, before DPO -> after DPO:" in out and "KL to the starting policy" in out



def test_pipeline_dpo_command_runs_cdpo_unless_a_flag_says_otherwise():
    from tf_ppo.cli import _config_of, build_parser, parse_args
    settings = _config_of(parse_args(build_parser(), ["pipeline", "--method", "dpo"])).dpo
    assert (settings.label_smoothing, settings.beta) == (0.1, 0.5)
    flagged = parse_args(build_parser(), ["pipeline", "--method", "dpo", "--dpo.label_smoothing", "0"])
    assert _config_of(flagged).dpo.label_smoothing == 0.0
    assert _config_of(parse_args(build_parser(), ["pipeline"])).dpo.label_smoothing == 0.0


def test_a_dpo_config_alone_reads_its_own_preference_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,chosen\nthe film was,great.\n")
    with pytest.raises(DataError, match=rf"{bad}: missing column\(s\) \['rejected'\]"):  # before any model
        dpo(DPOConfig(preferences_csv=str(bad)))


def test_a_config_that_sets_only_the_reward_models_file_trains_dpo_on_it_and_warns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,chosen\nthe film was,great.\n")
    config = PPOConfig(reward={"preferences_csv": str(bad)})
    with pytest.warns(FutureWarning, match="DPO reads dpo.preferences_csv; reward.preferences_csv=.* is used"), \
            pytest.raises(DataError, match=str(bad)):
        dpo(config)
    assert preference_settings(config.replace(dpo={"preferences_csv": str(tmp_path / "own.csv")})
                               ).preferences_csv == str(tmp_path / "own.csv")  # its own file, when set, wins
