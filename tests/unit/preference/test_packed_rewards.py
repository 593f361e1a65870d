"""A RewardModel on packed rows (`padding_free`): each prompt's shared tokens computed once, no padding; the
scores are the padded ones, with texts of one prompt, of many, cut at `max_length` (so their first tokens
differ), repeated, empty, under mixed precision, and through the rollout's reward call."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from tf_ppo import PPOConfig, RewardModel
from tf_ppo.models import build_backbone, load_tokenizer
from tf_ppo.models.packing import pack_last_tokens
from tf_ppo.rl.rewards import weighted_rewards

CONFIG = PPOConfig(model={"num_layers": 2, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32})
MAX_LENGTH = 16
PROMPTS = ["the film was", "the film was", "the film was", "i thought the plot was", "i thought the plot was",
           "the music felt", "the film was"]
RESPONSES = ["great.", "boring and dull.", "great.", "", "lovely and moving, a joy from the first scene to the last "
             "scene of the long and slow second act.", "terrible.", "a bit tedious."]


def random_reward_model(tokenizer, dtype="float32"):
    """A tiny reward model with weights far from the initialiser's, so positions and context matter."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(dtype)
    try:
        model = RewardModel(build_backbone(CONFIG.model, tokenizer.vocabulary_size()), tokenizer, max_length=MAX_LENGTH)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    model.gain.assign(1.0)
    model.offset.assign(0.0)
    return model


@pytest.fixture(scope="module")
def reward_model():
    return random_reward_model(load_tokenizer(CONFIG.vocabulary, CONFIG.merges))


def test_packed_scores_are_the_padded_ones(reward_model):
    token_ids, padding = reward_model._encode_texts(tf.constant(PROMPTS), tf.constant(RESPONSES))
    assert padding.numpy().sum(1).max() == MAX_LENGTH  # the long text is cut, keeping its end
    padded = reward_model.score_texts(PROMPTS, RESPONSES).numpy()
    packed = reward_model.score_texts(PROMPTS, RESPONSES, padding_free=True).numpy()
    assert np.std(padded) > 0.05  # the scores differ from text to text, so a wrong position would show
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    assert packed[0] == pytest.approx(packed[2], abs=1e-6)  # the same text twice


def test_a_prompts_texts_share_their_common_tokens_in_one_row(reward_model):
    token_ids, padding = reward_model._encode_texts(tf.constant(PROMPTS[:3]), tf.constant(RESPONSES[:3]))
    lengths = padding.numpy().sum(1)
    packed, last = pack_last_tokens(token_ids.numpy(), lengths, np.zeros(3), width=64)
    prefix = (packed["member_ids"][0] == 0).sum() - (packed["group_ids"][0] == 0).sum()
    assert prefix == 4  # the start token and "the film was"
    assert (packed["group_ids"] > 0).sum() == prefix + (lengths - prefix + 1).sum()  # each text once, no padding
    np.testing.assert_array_equal(packed["token_ids"][0, packed["row_sources"][0, last[:, 1]]],
                                  token_ids.numpy()[np.arange(3), lengths - 1])  # each text's last token


def test_mixed_precision_and_an_unpackable_backbone_give_the_padded_scores(reward_model):
    mixed = random_reward_model(reward_model.tokenizer, "mixed_bfloat16")
    np.testing.assert_allclose(mixed.score_texts(PROMPTS, RESPONSES, padding_free=True).numpy(),
                               mixed.score_texts(PROMPTS, RESPONSES).numpy(), atol=0.05)
    gemma = RewardModel(keras_hub.models.GemmaBackbone(  # positions not given per token: scored padded
        vocabulary_size=reward_model.tokenizer.vocabulary_size(), num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=8), reward_model.tokenizer, MAX_LENGTH)
    np.testing.assert_array_equal(gemma.score_texts(PROMPTS, RESPONSES, padding_free=True).numpy(),
                                  gemma.score_texts(PROMPTS, RESPONSES).numpy())


def test_the_rollouts_reward_call_packs_only_when_asked(reward_model, monkeypatch):
    asked = []
    score_texts = reward_model.score_texts
    monkeypatch.setattr(reward_model, "score_texts",
                        lambda prompts, texts, **kwargs: asked.append(kwargs) or score_texts(prompts, texts, **kwargs))
    plain, _, _ = weighted_rewards([reward_model], (1.0,), RESPONSES, PROMPTS, None)
    packed, _, _ = weighted_rewards([reward_model], (1.0,), RESPONSES, PROMPTS, None, padding_free=True)
    assert asked == [{}, {"padding_free": True}]
    np.testing.assert_allclose(packed, plain, atol=1e-5)
