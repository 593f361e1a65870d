"""The learner: an update's optimisation, the algorithm's epochs of shuffled minibatch steps.

Each step is the one `GuardedStep` every training loop shares (gradients summed
over the replicas, clipped, applied unless non-finite). The learner asks the
algorithm for the minibatch's objective and how many passes to make; it reads
no field that belongs to one algorithm.
"""

import numpy as np

from tf_ppo.models.forward import response_logits
from tf_ppo.rl.experience import Experience, Forward
from tf_ppo.rl.rollout import response_logprobs
from tf_ppo.training.distribute import split_batch
from tf_ppo.training.guarded_step import GuardedStep, SkipCounter

CHECKED_FIELDS = ("scores", "logprobs", "ref_logprobs", "values", "advantages", "returns")  # must be finite


class Learner:
    """Optimises the policy (and the critic, if any) on one update's `Experience`.

    Args:
        config: the run's `PPOConfig` (batch, minibatches, clipping, seed).
        algorithm: the `Algorithm` whose objective and number of passes it follows.
        policy, value_model: the trained models (value_model None without a critic).
        optimizer: a Keras optimizer, built here on the models' variables.
        strategy: the `tf.distribute.Strategy` the models live under.
        packer: a `tf_ppo.models.packing.Packer`: each minibatch's rows are packed (no padding, prompts once).

    Example:
        learner = Learner(config, algorithm, policy, None, keras.optimizers.Adam(1e-4), strategy)
        metrics = learner.optimise(experience, update=1)
    """

    def __init__(self, config, algorithm, policy, value_model, optimizer, strategy, packer=None):
        self.config, self.algorithm, self.strategy, self.packer = config, algorithm, strategy, packer
        self.policy, self.value_model, self.optimizer = policy, value_model, optimizer
        # De-duplicated: with LoRA the value model shares the policy's adapters.
        self.variables = list({id(v): v for model in (policy, value_model) if model is not None
                               for v in model.trainable_variables}.values())
        # The whole optimiser step is one XLA computation on one replica: the gradients never leave it and
        # clipping fuses into Adam's update.
        self.step = GuardedStep(self._loss, [policy, value_model], self.variables, optimizer, strategy,
                                config.clip_mode, config.max_grad_norm, config.gradient_checkpointing,
                                config.train_jit)
        self.skips = SkipCounter("updates", config.max_consecutive_skips)

    def _loss(self, tensors):
        """One replica's share of the objective (token sums over the GLOBAL token count), and its metrics.

        `tensors` holds the present fields of a minibatch `Experience` (a dict: None does not cross replicas),
        and its rows packed, when the run packs them.
        """
        tensors = dict(tensors)
        packed = tensors.pop("packed", None)
        minibatch = Experience(**tensors)
        logprobs, logits = response_logprobs(self.policy, minibatch.sequence_ids, minibatch.responses,
                                             self.config.temperature, packed)
        values = None
        if self.value_model is not None:
            values = response_logits(self.value_model, minibatch.sequence_ids, minibatch.responses.positions,
                                     packed)
        return self.algorithm.objective(Forward(logprobs, logits, values), minibatch)

    def train_step(self, minibatch):
        """One compiled optimiser step on a minibatch `Experience` (advantages filled in); returns its metrics.

        Example:
            step = learner.train_step(experience.rows(tf.range(16)))
            bool(step["applied"])
        """
        tensors = minibatch.present()
        if self.packer is not None:  # the rows' whole responses, the environment's tokens too (context)
            tensors["packed"] = self.packer(minibatch.sequence_ids, minibatch.responses.positions[:, 0],
                                            minibatch.model_mask)
        return self.step(split_batch(self.strategy, tensors))

    def optimise(self, experience, update, reward_failure=None):
        """Run the algorithm's epochs over shuffled minibatches; returns the mean of each loss metric.

        A rollout with a non-finite tensor or a failed reward is skipped whole;
        `max_consecutive_skips` skipped updates in a row stop the run.
        """
        c = self.config
        metrics = self.algorithm.metrics + ("grad_norm",)
        epochs = self.algorithm.num_epochs
        present = experience.present()
        non_finite = [name for name in CHECKED_FIELDS if name in present and not np.all(np.isfinite(present[name]))]
        if non_finite or reward_failure:
            reason = reward_failure or f"non-finite {', '.join(non_finite)} in the rollout"
            self.skips.skipped(f"update {update} skipped: {reason}")
            return {**dict.fromkeys(metrics, float("nan")), "skipped_steps": epochs * c.num_mini_batches,
                    "ppo_epochs": 0, "applied_steps": 0}
        rng = np.random.default_rng([c.seed, update])  # per update, so a resumed run shuffles the same way
        steps, epochs_done = [], 0
        # Packed, a minibatch draws whole groups, so their rows share their prompt (computed once); padded, rows.
        group_size = self.algorithm.num_generations if self.packer is not None else 1
        for _ in range(epochs):
            order = shuffled_rows(rng, c.batch_size, group_size)
            epoch = [self.train_step(experience.rows(rows)) for rows in np.split(order, c.num_mini_batches)]
            steps += epoch
            epochs_done += 1
            if c.max_approx_kl is not None and np.mean([s["approx_kl"] for s in epoch]) > c.max_approx_kl:
                break  # the policy moved too far from the one that sampled: stop early (CleanRL's target_kl)
        applied = [bool(s.pop("applied")) for s in steps]
        if any(applied):
            self.skips.applied()
        else:
            self.skips.skipped(f"update {update} skipped: non-finite loss or gradients in every optimiser step")
        # A skipped step's loss may be NaN and moved nothing: the update's metrics are those of the applied steps.
        kept = [step for step, was_applied in zip(steps, applied) if was_applied]
        means = {key: float(np.mean([step[key] for step in kept])) if kept else float("nan") for key in steps[0]}
        return {**means, "skipped_steps": applied.count(False), "ppo_epochs": epochs_done,
                "applied_steps": len(kept)}


def shuffled_rows(rng, rows, group_size=1):
    """A permutation of `rows` rows; with `group_size` > 1, of whole groups of that many consecutive rows.

    With `group_size` 1 it is `rng.permutation(rows)`.

    Example:
    >>> shuffled_rows(np.random.default_rng(0), 6, 3).reshape(2, 3)[:, 0] % 3
    array([0, 0])
    """
    groups = rng.permutation(rows // group_size)
    return (groups[:, None] * group_size + np.arange(group_size)).ravel()
