"""The critical batch size against the target, from one sweep.

McCandlish et al. 2018 (Sec. 2.2, Fig. 7) find B_crit grows as training
reaches a lower loss; Kaplan et al. 2020 (Sec. 5.1) fit it as a power law in
the loss, B_crit(L) = B* / L^(1/alpha_B). Here the ladder of targets runs
from the sweep's spec target towards the median metric at the first
evaluation (analysis.curves.looser_targets); at each rung the steps to result
and the McCandlish fit come from analysis.curves.analyze, which is exact on a
pruned sweep at looser targets (analysis.steps). Rungs whose fit gives a
one-sided bound or no estimate are kept in the table and left out of the law.
The law is analysis.scaling.fit_power_law with x = the target and
y = B_crit: exponent b = -1/alpha_B, prefactor B*. For a metric other than
a loss (an error rate) it is the same form, an analogy to their loss law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.curves import analyze, looser_targets
from analysis.scaling import PowerLawFit, fit_power_law
from analysis.scaling_study import fit_row

LADDER = (0.1, 0.2, 0.3, 0.4, 0.5)  # fractions of the way (log space) from the spec target to the start


@dataclass
class TargetLaw:
    """B_crit(L) = B* / L^(1/alpha_B) (Kaplan et al. 2020, Sec. 5.1) from the
    power-law fit of B_crit against the target."""

    fit: PowerLawFit

    @property
    def b_star(self) -> float:
        return self.fit.prefactor

    @property
    def b_star_ci(self) -> tuple[float, float]:
        return self.fit.prefactor_ci

    @property
    def alpha_b(self) -> float:
        return _alpha(self.fit.exponent)

    @property
    def alpha_b_ci(self) -> tuple[float, float]:
        """The exponent's interval mapped through alpha_B = -1/b (monotone for
        b < 0); an end at b >= 0 (B_crit not growing as the target tightens) is inf."""
        lo, hi = self.fit.exponent_ci
        return _alpha(lo), _alpha(hi)

    def text(self) -> str:
        (alo, ahi), (blo, bhi) = self.alpha_b_ci, self.b_star_ci
        return (
            f"B_crit = B* / target^(1/alpha_B): B* = {self.b_star:.4g} ({self.fit.confidence:.0%} interval "
            f"{blo:.4g} .. {bhi:.4g}), alpha_B = {self.alpha_b:.3g} ({alo:.3g} .. {ahi:.3g}); "
            f"{len(self.fit.x)} targets"
        )

    def to_dict(self) -> dict:
        return {
            "b_star": self.b_star,
            "b_star_ci": list(self.b_star_ci),
            "alpha_b": self.alpha_b,
            "alpha_b_ci": list(self.alpha_b_ci),
            "text": self.text(),
            "power_law": self.fit.to_dict(),
        }


def _alpha(b: float) -> float:
    return -1 / b if b < 0 else math.inf if b >= 0 else math.nan


def ladder_targets(sweep, fractions=LADDER) -> list[float]:
    """The spec target, then looser ones at `fractions` of the way to the start (distinct, in order)."""
    targets = [sweep.spec["target"], *looser_targets(sweep, fractions)]
    return list(dict.fromkeys(targets))


def target_table(sweep, targets=None, **fit_options) -> pd.DataFrame:
    """One row per target (default: `ladder_targets`): the measured batch sizes
    and the McCandlish fit's B_crit, S_min, E_min with their intervals, and the
    one-sided bound where the data give only that (analysis.scaling_study.fit_row).
    The rungs share their trials, so their B_crit are not independent: the
    law's interval, which treats them as independent, is too narrow by an
    unknown amount."""
    return pd.DataFrame(
        [
            {"target": t, **fit_row(analyze(sweep, None if t == sweep.spec["target"] else t, **fit_options).fit)}
            for t in (ladder_targets(sweep) if targets is None else targets)
        ]
    )


def fit_target_law(table: pd.DataFrame, **options) -> TargetLaw:
    """The power law of B_crit against the target over the rows with an estimate."""
    rows = table[np.isfinite(table["b_crit"]) & (table["bound"] == "")]
    return TargetLaw(fit_power_law(rows["target"], rows["b_crit"], x_name="target", y_name="b_crit", **options))
