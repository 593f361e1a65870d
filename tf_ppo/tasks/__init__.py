"""Tasks: what a run optimises and how it is judged, chosen by `PPOConfig.task`.

A task brings its default reward functions (summed with `reward_weights`),
when its answers can be checked an accuracy function: 1.0 or 0.0 per
`(prompt, response)`, which evaluations report as greedy accuracy and pass@k
(`eval_pass_k`), and the tools its episodes may call (`train(tools=[])`: none). The data fields each task sets are in `tf_ppo.config.TASK_DEFAULTS`.

Example:
    TASKS["arithmetic"].reward_fns   # (exact_match_reward, format_reward), weights (1.0, 0.1)
"""

import dataclasses
import typing

from tf_ppo.rl import tools
from tf_ppo.tasks import calculator
from tf_ppo.tasks.arithmetic import exact_match_reward, format_reward
from tf_ppo.tasks.sentiment import sentiment_reward


@dataclasses.dataclass(frozen=True)
class Task:
    """A task's default rewards, their weights, and its correctness check (None: nothing to check)."""

    reward_fns: tuple
    reward_weights: tuple | None = None  # None: all 1
    accuracy_fn: typing.Callable | None = None
    tools: tuple = ()  # the tools of its multi-turn episodes (`train(tools=...)` overrides them)


TASKS = {
    "sentiment": Task((sentiment_reward,)),
    # A well-formed wrong answer earns 0.1 at most: never more than a right answer in any format.
    "arithmetic": Task((exact_match_reward, format_reward), reward_weights=(1.0, 0.1), accuracy_fn=exact_match_reward),
    "calculator": Task((calculator.exact_match_reward, format_reward), reward_weights=(1.0, 0.1),
                       accuracy_fn=calculator.exact_match_reward, tools=(tools.calculator,)),
}
