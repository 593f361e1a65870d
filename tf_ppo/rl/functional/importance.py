"""How far the sampler's log-probs are from the trainer's, and the importance weights that correct for it.

The sampler and the scoring forward pass compute the same policy's log-probs by two numerical paths (a
cached step per token, against one forward pass over the sequence). In float32 they agree to rounding; in
bfloat16, or with another sampling engine, they may not, and the update is then slightly off-policy:
the tokens came from the sampler's distribution q, the loss treats them as drawn from the policy p.

    sampler_divergence   how far apart they are: the k3 estimate of KL(q || p) per token, and the largest
                         per-token |log q - log p| (verl's rollout-correction diagnostics)
    importance_weights   truncated importance sampling (Yao et al. 2025; TRL's
                         `vllm_importance_sampling_correction`): each token's (or response's) p / q, capped
                         or masked above `cap`, multiplies its policy loss

All functions take `[batch, R]` tensors aligned on response tokens with a bool `mask` of the tokens the
policy produced; padding never reaches a result.
"""

import tensorflow as tf

from tf_ppo.rl.functional import masked

IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def sampler_divergence(logprobs, sampler_logprobs, mask):
    """`{"sampler_kl", "sampler_logprob_diff_max"}`: how far the recomputed log-probs are from the sampler's.

    `sampler_kl` is the mean over response tokens of Schulman's k3 estimate of KL(sampler || policy),
    `r - 1 - log r` with `r = p / q` (never negative; unbiased, as the tokens were drawn from the sampler).
    `sampler_logprob_diff_max` is the largest `|log p - log q|` over the response tokens. Both are 0 when
    no token is selected.

    Example:
    >>> out = sampler_divergence(tf.constant([[-1.0, -2.0]]), tf.constant([[-1.0, -2.5]]), tf.constant([[True, True]]))
    >>> round(float(out["sampler_logprob_diff_max"]), 3)
    0.5
    """
    mask = masked.as_bool_mask(mask)
    log_ratio = tf.where(mask, logprobs - sampler_logprobs, tf.zeros_like(logprobs))  # log p - log q
    # expm1 in float64: e^x - 1 - x of a float32 x ~ 1e-6 would be all rounding (~1e-8 against x^2 / 2 ~ 1e-12).
    wide = tf.cast(log_ratio, tf.float64)
    k3 = tf.cast(tf.math.expm1(wide) - wide, log_ratio.dtype)
    return {"sampler_kl": masked.masked_mean(k3, mask),
            "sampler_logprob_diff_max": tf.reduce_max(tf.abs(log_ratio))}


def importance_weights(logprobs, sampler_logprobs, mask, mode="token_truncate", cap=3.0):
    """The truncated importance weights `[batch, R]` of each response token, TRL's four modes.

    Args:
        logprobs: `[batch, R]` the policy's recomputed log-probs p of the sampled tokens.
        sampler_logprobs: `[batch, R]` the sampler's log-probs q of the same tokens.
        mask: bool `[batch, R]`, the tokens the policy produced (an episode's environment tokens are not).
        mode: "token_truncate" (min(p/q, cap) per token), "token_mask" (p/q, 0 above cap),
            "sequence_truncate" / "sequence_mask" (the same with one ratio per response: the product of
            its tokens' ratios).
        cap: the C above which a ratio is truncated or masked.

    Returns:
        float32 `[batch, R]`, 1 on the tokens outside `mask`. The trainer multiplies the advantages by it, which
        weighs each token's policy loss exactly as TRL does (the clipped surrogate is linear in the advantage).

    Example:
    >>> w = importance_weights(tf.constant([[0.0, 2.0]]), tf.constant([[0.0, 0.0]]), tf.constant([[True, True]]))
    >>> [round(x, 3) for x in w.numpy()[0].tolist()]
    [1.0, 3.0]
    """
    if mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(f"mode must be one of {IMPORTANCE_SAMPLING_MODES}, got {mode!r}")
    mask = masked.as_bool_mask(mask)
    log_ratio = tf.where(mask, logprobs - sampler_logprobs, tf.zeros_like(logprobs))  # [batch, R]
    if mode.startswith("sequence"):
        log_ratio = tf.broadcast_to(tf.reduce_sum(log_ratio, axis=1, keepdims=True), tf.shape(log_ratio))
    ratio = tf.exp(log_ratio)
    if mode.endswith("truncate"):
        weights = tf.minimum(ratio, cap)
    else:
        weights = tf.where(ratio > cap, tf.zeros_like(ratio), ratio)
    return tf.where(mask, weights, tf.ones_like(weights))


def corrected_advantages(experience, sampler_logprobs, mode="token_truncate", cap=3.0):
    """`experience` with its advantages weighed by `importance_weights` of its recomputed and sampler log-probs.

    Example:
        experience = corrected_advantages(experience, rollout.sampler_logprobs, "sequence_mask", 2.0)
    """
    weights = importance_weights(experience.logprobs, sampler_logprobs, experience.model_mask, mode, cap)
    return experience._replace(advantages=experience.advantages * weights)
