"""Callbacks of an RL run: `tf_ppo.Callback` (`on_update_end`) and Keras callbacks, for which one update is one epoch.

Keras callbacks see the policy as their `model` and an update's metrics as the
epoch's logs: `EarlyStopping`, `TerminateOnNaN` (reads `loss`) and `CSVLogger`
work as with `fit`.
"""

import keras


class Callback:
    """Base class for callbacks; `self.trainer` is set before training starts.

    Set `self.trainer.stop_training = True` to stop after the current update.

    Example:
    >>> class StopAtScore(Callback):
    ...     def on_update_end(self, update, logs):
    ...         if logs["score_mean"] > 0.8:
    ...             self.trainer.stop_training = True
    """

    trainer = None

    def on_update_end(self, update, logs):
        pass


class UpdateCallbacks:
    """The run's callbacks of both kinds, called at the start, after each update and at the end.

    Example:
        callbacks = UpdateCallbacks([keras.callbacks.EarlyStopping(monitor="score_mean")], trainer)
        callbacks.begin(); stop = callbacks.update_end(1, {"score_mean": 0.5})
    """

    def __init__(self, callbacks, trainer):
        self.ours, self.keras_ones = split_callbacks(callbacks)  # a wrong callback fails before any model is built
        self.trainer = trainer
        self.keras = None

    def append(self, callback):
        """Add a callback of either kind before training starts."""
        ours, keras_ones = split_callbacks([callback])
        self.ours += ours
        self.keras_ones += keras_ones

    def begin(self):
        self.keras = keras.callbacks.CallbackList(self.keras_ones, model=self.trainer.policy)
        for callback in self.ours:
            callback.trainer = self.trainer
        self.trainer.policy.stop_training = False  # EarlyStopping sets `model.stop_training`
        self.keras.on_train_begin()

    def update_end(self, update, logs):
        """Every callback's hook for update `update` (Keras' epoch `update - 1`); True when one asks to stop."""
        for callback in self.ours:
            callback.on_update_end(update, logs)
        self.keras.on_epoch_begin(update - 1)
        self.keras.on_train_batch_end(0, logs)  # TerminateOnNaN reads `loss` here
        self.keras.on_epoch_end(update - 1, dict(logs))
        if self.trainer.policy.stop_training:
            print(f"update {update}: {self._stopper(update)} stopped the run", flush=True)
        return self.trainer.policy.stop_training

    def _stopper(self, update):
        """Which Keras callback set `model.stop_training` at `update`, in words."""
        for callback in self.keras_ones:
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.stopped_epoch == update - 1:
                return (f"EarlyStopping ({callback.monitor} did not improve for {callback.patience} "
                        f"updates; best {callback.best:.4g} at update {callback.best_epoch + 1})")
        return "a Keras callback (" + ", ".join(type(callback).__name__ for callback in self.keras_ones) + ")"

    def end(self, last_logs):
        self.keras.on_train_end(last_logs)


def split_callbacks(callbacks):
    """`(tf_ppo callbacks, Keras callbacks)`; anything else is an error now, not after an update.

    Example:
    >>> split_callbacks([print])
    Traceback (most recent call last):
    ...
    TypeError: callbacks[0] is a builtin_function_or_method, not a callback: pass a tf_ppo.Callback (on_update_end(update, logs)) or a keras.callbacks.Callback
    """
    ours, keras_ones = [], []
    for index, callback in enumerate(callbacks):
        if isinstance(callback, Callback):
            ours.append(callback)
        elif isinstance(callback, keras.callbacks.Callback):
            keras_ones.append(callback)
        else:
            raise TypeError(f"callbacks[{index}] is a {type(callback).__name__}, not a callback: pass a "
                            f"tf_ppo.Callback (on_update_end(update, logs)) or a keras.callbacks.Callback")
    return ours, keras_ones
