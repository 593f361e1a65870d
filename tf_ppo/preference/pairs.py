"""Preference rows as pairs, and a pair's two sequences as token ids with the mask of the response's tokens.

Sequence layout: `start + prompt + " " + response + end`, the prompt and the
response tokenised apart so the response's tokens are exactly known. A
conversation prompt is rendered with its chat template, and the response, the
assistant's reply, ends with the template's end of turn.
"""

import numpy as np

from tf_ppo.data import is_conversation, start_token_ids, tokenize_texts


def preference_pairs(prompts, responses, best):
    """(prompt, chosen, rejected) triples: a pairwise row as it is, a best-of-n row as n - 1 pairs.

    Example:
    >>> preference_pairs(["p"], [["a", "b", "c"]], [1])
    (['p', 'p'], ['b', 'b'], ['a', 'c'])
    """
    pair_prompts, chosen, rejected = [], [], []
    for prompt, row, winner in zip(prompts, responses, best):
        for index, response in enumerate(row):
            if index != winner:
                pair_prompts.append(prompt)
                chosen.append(row[winner])
                rejected.append(response)
    return pair_prompts, chosen, rejected


def encode_responses(tokenizer, prompts, responses, max_length, chat=None):
    """Token ids of each `prompt + response` sequence and the mask of the response's tokens.

    Conversation prompts are rendered with `chat`, a `tf_ppo.chat.ChatFormat`.

    Returns:
        `(token_ids int32 [N, L], padding_mask bool [N, L], response_mask bool [N, L - 1])`;
        `response_mask[:, t]` marks the positions whose NEXT token (t + 1) is a response token.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    >>> ids, padding, response = encode_responses(tokenizer, ["the film was"], ["great."], 12)
    >>> int(padding.sum()), int(response.sum())  # 1 + 3 prompt tokens; "great", ".", end
    (7, 3)
    """
    start = start_token_ids(tokenizer)
    if is_conversation(prompts[0]):
        parts = [chat.turn_ids(messages, reply, start)
                 for messages, reply in zip(prompts, tokenize_texts(tokenizer, responses))]
    else:
        parts = [(start + prompt, response + [tokenizer.end_token_id]) for prompt, response in
                 zip(tokenize_texts(tokenizer, prompts), tokenize_texts(tokenizer, [" " + r for r in responses]))]
    token_ids = np.full([len(prompts), max_length], tokenizer.pad_token_id, np.int32)
    padding_mask = np.zeros([len(prompts), max_length], bool)
    is_response = np.zeros([len(prompts), max_length], bool)
    for row, (head, tail) in enumerate(parts):
        sequence = (head + tail)[:max_length]
        token_ids[row, : len(sequence)] = sequence
        padding_mask[row, : len(sequence)] = True
        is_response[row, len(head): len(sequence)] = True
    return token_ids, padding_mask, is_response[:, 1:]
