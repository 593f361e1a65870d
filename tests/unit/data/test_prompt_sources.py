"""Prompt sources: tensorflow-datasets (mocked offline), tf.data, CSV, lists; leading-token prompts."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.conftest import tiny_config
from tf_ppo.config import PPOConfig
from tf_ppo.data import DataError, load_prompts
from tf_ppo.generation.responses import detokenize
from tf_ppo.rl.trainer import PPOTrainer

# Real-looking reviews: the shipped sentences, with IMDB's "<br />" line breaks in some.
SENTENCES = pd.read_csv(PPOConfig().eval_prompts_csv)
REVIEWS = [f"{prompt} {target}" + (" <br /><br />the end." if row % 3 == 0 else "")
           for row, (prompt, target) in enumerate(zip(SENTENCES.input_text, SENTENCES.target))][:256]


def mock_imdb(self, *args, **kwargs):
    """Stands in for `DatasetBuilder._as_dataset`: what `tfds.load("imdb_reviews")` yields, offline."""
    return tf.data.Dataset.from_tensor_slices({"text": REVIEWS, "label": [row % 2 for row in range(len(REVIEWS))]})


def test_every_prompt_source_gives_the_same_texts(tmp_path):
    csv = tmp_path / "prompts.csv"
    pd.DataFrame({"input_text": REVIEWS[:5]}).to_csv(csv, index=False)
    with tfds.testing.mock_data(num_examples=len(REVIEWS), as_dataset_fn=mock_imdb):
        from_tfds = load_prompts("tfds:imdb_reviews:train")
    assert from_tfds == REVIEWS
    assert load_prompts(tf.data.Dataset.from_tensor_slices(REVIEWS[:5])) == REVIEWS[:5]
    assert load_prompts(str(csv)) == load_prompts(REVIEWS[:5]) == REVIEWS[:5]


def test_unusable_datasets_are_named_in_the_error():
    with pytest.raises(DataError, match=r"my dataset: no 'text' feature .* \['label', 'review'\]"):
        from tf_ppo.data import _dataset_texts
        _dataset_texts(tf.data.Dataset.from_tensor_slices({"review": ["a"], "label": [1]}), "my dataset")
    with pytest.raises(DataError, match="expected one string per element"):
        load_prompts(tf.data.Dataset.from_tensor_slices([1, 2]))


def test_ppo_on_the_first_tokens_of_imdb_reviews_from_tfds(tmp_path, sft_policy):
    config = tiny_config(tmp_path, prompts="tfds:imdb_reviews", prompt_tokens_min=2, prompt_tokens_max=6,
                         total_updates=2)
    with tfds.testing.mock_data(num_examples=len(REVIEWS), as_dataset_fn=mock_imdb):
        trainer = PPOTrainer(config, policy=sft_policy, show_progress=False)
    lengths = trainer.prompt_lengths - 1  # without the start token
    assert len(lengths) == len(REVIEWS) and lengths.min() == 2 and lengths.max() == 6
    prompts = tf.RaggedTensor.from_tensor(trainer.prompt_ids[:1, 1:], lengths=lengths[:1])
    first = detokenize(trainer.tokenizer, prompts)[0]
    assert REVIEWS[0].startswith(first)
    result = trainer.train()
    assert len(result.history) == 2
    assert all(np.isfinite(row[key]) for row in result.history for key in ("policy_loss", "value_loss", "score_mean"))
