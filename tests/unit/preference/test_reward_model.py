"""Reward models: the preference loss, training, save/load, classifier rewards, the three-stage pipeline."""

import json
import warnings

import keras_hub
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_ppo import (ClassifierReward, DataError, OveroptimisationWarning, PPOTrainer, RewardModel, pipeline,
                    read_preferences, train_reward_model)
from tf_ppo.cli import main
from tf_ppo.training.reporting import read_history
from tf_ppo.preference.reward_training import bradley_terry_loss
from tf_ppo.rl.rewards import word_count_reward

TINY_MODEL = {"num_layers": 1, "hidden_dim": 32, "num_heads": 2, "intermediate_dim": 64}


def write_pairs(path, rows, split=True):
    frame = pd.DataFrame(rows, columns=["prompt", "chosen", "rejected"])
    if split:
        frame["split"] = ["train"] * (len(rows) - 2) + ["heldout"] * 2
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("n", [2, 4])
def test_bradley_terry_loss_matches_numpy(n):
    rng = np.random.default_rng(n)
    scores, best = rng.normal(size=(16, n)) * 3, rng.integers(0, n, size=16)
    loss, accuracy = bradley_terry_loss(tf.constant(scores), tf.constant(best, tf.int32))
    log_softmax = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(loss, -log_softmax[np.arange(16), best].mean(), rtol=1e-12)
    assert float(accuracy) == np.mean(scores.argmax(axis=1) == best)
    if n == 2:  # Bradley-Terry: -log sigmoid(r_chosen - r_rejected) with the chosen one in column 0
        chosen_first = np.where(best[:, None] == 0, scores, scores[:, ::-1])
        bradley_terry = np.log1p(np.exp(-(chosen_first[:, 0] - chosen_first[:, 1]))).mean()
        np.testing.assert_allclose(loss, bradley_terry, rtol=1e-12)


@pytest.fixture(scope="module")
def few_pairs_model(tmp_path_factory):
    """A tiny random-init reward model trained on 48 pairs; held out: new openings with seen words."""
    tmp_path = tmp_path_factory.mktemp("rm")
    positive = ["wonderful.", "great fun!", "truly charming.", "lovely and moving."]
    negative = ["boring.", "awful and dull.", "terrible.", "a bit tedious."]
    openings = ["the film was", "i thought the plot was", "the music felt"]
    rows = [(o, p, n) for o in openings for p in positive for n in negative]
    rows += [("overall the ending seemed", "lovely and moving.", "terrible."), ("for me the cast was", "great fun!", "boring.")]
    csv = write_pairs(tmp_path / "pairs.csv", rows)
    config = tiny_config(tmp_path, model=TINY_MODEL,
                         reward={"preferences_csv": str(csv), "epochs": 8, "learning_rate": 1e-3, "clip": 1.5})
    return train_reward_model(config, directory=tmp_path / "reward", show_progress=False)


def test_reward_model_trained_on_a_few_pairs_ranks_held_out_pairs(few_pairs_model):
    assert few_pairs_model.history[-1]["heldout_accuracy"] == 1.0  # the two held-out rows
    assert few_pairs_model.history[-1]["train_loss"] < few_pairs_model.history[0]["train_loss"]
    model = few_pairs_model.model
    raw = model._raw_scores(["after ten minutes the villain was"] * 2, [" truly charming.", " awful and dull."])
    assert raw[0] > raw[1]


def test_normalisation_gives_mean_zero_std_one_then_clips(few_pairs_model):
    model = few_pairs_model.model
    prompts, responses = ["the film was"] * 4 + ["the music felt"] * 4, ["great.", "dull.", "ok.", "fine."] * 2
    model.fit_normalisation(prompts, responses)
    raw = model._raw_scores(prompts, responses)
    normalised = model.gain.numpy() * raw + model.offset.numpy()
    np.testing.assert_allclose([normalised.mean(), normalised.std()], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(model.score_texts(prompts, responses), np.clip(normalised, -1.5, 1.5), atol=1e-5)


def test_save_and_load_give_identical_scores(few_pairs_model, tmp_path):
    model = few_pairs_model.model
    model.gain.assign(0.5)
    model.offset.assign(0.25)
    model.save(tmp_path / "rm.keras")
    loaded = RewardModel.load(tmp_path / "rm.keras")
    prompts, responses = ["the film was", "my friends said the plot was"], ["great fun!", "dull and boring."]
    np.testing.assert_array_equal(loaded.score_texts(prompts, responses), model.score_texts(prompts, responses))
    assert loaded.clip == 1.5 and float(loaded.gain.numpy()) == 0.5
    assert (few_pairs_model.path.parent / "checkpoints" / "history.json").exists()


def test_best_of_n_rows(tmp_path):
    csv = tmp_path / "best_of_3.csv"
    pd.DataFrame({"prompt": ["the film was"] * 8, "response_0": ["dull."] * 8, "response_1": ["great!"] * 8,
                  "response_2": ["long."] * 8, "best": [1] * 8}).to_csv(csv, index=False)
    prompts, responses, best, split = read_preferences(csv)
    assert len(responses[0]) == 3 and best.tolist() == [1] * 8 and split is None
    config = tiny_config(tmp_path, model=TINY_MODEL, reward={"preferences_csv": str(csv), "heldout_fraction": 0.25,
                                                              "epochs": 5, "learning_rate": 1e-3})
    result = train_reward_model(config, show_progress=False)
    assert result.history[-1]["heldout_accuracy"] == 1.0 and result.path is None


@pytest.mark.parametrize("content,message", [
    ("prompt,chosen\na,b\n", r"missing column\(s\) \['rejected'\]"),
    ("prompt,response_0,response_1\na,b,c\n", r"missing column\(s\) \['best'\]"),
    ("prompt,chosen,rejected\n", "no rows"),
    ("prompt,chosen,rejected\na,b,c\nd,,f\n", "column 'chosen': row 1 is empty"),
    ("prompt,chosen,rejected\na,3,c\nd,17,f\n", "column 'chosen': row 0 is int 3; expected text"),
    ("prompt,chosen,rejected\na,b,b\nc,d,d\n", "every row's responses are identical"),
    ("prompt,response_0,response_1,best\na,b,c,0\nd,e,f,2\n", "column 'best': row 1 is 2; expected an index in 0..1"),
])
def test_bad_preference_files_name_file_column_and_row(tmp_path, content, message):
    path = tmp_path / "prefs.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=f"prefs.csv: {message}"):
        read_preferences(path)


def test_bad_preference_file_from_the_cli_is_one_line(tmp_path, capsys):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen\na,b\n")
    # Named before the SFT stage that the reward model starts from (which would take a minute).
    assert main(["reward", "--reward.preferences_csv", str(path), "--run_dir", str(tmp_path / "rm")]) == 2
    error = capsys.readouterr().err
    assert "tf-ppo reward: error:" in error and "prefs.csv" in error


def test_keras_hub_classifier_from_a_local_preset_as_reward(tmp_path):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "great", "awful", "."]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    backbone = keras_hub.models.BertBackbone(len(vocabulary), num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=16)
    keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor).save_to_preset(
        str(tmp_path / "preset"))

    reward = ClassifierReward(tmp_path / "preset", label=1)
    prompts, responses = ["the film was", "the film was", "the film"], ["great.", "awful.", "was great"]
    scores = reward(prompts, responses)
    classifier = keras_hub.models.TextClassifier.from_preset(str(tmp_path / "preset"))
    expected = tf.nn.softmax(classifier.predict(["the film was great.", "the film was awful.", "the film was great"],
                                                verbose=0))[:, 1]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    logits = ClassifierReward(classifier, label=0, output="logit", include_prompt=False)(prompts, responses)
    np.testing.assert_allclose(logits, classifier.predict(responses, verbose=0)[:, 0], atol=1e-6)


@pytest.fixture(scope="module")
def rlhf(tmp_path_factory, sft_policy_path):
    """The three-stage pipeline on the shipped data, from the session's SFT policy, 20 PPO updates."""
    from tf_ppo.sft import default_policy

    config = tiny_config(tmp_path_factory.mktemp("rlhf"), total_updates=20, checkpoint_every=10,
                         reward={"normalise_samples": 128})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return config, pipeline(config, policy=default_policy(config, show_progress=False), show_progress=False)


def test_pipeline_reward_model_accuracy_and_both_scores_rise(rlhf):
    _, result = rlhf
    summary = result.summary
    assert summary["reward_model_heldout_accuracy"] >= 0.9
    assert summary["proxy_after"] > summary["proxy_before"] + 0.3, summary
    assert summary["gold_after"] > summary["gold_before"] + 0.1, summary
    assert summary["heldout_kl"] <= 6.0
    assert json.loads((result.run_dir / "summary.json").read_text()) == summary


def test_pipeline_logs_proxy_gold_and_their_correlation(rlhf):
    _, result = rlhf
    rows = read_history(result.run_dir / "ppo" / "metrics.csv")
    assert len(rows) == 20
    assert all(-1.0 <= row["proxy_gold_correlation"] <= 1.0 for row in rows)
    # The proxy tracks the gold early on; later the policy saturates the reward model (its batch std falls to
    # about 0.1), and the correlation of two nearly constant scores is noise.
    assert np.mean([row["proxy_gold_correlation"] for row in rows[:5]]) > 0.3
    assert (result.run_dir / "ppo" / "curves.png").stat().st_size > 0
    for artefact in ("sft/policy.keras", "reward/reward_model.keras", "config.json"):
        assert (result.run_dir / artefact).exists(), artefact


def test_rerunning_a_finished_pipeline_keeps_its_figures(rlhf, capsys):
    config, first = rlhf
    summary_text = (first.run_dir / "summary.json").read_text()
    again = pipeline(config, show_progress=False)
    assert "already complete at 20/20 updates" in capsys.readouterr().out
    assert again.summary == first.summary and (first.run_dir / "summary.json").read_text() == summary_text
    assert again.summary["gold_before"] != again.summary["gold_after"]


def test_pipeline_resumes_finished_stages_and_continues_ppo(rlhf):
    config, first = rlhf
    reward_file = first.run_dir / "reward" / "reward_model.keras"
    stamp = reward_file.stat().st_mtime_ns
    again = pipeline(config.replace(total_updates=22), show_progress=False)
    assert reward_file.stat().st_mtime_ns == stamp  # loaded, not retrained
    assert again.reward_history == first.reward_history
    assert [row["update"] for row in again.ppo.history] == list(range(1, 23))


def test_overoptimisation_warning_when_proxy_rises_and_gold_falls(tmp_path, sft_policy):
    """A proxy that counts 'great' against a gold score that punishes it: the classic reward hack."""
    great = word_count_reward("great")
    config = tiny_config(tmp_path, total_updates=12, overoptimisation_window=6, learning_rate=1e-3, beta=0.0)
    trainer = PPOTrainer(config, reward_fn=great, policy=sft_policy, show_progress=False,
                         gold_reward_fn=lambda texts: [-s for s in great(texts)])
    with pytest.warns(OveroptimisationWarning, match="proxy reward rose while the gold score fell"):
        result = trainer.train()
    assert result.history[-1]["proxy_gold_correlation"] == pytest.approx(-1.0)


def test_value_model_can_start_from_the_reward_model(few_pairs_model, tmp_path, sft_policy):
    reward_model = few_pairs_model.model
    trainer = PPOTrainer(tiny_config(tmp_path, value_from_reward_model=True), reward_fn=reward_model,
                         policy=sft_policy, show_progress=False)
    for copied, original in zip(trainer.value_model.backbone.weights, reward_model.backbone.weights):
        assert copied is not original
        np.testing.assert_array_equal(copied.numpy(), original.numpy())
    np.testing.assert_array_equal(trainer.value_model.head.kernel.numpy(), reward_model.head.kernel.numpy())
    with pytest.raises(ValueError, match="value_from_reward_model needs a RewardModel as reward_fn, got function"):
        PPOTrainer(tiny_config(tmp_path / "b", value_from_reward_model=True), reward_fn=word_count_reward("great"),
                   policy=sft_policy, show_progress=False)


def char_tokenizer():
    """A GPT-2 tokenizer over single bytes (and one merge): ids unlike the policy's vocabulary's."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    _, characters = bytes_to_unicode()
    vocabulary = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(sorted(characters, reverse=True))}, "th": 257}
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["t h"])


def normalisation_texts(reward_model, policy, prompts, config, monkeypatch):
    """The (prompts, responses) that `normalise_on_policy_samples` hands the reward model to fit on."""
    from tf_ppo.preference.reward_training import normalise_on_policy_samples

    seen = []
    fit = reward_model.fit_normalisation
    monkeypatch.setattr(reward_model, "fit_normalisation", lambda p, r: seen.append((p, r)) or fit(p, r))
    normalise_on_policy_samples(reward_model, policy, prompts, config)
    return [np.asarray(texts).tolist() for texts in seen[0]]


def test_normalisation_samples_the_policy_through_the_policy_tokenizer(tmp_path, sft_policy, monkeypatch):
    """A reward model with another vocabulary: the policy's samples (and the texts scored) are the same."""
    from tf_ppo.models import build_backbone, tokenizer_for

    config = tiny_config(tmp_path, model=TINY_MODEL, reward={"normalise_samples": 8})
    prompts = ["the film was", "i thought the plot was", "the music felt"]
    models = {}
    for name, tokenizer in (("policy's", tokenizer_for(config, sft_policy)), ("bytes", char_tokenizer())):
        models[name] = RewardModel(build_backbone(config.model, tokenizer.vocabulary_size()), tokenizer)
    same_vocabulary = normalisation_texts(models["policy's"], sft_policy, prompts, config, monkeypatch)
    other_vocabulary = normalisation_texts(models["bytes"], sft_policy, prompts, config, monkeypatch)
    assert other_vocabulary == same_vocabulary
    assert same_vocabulary[0] == (prompts * 3)[:8]
    # The byte-level reward model scored those texts with its own tokenizer: mean 0, std 1 after fitting.
    scores = models["bytes"].score_texts(*other_vocabulary)
    np.testing.assert_allclose([np.mean(scores), np.std(scores)], [0.0, 1.0], atol=1e-4)


def test_reward_model_normalised_on_tfds_prompts_offline(tmp_path, sft_policy):
    import tensorflow_datasets as tfds

    from tests.unit.data.test_prompt_sources import REVIEWS, mock_imdb

    rows = [("the film was", "wonderful.", "boring."), ("the music felt", "great fun!", "awful and dull.")] * 5
    config = tiny_config(tmp_path, model=TINY_MODEL, prompts="tfds:imdb_reviews", prompt_tokens_min=2,
                         prompt_tokens_max=6, reward={"preferences_csv": str(write_pairs(tmp_path / "p.csv", rows)),
                                                      "epochs": 1, "normalise_samples": 16})
    with tfds.testing.mock_data(num_examples=len(REVIEWS), as_dataset_fn=mock_imdb):
        result = train_reward_model(config, show_progress=False, policy=sft_policy)
    mean, std = result.normalisation
    assert np.isfinite(mean) and std > 0
    np.testing.assert_allclose(float(result.model.gain.numpy()), 1.0 / std, rtol=1e-5)
