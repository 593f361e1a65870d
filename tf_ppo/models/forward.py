"""The forward pass at response positions: the one path old (rollout) and new (training) log-probs take.

The logits for response token j of row i come from the position before it,
`positions[i, j] - 1`; `response_logits` computes them, for the rollout
scoring and the training step alike, so old and new log-probs take exactly
the same numerical path. It applies the output head (the vocabulary
projection) at those positions only, not over the prompt (`trunk_and_head`).
"""

import tensorflow as tf

from tf_ppo.models.heads import trunk_and_head
from tf_ppo.models.inputs import model_inputs
from tf_ppo.models.packing import packed_outputs


def response_logits(model, sequence_ids, positions, packed=None):
    """Logits predicting each response token: the model's output at `positions - 1`.

    Args:
        model: policy (logits `[batch, S, V]`) or value model (`[batch, S]`).
        sequence_ids: int32 `[batch, S]` rollout buffer.
        positions: int32 `[batch, R]` from `response_view`.
        packed: the same rows packed (`tf_ppo.models.packing.Packer`): computed there, without the padding
            and with each group's prompt once; None = the buffer as it is.

    Returns:
        `[batch, R, V]` logits (or `[batch, R]` values).

    Example:
    >>> from tf_ppo.models import BigramLM
    >>> policy = BigramLM(vocabulary_size=5, hidden_dim=2)
    >>> response_logits(policy, tf.constant([[1, 2, 3]]), tf.constant([[1, 2]])).shape
    TensorShape([1, 2, 5])
    """
    if packed is not None:
        return packed_outputs(model, packed)
    # All-True padding mask: attention is causal, so a response position only
    # sees its prompt and earlier response tokens, never the padding after it.
    inputs = model_inputs(model, sequence_ids)
    split = trunk_and_head(model)
    if split is None:
        outputs = tf.gather(model(inputs, training=False), positions - 1, batch_dims=1)
    else:  # the head (output projection) only where a response token is predicted, not over the prompt
        trunk, head = split
        outputs = head(tf.gather(trunk(inputs, training=False), positions - 1, batch_dims=1))
    # float32 whatever the model's precision: log-softmax, ratios and KL need it.
    return tf.cast(outputs, tf.float32)

