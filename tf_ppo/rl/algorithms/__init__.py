"""The RL algorithms on tf_ppo's one loop: each is one small module, registered by name.

| name | module |
|---|---|
| "ppo" | `tf_ppo.rl.algorithms.ppo` (critic, GAE) |
| "grpo", "dr_grpo" | `grpo`, `dr_grpo` |
| "gspo" | `gspo` (sequence-level importance ratio) |
| "rloo" | `rloo` |
| "reinforce_pp", "reinforce_pp_baseline" | `reinforce_pp` |

Example:
>>> "grpo" in ALGORITHMS and "gspo" in ALGORITHMS
True
"""

from tf_ppo.rl.algorithms import dr_grpo, grpo, gspo, ppo, reinforce_pp, rloo  # noqa: F401  (each registers itself)
from tf_ppo.rl.algorithms.base import Algorithm
from tf_ppo.rl.experience import Experience, Forward
from tf_ppo.rl.algorithms.registry import ALGORITHMS, create, register

__all__ = ["ALGORITHMS", "Algorithm", "Experience", "Forward", "create", "register"]
