"""Sampler-trainer divergence and truncated importance weights against float64 NumPy references (loops)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tests.unit.rl.functional.test_ppo_maths import random_prefix_mask
from tf_ppo.rl.functional import importance, ppo

RNG = np.random.default_rng(7)


def np_weights(p, q, mask, mode, cap):
    """TRL's `vllm_importance_sampling_ratio`, one token at a time; 1 outside the mask."""
    weights = np.ones_like(p)
    for row in range(p.shape[0]):
        sequence = sum(p[row, t] - q[row, t] for t in range(p.shape[1]) if mask[row, t])
        for t in range(p.shape[1]):
            if not mask[row, t]:
                continue
            ratio = math.exp(sequence if mode.startswith("sequence") else p[row, t] - q[row, t])
            if mode.endswith("truncate"):
                weights[row, t] = min(ratio, cap)
            else:
                weights[row, t] = 0.0 if ratio > cap else ratio
    return weights


def random_logprobs(batch=9, length=6, spread=0.6):
    q = -RNG.gamma(2.0, 1.0, size=(batch, length))
    p = q + RNG.normal(scale=spread, size=(batch, length))
    p[:, 0] += 2.0  # some ratios well above the cap
    p[1, :] = np.nan  # NaN in a row whose mask is empty must not leak
    q[1, :] = np.nan
    return p, q, random_prefix_mask(batch, length, RNG)  # rows: 0 empty, 1 one token, 2 full


@pytest.mark.parametrize("mode", importance.IMPORTANCE_SAMPLING_MODES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_importance_weights_match_trl_in_every_mode(mode, dtype):
    p, q, mask = random_logprobs()
    mask[1] = False  # the NaN row is all padding
    got = importance.importance_weights(tf.constant(p, dtype), tf.constant(q, dtype), tf.constant(mask), mode, 2.0)
    np.testing.assert_allclose(got.numpy(), np_weights(p, q, mask, mode, 2.0), rtol=1e-5, atol=1e-6)
    assert np.all(got.numpy()[~mask] == 1.0)


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="token_truncate"):
        importance.importance_weights(tf.zeros([1, 2]), tf.zeros([1, 2]), tf.ones([1, 2], bool), "tokens")


def test_sampler_divergence_against_numpy():
    p, q, mask = random_logprobs()
    mask[1] = False
    got = importance.sampler_divergence(tf.constant(p), tf.constant(q), tf.constant(mask))
    k3 = [math.exp(p[i, t] - q[i, t]) - 1 - (p[i, t] - q[i, t]) for i, t in zip(*np.nonzero(mask))]
    np.testing.assert_allclose(float(got["sampler_kl"]), np.mean(k3), rtol=1e-6)
    np.testing.assert_allclose(float(got["sampler_logprob_diff_max"]), np.max(np.abs(p - q)[mask]), rtol=1e-6)
    nothing = importance.sampler_divergence(tf.constant(p), tf.constant(q), tf.zeros(p.shape, bool))
    assert float(nothing["sampler_kl"]) == 0.0 and float(nothing["sampler_logprob_diff_max"]) == 0.0


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_weighing_the_advantages_weighs_each_tokens_clipped_loss(dual_clip):
    """Why the trainer may multiply the advantages: TRL multiplies the per-token policy loss, and they agree."""
    new, old = RNG.normal(scale=0.3, size=(2, 6, 5))
    advantages = RNG.normal(size=(6, 5))
    weights = np.abs(RNG.normal(size=(6, 5)))
    weights[0] = 0.0  # a masked-out sequence
    weighted_loss, _ = ppo.clipped_surrogate(tf.constant(new), tf.constant(old), tf.constant(advantages * weights),
                                             0.2, 0.28, dual_clip)
    loss, _ = ppo.clipped_surrogate(tf.constant(new), tf.constant(old), tf.constant(advantages), 0.2, 0.28, dual_clip)
    np.testing.assert_allclose(weighted_loss.numpy(), weights * loss.numpy(), rtol=1e-12, atol=1e-12)
