"""The calculator task: word problems with numbers too large for a small model's head, and a tool.

A problem multiplies a 3-digit by a 2-digit number ("... in each of 28 boxes"), or adds three or four
numbers of 2-3 digits. The model may call `calculator(expression)` (`tf_ppo.rl.tools.calculator`),
read its `<result>`, and answer after the marker:

    <call>calculator("347 * 28")</call>   (the model's turn, ended by its end token)
    <result>9716</result>                 (the tool environment's reply)
     #### 9716                            (the model's last turn)

The reward reads the episode's text, replies included, and scores the answer after the one marker, as
the arithmetic task does; `solve` reads the problem's answer off the prompt alone. The problems are
written by `scripts/make_calculator.py` into `data/calculator_train.csv` and `data/calculator_heldout.csv`.
"""

import math
import re

from tf_ppo.tasks.arithmetic import scores_against

_NUMBER = re.compile(r"\b[0-9]+\b", re.ASCII)


def solve(prompt):
    """The problem's answer: the product of its two numbers when it says "each", else the sum of them all.

    Example:
    >>> solve("tom packs 347 pens in each of 28 boxes . how many pens does he pack ?")
    9716
    >>> solve("ann has 120 coins , finds 35 more and gets 410 more . how many coins does she have ?")
    565
    >>> solve("what is the capital of france ?") is None
    True
    """
    numbers = [int(number) for number in _NUMBER.findall(prompt)]
    if " each" in f" {prompt}":
        return math.prod(numbers) if len(numbers) == 2 else None
    return sum(numbers) if len(numbers) >= 2 else None


def exact_match_reward(prompts, responses):
    """1.0 where the episode's final answer (after its one `####`) is the problem's, else 0.0.

    Example:
    >>> exact_match_reward(["tom packs 347 pens in each of 28 boxes . how many pens does he pack ?"] * 2,
    ...                    ['<call>calculator("347 * 28")</call><result>9716</result> #### 9716', "#### 9700"])
    [1.0, 0.0]
    """
    return scores_against(solve, prompts, responses)
