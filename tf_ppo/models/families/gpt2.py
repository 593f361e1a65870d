"""The GPT-2 family adapter: a faster decoding cache and prompt packing, through keras-hub's private GPT-2 internals.

Both reach into keras-hub's `TransformerDecoder` (its private sublayers) and repeat parts of
`GPT2Backbone`'s graph; tests/unit/models/test_families.py and tests/unit/models/test_packing.py compare them with
keras-hub's own cache and call, so a keras-hub release that changes those layers fails there, not
silently.
"""

import keras
import keras_hub
import tensorflow as tf

from tf_ppo.models.families import generic
from tf_ppo.models.families.generic import pad_positions


class Adapter(generic.Adapter):
    """keras-hub GPT-2 causal LMs (pre-norm self-attention decoders): `GPT2Cache`, and packed prompts.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> Adapter.matches(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50))
    True
    """

    @staticmethod
    def matches(model):
        return GPT2Cache.supports(model)

    @staticmethod
    def decoder(model):
        return GPT2Cache(model)

    @staticmethod
    def packs_backbone(backbone):
        return is_pre_norm_gpt2(backbone)

    @staticmethod
    def packed_hidden_states(backbone, token_ids, position_ids, mask, sources=None, training=False):
        return packed_hidden_states(backbone, token_ids, position_ids, mask, sources, training)


class GPT2Cache(generic.KerasHubCache):
    """Per-layer keys and values `[batch, heads, S, head_dim]` for a `GPT2CausalLM`, written in place.

    It calls the model's own layers (embeddings, layer norms, projections,
    feed-forward, tied output embedding); only the cache layout and the
    attention over it are its own. Dropout is skipped: decoding is inference.
    It reaches into keras-hub's `TransformerDecoder` (private attributes), so
    tests/unit/models/test_families.py checks it against keras-hub's own cache: a
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
        return isinstance(model, keras_hub.models.GPT2CausalLM) and is_pre_norm_gpt2(model.backbone)

    def start(self, prompt_ids):
        stacked = self.model._build_cache(prompt_ids)[1]  # [batch, layers, 2, P, heads, head_dim]
        # One transposition per rollout, instead of one per layer per step.
        return [(tf.transpose(stacked[:, i, 0], [0, 2, 1, 3]), tf.transpose(stacked[:, i, 1], [0, 2, 1, 3]))
                for i in range(self.backbone.num_layers)]

    def grow(self, cache, length):
        return [(pad_positions(keys, 2, length), pad_positions(values, 2, length)) for keys, values in cache]

    def step(self, token_ids, index, cache):
        backbone = self.backbone
        x = backbone.token_embedding(token_ids)
        x = backbone.embeddings_add((x, backbone.position_embedding(x, start_index=index)))  # [batch, t, hidden]
        updated = []
        for layer, (keys, values) in zip(backbone.transformer_layers, cache):
            attention = layer._self_attention_layer
            h = layer._self_attention_layer_norm(x)
            keys = write_position(keys, attention._key_dense(h), index)
            values = write_position(values, attention._value_dense(h), index)
            attended = attend(attention._query_dense(h), keys, values, index, attention._inverse_sqrt_key_dim)
            x = x + attention._output_dense(attended)
            h = layer._feedforward_layer_norm(x)
            x = x + layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h))
            updated.append((keys, values))
        return backbone.token_embedding(backbone.layer_norm(x), reverse=True), updated


def is_pre_norm_gpt2(backbone):
    """True for a keras-hub `GPT2Backbone` whose layers are pre-norm self-attention decoders."""
    return isinstance(backbone, keras_hub.models.GPT2Backbone) and all(
        isinstance(layer, keras_hub.layers.TransformerDecoder) and layer.normalize_first
        and layer._cross_attention_layer is None for layer in backbone.transformer_layers)


def packed_hidden_states(backbone, token_ids, position_ids, mask, sources=None, training=False):
    """`GPT2Backbone`'s output (the normalised last hidden states) over packed rows: `[rows, P, hidden]`, or
    `[rows, K, hidden]` at `sources`.

    Args:
        token_ids, position_ids: int32 `[rows, P]`.
        mask: bool `[rows, P, P]`, the keys each query may attend to (`tf_ppo.models.packing.packed_attention_mask`).
        sources: optional int32 `[rows, K]`: the states at these positions only; the last block's queries and
            feed-forward skip the rest.

    This is keras-hub's `GPT2Backbone` graph (token + position embedding, the blocks, the final
    normalisation) with the positions and the attention mask given per token, and with `sources` the last
    block computed there only (`block_outputs_at`); tests/unit/models/test_packing.py fails if it ever
    differs from the model's own call.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> backbone = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50).backbone
    >>> packed_hidden_states(backbone, tf.constant([[1, 2]]), tf.constant([[0, 1]]), tf.ones([1, 2, 2], bool)).shape
    TensorShape([1, 2, 16])
    """
    tokens = backbone.token_embedding(token_ids)  # [rows, P, hidden], the compute dtype
    positions = keras.ops.take(backbone.position_embedding.position_embeddings, position_ids, axis=0)
    hidden_states = backbone.embeddings_add((tokens, keras.ops.cast(positions, tokens.dtype)))
    hidden_states = backbone.embeddings_dropout(hidden_states, training=training)
    *blocks, last_block = backbone.transformer_layers
    for block in blocks:
        hidden_states = block(hidden_states, decoder_attention_mask=mask, training=training)
    if sources is None:
        hidden_states = last_block(hidden_states, decoder_attention_mask=mask, training=training)
    else:  # [rows, K, hidden]
        hidden_states = block_outputs_at(last_block, hidden_states, mask, sources, training)
    return backbone.layer_norm(hidden_states)


def block_outputs_at(block, hidden_states, mask, sources, training):
    """A keras-hub `TransformerDecoder`'s outputs at `sources` only `[rows, K, hidden]`: keys and values from
    every position, queries, residuals and the feed-forward at the sources alone.

    The last block's states at the prompt positions feed nothing (no later block reads their keys and values,
    and they predict no response token), so its query, output projection and feed-forward skip them. This
    repeats `TransformerDecoder.call` (pre-normalisation, no cross-attention, as GPT-2's blocks) through the
    block's private sublayers; tests/unit/models/test_packing.py fails if it ever differs from the block's own call.
    """
    sequence_length = tf.shape(mask)[-1]
    causal = tf.range(sequence_length)[None, :] <= tf.range(sequence_length)[:, None]  # [P, P]: key <= query
    rows_mask = tf.gather(mask & causal, sources, batch_dims=1)  # [rows, K, P]
    normalised = block._self_attention_layer_norm(hidden_states)  # [rows, P, hidden]
    attended = block._self_attention_layer(query=tf.gather(normalised, sources, batch_dims=1), value=normalised,
                                           attention_mask=rows_mask, training=training)  # [rows, K, hidden]
    states = tf.gather(hidden_states, sources, batch_dims=1) + block._self_attention_dropout(attended,
                                                                                            training=training)
    feedforward = block._feedforward_output_dense(block._feedforward_intermediate_dense(
        block._feedforward_layer_norm(states)))
    return states + block._feedforward_dropout(feedforward, training=training)


def write_position(cache, new, index):
    """`cache` `[batch, heads, S, head_dim]` with `new` `[batch, t, heads, head_dim]` written from position `index`."""
    return keras.ops.slice_update(cache, [0, 0, index, 0], tf.transpose(new, [0, 2, 1, 3]))


def attend(query, keys, values, index, scale):
    """Attention of the queries at positions `index ... index + t - 1` over the cache up to each; `[batch, t, heads, hd]`.

    The same arithmetic as Keras' dot-product attention: scores in float32,
    scaled after the product, softmax in float32, then back to the compute dtype.
    """
    scores = tf.cast(tf.einsum("btnh,bnsh->bnts", query, keys), tf.float32) * scale  # [batch, heads, t, S]
    # Later positions are zeros or stale: masked. Position 0 is always visible, so no row is all -inf.
    visible = tf.range(tf.shape(keys)[2])[None, :] <= index + tf.range(tf.shape(query)[1])[:, None]  # [t, S]
    scores = tf.where(visible, scores, float("-inf"))
    weights = tf.cast(tf.nn.softmax(scores, axis=-1), values.dtype)
    return tf.einsum("bnts,bnsh->btnh", weights, values)
