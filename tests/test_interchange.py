"""Live per-trial logs (measurements.csv, TensorBoard), the batch_science
export and import, and run metadata, on a small real MNIST sweep."""

import json
import shutil
import subprocess

import jax
import pandas as pd
import pytest
from conftest import DATA_DIR as DATA
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from analysis import load_sweep
from analysis.curves import analyze
from analysis.report import render_report
from analysis.steps import steps_to_result
from harness.cli import main
from harness.engine.loop import TrialRun, run_trial
from harness.engine.trial import TrialConfig
from harness.sweep.run import run_sweep
from harness.sweep.trial_log import TrialLog

SPEC = """
workload = "mnist_fc32x1"
optimizer = "sgd"
batch_sizes = [32, 128]
target = 0.15
max_steps = 160
eval_every = 20
checkpoint_every = 40
[search]
kind = "grid"
[search.space]
learning_rate = [0.5, 0.05, 0.003]
"""
ROW_KEYS = ["step", "examples", "train_loss", "val_loss", "val_metric", "wall_time"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A pruned sweep (one worker: the best learning rate first, the others pruned)."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "spec.toml").write_text(SPEC)
    outcome = run_sweep(root / "spec.toml", root / "sweep", workers=1, data_dir=DATA)
    assert outcome.by_status["pruned"] > 0
    return root / "sweep"


def records(folder):
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("trials/*/record.json")}


def test_measurements_csv_equals_the_record(sweep):
    for trial_id, record in records(sweep).items():
        log = pd.read_csv(sweep / "trials" / trial_id / "measurements.csv")
        expected = pd.DataFrame(record["measurements"])[ROW_KEYS]
        pd.testing.assert_frame_equal(log[ROW_KEYS], expected, check_dtype=False)


class Crash(Exception):
    pass


def test_the_log_is_live_and_a_resumed_trial_repeats_no_row(tmp_path):
    config = TrialConfig(
        workload="mnist_fc32x1",
        batch_size=64,
        learning_rate=0.1,
        optimizer="sgd",
        max_steps=100,
        eval_every=20,
        checkpoint_every=40,
        target=0.01,
    )
    path = tmp_path / "measurements.csv"

    def crash_at_60(log):
        def on_eval(row):
            log(row)
            if row["step"] == 60:
                raise Crash

        return on_eval

    with TrialLog(config.to_dict(), path) as log, pytest.raises(Crash):
        run_trial(TrialRun(config, str(tmp_path / "ckpt"), on_eval=crash_at_60(log)), data_dir=DATA)
    assert list(pd.read_csv(path)["step"]) == [0, 20, 40, 60]  # on disk as it happened
    with TrialLog(config.to_dict(), path) as log:  # resumes from the checkpoint at step 40
        record = run_trial(TrialRun(config, str(tmp_path / "ckpt"), on_eval=log), data_dir=DATA)
    log = pd.read_csv(path)
    assert list(log["step"]) == [0, 20, 40, 60, 80, 100]
    pd.testing.assert_frame_equal(log[ROW_KEYS], pd.DataFrame(record.measurements)[ROW_KEYS], check_dtype=False)


def test_tensorboard_runs_read_back(sweep):
    for trial_id, record in records(sweep).items():
        acc = event_accumulator.EventAccumulator(str(sweep / "tensorboard" / trial_id))
        acc.Reload()
        events = acc.Scalars("val/metric")
        assert [e.step for e in events] == [r["step"] for r in record["measurements"]]
        assert [e.value for e in events] == pytest.approx([r["val_metric"] for r in record["measurements"]], rel=1e-6)
        assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in record["measurements"][1:]]
        start = plugin_data_pb2.HParamsPluginData.FromString(
            acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["learning_rate"].number_value == record["config"]["learning_rate"]
        assert start.hparams["batch_size"].number_value == record["config"]["batch_size"]


def test_batch_science_round_trip(sweep, tmp_path):
    assert main(["export", str(sweep), "--format", "batch_science", "--out", str(tmp_path / "bs")]) == 0
    workload = tmp_path / "bs" / "mnist" / "fc32x1" / "sgd"
    study = json.loads((workload / "32" / "study.json").read_text())
    assert (study["batch_size"], study["optimizer"], study["early_stopping"]) == (32, "sgd", True)
    assert study["parameter_configs"] == {"learning_rate": {"type": "DISCRETE", "feasible_points": [0.5, 0.05, 0.003]}}
    statuses = {
        json.loads(p.read_text())["cbs"]["status"]: json.loads(p.read_text())["status"]
        for p in workload.glob("*/*/metadata.json")
    }
    assert statuses == {"complete": "COMPLETE", "pruned": "INCOMPLETE"}
    original, back = load_sweep(sweep), load_sweep(tmp_path / "bs")
    pd.testing.assert_frame_equal(back.trials, original.trials)
    pd.testing.assert_frame_equal(back.measurements, original.measurements)
    pd.testing.assert_frame_equal(analyze(back).table, analyze(original).table)


def test_their_data_without_our_keys(sweep, tmp_path, capsys):
    """Released data has no `cbs` keys: COMPLETE trials count, the target is given."""
    shutil.copytree(sweep, tmp_path / "copy")
    main(["export", str(tmp_path / "copy"), "--out", str(tmp_path / "bs")])
    for path in (tmp_path / "bs").glob("**/*.json"):
        meta = json.loads(path.read_text())
        meta.pop("cbs")
        path.write_text(json.dumps(meta))
    theirs = load_sweep(tmp_path / "bs")
    assert theirs.spec["metric"] == "error_rate" and theirs.spec["workload"] == "mnist/fc32x1"
    assert main(["analyze", str(tmp_path / "bs")]) == 2
    assert "give --target" in capsys.readouterr().err
    ours = load_sweep(sweep)
    expected = steps_to_result(ours.trials, ours.measurements, 0.15)
    got = analyze(theirs, 0.15).table
    assert list(got["batch_size"]) == list(expected["batch_size"])
    assert list(got["steps"]) == list(expected["steps"])


def test_run_metadata_in_records_folder_and_report(sweep):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for record in records(sweep).values():
        run = record["run"]
        assert run["packages"]["jax"] == jax.__version__
        assert run["device_count"] == jax.device_count() and run["device_kind"] == jax.devices()[0].device_kind
        assert run["git_commit"] == head and run["host"]
    tables = load_sweep(sweep)
    assert tables.metadata["git_commit"] == head and set(tables.runs["trial_id"]) == set(records(sweep))
    page = render_report(tables)
    assert 'id="run-records"' in page and 'id="run-folder"' in page and head in page


def test_cbs_train_prints_each_evaluation(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--workload",
                "mnist_fc32x1",
                "--batch-size",
                "64",
                "--learning-rate",
                "0.1",
                "--max-steps",
                "40",
                "--eval-every",
                "20",
                "--target",
                "0.01",
                "--data-dir",
                DATA,
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["0", "20", "40"]
    record = json.loads((tmp_path / "record.json").read_text())
    log = pd.read_csv(tmp_path / "measurements.csv")
    pd.testing.assert_frame_equal(log[ROW_KEYS], pd.DataFrame(record["measurements"])[ROW_KEYS], check_dtype=False)
    assert (
        main(
            [
                "train",
                "--workload",
                "mnist_fc32x1",
                "--batch-size",
                "64",
                "--learning-rate",
                "0.1",
                "--max-steps",
                "20",
                "--eval-every",
                "20",
                "--data-dir",
                DATA,
                "--json",
            ]
        )
        == 0
    )
    assert not any(line.startswith("step ") for line in capsys.readouterr().out.splitlines())
