"""The result store: atomic records, corrupt records, spec changes, claims."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import DATA_DIR as DATA

from analysis import load_sweep
from harness.errors import UserError
from harness.sweep.leases import atomic_write
from harness.sweep.spec import load_spec
from harness.sweep.store import Store, parse_record, spec_differences

SPEC = """
workload = "linear_regression"
optimizer = "sgd"
batch_sizes = [8, 32]
max_steps = 100
target = 0.2
[search]
kind = "grid"
[search.space]
learning_rate = [0.01, 0.1]
"""


def open_store(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    spec = load_spec(path, DATA)
    store = Store(tmp_path / "sweep")
    return store, spec, store.open(spec, path.read_text())


def fake_record(config, steps_to_target=None, status="incomplete"):
    return {
        "config": config.to_dict(),
        "status": status,
        "steps_to_target": steps_to_target,
        "metric": "squared_error",
        "direction": "min",
        "target": 0.2,
        "final": {},
        "steps_run": 10,
        "wall_time": 1.0,
        "measurements": [
            {"step": 0, "examples": 0, "train_loss": None, "val_loss": 1.0, "val_metric": 1.0, "wall_time": 0.0}
        ],
    }


WRITER = """
import json, sys
from pathlib import Path
from harness.sweep.leases import atomic_write
path, i = Path(sys.argv[1]), 0
while True:
    i += 1
    atomic_write(path, json.dumps({"i": i, "payload": "x" * 200_000 * (1 + i % 3)}))
    print(i, flush=True)
"""


def test_atomic_write_survives_kill_9_at_any_moment(tmp_path):
    """A process rewriting a 200-600 kB file in a loop is killed with SIGKILL at
    several moments: the file always parses as one whole version."""
    path = tmp_path / "record.json"
    atomic_write(path, json.dumps({"i": 0, "payload": ""}))
    for delay in (0.3, 0.45, 0.6, 0.75):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline()  # it has written at least once
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = json.loads(path.read_text())
        assert len(content["payload"]) in (200_000, 400_000, 600_000)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "record.json"]
    assert all(name.startswith(".record.json.") and name.endswith(".tmp") for name in leftovers)


def test_corrupt_records_are_reported_set_aside_and_skipped_by_the_loader(tmp_path, capsys):
    store, spec, _ = open_store(tmp_path, SPEC)
    trials = spec.trials()
    good, truncated, garbage, partial = trials[:4]
    store.write_record(good.id, fake_record(good.config, 40, "complete"))
    text = json.dumps(fake_record(truncated.config, 40, "complete"))
    store.trial_dir(truncated.id).mkdir(parents=True)
    store.record_path(truncated.id).write_text(text[: len(text) // 2])
    store.trial_dir(garbage.id).mkdir(parents=True)
    store.record_path(garbage.id).write_bytes(os.urandom(300))
    store.trial_dir(partial.id).mkdir(parents=True)
    store.record_path(partial.id).write_text(json.dumps({"status": "complete"}))

    tables = load_sweep(store.folder)
    err = capsys.readouterr().err.splitlines()  # one `cbs: warning:` line each, no Python warning machinery
    assert len(err) == 3 and all(line.startswith("cbs: warning: skipping a corrupt trial record: ") for line in err)
    assert (
        f"cbs: warning: skipping a corrupt trial record: {store.record_path(partial.id)}: not a trial record "
        "(needs config, status, steps_to_target, measurements, steps_run)"
    ) in err
    assert list(tables.trials["trial_id"]) == [good.id]
    assert tables.trials.loc[0, "steps_to_target"] == 40 and tables.trials.loc[0, "learning_rate"] == 0.01
    assert list(tables.measurements["trial_id"]) == [good.id] and tables.spec["target"] == 0.2

    assert sorted(store.set_aside_corrupt(t.id for t in trials)) == sorted([truncated.id, garbage.id, partial.id])
    err = capsys.readouterr().err
    assert err.count("cbs: warning: corrupt trial record, the trial will run again") == 3
    assert [t.id for t in trials if store.is_done(t.id)] == [good.id]
    assert list(store.trial_dir(garbage.id).glob("record.json.corrupt-*"))


def test_a_changed_spec_is_refused_naming_the_fields(tmp_path):
    open_store(tmp_path, SPEC)
    changed = SPEC.replace("target = 0.2", "target = 0.3").replace("[0.01, 0.1]", "[0.01, 0.2]")
    with pytest.raises(UserError) as e:
        open_store(tmp_path, changed, "changed.toml")
    message = str(e.value)
    assert "the spec differs from the sweep in" in message and "target (0.2 -> 0.3)" in message
    assert "search.space.learning_rate ([0.01, 0.1] -> [0.01, 0.2])" in message
    assert "allowed: the stored spec" in message


def test_adding_batch_sizes_seeds_and_grid_values_extends_the_sweep(tmp_path):
    store, spec, extended = open_store(tmp_path, SPEC)
    assert extended == []
    old_ids = {t.id for t in spec.trials()}
    bigger = (
        SPEC.replace("[8, 32]", "[8, 16, 32]")
        .replace("[0.01, 0.1]", "[0.01, 0.1, 0.3]")
        .replace("max_steps", "seeds = 2\nmax_steps")
    )
    store, spec, extended = open_store(tmp_path, bigger, "bigger.toml")
    assert sorted(extended) == ["batch_sizes", "search.space.learning_rate", "seeds"]
    assert old_ids < {t.id for t in spec.trials()} and len(spec.trials()) == 3 * 3 * 2
    assert store.read_spec()["spec"]["batch_sizes"] == [8, 16, 32]
    # the extended spec is now the stored one: reopening it changes nothing
    assert open_store(tmp_path, bigger, "bigger.toml")[2] == []


def test_more_quasi_random_trials_extend_fewer_do_not():
    old = {"search": {"kind": "quasi_random", "trials": 8, "seed": 0}, "target": 0.1}
    assert spec_differences(old, {**old, "search": {**old["search"], "trials": 16}}) == ([], ["search.trials"])
    changed, _ = spec_differences(old, {**old, "search": {**old["search"], "trials": 4}})
    assert changed == ["search.trials (8 -> 4)"]
    assert spec_differences(old, {**old, "name": "renamed"}) == ([], [])


def test_a_claim_is_exclusive_and_released(tmp_path):
    store, spec, _ = open_store(tmp_path, SPEC)
    trial = spec.trials()[0].id
    lease = store.try_claim(trial, "host-a:1", lease_s=30)
    assert lease is not None and lease.path.name == "claim.0"
    with lease:
        assert store.try_claim(trial, "host-b:2", lease_s=30) is None
    # released: the next claimer takes the next generation, never a used name
    again = store.try_claim(trial, "host-b:2", lease_s=30)
    assert again.path.name == "claim.1" and json.loads(again.path.read_text())["worker"] == "host-b:2"


def test_an_expired_lease_is_taken_over_once_and_its_holder_learns_it(tmp_path):
    store, spec, _ = open_store(tmp_path, SPEC)
    trial = spec.trials()[0].id
    stalled = store.try_claim(trial, "other-host:1", lease_s=0.2)
    assert store.try_claim(trial, "me:2", lease_s=30) is None
    time.sleep(0.3)  # the holder stopped renewing: its lease lapses
    takers = [store.try_claim(trial, f"me:{i}", lease_s=30) for i in range(3)]
    assert [t is not None for t in takers] == [True, False, False] and takers[0].path.name == "claim.1"
    stalled.renew()
    assert stalled.lost


def test_a_dead_process_on_this_host_loses_its_claim_at_once(tmp_path):
    from harness.sweep.leases import worker_id

    store, spec, _ = open_store(tmp_path, SPEC)
    trial = spec.trials()[0].id
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = worker_id().rsplit(":", 1)[0]
    assert store.try_claim(trial, f"{host}:{proc.pid}", lease_s=3600) is not None
    assert store.try_claim(trial, worker_id(), lease_s=3600) is not None  # long lease, but its process is gone
    assert store.try_claim(trial, "elsewhere:1", lease_s=3600) is None  # and this live one holds it now


def test_record_round_trip(tmp_path):
    store, spec, _ = open_store(tmp_path, SPEC)
    trial = spec.trials()[1]
    store.checkpoint_dir(trial.id).mkdir(parents=True)
    store.write_record(trial.id, fake_record(trial.config, 30, "complete"))
    assert parse_record(store.record_path(trial.id))["steps_to_target"] == 30
    assert not store.checkpoint_dir(trial.id).exists()  # checkpoints go once the record is safe


def test_promising_first_starts_each_batch_size_with_the_previous_best(tmp_path):
    from harness.sweep.store import RecordIndex
    from harness.sweep.worker import promising_first

    store, spec, _ = open_store(tmp_path, SPEC)
    at8 = [t for t in spec.trials() if t.config.batch_size == 8]
    at32 = [t for t in spec.trials() if t.config.batch_size == 32]
    assert [t.config.learning_rate for t in at32] == [0.01, 0.1]
    store.write_record(at8[0].id, fake_record(at8[0].config, 50, "complete"))
    store.write_record(at8[1].id, fake_record(at8[1].config, 20, "complete"))  # lr 0.1 was best at B=8
    index = RecordIndex(store).refresh()
    assert index.best_trial(8) == at8[1].id and index.best_steps(8) == 20
    assert [t.config.learning_rate for t in promising_first(at32, index)] == [0.1, 0.01]
