"""`cbs schedules`: batch-size schedules compared at one example budget
(analysis.schedule_study; Merrill et al. 2025, Table 1), on two small real
arms on MNIST: the per-trial numbers are those of the records, the arm means
and the steps ratio follow from them, and bad input gets one line."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DATA_DIR as DATA

from harness.cli import main
from harness.sweep.run import run_sweep

ARM = """name = "{name}"
workload = "mnist_fc32x1"
optimizer = "momentum"
batch_sizes = [32]
target = 0.6
max_steps = 100
eval_every = 10
seeds = 2
prune = false

[fixed]
learning_rate = 0.05
stop_at_target = false
example_budget = 2400
{extra}
"""


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    for name, extra in [("constant", ""), ("warmup", "batch_schedule = [64]\nbatch_schedule_examples = [640]")]:
        (root / f"{name}.toml").write_text(ARM.format(name=name, extra=extra))
        run_sweep(root / f"{name}.toml", root / name, workers=1, data_dir=DATA)
    return root


def records(folder):
    return [json.loads(p.read_text()) for p in sorted((folder / "trials").glob("*/record.json"))]


def test_the_runs_and_arms_are_the_records_numbers(arms, capsys):
    assert main(["schedules", str(arms / "constant"), str(arms / "warmup"), "--out", str(arms / "out")]) == 0
    assert "steps to target" in capsys.readouterr().out
    runs = pd.read_csv(arms / "out" / "runs.csv")
    expected = []
    for name in ("constant", "warmup"):
        for record in records(arms / name):
            rows = record["measurements"]
            crossing = next(r for r in rows if r["val_metric"] < 0.6)
            expected.append((name, record["config"]["seed"], crossing["step"], crossing["examples"], rows[-1], rows))
    got = runs.sort_values(["arm", "seed"])
    assert list(got["steps_to_target"]) == [e[2] for e in expected]
    assert list(got["examples_to_target"]) == [e[3] for e in expected]
    # at the budget, 2,400 examples: between the evaluations at 2,240 (B = 32) or 1,920 (the warmup's last
    # step at 32, then 20 at 64) and 2,560 examples, linear in the examples
    before = [next(r for r in reversed(e[5]) if r["examples"] <= 2400) for e in expected]
    assert [b["examples"] for b in before] == [2240, 2240, 1920, 1920]
    at_budget = [
        b["val_loss"] + (2400 - b["examples"]) / (2560 - b["examples"]) * (e[4]["val_loss"] - b["val_loss"])
        for b, e in zip(before, expected)
    ]
    assert list(got["val_loss"]) == pytest.approx(at_budget)
    # the budget of 2,400 examples: B = 32 reaches it at step 80 (2,560); the warmup (20 steps at 32, then 64)
    # at step 50 (640 + 30 * 64 = 2,560)
    assert list(got["examples_run"]) == [2560] * 4 and list(got["steps_run"]) == [80, 80, 50, 50]
    assert list(got["batch_sizes"]) == ["32", "32", "32>64", "32>64"]
    arms_table = pd.read_csv(arms / "out" / "arms.csv").set_index("arm")
    means = got.groupby("arm")["steps_to_target"].mean()
    assert arms_table.loc["warmup", "steps_ratio"] == pytest.approx(means["warmup"] / means["constant"])
    assert arms_table.loc["warmup", "val_loss_std"] == pytest.approx(np.std(got["val_loss"][2:], ddof=1))
    assert (arms / "out" / "schedules.png").stat().st_size > 10_000


def test_the_reference_arm_can_be_chosen(arms, tmp_path):
    folders = [str(arms / "constant"), str(arms / "warmup")]
    assert main(["schedules", *folders, "--reference", "warmup", "--out", str(tmp_path)]) == 0
    ratios = pd.read_csv(tmp_path / "arms.csv").set_index("arm")["steps_ratio"]
    means = pd.read_csv(tmp_path / "runs.csv").groupby("arm")["steps_to_target"].mean()
    assert ratios["warmup"] == 1.0 and ratios["constant"] == pytest.approx(means["constant"] / means["warmup"])


def test_steps_to_another_target_are_counted_from_the_measurements(arms, tmp_path):
    """The arms ran to their budget, so a looser or tighter target is exact:
    the first evaluation strictly below it."""
    folders = [str(arms / "constant"), str(arms / "warmup")]
    assert main(["schedules", *folders, "--target", "0.3", "--out", str(tmp_path)]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv").sort_values(["arm", "seed"])
    expected = []
    for name in ("constant", "warmup"):
        for record in records(arms / name):
            crossing = next((r for r in record["measurements"] if r["val_metric"] < 0.3), None)
            expected.append(np.nan if crossing is None else crossing["step"])
    assert list(runs["steps_to_target"]) == pytest.approx(expected, nan_ok=True)
    assert any(np.isfinite(expected))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reference", "large"], "unknown --reference 'large'; allowed: constant, warmup"),
        (["same"], "two folders have the same arm name"),
        (["--target", "1.5"], "target 1.5"),
    ],
)
def test_bad_input_gets_one_line(arms, extra, message, capsys):
    folders = [str(arms / "constant"), str(arms / "warmup")]
    if extra == ["same"]:
        folders, extra = [folders[0], folders[0]], []
    assert main(["schedules", *folders, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbs: error: ") and message in err and len(err.splitlines()) == 1
