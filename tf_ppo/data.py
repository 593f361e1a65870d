"""Prompts and supervised examples: CSV -> token ids -> `tf.data` pipelines.

The CSV format is the article's: columns `input_text` (the prompt) and
`target` (a reference continuation), read with pandas.

Token layout. Every sequence starts with the tokenizer's start token
(`<|endoftext|>` for GPT-2), so the first real word has a context. Prompts are
right-padded to a fixed `max_prompt_length`: right padding keeps GPT-2's
absolute positions correct for every row, and fixed shapes mean the compiled
steps are traced once.
"""

import pathlib
import warnings

import numpy as np
import pandas as pd
import tensorflow as tf

PROMPT_COLUMN = "input_text"
TARGET_COLUMN = "target"


class DataError(ValueError):
    """A data file or prompt list is unusable; the message names the file, column or row."""


def read_prompt_csv(path, require_target=False):
    """Read an `input_text,target` CSV; check its columns and cells.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> read_prompt_csv(PPOConfig().prompts_csv).columns.tolist()
    ['input_text', 'target']
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    frame = pd.read_csv(path, keep_default_na=False)
    required = [PROMPT_COLUMN] + ([TARGET_COLUMN] if require_target else [])
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {frame.columns.tolist()}")
    if frame.empty:
        raise DataError(f"{path}: no rows")
    for column in required:
        check_texts(frame[column].tolist(), f"{path}: column {column!r}")
    return frame


def check_texts(texts, where):
    """Raise `DataError` naming the first row that is not a non-empty string.

    Example:
    >>> check_texts(["a", ""], "prompts")
    Traceback (most recent call last):
    ...
    tf_ppo.data.DataError: prompts: row 1 is empty; expected non-empty text
    """
    if len(texts) == 0:
        raise DataError(f"{where}: no rows")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{where}: row {row} is {type(text).__name__} {text!r}; expected text")
        if not text.strip():
            raise DataError(f"{where}: row {row} is empty; expected non-empty text")


def encode_prompts(tokenizer, prompts, max_prompt_length, truncate=False):
    """Tokenise prompts: start token + prompt, right-padded.

    Args:
        tokenizer: a keras-hub tokenizer with `start_token_id`/`pad_token_id`.
        prompts: list of N strings.
        max_prompt_length: the padded width P (start token included).
        truncate: cut longer prompts to their last P - 1 tokens (with a warning)
            instead of raising; the end of a prompt is what the response continues.

    Returns:
        `(token_ids, lengths)`: int32 `[N, P]` and int32 `[N]` (real tokens per row).

    Raises:
        DataError: a prompt is longer than `max_prompt_length` tokens and
            `truncate` is off (names the row).

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> ids, lengths = encode_prompts(load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges), ["the film was"], 8)
    >>> ids.shape, lengths.tolist()
    ((1, 8), [4])
    """
    check_texts(prompts, "prompts")
    token_lists = [[tokenizer.start_token_id] + ids for ids in _tokenize(tokenizer, prompts)]
    lengths = np.array([len(ids) for ids in token_lists], np.int32)
    too_long = np.flatnonzero(lengths > max_prompt_length)
    if too_long.size and not truncate:
        row = int(too_long[0])
        raise DataError(f"prompt row {row} has {lengths[row]} tokens (start token included), more than "
                        f"max_prompt_length={max_prompt_length}: {prompts[row]!r} (or set truncate_prompts=True)")
    if too_long.size:
        warnings.warn(f"{too_long.size} of {len(prompts)} prompts cut to their last {max_prompt_length - 1} "
                      f"tokens (max_prompt_length={max_prompt_length}); first: row {int(too_long[0])}")
        token_lists = [ids[:1] + ids[1:][len(ids) - max_prompt_length:] if len(ids) > max_prompt_length else ids
                       for ids in token_lists]
        lengths = np.minimum(lengths, max_prompt_length)
    return _pad(token_lists, max_prompt_length, tokenizer.pad_token_id), lengths


def encode_sft_examples(tokenizer, prompts, targets, max_length):
    """Tokenise `start + prompt + " " + target + end` for next-token training.

    Returns:
        `(token_ids, padding_mask)`: int32 `[N, max_length]`, bool `[N, max_length]`;
        rows longer than `max_length` are cut.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> ids, mask = encode_sft_examples(load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges), ["the film was"], ["great."], 10)
    >>> int(mask.sum())
    7
    """
    texts = [f"{prompt} {target}" for prompt, target in zip(prompts, targets)]
    token_lists = [[tokenizer.start_token_id] + ids + [tokenizer.end_token_id]
                   for ids in _tokenize(tokenizer, texts)]
    token_lists = [ids[:max_length] for ids in token_lists]
    mask = np.array([[i < len(ids) for i in range(max_length)] for ids in token_lists])
    return _pad(token_lists, max_length, tokenizer.pad_token_id), mask


def prompt_dataset(token_ids, lengths, batch_size, seed):
    """Endless shuffled batches of `{"prompt_ids", "prompt_lengths"}`, full batches only.

    Example:
    >>> ds = prompt_dataset(np.zeros([4, 3], np.int32), np.ones([4], np.int32), batch_size=2, seed=0)
    >>> next(iter(ds))["prompt_ids"].shape
    TensorShape([2, 3])
    """
    if len(token_ids) < batch_size:
        raise DataError(f"{len(token_ids)} prompts are fewer than one batch of batch_size={batch_size}")
    dataset = tf.data.Dataset.from_tensor_slices({"prompt_ids": token_ids, "prompt_lengths": lengths})
    return (dataset.shuffle(len(token_ids), seed=seed, reshuffle_each_iteration=True)
            .repeat().batch(batch_size, drop_remainder=True).prefetch(2))


def _tokenize(tokenizer, texts):
    # Called eagerly, keras-hub tokenizers return Python lists of ids.
    return tokenizer(list(texts))


def _pad(token_lists, width, pad_id):
    padded = np.full([len(token_lists), width], pad_id, np.int32)
    for row, ids in enumerate(token_lists):
        padded[row, : len(ids)] = ids
    return padded
