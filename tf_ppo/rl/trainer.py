"""One RL run, reading top to bottom like CleanRL: `train(config)` and `RLTrainer`.

Each update:
  1. rollout     `RolloutEngine`: sample `num_generations` responses per prompt, score them (policy,
                 reference, critic), reward and shape them;
  2. advantages  the algorithm's: GAE over a KL-shaped reward (PPO), group baselines (GRPO, RLOO), ...;
  3. optimise    `Learner`: the algorithm's epochs of guarded minibatch steps;
  4. log         metrics CSV, TensorBoard, callbacks; checkpoint.
The algorithm (`tf_ppo.rl.algorithms`) decides the models, advantages, loss and
KL control; the run never looks at which algorithm runs.
"""

import dataclasses
import datetime
import pathlib
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tf_ppo.chat import check_chat_template
from tf_ppo.config import PPOConfig, policy_sections, run_config
from tf_ppo.data import load_prompts, prompt_dataset
from tf_ppo.models import (AdaptersOff, build_value_model, copy_model, enable_lora, frozen_copy, parameter_report,
                           family_for, text_only, tokenizer_for)
from tf_ppo.models.packing import packer_for
from tf_ppo.rl import algorithms
from tf_ppo.rl.callbacks import UpdateCallbacks
from tf_ppo.rl.evaluator import Evaluator, accuracy_check, fluency
from tf_ppo.rl.functional import ppo
from tf_ppo.rl.functional.estimators import frac_reward_zero_std
from tf_ppo.rl.functional.importance import corrected_advantages
from tf_ppo.rl.environment import environment_for, environment_rewards_only
from tf_ppo.rl.episodes import episode_metrics
from tf_ppo.rl.learner import Learner
from tf_ppo.rl.logs import DriftWatch, OveroptimisationWatch, gold_metrics, heldout_metrics, metrics_line, summary
from tf_ppo.rl.rewards import reward_functions, reward_names
from tf_ppo.rl.rollout import RolloutEngine
from tf_ppo.rl.run_files import (EVALUATION_AFTER, EVALUATION_BEFORE, read_evaluation, save_run_artifacts,
                                 write_evaluation)
from tf_ppo.sft import starting_policy
from tf_ppo.training.checkpoints import CheckpointError, restore_latest
from tf_ppo.training.compiled import compiled
from tf_ppo.training.distribute import (agreed_stop_signal, check_replicas, is_chief, resolve_strategy,
                                       weights_fingerprint, writable_dir)
from tf_ppo.training.guarded_step import adam_for
from tf_ppo.training.interrupts import signals_stop
from tf_ppo.training.reporting import RunLog, read_history


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
    interrupted: bool = False  # stopped early by Ctrl-C (SIGINT): the same
    updates_done: int = 0  # the update reached: the checkpoint's, when stopped early


class RLTrainer:
    """Holds the models, the rollout engine, the learner and the run state of one run, of any algorithm.

    Most users call `train(config)`; the trainer is public for notebooks that
    want to step through one update (`rollout`, `advantages`, `optimise`).

    Example:
        trainer = RLTrainer(PPOConfig(algorithm="grpo", num_generations=4, beta=0.3, total_updates=2))
        result = trainer.train()
    """

    def __init__(self, config=None, reward_fn=None, prompts=None, policy=None, callbacks=(),
                 resume=False, show_progress=True, gold_reward_fn=None, strategy=None, accuracy_fn=None,
                 environment=None, tools=None):
        self.config = config = run_config(config)
        reward_fn = environment_rewards_only if environment is not None and reward_fn is None else reward_fn
        environment = environment_for(config, environment, tools)  # a tool without type hints fails here
        self.algorithm = algorithms.create(config)
        accuracy_fn = accuracy_check(config, accuracy_fn)
        reward_fns, reward_weights = reward_functions(reward_fn, config)
        value_source = self.algorithm.value_model_source(reward_fns)
        self.callbacks = UpdateCallbacks([*callbacks, DriftWatch(config.kl_warning)], self)
        self.gold_reward_fn = gold_reward_fn  # an independent judge, logged beside the proxy reward
        self.overoptimisation = OveroptimisationWatch(config.overoptimisation_window) if gold_reward_fn else None
        # signal_received: this process's SIGTERM / SIGINT; stopped_by: the one every worker acts on.
        self.stop_training, self.signal_received, self.stopped_by = False, None, None
        self.run_dir = pathlib.Path(config.run_dir or f"runs/{config.algorithm}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        keras.utils.set_random_seed(config.seed)

        self.tokenizer = tokenizer_for(config, policy)
        prompts = load_prompts(prompts if prompts is not None else config.prompts)  # bad data fails here, early
        check_chat_template(prompts, config.model.chat_template, family_for(config, policy))
        # Models, optimizer and run state live under the strategy (mirrored across replicas).
        self.strategy = resolve_strategy(strategy if strategy is not None else config.strategy,
                                         config.collective_timeout)
        check_replicas(config, self.strategy.num_replicas_in_sync)
        with self.strategy.scope():
            self.optimizer = adam_for(config.dtype, self.strategy.num_replicas_in_sync, config.learning_rate,
                                      config.adam_epsilon)
        self.output_dir = writable_dir(self.run_dir, self.strategy)  # only the chief writes into run_dir
        self.show_progress = show_progress and is_chief(self.strategy)
        with self.strategy.scope():
            self._build_models(policy, value_source)
            packer = packer_for([self.policy, self.reference, self.value_model], config.max_prompt_length,
                                config.response_length, self.algorithm.num_generations,
                                self.strategy.num_replicas_in_sync) if config.padding_free else None
            self.learner = Learner(config, self.algorithm, self.policy, self.value_model, self.optimizer,
                                   self.strategy, packer)
            self.update = tf.Variable(0, dtype=tf.int64, trainable=False, name="update")
        self.engine = RolloutEngine(config, self.policy, self.tokenizer, self.strategy, reward_fns, reward_weights,
                                    self.reference, self.value_model, gold_reward_fn, environment, packer)
        self.evaluator = Evaluator(self.engine, accuracy_fn)
        self.prompt_ids, self.prompt_lengths = self.engine.encode(prompts)
        self.parameter_report = parameter_report(self._models_by_role(reward_fns))
        if self.show_progress:
            print(self.parameter_report)

        # Run state, saved in every checkpoint.
        critic = {"value_model": self.value_model} if self.value_model is not None else {}
        self.checkpoint = tf.train.Checkpoint(policy=self.policy, **critic, optimizer=self.optimizer,
                                              kl_coef=self.algorithm.kl_controller.value, update=self.update)
        self.checkpoints = tf.train.CheckpointManager(self.checkpoint, self.output_dir / "checkpoints", max_to_keep=3)
        if resume:
            self._restore()
        elif self.checkpoints.latest_checkpoint:
            raise CheckpointError(f"{self.run_dir} already holds checkpoints of a run; resume it (resume=True, "
                                  f"tf-ppo train --resume {self.run_dir}) or choose a new run_dir")
        self._advantages = compiled(self.algorithm.advantages)

    def _build_models(self, policy, value_source):
        """The policy, and the reference and critic when the algorithm uses them; inside the strategy's scope."""
        c = self.config
        self.policy = self._starting_policy(policy)
        if c.lora_rank:
            enable_lora(self.policy, c.lora_rank)
        self.reference = None  # no KL term (GRPO's beta = 0): no reference model at all
        if self.algorithm.uses_reference:  # LoRA: one copy of the base weights, the policy with adapters off
            self.reference = AdaptersOff(self.policy) if c.lora_rank else frozen_copy(self.policy)
        self.value_model = None
        if self.algorithm.uses_value_model:
            self.value_model = build_value_model(c.model, self.policy, self.tokenizer.vocabulary_size(),
                                                 share_backbone=bool(c.lora_rank), source=value_source)

    def _starting_policy(self, policy):
        """The given policy, else the configured preset, else the cached SFT policy; in the run's dtype.

        A policy built outside the strategy's scope is copied in, so its variables are mirrored.
        """
        c = self.config
        policy = text_only(policy) if policy is not None else starting_policy(c, self.tokenizer, self.show_progress,
                                                                               self.strategy)
        if self.strategy.num_replicas_in_sync > 1 or policy.dtype_policy.name != c.dtype:
            policy = copy_model(policy, c.dtype)
        return policy

    def _models_by_role(self, reward_fns):
        name = self.config.algorithm
        models = {"policy": self.policy,
                  "reference": self.reference or f"none ({name} without a KL term needs no reference)",
                  "value model": self.value_model or f"none ({name} has no critic)"}
        for reward_name, fn in zip(reward_names(reward_fns), reward_fns):
            if isinstance(fn, keras.Model):
                models["reward model" if len(reward_fns) == 1 else f"reward model {reward_name}"] = fn
        return models

    def _restore(self):
        # Every worker restores from the chief's checkpoints (the run directory), wherever it saves its own.
        shared = tf.train.CheckpointManager(self.checkpoint, self.run_dir / "checkpoints", max_to_keep=3)
        path = restore_latest(shared, self.checkpoint)
        if path is None:
            raise CheckpointError(f"resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        if self.show_progress:
            print(f"resumed from {pathlib.Path(path).name} (update {int(self.update.numpy())}/"
                  f"{self.config.total_updates})", flush=True)

    # ----------------------------------------------------------------- one update, in steps

    def rollout(self, prompt_ids, prompt_lengths, seed):
        """Sample, score and reward one batch of rows: `RolloutEngine.rollout`."""
        return self.engine.rollout(prompt_ids, prompt_lengths, seed)

    def sample(self, prompt_ids, prompt_lengths, seed, greedy=False):
        """Prompt + response token ids `[rows, P + R]`: `RolloutEngine.sample`."""
        return self.engine.sample(prompt_ids, prompt_lengths, seed, greedy)

    def advantages(self, experience, kl_coef):
        """`(experience with advantages, per-token KL or None)`: the algorithm's, compiled once.

        Example:
            experience, kl = trainer.advantages(rollout.experience, tf.constant(0.1))
        """
        return self._advantages(experience, kl_coef)

    def train_step(self, minibatch):
        """One compiled optimiser step on a minibatch `Experience`: `Learner.train_step`."""
        return self.learner.train_step(minibatch)

    def optimise(self, experience, update, reward_failure=None):
        """The algorithm's epochs of minibatch steps on an update's experience: `Learner.optimise`."""
        return self.learner.optimise(experience, update, reward_failure)

    def evaluate(self, prompts=None, seed=None):
        """The held-out figures of the current policy: `Evaluator.evaluate`."""
        return self.evaluator.evaluate(prompts, *(() if seed is None else (seed,)))

    def run_update(self, prompt_batch, update):
        """One update on a batch of prompts (each sampled `num_generations` times); returns its metrics."""
        c = self.config
        started = time.perf_counter()
        generations = self.algorithm.num_generations  # each prompt's G rows side by side: one group
        rollout = self.rollout(tf.repeat(prompt_batch["prompt_ids"], generations, axis=0),
                               tf.repeat(prompt_batch["prompt_lengths"], generations, axis=0),
                               tf.constant([c.seed, update], tf.int32))
        kl_coef = float(self.algorithm.kl_controller.value.numpy())
        experience, kl = self.advantages(rollout.experience, tf.constant(kl_coef))  # a tensor: no retrace
        if c.vllm_importance_sampling_correction:
            experience = corrected_advantages(experience, rollout.sampler_logprobs, c.vllm_importance_sampling_mode,
                                              c.vllm_importance_sampling_cap)
        optimise_started = time.perf_counter()
        losses = self.optimise(experience, update, rollout.reward_failure)
        scores, mask = experience.scores.numpy(), experience.model_mask
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
                self.algorithm.observe_kl(kl_per_response, c.batch_size)
            logs.update({"kl": kl_per_response, "kl_coef": kl_coef, "non_score_reward": -kl_coef * kl_per_response})
        logs.update({"entropy": rollout.entropy, **rollout.sampler_divergence, **losses})
        if experience.values is not None:
            logs["explained_variance"] = float(ppo.explained_variance(experience.values, experience.returns, mask))
        return {
            **logs,
            "response_length": float(tf.reduce_mean(tf.reduce_sum(tf.cast(mask, tf.float32), axis=1))),
            **self._fluency(rollout),
            **gold_metrics(rollout),
            **episode_metrics(rollout.episodes),
            **{f"seconds_{phase}": seconds for phase, seconds in rollout.seconds.items()},
            "seconds_optimise": time.perf_counter() - optimise_started,
            "seconds_update": time.perf_counter() - started,
        }

    # ----------------------------------------------------------------- the loop

    def train(self):
        """Run `config.total_updates` updates (from the last checkpoint if resumed).

        SIGTERM or Ctrl-C (a notebook's too) stops after the update in flight, with a checkpoint: see `train`.
        """
        c = self.config
        restored = int(self.update.numpy())
        finished = read_evaluation(self.run_dir, EVALUATION_AFTER)
        if restored >= c.total_updates and finished is not None:  # a rerun must not overwrite a finished run's figures
            print(f"{self.run_dir}: already complete at {restored}/{c.total_updates} updates; nothing changed")
            return self._result(read_history(self.run_dir / "metrics.csv"),
                                read_evaluation(self.run_dir, EVALUATION_BEFORE), finished)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.json").write_text(c.to_json(sections=policy_sections(c)))  # no reward, dpo
        log = RunLog(self.output_dir, keep_updates=restored)  # rows after the checkpoint are redone, not duplicated
        history = read_history(log.csv_path)
        evaluation_before = self._starting_evaluation(restored)
        self.callbacks.begin()
        prompts = iter(prompt_dataset(self.prompt_ids, self.prompt_lengths,
                                      c.batch_size // self.algorithm.num_generations, c.seed)
                       .skip(restored))  # a resumed run continues where the data left off
        # The bar closes whatever ends the loop, so a second Ctrl-C's one line is not drawn over.
        with (tqdm(total=c.total_updates, initial=restored, desc=c.algorithm.upper(), disable=not self.show_progress)
              as progress, signals_stop(lambda signal_name: setattr(self, "signal_received", signal_name))):
            while int(self.update.numpy()) < c.total_updates and not self.stop_training:
                update = int(self.update.numpy()) + 1
                logs = self.run_update(next(prompts), update)
                if c.eval_every and update % c.eval_every == 0:
                    evaluation = self.evaluate()
                    logs.update(heldout_metrics(evaluation))  # into the history, CSV, TensorBoard and curves
                    tqdm.write(f"update {update}: held-out {summary(evaluation)}")
                self.update.assign(update)
                history.append({"update": update, **logs})
                log.write(update, logs)
                progress.update(1)
                if self.show_progress:
                    tqdm.write(metrics_line(update, c.total_updates, logs, self.algorithm.kl_estimator))
                if self.overoptimisation is not None:
                    self.overoptimisation.check(history)
                if self.callbacks.update_end(update, logs):
                    self.stop_training = True
                # Last in the update: a signal during the callbacks gets this update's checkpoint, a later one the next.
                self.stopped_by = agreed_stop_signal(self.strategy, self.signal_received)
                if update % c.checkpoint_every == 0 or update == c.total_updates or self.stopped_by:
                    self.checkpoints.save(checkpoint_number=update)
                    self.stop_training = self.stop_training or bool(self.stopped_by)  # only once it is saved
        log.close()
        self.callbacks.end(history[-1] if history else None)
        evaluation_after = None
        if not self.stopped_by:  # stopped: the checkpoint is saved; a preemption's grace is short, so nothing more
            evaluation_after = self.evaluate()
            self.save_artifacts(history, evaluation_before)
            write_evaluation(self.output_dir, EVALUATION_AFTER, evaluation_after)  # last: it marks the run finished
            if self.strategy.num_replicas_in_sync > 1:  # replicas must agree; printed so workers can be compared
                print(f"weights fingerprint: {weights_fingerprint(self.policy)}", flush=True)
        if self.output_dir != self.run_dir:
            shutil.rmtree(self.output_dir, ignore_errors=True)  # a non-chief worker's throw-away copy
        return self._result(history, evaluation_before, evaluation_after)

    def _result(self, history, evaluation_before, evaluation_after):
        return TrainResult(self.policy, self.value_model, self.tokenizer, history, evaluation_before, evaluation_after,
                           self.run_dir, self.config, preempted=self.stopped_by == "SIGTERM",
                           interrupted=self.stopped_by == "SIGINT", updates_done=int(self.update.numpy()))

    def save_artifacts(self, history, evaluation_before=None):
        """The final policy and value model, a keras-hub preset, LoRA adapters, the curves: `save_run_artifacts`."""
        save_run_artifacts(self.output_dir, self.policy, self.value_model, self.tokenizer, self.config.lora_rank,
                           history, heldout_metrics(evaluation_before or {}))

    # ----------------------------------------------------------------- what is logged beside the losses

    def _fluency(self, rollout):
        bigrams = self.evaluator.bigrams
        return {} if bigrams is None else {"fluency": fluency(zip(rollout.prompt_texts, rollout.texts), bigrams)}

    def _starting_evaluation(self, restored):
        """The starting policy's evaluation: measured once, at update 0, and read back by every resumed run.

        A resumed run's policy is no longer the starting one, so evaluating it
        again would report the trained policy as "before".
        """
        if restored:
            evaluation = read_evaluation(self.run_dir, EVALUATION_BEFORE)
            if evaluation is None:
                raise CheckpointError(f"resume: {self.run_dir / EVALUATION_BEFORE} is missing, so the starting "
                                      f"policy's figures are lost; start a new run_dir")
            return evaluation
        evaluation = self.evaluate()
        write_evaluation(self.output_dir, EVALUATION_BEFORE, evaluation)
        return evaluation


PPOTrainer = RLTrainer  # the name TRL users know; the trainer runs every algorithm


def train(config=None, reward_fn=None, prompts=None, policy=None, callbacks=(), resume=False, show_progress=True,
          gold_reward_fn=None, strategy=None, accuracy_fn=None, environment=None, tools=None):
    """Fine-tune a policy with the algorithm `config.algorithm` names (PPO by default); usable from notebooks.

    Args:
        config: `PPOConfig` (default: the demo task's settings, PPO).
        reward_fn: `responses -> scores`, `(prompts, responses) -> scores`, TRL's `(prompts=, completions=,
            **kwargs) -> scores`, a `RewardModel`, or a list of them, summed with `config.reward_weights`
            (each one's mean and std logged by name); default the task's reward.
        prompts: a list of strings or of conversations (TRL's `{"role", "content"}` message lists, chat-formatted),
            a `tf.data.Dataset` of strings, a CSV or JSON Lines path or "tfds:NAME[:SPLIT]"; default `config.prompts`.
        policy: a policy to start from (trained in place); default `config.model`'s preset, else the tiny SFT policy.
        callbacks: `tf_ppo.Callback` objects (`on_update_end(update, logs)` after each update) and/or
            `keras.callbacks.Callback` objects, for which one update is one epoch: `EarlyStopping(monitor=
            "score_mean", mode="max")`, `TerminateOnNaN()` (reads `loss`), `CSVLogger(path)` work as in `fit`.
            Their `model` is the policy.
        resume: continue from the latest checkpoint in `config.run_dir`.
        gold_reward_fn: an independent scorer logged beside the reward
            (`gold_score_mean`, `proxy_gold_correlation`); a warning when the
            reward rises while it falls (`config.overoptimisation_window`).
        strategy: a `tf.distribute.Strategy` instance (default: from `config.strategy`).
        accuracy_fn: `(prompts, responses) -> 1.0 / 0.0 each`, the correctness
            check behind `eval_pass_k`'s accuracy and pass@k (default: the task's).
        environment: multi-turn episodes: an `Environment` class, or a function that makes one per episode
            (without `reward_fn`, the episodes' reward is the environment's alone).
        tools: multi-turn episodes with `ToolEnvironment`: functions with type hints and docstrings
            (`docs/tools.md`). Both leave `config.max_turns` turns per episode at most.

    Returns:
        `TrainResult` with the policy, history, held-out evaluations and run directory (after Ctrl-C or SIGTERM:
        `interrupted` or `preempted`, no `evaluation_after`). Resuming a finished run returns its recorded figures.

    Example:
        from tf_ppo.rl.rewards import word_count_reward
        result = train(PPOConfig(total_updates=5), reward_fn=word_count_reward("great"))
        result.history[-1]["score_mean"]
        train(PPOConfig(algorithm="grpo", num_generations=4, beta=0.3))  # no critic; 16 prompts x 4 samples
        train(PPOConfig(task="arithmetic", algorithm="grpo", num_generations=4))  # exact-match reward, pass@4
    """
    return RLTrainer(config, reward_fn, prompts, policy, callbacks, resume, show_progress, gold_reward_fn, strategy,
                     accuracy_fn, environment, tools).train()
