"""Prompts long enough for a benchmark's prompt length, the same on both sides (tf_ppo's and TRL's scripts).

A training sentence longer than the prompt is used alone (its last tokens, as before); a shorter one gets the
sentences before it prepended until it is long enough. Pure Python: both environments import it.
"""


def long_enough(sentences, token_counts, length):
    """Each sentence that can be, with the sentences before it prepended until it has at least `length` tokens.

    `token_counts[i]` is sentence i's token count; joining adds a space, which only lengthens the text.

    Example:
    >>> long_enough(["a b", "c", "d e f"], [2, 1, 3], 3)
    ['a b c', 'd e f']
    """
    texts = []
    for index in range(len(sentences)):
        start, tokens = index, token_counts[index]
        while tokens < length and start > 0:
            start -= 1
            tokens += token_counts[start]
        if tokens >= length:
            texts.append(" ".join(sentences[start: index + 1]))
    return texts
