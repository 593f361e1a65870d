"""The per-response-token view of a sampled buffer: positions, token ids and the mask of real tokens.

A rollout buffer `sequence_ids` `[batch, P + R]` holds each row's prompt, then
its response from `prompt_lengths[i]` on (`tf_ppo.generation.sampling`).
`response_view` gathers the R response slots of every row into an aligned
`[batch, R]` view, on which all the RL maths works.
"""

import collections

import numpy as np
import tensorflow as tf

Responses = collections.namedtuple("Responses", ["positions", "token_ids", "mask"])


def response_view(sequence_ids, prompt_lengths, response_length, stop_token_ids=None):
    """Gather each row's R response slots into an aligned `[batch, R]` view.

    With `stop_token_ids` (the end token, and a chat format's end of turn), a
    response ends at its first stop token (which stays in the response:
    stopping is an action the policy is rewarded for); everything after it is
    masked out.

    Returns:
        `Responses(positions, token_ids, mask)`, each `[batch, R]`:
        buffer index, token id, and True on real response tokens.

    Example:
    >>> view = response_view(tf.constant([[5, 6, 7, 0, 8]]), tf.constant([2]), 3, stop_token_ids=(0,))
    >>> view.token_ids.numpy().tolist(), view.mask.numpy().tolist()
    ([[7, 0, 8]], [[True, True, False]])
    """
    positions = prompt_lengths[:, None] + tf.range(response_length)[None, :]  # [batch, R]
    token_ids = tf.gather(sequence_ids, positions, batch_dims=1)  # [batch, R]
    if stop_token_ids is None:
        return Responses(positions, token_ids, tf.ones_like(token_ids, tf.bool))
    is_stop = tf.cast(is_stop_token(token_ids, stop_token_ids), tf.int32)  # [batch, R]
    stops_before = tf.cumsum(is_stop, axis=1, exclusive=True)  # stop tokens strictly before j
    return Responses(positions, token_ids, stops_before == 0)


def is_stop_token(token_ids, stop_token_ids):
    """True where a token is one of `stop_token_ids`; same shape as `token_ids`.

    Example:
    >>> is_stop_token(tf.constant([[4, 7, 9]]), (7, 9)).numpy().tolist()
    [[False, True, True]]
    """
    stops = tf.constant(list(stop_token_ids), token_ids.dtype)
    return tf.reduce_any(token_ids[..., None] == stops, axis=-1)


def response_tokens(responses, stop_token_ids):
    """Each response's own tokens as a ragged `[batch, None]`: no stop token, no padding after it.

    Example:
    >>> view = response_view(tf.constant([[5, 6, 7, 0, 8]]), tf.constant([2]), 3, stop_token_ids=(0,))
    >>> response_tokens(view, (0,)).to_list()
    [[7]]
    """
    return tf.ragged.boolean_mask(responses.token_ids,
                                  responses.mask & ~is_stop_token(responses.token_ids, stop_token_ids))


def detokenize(tokenizer, token_ids):
    """Texts of a ragged `[batch, None]` batch of token ids (invalid UTF-8 replaced).

    Example:
        texts = detokenize(tokenizer, tf.ragged.constant([[464, 3807]]))
    """
    texts = tokenizer.detokenize(token_ids)  # ragged [batch, None] -> [batch] strings
    return [text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
            for text in np.asarray(texts).tolist()]


def detokenize_ids(tokenizer, token_ids):
    """The text of one list of token ids.

    Example:
        text = detokenize_ids(tokenizer, [464, 3807])
    """
    return detokenize(tokenizer, tf.ragged.constant([np.asarray(token_ids, np.int32).tolist()], tf.int32))[0]
