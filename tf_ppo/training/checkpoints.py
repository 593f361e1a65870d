"""Checkpoints that are complete or invisible, and resume that skips a corrupt one.

`tf.train.CheckpointManager` writes a checkpoint to temporary files and only
then lists it, so a crash mid-save leaves the previous list intact. What it
cannot know is that a listed checkpoint's data file was damaged later (a
full disk, a bad copy): `restore_latest` tries the newest first and falls back
with a warning.
"""

import os
import warnings

import tensorflow as tf


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


def write_atomically(path, text):
    """Write `text` to `path` through a temporary file: a crash leaves the old file or the new, never half."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)
