"""The swept critical batch size against the offline noise scale of a matched
trial, per optimizer family, with the calibrated ratio of each family
(analysis.noise_calibration; McCandlish et al. 2018, Fig. 4: B_crit against
B_noise across workloads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.noise_calibration import BASES
from analysis.plots import log_axis, new_figure

LABELS = {"b_noise": "B_noise = tr(H Sigma) / G'HG", "b_simple": "B_simple = tr(Sigma) / |G|^2"}


def calibration_plot(points: pd.DataFrame, calibration: dict) -> Figure:
    """One panel per basis: each study's swept B_crit against its measured
    noise scale with both intervals, coloured by family; each family's
    fitted B_crit = r B (solid) and McCandlish's B_crit = B (dashed)."""
    fig, axes = new_figure(ncols=len(BASES), width=5.0, height=4.5)
    for ax, basis in zip(axes[0], BASES):
        for i, (family, group) in enumerate(points.groupby("family", sort=True)):
            x, y = group[basis].to_numpy(float), group["b_crit"].to_numpy(float)
            xerr = [x - group[f"{basis}_lo"].to_numpy(float), group[f"{basis}_hi"].to_numpy(float) - x]
            yerr = [y - group["b_crit_lo"].to_numpy(float), group["b_crit_hi"].to_numpy(float) - y]
            fit = calibration[family][basis]
            ax.errorbar(
                x,
                y,
                xerr=np.maximum(xerr, 0),
                yerr=np.maximum(yerr, 0),
                fmt="o",
                color=f"C{i}",
                capsize=2,
                label=f"{family}: B_crit = {fit['ratio']:.2g} B ({fit['n']} studies)",
            )
            span = np.geomspace(x.min() / 2, x.max() * 2, 20)
            ax.plot(span, fit["ratio"] * span, "-", color=f"C{i}", lw=1)
        low = np.nanmin(points[basis].to_numpy(float)) / 2
        high = np.nanmax(points[basis].to_numpy(float)) * 2
        ax.plot([low, high], [low, high], "--", color="gray", lw=1, label="B_crit = B (McCandlish et al.)")
        log_axis(ax, "x")
        log_axis(ax, "y")
        ax.set_xlabel(LABELS[basis])
        ax.set_ylabel("swept B_crit")
        ax.legend(fontsize="small")
    fig.suptitle("swept B_crit against the noise scale of the best trial at a middle B, before its crossing")
    return fig
