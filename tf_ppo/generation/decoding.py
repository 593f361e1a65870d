"""Decoding caches: the keys and values a sampler keeps so each new token costs one cached step.

A cache object has three methods, which `tf_ppo.generation.sampling.generate` calls:

    cache = decoder.start(prompt_ids)             # keys/values of the prompts: [.., P, ..]
    cache = decoder.grow(cache, length)           # room for `length` positions (zeros, masked until written)
    logits, cache = decoder.step(ids, index, cache)   # one token per row at position `index`

`decoder_for(policy)` picks one:

- `KerasHubCache` works for every keras-hub `CausalLM` through its own
  `_build_cache` / `call_with_cache`. Its cache is one stacked
  `[batch, layers, 2, S, heads, head_dim]` tensor, and keras-hub's attention
  slices it, restacks it and transposes keys and values for every layer at
  every step, so a step reads and writes the whole cache about six times.
- `GPT2Cache`, for `GPT2CausalLM` (tf_ppo's own policy and GPT-2 presets),
  keeps one `[batch, heads, S, head_dim]` key and value tensor per layer,
  writes the new position in place and attends without transposing. It runs
  the same layers with the same weights: the tokens and logits are those of
  `KerasHubCache` (tests/test_decoding.py). At S2 of the performance issue
  (4 layers, hidden 256, batch 64) a step over 48 positions takes 2.4 ms
  instead of 7.1, over 144 positions 4.1 instead of 20.5.

The sampler grows the cache segment by segment (`rollout.segment_ends`), so a
step attends over the positions written so far rather than the whole buffer.
"""

import keras
import keras_hub
import tensorflow as tf


class KerasHubCache:
    """keras-hub's own decoding cache, through the model's `_build_cache` / `call_with_cache`.

    The cache is `[batch, layers, 2, S, heads, head_dim]`, keras-hub's layout for
    every CausalLM (tf_ppo's `BigramLM` has the same layout with no layers).

    Example:
    >>> from tf_ppo.models import build_policy, ModelConfig
    >>> decoder = KerasHubCache(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50))
    >>> cache = decoder.grow(decoder.start(tf.constant([[1, 2, 3]])), 5)
    >>> logits, cache = decoder.step(tf.constant([[4]]), 3, cache)
    >>> logits.shape, cache.shape
    (TensorShape([1, 1, 50]), TensorShape([1, 1, 2, 5, 2, 8]))
    """

    def __init__(self, model):
        self.model = model

    def start(self, prompt_ids):
        return self.model._build_cache(prompt_ids)[1]

    def grow(self, cache, length):
        return _pad_positions(cache, axis=3, length=length)

    def step(self, token_ids, index, cache):
        logits, _, cache = self.model.call_with_cache(token_ids, cache, index)
        return logits, cache


class GPT2Cache:
    """Per-layer keys and values `[batch, heads, S, head_dim]` for a `GPT2CausalLM`, written in place.

    It calls the model's own layers (embeddings, layer norms, projections,
    feed-forward, tied output embedding); only the cache layout and the
    attention over it are its own. Dropout is skipped: decoding is inference.
    It reaches into keras-hub's `TransformerDecoder` (private attributes), so
    tests/test_decoding.py checks it against keras-hub's own cache: a
    keras-hub release that changes those layers fails there, not silently.

    Example:
    >>> from tf_ppo.models import build_policy, ModelConfig
    >>> decoder = GPT2Cache(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50))
    >>> cache = decoder.grow(decoder.start(tf.constant([[1, 2, 3]])), 5)
    >>> logits, cache = decoder.step(tf.constant([[4]]), 3, cache)
    >>> logits.shape, [keys.shape for keys, values in cache]
    (TensorShape([1, 1, 50]), [TensorShape([1, 2, 5, 8])])
    """

    def __init__(self, model):
        self.model = model
        self.backbone = model.backbone

    @staticmethod
    def supports(model):
        """True for a GPT-2 causal LM whose layers are keras-hub's pre-norm self-attention decoders."""
        if not isinstance(model, keras_hub.models.GPT2CausalLM):
            return False
        return all(isinstance(layer, keras_hub.layers.TransformerDecoder) and layer.normalize_first
                   and layer._cross_attention_layer is None for layer in model.backbone.transformer_layers)

    def start(self, prompt_ids):
        stacked = self.model._build_cache(prompt_ids)[1]  # [batch, layers, 2, P, heads, head_dim]
        # One transposition per rollout, instead of one per layer per step.
        return [(tf.transpose(stacked[:, i, 0], [0, 2, 1, 3]), tf.transpose(stacked[:, i, 1], [0, 2, 1, 3]))
                for i in range(self.backbone.num_layers)]

    def grow(self, cache, length):
        return [(_pad_positions(keys, 2, length), _pad_positions(values, 2, length)) for keys, values in cache]

    def step(self, token_ids, index, cache):
        backbone = self.backbone
        x = backbone.token_embedding(token_ids)
        x = backbone.embeddings_add((x, backbone.position_embedding(x, start_index=index)))  # [batch, 1, hidden]
        updated = []
        for layer, (keys, values) in zip(backbone.transformer_layers, cache):
            attention = layer._self_attention_layer
            h = layer._self_attention_layer_norm(x)
            keys = _write_position(keys, attention._key_dense(h), index)
            values = _write_position(values, attention._value_dense(h), index)
            attended = _attend(attention._query_dense(h), keys, values, index, attention._inverse_sqrt_key_dim)
            x = x + attention._output_dense(attended)
            h = layer._feedforward_layer_norm(x)
            x = x + layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h))
            updated.append((keys, values))
        return backbone.token_embedding(backbone.layer_norm(x), reverse=True), updated


def decoder_for(model):
    """The fastest cache that serves `model`: `GPT2Cache` for GPT-2, else `KerasHubCache`.

    Example:
    >>> from tf_ppo.models import BigramLM, build_policy, ModelConfig
    >>> type(decoder_for(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50))).__name__
    'GPT2Cache'
    >>> type(decoder_for(BigramLM(vocabulary_size=5, hidden_dim=2))).__name__
    'KerasHubCache'
    """
    return GPT2Cache(model) if GPT2Cache.supports(model) else KerasHubCache(model)


def _pad_positions(cache, axis, length):
    """`cache` with zeros appended along its position `axis` up to `length` positions."""
    padding = [[0, 0]] * cache.shape.rank
    padding[axis] = [0, length - tf.shape(cache)[axis]]
    return tf.pad(cache, padding)


def _write_position(cache, new, index):
    """`cache` `[batch, heads, S, head_dim]` with `new` `[batch, 1, heads, head_dim]` written at position `index`."""
    return keras.ops.slice_update(cache, [0, 0, index, 0], tf.transpose(new, [0, 2, 1, 3]))


def _attend(query, keys, values, index, scale):
    """Attention of one query position `index` over cache positions 0..index; `[batch, 1, heads, head_dim]`.

    The same arithmetic as Keras' dot-product attention: scores in float32,
    scaled after the product, softmax in float32, then back to the compute dtype.
    """
    scores = tf.cast(tf.einsum("btnh,bnsh->bnts", query, keys), tf.float32) * scale  # [batch, heads, 1, S]
    # Later positions are zeros or stale: masked. Position 0 is always visible, so no row is all -inf.
    visible = tf.range(tf.shape(keys)[2]) <= index
    scores = tf.where(visible, scores, float("-inf"))
    weights = tf.cast(tf.nn.softmax(scores, axis=-1), values.dtype)
    return tf.einsum("bnts,bnsh->btnh", weights, values)
