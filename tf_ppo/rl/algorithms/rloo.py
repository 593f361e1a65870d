"""RLOO (Ahmadian et al. 2024): REINFORCE with the leave-one-out mean of the other samples as baseline."""

from tf_ppo.rl.functional import estimators, masked, ppo
from tf_ppo.rl.algorithms.base import Algorithm
from tf_ppo.rl.algorithms.grpo import GROUP_FIELDS
from tf_ppo.rl.algorithms.registry import register


@register
class RLOO(Algorithm):
    """Reward minus beta * KL of the whole response (TRL's RLOO), then minus the other G - 1 samples' mean.

    Example:
        PPOConfig(algorithm="rloo", num_generations=4, beta=0.05)
    """

    name = "rloo"
    fields = GROUP_FIELDS + ("kl_estimator",)
    default_beta = 0.05  # TRL's RLOOConfig
    default_num_generations = 2  # TRL's RLOOConfig
    min_generations = 2

    @property
    def kl_estimator(self):
        return self.config.kl_estimator

    def advantages(self, experience, kl_coef):
        mask = experience.model_mask
        rewards, kl = experience.scores, None
        if experience.ref_logprobs is not None:
            kl = ppo.token_kl(experience.logprobs, experience.ref_logprobs, mask, self.kl_estimator)
            rewards = rewards - kl_coef * masked.masked_sum(kl, mask, axis=1)
        advantages = estimators.leave_one_out_advantages(rewards, self.num_generations)
        return experience._replace(advantages=estimators.sequence_to_tokens(advantages, mask)), kl
