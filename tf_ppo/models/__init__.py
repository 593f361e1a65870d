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

The modules (their public names are all importable from `tf_ppo.models`):

- `policy`: the tokenizer, `BigramLM`, the policy from a preset or a config, copies of a model;
- `value`: the value model, a backbone with a scalar head;
- `lora`: LoRA adapters and the adapters-off reference (`AdaptersOff`);
- `heads`: a model split into trunk and head (`trunk_and_head`, on private Keras attributes);
- `multimodal`: multimodal presets trained as text models (`text_only`, `with_encoders`);
- `report`: parameter counts and weight memory;
- `forward`, `remat`, `einsum`: the forward pass at response positions, gradient checkpointing, einsums.
"""

from tf_ppo.config import OBJECT_MARK, ConfigError, ModelConfig
from tf_ppo.models.heads import trunk_and_head
from tf_ppo.models.lora import AdaptersOff, enable_lora
from tf_ppo.models.policy import (BigramLM, build_backbone, build_policy, build_weights, copy_model, family_for,
                                  frozen_copy, load_tokenizer, policy_from_config, tokenizer_for)
from tf_ppo.models.multimodal import text_only, with_encoders
from tf_ppo.models.report import parameter_report, weight_bytes
from tf_ppo.models.value import ValueModel, build_value_model, freeze_output_projection

__all__ = [
    "OBJECT_MARK",
    "ConfigError",
    "ModelConfig",
    "load_tokenizer",
    "BigramLM",
    "policy_from_config",
    "tokenizer_for",
    "family_for",
    "text_only",
    "with_encoders",
    "build_backbone",
    "build_policy",
    "build_weights",
    "copy_model",
    "frozen_copy",
    "ValueModel",
    "build_value_model",
    "freeze_output_projection",
    "enable_lora",
    "AdaptersOff",
    "trunk_and_head",
    "parameter_report",
    "weight_bytes",
]
