"""The figure of a power-law fit (analysis.scaling): the groups' values with
their intervals on log-log axes, the fitted law y = a x^b and its bootstrap
band. It draws what the fit computed; it reads no file and fits nothing."""

from __future__ import annotations

import numpy as np

from analysis.plots import log_axis, new_figure


def draw_power_law(fit, lower=None, upper=None, *, x_label=None, y_label=None, title=None):
    """A Figure: the points (with error bars from `lower` and `upper` where
    given and finite), the fitted law over the points' range and its band."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    x, y = np.asarray(fit.x), np.asarray(fit.y)
    if lower is not None and upper is not None:
        lo, hi = np.asarray(lower, float), np.asarray(upper, float)
        good = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(
            x[good],
            y[good],
            yerr=[y[good] - lo[good], hi[good] - y[good]],
            fmt="none",
            ecolor="C0",
            alpha=0.6,
            capsize=3,
        )
    ax.plot(x, y, "o", color="C0", label=f"{fit.y_name} ({len(x)} points)")
    grid = np.geomspace(x.min(), x.max(), 100)
    band_lo, band_hi = fit.band(grid)
    ax.fill_between(grid, band_lo, band_hi, color="C1", alpha=0.2, label=f"{fit.confidence:.0%} bootstrap band")
    (blo, bhi) = fit.exponent_ci
    ax.plot(
        grid,
        fit.predict(grid),
        "-",
        color="C1",
        label=f"{fit.prefactor:.3g} x^{fit.exponent:.2f} (exponent {blo:.2f} .. {bhi:.2f})",
    )
    log_axis(ax, "x", base=2 if x.min() >= 1 else 10)
    log_axis(ax, "y", base=10)
    ax.set_xlabel(x_label or fit.x_name)
    ax.set_ylabel(y_label or fit.y_name)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig
