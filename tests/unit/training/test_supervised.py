"""The supervised loop shared by SFT, the reward model and DPO: the non-finite guard and the epoch log."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ppo.training.guarded_step import NonFiniteError
from tf_ppo.training.supervised import SupervisedLoop


def linear_loop(max_consecutive_skips=3):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])

    def loss_fn(batch):  # batch = (x [n, 2], y [n]); a NaN in y makes the loss NaN
        x, y = batch
        return tf.reduce_mean(tf.square(model(x)[:, 0] - y)), {}

    return model, SupervisedLoop("test", [model], loss_fn, keras.optimizers.SGD(0.1),
                                 max_consecutive_skips=max_consecutive_skips)


def batch(value):
    return tf.constant([[1.0, 2.0], [0.5, -1.0]]), tf.constant([value, value])


def test_a_non_finite_step_is_skipped_and_the_others_are_taken():
    model, loop = linear_loop()
    with pytest.warns(UserWarning, match="test step 2 skipped: non-finite"):
        history = loop.fit(lambda epoch: [batch(1.0), batch(float("nan")), batch(-1.0)], epochs=1)
    expected_model, expected_loop = linear_loop()
    expected_loop.fit(lambda epoch: [batch(1.0), batch(-1.0)], epochs=1)
    for got, expected in zip(model.get_weights(), expected_model.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert np.isfinite(history[0]["train_loss"]) and int(loop.step.numpy()) == 3


def test_too_many_non_finite_steps_in_a_row_stop_the_run():
    _, loop = linear_loop(max_consecutive_skips=2)
    with pytest.warns(UserWarning), pytest.raises(NonFiniteError, match="2 test steps in a row skipped"):
        loop.fit(lambda epoch: [batch(float("nan"))] * 3, epochs=1)
