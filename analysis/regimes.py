"""Where a steps-to-result curve changes regime: Shallue et al. 2019's
perfect scaling and maximal useful batch size (Sec. 4.1: perfect scaling,
diminishing returns, maximal data parallelism), and the overhead definition
of the critical batch size (Zhang et al. 2024, Sec. 3.1: steps exceed the
perfect-scaling prediction by X %).
"""

from __future__ import annotations

import math

import numpy as np


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
    x = np.log(b[k - 1 : k + 1])
    return float(np.exp(np.interp(level, log_ratio[k - 1 : k + 1], x)))


def regimes(b, s, overhead, tolerance, noise):
    """Shallue et al. 2019's regimes (Sec. 4.1) and Zhang et al. 2024's
    empirical overhead batch size from at least 2 measured points, with
    warnings when the largest batch size is still in a scaling regime."""
    ps_end, useful = perfect_scaling_end(b, s, tolerance), max_useful_batch_size(b, s, noise)
    warnings = []
    if ps_end == b[-1]:
        warnings.append(f"perfect scaling holds up to the largest batch size {b[-1]:g}")
    elif useful == b[-1]:
        warnings.append(
            f"steps still fall at the largest batch size: the maximal useful batch size is at least {b[-1]:g}"
        )
    return ps_end, useful, empirical_overhead(b, s, overhead), warnings
