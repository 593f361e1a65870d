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
sequence's context, and the outputs are those of the unpacked sequences, within float32 rounding. The rows
of a group are those with the same `groups` id (a row alone is a group of one): GRPO's G samples of a prompt,
or a DPO pair's chosen and rejected responses (`tf_ppo.preference.shared_prompt`, a row per pair).

Only the positions that predict a response token need outputs: a row's `row_sources` (the last prompt token
once per group, then each response token but its last). The last block's queries, its feed-forward and the
head (the vocabulary projection) run there only. The outputs come back in the rollout's `[batch, R]` layout
(`sources`), so no loss sees the packing. A row is `width` tokens with `sources_per_row` outputs (the
trainer's: a whole group, `max_prompt_length + G * response_length` and `G * response_length`). Responses fill
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


def pack_rows(sequence_ids, prompt_lengths, response_lengths, groups, response_length, width, sources_per_row=None,
              row_per_group=False):
    """Pack a batch's sequences into rows of `width` tokens, each group's prompt once.

    Args:
        sequence_ids: int `[batch, P + R]` rollout buffer (prompt, then response from `prompt_lengths[i]`).
        prompt_lengths: int `[batch]`; response_lengths: int `[batch]` (`spanned_lengths`), 0 allowed.
        groups: int `[batch]`: rows with the same id share their prompt (consecutive or not).
        response_length: R, the width of the `[batch, R]` layout the outputs come back in.
        width: tokens per packed row; at least any row's prompt plus its response.
        sources_per_row: K, the outputs a row computes (the positions that predict a response token); at
            least any response's length. Default: `width`.
        row_per_group: each group starts a row of its own, so row i holds the i-th group when each fits one
            row (DPO's pairs); the default fills each row with as many groups as fit, and rounds the rows up to
            a bucket.

    Returns:
        A dict of NumPy arrays: `token_ids`, `position_ids`, `group_ids` (1, 2, ... within a row; 0 = padding),
        `member_ids` (0 = prompt, k = the group's k-th response): int32 `[rows, width]`; `row_sources` int32
        `[rows, K]`: the columns whose outputs are computed (0 in unused slots); `sources` int32
        `[batch, R, 2]`: the (row, slot of `row_sources`) whose output predicts response token t of batch row
        b ((0, 0) past the row's response_lengths).

    Example:
    >>> packed = pack_rows(np.array([[5, 6, 7, 8], [5, 6, 9, 0]]), np.array([2, 2]), np.array([2, 1]),
    ...                    np.array([0, 0]), 2, width=8)
    >>> packed["token_ids"].tolist(), packed["position_ids"].tolist(), packed["member_ids"].tolist()
    ([[5, 6, 7, 8, 9, 0, 0, 0]], [[0, 1, 2, 3, 2, 0, 0, 0]], [[0, 0, 1, 1, 2, 0, 0, 0]])
    >>> packed["row_sources"].tolist()  # the prompt's last token predicts 7 and 9, token 7 predicts 8
    [[1, 2, 0, 0, 0, 0, 0, 0]]
    >>> packed["sources"].tolist()
    [[[0, 0], [0, 1]], [[0, 0], [0, 0]]]
    """
    sequence_ids, prompt_lengths = np.asarray(sequence_ids), np.asarray(prompt_lengths)
    response_lengths, groups = np.asarray(response_lengths), np.asarray(groups)
    batch, sources_per_row = len(groups), sources_per_row or width
    packed = {name: np.zeros([batch, width], np.int32)  # at most a row per response; cut to the rows used
              for name in ("token_ids", "position_ids", "group_ids", "member_ids")}
    packed["row_sources"] = np.zeros([batch, sources_per_row], np.int32)
    sources = np.zeros([batch, response_length, 2], np.int32)
    members = {}  # group id -> its batch rows, in batch order
    for row, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(row)
    row_state = _OpenRow(width, sources_per_row)
    for group, rows in members.items():
        prompt = int(prompt_lengths[rows[0]])
        if np.any(sequence_ids[rows, :prompt] != sequence_ids[rows[0], :prompt]):
            raise ValueError(f"pack_rows: the rows of group {group} do not share their prompt")
        if row_per_group:
            row_state.next_row()
        prompt_column = None  # where the open row holds this group's prompt
        for row in rows:
            length = int(response_lengths[row])
            if prompt + length > width or length > sources_per_row:
                raise ValueError(f"pack_rows: row {row} needs {prompt + length} tokens and {length} outputs, more "
                                 f"than a row's width={width} and sources_per_row={sources_per_row}")
            if not row_state.fits(length + (0 if prompt_column is not None else prompt), length):
                row_state.next_row()  # the next row, with a new copy of the prompt
                prompt_column = None
            if prompt_column is None:
                prompt_column = row_state.write(packed, sequence_ids[row, :prompt], 0, new_group=True)
                prompt_slot = None  # the slot of the prompt's last token, once a response needs it
            row_state.write(packed, sequence_ids[row, prompt: prompt + length], prompt)
            if length:
                if prompt_slot is None:
                    prompt_slot = row_state.add_sources(packed, [prompt_column + prompt - 1])
                first = row_state.add_sources(packed, row_state.column - length + np.arange(length - 1))
                sources[row, :length, 0] = row_state.row
                sources[row, :length, 1] = np.concatenate([[prompt_slot], first + np.arange(length - 1)])
    rows_used = row_state.row + 1 if row_per_group else _bucketed(row_state.row + 1, batch)
    return {**{name: value[:rows_used] for name, value in packed.items()}, "sources": sources}


def _bucketed(rows, most_rows):
    """`rows` rounded up to a multiple of most_rows / ROW_BUCKETS: at most ROW_BUCKETS distinct counts."""
    step = max(1, math.ceil(most_rows / ROW_BUCKETS))
    return min(math.ceil(rows / step) * step, most_rows)


class _OpenRow:
    """The row `pack_rows` is filling: its index, next free column and slot, and its groups so far."""

    def __init__(self, width, sources_per_row):
        self.width, self.sources_per_row = width, sources_per_row
        # No row open yet: nothing fits, not even an empty response.
        self.row, self.column, self.slot, self.groups, self.member = -1, width + 1, sources_per_row, 0, 0

    def fits(self, tokens, outputs):
        return self.column + tokens <= self.width and self.slot + outputs <= self.sources_per_row

    def next_row(self):
        self.row, self.column, self.slot, self.groups = self.row + 1, 0, 0, 0

    def write(self, packed, token_ids, first_position, new_group=False):
        """Write `token_ids` at the next free column (a group's prompt, or its next response); their first column."""
        if new_group:
            self.groups, self.member = self.groups + 1, 0
        else:
            self.member += 1
        start, end = self.column, self.column + len(token_ids)
        packed["token_ids"][self.row, start:end] = token_ids
        packed["position_ids"][self.row, start:end] = first_position + np.arange(len(token_ids))
        packed["group_ids"][self.row, start:end] = self.groups
        packed["member_ids"][self.row, start:end] = self.member
        self.column = end
        return start

    def add_sources(self, packed, columns):
        """Give `columns` the next slots of the row's `row_sources`; the first one's slot."""
        first = self.slot
        packed["row_sources"][self.row, first: first + len(columns)] = columns
        self.slot += len(columns)
        return first


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


def packed_row_outputs(model, packed, training=False):
    """The model's outputs at each packed row's `row_sources`: logits `[rows, K, V]` (a policy) or values
    `[rows, K]` (a critic), float32. The last block and the head run there only.

    Example:
    >>> from tf_ppo.models import ModelConfig, build_policy
    >>> policy = build_policy(ModelConfig(num_layers=1, hidden_dim=16, num_heads=2), 50)
    >>> packed = pack_rows(np.array([[5, 6, 7, 8]]), np.array([2]), np.array([2]), np.array([0]), 2, 4)
    >>> packed_row_outputs(policy, {name: tf.constant(value) for name, value in packed.items()}).shape
    TensorShape([1, 4, 50])
    """
    if isinstance(model, AdaptersOff):
        with model.switched_off():
            return packed_row_outputs(model.policy, packed, training)
    backbone = model.backbone
    mask = packed_attention_mask(packed["group_ids"], packed["member_ids"])
    hidden_states = packing_adapter(backbone).packed_hidden_states(
        backbone, packed["token_ids"], packed["position_ids"], mask, packed["row_sources"], training)  # [rows, K, h]
    _, head = trunk_and_head(model)
    return tf.cast(head(hidden_states), tf.float32)


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
    return tf.gather_nd(packed_row_outputs(model, packed), packed["sources"])


class Packer:
    """Packs the rows of a batch for the packed forward passes: identical prompts form a group (at most
    `group_size` rows: a whole group fits a row of `width` tokens).

    Example:
        packer = Packer(prompt_width=16, response_length=32, group_size=4)
        packed = packer(sequence_ids, prompt_lengths, responses.mask)  # tensors for `packed_outputs`
    """

    def __init__(self, prompt_width, response_length, group_size):
        self.response_length, self.group_size = response_length, group_size
        self.sources_per_row = group_size * response_length
        self.width = prompt_width + self.sources_per_row

    def __call__(self, sequence_ids, prompt_lengths, mask):
        sequence_ids, prompt_lengths = np.asarray(sequence_ids), np.asarray(prompt_lengths)
        packed = pack_rows(sequence_ids, prompt_lengths, spanned_lengths(mask),
                           prompt_groups(sequence_ids, prompt_lengths, self.group_size), self.response_length,
                           self.width, self.sources_per_row)
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
    return Packer(prompt_width, response_length, group_size)
