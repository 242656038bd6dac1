"""The training engine on real MNIST and on problems with a hand computation."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from harness.cli import main
from harness.engine import optimizers, trial
from harness.engine.evaluation import evaluation_steps
from harness.engine.loop import Hooks, run_trial
from harness.engine.trial import TrialConfig

ROOT = Path(__file__).resolve().parents[1]
FC = dict(workload="mnist_fc1024", optimizer="nesterov", learning_rate=0.05, momentum=0.9)


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def test_fc1024_reaches_5_percent_on_real_mnist(data_dir):
    record = run_trial(
        TrialConfig(batch_size=128, max_steps=1500, eval_every=100, target=0.05, **FC), data_dir=data_dir
    )
    assert record.status == "complete"
    assert record.final["val_metric"] < 0.05
    # Steps-to-target is the first evaluation strictly below the target.
    earlier = [r["val_metric"] for r in record.measurements[:-1]]
    assert all(m >= 0.05 for m in earlier) and record.steps_to_target == record.measurements[-1]["step"]


def test_same_seed_same_measurements_other_seed_differs(data_dir):
    config = TrialConfig(batch_size=64, max_steps=60, eval_every=20, stop_at_target=False, **FC)
    a, b = (run_trial(config, data_dir=data_dir) for _ in range(2))
    c = run_trial(TrialConfig(**{**config.to_dict(), "seed": 1}), data_dir=data_dir)
    assert _without_time(a.measurements) == _without_time(b.measurements)
    assert _without_time(a.measurements) != _without_time(c.measurements)


def test_microbatches_equal_one_big_batch(data_dir):
    base = dict(batch_size=256, max_steps=40, eval_every=20, stop_at_target=False, **FC)
    one, four = (run_trial(TrialConfig(microbatches=k, **base), data_dir=data_dir) for k in (1, 4))
    for r1, r4 in zip(one.measurements[1:], four.measurements[1:]):
        assert r4["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-4)
        assert r4["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)


def test_huge_learning_rate_diverges_without_crashing(data_dir):
    record = run_trial(
        TrialConfig(
            batch_size=64, learning_rate=1e4, max_steps=500, eval_every=50, workload="mnist_fc1024", optimizer="sgd"
        ),
        data_dir=data_dir,
    )
    assert record.status == "diverged" and record.steps_to_target is None
    assert record.steps_run == 50


def test_budget_spent_is_incomplete():
    record = run_trial(
        TrialConfig(
            workload="linear_regression", batch_size=8, learning_rate=1e-4, optimizer="sgd", max_steps=30, eval_every=10
        )
    )
    assert record.status == "incomplete" and record.steps_run == 30


def test_pruning_stops_at_the_best_known_steps():
    record = run_trial(
        TrialConfig(
            workload="linear_regression",
            batch_size=8,
            learning_rate=1e-4,
            optimizer="sgd",
            max_steps=100,
            eval_every=10,
        ),
        Hooks(prune_above=lambda: 40),
    )
    assert record.status == "pruned" and record.steps_run == 40


def test_geometric_evaluation_is_dense_early_then_linear():
    config = TrialConfig(
        workload="linear_regression", batch_size=8, learning_rate=0.1, max_steps=2000, eval_schedule="geometric"
    )
    steps = evaluation_steps(config, every=100)
    assert steps[:4] == [1, 2, 3, 4]
    # Geometric (ratio 2^(1/4)) until the spacing reaches 100 steps, near step 100 / (2^(1/4) - 1) = 526.
    assert all(s % 100 == 0 for s in steps if s > 526) and steps[-3:] == [1800, 1900, 2000]
    assert all(g <= 100 for g in np.diff(steps)) and len(steps) > 40


# --- one step of each optimizer against a hand computation ----------------------
W0 = np.array([1.0, -2.0], np.float32)
A = np.array([3.0, 0.5], np.float32)


def _grad(w):
    """Gradient of the 2-parameter quadratic 1/2 sum a_i w_i^2."""
    return A * w


def _two_steps(name, **kw):
    config = TrialConfig(workload="linear_regression", batch_size=1, learning_rate=0.1, optimizer=name, **kw)
    tx = optimizers.make_optimizer(config)
    w, state = jnp.asarray(W0), tx.init(jnp.asarray(W0))
    for _ in range(2):
        updates, state = tx.update(jnp.asarray(_grad(np.asarray(w))), state, w)
        w = optax.apply_updates(w, updates)
    return np.asarray(w)


def _hand(name, lr=0.1, m=0.9, wd=0.0, b1=0.9, b2=0.999, eps=1e-8, tc=0.001):
    w, v, mu, nu = W0.astype(np.float64), np.zeros(2), np.zeros(2), np.zeros(2)
    for t in (1, 2):
        g = _grad(w) + (wd * w if name in ("sgd", "momentum", "nesterov", "adam") else 0)
        if name == "sgd":
            w = w - lr * g
        elif name in ("momentum", "nesterov"):
            v = g + m * v
            w = w - lr * (g + m * v if name == "nesterov" else v)
        elif name in ("adam", "adamw", "lamb"):
            mu, nu = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g * g
            u = (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps)
            if name == "adamw":
                u = u + wd * w
            if name == "lamb":
                u = u + wd * w
                u = u * np.linalg.norm(w) / np.linalg.norm(u)
            w = w - lr * u
        elif name == "lars":
            u = g + wd * w
            u = u * tc * np.linalg.norm(w) / np.linalg.norm(u)
            v = u + m * v
            w = w - lr * v
    return w


@pytest.mark.parametrize(
    "name,kw",
    [
        ("sgd", {}),
        ("momentum", {}),
        ("nesterov", {}),
        ("adam", {}),
        ("adamw", {"weight_decay": 0.1}),
        ("lars", {"weight_decay": 0.01}),
        ("lamb", {"weight_decay": 0.01}),
        ("sgd", {"weight_decay": 0.1}),
    ],
)
def test_optimizer_step_matches_hand_computation(name, kw):
    np.testing.assert_allclose(
        _two_steps(name, **kw), _hand(name, wd=kw.get("weight_decay", 0.0)), rtol=1e-5, atol=1e-6
    )
    assert set(optimizers._OPTIMIZERS) == set(trial.OPTIMIZERS)


def test_schedules_match_their_formulas():
    c = TrialConfig(
        workload="linear_regression",
        batch_size=64,
        learning_rate=0.2,
        schedule="linear_decay",
        decay_steps=100,
        end_lr_factor=0.01,
        warmup="linear",
        warmup_steps=10,
        warmup_factor=0.0,
        lr_scaling="linear",
        reference_batch_size=32,
    )
    s = optimizers.make_schedule(c)
    eta0 = 0.4  # linear scaling: 0.2 * 64 / 32
    assert float(s(5)) == pytest.approx(eta0 * 0.5)
    # Shallue et al.: eta0 (1 - (1 - alpha) t / T) after the warmup, then alpha eta0.
    assert float(s(10 + 30)) == pytest.approx(eta0 * (1 - 0.99 * 30 / 100))
    assert float(s(10 + 500)) == pytest.approx(0.01 * eta0)
    step = optimizers.make_schedule(
        TrialConfig(
            workload="x", batch_size=1, learning_rate=1.0, schedule="step", boundaries=(10, 20), decay_factor=0.1
        )
    )
    assert [float(step(t)) for t in (9, 10, 19, 20)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    sqrt = TrialConfig(workload="x", batch_size=128, learning_rate=1.0, lr_scaling="sqrt", reference_batch_size=32)
    assert sqrt.effective_learning_rate() == pytest.approx(2.0)


# --- data parallel ----------------------------------------------------------------
_DP_SCRIPT = """
import json, sys
from harness.engine.loop import run_trial
from harness.engine.trial import TrialConfig
import jax
r = run_trial(TrialConfig(workload="mnist_fc128x1", batch_size=64, learning_rate=0.05, max_steps=30,
                          eval_every=10, stop_at_target=False, microbatches=int(sys.argv[2]), gns=True),
              data_dir=sys.argv[1])
print(json.dumps({"devices": jax.device_count(), "rows": r.measurements}))
"""


def _run_on(devices, data_dir, microbatches=2):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = subprocess.run(
        [sys.executable, "-c", _DP_SCRIPT, str(data_dir), str(microbatches)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_equal_one_device(data_dir):
    one, eight = _run_on(1, data_dir), _run_on(8, data_dir)
    assert (one["devices"], eight["devices"]) == (1, 8)
    for r1, r8 in zip(one["rows"][1:], eight["rows"][1:]):
        for key in ("train_loss", "val_loss", "val_metric", "gns_g2", "gns_trace"):
            assert r8[key] == pytest.approx(r1[key], rel=1e-3, abs=1e-6), key


@pytest.mark.slow  # ~12 s: trials on 8 and 1 host devices; test_eight_devices_equal_one_device stays
def test_per_device_noise_scale_equals_the_micro_batch_split(data_dir):
    """On 8 devices without micro-batches, the two-batch estimate compares
    per-device and all-reduced gradients; it must equal the estimate from 8
    micro-batches (the same partition of the batch) on one device."""
    per_device, micro = _run_on(8, data_dir, microbatches=1), _run_on(1, data_dir, microbatches=8)
    for rd, rm in zip(per_device["rows"][1:], micro["rows"][1:]):
        for key in ("val_loss", "gns_g2", "gns_trace", "gns_b_simple"):
            assert rd[key] == pytest.approx(rm[key], rel=2e-3), key


def test_noise_scale_needs_two_estimates(capsys, data_dir):
    assert (
        main(["train", "--workload", "linear_regression", "--batch-size", "8", "--learning-rate", "0.1", "--gns"]) == 2
    )
    assert "gns needs two gradient estimates at the same parameters: microbatches >= 2" in capsys.readouterr().err


# --- checkpoint and resume ----------------------------------------------------------
def _train_cmd(data_dir, ckpt, out):
    return [
        sys.executable,
        "-m",
        "harness.cli",
        "train",
        "--workload",
        "mnist_fc1024",
        "--batch-size",
        "32",
        "--learning-rate",
        "0.02",
        "--max-steps",
        "1000",
        "--eval-every",
        "50",
        "--checkpoint-every",
        "250",
        "--no-stop-at-target",
        "--data-dir",
        str(data_dir),
        "--checkpoint-dir",
        str(ckpt),
        "--out",
        str(out),
    ]


def _saved_steps(folder):
    return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit())


@pytest.mark.slow  # ~35 s; the sweep-level kill -9 test covers resume by default
def test_kill_and_resume_gives_identical_measurements(data_dir, tmp_path):
    import json

    killed = subprocess.Popen(_train_cmd(data_dir, tmp_path / "ckpt", tmp_path / "a"))
    deadline = time.time() + 120
    while time.time() < deadline and not _saved_steps(tmp_path / "ckpt"):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    saved = _saved_steps(tmp_path / "ckpt")
    assert saved and saved[-1] < 1000, "the kill should land mid-trial"
    subprocess.run(_train_cmd(data_dir, tmp_path / "ckpt", tmp_path / "a"), check=True)
    subprocess.run(_train_cmd(data_dir, tmp_path / "fresh", tmp_path / "b"), check=True)
    resumed, fresh = (json.loads((tmp_path / d / "record.json").read_text()) for d in "ab")
    assert _without_time(resumed["measurements"]) == _without_time(fresh["measurements"])


# --- bad input: one line naming the problem and the allowed values ---------------------
@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["--workload", "mnist_cnn"],
            "unknown workload 'mnist_cnn'; did you mean mnist_simple_cnn? allowed: mnist_simple_cnn",
        ),
        (["--batch-size", "60000"], "batch_size 60000 is above the training set size 55000; allowed: 1 .. 55000"),
        (["--learning-rate", "0"], "learning_rate must be > 0"),
        (["--momentum", "1.0"], "momentum must be in [0, 1)"),
        (["--optimizer", "adagrad"], "unknown optimizer 'adagrad'; allowed: sgd, momentum, nesterov, adam"),
        (["--schedule", "exp"], "unknown schedule 'exp'; allowed: constant, linear_decay, cosine, step"),
        (["--target", "0"], "target 0.0 can never be reached: error_rate must get strictly below it"),
        (
            ["--target", "5"],
            "target 5.0 is outside the range of error_rate (0 to 1): every error_rate is below it; allowed: (0.0, 1.0]",
        ),
        (["--batch-size", "100", "--microbatches", "3"], "microbatches must divide batch_size 100"),
    ],
)
def test_bad_input_is_one_clear_line(args, expected, capsys, data_dir):
    base = {"--workload": "mnist_fc1024", "--batch-size": "64", "--learning-rate": "0.1"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["train", "--data-dir", str(data_dir)] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_batch_not_divisible_by_devices_is_reported(data_dir):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "train",
            "--workload",
            "mnist_fc1024",
            "--batch-size",
            "12",
            "--learning-rate",
            "0.1",
            "--data-dir",
            str(data_dir),
        ],
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "cbs: error: batch_size 12 / microbatches 1 = 12 is not divisible by the device "
        "count 8; allowed: multiples of 8"
    )


def test_users_own_workload_from_a_file(data_dir, capsys):
    import json

    argv = [
        "train",
        "--workload",
        f"{ROOT}/experiments/custom_workload.py:workload",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.05",
        "--max-steps",
        "400",
        "--data-dir",
        str(data_dir),
        "--json",
    ]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "complete" and record["final"]["val_metric"] < 0.2
    assert (
        main(
            [
                "train",
                "--workload",
                f"{ROOT}/experiments/custom_workload.py:nope",
                "--batch-size",
                "8",
                "--learning-rate",
                "0.1",
            ]
        )
        == 2
    )
    assert "has no Workload named 'nope'; Workloads there: workload" in capsys.readouterr().err


@pytest.mark.slow  # ~21 s: two jax.distributed processes
def test_two_processes_equal_one_process_with_two_devices(data_dir, tmp_path):
    """Multi-host as far as one machine allows: two processes joined by
    jax.distributed (gloo collectives on CPU) train like one process with two
    devices."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = [
        sys.executable,
        "-m",
        "harness.cli",
        "train",
        "--workload",
        "mnist_fc128x1",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.05",
        "--max-steps",
        "30",
        "--eval-every",
        "10",
        "--no-stop-at-target",
        "--data-dir",
        str(data_dir),
    ]
    env1 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [
        subprocess.Popen(
            base
            + [
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--out",
                str(tmp_path / f"p{i}"),
            ],
            env=env1,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    env2 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    subprocess.run(base + ["--out", str(tmp_path / "single")], env=env2, check=True, capture_output=True)
    multi, single = (json.loads((tmp_path / d / "record.json").read_text())["measurements"] for d in ("p0", "single"))
    assert not (tmp_path / "p1").exists(), "only process 0 writes"
    for m, s in zip(multi, single):
        assert m["val_loss"] == pytest.approx(s["val_loss"], rel=1e-5)


@pytest.mark.slow  # ~49 s: trains the Simple CNN with batch norm
def test_batch_norm_model_trains_with_per_micro_batch_statistics(data_dir, monkeypatch):
    """ResNet-8's batch norm (its running statistics are model state) on real
    MNIST: it learns, and with micro-batches the update differs from one big
    batch only through the per-micro-batch statistics."""
    import dataclasses

    from harness.engine.workloads import WORKLOADS

    resnet = dataclasses.replace(
        WORKLOADS["cifar10_resnet8"], name="mnist_resnet8", load_data=WORKLOADS["mnist_fc1024"].load_data
    )
    monkeypatch.setitem(WORKLOADS, "mnist_resnet8", resnet)
    base = dict(
        workload="mnist_resnet8",
        batch_size=32,
        learning_rate=0.05,
        optimizer="nesterov",
        max_steps=40,
        eval_every=40,
        stop_at_target=False,
    )
    one, two = (run_trial(TrialConfig(microbatches=k, **base), data_dir=data_dir) for k in (1, 2))
    # From chance (90% error) to well below it in 40 steps, with either statistics.
    assert one.measurements[0]["val_metric"] > 0.8 and one.final["val_metric"] < 0.6
    assert two.final["val_metric"] < 0.6 and one.final["val_loss"] != two.final["val_loss"]
