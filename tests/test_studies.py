"""The study specs of experiments/ (Lin et al. 2020; Goyal et al. 2017; Nado
et al. 2021) run,
reduced to seconds (a tiny MNIST net, a few steps, one learning rate), as the
committed spec files, and count what the papers compare: communication rounds
per algorithm and the scaled learning rates."""

import json
from pathlib import Path

import pytest
from conftest import DATA_DIR as DATA

from analysis import load_sweep
from harness.cli import main
from harness.sweep.run import run_sweep
from harness.sweep.spec import load_spec

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
REDUCED = ["workload=mnist_fc32x1", "eval_every=10", "batch_sizes=[64]"]


@pytest.fixture(scope="module")
def lin(tmp_path_factory):
    root = tmp_path_factory.mktemp("lin")
    for algorithm in ("minibatch", "local_sgd", "post_local_sgd"):
        run_sweep(
            EXPERIMENTS / f"lin2020/lin_cpu_mnist_fc1024_{algorithm}.toml",
            root / algorithm,
            workers=1,
            data_dir=DATA,
            overrides=[
                *REDUCED,
                "max_steps=40",
                "target=0.5",
                "fixed.boundaries=[20, 30]",
                "search.space.learning_rate=[0.05]",
            ],
        )
    return root


def test_lin_study_counts_rounds_as_lin_et_al(lin):
    """40 steps, H = 8, switch at the first boundary (20): mini-batch SGD
    communicates every step, local SGD every 8th, post-local SGD every step
    up to 20 and then every 8th (Lin et al. 2020, Alg. 1 and Sec. 3)."""
    rounds = {}
    for algorithm in ("minibatch", "local_sgd", "post_local_sgd"):
        m = load_sweep(lin / algorithm).measurements
        assert list(m["step"]) == [0, 10, 20, 30, 40]
        rounds[algorithm] = list(m["rounds"])
    assert rounds == {
        "minibatch": [0, 10, 20, 30, 40],
        "local_sgd": [0, 1, 2, 3, 5],
        "post_local_sgd": [0, 10, 20, 21, 23],
    }


def test_lin_study_compares_on_one_rounds_axis(lin, tmp_path):
    assert (
        main(
            [
                "plot",
                *(str(lin / a) for a in ("minibatch", "local_sgd", "post_local_sgd")),
                "--axis",
                "rounds",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "comparison.png").stat().st_size > 10_000


def test_goyal_study_scales_the_learning_rate_and_warms_up():
    """From eta_ref = 0.1 at B = 256 the trials run with 0.1 * f(B / 256) for f
    none, linear, sqrt (Goyal et al. 2017, Sec. 2.1), each with the three
    warmups."""
    for scaling, f in (("none", lambda k: 1.0), ("linear", lambda k: k), ("sqrt", lambda k: k**0.5)):
        trials = load_spec(EXPERIMENTS / f"goyal2017/goyal_cpu_mnist_fc1024_{scaling}.toml", DATA).trials()
        assert sorted((t.config.batch_size, t.config.warmup) for t in trials) == sorted(
            (b, w) for b in (256, 4096) for w in ("none", "constant", "linear")
        )
        for t in trials:
            assert t.config.effective_learning_rate() == pytest.approx(0.1 * f(t.config.batch_size / 256))


@pytest.mark.slow
def test_goyal_study_runs_reduced(tmp_path):
    """Every warmup trains the whole budget: 2560 examples at B = 64 and 256."""
    run_sweep(
        EXPERIMENTS / "goyal2017/goyal_cpu_mnist_fc1024_linear.toml",
        tmp_path,
        workers=1,
        data_dir=DATA,
        overrides=[
            "workload=mnist_fc32x1",
            "batch_sizes=[64, 256]",
            "max_examples=2560",
            "eval_every=5",
            "fixed.warmup_steps=3",
        ],
    )
    trials = load_sweep(tmp_path).trials
    assert sorted(zip(trials["batch_size"], trials["warmup"], trials["steps_run"])) == sorted(
        (b, w, 2560 // b) for b in (64, 256) for w in ("none", "constant", "linear")
    )


def test_final_metric_is_the_best_trials_last_evaluation(lin, capsys):
    """Trials trained to their budget report the final validation error the
    papers compare: per batch size, the best record's last evaluation."""
    assert main(["analyze", str(lin / "local_sgd"), "--json"]) == 0
    final = json.loads(capsys.readouterr().out)["final"]
    records = [json.loads(p.read_text()) for p in (lin / "local_sgd").glob("trials/*/record.json")]
    best = min((r["final"]["val_metric"], r["config"]["batch_size"]) for r in records if r["status"] != "diverged")
    assert [(row["batch_size"], row["step"]) for row in final] == [(best[1], 40)]
    assert final[0]["final_metric"] == pytest.approx(best[0], rel=1e-9)  # JSON keeps 10 digits


NADO = ("nesterov", "adam", "lars", "lamb")


def test_nado_study_gives_every_optimizer_the_same_protocol():
    """Nado et al. 2021: the four optimizers get the same batch sizes, budget,
    schedule and number of trials; only the optimizer and its search differ."""
    specs = {o: load_spec(EXPERIMENTS / f"nado2021/nado_cpu_mnist_fc1024_{o}.toml", DATA) for o in NADO}
    shared = ("batch_sizes", "max_steps", "target", "eval_every", "eval_schedule", "fixed")
    assert all(
        {k: s.normalized[k] for k in shared} == {k: specs["nesterov"].normalized[k] for k in shared}
        for s in specs.values()
    )
    assert {o: len(s.trials()) for o, s in specs.items()} == {o: 24 for o in NADO}
    assert {o: {t.config.optimizer for t in s.trials()} for o, s in specs.items()} == {o: {o} for o in NADO}


@pytest.mark.parametrize("optimizer", ["lars", "lamb"])
def test_nado_study_runs_reduced(optimizer, tmp_path):
    run_sweep(
        EXPERIMENTS / f"nado2021/nado_cpu_mnist_fc1024_{optimizer}.toml",
        tmp_path,
        workers=1,
        data_dir=DATA,
        overrides=[*REDUCED, "max_steps=30", "fixed.warmup_steps=5", "search.trials=2", "target=0.5"],
    )
    trials = load_sweep(tmp_path).trials
    assert len(trials) == 2 and set(trials["optimizer"]) == {optimizer}
    assert (trials["status"] == "complete").sum() == 1  # the layer-wise trust ratio trains: 50% error within 30 steps
