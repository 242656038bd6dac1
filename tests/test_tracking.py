"""Experiment tracking (harness.sweep.tracking) read back from the local
stores: a real 2-trial sweep with --track mlflow (a SQLite store) and
--track wandb (offline files) gives one run per trial with its parameters,
its measurements as metric history and its status; a resumed trial logs each
step once; a missing extra is one line before any training."""

import importlib.util
import json

import pytest
import tomli_w
from conftest import DATA_DIR as DATA

from harness.cli import main
from harness.sweep.run import run_sweep
from harness.sweep.tracking import open_run, run_id, tracking, wandb_history, wandb_records

SPEC = {
    "name": "tracked",
    "workload": "mnist_fc32x1",
    "optimizer": "sgd",
    "batch_sizes": [32],
    "target": 0.15,
    "max_steps": 40,
    "eval_every": 20,
    "prune": False,
    "search": {"kind": "grid", "space": {"learning_rate": [0.5, 0.05]}},
}
METRICS = ("examples", "train_loss", "val_loss", "val_metric")


@pytest.fixture(autouse=True)
def local_stores(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)


def records(folder) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("trials/*/record.json")}


def history(record, key) -> tuple[list, list]:
    """The steps and values of `key` in a record's measurements."""
    rows = [row for row in record["measurements"] if row[key] is not None]
    return [row["step"] for row in rows], [row[key] for row in rows]


def same(steps, values, expected) -> bool:
    return steps == expected[0] and values == pytest.approx(expected[1])


def test_mlflow_has_one_run_per_trial_with_params_metrics_and_status(tmp_path):
    from mlflow.tracking import MlflowClient

    run_sweep(SPEC, tmp_path / "sweep", workers=1, data_dir=DATA, track="mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    expected = records(tmp_path / "sweep")
    assert len(expected) == 2 and set(runs) == set(expected)
    for trial_id, record in expected.items():
        run = runs[trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == record["status"]
        assert run.data.tags["steps_to_target"] == str(record["steps_to_target"]).lower()
        assert float(run.data.params["learning_rate"]) == record["config"]["learning_rate"]
        assert run.data.params["workload"] == "mnist_fc32x1"
        for key in METRICS:
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert same([s for s, _ in logged], [v for _, v in logged], history(record, key)), key


def test_wandb_offline_has_one_run_per_trial_with_config_history_and_status(tmp_path):
    folder = tmp_path / "sweep"
    run_sweep(SPEC, folder, workers=1, data_dir=DATA, track="wandb")
    expected = records(folder)
    assert len(expected) == 2
    assert len(list(folder.glob("wandb/offline-run-*"))) == 2
    for trial_id, record in expected.items():
        rows = wandb_history(folder, run_id("tracked", trial_id))
        for key in METRICS:
            assert same(
                [r["_step"] for r in rows if key in r], [r[key] for r in rows if key in r], history(record, key)
            ), key
        (path,) = folder.glob(f"wandb/offline-run-*-{run_id('tracked', trial_id)}/*.wandb")
        kinds = {}
        for r in wandb_records(path):
            kinds.setdefault(r.WhichOneof("record_type"), []).append(r)
        (run,) = [r.run for r in kinds["run"]]
        assert run.display_name == trial_id and run.run_group == "tracked"
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert config["learning_rate"] == record["config"]["learning_rate"]
        summary = {item.key: json.loads(item.value_json) for r in kinds["summary"] for item in r.summary.update}
        assert summary["status"] == record["status"] and summary["steps_to_target"] == record["steps_to_target"]


@pytest.mark.parametrize("kind", ["mlflow", "wandb"])
def test_a_resumed_trial_logs_each_step_once(tmp_path, kind):
    rows = [{"step": s, "examples": 8 * s, "train_loss": 1.0 / (s + 1), "val_loss": 2.0 / (s + 1)} for s in (0, 5, 10)]
    track = tracking(kind, "resumed", tmp_path)
    with open_run(track, "t1", {"learning_rate": 0.1}) as run:  # interrupted after two evaluations
        for row in rows[:2]:
            run(row)
    flush(kind)
    with open_run(track, "t1", {"learning_rate": 0.1}) as run:  # resumed: the restored rows are replayed
        for row in rows:
            run(row)
        run.finish({"status": "complete", "steps_to_target": 10})
    if kind == "mlflow":
        client = run.client
        assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val_loss")] == [
            (r["step"], r["val_loss"]) for r in rows
        ]
        assert client.get_run(run.run_id).info.status == "FINISHED"
        assert len(client.search_runs([client.get_experiment_by_name("resumed").experiment_id])) == 1
    else:
        flush(kind)
        assert [(r["_step"], r["val_loss"]) for r in wandb_history(tmp_path, run_id("resumed", "t1"))] == [
            (r["step"], r["val_loss"]) for r in rows
        ]


def flush(kind) -> None:
    """W&B writes a finished run's file when its service stops, as at the end
    of the worker process that ran the trial: stop it, as a resume in a new
    process would find it."""
    if kind == "wandb":
        import wandb

        wandb.teardown()


def test_a_missing_extra_is_one_line_before_any_training(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    spec = tmp_path / "spec.toml"
    spec.write_text(tomli_w.dumps(SPEC))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sweep"), "--track", "mlflow"]) == 2
    assert capsys.readouterr().err == 'cbs: error: --track mlflow needs the mlflow extra: pip install -e ".[mlflow]"\n'
    assert not list((tmp_path / "sweep").glob("trials/*/record.json"))
