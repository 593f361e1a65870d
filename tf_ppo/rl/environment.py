"""Environments of multi-turn episodes: the model writes a turn, the environment answers, until it is done.

One `Environment` instance per episode:

    reset(prompt)      -> the first observation (text the model reads before its first turn), or None
    step(model_text)   -> (observation or None, reward, done): the answer to one model turn

A step's reward is credited to the last model token of its turn. An observation's tokens are the
environment's: no policy loss, entropy or KL falls on them, and GAE bootstraps across them
(`tf_ppo.rl.functional.ppo.gae`). `reset` and `step` may be `async def`; the episodes of a batch reset,
and step, at once.

The common case is built in: `ToolEnvironment` answers each `<call>tool(...)</call>` with the tool's
result (`tf_ppo.rl.tools`), and ends the episode on a turn without a call.
"""

import dataclasses
import functools
import numbers

import numpy as np

from tf_ppo.rl.concurrency import run_concurrently
from tf_ppo.rl.tools import as_tools, parse_call, run_calls


class EpisodeError(TypeError):
    """An environment that does not keep the API: the message names it and says what it should do."""


@dataclasses.dataclass(frozen=True)
class Step:
    """An environment's answer to one model turn."""

    observation: str | None  # text the model reads next; None: nothing (the episode may still go on)
    reward: float
    done: bool


class Environment:
    """One episode's world. Subclass it, or write any class with these two methods.

    Example, a number-guessing game:

        class GuessTheNumber(tf_ppo.Environment):
            def reset(self, prompt):
                self.secret = random.randint(1, 100)
            def step(self, model_text):
                guess = int(model_text.split()[-1])
                if guess == self.secret:
                    return None, 1.0, True
                return ("higher" if guess < self.secret else "lower"), 0.0, False
    """

    def reset(self, prompt):
        """Start the episode of `prompt`; the first observation, or None."""
        return None

    def step(self, model_text):
        """Answer one model turn: `(observation or None, reward, done)`."""
        raise NotImplementedError(f"{type(self).__name__}.step(model_text) must return "
                                  f"(observation or None, reward, done)")


class ToolEnvironment(Environment):
    """The model calls tools: each turn's first `<call>name(args)</call>` is answered with its result.

    A turn without a call ends the episode. Calls that raise, run past `timeout` seconds, name no tool
    or cannot be parsed are answered with an error result and counted in `tool_errors`.

    Example:
    >>> from tf_ppo.rl.tools import calculator
    >>> episode = ToolEnvironment([calculator])
    >>> episode.step('so <call>calculator("12 * 34")</call>')
    Step(observation='<result>408</result>', reward=0.0, done=False)
    >>> episode.step("#### 408"), episode.tool_calls, episode.tool_errors
    (Step(observation=None, reward=0.0, done=True), 1, 0)
    """

    def __init__(self, tools, timeout=10.0):
        self.tools = tools if isinstance(tools, dict) else as_tools(tools)
        self.timeout = timeout
        self.tool_calls = 0
        self.tool_errors = 0

    def step(self, model_text):
        try:
            call = parse_call(model_text)
        except ValueError as error:
            call = error  # answered with an error result
        if call is None:
            return Step(None, 0.0, True)
        result = run_calls(self.tools, [call], self.timeout)[0]
        self.tool_calls += 1
        self.tool_errors += result.error
        return Step(result.observation(), 0.0, False)


def environment_factory(environment):
    """A zero-argument function that makes one episode's environment: from a class or a factory.

    Example:
    >>> make = environment_factory(Environment)
    >>> type(make()).__name__
    'Environment'
    """
    if not callable(environment):
        raise EpisodeError(f"environment must be an Environment class or a function that returns one, got "
                           f"{type(environment).__name__} {environment!r:.60}")

    def make():
        made = environment()
        for method in ("reset", "step"):
            if not callable(getattr(made, method, None)):
                raise EpisodeError(f"{_name(environment)}() made {type(made).__name__}, which has no {method}() "
                                   f"method; an environment needs reset(prompt) and step(model_text)")
        return made

    return make


def environment_for(config, environment=None, tools=None):
    """A run's episode factory: `environment`, else `tools`, else the task's tools; None: single-turn.

    `tools=[]` switches the task's tools off. Tools are checked now (a tool without type hints raises
    `ToolError`), before any model is built.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> type(environment_for(PPOConfig(task="calculator"))()).__name__
    'ToolEnvironment'
    >>> environment_for(PPOConfig(task="calculator"), tools=[]) is None
    True
    """
    from tf_ppo.tasks import TASKS  # the tasks name their tools, from this package
    if environment is not None and tools:
        raise EpisodeError("pass environment= or tools=, not both: a ToolEnvironment(tools) subclass can "
                           "answer tool calls and keep state")
    if environment is not None:
        return environment_factory(environment)
    tools = TASKS[config.task].tools if tools is None else tools
    if not tools:
        return None
    return environment_factory(functools.partial(ToolEnvironment, as_tools(tools), config.tool_timeout))


def environment_rewards_only(responses):
    """0.0 for every episode: with `train(environment=...)` and no `reward_fn`, the environment's rewards alone.

    Example:
    >>> environment_rewards_only(["guess 50", "guess 75"])
    [0.0, 0.0]
    """
    return [0.0] * len(responses)


def checked_step(answer, environment):
    """`step`'s answer as a `Step`; `EpisodeError` naming the environment when it is not one.

    Example:
    >>> checked_step(("higher", 0, False), Environment())
    Step(observation='higher', reward=0.0, done=False)
    """
    if isinstance(answer, Step):
        answer = dataclasses.astuple(answer)
    ok = (isinstance(answer, tuple) and len(answer) == 3 and (answer[0] is None or isinstance(answer[0], str))
          and isinstance(answer[1], numbers.Real) and not isinstance(answer[1], bool)
          and isinstance(answer[2], (bool, np.bool_)))
    if not ok:
        raise EpisodeError(f"{type(environment).__name__}.step must return (observation: str or None, reward: "
                           f"float, done: bool); it returned {answer!r:.120}")
    return Step(answer[0], float(answer[1]), bool(answer[2]))


def reset_all(environments, prompts):
    """Start every episode at once; each one's first observation (str or None).

    An environment's own exception is raised again, naming the episode's row, and so is an answer
    that is not text.

    Example:
    >>> reset_all([Environment(), Environment()], ["guess a number", "guess another"])
    [None, None]
    """
    answers = _call_all(environments, "reset", prompts)
    for row, (environment, answer) in enumerate(zip(environments, answers)):
        if answer is not None and not isinstance(answer, str):
            raise EpisodeError(f"{type(environment).__name__}.reset must return the first observation (str or "
                               f"None); on episode row {row} it returned {answer!r:.120}")
    return answers


def step_all(environments, texts):
    """Step every episode that has a text (None: finished, not stepped) at once; one `Step` or None each.

    An environment's own exception is raised again, naming the episode's row.

    Example:
    >>> step_all([ToolEnvironment([]), Environment()], ["no call", None])
    [Step(observation=None, reward=0.0, done=True), None]
    """
    answers = _call_all(environments, "step", texts)
    return [None if text is None else checked_step(answer, environment)
            for environment, text, answer in zip(environments, texts, answers)]


def _call_all(environments, method, arguments):
    """`environment.method(argument)` of every row whose argument is not None, at once (None for the others)."""
    calls = [functools.partial(getattr(environment, method), argument) if argument is not None else (lambda: None)
             for environment, argument in zip(environments, arguments)]
    answers = run_concurrently(calls)
    for row, (environment, argument, answer) in enumerate(zip(environments, arguments, answers)):
        if isinstance(answer, Exception) and argument is not None:
            raise EpisodeError(f"{type(environment).__name__}.{method} raised on episode row {row}: "
                               f"{type(answer).__name__}: {answer}") from answer
    return answers


def _name(factory):
    return getattr(factory, "__name__", None) or type(factory).__name__
