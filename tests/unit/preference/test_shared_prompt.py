"""Packed preference pairs (`tf_ppo.preference.shared_prompt`, over `tf_ppo.models.packing`): a packed pair's
log-probs are those of its two sequences, against a float64 reference, with truncated,
empty and one-token responses, under LoRA and mixed precision; the DPO trainer packs only models it can.
"""
import numpy as np
import pytest
import tensorflow as tf

from tf_ppo import PPOConfig
from tf_ppo.preference.dpo import sequence_logps
from tf_ppo.models import AdaptersOff, BigramLM, ModelConfig, build_policy, copy_model, enable_lora
from tf_ppo.preference.shared_prompt import pack_pairs, packed_pair_logps
from tf_ppo.models.packing import can_pack

VOCABULARY = 40
LENGTH = 12


@pytest.fixture(scope="module")
def policy():
    policy = build_policy(ModelConfig(num_layers=2, hidden_dim=16, num_heads=2, max_sequence_length=LENGTH),
                          VOCABULARY)
    rng = np.random.default_rng(0)  # weights far from the initialiser's near-zero ones, so positions matter
    policy.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in policy.get_weights()])
    return policy


def encoded_pairs(prompt_lengths, chosen_lengths, rejected_lengths, seed=0):
    """Random encoded pairs in `encode_responses`' layout: rows of `prompt + response`, cut to LENGTH."""
    rng = np.random.default_rng(seed)
    sides = []
    prompts = [rng.integers(1, VOCABULARY, size=n) for n in prompt_lengths]
    for response_lengths in (chosen_lengths, rejected_lengths):
        ids = np.zeros([len(prompts), LENGTH], np.int32)
        padding = np.zeros([len(prompts), LENGTH], bool)
        response = np.zeros([len(prompts), LENGTH], bool)
        for row, (prompt, length) in enumerate(zip(prompts, response_lengths)):
            sequence = np.concatenate([prompt, rng.integers(1, VOCABULARY, size=length)])[:LENGTH]
            ids[row, : len(sequence)], padding[row, : len(sequence)] = sequence, True
            response[row, len(prompt): len(sequence)] = True
        sides += [ids, padding, response[:, 1:]]
    return sides


def float64_logps(model, ids, padding, response):
    """Summed response log-probs of whole sequences: the model's logits, log-softmax in float64."""
    logits = model({"token_ids": tf.constant(ids), "padding_mask": tf.constant(padding)}).numpy().astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    token_logps = np.take_along_axis(log_softmax[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return (token_logps * response).sum(1), response.sum(1)


# Rows: ordinary, one-token responses, an empty chosen response, a rejected response cut by LENGTH, and a
# prompt that fills LENGTH (both responses cut to nothing).
PROMPTS, CHOSEN_LENGTHS, REJECTED_LENGTHS = [3, 1, 4, 5, LENGTH], [4, 1, 0, 2, 3], [6, 1, 3, 9, 2]


@pytest.mark.parametrize("wrap", ["policy", "lora_adapters_off", "lora_policy", "mixed_bfloat16"])
def test_packed_log_probs_are_those_of_the_two_sequences_against_float64(policy, wrap):
    model = policy
    if wrap == "mixed_bfloat16":
        model = copy_model(policy, "mixed_bfloat16")
    elif wrap.startswith("lora"):
        model = enable_lora(copy_model(policy), 2)
        for weight in model.trainable_weights:  # adapters away from zero, so switching them off matters
            weight.assign(tf.random.stateless_normal(weight.shape, [1, 2], 0, 0.3))
        model = AdaptersOff(model) if wrap == "lora_adapters_off" else model
    sides = encoded_pairs(PROMPTS, CHOSEN_LENGTHS, REJECTED_LENGTHS)
    chosen, rejected, chosen_tokens, rejected_tokens = packed_pair_logps(model, pack_pairs(*sides))
    expected_chosen, expected_chosen_tokens = float64_logps(model, *sides[:3])
    expected_rejected, expected_rejected_tokens = float64_logps(model, *sides[3:])
    tolerance = 0.1 if wrap == "mixed_bfloat16" else 1e-5  # bfloat16 blocks: a different rounding order
    np.testing.assert_allclose(chosen.numpy(), expected_chosen, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(rejected.numpy(), expected_rejected, rtol=tolerance, atol=tolerance)
    assert chosen_tokens.numpy().tolist() == expected_chosen_tokens.tolist() == [4, 1, 0, 2, 0]
    assert rejected_tokens.numpy().tolist() == expected_rejected_tokens.tolist() == [6, 1, 3, 7, 0]
    assert chosen.numpy()[2] == 0.0 and rejected.numpy()[4] == 0.0  # an empty response has log-prob 0


def test_the_gradient_of_the_packed_log_probs_is_that_of_the_two_sequences(policy):
    sides = encoded_pairs(PROMPTS[:4], CHOSEN_LENGTHS[:4], REJECTED_LENGTHS[:4], seed=3)
    packed = pack_pairs(*sides)
    with tf.GradientTape(persistent=True) as tape:
        chosen, rejected, _, _ = packed_pair_logps(policy, packed)
        packed_loss = tf.reduce_sum(chosen - 2.0 * rejected)
        separate_chosen, _ = sequence_logps(policy, *map(tf.constant, sides[:3]))
        separate_rejected, _ = sequence_logps(policy, *map(tf.constant, sides[3:]))
        separate_loss = tf.reduce_sum(separate_chosen - 2.0 * separate_rejected)
    for packed_gradient, separate_gradient in zip(tape.gradient(packed_loss, policy.trainable_weights),
                                                  tape.gradient(separate_loss, policy.trainable_weights)):
        np.testing.assert_allclose(tf.convert_to_tensor(packed_gradient).numpy(),
                                   tf.convert_to_tensor(separate_gradient).numpy(), rtol=1e-4, atol=1e-5)


def test_pack_pairs_layout():
    sides = encoded_pairs([2], [2], [3])
    packed = pack_pairs(*sides)
    chosen_ids, rejected_ids = sides[0][0], sides[3][0]
    assert packed["token_ids"][0].tolist() == chosen_ids[:4].tolist() + rejected_ids[2:5].tolist()
    assert packed["position_ids"][0].tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert packed["member_ids"][0].tolist() == [0, 0, 1, 1, 2, 2, 2]  # prompt, chosen, rejected
    # Outputs only where a response token is predicted; the last prompt token (1) predicts both responses' first.
    assert packed["row_sources"][0].tolist()[:4] == [1, 2, 4, 5]
    assert packed["slots"][0].tolist() == [[0, 1, 0], [0, 2, 3]]
    assert packed["targets"][0].tolist() == [chosen_ids[2:4].tolist() + [0], rejected_ids[2:5].tolist()]
    assert packed["target_mask"][0].tolist() == [[True, True, False], [True, True, True]]


def test_pairs_of_different_lengths_get_a_row_each():
    packed = pack_pairs(*encoded_pairs(PROMPTS, CHOSEN_LENGTHS, REJECTED_LENGTHS))
    real = packed["group_ids"] > 0
    assert real.shape[0] == len(PROMPTS) and (packed["group_ids"][real] == 1).all()
    # prompt + chosen + rejected per row (the rejected response of pair 3 cut by LENGTH, pair 4's prompt fills it)
    assert real.sum(1).tolist() == [3 + 4 + 6, 1 + 1 + 1, 4 + 0 + 3, 5 + 2 + 7, LENGTH]


def test_pack_pairs_refuses_pairs_whose_prompts_differ():
    chosen_ids, chosen_padding, chosen_response, rejected_ids, rejected_padding, rejected_response = encoded_pairs(
        [3], [2], [2])
    rejected_ids = rejected_ids.copy()
    rejected_ids[0, 1] += 1
    with pytest.raises(ValueError, match="pair 0: the chosen and rejected sequences start with different prompts"):
        pack_pairs(chosen_ids, chosen_padding, chosen_response, rejected_ids, rejected_padding, rejected_response)
    with pytest.raises(ValueError, match="share their prompt"):
        pack_pairs(chosen_ids, chosen_padding, chosen_response, rejected_ids, rejected_padding,
                   np.zeros_like(rejected_response))


def test_only_gpt2_policies_are_packed(policy):
    assert can_pack(policy) and can_pack(AdaptersOff(policy))
    assert not can_pack(BigramLM(vocabulary_size=VOCABULARY, hidden_dim=4))
    assert PPOConfig().dpo.share_prompt and not PPOConfig(dpo={"share_prompt": False}).dpo.share_prompt
