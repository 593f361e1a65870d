"""The generic family adapter: any keras-hub `CausalLM` (and tf_ppo's `BigramLM`) through keras-hub's own cache.

keras-hub's `_build_cache` / `call_with_cache` are the decoding entry points of every family whose
signature is the GPT-2 one (GPT-2, GPT-NeoX, OPT, Bloom, Falcon, Llama, Mistral, Gemma, Phi-3, Qwen, ...);
tests/unit/models/test_families.py checks this cache against `CausalLM.generate`.

A decoding cache has four methods, which `tf_ppo.generation.sampling.generate` calls:

    cache = decoder.start(prompt_ids)             # keys/values of the prompts: [.., P, ..]
    index = decoder.first_step(prompt_lengths)    # the first position the step loop feeds a token for
    cache = decoder.grow(cache, length)           # room for `length` positions (zeros, masked until written)
    logits, cache = decoder.step(ids, index, cache)   # one token per row at position `index`

and says whether it `rewinds`: whether a position can be written again, so that the next turn of a
multi-turn episode feeds only the tokens from the first changed position on.

The step loop writes every position from `first_step - 1` on, prompt tokens included (a row keeps its
own prompt token there). Keys and values written twice are the same, so an attention cache starts
after the shortest prompt; a recurrent state would count a token twice, so a recurrent family starts
from an empty state at position 0 (`families.qwen3_5`).

keras-hub's cache is one stacked `[batch, layers, 2, S, heads, head_dim]` tensor, which its attention
slices, restacks and transposes for every layer at every step; the GPT-2 adapter's cache avoids that.
The sampler grows the cache segment by segment (`sampling.segment_ends`), so a step attends over the
positions written so far rather than the whole buffer.
"""

import inspect

import tensorflow as tf


class Adapter:
    """Any keras-hub `CausalLM`: keras-hub's own decoding cache; positions cannot be given per token, so no
    prompt packing.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> Adapter.matches(BigramLM(vocabulary_size=5, hidden_dim=2)), Adapter.packs_backbone(None)
    (True, False)
    """

    fixed_length = None  # the sequence length the SavedModel's score and value pad to; None = any length

    @staticmethod
    def matches(model):
        return True

    @staticmethod
    def decoder(model):
        """The decoding cache the sampler steps (`start`, `grow`, `step`)."""
        return KerasHubCache(model)

    @staticmethod
    def packs_backbone(backbone):
        """Whether `packed_hidden_states` can run `backbone` (a policy's, a critic's or a reward model's)."""
        return False

    @staticmethod
    def packed_hidden_states(backbone, token_ids, position_ids, mask, sources=None, training=False):
        raise TypeError(f"{type(backbone).__name__}: its positions cannot be given token by token, so its rows "
                        f"cannot be packed (tf_ppo packs keras-hub GPT-2 models)")


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

    position_axis = 3  # of keras-hub's stacked cache `[batch, layers, 2, S, heads, head_dim]`
    rewinds = True  # positions can be written again: a later turn of an episode feeds only its new tokens

    def __init__(self, model):
        self.model = model

    def start(self, prompt_ids):
        return self.model._build_cache(prompt_ids, **text_only_inputs(self.model._build_cache, prompt_ids))[1]

    @staticmethod
    def first_step(prompt_lengths):
        return tf.reduce_min(prompt_lengths)

    def grow(self, cache, length):
        return pad_positions(cache, axis=self.position_axis, length=length)

    def step(self, token_ids, index, cache):
        logits, _, cache = self.model.call_with_cache(token_ids, cache, index)
        return logits, cache


def text_only_inputs(build_cache, prompt_ids):
    """The arguments a family's `_build_cache` requires beside the tokens, for text alone.

    Multimodal families (Gemma 3, Gemma 4, Qwen 3.5, ...) require their image and audio inputs by
    position: None says "no image". The padding mask is all True: attention is causal, and positions
    past a row's prompt are written again by the step loop before anything attends to them.

    Example:
    >>> def build_cache(token_ids, img_embeddings, padding_mask, audio=None): ...
    >>> sorted(text_only_inputs(build_cache, tf.constant([[1, 2]])))
    ['img_embeddings', 'padding_mask']
    """
    required = [parameter.name for parameter in inspect.signature(build_cache).parameters.values()
                if parameter.default is inspect.Parameter.empty and parameter.name != "token_ids"
                and parameter.kind is not inspect.Parameter.VAR_KEYWORD]
    return {name: tf.ones_like(prompt_ids, tf.bool) if name == "padding_mask" else None for name in required}


def pad_positions(cache, axis, length):
    """`cache` with zeros appended along its position `axis` up to `length` positions."""
    padding = [[0, 0]] * cache.shape.rank
    padding[axis] = [0, length - tf.shape(cache)[axis]]
    return tf.pad(cache, padding)
