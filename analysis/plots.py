"""The figures of Shallue et al. (2019, JMLR) and McCandlish et al. (2018).

Each drawing function takes tables (pandas DataFrames) and returns a
matplotlib Figure without touching global state (figures are built with
`matplotlib.figure.Figure`, rendered by the Agg backend, never shown), so tests
can inspect what was drawn and callers decide where it goes: `save` writes PNG
and PDF, `sweep_figures` yields every figure a sweep's data supports and
`plot_sweep` writes them all.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from analysis.curves import Curve, analyze, looser_targets, target_label
from analysis.steps import best_metric
from harness.errors import UserError
from harness.engine.trial import TrialConfig

BATCH_LABEL = "batch size (examples per step)"
GNS_RESULT = "gns/gns.json"  # a `cbs gns --out SWEEP/gns` run of the sweep's workload, drawn with its noise scale
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
STATUS_STYLE = {  # feasibility categories (Shallue et al. 2019, Fig. 9)
    "reached": dict(marker="o", color="tab:blue", label="reached target"),
    "not reached": dict(marker="o", facecolors="none", edgecolors="tab:gray",
                        label="did not reach target"),
    "diverged": dict(marker="x", color="tab:red", label="diverged"),
}


def save(fig: Figure, path_stem) -> list[Path]:
    """Write `fig` as `<path_stem>.png` (150 dpi) and `<path_stem>.pdf`; return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)  # the constrained layout already fits the labels
    return paths


def _figure(ncols=1, nrows=1, width=5.5, height=4.0, **kw):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _log(ax, which="x", base=2):
    """Log scale with ticks at powers of `base`, labelled 2ᵏ / 10ᵏ in plain
    Unicode (mathtext, matplotlib's default, is parsed anew for every label and
    dominated the drawing time). No minor ticks: there are no integer
    subdivisions between powers of two, and on the many small log10 panels of
    the feasibility plot they cost more time than they help."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.dataLim.intervalx if which == "x" else ax.dataLim.intervaly
    # Whole decades for base 10, so that at least two ticks are labelled; one
    # power of `base` either side of a single value (a singular range otherwise).
    if 0 < lo <= hi < math.inf and (base == 10 or lo == hi):
        (ax.set_xlim if which == "x" else ax.set_ylim)(*(_decades(lo, hi) if base == 10 else (lo / base, hi * base)))
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
    axis.set_major_locator(LogLocator(base=base, numticks=12))
    axis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{base}{str(round(math.log(v, base))).translate(SUPERSCRIPT)}" if v > 0 else ""))
    axis.set_minor_locator(NullLocator())
    ax.grid(True, which="major", alpha=0.3)


def _decades(lo, hi):
    """The powers of ten just below `lo` and just above `hi`."""
    return 10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi) + 1e-9)


def _fit_usable(fit):
    return fit is not None and all(math.isfinite(v) and v > 0 for v in (fit.s_min, fit.b_crit))


AXES = {"steps": "training steps", "examples": "training examples", "rounds": "communication rounds"}


def steps_plot(curves: dict[str, pd.DataFrame], fits: dict | None = None, *,
               normalize_at: int | None = None, axis: str = "steps", ylabel: str | None = None,
               title: str | None = None) -> Figure:
    """Steps to result vs batch size, both axes log2 (Shallue et al. 2019, Fig. 1).

    `curves` maps a label (workload, optimizer, target...) to a table with
    columns batch_size and `axis`: steps, examples (steps * B) or rounds
    (communication rounds: steps for mini-batch SGD, fewer for local SGD; Lin
    et al. 2020). Each curve is drawn with its perfect-scaling line anchored at
    its smallest batch size (y[0] * B[0] / B; flat for examples) and, when
    `fits[label]` (an analysis.fit.FitResult) is given, the fitted McCandlish
    curve S(B) = S_min (1 + B_crit / B), or E(B) = B S(B) for examples (no fit
    curve for rounds). With `normalize_at=B_ref` every curve is divided by its
    value at B_ref (Shallue et al. 2019, Fig. 5 and 6: comparisons of
    optimizers and model sizes on one axis), and one perfect-scaling line is
    drawn.
    """
    if axis not in AXES:
        raise UserError(f"axis: unknown {axis!r}; allowed: {', '.join(AXES)}")
    fits = fits or {}
    scaling = (lambda b: np.ones_like(b)) if axis == "examples" else (lambda b: 1.0 / b)
    fig, axes = _figure(width=9.0, height=4.5)  # room for the legend on the right
    ax = axes[0, 0]
    all_sizes = set()
    for i, (label, table) in enumerate(curves.items()):
        table = table.dropna(subset=[axis]).sort_values("batch_size")
        b = table["batch_size"].to_numpy(float)
        y = table[axis].to_numpy(float)
        if not len(b):
            continue
        all_sizes.update(b)
        scale = 1.0
        if normalize_at is not None:
            at = table.loc[table["batch_size"] == normalize_at, axis]
            if at.empty:
                raise ValueError(f"curve {label!r} has no {axis} at batch size {normalize_at}")
            scale = float(at.iloc[0])
        color = f"C{i % 10}"
        ax.plot(b, y / scale, "o-", color=color, label=label, zorder=3)
        if normalize_at is None:
            ax.plot(b, y[0] * scaling(b) / scaling(b[0]), ":", color=color, alpha=0.8,
                    label=f"{label}: perfect scaling")
        fit = fits.get(label)
        if _fit_usable(fit) and axis != "rounds":
            grid = np.geomspace(b[0], b[-1], 200)
            per_step = grid if axis == "examples" else 1.0
            ax.plot(grid, fit.predict(grid) * per_step / scale, "--", color=color, alpha=0.8,
                    label=f"{label}: fit, B_crit = {fit.b_crit:.3g}")
    if normalize_at is not None and all_sizes:
        b = np.array(sorted(all_sizes), dtype=float)
        ax.plot(b, scaling(b) / scaling(normalize_at), ":", color="0.4", label="perfect scaling")
    _log(ax, "x")
    _log(ax, "y")
    ax.set_xlabel(BATCH_LABEL)
    ax.set_ylabel(f"{axis} / {axis} at B = {normalize_at}" if normalize_at is not None
                  else f"{ylabel or f'{axis} to result'} ({AXES[axis]})")
    ax.set_title(title or (f"normalised {axis} to result" if normalize_at is not None else f"{axis} to result"))
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


def metaparameters_plot(best: pd.DataFrame, title: str | None = None) -> Figure:
    """Optimal learning rate, 1 - momentum and effective learning rate
    eta / (1 - momentum) vs batch size (Shallue et al. 2019, Fig. 8), with the
    linear (Goyal et al. 2017) and square-root scaling heuristics anchored at the
    smallest batch size. `best` has one row per batch size with columns
    batch_size, learning_rate and, for momentum optimizers, momentum.
    """
    best = best.dropna(subset=["learning_rate"]).sort_values("batch_size")
    b = best["batch_size"].to_numpy(float)
    lr = best["learning_rate"].to_numpy(float)
    panels = [(lr, "optimal learning rate", True)]
    if "momentum" in best:
        m = best["momentum"].to_numpy(float)
        panels += [(1 - m, "1 − optimal momentum", False),
                   (lr / (1 - m), "effective learning rate η / (1 − momentum)", True)]
    fig, axes = _figure(ncols=len(panels), width=4.5)
    for ax, (y, ylabel, heuristics) in zip(axes[0], panels):
        ax.plot(b, y, "o-", color="C0", label="best trial", zorder=3)
        if heuristics and len(b):
            ax.plot(b, y[0] * b / b[0], "--", color="C1", label="linear scaling")
            ax.plot(b, y[0] * np.sqrt(b / b[0]), ":", color="C2", label="square-root scaling")
        _log(ax, "x")
        _log(ax, "y", 10)
        ax.set_xlabel(BATCH_LABEL)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def feasibility_category(trials: pd.DataFrame) -> pd.Series:
    """'reached', 'not reached' or 'diverged' per trial (Shallue et al. 2019, Sec. 4.6:
    infeasible trials are the diverged ones); incomplete trials get NaN (ignored)."""
    reached = trials["status"].eq("complete") & trials["steps_to_target"].notna()
    cat = pd.Series(np.where(reached, "reached", "not reached"), index=trials.index, dtype=object)
    cat[trials["status"].eq("diverged")] = "diverged"
    cat[trials["status"].eq("incomplete")] = np.nan
    return cat


def feasibility_plot(trials: pd.DataFrame, best_trial_ids: dict | None = None,
                     title: str | None = None) -> Figure:
    """One panel per batch size: learning rate vs 1 - momentum, log-log, each
    trial marked reached / did not reach target / diverged (x), contours of
    log10(eta / (1 - momentum)), the best trial starred (Shallue et al. 2019,
    Fig. 9). `trials` has columns trial_id, batch_size, status, steps_to_target,
    learning_rate, momentum; `best_trial_ids` maps batch size -> trial id.
    """
    trials = trials.assign(category=feasibility_category(trials)).dropna(subset=["category"])
    best_trial_ids = best_trial_ids or {}
    sizes = sorted(trials["batch_size"].unique())
    ncols = min(4, len(sizes))
    nrows = math.ceil(len(sizes) / ncols)
    fig, axes = _figure(ncols, nrows, width=3.3, height=3.0, sharex=True, sharey=True)
    x_all = trials["learning_rate"].to_numpy(float)
    y_all = 1 - trials["momentum"].to_numpy(float)
    xs = np.geomspace(*_decades(x_all.min(), x_all.max()), 100)
    ys = np.geomspace(*_decades(y_all.min(), y_all.max()), 100)
    X, Y = np.meshgrid(xs, ys)
    Z = np.log10(X / Y)
    levels = np.arange(math.floor(Z.min()), math.ceil(Z.max()) + 1)
    for ax in axes.flat[len(sizes):]:
        ax.set_visible(False)
    for ax, size in zip(axes.flat, sizes):
        at = trials[trials["batch_size"] == size]
        cs = ax.contour(X, Y, Z, levels=levels, colors="0.75", linewidths=0.7,
                        negative_linestyles="solid")
        ax.clabel(cs, fmt=lambda v: f"{v:g}", fontsize=7, colors="0.45")
        for cat, style in STATUS_STYLE.items():
            rows = at[at["category"] == cat]
            ax.scatter(rows["learning_rate"], 1 - rows["momentum"], s=22, zorder=3, **style)
        best = at[at["trial_id"] == best_trial_ids.get(size)]
        ax.scatter(best["learning_rate"], 1 - best["momentum"], marker="*", s=180,
                   color="gold", edgecolors="black", zorder=4, label="best trial")
        _log(ax, "x", 10)
        _log(ax, "y", 10)
        ax.set_title(f"B = {size}", fontsize="medium")
    for i, ax in enumerate(axes.flat[:len(sizes)]):
        if i + ncols >= len(sizes):  # the lowest panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("learning rate η")
    for ax in axes[:, 0]:
        ax.set_ylabel("1 − momentum")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small")
    fig.suptitle(title or "feasibility of trials (contours: log10 η / (1 − momentum))")
    return fig


def budget_plot(table: pd.DataFrame, metric: str = "validation metric",
                title: str | None = None) -> Figure:
    """Best validation metric vs batch size under step and example budgets
    (Shallue et al. 2019, Fig. 11). `table` has columns budget_kind ('steps'
    or 'examples'), budget, batch_size, best_metric; one line per budget."""
    kinds = [k for k in ("steps", "examples") if (table["budget_kind"] == k).any()]
    fig, axes = _figure(ncols=len(kinds), width=5.0, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        rows = table[table["budget_kind"] == kind]
        for i, (budget, line) in enumerate(rows.groupby("budget", sort=True)):
            line = line.sort_values("batch_size")
            ax.plot(line["batch_size"], line["best_metric"], "o-", color=f"C{i % 10}",
                    label=f"{budget:,.0f} {kind}")
        _log(ax, "x")
        ax.set_xlabel(BATCH_LABEL)
        ax.set_title(f"{'step' if kind == 'steps' else 'example'} budget")
        ax.legend(fontsize="small", title="budget")
    axes[0, 0].set_ylabel(f"best {metric}")
    fig.suptitle(title or f"best {metric} within a budget")
    return fig


def pareto_plot(curves: dict[str, pd.DataFrame], fits: dict | None = None,
                title: str | None = None) -> Figure:
    """Steps vs examples to reach each target, with the fitted hyperbola
    (S / S_min - 1)(E / E_min - 1) = 1 (McCandlish et al. 2018, Eq. 2.11, Fig. 7),
    one per target. `curves` maps a target label to a table with columns
    batch_size and steps; `fits[label]` has s_min, e_min, b_crit. The point
    B = B_crit, where training takes 2 S_min steps and 2 E_min examples, is
    marked with a diamond."""
    fits = fits or {}
    fig, axes = _figure(width=9.0, height=4.5)  # room for the legend on the right
    ax = axes[0, 0]
    for i, (label, table) in enumerate(curves.items()):
        table = table.dropna(subset=["steps"]).sort_values("batch_size")
        s = table["steps"].to_numpy(float)
        e = table["batch_size"].to_numpy(float) * s
        color = f"C{i % 10}"
        ax.plot(e, s, "o", color=color, label=label, zorder=3)
        fit = fits.get(label)
        if _fit_usable(fit) and len(s):
            b = table["batch_size"].to_numpy(float)
            grid = np.geomspace(b[0] / 4, b[-1] * 4, 300)
            steps = fit.predict(grid)
            ax.plot(grid * steps, steps, "-", color=color, alpha=0.8,
                    label=f"{label}: fit, S_min = {fit.s_min:.3g}, E_min = {fit.e_min:.3g}")
            ax.plot([2 * fit.e_min], [2 * fit.s_min], "D", color=color, markeredgecolor="black",
                    zorder=4)
    _log(ax, "x")
    _log(ax, "y")
    ax.set_xlabel("examples processed E = B · S")
    ax.set_ylabel("training steps S")
    ax.set_title(title or "steps vs examples to reach each target")
    ax.plot([], [], "D", color="0.6", markeredgecolor="black", label="B = B_crit: 2 S_min, 2 E_min")
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


def noise_scale_plot(measurements: pd.DataFrame, b_crit: float | None = None,
                     b_crit_ci: tuple[float, float] | None = None, confidence: float = 0.9,
                     title: str | None = None, measured: dict | None = None) -> Figure:
    """The simple gradient noise scale B_simple = tr(Sigma) / |G|^2 over training
    (McCandlish et al. 2018, Eq. 2.8), the median over trials per batch size and
    step, beside the critical batch size measured from the sweep (horizontal
    line, its confidence interval as a band): B_simple is the cheap prediction of
    B_crit. `measurements` has columns batch_size, step, gns_b_simple (or none
    of them). `measured`: a `cbs gns` result (harness.engine.noise_scale_study), drawn too:
    its run's online B_simple, and its offline B_simple and B_noise (Eq. 2.6,
    App. A) at each step of its window with the windowed estimates and their
    intervals at the window's end."""
    fig, axes = _figure(width=6.0, height=4.5)
    ax = axes[0, 0]
    if "gns_b_simple" in measurements:
        rows = measurements.dropna(subset=["gns_b_simple"])
        rows = rows[(rows["step"] > 0) & (rows["gns_b_simple"] > 0)]
        median = rows.groupby(["batch_size", "step"], sort=True)["gns_b_simple"].median()
        for i, (size, line) in enumerate(median.groupby(level="batch_size")):
            ax.plot(line.index.get_level_values("step"), line.to_numpy(), "-", color=f"C{i % 10}",
                    label=f"B = {size}")
    if measured is not None:
        _measured_noise_scale(ax, measured)
    if b_crit is not None and math.isfinite(b_crit):
        ax.axhline(b_crit, color="black", lw=1.5, label=f"measured B_crit = {b_crit:.3g}")
        if b_crit_ci is not None and all(map(math.isfinite, b_crit_ci)):
            ax.axhspan(*b_crit_ci, color="black", alpha=0.12,
                       label=f"{confidence:.0%} CI [{b_crit_ci[0]:.3g}, {b_crit_ci[1]:.3g}]")
    _log(ax, "x", 10)
    _log(ax, "y")
    ax.set_xlabel("training step")
    ax.set_ylabel("noise scale (examples)")
    ax.set_title(title or "gradient noise scale over training")
    ax.legend(fontsize="small", ncols=2 if measured is None else 1)
    return fig


def _measured_noise_scale(ax, measured: dict) -> None:
    """A `cbs gns` result on `ax`: its online B_simple over training; its
    offline B_simple and B_noise at each step of the window (dots) and over
    the window (square, with the interval). Non-positive estimates (the
    unbiased estimators can go below zero) have no place on a log axis."""
    online = [(r["step"], r["b_simple"]) for r in measured["online"] if (r["b_simple"] or 0) > 0]
    if online:
        ax.plot(*zip(*online), "-", color="tab:orange",
                label=f"B_simple online (cbs gns, B = {measured['batch_size']})")
    offline = measured.get("offline") or {}
    for name, color, label in (("b_simple", "tab:orange", "B_simple"), ("b_noise", "tab:red", "B_noise")):
        if name not in offline:
            continue
        points = [(p["step"], p[name]["value"]) for p in offline["points"] if (p[name]["value"] or 0) > 0]
        if points:
            ax.plot(*zip(*points), ".", color=color, alpha=0.5)
        e, (first, last) = offline[name], (offline["window"]["first"], offline["window"]["last"])
        value = e["value"] or 0
        if value > 0:
            below, above = value - (e["low"] or value), (e["high"] or value) - value
            ax.errorbar([last], [value], yerr=[[max(below, 0)], [max(above, 0)]], fmt="s", color=color,
                        markerfacecolor="none", capsize=4, label=f"{label} offline, steps {first}..{last}: {value:.3g}")


# --- a sweep's figures ------------------------------------------------------------
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov", "lars")


def _applied_learning_rate(best: pd.DataFrame) -> pd.Series:
    """The learning rate the trials trained with, after lr_scaling (harness.engine.trial)."""
    if "lr_scaling" not in best:
        return best["learning_rate"]
    return best.apply(lambda r: TrialConfig(
        workload="", batch_size=int(r["batch_size"]), learning_rate=r["learning_rate"],
        lr_scaling=r["lr_scaling"], reference_batch_size=None if r["lr_scaling"] == "none"
        else int(r["reference_batch_size"])).effective_learning_rate(), axis=1)


def _pow2_budgets(largest: float, count: int = 3, spacing: int = 2) -> list[int]:
    """Powers of two at or below `largest`, `spacing` octaves apart."""
    if not largest >= 1:
        return []
    top = int(math.floor(math.log2(largest)))
    return [2 ** k for k in range(top, max(top - spacing * count, -1), -spacing)][::-1]


def _budget_table(sweep) -> pd.DataFrame:
    rows = sweep.measurements.merge(
        sweep.trials.loc[sweep.trials["status"] == "complete", ["trial_id"]], on="trial_id")
    if rows.empty:
        return pd.DataFrame(columns=["budget_kind", "budget", "batch_size", "best_metric"])
    parts = []
    for kind, largest in (("steps", rows["step"].max()),
                          ("examples", (rows["batch_size"] * rows["step"]).max())):
        for budget in _pow2_budgets(largest):
            limit = {"step_budget" if kind == "steps" else "example_budget": budget}
            best = best_metric(sweep.trials, sweep.measurements, sweep.spec["direction"], **limit)
            parts.append(best.rename(columns={"value": "best_metric"})
                         .assign(budget_kind=kind, budget=budget))
    return pd.concat(parts, ignore_index=True)


def sweep_figures(sweep, targets=None, main: Curve | None = None, axis: str = "steps", **budgets):
    """Yield (name, caption, Figure) for every figure the sweep's data support:
    steps to result (several targets on one axis) and its normalised variant,
    the optimal metaparameters, the feasibility scatter (momentum optimizers),
    the best metric within budgets, the Pareto plot and the noise scale over
    training. `targets`: for the multi-target figures (default: the spec's and
    two looser ones when the sweep was not pruned). `main`: the sweep's `analyze` at its spec's target, when
    already computed. `axis`: what the steps-to-result figures count (steps_plot). `budgets`:
    `analyze`'s step_budget and example_budget for the steps-to-result figures."""
    spec, main = sweep.spec, main or analyze(sweep, **budgets)
    curves = {target_label(spec, main.target): main}
    for t in (looser_targets(sweep) if targets is None else targets):
        if t != main.target:
            curves[target_label(spec, t)] = analyze(sweep, t, **budgets)
    curves = {k: c for k, c in curves.items() if len(c.table) >= 2}
    name = f"{spec['workload']} ({spec['optimizer']})"
    tables = {k: c.table for k, c in curves.items()}
    fits = {k: c.fit for k, c in curves.items()}
    if curves:
        yield ("steps", f"{axis.capitalize()} to result vs batch size; dotted: perfect scaling from the "
               "smallest batch size; dashed: McCandlish fit S_min (1 + B_crit / B).",
               steps_plot(tables, fits, axis=axis, title=f"{axis} to result: {name}"))
        shared = set.intersection(*(set(t["batch_size"]) for t in tables.values()))
        yield ("steps_normalised", f"{axis.capitalize()} to result divided by its value at B = {min(shared)}.",
               steps_plot(tables, fits, normalize_at=min(shared), axis=axis,
                          title=f"normalised {axis} to result: {name}"))
    if len(main.table):
        best = main.table.assign(learning_rate=_applied_learning_rate(main.table))
        if spec["optimizer"] not in MOMENTUM_OPTIMIZERS:
            best = best.drop(columns="momentum", errors="ignore")
        yield ("metaparameters", "Metaparameters of the best trial at each batch size "
               f"({target_label(spec, main.target)}), with the linear and square-root scaling "
               "rules anchored at the smallest batch size.",
               metaparameters_plot(best, title=f"optimal metaparameters: {name}"))
    tuned = sweep.trials[["learning_rate", "momentum"]].nunique() if len(sweep.trials) else None
    if spec["optimizer"] in MOMENTUM_OPTIMIZERS and tuned is not None and (tuned > 1).any():
        yield ("feasibility", "Every trial by learning rate and 1 - momentum; star: the best trial "
               "at its batch size; grey lines: contours of log10 of the effective learning rate.",
               feasibility_plot(sweep.trials, dict(zip(main.table["batch_size"], main.table["trial_id"])),
                                title=f"feasibility: {name}"))
    budgets = _budget_table(sweep)
    if len(budgets):
        yield ("budgets", "Best validation metric any complete trial reached within a step or "
               "example budget.", budget_plot(budgets, spec["metric"], title=f"budgets: {name}"))
    if curves:
        yield ("pareto", "Steps vs examples to reach each target with the fitted hyperbola "
               "(S/S_min - 1)(E/E_min - 1) = 1.", pareto_plot(tables, fits, title=f"Pareto front: {name}"))
    measured = Path(sweep.folder) / GNS_RESULT
    measured = json.loads(measured.read_text()) if measured.exists() else None
    if measured is not None or ("gns_b_simple" in sweep.measurements
                                and sweep.measurements["gns_b_simple"].notna().any()):
        yield ("noise_scale", "Gradient noise scale over training (B_simple: median over trials; with "
               f"{GNS_RESULT}, a `cbs gns` run's online and offline estimates), beside the critical batch "
               "size measured by the sweep.",
               noise_scale_plot(sweep.measurements, main.fit.b_crit, main.fit.b_crit_ci,
                                main.fit.confidence, title=f"noise scale: {name}", measured=measured))


def plot_sweep(sweep, out_dir, targets=None, axis: str = "steps", **budgets) -> list[Path]:
    """Write every figure of `sweep_figures` as PNG and PDF under `out_dir`;
    return the written paths."""
    return [path for name, _, fig in sweep_figures(sweep, targets, axis=axis, **budgets)
            for path in save(fig, Path(out_dir) / name)]


def compare_sweeps(sweeps, labels=None, axis: str = "steps", normalize: bool = True, **budgets) -> Figure:
    """Steps to result of several sweeps on one axis, normalised at the
    smallest shared batch size (Shallue et al. 2019, Fig. 5-6: optimizers,
    model sizes) or, with `normalize=False`, as measured (Lin et al. 2020:
    algorithms, with `axis="rounds"`), each at its own spec's target (within
    `analyze`'s step_budget and example_budget, if given)."""
    labels = labels or [s.spec["name"] or f"{s.spec['workload']} ({s.spec['optimizer']})" for s in sweeps]
    if len(set(labels)) < len(labels):  # same spec names: tell the sweeps apart by folder
        labels = [str(s.folder) for s in sweeps]
    curves = {label: analyze(s, **budgets) for label, s in zip(labels, sweeps)}
    curves = {k: c for k, c in curves.items() if len(c.table)}
    shared = set.intersection(*(set(c.table["batch_size"]) for c in curves.values())) if curves else set()
    if not shared:
        raise UserError("the sweeps share no batch size at which each reached its target; "
                        "allowed: sweeps with a common batch size")
    return steps_plot({k: c.table for k, c in curves.items()}, {k: c.fit for k, c in curves.items()},
                      normalize_at=min(shared) if normalize else None, axis=axis, title="comparison of sweeps")
