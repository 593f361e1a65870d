"""Stage 2: the RL training loop (`train`), reading top to bottom like CleanRL.

Each update:
  1. rollout     sample responses for a batch of prompts, `num_generations` per prompt (KV-cached, compiled);
  2. score       policy / reference log-probs and values, one forward pass each (only the models in use);
  3. reward      the reward function(s) on decoded responses;
  4. advantages  the algorithm's: GAE over a KL-shaped reward (PPO), group baselines (GRPO, RLOO), ...;
  5. optimise    epochs x num_mini_batches steps of the algorithm's loss, non-finite steps skipped;
  6. log         metrics CSV, TensorBoard, callbacks; checkpoint.
The algorithm (`tf_ppo.rl.algorithms`) decides the models, advantages and loss;
the maths lives in `tf_ppo.rl.functional.ppo` and `tf_ppo.rl.functional.estimators`; this module only
wires it together and never looks at which algorithm runs.
"""

import dataclasses
import datetime
import functools
import json
import os
import pathlib
import shutil
import time
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tf_ppo.rl import algorithms
from tf_ppo.rl.functional import masked, ppo
from tf_ppo.rl.algorithms import Experience, Forward
from tf_ppo.training.checkpoints import CheckpointError, restore_latest
from tf_ppo.training.compiled import compiled
from tf_ppo.config import ConfigError, PPOConfig
from tf_ppo.data import encode_prompts, load_prompts, prompt_dataset, prompt_token_counts, start_token_ids
from tf_ppo.export import save_preset
from tf_ppo.training.distribute import (compiled_per_replica, gather, is_chief, reduce_sum, replica_row_offset,
                               resolve_strategy, split_batch, weights_fingerprint, writable_dir)
from tf_ppo.models.einsum import einsum_as_tensordot
from tf_ppo.models.remat import recomputed_blocks
from tf_ppo.models import (AdaptersOff, build_value_model, copy_model, enable_lora, frozen_copy, parameter_report,
                           policy_from_config, tokenizer_for)
from tf_ppo.training.reporting import RunLog, plot_curves, read_history
from tf_ppo.rl.functional.estimators import frac_reward_zero_std, overlong_penalty, pass_at_k
from tf_ppo.rl.rewards import (RewardFunctionFailed, combined_scores, compute_scores, corpus_bigrams, is_fluent,
                            proxy_rises_gold_falls, reward_names)
from tf_ppo.generation.sampling import generate, response_logits, response_tokens, response_view
from tf_ppo.sft import default_policy
from tf_ppo.training.supervised import NonFiniteError, adam_for, guarded_apply, sigterm_stops
from tf_ppo.tasks import TASKS


EVALUATION_BEFORE = "evaluation_before.json"  # the starting policy's held-out figures, written once
EVALUATION_AFTER = "evaluation_after.json"  # the trained policy's; written last, so it marks a finished run


class OveroptimisationWarning(UserWarning):
    """The proxy reward keeps rising while the gold score falls: reward hacking."""


class Callback:
    """Base class for callbacks; `self.trainer` is set before training starts.

    Set `self.trainer.stop_training = True` to stop after the current update.

    Example:
    >>> class StopAtScore(Callback):
    ...     def on_update_end(self, update, logs):
    ...         if logs["score_mean"] > 0.8:
    ...             self.trainer.stop_training = True
    """

    trainer = None

    def on_update_end(self, update, logs):
        pass


@dataclasses.dataclass
class Rollout:
    """One sampled, scored and rewarded batch: the tensors the algorithm trains on, and what is logged."""

    experience: Experience  # advantages not yet filled in
    entropy: float  # mean entropy of the policy over response tokens, nats
    texts: list  # decoded responses
    prompt_texts: list  # the prompts as the policy saw them
    gold_scores: np.ndarray | None  # the independent judge's scores, if one is given
    reward_scores: dict  # name -> [batch] scores of each reward function (several reward functions only)
    reward_failure: str | None  # why the reward could not be computed; the update is then skipped
    seconds: dict  # generate / score / reward wall time


@dataclasses.dataclass
class TrainResult:
    """What `train` returns."""

    policy: keras.Model
    value_model: keras.Model | None  # None for the critic-free algorithms
    tokenizer: object
    history: list  # one dict of metrics per update
    evaluation_before: dict  # held-out metrics of the starting policy
    evaluation_after: dict  # held-out metrics of the trained policy
    run_dir: pathlib.Path
    config: PPOConfig
    preempted: bool = False  # stopped early by SIGTERM: checkpoint saved, no final evaluation


class PPOTrainer:
    """Holds the models, the compiled steps and the run state of one run, of any algorithm.

    Most users call `train(config)`; the trainer is public for notebooks that
    want to step through one update (`rollout`, `advantages`, `optimise`).

    Example:
        trainer = PPOTrainer(PPOConfig(total_updates=2))
        result = trainer.train()
    """

    def __init__(self, config=None, reward_fn=None, prompts=None, policy=None, callbacks=(),
                 resume=False, show_progress=True, gold_reward_fn=None, strategy=None, accuracy_fn=None):
        self.config = config = config or PPOConfig()
        self.algorithm = algorithms.create(config)
        self.reward_fns, self.reward_weights = _reward_functions(reward_fn, config)
        self.accuracy_fn = accuracy_fn or TASKS[config.task].accuracy_fn  # 1/0 per response: accuracy, pass@k
        if config.eval_pass_k and self.accuracy_fn is None:
            raise ConfigError(f"PPOConfig.eval_pass_k={config.eval_pass_k} needs answers to check: "
                              f"task='arithmetic', or train(..., accuracy_fn=fn) with fn(prompts, responses) "
                              f"-> 1.0 / 0.0 each")
        self.gold_reward_fn = gold_reward_fn  # an independent judge, logged beside the proxy reward
        self.overoptimising = False
        self.callbacks, keras_callbacks = _split_callbacks(callbacks)
        self.show_progress = show_progress
        self.stop_training = False
        self.consecutive_skips = 0
        self.run_dir = pathlib.Path(config.run_dir or f"runs/ppo-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        keras.utils.set_random_seed(config.seed)

        self.tokenizer = tokenizer_for(config, policy)
        vocabulary_size = self.tokenizer.vocabulary_size()
        self.prompt_ids, self.prompt_lengths = self._encode(load_prompts(prompts if prompts is not None
                                                                         else config.prompts))
        self.eval_prompts = load_prompts(config.eval_prompts_csv)[: config.eval_size]
        self.bigrams = corpus_bigrams(config.fluency_corpus) if config.fluency_corpus else None

        if config.value_from_reward_model and not hasattr(self.reward_fns[0], "backbone"):
            raise ConfigError(f"PPOConfig.value_from_reward_model needs a RewardModel as reward_fn, "
                             f"got {type(self.reward_fns[0]).__name__}")
        # Models, optimizer and run state live under the strategy (mirrored across replicas).
        self.strategy = resolve_strategy(strategy if strategy is not None else config.strategy,
                                         config.collective_timeout)
        replicas = self.strategy.num_replicas_in_sync
        if config.mini_batch_size % replicas:
            raise ConfigError(f"PPOConfig.batch_size / num_mini_batches = {config.mini_batch_size} rollouts per "
                             f"minibatch must be divisible by the {replicas} replicas")
        if (config.rollout_batch_size or config.batch_size) % replicas:
            raise ConfigError(f"PPOConfig.rollout_batch_size={config.rollout_batch_size} rollouts per chunk must "
                             f"be divisible by the {replicas} replicas")
        with self.strategy.scope():
            self.optimizer = adam_for(config.dtype, replicas, config.learning_rate, config.adam_epsilon)
        self.output_dir = writable_dir(self.run_dir, self.strategy)  # only the chief writes into run_dir
        self.show_progress = show_progress and is_chief(self.strategy)
        with self.strategy.scope():
            self.policy = self._starting_policy(policy)
            if config.lora_rank:
                enable_lora(self.policy, config.lora_rank)
            self.reference = None  # no KL term (GRPO's beta = 0): no reference model at all
            if self.algorithm.uses_reference:  # LoRA: one copy of the base weights, the policy with adapters off
                self.reference = AdaptersOff(self.policy) if config.lora_rank else frozen_copy(self.policy)
            self.value_model = None
            if self.algorithm.uses_value_model:
                self.value_model = build_value_model(
                    config.model, self.policy, vocabulary_size, share_backbone=bool(config.lora_rank),
                    source=self.reward_fns[0] if config.value_from_reward_model else None)
            # De-duplicated: with LoRA the value model shares the policy's adapters.
            self.variables = list({id(v): v for model in (self.policy, self.value_model) if model is not None
                                   for v in model.trainable_variables}.values())
            self.optimizer.build(self.variables)  # eagerly, so no slot is created inside a tf.function
            self.update = tf.Variable(0, dtype=tf.int64, trainable=False, name="update")
        # Keras callbacks see the policy as their `model` (EarlyStopping sets `model.stop_training`).
        self.keras_callbacks = keras.callbacks.CallbackList(keras_callbacks, model=self.policy)
        models = {"policy": self.policy,
                  "reference": self.reference or f"none ({config.algorithm} with beta = 0 has no KL term)",
                  "value model": self.value_model or f"none ({config.algorithm} has no critic)"}
        for name, fn in zip(reward_names(self.reward_fns), self.reward_fns):
            if isinstance(fn, keras.Model):
                models["reward model" if len(self.reward_fns) == 1 else f"reward model {name}"] = fn
        self.parameter_report = parameter_report(models)
        if self.show_progress:
            print(self.parameter_report)
        if config.target_kl is None:
            self.kl_controller = ppo.FixedKLController(self.algorithm.initial_kl_coef())
        else:
            self.kl_controller = ppo.AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)

        # Run state, saved in every checkpoint.
        critic = {"value_model": self.value_model} if self.value_model is not None else {}
        self.checkpoint = tf.train.Checkpoint(policy=self.policy, **critic, optimizer=self.optimizer,
                                              kl_coef=self.kl_controller.value, update=self.update)
        self.checkpoints = tf.train.CheckpointManager(self.checkpoint, self.output_dir / "checkpoints", max_to_keep=3)
        if resume:
            self._restore()
        elif self.checkpoints.latest_checkpoint:
            raise CheckpointError(f"{self.run_dir} already holds checkpoints of a run; resume it (resume=True, "
                                  f"tf-ppo train --resume {self.run_dir}) or choose a new run_dir")

        # One compiled function per phase, each with fixed shapes: traced once (once per device on several
        # replicas). Each runs its replica part with `strategy.run` and gathers the global batch back (identity
        # on one device). Sampling and scoring hold no cross-replica reduction: XLA on every replica.
        self._generate_replica = compiled_per_replica(self.strategy, self._generate_fn, config.generation_jit)
        self._score_replica = compiled_per_replica(self.strategy, self._score_fn, config.train_jit)
        self._generate_greedy_replica = compiled_per_replica(
            self.strategy, functools.partial(self._generate_fn, greedy=True), config.generation_jit)
        self._generate = compiled(functools.partial(self._generate_all, self._generate_replica))
        self._generate_greedy = compiled(functools.partial(self._generate_all, self._generate_greedy_replica))
        self._score = compiled(self._score_all)
        self._advantages = compiled(self.algorithm.advantages)
        # The whole optimiser step is one XLA computation: the gradients never leave it and clipping fuses
        # into Adam's update (1% faster per update at S2 of the performance issue than gradients and Adam
        # compiled apart). Its parts are plain Python: a tf.function nested in the XLA one took minutes and
        # gigabytes to compile. On several replicas it runs without XLA: the loss's global means all-reduce
        # token counts across replicas, which cannot happen inside an XLA (or any nested) function, and
        # one XLA computation cannot span devices.
        self._train_step = compiled(self._train_step_fn, jit_compile=config.train_jit and replicas == 1)

    # ----------------------------------------------------------------- compiled phases

    def _generate_fn(self, batch, seed, chunk_start, greedy=False):
        """One replica: sample responses for its share of the prompts (greedy: the most likely token each step).

        `chunk_start` is the batch row of the chunk's first row: every row draws its own noise, whatever
        chunk and replica it is sampled in.
        """
        c = self.config
        row_offset = chunk_start + replica_row_offset(tf.shape(batch["prompt_ids"])[0])
        top_k, top_p = (1, 1.0) if greedy else (c.top_k, c.top_p)
        return generate(self.policy, batch["prompt_ids"], batch["prompt_lengths"], seed, c.response_length,
                        c.temperature, top_k, top_p, row_offset)

    def _generate_all(self, replica_fn, batch, seed, chunk_start):
        return gather(self.strategy, self.strategy.run(replica_fn, args=(batch, seed, chunk_start)))

    def _in_chunks(self, run_chunk, tensors):
        """`run_chunk(chunk, chunk_start)` on `rollout_batch_size` rows at a time; the outputs concatenated.

        A chunk is split over the replicas. One chunk (the default) is the whole batch, run as is.
        """
        rows = len(next(iter(tensors.values())))
        size = self.config.rollout_batch_size or rows
        outputs = [run_chunk(split_batch(self.strategy, {name: value[start: start + size]
                                                         for name, value in tensors.items()}),
                             tf.constant(start, tf.int32))
                   for start in range(0, rows, size)]
        if len(outputs) == 1:
            return outputs[0]
        return tf.nest.map_structure(lambda *chunks: tf.concat(chunks, axis=0), *outputs)

    def sample(self, prompt_ids, prompt_lengths, seed, greedy=False):
        """Prompt + response token ids `[rows, P + R]`, sampled (or greedy) in `rollout_batch_size` chunks.

        Example:
            sequence_ids = trainer.sample(trainer.prompt_ids[:32], trainer.prompt_lengths[:32], tf.constant([0, 1]))
        """
        generate_fn = self._generate_greedy if greedy else self._generate
        return self._in_chunks(lambda chunk, chunk_start: generate_fn(chunk, seed, chunk_start),
                               {"prompt_ids": prompt_ids, "prompt_lengths": prompt_lengths})

    def response_logprobs(self, model, sequence_ids, responses):
        """Log-probs `[batch, R]` and logits `[batch, R, V]` of the response tokens, logits / temperature.

        The one path that old (rollout) and new (training) log-probs both take.

        Example:
            logprobs, logits = trainer.response_logprobs(trainer.policy, batch["sequence_ids"], batch["responses"])
        """
        logits = response_logits(model, sequence_ids, responses.positions) / self.config.temperature
        return masked.logprobs_from_logits(logits, responses.token_ids), logits  # [batch, R], [batch, R, V]

    def _score_fn(self, batch):
        """One replica: log-probs (policy, reference), values and entropies of its share of the rollouts.

        Returns a dict; `ref_logprobs` and `values` only when the run has a reference and a critic.
        """
        end_token = self.tokenizer.end_token_id if self.config.stop_at_eos else None
        responses = response_view(batch["sequence_ids"], batch["prompt_lengths"], self.config.response_length,
                                  end_token)
        logprobs, logits = self.response_logprobs(self.policy, batch["sequence_ids"], responses)
        scored = {"responses": responses, "logprobs": logprobs, "entropy": masked.entropy_from_logits(logits)}
        if self.reference is not None:
            scored["ref_logprobs"], _ = self.response_logprobs(self.reference, batch["sequence_ids"], responses)
        if self.value_model is not None:
            scored["values"] = response_logits(self.value_model, batch["sequence_ids"], responses.positions)
        return scored

    def _score_all(self, batch):
        return gather(self.strategy, self.strategy.run(self._score_replica, args=(batch,)))

    def _gradients_fn(self, tensors):
        """One replica: its share of the loss (token sums over the GLOBAL token count) and its gradients.

        `tensors` holds the present fields of a minibatch `Experience` (a dict: None does not cross replicas).
        """
        c = self.config
        minibatch = Experience(**tensors)
        responses = minibatch.responses
        # The gradient is taken inside both contexts: with checkpointing, the backward pass reruns the forward.
        with einsum_as_tensordot(), recomputed_blocks(self.policy, self.value_model, enabled=c.gradient_checkpointing):
            with tf.GradientTape() as tape:
                logprobs, logits = self.response_logprobs(self.policy, minibatch.sequence_ids, responses)
                values = None
                if self.value_model is not None:
                    values = response_logits(self.value_model, minibatch.sequence_ids, responses.positions)
                loss, stats = self.algorithm.loss(Forward(logprobs, logits, values), minibatch)
                if c.entropy_coef:  # skipped at 0: a softmax over [batch, R, vocab] and its gradient cost real time
                    loss -= c.entropy_coef * masked.masked_mean(masked.entropy_from_logits(logits), minibatch.loss_mask)
                scaled_loss = self.optimizer.scale_loss(loss)  # x loss scale under mixed_float16, else the loss
            gradients = tape.gradient(scaled_loss, self.variables)
        return gradients, {"loss": loss, **stats}

    def _train_step_fn(self, batch):
        """One optimiser step on a minibatch: sum the replicas' gradients, then clip and apply once.

        A NaN or inf must never reach the weights (or Adam's moments), so a
        non-finite loss or gradient skips the step; returns the step's metrics.
        """
        gradients, stats = reduce_sum(self.strategy, self.strategy.run(self._gradients_fn, args=(batch,)))
        c = self.config
        grad_norm, applied = guarded_apply(self.optimizer, self.variables, gradients, stats["loss"], c.clip_mode,
                                           c.max_grad_norm)
        return {**stats, "grad_norm": grad_norm, "applied": applied}

    def train_step(self, minibatch):
        """One compiled optimiser step on a minibatch `Experience` (advantages filled in); returns its metrics.

        Example:
            step = trainer.train_step(experience.rows(tf.range(16)))
            bool(step["applied"])
        """
        return self._train_step(split_batch(self.strategy, minibatch.present()))

    # ----------------------------------------------------------------- one update, in steps

    def rollout(self, prompt_ids, prompt_lengths, seed):
        """Sample, score and reward one batch of rows (already repeated per generation); returns a `Rollout`.

        Example:
            rollout = trainer.rollout(trainer.prompt_ids[:32], trainer.prompt_lengths[:32], tf.constant([0, 1]))
            rollout.experience.logprobs.shape  # [32, response_length]
        """
        c = self.config
        started = time.perf_counter()
        sequence_ids = self.sample(prompt_ids, prompt_lengths, seed)
        generated = time.perf_counter()
        scored = self._in_chunks(lambda chunk, _: self._score(chunk),
                                 {"sequence_ids": sequence_ids, "prompt_lengths": prompt_lengths})
        responses = scored["responses"]
        entropy = float(masked.masked_mean(scored["entropy"], responses.mask))
        scoring_done = time.perf_counter()
        texts = self.decode(responses)
        start = len(start_token_ids(self.tokenizer))  # 0 when the tokenizer has no start token (Qwen, ...)
        prompt_texts = self._detokenize(tf.RaggedTensor.from_tensor(sequence_ids[:, start:],
                                                                    lengths=prompt_lengths - start))
        scores, reward_scores, failure = self._rewards(texts, prompt_texts)
        gold_scores = compute_scores(self.gold_reward_fn, texts, prompt_texts) if self.gold_reward_fn else None
        ended = np.any(responses.token_ids.numpy() == self.tokenizer.end_token_id, axis=1)  # [batch]
        if c.missing_eos_penalty is not None:
            scores = scores - c.missing_eos_penalty * ~ended
        if c.overlong_buffer:
            lengths = tf.reduce_sum(tf.cast(responses.mask, tf.int32), axis=1)
            scores = scores + overlong_penalty(lengths, c.response_length, c.overlong_buffer,
                                               c.overlong_penalty).numpy()
        loss_mask = responses.mask
        if c.mask_truncated_completions:
            loss_mask = responses.mask & tf.constant(ended)[:, None]
        experience = Experience(sequence_ids, responses, scored["logprobs"], tf.constant(scores, tf.float32),
                                loss_mask, scored.get("ref_logprobs"), scored.get("values"))
        return Rollout(experience, entropy, texts, prompt_texts, gold_scores, reward_scores, failure,
                       {"generate": generated - started, "score": scoring_done - generated,
                        "reward": time.perf_counter() - scoring_done})

    def _rewards(self, texts, prompt_texts):
        """`(weighted scores [batch], each function's scores by name, failure or None)`.

        A reward function that raises gives NaN scores, so the non-finite guard
        skips the update (and says which function failed) instead of ending the run.
        """
        try:
            scores, each = combined_scores(self.reward_fns, self.reward_weights, texts, prompt_texts)
        except RewardFunctionFailed as error:
            return np.full(len(texts), np.nan), {}, str(error)
        return scores, (each if len(self.reward_fns) > 1 else {}), None

    def decode(self, responses):
        """Response texts, without the end token and the padding after it."""
        return self._detokenize(response_tokens(responses, self.tokenizer.end_token_id))

    def _detokenize(self, token_ids):
        texts = self.tokenizer.detokenize(token_ids)  # ragged [batch, None] -> [batch] strings
        return [text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
                for text in np.asarray(texts).tolist()]

    def optimise(self, experience, update, reward_failure=None):
        """Run the algorithm's epochs over shuffled minibatches; returns the mean of each loss metric."""
        c = self.config
        metrics = self.algorithm.metrics + ("grad_norm",)
        epochs = self.algorithm.num_epochs
        present = experience.present()
        non_finite = [name for name in ("scores", "logprobs", "ref_logprobs", "values", "advantages", "returns")
                      if name in present and not np.all(np.isfinite(present[name]))]
        if non_finite or reward_failure:
            reason = reward_failure or f"non-finite {', '.join(non_finite)} in the rollout"
            self._skipped(update, reason)
            return {**dict.fromkeys(metrics, float("nan")), "skipped_steps": epochs * c.num_mini_batches,
                    "ppo_epochs": 0, "applied_steps": 0}
        rng = np.random.default_rng([c.seed, update])  # per update, so a resumed run shuffles the same way
        steps, epochs_done = [], 0
        for _ in range(epochs):
            order = rng.permutation(c.batch_size)
            epoch = [self.train_step(experience.rows(rows)) for rows in np.split(order, c.num_mini_batches)]
            steps += epoch
            epochs_done += 1
            if c.max_approx_kl is not None and np.mean([s["approx_kl"] for s in epoch]) > c.max_approx_kl:
                break  # the policy moved too far from the one that sampled: stop early (CleanRL's target_kl)
        applied = [bool(s.pop("applied")) for s in steps]
        if not any(applied):
            self._skipped(update, "non-finite loss or gradients in every optimiser step")
        else:
            self.consecutive_skips = 0
        # A skipped step's loss may be NaN and moved nothing: the update's metrics are those of the applied steps.
        kept = [step for step, was_applied in zip(steps, applied) if was_applied]
        means = {key: float(np.mean([step[key] for step in kept])) if kept else float("nan") for key in steps[0]}
        return {**means, "skipped_steps": applied.count(False), "ppo_epochs": epochs_done,
                "applied_steps": len(kept)}

    def _skipped(self, update, reason):
        """Count a skipped update; stop the run after `max_consecutive_skips` in a row."""
        self.consecutive_skips += 1
        message = f"update {update} skipped: {reason}"
        if self.consecutive_skips >= self.config.max_consecutive_skips:
            raise NonFiniteError(f"{self.consecutive_skips} updates in a row skipped (max_consecutive_skips="
                                 f"{self.config.max_consecutive_skips}); last: {message}")
        warnings.warn(message)

    # ----------------------------------------------------------------- the loop

    def train(self):
        """Run `config.total_updates` PPO updates (from the last checkpoint if resumed).

        SIGTERM (a cloud preemption) ends the run at the end of the update in
        flight, with a checkpoint: `result.preempted` is then True.
        """
        c = self.config
        restored = int(self.update.numpy())
        finished = self._read_evaluation(EVALUATION_AFTER)
        if restored >= c.total_updates and finished is not None:  # a rerun must not overwrite a finished run's figures
            print(f"{self.run_dir}: already complete at {restored}/{c.total_updates} updates; nothing changed")
            return TrainResult(self.policy, self.value_model, self.tokenizer, read_history(self.run_dir / "metrics.csv"),
                               self._read_evaluation(EVALUATION_BEFORE), finished, self.run_dir, c)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.json").write_text(c.to_json())
        log = RunLog(self.output_dir, keep_updates=restored)  # rows after the checkpoint are redone, not duplicated
        history = read_history(log.csv_path)
        for callback in self.callbacks:
            callback.trainer = self
        evaluation_before = self._starting_evaluation(restored)
        self._keras_callbacks_begin()
        prompts_per_update = c.batch_size // self.algorithm.num_generations
        prompts = iter(prompt_dataset(self.prompt_ids, self.prompt_lengths, prompts_per_update, c.seed)
                       .skip(restored))  # a resumed run continues where the data left off
        progress = tqdm(total=c.total_updates, initial=restored, desc=c.algorithm.upper(),
                        disable=not self.show_progress)
        self.preempted = False
        with sigterm_stops(self._request_stop):
            while int(self.update.numpy()) < c.total_updates and not self.stop_training:
                update = int(self.update.numpy()) + 1
                logs = self.run_update(next(prompts), update)
                if c.eval_every and update % c.eval_every == 0:
                    evaluation = self.evaluate()
                    logs.update(_heldout_metrics(evaluation))  # into the history, CSV, TensorBoard and curves
                    tqdm.write(f"update {update}: held-out {_summary(evaluation)}")
                self.update.assign(update)
                history.append({"update": update, **logs})
                log.write(update, logs)
                progress.update(1)
                if self.show_progress:
                    tqdm.write(_metrics_line(update, c.total_updates, logs, self.algorithm.kl_estimator))
                self._warn_if_overoptimising(history)
                for callback in self.callbacks:
                    callback.on_update_end(update, logs)
                self._keras_callbacks_update_end(update, logs)
                # Last in the update, so a SIGTERM that arrives during the callbacks still gets its checkpoint.
                if update % c.checkpoint_every == 0 or update == c.total_updates or self.preempted:
                    self.checkpoints.save(checkpoint_number=update)
        progress.close()
        log.close()
        self.keras_callbacks.on_train_end(history[-1] if history else None)
        if self.preempted:  # the grace period is short: the checkpoint is saved, skip evaluation and plots
            return TrainResult(self.policy, self.value_model, self.tokenizer, history, evaluation_before, None,
                               self.run_dir, c, preempted=True)
        evaluation_after = self.evaluate()
        self.save_artifacts(history)
        self._write_evaluation(EVALUATION_AFTER, evaluation_after)  # last: its presence marks the run finished
        if self.strategy.num_replicas_in_sync > 1:  # replicas must agree; print it so every worker can be compared
            print(f"weights fingerprint: {weights_fingerprint(self.policy)}", flush=True)
        if self.output_dir != self.run_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)  # a non-chief worker's throw-away copy
        return TrainResult(self.policy, self.value_model, self.tokenizer, history, evaluation_before,
                           evaluation_after, self.run_dir, c)

    def _request_stop(self):
        self.preempted = self.stop_training = True

    def run_update(self, prompt_batch, update):
        """One update on a batch of prompts (each sampled `num_generations` times); returns its metrics."""
        c = self.config
        started = time.perf_counter()
        seed = tf.constant([c.seed, update], tf.int32)
        generations = self.algorithm.num_generations  # each prompt's G rows side by side: one group
        rollout = self.rollout(tf.repeat(prompt_batch["prompt_ids"], generations, axis=0),
                               tf.repeat(prompt_batch["prompt_lengths"], generations, axis=0), seed)
        kl_coef = float(self.kl_controller.value.numpy())
        # kl_coef as a tensor: no retrace when it moves.
        experience, kl = self._advantages(rollout.experience, tf.constant(kl_coef))
        optimise_started = time.perf_counter()
        losses = self.optimise(experience, update, rollout.reward_failure)
        scores, mask = experience.scores.numpy(), experience.responses.mask
        logs = {"score_mean": float(np.mean(scores)), "score_std": float(np.std(scores))}
        for name, each in rollout.reward_scores.items():
            logs.update({f"rewards/{name}/mean": float(np.mean(each)), f"rewards/{name}/std": float(np.std(each))})
        if generations > 1:
            logs["frac_reward_zero_std"] = float(frac_reward_zero_std(experience.scores, generations))
        applied = losses.pop("applied_steps")
        if kl is not None:
            kl_per_response = float(tf.reduce_mean(tf.reduce_sum(kl, axis=1)))
            if applied and np.isfinite(kl_per_response):
                # A skipped update changed nothing, so it must not move beta either (a NaN KL would stick for good).
                self.kl_controller.update(kl_per_response, c.batch_size)
            logs.update({"kl": kl_per_response, "kl_coef": kl_coef, "non_score_reward": -kl_coef * kl_per_response})
        logs.update({"entropy": rollout.entropy, **losses})
        if experience.values is not None:
            logs["explained_variance"] = float(ppo.explained_variance(experience.values, experience.returns, mask))
        return {
            **logs,
            "response_length": float(tf.reduce_mean(tf.reduce_sum(tf.cast(mask, tf.float32), axis=1))),
            **self._fluency(rollout),
            **self._gold(rollout),
            **{f"seconds_{phase}": seconds for phase, seconds in rollout.seconds.items()},
            "seconds_optimise": time.perf_counter() - optimise_started,
            "seconds_update": time.perf_counter() - started,
        }

    def evaluate(self, prompts=None, seed=12345):
        """Mean score, KL to the reference and fluency of sampled completions of held-out prompts.

        `heldout_kl` is the k1 estimate, sum over response tokens of
        log pi(y) - log ref(y), averaged over the prompts (nats per response),
        whatever `kl_estimator` shapes the training reward (the history's `kl`).
        Prompts go in chunks of `batch_size` (the last one topped up by cycling
        through them) so evaluation reuses the compiled training-shape functions.

        Example:
            trainer.evaluate()["heldout_kl"]
        """
        prompts = prompts or self.eval_prompts
        c = self.config
        token_ids, lengths = self._encode(prompts, seed)
        rows = _whole_batches(len(prompts), c.batch_size)
        token_ids, lengths = token_ids[rows], lengths[rows]
        scores, kls, texts, prompt_texts, gold = [], [], [], [], []
        for start in range(0, len(token_ids), c.batch_size):
            chunk = slice(start, start + c.batch_size)
            rollout = self.rollout(token_ids[chunk], lengths[chunk], tf.constant([seed, start], tf.int32))
            if rollout.reward_failure:
                raise RewardFunctionFailed(f"evaluation: {rollout.reward_failure}")
            experience = rollout.experience
            if experience.ref_logprobs is not None:
                kls += list(masked.masked_sum(experience.logprobs - experience.ref_logprobs, experience.responses.mask,
                                           axis=1).numpy())
            scores += list(experience.scores.numpy())
            texts += rollout.texts
            prompt_texts += rollout.prompt_texts  # what the policy saw: cut to its first k tokens if configured
            gold += list(rollout.gold_scores) if rollout.gold_scores is not None else []
        n = len(prompts)
        samples = list(zip(prompt_texts[:n], texts[:n]))
        evaluation = {"score_mean": float(np.mean(scores[:n])), "samples": samples}
        if kls:  # without a reference model (GRPO with beta = 0) there is nothing to measure the KL against
            evaluation["heldout_kl"] = float(np.mean(kls[:n]))
        if self.bigrams is not None:
            evaluation["fluency"] = float(np.mean([is_fluent(p + t, self.bigrams) for p, t in samples]))
        if gold:
            evaluation["gold_score_mean"] = float(np.mean(gold[:n]))
        if self.config.eval_pass_k:
            evaluation.update(self._accuracy(prompts, token_ids[:n], lengths[:n], seed))
        return evaluation

    def _accuracy(self, prompts, token_ids, lengths, seed):
        """Greedy exact-match accuracy, pass@k from n >= k samples per prompt, and the greedy answers."""
        k = self.config.eval_pass_k
        n = self.config.eval_pass_samples or k
        greedy = self._completions(token_ids, lengths, seed, greedy=True)
        correct = np.asarray(self.accuracy_fn(prompts, greedy), np.float64)  # [prompts]
        sampled = self._completions(np.repeat(token_ids, n, axis=0), np.repeat(lengths, n), seed)
        sampled_correct = np.asarray(self.accuracy_fn(np.repeat(prompts, n).tolist(), sampled), np.float64)
        counts = sampled_correct.reshape(len(prompts), n).sum(axis=1).astype(np.int64)  # [prompts] correct of n
        return {"accuracy": float(np.mean(correct)), f"pass@{k}": float(np.mean(pass_at_k(n, counts, k))),
                "greedy_samples": list(zip(prompts, greedy))}

    def _completions(self, token_ids, lengths, seed, greedy=False):
        """Decoded responses of these prompts (greedy, or sampled as in training), in batch_size chunks."""
        c = self.config
        rows = _whole_batches(len(token_ids), c.batch_size)
        end_token = self.tokenizer.end_token_id if c.stop_at_eos else None
        texts = []
        for start in range(0, len(rows), c.batch_size):
            chunk = rows[start: start + c.batch_size]
            chunk_lengths = tf.gather(lengths, chunk)
            sequence_ids = self.sample(tf.gather(token_ids, chunk), chunk_lengths, tf.constant([seed, start], tf.int32),
                                        greedy)
            texts += self.decode(response_view(sequence_ids, chunk_lengths, c.response_length, end_token))
        return texts[: len(token_ids)]

    def save_artifacts(self, history):
        """The final policy and value model (Keras format), a keras-hub preset, LoRA adapters, the curves PNG.

        With LoRA, `policy.keras` and the preset hold the adapters merged into the kernels.
        """
        self.policy.save(self.output_dir / "policy.keras")
        if self.value_model is not None:
            self.value_model.save(self.output_dir / "value_model.keras")
        if self.config.lora_rank:
            self.policy.backbone.save_lora_weights(str(self.output_dir / "adapters.lora.h5"))
        if isinstance(self.policy, keras_hub.models.CausalLM):
            shutil.rmtree(self.output_dir / "preset", ignore_errors=True)  # a resumed run's earlier one
            save_preset(self.policy, self.tokenizer, self.output_dir / "preset")
        if history:
            plot_curves(history, self.output_dir / "curves.png")

    # ----------------------------------------------------------------- helpers

    def _starting_policy(self, policy):
        """The given policy, else the configured preset, else the cached SFT policy; in the run's dtype.

        A policy built outside the strategy's scope is copied in, so its variables are mirrored.
        """
        c = self.config
        if policy is None and c.model.preset is None:
            policy = default_policy(c, show_progress=self.show_progress, strategy=self.strategy)
        elif policy is None:
            policy = policy_from_config(c, self.tokenizer)
        if self.strategy.num_replicas_in_sync > 1 or policy.dtype_policy.name != c.dtype:
            policy = copy_model(policy, c.dtype)
        return policy

    def _encode(self, prompts, seed=None):
        """Token ids and lengths of prompt texts, cut to their first k tokens if the config asks."""
        c = self.config
        counts = prompt_token_counts(len(prompts), c.prompt_tokens_min, c.prompt_tokens_max,
                                     c.seed if seed is None else seed)
        return encode_prompts(self.tokenizer, prompts, c.max_prompt_length, c.truncate_prompts, counts)

    def _fluency(self, rollout):
        if self.bigrams is None:
            return {}
        return {"fluency": float(np.mean([is_fluent(p + t, self.bigrams)
                                          for p, t in zip(rollout.prompt_texts, rollout.texts)]))}

    def _gold(self, rollout):
        """The gold score beside the proxy, and how well they agree on this batch."""
        if rollout.gold_scores is None:
            return {}
        proxy, gold = rollout.experience.scores.numpy(), rollout.gold_scores
        agree = float(np.corrcoef(proxy, gold)[0, 1]) if proxy.std() > 0 and gold.std() > 0 else 0.0
        return {"gold_score_mean": float(np.mean(gold)), "proxy_gold_correlation": agree}

    def _warn_if_overoptimising(self, history):
        """Warn once each time the proxy starts rising while the gold score falls."""
        window = self.config.overoptimisation_window
        rows = [row for row in history if "gold_score_mean" in row]  # a resumed run's older rows may have none
        diverging = self.gold_reward_fn is not None and proxy_rises_gold_falls(
            [row["score_mean"] for row in rows], [row["gold_score_mean"] for row in rows], window)
        if diverging and not self.overoptimising:
            warnings.warn(f"update {history[-1]['update']}: over the last {window} updates the proxy reward "
                          f"rose while the gold score fell: the policy may be exploiting the reward model "
                          f"(raise kl_coef or stop here)", OveroptimisationWarning)
        self.overoptimising = diverging

    def _restore(self):
        # Every worker restores from the chief's checkpoints (the run directory), wherever it saves its own.
        shared = tf.train.CheckpointManager(self.checkpoint, self.run_dir / "checkpoints", max_to_keep=3)
        path = restore_latest(shared, self.checkpoint)
        if path is None:
            raise CheckpointError(f"resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        if self.show_progress:
            print(f"resumed from {pathlib.Path(path).name} (update {int(self.update.numpy())}/"
                  f"{self.config.total_updates})", flush=True)

    # ----------------------------------------------------------------- evaluations kept in the run directory

    def _starting_evaluation(self, restored):
        """The starting policy's evaluation: measured once, at update 0, and read back by every resumed run.

        A resumed run's policy is no longer the starting one, so evaluating it
        again would report the trained policy as "before".
        """
        if restored:
            evaluation = self._read_evaluation(EVALUATION_BEFORE)
            if evaluation is None:
                raise CheckpointError(f"resume: {self.run_dir / EVALUATION_BEFORE} is missing, so the starting "
                                      f"policy's figures are lost; start a new run_dir")
            return evaluation
        evaluation = self.evaluate()
        self._write_evaluation(EVALUATION_BEFORE, evaluation)
        return evaluation

    def _read_evaluation(self, name):
        path = self.run_dir / name  # every worker reads the chief's copy
        if not path.is_file():
            return None
        evaluation = json.loads(path.read_text())
        evaluation["samples"] = [tuple(sample) for sample in evaluation["samples"]]
        return evaluation

    def _write_evaluation(self, name, evaluation):
        partial = self.output_dir / f"{name}.partial"
        partial.write_text(json.dumps(evaluation, indent=1))
        os.replace(partial, self.output_dir / name)  # complete or absent, never half-written

    # ----------------------------------------------------------------- Keras callbacks: one update = one epoch

    def _keras_callbacks_begin(self):
        self.policy.stop_training = False
        self.keras_callbacks.on_train_begin()

    def _keras_callbacks_update_end(self, update, logs):
        """Keras' hooks for update `update` (epoch `update - 1`); `model.stop_training` stops the run."""
        self.keras_callbacks.on_epoch_begin(update - 1)
        self.keras_callbacks.on_train_batch_end(0, logs)  # TerminateOnNaN reads `loss` here
        self.keras_callbacks.on_epoch_end(update - 1, dict(logs))
        if self.policy.stop_training:
            self.stop_training = True


def train(config=None, reward_fn=None, prompts=None, policy=None, callbacks=(), resume=False, show_progress=True,
          gold_reward_fn=None, strategy=None, accuracy_fn=None):
    """Fine-tune a policy with the algorithm `config.algorithm` names (PPO by default); usable from notebooks.

    Args:
        config: `PPOConfig` (default: the demo task's settings, PPO).
        reward_fn: `responses -> scores`, `(prompts, responses) -> scores`, a
            `RewardModel`, or a list of them, summed with `config.reward_weights`
            (each one's mean and std logged by name); default VADER sentiment.
        prompts: a list of strings, a `tf.data.Dataset` of strings, a CSV path or
            "tfds:NAME[:SPLIT]"; default `config.prompts`.
        policy: a policy to start from (trained in place); default `config.model`'s
            preset, else the tiny SFT policy (cached).
        callbacks: `tf_ppo.Callback` objects (`on_update_end(update, logs)` after
            each update) and/or `keras.callbacks.Callback` objects, for which one
            update is one epoch: `EarlyStopping(monitor="score_mean", mode="max")`,
            `TerminateOnNaN()` (reads `loss`), `CSVLogger(path)` work as in `fit`.
            Their `model` is the policy.
        resume: continue from the latest checkpoint in `config.run_dir`.
        gold_reward_fn: an independent scorer logged beside the reward
            (`gold_score_mean`, `proxy_gold_correlation`); a warning when the
            reward rises while it falls (`config.overoptimisation_window`).
        strategy: a `tf.distribute.Strategy` instance (default: from `config.strategy`).
        accuracy_fn: `(prompts, responses) -> 1.0 / 0.0 each`, the correctness
            check behind `eval_pass_k`'s accuracy and pass@k (default: the task's).

    Returns:
        `TrainResult` with the policy, history, held-out evaluations and run directory.
        Resuming a finished run changes nothing and returns its recorded figures.

    Example:
        from tf_ppo.rl.rewards import word_count_reward
        result = train(PPOConfig(total_updates=5), reward_fn=word_count_reward("great"))
        result.history[-1]["score_mean"]
        train(PPOConfig(algorithm="grpo", num_generations=4, beta=0.04))  # no critic; 16 prompts x 4 samples
        train(PPOConfig(task="arithmetic", algorithm="grpo", num_generations=4))  # exact-match reward, pass@4
    """
    trainer = PPOTrainer(config, reward_fn, prompts, policy, callbacks, resume, show_progress, gold_reward_fn, strategy,
                         accuracy_fn)
    return trainer.train()


def _reward_functions(reward_fn, config):
    """`(reward functions, their weights)`: the given ones (one, a RewardModel, or a list), else the task's."""
    task = TASKS[config.task]
    if reward_fn is None:
        reward_fns, weights = list(task.reward_fns), task.reward_weights
    else:
        reward_fns, weights = (list(reward_fn) if isinstance(reward_fn, (list, tuple)) else [reward_fn]), None
    if not reward_fns:
        raise ConfigError("reward_fn: an empty list of reward functions")
    if config.reward_weights is not None and len(config.reward_weights) != len(reward_fns):
        raise ConfigError(f"PPOConfig.reward_weights has {len(config.reward_weights)} weights for "
                          f"{len(reward_fns)} reward functions")
    return reward_fns, config.reward_weights or weights or (1.0,) * len(reward_fns)


def _split_callbacks(callbacks):
    """`(tf_ppo callbacks, keras.callbacks.CallbackList)`; anything else is an error now, not after an update."""
    ours, keras_ones = [], []
    for index, callback in enumerate(callbacks):
        if isinstance(callback, Callback):
            ours.append(callback)
        elif isinstance(callback, keras.callbacks.Callback):
            keras_ones.append(callback)
        else:
            raise TypeError(f"callbacks[{index}] is a {type(callback).__name__}, not a callback: pass a "
                            f"tf_ppo.Callback (on_update_end(update, logs)) or a keras.callbacks.Callback")
    return ours, keras_ones


def _metrics_line(update, total_updates, logs, kl_estimator):
    shown = ("score_mean", "gold_score_mean", "kl", "kl_coef", "entropy", "clipfrac", "approx_kl", "value_loss", "fluency")
    # The batch KL with the configured estimator, named apart from the held-out evaluation's k1 `heldout_kl`.
    labels = {"kl": f"kl[{kl_estimator}]"}
    values = " ".join(f"{labels.get(key, key)} {logs[key]:.3f}" for key in shown if key in logs)
    return f"update {update}/{total_updates}: {values} ({logs['seconds_update']:.2f} s)"


def _summary(evaluation):
    return json.dumps({k: round(v, 3) for k, v in evaluation.items() if isinstance(v, float)})


def _whole_batches(count, batch_size):
    """Row indices `0..count-1` cycled up to whole batches, so evaluation reuses the compiled batch shape.

    Example:
    >>> _whole_batches(5, 4).tolist()
    [0, 1, 2, 3, 4, 0, 1, 2]
    """
    return np.arange(-(-count // batch_size) * batch_size) % count


def _heldout_metrics(evaluation):
    """An evaluation's figures as history columns: `heldout_score_mean`, `heldout_accuracy`, `heldout_pass@4`, ..."""
    return {f"heldout_{name}": value for name, value in evaluation.items() if isinstance(value, float)}
