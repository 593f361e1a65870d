"""The DPO-family losses against float64 NumPy references, with their edge cases."""

import numpy as np
import pytest
import tensorflow as tf

from tf_ppo.preference.losses import DPO_LOSS_TYPES, preference_loss


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def reference_losses(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, smoothing, chosen_len, rejected_len):
    """The papers' definitions, float64, one pair at a time."""
    losses = []
    for c, r, rc, rr, lc, lr in zip(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len):
        d = beta * ((c - rc) - (r - rr))
        if loss_type == "sigmoid":
            losses.append(-(1 - smoothing) * log_sigmoid(d) - smoothing * log_sigmoid(-d))
        elif loss_type == "robust":
            losses.append((-(1 - smoothing) * log_sigmoid(d) + smoothing * log_sigmoid(-d)) / (1 - 2 * smoothing))
        elif loss_type == "hinge":
            losses.append(max(0.0, 1 - d))
        else:
            losses.append(((c - rc) / max(lc, 1) - (r - rr) / max(lr, 1) - 1 / (2 * beta)) ** 2)
    return np.array(losses)


def random_pairs(dtype, pairs=64, seed=0):
    rng = np.random.default_rng(seed)
    logps = [rng.normal(-20.0, 8.0, pairs) for _ in range(4)]
    lengths = [rng.integers(0, 30, pairs), rng.integers(0, 30, pairs)]  # 0: an empty response
    return [tf.constant(x, dtype) for x in logps], [tf.constant(x) for x in lengths], logps, lengths


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
@pytest.mark.parametrize("dtype, tolerance", [(tf.float64, 1e-6), (tf.float32, 1e-5)])
@pytest.mark.parametrize("beta, smoothing", [(0.1, 0.0), (0.5, 0.2)])
def test_losses_and_rewards_match_the_float64_reference(loss_type, dtype, tolerance, beta, smoothing):
    tensors, lengths, arrays, array_lengths = random_pairs(dtype)
    result = preference_loss(*tensors, beta=beta, loss_type=loss_type, label_smoothing=smoothing,
                             chosen_lengths=lengths[0], rejected_lengths=lengths[1])
    expected = reference_losses(*arrays, beta, loss_type, smoothing, *array_lengths)
    np.testing.assert_allclose(result.losses.numpy(), expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(result.chosen_rewards.numpy(), beta * (arrays[0] - arrays[2]), rtol=tolerance,
                               atol=tolerance)
    np.testing.assert_allclose(result.rejected_rewards.numpy(), beta * (arrays[1] - arrays[3]), rtol=tolerance,
                               atol=tolerance)


def test_equal_log_ratios_give_the_loss_at_zero_margin():
    same = tf.constant([-5.0, -7.0], tf.float64)
    ones = tf.constant([1, 1])
    for loss_type, at_zero in [("sigmoid", np.log(2.0)), ("robust", np.log(2.0)), ("hinge", 1.0),
                               ("ipo", (1 / (2 * 0.1)) ** 2)]:
        result = preference_loss(same, same, same, same, loss_type=loss_type, chosen_lengths=ones,
                                 rejected_lengths=ones)
        np.testing.assert_allclose(result.losses.numpy(), [at_zero] * 2, rtol=1e-12)
        np.testing.assert_array_equal(result.chosen_rewards.numpy(), [0.0, 0.0])


def test_the_gradient_raises_the_chosen_response_and_never_reaches_the_reference():
    chosen, rejected = tf.Variable([-4.0]), tf.Variable([-4.0])
    ref_chosen, ref_rejected = tf.Variable([-4.0]), tf.Variable([-4.0])
    for loss_type in DPO_LOSS_TYPES:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(preference_loss(chosen, rejected, ref_chosen, ref_rejected, loss_type=loss_type,
                                                 chosen_lengths=[3], rejected_lengths=[3]).losses)
        d_chosen, d_rejected, d_ref_chosen, d_ref_rejected = tape.gradient(
            loss, [chosen, rejected, ref_chosen, ref_rejected])
        assert d_chosen.numpy()[0] < 0 < d_rejected.numpy()[0], loss_type  # descent raises chosen, lowers rejected
        assert d_ref_chosen is None and d_ref_rejected is None


def test_robust_without_label_noise_is_dpo_and_a_large_margin_stays_finite():
    tensors, _, _, _ = random_pairs(tf.float32, seed=3)
    np.testing.assert_allclose(preference_loss(*tensors, loss_type="robust").losses.numpy(),
                               preference_loss(*tensors, loss_type="sigmoid").losses.numpy(), rtol=1e-6)
    huge = preference_loss(tf.constant([0.0]), tf.constant([-1e4]), tf.constant([-1e4]), tf.constant([0.0]),
                           beta=1.0, label_smoothing=0.1)
    assert np.isfinite(huge.losses.numpy()).all()


def test_unknown_loss_type_and_ipo_without_lengths_are_errors():
    one = tf.constant([0.0])
    with pytest.raises(ValueError, match="loss_type must be one of"):
        preference_loss(one, one, one, one, loss_type="kto")
    with pytest.raises(ValueError, match="needs chosen_lengths and rejected_lengths"):
        preference_loss(one, one, one, one, loss_type="ipo")
