"""LoRA adapters on the policy, and the reference model as the policy with its adapters switched off.

With LoRA (`enable_lora`) the reference model is not a copy: it is the policy
itself called with its adapters switched off (`AdaptersOff`), so the process
holds one copy of the base weights.
"""

import contextlib

import tensorflow as tf  # noqa: F401  used by the doctests

from tf_ppo.config import ModelConfig  # noqa: F401  used by the doctests
from tf_ppo.models.policy import build_policy  # noqa: F401  used by the doctests


def enable_lora(policy, rank):
    """Freeze the policy's backbone and add rank-`rank` LoRA adapters to its attention query/value kernels.

    keras-hub's `Backbone.enable_lora` leaves the adapted layers' biases
    trainable; they are frozen here too, so only the adapters train.

    Example:
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> sorted({w.path.split("/")[-1] for w in enable_lora(policy, 2).trainable_weights})
    ['lora_kernel_a', 'lora_kernel_b']
    """
    policy.backbone.enable_lora(rank)
    for layer in _lora_layers(policy):
        if getattr(layer, "bias", None) is not None:
            layer.bias.trainable = False
    return policy


class AdaptersOff:
    """The reference model under LoRA: the policy called with its adapters switched off.

    Keras layers read `lora_enabled` when a `tf.function` traces them, so the
    compiled reference forward uses the frozen base kernels only, while the
    policy's own forward (traced separately) adds the adapters. No weight is copied.

    Example:
    >>> policy = enable_lora(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50), 2)
    >>> AdaptersOff(policy)({"token_ids": tf.zeros([1, 2], tf.int32), "padding_mask": tf.ones([1, 2], tf.bool)}).shape
    TensorShape([1, 2, 50])
    """

    trainable_weights = non_trainable_weights = weights = ()  # it owns none: they are the policy's

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, inputs, training=False):
        with self.switched_off():
            return self.policy(inputs, training=training)

    @contextlib.contextmanager
    def switched_off(self):
        """While tracing inside it, the policy's layers compute without their adapters."""
        layers = _lora_layers(self.policy)
        for layer in layers:
            layer.lora_enabled = False
        try:
            yield
        finally:
            for layer in layers:
                layer.lora_enabled = True


def switched_off(adapters_off, function):
    def call(*args, **kwargs):
        with adapters_off.switched_off():
            return function(*args, **kwargs)
    return call

def _lora_layers(policy):
    return [layer for layer in policy.backbone._flatten_layers() if getattr(layer, "lora_enabled", False)]
