"""Which keras-hub `CausalLM` classes tf_ppo trains, and why the others are refused.

Light on purpose (no keras-hub import): `ModelConfig` checks a local preset's backbone class here when
the config is built, before any model is. tests/unit/models/test_every_family.py enumerates keras-hub's
`CausalLM` classes and fails on one that is in neither table, so a new keras-hub family shows up.
"""

import json
import pathlib

# keras-hub 0.32's text CausalLMs that train, sample, score and export (tests/presets.py builds each).
SUPPORTED = (
    "GPT2CausalLM", "GPTNeoXCausalLM", "OPTCausalLM", "BloomCausalLM", "FalconCausalLM", "LlamaCausalLM",
    "Llama3CausalLM", "MistralCausalLM", "MixtralCausalLM", "GemmaCausalLM", "Gemma3CausalLM", "Gemma4CausalLM",
    "Phi3CausalLM", "QwenCausalLM", "Qwen3CausalLM", "QwenMoeCausalLM", "Qwen3MoeCausalLM", "Qwen3_5CausalLM",
    "Qwen3_5MoeCausalLM", "SmolLM3CausalLM", "GptOssCausalLM",
)

# The others, by the backbone class a preset's config.json names, with the reason.
UNSUPPORTED = {
    "Gemma3nBackbone": ("Gemma 3n", "keras-hub 0.32's Gemma3nCausalLM keeps a copy of the token embedding, taken "
                                    "when the model is built, as its output layer: after loading a preset or any "
                                    "training step its logits are not those generate() samples from"),
    "RWKV7Backbone": ("RWKV-7", "a recurrent model whose keras-hub cache has no position index; tf_ppo's sampler "
                                "and scoring step a transformer's positions"),
    "PaliGemmaBackbone": ("PaliGemma", "a vision-language model: its text generation needs an image"),
    "BLIP2Backbone": ("BLIP-2", "a vision-language model: its text generation needs an image"),
    "PARSeqBackbone": ("PARSeq", "a scene-text recogniser: it reads an image, not a prompt"),
    "MoonshineBackbone": ("Moonshine", "a speech recogniser: it reads audio, not a prompt"),
    **{backbone: (family, "an encoder-decoder (sequence-to-sequence) model; tf_ppo trains decoder-only causal LMs")
       for backbone, family in (("BartBackbone", "BART"), ("T5Backbone", "T5"), ("T5GemmaBackbone", "T5Gemma"),
                                ("T5Gemma2Backbone", "T5Gemma 2"), ("EdRecBackbone", "EdRec"))},
}
# CausalLM classes whose backbone is shared with a supported class, refused by class name.
UNSUPPORTED_TASKS = {
    "Gemma4AssistantCausalLM": ("Gemma 4 assistant", "a draft model for Gemma 4's speculative decoding; it borrows "
                                                     "its target's cache and does not generate on its own"),
}


def unsupported_reason(backbone_class_name):
    """The family and reason ("RWKV-7: ...") when tf_ppo cannot train this backbone class, else None.

    Example:
    >>> unsupported_reason("GPT2Backbone") is None
    True
    >>> unsupported_reason("RWKV7Backbone").split(":")[0]
    'RWKV-7'
    """
    if backbone_class_name not in UNSUPPORTED:
        return None
    family, reason = UNSUPPORTED[backbone_class_name]
    return f"{family}: {reason}"


def preset_backbone_class(preset_dir):
    """The backbone class name a local preset directory's config.json names, or None (no such file).

    Example:
    >>> preset_backbone_class("/nonexistent") is None
    True
    """
    config = pathlib.Path(preset_dir) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("class_name")
