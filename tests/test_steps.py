"""Steps to result and best metric on hand-made sweeps (Shallue et al. 2019 protocol)."""

import math

import pandas as pd
import pytest

from analysis.steps import best_metric, steps_to_result, unknown_batch_sizes
from harness.errors import UserError


def sweep(trials):
    """trials: {trial_id: (batch_size, status, learning_rate, [(step, metric), ...])}."""
    t = pd.DataFrame(
        [
            {"trial_id": k, "batch_size": b, "status": s, "steps_to_target": math.nan, "seed": 0, "learning_rate": lr}
            for k, (b, s, lr, _) in trials.items()
        ]
    )
    m = pd.DataFrame(
        [
            {"trial_id": k, "batch_size": b, "step": step, "examples": b * step, "val_metric": v}
            for k, (b, _, _, rows) in trials.items()
            for step, v in rows
        ]
    )
    return t, m


def test_minimum_over_trials_of_the_first_strict_crossing_ties_by_trial_id():
    t, m = sweep(
        {
            "b": (8, "complete", 0.2, [(10, 0.5), (20, 0.05), (30, 0.01)]),
            "a": (8, "complete", 0.1, [(10, 0.5), (20, 0.09), (30, 0.01)]),  # ties b at 20: a wins
            "c": (8, "complete", 0.3, [(5, 0.1), (10, 0.2), (15, 0.02)]),  # 0.1 == target at 5
            "d": (16, "complete", 0.4, [(4, 0.3), (8, 0.09)]),
        }
    )
    table = steps_to_result(t, m, target=0.1)
    assert table[["batch_size", "steps", "examples", "trial_id"]].values.tolist() == [
        [8, 15, 120, "c"],
        [16, 8, 128, "d"],
    ]
    assert table["learning_rate"].tolist() == [0.3, 0.4]
    assert table["resolution"].tolist() == [5, 4]
    # without c, a and b both cross first at step 20: the smaller trial id wins
    table = steps_to_result(t[t.trial_id != "c"], m, target=0.1)
    assert table.loc[0, "trial_id"] == "a" and table.loc[0, "steps"] == 20


@pytest.mark.parametrize("status", ["diverged", "incomplete", "pruned"])
def test_only_complete_trials_count(status):
    t, m = sweep(
        {
            "x": (4, status, 0.1, [(1, 0.0)]),
            "y": (4, "complete", 0.1, [(3, 0.5), (6, 0.0)]),
            "z": (32, status, 0.1, [(1, 0.0)]),
        }
    )
    table = steps_to_result(t, m, target=0.1)
    assert table[["batch_size", "steps", "trial_id"]].values.tolist() == [[4, 6, "y"]]


def pruned_sweep():
    """Spec target 0.1. At B = 8, c is the best trial (crosses 0.1 at 30) and p
    was pruned at 32 (>= 30) after crossing the looser 0.3 at 16; at B = 16,
    i ran its whole budget without reaching 0.1 but crossed 0.3 at 12; d
    diverged after crossing everything."""
    return sweep(
        {
            "c": (8, "complete", 0.1, [(10, 0.5), (20, 0.2), (30, 0.05)]),
            "p": (8, "pruned", 0.2, [(8, 0.4), (16, 0.25), (32, 0.15)]),
            "i": (16, "incomplete", 0.3, [(6, 0.5), (12, 0.28), (100, 0.12)]),
            "d": (16, "diverged", 0.4, [(1, 0.0)]),
        }
    )


def test_a_looser_target_counts_pruned_and_incomplete_trials():
    t, m = pruned_sweep()
    # complete trials only (Shallue et al. 2019 at the spec target): wrong at 0.3 on a pruned sweep
    assert steps_to_result(t, m, 0.3)[["batch_size", "steps", "trial_id"]].values.tolist() == [[8, 20, "c"]]
    table = steps_to_result(t, m, 0.3, spec_target=0.1)
    assert table[["batch_size", "steps", "trial_id", "learning_rate"]].values.tolist() == [
        [8, 16, "p", 0.2],
        [16, 12, "i", 0.3],
    ]


def test_the_spec_target_gives_the_same_table_with_or_without_spec_target():
    t, m = pruned_sweep()
    pd.testing.assert_frame_equal(steps_to_result(t, m, 0.1, spec_target=0.1), steps_to_result(t, m, 0.1))
    assert steps_to_result(t, m, 0.1)[["batch_size", "steps"]].values.tolist() == [[8, 30]]


def test_a_looser_target_of_a_metric_to_maximise_is_lower():
    t, m = sweep(
        {"c": (2, "complete", 0.1, [(10, 0.80), (20, 0.96)]), "p": (2, "pruned", 0.1, [(5, 0.85), (25, 0.90)])}
    )
    assert steps_to_result(t, m, 0.84, "max", spec_target=0.95)["steps"].tolist() == [5]
    # 0.955 is stricter: complete trials only, and their answer may be open (unknown_batch_sizes)
    assert steps_to_result(t, m, 0.955, "max", spec_target=0.95)["steps"].tolist() == [20]


def test_a_stricter_target_names_the_batch_sizes_where_trials_stopped_early():
    t, _ = pruned_sweep()
    t["max_steps"] = 100
    t["steps_run"] = t["trial_id"].map({"c": 30, "p": 32, "i": 100, "d": 1})
    extra = pd.DataFrame(
        [
            {"trial_id": "e", "batch_size": 32, "status": "complete", "steps_run": 100, "max_steps": 100},
            {"trial_id": "f", "batch_size": 64, "status": "pruned", "steps_run": 40, "max_steps": 100},
            {"trial_id": "g", "batch_size": 128, "status": "incomplete", "steps_run": 100, "max_steps": 100},
        ]
    )
    t = pd.concat([t, extra], ignore_index=True)
    # complete at its last step (32) or run to its budget (16, 128): exact; 8 and 64 stopped early
    assert unknown_batch_sizes(t, 0.05, spec_target=0.1) == [8, 64]
    assert unknown_batch_sizes(t, 0.1, spec_target=0.1) == []
    assert unknown_batch_sizes(t, 0.3, spec_target=0.1) == []
    assert unknown_batch_sizes(t, 0.3, spec_target=0.1, direction="max") == [8, 64]


def test_metric_to_maximise_crosses_strictly_above():
    t, m = sweep(
        {
            "p": (2, "complete", 0.1, [(10, 0.90), (20, 0.95), (30, 0.97)]),
            "q": (2, "complete", 0.1, [(10, 0.80), (25, 0.96)]),
        }
    )
    table = steps_to_result(t, m, target=0.95, direction="max")
    assert table[["steps", "trial_id", "value"]].values.tolist() == [[25, "q", 0.96]]


def test_step_and_example_budgets():
    t, m = sweep(
        {"s": (10, "complete", 0.1, [(10, 0.5), (20, 0.05)]), "u": (100, "complete", 0.1, [(1, 0.5), (3, 0.05)])}
    )
    assert steps_to_result(t, m, 0.1, step_budget=19)["batch_size"].tolist() == [100]
    assert steps_to_result(t, m, 0.1, step_budget=20)["batch_size"].tolist() == [10, 100]
    # 10 * 20 = 200 examples vs 100 * 3 = 300
    assert steps_to_result(t, m, 0.1, example_budget=250)["batch_size"].tolist() == [10]
    assert steps_to_result(t, m, 0.1, example_budget=300)["batch_size"].tolist() == [10, 100]


def test_best_metric_within_budgets():
    t, m = sweep(
        {
            "s": (10, "complete", 0.1, [(10, 0.5), (20, 0.05)]),
            "v": (10, "complete", 0.1, [(10, 0.3), (20, 0.2)]),
            "u": (100, "complete", 0.1, [(1, 0.5), (3, 0.01)]),
            "w": (100, "diverged", 0.1, [(1, 0.001)]),
        }
    )
    assert best_metric(t, m, step_budget=10)[["batch_size", "value", "trial_id"]].values.tolist() == [
        [10, 0.3, "v"],
        [100, 0.01, "u"],
    ]
    assert best_metric(t, m, example_budget=250)[["batch_size", "value"]].values.tolist() == [[10, 0.05], [100, 0.5]]
    assert best_metric(t, m, direction="max")["value"].tolist() == [0.5, 0.5]


def test_unknown_direction_is_a_user_error():
    t, m = sweep({"s": (10, "complete", 0.1, [(10, 0.5)])})
    with pytest.raises(UserError, match="unknown direction 'up'; allowed: min, max"):
        steps_to_result(t, m, 0.1, direction="up")


def test_edge_hits_name_the_best_trials_on_an_edge_of_the_search():
    from types import SimpleNamespace

    from analysis.curves import Curve
    from analysis.edges import edge_hits
    from analysis.text import edge_text

    space = {"learning_rate": {"min": 0.01, "max": 1.0, "scale": "log"}, "momentum": [0.9, 0.99]}
    trials = pd.DataFrame(
        {
            "batch_size": [8, 8, 8, 64, 64, 64, 512],
            "learning_rate": [0.02, 0.1, 0.5] * 2 + [0.3],
            "momentum": [0.9, 0.99, 0.9, 0.9, 0.99, 0.9, 0.9],
        }
    )
    sweep = SimpleNamespace(spec={"search": {"space": space}}, trials=trials)
    best = pd.DataFrame({"batch_size": [8, 64, 512], "learning_rate": [0.1, 0.5, 0.3], "momentum": [0.99, 0.9, 0.9]})
    hits = edge_hits(sweep, Curve(0.1, best, None))
    # B = 8: lr inside, momentum the largest tried; B = 64: lr the largest; B = 512: one value, no edge
    assert hits == [(8, "momentum", "largest"), (64, "learning_rate", "largest"), (64, "momentum", "smallest")]
    assert edge_text(sweep, hits).startswith(
        "warning: the best trial sits on an edge of the search (B = 8: momentum at the largest value tried;"
    )
    # every point tried at B = 8 and 64 is the largest or smallest of lr or momentum: chance alone gives the hit
    assert edge_text(sweep, hits).endswith("the odds of an edge hit by chance alone: B = 8: 3 of 3; B = 64: 3 of 3)")
    assert edge_text(sweep, []) == ""


def test_edge_points_count_the_points_tried_on_some_edge():
    """Five points over two metaparameters: lr's extremes are points 0 and 4,
    momentum's points 0 and 2, point 1 and 3 sit inside both: 3 of 5."""
    from types import SimpleNamespace

    from analysis.edges import edge_points

    space = {"learning_rate": {"min": 0.01, "max": 1.0, "scale": "log"}, "momentum": {"min": 0.8, "max": 0.999}}
    trials = pd.DataFrame(
        {
            "batch_size": [16] * 5 + [32],
            "learning_rate": [0.1, 0.2, 0.3, 0.4, 0.5, 0.1],
            "momentum": [0.9, 0.95, 0.99, 0.95, 0.93, 0.9],
        }
    )
    sweep = SimpleNamespace(spec={"search": {"space": space}}, trials=trials)
    assert edge_points(sweep, 16) == (3, 5)
    assert edge_points(sweep, 32) == (0, 1)  # one point: nothing to be an edge of
