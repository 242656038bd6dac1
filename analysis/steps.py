"""Steps to result and best metric per batch size, from the tidy sweep tables.

The protocol is Shallue et al. 2019 (JMLR), Sec. 3 and their released
`batch_science` analysis code: only *complete* trials count; for each batch size
the evaluation rows of those trials are pooled, sorted by (step, trial id), and
the first row whose metric is strictly below the target (strictly above for a
metric to maximise) gives the steps to result. That equals the minimum over
trials of each trial's first crossing, ties broken by trial id, which is how it
is computed here. Diverged trials (infeasible at some point), incomplete ones
(never finished) and pruned ones (stopped because they could no longer beat the
best trial at their batch size) are excluded.

`trials` has one row per trial (trial_id, batch_size, status, ... and one column
per metaparameter); `measurements` one row per evaluation (trial_id, step, and
the metric column, `val_metric` by default).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.errors import UserError

DIRECTIONS = ("min", "max")
# Columns of `trials` that describe the trial's outcome, not its metaparameters.
OUTCOME_COLUMNS = ("trial_id", "batch_size", "status", "steps_to_target")


def within_budget(trials, measurements, step_budget=None, example_budget=None):
    """Evaluation rows of complete trials inside the budgets (Shallue et al. 2019,
    Sec. 3.2): a step budget keeps step <= budget, an example budget keeps
    batch_size * step <= budget. Adds the trial's batch_size to each row."""
    complete = trials.loc[trials["status"] == "complete", ["trial_id", "batch_size"]]
    rows = measurements.drop(columns="batch_size", errors="ignore").merge(complete, on="trial_id")
    if step_budget is not None:
        rows = rows[rows["step"] <= step_budget]
    if example_budget is not None:
        rows = rows[rows["batch_size"] * rows["step"] <= example_budget]
    return rows


def first_crossings(trials, measurements, target, direction="min", metric="val_metric",
                    step_budget=None, example_budget=None) -> pd.DataFrame:
    """Each complete trial's first evaluation strictly beyond `target`: columns
    trial_id, batch_size, step, rounds (communication rounds by then; one per
    step when the measurements do not count them), value, resolution (steps
    since that trial's previous evaluation, or since step 0 for its first one:
    the crossing lies somewhere in that interval). Trials that never cross are
    absent."""
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    rows = within_budget(trials, measurements, step_budget, example_budget)
    rows = rows.sort_values(["trial_id", "step"])
    rows["resolution"] = rows.groupby("trial_id")["step"].diff().fillna(rows["step"])
    rows["rounds"] = rows["rounds"] if "rounds" in rows else rows["step"]
    crossed = rows[metric] < target if direction == "min" else rows[metric] > target
    firsts = rows[crossed].drop_duplicates("trial_id")
    return firsts.rename(columns={metric: "value"})[
        ["trial_id", "batch_size", "step", "rounds", "value", "resolution"]].reset_index(drop=True)


def steps_to_result(trials, measurements, target, direction="min", step_budget=None,
                    example_budget=None, metric="val_metric") -> pd.DataFrame:
    """Steps to result per batch size (Shallue et al. 2019, Sec. 3.1).

    One row per batch size that reached the target, sorted by batch size:
    batch_size, steps, examples (= batch_size * steps), rounds (communication
    rounds of the best trial by its crossing), trial_id of the best
    trial, value (its metric at the crossing), resolution (its evaluation
    cadence at the crossing: the true crossing lies in (steps - resolution,
    steps]), then the best trial's metaparameters (every other column of
    `trials`). Batch sizes where no complete trial crossed are absent.
    """
    firsts = first_crossings(trials, measurements, target, direction, metric,
                             step_budget, example_budget)
    best = (firsts.sort_values(["batch_size", "step", "trial_id"])
            .drop_duplicates("batch_size").rename(columns={"step": "steps"}))
    best["steps"] = best["steps"].astype(int)
    best["examples"] = best["batch_size"] * best["steps"]
    meta = trials.drop(columns=[c for c in OUTCOME_COLUMNS if c != "trial_id"])
    best = best.merge(meta, on="trial_id")
    best["rounds"] = best["rounds"].astype(int)
    first = ["batch_size", "steps", "examples", "rounds", "trial_id", "value", "resolution"]
    return best[first + [c for c in best.columns if c not in first]].sort_values(
        "batch_size").reset_index(drop=True)


def best_metric(trials, measurements, direction="min", step_budget=None,
                example_budget=None, metric="val_metric") -> pd.DataFrame:
    """Best validation metric reached per batch size within a step or example
    budget (Shallue et al. 2019, Sec. 4.7 and Fig. 4), over complete trials.
    Columns batch_size, value, step, trial_id; a batch size with no evaluation
    inside the budget is absent."""
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    rows = within_budget(trials, measurements, step_budget, example_budget)
    rows = rows[np.isfinite(rows[metric])]
    rows = rows.sort_values(["batch_size", metric, "step", "trial_id"],
                            ascending=[True, direction == "min", True, True])
    best = rows.drop_duplicates("batch_size").rename(columns={metric: "value"})
    return best[["batch_size", "value", "step", "trial_id"]].reset_index(drop=True)
