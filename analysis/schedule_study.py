"""Batch-size schedules compared at one example budget (Merrill et al. 2025,
Sec. 5 and Table 1: a constant small batch, a constant large batch and a
batch-size warmup, compared in gradient steps and in the loss reached).

Each arm is one sweep folder (its spec's `name` names it), its trials the
seeds of one configuration trained to the same `example_budget`
(harness.engine.batch_schedule). `runs_table` has one row per trial: the
steps and examples to the target, and the validation loss and metric at the
budget (`at_budget`); `arms_table` one row per arm: the mean and the standard
deviation over seeds, and the ratio of each arm's mean steps to target to the
reference arm's (Merrill et al.'s "fewer gradient steps").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.tables import SweepTables
from harness.engine.targets import crossed

RUN_COLUMNS = [
    "arm",
    "seed",
    "status",
    "batch_sizes",
    "steps_to_target",
    "examples_to_target",
    "steps_run",
    "examples_run",
    "val_loss",
    "val_metric",
]
MEASURED = ["steps_to_target", "examples_to_target", "steps_run", "examples_run", "val_loss", "val_metric"]


def arm_name(sweep: SweepTables) -> str:
    return sweep.spec.get("name") or sweep.folder.name


def runs_table(sweeps: list[SweepTables], target: float | None = None) -> pd.DataFrame:
    """One row per trial of every arm; `batch_sizes` lists the batch sizes it
    trained at, in order ("64>256>512"); steps and examples to the target are
    NaN for a trial that did not reach it. With `target`, they are those of
    the first evaluation strictly past it (the records' rule,
    harness.engine.targets.crossed), exact for arms trained to their budget
    (stop_at_target = false, prune = false); else the records' own."""
    rows = []
    for sweep in sweeps:
        by_trial = dict(tuple(sweep.measurements.sort_values("step").groupby("trial_id")))
        for trial in sweep.trials.itertuples():
            m = by_trial[trial.trial_id]
            if target is None:
                at_target = m[m["step"] == trial.steps_to_target]
            else:
                at_target = m[crossed(m["val_metric"], target, sweep.spec["direction"])].iloc[:1]
            final = m.iloc[-1]
            rows.append(
                dict(
                    arm=arm_name(sweep),
                    seed=trial.seed,
                    status=trial.status,
                    batch_sizes=">".join(str(int(b)) for b in pd.unique(m["batch_size"].iloc[1:])),
                    steps_to_target=float(at_target["step"].iloc[0]) if len(at_target) else np.nan,
                    examples_to_target=float(at_target["examples"].iloc[0]) if len(at_target) else np.nan,
                    steps_run=int(final["step"]),
                    examples_run=int(final["examples"]),
                    **at_budget(m, trial.example_budget),
                )
            )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def at_budget(m: pd.DataFrame, budget) -> dict:
    """A trial's validation loss and metric at `budget` examples, linear in
    the examples between the two evaluations around it (arms evaluated at
    different example cadences overshoot the budget by different amounts);
    the last evaluation's where the trial stopped before the budget
    (diverged) or has none."""
    last = m.iloc[-1]
    if budget is None or pd.isna(budget) or last["examples"] <= budget:
        return dict(val_loss=float(last["val_loss"]), val_metric=float(last["val_metric"]))
    return {k: float(np.interp(budget, m["examples"], m[k])) for k in ("val_loss", "val_metric")}


def curves_table(sweeps: list[SweepTables]) -> pd.DataFrame:
    """Every evaluation of every arm: arm, seed, step, examples, batch_size,
    val_loss, val_metric (for analysis.schedule_plots)."""
    frames = []
    for sweep in sweeps:
        seeds = sweep.trials.set_index("trial_id")["seed"]
        m = sweep.measurements
        frames.append(m.assign(arm=arm_name(sweep), seed=m["trial_id"].map(seeds)))
    columns = ["arm", "seed", "step", "examples", "batch_size", "val_loss", "val_metric"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def arms_table(runs: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Per arm, in the order of `runs`: the number of seeds, how many reached
    the target, the mean and standard deviation (ddof 1) of each measured
    column, and `steps_ratio`, its mean steps to target over the reference
    arm's (default: the first arm)."""
    arms = list(pd.unique(runs["arm"]))
    reference = arms[0] if reference is None else reference
    grouped = runs.groupby("arm", sort=False)
    table = grouped[MEASURED].agg(["mean", "std"])
    table.columns = [f"{column}_{stat}" for column, stat in table.columns]
    table.insert(0, "seeds", grouped.size())
    table.insert(1, "reached", grouped["steps_to_target"].count())
    table["steps_ratio"] = table["steps_to_target_mean"] / table.loc[reference, "steps_to_target_mean"]
    return table.loc[arms].reset_index()


def arms_text(arms: pd.DataFrame) -> str:
    """The arms table as text, each measurement as mean ± std over seeds."""

    def pm(row, column, fmt):
        mean, std = row[f"{column}_mean"], row[f"{column}_std"]
        return "-" if np.isnan(mean) else f"{mean:{fmt}} ± {0.0 if np.isnan(std) else std:{fmt}}"

    shown = pd.DataFrame(
        {
            "arm": arms["arm"],
            "reached": [f"{r}/{s}" for r, s in zip(arms["reached"], arms["seeds"])],
            "steps to target": [pm(r, "steps_to_target", ".0f") for _, r in arms.iterrows()],
            "examples to target": [pm(r, "examples_to_target", ",.0f") for _, r in arms.iterrows()],
            "steps ratio": arms["steps_ratio"].map(lambda v: "-" if np.isnan(v) else f"{v:.2f}"),
            "examples run": [pm(r, "examples_run", ",.0f") for _, r in arms.iterrows()],
            "val loss at the budget": [pm(r, "val_loss", ".4f") for _, r in arms.iterrows()],
            "val metric at the budget": [pm(r, "val_metric", ".4f") for _, r in arms.iterrows()],
        }
    )
    return shown.to_string(index=False)
