"""Steps to result and best metric on hand-made sweeps (Shallue et al. 2019 protocol)."""
import math

import pandas as pd
import pytest

from analysis.steps import best_metric, steps_to_result
from harness.errors import UserError


def sweep(trials):
    """trials: {trial_id: (batch_size, status, learning_rate, [(step, metric), ...])}."""
    t = pd.DataFrame([{"trial_id": k, "batch_size": b, "status": s, "steps_to_target": math.nan,
                       "seed": 0, "learning_rate": lr} for k, (b, s, lr, _) in trials.items()])
    m = pd.DataFrame([{"trial_id": k, "batch_size": b, "step": step, "examples": b * step,
                       "val_metric": v} for k, (b, _, _, rows) in trials.items() for step, v in rows])
    return t, m


def test_minimum_over_trials_of_the_first_strict_crossing_ties_by_trial_id():
    t, m = sweep({
        "b": (8, "complete", 0.2, [(10, 0.5), (20, 0.05), (30, 0.01)]),
        "a": (8, "complete", 0.1, [(10, 0.5), (20, 0.09), (30, 0.01)]),   # ties b at 20: a wins
        "c": (8, "complete", 0.3, [(5, 0.1), (10, 0.2), (15, 0.02)]),     # 0.1 == target at 5
        "d": (16, "complete", 0.4, [(4, 0.3), (8, 0.09)]),
    })
    table = steps_to_result(t, m, target=0.1)
    assert table[["batch_size", "steps", "examples", "trial_id"]].values.tolist() == [
        [8, 15, 120, "c"], [16, 8, 128, "d"]]
    assert table["learning_rate"].tolist() == [0.3, 0.4]
    assert table["resolution"].tolist() == [5, 4]
    # without c, a and b both cross first at step 20: the smaller trial id wins
    table = steps_to_result(t[t.trial_id != "c"], m, target=0.1)
    assert table.loc[0, "trial_id"] == "a" and table.loc[0, "steps"] == 20


@pytest.mark.parametrize("status", ["diverged", "incomplete", "pruned"])
def test_only_complete_trials_count(status):
    t, m = sweep({"x": (4, status, 0.1, [(1, 0.0)]),
                  "y": (4, "complete", 0.1, [(3, 0.5), (6, 0.0)]),
                  "z": (32, status, 0.1, [(1, 0.0)])})
    table = steps_to_result(t, m, target=0.1)
    assert table[["batch_size", "steps", "trial_id"]].values.tolist() == [[4, 6, "y"]]


def test_metric_to_maximise_crosses_strictly_above():
    t, m = sweep({"p": (2, "complete", 0.1, [(10, 0.90), (20, 0.95), (30, 0.97)]),
                  "q": (2, "complete", 0.1, [(10, 0.80), (25, 0.96)])})
    table = steps_to_result(t, m, target=0.95, direction="max")
    assert table[["steps", "trial_id", "value"]].values.tolist() == [[25, "q", 0.96]]


def test_step_and_example_budgets():
    t, m = sweep({"s": (10, "complete", 0.1, [(10, 0.5), (20, 0.05)]),
                  "u": (100, "complete", 0.1, [(1, 0.5), (3, 0.05)])})
    assert steps_to_result(t, m, 0.1, step_budget=19)["batch_size"].tolist() == [100]
    assert steps_to_result(t, m, 0.1, step_budget=20)["batch_size"].tolist() == [10, 100]
    # 10 * 20 = 200 examples vs 100 * 3 = 300
    assert steps_to_result(t, m, 0.1, example_budget=250)["batch_size"].tolist() == [10]
    assert steps_to_result(t, m, 0.1, example_budget=300)["batch_size"].tolist() == [10, 100]


def test_best_metric_within_budgets():
    t, m = sweep({"s": (10, "complete", 0.1, [(10, 0.5), (20, 0.05)]),
                  "v": (10, "complete", 0.1, [(10, 0.3), (20, 0.2)]),
                  "u": (100, "complete", 0.1, [(1, 0.5), (3, 0.01)]),
                  "w": (100, "diverged", 0.1, [(1, 0.001)])})
    assert best_metric(t, m, step_budget=10)[["batch_size", "value", "trial_id"]].values.tolist() == [
        [10, 0.3, "v"], [100, 0.01, "u"]]
    assert best_metric(t, m, example_budget=250)[["batch_size", "value"]].values.tolist() == [
        [10, 0.05], [100, 0.5]]
    assert best_metric(t, m, direction="max")["value"].tolist() == [0.5, 0.5]


def test_unknown_direction_is_a_user_error():
    t, m = sweep({"s": (10, "complete", 0.1, [(10, 0.5)])})
    with pytest.raises(UserError, match="unknown direction 'up'; allowed: min, max"):
        steps_to_result(t, m, 0.1, direction="up")
