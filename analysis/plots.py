"""The drawing basics every figure of the harness shares, and where figures go.

Each drawing function of analysis.steps_plots (steps to result, Pareto front:
Shallue et al. 2019, Fig. 1, 5, 6; McCandlish et al. 2018, Fig. 7),
analysis.trial_plots (metaparameters, feasibility, budgets: Shallue et al.
2019, Fig. 8, 9, 11) and analysis.noise_scale_plot (McCandlish et al. 2018,
Eq. 2.8) takes tables (pandas DataFrames) and fits and returns a matplotlib
Figure without touching global state (figures are built with
`matplotlib.figure.Figure`, rendered by the Agg backend, never shown), so tests
can inspect what was drawn and callers decide where it goes: `save` writes PNG
and PDF. analysis.sweep_figures draws every figure of a sweep's analysis.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

BATCH_LABEL = "batch size (examples per step)"
AXES = {"steps": "training steps", "examples": "training examples", "rounds": "communication rounds"}


def save(fig: Figure, path_stem) -> list[Path]:
    """Write `fig` as `<path_stem>.png` (150 dpi) and `<path_stem>.pdf`; return both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)  # the constrained layout already fits the labels
    return paths


def new_figure(ncols=1, nrows=1, width=5.5, height=4.0, **kw):
    """A constrained-layout Figure of nrows x ncols panels, each width x height inches, and its axes (2-d)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def tick_label(v) -> str:
    """A log-axis tick as a plain number: '16', '1024', '0.0625', '0.001', '1e+06' (no 2ᵏ, which a reader must
    decode)."""
    if not v > 0:
        return ""
    return f"{v:.0f}" if 1 <= v < 1e6 and v == round(v) else f"{v:.3g}"


def log_axis(ax, which="x", base=2):
    """Log scale with ticks at powers of `base`, labelled as plain numbers
    (`tick_label`; mathtext, matplotlib's default, is parsed anew for every
    label and dominated the drawing time). No minor ticks: there are no integer
    subdivisions between powers of two, and on the many small log10 panels of
    the feasibility plot they cost more time than they help."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.dataLim.intervalx if which == "x" else ax.dataLim.intervaly
    # Whole decades for base 10, so that at least two ticks are labelled; one
    # power of `base` either side of a single value (a singular range otherwise).
    if 0 < lo <= hi < math.inf and (base == 10 or lo == hi):
        (ax.set_xlim if which == "x" else ax.set_ylim)(*(decades(lo, hi) if base == 10 else (lo / base, hi * base)))
    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
    axis.set_major_locator(LogLocator(base=base, numticks=8 if which == "x" else 10))
    axis.set_major_formatter(FuncFormatter(lambda v, _: tick_label(v)))
    axis.set_minor_locator(NullLocator())
    ax.grid(True, which="major", alpha=0.3)


def decades(lo, hi):
    """The powers of ten just below `lo` and just above `hi`."""
    return 10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi) + 1e-9)


def fit_usable(fit):
    """Whether `fit` (an analysis.fit.FitResult) gives a curve to draw: finite, positive S_min and B_crit."""
    return fit is not None and all(math.isfinite(v) and v > 0 for v in (fit.s_min, fit.b_crit))
