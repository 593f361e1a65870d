"""What a run writes for people to read: metrics CSV, TensorBoard, a curve plot.

Example:
>>> import tempfile
>>> log = RunLog(tempfile.mkdtemp())
>>> log.write(1, {"score_mean": 0.5, "kl": 1.0})
>>> log.close()
"""

import csv
import os
import pathlib

import tensorflow as tf

PLOTTED = (("score_mean", "reward (score)"), ("kl", "KL to reference (nats / response)"),
           ("fluency", "fluent completions"), ("kl_coef", "kl_coef (beta)"))


class RunLog:
    """Appends one row per update to `metrics.csv` (flushed each time) and to TensorBoard.

    `keep_updates=n` first drops CSV rows after update n: a resumed run redoes
    the updates after its checkpoint, and their rows must not appear twice.
    """

    def __init__(self, run_dir, keep_updates=None):
        self.run_dir = pathlib.Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        if keep_updates is not None and self.csv_path.exists():
            _keep_rows(self.csv_path, keep_updates)
        self._writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        self._csv_file = None
        self._csv = None

    def write(self, update, logs):
        row = {"update": update, **logs}
        if self._csv is None:
            new_file = not self.csv_path.exists()
            self._csv_file = self.csv_path.open("a", newline="")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=list(row))
            if new_file:
                self._csv.writeheader()
        self._csv.writerow(row)
        self._csv_file.flush()  # a crash loses at most the update in flight
        with self._writer.as_default(step=update):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
        self._writer.flush()

    def close(self):
        if self._csv_file is not None:
            self._csv_file.close()
        self._writer.close()


def read_history(csv_path):
    """The rows of a `metrics.csv`, as dicts of floats (empty if there is no file).

    Example:
    >>> read_history("/nonexistent/metrics.csv")
    []
    """
    path = pathlib.Path(csv_path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _keep_rows(csv_path, last_update):
    """Rewrite `csv_path` (atomically) with only its complete rows up to `last_update`."""
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = reader.fieldnames or []
        # A row cut by a crash has missing cells (None): drop it with the rows after the checkpoint.
        rows = [row for row in reader
                if None not in row and None not in row.values() and float(row["update"]) <= last_update]
    partial = csv_path.with_suffix(".csv.tmp")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, csv_path)


def plot_curves(history, path):
    """Save a PNG with reward, KL, fluency and kl_coef against the update number.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> plot_curves([{"update": 1, "score_mean": 0.1, "kl": 0.5}], path)
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and notebooks alike
    import matplotlib.pyplot as plt

    shown = [(key, title) for key, title in PLOTTED if history and key in history[0]]
    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3), squeeze=False)
    updates = [row["update"] for row in history]
    for axis, (key, title) in zip(axes[0], shown):
        axis.plot(updates, [row[key] for row in history], label="proxy (the reward)")
        axis.set_title(title)
        axis.set_xlabel("update")
    if "gold_score_mean" in history[0]:  # over-optimisation shows as these two curves parting
        gold_axis = axes[0][0].twinx()
        gold_axis.plot(updates, [row["gold_score_mean"] for row in history], color="tab:orange", label="gold")
        gold_axis.set_ylabel("gold score")
        axes[0][0].set_title("proxy reward and gold score")
        axes[0][0].legend(handles=axes[0][0].lines + gold_axis.lines, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
