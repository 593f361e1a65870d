"""Gradient checkpointing: each transformer block's activations are recomputed in the backward pass.

A training step's forward pass normally keeps every block's intermediate activations (attention
scores, the feed-forward's 4x-wide hidden layer, ...) until the backward pass needs them: the memory
that decides the batch size at long responses. With `recomputed_blocks`, each block keeps only its
input and recomputes the rest during the backward pass, at the cost of a second forward pass.

Keras 3 has `keras.RematScope`, but on the TensorFlow backend it wraps a layer's `call` in
`tf.recompute_grad` with the layer's keyword arguments (`decoder_padding_mask=...`), which
`tf.custom_gradient` refuses inside a `tf.function` ("supports keywords arguments only when eager
execution is enabled", keras-team/keras#21207), and it takes effect only for layers built inside the
scope. So `recomputed_blocks` wraps each block's `call` itself, for the duration of a `with` block (only
what is traced inside it is affected), passing the hidden states as the one positional tensor and
closing over the rest. It relies on Keras looking up `layer.call` on the instance when the layer is
called; tests/unit/models/test_remat.py fails if that changes (the recomputation would silently stop).
"""
import contextlib
import functools

import tensorflow as tf


def transformer_blocks(model):
    """The transformer blocks of a keras-hub model (policy, value model, reward model), [] if it has none.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> len(transformer_blocks(build_policy(ModelConfig(num_layers=2, hidden_dim=16, num_heads=2), 50)))
    2
    """
    for owner in (model, getattr(model, "policy", None)):  # AdaptersOff wraps the policy
        backbone = getattr(owner, "backbone", None)
        if backbone is not None:
            return list(getattr(backbone, "transformer_layers", []))
    return []


@contextlib.contextmanager
def recomputed_blocks(*models, enabled=True):
    """Inside the block, the models' transformer blocks recompute their activations for the gradient.

    Trace the forward pass and take the gradient inside it. `enabled=False` does nothing, so a
    training step can write one `with` statement either way.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> inputs = {"token_ids": tf.constant([[1, 2, 3]]), "padding_mask": tf.ones([1, 3], tf.bool)}
    >>> with recomputed_blocks(policy):
    ...     with tf.GradientTape() as tape:
    ...         loss = tf.reduce_sum(policy(inputs))
    ...     gradients = tape.gradient(loss, policy.trainable_variables)
    >>> all(gradient is not None for gradient in gradients)
    True
    """
    blocks = list({id(block): block for model in models if enabled and model is not None
                   for block in transformer_blocks(model)}.values())
    for block in blocks:
        block.call = _recomputing(block.call)  # an instance attribute: it shadows the class's method
    try:
        yield blocks
    finally:
        for block in blocks:
            del block.call  # the class's own method again


def _recomputing(call):
    @functools.wraps(call)
    def call_recomputing(hidden_states, *args, **kwargs):
        # Only the hidden states are differentiated; masks and flags are closed over (no gradient to them).
        return tf.recompute_grad(lambda hidden_states: call(hidden_states, *args, **kwargs))(hidden_states)
    return call_recomputing
