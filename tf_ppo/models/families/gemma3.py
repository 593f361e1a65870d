"""The Gemma 3 family: keras-hub's cache is a tuple of per-layer (keys, values), not one stacked tensor.

`Gemma3CausalLM._build_cache` also requires its image inputs by position (None for text), which
`generic.text_only_inputs` supplies; the step is keras-hub's own `call_with_cache`, so sliding-window
and global layers attend as in keras-hub's `generate` (tests/unit/models/test_families.py compares them).
"""

import keras_hub

from tf_ppo.models.families import generic
from tf_ppo.models.families.generic import pad_positions


class Adapter(generic.Adapter):
    """keras-hub `Gemma3CausalLM` (text only, or a multimodal preset run on text).

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> Adapter.matches(BigramLM(vocabulary_size=5, hidden_dim=2))
    False
    """

    @staticmethod
    def matches(model):
        return isinstance(model, keras_hub.models.Gemma3CausalLM)

    @staticmethod
    def decoder(model):
        return PerLayerCache(model)


class PerLayerCache(generic.KerasHubCache):
    """keras-hub's cache as a tuple of per-layer `(keys, values)`, each `[batch, S, kv_heads, head_dim]`."""

    def grow(self, cache, length):
        return tuple((pad_positions(keys, 1, length), pad_positions(values, 1, length)) for keys, values in cache)
