"""The Gemma 3n family: keras-hub's stacked cache with heads before positions, `[b, layers, 2, heads, S, dim]`.

`Gemma3nCausalLM._build_cache` requires its image and audio inputs by position (None for text),
which `generic.text_only_inputs` supplies.
"""

import keras_hub

from tf_ppo.models.families import generic


class Adapter(generic.Adapter):
    """keras-hub `Gemma3nCausalLM`, run on text.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> Adapter.matches(BigramLM(vocabulary_size=5, hidden_dim=2))
    False
    """

    @staticmethod
    def matches(model):
        return isinstance(model, keras_hub.models.Gemma3nCausalLM)

    @staticmethod
    def decoder(model):
        return HeadsFirstCache(model)


class HeadsFirstCache(generic.KerasHubCache):
    """keras-hub's stacked cache, its positions on axis 4."""

    position_axis = 4
