"""The sweep engine end to end on real MNIST (a tiny FC net, short budgets):
exact pruning, resume after kill -9, several workers on one folder, lease
takeover, corrupt records, extension, Ray."""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR as DATA

from analysis import load_sweep
from analysis.curves import analyze
from analysis.steps import steps_to_result
from harness.sweep.executors import placement, worker_main
from harness.sweep.run import run_sweep
from harness.sweep.spec import load_spec
from harness.sweep.store import Store

SPEC = """
workload = "mnist_fc32x1"
optimizer = "sgd"
batch_sizes = [32, 128]
target = 0.15
max_steps = 160
eval_every = 20
checkpoint_every = 40
prune = {prune}
[search]
kind = "grid"
[search.space]
learning_rate = [0.5, 0.05, 0.003]  # the best first: with one worker, the others are pruned
"""
COMPARED = ("step", "examples", "train_loss", "val_loss", "val_metric")


def analysis_of(folder) -> dict:
    """What `cbs analyze --json` reports of a sweep: the table and the fit."""
    curve = analyze(load_sweep(folder))
    return {"rows": curve.table[["batch_size", "steps", "trial_id"]].to_dict("records"), "fit": curve.fit.to_dict()}


def write_spec(folder: Path, prune=False, text=SPEC, name="spec.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text.format(prune=str(prune).lower()))
    return path


def records(folder) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in Path(folder).glob("trials/*/record.json")}


def outcome_of(record) -> tuple:
    rows = tuple(tuple(row[k] for k in COMPARED) for row in record["measurements"])
    return record["status"], record["steps_to_target"], rows


def wait_for(condition, timeout=180.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    raise TimeoutError("condition not met")


def cbs_sweep(spec, out, *args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "sweep", str(spec), "--out", str(out), "--data-dir", DATA, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep without pruning, run uninterrupted by two local workers."""
    root = tmp_path_factory.mktemp("reference")
    outcome = run_sweep(write_spec(root), root / "sweep", workers=2, data_dir=DATA)
    assert outcome.by_status == {"complete": 4, "incomplete": 2}  # lr 0.003 never gets there: prunable
    return root / "sweep"


def test_pruning_is_exact_and_saves_steps(reference, tmp_path):
    outcome = run_sweep(write_spec(tmp_path, prune=True), tmp_path / "sweep", workers=1, data_dir=DATA)
    full, pruned = load_sweep(reference), load_sweep(tmp_path / "sweep")
    target = full.spec["target"]
    curve = {
        name: steps_to_result(t.trials, t.measurements, target)[["batch_size", "steps"]]
        for name, t in (("full", full), ("pruned", pruned))
    }
    assert curve["full"].equals(curve["pruned"]) and len(curve["full"]) == 2
    assert analysis_of(tmp_path / "sweep") == analysis_of(reference)  # pruning changes no reported number
    assert outcome.by_status.get("pruned", 0) >= 2
    full_steps = full.trials.set_index("trial_id")["steps_run"]
    assert outcome.steps_run < full_steps.sum()
    assert outcome.steps_saved_at_most == sum(
        r["config"]["max_steps"] - r["steps_run"]
        for r in records(tmp_path / "sweep").values()
        if r["status"] == "pruned"
    )
    best = dict(curve["full"].values)
    for trial_id, record in records(tmp_path / "sweep").items():
        if record["status"] == "pruned":  # it stopped at a step >= the best, and could not have beaten it
            b = record["config"]["batch_size"]
            assert record["steps_run"] >= best[b]
            assert (
                full.trials.set_index("trial_id").loc[trial_id, "steps_to_target"] >= best[b]
                or full.trials.set_index("trial_id").loc[trial_id, "status"] != "complete"
            )
        else:
            assert outcome_of(record) == outcome_of(records(reference)[trial_id])


@pytest.mark.parametrize("prune", [False, pytest.param(True, marks=pytest.mark.slow)])  # pruned packs: test_packing
def test_packed_trials_give_the_records_and_the_analysis_of_trials_run_alone(reference, tmp_path, prune):
    """pack = 3: one worker runs the three learning rates of a batch size as one program."""
    spec = write_spec(tmp_path, prune=prune, text=SPEC.replace("prune = {prune}", "prune = {prune}\npack = 3"))
    run_sweep(spec, tmp_path / "sweep", workers=1, data_dir=DATA)
    assert analysis_of(tmp_path / "sweep") == analysis_of(reference)
    alone = records(reference)
    for trial_id, record in records(tmp_path / "sweep").items():
        if record["status"] == "pruned":
            continue
        status, steps, rows = outcome_of(record)
        assert (status, steps) == outcome_of(alone[trial_id])[:2]
        np.testing.assert_allclose(
            np.array(rows, float), np.array(outcome_of(alone[trial_id])[2], float), rtol=2e-5, atol=1e-6
        )
    if not prune:
        assert records(tmp_path / "sweep").keys() == alone.keys()
        assert {r["run"]["pack"] for r in records(tmp_path / "sweep").values()} == {3}
        assert {r["run"]["pack"] for r in alone.values()} == {1}


def test_kill_9_at_any_moment_then_resume_equals_uninterrupted(reference, tmp_path):
    spec, out = write_spec(tmp_path), tmp_path / "sweep"

    def unfinished_checkpoint():
        return any(
            p.name.isdigit() and not (p.parent.parent / "record.json").exists()
            for p in out.glob("trials/*/checkpoints/*")
        )

    moments = {
        "during startup": lambda: True,
        "after a checkpoint": unfinished_checkpoint,
        "after a record": lambda: any(out.glob("trials/*/record.json")),
    }
    for moment, condition in moments.items():
        for _ in range(5):  # the trials are short: retry until the kill lands on what the moment names
            proc = cbs_sweep(spec, out, "--workers", "2", start_new_session=True)
            wait_for(lambda: condition() or proc.poll() is not None)  # noqa: B023 (called at once)
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers die at once, as with a power cut
            proc.wait()
            assert proc.returncode == -signal.SIGKILL, (moment, proc.stderr.read())
            if condition():
                break
        assert condition(), moment
    assert len(records(out)) < 6
    proc = cbs_sweep(spec, out, "--workers", "2")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "steps to result (error_rate < 0.15, mnist_fc32x1, sgd; 6 trials):" in stdout
    done, expected = records(out), records(reference)
    assert done.keys() == expected.keys()
    for trial_id in expected:
        assert outcome_of(done[trial_id]) == outcome_of(expected[trial_id]), trial_id
    attempts = [Store(out).attempts(t) for t in done]
    assert any(a["checkpoint_step"] for history in attempts for a in history[1:])  # resumed mid-trial
    assert not list(out.glob("trials/*/checkpoints"))
    assert analysis_of(out) == analysis_of(reference)


@pytest.mark.slow  # ~29 s; the stalled-worker test covers shared leases by default
def test_three_workers_share_one_folder_and_run_each_trial_once(reference, tmp_path):
    spec, out = write_spec(tmp_path), tmp_path / "sweep"
    procs = [cbs_sweep(spec, out, "--workers", "1") for _ in range(3)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    store = Store(out)
    ids = [t.id for t in load_spec(spec, DATA).trials()]
    histories = {t: store.attempts(t) for t in ids}
    assert all(len(h) == 1 for h in histories.values()), histories
    assert len({h[0]["worker"] for h in histories.values()}) >= 2  # the work was split
    done = records(out)
    assert all(outcome_of(done[t]) == outcome_of(records(reference)[t]) for t in ids)


def test_a_stalled_workers_trial_is_taken_over(reference, tmp_path):
    spec_path = write_spec(tmp_path)
    out = tmp_path / "sweep"
    spec = load_spec(spec_path, DATA)
    Store(out).open(spec, spec_path.read_text())
    trial = next(t for t in spec.trials() if t.config.learning_rate == 0.003)  # runs its whole budget
    context = multiprocessing.get_context("spawn")
    kwargs = dict(folder=str(out), trials=[trial], prune=None, data_dir=DATA, lease_s=2.0)
    _, errors = context.Pipe(duplex=False)  # as a local worker runs
    args = (placement("cpu", sorted(os.sched_getaffinity(0))[:1], 0, 1, out), os.getpid(), kwargs, errors)
    first = context.Process(target=worker_main, args=args)
    first.start()
    checkpoints = Store(out).checkpoint_dir(trial.id)
    wait_for(lambda: checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()), timeout=120)
    os.kill(first.pid, signal.SIGSTOP)  # alive but silent: its lease runs out
    try:
        second = context.Process(target=worker_main, args=args)
        second.start()
        second.join(120)
        assert second.exitcode == 0
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.join(60)
    assert first.exitcode == 0  # it learnt that it lost the lease and stopped
    history = Store(out).attempts(trial.id)
    assert len(history) == 2 and history[0]["worker"] != history[1]["worker"]
    assert history[1]["checkpoint_step"] >= 40  # the taker resumed from the stalled worker's checkpoint
    assert (out / "trials" / trial.id / "claim.1").exists()
    assert outcome_of(records(out)[trial.id]) == outcome_of(records(reference)[trial.id])


def test_rerun_reruns_corrupt_records_and_extends_with_new_batch_sizes(reference, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(reference, out)
    victim = sorted(records(out))[1]
    path = out / "trials" / victim / "record.json"
    path.write_text(path.read_text()[:1000])
    spec = write_spec(tmp_path, text=SPEC.replace("[32, 128]", "[32, 64, 128]"))
    proc = cbs_sweep(spec, out, "--workers", "2")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"cbs: warning: corrupt trial record, the trial will run again: {path}" in stderr
    assert "extended the sweep: batch_sizes" in stdout
    assert "[9/9] " in stderr and "ETA done" in stderr  # plain progress lines when not on a terminal
    store, expected, done = Store(out), records(reference), records(out)
    assert len(done) == 9 and outcome_of(done[victim]) == outcome_of(expected[victim])
    for trial_id in expected:  # finished trials were not rerun
        assert len(store.attempts(trial_id)) == (2 if trial_id == victim else 1)
    assert {r["config"]["batch_size"] for r in done.values()} == {32, 64, 128}


def test_bad_spec_fails_before_training_with_one_line(tmp_path):
    spec = write_spec(tmp_path, text=SPEC.replace("[32, 128]", "[0, 128]"))
    proc = cbs_sweep(spec, tmp_path / "sweep")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert stderr.strip().splitlines()[-1] == (
        f"cbs: error: {spec}: batch_sizes: 0 is not a positive integer; allowed: integers >= 1"
    )
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow  # ~17 s: starts a local Ray instance (the optional `ray` extra)
def test_ray_executor_on_a_local_instance(reference, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = write_spec(tmp_path, text=SPEC.replace("[32, 128]", "[128]"))
        outcome = run_sweep(spec, tmp_path / "sweep", executor="ray", data_dir=DATA)
    finally:
        ray.shutdown()
    assert outcome.trials == 3 and sum(outcome.by_status.values()) == 3
    done, expected = records(tmp_path / "sweep"), records(reference)
    for trial_id, record in done.items():
        assert outcome_of(record) == outcome_of(expected[trial_id])
    assert all(len(Store(tmp_path / "sweep").attempts(t)) == 1 for t in done)


def test_missing_ray_is_a_user_error(tmp_path):
    spec = write_spec(tmp_path)
    code = (
        "import sys; sys.modules['ray'] = None; from harness.cli import main; "
        f"sys.exit(main(['sweep', {str(spec)!r}, '--out', {str(tmp_path / 'sweep')!r}, '--executor', 'ray', "
        f"'--data-dir', {DATA!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "cbs: error: --executor ray needs Ray; allowed: pip install 'critical-batch-size[ray]', or --executor local"
    )


def test_a_spec_dict_and_set_overrides_are_recorded_and_extend_or_are_refused(tmp_path, capsys):
    """run_sweep from a dict; `cbs sweep --set` adds a seed (an extension, stored in
    spec.toml) and a changed target is refused before any training."""
    import tomllib

    from harness.cli import main

    raw = {
        "workload": "mnist_fc32x1",
        "optimizer": "sgd",
        "batch_sizes": [128],
        "target": 0.5,
        "max_steps": 20,
        "eval_every": 10,
        "fixed": {"learning_rate": 0.5},
    }
    out = tmp_path / "sweep"
    outcome = run_sweep(raw, out, workers=1, data_dir=DATA)
    assert outcome.trials == 1 and tomllib.loads((out / "spec.toml").read_text()) == raw
    spec = write_spec(tmp_path, text=(out / "spec.toml").read_text())
    assert (
        main(["sweep", str(spec), "--out", str(out), "--data-dir", DATA, "--set", "seeds=[0, 1]", "--workers", "1"])
        == 0
    )
    assert "extended the sweep: seeds" in capsys.readouterr().out
    assert tomllib.loads((out / "spec.toml").read_text()) == {**raw, "seeds": [0, 1]}
    assert sorted(r["config"]["seed"] for r in records(out).values()) == [0, 1]
    assert (
        main(
            ["sweep", str(spec), "--out", str(out), "--data-dir", DATA, "--set", "seeds=[0, 1]", "--set", "target=0.4"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"cbs: error: {spec}: the spec differs from the sweep in {out}: target (0.5 -> 0.4)")
    assert len(records(out)) == 2
