"""PPO with a critic (Schulman et al. 2017; Ziegler et al. 2019): KL in the reward, GAE, clipped value loss."""

import tensorflow as tf

from tf_ppo.rl.functional import masked, ppo
from tf_ppo.config import ConfigError
from tf_ppo.rl.algorithms.base import Algorithm
from tf_ppo.rl.algorithms.registry import register


@register
class PPO(Algorithm):
    """The per-token reward is -beta * KL plus the score on the last token; advantages by GAE.

    Example:
        PPOConfig(algorithm="ppo", beta=0.05, vf_coef=0.1)
    """

    name = "ppo"
    fields = ("beta", "epsilon", "num_iterations", "kl_estimator", "target_kl", "kl_horizon", "whiten_rewards",
              "whiten_advantages", "gamma", "lam", "cliprange_value", "vf_coef", "value_from_reward_model")
    uses_value_model = True
    default_beta = 0.1
    default_num_iterations = 4
    metrics = ("loss", "policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl")

    @property
    def uses_reference(self):
        return True

    @property
    def num_generations(self):
        return 1

    @property
    def kl_estimator(self):
        return self.config.kl_estimator

    def make_kl_controller(self):
        """Adaptive (Ziegler et al. 2019) toward `target_kl` when it is set, else fixed at `beta`."""
        c = self.config
        if c.target_kl is None:
            return super().make_kl_controller()
        return ppo.AdaptiveKLController(self.beta, c.target_kl, c.kl_horizon)

    def value_model_source(self, reward_fns):
        """The RewardModel used as reward, when `value_from_reward_model` (as TRL), else None."""
        if not self.config.value_from_reward_model:
            return None
        if not hasattr(reward_fns[0], "backbone"):
            raise ConfigError(f"PPOConfig.value_from_reward_model needs a RewardModel as reward_fn, "
                              f"got {type(reward_fns[0]).__name__}")
        return reward_fns[0]

    def advantages(self, experience, kl_coef):
        c = self.config
        mask = experience.model_mask
        step_rewards = experience.step_rewards  # a multi-turn episode's environment rewards, or None
        final_scores = (experience.scores if step_rewards is None
                        else experience.scores - tf.reduce_sum(step_rewards, axis=1))
        rewards, kl = ppo.shaped_rewards(final_scores, experience.logprobs, experience.ref_logprobs, mask,
                                         kl_coef, c.kl_estimator, step_rewards)
        if c.whiten_rewards:
            rewards = masked.whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo.gae(rewards, experience.values, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = masked.whiten(advantages, mask)
        return experience._replace(advantages=advantages, returns=returns), kl

    def loss(self, forward, minibatch):
        c = self.config
        mask = minibatch.loss_mask
        pg = ppo.policy_loss(forward.logprobs, minibatch.logprobs, minibatch.advantages, mask, c.epsilon,
                             dual_clip=c.dual_clip)
        vf = ppo.value_loss(forward.values, minibatch.values, minibatch.returns, mask, c.cliprange_value)
        return pg.loss + c.vf_coef * vf.loss, {"policy_loss": pg.loss, "value_loss": vf.loss,
                                               "clipfrac": pg.clipfrac, "value_clipfrac": vf.clipfrac,
                                               "approx_kl": pg.approx_kl}
