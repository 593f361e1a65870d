"""What a rollout hands to an algorithm: `Experience` (one scored batch) and `Forward` (the models' outputs).

An `Experience` carries two masks over the response tokens:
  - `model_mask`: the tokens the policy produced (real response tokens, not padding; in a multi-turn
    episode, not the environment's tokens either: the mask then has holes);
  - `loss_mask`: the tokens the loss counts, `model_mask` less the responses
    `mask_truncated_completions` leaves out.
Each algorithm's docstring says which mask its advantages, KL and loss use.
"""

import typing

import tensorflow as tf

from tf_ppo.generation.responses import Responses


class Experience(typing.NamedTuple):
    """One scored rollout batch, every tensor aligned on rows; R = response_length.

    Optional fields are None when the algorithm has no use for them (no
    critic: no `values`/`returns`; no reference: no `ref_logprobs`).
    """

    sequence_ids: tf.Tensor  # int32 [batch, P + R]: prompt, then response (see tf_ppo.generation.sampling)
    responses: Responses  # positions, token_ids, mask (bool): each [batch, R]
    logprobs: tf.Tensor  # [batch, R] log-probs of the sampling policy ("old" log-probs)
    scores: tf.Tensor  # [batch] reward of each whole response (a multi-turn episode's total, step rewards included)
    loss_mask: tf.Tensor  # bool [batch, R]: the tokens the loss counts (model_mask, less masked-out rows)
    ref_logprobs: typing.Optional[tf.Tensor] = None  # [batch, R] reference log-probs
    values: typing.Optional[tf.Tensor] = None  # [batch, R] the critic's V(s_t), at sampling time
    advantages: typing.Optional[tf.Tensor] = None  # [batch, R]
    returns: typing.Optional[tf.Tensor] = None  # [batch, R] the critic's regression targets
    step_rewards: typing.Optional[tf.Tensor] = None  # [batch, R] multi-turn: each environment step's reward,
    # on the last model token of its turn (PPO credits them there; the group algorithms use `scores`)

    @property
    def model_mask(self):
        """bool `[batch, R]`: the tokens the policy produced (`responses.mask`), whatever the loss counts."""
        return self.responses.mask

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
