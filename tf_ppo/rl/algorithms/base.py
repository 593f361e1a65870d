"""What an RL algorithm decides, and the typed batch it works on.

The run loop (`tf_ppo.rl.trainer.PPOTrainer`) samples, scores, rewards, checks
for NaN, optimises, checkpoints and logs. An `Algorithm` answers the rest:
which models it needs, how a scored rollout becomes advantages, and the loss
of one minibatch. A new algorithm is a subclass in a module of its own,
registered by name (`tf_ppo.rl.algorithms.register`); see `dr_grpo.py`.
"""

import typing

import tensorflow as tf

from tf_ppo.rl.functional import masked, ppo
from tf_ppo.rl.functional.estimators import aggregate_token_loss
from tf_ppo.generation.sampling import Responses


class Experience(typing.NamedTuple):
    """One scored rollout batch, every tensor aligned on rows; R = response_length.

    Optional fields are None when the algorithm has no use for them (no
    critic: no `values`/`returns`; no reference: no `ref_logprobs`).
    """

    sequence_ids: tf.Tensor  # int32 [batch, P + R]: prompt, then response (see tf_ppo.generation.sampling)
    responses: Responses  # positions, token_ids, mask (bool): each [batch, R]
    logprobs: tf.Tensor  # [batch, R] log-probs of the sampling policy ("old" log-probs)
    scores: tf.Tensor  # [batch] reward of each whole response
    loss_mask: tf.Tensor  # bool [batch, R]: the tokens the loss counts (responses.mask, less masked-out rows)
    ref_logprobs: typing.Optional[tf.Tensor] = None  # [batch, R] reference log-probs
    values: typing.Optional[tf.Tensor] = None  # [batch, R] the critic's V(s_t), at sampling time
    advantages: typing.Optional[tf.Tensor] = None  # [batch, R]
    returns: typing.Optional[tf.Tensor] = None  # [batch, R] the critic's regression targets

    def rows(self, indices):
        """The experience of some rows (a minibatch), None fields kept None.

        Example:
            minibatch = experience.rows(tf.range(8))
        """
        return tf.nest.map_structure(lambda t: None if t is None else tf.gather(t, indices), self)

    def present(self):
        """The fields that hold a tensor, by name (what crosses into a compiled step: None cannot).

        Example:
            "values" in experience.present()
        """
        return {name: value for name, value in self._asdict().items() if value is not None}


class Forward(typing.NamedTuple):
    """The models' outputs for a minibatch inside the gradient tape."""

    logprobs: tf.Tensor  # [batch, R] the policy's current log-probs of the sampled tokens
    logits: tf.Tensor  # [batch, R, V] divided by the temperature
    values: typing.Optional[tf.Tensor] = None  # [batch, R] the critic's current values, if there is one


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
    default_beta = 0.0
    metrics = ("loss", "policy_loss", "clipfrac", "approx_kl")  # loss metrics of one step

    def __init__(self, config):
        self.config = config

    @classmethod
    def validate(cls, config, fail):
        """Checks of the config beyond the field types; `fail(field, message)` raises the ConfigError."""

    @property
    def beta(self):
        """The KL coefficient: `config.beta`, or this algorithm's default when it is None."""
        return self.default_beta if self.config.beta is None else self.config.beta

    @property
    def uses_reference(self):
        return self.beta > 0

    @property
    def num_generations(self):
        return self.config.num_generations

    @property
    def num_epochs(self):
        """Optimiser passes over each rollout."""
        return self.config.num_iterations

    @property
    def kl_estimator(self):
        """The estimator of the KL the history's `kl` reports."""
        return "k1"

    def initial_kl_coef(self):
        return self.beta

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
