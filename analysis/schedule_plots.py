"""The figure of a batch-size schedule study (analysis.schedule_study;
Merrill et al. 2025, Fig. 1 and Sec. 5): per arm, the validation metric and
the batch size against the examples seen, one line per seed, the target as a
dashed line. It draws the tables it is given; it reads no file."""

from __future__ import annotations

import pandas as pd

from analysis.plots import log_axis, new_figure


def draw_schedules(curves: pd.DataFrame, target: float, metric: str):
    """A Figure of two panels from `curves` (columns arm, seed, examples,
    batch_size, val_metric: one row per evaluation)."""
    fig, axes = new_figure(ncols=2)
    left, right = axes[0]
    for i, (arm, runs) in enumerate(curves.groupby("arm", sort=False)):
        for j, (_, run) in enumerate(runs.groupby("seed")):
            label = arm if j == 0 else None
            left.plot(run["examples"], run["val_metric"], color=f"C{i}", alpha=0.8, lw=1, label=label)
            right.step(run["examples"], run["batch_size"], where="pre", color=f"C{i}", alpha=0.8, lw=1, label=label)
    left.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:g}")
    left.set(xlabel="training examples", ylabel=f"validation {metric}", yscale="log", title="validation metric")
    right.set(xlabel="training examples", ylabel="batch size", title="batch size")
    log_axis(right, "y")
    left.legend(fontsize="small")
    right.legend(fontsize="small")
    return fig
