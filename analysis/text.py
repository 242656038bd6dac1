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


def num(x, digits=4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def target_label(spec: dict, target: float) -> str:
    return f"{spec['metric']} {'<' if spec['direction'] == 'min' else '>'} {target:g}"


def budget_label(curve: Curve) -> str:
    """'within 500 steps and 64,000 examples', or '' without budgets."""
    parts = [f"{n:,} {unit}" for n, unit in ((curve.step_budget, "steps"), (curve.example_budget, "examples"))
             if n is not None]
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
    chance = "; ".join(f"B = {b}: {k} of {n}" for b in sorted({h[0] for h in hits})
                       for k, n in [edge_points(sweep, b)])
    return (f"warning: the best trial sits on an edge of the search ({named}): the optimum may lie beyond; "
            f"widen the range (points tried that sit on some edge, the odds of an edge hit by chance alone: {chance})")


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
