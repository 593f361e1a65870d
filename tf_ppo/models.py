"""Policy, value and reference models, and the tokenizer.

Policies share one small interface, the one keras-hub's causal LMs already
have, so the rollout and the trainer never ask which architecture they hold:

    policy({"token_ids": ids, "padding_mask": mask}) -> logits   # [batch, seq, vocab]
    policy._build_cache(ids) -> (hidden_states, cache)           # seeds a decoding cache
    policy.call_with_cache(ids, cache, index) -> (logits, hidden_states, cache)

`gpt2` is `keras_hub.models.GPT2CausalLM` (KV-cached decoding); `bigram` is
the article's own `Embedding -> Dense` model, a bigram LM whose "cache" is empty
because the next token depends on the previous token only.
"""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tf_ppo.config import ModelConfig  # noqa: F401  used by the docstring examples (doctests)


def load_tokenizer(vocabulary, merges):
    """Byte-level BPE tokenizer from `vocab.json` and `merges.txt` files.

    `<|endoftext|>` is start, end and padding token at once, as in GPT-2.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    >>> tokenizer.detokenize(tokenizer("the film was")) == "the film was"
    True
    """
    return keras_hub.models.GPT2Tokenizer(vocabulary=str(vocabulary), merges=str(merges))


@keras.saving.register_keras_serializable(package="tf_ppo")
class BigramLM(keras.Model):
    """The article's language model: `Embedding -> Dense`, logits over the vocabulary.

    The article ends in `Dense(vocab_size, activation='softmax')`; this returns
    the logits instead, because log-probabilities computed from probabilities
    lose precision (log of a float32 softmax underflows at -88).

    Example:
    >>> model = BigramLM(vocabulary_size=10, hidden_dim=4)
    >>> model({"token_ids": tf.zeros([2, 3], tf.int32), "padding_mask": tf.ones([2, 3], tf.bool)}).shape
    TensorShape([2, 3, 10])
    """

    def __init__(self, vocabulary_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.embedding = keras.layers.Embedding(vocabulary_size, hidden_dim, name="embedding")
        self.head = keras.layers.Dense(vocabulary_size, name="head")

    def call(self, inputs):
        return self.head(self.embedding(inputs["token_ids"]))

    def call_with_cache(self, token_ids, cache, cache_update_index):
        hidden_states = self.embedding(token_ids)
        return self.head(hidden_states), hidden_states, cache

    def _build_cache(self, token_ids):
        hidden_states = self.embedding(token_ids)
        return hidden_states, tf.zeros([tf.shape(token_ids)[0], 1])

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "hidden_dim": self.hidden_dim}


def build_backbone(model_config, vocabulary_size):
    """A keras-hub GPT-2 backbone of the configured (tiny) size, randomly initialised.

    Example:
    >>> build_backbone(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50).num_layers
    1
    """
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=model_config.num_layers,
        num_heads=model_config.num_heads,
        hidden_dim=model_config.hidden_dim,
        intermediate_dim=model_config.intermediate_dim,
        dropout=model_config.dropout,
        max_sequence_length=model_config.max_sequence_length,
    )


def build_policy(model_config, vocabulary_size):
    """A randomly initialised policy LM (`gpt2` or `bigram`), built and ready to call.

    Example:
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> type(policy).__name__
    'GPT2CausalLM'
    """
    if model_config.architecture == "bigram":
        return build_weights(BigramLM(vocabulary_size, model_config.hidden_dim))
    return keras_hub.models.GPT2CausalLM(build_backbone(model_config, vocabulary_size))


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
        hidden_states = self.backbone(inputs)  # [batch, seq, hidden]
        return tf.squeeze(self.head(hidden_states), axis=-1)  # [batch, seq]

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def build_value_model(model_config, policy, vocabulary_size):
    """Value model; its backbone starts as a copy of a GPT-2 policy's backbone.

    Starting from the policy's features (rather than random ones) is what
    lm-human-preferences does; a bigram policy has no transformer to copy, so
    its value model gets a fresh backbone of the configured size.

    Example:
    >>> config = ModelConfig(num_layers=1, hidden_dim=16, num_heads=2)
    >>> build_value_model(config, build_policy(config, 50), 50).count_params() > 0
    True
    """
    backbone = build_backbone(model_config, vocabulary_size)
    value_model = build_weights(ValueModel(backbone))
    if isinstance(policy, keras_hub.models.GPT2CausalLM):
        backbone.set_weights(policy.backbone.get_weights())
    return value_model


def build_weights(model):
    """Create a model's weights (if not yet) by calling it on one token; returns the model.

    Example:
    >>> len(build_weights(BigramLM(vocabulary_size=10, hidden_dim=4)).weights)
    3
    """
    if not model.built:  # a subclassed model creates its weights on its first call
        model({"token_ids": tf.zeros([1, 1], tf.int32), "padding_mask": tf.ones([1, 1], tf.bool)})
    return model


def copy_model(model):
    """A new model of the same class and config with the same weights (e.g. under a strategy's scope).

    Example:
    >>> len(copy_model(BigramLM(vocabulary_size=10, hidden_dim=4)).weights)
    3
    """
    copy = build_weights(model.__class__.from_config(model.get_config()))
    copy.set_weights(build_weights(model).get_weights())
    return copy


def frozen_copy(policy):
    """A non-trainable clone of `policy` with the same weights: the PPO reference model.

    Example:
    >>> frozen_copy(BigramLM(vocabulary_size=10, hidden_dim=4)).trainable
    False
    """
    reference = copy_model(policy)
    reference.trainable = False
    return reference


def parameter_report(models):
    """Trainable and frozen parameter counts and weight memory of named models, one line each.

    Example:
    >>> print(parameter_report({"policy": build_weights(BigramLM(vocabulary_size=10, hidden_dim=4))}))
    policy: 90 trainable, 0 frozen parameters, 360 B of weights
    """
    lines = []
    for name, model in models.items():
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
        size = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
        lines.append(f"{name}: {trainable:,} trainable, {frozen:,} frozen parameters, {_bytes(size)} of weights")
    return "\n".join(lines)


def _bytes(count):
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
