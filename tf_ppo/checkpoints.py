"""Checkpoints that are complete or invisible, resume that skips a corrupt one, and the epoch loop.

`tf.train.CheckpointManager` writes a checkpoint to temporary files and only
then lists it, so a crash mid-save leaves the previous list intact. What it
cannot know is that a listed checkpoint's data file was damaged later (a
full disk, a bad copy): `restore_latest` tries the newest first and falls back
with a warning.
"""

import json
import os
import pathlib
import warnings

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm


class CheckpointError(RuntimeError):
    """No checkpoint of the run can be restored (missing, corrupt, or from a different model)."""


def restore_latest(manager, checkpoint):
    """Restore the newest checkpoint of `manager` that reads back whole; returns its path (None if none).

    Every object in `checkpoint` must find its values
    (`assert_existing_objects_matched`), so a checkpoint of another model fails
    loudly instead of half-restoring.

    Example:
    >>> import tempfile
    >>> step = tf.Variable(0)
    >>> checkpoint = tf.train.Checkpoint(step=step)
    >>> manager = tf.train.CheckpointManager(checkpoint, tempfile.mkdtemp(), max_to_keep=2)
    >>> _ = step.assign(7); _ = manager.save()
    >>> _ = step.assign(0); _ = restore_latest(manager, checkpoint); int(step.numpy())
    7
    """
    problem = None
    for path in manager.checkpoints[::-1]:  # newest first; only complete checkpoints are listed
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
            return path
        except (tf.errors.OpError, AssertionError, ValueError) as error:
            problem = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            warnings.warn(f"resume: checkpoint {path} cannot be restored ({problem}); trying the previous one")
    if problem:
        raise CheckpointError(f"resume: none of the checkpoints in {manager.directory} can be restored "
                              f"(last problem: {problem})")
    return None


def run_epochs(name, train_step, dataset_fn, epochs, evaluate, checkpoint_dir=None, objects=None,
               show_progress=True):
    """The epoch loop of SFT and reward-model training: progress bar, history, a checkpoint per epoch.

    Args:
        name: shown on the progress bar ("SFT", "reward model").
        train_step: `batch -> loss` (a compiled step).
        dataset_fn: `epoch -> tf.data.Dataset`; seeded by epoch so a resumed
            run sees the same batches as an uninterrupted one.
        epochs: total epochs.
        evaluate: `() -> dict` of held-out metrics, run after each epoch.
        checkpoint_dir: if set, a checkpoint of `objects` after every epoch,
            and a run that finds checkpoints there continues from the latest.
        objects: trackables to checkpoint (models, optimizer).

    Returns:
        One dict per epoch: `epoch`, `train_loss` and the `evaluate()` keys.

    Example:
        history = run_epochs("SFT", step, lambda epoch: dataset, 3, lambda: {})
    """
    epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    history = []
    if checkpoint_dir is not None:
        checkpoint_dir = pathlib.Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = tf.train.Checkpoint(epoch=epoch_counter, **objects)
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
        if restore_latest(manager, checkpoint):
            history = json.loads((checkpoint_dir / "history.json").read_text())[: int(epoch_counter.numpy())]
    for epoch in range(int(epoch_counter.numpy()) + 1, epochs + 1):
        losses = [float(train_step(batch)) for batch in tqdm(
            dataset_fn(epoch), desc=f"{name} epoch {epoch}/{epochs}", disable=not show_progress, leave=False)]
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **evaluate()})
        if show_progress:
            print(f"{name} epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k != "epoch"))
        if checkpoint_dir is not None:
            epoch_counter.assign(epoch)
            _write_atomically(checkpoint_dir / "history.json", json.dumps(history))
            manager.save(checkpoint_number=epoch)
    return history


def _write_atomically(path, text):
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)
