"""Dr. GRPO (Liu et al. 2025): GRPO without its two length and difficulty biases.

The whole algorithm, written the way a user adds one: a subclass of GRPO that
does not divide by the group's std and sums token losses over a fixed
batch x response_length, so neither hard prompts nor short answers weigh more.
"""

from tf_ppo.rl.algorithms.grpo import GRPO
from tf_ppo.rl.algorithms.registry import register


@register
class DrGRPO(GRPO):
    """GRPO with `scale_rewards="none"` and `loss_type="dr_grpo"` fixed (so neither field is settable).

    Example:
        PPOConfig(algorithm="dr_grpo", num_generations=4)
    """

    name = "dr_grpo"
    fields = tuple(field for field in GRPO.fields if field not in ("scale_rewards", "loss_type"))

    def scale_rewards(self):
        return "none"  # no division by the group's std: hard and easy prompts weigh the same

    def aggregate(self, per_token, mask):
        return self.aggregate_as("dr_grpo", per_token, mask)  # token sum / (batch x response_length)
