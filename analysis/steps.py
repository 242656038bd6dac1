"""Steps to result and best metric per batch size, from the tidy sweep tables.

The protocol is Shallue et al. 2019 (JMLR), Sec. 3 and their released
`batch_science` analysis code: for each batch size the evaluation rows of the
counted trials are pooled, sorted by (step, trial id), and the first row whose
metric is strictly below the target (strictly above for a metric to maximise)
gives the steps to result. That equals the minimum over trials of each trial's
first crossing, ties broken by trial id, which is how it is computed here.

Trial statuses: complete (crossed the sweep's spec target; the trial then
stops), incomplete (ran its whole step budget without crossing), diverged
(infeasible at some point) and pruned (stopped once it passed the best
steps-to-target already found at its batch size, at the spec target). At the
spec target only complete trials count, as in Shallue et al.: the others never
crossed it. Diverged trials never count. At a target looser than the spec's
(`spec_target` given), complete, incomplete and pruned trials all count: each
one's rows are exact evidence up to where it stopped, and a pruned trial ran at
least to the best steps at the spec target, which bounds the answer at the
looser one, so a crossing it would have made later cannot be the first. At a
stricter target a trial that stopped early may have crossed later:
`unknown_batch_sizes` names the batch sizes where that leaves the answer open.

`trials` has one row per trial (trial_id, batch_size, status, ... and one column
per metaparameter; steps_run and max_steps for `unknown_batch_sizes`);
`measurements` one row per evaluation (trial_id, step, and the metric column,
`val_metric` by default).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.engine.targets import check_direction, crossed

# Columns of `trials` that describe the trial's outcome, not its metaparameters.
OUTCOME_COLUMNS = ("trial_id", "batch_size", "status", "steps_to_target")
# Statuses whose rows count at the spec target, and at a looser one.
AT_SPEC_TARGET = ("complete",)
AT_LOOSER_TARGET = ("complete", "incomplete", "pruned")


def is_stricter(target, spec_target, direction="min") -> bool:
    """Whether `target` is harder to reach than `spec_target`: below it for a
    metric to minimise, above it for one to maximise."""
    return bool(crossed(target, spec_target, direction))


def counted_statuses(target, spec_target=None, direction="min") -> tuple[str, ...]:
    """The trial statuses whose rows count for the first crossing of `target`
    (see the module docstring): complete, incomplete and pruned when
    `spec_target` is given and `target` is not stricter than it; otherwise
    complete only (Shallue et al. 2019, Sec. 3)."""
    if spec_target is not None and not is_stricter(target, spec_target, direction):
        return AT_LOOSER_TARGET
    return AT_SPEC_TARGET


def within_budget(trials, measurements, step_budget=None, example_budget=None, *, statuses=AT_SPEC_TARGET):
    """Evaluation rows of the trials with one of `statuses` (complete ones by
    default) inside the budgets (Shallue et al. 2019, Sec. 3.2): a step budget
    keeps step <= budget, an example budget keeps batch_size * step <= budget.
    Adds the trial's batch_size to each row."""
    counted = trials.loc[trials["status"].isin(statuses), ["trial_id", "batch_size"]]
    rows = measurements.drop(columns="batch_size", errors="ignore").merge(counted, on="trial_id")
    if step_budget is not None:
        rows = rows[rows["step"] <= step_budget]
    if example_budget is not None:
        rows = rows[rows["batch_size"] * rows["step"] <= example_budget]
    return rows


def first_crossings(
    trials,
    measurements,
    target,
    direction="min",
    metric="val_metric",
    step_budget=None,
    example_budget=None,
    *,
    spec_target=None,
) -> pd.DataFrame:
    """Each counted trial's first evaluation strictly beyond `target` (complete
    trials; also incomplete and pruned ones when `spec_target` is given and
    `target` is not stricter: `counted_statuses`): columns trial_id,
    batch_size, step, rounds (communication rounds by then; one per step when
    the measurements do not count them), value, resolution (steps since that
    trial's previous evaluation, or since step 0 for its first one: the
    crossing lies somewhere in that interval). Trials that never cross are
    absent."""
    check_direction(direction)
    statuses = counted_statuses(target, spec_target, direction)
    rows = within_budget(trials, measurements, step_budget, example_budget, statuses=statuses)
    rows = rows.sort_values(["trial_id", "step"])
    rows["resolution"] = rows.groupby("trial_id")["step"].diff().fillna(rows["step"])
    rows["rounds"] = rows["rounds"] if "rounds" in rows else rows["step"]
    firsts = rows[crossed(rows[metric], target, direction)].drop_duplicates("trial_id")
    return firsts.rename(columns={metric: "value"})[
        ["trial_id", "batch_size", "step", "rounds", "value", "resolution"]
    ].reset_index(drop=True)


def steps_to_result(
    trials,
    measurements,
    target,
    direction="min",
    step_budget=None,
    example_budget=None,
    metric="val_metric",
    *,
    spec_target=None,
) -> pd.DataFrame:
    """Steps to result per batch size (Shallue et al. 2019, Sec. 3.1).

    One row per batch size that reached the target, sorted by batch size:
    batch_size, steps, examples (= batch_size * steps), rounds (communication
    rounds of the best trial by its crossing), trial_id of the best
    trial, value (its metric at the crossing), resolution (its evaluation
    cadence at the crossing: the true crossing lies in (steps - resolution,
    steps]), then the best trial's metaparameters (every other column of
    `trials`). Batch sizes where no counted trial crossed are absent.

    Give the sweep's `spec_target` for any other target: at a looser one the
    incomplete and pruned trials' crossings count too, which is exact on a
    pruned sweep (module docstring); without it only complete trials count. At
    the spec target both give the same table. At a stricter one the answer is
    open where trials stopped early: see `unknown_batch_sizes`.
    """
    firsts = first_crossings(
        trials, measurements, target, direction, metric, step_budget, example_budget, spec_target=spec_target
    )
    best = (
        firsts.sort_values(["batch_size", "step", "trial_id"])
        .drop_duplicates("batch_size")
        .rename(columns={"step": "steps"})
    )
    best["steps"] = best["steps"].astype(int)
    best["examples"] = best["batch_size"] * best["steps"]
    meta = trials.drop(columns=[c for c in OUTCOME_COLUMNS if c != "trial_id"])
    best = best.merge(meta, on="trial_id")
    best["rounds"] = best["rounds"].astype(int)
    first = ["batch_size", "steps", "examples", "rounds", "trial_id", "value", "resolution"]
    return best[first + [c for c in best.columns if c not in first]].sort_values("batch_size").reset_index(drop=True)


def unknown_batch_sizes(trials, target, spec_target, direction="min") -> list:
    """Batch sizes, sorted, where steps to result at `target` cannot be known
    from the sweep: for a target stricter than the sweep's `spec_target`, those
    with a trial that stopped early at the spec target (status complete or
    pruned with steps_run < max_steps), which might have crossed `target` after
    it stopped. Conservative: such a batch size is named even if its trials'
    known crossings come before every early stop. Empty for a target equal to
    or looser than `spec_target`, where every batch size is exact."""
    if not is_stricter(target, spec_target, direction):
        return []
    stopped = trials["status"].isin(["complete", "pruned"]) & (trials["steps_run"] < trials["max_steps"])
    return sorted(trials.loc[stopped, "batch_size"].unique().tolist())


def best_metric(
    trials, measurements, direction="min", step_budget=None, example_budget=None, metric="val_metric"
) -> pd.DataFrame:
    """Best validation metric reached per batch size within a step or example
    budget (Shallue et al. 2019, Sec. 4.7 and Fig. 4), over complete trials.
    Columns batch_size, value, step, trial_id; a batch size with no evaluation
    inside the budget is absent."""
    check_direction(direction)
    rows = within_budget(trials, measurements, step_budget, example_budget)
    rows = rows[np.isfinite(rows[metric])]
    rows = rows.sort_values(
        ["batch_size", metric, "step", "trial_id"], ascending=[True, direction == "min", True, True]
    )
    best = rows.drop_duplicates("batch_size").rename(columns={metric: "value"})
    return best[["batch_size", "value", "step", "trial_id"]].reset_index(drop=True)


def _pow2_budgets(largest: float, count: int = 3, spacing: int = 2) -> list[int]:
    """Powers of two at or below `largest`, `spacing` octaves apart."""
    if not largest >= 1:
        return []
    top = int(math.floor(math.log2(largest)))
    return [2**k for k in range(top, max(top - spacing * count, -1), -spacing)][::-1]


def best_metric_within_budgets(trials, measurements, direction="min") -> pd.DataFrame:
    """`best_metric` under three step budgets and three example budgets, powers
    of two up to the most steps (examples) a complete trial ran (Shallue et al.
    2019, Fig. 11): columns batch_size, best_metric, step, trial_id,
    budget_kind ('steps' or 'examples') and budget."""
    rows = measurements.merge(trials.loc[trials["status"] == "complete", ["trial_id"]], on="trial_id")
    if rows.empty:
        return pd.DataFrame(columns=["budget_kind", "budget", "batch_size", "best_metric"])
    parts = []
    for kind, largest in (("steps", rows["step"].max()), ("examples", (rows["batch_size"] * rows["step"]).max())):
        for budget in _pow2_budgets(largest):
            limit = {"step_budget" if kind == "steps" else "example_budget": budget}
            best = best_metric(trials, measurements, direction, **limit)
            parts.append(best.rename(columns={"value": "best_metric"}).assign(budget_kind=kind, budget=budget))
    return pd.concat(parts, ignore_index=True)
