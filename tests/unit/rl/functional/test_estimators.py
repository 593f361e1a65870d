"""The critic-free algorithms' maths against naive float64 NumPy references (loops welcome).

Edge cases: groups of equal rewards, G = 2, one-token and empty responses,
truncated responses masked out, epsilon_high and dual_clip in their active regions.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.unit.rl.functional.test_ppo_maths import random_prefix_mask, tolerance
from tf_ppo import PPOConfig
from tf_ppo.rl.functional import estimators, ppo
from tf_ppo.rl.algorithms import ALGORITHMS, Experience, Forward, create
from tf_ppo.generation.responses import Responses

RNG = np.random.default_rng(1)


@pytest.fixture(params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


def close(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got), want, rtol=tolerance(dtype), atol=tolerance(dtype))


def scores_with_equal_groups(groups, size):
    scores = RNG.normal(size=(groups, size))
    scores[0] = 0.7  # a group of equal rewards: no learning signal, advantage 0
    return scores.reshape(-1)


def np_std(values):
    return np.std(values, ddof=1) if len(values) > 1 else 0.0


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages(dtype, scale, size):
    scores = scores_with_equal_groups(5, size)
    want = np.zeros_like(scores)
    for g in range(5):
        group = scores[g * size:(g + 1) * size]
        for i, r in enumerate(group):
            centred = r - group.mean()
            divisor = {"group": np_std(group) + 1e-4, "batch": np_std(scores) + 1e-4, "none": 1.0}[scale]
            want[g * size + i] = centred / divisor
    got = estimators.group_advantages(tf.constant(scores, dtype), size, scale)
    close(got, want, dtype)
    assert np.all(np.asarray(got)[:size] == 0.0)  # the equal group: exactly 0, no NaN


@pytest.mark.parametrize("size", [2, 3])
def test_leave_one_out_advantages(dtype, size):
    scores = scores_with_equal_groups(4, size)
    want = np.array([scores[i] - np.mean([scores[j] for j in range(i - i % size, i - i % size + size) if j != i])
                     for i in range(len(scores))])
    got = estimators.leave_one_out_advantages(tf.constant(scores, dtype), size)
    close(got, want, dtype)
    assert np.all(np.abs(np.asarray(got)[:size]) < 1e-6)  # the equal group: 0 (to rounding), no NaN


def test_frac_reward_zero_std():
    scores = np.array([1.0, 1.0, 0.0, 1.0, 2.0, 2.0])
    assert float(estimators.frac_reward_zero_std(tf.constant(scores), 2)) == pytest.approx(2 / 3)


def np_reinforce_returns(scores, kl, mask, beta, gamma=1.0):
    returns = np.zeros_like(kl)
    for b in range(len(scores)):
        n = int(mask[b].sum())
        rewards = [-beta * kl[b, t] + (scores[b] if t == n - 1 else 0.0) for t in range(n)]
        running = 0.0
        for t in reversed(range(n)):
            running = rewards[t] + gamma * running
            returns[b, t] = running
    return returns


def test_reinforce_returns(dtype):
    mask = random_prefix_mask(6, 5, RNG)  # an empty row, a one-token row, a full row
    scores, kl = RNG.normal(size=6), RNG.normal(size=(6, 5))
    got = estimators.reinforce_returns(tf.constant(scores, dtype), tf.constant(kl, dtype), tf.constant(mask), 0.1)
    close(got, np_reinforce_returns(scores, kl, mask, 0.1), dtype)


def np_clipped(logprobs, old, advantages, low, high, dual_clip):
    ratio = np.exp(logprobs - old)
    loss = np.zeros_like(ratio)
    clipped = np.zeros(ratio.shape, bool)
    for index in np.ndindex(ratio.shape):
        a, r = advantages[index], ratio[index]
        unclipped = -a * r
        value = max(unclipped, -a * min(max(r, 1 - low), 1 + high))
        if dual_clip is not None and a < 0:
            value = min(value, -dual_clip * a)
        loss[index], clipped[index] = value, value != unclipped
    return loss, clipped


@pytest.mark.parametrize("high, dual_clip", [(None, None), (0.28, None), (None, 3.0), (0.28, 3.0)])
def test_clipped_surrogate(dtype, high, dual_clip):
    old = -RNG.exponential(size=(8, 9))
    logprobs = old + RNG.normal(scale=0.8, size=(8, 9))  # ratios far on both sides: every clip active
    advantages = RNG.normal(size=(8, 9))
    # Row 0 visits every region: inside clip-higher's extra room, above it, and far below 1 with A < 0.
    logprobs[0, :4] = old[0, :4] + np.log([1.25, 1.5, 5.0, 0.5])
    advantages[0, :4] = [1.0, 1.0, -1.0, -1.0]
    loss, clipped = ppo.clipped_surrogate(*(tf.constant(a, dtype) for a in (logprobs, old, advantages)), 0.2,
                                          high, dual_clip)
    want_loss, want_clipped = np_clipped(logprobs, old, advantages, 0.2, 0.2 if high is None else high, dual_clip)
    close(loss, want_loss, dtype)
    np.testing.assert_array_equal(clipped, want_clipped)
    ratio = np.exp(logprobs - old)
    if high is not None:  # clip-higher is active: ratios between 1.2 and 1.28 with A > 0 go unclipped
        assert np.any((ratio > 1.2) & (ratio < 1 + high) & (advantages > 0))
    if dual_clip is not None:  # the dual clip is active: some negative-advantage losses are capped
        assert np.any(want_loss < -advantages * ratio - 1e-9)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_aggregate_token_loss(dtype, loss_type):
    per_token, mask = RNG.normal(size=(6, 7)), random_prefix_mask(6, 7, RNG)
    row_means = [per_token[b][mask[b]].mean() if mask[b].any() else 0.0 for b in range(6)]
    want = {"grpo": np.mean(row_means), "dapo": per_token[mask].mean(),
            "dr_grpo": per_token[mask].sum() / (6 * 7)}[loss_type]
    close(estimators.aggregate_token_loss(tf.constant(per_token, dtype), tf.constant(mask), loss_type, 7), want,
          dtype)


def test_overlong_penalty():
    got = estimators.overlong_penalty(tf.constant([0, 10, 12, 14, 16]), 16, 4, penalty=0.5).numpy()
    want = [0.0 if n <= 12 else -0.5 * (n - 12) / 4 for n in (0, 10, 12, 14, 16)]
    np.testing.assert_allclose(got, want)


# --- the algorithms' advantages and losses, end to end on one experience batch

BATCH, LENGTH, G = 8, 6, 4


def experience(dtype, ended=None):
    mask = random_prefix_mask(BATCH, LENGTH, RNG)
    logprobs = -RNG.exponential(size=(BATCH, LENGTH))
    responses = Responses(tf.zeros([BATCH, LENGTH], tf.int32), tf.zeros([BATCH, LENGTH], tf.int32),
                          tf.constant(mask))
    loss_mask = mask if ended is None else mask & ended[:, None]
    scores = scores_with_equal_groups(BATCH // G, G)
    return Experience(tf.zeros([BATCH, LENGTH], tf.int32), responses, tf.constant(logprobs, dtype),
                      tf.constant(scores, dtype), tf.constant(loss_mask),
                      ref_logprobs=tf.constant(logprobs + RNG.normal(scale=0.2, size=logprobs.shape), dtype))


def np_k(log_ratio, estimator):
    return {"k1": log_ratio, "k2": 0.5 * log_ratio ** 2, "k3": np.exp(-log_ratio) - 1 + log_ratio}[estimator]


def arrays(experience):
    return {name: np.asarray(getattr(experience, name)) for name in ("logprobs", "ref_logprobs", "scores")} | {
        "mask": np.asarray(experience.responses.mask), "loss_mask": np.asarray(experience.loss_mask)}


def test_rloo_puts_the_whole_response_kl_in_the_reward(dtype):
    batch = experience(dtype)
    algorithm = create(PPOConfig(algorithm="rloo", num_generations=G, batch_size=BATCH, num_mini_batches=1,
                                 kl_estimator="k2"))
    got, _ = algorithm.advantages(batch, tf.constant(0.05, dtype))
    a = arrays(batch)
    kl = np.where(a["mask"], np_k(a["logprobs"] - a["ref_logprobs"], "k2"), 0.0).sum(axis=1)
    rewards = a["scores"] - 0.05 * kl
    baseline = np.array([(rewards[i - i % G: i - i % G + G].sum() - rewards[i]) / (G - 1) for i in range(BATCH)])
    close(got.advantages, np.where(a["mask"], (rewards - baseline)[:, None], 0.0), dtype)


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_whitens_returns_over_the_batch(dtype, name):
    batch = experience(dtype)
    algorithm = create(PPOConfig(algorithm=name, num_generations=G, batch_size=BATCH, num_mini_batches=1))
    got, _ = algorithm.advantages(batch, tf.constant(0.01, dtype))
    a = arrays(batch)
    scores = a["scores"]
    if name == "reinforce_pp_baseline":
        scores = scores - np.repeat(scores.reshape(-1, G).mean(axis=1), G)
    returns = np_reinforce_returns(scores, np.where(a["mask"], a["logprobs"] - a["ref_logprobs"], 0.0), a["mask"],
                                   0.01)
    values = returns[a["mask"]]
    want = np.where(a["mask"], (returns - values.mean()) / np.sqrt(values.var() + 1e-8), 0.0)
    close(got.advantages, want, dtype)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grpo_loss_is_the_clipped_loss_plus_beta_k3(dtype, loss_type):
    ended = np.array([True, False] * (BATCH // 2))  # truncated responses masked out of the loss
    batch = experience(dtype, ended)
    config = PPOConfig(algorithm="grpo", num_generations=G, batch_size=BATCH, num_mini_batches=1, beta=0.04,
                       epsilon_high=0.28, loss_type=loss_type, response_length=LENGTH, max_prompt_length=4,
                       mask_truncated_completions=True)
    algorithm = create(config)
    batch, _ = algorithm.advantages(batch, tf.constant(0.0, dtype))
    a = arrays(batch)
    new_logprobs = a["logprobs"] + RNG.normal(scale=0.3, size=a["logprobs"].shape)
    loss, metrics = algorithm.loss(Forward(tf.constant(new_logprobs, dtype), None), batch)
    per_token, _ = np_clipped(new_logprobs, a["logprobs"], np.asarray(batch.advantages), 0.2, 0.28, None)
    per_token = per_token + 0.04 * np_k(new_logprobs - a["ref_logprobs"], "k3")
    mask = a["loss_mask"]
    rows = [per_token[b][mask[b]].mean() if mask[b].any() else 0.0 for b in range(BATCH)]
    want = {"grpo": np.mean(rows), "dapo": per_token[mask].mean(), "dr_grpo": per_token[mask].sum() / (BATCH * LENGTH)}
    close(loss, want[loss_type], dtype)
    assert float(metrics["kl_loss"]) > 0


def test_dr_grpo_is_grpo_without_std_scaling_and_with_the_fixed_length_sum(dtype):
    batch = experience(dtype)
    common = dict(num_generations=G, batch_size=BATCH, num_mini_batches=1, response_length=LENGTH,
                  max_prompt_length=4)
    dr = create(PPOConfig(algorithm="dr_grpo", **common))
    grpo = create(PPOConfig(algorithm="grpo", scale_rewards="none", loss_type="dr_grpo", **common))
    (dr_batch, _), (grpo_batch, _) = dr.advantages(batch, 0.0), grpo.advantages(batch, 0.0)
    close(dr_batch.advantages, np.asarray(grpo_batch.advantages), dtype)
    forward = Forward(batch.logprobs + 0.1, None)
    close(dr.loss(forward, dr_batch)[0], float(grpo.loss(forward, grpo_batch)[0]), dtype)


def test_every_registered_algorithm_declares_its_models_and_fields():
    for name, cls in ALGORITHMS.items():
        config = PPOConfig(algorithm=name)  # each algorithm's own num_generations
        algorithm = cls(config)
        assert algorithm.uses_value_model == (name == "ppo")
        assert algorithm.num_epochs >= 1 and set(algorithm.fields) <= {f for f in PPOConfig.__dataclass_fields__}
        assert algorithm.num_generations == (1 if name in ("ppo", "reinforce_pp") else 2 if name == "rloo" else 8)
    assert not create(PPOConfig(algorithm="grpo", num_generations=2)).uses_reference  # TRL's beta = 0
    assert create(PPOConfig(algorithm="grpo", num_generations=2, beta=0.04)).uses_reference
