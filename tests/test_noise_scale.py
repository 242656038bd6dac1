"""The noise-scale estimators against the closed form of linear regression
(McCandlish et al. 2018, App. A), with fresh Gaussian samples each time.

Model: y = x.w* + eps, x ~ N(0, Lambda) with Lambda diagonal, eps ~ N(0, s^2),
loss 1/2 (x.w - y)^2. With delta = w - w*, the per-example gradient is
g = x (x.delta - eps), so G = Lambda delta, H = Lambda and, by Isserlis'
theorem, Sigma = (delta' Lambda delta + s^2) Lambda + Lambda delta delta' Lambda.
Lambda = I gives the closed form Sigma = (|delta|^2 + s^2) I + delta delta'.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.engine import noise_scale as ns
from harness.errors import UserError

D = 8
NOISE_STD = 0.5
W_STAR = jnp.linspace(-1.0, 1.0, D)
ANISOTROPIC = jnp.logspace(0, -1.5, D)  # diagonal of Lambda


def loss_fn(w, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ w - y) ** 2)


def _sampler(scale):
    def sample_batch(key, batch_size):
        kx, ke = jax.random.split(key)
        x = jax.random.normal(kx, (batch_size, D)) * scale
        return x, x @ W_STAR + NOISE_STD * jax.random.normal(ke, (batch_size,))

    return sample_batch


isotropic_batch = _sampler(jnp.ones(D))
anisotropic_batch = _sampler(jnp.sqrt(ANISOTROPIC))


def closed_form(delta, lam):
    """(|G|^2, tr Sigma, G'HG, tr(H Sigma)) for the model above."""
    delta, lam = np.asarray(delta, np.float64), np.asarray(lam, np.float64)
    dld = delta @ (lam * delta)
    sigma = (dld + NOISE_STD**2) * np.diag(lam) + np.outer(lam * delta, lam * delta)
    g = lam * delta
    return g @ g, np.trace(sigma), g @ (lam * g), np.trace(np.diag(lam) @ sigma)


def delta_at(scale):
    return scale * jnp.cos(jnp.arange(D, dtype=jnp.float32))


@pytest.mark.parametrize("scale", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_offline_estimates_match_closed_form_isotropic(scale, batch_size):
    delta = delta_at(scale)
    g2, trace, _, _ = closed_form(delta, np.ones(D))
    est = ns.offline_noise_scales(
        loss_fn, W_STAR + delta, isotropic_batch, batch_size, 2048, jax.random.key(int(scale * 10) + batch_size)
    )
    for name in ("b_simple", "b_noise"):  # H = I: B_noise = B_simple
        e = est[name]
        assert abs(e.value - trace / g2) < 3 * e.stderr, (name, e, trace / g2)
        assert abs(e.signal - g2) < 3 * e.signal_stderr
        assert abs(e.noise - trace) < 3 * e.noise_stderr
        assert e.stderr < 0.25 * e.value  # precise enough for the check to mean something


@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_offline_b_noise_differs_from_b_simple_with_curvature(scale):
    delta = delta_at(scale)
    g2, trace, ghg, htrace = closed_form(delta, ANISOTROPIC)
    est = ns.offline_noise_scales(loss_fn, W_STAR + delta, anisotropic_batch, 4, 4096, jax.random.key(7))
    simple, noise = est["b_simple"], est["b_noise"]
    assert abs(simple.value - trace / g2) < 3 * simple.stderr
    assert abs(noise.value - htrace / ghg) < 3 * noise.stderr
    assert abs(noise.signal - ghg) < 3 * noise.signal_stderr
    assert abs(noise.noise - htrace) < 3 * noise.noise_stderr
    # the B_noise estimate rules out B_simple's value: the Hessian weighting is what it measures
    assert abs(noise.value - trace / g2) > 5 * noise.stderr


def test_offline_standard_errors_are_calibrated():
    """Over independent repeats, (estimate - truth) / stderr has a spread near 1."""
    delta = delta_at(0.5)
    g2, trace, ghg, htrace = closed_form(delta, ANISOTROPIC)
    z = {"b_simple": [], "b_noise": []}
    for seed in range(40):
        est = ns.offline_noise_scales(loss_fn, W_STAR + delta, anisotropic_batch, 2, 512, jax.random.key(100 + seed))
        z["b_simple"].append((est["b_simple"].value - trace / g2) / est["b_simple"].stderr)
        z["b_noise"].append((est["b_noise"].value - htrace / ghg) / est["b_noise"].stderr)
    for name, values in z.items():
        rms = np.sqrt(np.mean(np.square(values)))
        assert 0.65 < rms < 1.5, (name, rms)


def test_b_simple_offline_and_b_noise_offline_are_the_combined_estimates():
    w, key = W_STAR + delta_at(1.0), jax.random.key(3)
    both = ns.offline_noise_scales(loss_fn, w, anisotropic_batch, 1, 256, key)
    assert ns.b_simple_offline(loss_fn, w, anisotropic_batch, 1, 256, key) == pytest.approx(both["b_simple"])
    assert ns.b_noise_offline(loss_fn, w, anisotropic_batch, 1, 256, key) == pytest.approx(both["b_noise"])


def test_offline_rejects_sample_counts_the_groups_cannot_split():
    with pytest.raises(UserError, match="num_samples must be a multiple of 16"):
        ns.b_simple_offline(loss_fn, W_STAR, isotropic_batch, 1, 100, jax.random.key(0))


def _two_batch_draw(key, w, b_small, microbatches):
    """One training-step measurement: per-micro-batch gradients at the same w."""
    keys = jax.random.split(key, microbatches)
    grads = jax.vmap(lambda k: jax.grad(loss_fn)(w, isotropic_batch(k, b_small)))(keys)
    g_small_sq = jnp.mean(jnp.sum(grads**2, axis=1))
    g_big_sq = jnp.sum(jnp.mean(grads, axis=0) ** 2)
    return g_small_sq, g_big_sq


@pytest.mark.parametrize("b_small,microbatches", [(1, 2), (8, 4)])
def test_two_batch_estimators_are_unbiased(b_small, microbatches):
    delta, draws = delta_at(0.7), 20_000
    g2_true, trace_true, _, _ = closed_form(delta, np.ones(D))
    keys = jax.random.split(jax.random.key(b_small), draws)
    small, big = jax.jit(jax.vmap(lambda k: _two_batch_draw(k, W_STAR + delta, b_small, microbatches)))(keys)
    g2, trace = ns.two_batch_estimates(small, big, b_small, b_small * microbatches)
    for values, truth in ((g2, g2_true), (trace, trace_true)):
        values = np.asarray(values, np.float64)
        assert abs(values.mean() - truth) < 4 * values.std() / np.sqrt(draws)
    # the naive |G_big|^2 is biased by tr(Sigma)/B_big: the draws resolve that bias
    naive = np.asarray(big, np.float64)
    assert naive.mean() - g2_true > 6 * naive.std() / np.sqrt(draws)


def test_ema_of_constant_estimates_gives_their_exact_ratio():
    g2, trace = ns.two_batch_estimates(3.0, 2.0, 4, 16)
    assert (g2, trace) == pytest.approx((5.0 / 3.0, 16.0 / 3.0))
    state = ns.gns_init()
    for _ in range(5):
        state = ns.gns_update(state, 3.0, 2.0, 4, 16, 0.9)
        assert float(ns.b_simple(state)) == pytest.approx(3.2, rel=1e-6)
        assert np.asarray(ns.gns_estimates(state)) == pytest.approx([g2, trace], rel=1e-6)
    assert np.isnan(float(ns.b_simple(ns.gns_init())))


def test_ema_is_a_ratio_of_averages_and_a_scan_carry():
    rng = np.random.default_rng(0)
    big = rng.uniform(1.0, 2.0, 50)
    small = big + rng.uniform(0.1, 1.0, 50)
    decay = 0.8

    def step(state, xs):
        state = ns.gns_update(state, xs[0], xs[1], 2, 8, decay)
        return state, ns.b_simple(state)

    state, ratios = jax.jit(lambda xs: jax.lax.scan(step, ns.gns_init(), xs))(jnp.stack([small, big], 1))
    g2, trace = ns.two_batch_estimates(small, big, 2, 8)
    weights = decay ** np.arange(49, -1, -1)
    assert float(ratios[-1]) == pytest.approx((weights @ trace) / (weights @ g2), rel=1e-5)
    assert float(ratios[-1]) != pytest.approx((weights @ (trace / g2)) / weights.sum(), rel=1e-3)
    corrected = np.asarray(ns.gns_estimates(state))
    assert corrected == pytest.approx([weights @ g2 / weights.sum(), weights @ trace / weights.sum()], rel=1e-5)


# --- `cbs gns` end to end on the linear_regression workload ------------------------------
def _cbs_gns(capsys, *args):
    from harness.cli import main

    code = main(
        [
            "gns",
            "--workload",
            "linear_regression",
            "--batch-size",
            "64",
            "--microbatches",
            "4",
            "--eval-every",
            "5",
            "--json",
            *args,
        ]
    )
    assert code == 0
    return json.loads(capsys.readouterr().out)


def _exact_signals_and_noises(w):
    """(|G|^2, tr Sigma, G'HG, tr(H Sigma)) of the workload's training set (the
    distribution the offline samples are drawn from, with replacement) at
    weights w, from all per-example gradients g_i = x_i (x_i . w - y_i)."""
    from harness.engine.workloads import get_workload

    data = get_workload("linear_regression").load_data()
    x, y = data.train_x.astype(np.float64), data.train_y.astype(np.float64)
    g = x * (x @ w - y)[:, None]
    mean = g.mean(0)
    sigma = g.T @ g / len(g) - np.outer(mean, mean)
    h = x.T @ x / len(x)
    return mean @ mean, np.trace(sigma), mean @ h @ mean, np.trace(h @ sigma)


def _exact_noise_scales(w):
    """Exact B_simple and B_noise at weights w (see _exact_signals_and_noises)."""
    g2, trace, ghg, htrace = _exact_signals_and_noises(w)
    return trace / g2, htrace / ghg


def test_cbs_gns_offline_estimates_match_the_exact_values_at_the_final_weights(capsys, tmp_path):
    from analysis.noise_calibration import load_calibration
    from harness.engine import checkpoint
    from harness.engine.step import Engine
    from harness.engine.trial import TrialConfig
    from harness.engine.workloads import get_workload

    out = _cbs_gns(
        capsys,
        "--learning-rate",
        "0.02",
        "--max-steps",
        "20",
        "--num-samples",
        "1024",
        "--window",
        "1",
        "--checkpoint-dir",
        str(tmp_path),
    )
    config = TrialConfig(workload="linear_regression", batch_size=64, learning_rate=0.02, microbatches=4, gns=True)
    workload = get_workload("linear_regression")
    engine = Engine(workload, workload.load_data(), config)
    state, meta = checkpoint.restore(tmp_path, engine.trial(engine.init(), 0))
    final = out["offline"]["points"][-1]
    assert meta["rows"][-1]["step"] == final["step"] == 20
    assert out["offline"]["window"]["first"] == out["offline"]["window"]["last"] == 20
    params, _ = engine.evaluated(state)
    exact = _exact_noise_scales(np.asarray(params["Dense_0"]["kernel"][:, 0], np.float64))
    for name, truth in zip(("b_simple", "b_noise"), exact):
        estimate = final[name]
        assert abs(estimate["value"] - truth) < 3 * estimate["stderr"], (name, estimate, truth)
        assert estimate["stderr"] < 0.1 * truth
    assert out["b_crit_predicted"] == pytest.approx(final["b_noise"]["value"])  # a one-step window
    calibrated = out["b_crit_calibrated"]  # the momentum family's ratio (nesterov, the default optimizer)
    ratio = load_calibration()["momentum"]["b_noise"]["ratio"]
    assert (calibrated["family"], calibrated["basis"]) == ("momentum", "b_noise")
    assert calibrated["value"] == pytest.approx(ratio * final["b_noise"]["value"])
    assert [row["step"] for row in out["online"]] == [5, 10, 15, 20]


def test_cbs_gns_online_estimate_matches_the_exact_value_at_fixed_weights(capsys):
    """With a negligible learning rate the weights stay at their zero
    initialisation, so the moving averages (over ~200 steps) estimate one
    fixed B_simple; seeds 0-5 land within 5% of it."""
    out = _cbs_gns(capsys, "--learning-rate", "1e-9", "--max-steps", "600", "--gns-ema", "0.99", "--num-samples", "0")
    b_simple, _ = _exact_noise_scales(np.zeros(16))
    assert out["offline"] is None and out["b_crit_basis"] == "online b_simple"
    assert out["online"][-1]["b_simple"] == pytest.approx(b_simple, rel=0.1)


def test_cbs_gns_rejects_a_sample_count_before_training(capsys):
    from harness.cli import main

    assert (
        main(
            [
                "gns",
                "--workload",
                "linear_regression",
                "--batch-size",
                "64",
                "--learning-rate",
                "0.1",
                "--num-samples",
                "100",
            ]
        )
        == 2
    )
    assert "num_samples must be a multiple of 16" in capsys.readouterr().err


def test_cbs_gns_on_mnist_matches_b_simple_from_every_per_example_gradient(capsys, tmp_path, data_dir):
    """On real data: the offline B_simple of a trained MLP against the exact
    B_simple of the 55,000-example training set, from all per-example gradients."""
    from harness.cli import main
    from harness.engine import checkpoint
    from harness.engine.step import Engine
    from harness.engine.trial import TrialConfig
    from harness.engine.workloads import get_workload

    args = dict(workload="mnist_fc16x1", batch_size=64, learning_rate=0.05, microbatches=4, max_steps=100)
    assert (
        main(
            [
                "gns",
                "--json",
                "--eval-every",
                "50",
                "--num-samples",
                "512",
                "--window",
                "1",
                "--data-dir",
                str(data_dir),
                "--checkpoint-dir",
                str(tmp_path),
                *(f"--{k.replace('_', '-')}={v}" for k, v in args.items()),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    workload = get_workload(args["workload"])
    data = workload.load_data(data_dir)
    engine = Engine(workload, data, TrialConfig(**args, gns=True))
    state, _ = checkpoint.restore(tmp_path, engine.trial(engine.init(), 0))
    params, model_state = engine.evaluated(state)

    def example_grad(x, y):
        return jax.grad(lambda p: engine.loss(p, model_state, x[None], y[None])[0])(params)

    @jax.jit
    def sums(x, y):
        g = jax.vmap(example_grad)(x, y)
        return jax.tree.map(lambda a: a.sum(0), g), sum(jnp.sum(a**2) for a in jax.tree.leaves(g))

    total, sq = None, 0.0
    for start in range(0, len(data.train_x), 1000):
        s, q = sums(data.train_x[start : start + 1000], data.train_y[start : start + 1000])
        total, sq = s if total is None else jax.tree.map(jnp.add, total, s), sq + float(q)
    n = len(data.train_x)
    g2 = sum(float(jnp.sum((a / n) ** 2)) for a in jax.tree.leaves(total))
    exact = (sq / n - g2) / g2
    estimate = out["offline"]["points"][-1]["b_simple"]
    assert abs(estimate["value"] - exact) < 3 * estimate["stderr"], (estimate, exact)
    assert estimate["stderr"] < 0.3 * exact
    final_b_noise = out["offline"]["points"][-1]["b_noise"]
    assert final_b_noise["value"] > 0 and np.isfinite(final_b_noise["stderr"])


# --- the windowed estimate ------------------------------------------------------------------
def _point(signal, noise, stderr=0.0):
    return ns.NoiseScale(noise / signal, stderr, signal, 0.0, noise, 0.0)


def test_window_is_the_ratio_of_the_means_not_the_mean_of_the_ratios():
    """|G|^2 alternating 1, 3 (momentum's swing) at a steady tr(Sigma) = 100:
    the window's noise scale is 100 / 2 = 50, where the mean of the ratios
    would be 66.7; the bootstrap interval is around 50 and excludes 66.7."""
    window = ns.window_noise_scale([_point(1.0 + 2 * (i % 2), 100.0) for i in range(20)])
    assert window.value == pytest.approx(50.0) and window.signal == pytest.approx(2.0)
    assert window.low <= 50.0 <= window.high < 66.0 and window.block == 3
    assert window.stderr > 0


def test_a_one_step_window_keeps_the_jackknife_error_of_its_step():
    window = ns.window_noise_scale([_point(2.0, 100.0, stderr=5.0)])
    assert window.value == 50.0 and window.stderr == 5.0
    assert (window.low, window.high) == pytest.approx((50.0 - 1.6449 * 5.0, 50.0 + 1.6449 * 5.0), rel=1e-4)


@pytest.mark.parametrize("learning_rate, width", [(0.02, 1.5), (1e-9, 0.3)])
def test_windowed_noise_scale_matches_the_exact_window_on_linear_regression(learning_rate, width):
    """The windowed B_simple and B_noise over steps 13..20 of a linear
    regression trial against mean(tr Sigma) / mean(|G|^2) (and the H-weighted
    pair) of the training set, exact at the weights after each step (replayed
    independently with Engine.advance). At a learning rate of 0.02 the window
    spans a trend (|G|^2 grows 15x) and the interval is wide; at 1e-9 the
    weights stay put and the interval must be narrow."""
    from harness.engine.noise_scale_study import windowed_noise_scale
    from harness.engine.step import Engine
    from harness.engine.trial import TrialConfig
    from harness.engine.workloads import get_workload

    config = TrialConfig(
        workload="linear_regression", batch_size=64, learning_rate=learning_rate, microbatches=4, gns=True, max_steps=20
    )
    out = windowed_noise_scale(config, 13, 20, num_samples=128)
    assert out["window"]["first"] == 13 and out["window"]["last"] == 20
    assert [p["step"] for p in out["points"]] == list(range(13, 21))
    workload = get_workload("linear_regression")
    engine = Engine(workload, workload.load_data(), config)
    state, exact = engine.init(), []
    for step in range(1, 21):
        state, _, _ = engine.advance(state, step - 1, step)
        if step >= 13:
            params, _ = engine.evaluated(engine.trial(state, 0))
            exact.append(_exact_signals_and_noises(np.asarray(params["Dense_0"]["kernel"][:, 0], np.float64)))
    g2, trace, ghg, htrace = np.mean(exact, axis=0)
    for name, truth in (("b_simple", trace / g2), ("b_noise", htrace / ghg)):
        e = out[name]
        assert e["low"] <= truth <= e["high"], (name, e, truth)
        assert e["high"] - e["low"] < width * truth
    assert out[name]["value"] == pytest.approx(
        np.mean([p[name]["noise"] for p in out["points"]]) / np.mean([p[name]["signal"] for p in out["points"]]),
        rel=1e-5,
    )


def test_cbs_gns_rejects_a_window_before_training(capsys):
    from harness.cli import main

    assert (
        main(
            ["gns", "--workload", "linear_regression", "--batch-size", "64", "--learning-rate", "0.1", "--window", "0"]
        )
        == 2
    )
    assert "window must be an integer number of steps >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow  # ~110 s on 2 shared cores: three trials, each with offline estimates at 20 steps
def test_cbs_gns_prediction_does_not_swing_with_the_stopping_step_under_momentum(data_dir):
    """Under Nesterov momentum the one-step offline B_noise of this workload
    spans 23..739 over stopping steps 98..120; the windowed prediction at
    100, 110 and 120 steps lies inside each other's 90% intervals."""
    from harness.engine.noise_scale_study import measure_noise_scale
    from harness.engine.trial import TrialConfig

    results = [
        measure_noise_scale(
            TrialConfig(
                workload="mnist_fc128x1",
                optimizer="nesterov",
                momentum=0.9,
                batch_size=128,
                learning_rate=0.3,
                microbatches=2,
                gns=True,
                stop_at_target=False,
                max_steps=n,
            ),
            data_dir=data_dir,
        )
        for n in (100, 110, 120)
    ]
    for r, n in zip(results, (100, 110, 120)):
        assert r["offline"]["window"]["first"] == n - 19 and r["offline"]["window"]["last"] == n
        assert r["b_crit_basis"] == f"offline b_noise over steps {n - 19}..{n}"
    for a in results:
        for b in results:
            low, high = b["b_crit_interval"]
            assert low <= a["b_crit_predicted"] <= high, (a["b_crit_predicted"], b["b_crit_interval"])
