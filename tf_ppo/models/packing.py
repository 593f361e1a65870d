"""Padding-free rows: a batch's sequences packed end to end, each group's prompt computed once.

GRPO, RLOO and REINFORCE++-baseline sample each prompt G times, and most responses end before
`response_length`. In the rollout buffer's layout (`[batch, P + R]`) every forward pass computes each prompt
G times, and every padding slot. Packed, a row holds whole groups end to end: a group's prompt once, then
the real tokens of each of its responses, and padding only at the row's end:

    tokens      <s> 2 + 2 = | 4 </s> | 5 </s> | <s> 3 + 1 = | 4 </s> | ...
    positions    0  1 2 3 4 | 5  6   | 5  6   |  0  1 2 3 4 | 5  6   |
    group        1  1 1 1 1 | 1  1   | 1  1   |  2  2 2 2 2 | 2  2   |
    member       0  0 0 0 0 | 1  1   | 2  2   |  0  0 0 0 0 | 1  1   |

A token attends, among the earlier tokens of its row, to its group's prompt (member 0) and to its own
response, at the positions they have in their own sequence. Each response token thus sees exactly its own
sequence's context, and the outputs are those of the unpacked sequences, within float32 rounding. This is
DPO's `tf_ppo.preference.shared_prompt` layout generalised to any number of responses per prompt and
several groups per row (the rows of a group are those with the same `groups` id; a row alone is a group of one).

The outputs come back in the rollout's `[batch, R]` layout (`sources`), so no loss sees the packing. A row
is `width` tokens (the trainer's: a whole group, `max_prompt_length + G * response_length`). Responses fill
the open row in order; one that does not fit starts the next row, with its own copy of its prompt. The
number of rows is rounded up to one of `ROW_BUCKETS` sizes: a compiled step traces at most that many shapes
per batch size.
"""

import math
import warnings

import numpy as np
import tensorflow as tf

from tf_ppo.models.families import packing_adapter
from tf_ppo.models.heads import trunk_and_head
from tf_ppo.models.lora import AdaptersOff

ROW_BUCKETS = 16  # packed row counts a batch size can take (each a compiled shape)


def backbone_of(model):
    """The transformer a model runs (a policy's, a critic's, the reference's under LoRA), or None."""
    if isinstance(model, AdaptersOff):
        return backbone_of(model.policy)
    return getattr(model, "backbone", None)


def can_pack(model):
    """True when `packed_outputs` can run `model`: its family gives positions and attention masks per token.

    Example:
    >>> from tf_ppo.models import BigramLM, ModelConfig, build_policy
    >>> can_pack(build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50))
    True
    >>> can_pack(BigramLM(vocabulary_size=5, hidden_dim=2))
    False
    """
    backbone = backbone_of(model)
    return backbone is not None and packing_adapter(backbone) is not None and trunk_and_head(model) is not None


def spanned_lengths(mask):
    """Response slots each row's packed sequence must hold `[batch]`: up to its last True (a multi-turn
    episode's environment tokens between the model's turns are context, so they stay in).

    Example:
    >>> spanned_lengths(np.array([[True, False, True, False], [False] * 4])).tolist()
    [3, 0]
    """
    mask = np.asarray(mask)
    last = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)  # one past the last True; the width if none
    return np.where(mask.any(axis=1), last, 0).astype(np.int32)


def pack_rows(sequence_ids, prompt_lengths, response_lengths, groups, response_length, width):
    """Pack a batch's sequences into rows of `width` tokens, each group's prompt once.

    Args:
        sequence_ids: int `[batch, P + R]` rollout buffer (prompt, then response from `prompt_lengths[i]`).
        prompt_lengths: int `[batch]`; response_lengths: int `[batch]` (`spanned_lengths`), 0 allowed.
        groups: int `[batch]`: rows with the same id share their prompt (consecutive or not).
        response_length: R, the width of the `[batch, R]` layout the outputs come back in.
        width: tokens per packed row; at least any row's prompt plus its response.

    Returns:
        A dict of NumPy arrays: `token_ids`, `position_ids`, `group_ids` (1, 2, ... within a row; 0 = padding),
        `member_ids` (0 = prompt, k = the group's k-th response): int32 `[rows, width]`; `sources` int32
        `[batch, R, 2]`: the (row, column) whose output predicts response token t of batch row b ((0, 0) past
        the row's response_lengths).

    Example:
    >>> packed = pack_rows(np.array([[5, 6, 7, 8], [5, 6, 9, 0]]), np.array([2, 2]), np.array([2, 1]),
    ...                    np.array([0, 0]), 2, width=8)
    >>> packed["token_ids"].tolist(), packed["position_ids"].tolist(), packed["member_ids"].tolist()
    ([[5, 6, 7, 8, 9, 0, 0, 0]], [[0, 1, 2, 3, 2, 0, 0, 0]], [[0, 0, 1, 1, 2, 0, 0, 0]])
    >>> packed["sources"].tolist()  # token 7 and token 9 are both predicted from the prompt's last token
    [[[0, 1], [0, 2]], [[0, 1], [0, 0]]]
    """
    sequence_ids, prompt_lengths = np.asarray(sequence_ids), np.asarray(prompt_lengths)
    response_lengths, groups = np.asarray(response_lengths), np.asarray(groups)
    batch = len(groups)
    packed = {name: np.zeros([batch, width], np.int32)  # at most a row per response; cut to the rows used
              for name in ("token_ids", "position_ids", "group_ids", "member_ids")}
    sources = np.zeros([batch, response_length, 2], np.int32)
    members = {}  # group id -> its batch rows, in batch order
    for row, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(row)
    packed_row, column, groups_in_row = -1, width, 0  # the open packed row (none yet), its next free column
    for group, rows in members.items():
        prompt = int(prompt_lengths[rows[0]])
        if np.any(sequence_ids[rows, :prompt] != sequence_ids[rows[0], :prompt]):
            raise ValueError(f"pack_rows: the rows of group {group} do not share their prompt")
        prompt_in_row = False  # whether the open row holds this group's prompt
        for row in rows:
            length = int(response_lengths[row])
            if prompt + length > width:
                raise ValueError(f"pack_rows: row {row} needs {prompt + length} tokens, more than a row's "
                                 f"width={width}")
            if column + length + (0 if prompt_in_row else prompt) > width:  # the next row (a new prompt copy)
                packed_row, column, groups_in_row, prompt_in_row = packed_row + 1, 0, 0, False
            if not prompt_in_row:
                groups_in_row, member = groups_in_row + 1, 0
                _write(packed, packed_row, column, sequence_ids[row, :prompt], 0, groups_in_row, 0)
                last_prompt_column, column, prompt_in_row = column + prompt - 1, column + prompt, True
            member += 1
            _write(packed, packed_row, column, sequence_ids[row, prompt: prompt + length], prompt, groups_in_row,
                   member)
            sources[row, :length, 0] = packed_row
            sources[row, :length, 1] = np.concatenate([[last_prompt_column], column + np.arange(length - 1)])[:length]
            column += length
    rows_used = _bucketed(packed_row + 1, batch)
    return {**{name: value[:rows_used] for name, value in packed.items()}, "sources": sources}


def _bucketed(rows, most_rows):
    """`rows` rounded up to a multiple of most_rows / ROW_BUCKETS: at most ROW_BUCKETS distinct counts."""
    step = max(1, math.ceil(most_rows / ROW_BUCKETS))
    return min(math.ceil(rows / step) * step, most_rows)


def _write(packed, row, column, token_ids, first_position, group, member):
    end = column + len(token_ids)
    packed["token_ids"][row, column:end] = token_ids
    packed["position_ids"][row, column:end] = first_position + np.arange(len(token_ids))
    packed["group_ids"][row, column:end] = group
    packed["member_ids"][row, column:end] = member


def packed_attention_mask(group_ids, member_ids):
    """bool `[rows, W, W]`: the keys each query may attend to (the model adds the causal mask): its group's
    prompt and its own response. A padding slot sees itself only, so no softmax row is empty.

    Example:
    >>> mask = packed_attention_mask(tf.constant([[1, 1, 1, 0]]), tf.constant([[0, 1, 2, 0]]))
    >>> mask[0].numpy().astype(int).tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    """
    same_group = (group_ids[:, :, None] == group_ids[:, None, :]) & (group_ids[:, None, :] > 0)
    own_context = (member_ids[:, None, :] == 0) | (member_ids[:, :, None] == member_ids[:, None, :])
    itself = tf.eye(tf.shape(group_ids)[1], dtype=tf.bool)[None]
    return (same_group & own_context) | itself


def packed_outputs(model, packed):
    """The model's outputs predicting each response token, from packed rows: logits `[batch, R, V]`
    (a policy) or values `[batch, R]` (a critic), float32, as `tf_ppo.models.forward.response_logits` gives
    them for the unpacked buffer.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> packed = pack_rows(np.array([[5, 6, 7, 8]]), np.array([2]), np.array([2]), np.array([0]), 2, 4)
    >>> packed_outputs(policy, {name: tf.constant(value) for name, value in packed.items()}).shape
    TensorShape([1, 2, 50])
    """
    if isinstance(model, AdaptersOff):
        with model.switched_off():
            return packed_outputs(model.policy, packed)
    backbone = model.backbone
    mask = packed_attention_mask(packed["group_ids"], packed["member_ids"])
    hidden_states = packing_adapter(backbone).packed_hidden_states(
        backbone, packed["token_ids"], packed["position_ids"], mask)  # [rows, W, hidden]
    _, head = trunk_and_head(model)
    # The head (the vocabulary projection) runs at the response tokens only.
    return tf.cast(head(tf.gather_nd(hidden_states, packed["sources"])), tf.float32)


class Packer:
    """Packs the rows of a batch for the packed forward passes: identical prompts form a group (at most
    `group_size` rows: a whole group fits a row of `width` tokens).

    Example:
        packer = Packer(width=16 + 4 * 32, response_length=32, group_size=4)
        packed = packer(sequence_ids, prompt_lengths, responses.mask)  # tensors for `packed_outputs`
    """

    def __init__(self, width, response_length, group_size):
        self.width, self.response_length, self.group_size = width, response_length, group_size

    def __call__(self, sequence_ids, prompt_lengths, mask):
        sequence_ids, prompt_lengths = np.asarray(sequence_ids), np.asarray(prompt_lengths)
        packed = pack_rows(sequence_ids, prompt_lengths, spanned_lengths(mask),
                           prompt_groups(sequence_ids, prompt_lengths, self.group_size), self.response_length,
                           self.width)
        return {name: tf.constant(value) for name, value in packed.items()}


def prompt_groups(sequence_ids, prompt_lengths, group_size):
    """int `[batch]`: the same id for rows with the same prompt, at most `group_size` rows per id.

    Example:
    >>> prompt_groups(np.array([[1, 2, 9], [1, 2, 8], [1, 3, 8], [1, 2, 7]]), np.array([2, 2, 2, 2]), 2).tolist()
    [0, 0, 2, 3]
    """
    prompts = [tuple(row[:length]) for row, length in zip(np.asarray(sequence_ids).tolist(), prompt_lengths)]
    current, taken = {}, {}  # prompt -> its open group's id, its rows so far
    groups = np.zeros(len(prompts), np.int64)
    for row, prompt in enumerate(prompts):
        if taken.get(prompt, 0) % group_size == 0:  # the prompt's first row, or its open group is full
            current[prompt] = row  # a group's id: its first row
        groups[row] = current[prompt]
        taken[prompt] = taken.get(prompt, 0) + 1
    return groups


def packer_for(models, prompt_width, response_length, group_size, replicas=1):
    """A `Packer` when every model packs (`can_pack`) on one replica, else None: the run computes padded rows.

    Example:
        packer = packer_for([policy, reference], 16, 32, group_size=4)
    """
    models = [model for model in models if model is not None]
    unpackable = [type(model).__name__ for model in models if not can_pack(model)]
    if unpackable or replicas > 1:
        why = f"{', '.join(unpackable)} cannot take positions per token" if unpackable else f"{replicas} replicas"
        warnings.warn(f"padding_free: {why}; scoring and training run on padded rows")
        return None
    return Packer(prompt_width + group_size * response_length, response_length, group_size)
