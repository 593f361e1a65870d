"""The value model: a transformer backbone with a scalar head, V(s_t) at every position."""

import keras
import tensorflow as tf

from tf_ppo.config import ModelConfig  # noqa: F401  used by the doctests
from tf_ppo.models.policy import build_backbone, build_weights, copy_model
from tf_ppo.models.policy import build_policy  # noqa: F401  used by the doctests


@keras.saving.register_keras_serializable(package="tf_ppo")
class ValueModel(keras.Model):
    """A transformer backbone with a scalar head: V(s_t) for every position.

    The head is zero-initialised (as in lm-human-preferences) so the first
    advantages are the plain discounted rewards rather than noise.

    Example:
    >>> value_model = ValueModel(build_backbone(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50))
    >>> value_model({"token_ids": tf.zeros([2, 3], tf.int32), "padding_mask": tf.ones([2, 3], tf.bool)}).shape
    TensorShape([2, 3])
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = keras.layers.Dense(1, kernel_initializer="zeros", name="value_head")

    def call(self, inputs):
        return self.values(self.backbone(inputs))

    def values(self, hidden_states):
        """The head alone: `[batch, seq, hidden]` hidden states -> `[batch, seq]` values."""
        return tf.squeeze(self.head(hidden_states), axis=-1)

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def build_value_model(model_config, policy, vocabulary_size, source=None, share_backbone=False):
    """Value model: a copy of the policy's backbone (any keras-hub architecture) and a scalar head.

    Starting from the policy's features (rather than random ones) is what
    lm-human-preferences does; a bigram policy has no transformer to copy, so
    its value model gets a fresh GPT-2 backbone of the configured size.

    Args:
        source: a `RewardModel` to start from instead (backbone and head), as
            TRL's examples initialise the value model from the reward model.
        share_backbone: use the policy's own backbone, not a copy (LoRA: one
            copy of the base weights; the value loss also trains the adapters).

    Example:
    >>> config = ModelConfig(num_layers=1, hidden_dim=16, num_heads=2)
    >>> build_value_model(config, build_policy(config, 50), 50).count_params() > 0
    True
    """
    if share_backbone:
        return build_weights(ValueModel(policy.backbone))
    if source is not None:
        value_model = build_weights(ValueModel(freeze_output_projection(copy_model(source.backbone,
                                                                                   policy.dtype_policy.name))))
        value_model.head.set_weights(source.head.get_weights())
        return value_model
    if hasattr(policy, "backbone"):
        return build_weights(ValueModel(freeze_output_projection(copy_model(policy.backbone))))
    return build_weights(ValueModel(build_backbone(model_config, vocabulary_size)))


def freeze_output_projection(backbone):
    """Freeze an untied output projection (Llama, Mistral, ...) that a head on the hidden states never uses.

    Otherwise it is a trainable variable without a gradient, and Keras warns on every optimiser build.

    Example:
    >>> backbone = build_backbone(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> freeze_output_projection(backbone) is backbone  # GPT-2 ties its projection: nothing to freeze
    True
    """
    projection = getattr(getattr(backbone, "token_embedding", None), "reverse_embeddings", None)
    if projection is not None:
        projection.trainable = False
    return backbone

