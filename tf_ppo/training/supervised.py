"""The supervised loop of SFT, reward-model training and DPO: one compiled step, one epoch loop.

Each stage gives a `loss_fn(batch) -> (loss, metrics)` for one replica's
share of a batch (means over the GLOBAL batch, as `masked.masked_mean` takes
them inside `strategy.run`, so the replicas' shares add up); the loop does the
rest: gradients, the sum over replicas, global-norm clipping of that sum,
skipping a non-finite step, Adam, checkpoints every few steps with exact
resume, SIGTERM, progress bar, per-epoch evaluation and a per-step log.

Why not `keras.Model.fit` with a `train_step` override: on the TensorFlow
backend Keras clips each replica's gradients before summing them
(`BaseOptimizer.apply` clips, then `_backend_update_step` all-reduces), which
is not the clipped global gradient; and `BackupAndRestore` resumes an
interrupted epoch from its first batch, so a run killed mid-epoch would not
end at the weights of one that was not.

Example:
    loop = SupervisedLoop("SFT", [policy], loss_fn, optimizer)
    history = loop.fit(lambda epoch: batches, epochs=2)
"""

import contextlib
import json
import pathlib
import signal
import threading
import warnings

import keras
import tensorflow as tf
from tqdm.auto import tqdm

from tf_ppo.rl.functional import masked, ppo
from tf_ppo.training.checkpoints import restore_latest, write_atomically
from tf_ppo.training.compiled import compiled
from tf_ppo.config import ConfigError
from tf_ppo.training.distribute import reduce_sum, split_batch
from tf_ppo.models.einsum import einsum_as_tensordot
from tf_ppo.models.remat import recomputed_blocks
from tf_ppo.training.reporting import RunLog


class NonFiniteError(RuntimeError):
    """Too many steps or updates in a row were skipped because of NaN or inf; the message says where."""


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
    if loss_scaled:
        gradients = [g / optimizer.dynamic_scale for g in gradients]
    grad_norm = tf.linalg.global_norm(gradients)
    finite = tf.math.is_finite(loss) & tf.math.is_finite(grad_norm)

    def apply():
        clipped, _ = ppo.clip_gradients(gradients, clip_mode, max_grad_norm, global_norm=grad_norm)
        if loss_scaled:
            clipped = [g * optimizer.dynamic_scale for g in clipped]  # it unscales them again
        optimizer.apply_gradients(zip(clipped, variables))
        return tf.constant(True)

    if loss_scaled:
        apply()
        return grad_norm, finite
    return grad_norm, tf.cond(finite, apply, lambda: tf.constant(False))


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


@contextlib.contextmanager
def sigterm_stops(on_stop):
    """While inside, SIGTERM (a cloud preemption) calls `on_stop()` instead of killing the process.

    The loop then checkpoints after the step in flight and returns. Signal
    handlers can only be installed from the main thread; elsewhere this does nothing.

    Example:
        with sigterm_stops(lambda: setattr(loop, "stop_training", True)):
            ...
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        on_stop()
        tqdm.write("SIGTERM: saving a checkpoint after the step in flight, then stopping")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class SupervisedLoop:
    """One compiled optimiser step over `models` and the epoch loop around it.

    Args:
        name: shown on the progress bar ("SFT", "reward model", "DPO").
        models: the Keras models whose trainable variables are trained (shared
            variables are trained once).
        loss_fn: `batch -> (loss, metrics)`: one replica's share of the mean
            loss and of each metric (a dict of scalars).
        optimizer: a built or unbuilt Keras optimizer (built here).
        strategy: the `tf.distribute.Strategy` the models were built under.
        clip_mode, max_grad_norm: as `ppo.clip_gradients`.
        gradient_checkpointing: recompute the transformer blocks' activations.
        jit_compile: XLA for the whole step (one replica only).
        max_consecutive_skips: non-finite steps in a row before `NonFiniteError`.

    Example:
        loop = SupervisedLoop("SFT", [policy], loss_fn, keras.optimizers.Adam(1e-3))
        metrics = loop.train_step(batch)
    """

    def __init__(self, name, models, loss_fn, optimizer, strategy=None, clip_mode="global_norm",
                 max_grad_norm=1.0, gradient_checkpointing=False, jit_compile=False, max_consecutive_skips=3):
        self.name, self.models, self.loss_fn, self.optimizer = name, list(models), loss_fn, optimizer
        self.strategy = strategy or tf.distribute.get_strategy()
        self.clip_mode, self.max_grad_norm = clip_mode, max_grad_norm
        self.gradient_checkpointing, self.max_consecutive_skips = gradient_checkpointing, max_consecutive_skips
        self.variables = list({id(v): v for model in self.models for v in model.trainable_variables}.values())
        with self.strategy.scope():
            self.optimizer.build(self.variables)  # eagerly, so no slot is created inside a tf.function
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # steps taken, for resume
            # The running sums of the epoch in flight: a run resumed mid-epoch reports the same epoch loss.
            self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
            self.epoch_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_steps")
        self.stop_training = False
        self.preempted = False
        self._step = compiled(self._step_fn, jit_compile=jit_compile and self.strategy.num_replicas_in_sync == 1)

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

    def train_step(self, batch):
        """One compiled optimiser step on a batch already split over the replicas; returns its metrics."""
        return self._step(batch)

    def fit(self, dataset_fn, epochs, evaluate=None, checkpoint_dir=None, checkpoint_every=0, log_dir=None,
            show_progress=True):
        """Train `epochs` passes; resume from `checkpoint_dir` if it holds checkpoints.

        Args:
            dataset_fn: `epoch -> list of batches` (split over the replicas),
                the same for the same epoch: a resumed run skips the batches
                its checkpoint had already trained on.
            epochs: total epochs.
            evaluate: `() -> dict` of held-out metrics after each epoch.
            checkpoint_dir: a checkpoint after every epoch (and every
                `checkpoint_every` steps, if > 0), of the models, the optimizer
                and the loop's counters, with `history.json`.
            log_dir: if set, every step's metrics go to `metrics.csv` and
                TensorBoard there (column `step`).

        Returns:
            One dict per epoch: `epoch`, `train_loss` (mean over the epoch's
            applied steps) and the `evaluate()` keys.
        """
        evaluate = evaluate or dict
        history, manager = [], None
        if checkpoint_dir is not None:
            checkpoint_dir = pathlib.Path(checkpoint_dir)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            checkpoint = tf.train.Checkpoint(step=self.step, epoch_loss_sum=self.epoch_loss_sum,
                                             epoch_steps=self.epoch_steps, optimizer=self.optimizer,
                                             **{f"model_{i}": m for i, m in enumerate(self.models)})
            manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
        if manager is not None and restore_latest(manager, checkpoint):
            # history.json is written just before each checkpoint, so a crash between the two leaves it ahead:
            # keep only the epochs the restored checkpoint had finished.
            epochs_done = int(self.step.numpy()) // len(dataset_fn(1))
            history = json.loads((checkpoint_dir / "history.json").read_text())[:epochs_done]
        done = int(self.step.numpy())
        log = RunLog(log_dir, keep_updates=done, index="step") if log_dir is not None else None
        skips = 0
        with sigterm_stops(self._request_stop):
            for epoch in range(len(history) + 1, epochs + 1):
                batches = dataset_fn(epoch)
                skip = done - (epoch - 1) * len(batches)  # > 0: this epoch was begun before the checkpoint
                for batch in tqdm(batches[max(skip, 0):], desc=f"{self.name} epoch {epoch}/{epochs}",
                                  disable=not show_progress, leave=False):
                    metrics = {k: float(v) for k, v in self.train_step(batch).items()}
                    skips = 0 if metrics.pop("applied") else skips + 1
                    if skips:
                        self._skipped(skips, int(self.step.numpy()) + 1)
                    else:
                        self.epoch_loss_sum.assign_add(metrics["loss"])
                        self.epoch_steps.assign_add(1)
                    self.step.assign_add(1)
                    step = int(self.step.numpy())
                    end_of_epoch = step == epoch * len(batches)
                    if end_of_epoch:
                        history.append(self._epoch_row(epoch, evaluate()))
                        metrics.update({k: v for k, v in history[-1].items() if k not in ("epoch", "train_loss")})
                        if show_progress:
                            tqdm.write(f"{self.name} epoch {epoch}: " + ", ".join(
                                f"{k} {v:.4f}" for k, v in history[-1].items() if k != "epoch"))
                    if log is not None:
                        log.write(step, {"epoch": epoch, **metrics})
                    if manager is not None and (end_of_epoch or self.stop_training
                                                or (checkpoint_every and step % checkpoint_every == 0)):
                        write_atomically(checkpoint_dir / "history.json", json.dumps(history))
                        manager.save(checkpoint_number=step)
                    if self.stop_training:
                        break
                if self.stop_training:
                    break
        if log is not None:
            log.close()
        return history

    def _epoch_row(self, epoch, evaluation):
        steps = int(self.epoch_steps.numpy())
        row = {"epoch": epoch, "train_loss": float(self.epoch_loss_sum.numpy()) / steps if steps else float("nan"),
               **evaluation}
        self.epoch_loss_sum.assign(0.0)
        self.epoch_steps.assign(0)
        return row

    def _skipped(self, skips, step):
        message = f"{self.name} step {step} skipped: non-finite loss or gradients"
        if skips >= self.max_consecutive_skips:
            raise NonFiniteError(f"{skips} {self.name} steps in a row skipped (max_consecutive_skips="
                                 f"{self.max_consecutive_skips}); last: {message}")
        warnings.warn(message)

    def _request_stop(self):
        self.preempted = self.stop_training = True


def epoch_batches(tensors, batch_size, seed, epoch, strategy, drop_remainder=True):
    """The batches of one epoch: `tensors` (a nest, batch-major) shuffled by `seed + epoch`, split per replica.

    The same `(seed, epoch)` gives the same batches, which exact resume relies on.

    Example:
    >>> batches = epoch_batches(tf.range(4), 2, 0, 1, tf.distribute.get_strategy())
    >>> len(batches), sorted(sum((b.numpy().tolist() for b in batches), []))
    (2, [0, 1, 2, 3])
    """
    rows = int(tf.nest.flatten(tensors)[0].shape[0])
    dataset = tf.data.Dataset.from_tensor_slices(tensors).shuffle(rows, seed=seed + epoch)
    return [split_batch(strategy, batch) for batch in dataset.batch(batch_size, drop_remainder=drop_remainder)]
