"""The policy: from a keras-hub preset or built from a config, its tokenizer, and copies of it.

A policy comes from a preset (`policy_from_config`: any keras-hub `CausalLM`,
a local preset directory works offline) or is built from scratch
(`build_policy`): a tiny `GPT2CausalLM`, or the article's own
`Embedding -> Dense` model, `BigramLM`. `copy_model` and `frozen_copy` copy a
model with its weights (the reference model without LoRA).
"""

import contextlib

import keras
import keras_hub
import tensorflow as tf

from tf_ppo.config import OBJECT_MARK, ConfigError, ModelConfig  # noqa: F401  ModelConfig: used by the doctests
from tf_ppo.models.families import causal_lm_class
from tf_ppo.models.inputs import model_inputs
from tf_ppo.models.multimodal import text_only


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
        # keras-hub's cache layout [batch, layers, 2, S, heads, head_dim] with no layers: nothing to keep.
        return hidden_states, tf.zeros([tf.shape(token_ids)[0], 0, 2, tf.shape(token_ids)[1], 0, 0])

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "hidden_dim": self.hidden_dim}


def policy_from_config(config, tokenizer):
    """The policy a run starts from: the configured preset (or CausalLM object), else a new tiny model.

    A preset loads with `keras_hub.models.CausalLM.from_preset`, so any
    architecture keras-hub knows works; a local preset directory works offline.
    A multimodal one trains as a text model (`tf_ppo.models.multimodal`).

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> config = PPOConfig(model={"num_layers": 1, "hidden_dim": 16, "num_heads": 2})
    >>> type(policy_from_config(config, tokenizer_for(config))).__name__
    'GPT2CausalLM'
    """
    preset = config.model.preset
    if isinstance(preset, str):
        _check_preset_name(preset)
        with _download_errors_named(preset):
            return text_only(causal_lm_class(preset).from_preset(preset))
    if preset is not None:
        return text_only(preset)
    return build_policy(config.model, tokenizer.vocabulary_size(), tokenizer)


def family_for(config, policy=None):
    """The keras-hub class name the policy is, or will be, when known before loading it (its chat template's key).

    None for a preset name: its class is known once it is downloaded.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> family_for(PPOConfig()), family_for(PPOConfig(model="gpt2_base_en"))
    ('GPT2CausalLM', None)
    """
    model = policy if policy is not None else config.model.preset
    if isinstance(model, str):
        cls = causal_lm_class(model)
        return None if cls is keras_hub.models.CausalLM else cls.__name__
    if model is not None:
        return type(model).__name__
    return {"gpt2": "GPT2CausalLM", "bigram": "BigramLM"}[config.model.architecture]


def tokenizer_for(config, policy=None):
    """The tokenizer that goes with a policy: its preprocessor's, else the preset's, else the config's files.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> type(tokenizer_for(PPOConfig())).__name__
    'GPT2Tokenizer'
    """
    preset = config.model.preset
    for source in (policy, None if isinstance(preset, str) else preset):
        if getattr(source, "preprocessor", None) is not None:
            return source.preprocessor.tokenizer
    if isinstance(preset, str):
        _check_preset_name(preset)
        with _download_errors_named(preset):
            return keras_hub.models.Tokenizer.from_preset(preset)
    return load_tokenizer(config.vocabulary, config.merges)


@contextlib.contextmanager
def _download_errors_named(preset):
    """A failed preset download (no network) as one `ConfigError` naming the preset, not a 100-line trace."""
    import urllib.error

    import requests

    # What a download raises without a network (keras-hub fetches through kagglehub / requests).
    network_errors = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, urllib.error.URLError,
                      ConnectionError, TimeoutError)
    try:
        yield
    except network_errors as error:
        raise ConfigError(f"could not download preset {preset!r} (no network?); pass a local preset "
                          f"directory") from error


def _check_preset_name(preset):
    if preset.startswith(OBJECT_MARK):
        raise ConfigError(f"ModelConfig.preset was a Python object ({preset}), which config.json cannot hold; "
                         f"pass the model again: config.replace(model=causal_lm)")


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


def build_policy(model_config, vocabulary_size, tokenizer=None):
    """A randomly initialised policy LM (`gpt2` or `bigram`), built and ready to call.

    Given a `tokenizer`, the GPT-2 policy is a complete keras-hub `CausalLM`:
    its preprocessor (padding to the model's context) makes
    `policy.generate("text")` and `policy.save_to_preset(dir)` work as on any
    keras-hub model.

    Example:
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> type(policy).__name__, policy.preprocessor
    ('GPT2CausalLM', None)
    """
    if model_config.architecture == "bigram":
        return build_weights(BigramLM(vocabulary_size, model_config.hidden_dim))
    preprocessor = None if tokenizer is None else keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=model_config.max_sequence_length)
    return keras_hub.models.GPT2CausalLM(build_backbone(model_config, vocabulary_size), preprocessor=preprocessor)


def build_weights(model):
    """Create a model's weights (if not yet) by calling it on one token; returns the model.

    Example:
    >>> len(build_weights(BigramLM(vocabulary_size=10, hidden_dim=4)).weights)
    3
    """
    if not model.built:  # a subclassed model creates its weights on its first call
        # Two tokens, not one: attention over a single position makes Keras warn about a size-1 softmax.
        model(model_inputs(model, tf.zeros([1, 2], tf.int32)))
    return model


def copy_model(model, dtype=None):
    """A new model of the same class and config with the same weights (e.g. under a strategy's scope).

    Args:
        dtype: a Keras dtype policy name for the copy ("mixed_bfloat16", ...);
            None keeps the model's. Under mixed precision the logits are still
            computed in float32 (the reverse embedding), as the PPO maths needs.

    A keras-hub `CausalLM` is rebuilt around a copy of its backbone and keeps
    its preprocessor (the tokenizer's vocabulary lives there, not in the config).

    Example:
    >>> len(copy_model(BigramLM(vocabulary_size=10, hidden_dim=4)).weights)
    3
    """
    if isinstance(model, keras_hub.models.CausalLM):
        copy = type(model)(backbone=copy_model(model.backbone, dtype), preprocessor=model.preprocessor)
        if hasattr(model, "left_out"):  # encoders of a multimodal preset, left out of training (multimodal.py)
            copy.left_out = model.left_out
        return copy
    config = model.get_config()
    if dtype is not None:
        config["dtype"] = dtype
    copy = build_weights(model.__class__.from_config(config))
    copy.set_weights(build_weights(model).get_weights())
    if dtype is not None and dtype != "float32" and hasattr(copy, "token_embedding"):
        copy.token_embedding.reverse_dtype = "float32"  # logits feed log-softmax, ratios and KL: keep them exact
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
