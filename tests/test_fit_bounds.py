"""Fits on data that cannot pin B_crit: one regime of McCandlish et al. 2018,
Eq. 2.11 only gives a one-sided bound, two batch sizes give no interval."""

import math

import numpy as np
import pytest

from analysis.fit import fit_steps, one_sided_bound

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

SIZES = 2.0 ** np.arange(3, 11)  # 8 .. 1024


def noisy(steps, noise, seed):
    rng = np.random.default_rng(seed)
    return steps * np.exp(rng.normal(0, noise, len(steps)))


def assert_no_numbers(fit):
    numbers = [
        fit.b_crit,
        fit.s_min,
        fit.e_min,
        fit.b_crit_overhead,
        *fit.b_crit_ci,
        *fit.s_min_ci,
        *fit.e_min_ci,
        *fit.b_crit_overhead_ci,
    ]
    assert all(math.isnan(v) for v in numbers)
    d = fit.to_dict()
    assert d["b_crit"] is d["s_min"] is d["e_min"] is d["b_crit_overhead20"] is None
    assert d["b_crit_ci"] == [None, None]
    assert not [w for w in fit.warnings if "spans more than" in w or "outside the measured" in w]


@pytest.mark.parametrize("noise", [0.0, 1e-3, 0.05])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sizes", [SIZES, 2.0 ** np.arange(0, 13)])
def test_only_perfect_scaling_gives_a_lower_bound(sizes, seed, noise):
    fit = fit_steps(sizes, noisy(1e5 / sizes, noise, seed), n_bootstrap=300)
    assert (fit.b_crit_bound, fit.b_crit_bound_value) == ("lower", sizes[-1])
    assert_no_numbers(fit)
    assert fit.b_crit_text() == (f">= {sizes[-1]:g} (only perfect scaling measured: the data give a lower bound)")
    assert fit.to_dict()["b_crit_bound"] == "lower"
    assert fit.to_dict()["b_crit_text"] == fit.b_crit_text()
    assert any(w.startswith(f"B_crit >= {sizes[-1]:g} only") for w in fit.warnings)


@pytest.mark.parametrize("noise", [0.0, 1e-3, 0.05])
@pytest.mark.parametrize("seed", range(3))
def test_only_the_no_scaling_regime_gives_an_upper_bound(seed, noise):
    fit = fit_steps(SIZES, noisy(np.full(SIZES.size, 3000.0), noise, seed), n_bootstrap=300)
    assert (fit.b_crit_bound, fit.b_crit_bound_value) == ("upper", 8)
    assert_no_numbers(fit)
    assert fit.b_crit_text() == "<= 8 (only the no-scaling regime measured: the data give an upper bound)"
    assert any(w.startswith("B_crit <= 8 only") for w in fit.warnings)


def two_regime_fits(b_crit, seeds=10):
    return [fit_steps(SIZES, noisy(1000 * (1 + b_crit / SIZES), 0.05, seed), n_bootstrap=500) for seed in range(seeds)]


def assert_two_sided(fit):
    assert fit.b_crit_bound is None and math.isnan(fit.b_crit_bound_value)
    lo, hi = fit.b_crit_ci
    assert 0 < lo < fit.b_crit < hi < math.inf
    assert fit.b_crit_text() == f"{fit.b_crit:.4g} (90% interval {lo:.4g} .. {hi:.4g})"


def test_a_knee_inside_the_data_gives_a_two_sided_interval_covering_the_truth():
    fits = two_regime_fits(64.0)
    for fit in fits:
        assert_two_sided(fit)
    assert sum(fit.b_crit_ci[0] <= 64 <= fit.b_crit_ci[1] for fit in fits) >= 8


@pytest.mark.parametrize("b_crit", [4.0, 2048.0])  # half the smallest B, twice the largest
def test_a_knee_just_beyond_the_data_is_still_estimated(b_crit):
    for fit in two_regime_fits(b_crit):
        assert_two_sided(fit)


def test_the_rule_of_one_sided_bounds():
    # S B / E_min = 1 + B / B_crit: within the 20 % tolerance up to 1024 when B_crit > 5120
    assert one_sided_bound(SIZES, 6000.0) == ("lower", 1024)
    assert one_sided_bound(SIZES, 4000.0) == (None, pytest.approx(math.nan, nan_ok=True))
    assert one_sided_bound(SIZES, 4000.0, noise=0.3) == ("lower", 1024)
    assert one_sided_bound(SIZES, 4000.0, reached=(False, True)) == ("lower", 1024)
    # S / S_min = 1 + B_crit / B within 20 % from 8 on when B_crit < 1.6
    assert one_sided_bound(SIZES, 1.0) == ("upper", 8)
    assert one_sided_bound(SIZES, 2.0)[0] is None
    assert one_sided_bound(SIZES, 2.0, reached=(True, False)) == ("upper", 8)
    # inside the measured range: never a bound, whatever the interval
    assert one_sided_bound(SIZES, 500.0, noise=10.0, reached=(True, True))[0] is None


def test_two_batch_sizes_give_a_fit_without_an_interval():
    fit = fit_steps([1, 2], [100, 60], n_bootstrap=10)  # S = 20 + 80 / B exactly
    assert fit.b_crit == pytest.approx(4) and fit.b_crit_bound is None
    assert all(math.isnan(v) for v in (*fit.b_crit_ci, *fit.s_min_ci, *fit.e_min_ci))
    assert "only 2 batch sizes: no interval (a fit of two parameters needs at least 3)" in fit.warnings
    assert not [w for w in fit.warnings if "spans more than" in w]
    assert fit.b_crit_text() == "4 (no interval)"


def test_two_batch_sizes_in_perfect_scaling_give_a_bound_without_an_interval():
    fit = fit_steps([1, 2], [100, 50], n_bootstrap=10)
    assert (fit.b_crit_bound, fit.b_crit_bound_value) == ("lower", 2)
    assert "only 2 batch sizes: no interval (a fit of two parameters needs at least 3)" in fit.warnings


@pytest.mark.parametrize(
    "sizes,message",
    [
        ([], "no batch size measured: no fit"),
        (
            [64],
            "only 1 batch size: no fit (a fit of two parameters needs at least 2 points, and an interval at least 3)",
        ),
    ],
)
def test_fewer_than_two_batch_sizes_give_no_fit(sizes, message):
    fit = fit_steps(sizes, [100.0] * len(sizes), n_bootstrap=10)
    assert math.isnan(fit.b_crit) and fit.b_crit_bound is None
    assert fit.warnings == [message]
    assert fit.b_crit_text() == f"n/a (no fit: {len(sizes)} batch size(s) measured)"
