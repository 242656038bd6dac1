"""A sweep at one target: steps to result joined with the critical batch size
fit, and the text that reports them (what `cbs analyze`, `cbs sweep` and
`cbs report` print).

Steps to result per batch size follow Shallue et al. (2019, Sec. 3.1)
(analysis.steps); the fit is McCandlish et al.'s (2018, Eq. 2.11)
S(B) = S_min (1 + B_crit / B) (analysis.fit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.fit import FitResult, fit_steps
from analysis.steps import steps_to_result, unknown_batch_sizes
from harness.engine.targets import check_target
from harness.errors import UserError

LOOSER_TARGETS = (0.1, 0.3)  # extra targets for the Pareto plot: fractions of the way
                             # (in log space) from the target to the first evaluation


@dataclass
class Curve:
    """Steps to result of a sweep at one target (analysis.steps.steps_to_result)
    and its McCandlish fit (analysis.fit.fit_sweep)."""

    target: float
    table: pd.DataFrame
    fit: FitResult
    unknown: list = field(default_factory=list)  # batch sizes left out: unknowable at a stricter target
    step_budget: int | None = None
    example_budget: int | None = None


def target_label(spec: dict, target: float) -> str:
    return f"{spec['metric']} {'<' if spec['direction'] == 'min' else '>'} {target:g}"


def analyze(sweep, target: float | None = None, *, step_budget: int | None = None,
            example_budget: int | None = None, **fit_options) -> Curve:
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


def budget_label(curve: Curve) -> str:
    """'within 500 steps and 64,000 examples', or '' without budgets."""
    parts = [f"{n:,} {unit}" for n, unit in ((curve.step_budget, "steps"), (curve.example_budget, "examples"))
             if n is not None]
    return f"within {' and '.join(parts)}" if parts else ""


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


def num(x, digits=4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def search_space(sweep) -> dict:
    """The searched metaparameters of the sweep's spec ({} without a search)."""
    return (sweep.spec.get("search") or {}).get("space") or {}


def steps_table(sweep, curve: Curve) -> pd.DataFrame:
    """The steps-to-result columns a reader needs: batch size, steps, examples,
    communication rounds, the resolution (evaluation cadence at the crossing),
    the searched metaparameters of the best trial and its id."""
    searched = [c for c in search_space(sweep) if c in curve.table]
    return curve.table[["batch_size", "steps", "examples", "rounds", "resolution", *searched, "trial_id"]]


def final_metrics(sweep) -> pd.DataFrame | None:
    """Per batch size, the best validation metric at the end of training over
    the trials that trained their whole budget (stop_at_target = false), as
    the papers that compare final quality report it (Goyal et al. 2017, Table
    2; Lin et al. 2020, Table 1): columns batch_size, final_metric, step,
    the searched metaparameters of that trial and trial_id. Diverged trials
    count as failed, not as a value. None when every trial stopped at the target."""
    trials = sweep.trials
    if "stop_at_target" not in trials or trials["stop_at_target"].astype(bool).all():
        return None
    ran = trials[~trials["stop_at_target"].astype(bool) & (trials["status"] != "diverged")]
    last = sweep.measurements.sort_values("step").drop_duplicates("trial_id", keep="last")
    rows = ran.merge(last[["trial_id", "step", "val_metric"]], on="trial_id").rename(
        columns={"val_metric": "final_metric"})
    rows = rows.sort_values(["batch_size", "final_metric", "trial_id"],
                            ascending=[True, sweep.spec["direction"] == "min", True])
    searched = [c for c in search_space(sweep) if c in rows]
    return rows.drop_duplicates("batch_size")[["batch_size", "final_metric", "step", *searched, "trial_id"]] \
        .reset_index(drop=True)


def _searched_numeric(sweep, columns) -> list[str]:
    return [n for n in search_space(sweep) if n in columns and n in sweep.trials
            and pd.api.types.is_numeric_dtype(sweep.trials[n])]


def _edge(value, values: pd.Series) -> str | None:
    """'largest' or 'smallest' when `value` is that of the values tried, None
    when it lies between them or all of them are equal."""
    if values.nunique() < 2:
        return None
    return "largest" if value == values.max() else "smallest" if value == values.min() else None


def edge_hits(sweep, curve: Curve) -> list[tuple[int, str, str]]:
    """(batch size, metaparameter, 'largest' | 'smallest') where the best
    trial's value of a searched numeric metaparameter is the largest or the
    smallest value tried at that batch size: the optimum may lie outside the
    search space, which must then be widened (Shallue et al. 2019, Sec. 4.5
    and App. D: the best trial should sit strictly inside it)."""
    names = _searched_numeric(sweep, curve.table)
    hits = []
    for row in curve.table.itertuples():
        tried = sweep.trials[sweep.trials["batch_size"] == row.batch_size]
        for name in names:
            if edge := _edge(getattr(row, name), tried[name]):
                hits.append((int(row.batch_size), name, edge))
    return hits


def edge_points(sweep, batch_size: int) -> tuple[int, int]:
    """(k, n): k of the n points tried at `batch_size` sit on an edge of some
    searched numeric metaparameter. A best trial that lands on a point at
    random is on an edge with probability k / n, so an edge hit tells little
    where few points search several metaparameters (with n points, each
    metaparameter puts 2 of them on an edge)."""
    tried = sweep.trials[sweep.trials["batch_size"] == batch_size]
    names = _searched_numeric(sweep, tried)
    on_an_edge = sum(any(_edge(point[name], tried[name]) for name in names) for _, point in tried.iterrows())
    return on_an_edge, len(tried)


def edge_text(sweep, hits) -> str:
    """One warning line naming the edge hits and, per batch size, how often
    chance alone would put the best trial on an edge; '' if none."""
    if not hits:
        return ""
    named = "; ".join(f"B = {b}: {name} at the {edge} value tried" for b, name, edge in hits)
    chance = "; ".join(f"B = {b}: {k} of {n}" for b in sorted({h[0] for h in hits})
                       for k, n in [edge_points(sweep, b)])
    return (f"warning: the best trial sits on an edge of the search ({named}): the optimum may lie beyond; "
            f"widen the range (points tried that sit on some edge, the odds of an edge hit by chance alone: {chance})")


def evaluated_up_to(sweep, curve: Curve, batch_size: int) -> int | None:
    """The last step at which a non-diverged trial at `batch_size` was
    evaluated within the curve's budgets: where none reached the target,
    steps to result there exceed it (None: no evaluation yet)."""
    ran = sweep.trials.loc[(sweep.trials["batch_size"] == batch_size) & (sweep.trials["status"] != "diverged"),
                           "trial_id"]
    steps = sweep.measurements.loc[sweep.measurements["trial_id"].isin(ran), "step"]
    if curve.step_budget is not None:
        steps = steps[steps <= curve.step_budget]
    if curve.example_budget is not None:
        steps = steps[steps * batch_size <= curve.example_budget]
    return int(steps.max()) if len(steps) else None


def unreached(sweep, curve: Curve) -> str:
    """The sentences naming the spec's batch sizes where no trial reached the
    target, each with how far its trials were evaluated, and those where the
    answer is unknown ('' if none)."""
    missing = sorted(set(sweep.spec["batch_sizes"]) - set(curve.table["batch_size"]) - set(curve.unknown))
    reach = {b: evaluated_up_to(sweep, curve, b) for b in missing}
    named = ", ".join(f"{b} ({'not evaluated yet' if n is None else f'evaluated up to step {n}'})"
                      for b, n in reach.items())
    lines = [f"no trial reached the target at batch size(s) {named}"] if missing else []
    if curve.unknown:
        lines.append(f"warning: steps to result unknown at batch size(s) {', '.join(map(str, curve.unknown))}: "
                     "trials there stopped at the sweep's own target, which this target is stricter than "
                     "(re-run with prune = false and stop_at_target = false to measure it); left out of the fit")
    return "\n".join(lines)


def fit_summary(curve: Curve) -> list[str]:
    """The fit in sentences: both definitions of the critical batch size, the
    regimes of Shallue et al. (2019) and the fit's warnings (prefixed 'warning:')."""
    fit = curve.fit
    olo, ohi = fit.b_crit_overhead_ci
    return [
        f"critical batch size B_crit = E_min / S_min (McCandlish et al. 2018): {fit.b_crit_text()} "
        f"({fit.bootstrap} bootstrap on log steps, {fit.n_bootstrap} replicates, fixed seed)",
        f"S_min = {num(fit.s_min)} steps, E_min = {num(fit.e_min)} examples",
        f"critical batch size at {fit.overhead_percent:g}% step overhead (Zhang et al. 2024; reference: "
        f"{fit.overhead_reference}): {num(fit.b_crit_overhead)} ({num(olo)} .. {num(ohi)}); "
        f"with the smallest measured batch size as reference: {num(fit.b_crit_overhead_empirical)}",
        f"perfect scaling up to B = {num(fit.perfect_scaling_end)}; maximal useful batch size "
        f"(Shallue et al. 2019): {num(fit.max_useful_batch_size)}",
        *(f"warning: {w}" for w in fit.warnings),
    ]


def summary_text(sweep, curve: Curve) -> str:
    """The steps-to-result table and the fits, as `cbs analyze` and `cbs sweep` print them."""
    spec = sweep.spec
    budget = budget_label(curve)
    lines = [f"steps to result ({target_label(spec, curve.target)}{' ' + budget if budget else ''}, "
             f"{spec['workload']}, {spec['optimizer']}; {len(sweep.trials)} trials):"]
    if curve.table.empty:
        return "\n".join(lines + ["  no batch size reached the target"])
    lines.append(steps_table(sweep, curve).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if missing := unreached(sweep, curve):
        lines.append(missing)
    if edges := edge_text(sweep, edge_hits(sweep, curve)):
        lines.append(edges)
    if (final := final_metrics(sweep)) is not None and len(final):
        lines += [f"best {spec['metric']} at the end of training (trials trained to their budget, diverged ones "
                  "left out):", final.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines + fit_summary(curve))
