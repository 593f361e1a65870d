"""REINFORCE++ (Hu 2025) and REINFORCE++-baseline, as OpenRLHF defines them: no critic, returns whitened."""

import tensorflow as tf

from tf_ppo.rl.functional import estimators, masked, ppo
from tf_ppo.rl.algorithms.base import Algorithm
from tf_ppo.rl.algorithms.grpo import GROUP_FIELDS
from tf_ppo.rl.algorithms.registry import register


@register
class ReinforcePP(Algorithm):
    """Per-token reward -beta * KL_t plus the score on the last token; returns (gamma 1) whitened over the batch.

    Example:
        PPOConfig(algorithm="reinforce_pp", beta=0.01)
    """

    name = "reinforce_pp"
    fields = GROUP_FIELDS + ("kl_estimator",)
    default_beta = 0.01  # OpenRLHF's init_kl_coef

    @property
    def kl_estimator(self):
        return self.config.kl_estimator

    def baseline_scores(self, scores):
        return scores

    def advantages(self, experience, kl_coef):
        mask = experience.model_mask
        kl = None
        if experience.ref_logprobs is not None:
            kl = ppo.token_kl(experience.logprobs, experience.ref_logprobs, mask, self.kl_estimator)
        per_token_kl = tf.zeros_like(experience.logprobs) if kl is None else kl
        returns = estimators.reinforce_returns(self.baseline_scores(experience.scores), per_token_kl, mask,
                                               kl_coef)
        return experience._replace(advantages=masked.whiten(returns, mask)), kl


@register
class ReinforcePPBaseline(ReinforcePP):
    """REINFORCE++ whose scores first lose their group's mean (G samples per prompt), robust to reward scale.

    Example:
        PPOConfig(algorithm="reinforce_pp_baseline", num_generations=4)
    """

    name = "reinforce_pp_baseline"
    default_num_generations = 8  # a group, as GRPO's
    min_generations = 2

    def baseline_scores(self, scores):
        return estimators.group_centred(scores, self.num_generations)
