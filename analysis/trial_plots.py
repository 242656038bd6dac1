"""The figures of a sweep's trials (Shallue et al. 2019): the optimal
metaparameters per batch size (Fig. 8), the feasibility of every trial by
learning rate and momentum (Fig. 9) and the best metric within step and
example budgets (Fig. 11)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import BATCH_LABEL, decades, log_axis, new_figure

# How the best trial at a batch size is marked in every figure of trials.
BEST_TRIAL = dict(marker="*", s=180, color="gold", edgecolors="black", zorder=4, label="best trial")

STATUS_STYLE = {  # feasibility categories (Shallue et al. 2019, Fig. 9)
    "reached": dict(marker="o", color="tab:blue", label="reached target"),
    "not reached": dict(marker="o", facecolors="none", edgecolors="tab:gray", label="did not reach target"),
    "pruned": dict(
        marker="s", facecolors="none", edgecolors="tab:orange", label="pruned (could no longer beat the best)"
    ),
    "diverged": dict(marker="x", color="tab:red", label="diverged"),
}


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
        panels += [
            (1 - m, "1 − optimal momentum", False),
            (lr / (1 - m), "effective learning rate η / (1 − momentum)", True),
        ]
    fig, axes = new_figure(ncols=len(panels), width=4.5 if len(panels) > 1 else 6.5)
    for ax, (y, ylabel, heuristics) in zip(axes[0], panels):
        ax.plot(b, y, "o-", color="C0", label="best trial", zorder=3)
        if heuristics and len(b):
            ax.plot(b, y[0] * b / b[0], "--", color="C1", label="linear scaling")
            ax.plot(b, y[0] * np.sqrt(b / b[0]), ":", color="C2", label="square-root scaling")
        log_axis(ax, "x")
        log_axis(ax, "y", 10)
        ax.set_xlabel(BATCH_LABEL)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def feasibility_category(trials: pd.DataFrame) -> pd.Series:
    """'reached', 'not reached', 'pruned' or 'diverged' per trial (Shallue et al.
    2019, Sec. 4.6: infeasible trials are the diverged ones; pruned ones were
    stopped once they could no longer beat the best steps to target at their
    batch size); incomplete trials get NaN (ignored)."""
    reached = trials["status"].eq("complete") & trials["steps_to_target"].notna()
    cat = pd.Series(np.where(reached, "reached", "not reached"), index=trials.index, dtype=object)
    cat[trials["status"].eq("pruned")] = "pruned"
    cat[trials["status"].eq("diverged")] = "diverged"
    cat[trials["status"].eq("incomplete")] = np.nan
    return cat


def present_styles(trials: pd.DataFrame) -> dict:
    """The STATUS_STYLE entries of the categories some of `trials` (with a category column) fall in."""
    return {cat: style for cat, style in STATUS_STYLE.items() if trials["category"].eq(cat).any()}


def feasibility_plot(trials: pd.DataFrame, best_trial_ids: dict | None = None, title: str | None = None) -> Figure:
    """One panel per batch size: learning rate vs 1 - momentum, log-log, each
    trial marked reached / did not reach target / pruned / diverged (x), contours of
    log10(eta / (1 - momentum)), the best trial starred (Shallue et al. 2019,
    Fig. 9). `trials` has columns trial_id, batch_size, status, steps_to_target,
    learning_rate, momentum; `best_trial_ids` maps batch size -> trial id.
    """
    trials = trials.assign(category=feasibility_category(trials)).dropna(subset=["category"])
    best_trial_ids = best_trial_ids or {}
    sizes = sorted(trials["batch_size"].unique())
    ncols = min(4, len(sizes))
    nrows = math.ceil(len(sizes) / ncols)
    fig, axes = new_figure(ncols, nrows, width=3.3, height=3.0, sharex=True, sharey=True)
    x_all = trials["learning_rate"].to_numpy(float)
    y_all = 1 - trials["momentum"].to_numpy(float)
    xs = np.geomspace(*decades(x_all.min(), x_all.max()), 100)
    ys = np.geomspace(*decades(y_all.min(), y_all.max()), 100)
    X, Y = np.meshgrid(xs, ys)
    Z = np.log10(X / Y)
    levels = np.arange(math.floor(Z.min()), math.ceil(Z.max()) + 1)
    for ax in axes.flat[len(sizes) :]:
        ax.set_visible(False)
    for ax, size in zip(axes.flat, sizes):
        at = trials[trials["batch_size"] == size]
        cs = ax.contour(X, Y, Z, levels=levels, colors="0.75", linewidths=0.7, negative_linestyles="solid")
        ax.clabel(cs, fmt=lambda v: f"{v:g}", fontsize=7, colors="0.45")
        for cat, style in present_styles(trials).items():
            rows = at[at["category"] == cat]
            ax.scatter(rows["learning_rate"], 1 - rows["momentum"], s=22, zorder=3, **style)
        best = at[at["trial_id"] == best_trial_ids.get(size)]
        ax.scatter(best["learning_rate"], 1 - best["momentum"], **BEST_TRIAL)
        log_axis(ax, "x", 10)
        log_axis(ax, "y", 10)
        ax.set_title(f"B = {size}", fontsize="medium")
    for i, ax in enumerate(axes.flat[: len(sizes)]):
        if i + ncols >= len(sizes):  # the lowest panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("learning rate η")
    for ax in axes[:, 0]:
        ax.set_ylabel("1 − momentum")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small")
    fig.suptitle(title or "feasibility of trials (contours: log10 η / (1 − momentum))")
    return fig


def budget_plot(table: pd.DataFrame, metric: str = "validation metric", title: str | None = None) -> Figure:
    """Best validation metric vs batch size under step and example budgets
    (Shallue et al. 2019, Fig. 11). `table` has columns budget_kind ('steps'
    or 'examples'), budget, batch_size, best_metric; one line per budget."""
    kinds = [k for k in ("steps", "examples") if (table["budget_kind"] == k).any()]
    fig, axes = new_figure(ncols=len(kinds), width=4.5, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        rows = table[table["budget_kind"] == kind]
        for i, (budget, line) in enumerate(rows.groupby("budget", sort=True)):
            line = line.sort_values("batch_size")
            ax.plot(line["batch_size"], line["best_metric"], "o-", color=f"C{i % 10}", label=f"{budget:,.0f} {kind}")
        log_axis(ax, "x")
        ax.set_xlabel(BATCH_LABEL)
        ax.set_title(f"{'step' if kind == 'steps' else 'example'} budget")
        ax.legend(fontsize="small", title="budget")
    axes[0, 0].set_ylabel(f"best {metric}")
    fig.suptitle(title or f"best {metric} within a budget")
    return fig


def feasibility_map(
    trials: pd.DataFrame, parameter: str, best_trial_ids: dict | None = None, title: str | None = None
) -> Figure:
    """The feasibility of every trial (Shallue et al. 2019, Fig. 9) when one
    metaparameter was searched: one panel, batch size (log2) against that
    metaparameter (log10; 1 - momentum for momentum), each trial marked by its
    category (`feasibility_category`), the best trial per batch size starred.
    `trials` has columns trial_id, batch_size, status, steps_to_target and
    `parameter`; `best_trial_ids` maps batch size -> trial id."""
    trials = trials.assign(category=feasibility_category(trials)).dropna(subset=["category"])
    value = (lambda t: 1 - t["momentum"]) if parameter == "momentum" else (lambda t: t[parameter])
    fig, axes = new_figure(width=6.5, height=4.5)
    ax = axes[0, 0]
    for cat, style in present_styles(trials).items():
        rows = trials[trials["category"] == cat]
        ax.scatter(rows["batch_size"], value(rows), s=30, zorder=3, **style)
    best = trials[trials["trial_id"].isin((best_trial_ids or {}).values())]
    ax.scatter(best["batch_size"], value(best), **BEST_TRIAL)
    log_axis(ax, "x")
    log_axis(ax, "y", 10)
    y = value(trials).to_numpy(float)
    ax.set_ylim(y.min() / 2, y.max() * 2)  # no marker cut in half by the frame
    ax.set_xlabel(BATCH_LABEL)
    ax.set_ylabel("1 − momentum" if parameter == "momentum" else parameter.replace("_", " "))
    fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    ax.set_title(title or "feasibility of trials", fontsize="medium")
    return fig
