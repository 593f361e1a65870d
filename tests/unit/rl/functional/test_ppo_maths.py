"""The PPO maths against deliberately naive float64 NumPy references (loops welcome)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_ppo.rl.functional import masked, ppo
from tf_ppo.training.guarded_step import clip_gradients

RNG = np.random.default_rng(0)


def random_prefix_mask(batch, length, rng=RNG):
    """Prefix masks with every edge case: an all-padding row, a one-token row, a full row."""
    lengths = rng.integers(0, length + 1, size=batch)
    lengths[:3] = [0, 1, length]
    return np.arange(length)[None, :] < lengths[:, None]


def np_masked_mean(x, mask):
    return x[mask].mean() if mask.any() else 0.0


def np_whiten(x, mask, shift_mean=True):
    values = x[mask]
    out = (x - values.mean()) / np.sqrt(values.var() + 1e-8)
    if not shift_mean:
        out += values.mean()
    return np.where(mask, out, 0.0)


def np_gae(rewards, values, mask, gamma, lam):
    advantages = np.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        n = int(mask[row].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_value = values[row, t + 1] if t + 1 < n else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            last = delta + gamma * lam * last
            advantages[row, t] = last
    return advantages, np.where(mask, advantages + values, 0.0)


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


def tolerance(dtype):
    return 1e-6 if dtype == np.float64 else 1e-5


def test_masked_mean_and_whiten(dtype):
    x = RNG.normal(size=(8, 7))
    mask = random_prefix_mask(8, 7)
    got = masked.masked_mean(tf.constant(x, dtype), tf.constant(mask))
    np.testing.assert_allclose(got, np_masked_mean(x, mask), rtol=tolerance(dtype), atol=tolerance(dtype))
    for shift in (True, False):
        got = masked.whiten(tf.constant(x, dtype), tf.constant(mask), shift_mean=shift)
        np.testing.assert_allclose(got, np_whiten(x, mask, shift), rtol=tolerance(dtype), atol=tolerance(dtype))


def test_whiten_edge_cases():
    mask = tf.constant([[True, True, False]])
    constant = masked.whiten(tf.constant([[2.0, 2.0, 5.0]], tf.float64), mask)  # zero variance: zeros, not NaN
    np.testing.assert_array_equal(constant, [[0.0, 0.0, 0.0]])
    nothing = masked.whiten(tf.constant([[1.0, 2.0]], tf.float64), tf.constant([[False, False]]))
    np.testing.assert_array_equal(nothing, [[0.0, 0.0]])
    assert float(masked.masked_mean(tf.constant([1.0]), tf.constant([False]))) == 0.0


def test_nan_in_padding_never_leaks():
    x = tf.constant([[1.0, 3.0, np.nan, np.inf]], tf.float64)
    mask = tf.constant([[True, True, False, False]])
    assert float(masked.masked_mean(x, mask)) == 2.0
    assert np.all(np.isfinite(masked.whiten(x, mask)))
    advantages, returns = ppo.gae(x, x, mask, 1.0, 0.95)
    assert np.all(np.isfinite(advantages)) and np.all(np.isfinite(returns))
    loss = ppo.policy_loss(x, tf.zeros_like(x), tf.ones_like(x), mask, 0.2)
    assert all(np.isfinite(float(v)) for v in loss)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae(dtype, gamma, lam):
    rewards, values = RNG.normal(size=(2, 6, 9))
    mask = random_prefix_mask(6, 9)
    advantages, returns = ppo.gae(tf.constant(rewards, dtype), tf.constant(values, dtype), tf.constant(mask),
                                  gamma, lam)
    want_advantages, want_returns = np_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(advantages, want_advantages, rtol=tolerance(dtype), atol=tolerance(dtype))
    np.testing.assert_allclose(returns, want_returns, rtol=tolerance(dtype), atol=tolerance(dtype))


def random_episode_mask(batch, length, rng=RNG):
    """Model tokens of multi-turn episodes: the model's turns separated by environment replies (False), then
    padding; with an all-padding row, a row of model tokens only, and one-token turns around a reply."""
    mask = np.zeros([batch, length], bool)
    for row in range(batch):
        position, end = 0, rng.integers(0, length + 1)
        while position < end:  # a model turn, then an environment reply
            turn = rng.integers(1, 4)
            mask[row, position: min(position + turn, end)] = True
            position += turn + rng.integers(1, 4)
    mask[0], mask[1] = False, True
    mask[2] = np.arange(length) < 3
    mask[2, 1] = False  # one model token, a one-token reply, one model token, padding
    return mask


def np_gae_with_holes(rewards, values, mask, gamma, lam):
    """GAE over each row's model tokens alone (the environment's removed), scattered back."""
    advantages = np.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        positions = np.flatnonzero(mask[row])
        compact_advantages, _ = np_gae(rewards[row:row + 1, positions], values[row:row + 1, positions],
                                       np.ones([1, len(positions)], bool), gamma, lam)
        advantages[row, positions] = compact_advantages[0]
    return advantages, np.where(mask, advantages + values, 0.0)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_takes_the_environments_tokens_out_and_bootstraps_across_them(dtype, gamma, lam):
    rewards, values = RNG.normal(size=(2, 12, 16))
    mask = random_episode_mask(12, 16)
    assert any(np.any(np.diff(row.astype(int)) == 1) for row in mask)  # some rows have holes
    rewards_with_noise = np.where(mask, rewards, RNG.normal(size=rewards.shape) * 1e3)  # unmarked: ignored
    advantages, returns = ppo.gae(tf.constant(rewards_with_noise, dtype), tf.constant(values, dtype),
                                  tf.constant(mask), gamma, lam)
    want_advantages, want_returns = np_gae_with_holes(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(advantages, want_advantages, rtol=tolerance(dtype), atol=tolerance(dtype))
    np.testing.assert_allclose(returns, want_returns, rtol=tolerance(dtype), atol=tolerance(dtype))


def test_gae_one_token_and_empty_rows():
    advantages, returns = ppo.gae(tf.constant([[2.0, 9.0], [5.0, 5.0]], tf.float64),
                                  tf.constant([[0.5, 9.0], [1.0, 1.0]], tf.float64),
                                  tf.constant([[True, False], [False, False]]), 1.0, 0.95)
    np.testing.assert_array_equal(advantages, [[1.5, 0.0], [0.0, 0.0]])  # one token: A = r - V
    np.testing.assert_array_equal(returns, [[2.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty(dtype, estimator):
    logprobs, ref_logprobs = -RNG.exponential(size=(2, 5, 7))
    log_ratio = logprobs - ref_logprobs
    want = {"k1": log_ratio, "k2": 0.5 * log_ratio ** 2, "k3": np.exp(-log_ratio) - 1 + log_ratio}[estimator]
    got = ppo.kl_penalty(tf.constant(logprobs, dtype), tf.constant(ref_logprobs, dtype), estimator)
    np.testing.assert_allclose(got, want, rtol=tolerance(dtype), atol=tolerance(dtype))


def test_kl_estimators_agree_with_exact_kl_in_expectation():
    """Sampled from p, k1 and k3 average to KL(p || q) (k3 with lower variance)."""
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.5, 0.3])
    exact = np.sum(p * np.log(p / q))
    samples = np.random.default_rng(1).choice(3, size=200_000, p=p)
    for estimator in ("k1", "k3"):
        estimate = ppo.kl_penalty(tf.constant(np.log(p[samples])), tf.constant(np.log(q[samples])), estimator)
        assert abs(float(tf.reduce_mean(estimate)) - exact) < 5e-3


def test_unknown_kl_estimator():
    with pytest.raises(ValueError, match="estimator must be"):
        ppo.kl_penalty(tf.zeros([1]), tf.zeros([1]), "k4")


def test_entropy_and_logprobs_from_logits(dtype):
    logits = RNG.normal(size=(3, 4, 11)) * 3
    tokens = RNG.integers(0, 11, size=(3, 4))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want_entropy = -(np.exp(log_softmax) * log_softmax).sum(-1)
    want_logprobs = np.take_along_axis(log_softmax, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(masked.entropy_from_logits(tf.constant(logits, dtype)), want_entropy,
                               rtol=tolerance(dtype), atol=tolerance(dtype))
    np.testing.assert_allclose(masked.logprobs_from_logits(tf.constant(logits, dtype), tf.constant(tokens)),
                               want_logprobs, rtol=tolerance(dtype), atol=tolerance(dtype))


def test_shaped_rewards(dtype):
    logprobs, ref_logprobs = -RNG.exponential(size=(2, 6, 5))
    scores = RNG.normal(size=6)
    mask = random_prefix_mask(6, 5)
    rewards, kl = ppo.shaped_rewards(tf.constant(scores, dtype), tf.constant(logprobs, dtype),
                                     tf.constant(ref_logprobs, dtype), tf.constant(mask), 0.3)
    want = np.where(mask, -0.3 * (logprobs - ref_logprobs), 0.0)
    for row in range(6):
        n = mask[row].sum()
        if n:  # the score lands on the last real token; an empty response gets nothing
            want[row, n - 1] += scores[row]
    np.testing.assert_allclose(rewards, want, rtol=tolerance(dtype), atol=tolerance(dtype))
    np.testing.assert_allclose(kl, np.where(mask, logprobs - ref_logprobs, 0.0), rtol=tolerance(dtype),
                               atol=tolerance(dtype))


def test_shaped_rewards_of_episodes_credit_each_step_at_its_turn_and_the_score_at_the_last_model_token(dtype):
    logprobs, ref_logprobs = -RNG.exponential(size=(2, 12, 16))
    scores = RNG.normal(size=12)
    mask = random_episode_mask(12, 16)
    step_rewards = np.zeros_like(logprobs)
    for row in range(12):  # a step reward on the last model token of each turn (each run of True)
        ends = np.flatnonzero(mask[row] & ~np.append(mask[row, 1:], False))
        step_rewards[row, ends] = RNG.normal(size=len(ends))
    rewards, _ = ppo.shaped_rewards(tf.constant(scores, dtype), tf.constant(logprobs, dtype),
                                    tf.constant(ref_logprobs, dtype), tf.constant(mask), 0.3, "k1",
                                    tf.constant(step_rewards, dtype))
    want = np.where(mask, -0.3 * (logprobs - ref_logprobs) + step_rewards, 0.0)
    for row in range(12):
        model_tokens = np.flatnonzero(mask[row])
        if len(model_tokens):
            want[row, model_tokens[-1]] += scores[row]
    np.testing.assert_allclose(rewards, want, rtol=tolerance(dtype), atol=tolerance(dtype))


def np_policy_loss(logprobs, old_logprobs, advantages, mask, eps):
    terms, clipped_count, kl_terms = [], 0, []
    for b, t in zip(*np.nonzero(mask)):
        ratio = np.exp(logprobs[b, t] - old_logprobs[b, t])
        unclipped = -advantages[b, t] * ratio
        clipped = -advantages[b, t] * min(max(ratio, 1 - eps), 1 + eps)
        terms.append(max(unclipped, clipped))
        clipped_count += clipped > unclipped
        kl_terms.append(0.5 * (logprobs[b, t] - old_logprobs[b, t]) ** 2)
    n = max(len(terms), 1)
    return sum(terms) / n, clipped_count / n, sum(kl_terms) / n


def test_policy_loss(dtype):
    old_logprobs = -RNG.exponential(size=(6, 8))
    logprobs = old_logprobs + RNG.normal(scale=0.3, size=(6, 8))  # ratios on both sides of the clip
    advantages = RNG.normal(size=(6, 8))
    mask = random_prefix_mask(6, 8)
    got = ppo.policy_loss(*(tf.constant(a, dtype) for a in (logprobs, old_logprobs, advantages)),
                          tf.constant(mask), 0.2)
    want = np_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2)
    assert 0 < want[1] < 1, "the test data must exercise clipping"
    np.testing.assert_allclose(list(got), want, rtol=tolerance(dtype), atol=tolerance(dtype))


def test_policy_loss_gradient_is_zero_when_clipped():
    logprobs = tf.Variable([[0.5]], dtype=tf.float64)  # ratio e^0.5 > 1.2, positive advantage: clipped
    with tf.GradientTape() as tape:
        loss = ppo.policy_loss(logprobs, tf.zeros([1, 1], tf.float64), tf.ones([1, 1], tf.float64),
                               tf.constant([[True]]), 0.2).loss
    assert float(tape.gradient(loss, logprobs)[0, 0]) == 0.0


def test_value_loss(dtype):
    values, old_values, returns = RNG.normal(size=(3, 5, 6))
    mask = random_prefix_mask(5, 6)
    got = ppo.value_loss(*(tf.constant(a, dtype) for a in (values, old_values, returns)), tf.constant(mask), 0.2)
    clipped_values = old_values + np.clip(values - old_values, -0.2, 0.2)
    unclipped_sq, clipped_sq = (values - returns) ** 2, (clipped_values - returns) ** 2
    want_loss = 0.5 * np_masked_mean(np.maximum(unclipped_sq, clipped_sq), mask)
    want_frac = np_masked_mean((clipped_sq > unclipped_sq).astype(float), mask)
    np.testing.assert_allclose([got.loss, got.clipfrac], [want_loss, want_frac], rtol=tolerance(dtype),
                               atol=tolerance(dtype))
    plain = ppo.value_loss(*(tf.constant(a, dtype) for a in (values, old_values, returns)), tf.constant(mask), None)
    np.testing.assert_allclose(plain.loss, 0.5 * np_masked_mean(unclipped_sq, mask), rtol=tolerance(dtype))


def test_explained_variance():
    values, returns = RNG.normal(size=(2, 4, 5))
    mask = random_prefix_mask(4, 5)
    want = 1 - np.var((returns - values)[mask]) / (np.var(returns[mask]) + 1e-8)
    np.testing.assert_allclose(ppo.explained_variance(tf.constant(values), tf.constant(returns), tf.constant(mask)),
                               want, rtol=1e-6)


def test_clip_gradients():
    gradients = [tf.constant(RNG.normal(size=(3, 4)) * 5), tf.constant(RNG.normal(size=5) * 5)]
    norm = np.sqrt(sum((g.numpy() ** 2).sum() for g in gradients))
    clipped, got_norm = clip_gradients(gradients, "global_norm", 1.0)
    np.testing.assert_allclose(got_norm, norm, rtol=1e-6)
    for g, c in zip(gradients, clipped):
        np.testing.assert_allclose(c, g.numpy() / norm, rtol=1e-6)
    clipped, _ = clip_gradients(gradients, "value", 1.0)
    for g, c in zip(gradients, clipped):
        np.testing.assert_array_equal(c, np.clip(g.numpy(), -1, 1))
    unchanged, _ = clip_gradients(gradients, "global_norm", None)
    np.testing.assert_array_equal(unchanged[0], gradients[0])
    # A norm measured beforehand is used as given, not measured again.
    clipped, got_norm = clip_gradients(gradients, "global_norm", 1.0, global_norm=tf.constant(2 * norm))
    np.testing.assert_allclose(got_norm, 2 * norm, rtol=1e-6)
    np.testing.assert_allclose(clipped[0], gradients[0].numpy() / (2 * norm), rtol=1e-6)


def test_an_embedding_lookups_gradient_is_measured_and_clipped_as_its_dense_sum():
    """A row looked up twice has two sparse slices; the norm and the clip are those of the summed gradient."""
    import keras
    from tf_ppo.training.guarded_step import guarded_apply
    table = tf.Variable(RNG.normal(size=(6, 3)).astype(np.float32))
    ids = tf.constant([[1, 4, 1, 1], [4, 0, 1, 5]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, ids) * tf.constant(RNG.normal(size=(2, 4, 3)), tf.float32))
    sparse = tape.gradient(loss, table)
    assert isinstance(sparse, tf.IndexedSlices)
    dense = tf.convert_to_tensor(sparse).numpy()
    start = table.numpy()
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build([table])
    norm, applied = guarded_apply(optimizer, [table], [sparse], loss, "global_norm", 1.0)
    np.testing.assert_allclose(float(norm), np.linalg.norm(dense), rtol=1e-6)
    np.testing.assert_allclose(table.numpy(), start - dense / np.linalg.norm(dense), rtol=1e-5, atol=1e-6)


def test_adaptive_kl_controller():
    controller = ppo.AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    beta = 0.2
    for kl in (12.0, 3.0, 6.6, 0.0):  # errors clipped to +-0.2
        beta *= 1 + np.clip(kl / 6.0 - 1, -0.2, 0.2) * 64 / 10_000
        assert controller.update(kl, 64) == pytest.approx(beta, rel=1e-12)
    assert ppo.FixedKLController(0.05).update(100.0, 64) == 0.05


# Every public function that takes a mask, called as f(mask) on fixed float64 data.
_X, _Y, _Z = RNG.normal(size=(3, 5, 6))
_SCORES = RNG.normal(size=5)
MASKED_FUNCTIONS = {
    "masked_sum": lambda mask: masked.masked_sum(_X, mask),
    "masked_sum_axis": lambda mask: masked.masked_sum(_X, mask, axis=1),
    "masked_mean": lambda mask: masked.masked_mean(_X, mask),
    "global_masked_mean": lambda mask: masked.global_masked_mean(_X, mask),
    "masked_var": lambda mask: masked.masked_var(_X, mask),
    "whiten": lambda mask: masked.whiten(_X, mask),
    "gae": lambda mask: ppo.gae(_X, _Y, mask, 0.9, 0.95),
    "shaped_rewards": lambda mask: ppo.shaped_rewards(_SCORES, -np.abs(_X), -np.abs(_Y), mask, 0.1),
    "policy_loss": lambda mask: ppo.policy_loss(_X * 0.1, _Y * 0.1, _Z, mask, 0.2),
    "value_loss": lambda mask: ppo.value_loss(_X, _Y, _Z, mask, 0.2),
    "explained_variance": lambda mask: ppo.explained_variance(_X, _Y, mask),
}
BOOL_MASK = random_prefix_mask(5, 6)
NUMERIC_MASKS = {
    "numpy_float32": BOOL_MASK.astype(np.float32),
    "numpy_int64": BOOL_MASK.astype(np.int64),
    "tf_float64": tf.constant(BOOL_MASK, tf.float64),
    "tf_int32": tf.constant(BOOL_MASK, tf.int32),
}


@pytest.mark.parametrize("mask_kind", NUMERIC_MASKS)
@pytest.mark.parametrize("name", MASKED_FUNCTIONS)
def test_numeric_zero_one_mask_gives_the_bool_mask_result(name, mask_kind):
    function = MASKED_FUNCTIONS[name]
    want = tf.nest.map_structure(np.asarray, function(tf.constant(BOOL_MASK)))
    got = tf.nest.map_structure(np.asarray, function(NUMERIC_MASKS[mask_kind]))
    tf.nest.map_structure(np.testing.assert_array_equal, got, want)


def test_numeric_mask_inside_tf_function():
    got = tf.function(lambda mask: ppo.gae(_X, _Y, mask, 0.9, 0.95))(tf.constant(BOOL_MASK, tf.float32))
    want = ppo.gae(_X, _Y, BOOL_MASK, 0.9, 0.95)
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("bad", [[[1.0, 0.5]], [[2, 0]], [[1.0, np.nan]]])
def test_mask_with_other_values_than_zero_and_one_raises(bad):
    with pytest.raises(ValueError, match="mask must be bool or hold only 0 and 1"):
        masked.masked_mean(tf.ones([1, 2]), bad)
    with pytest.raises(ValueError, match="mask must be bool or hold only 0 and 1"):
        masked.as_bool_mask(bad)
