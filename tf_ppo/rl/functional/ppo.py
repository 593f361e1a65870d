"""The PPO maths for language models, as pure TensorFlow functions.

Every tensor here is aligned on response tokens: shape `[batch, response_len]`,
with a boolean `mask` that is True on real response tokens, as in
`tf_ppo.rl.functional.masked`, whose masked sums, means and whitening these use.

References:
  PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7.
  GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", eq. 16.
  KL-penalised reward and adaptive controller: Ziegler et al. 2019,
  "Fine-Tuning Language Models from Human Preferences", sec. 2.2.
  KL estimators k1/k2/k3: Schulman 2020, "Approximating KL Divergence".
"""

import collections

import tensorflow as tf

from tf_ppo.rl.functional.masked import EPS, as_bool_mask, masked_mean, masked_var

def gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimates and returns over the model's tokens.

    delta_t = r_t + gamma * V_next - V_t, A_t = delta_t + gamma * lam * A_next, where "next" is the next
    token the mask marks: the masked-out tokens are taken out of the sequence. Past the last marked token
    V and A are 0 (the episode ends there). In a multi-turn episode the mask marks the model's tokens
    only: an environment's reply is no action, and the value before it bootstraps across it (the model's
    token before the reply takes its V_next from the model's first token after it).

    Args:
        rewards: float `[batch, response_len]`, per-token rewards (those of unmarked tokens are ignored).
        values: float `[batch, response_len]`, V(s_t) before each response token.
        mask: bool `[batch, response_len]`, True on the model's tokens: a prefix of each row in a
            single-turn rollout, with holes where an environment answered in a multi-turn one.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        `(advantages, returns)`, both `[batch, response_len]`, 0 where the mask is False;
        `returns = advantages + values` on marked tokens.

    Example:
    >>> adv, ret = gae(tf.constant([[0.0, 1.0]]), tf.constant([[0.5, 0.5]]), tf.constant([[True, True]]), 1.0, 1.0)
    >>> adv.numpy().tolist(), ret.numpy().tolist()
    ([[0.5, 0.5]], [[1.0, 1.0]])
    >>> adv, _ = gae(tf.constant([[0.0, 7.0, 1.0]]), tf.constant([[0.5, 9.0, 0.5]]),
    ...              tf.constant([[True, False, True]]), 1.0, 1.0)  # the middle token is the environment's
    >>> adv.numpy().tolist()
    [[0.5, 0.0, 0.5]]
    """
    mask = as_bool_mask(mask)
    zeros = tf.zeros_like(rewards)
    rewards = tf.where(mask, rewards, zeros)
    values = tf.where(mask, values, zeros)

    def backward_step(carry, token):
        next_value, next_advantage = carry  # of the next marked token: [batch] each
        reward, value, marked = token
        advantage = reward + gamma * next_value - value + gamma * lam * next_advantage
        return tf.where(marked, value, next_value), tf.where(marked, advantage, next_advantage)

    # tf.scan runs over the leading axis, so scan the time-major transposes, from the end.
    _, advantages = tf.scan(backward_step, (tf.transpose(rewards), tf.transpose(values), tf.transpose(mask)),
                            initializer=(zeros[:, 0], zeros[:, 0]), reverse=True)
    advantages = tf.where(mask, tf.transpose(advantages), zeros)
    return advantages, tf.where(mask, advantages + values, zeros)


def kl_penalty(logprobs, ref_logprobs, estimator="k1"):
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs.

    k1 = log(p/q) (unbiased, can be negative), k2 = (log(p/q))^2 / 2,
    k3 = q/p - 1 - log(q/p) (unbiased and never negative), with p the policy
    and q the reference, evaluated at tokens sampled from p.

    Example:
    >>> float(kl_penalty(tf.constant(-1.0), tf.constant(-2.0), "k1"))
    1.0
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * tf.square(log_ratio)
    if estimator == "k3":
        return tf.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"kl_penalty: estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


def token_kl(logprobs, ref_logprobs, mask, estimator="k1"):
    """`kl_penalty` on real tokens, 0 on padding: `[batch, response_len]`.

    Example:
    >>> token_kl(tf.constant([[-1.0, -1.0]]), tf.constant([[-2.0, 0.0]]), tf.constant([[True, False]])).numpy().tolist()
    [[1.0, 0.0]]
    """
    mask = as_bool_mask(mask)
    return tf.where(mask, kl_penalty(logprobs, ref_logprobs, estimator), tf.zeros_like(logprobs))


def shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator="k1", step_rewards=None):
    """Per-token reward: -kl_coef * KL on each token, plus the score on the last one.

    In a multi-turn episode the mask has holes (the environment's tokens) and "the last one" is the last
    model token; `step_rewards` holds the environment's reward of each step, already on the last model
    token of its turn, and `scores` the rest of the episode's reward.

    Args:
        scores: float `[batch]`, the reward of each whole response (less its step rewards).
        logprobs, ref_logprobs: float `[batch, response_len]`.
        mask: bool `[batch, response_len]`, True on the model's tokens.
        kl_coef: scalar beta.
        step_rewards: float `[batch, response_len]` or None.

    Returns:
        `(rewards, kl)`: `[batch, response_len]` each, 0 on padding. A row with
        no real token gets no reward at all.

    Example:
    >>> r, _ = shaped_rewards(tf.constant([1.0]), tf.zeros([1, 3]), tf.zeros([1, 3]), tf.constant([[True, True, False]]), 0.1)
    >>> r.numpy().tolist()
    [[0.0, 1.0, 0.0]]
    >>> r, _ = shaped_rewards(tf.constant([1.0]), tf.zeros([1, 4]), tf.zeros([1, 4]),
    ...                       tf.constant([[True, False, True, False]]), 0.1, step_rewards=tf.constant([[0.5, 0, 0, 0]]))
    >>> r.numpy().tolist()
    [[0.5, 0.0, 1.0, 0.0]]
    """
    mask = as_bool_mask(mask)
    kl = token_kl(logprobs, ref_logprobs, mask, estimator)
    model_tokens_after = tf.cumsum(tf.cast(mask, tf.int32), axis=1, exclusive=True, reverse=True)  # [batch, R]
    is_last = mask & (model_tokens_after == 0)
    rewards = -kl_coef * kl + tf.where(is_last, scores[:, None], tf.zeros_like(kl))
    if step_rewards is not None:
        rewards = rewards + tf.where(mask, step_rewards, tf.zeros_like(kl))
    return rewards, kl


PolicyLoss = collections.namedtuple("PolicyLoss", ["loss", "clipfrac", "approx_kl"])
ValueLoss = collections.namedtuple("ValueLoss", ["loss", "clipfrac"])


def clipped_surrogate(logprobs, old_logprobs, advantages, cliprange, cliprange_high=None, dual_clip=None):
    """Per-token clipped surrogate loss and where its clip was active, PPO eq. 7 with two extensions.

    loss_t = -min(A * ratio, A * clip(ratio, 1 - eps_low, 1 + eps_high)),
    ratio = exp(logprobs - old_logprobs). `cliprange_high` (DAPO's clip-higher,
    default `cliprange`) lets unlikely tokens grow further; `dual_clip = c > 1`
    (Ye et al. 2020, as OpenRLHF) caps the loss of a negative advantage at
    -c * A, however large the ratio.

    Returns:
        `(loss, clipped)`, both `[batch, response_len]`: the per-token loss and
        a bool that is True where a clip (either one) chose the value.

    Example:
    >>> loss, clipped = clipped_surrogate(tf.constant([[1.0]]), tf.constant([[0.0]]), tf.constant([[-1.0]]), 0.2,
    ...                                   dual_clip=2.0)
    >>> float(loss[0, 0]), bool(clipped[0, 0])  # ratio e = 2.72: the loss -A * ratio is capped at -c * A = 2
    (2.0, True)
    """
    cliprange_high = cliprange if cliprange_high is None else cliprange_high
    ratio = tf.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    loss = tf.maximum(unclipped, -advantages * tf.clip_by_value(ratio, 1.0 - cliprange, 1.0 + cliprange_high))
    clipped = loss > unclipped
    if dual_clip is not None:
        capped = tf.minimum(loss, -dual_clip * advantages)
        loss = tf.where(advantages < 0, capped, loss)
        clipped = clipped | ((advantages < 0) & (capped < unclipped))
    return loss, clipped


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange, cliprange_high=None, dual_clip=None):
    """Clipped surrogate loss (`clipped_surrogate`), averaged over real tokens.

    Returns:
        `PolicyLoss(loss, clipfrac, approx_kl)`: the fraction of tokens where
        a clipped term was chosen, and approx-KL = mean((log ratio)^2) / 2.

    Example:
    >>> out = policy_loss(tf.constant([[0.0]]), tf.constant([[0.0]]), tf.constant([[2.0]]), tf.constant([[True]]), 0.2)
    >>> float(out.loss), float(out.clipfrac)
    (-2.0, 0.0)
    """
    mask = as_bool_mask(mask)
    per_token, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, cliprange, cliprange_high, dual_clip)
    return PolicyLoss(masked_mean(per_token, mask), masked_mean(tf.cast(clipped, logprobs.dtype), mask),
                      0.5 * masked_mean(tf.square(logprobs - old_logprobs), mask))


def value_loss(values, old_values, returns, mask, cliprange_value=None):
    """Clipped value loss, 0.5 * mean(max((V - R)^2, (V_clipped - R)^2)).

    `V_clipped = old_values + clip(values - old_values, -c, c)`; with
    `cliprange_value=None` it is the plain squared error.

    Example:
    >>> out = value_loss(tf.constant([[2.0]]), tf.constant([[0.0]]), tf.constant([[2.0]]), tf.constant([[True]]), 0.5)
    >>> float(out.loss), float(out.clipfrac)
    (1.125, 1.0)
    """
    mask = as_bool_mask(mask)
    unclipped = tf.square(values - returns)
    if cliprange_value is None:
        return ValueLoss(0.5 * masked_mean(unclipped, mask), tf.zeros([], values.dtype))
    clipped_values = old_values + tf.clip_by_value(values - old_values, -cliprange_value, cliprange_value)
    clipped = tf.square(clipped_values - returns)
    loss = 0.5 * masked_mean(tf.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean(tf.cast(clipped > unclipped, values.dtype), mask)
    return ValueLoss(loss, clipfrac)


def explained_variance(values, returns, mask):
    """1 - Var(returns - values) / Var(returns) over real tokens (1 is perfect).

    Example:
    >>> float(explained_variance(tf.constant([1.0, 2.0]), tf.constant([1.0, 2.0]), tf.constant([True, True])))
    1.0
    """
    mask = as_bool_mask(mask)
    return 1.0 - masked_var(returns - values, mask) / (masked_var(returns, mask) + EPS)


class FixedKLController:
    """A constant KL coefficient beta.

    Example:
    >>> FixedKLController(0.1).update(current_kl=5.0, num_rollouts=64)
    0.1
    """

    def __init__(self, kl_coef):
        self.value = tf.Variable(float(kl_coef), dtype=tf.float64, trainable=False, name="kl_coef")

    def update(self, current_kl, num_rollouts):
        return float(self.value.numpy())


class AdaptiveKLController:
    """Ziegler et al. (2019) eq. 2: beta <- beta * (1 + K_beta * e), e = clip(KL/target - 1, -0.2, 0.2).

    K_beta = num_rollouts / horizon. The coefficient is a `tf.Variable`, so it
    is saved with the checkpoint and a resumed run continues with it.

    Example:
    >>> controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    >>> round(controller.update(current_kl=12.0, num_rollouts=100), 6)  # KL too high: beta grows
    0.1002
    """

    def __init__(self, kl_coef, target, horizon):
        self.value = tf.Variable(float(kl_coef), dtype=tf.float64, trainable=False, name="kl_coef")
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl, num_rollouts):
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value.assign(self.value * (1.0 + proportional_error * num_rollouts / self.horizon))
        return float(self.value.numpy())
