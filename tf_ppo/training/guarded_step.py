"""The one guarded optimiser step of every training loop (RL, SFT, reward model, DPO).

A step takes each replica's gradients of its share of the loss, sums them over
the replicas, clips the sum (global norm, or the article's per-value clip) and
applies it with Adam, unless the loss or the gradients are not finite: a NaN or
inf never reaches the weights or Adam's moments. `SkipCounter` counts skipped
steps (or updates) in a row and stops the run after too many.

Example:
    step = GuardedStep(loss_fn, [policy], policy.trainable_variables, optimizer)
    metrics = step(batch)  # {"loss", ..., "grad_norm", "applied"}
"""

import warnings

import keras
import tensorflow as tf

from tf_ppo.config import ConfigError
from tf_ppo.models.einsum import einsum_as_tensordot
from tf_ppo.models.remat import recomputed_blocks
from tf_ppo.training.compiled import compiled
from tf_ppo.training.distribute import reduce_sum


class NonFiniteError(RuntimeError):
    """Too many steps or updates in a row were skipped because of NaN or inf; the message says where."""


class SkipCounter:
    """Skipped steps in a row: warns on each, raises `NonFiniteError` at `limit` (`max_consecutive_skips`).

    Example:
    >>> counter = SkipCounter("updates", limit=2)
    >>> counter.applied(); counter.count
    0
    """

    def __init__(self, unit, limit):
        self.unit, self.limit, self.count = unit, limit, 0

    def applied(self):
        self.count = 0

    def skipped(self, message):
        """Count one skip; `message` says which step and why."""
        self.count += 1
        if self.count >= self.limit:
            raise NonFiniteError(f"{self.count} {self.unit} in a row skipped (max_consecutive_skips={self.limit}); "
                                 f"last: {message}")
        warnings.warn(message)


class GuardedStep:
    """One compiled optimiser step: the replicas' gradients of `loss_fn`, summed, clipped, applied if finite.

    Args:
        loss_fn: `batch -> (loss, metrics)`: one replica's share of the mean
            loss (means over the GLOBAL batch) and of each metric.
        models: the models the loss runs (their blocks are recomputed under
            `gradient_checkpointing`); None entries are ignored.
        variables: the trained variables (the optimizer is built on them here).
        optimizer: a Keras optimizer, built or not.
        strategy: the `tf.distribute.Strategy` the models were built under.
        clip_mode, max_grad_norm: as `clip_gradients`.
        gradient_checkpointing: recompute the transformer blocks' activations.
        jit_compile: XLA for the whole step (one replica only: the loss's global
            means all-reduce token counts, which cannot happen inside XLA).

    Example:
        step = GuardedStep(loss_fn, [policy], policy.trainable_variables, keras.optimizers.Adam(1e-3))
        bool(step(batch)["applied"])
    """

    def __init__(self, loss_fn, models, variables, optimizer, strategy=None, clip_mode="global_norm",
                 max_grad_norm=1.0, gradient_checkpointing=False, jit_compile=False):
        self.loss_fn, self.models, self.variables, self.optimizer = loss_fn, list(models), variables, optimizer
        self.strategy = strategy or tf.distribute.get_strategy()
        self.clip_mode, self.max_grad_norm, self.gradient_checkpointing = clip_mode, max_grad_norm, gradient_checkpointing
        with self.strategy.scope():
            self.optimizer.build(self.variables)  # eagerly, so no slot is created inside a tf.function
        self._step = compiled(self._step_fn, jit_compile=jit_compile and self.strategy.num_replicas_in_sync == 1)

    def __call__(self, batch):
        """One step on a batch already split over the replicas; returns its metrics, `grad_norm` and `applied`."""
        return self._step(batch)

    def _replica_gradients(self, batch):
        # The gradient is taken inside both contexts: with checkpointing, the backward pass reruns the forward.
        with einsum_as_tensordot(), recomputed_blocks(*self.models, enabled=self.gradient_checkpointing):
            with tf.GradientTape() as tape:
                loss, metrics = self.loss_fn(batch)
                scaled_loss = self.optimizer.scale_loss(loss)  # x loss scale under mixed_float16, else the loss
            return tape.gradient(scaled_loss, self.variables), {"loss": loss, **metrics}

    def _step_fn(self, batch):
        gradients, metrics = reduce_sum(self.strategy, self.strategy.run(self._replica_gradients, args=(batch,)))
        grad_norm, applied = guarded_apply(self.optimizer, self.variables, gradients, metrics["loss"],
                                           self.clip_mode, self.max_grad_norm)
        return {**metrics, "grad_norm": grad_norm, "applied": applied}


def guarded_apply(optimizer, variables, gradients, loss, clip_mode="global_norm", max_grad_norm=1.0):
    """Clip the summed `gradients` and apply them, unless the loss or the gradients are not finite.

    A NaN or inf must never reach the weights or Adam's moments. Under a
    `LossScaleOptimizer` the gradients are those of the scaled loss: they are
    unscaled for the norm, and the optimizer sees every step (it skips
    non-finite ones itself and halves its scale: float16 overflow is routine).

    Returns:
        `(grad_norm, applied)`: the global norm before clipping and a bool.

    Example:
    >>> w = tf.Variable([1.0]); optimizer = keras.optimizers.SGD(1.0); optimizer.build([w])
    >>> norm, applied = guarded_apply(optimizer, [w], [tf.constant([float("nan")])], tf.constant(1.0))
    >>> bool(applied), w.numpy().tolist()
    (False, [1.0])
    """
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    gradients = [summed_duplicates(g) for g in gradients]
    if loss_scaled:
        gradients = [g / optimizer.dynamic_scale for g in gradients]
    grad_norm = tf.linalg.global_norm(gradients)
    finite = tf.math.is_finite(loss) & tf.math.is_finite(grad_norm)

    def apply():
        clipped, _ = clip_gradients(gradients, clip_mode, max_grad_norm, global_norm=grad_norm)
        if loss_scaled:
            clipped = [g * optimizer.dynamic_scale for g in clipped]  # it unscales them again
        optimizer.apply_gradients(zip(clipped, variables))
        return tf.constant(True)

    if loss_scaled:
        apply()
        return grad_norm, finite
    return grad_norm, tf.cond(finite, apply, lambda: tf.constant(False))


def summed_duplicates(gradient):
    """A sparse (`tf.IndexedSlices`) gradient with each row once, its slices summed; any other unchanged.

    The gradient of a gather (an embedding lookup) holds one slice per lookup, so a row looked up twice has two
    slices, and `tf.linalg.global_norm` of the raw slices would count them apart: a wrong norm, and a wrong clip.

    Example:
    >>> g = tf.IndexedSlices(tf.constant([[3.0], [4.0]]), tf.constant([0, 0]), tf.constant([2, 1]))
    >>> float(tf.linalg.global_norm([summed_duplicates(g)])), float(tf.linalg.global_norm([g]))
    (7.0, 5.0)
    """
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    rows, slots = tf.unique(gradient.indices)
    return tf.IndexedSlices(tf.math.unsorted_segment_sum(gradient.values, slots, tf.shape(rows)[0]), rows,
                            gradient.dense_shape)


def adam_for(dtype, replicas, learning_rate, epsilon=1e-7):
    """Adam for training in `dtype` (a `PPOConfig.dtype`) on `replicas` replicas; build it under the strategy.

    Under "mixed_float16" it is wrapped in a `LossScaleOptimizer` (float16
    gradients underflow without loss scaling). Keras scales per replica only,
    so "mixed_float16" on several replicas is a ConfigError; "mixed_bfloat16"
    needs no scaling.

    Example:
    >>> type(adam_for("mixed_float16", 1, 1e-3)).__name__
    'LossScaleOptimizer'
    >>> adam_for("mixed_float16", 2, 1e-3)
    Traceback (most recent call last):
    tf_ppo.config.ConfigError: PPOConfig.dtype='mixed_float16' supports one replica, not 2; use 'mixed_bfloat16' (no loss scaling needed)
    """
    if dtype == "mixed_float16" and replicas > 1:
        raise ConfigError(f"PPOConfig.dtype='mixed_float16' supports one replica, not {replicas}; "
                          f"use 'mixed_bfloat16' (no loss scaling needed)")
    optimizer = keras.optimizers.Adam(learning_rate, epsilon=epsilon)
    return keras.optimizers.LossScaleOptimizer(optimizer) if dtype == "mixed_float16" else optimizer


def clip_gradients(gradients, mode="global_norm", threshold=1.0, global_norm=None):
    """Clip gradients by their global norm (default) or each entry to [-threshold, threshold].

    `mode="value"` is the article's `tf.clip_by_value(grad, -1.0, 1.0)`; it
    changes the gradient's direction, which is why global-norm clipping is the
    default. `threshold=None` leaves gradients unchanged. `global_norm`, if
    given, is the gradients' norm measured already (it is not measured again).

    Returns:
        `(clipped_gradients, global_norm)`, the norm measured before clipping.

    Example:
    >>> clipped, norm = clip_gradients([tf.constant([3.0, 4.0])], "global_norm", 1.0)
    >>> clipped[0].numpy().tolist(), float(norm)
    ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    if global_norm is None:
        global_norm = tf.linalg.global_norm(gradients)
    if threshold is None:
        return list(gradients), global_norm
    if mode == "value":
        return [tf.clip_by_value(g, -threshold, threshold) for g in gradients], global_norm
    clipped, _ = tf.clip_by_global_norm(gradients, threshold, use_norm=global_norm)
    return clipped, global_norm
