"""Local SGD, post-local SGD and Crossbow SMA against mini-batch SGD and
their formulas (Lin et al. 2020, Alg. 1; Koliousis et al. 2019, Alg. 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.cli import main
from harness.engine import algorithms
from harness.engine.loop import run_trial
from harness.engine.step import Engine
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload

BASE = dict(
    workload="mnist_fc128x1",
    batch_size=64,
    learning_rate=0.05,
    optimizer="nesterov",
    max_steps=20,
    eval_every=10,
    stop_at_target=False,
)
MEASURED = ("step", "examples", "train_loss", "val_loss", "val_metric")


def _rows(record):
    return [[r[k] for k in MEASURED] for r in record.measurements]


def _params(config, steps, data_dir):
    workload = get_workload(config.workload)
    engine = Engine(workload, workload.load_data(data_dir), config)
    state, _, _ = engine.advance(engine.init(), 0, steps)
    return engine.trial(state, 0).params


def test_local_sgd_with_one_replica_is_minibatch_sgd_exactly(data_dir):
    sgd = run_trial(TrialConfig(**BASE), data_dir=data_dir)
    local = run_trial(TrialConfig(algorithm="local_sgd", replicas=1, local_steps=4, **BASE), data_dir=data_dir)
    assert _rows(local) == _rows(sgd)
    assert [r["rounds"] for r in local.measurements] == [0, 2, 5]  # one average every 4 steps
    assert [r["rounds"] for r in sgd.measurements] == [0, 10, 20]  # one all-reduce per step


def test_local_sgd_averaging_every_step_is_minibatch_sgd(data_dir):
    """H = 1: averaging w - lr v_j over the replicas, with momentum linear in
    the gradients, is the update of the mean gradient of the global batch."""
    sgd = _params(TrialConfig(**BASE), 20, data_dir)
    local = _params(TrialConfig(algorithm="local_sgd", replicas=2, local_steps=1, **BASE), 20, data_dir)
    assert jax.tree.map(lambda a: a.shape[0], local) == jax.tree.map(lambda a: 2, local)
    jax.tree.map(lambda s, l: np.testing.assert_allclose(l[0], s[0], rtol=1e-4, atol=1e-6), sgd, local)
    jax.tree.map(lambda l: np.testing.assert_array_equal(l[0], l[1]), local)


def test_post_local_sgd_is_minibatch_until_the_switch_then_local(data_dir):
    config = TrialConfig(algorithm="post_local_sgd", replicas=2, local_steps=4, switch_step=10, **BASE)
    post, sgd = run_trial(config, data_dir=data_dir), run_trial(TrialConfig(**BASE), data_dir=data_dir)
    np.testing.assert_allclose(_rows(post)[1], _rows(sgd)[1], rtol=1e-4)
    assert _rows(post)[2] != pytest.approx(_rows(sgd)[2], rel=1e-4)
    # Rounds: one per step up to the switch, then one per H steps.
    assert [r["rounds"] for r in post.measurements] == [0, 10, 13]  # averages at 12, 16, 20
    step_schedule = TrialConfig(
        algorithm="post_local_sgd",
        replicas=2,
        local_steps=4,
        schedule="step",
        boundaries=(30, 60),
        warmup="linear",
        warmup_steps=5,
        **BASE,
    )
    assert algorithms.switch_step(step_schedule) == 35  # the first decay, after the warmup


def test_sma_with_one_learner_and_no_correction_is_sgd(data_dir):
    """alpha = 0 (outside what users may give, so set past validation): the
    learner is plain SGD and z stays the initial model."""
    sgd = dict(BASE, optimizer="sgd")
    plain = _params(TrialConfig(**sgd), 20, data_dir)
    sma = _params(TrialConfig(algorithm="sma", replicas=1, sma_alpha=0.0, **sgd), 20, data_dir)
    jax.tree.map(lambda s, m: np.testing.assert_array_equal(m, s), plain, sma)


def test_sma_step_follows_crossbow_algorithm_1():
    config = TrialConfig(
        workload="x",
        batch_size=2,
        learning_rate=0.1,
        optimizer="sgd",
        algorithm="sma",
        replicas=2,
        sma_alpha=0.25,
        sma_momentum=0.5,
    )
    before = {"w": jnp.array([[1.0], [3.0]])}
    after = {"w": jnp.array([[0.8], [2.5]])}  # w_j - g_j
    center = {"z": {"w": jnp.array([2.0])}, "z_prev": {"w": jnp.array([1.5])}}
    params, new = algorithms.couple(config, before, after, center, jnp.int32(1))
    c = 0.25 * (np.array([1.0, 3.0]) - 2.0)  # c_j = alpha (w_j - z)
    np.testing.assert_allclose(params["w"][:, 0], np.array([0.8, 2.5]) - c)
    np.testing.assert_allclose(new["z"]["w"], [2.0 + c.sum() + 0.5 * (2.0 - 1.5)])
    np.testing.assert_allclose(new["z_prev"]["w"], [2.0])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--algorithm", "easgd"], "unknown algorithm 'easgd'; allowed: minibatch, local_sgd, post_local_sgd, sma"),
        (["--algorithm", "local_sgd", "--replicas", "3"], "replicas must divide batch_size 64"),
        (["--replicas", "2"], "replicas must be 1 with algorithm 'minibatch'"),
        (["--algorithm", "local_sgd", "--local-steps", "0"], "local_steps must be >= 1, got 0"),
        (["--algorithm", "sma", "--optimizer", "sgd", "--sma-alpha", "1.5"], "sma_alpha must be in (0, 1], got 1.5"),
        (
            ["--algorithm", "sma", "--optimizer", "adam"],
            "optimizer 'adam' is not supported by algorithm 'sma'; allowed: sgd",
        ),
        (
            ["--algorithm", "local_sgd", "--optimizer", "lamb"],
            "optimizer 'lamb' is not supported by algorithm 'local_sgd'; allowed: sgd, momentum, nesterov",
        ),
        (["--algorithm", "post_local_sgd", "--replicas", "2"], "algorithm 'post_local_sgd' needs switch_step >= 1"),
        (
            ["--algorithm", "local_sgd", "--replicas", "2", "--gns", "--microbatches", "2"],
            "gns needs algorithm 'minibatch'",
        ),
    ],
)
def test_bad_algorithm_input_is_one_clear_line(args, expected, capsys, data_dir):
    argv = [
        "train",
        "--workload",
        "mnist_fc128x1",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.1",
        "--data-dir",
        str(data_dir),
        *args,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_spec_sets_the_algorithm_and_rejects_bad_replicas_before_training():
    from harness.errors import UserError
    from harness.sweep.spec import parse_spec

    raw = dict(
        workload="mnist_fc128x1",
        batch_sizes=[64, 128],
        max_steps=100,
        fixed=dict(learning_rate=0.1, algorithm="local_sgd", replicas=4, local_steps=8),
    )
    configs = [t.config for t in parse_spec(raw).trials()]
    assert [(c.algorithm, c.replicas, c.local_steps) for c in configs] == [("local_sgd", 4, 8)] * 2
    with pytest.raises(UserError, match=r"fixed.algorithm: unknown value 'easgd'; allowed: minibatch, local_sgd"):
        parse_spec({**raw, "fixed": {**raw["fixed"], "algorithm": "easgd"}})
    with pytest.raises(UserError, match=r"trial b000064-.*: replicas must divide batch_size 64"):
        parse_spec({**raw, "fixed": {**raw["fixed"], "replicas": 48}})
