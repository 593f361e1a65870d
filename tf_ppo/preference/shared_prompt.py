"""Preference pairs packed so each prompt is computed once: `prompt + chosen + rejected` in one row.

A pair's chosen and rejected sequences start with the same prompt, and a causal transformer's states at
the prompt's positions depend on the prompt alone. Run as two sequences, the prompt is computed twice,
forward and backward. Packed, one row holds the prompt, then the chosen response, then the rejected one:

    tokens      <s> the film was | great . </s> | awful . </s>
    positions    0   1    2   3  |  4    5   6  |  4    5   6
    member       0   0    0   0  |  1    1   1  |  2    2   2

The rejected tokens attend to the prompt and to themselves, never to the chosen tokens, and keep the
positions they have in their own sequence. Every response token thus sees exactly its own sequence's
context, and the log-probs are those of the two sequences (Wang et al. 2024, "Accelerating Direct
Preference Optimization with Prefix Sharing"). The last prompt token predicts the first token of both
responses.

This is the RL algorithms' packing (`tf_ppo.models.packing`) with a pair as a group of two responses and a
row per pair; this module only maps DPO's encoded pairs to it and sums the log-probs. At the DPO
benchmark's shape (prompts of about 30 of 64 tokens) a pair costs about 100 positions instead of 128. It
needs a model whose positions can be given token by token (`tf_ppo.models.packing.can_pack`: keras-hub's
GPT-2); the DPO trainer runs any other model's two sequences apart.
"""
import numpy as np
import tensorflow as tf

from tf_ppo.models.packing import pack_rows, packed_row_outputs


def pack_pairs(chosen_ids, chosen_padding, chosen_response, rejected_ids, rejected_padding, rejected_response):
    """One packed row per pair from its two encoded sequences (as `tf_ppo.preference.pairs.encode_responses` returns them).

    Args:
        chosen_ids, rejected_ids: int32 `[pairs, L]`, `start + prompt + response + end`, cut to L.
        chosen_padding, rejected_padding: bool `[pairs, L]`, the real tokens.
        chosen_response, rejected_response: bool `[pairs, L - 1]`, the positions whose next token is a
            response token.

    Returns:
        A dict of NumPy arrays, a row per pair: `tf_ppo.models.packing.pack_rows`' rows (`token_ids`,
        `position_ids`, `group_ids`, `member_ids`, `row_sources`), and, `R` = the longest response,
        `slots` int32 `[pairs, 2, R]`: the `row_sources` slot whose output predicts the chosen (`[:, 0]`) or
        rejected (`[:, 1]`) response's token t; `targets` int32 `[pairs, 2, R]`: that token;
        `target_mask` bool `[pairs, 2, R]`: the real ones.

    Example:
    >>> ids = np.array([[5, 6, 7, 8], [5, 6, 9, 0]], np.int32)  # start 5, prompt 6, responses 7 8 and 9
    >>> padding = ids > 0
    >>> response = np.array([[0, 1, 1], [0, 1, 0]], bool)
    >>> packed = pack_pairs(ids[:1], padding[:1], response[:1], ids[1:], padding[1:], response[1:])
    >>> packed["token_ids"].tolist(), packed["position_ids"].tolist(), packed["row_sources"].tolist()
    ([[5, 6, 7, 8, 9]], [[0, 1, 2, 3, 2]], [[1, 2, 0]])
    >>> packed["slots"][0].tolist(), packed["targets"][0].tolist()  # slot 0 (position 1) predicts 7 and 9
    ([[0, 1], [0, 0]], [[7, 8], [9, 0]])
    """
    chosen_lengths, rejected_lengths = chosen_response.sum(1), rejected_response.sum(1)  # [pairs]
    prompt_lengths = chosen_padding.sum(1) - chosen_lengths  # [pairs]
    if np.any(prompt_lengths != rejected_padding.sum(1) - rejected_lengths) or np.any(prompt_lengths < 1):
        raise ValueError("a pair's chosen and rejected sequences must share their prompt, of at least one token")
    for row, prompt in enumerate(prompt_lengths):
        if np.any(chosen_ids[row, :prompt] != rejected_ids[row, :prompt]):
            raise ValueError(f"pair {row}: the chosen and rejected sequences start with different prompts")
    pairs = len(prompt_lengths)
    sequence_ids = np.stack([chosen_ids, rejected_ids], 1).reshape(2 * pairs, -1)  # chosen, rejected, ...
    response_lengths = np.stack([chosen_lengths, rejected_lengths], 1).reshape(-1)  # [2 * pairs]
    both = chosen_lengths + rejected_lengths  # [pairs]
    longest = max(int(response_lengths.max()), 1)
    packed = pack_rows(sequence_ids, np.repeat(prompt_lengths, 2), response_lengths, np.arange(2 * pairs) // 2,
                       longest, width=int((prompt_lengths + both).max()), sources_per_row=max(int(both.max()), 1),
                       row_per_group=True)
    steps = np.arange(longest)[None, :]
    response_positions = np.minimum(np.repeat(prompt_lengths, 2)[:, None] + steps, sequence_ids.shape[1] - 1)
    target_mask = steps < response_lengths[:, None]  # [2 * pairs, R]
    targets = np.where(target_mask, np.take_along_axis(sequence_ids, response_positions, 1), 0)
    return {**{name: value for name, value in packed.items() if name != "sources"},
            "slots": packed["sources"][..., 1].reshape(pairs, 2, longest),
            "targets": targets.astype(np.int32).reshape(pairs, 2, longest),
            "target_mask": target_mask.reshape(pairs, 2, longest)}


def packed_pair_logps(model, batch, training=False):
    """Summed chosen and rejected response log-probs `[pairs]` each, and their token counts, of packed rows.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> ids = np.array([[5, 6, 7, 8], [5, 6, 9, 0]], np.int32); padding = ids > 0
    >>> response = np.array([[0, 1, 1], [0, 1, 0]], bool)
    >>> packed = pack_pairs(ids[:1], padding[:1], response[:1], ids[1:], padding[1:], response[1:])
    >>> chosen, rejected, chosen_tokens, rejected_tokens = packed_pair_logps(policy, packed)
    >>> chosen_tokens.numpy().tolist(), rejected_tokens.numpy().tolist()
    ([2.0], [1.0])
    """
    log_probs = tf.nn.log_softmax(packed_row_outputs(model, batch, training))  # [pairs, K, vocab]
    indices = tf.stack([batch["slots"], batch["targets"]], axis=-1)  # [pairs, 2, R, 2]: (slot, token)
    token_logps = tf.gather_nd(log_probs, indices, batch_dims=1)  # [pairs, 2, R]
    mask = tf.cast(batch["target_mask"], tf.float32)
    sums, counts = tf.reduce_sum(token_logps * mask, axis=-1), tf.reduce_sum(mask, axis=-1)  # [pairs, 2]
    return sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1]
