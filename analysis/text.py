"""A sweep's analysis (analysis.curves) in words and tables, as `cbs analyze`
and `cbs sweep` print it and `cbs report` shows it: the steps-to-result table
(Shallue et al. 2019, Sec. 3.1), the batch sizes that did not reach the
target, the edge hits of the search (analysis.edges), the final metrics
(analysis.final_metrics) and the fits of the critical batch size (McCandlish
et al. 2018, Eq. 2.11; Zhang et al. 2024, Sec. 3.1; Shallue et al. 2019,
Sec. 4.1)."""

from __future__ import annotations

import math

import pandas as pd

from analysis.curves import Curve, evaluated_up_to, search_space
from analysis.edges import edge_hits, edge_points
from analysis.final_metrics import final_metrics
from analysis.steps import best_metric


def num(x, digits=4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def target_label(spec: dict, target: float) -> str:
    return f"{spec['metric']} {'<' if spec['direction'] == 'min' else '>'} {target:g}"


def budget_label(curve: Curve) -> str:
    """'within 500 steps and 64,000 examples', or '' without budgets."""
    parts = [
        f"{n:,} {unit}"
        for n, unit in ((curve.step_budget, "steps"), (curve.example_budget, "examples"))
        if n is not None
    ]
    return f"within {' and '.join(parts)}" if parts else ""


def sweep_labels(sweeps) -> list[str]:
    """A legend label per sweep: its spec's name (else workload and optimizer),
    or its folder where those do not tell the sweeps apart."""
    labels = [s.spec["name"] or f"{s.spec['workload']} ({s.spec['optimizer']})" for s in sweeps]
    return [str(s.folder) for s in sweeps] if len(set(labels)) < len(labels) else labels


def steps_table(sweep, curve: Curve) -> pd.DataFrame:
    """The steps-to-result columns a reader needs: batch size, steps, examples,
    communication rounds, the resolution (evaluation cadence at the crossing),
    the searched metaparameters of the best trial and its id."""
    searched = [c for c in search_space(sweep) if c in curve.table]
    return curve.table[["batch_size", "steps", "examples", "rounds", "resolution", *searched, "trial_id"]]


def edge_text(sweep, hits) -> str:
    """One warning line naming the edge hits (analysis.edges.edge_hits) and, per
    batch size, how often chance alone would put the best trial on an edge; '' if none."""
    if not hits:
        return ""
    named = "; ".join(f"B = {b}: {name} at the {edge} value tried" for b, name, edge in hits)
    chance = "; ".join(f"B = {b}: {k} of {n}" for b in sorted({h[0] for h in hits}) for k, n in [edge_points(sweep, b)])
    return (
        f"warning: the best trial sits on an edge of the search ({named}): the optimum may lie beyond; "
        f"widen the range (points tried that sit on some edge, the odds of an edge hit by chance alone: {chance})"
    )


def unreached(sweep, curve: Curve) -> str:
    """The sentences naming the spec's batch sizes where no trial reached the
    target, each with how far its trials were evaluated, and those where the
    answer is unknown ('' if none)."""
    missing = sorted(set(sweep.spec["batch_sizes"]) - set(curve.table["batch_size"]) - set(curve.unknown))
    reach = {b: evaluated_up_to(sweep, curve, b) for b in missing}
    named = ", ".join(
        f"{b} ({'not evaluated yet' if n is None else f'evaluated up to step {n}'})" for b, n in reach.items()
    )
    lines = [f"no trial reached the target at batch size(s) {named}"] if missing else []
    if curve.unknown:
        lines.append(
            f"warning: steps to result unknown at batch size(s) {', '.join(map(str, curve.unknown))}: "
            "trials there stopped at the sweep's own target, which this target is stricter than "
            "(re-run with prune = false and stop_at_target = false to measure it); left out of the fit"
        )
    return "\n".join(lines)


def size(x) -> str:
    """A batch size for a reader: whole examples from 100 on ('414'), else 3 digits ('82.8'); 'n/a' if none."""
    if x is None or math.isnan(x):
        return "n/a"
    return "unbounded" if math.isinf(x) else f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def interval(lo, hi, confidence) -> str:
    """'90% interval 300 .. 569', or 'no 90% interval' where the bootstrap gave none."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"no {confidence:.0%} interval"
    return f"{confidence:.0%} interval {size(lo)} .. {size(hi)}"


def best_reached(sweep, curve: Curve) -> str:
    """Where no trial reached the target: the best validation metric a complete
    trial reached within the curve's budgets, and its batch size."""
    best = best_metric(
        sweep.trials, sweep.measurements, sweep.spec["direction"], curve.step_budget, curve.example_budget
    )
    if best.empty:
        return "no complete trial has been evaluated yet"
    row = best.sort_values("value", ascending=sweep.spec["direction"] == "min").iloc[0]
    return (
        f"the best {sweep.spec['metric']} reached was {row['value']:.4g} at B = {row['batch_size']} "
        f"(step {row['step']}, trial {row['trial_id']})"
    )


def b_crit_value(fit) -> str:
    """B_crit as the headline shows it: '414', the bound '>= 1024' / '<= 16', or 'n/a'."""
    bound = {"lower": ">= ", "upper": "<= "}.get(fit.b_crit_bound)
    return bound + size(fit.b_crit_bound_value) if bound else size(fit.b_crit)


def headline(sweep, curve: Curve) -> str:
    """The one line to act on: McCandlish et al.'s (2018, Eq. 2.11) B_crit with
    its interval and what it means (at B = B_crit training takes 2 S_min steps
    and 2 E_min examples), or the one-sided bound, or why there is none."""
    fit, ref, value = curve.fit, "(McCandlish et al. 2018)", b_crit_value(curve.fit)
    if curve.table.empty:
        return (
            f"critical batch size: n/a: no trial reached {target_label(sweep.spec, curve.target)}; "
            f"{best_reached(sweep, curve)}"
        )
    if fit.b_crit_bound == "lower":
        return (
            f"critical batch size: {value} (not reached: steps follow perfect scaling up to the largest "
            "batch size): larger batches still cut the steps about in proportion; measure beyond "
            f"B = {size(fit.b_crit_bound_value)} to find where that stops {ref}"
        )
    if fit.b_crit_bound == "upper":
        return (
            f"critical batch size: {value} (steps stay flat from the smallest batch size on): larger "
            f"batches buy few steps anywhere here; measure below B = {size(fit.b_crit_bound_value)} to "
            f"find it {ref}"
        )
    if not math.isfinite(fit.b_crit):
        return (
            f"critical batch size: n/a: only {len(fit.batch_sizes)} batch size reached the target, "
            "a fit needs at least 2"
        )
    lo, hi = fit.b_crit_ci
    return (
        f"critical batch size: {value} ({interval(lo, hi, fit.confidence)}): training at B = {value} "
        "takes twice the minimal steps and twice the minimal examples; beyond it, larger batches buy few "
        f"steps {ref}"
    )


def definitions(fit) -> list[str]:
    """The other definitions of the critical batch size, indented under the
    headline, each with what it means: the step-overhead one (Zhang et al.
    2024, Sec. 3.1), where perfect scaling ends and the maximal useful batch
    size (Shallue et al. 2019, Sec. 4.1)."""
    if len(fit.batch_sizes) < 2:
        return []
    largest = size(fit.batch_sizes[-1])
    lo, hi = fit.b_crit_overhead_ci
    empirical = size(fit.b_crit_overhead_empirical) if math.isfinite(fit.b_crit_overhead_empirical) else "not reached"
    overhead = (
        f"  {fit.overhead_percent:g}% step-overhead B_crit (Zhang et al. 2024): "
        + (
            "n/a (no fit)"
            if not math.isfinite(fit.b_crit_overhead)
            else f"{size(fit.b_crit_overhead)} ({interval(lo, hi, fit.confidence)})"
        )
        + f": there steps are {fit.overhead_percent:g}% above perfect scaling (E_min / B); "
        f"from the smallest batch size instead: {empirical}"
    )
    shallue = "(Shallue et al. 2019)"
    ends = (
        f"perfect scaling ends: not reached {shallue}: it holds up to the largest batch size, {largest}"
        if fit.perfect_scaling_end == fit.batch_sizes[-1]
        else f"perfect scaling ends at B = {size(fit.perfect_scaling_end)} {shallue}: up to it, doubling the batch "
        "size about halves the steps"
    )
    useful = (
        f"maximal useful batch size: not reached {shallue}: steps still fall at the largest batch size, {largest}"
        if fit.max_useful_batch_size == fit.batch_sizes[-1]
        else f"maximal useful batch size: {size(fit.max_useful_batch_size)} {shallue}: beyond it, larger batches "
        "save no more steps than the noise"
    )
    return [overhead, f"  {ends}", f"  {useful}"]


def fit_details(fit) -> str:
    """How B_crit was fitted: McCandlish et al.'s (2018, Eq. 2.11) curve, S_min
    and E_min, and the bootstrap behind the interval."""
    return (
        f"fit S(B) = S_min (1 + B_crit / B) on log steps (McCandlish et al. 2018): S_min = {num(fit.s_min)} "
        f"steps (the fewest, at very large B), E_min = {num(fit.e_min)} examples (the fewest, at very small B), "
        f"B_crit = E_min / S_min = {num(fit.b_crit)}; interval: {fit.bootstrap} bootstrap, "
        f"{fit.n_bootstrap} replicates, fixed seed"
    )


def fit_summary(sweep, curve: Curve) -> list[str]:
    """The fit in sentences: how it was fitted, its warnings (prefixed
    'warning:'), then the headline and the other definitions under it."""
    fit = curve.fit
    details = [fit_details(fit)] if len(fit.batch_sizes) >= 2 else []
    return [*details, *(f"warning: {w}" for w in fit.warnings), headline(sweep, curve), *definitions(fit)]


def summary_text(sweep, curve: Curve, notes=()) -> str:
    """The steps-to-result table, `notes` (lines such as where a figure went) and
    the fits ending in the headline, as `cbs analyze` and `cbs sweep` print them."""
    spec = sweep.spec
    budget = budget_label(curve)
    lines = [
        f"steps to result ({target_label(spec, curve.target)}{' ' + budget if budget else ''}, "
        f"{spec['workload']}, {spec['optimizer']}; {len(sweep.trials)} trials):"
    ]
    if curve.table.empty:
        return "\n".join(lines + ["  no batch size reached the target", *notes, headline(sweep, curve)])
    lines.append(steps_table(sweep, curve).to_string(index=False, na_rep="n/a", float_format=lambda v: f"{v:.4g}"))
    if missing := unreached(sweep, curve):
        lines.append(missing)
    if edges := edge_text(sweep, edge_hits(sweep, curve)):
        lines.append(edges)
    if (final := final_metrics(sweep)) is not None and len(final):
        lines += [
            f"best {spec['metric']} at the end of training (trials trained to their budget, diverged ones left out):",
            final.to_string(index=False, na_rep="n/a", float_format=lambda v: f"{v:.4g}"),
        ]
    return "\n".join([*lines, *notes, *fit_summary(sweep, curve)])
