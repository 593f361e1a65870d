"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): GRPO with one importance ratio per response.

GRPO weighs each token by its own ratio pi(y_t) / pi_old(y_t). GSPO uses the
response's ratio for all its tokens, the geometric mean of its tokens' ratios
(the paper's eq. 7):

    s_i = exp( (1 / |y_i|) * sum_t log( pi(y_i,t) / pi_old(y_i,t) ) )

clipped as one number: loss_i = -min(s_i A_i, clip(s_i, 1 - epsilon, 1 + epsilon_high) A_i),
broadcast to the response's tokens and aggregated by `loss_type`. This is TRL's
`importance_sampling_level="sequence"`. The mean runs over the loss mask, as
TRL's completion mask. The paper clips far tighter than GRPO: `epsilon=3e-4`,
`epsilon_high=4e-4`; advantages, KL and the other options are GRPO's.

Example:
    PPOConfig(algorithm="gspo", num_generations=4, epsilon=3e-4, epsilon_high=4e-4, loss_type="grpo")
"""

import tensorflow as tf

from tf_ppo.rl.algorithms.grpo import GRPO
from tf_ppo.rl.algorithms.registry import register
from tf_ppo.rl.functional import masked, ppo


@register
class GSPO(GRPO):
    """GRPO's advantages and KL term; the clipped objective on each response's sequence-level ratio."""

    name = "gspo"

    def policy_terms(self, forward, minibatch):
        c = self.config
        mask = minibatch.loss_mask
        log_ratio = masked.masked_mean(forward.logprobs - minibatch.logprobs, mask, axis=1)  # [batch]: log s_i
        sequence_log_ratio = tf.broadcast_to(log_ratio[:, None], tf.shape(forward.logprobs))  # [batch, R]
        per_token, clipped = ppo.clipped_surrogate(sequence_log_ratio, tf.zeros_like(sequence_log_ratio),
                                                   minibatch.advantages, c.epsilon, c.epsilon_high, c.dual_clip)
        return per_token, {"clipfrac": masked.masked_mean(tf.cast(clipped, per_token.dtype), mask),
                           "approx_kl": 0.5 * masked.masked_mean(tf.square(forward.logprobs - minibatch.logprobs),
                                                                 mask)}
