"""Checkpoints and files that are complete or invisible, and resume that skips a corrupt checkpoint.

`tf.train.CheckpointManager` writes a checkpoint to temporary files and only
then lists it, so a crash mid-save leaves the previous list intact. What it
cannot know is that a listed checkpoint's data file was damaged later (a
full disk, a bad copy): `restore_latest` tries the newest first and falls back
with a warning. `atomic_file` and `atomic_directory` give every other file a run
writes the same guarantee.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile
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


@contextlib.contextmanager
def atomic_file(path):
    """A temporary path beside `path` to write to; leaving the block without an error makes it `path`.

    A crash leaves the old file or the new one, never half of one. The one atomic writer of files.

    Example:
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "figures.json"
    >>> with atomic_file(path) as partial:
    ...     _ = partial.write_text("{}")
    >>> path.read_text()
    '{}'
    """
    path = pathlib.Path(path)
    partial = path.with_name(f".partial-{path.name}")
    yield partial
    os.replace(partial, path)


def write_atomically(path, text):
    """Write `text` to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as partial:
        partial.write_text(text)


@contextlib.contextmanager
def atomic_directory(target):
    """A fresh staging directory beside `target`; leaving the block without an error renames it to `target`.

    `target` must not exist (the rename fails: OSError); the staging directory never outlives the block.

    Example:
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "preset"
    >>> with atomic_directory(target) as staging:
    ...     _ = (staging / "config.json").write_text("{}")
    >>> sorted(p.name for p in target.iterdir())
    ['config.json']
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=f".partial-{target.name}-"))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide an export from a serving container
    try:
        yield staging
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask():
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
