"""The Environment API: episodes stepped at once, answers checked, tool environments that never raise."""

import asyncio
import random
import time

import pytest

from tf_ppo.rl.environment import (Environment, EpisodeError, Step, ToolEnvironment, environment_factory, reset_all,
                                   step_all)
from tf_ppo.rl.tools import calculator


class GuessTheNumber(Environment):
    """The docs' multi-step game: "higher" / "lower" until the guess is right."""

    def __init__(self, secret):
        self.secret = secret

    def reset(self, prompt):
        return "guess a number from 1 to 100"

    def step(self, model_text):
        guess = int(model_text.split()[-1])
        if guess == self.secret:
            return None, 1.0, True
        return ("higher" if guess < self.secret else "lower"), 0.0, False


def test_a_batch_of_guessing_games_played_by_bisection_ends_each_at_its_own_turn():
    secrets = [1, 50, 77, 100]
    games = [GuessTheNumber(secret) for secret in secrets]
    assert [game.reset("play") for game in games] == ["guess a number from 1 to 100"] * 4
    bounds = [[1, 100] for _ in games]
    turns, finished = [0] * 4, [False] * 4
    while not all(finished):
        texts = [None if done else f"my guess is {(low + high) // 2}" for (low, high), done in zip(bounds, finished)]
        for row, step in enumerate(step_all(games, texts)):
            if step is None:
                continue
            turns[row] += 1
            guess = (bounds[row][0] + bounds[row][1]) // 2
            if step.done:
                assert step.reward == 1.0 and guess == secrets[row]
                finished[row] = True
            else:
                bounds[row] = [guess + 1, bounds[row][1]] if step.observation == "higher" else [bounds[row][0], guess - 1]
    assert turns[1] == 1 and max(turns) <= 7  # 50 at once; any number within log2(100) + 1 guesses


def test_async_steps_of_a_batch_run_at_once():
    class Slow(Environment):
        async def step(self, model_text):
            await asyncio.sleep(0.3)
            return model_text.upper(), 0.5, False

    started = time.perf_counter()
    steps = step_all([Slow() for _ in range(8)], ["a"] * 8)
    assert time.perf_counter() - started < 1.5  # one after the other: 2.4 s
    assert steps == [Step("A", 0.5, False)] * 8


@pytest.mark.parametrize("answer", ["just text", ("obs", 1.0), ("obs", "1", False), (3, 1.0, False),
                                    ("obs", 1.0, "yes"), ("obs", True, False)])
def test_a_step_that_returns_the_wrong_type_is_a_named_error_that_says_what_to_return(answer):
    class Wrong(Environment):
        def step(self, model_text):
            return answer

    with pytest.raises(EpisodeError, match=r"Wrong.step must return \(observation: str or None, reward: float, "
                                           r"done: bool\); it returned"):
        step_all([Wrong()], ["x"])


def test_a_step_that_raises_names_the_environment_and_the_row():
    class Broken(Environment):
        def step(self, model_text):
            raise KeyError(model_text)

    with pytest.raises(EpisodeError, match="Broken.step raised on episode row 1: KeyError: 'b'"):
        step_all([Environment(), Broken()], [None, "b"])


def test_async_resets_of_a_batch_run_at_once_and_a_reset_must_return_text_or_none():
    class SlowStart(Environment):
        async def reset(self, prompt):
            await asyncio.sleep(0.3)
            return f"welcome to {prompt}"

    started = time.perf_counter()
    assert reset_all([SlowStart() for _ in range(8)], ["a"] * 8) == ["welcome to a"] * 8
    assert time.perf_counter() - started < 1.5  # one after the other: 2.4 s

    class Wrong(Environment):
        def reset(self, prompt):
            return {"prompt": prompt}

    with pytest.raises(EpisodeError, match=r"Wrong.reset must return the first observation \(str or None\); on "
                                           r"episode row 1 it returned \{'prompt': 'b'\}"):
        reset_all([Environment(), Wrong()], ["a", "b"])

    class Broken(Environment):
        def reset(self, prompt):
            raise ValueError("no such level")

    with pytest.raises(EpisodeError, match="Broken.reset raised on episode row 0: ValueError: no such level"):
        reset_all([Broken()], ["a"])


def test_environment_factory_takes_a_class_or_a_function_and_checks_what_it_makes():
    assert isinstance(environment_factory(lambda: GuessTheNumber(3))(), GuessTheNumber)
    with pytest.raises(EpisodeError, match="environment must be an Environment class or a function"):
        environment_factory(GuessTheNumber(3))

    class NoStep:
        def reset(self, prompt):
            return None
    with pytest.raises(EpisodeError, match=r"NoStep\(\) made NoStep, which has no step\(\) method"):
        environment_factory(NoStep)()


def test_a_tool_environment_answers_every_bad_call_with_an_error_result_and_counts_it():
    def hang(seconds: float) -> str:
        """Sleeps."""
        time.sleep(seconds)
        return "late"

    episode = ToolEnvironment([calculator, hang], timeout=0.3)
    turns = ['<call>calculator("2 +")</call>', "<call>calculator(</call>", "<call>search('x')</call>",
             "<call>hang(5)</call>", '<call>calculator("6 * 7")</call>']
    observations = [episode.step(turn).observation for turn in turns]
    assert observations == ["<result>error: ValueError: the expression ends too early</result>",
                            "<result>error: the call 'calculator(' is not Python call syntax ('(' was never "
                            "closed)</result>",
                            "<result>error: no tool named 'search' (tools: calculator, hang)</result>",
                            "<result>error: hang took longer than 0.3 s</result>", "<result>42</result>"]
    assert (episode.tool_calls, episode.tool_errors) == (5, 4)
    assert episode.step("so the answer is #### 42") == Step(None, 0.0, True)


def test_random_episodes_of_tool_environments_step_at_once():
    rng = random.Random(0)
    episodes = [ToolEnvironment([calculator]) for _ in range(6)]
    numbers = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in episodes]
    steps = step_all(episodes, [f'<call>calculator("{a} * {b}")</call>' for a, b in numbers])
    assert [step.observation for step in steps] == [f"<result>{a * b}</result>" for a, b in numbers]
