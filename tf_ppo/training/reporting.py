"""What a run writes for people to read: metrics CSV, TensorBoard, a curve plot.

Example:
>>> import tempfile
>>> log = RunLog(tempfile.mkdtemp())
>>> log.write(1, {"score_mean": 0.5, "kl": 1.0})
>>> log.close()
"""

import csv
import math
import pathlib
import textwrap

import tensorflow as tf

from tf_ppo.training.checkpoints import atomic_file

UPDATE_LABEL = "update"
# (history key, panel title, y-axis label with its unit). The score's unit is the reward function's own.
PLOTTED = (("score_mean", "reward (score)", "mean score per response"),
           ("kl", "KL to reference", "KL (nats per response)"),
           ("fluency", "fluent completions", "fraction of responses"),
           ("kl_coef", "kl_coef (beta)", "beta (reward per nat)"),
           ("heldout_accuracy", "held-out accuracy", "fraction of problems solved"))
# DPO's panels, per optimiser step: the implicit rewards are beta x log(policy / reference) of each response.
DPO_PANELS = (("loss", "DPO loss", "loss per pair"),
              ("rewards/margins", "reward margin", "chosen - rejected (beta x nats)"),
              ("rewards/accuracies", "reward accuracy", "fraction of pairs, chosen above rejected"),
              ("rewards/chosen", "implicit rewards", "beta x log-ratio (nats)"),
              ("logps/chosen", "log-probs", "summed log-prob per response (nats)"),
              ("heldout_accuracy", "held-out preference accuracy", "fraction of held-out pairs"))
# A second line on a panel: panel key -> the other key it is drawn with.
COMPANIONS = {"rewards/chosen": "rewards/rejected", "logps/chosen": "logps/rejected"}
# The curves' grid: six panels in one row were 1920 x 240 pixels, unreadable. Inches of one panel (width, height).
MAX_COLUMNS = 3
PANEL_INCHES = (4.5, 3.5)
LABEL_CHARACTERS = 30  # a longer y-label is wrapped: on one line it could be taller than its panel


class RunLog:
    """Appends one row per update to `metrics.csv` (flushed each time) and to TensorBoard.

    `keep_updates=n` first drops CSV rows after update n: a resumed run redoes
    the updates after its checkpoint, and their rows must not appear twice.
    `index` names the first column ("update"; the supervised loop's is "step").

    The CSV's columns are the existing file's header, widened when a row brings
    a new metric: the file is then rewritten (atomically) with the new column,
    left empty in the earlier rows. A metric a row lacks gets an empty cell.
    """

    def __init__(self, run_dir, keep_updates=None, index="update"):
        self.run_dir = pathlib.Path(run_dir)
        self.index = index
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        if keep_updates is not None and self.csv_path.exists():
            _keep_rows(self.csv_path, keep_updates, index)
        self._writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        self._csv_file = None
        self._csv = None

    def write(self, update, logs):
        row = {self.index: update, **logs}
        self._open_for(row)
        self._csv.writerow(row)
        self._csv_file.flush()  # a crash loses at most the update in flight
        with self._writer.as_default(step=update):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
        self._writer.flush()

    def close(self):
        self._close_csv()
        self._writer.close()

    def _open_for(self, row):
        """Open the CSV for appending with columns that hold every key of `row`."""
        columns = self._csv.fieldnames if self._csv is not None else _header(self.csv_path)
        new_keys = [key for key in row if key not in columns]
        if self._csv is not None and not new_keys:
            return
        self._close_csv()
        columns = list(columns) + new_keys
        if self.csv_path.exists() and new_keys:
            _rewrite(self.csv_path, columns, _rows(self.csv_path))  # old rows get empty cells for the new keys
        new_file = not _header(self.csv_path)
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=columns, restval="")
        if new_file:
            self._csv.writeheader()

    def _close_csv(self):
        if self._csv_file is not None:
            self._csv_file.close()
        self._csv_file = self._csv = None


def read_history(csv_path):
    """The rows of a `metrics.csv`, as dicts of floats (empty if there is no file).

    An empty cell (a metric not logged in that update) is left out of its row's
    dict, so a row reads back as the dict that was written; use `row.get(key)`
    for a metric that not every row has.

    Example:
    >>> read_history("/nonexistent/metrics.csv")
    []
    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.csv"
    >>> _ = path.write_text("update,kl,gold\\n1,0.5,\\n")
    >>> read_history(path)
    [{'update': 1.0, 'kl': 0.5}]
    """
    return [{key: float(value) for key, value in row.items() if key is not None and value not in (None, "")}
            for row in _rows(csv_path)]


def _header(csv_path):
    """The column names of an existing CSV (none if the file is missing or empty)."""
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as handle:
        return next(csv.reader(handle), [])


def _rows(csv_path):
    """The rows of a CSV as dicts of strings (a list: the file is closed after)."""
    path = pathlib.Path(csv_path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _rewrite(csv_path, fieldnames, rows):
    """Replace `csv_path` by `rows` under `fieldnames`, atomically (a crash leaves the old file or the new)."""
    with atomic_file(csv_path) as partial, partial.open("w", newline="") as handle:
        if fieldnames:  # else an empty file, which the next write starts with a header
            writer = csv.DictWriter(handle, fieldnames=fieldnames, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def _keep_rows(csv_path, last_update, index="update"):
    """Rewrite `csv_path` (atomically) with only its complete rows up to `last_update` (in column `index`)."""
    # A row cut by a crash has missing cells (None): drop it with the rows after the checkpoint.
    rows = [row for row in _rows(csv_path)
            if None not in row and None not in row.values() and float(row[index]) <= last_update]
    _rewrite(csv_path, _header(csv_path), rows)


def curves_figure(history, panels=PLOTTED, index="update", xlabel=UPDATE_LABEL, start=None):
    """A matplotlib `Figure` of `panels` against `index`: by default PPO's reward, KL, fluency, kl_coef
    (when it changes) and held-out accuracy against updates; `DPO_PANELS` against steps for DPO.

    Each panel plots the rows that have its metric; the panels fill a grid of at
    most `MAX_COLUMNS` columns. `start` holds figures measured before training
    (for RL, `heldout_metrics(evaluation_before)`): they are drawn at `index` 0
    on the panels the history has. The Figure is built without pyplot, so
    making it never changes the backend a notebook draws with.

    Example:
    >>> figure = curves_figure([{"update": 2, "score_mean": 0.1, "heldout_accuracy": 0.5}],
    ...                        start={"heldout_accuracy": 0.25})
    >>> [axis.get_title() for axis in figure.axes]
    ['reward (score)', 'held-out accuracy']
    >>> figure.axes[1].lines[0].get_xdata().tolist()
    [0, 2]
    """
    from matplotlib.figure import Figure

    shown = [(key, title, ylabel) for key, title, ylabel in panels if _worth_a_panel(history, key, index)]
    rows = ([{index: 0, **start}] if start else []) + list(history)
    grid_rows, grid_columns = grid_shape(len(shown))
    # constrained layout makes room for every title and label (tight_layout left long y-labels cut).
    figure = Figure(figsize=(PANEL_INCHES[0] * grid_columns, PANEL_INCHES[1] * grid_rows), layout="constrained")
    axes = list(figure.subplots(grid_rows, grid_columns, squeeze=False).flat)
    for axis in axes[max(len(shown), 1):]:
        axis.remove()  # the grid's last row may have places no panel needs
    for axis, (key, title, ylabel) in zip(axes, shown):
        _plot(axis, rows, key, index, label="proxy (the reward)" if key == "score_mean" else key)
        axis.set(title=title, xlabel=xlabel, ylabel=_wrapped(ylabel))
        if axis is not axes[0]:
            axis.sharex(axes[0])  # one time axis: a held-out panel's few points sit where they were measured
        if key in COMPANIONS:
            _plot(axis, rows, COMPANIONS[key], index, label=COMPANIONS[key])
            axis.legend(loc="best")
    if shown and shown[0][0] == "score_mean" and _series(history, "gold_score_mean", index)[0]:
        _add_gold(axes[0], history, index)
    if shown and shown[-1][0] == "heldout_accuracy" and panels is PLOTTED:
        _add_pass_at_k(axes[len(shown) - 1], rows, index)
    return figure


def plot_curves(history, path, panels=PLOTTED, index="update", xlabel=UPDATE_LABEL, start=None):
    """Save `curves_figure(history, panels, index, xlabel, start)` as a PNG.

    Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> plot_curves([{"update": 1, "score_mean": 0.1, "kl": 0.5}], path)
    >>> os.path.getsize(path) > 0
    True
    """
    curves_figure(history, panels, index, xlabel, start).savefig(path, dpi=100)


def grid_shape(panels):
    """`(rows, columns)` for `panels` panels: at most `MAX_COLUMNS` columns, the rows as even as they can be.

    Example:
    >>> [grid_shape(n) for n in (0, 1, 2, 4, 5, 6)]
    [(1, 1), (1, 1), (1, 2), (2, 2), (2, 3), (2, 3)]
    """
    rows = max(math.ceil(panels / MAX_COLUMNS), 1)
    return rows, max(math.ceil(panels / rows), 1)


def _worth_a_panel(history, key, index="update"):
    """A metric gets a panel if some row has it; kl_coef only if it changes (a fixed beta is a flat line)."""
    values = _series(history, key, index)[1]
    return bool(values) and (key != "kl_coef" or len(set(values)) > 1)


def _series(history, key, index="update"):
    """`(updates or steps, values)` of the rows that have `key`."""
    rows = [row for row in history if key in row]
    return [row[index] for row in rows], [row[key] for row in rows]


def _plot(axis, rows, key, index, **style):
    """One line of `key`; a held-out metric's points are marked, as it is measured only now and then
    (DPO's once per epoch: a one-epoch run has a single point, which a line alone does not draw)."""
    return axis.plot(*_series(rows, key, index), **({"marker": "o"} if key.startswith("heldout_") else {}), **style)


def _wrapped(label):
    """`label` on lines of at most `LABEL_CHARACTERS`, so a long y-label fits beside a panel's height."""
    return textwrap.fill(label, LABEL_CHARACTERS)


def _add_pass_at_k(axis, rows, index):
    """pass@k beside greedy accuracy on the accuracy panel: RL should lift greedy without lowering pass@k."""
    axis.lines[0].set_label("greedy")
    for key in sorted({key for row in rows for key in row if key.startswith("heldout_pass@")}):
        _plot(axis, rows, key, index, label=key[len("heldout_"):])
    axis.legend(loc="lower right")


def _add_gold(axis, history, index):
    """The gold score on a twin axis of the reward panel: over-optimisation shows as the two curves parting."""
    gold_axis = axis.twinx()
    gold_axis.plot(*_series(history, "gold_score_mean", index), color="tab:orange", label="gold")
    gold_axis.set(xlabel=axis.get_xlabel(), ylabel=_wrapped("mean gold score per response"))  # x: hidden, shared
    axis.set(title="proxy reward and gold score", ylabel=_wrapped("mean proxy score per response"))
    axis.legend(handles=axis.lines + gold_axis.lines, loc="lower right")
