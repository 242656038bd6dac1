"""Every figure of a sweep's analysis (analysis.curves.SweepAnalysis), and the
steps to result of several sweeps on one axis (Shallue et al. 2019, Fig. 5-6;
Lin et al. 2020). The callers compute the analysis and load the data; the
functions here only draw them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.compare import common_batch_sizes
from analysis.curves import Curve, SweepAnalysis
from analysis.noise_scale_plot import noise_scale_plot
from analysis.plots import save
from analysis.steps_plots import pareto_plot, steps_plot
from analysis.tables import GNS_RESULT
from analysis.text import target_label
from analysis.trial_plots import budget_plot, feasibility_map, feasibility_plot, metaparameters_plot
from harness.engine.optimizers import MOMENTUM_OPTIMIZERS
from harness.engine.trial import TrialConfig
from harness.errors import UserError

FIGURES = "figures"  # a sweep folder's subfolder of figures (`cbs plot`'s default --out)
STEPS = "steps"  # the steps-to-result figure's file name, without .png / .pdf


def _applied_learning_rate(best: pd.DataFrame) -> pd.Series:
    """The learning rate the trials trained with, after lr_scaling (harness.engine.trial)."""
    if "lr_scaling" not in best:
        return best["learning_rate"]
    return best.apply(
        lambda r: TrialConfig(
            workload="",
            batch_size=int(r["batch_size"]),
            learning_rate=r["learning_rate"],
            lr_scaling=r["lr_scaling"],
            reference_batch_size=None if r["lr_scaling"] == "none" else int(r["reference_batch_size"]),
        ).effective_learning_rate(),
        axis=1,
    )


def searched(sweep) -> list[str]:
    """The metaparameters of the feasibility figures that the trials vary:
    learning rate, and momentum for momentum optimizers (a fixed one draws no
    panel and no axis)."""
    names = ["learning_rate"] + (["momentum"] if sweep.spec["optimizer"] in MOMENTUM_OPTIMIZERS else [])
    return [n for n in names if n in sweep.trials and sweep.trials[n].nunique() > 1]


def steps_figure(sweep, analysis: SweepAnalysis, axis: str = "steps"):
    """(caption, Figure) of steps to result at every target of the analysis with
    a fit (at least 2 batch sizes) on one axis, titled by workload, optimizer and
    target; None when no target has one. `cbs sweep` and `cbs plot` both write it
    as FIGURES/STEPS."""
    curves = _curves(sweep, analysis)
    if not curves:
        return None
    main = target_label(sweep.spec, analysis.main.target)
    looser = len(curves) - (main in curves)
    title = f"{_name(sweep)}: {axis} to {main}" + (f" and {looser} looser target{'s' * (looser > 1)}" if looser else "")
    band = f"{analysis.main.fit.confidence:.0%}"
    return (
        f"{axis.capitalize()} to result vs batch size; dotted: perfect scaling from the smallest batch size; "
        f"dashed: McCandlish fit S_min (1 + B_crit / B), its shaded band every such curve with S_min and E_min "
        f"within their {band} bootstrap intervals (the interval bounds, not the replicates); diamond: B = B_crit.",
        steps_plot(
            {k: c.table for k, c in curves.items()}, {k: c.fit for k, c in curves.items()}, axis=axis, title=title
        ),
    )


def _name(sweep) -> str:
    return f"{sweep.spec['workload']}, {sweep.spec['optimizer']}"


def _curves(sweep, analysis: SweepAnalysis) -> dict[str, Curve]:
    curves = {target_label(sweep.spec, c.target): c for c in (analysis.main, *analysis.others)}
    return {k: c for k, c in curves.items() if len(c.table) >= 2}


def sweep_figures(sweep, analysis: SweepAnalysis, axis: str = "steps"):
    """Yield (name, caption, Figure) for every figure the sweep's data (analysis.load_sweep)
    and its analysis (analysis.curves.analyze_sweep) support: steps to result (`steps_figure`)
    and its normalised variant, the optimal metaparameters (the searched ones), the
    feasibility of the trials (two searched metaparameters: learning rate against 1 -
    momentum per batch size; one: against batch size), the best metric within budgets,
    the Pareto plot and the noise scale over training. `axis`: what the steps-to-result
    figures count (steps_plot)."""
    spec, main = sweep.spec, analysis.main
    curves = _curves(sweep, analysis)
    name, target = _name(sweep), target_label(spec, main.target)
    tables = {k: c.table for k, c in curves.items()}
    fits = {k: c.fit for k, c in curves.items()}
    if curves:
        yield (STEPS, *steps_figure(sweep, analysis, axis))
        shared = set.intersection(*(set(t["batch_size"]) for t in tables.values()))
        yield (
            "steps_normalised",
            f"{axis.capitalize()} to result divided by its value at B = {min(shared)}.",
            steps_plot(
                tables,
                fits,
                normalize_at=min(shared),
                axis=axis,
                title=f"{name}: {axis} to result, normalised at B = {min(shared)}",
            ),
        )
    varied = searched(sweep)
    if len(main.table):
        best = main.table.assign(learning_rate=_applied_learning_rate(main.table))
        if "momentum" not in varied:
            best = best.drop(columns="momentum", errors="ignore")
        yield (
            "metaparameters",
            f"Metaparameters of the best trial at each batch size ({target}), with the "
            "linear and square-root scaling rules anchored at the smallest batch size.",
            metaparameters_plot(best, title=f"{name}: optimal metaparameters ({target})"),
        )
    best_ids = dict(zip(main.table["batch_size"], main.table["trial_id"]))
    if len(varied) == 2:
        yield (
            "feasibility",
            "Every trial by learning rate and 1 - momentum; star: the best trial "
            "at its batch size; grey lines: contours of log10 of the effective learning rate.",
            feasibility_plot(
                sweep.trials,
                best_ids,
                title=f"{name}: feasibility of trials ({target}); contours: log10 η / (1 − momentum)",
            ),
        )
    elif varied:
        yield (
            "feasibility",
            f"Every trial by batch size and {varied[0].replace('_', ' ')}, the one "
            "metaparameter searched; star: the best trial at its batch size.",
            feasibility_map(sweep.trials, varied[0], best_ids, title=f"{name}: feasibility of trials ({target})"),
        )
    if len(analysis.within_budgets):
        yield (
            "budgets",
            "Best validation metric any complete trial reached within a step or example budget.",
            budget_plot(
                analysis.within_budgets, spec["metric"], title=f"{name}: best {spec['metric']} within a budget"
            ),
        )
    if curves:
        yield (
            "pareto",
            "Steps vs examples to reach each target with the fitted hyperbola (S/S_min - 1)(E/E_min - 1) = 1.",
            pareto_plot(tables, fits, title=f"{name}: steps vs examples to reach each target"),
        )
    measured = analysis.noise_scale_study
    if measured is not None or (
        "gns_b_simple" in sweep.measurements and sweep.measurements["gns_b_simple"].notna().any()
    ):
        yield (
            "noise_scale",
            "Gradient noise scale over training (B_simple: median over trials; with "
            f"{GNS_RESULT}, a `cbs gns` run's online and offline estimates), beside the critical batch "
            "size measured by the sweep.",
            noise_scale_plot(
                sweep.measurements,
                main.fit.b_crit,
                main.fit.b_crit_ci,
                main.fit.confidence,
                title=f"{name}: gradient noise scale over training",
                measured=measured,
            ),
        )


def plot_sweep(sweep, analysis: SweepAnalysis, out_dir, axis: str = "steps") -> list[Path]:
    """Write every figure of `sweep_figures` as PNG and PDF under `out_dir`;
    return the written paths."""
    return [path for name, _, fig in sweep_figures(sweep, analysis, axis) for path in save(fig, Path(out_dir) / name)]


def comparison_plot(curves: dict[str, Curve], axis: str = "steps", normalize: bool = True) -> Figure:
    """Steps to result of several sweeps (`curves`: label -> `analyze` of each at
    its own target) on one axis, normalised at the smallest batch size where each
    reached its target (Shallue et al. 2019, Fig. 5-6: optimizers, model sizes)
    or, with `normalize=False`, as measured (Lin et al. 2020: algorithms, with
    `axis="rounds"`). Sweeps that reached the target nowhere are left out."""
    curves = {k: c for k, c in curves.items() if len(c.table)}
    shared = common_batch_sizes(curves.values())
    if not shared:
        raise UserError(
            "the sweeps share no batch size at which each reached its target; allowed: sweeps with a common batch size"
        )
    return steps_plot(
        {k: c.table for k, c in curves.items()},
        {k: c.fit for k, c in curves.items()},
        normalize_at=min(shared) if normalize else None,
        axis=axis,
        title=f"{axis} to result of {len(curves)} sweeps" + (", normalised" if normalize else ""),
    )
