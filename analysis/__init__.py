"""Analysis of sweeps: tidy tables, steps-to-result, fits, plots."""

from analysis.tables import load_sweep

__all__ = ["load_sweep"]
