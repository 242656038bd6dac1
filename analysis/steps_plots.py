"""Steps to result vs batch size (Shallue et al. 2019, Fig. 1, 5 and 6) and
steps vs examples with the fitted hyperbola (McCandlish et al. 2018, Eq. 2.11,
Fig. 7), from steps-to-result tables and their fits (analysis.fit.FitResult)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.plots import AXES, BATCH_LABEL, fit_usable, log_axis, new_figure
from harness.errors import UserError


def fit_band(fit, batch_sizes):
    """The band of the fitted S(B) = S_min (1 + B_crit / B) = S_min + E_min / B
    over the bounds of the bootstrap intervals of S_min and E_min
    (analysis.fit.fit_steps): from S_min,lo + E_min,lo / B to S_min,hi +
    E_min,hi / B, every curve whose S_min and E_min lie within their intervals
    (the replicates are not kept). None when the fit has no such intervals."""
    bounds = (*fit.s_min_ci, *fit.e_min_ci)
    if not all(np.isfinite(v) and v > 0 for v in bounds):
        return None
    b = np.asarray(batch_sizes, float)
    return bounds[0] + bounds[2] / b, bounds[1] + bounds[3] / b


def steps_plot(
    curves: dict[str, pd.DataFrame],
    fits: dict | None = None,
    *,
    normalize_at: int | None = None,
    axis: str = "steps",
    ylabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """Steps to result vs batch size, both axes log2 (Shallue et al. 2019, Fig. 1).

    `curves` maps a label (workload, optimizer, target...) to a table with
    columns batch_size and `axis`: steps, examples (steps * B) or rounds
    (communication rounds: steps for mini-batch SGD, fewer for local SGD; Lin
    et al. 2020). Each curve is drawn with its perfect-scaling line anchored at
    its smallest batch size (y[0] * B[0] / B; flat for examples) and, when
    `fits[label]` (an analysis.fit.FitResult) is given, the fitted McCandlish
    curve S(B) = S_min (1 + B_crit / B), or E(B) = B S(B) for examples, with its
    band (`fit_band`) and a diamond at B = B_crit, where S = 2 S_min (no fit
    curve for rounds). With `normalize_at=B_ref` every curve is divided by its
    value at B_ref (Shallue et al. 2019, Fig. 5 and 6: comparisons of
    optimizers and model sizes on one axis), and one perfect-scaling line is
    drawn. The legend, below the axes, names each curve once and each line
    style once.
    """
    if axis not in AXES:
        raise UserError(f"axis: unknown {axis!r}; allowed: {', '.join(AXES)}")
    fits = fits or {}
    scaling = (lambda b: np.ones_like(b)) if axis == "examples" else (lambda b: 1.0 / b)
    fig, axes = new_figure(width=6.5, height=5.0)
    ax = axes[0, 0]
    all_sizes, handles, labels, styles = set(), [], [], {}
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
        (line,) = ax.plot(b, y / scale, "o-", color=color, label=label, zorder=3)
        handles.append(line)
        labels.append(label)
        if normalize_at is None:
            ax.plot(
                b, y[0] * scaling(b) / scaling(b[0]), ":", color=color, alpha=0.8, label=f"{label}: perfect scaling"
            )
            styles.setdefault("perfect scaling from the smallest B", dict(ls=":"))
        fit = fits.get(label)
        if fit_usable(fit) and axis != "rounds":
            labels[-1] = f"{label} (B_crit = {fit.b_crit:.3g})"
            per_step = (lambda x: x) if axis == "examples" else np.ones_like
            grid = np.geomspace(b[0], b[-1], 200)
            ax.plot(
                grid, fit.predict(grid) * per_step(grid) / scale, "--", color=color, alpha=0.8, label=f"{label}: fit"
            )
            styles.setdefault("fit S_min (1 + B_crit / B)", dict(ls="--"))
            if (band := fit_band(fit, grid)) is not None:
                ax.fill_between(
                    grid,
                    *(v * per_step(grid) / scale for v in band),
                    color=color,
                    alpha=0.15,
                    lw=0,
                    label=f"{label}: {fit.confidence:.0%} band",
                )
                styles.setdefault(f"{fit.confidence:.0%} band (S_min, E_min within their intervals)", dict(patch=True))
            if b[0] <= fit.b_crit <= b[-1]:
                mark = np.array([fit.b_crit])
                ax.plot(
                    mark,
                    2 * fit.s_min * per_step(mark) / scale,
                    "D",
                    color=color,
                    markeredgecolor="black",
                    zorder=4,
                    label=f"{label}: B_crit",
                )
                styles.setdefault("B = B_crit: twice the minimal steps", dict(marker="D", ls=""))
    if normalize_at is not None and all_sizes:
        b = np.array(sorted(all_sizes), dtype=float)
        handles += ax.plot(b, scaling(b) / scaling(normalize_at), ":", color="0.4", label="perfect scaling")
        labels.append("perfect scaling")
    for text, style in styles.items():
        handles.append(
            Patch(color="0.4", alpha=0.3)
            if style.pop("patch", False)
            else Line2D([], [], color="0.4", markeredgecolor="black", **style)
        )
        labels.append(text)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel(BATCH_LABEL)
    ax.set_ylabel(
        f"{axis} / {axis} at B = {normalize_at}"
        if normalize_at is not None
        else f"{ylabel or f'{axis} to result'} ({AXES[axis]})"
    )
    ax.set_title(
        title or (f"normalised {axis} to result" if normalize_at is not None else f"{axis} to result"),
        fontsize="medium",
    )
    ncols = 2 if max(map(len, labels)) <= 45 else 1  # two columns where they fit the figure's width
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)
    return fig


def pareto_plot(curves: dict[str, pd.DataFrame], fits: dict | None = None, title: str | None = None) -> Figure:
    """Steps vs examples to reach each target, with the fitted hyperbola
    (S / S_min - 1)(E / E_min - 1) = 1 (McCandlish et al. 2018, Eq. 2.11, Fig. 7),
    one per target. `curves` maps a target label to a table with columns
    batch_size and steps; `fits[label]` has s_min, e_min, b_crit. The point
    B = B_crit, where training takes 2 S_min steps and 2 E_min examples, is
    marked with a diamond."""
    fits = fits or {}
    fig, axes = new_figure(width=6.5, height=5.0)
    ax = axes[0, 0]
    handles, labels = [], []
    for i, (label, table) in enumerate(curves.items()):
        table = table.dropna(subset=["steps"]).sort_values("batch_size")
        s = table["steps"].to_numpy(float)
        e = table["batch_size"].to_numpy(float) * s
        color = f"C{i % 10}"
        handles += ax.plot(e, s, "o", color=color, label=label, zorder=3)
        labels.append(label)
        fit = fits.get(label)
        if fit_usable(fit) and len(s):
            labels[-1] = f"{label} (S_min = {fit.s_min:.3g}, E_min = {fit.e_min:.3g})"
            b = table["batch_size"].to_numpy(float)
            grid = np.geomspace(b[0] / 4, b[-1] * 4, 300)
            steps = fit.predict(grid)
            ax.plot(grid * steps, steps, "-", color=color, alpha=0.8, label=f"{label}: fit")
            ax.plot(
                [2 * fit.e_min],
                [2 * fit.s_min],
                "D",
                color=color,
                markeredgecolor="black",
                zorder=4,
                label=f"{label}: B_crit",
            )
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel("examples processed E = B · S")
    ax.set_ylabel("training steps S")
    ax.set_title(title or "steps vs examples to reach each target", fontsize="medium")
    if any(fit_usable(f) for f in fits.values()):
        handles += [
            Line2D([], [], color="0.4"),
            Line2D([], [], color="0.4", marker="D", ls="", markeredgecolor="black"),
        ]
        labels += ["fit (S / S_min − 1)(E / E_min − 1) = 1", "B = B_crit: 2 S_min, 2 E_min"]
    ncols = 2 if max(map(len, labels)) <= 45 else 1  # two columns where they fit the figure's width
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)
    return fig
