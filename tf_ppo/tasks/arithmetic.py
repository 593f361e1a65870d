"""The arithmetic word-problem task: its verbs, the solver that reads a problem, and its verifiable rewards.

A problem states a start count and then gains and losses, each number right
after its verb ("tom has 23 apples and buys 18 more . then he gives away 7 .
how many apples does he have now ?"). `solve` reads the answer off the prompt
alone, so the rewards never see the target column, and anyone can write a
reward for their own task the same way. A response ends with the answer
after a marker, as GSM8K's: `23 + 18 - 7 = 34 #### 34`.

The problems themselves are written by `scripts/make_arithmetic.py` into
`data/arithmetic_train.csv` and `data/arithmetic_heldout.csv`.
"""

import re

MARKER = "####"
START_VERBS = ("has", "had", "owns", "starts with")
GAIN_VERBS = ("buys", "finds", "gets", "picks up", "is given", "wins")
LOSS_VERBS = ("gives away", "sells", "loses", "eats", "drops", "uses")
# Longest first, so "gives away" is not read as "gives"; each number comes right after its verb.
_VERB = "|".join(sorted(map(re.escape, START_VERBS + GAIN_VERBS + LOSS_VERBS), key=len, reverse=True))
_STEP = re.compile(rf"\b({_VERB}) ([0-9]+)\b")
# One marker, then an ASCII integer (Unicode digits such as "٤١" are not an answer).
_ANSWER = re.compile(rf"{MARKER}[ \t]*(-?[0-9]+)(?!\.?[0-9])", re.ASCII)  # "41.5" is not 41
_WELL_FORMED = re.compile(rf"[^#]*{MARKER}[ \t]*-?[0-9]+", re.ASCII)


def solve(prompt):
    """The problem's answer, read off its text: the start count plus gains minus losses; None if unreadable.

    Example:
    >>> solve("tom has 23 apples and buys 18 more . then he gives away 7 . how many apples does he have now ?")
    34
    >>> solve("what is the capital of france ?") is None
    True
    """
    total, started = 0, False
    for verb, number in _STEP.findall(prompt):
        if verb in START_VERBS:
            if started:
                return None  # two start counts: not a problem of this task
            total, started = total + int(number), True
        else:
            total += int(number) if verb in GAIN_VERBS else -int(number)
    return total if started else None


def parse_answer(response):
    """The integer after the response's one answer marker; None when there is no marker, or more than one.

    Example:
    >>> parse_answer("23 + 18 = 41 #### 41")
    41
    >>> parse_answer("#### 41 #### 42") is None  # several answers are no answer
    True
    """
    if response.count(MARKER) != 1:
        return None
    found = _ANSWER.search(response)
    return int(found.group(1)) if found else None


def exact_match_reward(prompts, responses):
    """1.0 where the response's final answer equals the problem's answer (solved from the prompt), else 0.0.

    A wrong, missing or unparseable answer scores 0, never an exception.

    Example:
    >>> exact_match_reward(["ann has 2 pens and buys 3 more . how many pens does she have now ?"] * 2,
    ...                    ["2 + 3 = 5 #### 5", "2 + 3 = 6 #### 6"])
    [1.0, 0.0]
    """
    return scores_against(solve, prompts, responses)


def scores_against(solver, prompts, responses):
    """1.0 where a response's answer after the marker equals `solver(prompt)`, else 0.0 (never an exception).

    The exact match of every task with an answer marker; `solver` reads a problem's answer off its prompt.

    Example:
    >>> scores_against(lambda prompt: 4, ["2 + 2 ?", "2 + 2 ?"], ["#### 4", "4"])
    [1.0, 0.0]
    """
    scores = []
    for prompt, response in zip(prompts, responses):
        answer, expected = parse_answer(response), solver(prompt)
        scores.append(float(answer is not None and expected is not None and answer == expected))
    return scores


def format_reward(prompts, responses):
    """1.0 where the response ends with its one answer marker and an integer, `#### 41`, and nothing after.

    It says nothing about the answer being right: with weights (1, 0.1) a
    well-formed wrong answer scores 0.1, a right one 1.1.

    Example:
    >>> format_reward(["", "", ""], ["2 + 3 = 6 #### 6", "the answer is 5", "#### 5 apples"])
    [1.0, 0.0, 0.0]
    """
    del prompts  # the format does not depend on the problem
    return [float(response.count(MARKER) == 1 and _WELL_FORMED.fullmatch(response.strip()) is not None)
            for response in responses]
