"""Masked maths on token-aligned tensors, as pure TensorFlow functions: sums, means, whitening, log-probs.

Every tensor here is aligned on tokens, shape `[batch, length]`, with a boolean
`mask` that is True on the tokens that count (real response tokens) and False on
padding. A numeric 0/1 mask (the PyTorch and TRL habit; float or int, TensorFlow
or NumPy) is accepted too: every public function converts it once with
`as_bool_mask`. Masked positions are excluded with `tf.where`, never by
multiplication, so a NaN or inf sitting in padding cannot leak into a result
(NaN * 0 is NaN). SFT, the reward model, DPO and every RL algorithm use them.
"""

import tensorflow as tf


EPS = 1e-8  # keeps a whitening or variance ratio finite when the variance is 0


def as_bool_mask(mask):
    """A bool mask from a bool one or a numeric 0/1 one (float or int, TensorFlow or NumPy).

    Eagerly, a numeric mask holding anything but 0 and 1 raises; inside
    `tf.function` it is not checked (a check there would cost an assert op
    per call), and any non-zero value counts as True.

    Raises:
        ValueError: eagerly, a numeric mask with a value other than 0 or 1.

    Example:
    >>> as_bool_mask([[1.0, 1.0, 0.0]]).numpy().tolist()
    [[True, True, False]]
    """
    mask = tf.convert_to_tensor(mask)
    if mask.dtype == tf.bool:
        return mask
    if tf.executing_eagerly():
        others = tf.boolean_mask(mask, tf.logical_and(tf.not_equal(mask, 0), tf.not_equal(mask, 1)))
        if tf.size(others) > 0:
            raise ValueError(f"mask must be bool or hold only 0 and 1, got {mask.dtype.name} values such as "
                             f"{others.numpy()[:3].tolist()}")
    return tf.not_equal(mask, tf.zeros([], mask.dtype))


def masked_sum(values, mask, axis=None):
    """Sum of `values` where `mask` is True.

    Example:
    >>> float(masked_sum(tf.constant([1.0, 2.0, float("nan")]), tf.constant([True, True, False])))
    3.0
    """
    mask = as_bool_mask(mask)
    values = tf.convert_to_tensor(values)
    return tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)), axis=axis)


def masked_mean(values, mask, axis=None):
    """Mean of `values` where `mask` is True; 0 where nothing is selected.

    Inside `strategy.run` of a multi-replica tf.distribute strategy, the full
    mean (`axis=None`) divides this replica's sum by the GLOBAL count of
    selected values: each replica returns its share, and the shares (and
    their gradients, which the optimizer sums) add up to the global mean.

    Example:
    >>> float(masked_mean(tf.constant([[1.0, 3.0], [5.0, 9.0]]), tf.constant([[True, True], [True, False]])))
    3.0
    """
    mask = as_bool_mask(mask)
    values = tf.convert_to_tensor(values)
    count = tf.reduce_sum(tf.cast(mask, values.dtype), axis=axis)
    context = replica_context()
    if axis is None and context is not None:
        count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return masked_sum(values, mask, axis) / tf.maximum(count, 1.0)


def global_masked_mean(values, mask):
    """The mean over every replica's selected values (equal on all replicas); `masked_mean` on one.

    Example:
    >>> float(global_masked_mean(tf.constant([1.0, 3.0]), tf.constant([True, True])))
    2.0
    """
    mask = as_bool_mask(mask)
    share = masked_mean(values, mask)
    context = replica_context()
    return share if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, share)


def masked_var(values, mask):
    """Population variance (divide by n) of the selected values (across replicas); 0 for none or one.

    Example:
    >>> float(masked_var(tf.constant([1.0, 3.0, 100.0]), tf.constant([True, True, False])))
    1.0
    """
    mask = as_bool_mask(mask)
    mean = global_masked_mean(values, mask)
    return global_masked_mean(tf.square(values - mean), mask)


def replica_context():
    """The replica context when several replicas run in sync, else None (one replica, or cross-replica code).

    Example:
    >>> replica_context() is None  # outside any multi-replica strategy.run
    True
    """
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def whiten(values, mask, shift_mean=True):
    """Normalise the selected values to mean 0 (unless `shift_mean=False`) and std 1.

    Zero-variance inputs give zeros (or the unchanged mean when not shifting);
    masked positions come out as 0.

    Example:
    >>> whiten(tf.constant([1.0, 3.0, 7.0]), tf.constant([True, True, False])).numpy().round(3).tolist()
    [-1.0, 1.0, 0.0]
    """
    mask = as_bool_mask(mask)
    mean = global_masked_mean(values, mask)  # statistics of the global batch, also under tf.distribute
    whitened = (values - mean) * tf.math.rsqrt(masked_var(values, mask) + EPS)
    if not shift_mean:
        whitened += mean
    return tf.where(mask, whitened, tf.zeros_like(whitened))


def entropy_from_logits(logits):
    """Entropy of softmax(logits) over the last axis, in nats.

    Example:
    >>> round(float(entropy_from_logits(tf.zeros([4]))), 4)  # uniform over 4: log 4
    1.3863
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1)


def logprobs_from_logits(logits, token_ids):
    """log softmax(logits)[token] for each position: `[..., V], [...] -> [...]`.

    Example:
    >>> round(float(logprobs_from_logits(tf.zeros([1, 4]), tf.constant([2]))[0]), 4)
    -1.3863
    """
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return tf.gather(log_probs, token_ids, axis=-1, batch_dims=len(token_ids.shape))
