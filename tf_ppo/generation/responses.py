"""The per-response-token view of a sampled buffer: positions, token ids and the mask of real tokens.

A rollout buffer `sequence_ids` `[batch, P + R]` holds each row's prompt, then
its response from `prompt_lengths[i]` on (`tf_ppo.generation.sampling`).
`response_view` gathers the R response slots of every row into an aligned
`[batch, R]` view, on which all the RL maths works.
"""

import collections

import tensorflow as tf

Responses = collections.namedtuple("Responses", ["positions", "token_ids", "mask"])


def response_view(sequence_ids, prompt_lengths, response_length, end_token_id=None):
    """Gather each row's R response slots into an aligned `[batch, R]` view.

    With `end_token_id`, a response ends at its first end token (which stays
    in the response: stopping is an action the policy is rewarded for);
    everything after it is masked out.

    Returns:
        `Responses(positions, token_ids, mask)`, each `[batch, R]`:
        buffer index, token id, and True on real response tokens.

    Example:
    >>> view = response_view(tf.constant([[5, 6, 7, 0, 8]]), tf.constant([2]), 3, end_token_id=0)
    >>> view.token_ids.numpy().tolist(), view.mask.numpy().tolist()
    ([[7, 0, 8]], [[True, True, False]])
    """
    positions = prompt_lengths[:, None] + tf.range(response_length)[None, :]  # [batch, R]
    token_ids = tf.gather(sequence_ids, positions, batch_dims=1)  # [batch, R]
    if end_token_id is None:
        return Responses(positions, token_ids, tf.ones_like(token_ids, tf.bool))
    is_end = tf.cast(token_ids == end_token_id, tf.int32)
    ends_before = tf.cumsum(is_end, axis=1, exclusive=True)  # end tokens strictly before j
    return Responses(positions, token_ids, ends_before == 0)


def response_tokens(responses, end_token_id):
    """Each response's own tokens as a ragged `[batch, None]`: no end token, no padding after it.

    Example:
    >>> view = response_view(tf.constant([[5, 6, 7, 0, 8]]), tf.constant([2]), 3, end_token_id=0)
    >>> response_tokens(view, 0).to_list()
    [[7]]
    """
    return tf.ragged.boolean_mask(responses.token_ids, responses.mask & (responses.token_ids != end_token_id))
