"""Preference pairs packed so each prompt is computed once: `prompt + chosen + rejected` in one row.

A pair's chosen and rejected sequences start with the same prompt, and a causal transformer's states at
the prompt's positions depend on the prompt alone. Run as two sequences, the prompt is computed twice,
forward and backward. Packed, one row holds the prompt, then the chosen response, then the rejected one:

    tokens      <s> the film was | great . </s> | awful . </s>
    positions    0   1    2   3  |  4    5   6  |  4    5   6
    segment      prompt          |  chosen      |  rejected

The rejected tokens attend to the prompt and to themselves, never to the chosen tokens, and keep the
positions they have in their own sequence. Every response token thus sees exactly its own sequence's
context, and the log-probs are those of the two sequences (Wang et al. 2024, "Accelerating Direct
Preference Optimization with Prefix Sharing"). The last prompt token predicts the first token of both
responses, so each position has two targets, one per response.

At the DPO benchmark's shape (prompts of about 30 of 64 tokens) a pair costs about 100 positions
instead of 128. It needs a model whose positions can be given token by token: keras-hub's GPT-2 (learned
absolute positions, `TransformerDecoder` blocks). `tf_ppo.models.packing.can_pack` says whether a model is one; the DPO
trainer runs any other model's two sequences apart.
"""
import numpy as np
import tensorflow as tf

from tf_ppo.models import AdaptersOff
from tf_ppo.models.families import adapter_for

PAD, PROMPT, CHOSEN, REJECTED = 0, 1, 2, 3  # segment ids


def pack_pairs(chosen_ids, chosen_padding, chosen_response, rejected_ids, rejected_padding, rejected_response):
    """One packed row per pair from its two encoded sequences (as `tf_ppo.preference.pairs.encode_responses` returns them).

    Args:
        chosen_ids, rejected_ids: int32 `[pairs, L]`, `start + prompt + response + end`, cut to L.
        chosen_padding, rejected_padding: bool `[pairs, L]`, the real tokens.
        chosen_response, rejected_response: bool `[pairs, L - 1]`, the positions whose next token is a
            response token.

    Returns:
        A dict of NumPy arrays, `P` = the longest packed row, `K` = the most predicting positions of a row:
        `token_ids`, `position_ids`, `segments` (`PAD`, `PROMPT`, `CHOSEN`, `REJECTED`): int32 `[pairs, P]`;
        `sources` int32 `[pairs, K]`: the packed positions that predict a response token (the logits are
        computed there only); `targets` int32 `[pairs, K, 2]` with `target_mask` bool `[pairs, K, 2]`: the
        chosen (`[..., 0]`) and rejected (`[..., 1]`) response token each source predicts, if any.

    Example:
    >>> ids = np.array([[5, 6, 7, 8], [5, 6, 9, 0]], np.int32)  # start 5, prompt 6, responses 7 8 and 9
    >>> padding = ids > 0
    >>> response = np.array([[0, 1, 1], [0, 1, 0]], bool)
    >>> packed = pack_pairs(ids[:1], padding[:1], response[:1], ids[1:], padding[1:], response[1:])
    >>> packed["token_ids"].tolist(), packed["position_ids"].tolist(), packed["sources"].tolist()
    ([[5, 6, 7, 8, 9]], [[0, 1, 2, 3, 2]], [[1, 2]])
    >>> packed["targets"][0].tolist()  # position 1 predicts 7 (chosen) and 9 (rejected), position 2 predicts 8
    [[7, 9], [8, 0]]
    """
    chosen_lengths, rejected_lengths = chosen_padding.sum(1), rejected_padding.sum(1)  # [pairs]
    prompt_lengths = chosen_lengths - chosen_response.sum(1)  # [pairs]
    if np.any(prompt_lengths != rejected_lengths - rejected_response.sum(1)) or np.any(prompt_lengths < 1):
        raise ValueError("a pair's chosen and rejected sequences must share their prompt, of at least one token")
    rows = []
    for row, (prompt, chosen, rejected) in enumerate(zip(prompt_lengths, chosen_lengths, rejected_lengths)):
        if np.any(chosen_ids[row, :prompt] != rejected_ids[row, :prompt]):
            raise ValueError(f"pair {row}: the chosen and rejected sequences start with different prompts")
        rows.append(_packed_row(chosen_ids[row, :chosen], rejected_ids[row, :rejected], prompt))
    packed = {}
    for key in rows[0]:  # each array zero-padded to its longest row (segment 0 is PAD)
        values = [row[key] for row in rows]
        packed[key] = np.zeros([len(rows), max(map(len, values)), *values[0].shape[1:]], values[0].dtype)
        for index, value in enumerate(values):
            packed[key][index, : len(value)] = value
    return packed


def _packed_row(chosen, rejected, prompt):
    """The packed arrays of one pair, unpadded: `chosen` and `rejected` token ids, `prompt` tokens shared."""
    chosen_end = len(chosen)
    rejected_end = chosen_end + len(rejected) - prompt  # where the packed row ends
    # Position t predicts its own sequence's token t + 1; the last prompt token predicts both responses' first.
    chosen_sources = np.arange(prompt - 1, chosen_end - 1)  # one per chosen response token
    rejected_sources = np.concatenate([[prompt - 1], np.arange(chosen_end, rejected_end - 1)])
    rejected_sources = rejected_sources[: len(rejected) - prompt]  # none for an empty rejected response
    sources = np.union1d(chosen_sources, rejected_sources).astype(np.int32)  # sorted
    targets, target_mask = np.zeros([len(sources), 2], np.int32), np.zeros([len(sources), 2], bool)
    for side, (side_sources, tokens) in enumerate(((chosen_sources, chosen[prompt:]), (rejected_sources,
                                                                                       rejected[prompt:]))):
        slots = np.searchsorted(sources, side_sources)
        targets[slots, side], target_mask[slots, side] = tokens, True
    segments = [PROMPT] * prompt + [CHOSEN] * (chosen_end - prompt) + [REJECTED] * (len(rejected) - prompt)
    positions = np.concatenate([np.arange(chosen_end), np.arange(prompt, len(rejected))])
    return {"token_ids": np.concatenate([chosen, rejected[prompt:]]).astype(np.int32),
            "position_ids": positions.astype(np.int32), "segments": np.array(segments, np.int32),
            "sources": sources, "targets": targets, "target_mask": target_mask}


def attention_mask(segments):
    """bool `[pairs, P, P]`: the keys each query may attend to (before the causal mask): no padding, and
    no chosen token for a rejected one.

    Example:
    >>> attention_mask(tf.constant([[PROMPT, CHOSEN, REJECTED, PAD]]))[0].numpy().astype(int).tolist()
    [[1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0]]
    """
    queries, keys = segments[:, :, None], segments[:, None, :]
    return (keys != PAD) & ~((queries == REJECTED) & (keys == CHOSEN))


def packed_logits(model, token_ids, position_ids, mask, sources=None, training=False):
    """The logits of packed rows: the model family's forward pass with given positions and attention mask.

    Args:
        token_ids, position_ids: int32 `[pairs, P]`.
        mask: bool `[pairs, P, P]`, the keys each query may attend to (`attention_mask`).
        sources: optional int32 `[pairs, K]`: the logits at these positions only (`[pairs, K, vocab]`).

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> packed_logits(policy, tf.constant([[1, 2]]), tf.constant([[0, 1]]), tf.ones([1, 2, 2], bool)).shape
    TensorShape([1, 2, 50])
    """
    if isinstance(model, AdaptersOff):
        with model.switched_off():
            return packed_logits(model.policy, token_ids, position_ids, mask, sources, training)
    return adapter_for(model).packed_logits(model, token_ids, position_ids, mask, sources, training)


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
    logits = packed_logits(model, batch["token_ids"], batch["position_ids"], attention_mask(batch["segments"]),
                           batch["sources"], training)  # [pairs, K, vocab]
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))  # [pairs, K, vocab]
    token_logps = tf.gather(log_probs, batch["targets"], axis=-1, batch_dims=2)  # [pairs, K, 2]
    mask = tf.cast(batch["target_mask"], tf.float32)
    sums, counts = tf.reduce_sum(token_logps * mask, axis=1), tf.reduce_sum(mask, axis=1)  # [pairs, 2]
    return sums[:, 0], sums[:, 1], counts[:, 0], counts[:, 1]
