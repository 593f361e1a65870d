"""The run's metrics CSV (columns that survive a resume) and its curves figure (labelled, no flat panels)."""

import csv

import matplotlib
import pytest

from tf_ppo.training.reporting import RunLog, curves_figure, plot_curves, read_history


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
