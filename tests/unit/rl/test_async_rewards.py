"""`async def` reward functions: awaited, several at once, with the errors of synchronous ones."""

import asyncio
import time

import pytest

from tf_ppo.rl.rewards import RewardFunctionFailed, combined_scores, compute_scores


async def slow_length(texts):
    await asyncio.sleep(0.5)
    return [len(text) for text in texts]


async def slow_trl_style(prompts, completions, **kwargs):
    await asyncio.sleep(0.5)
    return [float(completion.startswith(prompt)) for prompt, completion in zip(prompts, completions)]


def test_an_async_reward_is_awaited_and_checked_like_a_synchronous_one():
    assert compute_scores(slow_length, ["ab", "c"]).tolist() == [2.0, 1.0]
    assert compute_scores(slow_trl_style, ["ab", "c"], ["a", "a"]).tolist() == [1.0, 0.0]

    async def short(texts):
        return [1.0]

    with pytest.raises(RewardFunctionFailed, match="reward function broken raised KeyError"):
        async def broken(texts):
            raise KeyError("x")
        compute_scores(broken, ["a"])
    with pytest.raises(ValueError, match="reward function short returned shape"):
        compute_scores(short, ["a", "b"])


def test_several_async_rewards_run_at_once_beside_synchronous_ones():
    started = time.perf_counter()
    total, each = combined_scores([slow_length, slow_trl_style, lambda texts: [1.0] * len(texts)],
                                  [1.0, 10.0, 0.5], ["ab", "c"], ["a", "a"])
    assert time.perf_counter() - started < 0.9  # one after the other: 1.0 s
    assert total.tolist() == [12.5, 1.5] and each["slow_length"].tolist() == [2.0, 1.0]


def test_async_rewards_work_where_an_event_loop_already_runs():
    async def in_a_notebook():  # Jupyter runs cells inside its own loop
        return compute_scores(slow_length, ["abc"]).tolist()

    assert asyncio.run(in_a_notebook()) == [3.0]
