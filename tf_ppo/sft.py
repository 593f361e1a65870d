"""Stage 1, supervised fine-tuning: the article's loop, made correct.

The article's loop computes a loss on raw targets and clips each gradient
entry. Here: next-token cross-entropy on `input_text + " " + target`, averaged
over real tokens only (padding carries no loss), Adam, and gradient clipping
by global norm (or by value, the article's way, with `clip_mode="value"`).
"""

import dataclasses
import hashlib
import json
import os
import pathlib

import keras
import tensorflow as tf

from tf_ppo.rl.functional import masked
from tf_ppo.training.compiled import compiled
from tf_ppo.config import ConfigError, run_config
from tf_ppo.training.distribute import resolve_strategy
from tf_ppo.chat import chat_format, check_chat_template
from tf_ppo.data import PROMPT_COLUMN, TARGET_COLUMN, encode_sft_examples, read_prompt_csv
from tf_ppo.models import copy_model, family_for, policy_from_config, tokenizer_for
from tf_ppo.models.inputs import model_inputs
from tf_ppo.training.checkpoints import atomic_directory
from tf_ppo.training.supervised import SupervisedLoop, epoch_batches


@dataclasses.dataclass
class SFTResult:
    """What `sft` returns: the trained policy and one history row per epoch."""

    policy: keras.Model
    history: list
    preempted: bool = False  # stopped early by SIGTERM, with a checkpoint in `checkpoint_dir`
    interrupted: bool = False  # stopped early by Ctrl-C (SIGINT), with a checkpoint in `checkpoint_dir`
    steps_done: int = 0  # optimiser steps taken (the checkpoint's, when stopped early)
    total_steps: int = 0  # of every epoch


def next_token_loss(policy, token_ids, padding_mask, training=False):
    """Mean cross-entropy of predicting token t+1 from tokens <= t, over real tokens.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> policy = BigramLM(vocabulary_size=5, hidden_dim=2)
    >>> float(next_token_loss(policy, tf.constant([[1, 2, 0]]), tf.constant([[True, True, False]]))) > 0
    True
    """
    logits = policy(model_inputs(policy, token_ids, padding_mask), training=training)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=token_ids[:, 1:], logits=logits[:, :-1])
    return masked.masked_mean(losses, padding_mask[:, 1:])  # [batch, len - 1] -> scalar


def sft(config=None, policy=None, show_progress=True, checkpoint_dir=None, strategy=None):
    """Fine-tune `policy` (default: a new tiny one) on `config.sft.train_csv`.

    Args:
        config: `PPOConfig`, uses its `model`, `sft`, `vocabulary` and `merges`; or an `SFTConfig`
            alone (the tiny model).
        policy: a policy to continue training; default `config.model` (its preset,
            or a new tiny model). The policy is copied, never changed in place.
        show_progress: draw a progress bar per epoch.
        checkpoint_dir: checkpoint every epoch there, and continue from the
            latest checkpoint found there. With one, SIGTERM or Ctrl-C stops
            after the step in flight with a checkpoint (`result.interrupted`).
        strategy: a `tf.distribute.Strategy` (default: from `config.strategy`);
            each batch is split over its replicas.

    Returns:
        `SFTResult(policy, history)`; history rows hold `epoch`, `train_loss`
        and `heldout_loss` (on `config.eval_prompts_csv`).

    Example:
        config = PPOConfig(sft={"epochs": 1}, model={"num_layers": 1, "hidden_dim": 16, "num_heads": 2})
        result = sft(config, show_progress=False)
    """
    config = run_config(config, "sft")
    keras.utils.set_random_seed(config.sft.seed)
    tokenizer = tokenizer_for(config, policy)
    frames = [read_prompt_csv(path, require_target=True) for path in (config.sft.train_csv, config.eval_prompts_csv)]
    check_chat_template(frames[0][PROMPT_COLUMN].tolist(), config.model.chat_template, family_for(config, policy))
    strategy = resolve_strategy(strategy if strategy is not None else config.strategy, config.collective_timeout)
    if config.sft.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"SFTConfig.batch_size {config.sft.batch_size} must be divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    with strategy.scope():
        # float16 would need loss scaling here too; SFT is short, so it runs in float32 then.
        dtype = "float32" if config.dtype == "mixed_float16" else config.dtype
        # A given policy or CausalLM object is copied: never changed in place, and mirrored if built outside
        # the scope. One loaded here is copied only to change its dtype, so a large preset is loaded once.
        built_here = policy is None and isinstance(config.model.preset, (str, type(None)))
        source = policy if policy is not None else policy_from_config(config, tokenizer)
        policy = source if built_here and source.dtype_policy.name == dtype else copy_model(source, dtype)
        optimizer = keras.optimizers.Adam(config.sft.learning_rate)
    prompts = frames[0][PROMPT_COLUMN].tolist()
    chat = chat_format(tokenizer, config.model.chat_template, type(source).__name__, prompts)
    (train_ids, train_mask), (heldout_ids, heldout_mask) = [
        encode_sft_examples(tokenizer, frame[PROMPT_COLUMN].tolist(), frame[TARGET_COLUMN].tolist(),
                            config.sft.max_length, chat) for frame in frames]

    def loss_fn(batch):
        token_ids, padding_mask = batch
        return next_token_loss(policy, token_ids, padding_mask, training=True), {}  # this replica's share

    loop = SupervisedLoop("SFT", [policy], loss_fn, optimizer, strategy, config.sft.clip_mode,
                          config.sft.max_grad_norm, config.gradient_checkpointing)
    heldout_loss = compiled(lambda: next_token_loss(policy, heldout_ids, heldout_mask))
    history = loop.fit(lambda epoch: epoch_batches((train_ids, train_mask), config.sft.batch_size, config.sft.seed,
                                                   epoch, strategy),
                       config.sft.epochs, lambda: {"heldout_loss": float(heldout_loss())}, checkpoint_dir,
                       show_progress=show_progress)
    return SFTResult(policy, history, **loop.outcome())


def default_policy(config=None, show_progress=True, strategy=None):
    """The tiny policy fine-tuned on the shipped corpus, trained on first use and cached.

    The cache key covers the model and SFT settings and the data files, so a
    change to any of them trains a new policy. The cache lives in
    `$TF_PPO_CACHE` (default `~/.cache/tf_ppo`) and is written atomically: a
    crash mid-save never leaves a half-written model to be picked up. A
    configured preset is fine-tuned afresh, not cached (its weights are not in the key).

    Example:
        policy = default_policy()
    """
    config = run_config(config, "sft")
    policy = cached_policy(config)
    if policy is None:
        if show_progress and _cache_path(config) is not None:
            print(f"SFT: no policy of these model and SFT settings and data is cached yet; training one (stage 1) "
                  f"and caching it in {_cache_path(config).parent}, so later runs start from it")
        policy = sft(config, show_progress=show_progress, strategy=strategy).policy
        cache_policy(config, policy)
    return policy


def cached_policy(config):
    """The cached SFT policy of `config`'s model, SFT settings and data files, or None (none yet, or a preset).

    Example:
        policy = cached_policy(config) or sft(config).policy
    """
    path = _cache_path(config)
    return keras.saving.load_model(path, compile=False) if path is not None and path.exists() else None


def cache_policy(config, policy):
    """Cache `policy` as the SFT policy of `config` (what `cached_policy` returns); nothing for a preset.

    Written atomically: a crash mid-save never leaves a half-written model to be picked up.

    Example:
        cache_policy(config, sft(config).policy)
    """
    path = _cache_path(config)
    if path is None or path.exists():
        return
    try:
        with atomic_directory(path.parent) as staging:
            policy.save(staging / path.name)
    except OSError:  # another process cached the same policy first; theirs is as good
        pass


def starting_policy(config, tokenizer=None, show_progress=True, strategy=None):
    """What a run given no policy starts from: the configured preset as it is, else `default_policy`.

    Example:
        reference = starting_policy(config)  # the policy DPO starts from, to measure its KL against
    """
    if config.model.preset is None:
        return default_policy(config, show_progress=show_progress, strategy=strategy)
    return policy_from_config(config, tokenizer or tokenizer_for(config))


def _cache_dir():
    return pathlib.Path(os.environ.get("TF_PPO_CACHE", pathlib.Path.home() / ".cache" / "tf_ppo"))


def _cache_path(config):
    # A preset's weights are not in the key: its fine-tuned policy is never cached.
    return None if config.model.preset is not None else _cache_dir() / f"sft-{_cache_key(config)}" / "policy.keras"


# Bumped when the cached policy's format changes, so an old cache entry is never picked up
# (2: the policy carries its preprocessor and tokenizer).
CACHE_FORMAT = 2


def _cache_key(config):
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, dataclasses.asdict(config.model), dataclasses.asdict(config.sft)],
                                       sort_keys=True).encode())
    for path in (config.sft.train_csv, config.eval_prompts_csv, config.vocabulary, config.merges):
        digest.update(pathlib.Path(path).read_bytes())
    return digest.hexdigest()[:16]
