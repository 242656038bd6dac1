"""The critical batch size: fits of steps-to-result vs batch size, with intervals.

McCandlish, Kaplan, Amodei 2018 ("An Empirical Model of Large-Batch Training",
Sec. 2.2, Eq. 2.11): steps S and examples E = B S to reach a given loss obey
(S/S_min - 1)(E/E_min - 1) = 1, i.e. S(B) = S_min (1 + B_crit / B) with
B_crit = E_min / S_min. It is fitted as S = a + b/B (a = S_min, b = E_min) by
least squares on log S (Zhang et al. 2024, Sec. 3, fit log S = log(a + b/B)).

For a fixed B_crit the best log S_min is the mean residual, so the fit is a
one-dimensional minimisation over log B_crit (variable projection). Profiled
that way it is solved for thousands of bootstrap replicates at once with
`scipy.optimize.elementwise.find_minimum`, after a coarse grid has located the
global minimum's bracket (`least_squares` solves one problem per call, which is
far too slow for the bootstrap). B_crit is searched within a factor 1e4 of the
measured batch sizes: beyond that the curve cannot be told from pure perfect
scaling (or from no scaling at all).

When the data show one regime of Eq. 2.11 only, they do not pin B_crit, and
the fit reports a one-sided bound instead of an estimate (`FitResult.b_crit_bound`,
rule in `one_sided_bound`).

The fit also reports the regimes of analysis.regimes: the overhead definition
of the critical batch size (Zhang et al. 2024) and Shallue et al. 2019's
perfect scaling and maximal useful batch size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import elementwise

from analysis.regimes import regimes
from harness.finite import finite_or_none

SEARCH_FACTOR = 1e4  # B_crit searched in [min B / 1e4, max B * 1e4]
BOUND_MARGIN = 10  # within this factor of a search bound, an estimate has reached it
GRID_POINTS = 121  # coarse grid over log B_crit that brackets the minimum
MIN_NOISE = 0.05  # floor of the relative noise in steps (evaluation cadence, tuning)


@dataclass
class FitResult:
    """A McCandlish fit with bootstrap intervals and Shallue's regimes.

    `b_crit` is McCandlish's E_min / S_min. `b_crit_overhead` is the overhead
    definition (Zhang et al. 2024): the batch size where the fitted steps exceed
    the perfect-scaling reference E_min / B (the fitted curve's small-batch
    limit) by `overhead_percent` %; for S = S_min (1 + B_crit/B) that is exactly
    overhead_percent/100 * B_crit. `b_crit_overhead_empirical` uses the smallest
    measured batch size as the reference instead (steps[0] * B[0] / B),
    interpolated in log-log between measured points (NaN when never exceeded).
    `perfect_scaling_end`: the largest measured B up to which steps stay within
    `tolerance` of steps[0] * B[0] / B. `max_useful_batch_size`: the smallest
    measured B beyond which steps fall by no more than the noise.
    Intervals are studentized residual bootstrap intervals at `confidence`
    (`bootstrap` = "residual"; NaN with fewer than 3 batch sizes).

    `b_crit_bound` is None when the data pin B_crit. When they show one regime
    of McCandlish et al. 2018, Eq. 2.11 only (see `one_sided_bound`), it is
    "lower" (only perfect scaling measured: B_crit >= `b_crit_bound_value`, the
    largest measured batch size) or "upper" (only the no-scaling regime
    measured: B_crit <= `b_crit_bound_value`, the smallest one); then B_crit,
    S_min, E_min, the overhead B_crit and all their intervals are NaN, as the
    data do not give them. `b_crit_text()` says either in words.
    """

    s_min: float
    e_min: float
    b_crit: float
    b_crit_ci: tuple[float, float]
    s_min_ci: tuple[float, float]
    e_min_ci: tuple[float, float]
    overhead_percent: float
    b_crit_overhead: float
    b_crit_overhead_ci: tuple[float, float]
    b_crit_overhead_empirical: float
    perfect_scaling_end: float
    max_useful_batch_size: float
    batch_sizes: list[float]
    steps: list[float]
    confidence: float
    bootstrap: str
    n_bootstrap: int
    overhead_reference: str = "fitted small-batch limit E_min/B"
    warnings: list[str] = field(default_factory=list)
    b_crit_bound: str | None = None
    b_crit_bound_value: float = math.nan

    def predict(self, batch_sizes):
        """Fitted steps S_min (1 + B_crit / B)."""
        return self.s_min * (1 + self.b_crit / np.asarray(batch_sizes, float))

    def b_crit_text(self) -> str:
        """B_crit for a reader: '413.9 (90% interval 384.5 .. 1128)', or the
        one-sided bound '>= 1024 (only perfect scaling measured: the data give a
        lower bound)' / '<= 8 (only the no-scaling regime measured: the data give
        an upper bound)', or why there is no number."""
        if self.b_crit_bound == "lower":
            return f">= {self.b_crit_bound_value:.4g} (only perfect scaling measured: the data give a lower bound)"
        if self.b_crit_bound == "upper":
            return (
                f"<= {self.b_crit_bound_value:.4g} (only the no-scaling regime measured: the data give an upper bound)"
            )
        if not math.isfinite(self.b_crit):
            return f"n/a (no fit: {len(self.batch_sizes)} batch size(s) measured)"
        lo, hi = self.b_crit_ci
        if math.isnan(lo) or math.isnan(hi):
            return f"{self.b_crit:.4g} (no interval)"
        return f"{self.b_crit:.4g} ({self.confidence:.0%} interval {lo:.4g} .. {hi:.4g})"

    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers become None; the overhead keys are named
        after the percentage (b_crit_overhead20, ...); `b_crit_text` holds
        b_crit_text()."""
        d = dataclasses.asdict(self)
        name = f"b_crit_overhead{self.overhead_percent:g}"
        for suffix in ("", "_ci", "_empirical"):
            d[name + suffix] = d.pop("b_crit_overhead" + suffix)
        d["b_crit_text"] = self.b_crit_text()
        return finite_or_none(d)


def _profile(u, log_b, y, w):
    """Residual sum of squares of log S at log B_crit = u, and the best log S_min.
    Shapes: u (...), log_b (n,), y and w (..., n) (w: 1 where measured, else 0)."""
    r = y - np.logaddexp(0.0, u[..., None] - log_b)  # log S - log(1 + B_crit/B)
    with np.errstate(invalid="ignore", divide="ignore"):  # a replicate with no batch size measured: NaN
        log_s_min = (w * r).sum(-1) / w.sum(-1)
    return (w * (r - log_s_min[..., None]) ** 2).sum(-1), log_s_min


def search_bounds(log_b):
    """The range of log B_crit the fit searches: the measured log batch sizes
    widened by log SEARCH_FACTOR on both sides."""
    return log_b.min() - math.log(SEARCH_FACTOR), log_b.max() + math.log(SEARCH_FACTOR)


def fit_log_steps(batch_sizes, log_steps, weights=None):
    """Least-squares fit of log S = log S_min + log(1 + B_crit / B), vectorised
    over the leading axes of `log_steps` (replicates); `weights` (0/1) masks
    missing points. Returns (log S_min, log B_crit, covariance): the covariance
    (..., 2, 2) of those two is the usual linearised one, sigma^2 (J^T J)^-1
    with sigma^2 = RSS / (n - 2). Estimates are NaN with fewer than 2 points."""
    log_b = np.log(np.asarray(batch_sizes, float))
    y = np.atleast_2d(np.asarray(log_steps, float))
    w = np.ones_like(y) if weights is None else np.atleast_2d(np.asarray(weights, float))
    y = np.where(w > 0, y, 0.0)
    grid = np.linspace(*search_bounds(log_b), GRID_POINTS)
    rss, _ = _profile(grid[:, None], log_b, y[None], w[None])  # (grid, N)
    best = rss.argmin(0)
    k = np.clip(best, 1, GRID_POINTS - 2)
    n = y.shape[1]

    def f(u, *cols):
        return _profile(u, log_b, np.stack(cols[:n], -1), np.stack(cols[n:], -1))[0]

    res = elementwise.find_minimum(f, (grid[k - 1], grid[k], grid[k + 1]), args=(*y.T, *w.T))
    u = np.where((best == k) & res.success, res.x, grid[best])
    rss, log_s_min = _profile(u, log_b, y, w)
    g = 1 / (1 + np.exp(log_b - u[..., None]))  # d log S / d log B_crit = B_crit / (B + B_crit)
    a, b, d = w.sum(-1), (w * g).sum(-1), (w * g * g).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = rss / (a - 2) / (a * d - b * b)
        cov = scale[..., None, None] * np.stack([np.stack([d, -b], -1), np.stack([-b, a], -1)], -2)
    enough = w.sum(-1) >= 2
    return np.where(enough, log_s_min, np.nan), np.where(enough, u, np.nan), cov


def fit_steps(
    batch_sizes, steps, *, overhead=20.0, confidence=0.9, n_bootstrap=2000, tolerance=0.2, noise=None, seed=0
) -> FitResult:
    """Fit one steps-vs-batch-size curve given as a plain table (one row per
    batch size), with a studentized residual bootstrap on log S (Davison &
    Hinkley 1997, Sec. 6.3 and 5.2.1): residuals inflated by sqrt(n / (n - 2))
    are resampled onto the fitted curve, each replicate refitted, and the
    interval read from the distribution of (estimate* - estimate) / se*. The
    plain percentile interval under-covers with ~10 points (it ignores that the
    noise level is itself estimated: 86 % instead of 90 % in our checks).

    The replicates are drawn with `seed`, so the result is a function of the
    table alone. Two batch sizes give a fit without an interval, fewer no fit;
    data from one regime of McCandlish et al. 2018, Eq. 2.11 give B_crit as a
    one-sided bound (`one_sided_bound`)."""
    b, s = _sorted(batch_sizes, steps)
    n = len(b)
    intervals, reached = np.full((3, 2), np.nan), (False, False)
    if n < 2:
        return _result(
            b,
            s,
            np.full(3, np.nan),
            intervals,
            np.array([]),
            reached,
            overhead,
            confidence,
            tolerance,
            noise,
            n_bootstrap,
        )
    log_s = np.log(s)
    theta, cov = _estimates(*fit_log_steps(b, log_s))
    resid = log_s - (theta[0, 0] + np.log1p(np.exp(theta[0, 1]) / b))
    if n > 2:
        intervals, reached = _bootstrap(b, log_s, theta[0], cov[0], resid, confidence, n_bootstrap, seed)
    return _result(
        b, s, np.exp(theta[0]), intervals, resid, reached, overhead, confidence, tolerance, noise, n_bootstrap
    )


def one_sided_bound(
    batch_sizes, b_crit, *, noise=MIN_NOISE, tolerance=0.2, reached=(False, False)
) -> tuple[str | None, float]:
    """Whether the data give B_crit only as a one-sided bound: ("lower", B_n),
    ("upper", B_1) or (None, NaN), for sorted measured batch sizes B_1 .. B_n.

    McCandlish et al. 2018, Eq. 2.11, S(B) = S_min (1 + B_crit / B), has two
    regimes: perfect scaling, S ~ E_min / B for B << B_crit, and no scaling,
    S ~ S_min for B >> B_crit. Data from one regime fix E_min or S_min alone,
    and B_crit = E_min / S_min only on one side. With d = max(tolerance, noise)
    (Shallue et al. 2019's perfect-scaling tolerance, Sec. 4.1, or the relative
    noise in steps if larger), the rule is:

    - "lower" (B_crit >= B_n: only perfect scaling measured) when the estimate
      lies above B_n and either the fitted curve stays within d of perfect
      scaling at every measured batch size (S B / E_min = 1 + B / B_crit, so
      B_n / B_crit < d), or the estimate or the bootstrap interval reaches the
      search bound B_n * SEARCH_FACTOR within a factor BOUND_MARGIN
      (`reached[1]`: the data cannot exclude B_crit = infinity);
    - "upper" (B_crit <= B_1: only the no-scaling regime measured) when the
      estimate lies below B_1 and either the fitted curve stays within d of
      S_min (S / S_min = 1 + B_crit / B, so B_crit / B_1 < d), or the estimate
      or the interval reaches B_1 / SEARCH_FACTOR within BOUND_MARGIN
      (`reached[0]`).

    An estimate within [B_1, B_n] is never a bound: the knee was measured.
    With the default tolerance, "lower" means that the 20 %-overhead batch
    size 0.2 B_crit (Zhang et al. 2024) lies beyond the data, or nearly."""
    b = np.asarray(batch_sizes, float)
    d = max(tolerance, noise)
    low, high = (math.exp(v) for v in search_bounds(np.log(b)))
    if b_crit > b[-1] and (b[-1] / b_crit < d or reached[1] or b_crit >= high / BOUND_MARGIN):
        return "lower", float(b[-1])
    if b_crit < b[0] and (b_crit / b[0] < d or reached[0] or b_crit <= low * BOUND_MARGIN):
        return "upper", float(b[0])
    return None, math.nan


def _bootstrap(b, log_s, theta, var, resid, confidence, n_bootstrap, seed):
    """fit_steps's studentized residual bootstrap around estimates `theta` (log
    S_min, log B_crit, log E_min) with variances `var`: their intervals (3, 2),
    and whether the replicates' central `confidence` range of B_crit reaches
    the (lower, upper) search bound within a factor BOUND_MARGIN."""
    n = len(b)
    rng = np.random.default_rng(seed)
    draws = resid[rng.integers(0, n, (n_bootstrap, n))] * math.sqrt(n / (n - 2))
    boot, boot_var = _estimates(*fit_log_steps(b, log_s - resid + draws))
    log_ci = np.empty((3, 2))
    # A flat profile (B_crit at a search bound) makes a variance infinite or NaN,
    # and an interval end beyond the float range is unbounded: NaN and inf say so.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        se, t_stat = np.sqrt(var), (boot - theta) / np.sqrt(boot_var)
        for j in range(3):
            q = _quantiles(t_stat[:, j], confidence)
            log_ci[j] = theta[j] - q[::-1] * se[j] if se[j] != 0 else theta[j]
        intervals = np.exp(log_ci)
    lo, hi = _quantiles(boot[:, 1], confidence)
    low, high = search_bounds(np.log(b))
    margin = math.log(BOUND_MARGIN)
    return intervals, (bool(lo <= low + margin), bool(hi >= high - margin))


def _estimates(log_s_min, log_b_crit, cov):
    """(log S_min, log B_crit, log E_min) per replicate and their variances."""
    theta = np.stack([log_s_min, log_b_crit, log_s_min + log_b_crit], -1)
    with np.errstate(invalid="ignore"):
        var = np.stack([cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 0] + cov[..., 1, 1] + 2 * cov[..., 0, 1]], -1)
    return theta, var


def _quantiles(values, confidence):
    v = values[np.isfinite(values)]
    if not v.size:
        return np.array([np.nan, np.nan])
    return np.quantile(v, [(1 - confidence) / 2, (1 + confidence) / 2])


def _sorted(batch_sizes, steps):
    b, s = np.asarray(batch_sizes, float), np.asarray(steps, float)
    order = np.argsort(b)
    return b[order], s[order]


def _result(
    b, s, estimates, intervals, resid, reached, overhead, confidence, tolerance, noise, n_bootstrap
) -> FitResult:
    """Assemble a FitResult from (S_min, B_crit, E_min), their intervals (3, 2),
    the log residuals, whether the interval of B_crit reached the (lower,
    upper) search bound, and the measured points; add the one-sided bound,
    regimes and warnings."""
    n = len(b)
    bound, bound_value = None, math.nan
    ps_end = useful = emp = math.nan
    regime_warnings = []
    if n >= 2:
        sigma = math.sqrt((resid**2).sum() / (n - 2)) if n > 2 else 0.0
        noise = max(2 * sigma, MIN_NOISE) if noise is None else noise
        bound, bound_value = one_sided_bound(b, float(estimates[1]), noise=noise, tolerance=tolerance, reached=reached)
        ps_end, useful, emp, regime_warnings = regimes(b, s, overhead, tolerance, noise)
    if bound:
        estimates, intervals = np.full(3, np.nan), np.full((3, 2), np.nan)
    s_min, b_crit, e_min = (float(v) for v in estimates)
    b_ci = tuple(float(v) for v in intervals[1])
    frac = overhead / 100
    return FitResult(
        s_min=s_min,
        e_min=e_min,
        b_crit=b_crit,
        b_crit_ci=b_ci,
        s_min_ci=tuple(float(v) for v in intervals[0]),
        e_min_ci=tuple(float(v) for v in intervals[2]),
        overhead_percent=float(overhead),
        b_crit_overhead=frac * b_crit,
        b_crit_overhead_ci=(frac * b_ci[0], frac * b_ci[1]),
        b_crit_overhead_empirical=float(emp),
        perfect_scaling_end=ps_end,
        max_useful_batch_size=useful,
        batch_sizes=b.tolist(),
        steps=s.tolist(),
        confidence=confidence,
        bootstrap="residual",
        n_bootstrap=n_bootstrap,
        warnings=_fit_warnings(b, b_crit, b_ci, bound, confidence) + regime_warnings,
        b_crit_bound=bound,
        b_crit_bound_value=bound_value,
    )


def _fit_warnings(b, b_crit, b_ci, bound, confidence) -> list[str]:
    """Sentences on what the data cannot tell about B_crit (McCandlish et al.
    2018, Eq. 2.11): too few batch sizes, a one-sided bound, an extrapolated
    knee, a wide interval."""
    n = len(b)
    if n == 0:
        return ["no batch size measured: no fit"]
    if n == 1:
        return [
            "only 1 batch size: no fit (a fit of two parameters needs at least 2 points, and an interval at least 3)"
        ]
    warnings = []
    if n == 2:
        warnings.append("only 2 batch sizes: no interval (a fit of two parameters needs at least 3)")
    if bound == "lower":
        warnings.append(
            f"B_crit >= {b[-1]:g} only: steps follow perfect scaling up to the largest "
            "batch size within the noise, so the data give a lower bound, not an estimate"
        )
    elif bound == "upper":
        warnings.append(
            f"B_crit <= {b[0]:g} only: steps stay flat from the smallest batch size on "
            "within the noise, so the data give an upper bound, not an estimate"
        )
    elif not b[0] <= b_crit <= b[-1]:
        warnings.append(
            f"B_crit = {b_crit:.4g} lies outside the measured batch sizes "
            f"[{b[0]:g}, {b[-1]:g}]: no knee in the data, the fit extrapolates"
        )
    if n > 2 and bound is None and (math.isnan(b_ci[0]) or math.isnan(b_ci[1])):
        warnings.append(f"the bootstrap gave no {confidence:.0%} interval of B_crit: the data barely constrain it")
    elif n > 2 and bound is None and (not b_ci[0] > 0 or b_ci[1] / b_ci[0] > 10):
        warnings.append(
            f"the {confidence:.0%} interval of B_crit ({b_ci[0]:.4g}, {b_ci[1]:.4g}) "
            "spans more than a factor of 10: the data barely constrain it"
        )
    return warnings
