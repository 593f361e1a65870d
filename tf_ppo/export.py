"""Export a fine-tuned policy as a SavedModel: strings in, text out.

The SavedModel holds the tokenizer ops, the policy weights and these
signatures; loading it needs TensorFlow and `tensorflow_text` (for the BPE
tokenizer ops: `import tensorflow_text` before `tf.saved_model.load`), not
tf_ppo or keras-hub:

  generate(prompts, max_new_tokens, temperature, top_k, seed)
      -> completions (string [batch]), token_ids (int32 [batch, max_new_tokens],
         padding after `lengths`), lengths (int32 [batch]). top_k=1 is greedy decoding; top_k=0 samples
         from the whole distribution. A completion ends at the first end token.
  serving_default(prompts): `generate` with the defaults fixed at export time.
  score(prompts, completions) -> logprobs (float32 [batch, completion_len], 0 on
      padding), sum_logprobs ([batch]), lengths ([batch]).
  value(prompts, completions) -> values ([batch, completion_len]), when a value model is given.

Prompts are tokenised exactly as in training: start token + prompt.
"""

import contextlib
import os
import pathlib

import keras
import keras_hub
import tensorflow as tf
from keras.src.backend.tensorflow.layer import TFLayer  # private: see keras_serving_functions_off

from tf_ppo.rl.functional import masked
from tf_ppo.training.compiled import compiled
from tf_ppo.chat import chat_format, stop_token_ids
from tf_ppo.config import PPOConfig
from tf_ppo.data import prepend_start_token
from tf_ppo.models import enable_lora, load_tokenizer, policy_from_config, tokenizer_for
from tf_ppo.models.families import adapter_for
from tf_ppo.generation.sampling import generate
from tf_ppo.models.forward import response_logits
from tf_ppo.generation.responses import response_tokens, response_view
from tf_ppo.training.checkpoints import atomic_directory


TEXTS = tf.TensorSpec([None], tf.string)  # a batch of strings


class ExportError(ValueError):
    """The model or run directory cannot be exported; the message says what is missing."""


class PolicyModule(tf.Module):
    """The policy, its tokenizer and the serving functions, ready for `tf.saved_model.save`.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    >>> policy = BigramLM(tokenizer.vocabulary_size(), 8)
    >>> module = PolicyModule(policy, tokenizer, default_max_new_tokens=4)
    >>> module.generate(tf.constant(["the film was"]), 4, 1.0, 1, 0)["token_ids"].shape
    TensorShape([1, 4])
    """

    def __init__(self, policy, tokenizer, default_max_new_tokens=16, value_model=None):
        super().__init__()
        self.policy = policy
        self.tokenizer = tokenizer
        self.value_model = value_model
        self.default_max_new_tokens = default_max_new_tokens
        # Completions stop where training's did: at the end token, or the family's end of turn.
        self.stop_token_ids = stop_token_ids(tokenizer, chat_format(tokenizer, None, type(policy).__name__))
        # The tokenizer's graph is traced once and called by every signature: a BPE tokenizer takes seconds to
        # trace, and each signature (and each of prompts and completions) would otherwise trace its own copy.
        self._tokenize = compiled(lambda texts: tokenizer(texts), input_signature=[TEXTS])  # ragged [batch, None]
        if value_model is not None:  # saving traces every tf.function attribute, so only attach it when usable
            self.value = compiled(self._value, input_signature=[tf.TensorSpec([None], tf.string)] * 2)

    def _encode(self, texts, with_start):
        ids = self._tokenize(texts)  # ragged [batch, None]
        if with_start:
            ids = prepend_start_token(self.tokenizer, ids)
        return tf.cast(ids.to_tensor(default_value=self.tokenizer.pad_token_id), tf.int32), \
            tf.cast(ids.row_lengths(), tf.int32)

    @compiled(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32),
                                  tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32),
                                  tf.TensorSpec([], tf.int32)])
    def generate(self, prompts, max_new_tokens, temperature, top_k, seed):
        prompt_ids, prompt_lengths = self._encode(prompts, with_start=True)
        sequence_ids = generate(self.policy, prompt_ids, prompt_lengths, tf.stack([seed, 0]), max_new_tokens,
                                temperature, top_k)
        responses = response_view(sequence_ids, prompt_lengths, max_new_tokens, self.stop_token_ids)
        completions = self.tokenizer.detokenize(response_tokens(responses, self.stop_token_ids))
        token_ids = tf.where(responses.mask, responses.token_ids, self.tokenizer.pad_token_id)  # not what followed
        return {"completions": completions, "token_ids": token_ids,  # the stop token (in `lengths` too)
                "lengths": tf.reduce_sum(tf.cast(responses.mask, tf.int32), axis=1)}

    @compiled(input_signature=[tf.TensorSpec([None], tf.string)])
    def serving_default(self, prompts):
        return self.generate(prompts, self.default_max_new_tokens, 1.0, 0, 0)

    def _completion_view(self, prompts, completions):
        prompt_ids, prompt_lengths = self._encode(prompts, with_start=True)
        completion_ids, completion_lengths = self._encode(completions, with_start=False)
        # Right-aligned buffer: each completion starts right after its own prompt.
        width = tf.shape(completion_ids)[1]
        sequence_ids = tf.concat([prompt_ids, tf.zeros_like(completion_ids)], axis=1)
        positions = prompt_lengths[:, None] + tf.range(width)[None, :]
        mask = tf.range(width)[None, :] < completion_lengths[:, None]
        scatter_index = tf.stack([tf.repeat(tf.range(tf.shape(prompts)[0]), width), tf.reshape(positions, [-1])], 1)
        sequence_ids = tf.tensor_scatter_nd_update(sequence_ids, scatter_index, tf.reshape(completion_ids, [-1]))
        width = adapter_for(self.policy).fixed_length
        if width is not None:  # a family whose forward pass cannot be traced for any length (Qwen 3.5)
            tf.debugging.assert_less_equal(tf.shape(sequence_ids)[1], width,
                                           message=f"prompt + completion must be at most {width} tokens")
            sequence_ids = tf.ensure_shape(tf.pad(sequence_ids, [[0, 0], [0, width - tf.shape(sequence_ids)[1]]]),
                                           [None, width])
        return sequence_ids, positions, completion_ids, mask, completion_lengths

    @compiled(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string)])
    def score(self, prompts, completions):
        sequence_ids, positions, completion_ids, mask, lengths = self._completion_view(prompts, completions)
        logprobs = masked.logprobs_from_logits(response_logits(self.policy, sequence_ids, positions), completion_ids)
        logprobs = tf.where(mask, logprobs, tf.zeros_like(logprobs))
        return {"logprobs": logprobs, "sum_logprobs": tf.reduce_sum(logprobs, axis=1), "lengths": lengths}

    def _value(self, prompts, completions):
        sequence_ids, positions, _, mask, _ = self._completion_view(prompts, completions)
        values = response_logits(self.value_model, sequence_ids, positions)
        return {"values": tf.where(mask, values, tf.zeros_like(values))}


def export(policy_or_run_dir, export_dir, tokenizer=None, max_new_tokens=None, value_model=None):
    """Write a SavedModel of a policy (or of a finished run directory) to `export_dir`.

    The SavedModel is written to a temporary directory beside `export_dir`
    and renamed into place, so a crash never leaves a half-written export.

    Args:
        policy_or_run_dir: a policy model, a `TrainResult`, or a run directory
            holding `config.json` and `policy.keras` (or at least one checkpoint).
        export_dir: where to write; must not exist yet.
        tokenizer: needed with a policy that has no preprocessor (a keras-hub
            `CausalLM` brings its own, as do a `TrainResult` and a run directory).
        max_new_tokens: default response length of `serving_default`.
        value_model: optional; adds the `value` signature (a run directory brings its own).

    Returns:
        `export_dir` as a `pathlib.Path`.

    Raises:
        ExportError: the run directory has no finished checkpoint, or `export_dir` exists.

    Example:
        tf_ppo.export("runs/demo-20261128-130000", "exported/sentiment")
        tf_ppo.export(result, "exported/from_result")        # result = tf_ppo.train(...)
        tf_ppo.export(result.policy, "exported/from_policy")
    """
    export_dir = pathlib.Path(export_dir)
    if export_dir.exists():
        raise ExportError(f"{export_dir} already exists; choose a new export directory")
    if isinstance(policy_or_run_dir, (str, os.PathLike)):
        policy, tokenizer, value_model, config = load_run(policy_or_run_dir)
        max_new_tokens = max_new_tokens or config.response_length
    elif hasattr(policy_or_run_dir, "policy"):  # a TrainResult: its policy, tokenizer, value model and config
        result = policy_or_run_dir
        policy, tokenizer = result.policy, tokenizer or result.tokenizer
        value_model = value_model or getattr(result, "value_model", None)
        max_new_tokens = max_new_tokens or result.config.response_length
    else:
        policy = policy_or_run_dir
        tokenizer = tokenizer or _own_tokenizer(policy)
    if getattr(policy, "generate_function", None) is not None:
        # keras-hub's compiled `generate()` captures its sampler's unsaved seed variable, which would fail the
        # save; the SavedModel has its own sampler, and keras-hub rebuilds its function on the next generate().
        policy.generate_function = None
    module = PolicyModule(policy, tokenizer, max_new_tokens or 16, value_model)
    signatures = {"serving_default": module.serving_default, "generate": module.generate, "score": module.score}
    if value_model is not None:
        signatures["value"] = module.value
    export_dir = pathlib.Path(export_dir)
    with atomic_directory(export_dir) as staging, keras_serving_functions_off():
        tf.saved_model.save(module, str(staging), signatures=signatures)
    return export_dir


@contextlib.contextmanager
def keras_serving_functions_off():
    """While inside, Keras models offer `tf.saved_model.save` no serving function of their own.

    Keras 3 (TensorFlow backend) gives every functional model a `serving_default` at its inputs' shapes
    (`TFLayer._default_save_signature`, private), and saving traces it for each model the module holds,
    at any sequence length. The SavedModel's signatures are `PolicyModule`'s; that extra trace only costs
    time, and fails for a family that traces at static lengths only (Qwen 3.5). The one place tf_ppo
    touches this Keras internal: if Keras moves or renames it, every export fails at once (ImportError or
    KeyError), so do tests/integration/test_export.py and the Qwen 3.5 export of test_every_family.py.
    """
    original = TFLayer.__dict__["_default_save_signature"]
    TFLayer._default_save_signature = property(lambda layer: None)
    try:
        yield
    finally:
        TFLayer._default_save_signature = original


def _own_tokenizer(policy):
    """The tokenizer of a policy's preprocessor; an error naming what to pass when it has none."""
    preprocessor = getattr(policy, "preprocessor", None)
    if preprocessor is None:
        raise ExportError(f"export: this {type(policy).__name__} has no preprocessor to take the tokenizer from; "
                          f"pass tokenizer=")
    return preprocessor.tokenizer


def save_preset(policy, tokenizer, preset_dir):
    """Save a keras-hub policy as a preset that `keras_hub.models.CausalLM.from_preset` loads and generates with.

    The preset holds the backbone, the tokenizer and the preprocessor; a
    policy built without a preprocessor gets its class's default one around
    `tokenizer`. A LoRA policy is saved with its adapters merged into the
    kernels (Keras merges them when saving), a plain model that loads without
    LoRA; the adapters alone go through `policy.backbone.save_lora_weights`.
    Written to a temporary directory and renamed into place.

    Example:
        save_preset(result.policy, result.tokenizer, "presets/sentiment")
        keras_hub.models.CausalLM.from_preset("presets/sentiment").generate("the film was")
    """
    preset_dir = pathlib.Path(preset_dir)
    if not isinstance(policy, keras_hub.models.CausalLM):
        raise ExportError(f"save_preset needs a keras_hub CausalLM, got {type(policy).__name__}")
    if preset_dir.exists():
        raise ExportError(f"{preset_dir} already exists; choose a new preset directory")
    if policy.preprocessor is None and tokenizer is None:
        raise ExportError(f"save_preset: this {type(policy).__name__} has no preprocessor; pass its tokenizer")
    preprocessor = policy.preprocessor or type(policy).preprocessor_cls(tokenizer=tokenizer)
    task = type(policy)(backbone=policy.backbone, preprocessor=preprocessor)
    with atomic_directory(preset_dir) as staging:
        task.save_to_preset(staging)
    return preset_dir


def load_run(run_dir):
    """Policy, tokenizer, value model (or None) and config of a run directory.

    Uses the final `policy.keras` when training finished, else the latest
    complete checkpoint (CheckpointManager only lists checkpoints whose
    write completed).

    Example:
        policy, tokenizer, value_model, config = load_run("runs/demo-20261128-130000")
    """
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ExportError(f"{run_dir} is not a tf_ppo run directory (no config.json)")
    config = PPOConfig.from_file(run_dir / "config.json")
    if (run_dir / "policy.keras").is_file():
        policy = keras.saving.load_model(run_dir / "policy.keras", compile=False)
        value_path = run_dir / "value_model.keras"
        value_model = keras.saving.load_model(value_path, compile=False) if value_path.is_file() else None
        return policy, tokenizer_for(config, policy), value_model, config
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise ExportError(f"{run_dir} has no finished checkpoint (no policy.keras, nothing in "
                          f"{run_dir / 'checkpoints'}); train it first or resume it")
    tokenizer = tokenizer_for(config)
    policy = policy_from_config(config, tokenizer)
    if config.lora_rank:  # the checkpoint holds the adapters: rebuild them, or they would be silently dropped
        enable_lora(policy, config.lora_rank)
    try:  # every variable of the rebuilt policy must find its value (the optimizer's may stay unread)
        tf.train.Checkpoint(policy=policy).restore(latest).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as error:  # unmatched objects, shape mismatch
        raise ExportError(f"{latest} does not match the policy config.json describes "
                          f"({str(error).splitlines()[0][:200]})") from error
    return policy, tokenizer, None, config
