"""The noisy quadratic model (NQM) of Zhang et al. 2019, "Which Algorithmic
Choices Matter at Which Batch Sizes? Insights From a Noisy Quadratic Model"
(NeurIPS), Sec. 3: exact steps-vs-batch-size curves, the harness's ground truth.

Loss 1/2 sum_i h_i x_i^2 with h_i = 1/i (i = 1..K, K = 10^4, no binning),
x(0) ~ N(0, I), stochastic gradient h_i x_i + noise of variance h_i / B, and a
diagonal preconditioner p_i = h_i^-gamma. Heavy-ball momentum (plain SGD is
beta = 0): v' = beta v - a p g, x' = x + v'. Per coordinate, with u = a p h,
the state w = (x, v) evolves as w' = Phi w - a p xi (1, 1) with
Phi = [[1 - u, beta], [-u, beta]], so the second moments follow the 3x3 linear
map of the paper's Eq. 6. Its closed form at any t comes from the
two eigenvalues mu_1, mu_2 of Phi (mu_1 mu_2 = beta): with
e1^T Phi^k y = c_1 mu_1^k + c_2 mu_2^k (Lagrange interpolation of Phi^k),

  E[x(t)^2] = (c_1 mu_1^t + c_2 mu_2^t)^2 E[x(0)^2]
              + (a p)^2 h / B * sum_{k<t} (d_1 mu_1^k + d_2 mu_2^k)^2,

the sum being three geometric series (ratios mu_1^2, beta, mu_2^2). The loss is
A(t) + N(t) / B with A, N independent of B, which the search below exploits.

Steps to reach loss C (Zhang et al. 2019, Sec. 3.2): the first t with
loss(t) < C, found by bisection (which assumes the loss does not dip below C
and come back before its crossing; the tests check this at the optimum), and
minimised over the learning-rate grid (and momentum grid). A configuration
whose iteration is unstable, or whose noise floor N(inf)/B is not below C,
never reaches the target: infinite steps.
"""

from __future__ import annotations

import math

import numpy as np

from harness.errors import UserError

DIMS = 10_000
TARGET = 0.01
LEARNING_RATES = np.logspace(-5, 0.5, 100)
MOMENTA = 1 - np.logspace(-5, 0, 20)
OPTIMIZERS = ("sgd", "momentum")
CHUNK = 500_000  # (configuration, coordinate) pairs held in memory at once
MAX_OCTAVE = 48  # steps searched up to 2^48


def curvatures(dims=DIMS):
    """h_i = 1/i, i = 1..dims (Zhang et al. 2019, Sec. 3.1)."""
    return 1.0 / np.arange(1, dims + 1)


def _abs2(z):
    return z.real * z.real + z.imag * z.imag


class Dynamics:
    """Closed-form expected loss for configurations (learning rate a, momentum
    beta), vectorised as arrays of shape (configurations, coordinates): the
    second-moment map of Zhang et al. 2019, Eq. 6, solved at any t (module docstring)."""

    def __init__(self, lr, beta, h, precondition):
        lr, beta = np.asarray(lr, float)[:, None], np.asarray(beta, float)[:, None]
        ap = lr * h**-precondition
        u = ap * h
        tau = 1 - u + beta
        root = np.sqrt((tau * tau - 4 * beta).astype(complex))
        # mu_1 = mu_2 (a double eigenvalue) happens exactly only for SGD at u = 1,
        # where mu = 0; a tiny split keeps the interpolation formula finite there.
        root[np.abs(root) < 1e-12] = 1e-12
        inv = 1 / root
        self.mu1, self.mu2 = (tau + root) / 2, (tau - root) / 2
        self.c1, self.c2 = (self.mu1 - beta) * inv, (beta - self.mu2) * inv
        d1, d2 = self.mu1 * inv, -self.mu2 * inv
        self.beta = beta[:, 0]
        self.w = 0.5 * h  # loss weight of E[x_i^2]
        wn = self.w * ap * ap * h  # times 1/B: noise per step
        with np.errstate(divide="ignore", invalid="ignore"):
            self.e1 = wn * d1 * d1 / (1 - self.mu1 * self.mu1)
            self.e2 = wn * d2 * d2 / (1 - self.mu2 * self.mu2)
            self.e_beta = 2 * np.einsum("gk,gk->g", wn, d1 * d2).real / (1 - self.beta)
        radius = np.maximum(_abs2(self.mu1), _abs2(self.mu2)).max(1)
        self.stable = radius < 1
        self.noise_floor = np.where(self.stable, (self.e1 + self.e2).sum(1).real + self.e_beta, np.inf)

    def take(self, rows):
        """The same dynamics restricted to configurations `rows`."""
        sub = object.__new__(Dynamics)
        sub.__dict__ = {k: v if k == "w" else v[rows] for k, v in vars(self).items()}
        return sub

    def _deterministic(self, p1, p2, z, tmp):
        """A = sum_i w_i (c_1 mu_1^t + c_2 mu_2^t)^2 given p = mu^t (z, tmp: buffers)."""
        np.multiply(self.c1, p1, out=z)
        z += np.multiply(self.c2, p2, out=tmp)
        return np.einsum("gk,gk,k->g", z.real, z.real, self.w)

    def _noise(self, p1_sq, p2_sq, beta_t):
        """N = noise floor minus its decaying part, given mu^2t and beta^t."""
        decay = np.einsum("gk,gk->g", self.e1, p1_sq) + np.einsum("gk,gk->g", self.e2, p2_sq)
        return self.noise_floor - decay.real - self.e_beta * beta_t

    def at(self, t):
        """(A(t), N(t)) at integer steps t, one per configuration."""
        t = np.asarray(t)
        with np.errstate(over="ignore", invalid="ignore"):
            p1, p2 = self.mu1 ** t[:, None], self.mu2 ** t[:, None]
            a = self._deterministic(p1, p2, np.empty_like(p1), np.empty_like(p1))
            return a, self._noise(p1 * p1, p2 * p2, self.beta**t)

    def loss(self, t, batch_size):
        """The expected loss A(t) + N(t) / B at integer steps t, one per configuration."""
        a, n = self.at(t)
        return a + n / batch_size

    def octaves(self, stop):
        """Yield (j, A, N) at t = 2^j for j = 0, 1, ... by repeated squaring,
        while stop(j) is false."""
        p1, p2 = self.mu1.copy(), self.mu2.copy()
        z, tmp = np.empty_like(p1), np.empty_like(p1)
        with np.errstate(over="ignore", invalid="ignore"):
            for j in range(MAX_OCTAVE + 1):
                if stop(j):
                    return
                a = self._deterministic(p1, p2, z, tmp)
                np.square(p1, out=p1)
                np.square(p2, out=p2)
                yield j, a, self._noise(p1, p2, self.beta**2.0**j)


def nqm_steps(
    batch_sizes,
    optimizer="sgd",
    precondition=0.0,
    target=TARGET,
    dims=DIMS,
    learning_rates=LEARNING_RATES,
    momenta=MOMENTA,
) -> list[dict]:
    """Fewest steps to reach `target` over the grid, per batch size.

    Returns one dict per batch size: batch_size, steps (math.inf when no
    configuration reaches the target), learning_rate (and momentum for
    'momentum'; None when unreachable). Ties go to the first configuration in
    grid order (learning rate, then momentum, ascending).
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if not target > 0:
        raise UserError(f"target must be > 0, got {target!r}")
    sizes = np.asarray(batch_sizes, float)
    if not sizes.size or (sizes <= 0).any():
        raise UserError(f"batch sizes must be positive, got {list(batch_sizes)}")
    betas = np.asarray(momenta, float) if optimizer == "momentum" else np.zeros(1)
    lr, beta = (g.ravel() for g in np.meshgrid(learning_rates, betas, indexing="ij"))
    h = curvatures(dims)
    best = _search(lr, beta, h, precondition, sizes, target)
    out = []
    for size, (steps, k) in zip(sizes, best):
        row = {
            "batch_size": int(size) if size == int(size) else float(size),
            "steps": steps,
            "learning_rate": float(lr[k]) if k is not None else None,
        }
        if optimizer == "momentum":
            row["momentum"] = float(beta[k]) if k is not None else None
        out.append(row)
    return out


def _search(lr, beta, h, precondition, sizes, target):
    """[(steps, configuration index)] per batch size.

    Pass 1 brackets each configuration's crossing between octaves 2^(j-1) and
    2^j by repeated squaring, in chunks, for every batch size at once (the loss
    is A(t) + N(t)/B), skipping octaves past the best bracket already found.
    Pass 2 bisects, per batch size, only the configurations whose bracket can
    still beat the best one, dropping them as soon as they cannot.
    """
    if 0.5 * h.sum() < target:
        return [(0, 0)] * len(sizes)
    n_cfg, n_b = len(lr), len(sizes)
    hi = np.full((n_cfg, n_b), np.inf)  # first octave below target
    best_hi = np.full(n_b, np.inf)
    chunk = max(1, CHUNK // len(h))
    for start in range(0, n_cfg, chunk):
        part = slice(start, start + chunk)
        dyn = Dynamics(lr[part], beta[part], h, precondition)
        open_ = dyn.noise_floor[:, None] / sizes[None] < target  # reaches it eventually
        # the stop rule runs inside this iteration, so it sees this part's open_ and best_hi
        for j, a, n in dyn.octaves(lambda j: not open_.any() or 2.0 ** (j - 1) >= best_hi.max()):  # noqa: B023
            crossed = open_ & (a[:, None] + n[:, None] / sizes[None] < target)
            hi[part][crossed] = 2.0**j
            open_ &= ~crossed & (2.0**j < best_hi[None])
            best_hi = np.minimum(best_hi, hi[part].min(0))
    return [_bisect(lr, beta, h, precondition, size, target, hi[:, b]) for b, size in enumerate(sizes)]


def _bisect(lr, beta, h, precondition, size, target, hi):
    if not np.isfinite(hi).any():
        return (math.inf, None)
    lo = np.where(hi > 1, hi / 2, 0)
    idx = np.flatnonzero(lo < hi.min())
    lo, hi = lo[idx], hi[idx]
    dyn = Dynamics(lr[idx], beta[idx], h, precondition)
    keep = np.ones(len(idx), bool)
    while True:
        keep &= lo < hi.min()
        active = np.flatnonzero(keep & (hi - lo > 1))
        if not active.size:
            break
        mid = np.floor((lo[active] + hi[active]) / 2)
        below = dyn.take(active).loss(mid, size) < target
        hi[active[below]] = mid[below]
        lo[active[~below]] = mid[~below]
    k = np.flatnonzero(keep & (hi == hi[keep].min()))[0]
    return (int(hi[k]), int(idx[k]))
