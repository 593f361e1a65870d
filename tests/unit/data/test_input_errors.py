"""Config validation, data files and reward functions: clear errors that name the culprit."""

import pandas as pd
import pytest

from tf_ppo import DataError, ModelConfig, PPOConfig, RewardError
from tf_ppo.data import encode_prompts, load_prompts, read_prompt_csv
from tf_ppo.models import load_tokenizer
from tf_ppo.rl.rewards import compute_scores, corpus_bigrams, is_fluent, word_count_reward
from tf_ppo.tasks.sentiment import sentiment_reward


def test_config_round_trips_through_json(tmp_path):
    config = PPOConfig(beta=0.05, target_kl=3.0, model=ModelConfig(num_layers=3), sft={"epochs": 2})
    assert PPOConfig.from_json(config.to_json()) == config
    assert config.sft.epochs == 2
    preset = tmp_path / "presets" / "mine"  # a preset directory must exist
    preset.mkdir(parents=True)
    with_preset = PPOConfig(model=str(preset), lora_rank=8, dtype="mixed_bfloat16", prompts="tfds:imdb_reviews")
    assert with_preset.model.preset == str(preset)
    assert PPOConfig.from_json(with_preset.to_json()) == with_preset


@pytest.mark.parametrize("changes,field", [
    ({"learning_rate": 0}, "learning_rate"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"batch_size": 10, "num_mini_batches": 4}, "batch_size"),
    ({"response_length": 100}, "response_length"),
    ({"gamma": 1.5}, "gamma"),
    ({"kl_estimator": "k9"}, "kl_estimator"),
    ({"model": {"hidden_dim": 30, "num_heads": 4}}, "hidden_dim"),
    ({"sft": {"clip_mode": "norm"}}, "clip_mode"),
    ({"dtype": "float16"}, "dtype"),
    ({"lora_rank": -1}, "lora_rank"),
    ({"lora_rank": 4, "model": {"architecture": "bigram"}}, "lora_rank"),
    ({"prompt_tokens_min": 4, "prompt_tokens_max": 2}, "prompt_tokens_max"),
    ({"prompt_tokens_min": 2}, "prompt_tokens_max"),
    ({"model": 3}, "preset"),
])
def test_invalid_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        PPOConfig().replace(**changes)


def test_unknown_json_field_is_named():
    with pytest.raises(ValueError, match="kl_cof"):
        PPOConfig.from_json('{"kl_cof": 0.1}')


def test_csv_errors_name_file_column_and_row(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": ["a"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"prompts.csv: missing column\(s\) \['input_text'\]"):
        read_prompt_csv(path)
    path.write_text("input_text,target\nthe film was,great.\n,great.\n")
    with pytest.raises(DataError, match="column 'input_text': row 1 is empty"):
        read_prompt_csv(path)
    path.write_text("input_text,target\n")
    with pytest.raises(DataError, match="no rows"):
        read_prompt_csv(path)
    with pytest.raises(DataError, match="file not found"):
        read_prompt_csv(tmp_path / "missing.csv")


def test_too_long_prompt_names_the_row():
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    with pytest.raises(DataError, match="prompt row 1 has 8 tokens"):
        encode_prompts(tokenizer, ["the film", "i thought the film was really quite"], 6)
    with pytest.raises(DataError, match="row 0 is int"):
        encode_prompts(tokenizer, [3], 6)


def test_reward_errors():
    with pytest.raises(RewardError, match="raised ZeroDivisionError"):
        compute_scores(lambda texts: [1 / 0], ["a"])
    with pytest.raises(RewardError, match=r"shape \(1,\) for 2 texts"):
        compute_scores(lambda texts: [1.0], ["a", "b"])
    with pytest.raises(RewardError, match="must return numbers"):
        compute_scores(lambda texts: ["good"] * len(texts), ["a"])
    with pytest.raises(RewardError, match=r"shape \(2, 1\)"):
        compute_scores(lambda prompts, texts: [[0.0]] * len(texts), ["a", "b"], ["p", "q"])


def test_default_and_word_rewards():
    positive, negative = sentiment_reward(["truly wonderful and i loved every minute of it.", "awful and boring."])
    assert positive > 0.5 and negative < -0.5
    assert word_count_reward("Great")(["Great great, GREAT.", "greatly"]) == [3.0, 0.0]


def test_fluency_uses_corpus_bigrams():
    bigrams = corpus_bigrams(PPOConfig().fluency_corpus)
    assert is_fluent("i thought the acting was surprisingly charming.", bigrams)
    assert not is_fluent("the the acting charming was.", bigrams)


def test_prompts_from_a_dataframe_or_series():
    frame = pd.DataFrame({"input_text": ["the film was", "i thought"], "target": ["great.", "it was fine."]})
    assert load_prompts(frame) == ["the film was", "i thought"]  # not its column names
    assert load_prompts(frame["target"]) == ["great.", "it was fine."]
    assert load_prompts(pd.Series(["a plot"])) == ["a plot"]


def test_unusable_dataframe_or_series_prompts_are_named():
    with pytest.raises(DataError, match=r"prompt DataFrame has no 'input_text' column; found \['prompt', 'label'\]"):
        load_prompts(pd.DataFrame({"prompt": ["a"], "label": [1]}))
    with pytest.raises(DataError, match="prompt DataFrame: column 'input_text': row 1 is .*; expected text"):
        load_prompts(pd.DataFrame({"input_text": ["a", None]}))
    with pytest.raises(DataError, match="prompt DataFrame: column 'input_text': no rows"):
        load_prompts(pd.DataFrame({"input_text": []}))
    with pytest.raises(DataError, match="prompt Series 'review': row 0 is empty"):
        load_prompts(pd.Series(["  "], name="review"))
