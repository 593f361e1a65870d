"""Offline preference optimisation: DPO, IPO, hinge (SLiC) and cDPO on the files `tf-ppo reward` reads.

No rollout, reward model or critic: the policy's summed log-probs of each
pair's chosen and rejected response, against the reference's, give the
`preference_losses.preference_loss`. Best-of-n rows become n - 1 pairs
(best, each other). By default the reference's log-probs of every pair are
computed once, by the starting policy itself in one compiled pass, and kept
(`reference_logps.npz` in the run directory, so a resumed run has them too):
no reference model exists during training. `precompute_ref_log_probs=False`
keeps a live frozen copy instead (LoRA: the policy with its adapters off).

Sequence layout: `tf_ppo.preference.pairs`.

Layout of `run_dir`:
    config.json, reference_logps.npz, checkpoints/, metrics.csv (per step), tensorboard/
    policy.keras, preset/, curves.png, evaluation.json   when finished

Example:
    result = tf_ppo.dpo(PPOConfig(run_dir="runs/dpo", dpo={"beta": 0.1}))
    result.history[-1]["heldout_accuracy"]
"""

import dataclasses
import datetime
import functools
import json
import pathlib
import shutil
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tf_ppo.rl.functional import masked
from tf_ppo.training.compiled import compiled
from tf_ppo.config import ConfigError, DPOConfig, PPOConfig, RewardConfig, policy_sections, run_config
from tf_ppo.config.fields import default
from tf_ppo.chat import chat_format, check_chat_template
from tf_ppo.data import DataError
from tf_ppo.training.distribute import resolve_strategy
from tf_ppo.export import save_preset
from tf_ppo.models import (AdaptersOff, copy_model, enable_lora, family_for, frozen_copy, parameter_report,
                           tokenizer_for)
from tf_ppo.models.inputs import model_inputs
from tf_ppo.preference.losses import preference_loss
from tf_ppo.preference.pairs import encode_responses, preference_pairs
from tf_ppo.training.reporting import DPO_PANELS, plot_curves, read_history
from tf_ppo.preference.reward_training import read_preferences, split_rows
from tf_ppo.models.packing import can_pack
from tf_ppo.preference.shared_prompt import pack_pairs, packed_pair_logps
from tf_ppo.sft import starting_policy
from tf_ppo.training.guarded_step import adam_for
from tf_ppo.training.supervised import SupervisedLoop, epoch_batches

EVALUATION = "evaluation.json"


@dataclasses.dataclass
class DPOResult:
    """What `dpo` returns."""

    policy: keras.Model
    tokenizer: object
    history: list  # one row per epoch: train_loss and the held-out preference metrics
    steps: list  # one row per optimiser step: loss, rewards/*, logps/*, grad_norm
    run_dir: pathlib.Path
    config: PPOConfig
    parameter_report: str
    preempted: bool = False  # stopped by SIGTERM: checkpoint saved, no final artefacts
    evaluations: tuple | None = None  # set by `pipeline(method="dpo")`: held-out (before, after) evaluations
    interrupted: bool = False  # stopped by Ctrl-C (SIGINT): checkpoint saved, no final artefacts
    steps_done: int = 0  # optimiser steps taken (the checkpoint's, when stopped early)
    total_steps: int = 0  # of every epoch


def preference_settings(config):
    """`config.dpo`, reading the reward model's preference file where a config from before DPO had its own.

    DPO read `reward.preferences_csv` until `DPOConfig.preferences_csv` existed:
    a config that sets only the reward's file keeps training on it, and warns.

    Example:
        preference_settings(PPOConfig(reward={"preferences_csv": "mine.csv"})).preferences_csv  # "mine.csv"
    """
    settings, reward = config.dpo, config.reward
    if reads_reward_file(config):
        warnings.warn(f"DPO reads dpo.preferences_csv; reward.preferences_csv={reward.preferences_csv} is used "
                      f"as before, set dpo.preferences_csv (--dpo.preferences_csv) instead", FutureWarning,
                      stacklevel=3)
        settings = dataclasses.replace(settings, preferences_csv=reward.preferences_csv,
                                       heldout_fraction=reward.heldout_fraction)
    return settings


def reads_reward_file(config):
    """Whether DPO trains on `reward.preferences_csv`: only that file is set, as before DPO had its own.

    Example:
    >>> reads_reward_file(PPOConfig(reward={"preferences_csv": "mine.csv"})), reads_reward_file(PPOConfig())
    (True, False)
    """
    return (config.dpo.preferences_csv == default(DPOConfig, "preferences_csv")
            and config.reward.preferences_csv != default(RewardConfig, "preferences_csv"))


def dpo_sections(config):
    """The optional sections a DPO run reads: `dpo`, `sft` without a preset, `reward` if its file stands in.

    Example:
    >>> dpo_sections(PPOConfig())
    ('sft', 'dpo')
    """
    return (*policy_sections(config), "dpo", *(("reward",) if reads_reward_file(config) else ()))


def sequence_logps(model, token_ids, padding_mask, response_mask, training=False):
    """The summed log-probs of each sequence's response tokens, float32 `[N]`, and their count `[N]`.

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> ids = tf.constant([[1, 2, 3]]); mask = tf.constant([[True, True, True]])
    >>> logps, count = sequence_logps(BigramLM(5, 2), ids, mask, tf.constant([[False, True]]))
    >>> int(count[0]), bool(logps[0] < 0)
    (1, True)
    """
    logits = model(model_inputs(model, token_ids, padding_mask), training=training)  # [N, L, V]
    logps = masked.logprobs_from_logits(tf.cast(logits[:, :-1], tf.float32), token_ids[:, 1:])  # [N, L - 1]
    mask = tf.cast(response_mask, tf.float32)
    return tf.reduce_sum(logps * mask, axis=1), tf.reduce_sum(mask, axis=1)


class DPOTrainer:
    """The models, the encoded pairs and the compiled steps of one DPO run.

    Most users call `dpo(config)`; the trainer is public for notebooks.

    Example:
        trainer = DPOTrainer(PPOConfig(run_dir="runs/dpo"))
        result = trainer.train()
    """

    def __init__(self, config=None, policy=None, resume=False, show_progress=True, strategy=None):
        self.config = config = run_config(config, "dpo")
        settings = preference_settings(config)
        self.show_progress = show_progress
        self.run_dir = pathlib.Path(config.run_dir or f"runs/dpo-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        if not resume and (self.run_dir / "checkpoints" / "checkpoint").exists():
            raise ConfigError(f"{self.run_dir} already holds checkpoints of a run; resume it (resume=True, "
                              f"tf-ppo dpo --resume {self.run_dir}) or choose a new run_dir")
        keras.utils.set_random_seed(settings.seed)
        self.strategy = resolve_strategy(strategy if strategy is not None else config.strategy,
                                         config.collective_timeout)
        replicas = self.strategy.num_replicas_in_sync
        if settings.batch_size % replicas:
            raise ConfigError(f"DPOConfig.batch_size {settings.batch_size} must be divisible by the {replicas} "
                              f"replicas")
        with self.strategy.scope():
            optimizer = adam_for(config.dtype, replicas, settings.learning_rate)
        if config.model.preset is None and settings.max_length > config.model.max_sequence_length:
            raise ConfigError(f"DPOConfig.max_length {settings.max_length} exceeds the model's context "
                              f"model.max_sequence_length={config.model.max_sequence_length}")
        self.tokenizer = tokenizer_for(config, policy)
        train_rows, heldout_rows = split_rows(read_preferences(settings.preferences_csv), settings)
        check_chat_template(train_rows[0], config.model.chat_template, family_for(config, policy))
        train_pairs = preference_pairs(*train_rows)
        if len(train_pairs[0]) < settings.batch_size:
            raise DataError(f"{settings.preferences_csv}: {len(train_pairs[0])} training pairs, fewer than one "
                            f"batch of DPOConfig.batch_size={settings.batch_size}")
        with self.strategy.scope():
            if policy is None:
                policy = starting_policy(config, self.tokenizer, show_progress, self.strategy)
            self.policy = copy_model(policy, config.dtype)  # never changed in place; mirrored under the strategy
            if config.lora_rank:
                enable_lora(self.policy, config.lora_rank)
            self.reference = None
            if not settings.precompute_ref_log_probs:
                self.reference = AdaptersOff(self.policy) if config.lora_rank else frozen_copy(self.policy)
        # Encoded once the policy is loaded: a preset name's family, so its chat template, is known only then.
        self.chat = chat_format(self.tokenizer, config.model.chat_template, type(self.policy).__name__, train_pairs[0])
        self.train_pairs = self._encode(*train_pairs)
        self.heldout_pairs = self._encode(*preference_pairs(*heldout_rows))
        self.packed = settings.share_prompt and can_pack(self.policy)
        if self.packed:
            self.train_pairs, self.heldout_pairs = pack_pairs(**self.train_pairs), pack_pairs(**self.heldout_pairs)
        reference_note = ("none (log-probs precomputed once, before training)"
                          if self.reference is None else self.reference)
        self.parameter_report = parameter_report({"policy": self.policy, "reference": reference_note})
        if show_progress:
            print(self.parameter_report)
        jit = config.train_jit and replicas == 1
        self._policy_logps = compiled(functools.partial(self._both_logps, self.policy), jit_compile=jit)
        self._reference_logps = compiled(functools.partial(self._both_logps, self.reference), jit_compile=jit)
        self.loop = SupervisedLoop("DPO", [self.policy], self._loss_fn, optimizer, self.strategy, "global_norm",
                                   settings.max_grad_norm, config.gradient_checkpointing, config.train_jit,
                                   config.max_consecutive_skips)

    # ----------------------------------------------------------------- data

    def _encode(self, pair_prompts, chosen, rejected):
        length = self.config.dpo.max_length
        chosen_ids, chosen_padding, chosen_response = encode_responses(self.tokenizer, pair_prompts, chosen, length,
                                                                       self.chat)
        rejected_ids, rejected_padding, rejected_response = encode_responses(self.tokenizer, pair_prompts, rejected,
                                                                             length, self.chat)
        return {"chosen_ids": chosen_ids, "chosen_padding": chosen_padding, "chosen_response": chosen_response,
                "rejected_ids": rejected_ids, "rejected_padding": rejected_padding,
                "rejected_response": rejected_response}

    # ----------------------------------------------------------------- compiled parts

    def _both_logps(self, model, batch, training=False):
        """Chosen and rejected log-probs and token counts `[pairs]` each, in one forward pass.

        Packed (`share_prompt`): one row per pair. Otherwise 2 x pairs rows, each pair's two sequences.
        """
        if self.packed:
            return packed_pair_logps(model, batch, training)
        pairs = tf.shape(batch["chosen_ids"])[0]
        logps, counts = sequence_logps(
            model, tf.concat([batch["chosen_ids"], batch["rejected_ids"]], 0),
            tf.concat([batch["chosen_padding"], batch["rejected_padding"]], 0),
            tf.concat([batch["chosen_response"], batch["rejected_response"]], 0), training)
        return logps[:pairs], logps[pairs:], counts[:pairs], counts[pairs:]

    def pair_logps(self, pairs, model=None, batch_size=256):
        """`(chosen, rejected, chosen_tokens, rejected_tokens)` `[N]` each (NumPy) of encoded pairs, in batches.

        `model` is the policy (default) or the live reference. With
        precomputed log-probs the reference is the starting policy: the
        trainer computes them before the first step.
        """
        compute = self._policy_logps if model is None else self._reference_logps
        keys = [key for key in pairs if not key.startswith("ref_")]
        rows = len(pairs[keys[0]])
        parts = [compute({key: tf.constant(pairs[key][start: start + batch_size]) for key in keys})
                 for start in range(0, rows, batch_size)]
        return tuple(np.concatenate([part[i].numpy() for part in parts]) for i in range(4))

    def _loss_fn(self, batch):
        """One replica's share of the mean preference loss over the global batch, and of each metric."""
        settings = self.config.dpo
        chosen, rejected, chosen_tokens, rejected_tokens = self._both_logps(self.policy, batch, training=True)
        if self.reference is None:
            ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
        else:
            ref_chosen, ref_rejected, _, _ = self._both_logps(self.reference, batch)
        loss = preference_loss(chosen, rejected, ref_chosen, ref_rejected, settings.beta, settings.loss_type,
                               settings.label_smoothing, chosen_tokens, rejected_tokens)
        share = 1.0 / (tf.cast(tf.shape(chosen)[0], tf.float32) * self.strategy.num_replicas_in_sync)
        metrics = {
            "rewards/chosen": loss.chosen_rewards, "rewards/rejected": loss.rejected_rewards,
            "rewards/margins": loss.chosen_rewards - loss.rejected_rewards,
            "rewards/accuracies": tf.cast(loss.chosen_rewards > loss.rejected_rewards, tf.float32),
            "logps/chosen": tf.stop_gradient(chosen), "logps/rejected": tf.stop_gradient(rejected),
        }
        return tf.reduce_sum(loss.losses) * share, {k: tf.reduce_sum(v) * share for k, v in metrics.items()}

    # ----------------------------------------------------------------- the run

    def train(self):
        """Run `config.dpo.epochs` epochs (from the last checkpoint if resumed); returns a `DPOResult`.

        SIGTERM or Ctrl-C ends the run after the step in flight, with a checkpoint (`result.preempted`,
        `result.interrupted`).
        """
        c, settings = self.config, self.config.dpo
        if (self.run_dir / EVALUATION).is_file():  # a rerun must not overwrite a finished run's figures
            print(f"{self.run_dir}: already complete; nothing changed")
            self.policy = keras.saving.load_model(self.run_dir / "policy.keras", compile=False)  # not the start's
            finished = json.loads((self.run_dir / EVALUATION).read_text())
            steps = read_history(self.run_dir / "metrics.csv")
            return DPOResult(self.policy, self.tokenizer, finished["history"], steps, self.run_dir, c,
                             self.parameter_report, steps_done=len(steps), total_steps=len(steps))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(c.to_json(sections=dpo_sections(c)))
        train_set, heldout_set = dict(self.train_pairs), dict(self.heldout_pairs)
        if self.reference is None:
            for pairs, name in ((train_set, "train"), (heldout_set, "heldout")):
                pairs["ref_chosen"], pairs["ref_rejected"] = self._precomputed(pairs, name)
        history = self.loop.fit(
            lambda epoch: epoch_batches({k: tf.constant(v) for k, v in train_set.items()}, settings.batch_size,
                                        settings.seed, epoch, self.strategy),
            settings.epochs, lambda: self.evaluate(heldout_set), self.run_dir / "checkpoints", settings.checkpoint_every,
            self.run_dir, show_progress=self.show_progress)
        steps = read_history(self.run_dir / "metrics.csv")
        result = DPOResult(self.policy, self.tokenizer, history, steps, self.run_dir, c, self.parameter_report,
                           **self.loop.outcome())
        if self.loop.stopped_by:
            return result
        self.policy.save(self.run_dir / "policy.keras")
        if c.lora_rank:
            self.policy.backbone.save_lora_weights(str(self.run_dir / "adapters.lora.h5"))
        if isinstance(self.policy, keras_hub.models.CausalLM):
            shutil.rmtree(self.run_dir / "preset", ignore_errors=True)
            save_preset(self.policy, self.tokenizer, self.run_dir / "preset")
        plot_curves(steps, self.run_dir / "curves.png", DPO_PANELS, index="step", xlabel="DPO step")
        (self.run_dir / EVALUATION).write_text(json.dumps({"history": history}))  # last: marks the run finished
        return result

    def _precomputed(self, pairs, name):
        """The reference log-probs of `pairs`, computed once and kept in the run directory."""
        path = self.run_dir / "reference_logps.npz"
        stored = dict(np.load(path)) if path.is_file() else {}
        if f"{name}_chosen" not in stored:
            if int(self.loop.step.numpy()):
                raise DataError(f"{path}: the reference log-probs of the {name} pairs are missing, and the policy "
                                f"has trained since; start the run afresh")
            stored[f"{name}_chosen"], stored[f"{name}_rejected"], _, _ = self.pair_logps(pairs)
            partial = path.with_name(".partial-" + path.name)
            with partial.open("wb") as handle:
                np.savez(handle, **stored)
            partial.replace(path)
        return stored[f"{name}_chosen"], stored[f"{name}_rejected"]

    def evaluate(self, pairs):
        """Held-out preference accuracy, loss and mean margin (`beta` x log-ratio) of the policy on encoded pairs."""
        settings = self.config.dpo
        chosen, rejected, chosen_tokens, rejected_tokens = self.pair_logps(pairs)
        if self.reference is None:
            ref_chosen, ref_rejected = pairs["ref_chosen"], pairs["ref_rejected"]
        else:
            ref_chosen, ref_rejected, _, _ = self.pair_logps(pairs, self.reference)
        loss = preference_loss(chosen, rejected, ref_chosen, ref_rejected, settings.beta, settings.loss_type,
                               settings.label_smoothing, chosen_tokens, rejected_tokens)
        margins = (loss.chosen_rewards - loss.rejected_rewards).numpy()
        return {"heldout_loss": float(tf.reduce_mean(loss.losses)), "heldout_accuracy": float(np.mean(margins > 0)),
                "heldout_margin": float(np.mean(margins))}


def dpo(config=None, policy=None, resume=False, show_progress=True, strategy=None):
    """DPO (or IPO, hinge, cDPO: `config.dpo.loss_type`) of `policy` on `config.dpo.preferences_csv`.

    Args:
        config: `PPOConfig`, uses `dpo` (its `preferences_csv` and held-out
            split too), `model`, `dtype`, `lora_rank`, `run_dir`; or a
            `DPOConfig` alone (the other fields at their defaults).
        policy: the starting policy and reference; default the cached SFT
            policy (or the configured preset).
        resume: continue the run in `config.run_dir` from its latest checkpoint.

    Returns:
        `DPOResult`; `history[-1]["heldout_accuracy"]` is the held-out
        preference accuracy (chosen's implicit reward above rejected's).

    Example:
        result = dpo(DPOConfig(beta=0.2, epochs=1))  # or PPOConfig(run_dir="runs/dpo", dpo={...})
        tf_ppo.export(result.run_dir, "exported/dpo")
    """
    return DPOTrainer(config, policy, resume, show_progress, strategy).train()
