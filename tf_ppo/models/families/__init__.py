"""Model families: what differs between keras-hub architectures, one adapter each.

The adapters are the one place that touches keras-hub's private internals (`_build_cache`,
`call_with_cache`, the `TransformerDecoder`'s sublayers); each has a guard test that fails when
keras-hub changes them. A family without an adapter of its own uses the generic one, which serves any
keras-hub `CausalLM` through keras-hub's own cache. An adapter answers:

    adapter.decoder(model)        the decoding cache the sampler steps (start / first_step / grow / step)
    adapter.packs_backbone(b)     whether a backbone's positions and attention masks can be given per token
    adapter.packed_hidden_states(...)  its forward pass over packed rows (tf_ppo.models.packing)

Example:
>>> from tf_ppo.models import BigramLM, ModelConfig, build_policy
>>> adapter_for(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)).__module__
'tf_ppo.models.families.gpt2'
>>> type(decoder_for(BigramLM(vocabulary_size=5, hidden_dim=2))).__name__
'KerasHubCache'
"""

import keras_hub

from tf_ppo.models.families import gemma3, generic, gpt2, qwen3_5
from tf_ppo.models.families.support import UNSUPPORTED_TASKS, preset_backbone_class

# The families with code of their own; any other model uses generic.Adapter.
FAMILIES = (gpt2.Adapter, gemma3.Adapter, qwen3_5.Adapter)


def adapter_for(model):
    """The adapter of `model`'s family: the first of `FAMILIES` that matches it, else the generic one."""
    return next((adapter for adapter in FAMILIES if adapter.matches(model)), generic.Adapter)


def packing_adapter(backbone):
    """The adapter whose `packed_hidden_states` runs `backbone`, or None when no family packs it.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> packing_adapter(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50).backbone).__module__
    'tf_ppo.models.families.gpt2'
    """
    return next((adapter for adapter in FAMILIES if adapter.packs_backbone(backbone)), None)


def decoder_for(model):
    """The fastest decoding cache that serves `model`: its family adapter's."""
    return adapter_for(model).decoder(model)


def causal_lm_classes():
    """Every model class keras-hub exports as a `CausalLM` (its Seq2SeqLMs too), in name order; no base classes."""
    return [cls for name, cls in sorted(vars(keras_hub.models).items())
            if isinstance(cls, type) and issubclass(cls, keras_hub.models.CausalLM)
            and getattr(cls, "backbone_cls", None) is not None]


def causal_lm_class(preset):
    """The `CausalLM` class to load a local preset directory with: the one of its backbone class.

    `keras_hub.models.CausalLM.from_preset` takes the first task class registered for the backbone,
    which for Gemma 4 is the speculative-decoding assistant, not `Gemma4CausalLM`. A preset name
    (a download) or a directory without config.json gets the generic `CausalLM`.

    Example:
    >>> causal_lm_class("gpt2_base_en").__name__
    'CausalLM'
    """
    backbone = preset_backbone_class(preset)
    matches = [cls for cls in causal_lm_classes()
               if getattr(cls.backbone_cls, "__name__", None) == backbone and cls.__name__ not in UNSUPPORTED_TASKS]
    return matches[0] if matches else keras_hub.models.CausalLM
