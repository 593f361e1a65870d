"""Prompts and supervised examples: CSV -> token ids -> `tf.data` pipelines.

The CSV format is the article's: columns `input_text` (the prompt) and
`target` (a reference continuation), read with pandas. Prompts can also come
from tensorflow-datasets (`"tfds:imdb_reviews"`), a `tf.data.Dataset` of
strings or a Python list (`load_prompts`).

A prompt may also be a conversation, TRL's list of `{"role", "content"}` messages (Python, JSON Lines
`{"prompt": [...]}` or a CSV column of JSON), rendered with the family's chat template (`tf_ppo.chat`).

Token layout. Every sequence starts with the tokenizer's start token
(`<|endoftext|>` for GPT-2, `<|begin_of_text|>` for Llama 3, `</s>` for OPT;
none if the tokenizer has none), so the first real word has a context. Prompts are
right-padded to a fixed `max_prompt_length`: right padding keeps GPT-2's
absolute positions correct for every row, and fixed shapes mean the compiled
steps are traced once.
"""

import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import tensorflow as tf

PROMPT_COLUMN = "input_text"
TARGET_COLUMN = "target"
JSONL_PROMPT_KEYS = ("prompt", PROMPT_COLUMN)  # TRL's key, then the CSV's column name
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data file or prompt list is unusable; the message names the file, column or row."""


def read_prompt_csv(path, require_target=False):
    """Read an `input_text,target` CSV; check its columns and cells.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> read_prompt_csv(PPOConfig().prompts).columns.tolist()
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
    if PROMPT_COLUMN in frame.columns:
        frame[PROMPT_COLUMN] = [json_conversation(cell) for cell in frame[PROMPT_COLUMN]]
    for column in required:
        check_prompts(frame[column].tolist(), f"{path}: column {column!r}", conversations=column == PROMPT_COLUMN)
    return frame


def json_conversation(cell):
    """A CSV cell holding a JSON list of messages, parsed; any other cell unchanged.

    Example:
    >>> json_conversation('[{"role": "user", "content": "hi"}]'), json_conversation("[hi]")
    ([{'role': 'user', 'content': 'hi'}], '[hi]')
    """
    if not (isinstance(cell, str) and cell.lstrip().startswith("[{")):
        return cell
    try:
        parsed = json.loads(cell)
    except json.JSONDecodeError:
        return cell
    return parsed if is_conversation(parsed) else cell


def read_prompt_jsonl(path):
    """Prompts from a JSON Lines file: one object per line with a `prompt` (or `input_text`) text or conversation.

    Example:
        read_prompt_jsonl("prompts.jsonl")  # [[{"role": "user", "content": "2 + 2 ?"}], ...]
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    prompts = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {line_number}: not JSON ({error.msg})") from error
        key = next((key for key in JSONL_PROMPT_KEYS if isinstance(row, dict) and key in row), None)
        if key is None:
            raise DataError(f"{path}, line {line_number}: expected an object with a {JSONL_PROMPT_KEYS[0]!r} key, "
                            f"got {line.strip()[:80]!r}")
        prompts.append(row[key])
    check_prompts(prompts, str(path), conversations=True)
    return prompts


def is_conversation(prompt):
    """True for a list of message dicts (TRL's conversational format), False for text.

    Example:
    >>> is_conversation([{"role": "user", "content": "hi"}]), is_conversation("hi")
    (True, False)
    """
    return isinstance(prompt, (list, tuple)) and all(isinstance(message, dict) for message in prompt)


def check_conversation(messages, where):
    """Raise `DataError` naming the message that is not `{"role": one of ROLES, "content": text}`.

    Example:
    >>> check_conversation([{"role": "robot", "content": "hi"}], "row 3")
    Traceback (most recent call last):
    ...
    tf_ppo.data.DataError: row 3, message 0: unknown role 'robot'; expected one of ('system', 'user', 'assistant')
    """
    if not messages:
        raise DataError(f"{where}: an empty conversation; expected a list of {{'role', 'content'}} messages")
    for index, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise DataError(f"{where}, message {index}: unknown role {message.get('role')!r}; expected one of "
                            f"{ROLES}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}, message {index}: content must be text, got {message.get('content')!r:.80}")
    if messages[-1]["role"] == "assistant":
        raise DataError(f"{where}: the conversation ends with an assistant message; a prompt ends where the "
                        f"assistant's reply starts")


def check_prompts(prompts, where, conversations=True):
    """Raise `DataError` naming the first bad row: all texts, or (if allowed) all conversations.

    Example:
    >>> check_prompts(["a", [{"role": "user", "content": "b"}]], "prompts")
    Traceback (most recent call last):
    ...
    tf_ppo.data.DataError: prompts: row 1 is a conversation, row 0 is text; all prompts must be one or the other
    """
    if len(prompts) == 0:
        raise DataError(f"{where}: no rows")
    if not conversations or not any(isinstance(prompt, (list, tuple)) for prompt in prompts):
        return check_texts(prompts, where)
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            other = next(i for i, p in enumerate(prompts) if isinstance(p, (list, tuple)))
            raise DataError(f"{where}: row {other} is a conversation, row {row} is text; all prompts must be one "
                            f"or the other")
        if not is_conversation(prompt):
            raise DataError(f"{where}: row {row} is {type(prompt).__name__} {prompt!r:.80}; expected a list of "
                            f"{{'role', 'content'}} messages")
        check_conversation(prompt, f"{where}: row {row}")


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


def load_prompts(source):
    """Prompts from a list, a `tf.data.Dataset`, a CSV or JSON Lines path, `"tfds:NAME[:SPLIT]"` or pandas.

    A prompt is a text, or a conversation (a list of `{"role", "content"}`
    messages) from a list, a JSON Lines file or a CSV column of JSON.

    A tensorflow-datasets source reads the split (default `train`, slicing
    such as `train[:2000]` allowed) and takes its `text` feature, as TRL's IMDB
    example does; without internet it needs the dataset prepared locally. A
    pandas DataFrame gives its `input_text` column (as a CSV does), a Series
    its values.

    Raises:
        DataError: a DataFrame without an `input_text` column (names the
            columns found), a cell that is not text, or a conversation with
            an unknown role or no messages (names the row and message).

    Example:
    >>> load_prompts(tf.data.Dataset.from_tensor_slices(["the film", "a plot"]))
    ['the film', 'a plot']
    >>> load_prompts(pd.DataFrame({"input_text": ["the film"], "target": ["was great."]}))
    ['the film']
    """
    if isinstance(source, (pd.DataFrame, pd.Series)):
        return _pandas_texts(source)
    if isinstance(source, tf.data.Dataset):
        return _dataset_texts(source, "the prompt dataset")
    if isinstance(source, (str, pathlib.Path)) and str(source).startswith("tfds:"):
        import tensorflow_datasets as tfds  # imported here: it is slow to import and only this source needs it

        name, _, split = str(source)[len("tfds:"):].partition(":")
        return _dataset_texts(tfds.load(name, split=split or "train"), source)
    if isinstance(source, (str, pathlib.Path)):
        is_jsonl = pathlib.Path(source).suffix in (".jsonl", ".json")
        return read_prompt_jsonl(source) if is_jsonl else read_prompt_csv(source)[PROMPT_COLUMN].tolist()
    prompts = list(source)
    check_prompts(prompts, "prompts")
    return prompts


def _pandas_texts(source):
    # Iterating a DataFrame gives its column names, which would silently become the prompts.
    if isinstance(source, pd.Series):
        where = "the prompt Series" + (f" {source.name!r}" if source.name is not None else "")
    elif PROMPT_COLUMN not in source.columns:
        raise DataError(f"the prompt DataFrame has no {PROMPT_COLUMN!r} column; found {source.columns.tolist()}")
    else:
        source, where = source[PROMPT_COLUMN], f"the prompt DataFrame: column {PROMPT_COLUMN!r}"
    texts = source.tolist()
    check_texts(texts, where)
    return texts


def _dataset_texts(dataset, where):
    spec = dataset.element_spec
    if isinstance(spec, dict):
        if "text" not in spec:
            raise DataError(f"{where}: no 'text' feature to take prompts from; features: {sorted(spec)}")
        dataset, spec = dataset.map(lambda example: example["text"]), spec["text"]
    if spec.dtype != tf.string or spec.shape.rank != 0:
        raise DataError(f"{where}: expected one string per element, got {spec}")
    return [text.decode("utf-8", errors="replace") for text in dataset.as_numpy_iterator()]


def prompt_token_counts(count, low, high, seed):
    """How many leading tokens of each of `count` prompts to keep: uniform in [low, high], or None if 0.

    Example:
    >>> prompt_token_counts(3, 2, 2, seed=0).tolist(), prompt_token_counts(3, 0, 0, seed=0)
    ([2, 2, 2], None)
    """
    if not high:
        return None
    return np.random.default_rng(seed).integers(low, high + 1, size=count)


def encode_prompts(tokenizer, prompts, max_prompt_length, truncate=False, keep_tokens=None, chat=None):
    """Tokenise prompts: start token + prompt, right-padded.

    Args:
        tokenizer: a keras-hub tokenizer with `start_token_id`/`pad_token_id`.
        prompts: list of N strings, or of N conversations.
        max_prompt_length: the padded width P (start token included).
        truncate: cut longer prompts to their last P - 1 tokens (with a warning)
            instead of raising; the end of a prompt is what the response continues.
        keep_tokens: int `[N]` or None; keep only the first `keep_tokens[i]`
            tokens of prompt i (a review's opening as the prompt).
        chat: the `tf_ppo.chat.ChatFormat` that renders conversations, or None.

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
    check_prompts(prompts, "prompts")
    if is_conversation(prompts[0]):
        if keep_tokens is not None:
            raise DataError("prompt_tokens_min/max keep a text's first words; the prompts are conversations")
        token_lists = [chat.prompt_ids(messages) for messages in prompts]
    else:
        token_lists = tokenize_texts(tokenizer, prompts, keep_tokens)
    start = start_token_ids(tokenizer)
    token_lists = [start + ids for ids in token_lists]
    lengths = np.array([len(ids) for ids in token_lists], np.int32)
    too_long = np.flatnonzero(lengths > max_prompt_length)
    if too_long.size and not truncate:
        row = int(too_long[0])
        raise DataError(f"prompt row {row} has {lengths[row]} tokens (start token included), more than "
                        f"max_prompt_length={max_prompt_length}: {prompts[row]!r:.200} (or set truncate_prompts=True)")
    if too_long.size:
        warnings.warn(f"{too_long.size} of {len(prompts)} prompts cut to their last {max_prompt_length - 1} "
                      f"tokens (max_prompt_length={max_prompt_length}); first: row {int(too_long[0])}")
        token_lists = [ids[:len(start)] + ids[len(start):][len(ids) - max_prompt_length:]
                       if len(ids) > max_prompt_length else ids for ids in token_lists]
        lengths = np.minimum(lengths, max_prompt_length)
    return _pad(token_lists, max_prompt_length, tokenizer.pad_token_id), lengths


def encode_sft_examples(tokenizer, prompts, targets, max_length, chat=None):
    """Tokenise `start + prompt + " " + target + end` for next-token training.

    A conversation prompt is rendered with `chat` (a `tf_ppo.chat.ChatFormat`),
    and its target, the assistant's reply, ends with the template's end of turn.

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
    start = start_token_ids(tokenizer)
    if is_conversation(prompts[0]):
        parts = (chat.turn_ids(messages, reply, start)
                 for messages, reply in zip(prompts, tokenize_texts(tokenizer, targets)))
        token_lists = [head + tail for head, tail in parts]
    else:
        texts = [f"{prompt} {target}" for prompt, target in zip(prompts, targets)]
        token_lists = [start + ids + [tokenizer.end_token_id] for ids in tokenize_texts(tokenizer, texts)]
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


def start_token_ids(tokenizer):
    """`[start_token_id]`, or `[]` for tokenizers (Qwen's, ...) with none: their prompts start with the first word.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> start_token_ids(load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges))
    [762]
    """
    start = getattr(tokenizer, "start_token_id", None)
    return [] if start is None else [start]


def prepend_start_token(tokenizer, token_ids):
    """The tokenizer's start token before each row of a ragged `[batch, None]` (unchanged if it has none).

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> prepend_start_token(load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges), tf.ragged.constant([[5, 6]])).to_list()
    [[762, 5, 6]]
    """
    if not start_token_ids(tokenizer):
        return token_ids
    starts = tf.fill([token_ids.nrows(), 1], tf.cast(tokenizer.start_token_id, token_ids.dtype))
    return tf.concat([tf.RaggedTensor.from_tensor(starts), token_ids], axis=1)


def tokenize_texts(tokenizer, texts, keep_tokens=None):
    """Each text's token ids as a Python list (no start or end token); of text i only the first `keep_tokens[i]`.

    Example:
    >>> from tf_ppo.config import PPOConfig
    >>> from tf_ppo.models import load_tokenizer
    >>> tokenizer = load_tokenizer(PPOConfig().vocabulary, PPOConfig().merges)
    >>> [len(ids) for ids in tokenize_texts(tokenizer, ["the film", "a"])], tokenize_texts(tokenizer, ["a b c"], [1])
    ([2, 1], [[64]])
    """
    if keep_tokens is not None:
        # A word is at least one token, and byte-level BPE splits words before merging, so the first
        # k tokens of a text are the first k tokens of its first k words: long reviews tokenise fast.
        texts = [" ".join(text.split(" ")[: keep + 1]) for text, keep in zip(texts, keep_tokens)]
    token_lists = tokenizer(list(texts))  # called eagerly on a list, keras-hub tokenizers return lists
    return token_lists if keep_tokens is None else [ids[:keep] for ids, keep in zip(token_lists, keep_tokens)]


def _pad(token_lists, width, pad_id):
    padded = np.full([len(token_lists), width], pad_id, np.int32)
    for row, ids in enumerate(token_lists):
        padded[row, : len(ids)] = ids
    return padded
