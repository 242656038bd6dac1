"""The gradient noise scale (McCandlish, Kaplan, Amodei 2018, "An Empirical
Model of Large-Batch Training"), in JAX.

With true gradient G, per-example gradient covariance Sigma and Hessian H:
B_simple = tr(Sigma) / |G|^2 (eq. 2.9) and B_noise = tr(H Sigma) / (G^T H G)
(eq. 2.8). The critical batch size is predicted as B_crit ~ B_noise, and
B_simple is a good proxy for B_noise in practice (their Sec. 2.2-2.3).

Online (inside a jitted training step): the two-batch unbiased estimators of
Appendix A and separate exponential moving averages of the two estimates; the
noise scale is the ratio of the averages, never an average of ratios.

Offline (at fixed parameters): unbiased U-statistic estimates from many
independent gradient samples, with delete-a-group jackknife standard errors.

Windowed (over training): offline estimates at consecutive steps combined as
the ratio of their means, with a moving-block bootstrap over the steps: under
momentum |G|^2 swings from step to step, so one step's estimate is not the
noise scale of that stage of training.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from harness.errors import UserError

# ---------------------------------------------------------------- online ----


def two_batch_estimates(g_small_sq, g_big_sq, b_small, b_big):
    """Unbiased estimates of |G|^2 and tr(Sigma) from squared gradient norms
    at the same parameters (McCandlish et al. 2018, Appendix A, eqs. A.2-A.3):

        |G|^2     ~ (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
        tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/b_small - 1/b_big)

    They follow from E|G_B|^2 = |G|^2 + tr(Sigma)/B for a gradient G_B over B
    independent examples. `g_small_sq` may be the mean of |g_i|^2 over several
    micro-batches of `b_small` examples and `g_big_sq` the squared norm of
    their mean (`b_big` examples): both stay unbiased.
    """
    g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
    trace = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


class GnsState(NamedTuple):
    """Exponential moving averages of the |G|^2 and tr(Sigma) estimates, a
    valid `lax.scan` carry. The averages are stored without bias correction;
    `weight` = 1 - decay^t is the total weight they carry, and dividing by it
    gives the bias-corrected averages (as Adam does, Kingma & Ba 2015, Sec. 3)."""

    g2: jax.Array
    trace: jax.Array
    weight: jax.Array


def gns_init() -> GnsState:
    zero = jnp.zeros((), jnp.float32)
    return GnsState(zero, zero, zero)


def gns_update(state: GnsState, g_small_sq, g_big_sq, b_small, b_big, decay) -> GnsState:
    """Fold one pair of squared gradient norms into the averages."""
    g2, trace = two_batch_estimates(g_small_sq, g_big_sq, b_small, b_big)

    def ema(old, new):
        return decay * old + (1 - decay) * new

    return GnsState(ema(state.g2, g2), ema(state.trace, trace), ema(state.weight, 1.0))


def gns_estimates(state: GnsState):
    """The bias-corrected averages (|G|^2, tr(Sigma)); NaN before any update."""
    return state.g2 / state.weight, state.trace / state.weight


def b_simple(state: GnsState):
    """B_simple = EMA[tr(Sigma)] / EMA[|G|^2] (McCandlish et al. 2018, Appendix
    A). Bias correction cancels in the ratio. NaN before any update; negative
    while the |G|^2 average is negative, i.e. while the gradient noise still
    swamps the signal at this batch size."""
    return state.trace / state.g2


# --------------------------------------------------------------- offline ----

GROUPS = 16  # jackknife groups of the offline estimates


class NoiseScale(NamedTuple):
    """An offline noise-scale estimate `value` = `noise` / `signal`, each with
    its jackknife standard error. For B_simple, signal = |G|^2 and noise =
    tr(Sigma); for B_noise, signal = G^T H G and noise = tr(H Sigma)."""

    value: float
    stderr: float
    signal: float
    signal_stderr: float
    noise: float
    noise_stderr: float


def b_simple_offline(loss_fn, params, sample_batch, batch_size, num_samples, key, *, groups=GROUPS) -> NoiseScale:
    """B_simple = tr(Sigma) / |G|^2 at fixed `params` (McCandlish et al. 2018,
    eq. 2.9), from `num_samples` independent gradients of `loss_fn(params,
    batch)` (a scalar mean loss) on batches `sample_batch(key, batch_size)`.
    See `offline_noise_scales` for the estimators and their standard errors."""
    return offline_noise_scales(
        loss_fn, params, sample_batch, batch_size, num_samples, key, groups=groups, hessian=False
    )["b_simple"]


def b_noise_offline(loss_fn, params, sample_batch, batch_size, num_samples, key, *, groups=GROUPS) -> NoiseScale:
    """B_noise = tr(H Sigma) / (G^T H G) at fixed `params` (McCandlish et al.
    2018, eq. 2.8) with Hessian-vector products; see `offline_noise_scales`."""
    return offline_noise_scales(
        loss_fn, params, sample_batch, batch_size, num_samples, key, groups=groups, hessian=True
    )["b_noise"]


def offline_noise_scales(
    loss_fn: Callable,
    params,
    sample_batch: Callable,
    batch_size: int,
    num_samples: int,
    key,
    *,
    groups: int = GROUPS,
    hessian: bool = True,
) -> dict:
    """B_simple (and, with `hessian`, B_noise) at fixed parameters.

    Draws `num_samples` gradients g_j, each on its own batch of `batch_size`
    examples, split into `groups` equal groups. With S_k the sum of group k's
    gradients, unbiased estimates come from pairs of samples in different
    groups and from each sample with itself:

        |G|^2         ~ mean over cross-group pairs (j, l) of g_j . g_l
        tr(Sigma) / b ~ mean_j |g_j|^2 - |G|^2 estimate

    (E g_j . g_l = |G|^2 for independent samples, E|g_j|^2 = |G|^2 +
    tr(Sigma)/b). For B_noise the same with the inner product weighted by a
    Hessian estimated on a batch drawn independently of the gradients it
    multiplies, so that it stays unbiased: g_j^T H_j g_j with H_j on a fresh
    batch of `batch_size` examples, and S_k^T H_k S_l with H_k on a fresh batch
    of (num_samples / groups) * batch_size examples (one Hessian-vector
    product, jax.jvp of jax.grad, per group). The diagonal terms are the noisy
    part of B_noise at batch_size 1 (a one-example Hessian): a few examples
    per sample give a much smaller standard error for the same samples.

    `loss_fn` and `sample_batch` may be `jax.tree_util.Partial`s binding
    arrays (e.g. the training set): those are passed to the compiled function
    rather than embedded in it.

    Standard errors: delete-a-group jackknife over the `groups` groups (Efron
    & Tibshirani 1993, Ch. 11), which also covers the noise of the Hessian
    estimates and the ratio's nonlinearity. Batches should be drawn with
    replacement (or from the population): Sigma is the per-example covariance
    only when the examples of a batch are independent.

    Returns {"b_simple": NoiseScale[, "b_noise": NoiseScale]}.
    """
    check_num_samples(num_samples, groups)
    # Partial makes the functions pytrees: arrays bound in them (a training set)
    # become arguments of the compiled functions instead of constants baked into them.
    loss_fn, sample_batch = _as_partial(loss_fn), _as_partial(sample_batch)
    per_group = num_samples // groups
    names = ("b_simple", "b_noise") if hessian else ("b_simple",)
    acc = _zeros(params, groups, names)
    k_samples, k_hessian = jax.random.split(key)
    # A Python loop over compiled steps, not lax.scan: inside an XLA:CPU loop body
    # the weight gradient of a convolution leaves the fast path (~70x slower,
    # jax-ml/jax#12868), and vmap over samples turns it into a grouped convolution,
    # also slow on CPU (benchmarks/RESULTS.md). Dispatch is asynchronous, so the loop costs little.
    for j in range(num_samples):
        acc = _add_sample(acc, loss_fn, params, sample_batch, k_samples, j, batch_size, hessian)
    sums, diag = acc
    cross = {"b_simple": _gram(sums, sums)}
    if hessian:
        cross["b_noise"] = jnp.stack(
            [
                _hessian_row(loss_fn, params, sample_batch, sums, k, k_hessian, per_group * batch_size)
                for k in range(groups)
            ]
        )
    return {
        name: NoiseScale(*(float(v) for v in _jackknife(diag[name], cross[name], per_group, batch_size)))
        for name in names
    }


def check_num_samples(num_samples: int, groups: int = GROUPS) -> None:
    """UserError unless `num_samples` splits into `groups` groups of at least 2."""
    if groups < 2 or num_samples % groups or num_samples < 2 * groups:
        raise UserError(
            f"num_samples must be a multiple of {groups} (the jackknife groups) and at least "
            f"{2 * groups}, got {num_samples!r}"
        )


def _as_partial(f):
    return f if isinstance(f, Partial) else Partial(f)


def _hvp(loss_fn, params, batch, tangent):
    """H v with H the Hessian of the loss on `batch` (forward-over-reverse)."""
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (tangent,))[1]


@partial(jax.jit, static_argnums=(1, 2))
def _zeros(params, groups, names):
    """Empty per-group sums, derived from `params` so that they carry the same
    sharding type as the sums `_add_sample` returns (else it compiles twice)."""
    sums = jax.tree.map(lambda p: jnp.broadcast_to(jnp.zeros_like(p), (groups, *p.shape)), params)
    return sums, {name: jax.tree.leaves(sums)[0].reshape(groups, -1)[:, 0] for name in names}


@partial(jax.jit, static_argnums=(6, 7), donate_argnums=0)
def _add_sample(acc, loss_fn, params, sample_batch, key, j, batch_size, hessian):
    """Adds sample j, a gradient g on a fresh batch, to its group's sum, and its
    diagonal terms |g|^2 and g^T H' g (H' the Hessian on another fresh batch).
    Gradients stay pytrees: flattening them into one vector (a concatenation)
    also pushes XLA:CPU's convolution weight gradients off their fast path."""
    sums, diag = acc
    group = j % diag["b_simple"].shape[0]
    k_gradient, k_hessian = jax.random.split(jax.random.fold_in(key, j))
    g = jax.grad(loss_fn)(params, sample_batch(k_gradient, batch_size))
    terms = {"b_simple": optax.tree.vdot(g, g)}
    if hessian:
        terms["b_noise"] = optax.tree.vdot(g, _hvp(loss_fn, params, sample_batch(k_hessian, batch_size), g))
    sums = jax.tree.map(lambda s, x: s.at[group].add(x), sums, g)
    return sums, {name: diag[name].at[group].add(terms[name]) for name in diag}


@partial(jax.jit, static_argnums=6)
def _hessian_row(loss_fn, params, sample_batch, sums, group, key, batch_size):
    """(S_group^T H S_l)_l with H the Hessian on a fresh batch."""
    batch = sample_batch(jax.random.fold_in(key, group), batch_size)
    hv = _hvp(loss_fn, params, batch, jax.tree.map(lambda s: s[group], sums))
    return _gram(sums, jax.tree.map(lambda x: x[None], hv))[:, 0]


@jax.jit
def _gram(a, b):
    """Inner products of the stacked pytrees a (m, ...) and b (k, ...): (m, k)."""
    return sum(
        x.reshape(x.shape[0], -1) @ y.reshape(y.shape[0], -1).T for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@partial(jax.jit, static_argnums=(2, 3))
def _jackknife(diag, cross, per_group, batch_size):
    """Estimates and delete-a-group jackknife standard errors of (ratio,
    signal, noise) from per-group sums of the diagonal terms `diag` (m,) and
    the matrix `cross` (m, m) of cross-group inner products (its diagonal
    holds within-group pairs and self terms, and is excluded)."""
    m = diag.shape[0]
    off = cross - jnp.diag(jnp.diag(cross))

    def estimate(diag_sum, off_sum, groups_kept):
        n = groups_kept * per_group
        signal = off_sum / (n * n - groups_kept * per_group**2)
        noise = batch_size * (diag_sum / n - signal)
        return jnp.stack([noise / signal, signal, noise])

    full = estimate(diag.sum(), off.sum(), m)
    loo = jax.vmap(estimate, (0, 0, None))(diag.sum() - diag, off.sum() - off.sum(0) - off.sum(1), m - 1)
    stderr = jnp.sqrt((m - 1) / m * ((loo - loo.mean(0)) ** 2).sum(0))
    return jnp.stack([full, stderr], 1).reshape(-1)


# ------------------------------------------------------------- windowed ----


class WindowedNoiseScale(NamedTuple):
    """A noise scale over a window of training: `value` = mean(noise) /
    mean(signal) over the window's points, with a standard error and a
    `level` (two-sided) interval [`low`, `high`] that cover the variation
    across the window as well as the sampling at each point."""

    value: float
    stderr: float
    low: float
    high: float
    level: float
    signal: float
    noise: float
    block: int


def window_noise_scale(
    points: list[NoiseScale], *, level: float = 0.9, resamples: int = 2000, seed: int = 0
) -> WindowedNoiseScale:
    """Combine offline estimates at consecutive training steps into one noise
    scale: the ratio of the window means of the unbiased signal and noise
    estimates, never a mean of ratios (McCandlish et al. 2018, App. A; the
    ratio of two means is also what their moving averages give).

    Uncertainty: moving-block bootstrap over the points (Kuensch 1989), blocks
    of ceil(n^(1/3)) consecutive points (the order Hall, Horowitz & Jing 1995
    find best for variances), so that correlated neighbouring steps (momentum
    makes |G|^2 oscillate) are resampled together; percentile interval. Each
    point's own sampling noise is part of what is resampled. A window of one
    point has no variation to resample: its jackknife standard error and a
    normal interval are returned."""
    signal = np.array([p.signal for p in points], np.float64)
    noise = np.array([p.noise for p in points], np.float64)
    n = len(points)
    value = noise.mean() / signal.mean()
    if n == 1:
        half = statistics.NormalDist().inv_cdf(0.5 + level / 2) * points[0].stderr
        return WindowedNoiseScale(
            value, points[0].stderr, value - half, value + half, level, signal.mean(), noise.mean(), 1
        )
    block = math.ceil(n ** (1 / 3))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, (resamples, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    replicates = noise[idx].mean(1) / signal[idx].mean(1)
    low, high = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return WindowedNoiseScale(value, replicates.std(ddof=1), low, high, level, signal.mean(), noise.mean(), block)
