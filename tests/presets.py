"""Tiny keras-hub presets of three architectures, built from configs and saved locally (no download).

All three use byte-level BPE, so the project's own `data/vocab.json` and
`merges.txt` serve them; each architecture's special tokens are appended.
"""

import json

import keras_hub

from tf_ppo.config import PPOConfig

SPECIAL_TOKENS = {  # what each tokenizer class insists on finding in the vocabulary
    "gpt2": [],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "opt": ["</s>", "<pad>"],
}
ARCHITECTURES = tuple(SPECIAL_TOKENS)


def tokenizer(architecture):
    vocabulary = json.loads(open(PPOConfig().vocabulary).read())
    for token in SPECIAL_TOKENS[architecture]:
        vocabulary.setdefault(token, len(vocabulary))
    merges = PPOConfig().merges
    if architecture == "gpt2":
        return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    if architecture == "llama3":
        return keras_hub.models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)
    return keras_hub.models.OPTTokenizer(vocabulary=vocabulary, merges=merges)


def causal_lm(architecture, hidden_dim=32):
    """A randomly initialised tiny CausalLM with its preprocessor."""
    tok = tokenizer(architecture)
    size = dict(vocabulary_size=tok.vocabulary_size(), num_layers=2, hidden_dim=hidden_dim,
                intermediate_dim=2 * hidden_dim)
    if architecture == "gpt2":
        backbone = keras_hub.models.GPT2Backbone(num_heads=2, max_sequence_length=64, **size)
        return keras_hub.models.GPT2CausalLM(backbone, keras_hub.models.GPT2CausalLMPreprocessor(tok))
    if architecture == "llama3":  # grouped-query attention: 2 query heads share 1 key/value head
        backbone = keras_hub.models.Llama3Backbone(num_query_heads=2, num_key_value_heads=1, **size)
        return keras_hub.models.Llama3CausalLM(backbone, keras_hub.models.Llama3CausalLMPreprocessor(tok))
    backbone = keras_hub.models.OPTBackbone(num_heads=2, max_sequence_length=64, **size)
    return keras_hub.models.OPTCausalLM(backbone, keras_hub.models.OPTCausalLMPreprocessor(tok))


def save_tiny_preset(architecture, directory):
    """Build a tiny model of `architecture` and save it as a keras-hub preset in `directory`."""
    causal_lm(architecture).save_to_preset(str(directory))
    return str(directory)
