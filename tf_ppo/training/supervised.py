"""The supervised loop of SFT, reward-model training and DPO: one compiled step, one epoch loop.

Each stage gives a `loss_fn(batch) -> (loss, metrics)` for one replica's
share of a batch (means over the GLOBAL batch, as `masked.masked_mean` takes
them inside `strategy.run`, so the replicas' shares add up); the loop does the
rest: gradients, the sum over replicas, global-norm clipping of that sum,
skipping a non-finite step, Adam, checkpoints every few steps with exact
resume, SIGTERM and Ctrl-C (a checkpoint after the step in flight, then
stop), progress bar, per-epoch evaluation and a per-step log.

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

import tensorflow as tf
from tqdm.auto import tqdm

from tf_ppo.training.checkpoints import restore_latest, write_atomically
from tf_ppo.training.distribute import split_batch
from tf_ppo.training.guarded_step import GuardedStep, SkipCounter
from tf_ppo.training.interrupts import signals_stop
from tf_ppo.training.reporting import RunLog


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
        clip_mode, max_grad_norm: as `tf_ppo.training.guarded_step.clip_gradients`.
        gradient_checkpointing: recompute the transformer blocks' activations.
        jit_compile: XLA for the whole step (one replica only).
        max_consecutive_skips: non-finite steps in a row before `NonFiniteError`.

    Example:
        loop = SupervisedLoop("SFT", [policy], loss_fn, keras.optimizers.Adam(1e-3))
        metrics = loop.train_step(batch)  # one `GuardedStep`
    """

    def __init__(self, name, models, loss_fn, optimizer, strategy=None, clip_mode="global_norm",
                 max_grad_norm=1.0, gradient_checkpointing=False, jit_compile=False, max_consecutive_skips=3):
        self.name, self.models, self.optimizer = name, list(models), optimizer
        self.strategy = strategy or tf.distribute.get_strategy()
        self.variables = list({id(v): v for model in self.models for v in model.trainable_variables}.values())
        self.train_step = GuardedStep(loss_fn, self.models, self.variables, optimizer, self.strategy, clip_mode,
                                      max_grad_norm, gradient_checkpointing, jit_compile)
        with self.strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")  # steps taken, for resume
            # The running sums of the epoch in flight: a run resumed mid-epoch reports the same epoch loss.
            self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
            self.epoch_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_steps")
        self.skips = SkipCounter(f"{name} steps", max_consecutive_skips)
        self.stop_training = False
        self.stopped_by = None  # "SIGTERM" or "SIGINT" (Ctrl-C) when a signal stopped the run
        self.total_steps = 0  # of all `epochs`, known once an epoch's batches are

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
                and the loop's counters, with `history.json`. With one,
                SIGTERM or Ctrl-C stops the loop after the step in flight and
                checkpoints it (`stopped_by`); without, they end the process
                as usual, since a run stopped early would look finished.
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
        self.total_steps = done
        stoppable = signals_stop(self._request_stop) if manager is not None else contextlib.nullcontext()
        with stoppable:
            for epoch in range(len(history) + 1, epochs + 1):
                batches = dataset_fn(epoch)
                self.total_steps = epochs * len(batches)
                skip = done - (epoch - 1) * len(batches)  # > 0: this epoch was begun before the checkpoint
                for batch in tqdm(batches[max(skip, 0):], desc=f"{self.name} epoch {epoch}/{epochs}",
                                  disable=not show_progress, leave=False):
                    metrics = {k: float(v) for k, v in self.train_step(batch).items()}
                    if metrics.pop("applied"):
                        self.skips.applied()
                        self.epoch_loss_sum.assign_add(metrics["loss"])
                        self.epoch_steps.assign_add(1)
                    else:
                        self.skips.skipped(f"{self.name} step {int(self.step.numpy()) + 1} skipped: non-finite "
                                           f"loss or gradients")
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
                    stopping = self.stop_training  # read once: a signal after this line stops after the next step
                    if manager is not None and (end_of_epoch or stopping
                                                or (checkpoint_every and step % checkpoint_every == 0)):
                        write_atomically(checkpoint_dir / "history.json", json.dumps(history))
                        manager.save(checkpoint_number=step)
                    if stopping:
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

    def outcome(self):
        """How far `fit` got and whether a signal stopped it: the fields every stage's result carries.

        Example:
            SFTResult(policy, history, **loop.outcome())
        """
        return {"preempted": self.preempted, "interrupted": self.interrupted, "steps_done": int(self.step.numpy()),
                "total_steps": self.total_steps}

    def _request_stop(self, signal_name):
        self.stopped_by, self.stop_training = signal_name, True

    @property
    def preempted(self):
        """Stopped by SIGTERM (a cloud preemption), with a checkpoint."""
        return self.stopped_by == "SIGTERM"

    @property
    def interrupted(self):
        """Stopped by Ctrl-C (SIGINT; a notebook's interrupt too), with a checkpoint."""
        return self.stopped_by == "SIGINT"


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
