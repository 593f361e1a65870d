"""The maths of the critic-free algorithms (GRPO, RLOO, REINFORCE++), as pure TensorFlow functions.

Rollouts come in groups: the `num_generations` (G) samples of one prompt sit
in one contiguous block of rows, so `scores` `[batch]` reshapes to
`[batch / G, G]`. Token tensors are `[batch, response_len]` with a bool
`mask`, as in `tf_ppo.rl.functional.ppo`, whose masked helpers these functions reuse.

References:
  GRPO: Shao et al. 2024, "DeepSeekMath", sec. 4.1 (outcome supervision).
  Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training", sec. 3.1.
  DAPO: Yu et al. 2025, clip-higher (sec. 3.1), token-level loss (3.3), overlong shaping (3.4).
  RLOO: Ahmadian et al. 2024, "Back to Basics", eq. 4 (leave-one-out baseline).
  REINFORCE++: Hu 2025, "REINFORCE++", sec. 3 (global-batch normalisation); OpenRLHF's definitions.
"""

import numpy as np
import tensorflow as tf

from tf_ppo.rl.functional import masked, ppo

GROUP_STD_EPS = 1e-4  # TRL's GRPO: advantages / (std + 1e-4), so a group of equal rewards gives 0, not NaN
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def grouped(scores, num_generations):
    """`[batch] -> [batch / G, G]`: one row per prompt, its G samples side by side.

    Example:
    >>> grouped(tf.constant([1.0, 2.0, 3.0, 4.0]), 2).numpy().tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    return tf.reshape(scores, [-1, num_generations])


def group_advantages(scores, num_generations, scale_rewards="group"):
    """GRPO's advantage of each sample: its reward minus its group's mean, scaled.

    `scale_rewards`: "group" divides by the group's std (GRPO), "batch" by the
    std of the whole batch, "none" not at all (Dr. GRPO). Stds are unbiased
    (Bessel's n - 1, as TRL's `torch.std`) plus `GROUP_STD_EPS`, so a group
    whose rewards are all equal gets advantage 0.

    Args:
        scores: float `[batch]`, groups of `num_generations` contiguous rows.

    Returns:
        float `[batch]`.

    Example:
    >>> group_advantages(tf.constant([1.0, 3.0, 2.0, 2.0]), 2, "none").numpy().tolist()
    [-1.0, 1.0, 0.0, 0.0]
    """
    groups = grouped(scores, num_generations)
    centred = groups - tf.reduce_mean(groups, axis=1, keepdims=True)
    if scale_rewards == "group":
        centred /= _unbiased_std(groups, axis=1) + GROUP_STD_EPS
    elif scale_rewards == "batch":
        centred /= _unbiased_std(scores, axis=None) + GROUP_STD_EPS
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    return tf.reshape(centred, [-1])


def _unbiased_std(values, axis):
    n = tf.cast(tf.size(values) if axis is None else tf.shape(values)[axis], values.dtype)
    mean = tf.reduce_mean(values, axis=axis, keepdims=axis is not None)
    squares = tf.reduce_sum(tf.square(values - mean), axis=axis, keepdims=axis is not None)
    return tf.sqrt(squares / tf.maximum(n - 1.0, 1.0))


def leave_one_out_advantages(scores, num_generations):
    """RLOO's advantage: each reward minus the mean of the other G - 1 rewards of its group.

    Example:
    >>> leave_one_out_advantages(tf.constant([1.0, 2.0, 6.0]), 3).numpy().tolist()
    [-3.0, -1.5, 4.5]
    """
    # r - (sum - r) / (G - 1) = G / (G - 1) * (r - mean): the same number, and exactly 0 for equal rewards.
    return num_generations / (num_generations - 1.0) * group_centred(scores, num_generations)


def group_centred(scores, num_generations):
    """Each reward minus its group's mean (REINFORCE++-baseline's baseline, before any scaling).

    Example:
    >>> group_centred(tf.constant([1.0, 3.0]), 2).numpy().tolist()
    [-1.0, 1.0]
    """
    return group_advantages(scores, num_generations, "none")


def frac_reward_zero_std(scores, num_generations):
    """The share of groups whose G rewards are all equal: they carry no group-relative learning signal.

    Example:
    >>> float(frac_reward_zero_std(tf.constant([1.0, 1.0, 0.0, 1.0]), 2))
    0.5
    """
    groups = grouped(scores, num_generations)
    equal = tf.reduce_all(tf.equal(groups, groups[:, :1]), axis=1)
    return tf.reduce_mean(tf.cast(equal, scores.dtype))


def reinforce_returns(scores, kl, mask, kl_coef, gamma=1.0):
    """REINFORCE++'s per-token return: the discounted sum of the rewards from each token to the end.

    The per-token reward is `-kl_coef * kl_t`, plus the sequence's score on its
    last real token (`ppo.shaped_rewards`); the returns are GAE's advantages
    with no value and lambda = 1.

    Args:
        scores: float `[batch]`; kl: float `[batch, response_len]`, per-token KL estimates.

    Returns:
        float `[batch, response_len]`, 0 on padding.

    Example:
    >>> reinforce_returns(tf.constant([1.0]), tf.constant([[0.5, 0.5]]), tf.constant([[True, True]]), 0.1).numpy()
    array([[0.9 , 0.95]], dtype=float32)
    """
    mask = masked.as_bool_mask(mask)
    rewards, _ = ppo.shaped_rewards(scores, kl, tf.zeros_like(kl), mask, kl_coef, "k1")  # k1 of kl - 0 is kl
    returns, _ = ppo.gae(rewards, tf.zeros_like(rewards), mask, gamma, 1.0)
    return returns


def sequence_to_tokens(advantages, mask):
    """A sequence-level advantage `[batch]` on every real token of its row `[batch, response_len]`, 0 on padding.

    Example:
    >>> sequence_to_tokens(tf.constant([2.0]), tf.constant([[True, False]])).numpy().tolist()
    [[2.0, 0.0]]
    """
    mask = masked.as_bool_mask(mask)
    spread = tf.broadcast_to(advantages[:, None], tf.shape(mask))
    return tf.where(mask, spread, tf.zeros_like(spread))


def aggregate_token_loss(per_token, mask, loss_type, response_length):
    """One scalar loss from per-token losses, the way `loss_type` weighs tokens and sequences.

    "grpo": each sequence's token mean, then the mean over sequences (long
    responses weigh less per token); "dapo": the mean over every real token of
    the batch; "dr_grpo": the token sum over batch x `response_length` (no
    length bias at all). Inside `strategy.run` with several replicas each
    replica returns its share of the GLOBAL loss (global row and token counts).

    Example:
    >>> per_token = tf.constant([[1.0, 3.0], [2.0, 0.0]]); mask = tf.constant([[True, True], [True, False]])
    >>> [round(float(aggregate_token_loss(per_token, mask, t, 2)), 4) for t in ("grpo", "dapo", "dr_grpo")]
    [2.0, 2.0, 1.5]
    """
    mask = masked.as_bool_mask(mask)
    if loss_type == "dapo":
        return masked.masked_mean(per_token, mask)
    rows = _global_rows(per_token)
    if loss_type == "grpo":
        return tf.reduce_sum(masked.masked_mean(per_token, mask, axis=1)) / rows
    if loss_type == "dr_grpo":
        return masked.masked_sum(per_token, mask) / (rows * response_length)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def _global_rows(per_token):
    rows = tf.cast(tf.shape(per_token)[0], per_token.dtype)
    context = masked.replica_context()
    return rows if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, rows)


def overlong_penalty(lengths, response_length, overlong_buffer, penalty=1.0):
    """DAPO's soft overlong punishment: 0 up to `response_length - overlong_buffer` tokens, then linear to -penalty.

    Args:
        lengths: int or float `[batch]`, response tokens of each row.

    Returns:
        float32 `[batch]`, to add to the scores.

    Example:
    >>> overlong_penalty(tf.constant([4, 6, 8]), 8, 4).numpy().tolist()
    [0.0, -0.5, -1.0]
    """
    excess = tf.cast(lengths, tf.float32) - float(response_length - overlong_buffer)
    return 0.0 - penalty * tf.clip_by_value(excess / float(overlong_buffer), 0.0, 1.0)  # 0.0, not -0.0


def pass_at_k(num_samples, num_correct, k):
    """Unbiased pass@k per problem (Chen et al. 2021, eq. 1): `1 - C(n - c, k) / C(n, k)`, float64 NumPy.

    The chance that at least one of k samples drawn without replacement from
    the n sampled ones is correct; computed as a product, never with factorials.

    Args:
        num_samples: n, samples per problem (an int or `[problems]`), n >= k.
        num_correct: c, correct samples per problem, `[problems]`.

    Example:
    >>> pass_at_k(4, [0, 1, 4], 1).tolist()
    [0.0, 0.25, 1.0]
    >>> round(float(pass_at_k(10, [3], 4)[0]), 4)  # 1 - C(7, 4) / C(10, 4)
    0.8333
    """
    num_correct = np.asarray(num_correct, np.int64)
    num_samples = np.broadcast_to(np.asarray(num_samples, np.int64), num_correct.shape)
    if np.any(num_samples < k) or np.any(num_correct < 0) or np.any(num_correct > num_samples):
        raise ValueError(f"pass_at_k needs 0 <= correct <= samples and samples >= k={k}")
    result = np.ones(num_correct.shape, np.float64)
    for index, (n, c) in enumerate(zip(num_samples.ravel(), num_correct.ravel())):
        if n - c >= k:  # else every draw of k holds a correct one
            result.flat[index] = 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64))
    return result
