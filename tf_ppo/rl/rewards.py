"""Rewards on decoded text: calling and checking reward functions, several weighted, the fluency metric.

A reward is any Python callable `responses -> scores`, or `(prompts, responses)
-> scores` when it takes two arguments (a list of floats or a 1-D array, one
per response), or a `tf_ppo.RewardModel`. It runs on decoded text: the
responses are the replies alone, and the prompts are as the policy saw them.

A function written TRL's way, with a parameter named `completions` (such as
`def reward(completions, **kwargs)` or `def reward(prompts, completions,
**kwargs)`), is called with keywords. When the prompts are conversations it
gets them in TRL's conversational form: `prompts` the lists of messages, and
each completion `[{"role": "assistant", "content": reply}]`.
"""

import inspect
import pathlib
import re

import numpy as np

from tf_ppo.config import ConfigError
from tf_ppo.rl.concurrency import run_concurrently
from tf_ppo.tasks import TASKS

_WORD = re.compile(r"[a-z']+|[.,!?]")


class RewardError(ValueError):
    """The reward function failed or returned something other than one number per text."""


def word_count_reward(word):
    """A reward that counts occurrences of `word` (a whole word) in each text.

    Example:
    >>> word_count_reward("great")(["great, really great", "fine"])
    [2.0, 0.0]
    """
    word = word.lower()
    return lambda texts: [float(words(text).count(word)) for text in texts]


class RewardFunctionFailed(RewardError):
    """The reward function itself raised; training skips such an update (the non-finite guard) and says why."""


def compute_scores(reward_fn, texts, prompts=None, conversations=None):
    """Score `texts` (the responses) and check the reward returned one number per text.

    `reward_fn(texts)`, or `reward_fn(prompts, texts)` when it takes two
    arguments, or `reward_fn.score_texts(prompts, texts)` (a `RewardModel`);
    a function with a `completions` parameter is called TRL's way, with
    keywords, in TRL's conversational form when `conversations` (each
    prompt's messages) are given.
    An `async def` reward function is awaited; `combined_scores` awaits
    several at once. NaN and inf pass through: the trainer's non-finite
    guard skips such an update and counts it, rather than ending the run.

    Raises:
        RewardError: naming what went wrong (exception, length or type).

    Example:
    >>> compute_scores(lambda texts: [1] * len(texts), ["a", "b"]).tolist()
    [1.0, 1.0]
    >>> compute_scores(lambda prompts, texts: [len(p + t) for p, t in zip(prompts, texts)], ["a"], ["xy"]).tolist()
    [3.0]
    >>> def trl_style(completions, **kwargs): return [len(c[0]["content"]) for c in completions]
    >>> compute_scores(trl_style, ["abc"], ["q"], conversations=[[{"role": "user", "content": "q"}]]).tolist()
    [3.0]
    """
    (scores,) = _scores_of([reward_fn], texts, prompts, conversations)
    return scores


def _scores_of(reward_fns, texts, prompts, conversations):
    """Each reward function's checked scores; the `async def` ones are awaited together, on one event loop."""
    returned = [_call(reward_fn, texts, prompts, conversations) for reward_fn in reward_fns]
    waiting = [i for i, value in enumerate(returned) if inspect.isawaitable(value)]
    outcomes = run_concurrently([_awaiting(returned[i]) for i in waiting]) if waiting else []
    for i, outcome in zip(waiting, outcomes):
        if isinstance(outcome, Exception):
            raise _failed(reward_fns[i], outcome) from outcome
        returned[i] = outcome
    return [_checked(reward_fn, scores, len(texts)) for reward_fn, scores in zip(reward_fns, returned)]


def _call(reward_fn, texts, prompts, conversations):
    """What `reward_fn` returns for these texts (a coroutine, for an `async def` one)."""
    try:
        if hasattr(reward_fn, "score_texts"):
            return reward_fn.score_texts(prompts, texts)
        if _takes_completions(reward_fn):
            return _call_trl_style(reward_fn, texts, prompts, conversations)
        if _takes_prompts(reward_fn):
            return reward_fn(prompts, texts)
        return reward_fn(texts)
    except Exception as error:
        raise _failed(reward_fn, error) from error


def _awaiting(awaitable):
    async def wait():
        return await awaitable
    return wait


def _failed(reward_fn, error):
    return RewardFunctionFailed(f"reward function {_name(reward_fn)} raised {type(error).__name__}: {error}")


def _checked(reward_fn, scores, count):
    try:
        scores = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise RewardError(f"reward function {_name(reward_fn)} must return numbers, got {scores!r:.200}") from error
    if scores.shape != (count,):
        raise RewardError(f"reward function {_name(reward_fn)} returned shape {scores.shape} "
                          f"for {count} texts; expected one score per text")
    return scores


def _call_trl_style(reward_fn, texts, prompts, conversations):
    if conversations is None:
        return reward_fn(prompts=prompts, completions=texts)
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    return reward_fn(prompts=conversations, completions=completions)


def _takes_completions(reward_fn):
    """True when `reward_fn` names a parameter `completions`, as TRL's reward functions do."""
    try:
        return "completions" in inspect.signature(reward_fn).parameters
    except (TypeError, ValueError):
        return False


def _takes_prompts(reward_fn):
    """True when `reward_fn` has two required positional parameters: (prompts, responses)."""
    try:
        parameters = inspect.signature(reward_fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: assume texts only
        return False
    required = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return len(required) >= 2


def words(text):
    """Lower-cased words and punctuation marks, the units of the fluency metric.

    Example:
    >>> words("The film, honestly!")
    ['the', 'film', ',', 'honestly', '!']
    """
    return _WORD.findall(text.lower())


def corpus_bigrams(corpus_path):
    """Every word bigram that occurs in a one-sentence-per-line corpus.

    Example:
    >>> from tf_ppo.config import DATA_DIR
    >>> ("the", "film") in corpus_bigrams(DATA_DIR / "corpus.txt")
    True
    """
    bigrams = set()
    for line in pathlib.Path(corpus_path).read_text().splitlines():
        tokens = words(line)
        bigrams.update(zip(tokens, tokens[1:]))
    return bigrams


def is_fluent(text, bigrams):
    """True when every word bigram of `text` also occurs in the corpus.

    Example:
    >>> is_fluent("the film was", {("the", "film"), ("film", "was")}), is_fluent("film the", {("the", "film")})
    (True, False)
    """
    tokens = words(text)
    return all(pair in bigrams for pair in zip(tokens, tokens[1:]))


def reward_names(reward_fns):
    """A unique name per reward function (its `__name__`, then `_2`, `_3` for repeats): the history's keys.

    Example:
    >>> reward_names([len, len, word_count_reward])
    ['len', 'len_2', 'word_count_reward']
    """
    names = []
    for fn in reward_fns:
        name, count = _name(fn), 1
        while name in names:
            count += 1
            name = f"{_name(fn)}_{count}"
        names.append(name)
    return names


def combined_scores(reward_fns, weights, texts, prompts=None, conversations=None):
    """The weighted sum of several rewards, and each function's own scores by name (`reward_names`).

    Example:
    >>> def length(texts): return [len(text) for text in texts]
    >>> def one(texts): return [1.0] * len(texts)
    >>> total, each = combined_scores([length, one], [1.0, 0.5], ["ab", "c"])
    >>> total.tolist(), sorted(each)
    ([2.5, 1.5], ['length', 'one'])
    """
    each = dict(zip(reward_names(reward_fns), _scores_of(reward_fns, texts, prompts, conversations)))
    total = sum(weight * scores for weight, scores in zip(weights, each.values()))
    return np.asarray(total, dtype=np.float64), each


def _name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


def proxy_rises_gold_falls(proxy, gold, window, t_threshold=2.0):
    """True when, over the last `window` points, the proxy's trend is up and the gold's is down.

    A trend counts when its least-squares slope is at least `t_threshold`
    standard errors from zero, so batch-to-batch noise does not raise alarms.

    Example:
    >>> steps = np.arange(10.0)
    >>> proxy_rises_gold_falls(steps, -steps + 0.1 * np.sin(steps), 10)
    True
    >>> proxy_rises_gold_falls(steps, np.sin(steps), 10)
    False
    """
    if len(proxy) < window or window < 3:
        return False
    return bool(_slope_t(proxy[-window:]) > t_threshold and _slope_t(gold[-window:]) < -t_threshold)


def _slope_t(values):
    """t-statistic of the least-squares slope of `values` against 0, 1, 2, ..."""
    y = np.asarray(values, np.float64)
    x = np.arange(len(y)) - (len(y) - 1) / 2
    slope = np.dot(x, y - y.mean()) / np.dot(x, x)
    residuals = y - y.mean() - slope * x
    standard_error = np.sqrt(np.dot(residuals, residuals) / (len(y) - 2) / np.dot(x, x))
    return slope / standard_error if standard_error > 0 else np.sign(slope) * np.inf


def reward_functions(reward_fn, config):
    """`(reward functions, their weights)`: the given ones (one, a RewardModel, or a list), else the task's.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> fns, weights = reward_functions(len, PPOConfig())
    >>> fns, weights
    ([<built-in function len>], (1.0,))
    """
    task = TASKS[config.task]
    if reward_fn is None:
        reward_fns, weights = list(task.reward_fns), task.reward_weights
    else:
        reward_fns, weights = (list(reward_fn) if isinstance(reward_fn, (list, tuple)) else [reward_fn]), None
    if not reward_fns:
        raise ConfigError("reward_fn: an empty list of reward functions")
    if config.reward_weights is not None and len(config.reward_weights) != len(reward_fns):
        raise ConfigError(f"PPOConfig.reward_weights has {len(config.reward_weights)} weights for "
                          f"{len(reward_fns)} reward functions")
    return reward_fns, config.reward_weights or weights or (1.0,) * len(reward_fns)


def weighted_rewards(reward_fns, reward_weights, texts, prompt_texts, conversations):
    """`(weighted scores [batch], each function's scores by name, failure or None)`.

    A reward function that raises gives NaN scores, so the non-finite guard
    skips the update (and says which function failed) instead of ending the run.

    Example:
        scores, each, failure = weighted_rewards([length_reward], (1.0,), texts, prompt_texts, None)
    """
    try:
        scores, each = combined_scores(reward_fns, reward_weights, texts, prompt_texts, conversations)
    except RewardFunctionFailed as error:
        return np.full(len(texts), np.nan), {}, str(error)
    return scores, (each if len(reward_fns) > 1 else {}), None
