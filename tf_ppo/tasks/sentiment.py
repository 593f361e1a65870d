"""The sentiment task's reward: VADER's compound sentiment of movie-review completions."""

import functools


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
