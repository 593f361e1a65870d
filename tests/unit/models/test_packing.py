"""Padding-free packed rows (`tf_ppo.models.packing`): the outputs and gradients of packed groups are those of
the unpacked rollout buffer, for a policy, a critic and the reference under LoRA, with empty, one-token and
full responses, groups split across minibatches, and multi-turn masks with holes; and the packed GPT-2 forward
pass is keras-hub's own."""

import numpy as np
import pytest
import tensorflow as tf

from tf_ppo.generation.responses import Responses
from tf_ppo.models import AdaptersOff, BigramLM, ModelConfig, build_policy, build_value_model, copy_model, enable_lora
from tf_ppo.models.forward import response_logits
from tf_ppo.models.families import gpt2
from tf_ppo.models.packing import (ROW_BUCKETS, Packer, can_pack, pack_rows, packed_attention_mask, packed_outputs,
                                   packed_row_outputs, spanned_lengths)
from tf_ppo.rl.functional import masked

VOCABULARY, PROMPT_WIDTH, R, G = 40, 6, 5, 3
CONFIG = ModelConfig(num_layers=2, hidden_dim=16, num_heads=2, max_sequence_length=PROMPT_WIDTH + R)


@pytest.fixture(scope="module")
def policy():
    policy = build_policy(CONFIG, VOCABULARY)
    rng = np.random.default_rng(0)  # weights far from the initialiser's near-zero ones, so positions matter
    policy.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in policy.get_weights()])
    return policy


def rollout_buffer(prompt_lengths, response_lengths, seed=0):
    """A buffer of G rows per prompt in the sampler's layout, and its response view (mask: the real tokens)."""
    rng = np.random.default_rng(seed)
    batch = len(response_lengths)
    buffer = rng.integers(1, VOCABULARY, size=(batch, PROMPT_WIDTH + R)).astype(np.int32)  # junk past the ends
    prompts = np.repeat(np.asarray(prompt_lengths, np.int32), G)
    for group in range(batch // G):
        buffer[group * G: (group + 1) * G, :prompts[group * G]] = rng.integers(1, VOCABULARY, prompts[group * G])
    positions = prompts[:, None] + np.arange(R)[None, :]
    mask = np.arange(R)[None, :] < np.asarray(response_lengths)[:, None]
    responses = Responses(tf.constant(positions), tf.constant(np.take_along_axis(buffer, positions, 1)),
                          tf.constant(mask))
    return buffer, prompts, responses


# Four groups of G = 3: responses empty, of one token, full (R) and in between; prompts of 1 to PROMPT_WIDTH.
PROMPT_LENGTHS = [1, 3, PROMPT_WIDTH, 4]
RESPONSE_LENGTHS = [0, 1, R, 2, 0, 3, R, R, 1, 4, 2, 0]


def packed_tensors(buffer, prompts, mask, rows=None):
    rows = np.arange(len(buffer)) if rows is None else rows
    packed = pack_rows(buffer[rows], prompts[rows], spanned_lengths(mask[rows]), rows // G, R,
                       PROMPT_WIDTH + G * R)
    return {name: tf.constant(value) for name, value in packed.items()}


def models(policy):
    lora = enable_lora(copy_model(policy), 2)
    return {"policy": policy, "critic": build_value_model(CONFIG, policy, VOCABULARY),
            "lora_policy": lora, "lora_adapters_off": AdaptersOff(lora)}


@pytest.mark.parametrize("role", ["policy", "critic", "lora_policy", "lora_adapters_off"])
def test_packed_outputs_are_the_unpacked_ones(policy, role):
    model = models(policy)[role]
    if role == "critic":  # a non-zero head, so the values depend on the states
        model.head.set_weights([np.random.default_rng(1).normal(size=w.shape) for w in model.head.get_weights()])
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    mask = responses.mask.numpy()
    want = response_logits(model, tf.constant(buffer), responses.positions).numpy()
    got = packed_outputs(model, packed_tensors(buffer, prompts, mask)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)


def test_a_minibatch_of_shuffled_rows_packs_the_groups_it_holds(policy):
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    rows = np.random.default_rng(2).permutation(len(buffer))[:7]  # groups split across minibatches
    mask = responses.mask.numpy()[rows]
    want = response_logits(policy, tf.constant(buffer[rows]), tf.gather(responses.positions, rows)).numpy()
    got = packed_outputs(policy, packed_tensors(buffer, prompts, responses.mask.numpy(), rows)).numpy()
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)


def test_a_multi_turn_mask_with_holes_keeps_the_environments_tokens_as_context(policy):
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, [R] * 12)
    model_mask = np.tile([True, True, False, False, True], (12, 1))  # turn, the environment's reply, turn
    model_mask[0] = False
    want = response_logits(policy, tf.constant(buffer), responses.positions).numpy()
    got = packed_outputs(policy, packed_tensors(buffer, prompts, model_mask)).numpy()
    np.testing.assert_allclose(got[model_mask], want[model_mask], atol=1e-5)


def test_a_group_longer_than_a_row_continues_in_the_next_with_its_prompt_again(policy):
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    mask = responses.mask.numpy()
    packed = pack_rows(buffer, prompts, spanned_lengths(mask), np.arange(12) // G, R, PROMPT_WIDTH + R)
    assert (packed["member_ids"] == 0).sum() > sum(PROMPT_LENGTHS)  # some prompts written twice
    want = response_logits(policy, tf.constant(buffer), responses.positions).numpy()
    got = packed_outputs(policy, {name: tf.constant(value) for name, value in packed.items()}).numpy()
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)


def test_gradients_of_packed_log_probs_are_the_unpacked_ones(policy):
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    packed = packed_tensors(buffer, prompts, responses.mask.numpy())
    weights = tf.constant(np.random.default_rng(3).normal(size=(len(buffer), R)), tf.float32)

    def gradients(logits_of):
        with tf.GradientTape() as tape:
            logprobs = masked.logprobs_from_logits(logits_of(), responses.token_ids)
            loss = masked.masked_sum(logprobs * weights, responses.mask)
        return tape.gradient(loss, policy.trainable_variables)

    want = gradients(lambda: response_logits(policy, tf.constant(buffer), responses.positions))
    got = gradients(lambda: packed_outputs(policy, packed))
    for w, g in zip(want, got):
        np.testing.assert_allclose(tf.convert_to_tensor(g), tf.convert_to_tensor(w), atol=1e-5)


def test_each_prompt_is_written_once_and_rows_fill_first_fit():
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    packed = pack_rows(buffer, prompts, spanned_lengths(responses.mask.numpy()), np.arange(12) // G, R,
                       PROMPT_WIDTH + G * R)
    real = packed["group_ids"] > 0
    assert real.sum() == sum(PROMPT_LENGTHS) + sum(RESPONSE_LENGTHS)  # no prompt twice, no padding inside
    assert (packed["member_ids"][real] == 0).sum() == sum(PROMPT_LENGTHS)
    # Groups of 7, 8, 17 and 10 tokens in rows of 21: the first two share row 0, the third's first response does
    # not fit there, nor the fourth's in row 1.
    assert [np.unique(row[row > 0]).tolist() for row in packed["group_ids"]] == [[1, 2], [1], [1]]
    assert (packed["group_ids"] > 0).sum(axis=1).tolist() == [15, 17, 10]


def test_row_counts_are_bucketed_to_a_few_compiled_shapes():
    counts = set()
    for seed in range(30):
        rng = np.random.default_rng(seed)
        lengths = rng.integers(0, R + 1, size=48)
        buffer, prompts, responses = rollout_buffer(rng.integers(1, PROMPT_WIDTH + 1, size=16), lengths, seed)
        counts.add(pack_rows(buffer, prompts, lengths, np.arange(48) // G, R, PROMPT_WIDTH + G * R)
                   ["token_ids"].shape[0])
    assert len(counts) <= ROW_BUCKETS and all(count % 3 == 0 for count in counts), counts  # 48 rows / 16


def test_a_padding_slot_attends_to_itself_only_and_bad_groups_are_named():
    mask = packed_attention_mask(tf.constant([[1, 1, 0]]), tf.constant([[0, 1, 0]]))[0].numpy()
    assert mask[2].tolist() == [False, False, True]
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    with pytest.raises(ValueError, match="row 6 needs 8 tokens and 2 outputs, more than a row's width=6"):
        pack_rows(buffer, prompts, np.full(12, 2), np.arange(12) // G, R, 6)
    with pytest.raises(ValueError, match="the rows of group 0 do not share their prompt"):
        pack_rows(buffer, prompts, np.full(12, 2), np.zeros(12, int), R, 200)


def test_only_families_that_take_positions_per_token_pack(policy):
    assert can_pack(policy) and can_pack(build_value_model(CONFIG, policy, VOCABULARY))
    assert not can_pack(BigramLM(vocabulary_size=5, hidden_dim=2))


def test_the_packed_forward_pass_of_a_plain_sequence_is_the_models_own(policy):
    """Guards the copy of keras-hub's GPT-2 forward pass (`gpt2.packed_hidden_states`): fails if keras-hub's
    changes. With `sources`, the last block runs through its sublayers (`block_outputs_at`) there only."""
    length = PROMPT_WIDTH + R
    ids = tf.constant(np.random.default_rng(1).integers(0, VOCABULARY, size=[3, length]), tf.int32)
    padding = tf.sequence_mask([length, 7, 1], length)
    own = policy({"token_ids": ids, "padding_mask": padding})
    causal_padding = tf.broadcast_to(padding[:, None, :], [3, length, length])
    positions = tf.broadcast_to(tf.range(length), [3, length])

    def logits(sources=None):
        states = gpt2.packed_hidden_states(policy.backbone, ids, positions, causal_padding, sources)
        return policy.backbone.token_embedding(states, reverse=True)

    real = padding.numpy()
    np.testing.assert_allclose(logits().numpy()[real], own.numpy()[real], rtol=1e-6, atol=1e-6)
    sources = tf.constant([[0, 5, 10], [6, 2, 3], [0, 0, 0]])
    np.testing.assert_allclose(logits(sources).numpy(), tf.gather(own, sources, batch_dims=1).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_a_row_computes_at_most_sources_per_row_outputs(policy):
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    mask = responses.mask.numpy()
    packed = pack_rows(buffer, prompts, spanned_lengths(mask), np.arange(12) // G, R, PROMPT_WIDTH + G * R,
                       sources_per_row=R)
    assert packed["row_sources"].shape[1] == R
    # Each row's outputs: its groups' last prompt tokens and every response token but the last.
    used = [len(set(packed["sources"][packed["sources"][:, :, 0] == row][:, 1][mask[packed["sources"][:, :, 0]
                                                                                    == row]])) for row in range(3)]
    assert all(0 < count <= R for count in used)
    want = response_logits(policy, tf.constant(buffer), responses.positions).numpy()
    got = packed_outputs(policy, {name: tf.constant(value) for name, value in packed.items()}).numpy()
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)


def test_a_row_per_group_keeps_the_groups_in_order_unbucketed():
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    packed = pack_rows(buffer, prompts, spanned_lengths(responses.mask.numpy()), np.arange(12) // G, R,
                       PROMPT_WIDTH + G * R, row_per_group=True)
    assert packed["token_ids"].shape[0] == 4  # no bucket padding
    assert ((packed["group_ids"] > 0).sum(1) == np.array(PROMPT_LENGTHS) + np.reshape(RESPONSE_LENGTHS, [4, G]).sum(1)
            ).all()
    assert packed["sources"][:, 0, 0][np.asarray(RESPONSE_LENGTHS) > 0].tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3]


def test_the_packer_computes_g_times_r_outputs_per_row_in_float32_under_mixed_precision(policy):
    buffer, prompts, responses = rollout_buffer(PROMPT_LENGTHS, RESPONSE_LENGTHS)
    packed = Packer(PROMPT_WIDTH, R, G)(buffer, prompts, responses.mask.numpy())
    outputs = packed_row_outputs(copy_model(policy, "mixed_bfloat16"), packed)
    assert outputs.dtype == tf.float32 and outputs.shape[1:] == [G * R, VOCABULARY]
    want = response_logits(policy, tf.constant(buffer), responses.positions).numpy()
    mask = responses.mask.numpy()
    np.testing.assert_allclose(tf.gather_nd(outputs, packed["sources"]).numpy()[mask], want[mask], atol=0.1)
