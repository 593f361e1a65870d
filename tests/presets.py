"""Tiny keras-hub CausalLMs of every text family, built from configs and saved locally (no download).

`causal_lm(family)` builds a randomly initialised 2-layer model of `family` (one of `FAMILIES`) with its real
keras-hub preprocessor and tokenizer classes:

- byte-level BPE families reuse the project's own `data/vocab.json` and `merges.txt`, with the family's special
  tokens appended (`SPECIAL_TOKENS`);
- SentencePiece families get a small byte-fallback BPE SentencePiece model trained in memory on `data/corpus.txt`
  (once per family and process, see `sentencepiece_proto`), with pad/bos/eos/unk at the family's real ids and
  its other special tokens as user-defined pieces.

Each vocabulary holds the family's real turn tokens (`<start_of_turn>`, `<|im_end|>`, `<|eot_id|>`, ...), which
tokenize to one id each. Weights are seeded: two calls build the same model.

`ARCHITECTURES` (GPT-2, Llama 3, OPT) are the three families the integration tests of presets run on.
"""

import contextlib
import io
import json
import random
from pathlib import Path

import keras_hub

from tf_ppo.config import PPOConfig

# Tokens each family's vocabulary gets besides ordinary text: what its tokenizer class insists on finding, plus
# its chat/turn tokens. Byte-level BPE families append them to `data/vocab.json` (in this order, skipping those
# already there); SentencePiece families make them user-defined pieces (after pad/bos/eos/unk, see `_SP_IDS`).
SPECIAL_TOKENS = {
    # --- byte-level BPE ---
    "gpt2": [],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "opt": ["</s>", "<pad>"],
    "gpt_neo_x": [],  # <|endoftext|> is already in data/vocab.json
    "bloom": ["<unk>", "<s>", "</s>", "<pad>"],
    "falcon": [],
    "qwen": ["<|im_start|>", "<|im_end|>"],  # Qwen 2 / 2.5 (ChatML)
    "qwen_moe": ["<|im_start|>", "<|im_end|>"],
    "qwen3": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
    "qwen3_moe": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
    "qwen3_5": ["<|im_start|>", "<|im_end|>", "<think>", "</think>",
                "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "qwen3_5_moe": ["<|im_start|>", "<|im_end|>", "<think>", "</think>",
                    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "smollm3": ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
    # Harmony format: <|start|>role<|channel|>final<|message|>text<|end|> (<|return|> ends the last answer).
    "gpt_oss": ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"],
    # --- SentencePiece ---
    "llama": ["[INST]", "[/INST]"],  # Llama 2 (and Mistral v1) chat: <s>[INST] ... [/INST] answer</s>
    "mistral": ["[INST]", "[/INST]"],
    "mixtral": ["[INST]", "[/INST]"],
    "phi3": ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
    "gemma": ["<mask>", "<start_of_turn>", "<end_of_turn>"],  # Gemma 1
    "gemma2": ["<mask>", "<start_of_turn>", "<end_of_turn>"],  # Gemma 2: GemmaCausalLM, Gemma 2 options
    "gemma3": ["<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<img>"],
    "gemma3n": ["<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>", "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"],
    # Gemma 4 chat: <|turn>user\n...<turn|>; generate() stops at <eos> and <turn|>.
    "gemma4": ["<mask>", "<|turn>", "<turn|>", "<|image>", "<|image|>", "<image|>",
               "<|audio>", "<|audio|>", "<audio|>", "<|video|>"],
}
ARCHITECTURES = ("gpt2", "llama3", "opt")  # the three the integration tests of presets run on

BPE_FAMILIES = ("gpt2", "gpt_neo_x", "opt", "bloom", "falcon", "llama3", "qwen", "qwen_moe", "qwen3", "qwen3_moe",
                "qwen3_5", "qwen3_5_moe", "smollm3", "gpt_oss")
SENTENCEPIECE_FAMILIES = ("llama", "mistral", "mixtral", "phi3", "gemma", "gemma2", "gemma3", "gemma3n", "gemma4")
FAMILIES = ("gpt2", "gpt_neo_x", "opt", "bloom", "falcon", "llama", "llama3", "mistral", "mixtral", "gemma", "gemma2",
            "gemma3", "gemma3n", "gemma4", "phi3", "qwen", "qwen3", "qwen_moe", "qwen3_moe", "qwen3_5", "qwen3_5_moe",
            "smollm3", "gpt_oss")

# Each family's end-of-turn token, where it has a chat format (its end token otherwise ends a turn).
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen": "<|im_end|>", "qwen_moe": "<|im_end|>", "qwen3": "<|im_end|>",
               "qwen3_moe": "<|im_end|>", "qwen3_5": "<|im_end|>", "qwen3_5_moe": "<|im_end|>",
               "smollm3": "<|im_end|>", "gpt_oss": "<|end|>", "llama": "</s>", "mistral": "</s>", "mixtral": "</s>",
               "phi3": "<|end|>", "gemma": "<end_of_turn>", "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>",
               "gemma3n": "<end_of_turn>", "gemma4": "<turn|>"}

# SentencePiece ids of pad/bos/eos/unk as in the real checkpoints (-1: no such piece).
_GEMMA_IDS = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                  unk_piece="<unk>")
_LLAMA_IDS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>")
_SP_IDS = {family: (_GEMMA_IDS if family.startswith("gemma") else _LLAMA_IDS) for family in SENTENCEPIECE_FAMILIES}
SENTENCEPIECE_VOCABULARY_SIZE = 768  # 256 byte pieces (byte fallback, as Llama and Gemma have), specials, text

SEED = 1234
SLIDING_WINDOW = 32  # where a family has sliding-window attention: shorter than the 64-token sequences tests use

_PROTOS = {}  # (family, corpus) -> serialized SentencePiece model, trained once per process


def sentencepiece_proto(family, corpus=None):
    """A small SentencePiece model of `family`'s vocabulary layout, trained on `corpus` (cached).

    `corpus`: a text file, one sentence per line; default the shipped `data/corpus.txt`.
    """
    # A small corpus of its own may hold fewer pieces than the vocabulary size: then the vocabulary is smaller.
    limits = {"hard_vocab_limit": False} if corpus else {}
    corpus = corpus or Path(PPOConfig().vocabulary).with_name("corpus.txt")
    if (family, str(corpus)) not in _PROTOS:
        import sentencepiece

        with open(corpus) as lines_file:
            lines = [line.strip() for line in lines_file if line.strip()]
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=SENTENCEPIECE_VOCABULARY_SIZE,
            model_type="bpe", character_coverage=1.0, byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=not family.startswith("gemma"), user_defined_symbols=SPECIAL_TOKENS[family],
            num_threads=1, minloglevel=2, **limits, **_SP_IDS[family])
        _PROTOS[family, str(corpus)] = model.getvalue()
    return _PROTOS[family, str(corpus)]


def _bpe_vocabulary(family):
    vocabulary = json.loads(open(PPOConfig().vocabulary).read())
    for token in SPECIAL_TOKENS[family]:
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary


_TOKENIZERS = {"gpt2": "GPT2Tokenizer", "gpt_neo_x": "GPTNeoXTokenizer", "opt": "OPTTokenizer",
               "bloom": "BloomTokenizer", "falcon": "FalconTokenizer", "llama3": "Llama3Tokenizer",
               "qwen": "QwenTokenizer", "qwen_moe": "QwenMoeTokenizer", "qwen3": "Qwen3Tokenizer",
               "qwen3_moe": "Qwen3MoeTokenizer", "qwen3_5": "Qwen3_5Tokenizer", "qwen3_5_moe": "Qwen3_5MoeTokenizer",
               "smollm3": "SmolLM3Tokenizer", "gpt_oss": "GptOssTokenizer", "llama": "LlamaTokenizer",
               "mistral": "MistralTokenizer", "mixtral": "MixtralTokenizer", "phi3": "Phi3Tokenizer",
               "gemma": "GemmaTokenizer", "gemma2": "GemmaTokenizer", "gemma3": "Gemma3Tokenizer",
               "gemma3n": "Gemma3nTokenizer", "gemma4": "Gemma4Tokenizer"}


def tokenizer(architecture, corpus=None):
    """`architecture`'s keras-hub tokenizer, over the project's BPE vocabulary or a small SentencePiece model.

    `corpus` (SentencePiece families): the text the SentencePiece model is trained on; default `data/corpus.txt`.
    """
    cls = getattr(keras_hub.models, _TOKENIZERS[architecture])
    if architecture in SENTENCEPIECE_FAMILIES:
        return cls(proto=sentencepiece_proto(architecture, corpus))
    vocabulary, merges = _bpe_vocabulary(architecture), PPOConfig().merges
    if architecture in ARCHITECTURES:  # as the integration tests of presets have always had them
        return cls(vocabulary=vocabulary, merges=merges)
    # Keep every special and turn token whole when it appears in text (keras-hub keeps only the class's own
    # special tokens whole by default), as Hugging Face's added tokens are.
    own = cls(vocabulary=vocabulary, merges=merges).special_tokens
    unsplittable = sorted(set(own) | set(SPECIAL_TOKENS[architecture]) | {"<|endoftext|>"} & set(vocabulary))
    return cls(vocabulary=vocabulary, merges=merges, unsplittable_tokens=unsplittable)


@contextlib.contextmanager
def _seeded(seed):
    """Keras draws initializer and dropout seeds from Python's `random`: seed it, then put its state back."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _backbone(family, tok, hidden_dim, num_layers=2):
    m = keras_hub.models
    vocabulary_size = tok.vocabulary_size()
    head_dim = hidden_dim // 2
    size = dict(vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=hidden_dim,
                intermediate_dim=2 * hidden_dim)
    gqa = dict(num_query_heads=2, num_key_value_heads=1)  # grouped-query attention: 2 query heads, 1 key/value head
    moe = dict(num_experts=4, top_k=2)
    if family == "gpt2":
        return m.GPT2Backbone(num_heads=2, max_sequence_length=64, **size)
    if family == "opt":
        return m.OPTBackbone(num_heads=2, max_sequence_length=64, **size)
    if family == "gpt_neo_x":
        return m.GPTNeoXBackbone(num_heads=2, max_sequence_length=64, **size)
    if family == "bloom":
        return m.BloomBackbone(num_heads=2, **size)
    if family == "falcon":
        return m.FalconBackbone(num_attention_heads=2, **size)
    if family == "llama3":
        return m.Llama3Backbone(**gqa, **size)
    if family == "llama":
        return m.LlamaBackbone(**gqa, **size)
    if family == "mistral":
        return m.MistralBackbone(**gqa, sliding_window=SLIDING_WINDOW, **size)
    if family == "mixtral":
        return m.MixtralBackbone(**gqa, **moe, sliding_window=SLIDING_WINDOW, **size)
    if family == "phi3":
        return m.Phi3Backbone(**gqa, max_sequence_length=64, pretraining_sequence_length=64, **size)
    if family == "gemma":
        return m.GemmaBackbone(**gqa, head_dim=head_dim, **size)
    if family == "gemma2":  # alternating sliding/global layers, post-norms, soft-capped logits
        return m.GemmaBackbone(**gqa, head_dim=head_dim, query_head_dim_normalize=False, use_post_ffw_norm=True,
                               use_post_attention_norm=True, attention_logit_soft_cap=50.0,
                               final_logit_soft_cap=30.0, use_sliding_window_attention=True,
                               sliding_window_size=SLIDING_WINDOW, **size)
    if family == "gemma3":  # text only; layers 0-4 of every 6 use the sliding window, so both of these do
        return m.Gemma3Backbone(**gqa, head_dim=head_dim, image_size=64, vision_encoder=None,
                                use_post_ffw_norm=True, use_post_attention_norm=True,
                                use_sliding_window_attention=True, sliding_window_size=SLIDING_WINDOW, **size)
    if family == "gemma3n":  # text only: no vision or audio encoder
        return m.Gemma3nBackbone(
            text_vocab_size=vocabulary_size, text_hidden_size=hidden_dim, num_hidden_layers=2,
            pad_token_id=tok.pad_token_id, num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
            intermediate_size=[2 * hidden_dim] * 2, hidden_activation="gelu_approximate",
            layer_types=["sliding_attention", "full_attention"], sliding_window=SLIDING_WINDOW, rope_theta=1e6,
            max_position_embeddings=128, vocab_size_per_layer_input=vocabulary_size, hidden_size_per_layer_input=4,
            altup_num_inputs=2, laurel_rank=4, activation_sparsity_pattern=[0.95, 0.0],
            final_logit_soft_cap=30.0, image_token_id=tok.image_placeholder_id,
            audio_token_id=tok.audio_placeholder_id)
    if family == "gemma4":  # text only; a sliding and a global layer, wider global heads, per-layer inputs
        return m.Gemma4Backbone(**gqa, head_dim=head_dim, global_head_dim=2 * head_dim, image_size=64,
                                layer_types=["sliding_attention", "full_attention"],
                                sliding_window_size=SLIDING_WINDOW, global_rope_partial_rotary_factor=0.25,
                                hidden_size_per_layer_input=4, final_logit_soft_cap=30.0, **size)
    if family == "qwen":
        return m.QwenBackbone(**gqa, **size)
    if family == "qwen3":
        return m.Qwen3Backbone(**gqa, head_dim=head_dim, **size)
    if family == "qwen_moe":
        return m.QwenMoeBackbone(**gqa, **moe, moe_intermediate_dim=hidden_dim,
                                 shared_expert_intermediate_dim=2 * hidden_dim, **size)
    if family == "qwen3_moe":
        return m.Qwen3MoeBackbone(**gqa, **moe, head_dim=head_dim, moe_intermediate_dim=hidden_dim, **size)
    linear = dict(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                  linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
                  linear_conv_kernel_dim=4)
    if family == "qwen3_5":  # hybrid: a gated delta-net (linear attention) layer, then a full attention layer
        return m.Qwen3_5Backbone(**gqa, head_dim=head_dim, vision_encoder=None, **linear, **size)
    if family == "qwen3_5_moe":
        size.pop("intermediate_dim")
        return m.Qwen3_5MoeBackbone(**gqa, **moe, head_dim=head_dim, vision_encoder=None,
                                    moe_intermediate_dim=hidden_dim, shared_expert_intermediate_size=hidden_dim,
                                    **linear, **size)
    if family == "smollm3":  # every 4th layer has no rotary embedding (NoPE); here the second
        return m.SmolLM3Backbone(
            vocabulary_size=vocabulary_size, hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim, num_layers=2,
            num_attention_heads=2, num_key_value_heads=1, attention_bias=False, attention_dropout=0.0,
            rope_layer_enabled_list=[True, False], layer_types=["attention"] * 2, mlp_bias=False,
            layer_norm_epsilon=1e-6, max_position_embeddings=128, rope_theta=10000.0, partial_rotary_factor=1.0)
    if family == "gpt_oss":  # odd layers use the sliding window
        return m.GptOssBackbone(**gqa, **moe, head_dim=head_dim, sliding_window=SLIDING_WINDOW, **size)
    raise ValueError(f"Unknown family {family!r}; expected one of {FAMILIES}")


_CLASSES = {"gpt2": "GPT2", "gpt_neo_x": "GPTNeoX", "opt": "OPT", "bloom": "Bloom", "falcon": "Falcon",
            "llama": "Llama", "llama3": "Llama3", "mistral": "Mistral", "mixtral": "Mixtral", "gemma": "Gemma",
            "gemma2": "Gemma", "gemma3": "Gemma3", "gemma3n": "Gemma3n", "gemma4": "Gemma4", "phi3": "Phi3",
            "qwen": "Qwen", "qwen3": "Qwen3", "qwen_moe": "QwenMoe", "qwen3_moe": "Qwen3Moe", "qwen3_5": "Qwen3_5",
            "qwen3_5_moe": "Qwen3_5Moe", "smollm3": "SmolLM3", "gpt_oss": "GptOss"}


def causal_lm(architecture, hidden_dim=32, num_layers=2, corpus=None):
    """A randomly initialised (seeded) tiny CausalLM of `architecture` (one of `FAMILIES`) with its preprocessor.

    `num_layers` and `corpus` (what a SentencePiece tokenizer is trained on) serve larger experiments
    (scripts/chat_arithmetic.py); the tests use the defaults.
    """
    prefix = _CLASSES[architecture]
    tok = tokenizer(architecture, corpus)
    preprocessor = getattr(keras_hub.models, f"{prefix}CausalLMPreprocessor")(tokenizer=tok)
    with _seeded(SEED):
        backbone = _backbone(architecture, tok, hidden_dim, num_layers)
        return getattr(keras_hub.models, f"{prefix}CausalLM")(backbone=backbone, preprocessor=preprocessor)


def gemma3_with_vision(hidden_dim=32):
    """A tiny Gemma 3 with a (tiny) vision encoder and an image-converting preprocessor: a multimodal preset."""
    m = keras_hub.models
    tok = tokenizer("gemma3")
    with _seeded(SEED):
        vision = m.Gemma3VisionEncoder(image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1,
                                       intermediate_dim=16, output_dim=hidden_dim, pool_size=2)
        backbone = m.Gemma3Backbone(
            vocabulary_size=tok.vocabulary_size(), num_layers=2, hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim,
            num_query_heads=2, num_key_value_heads=1, head_dim=hidden_dim // 2, image_size=16, vision_encoder=vision,
            use_post_ffw_norm=True, use_post_attention_norm=True, use_sliding_window_attention=True,
            sliding_window_size=SLIDING_WINDOW)
    preprocessor = m.Gemma3CausalLMPreprocessor(
        tokenizer=tok, image_converter=keras_hub.layers.Gemma3ImageConverter(image_size=(16, 16)))
    return m.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)


def save_tiny_preset(architecture, directory):
    """Build a tiny model of `architecture` and save it as a keras-hub preset in `directory`."""
    causal_lm(architecture).save_to_preset(str(directory))
    return str(directory)
