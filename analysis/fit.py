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
scaling (or from no scaling at all), and a warning says so.

Also here: the overhead definition of the critical batch size (Zhang et al.
2024, Sec. 3.1: steps exceed the perfect-scaling prediction by X %), and
Shallue et al. 2019's regimes (Sec. 4.1: perfect scaling, diminishing returns,
maximal data parallelism).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import elementwise

from analysis.steps import first_crossings, steps_to_result

SEARCH_FACTOR = 1e4   # B_crit searched in [min B / 1e4, max B * 1e4]
GRID_POINTS = 121     # coarse grid over log B_crit that brackets the minimum
MIN_NOISE = 0.05      # floor of the relative noise in steps (evaluation cadence, tuning)


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
    Intervals are percentile bootstrap intervals at `confidence`.
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

    def predict(self, batch_sizes):
        """Fitted steps S_min (1 + B_crit / B)."""
        return self.s_min * (1 + self.b_crit / np.asarray(batch_sizes, float))

    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers become None; the overhead keys are named
        after the percentage (b_crit_overhead20, ...)."""
        d = dataclasses.asdict(self)
        name = f"b_crit_overhead{self.overhead_percent:g}"
        for suffix in ("", "_ci", "_empirical"):
            d[name + suffix] = d.pop("b_crit_overhead" + suffix)
        return _finite_or_none(d)


def _finite_or_none(x):
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _profile(u, log_b, y, w):
    """Residual sum of squares of log S at log B_crit = u, and the best log S_min.
    Shapes: u (...), log_b (n,), y and w (..., n) (w: 1 where measured, else 0)."""
    r = y - np.logaddexp(0.0, u[..., None] - log_b)      # log S - log(1 + B_crit/B)
    with np.errstate(invalid="ignore", divide="ignore"):  # a replicate with no batch size measured: NaN
        log_s_min = (w * r).sum(-1) / w.sum(-1)
    return (w * (r - log_s_min[..., None]) ** 2).sum(-1), log_s_min


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
    grid = np.linspace(log_b.min() - math.log(SEARCH_FACTOR),
                       log_b.max() + math.log(SEARCH_FACTOR), GRID_POINTS)
    rss, _ = _profile(grid[:, None], log_b, y[None], w[None])          # (grid, N)
    best = rss.argmin(0)
    k = np.clip(best, 1, GRID_POINTS - 2)
    n = y.shape[1]

    def f(u, *cols):
        return _profile(u, log_b, np.stack(cols[:n], -1), np.stack(cols[n:], -1))[0]

    res = elementwise.find_minimum(f, (grid[k - 1], grid[k], grid[k + 1]), args=(*y.T, *w.T))
    u = np.where((best == k) & res.success, res.x, grid[best])
    rss, log_s_min = _profile(u, log_b, y, w)
    g = 1 / (1 + np.exp(log_b - u[..., None]))   # d log S / d log B_crit = B_crit / (B + B_crit)
    a, b, d = w.sum(-1), (w * g).sum(-1), (w * g * g).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = rss / (a - 2) / (a * d - b * b)
        cov = scale[..., None, None] * np.stack([np.stack([d, -b], -1), np.stack([-b, a], -1)], -2)
    enough = w.sum(-1) >= 2
    return np.where(enough, log_s_min, np.nan), np.where(enough, u, np.nan), cov


def perfect_scaling_end(batch_sizes, steps, tolerance=0.2):
    """Largest measured B such that every B' <= B has steps within `tolerance`
    of the perfect-scaling line steps[0] * B[0] / B' (Shallue et al. 2019,
    Sec. 4.1, Fig. 1). Inputs sorted by batch size."""
    b, s = np.asarray(batch_sizes, float), np.asarray(steps, float)
    within = s <= (1 + tolerance) * s[0] * b[0] / b
    return float(b[np.argmin(within) - 1] if not within.all() else b[-1])


def max_useful_batch_size(batch_sizes, steps, noise):
    """Smallest measured B whose steps are within a relative `noise` of the
    fewest steps at any larger batch size: beyond it, steps stop falling by more
    than the noise (Shallue et al. 2019's maximal data parallelism regime)."""
    b, s = np.asarray(batch_sizes, float), np.asarray(steps, float)
    best_after = np.minimum.accumulate(s[::-1])[::-1]
    return float(b[np.argmax(s <= (1 + noise) * best_after)])


def empirical_overhead(batch_sizes, steps, overhead=20.0):
    """Batch size where steps exceed the perfect-scaling line through the
    smallest measured batch size, steps[0] * B[0] / B, by `overhead` % (Zhang
    et al. 2024's definition with that reference point), linearly interpolated
    in log B vs log(steps * B). NaN when never exceeded."""
    b, s = np.asarray(batch_sizes, float), np.asarray(steps, float)
    log_ratio = np.log(s * b / (s[0] * b[0]))
    level = math.log1p(overhead / 100)
    above = np.flatnonzero(log_ratio >= level)
    if not above.size:
        return math.nan
    k = above[0]
    x = np.log(b[k - 1:k + 1])
    return float(np.exp(np.interp(level, log_ratio[k - 1:k + 1], x)))


def fit_steps(batch_sizes, steps, *, overhead=20.0, confidence=0.9, n_bootstrap=2000,
              tolerance=0.2, noise=None, seed=0) -> FitResult:
    """Fit one steps-vs-batch-size curve given as a plain table (one row per
    batch size), with a studentized residual bootstrap on log S (Davison &
    Hinkley 1997, Sec. 6.3 and 5.2.1): residuals inflated by sqrt(n / (n - 2))
    are resampled onto the fitted curve, each replicate refitted, and the
    interval read from the distribution of (estimate* - estimate) / se*. The
    plain percentile interval under-covers with ~10 points (it ignores that the
    noise level is itself estimated: 86 % instead of 90 % in our checks)."""
    b, s = _sorted(batch_sizes, steps)
    log_s = np.log(s)
    theta, cov = _estimates(*fit_log_steps(b, log_s))
    resid = log_s - (theta[0, 0] + np.log1p(np.exp(theta[0, 1]) / b))
    n = len(b)
    intervals = np.full((3, 2), np.nan)
    if n > 2:
        rng = np.random.default_rng(seed)
        draws = resid[rng.integers(0, n, (n_bootstrap, n))] * math.sqrt(n / (n - 2))
        boot, boot_cov = _estimates(*fit_log_steps(b, log_s - resid + draws))
        se, boot_se = np.sqrt(cov[0]), np.sqrt(boot_cov)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_stat = (boot - theta) / boot_se
        for j in range(3):
            q = _quantiles(t_stat[:, j], confidence)
            intervals[j] = theta[0, j] - q[::-1] * se[j] if se[j] > 0 else theta[0, j]
    return _result(b, s, np.exp(theta[0]), np.exp(intervals), resid, overhead, confidence,
                   tolerance, noise, "residual", n_bootstrap)


def fit_sweep(trials, measurements, target, direction="min", *, step_budget=None,
              example_budget=None, metric="val_metric", overhead=20.0, confidence=0.9,
              n_bootstrap=2000, tolerance=0.2, noise=None, seed=0) -> FitResult:
    """Fit steps-to-result of a sweep (analysis.steps.steps_to_result) with a
    percentile interval from a bootstrap over trials within each batch size: at
    every B the tuning trials are resampled with replacement, steps-to-result
    recomputed as the fewest steps among the drawn trials' crossings, and the
    curve refitted. The resampled pool at B holds its complete trials (one that
    never crossed counts as no crossing) and its diverged and pruned ones (no
    crossing: a pruned trial's crossing, if any, is unknown, which can only
    widen the interval upward); incomplete trials are left out. A replicate
    that draws no crossing at some B leaves that B out of its fit."""
    table = steps_to_result(trials, measurements, target, direction, step_budget,
                            example_budget, metric)
    b, s = table["batch_size"].to_numpy(float), table["steps"].to_numpy(float)
    intervals = np.full((3, 2), np.nan)
    if not len(b):
        return _result(b, s, np.full(3, np.nan), intervals, np.array([]), overhead, confidence,
                       tolerance, noise, "trials", n_bootstrap)
    crossing = first_crossings(trials, measurements, target, direction, metric, step_budget,
                               example_budget).set_index("trial_id")["step"]
    pool = trials[trials["status"].isin(["complete", "diverged", "pruned"])]
    rng = np.random.default_rng(seed)
    log_steps = np.empty((n_bootstrap, len(b)))
    for j, size in enumerate(b):
        c = crossing.reindex(pool.loc[pool["batch_size"] == size, "trial_id"]).to_numpy(float)
        c = np.where(np.isnan(c), np.inf, c)
        log_steps[:, j] = np.log(c[rng.integers(0, len(c), (n_bootstrap, len(c)))].min(1))
    measured = np.isfinite(log_steps)
    boot, _ = _estimates(*fit_log_steps(b, np.where(measured, log_steps, 0.0), measured))
    for j in range(3):
        intervals[j] = _quantiles(boot[:, j], confidence)
    theta, _ = _estimates(*fit_log_steps(b, np.log(s)))
    resid = np.log(s) - (theta[0, 0] + np.log1p(np.exp(theta[0, 1]) / b))
    return _result(b, s, np.exp(theta[0]), np.exp(intervals), resid, overhead, confidence,
                   tolerance, noise, "trials", n_bootstrap)


def _estimates(log_s_min, log_b_crit, cov):
    """(log S_min, log B_crit, log E_min) per replicate and their variances."""
    theta = np.stack([log_s_min, log_b_crit, log_s_min + log_b_crit], -1)
    with np.errstate(invalid="ignore"):
        var = np.stack([cov[..., 0, 0], cov[..., 1, 1],
                        cov[..., 0, 0] + cov[..., 1, 1] + 2 * cov[..., 0, 1]], -1)
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


def _result(b, s, estimates, intervals, resid, overhead, confidence, tolerance, noise,
            bootstrap, n_bootstrap) -> FitResult:
    """Assemble a FitResult from (S_min, B_crit, E_min), their intervals (3, 2),
    the log residuals, and the measured points; add regimes and warnings."""
    s_min, b_crit, e_min = (float(v) for v in estimates)
    b_ci = tuple(float(v) for v in intervals[1])
    warnings = []
    n = len(b)
    if n < 3:
        warnings.append(f"only {n} batch size(s): a fit of two parameters needs at least 3 "
                        "to be constrained")
    if n and not b[0] <= b_crit <= b[-1]:
        warnings.append(f"B_crit = {b_crit:.4g} lies outside the measured batch sizes "
                        f"[{b[0]:g}, {b[-1]:g}]: no knee in the data, the fit extrapolates")
    if not b_ci[0] > 0 or b_ci[1] / b_ci[0] > 10:
        warnings.append(f"the {confidence:.0%} interval of B_crit ({b_ci[0]:.4g}, {b_ci[1]:.4g}) "
                        "spans more than a factor of 10: the data barely constrain it")
    ps_end = useful = emp = math.nan
    if n >= 2:
        sigma = math.sqrt((resid ** 2).sum() / (n - 2)) if n > 2 else 0.0
        noise = max(2 * sigma, MIN_NOISE) if noise is None else noise
        ps_end, useful = perfect_scaling_end(b, s, tolerance), max_useful_batch_size(b, s, noise)
        emp = empirical_overhead(b, s, overhead)
        if ps_end == b[-1]:
            warnings.append(f"perfect scaling holds up to the largest batch size {b[-1]:g}")
        elif useful == b[-1]:
            warnings.append("steps still fall at the largest batch size: the maximal useful "
                            f"batch size is at least {b[-1]:g}")
    frac = overhead / 100
    return FitResult(
        s_min=s_min, e_min=e_min, b_crit=b_crit, b_crit_ci=b_ci,
        s_min_ci=tuple(float(v) for v in intervals[0]),
        e_min_ci=tuple(float(v) for v in intervals[2]),
        overhead_percent=float(overhead), b_crit_overhead=frac * b_crit,
        b_crit_overhead_ci=(frac * b_ci[0], frac * b_ci[1]),
        b_crit_overhead_empirical=float(emp), perfect_scaling_end=ps_end,
        max_useful_batch_size=useful, batch_sizes=b.tolist(), steps=s.tolist(),
        confidence=confidence, bootstrap=bootstrap, n_bootstrap=n_bootstrap, warnings=warnings)
