"""The Qwen 3.5 family (and its MoE): hybrid layers, attention with a KV cache and gated delta-nets with a state.

keras-hub's cache is `(kv, conv, recurrent)`: the full-attention layers' stacked keys and values
`[b, layers, 2, S, heads, dim]`, and each linear-attention layer's last convolution inputs and
recurrent state. The state has no positions: feeding a token again would count it twice, where a
key written again is the same key. So decoding starts from the empty state at position 0 and the
step loop feeds every prompt token once (keras-hub's own `generate` instead prefills the padded
prompts, then feeds the last prompt token again: its state counts that token twice).
"""

import keras_hub
import tensorflow as tf

from tf_ppo.models.families import generic
from tf_ppo.models.families.generic import pad_positions, text_only_inputs


class Adapter(generic.Adapter):
    """keras-hub `Qwen3_5CausalLM` and `Qwen3_5MoeCausalLM`, run on text.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> Adapter.matches(BigramLM(vocabulary_size=5, hidden_dim=2))
    False
    """

    # keras-hub 0.32's gated delta-net branches in Python on the sequence length (`if pad_size > 0`), so its
    # forward pass traces for static lengths only: the SavedModel's score and value pad to this many tokens.
    fixed_length = 512

    @staticmethod
    def matches(model):
        return isinstance(model, (keras_hub.models.Qwen3_5CausalLM, keras_hub.models.Qwen3_5MoeCausalLM))

    @staticmethod
    def decoder(model):
        return RecurrentCache(model)


class RecurrentCache(generic.KerasHubCache):
    """Qwen 3.5's `(kv, conv, recurrent)` cache, started empty: every prompt token goes through the step.

    The state cannot be rewound to a position, so each turn of a multi-turn episode feeds the episode again.
    """

    rewinds = False

    def start(self, prompt_ids):
        # keras-hub builds its cache by prefilling: one token gives the layout, zeros make it the empty state.
        first = tf.reshape(prompt_ids[:, :1], [-1, 1])  # width 1 statically, also when the prompts' is not
        cache = self.model._build_cache(first, **text_only_inputs(self.model._build_cache, first))[1]
        return tf.nest.map_structure(tf.zeros_like, cache)

    @staticmethod
    def first_step(prompt_lengths):
        return tf.constant(1, tf.int32)  # the step at 1 feeds the token at 0, the first the state sees

    def grow(self, cache, length):
        kv, conv, recurrent = cache
        return pad_positions(kv, self.position_axis, length), conv, recurrent
