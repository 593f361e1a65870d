"""Training the reward model from preferences, then normalising it on the policy's own samples.

The reward model (`tf_ppo.preference.reward_model.RewardModel`) is trained
with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), or, for
best-of-n rows, the softmax cross-entropy over the n scores (the pairwise loss
is its n = 2 case: one function, `bradley_terry_loss`, serves both). After
training, a gain and a bias are fitted so the SFT policy's own samples score
mean 0 and std 1, as lm-human-preferences does before PPO; they are saved with
the model.
"""

import dataclasses
import os
import pathlib
import warnings

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tf_ppo.training.compiled import compiled
from tf_ppo.chat import chat_format, stop_token_ids
from tf_ppo.config import ConfigError, PPOConfig, RewardConfig, run_config  # noqa: F401  RewardConfig: used by the doctests
from tf_ppo.data import (DataError, check_prompts, check_texts, encode_prompts, is_conversation,
                         json_conversation, load_prompts, prompt_token_counts, start_token_ids)
from tf_ppo.training.distribute import resolve_strategy
from tf_ppo.models import copy_model, freeze_output_projection, policy_from_config, tokenizer_for
from tf_ppo.generation.sampling import generate
from tf_ppo.generation.responses import response_tokens, response_view
from tf_ppo.preference.reward_model import RewardModel, encode_texts
from tf_ppo.training.supervised import SupervisedLoop, epoch_batches


def bradley_terry_loss(scores, best):
    """Mean -log softmax(scores)[best]; with n = 2 and best = 0 this is -log sigmoid(r_chosen - r_rejected).

    Args:
        scores: float `[batch, n]` reward of each candidate response.
        best: int `[batch]` index of the preferred response.

    Returns:
        `(loss, accuracy)`: scalar mean loss and fraction of rows whose best
        candidate scores highest.

    Example:
    >>> loss, accuracy = bradley_terry_loss(tf.constant([[2.0, 0.0]]), tf.constant([0]))
    >>> round(float(loss), 4), float(accuracy)
    (0.1269, 1.0)
    """
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=best, logits=scores)
    correct = tf.cast(tf.argmax(scores, axis=-1, output_type=best.dtype) == best, scores.dtype)
    return tf.reduce_mean(losses), tf.reduce_mean(correct)


@dataclasses.dataclass
class RewardTrainResult:
    """What `train_reward_model` returns."""

    model: RewardModel
    history: list  # per epoch: train_loss, heldout_loss, heldout_accuracy
    path: pathlib.Path | None  # the saved `.keras` file, when a directory was given
    normalisation: tuple | None  # raw (mean, std) on the policy's samples that gain and offset undo
    preempted: bool = False  # stopped early by SIGTERM: checkpoint saved, nothing normalised or saved
    interrupted: bool = False  # stopped early by Ctrl-C (SIGINT): the same
    steps_done: int = 0  # optimiser steps taken (the checkpoint's, when stopped early)
    total_steps: int = 0  # of every epoch


def read_preferences(path):
    """Read a preference CSV or JSON Lines file into `(prompts [N], responses [N][n], best [N], split [N] or None)`.

    Two layouts: pairwise `prompt,chosen,rejected` (best = 0, the chosen one)
    or best-of-n `prompt,response_0,...,response_{n-1},best`. An optional
    `split` column marks `train` / `heldout` rows. As in TRL's conversational
    preference datasets, a prompt may be a conversation (a JSON list of
    messages in a CSV cell) and a response `[{"role": "assistant", "content": ...}]`.

    Example:
    >>> prompts, responses, best, split = read_preferences(PPOConfig().reward.preferences_csv)
    >>> len(responses[0]), int(best[0]), split[0]
    (2, 0, 'train')
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    frame = _read_table(path)
    columns = sorted((c for c in frame.columns if c.startswith("response_")), key=lambda c: int(c[9:]))
    if not columns or "chosen" in frame.columns:
        columns, required = ["chosen", "rejected"], ["prompt", "chosen", "rejected"]
    else:
        required = ["prompt", *columns, "best"] + (["response_1"] if len(columns) < 2 else [])
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected prompt,chosen,rejected "
                        f"or prompt,response_0,response_1,...,best; found {frame.columns.tolist()}")
    if frame.empty:
        raise DataError(f"{path}: no rows")
    frame["prompt"] = [json_conversation(cell) for cell in frame["prompt"]]
    check_prompts(frame["prompt"].tolist(), f"{path}: column 'prompt'")
    for column in columns:
        frame[column] = [_reply(json_conversation(cell), f"{path}: column {column!r}, row {row}")
                         for row, cell in enumerate(frame[column])]
        check_texts(frame[column].tolist(), f"{path}: column {column!r}")
    responses = frame[columns].to_numpy().tolist()
    if "chosen" in columns:
        best = np.zeros(len(frame), np.int32)
    else:
        best = pd.to_numeric(frame["best"], errors="coerce").to_numpy()
        bad = np.flatnonzero(~np.isin(best, np.arange(len(columns))))
        if bad.size:
            raise DataError(f"{path}: column 'best': row {int(bad[0])} is {frame['best'].tolist()[bad[0]]!r}; "
                            f"expected an index in 0..{len(columns) - 1}")
        best = best.astype(np.int32)
    ties = np.array([len(set(row)) == 1 for row in responses])
    if ties.all():
        raise DataError(f"{path}: every row's responses are identical ({', '.join(columns)}); nothing to learn")
    if ties.any():
        warnings.warn(f"{path}: {int(ties.sum())} rows with identical responses (first: row "
                      f"{int(np.flatnonzero(ties)[0])}) carry no preference")
    split = frame["split"].tolist() if "split" in frame.columns else None
    return frame["prompt"].tolist(), responses, best, split


def _read_table(path):
    if path.suffix not in (".jsonl", ".json"):
        return pd.read_csv(path, keep_default_na=False)
    try:
        return pd.read_json(path, lines=True, dtype=False)
    except ValueError as error:
        raise DataError(f"{path}: not JSON Lines ({error})") from error


def _reply(response, where):
    """A response's text: itself, or the content of TRL's `[{"role": "assistant", "content": text}]`."""
    if not is_conversation(response):
        return response
    if len(response) != 1 or response[0].get("role") != "assistant" or not isinstance(response[0].get("content"), str):
        raise DataError(f"{where}: a conversational response must be one assistant message "
                        f"[{{'role': 'assistant', 'content': text}}], got {response!r:.120}")
    return response[0]["content"]


def train_reward_model(config=None, backbone=None, directory=None, show_progress=True, policy=None, prompts=None,
                       strategy=None):
    """Train a `RewardModel` on `config.reward.preferences_csv` (Bradley-Terry / best-of-n).

    Args:
        config: `PPOConfig`, uses `reward`, `model`, `vocabulary`, `merges`; or a `RewardConfig` alone.
        backbone: a keras-hub backbone to start from, e.g. the SFT policy's
            (`policy.backbone`, copied, as lm-human-preferences does); default
            `config.model`'s preset, or a fresh one of its size.
        directory: checkpoints per epoch (a rerun continues from them) and
            the final `reward_model.keras`. With one, SIGTERM or Ctrl-C stops
            after the step in flight with a checkpoint (`result.interrupted`).
        policy, prompts: when a policy is given (and `config.reward.normalise_samples`
            > 0), gain and offset are fitted on its samples for these prompts
            (any `load_prompts` source; default `config.prompts`, so `"tfds:NAME"`
            works) before saving (`normalise_on_policy_samples`).
        strategy: a `tf.distribute.Strategy` (default: from `config.strategy`).

    Returns:
        `RewardTrainResult(model, history, path, normalisation)`; history rows
        hold `train_loss`, `heldout_loss` and `heldout_accuracy` per epoch;
        `normalisation` is the raw `(mean, std)` on the policy's samples.

    Example:
        result = train_reward_model(PPOConfig(reward={"epochs": 2}), directory="runs/rm")
        result.history[-1]["heldout_accuracy"]
    """
    config = run_config(config, "reward")
    settings = config.reward
    keras.utils.set_random_seed(settings.seed)
    tokenizer = tokenizer_for(config, policy)
    preferences = read_preferences(settings.preferences_csv)
    if is_conversation(preferences[0][0]):
        raise DataError(f"{settings.preferences_csv}: the reward model reads text prompts; conversations are for "
                        f"DPO (tf_ppo.dpo)")
    train_set, heldout_set = split_rows(preferences, settings)
    strategy = resolve_strategy(strategy if strategy is not None else config.strategy, config.collective_timeout)
    if settings.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"RewardConfig.batch_size {settings.batch_size} must be divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    with strategy.scope():
        model = RewardModel(_copy_backbone(backbone, config, tokenizer), tokenizer, settings.max_length, settings.clip)
        optimizer = keras.optimizers.Adam(settings.learning_rate)
    encode = _encoder(tokenizer, settings.max_length)
    train_ids, train_mask, train_best = encode(*train_set)
    heldout_ids, heldout_mask, heldout_best = encode(*heldout_set)

    def candidate_scores(token_ids, padding_mask):  # [batch, n, L] -> [batch, n], one forward pass
        n = tf.shape(token_ids)[1]
        flat = {"token_ids": tf.reshape(token_ids, [-1, settings.max_length]),
                "padding_mask": tf.reshape(padding_mask, [-1, settings.max_length])}
        return tf.reshape(model(flat), [-1, n])

    def loss_fn(batch):
        token_ids, padding_mask, best = batch
        loss, _ = bradley_terry_loss(candidate_scores(token_ids, padding_mask), best)
        return loss / strategy.num_replicas_in_sync, {}  # equal rows per replica: its share of the global mean

    loop = SupervisedLoop("reward model", [model], loss_fn, optimizer, strategy, "global_norm",
                          settings.max_grad_norm, config.gradient_checkpointing)
    heldout_metrics = compiled(lambda: bradley_terry_loss(candidate_scores(heldout_ids, heldout_mask), heldout_best))

    def evaluate():
        loss, accuracy = heldout_metrics()
        return {"heldout_loss": float(loss), "heldout_accuracy": float(accuracy)}

    directory = pathlib.Path(directory) if directory is not None else None
    # Several replicas need equal shares: then the last, partial batch of an epoch is dropped.
    history = loop.fit(lambda epoch: epoch_batches((train_ids, train_mask, train_best), settings.batch_size,
                                                   settings.seed, epoch, strategy,
                                                   drop_remainder=strategy.num_replicas_in_sync > 1),
                       settings.epochs, evaluate, directory / "checkpoints" if directory else None,
                       show_progress=show_progress)
    if loop.stopped_by:  # checkpointed mid-training: nothing to normalise or save yet
        return RewardTrainResult(model, history, None, None, **loop.outcome())
    normalisation = None
    if policy is not None and settings.normalise_samples:
        prompts = load_prompts(prompts if prompts is not None else config.prompts)  # the trainer's sources too
        normalisation = normalise_on_policy_samples(model, policy, prompts, config, settings.seed)
    path = None
    if directory is not None:
        path = directory / "reward_model.keras"
        save_atomically(model, path)
    return RewardTrainResult(model, history, path, normalisation, **loop.outcome())


def normalise_on_policy_samples(reward_model, policy, prompts, config, seed=0):
    """Fit the reward model's gain and offset on the policy's own samples (mean 0, std 1).

    Samples `config.reward.normalise_samples` responses to `prompts` (cycled)
    with the rollout settings of `config`, as PPO will: the prompts are cut
    (`prompt_tokens_min/max`, `truncate_prompts`) and encoded, and the
    responses decoded, with the POLICY's tokenizer (`tokenizer_for(config,
    policy)`); the reward model then scores the prompt and response texts
    with its own. Returns `(mean, std)` of the raw rewards, for the record.

    Example:
        normalise_on_policy_samples(reward_model, sft_policy, prompts, config)
    """
    count = config.reward.normalise_samples
    tokenizer = tokenizer_for(config, policy)  # the reward model's may have another vocabulary
    prompts = [prompts[i % len(prompts)] for i in range(count)]
    keep = prompt_token_counts(count, config.prompt_tokens_min, config.prompt_tokens_max, seed)
    prompt_ids, lengths = encode_prompts(tokenizer, prompts, config.max_prompt_length, config.truncate_prompts, keep)
    sequence_ids = generate(policy, tf.constant(prompt_ids), tf.constant(lengths), tf.constant([seed, 0]),
                            config.response_length, config.temperature, config.top_k, config.top_p)
    stops = stop_token_ids(tokenizer, chat_format(tokenizer, config.model.chat_template, type(policy).__name__))
    responses = response_view(sequence_ids, tf.constant(lengths), config.response_length,
                              stops if config.stop_at_eos else None)
    texts = tokenizer.detokenize(response_tokens(responses, stops))
    return reward_model.fit_normalisation(_prompt_texts(tokenizer, prompt_ids, lengths), texts)


def _prompt_texts(tokenizer, prompt_ids, lengths):
    """The prompts as the policy saw them (cut, truncated), decoded without the start token: what PPO scores."""
    start = len(start_token_ids(tokenizer))  # 0 for tokenizers with none (Qwen's, ...)
    tokens = tf.RaggedTensor.from_tensor(tf.constant(prompt_ids[:, start:]), lengths=tf.constant(lengths - start))
    return tokenizer.detokenize(tokens)


def save_atomically(model, path):
    """`model.save(path)` through a temporary file, so a crash never leaves half a model at `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")
    model.save(partial)
    os.replace(partial, path)


def split_rows(preferences, settings, seed=None):
    """Train and held-out `(prompts, responses, best)`: the CSV's `split` column, else a seeded random fraction.

    `settings` is the `RewardConfig` or `DPOConfig` (its `heldout_fraction`, `preferences_csv`
    and, unless `seed` is given, `seed`).

    Example:
    >>> (train, _, _), (heldout, _, _) = split_rows(read_preferences(PPOConfig().reward.preferences_csv),
    ...                                             RewardConfig())
    >>> len(train) > len(heldout) > 0
    True
    """
    prompts, responses, best, split = preferences
    if split is not None:
        heldout = np.array([s == "heldout" for s in split])
    else:
        heldout = np.zeros(len(prompts), bool)
        order = np.random.default_rng(settings.seed if seed is None else seed).permutation(len(prompts))
        heldout[order[: int(round(len(prompts) * settings.heldout_fraction))]] = True
    if heldout.all() or not heldout.any():
        raise DataError(f"{settings.preferences_csv}: need both train and held-out rows, got "
                        f"{int((~heldout).sum())} train and {int(heldout.sum())} held-out")

    def rows(selected):
        index = np.flatnonzero(selected)
        return [prompts[i] for i in index], [responses[i] for i in index], best[index]

    return rows(~heldout), rows(heldout)


def _encoder(tokenizer, max_length):
    def encode(prompts, responses, best):
        n = len(responses[0])
        repeated = [prompt for prompt in prompts for _ in range(n)]
        flat = [response for row in responses for response in row]
        token_ids, padding_mask = encode_texts(tokenizer, tf.constant(repeated), tf.constant(flat), max_length)
        shape = [len(prompts), n, max_length]
        return tf.reshape(token_ids, shape), tf.reshape(padding_mask, shape), tf.constant(best)

    return encode


def _copy_backbone(backbone, config, tokenizer):
    if backbone is None:  # a new model of config.model's size, or the configured preset's backbone
        return freeze_output_projection(policy_from_config(config, tokenizer).backbone)
    return freeze_output_projection(copy_model(backbone))
