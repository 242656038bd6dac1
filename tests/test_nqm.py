"""The noisy quadratic model: closed form vs the 3x3 second-moment recursion and a
Monte Carlo simulation of the same model; the steps search; Zhang et al. 2019's
findings; `cbs nqm`."""

import json

import numpy as np
import pytest

from analysis.fit import fit_steps
from analysis.nqm import DIMS, Dynamics, curvatures, nqm_steps
from harness.cli import main

CASES = [  # (learning rate, momentum, preconditioning power)
    (0.3, 0.0, 0.0),
    (0.05, 0.9, 0.0),
    (0.1, 0.5, 0.5),
    (1.5, 0.0, 0.0),
    (0.02, 0.99, 0.3),
]


def expected_loss(steps, batch_size, lr, beta=0.0, gamma=0.0, dims=DIMS):
    """The closed form the steps search evaluates (analysis.nqm.Dynamics.loss), at each of `steps`."""
    steps = np.atleast_1d(np.asarray(steps))
    dynamics = Dynamics(np.full(steps.shape, lr), np.full(steps.shape, beta), curvatures(dims), gamma)
    return dynamics.loss(steps, batch_size)


def recursion_loss(steps, batch_size, lr, beta, gamma, dims):
    """Iterate the second-moment map of Zhang et al. 2019 (Eq. 6) step by step."""
    h = curvatures(dims)
    ap = lr * h**-gamma
    u = ap * h
    m = np.stack(
        [
            np.stack([(1 - u) ** 2, np.full_like(u, beta**2), 2 * (1 - u) * beta], -1),
            np.stack([u**2, np.full_like(u, beta**2), -2 * u * beta], -1),
            np.stack([-(1 - u) * u, np.full_like(u, beta**2), (1 - 2 * u) * beta], -1),
        ],
        -2,
    )
    noise = ap**2 * h / batch_size
    z = np.stack([np.ones_like(h), np.zeros_like(h), np.zeros_like(h)], -1)
    out = []
    for t in range(max(steps) + 1):
        if t in steps:
            out.append(0.5 * (h * z[:, 0]).sum())
        z = np.einsum("kij,kj->ki", m, z) + noise[:, None]
    return np.array(out)


@pytest.mark.parametrize("lr,beta,gamma", CASES)
def test_closed_form_matches_the_second_moment_recursion(lr, beta, gamma):
    steps = [0, 1, 2, 7, 50, 300]
    closed = expected_loss(steps, 8, lr, beta, gamma, dims=50)
    np.testing.assert_allclose(closed, recursion_loss(steps, 8, lr, beta, gamma, 50), rtol=1e-9)


@pytest.mark.parametrize("lr,beta,gamma", [(0.3, 0.0, 0.0), (0.05, 0.9, 0.0), (0.1, 0.5, 0.5)])
def test_closed_form_matches_monte_carlo(lr, beta, gamma):
    """Simulate v' = beta v - a p g, x' = x + v' with g = h x + N(0, h/B) noise."""
    dims, batch, samples = 5, 4, 200_000
    h = curvatures(dims)
    ap = lr * h**-gamma
    rng = np.random.default_rng(0)
    x, v = rng.standard_normal((samples, dims)), np.zeros((samples, dims))
    steps, mc = [3, 20, 60], []
    for t in range(1, max(steps) + 1):
        g = h * x + rng.standard_normal((samples, dims)) * np.sqrt(h / batch)
        v = beta * v - ap * g
        x = x + v
        if t in steps:
            mc.append(0.5 * (h * x**2).sum(1).mean())
    np.testing.assert_allclose(expected_loss(steps, batch, lr, beta, gamma, dims), mc, rtol=5e-3)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_steps_are_the_first_crossing_and_the_grid_minimum(optimizer):
    dims, target = 100, 0.05
    lrs, momenta = np.logspace(-2, 0.3, 8), [0.0, 0.5, 0.9]
    grid_momenta = momenta if optimizer == "momentum" else [0.0]
    for row in nqm_steps([4, 64], optimizer, 0.0, target, dims, lrs, momenta):
        # brute force: every step of every configuration
        t = np.arange(row["steps"] + 1)
        best = min(
            np.argmax(expected_loss(t, row["batch_size"], lr, beta, dims=dims) < target) or np.inf
            for lr in lrs
            for beta in grid_momenta
        )
        assert best == row["steps"]


def test_unreachable_target_gives_infinite_steps():
    (row,) = nqm_steps([1], "sgd", target=1e-6, dims=100, learning_rates=[1e-2, 1.0, 3.0])
    assert row["steps"] == np.inf and row["learning_rate"] is None


def test_momentum_and_preconditioning_raise_the_critical_batch_size():
    """Zhang et al. 2019, Sec. 4: both extend perfect scaling to larger batches."""
    sizes = 2 ** np.arange(0, 15, 2)
    dims = 1000
    fits = {}
    for name, optimizer, gamma in [("sgd", "sgd", 0.0), ("momentum", "momentum", 0.0), ("precondition", "sgd", 0.5)]:
        rows = nqm_steps(sizes, optimizer, gamma, dims=dims)
        fits[name] = fit_steps(sizes, [r["steps"] for r in rows], n_bootstrap=200)
    for better in ("momentum", "precondition"):
        assert fits[better].b_crit > 4 * fits["sgd"].b_crit
        assert fits[better].b_crit_ci[0] > fits["sgd"].b_crit_ci[1]


def test_cbs_nqm_json(capsys):
    assert main(["nqm", "--optimizer", "momentum", "--batch-sizes", "1,64", "--dims", "200", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = nqm_steps([1, 64], "momentum", dims=200)
    assert rows == expected
    assert set(rows[0]) == {"batch_size", "steps", "learning_rate", "momentum"}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--batch-sizes", "1,two"], "--batch-sizes must be comma-separated positive integers"),
        (["--batch-sizes", "0,4"], "--batch-sizes must be comma-separated positive integers"),
        (["--batch-sizes", "4", "--target", "-1"], "target must be > 0"),
    ],
)
def test_cbs_nqm_errors(capsys, argv, message):
    assert main(["nqm", *argv]) == 2
    assert message in capsys.readouterr().err
