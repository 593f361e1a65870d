"""Decoding caches: GPT-2's per-layer cache against keras-hub's own, step by step and through `generate`."""

import numpy as np
import pytest
import tensorflow as tf
from tests.presets import causal_lm

from tf_ppo.generation import sampling as rollout
from tf_ppo.config import ModelConfig
from tf_ppo.models.families import decoder_for
from tf_ppo.models.families.generic import KerasHubCache
from tf_ppo.models.families.gpt2 import GPT2Cache
from tf_ppo.models import BigramLM, build_policy, copy_model, enable_lora
from tf_ppo.generation.sampling import generate, segment_ends


def teacher_forced_logits(decoder, prompt_ids, next_ids, grow_at):
    """Logits of each step fed `next_ids`, the cache grown to its full length after `grow_at` steps."""
    prompt_width, steps = prompt_ids.shape[1], next_ids.shape[1]
    cache = decoder.grow(decoder.start(prompt_ids), prompt_width + grow_at)
    logits = []
    for step in range(steps):
        if step == grow_at:
            cache = decoder.grow(cache, prompt_width + steps)
        step_logits, cache = decoder.step(next_ids[:, step: step + 1], prompt_width + step, cache)
        logits.append(step_logits[:, 0])
    return tf.stack(logits, axis=1).numpy()  # [batch, steps, vocab]


def random_ids(shape, vocabulary_size, seed):
    return tf.random.stateless_uniform(shape, [seed, 0], 0, vocabulary_size, tf.int32)


# Dropout 0 (tf_ppo's own policy: Keras' dot-product attention) and 0.1 (a GPT-2 preset: Keras' masked-softmax path).
@pytest.mark.parametrize("make_policy", [
    lambda: build_policy(ModelConfig(num_layers=2, hidden_dim=32, num_heads=4, max_sequence_length=64), 60),
    lambda: causal_lm("gpt2"),
], ids=["tf_ppo-gpt2", "preset-gpt2"])
def test_gpt2_cache_gives_keras_hub_logits_step_by_step(make_policy):
    policy = make_policy()
    vocabulary_size = policy.backbone.vocabulary_size
    prompt_ids, next_ids = random_ids([3, 5], vocabulary_size, 1), random_ids([3, 12], vocabulary_size, 2)
    fast = teacher_forced_logits(GPT2Cache(policy), prompt_ids, next_ids, grow_at=4)
    reference = teacher_forced_logits(KerasHubCache(policy), prompt_ids, next_ids, grow_at=4)
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    # And both are the full forward pass's logits at those positions.
    sequence = tf.concat([prompt_ids, next_ids], axis=1)
    full = policy({"token_ids": sequence, "padding_mask": tf.ones_like(sequence, tf.bool)})[:, 5:]
    np.testing.assert_allclose(fast, full, atol=1e-5)


def test_gpt2_cache_decodes_with_lora_adapters_and_bfloat16():
    policy = build_policy(ModelConfig(num_layers=2, hidden_dim=32, num_heads=4, max_sequence_length=64), 60)
    prompt_ids, next_ids = random_ids([2, 4], 60, 4), random_ids([2, 6], 60, 5)
    full_precision = teacher_forced_logits(GPT2Cache(policy), prompt_ids, next_ids, grow_at=3)

    half = copy_model(policy, "mixed_bfloat16")
    fast_half = teacher_forced_logits(GPT2Cache(half), prompt_ids, next_ids, grow_at=3)
    assert fast_half.dtype == np.float32  # the reverse embedding computes logits in float32
    # Both compute the same function in bfloat16, but with keys/values in different layouts: the CPU's bfloat16
    # kernels may round them differently (0 apart on one machine, 1.4e-3 on another, logits up to ~0.2). A wrong
    # mask or position is off by far more than that.
    np.testing.assert_allclose(fast_half, teacher_forced_logits(KerasHubCache(half), prompt_ids, next_ids, 3),
                               atol=5e-3)
    assert 0 < np.abs(fast_half - full_precision).max() < 0.5  # bfloat16 rounding: close to float32, not equal

    enable_lora(policy, 2)
    for weight in policy.trainable_weights:  # adapters start as a no-op (lora_kernel_b = 0): make them count
        weight.assign(tf.random.stateless_normal(weight.shape, [3, 0], stddev=0.5))
    adapted = teacher_forced_logits(GPT2Cache(policy), prompt_ids, next_ids, grow_at=3)
    np.testing.assert_allclose(adapted, teacher_forced_logits(KerasHubCache(policy), prompt_ids, next_ids, 3),
                               atol=1e-5)
    assert np.abs(adapted - full_precision).max() > 0.1  # the adapters are in the step


def test_generate_samples_the_same_tokens_with_either_cache(sft_policy, monkeypatch):
    prompt_ids = random_ids([6, 7], sft_policy.backbone.vocabulary_size, 6)
    lengths = tf.constant([7, 2, 5, 7, 3, 4])  # right-padded: decoding starts at the shortest prompt
    sample = lambda: tf.function(  # noqa: E731  35 tokens: three segments (16 + 16 + 3)
        lambda seed: generate(sft_policy, prompt_ids, lengths, seed, 35, temperature=0.7), jit_compile=True)
    fast = sample()(tf.constant([7, 8]))
    monkeypatch.setattr(rollout, "decoder_for", KerasHubCache)
    np.testing.assert_array_equal(fast, sample()(tf.constant([7, 8])))


def test_decoder_for_uses_the_gpt2_cache_for_gpt2_only():
    assert type(decoder_for(causal_lm("gpt2"))) is GPT2Cache
    for architecture in ("llama3", "opt"):
        assert type(decoder_for(causal_lm(architecture))) is KerasHubCache
    assert type(decoder_for(BigramLM(vocabulary_size=5, hidden_dim=2))) is KerasHubCache


def test_segment_ends_cover_the_response_in_static_steps_and_dynamic_shapes_in_one():
    assert segment_ends(16, 32, 48) == [32, 48]
    assert segment_ends(16, 1, 17) == [17]
    assert segment_ends(4, 0, 4) == []
    dynamic = tf.constant(20)
    assert segment_ends(None, 16, dynamic) == [dynamic]
    assert segment_ends(4, tf.constant(16), dynamic) == [dynamic]


# Each cache a rewinding family decodes with: GPT-2's own, Gemma 3's per-layer tuple, keras-hub's stacked (Llama 3).
@pytest.mark.parametrize("family", ["gpt2", "gemma3", "llama3"])
def test_a_reply_appended_in_chunks_leaves_the_cache_of_a_full_forward_pass(family):
    policy = causal_lm(family)
    decoder = decoder_for(policy)
    token_ids = random_ids([2, 40], policy.backbone.vocabulary_size, 3)
    cache = decoder.grow(decoder.start(token_ids[:, :8]), 40)  # positions 0-7; the step at 9 would feed 8
    # Row 0 samples from 30 on and row 1 from 33: the chunks (16, then 4) may feed positions 8-27.
    turn = rollout.Turn(forced_until=tf.constant([30, 33]), limit=tf.constant([40, 40]))
    index, cache = rollout.append_forced(decoder, token_ids, cache, tf.constant(9), turn)
    assert int(index) == 9 + 16 + 4
    logits = []
    for position in (28, 29):  # the step loop then feeds the rest, one token each
        step_logits, cache = decoder.step(token_ids[:, position: position + 1], position, cache)
        logits.append(step_logits[:, 0])
    full = policy({"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids, tf.bool)})
    np.testing.assert_allclose(tf.stack(logits, axis=1), full[:, 28:30], atol=1e-5)
