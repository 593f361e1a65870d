"""The supervised loop shared by SFT, the reward model and DPO: the non-finite guard, the epoch log, Ctrl-C."""

import os
import signal

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


# Ctrl-C: a signal the loop sends itself during a step, as a terminal or a notebook's interrupt button would.
EPOCHS_OF = [[batch(1.0), batch(-1.0), batch(0.5)]] * 2


@pytest.fixture
def python_ctrl_c():
    """SIGINT as in a plain Python process (`KeyboardInterrupt`), whatever the test runner had set."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield before
    signal.signal(signal.SIGINT, before)


def ctrl_c_during_step(loop, step, presses=1):
    """Press Ctrl-C `presses` times while the loop's step `step` runs."""
    train_step = loop.train_step

    def step_with_ctrl_c(batch):
        if int(loop.step.numpy()) + 1 == step:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return train_step(batch)

    loop.train_step = step_with_ctrl_c


def test_ctrl_c_checkpoints_the_step_in_flight_and_a_rerun_ends_at_the_uninterrupted_weights(tmp_path, python_ctrl_c):
    straight_model, straight_loop = linear_loop()
    straight_loop.fit(lambda epoch: EPOCHS_OF[epoch - 1], epochs=2)
    model, loop = linear_loop()
    ctrl_c_during_step(loop, 2)
    try:
        history = loop.fit(lambda epoch: EPOCHS_OF[epoch - 1], epochs=2, checkpoint_dir=tmp_path)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended the loop instead of stopping it after the step in flight")
    assert loop.outcome() == {"preempted": False, "interrupted": True, "steps_done": 2, "total_steps": 6}
    assert history == [] and tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C quits again outside the loop

    resumed_model, resumed_loop = linear_loop()
    history = resumed_loop.fit(lambda epoch: EPOCHS_OF[epoch - 1], epochs=2, checkpoint_dir=tmp_path)
    assert [row["epoch"] for row in history] == [1, 2] and not resumed_loop.interrupted
    for got, expected in zip(resumed_model.get_weights(), straight_model.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_second_ctrl_c_raises_keyboard_interrupt_at_once(tmp_path, python_ctrl_c):
    _, loop = linear_loop()
    ctrl_c_during_step(loop, 2, presses=2)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(lambda epoch: EPOCHS_OF[epoch - 1], epochs=2, checkpoint_dir=tmp_path)
    assert int(loop.step.numpy()) == 1  # step 2 never ran
    assert tf.train.latest_checkpoint(str(tmp_path)) is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_checkpoint_dir_ctrl_c_raises_as_usual(python_ctrl_c):
    """Stopped early with nowhere to save, the loop would hand back a half-trained model as a finished one."""
    _, loop = linear_loop()
    ctrl_c_during_step(loop, 2)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(lambda epoch: EPOCHS_OF[epoch - 1], epochs=2)
    assert not loop.interrupted
