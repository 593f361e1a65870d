"""Rewards on decoded text, and the fluency metric of the default task.

A reward is any Python callable `texts -> scores` (a list of floats or a 1-D
array, one per text). It runs outside the graph, on decoded responses.
"""

import functools
import pathlib
import re

import numpy as np

_WORD = re.compile(r"[a-z']+|[.,!?]")


class RewardError(ValueError):
    """The reward function failed or returned something other than one number per text."""


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_reward(texts):
    """VADER compound sentiment of each text, in [-1, 1] (the default reward).

    Example:
    >>> [round(s, 2) for s in sentiment_reward(["a wonderful film", "a boring film"])]
    [0.57, -0.32]
    """
    analyzer = _vader()
    return [analyzer.polarity_scores(text)["compound"] for text in texts]


def word_count_reward(word):
    """A reward that counts occurrences of `word` (a whole word) in each text.

    Example:
    >>> word_count_reward("great")(["great, really great", "fine"])
    [2.0, 0.0]
    """
    word = word.lower()
    return lambda texts: [float(words(text).count(word)) for text in texts]


def compute_scores(reward_fn, texts):
    """Call `reward_fn(texts)` and check it returned one finite number per text.

    Raises:
        RewardError: naming what went wrong (exception, length, type or NaN, and the row).

    Example:
    >>> compute_scores(lambda texts: [1] * len(texts), ["a", "b"]).tolist()
    [1.0, 1.0]
    """
    try:
        scores = reward_fn(texts)
    except Exception as error:
        raise RewardError(f"reward function {_name(reward_fn)} raised {type(error).__name__}: {error}") from error
    try:
        scores = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise RewardError(f"reward function {_name(reward_fn)} must return numbers, got {scores!r:.200}") from error
    if scores.shape != (len(texts),):
        raise RewardError(f"reward function {_name(reward_fn)} returned shape {scores.shape} "
                          f"for {len(texts)} texts; expected one score per text")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise RewardError(f"reward function {_name(reward_fn)} returned {scores[bad[0]]} for row {bad[0]} "
                          f"({texts[bad[0]]!r}); expected a finite number")
    return scores


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


def _name(fn):
    return getattr(fn, "__name__", type(fn).__name__)
