"""What an RL algorithm decides.

The run (`tf_ppo.rl.trainer.RLTrainer`) samples, scores and rewards
(`RolloutEngine`), optimises (`Learner`), evaluates, checkpoints and logs. An
`Algorithm` answers the rest: which models it needs, how a scored rollout
becomes advantages, the loss of one minibatch (with the entropy bonus), and
its KL coefficient's control. A new algorithm is a subclass in a module of its
own, registered by name (`tf_ppo.rl.algorithms.register`); see `dr_grpo.py`
and `gspo.py`.

Masks. As in TRL, advantages and the KL read `Experience.model_mask` (every
token the policy produced) and the loss reads `Experience.loss_mask`: a
response left out by `mask_truncated_completions` still counts in its group's
baseline and in the batch statistics (whitening), so leaving it out of the loss
does not move the other responses' advantages.
"""

import tensorflow as tf

from tf_ppo.rl.functional import masked, ppo
from tf_ppo.rl.functional.estimators import aggregate_token_loss


class Algorithm:
    """Base class: a critic-free algorithm whose loss is the clipped policy loss, `num_iterations` passes.

    Subclasses set `name` and `fields` (the PPOConfig fields they read beyond
    the shared ones) and override what differs: `uses_value_model`,
    `uses_reference`, `advantages`, `loss`.

    Example:
        @register
        class MyAlgorithm(GRPO):
            name = "my_grpo"
    """

    name = None
    fields = ()  # algorithm-specific PPOConfig fields it reads; setting any other one is an error
    uses_value_model = False
    default_beta = 0.0  # the KL coefficient when `config.beta` is None
    default_num_iterations = 1  # optimiser passes when `config.num_iterations` is None
    default_num_generations = 1  # samples per prompt when `config.num_generations` is None
    min_generations = 1  # a group-relative baseline needs 2
    metrics = ("loss", "policy_loss", "clipfrac", "approx_kl")  # loss metrics of one step

    def __init__(self, config):
        self.config = config
        self.kl_controller = self.make_kl_controller()  # its value is saved in every checkpoint

    @classmethod
    def validate(cls, config, fail):
        """Checks of the config beyond the field types; `fail(field, message)` raises the ConfigError."""
        generations = cls.generations(config)
        if generations < cls.min_generations:
            fail("num_generations", f"must be >= {cls.min_generations} for algorithm={config.algorithm!r} (its "
                                    f"baseline compares the samples of one prompt), got {generations}")

    @property
    def beta(self):
        """The KL coefficient: `config.beta`, or this algorithm's default when it is None."""
        return self.default_beta if self.config.beta is None else self.config.beta

    @property
    def uses_reference(self):
        return self.beta > 0

    @classmethod
    def generations(cls, config):
        """Samples per prompt: `config.num_generations`, or this algorithm's default when it is None."""
        return cls.default_num_generations if config.num_generations is None else config.num_generations

    @property
    def num_generations(self):
        return self.generations(self.config)

    @property
    def num_epochs(self):
        """Optimiser passes over each rollout: `config.num_iterations`, or this algorithm's default when None."""
        n = self.config.num_iterations
        return self.default_num_iterations if n is None else n

    @property
    def kl_estimator(self):
        """The estimator of the KL the history's `kl` reports."""
        return "k1"

    def make_kl_controller(self):
        """The KL coefficient's controller: fixed at `beta` (PPO: adaptive when `target_kl` is set)."""
        return ppo.FixedKLController(self.beta)

    def observe_kl(self, kl_per_response, rollouts):
        """After an applied update: let the controller move the coefficient (the fixed one keeps it)."""
        self.kl_controller.update(kl_per_response, rollouts)

    def value_model_source(self, reward_fns):
        """A model to start the critic from, or None (a fresh value head); only PPO has a critic."""
        return None

    def advantages(self, experience, kl_coef):
        """`(experience with advantages (and returns), per-token KL [batch, R] or None)`; pure TensorFlow."""
        raise NotImplementedError

    def loss(self, forward, minibatch):
        """`(loss, metrics)` of one minibatch: `forward` holds the models' current outputs.

        The default: the clipped policy loss alone, aggregated by `loss_type` (RLOO, REINFORCE++).
        """
        per_token, metrics = self.policy_terms(forward, minibatch)
        metrics["policy_loss"] = loss = self.aggregate(per_token, minibatch.loss_mask)
        return loss, metrics

    def objective(self, forward, minibatch):
        """`(loss to minimise, metrics)`: `loss`, less `entropy_coef` x the mean entropy of the policy.

        Example:
            loss, metrics = algorithm.objective(Forward(logprobs, logits, values), minibatch)
        """
        loss, metrics = self.loss(forward, minibatch)
        entropy_coef = self.config.entropy_coef
        if entropy_coef:  # skipped at 0: a softmax over [batch, R, vocab] and its gradient cost real time
            loss -= entropy_coef * masked.masked_mean(masked.entropy_from_logits(forward.logits), minibatch.loss_mask)
        return loss, metrics

    # --- shared pieces of the critic-free losses

    def policy_terms(self, forward, minibatch):
        """`(per-token clipped loss [batch, R], {clipfrac, approx_kl})` with `epsilon`, `epsilon_high`, `dual_clip`."""
        c = self.config
        per_token, clipped = ppo.clipped_surrogate(forward.logprobs, minibatch.logprobs, minibatch.advantages,
                                                   c.epsilon, c.epsilon_high, c.dual_clip)
        mask = minibatch.loss_mask
        return per_token, {"clipfrac": masked.masked_mean(tf.cast(clipped, per_token.dtype), mask),
                           "approx_kl": 0.5 * masked.masked_mean(tf.square(forward.logprobs - minibatch.logprobs), mask)}

    def aggregate(self, per_token, mask):
        """The minibatch's loss from per-token losses, weighed as `config.loss_type` says."""
        return self.aggregate_as(self.config.loss_type, per_token, mask)

    def aggregate_as(self, loss_type, per_token, mask):
        return aggregate_token_loss(per_token, mask, loss_type, self.config.response_length)
