"""The RL algorithms on tf_ppo's one loop: each is one small module, registered by name.

| name | module |
|---|---|
| "ppo" | `tf_ppo.rl.algorithms.ppo` (critic, GAE) |
| "grpo", "dr_grpo" | `grpo`, `dr_grpo` |
| "rloo" | `rloo` |
| "reinforce_pp", "reinforce_pp_baseline" | `reinforce_pp` |

Example:
>>> sorted(ALGORITHMS)[:3]
['dr_grpo', 'grpo', 'ppo']
"""

from tf_ppo.rl.algorithms import dr_grpo, grpo, ppo, reinforce_pp, rloo  # noqa: F401  (each registers itself)
from tf_ppo.rl.algorithms.base import Algorithm, Experience, Forward
from tf_ppo.rl.algorithms.registry import ALGORITHMS, create, register

__all__ = ["ALGORITHMS", "Algorithm", "Experience", "Forward", "create", "register"]
