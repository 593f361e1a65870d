"""Gradient checkpointing: the same loss and gradients, the blocks really recomputed, the config's checks."""

import numpy as np
import pytest
import tensorflow as tf

from tf_ppo import ConfigError, PPOConfig
from tf_ppo.config import ModelConfig
from tf_ppo.models import build_backbone, build_policy, build_value_model, load_tokenizer
from tf_ppo.models.remat import recomputed_blocks, transformer_blocks
from tf_ppo.preference.reward_model import RewardModel
from tf_ppo.models.forward import response_logits
from tf_ppo.preference.shared_prompt import pack_pairs, packed_pair_logps
from tf_ppo.sft import next_token_loss

TINY = ModelConfig(num_layers=2, hidden_dim=32, num_heads=2)
VOCABULARY = 60
SEQUENCE_IDS = tf.random.stateless_uniform([4, 12], [1, 2], 1, VOCABULARY, tf.int32)
POSITIONS = tf.tile(tf.range(6, 12)[None], [4, 1])  # [batch, R]: the last 6 tokens are the response
MASK = tf.ones_like(SEQUENCE_IDS, tf.bool)


def ppo_like_loss(policy, value_model):
    """Log-probs and values at the response positions, as the PPO step computes them."""
    logits = response_logits(policy, SEQUENCE_IDS, POSITIONS)  # [batch, R, V]
    logprobs = tf.gather(tf.nn.log_softmax(logits), tf.gather(SEQUENCE_IDS, POSITIONS, batch_dims=1), batch_dims=2)
    values = response_logits(value_model, SEQUENCE_IDS, POSITIONS)  # [batch, R]
    return -tf.reduce_mean(logprobs) + tf.reduce_mean(tf.square(values - 1.0))


def gradients_both_ways(loss_fn, models, jit_compile):
    """`[(loss, gradients, block calls traced)]` without and with checkpointing, each in its own tf.function."""
    variables = [v for model in models for v in model.trainable_variables]
    block_class = type(transformer_blocks(models[0])[0])
    original_call, traced = block_class.call, []

    def counting_call(self, *args, **kwargs):  # counts traces of every block's forward (class level)
        traced.append(self.name)
        return original_call(self, *args, **kwargs)

    results = []
    block_class.call = counting_call
    try:
        for enabled in (False, True):
            traced.clear()

            def step():
                with recomputed_blocks(*models, enabled=enabled):
                    with tf.GradientTape() as tape:
                        loss = loss_fn()
                    return loss, tape.gradient(loss, variables)

            loss, gradients = tf.function(step, jit_compile=jit_compile)()
            results.append((float(loss), [tf.convert_to_tensor(g).numpy() for g in gradients], len(traced)))
    finally:
        block_class.call = original_call
    return results


@pytest.mark.parametrize("jit_compile", [False, True])
def test_policy_and_value_model_get_the_same_loss_and_gradients_with_each_block_recomputed(jit_compile):
    policy = build_policy(TINY, VOCABULARY)
    value_model = build_value_model(TINY, policy, VOCABULARY)
    (loss, gradients, calls), (loss_remat, gradients_remat, calls_remat) = gradients_both_ways(
        lambda: ppo_like_loss(policy, value_model), [policy, value_model], jit_compile)
    assert calls == 4 and calls_remat == 8  # 2 blocks x 2 models, each traced again for the backward pass
    assert loss_remat == pytest.approx(loss, abs=1e-5)
    for plain, recomputed in zip(gradients, gradients_remat):
        np.testing.assert_allclose(recomputed, plain, rtol=0, atol=1e-5)
    assert not any("call" in vars(block) for block in transformer_blocks(policy))  # the class's method again


def test_sft_and_reward_model_losses_get_the_same_gradients_with_each_block_recomputed():
    policy = build_policy(TINY, VOCABULARY)
    sft_runs = gradients_both_ways(lambda: next_token_loss(policy, SEQUENCE_IDS, MASK, training=True), [policy],
                                   jit_compile=False)
    config = PPOConfig()
    reward_model = RewardModel(build_backbone(TINY, VOCABULARY), load_tokenizer(config.vocabulary, config.merges))
    reward_runs = gradients_both_ways(
        lambda: tf.reduce_sum(reward_model({"token_ids": SEQUENCE_IDS, "padding_mask": MASK})), [reward_model],
        jit_compile=False)
    for (loss, gradients, calls), (loss_remat, gradients_remat, calls_remat) in (sft_runs, reward_runs):
        assert (calls, calls_remat) == (2, 4)
        assert loss_remat == pytest.approx(loss, abs=1e-5)
        for plain, recomputed in zip(gradients, gradients_remat):
            np.testing.assert_allclose(recomputed, plain, rtol=1e-6, atol=1e-5)  # float32: entries reach ~30


def test_packed_dpo_pairs_get_the_same_gradients_with_the_blocks_recomputed():
    policy = build_policy(TINY, VOCABULARY)
    ids = SEQUENCE_IDS.numpy()
    response = np.zeros([4, 11], bool)
    response[:, 5:] = True  # a 6-token prompt (tokens 0-5), then 6 response tokens
    rejected_ids = np.concatenate([ids[:, :6], ids[::-1, 6:]], axis=1)  # the same prompts, other responses
    packed = {key: tf.constant(value) for key, value in pack_pairs(ids, MASK.numpy(), response, rejected_ids,
                                                                    MASK.numpy(), response).items()}

    def loss():
        chosen, rejected, _, _ = packed_pair_logps(policy, packed, training=True)
        return -tf.reduce_mean(tf.math.log_sigmoid(0.1 * (chosen - rejected)))

    (loss, gradients, calls), (loss_remat, gradients_remat, calls_remat) = gradients_both_ways(loss, [policy], False)
    # The last block runs through its sublayers at the predicting positions only, so it is not recomputed.
    assert (calls, calls_remat) == (1, 2)
    assert loss_remat == pytest.approx(loss, abs=1e-6)
    for plain, recomputed in zip(gradients, gradients_remat):
        np.testing.assert_allclose(recomputed, plain, rtol=1e-6, atol=1e-6)


def test_gradient_checkpointing_needs_transformer_blocks_and_no_dropout():
    with pytest.raises(ConfigError, match="PPOConfig.gradient_checkpointing needs a transformer policy"):
        PPOConfig(gradient_checkpointing=True, model={"architecture": "bigram"})
    with pytest.raises(ConfigError, match=r"PPOConfig.gradient_checkpointing needs model.dropout=0"):
        PPOConfig(gradient_checkpointing=True, model={"dropout": 0.1})
    assert PPOConfig.from_json(PPOConfig(gradient_checkpointing=True).to_json()).gradient_checkpointing
