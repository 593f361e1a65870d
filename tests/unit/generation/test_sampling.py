"""Sampling with a KV cache, the response view, and log-prob alignment."""

import numpy as np
import tensorflow as tf

from tf_ppo.rl.functional import masked
from tf_ppo.config import PPOConfig
from tf_ppo.data import encode_prompts
from tf_ppo.models import load_tokenizer
from tf_ppo.generation.sampling import generate, sample_next_token, sample_responses
from tf_ppo.models.forward import response_logits
from tf_ppo.generation.responses import response_view

PROMPTS = ["i thought the acting was", "the film is", "to be fair, the second half felt"]


def greedy_without_cache(policy, prompt_ids, length, steps):
    """Reference decoder: recompute the whole sequence for every new token."""
    ids = list(prompt_ids[:length])
    for _ in range(steps):
        logits = policy({"token_ids": np.array([ids]), "padding_mask": np.ones([1, len(ids)], bool)})
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[length:]


def test_cached_greedy_decoding_matches_full_recompute_for_mixed_prompt_lengths(sft_policy):
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    prompt_ids, lengths = encode_prompts(tokenizer, PROMPTS, 12)
    sequence = generate(sft_policy, prompt_ids, lengths, tf.constant([0, 0]), 20, top_k=1)  # greedy; 2 segments
    view = response_view(sequence, lengths, 20)
    for row, length in enumerate(lengths):
        assert view.token_ids[row].numpy().tolist() == greedy_without_cache(sft_policy, prompt_ids[row], length, 20)
        np.testing.assert_array_equal(sequence[row, :length], prompt_ids[row, :length])  # prompt kept


def test_sampling_is_reproducible_with_a_seed(sft_policy):
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    prompt_ids, lengths = encode_prompts(tokenizer, PROMPTS * 4, 12)
    sample = tf.function(lambda seed: generate(sft_policy, prompt_ids, lengths, seed, 8), jit_compile=True)
    first, again, other = sample(tf.constant([1, 2])), sample(tf.constant([1, 2])), sample(tf.constant([3, 4]))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_sample_next_token_distribution_top_k_and_top_p():
    logits = tf.math.log(tf.constant([[0.5, 0.3, 0.15, 0.05]]))
    tiled = tf.tile(logits, [20_000, 1])
    counts = np.bincount(sample_next_token(tiled, tf.constant([0, 1])).numpy(), minlength=4) / 20_000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    top2 = np.bincount(sample_next_token(tiled, tf.constant([0, 1]), top_k=2).numpy(), minlength=4) / 20_000
    np.testing.assert_allclose(top2, [0.625, 0.375, 0, 0], atol=0.015)
    nucleus = np.bincount(sample_next_token(tiled, tf.constant([0, 1]), top_p=0.7).numpy(), minlength=4) / 20_000
    np.testing.assert_allclose(nucleus, [0.625, 0.375, 0, 0], atol=0.015)  # 0.5 < 0.7 <= 0.8: two tokens


def test_response_view_stops_after_the_first_end_token():
    sequence = tf.constant([[1, 2, 0, 5, 0, 6],    # prompt 2 tokens, response [0 ...]: ends at once
                            [1, 7, 8, 9, 9, 9]])   # prompt 3 tokens, never ends
    view = response_view(sequence, tf.constant([2, 3]), 3, stop_token_ids=(0,))
    assert view.token_ids.numpy().tolist() == [[0, 5, 0], [9, 9, 9]]
    assert view.mask.numpy().tolist() == [[True, False, False], [True, True, True]]
    assert view.positions.numpy().tolist() == [[2, 3, 4], [3, 4, 5]]


def test_response_logprobs_match_per_row_computation(sft_policy):
    """Batched, right-padded prompts give the same log-probs as each sequence alone."""
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    prompt_ids, lengths = encode_prompts(tokenizer, PROMPTS, 12)
    sequence = generate(sft_policy, prompt_ids, lengths, tf.constant([5, 5]), 6)
    view = response_view(sequence, lengths, 6)
    batched = masked.logprobs_from_logits(response_logits(sft_policy, sequence, view.positions), view.token_ids)
    for row, length in enumerate(lengths):
        alone = sequence[row: row + 1, : length + 6]
        logits = sft_policy({"token_ids": alone, "padding_mask": tf.ones_like(alone, tf.bool)})
        want = masked.logprobs_from_logits(logits[0, length - 1: length + 5], alone[0, length:])
        np.testing.assert_allclose(batched[row], want, atol=1e-5)


def test_sampling_with_stop_tokens_keeps_each_response_up_to_its_stop_and_writes_nothing_after(sft_policy):
    tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    prompt_ids, lengths = encode_prompts(tokenizer, PROMPTS * 4, 12)
    end = (tokenizer.end_token_id,)
    sample = tf.function(lambda stops: sample_responses(sft_policy, prompt_ids, lengths, tf.constant([5, 6]), 24,
                                                        stop_token_ids=stops), jit_compile=True)
    free, stopped = sample(()), sample(end)
    free_view, view = response_view(free.buffer, lengths, 24, end), response_view(stopped.buffer, lengths, 24, end)
    mask = view.mask.numpy()
    assert 0 < mask.sum(axis=1).min() < 24 and np.array_equal(mask, free_view.mask.numpy())  # some end early
    np.testing.assert_array_equal(view.token_ids.numpy()[mask], free_view.token_ids.numpy()[mask])
    np.testing.assert_array_equal(view.token_ids.numpy()[~mask], 0)  # nothing written after a stop
    np.testing.assert_allclose(np.take_along_axis(stopped.logprobs.numpy(), view.positions.numpy(), 1)[mask],
                               np.take_along_axis(free.logprobs.numpy(), view.positions.numpy(), 1)[mask], atol=1e-6)
