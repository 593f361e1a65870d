"""The drift warning: once, in plain words, when the KL to the reference stays high or fluency collapses."""

import warnings

import pytest

from tf_ppo.rl.logs import DriftWarning, DriftWatch


def warnings_of(watch, rows):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for update, logs in enumerate(rows, start=1):
            watch.on_update_end(update, logs)
    return [str(warning.message) for warning in caught if issubclass(warning.category, DriftWarning)]


def test_a_kl_above_the_limit_for_a_whole_window_warns_once():
    rows = [{"kl": 2.0}] * 3 + [{"kl": 12.0}] * 4 + [{"kl": 11.0}] * 6  # the 5th update in a row above 10 is the 8th
    assert warnings_of(DriftWatch(10.0), rows) == [
        "update 8: the policy is drifting far from the reference (KL to it above 10 nats per response for 5 "
        "updates): raise beta (kl_coef), or set target_kl"]


def test_a_kl_that_dips_below_the_limit_within_the_window_does_not_warn():
    rows = ([{"kl": 12.0}] * 4 + [{"kl": 9.0}]) * 4
    assert warnings_of(DriftWatch(10.0), rows) == []


def test_a_heldout_kl_above_the_limit_warns_at_that_evaluation():
    rows = [{"kl": 1.0}, {"kl": 1.0, "heldout_kl": 47.5}]
    assert warnings_of(DriftWatch(10.0), rows) == [
        "update 2: the policy is drifting far from the reference (held-out KL 47.5 nats per response, above 10): "
        "raise beta (kl_coef), or set target_kl"]


@pytest.mark.parametrize("late,warns", [(0.40, True), (0.60, False)])
def test_fluency_below_half_its_start_for_a_window_warns(late, warns):
    rows = [{"fluency": 0.95}] * 5 + [{"fluency": 0.9}] * 3 + [{"fluency": late}] * 5
    messages = warnings_of(DriftWatch(10.0), rows)
    assert messages == (["update 13: the policy is drifting far from the reference (fluent completions fell "
                         "from 95% to 40%): raise beta (kl_coef), or set target_kl"] if warns else [])


def test_no_limit_no_warning():
    assert warnings_of(DriftWatch(None), [{"kl": 100.0, "heldout_kl": 100.0}] * 10) == []
