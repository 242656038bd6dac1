"""Power laws y = a x^b across groups: how the critical batch size, S_min and
E_min scale with a covariate (data set size, model size, the target).

The fit is least squares on log y = log a + b log x. Its intervals come from a
case-resampling bootstrap with a fixed seed (resample the (x, y) pairs, refit:
Efron & Tibshirani 1993, Ch. 9, bootstrapping pairs), studentized
and widened for small samples (`fit_power_law`), so the result is a function of
the table alone. The groups' own intervals are not used: the
scatter of the groups about the law is what the bootstrap sees. With few
groups the interval is rough (a resample of 4 points has at most 4 distinct
ones; resamples with fewer than 2 distinct x are left out).

Zhang et al. 2024's released code (plots/chinchilla.ipynb) fits B_crit against
model size this way;
Kaplan et al. 2020 (Sec. 5.1) write B_crit against the loss as
B_crit(L) = B* / L^(1/alpha_B), a power law with b = -1/alpha_B
(analysis.target_ladder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from harness.errors import UserError
from harness.finite import finite_or_none

MIN_POINTS = 3
FEW_POINTS = 8  # below this many groups a case-resampling interval is rough


@dataclass
class PowerLawFit:
    """y = prefactor * x^exponent fitted on log-log, with case-resampling
    bootstrap intervals at `confidence` (NaN when no resample varies in x).
    `replicates` holds the bootstrap's (log prefactor, exponent) pairs, their
    deviations from the estimate widened as the intervals are, from which
    `band` draws the fitted law's pointwise interval."""

    x_name: str
    y_name: str
    prefactor: float
    exponent: float
    prefactor_ci: tuple[float, float]
    exponent_ci: tuple[float, float]
    sigma: float  # residual standard deviation of log y
    x: list[float]
    y: list[float]
    confidence: float
    n_bootstrap: int
    replicates: np.ndarray = field(repr=False)
    warnings: list[str] = field(default_factory=list)

    def predict(self, x):
        return self.prefactor * np.asarray(x, float) ** self.exponent

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The pointwise `confidence` interval of the fitted law at `x`, from the bootstrap replicates."""
        log_x = np.log(np.asarray(x, float))
        curves = self.replicates[:, :1] + self.replicates[:, 1:] * log_x[None]
        q = [(1 - self.confidence) / 2, (1 + self.confidence) / 2]
        lo, hi = np.quantile(curves, q, axis=0) if len(curves) else np.full((2, len(log_x)), np.nan)
        return np.exp(lo), np.exp(hi)

    def text(self) -> str:
        """'b_crit = 2.1 * width^0.52 (90% interval of the exponent 0.31 .. 0.70; prefactor 0.9 .. 4.4)'."""
        (blo, bhi), (alo, ahi) = self.exponent_ci, self.prefactor_ci
        return (
            f"{self.y_name} = {self.prefactor:.4g} * {self.x_name}^{self.exponent:.3g} "
            f"({self.confidence:.0%} interval of the exponent {blo:.3g} .. {bhi:.3g}; "
            f"prefactor {alo:.4g} .. {ahi:.4g}; {len(self.x)} points)"
        )

    def to_dict(self) -> dict:
        d = {
            k: getattr(self, k)
            for k in (
                "x_name",
                "y_name",
                "prefactor",
                "exponent",
                "prefactor_ci",
                "exponent_ci",
                "sigma",
                "x",
                "y",
                "confidence",
                "n_bootstrap",
                "warnings",
            )
        }
        return finite_or_none({**d, "bootstrap": "cases", "text": self.text()})


def check_points(x, y, x_name="x", y_name="y") -> tuple[np.ndarray, np.ndarray]:
    """x and y as float arrays, or UserError: at least MIN_POINTS pairs, all
    finite and > 0 (a power law is fitted on their logarithms), at least two distinct x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    for name, values in ((x_name, x), (y_name, y)):
        bad = values[~(np.isfinite(values) & (values > 0))]
        if bad.size:
            raise UserError(f"{name}: a power law needs finite values > 0, got {bad[0]:g}")
    if len(x) < MIN_POINTS:
        raise UserError(
            f"{y_name} vs {x_name}: {len(x)} point(s); allowed: at least {MIN_POINTS} to fit a "
            "power law with an interval"
        )
    if len(np.unique(x)) < 2:
        raise UserError(f"{x_name}: every point has the same value {x[0]:g}; allowed: at least two distinct")
    return x, y


def _ols(log_x, log_y):
    """Least squares of log_y on log_x along the last axis: (intercept, slope)
    stacked on a new last axis (NaN where all x are equal)."""
    mx, my = log_x.mean(-1, keepdims=True), log_y.mean(-1, keepdims=True)
    sxx = ((log_x - mx) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(sxx > 0, ((log_x - mx) * (log_y - my)).sum(-1) / sxx, np.nan)
    return np.stack([my[..., 0] - slope * mx[..., 0], slope], -1)


def fit_power_law(x, y, *, x_name="x", y_name="y", confidence=0.9, n_bootstrap=2000, seed=0) -> PowerLawFit:
    """Fit y = a x^b to the points (UserError on bad input: `check_points`).
    The intervals of log a and b are the case resamples' percentile intervals
    about the estimate, their deviations widened by c = sqrt(n / (n - 2))
    t_{n-2} / z (the inflation sqrt(n / (n - p)) that Davison & Hinkley 1997,
    Sec. 6.2, apply to residuals, and Student's quantile for the normal's):
    checked by coverage on simulated laws (tests/test_scaling.py). The plain percentile interval
    under-covers with few points (84 % instead of 90 % with 12 points in our
    checks), and a studentized one is unstable with 4 or 5 points (resamples
    with nearly exact fits). Resamples with one distinct x are left out."""
    x, y = check_points(x, y, x_name, y_name)
    log_x, log_y = np.log(x), np.log(y)
    theta = _ols(log_x, log_y)
    n = len(x)
    idx = np.random.default_rng(seed).integers(0, n, (n_bootstrap, n))
    boot = _ols(log_x[idx], log_y[idx])
    ok = np.isfinite(boot).all(-1)
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    widen = math.sqrt(n / (n - 2)) * stats.t.ppf(q[1], n - 2) / stats.norm.ppf(q[1])
    lo, hi = theta + widen * (np.quantile(boot[ok] - theta, q, axis=0) if ok.any() else np.full((2, 2), np.nan))
    warnings = []
    if n < FEW_POINTS:
        warnings.append(
            f"only {n} points: the bootstrap interval is rough ({n_bootstrap - int(ok.sum())} of "
            f"{n_bootstrap} resamples had one distinct x and were left out)"
        )
    resid = log_y - theta[0] - theta[1] * log_x
    with np.errstate(over="ignore"):  # an interval end beyond the float range is unbounded: inf says so
        prefactor_ci = (float(np.exp(lo[0])), float(np.exp(hi[0])))
    return PowerLawFit(
        x_name,
        y_name,
        float(np.exp(theta[0])),
        float(theta[1]),
        prefactor_ci,
        (float(lo[1]), float(hi[1])),
        float(math.sqrt((resid**2).sum() / (n - 2))),
        x.tolist(),
        y.tolist(),
        confidence,
        n_bootstrap,
        theta + widen * (boot[ok] - theta),
        warnings,
    )
