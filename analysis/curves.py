"""A sweep at one target: steps to result joined with the critical batch size
fit (what `cbs analyze`, `cbs sweep`, `cbs plot` and `cbs report` compute),
and the curves at further targets that a sweep's figures draw.

Steps to result per batch size follow Shallue et al. (2019, Sec. 3.1)
(analysis.steps); the fit is McCandlish et al.'s (2018, Eq. 2.11)
S(B) = S_min (1 + B_crit / B) (analysis.fit). The text that reports them is
analysis.text; edge hits of the search are analysis.edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.fit import FitResult, fit_steps
from analysis.steps import best_metric_within_budgets, steps_to_result, unknown_batch_sizes
from analysis.tables import load_sweep, read_noise_scale_study
from harness.engine.targets import check_target
from harness.errors import UserError

LOOSER_TARGETS = (0.1, 0.3)  # extra targets for the Pareto plot: fractions of the way
# (in log space) from the target to the first evaluation


@dataclass
class Curve:
    """Steps to result of a sweep at one target (analysis.steps.steps_to_result)
    and its McCandlish fit (analysis.fit.fit_steps)."""

    target: float
    table: pd.DataFrame
    fit: FitResult
    unknown: list = field(default_factory=list)  # batch sizes left out: unknowable at a stricter target
    step_budget: int | None = None
    example_budget: int | None = None


def analyze(
    sweep,
    target: float | None = None,
    *,
    step_budget: int | None = None,
    example_budget: int | None = None,
    **fit_options,
) -> Curve:
    """Steps to result and the fit of a sweep (analysis.load_sweep) at `target`
    (default: the spec's), counting only evaluations within the step and
    example budgets (Shallue et al. 2019, Sec. 3.2; None: no budget). Exact on
    a pruned sweep: at a looser target than the spec's every non-diverged
    trial's crossings count (analysis.steps); at a stricter one the batch
    sizes where trials stopped at the spec's target are left out and named in
    `unknown`."""
    if target is None:
        target = sweep.spec["target"]
        if target is None:
            raise UserError(f"{sweep.folder}: the sweep records no target (batch_science data); give --target")
    else:
        check_target(sweep.spec["metric"], target, "--target")
    direction, spec_target = sweep.spec["direction"], sweep.spec["target"]
    budgets = dict(step_budget=step_budget, example_budget=example_budget)
    table = steps_to_result(sweep.trials, sweep.measurements, target, direction, spec_target=spec_target, **budgets)
    unknown = unknown_batch_sizes(sweep.trials, target, spec_target, direction) if spec_target is not None else []
    table = table[~table["batch_size"].isin(unknown)].reset_index(drop=True)
    fit = fit_steps(table["batch_size"].to_numpy(float), table["steps"].to_numpy(float), **fit_options)
    return Curve(target, table, fit, unknown, **budgets)


def looser_targets(sweep, fractions=LOOSER_TARGETS) -> list[float]:
    """Targets between the spec's and the median metric at the trials' first
    evaluation, geometrically interpolated and rounded to two digits: the
    several targets of McCandlish et al.'s Fig. 7 (2018). Looser targets are
    exact on a pruned sweep too (see `analyze`)."""
    target = sweep.spec["target"]
    rows = sweep.measurements.sort_values("step").drop_duplicates("trial_id")
    start = float(rows["val_metric"].median()) if len(rows) else math.nan
    if not (target > 0 and start > 0) or start == target:
        return []
    return [float(f"{target * (start / target) ** f:.2g}") for f in fractions]


@dataclass
class SweepAnalysis:
    """What a sweep's figures draw (analysis.sweep_figures), computed once."""

    main: Curve  # at the spec's target
    others: list[Curve]  # at the further targets, in order
    within_budgets: pd.DataFrame  # analysis.steps.best_metric_within_budgets
    noise_scale_study: dict | None  # the folder's `cbs gns` result (analysis.tables.read_noise_scale_study)


def analyze_sweep(sweep, targets=None, main: Curve | None = None, **budgets) -> SweepAnalysis:
    """`analyze` at the spec's target (`main`, when already computed) and at
    `targets` (default: `looser_targets`; the spec's own is not repeated), with
    `analyze`'s step_budget and example_budget; the best metric within step and
    example budgets (Shallue et al. 2019, Fig. 11); the `cbs gns` run in the folder."""
    main = analyze(sweep, **budgets) if main is None else main
    others = [
        analyze(sweep, t, **budgets)
        for t in (looser_targets(sweep) if targets is None else targets)
        if t != main.target
    ]
    within = best_metric_within_budgets(sweep.trials, sweep.measurements, sweep.spec["direction"])
    return SweepAnalysis(main, others, within, read_noise_scale_study(sweep.folder))


def search_space(sweep) -> dict:
    """The searched metaparameters of the sweep's spec ({} without a search)."""
    return (sweep.spec.get("search") or {}).get("space") or {}


def evaluated_up_to(sweep, curve: Curve, batch_size: int) -> int | None:
    """The last step at which a non-diverged trial at `batch_size` was
    evaluated within the curve's budgets: where none reached the target,
    steps to result there exceed it (None: no evaluation yet)."""
    ran = sweep.trials.loc[
        (sweep.trials["batch_size"] == batch_size) & (sweep.trials["status"] != "diverged"), "trial_id"
    ]
    steps = sweep.measurements.loc[sweep.measurements["trial_id"].isin(ran), "step"]
    if curve.step_budget is not None:
        steps = steps[steps <= curve.step_budget]
    if curve.example_budget is not None:
        steps = steps[steps * batch_size <= curve.example_budget]
    return int(steps.max()) if len(steps) else None


def b_crit_interval(folder) -> tuple[float, float] | None:
    """The 90% interval of B_crit of a sweep folder so far (the fit of `analyze`),
    or None while the data give none (fewer than three batch sizes at the target,
    or one regime only): the stop rule of an adaptive search (harness.sweep.rounds)."""
    curve = analyze(load_sweep(folder))
    lo, hi = curve.fit.b_crit_ci
    if curve.fit.b_crit_bound is not None or not (math.isfinite(lo) and math.isfinite(hi) and lo > 0):
        return None
    return float(lo), float(hi)
