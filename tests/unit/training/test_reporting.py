"""The run's metrics CSV (columns that survive a resume) and its curves figure (labelled, no flat panels)."""

import csv

import matplotlib
import pytest

from tf_ppo.training.reporting import DPO_PANELS, RunLog, curves_figure, plot_curves, read_history


def history(updates=4, **columns):
    """Rows with a rising reward and KL, plus `columns` as `key=function of the update`."""
    return [{"update": u, "score_mean": 0.1 * u, "kl": 0.5 * u, **{k: f(u) for k, f in columns.items()}}
            for u in range(1, updates + 1)]


def write_rows(run_dir, rows, keep_updates=None):
    log = RunLog(run_dir, keep_updates=keep_updates)
    for row in rows:
        log.write(row["update"], {key: value for key, value in row.items() if key != "update"})
    log.close()


# ----------------------------------------------------------------- metrics.csv


def test_resuming_with_another_metric_set_keeps_each_value_under_its_column(tmp_path):
    write_rows(tmp_path, [{"update": 1, "score_mean": 0.1, "kl": 1.0}, {"update": 2, "score_mean": 0.2, "kl": 2.0}])
    # Resumed after update 1 with a new metric first and without "kl": under the old code the columns came
    # from this row, so its values landed under the wrong names.
    write_rows(tmp_path, [{"update": 2, "gold_score_mean": 7.0, "score_mean": 0.3},
                          {"update": 3, "gold_score_mean": 8.0, "score_mean": 0.4, "kl": 4.0}], keep_updates=1)
    assert read_history(tmp_path / "metrics.csv") == [
        {"update": 1, "score_mean": 0.1, "kl": 1.0},
        {"update": 2, "score_mean": 0.3, "gold_score_mean": 7.0},
        {"update": 3, "score_mean": 0.4, "kl": 4.0, "gold_score_mean": 8.0}]


def test_the_widened_file_is_one_rectangular_csv_with_empty_cells(tmp_path):
    write_rows(tmp_path, [{"update": 1, "kl": 1.0}])
    write_rows(tmp_path, [{"update": 2, "score_mean": 0.5}])
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines == [["update", "kl", "score_mean"], ["1", "1.0", ""], ["2", "", "0.5"]]


def test_a_new_metric_in_the_middle_of_a_run_widens_the_open_file(tmp_path):
    log = RunLog(tmp_path)
    log.write(1, {"kl": 1.0})
    log.write(2, {"kl": 2.0, "approx_kl": 0.1})
    log.write(3, {"kl": 3.0})
    log.close()
    assert read_history(tmp_path / "metrics.csv") == [{"update": 1, "kl": 1.0},
                                                       {"update": 2, "kl": 2.0, "approx_kl": 0.1},
                                                       {"update": 3, "kl": 3.0}]


def test_keeping_no_rows_of_an_empty_file_still_writes_a_header(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    write_rows(tmp_path, [{"update": 1, "kl": 1.0}], keep_updates=0)
    assert read_history(tmp_path / "metrics.csv") == [{"update": 1, "kl": 1.0}]


# ----------------------------------------------------------------- curves


def every_axis_labelled(figure):
    return [(axis.get_title(), axis.get_xlabel(), axis.get_ylabel()) for axis in figure.axes
            if not (axis.get_xlabel() and axis.get_ylabel())]


def test_every_panel_has_both_axis_labels_with_the_kl_unit():
    figure = curves_figure(history(fluency=lambda u: 0.9, kl_coef=lambda u: 0.1 * u))
    assert [axis.get_title() for axis in figure.axes] == [
        "reward (score)", "KL to reference", "fluent completions", "kl_coef (beta)"]
    assert every_axis_labelled(figure) == []
    assert "nats per response" in figure.axes[1].get_ylabel()


def test_the_gold_twin_axis_is_labelled_too():
    figure = curves_figure(history(gold_score_mean=lambda u: -u))
    assert len(figure.axes) == 3  # reward, KL, and the gold score's twin of the reward panel
    assert every_axis_labelled(figure) == []
    assert "gold" in figure.axes[-1].get_ylabel() and "proxy" in figure.axes[0].get_ylabel()


def test_a_fixed_beta_gets_no_kl_coef_panel():
    titles = [axis.get_title() for axis in curves_figure(history(kl_coef=lambda u: 0.05)).axes]
    assert titles == ["reward (score)", "KL to reference"]


def test_a_metric_missing_from_some_rows_is_plotted_where_it_exists():
    rows = history() + [{"update": 5, "score_mean": 0.6}]  # e.g. read back with an empty "kl" cell
    kl_panel = curves_figure(rows).axes[1]
    assert list(kl_panel.lines[0].get_xdata()) == [1, 2, 3, 4]


@pytest.fixture
def svg_backend():
    """A backend other than the Agg default, as a notebook's inline backend is; restored after."""
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(previous)


def test_plotting_leaves_the_notebook_backend_alone(tmp_path, svg_backend):
    # `matplotlib.use("Agg")` in plot_curves switched a notebook's backend, so after tf_ppo.train()
    # its plt.show() drew nothing (05's curves, 08's sweep plot).
    plot_curves(history(), tmp_path / "curves.png")
    assert matplotlib.get_backend() == "svg"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- curves: issue 33, item 11


def dpo_steps(steps=8, evaluated_at=(8,)):
    """DPO's per-step rows (one epoch of `steps` steps), held-out figures at the steps that end an epoch."""
    return [{"step": s, "loss": 0.7 - 0.01 * s, "rewards/margins": 0.1 * s, "rewards/accuracies": 0.5 + 0.05 * s,
             "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s, "logps/chosen": -20.0, "logps/rejected": -22.0,
             **({"heldout_accuracy": 0.75} if s in evaluated_at else {})} for s in range(1, steps + 1)]


def dpo_figure(rows, **kwargs):
    return curves_figure(rows, DPO_PANELS, index="step", xlabel="DPO step", **kwargs)


def rl_history_with_every_panel():
    """Every RL panel and its extras: gold on a twin axis, pass@4 beside greedy accuracy (evaluated every 2)."""
    rows = history(6, fluency=lambda u: 0.9, kl_coef=lambda u: 0.1 * u, gold_score_mean=lambda u: -u)
    for row in rows[1::2]:
        row.update({"heldout_accuracy": row["update"] / 10, "heldout_pass@4": 0.7})
    return rows


def panels(figure):
    """The figure's panels without the gold score's twin axis (which shares its panel's place in the grid)."""
    return [axis for axis in figure.axes if axis.get_title()]


def test_the_x_axis_names_the_update_of_any_algorithm_and_the_dpo_step():
    # It once said "PPO update" under GRPO, RLOO, ... runs too.
    assert {axis.get_xlabel() for axis in panels(curves_figure(rl_history_with_every_panel()))} == {"update"}
    assert {axis.get_xlabel() for axis in panels(dpo_figure(dpo_steps()))} == {"DPO step"}


@pytest.mark.parametrize("rows, figure_of, grid", [
    (dpo_steps(), dpo_figure, (2, 3)),  # six panels
    (rl_history_with_every_panel(), curves_figure, (2, 3)),  # five
    (history(fluency=lambda u: 0.9, kl_coef=lambda u: 0.1 * u), curves_figure, (2, 2)),  # four
    (history(), curves_figure, (1, 2)),  # two
])
def test_the_panels_sit_in_a_grid_of_at_most_three_columns_each_at_least_4_by_3_inches(rows, figure_of, grid):
    # Six panels in one row were 1920 x 240 pixels in the PNG: unreadable.
    figure = figure_of(rows)
    specs = [axis.get_subplotspec() for axis in panels(figure)]
    assert {spec.get_geometry()[:2] for spec in specs} == {grid}
    assert len({(spec.rowspan.start, spec.colspan.start) for spec in specs}) == len(specs)  # one place each
    width, height = figure.get_size_inches()
    assert width / grid[1] >= 4 and height / grid[0] >= 3


def test_the_accuracy_panel_starts_at_the_starting_policys_figure_at_update_0():
    # The run evaluates the starting policy before update 1, but that figure is not a history row:
    # the panel began at the first evaluation during training.
    start = {"heldout_accuracy": 0.1, "heldout_pass@4": 0.6, "heldout_score_mean": 0.2}
    figure = curves_figure(rl_history_with_every_panel(), start=start)
    accuracy = next(axis for axis in figure.axes if axis.get_title() == "held-out accuracy")
    greedy, pass_at_4 = accuracy.lines
    assert (list(greedy.get_xdata()), list(greedy.get_ydata())) == ([0, 2, 4, 6], [0.1, 0.2, 0.4, 0.6])
    assert (pass_at_4.get_label(), pass_at_4.get_xdata()[0], pass_at_4.get_ydata()[0]) == ("pass@4", 0, 0.6)
    reward = figure.axes[0]  # the training reward is not a held-out figure: no point at update 0
    assert reward.lines[0].get_xdata()[0] == 1


def test_plot_curves_draws_the_starting_figure_too(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda figure, *args, **kwargs: drawn.append(figure))
    plot_curves(rl_history_with_every_panel(), tmp_path / "curves.png", start={"heldout_accuracy": 0.3})
    accuracy = next(axis for axis in drawn[0].axes if axis.get_title() == "held-out accuracy")
    assert accuracy.lines[0].get_xdata()[0] == 0


def visible_points(line):
    """How many points of `line` show: a lone point shows only with a marker (a line needs two)."""
    points = len(line.get_xdata())
    return points if points > 1 or line.get_marker() not in (None, "", " ", "None", "none") else 0


def test_one_epochs_single_heldout_evaluation_shows_on_the_dpo_panel():
    # Held-out accuracy is measured once per epoch: the default one-epoch run gave a one-point line, not drawn.
    accuracy = next(axis for axis in dpo_figure(dpo_steps()).axes if axis.get_title().startswith("held-out"))
    assert visible_points(accuracy.lines[0]) == 1
    low, high = accuracy.get_xlim()
    assert low <= 1 and high >= 8  # on the run's time axis, not alone around its one step


def test_a_measured_starting_figure_joins_the_dpo_heldout_panel():
    accuracy = next(axis for axis in dpo_figure(dpo_steps(), start={"heldout_accuracy": 0.5}).axes
                    if axis.get_title().startswith("held-out"))
    assert list(accuracy.lines[0].get_xdata()) == [0, 8]


# A y-label longer than a panel is tall: on one line it would run past the figure's top and bottom.
LONG_LABELLED = (("kl", "KL to reference", "KL to the reference policy, in nats per response, summed over tokens"),)


@pytest.mark.parametrize("figure_of", [
    lambda: dpo_figure(dpo_steps(evaluated_at=(4, 8))),
    lambda: curves_figure(rl_history_with_every_panel(), start={"heldout_accuracy": 0.3}),  # with the gold twin axis
    lambda: curves_figure(history()),  # one row
    lambda: curves_figure(history(), LONG_LABELLED),
], ids=["dpo", "rl-every-panel", "rl-one-row", "long-y-label"])
def test_no_title_or_axis_label_reaches_past_the_figure(figure_of):
    # DPO's "fraction of pairs, chosen above rejected" was taller than its 3-inch panel, so the PNG cut it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = figure_of()
    FigureCanvasAgg(figure).draw()  # lays the figure out as savefig does
    renderer, bounds = figure.canvas.get_renderer(), figure.bbox
    # The gold twin's x-axis is hidden (it is its panel's), and so is its label: not drawn, not checked.
    texts = [text for axis in figure.axes
             for text, owner in ((axis.title, axis), (axis.xaxis.label, axis.xaxis), (axis.yaxis.label, axis.yaxis))
             if text.get_text() and owner.get_visible()]
    outside = [text.get_text() for text in texts
               if not inside(text.get_window_extent(renderer), bounds)]
    assert outside == []


def inside(box, bounds, slack=0.5):
    return (box.x0 >= bounds.x0 - slack and box.y0 >= bounds.y0 - slack
            and box.x1 <= bounds.x1 + slack and box.y1 <= bounds.y1 + slack)
