"""Policy, value and reference models, and the tokenizer.

Policies share one small interface, the one keras-hub's causal LMs already
have, so the trainer never asks which architecture it holds (the sampler
asks only to pick the fastest decoding cache, `tf_ppo.generation.decoding`):

    policy({"token_ids": ids, "padding_mask": mask}) -> logits   # [batch, seq, vocab]
    policy._build_cache(ids) -> (hidden_states, cache)           # seeds a decoding cache
    policy.call_with_cache(ids, cache, index) -> (logits, hidden_states, cache)

Any keras-hub `CausalLM` (GPT-2, OPT, Llama, Gemma, Mistral, ...) has it, so
a policy can come from a preset (`policy_from_config`); built from scratch it
is a tiny `GPT2CausalLM`, or the article's own `Embedding -> Dense` model, a
bigram LM whose "cache" is empty because the next token depends on the
previous token only.

With LoRA (`enable_lora`) the reference model is not a copy: it is the policy
itself called with its adapters switched off (`AdaptersOff`), so the process
holds one copy of the base weights.
"""

import contextlib

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tf_ppo.config import OBJECT_MARK, ConfigError, ModelConfig  # noqa: F401  ModelConfig: used by the doctests


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
            return keras_hub.models.CausalLM.from_preset(preset)
    if preset is not None:
        return preset
    return build_policy(config.model, tokenizer.vocabulary_size(), tokenizer)


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


def build_weights(model):
    """Create a model's weights (if not yet) by calling it on one token; returns the model.

    Example:
    >>> len(build_weights(BigramLM(vocabulary_size=10, hidden_dim=4)).weights)
    3
    """
    if not model.built:  # a subclassed model creates its weights on its first call
        # Two tokens, not one: attention over a single position makes Keras warn about a size-1 softmax.
        model({"token_ids": tf.zeros([1, 2], tf.int32), "padding_mask": tf.ones([1, 2], tf.bool)})
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
        return type(model)(backbone=copy_model(model.backbone, dtype), preprocessor=model.preprocessor)
    config = model.get_config()
    if dtype is not None:
        config["dtype"] = dtype
    copy = build_weights(model.__class__.from_config(config))
    copy.set_weights(build_weights(model).get_weights())
    if dtype is not None and dtype != "float32" and hasattr(copy, "token_embedding"):
        copy.token_embedding.reverse_dtype = "float32"  # logits feed log-softmax, ratios and KL: keep them exact
    return copy


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


def trunk_and_head(model):
    """Split `model` into `(trunk, head)` with `model(inputs) == head(trunk(inputs))`, or None.

    The trunk maps inputs to per-position hidden states `[batch, seq, hidden]`
    and the head maps those, position by position, to the model's outputs
    (logits `[.., vocab]` or values). PPO needs the outputs at the response
    positions only, so gathering the hidden states first skips the output
    projection and the log-softmax over the prompt (tf_ppo.models.forward.response_logits).
    It splits a keras-hub `CausalLM` whose logits are its backbone's reversed
    token embedding (GPT-2, Llama, OPT, Gemma, Mistral, ...: checked on the
    model's functional graph, not by class), a `ValueModel` and `AdaptersOff`
    of those; any other model (e.g. `BigramLM`) returns None and runs whole.

    Example:
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> trunk, head = trunk_and_head(policy)
    >>> inputs = {"token_ids": tf.constant([[1, 2, 3]]), "padding_mask": tf.ones([1, 3], tf.bool)}
    >>> bool(tf.reduce_all(head(trunk(inputs)) == policy(inputs)))
    True
    >>> trunk_and_head(BigramLM(vocabulary_size=5, hidden_dim=2)) is None
    True
    """
    if isinstance(model, AdaptersOff):
        split = trunk_and_head(model.policy)
        return split and tuple(_switched_off(model, part) for part in split)
    if isinstance(model, ValueModel):
        return model.backbone, model.values
    if _logits_are_reversed_embedding(model):
        return model.backbone, lambda hidden_states: model.backbone.token_embedding(hidden_states, reverse=True)
    return None


def _switched_off(adapters_off, function):
    def call(*args, **kwargs):
        with adapters_off.switched_off():
            return function(*args, **kwargs)
    return call


def _logits_are_reversed_embedding(model):
    """True when `model`'s functional graph is `backbone.token_embedding(backbone(inputs), reverse=True)`."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(model, keras_hub.models.CausalLM) or backbone is None or len(model.outputs or ()) != 1:
        return False
    operation, node_index, _ = model.outputs[0]._keras_history
    if operation is not getattr(backbone, "token_embedding", None):
        return False
    node = operation._inbound_nodes[node_index]
    return (node.arguments.kwargs.get("reverse") is True and len(node.input_tensors) == 1
            and node.input_tensors[0]._keras_history.operation is backbone)


def _lora_layers(policy):
    return [layer for layer in policy.backbone._flatten_layers() if getattr(layer, "lora_enabled", False)]


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

    Weights shared with a model listed earlier are not counted again, so the
    bytes add up to what the process holds (LoRA: one copy of the base weights).
    A string in place of a model is printed as it is: a model not built, and why.

    Example:
    >>> print(parameter_report({"policy": build_weights(BigramLM(vocabulary_size=10, hidden_dim=4))}))
    policy: 90 trainable, 0 frozen parameters, 360 B of weights
    """
    lines, seen = [], set()
    for name, model in models.items():
        if isinstance(model, str):  # a model the run does not build, and why
            lines.append(f"{name}: {model}")
            continue
        if isinstance(model, AdaptersOff):
            lines.append(f"{name}: the policy with its LoRA adapters off, no weights of its own")
            continue
        own = [w for w in model.weights if id(w) not in seen]
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights if id(w) not in seen)
        frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights if id(w) not in seen)
        shared = f" (+{len(model.weights) - len(own)} weights shared with the above)" if len(own) < len(model.weights) else ""
        lines.append(f"{name}: {trainable:,} trainable, {frozen:,} frozen parameters, "
                     f"{_bytes(weight_bytes(own))} of weights{shared}")
        seen.update(id(w) for w in model.weights)
    return "\n".join(lines)


def weight_bytes(weights):
    """Bytes held by a list of weights.

    Example:
    >>> weight_bytes(BigramLM(vocabulary_size=10, hidden_dim=4).weights)
    0
    """
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in weights)


def _bytes(count):
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
