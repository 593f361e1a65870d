"""What a model is called with: token ids, a padding mask, and the extra inputs some families need."""

import keras
import tensorflow as tf


def model_inputs(model, token_ids, padding_mask=None):
    """The inputs of `model` (a causal LM, value or reward model) over right-padded `token_ids` `[batch, S]`.

    `{"token_ids", "padding_mask"}` (all True when `padding_mask` is None), plus
    `position_ids` `0..S-1` for the families whose backbone takes them (Gemma 4).

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> sorted(model_inputs(BigramLM(vocabulary_size=5, hidden_dim=2), tf.constant([[1, 2]])))
    ['padding_mask', 'token_ids']
    """
    if padding_mask is None:
        padding_mask = tf.ones_like(token_ids, tf.bool)
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if "position_ids" in _input_names(model):
        inputs["position_ids"] = tf.broadcast_to(tf.range(tf.shape(token_ids)[1], dtype=tf.int32)[None],
                                                 tf.shape(token_ids))
    return inputs


def _input_names(model):
    """The input names of the functional model inside `model` (itself, its backbone, or a wrapped policy's)."""
    for _ in range(3):  # ValueModel -> backbone; AdaptersOff -> policy -> its inputs
        if isinstance(model, keras.Model) and isinstance(getattr(model, "inputs", None), list):  # functional
            return {tensor.name for tensor in model.inputs}
        model = getattr(model, "backbone", None) or getattr(model, "policy", None)
    return set()
