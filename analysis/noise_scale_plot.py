"""The gradient noise scale over training beside the swept critical batch
size (McCandlish et al. 2018, Eq. 2.6, 2.8 and App. A)."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import log_axis, new_figure


def noise_scale_plot(
    measurements: pd.DataFrame,
    b_crit: float | None = None,
    b_crit_ci: tuple[float, float] | None = None,
    confidence: float = 0.9,
    title: str | None = None,
    measured: dict | None = None,
) -> Figure:
    """The simple gradient noise scale B_simple = tr(Sigma) / |G|^2 over training
    (McCandlish et al. 2018, Eq. 2.8), the median over trials per batch size and
    step, beside the critical batch size measured from the sweep (horizontal
    line, its confidence interval as a band): B_simple is the cheap prediction of
    B_crit. `measurements` has columns batch_size, step, gns_b_simple (or none
    of them). `measured`: a `cbs gns` result (harness.engine.noise_scale_study), drawn too:
    its run's online B_simple, and its offline B_simple and B_noise (Eq. 2.6,
    App. A) at each step of its window with the windowed estimates and their
    intervals at the window's end."""
    fig, axes = new_figure(width=6.0, height=4.5)
    ax = axes[0, 0]
    if "gns_b_simple" in measurements:
        rows = measurements.dropna(subset=["gns_b_simple"])
        rows = rows[(rows["step"] > 0) & (rows["gns_b_simple"] > 0)]
        median = rows.groupby(["batch_size", "step"], sort=True)["gns_b_simple"].median()
        for i, (size, line) in enumerate(median.groupby(level="batch_size")):
            ax.plot(line.index.get_level_values("step"), line.to_numpy(), "-", color=f"C{i % 10}", label=f"B = {size}")
    if measured is not None:
        _measured_noise_scale(ax, measured)
    if b_crit is not None and math.isfinite(b_crit):
        ax.axhline(b_crit, color="black", lw=1.5, label=f"measured B_crit = {b_crit:.3g}")
        if b_crit_ci is not None and all(map(math.isfinite, b_crit_ci)):
            ax.axhspan(
                *b_crit_ci,
                color="black",
                alpha=0.12,
                label=f"{confidence:.0%} CI [{b_crit_ci[0]:.3g}, {b_crit_ci[1]:.3g}]",
            )
    log_axis(ax, "x", 10)
    log_axis(ax, "y")
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
        ax.plot(
            *zip(*online), "-", color="tab:orange", label=f"B_simple online (cbs gns, B = {measured['batch_size']})"
        )
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
            ax.errorbar(
                [last],
                [value],
                yerr=[[max(below, 0)], [max(above, 0)]],
                fmt="s",
                color=color,
                markerfacecolor="none",
                capsize=4,
                label=f"{label} offline, steps {first}..{last}: {value:.3g}",
            )
