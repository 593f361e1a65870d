"""GRPO (Shao et al. 2024): group-normalised advantages, no critic, the KL to the reference as a loss term."""

from tf_ppo.rl.functional import estimators, masked, ppo
from tf_ppo.rl.algorithms.base import Algorithm
from tf_ppo.rl.algorithms.registry import register

GROUP_FIELDS = ("num_generations", "beta", "epsilon", "epsilon_high", "num_iterations", "loss_type")


@register
class GRPO(Algorithm):
    """Advantage (r - mean_group) / (std_group + eps), by `scale_rewards`; loss + beta * k3 KL per token.

    With `beta = 0` (TRL's default) no reference model is built.

    Example:
        PPOConfig(algorithm="grpo", num_generations=4, beta=0.04, loss_type="dapo")
    """

    name = "grpo"
    fields = GROUP_FIELDS + ("scale_rewards",)
    default_num_generations = 8  # TRL's GRPOConfig
    min_generations = 2

    @property
    def metrics(self):
        return Algorithm.metrics + (("kl_loss",) if self.beta > 0 else ())

    @property
    def kl_estimator(self):
        return "k3"

    def scale_rewards(self):
        return self.config.scale_rewards

    def advantages(self, experience, kl_coef):
        mask = experience.model_mask
        advantages = estimators.group_advantages(experience.scores, self.num_generations, self.scale_rewards())
        kl = None
        if experience.ref_logprobs is not None:
            kl = ppo.token_kl(experience.logprobs, experience.ref_logprobs, mask, "k3")
        return experience._replace(advantages=estimators.sequence_to_tokens(advantages, mask)), kl

    def loss(self, forward, minibatch):
        per_token, metrics = self.policy_terms(forward, minibatch)
        mask = minibatch.loss_mask
        metrics["policy_loss"] = self.aggregate(per_token, mask)
        if self.beta > 0:
            kl = ppo.kl_penalty(forward.logprobs, minibatch.ref_logprobs, "k3")  # [batch, R]
            per_token = per_token + self.beta * kl
            metrics["kl_loss"] = masked.masked_mean(kl, mask)
        return self.aggregate(per_token, mask), metrics
