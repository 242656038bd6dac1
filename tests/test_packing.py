"""Packed trials (harness.engine.loop.run_trials): P trials that share one
program, stepped as one, give every trial the record it gets alone; a copy
that diverges or is pruned stops counting while the others go on; a stopped
pack resumes. Real MNIST, a small FC net."""

import math

import numpy as np
import pytest
from conftest import DATA_DIR as DATA

from harness.engine.loop import Hooks, Stopped, TrialRun, run_trial, run_trials
from harness.engine.resume import PackMismatch
from harness.engine.step import Engine
from harness.engine.trial import TrialConfig
from harness.errors import UserError
from harness.sweep.packing import PackSize, fastest, measure_packs, packs
from harness.sweep.spec import PlannedTrial, parse_spec

BASE = dict(
    workload="mnist_fc32x1",
    batch_size=64,
    optimizer="nesterov",
    schedule="linear_decay",
    target=0.2,
    max_steps=120,
    eval_every=20,
    checkpoint_every=20,
)
# Different learning rates, momenta, decay lengths and end factors share one program; the last one diverges.
POINTS = [
    dict(learning_rate=0.1, momentum=0.9, decay_steps=120, end_lr_factor=0.01),
    dict(learning_rate=0.02, momentum=0.8, decay_steps=60, end_lr_factor=0.1),
    dict(learning_rate=0.005, momentum=0.95, decay_steps=100, end_lr_factor=0.001),
    dict(learning_rate=30.0, momentum=0.99, decay_steps=120, end_lr_factor=0.1),
]
CONFIGS = [TrialConfig(**BASE, **p) for p in POINTS]
RUNS = [TrialRun(c) for c in CONFIGS]
COMPARED = ("step", "examples", "rounds", "train_loss", "val_loss", "val_metric")


def assert_same_record(packed, alone):
    assert (packed.status, packed.steps_to_target, packed.steps_run) == (
        alone.status,
        alone.steps_to_target,
        alone.steps_run,
    )
    rows = lambda r: np.array([[np.nan if row[k] is None else row[k] for k in COMPARED] for row in r.measurements])
    np.testing.assert_allclose(rows(packed), rows(alone), rtol=2e-5, atol=1e-6, equal_nan=True)


@pytest.fixture(scope="module")
def alone():
    return [run_trial(c, data_dir=DATA) for c in CONFIGS]


def test_packed_trials_equal_the_trials_run_alone_and_a_diverged_copy_stops_counting(alone):
    assert [r.status for r in alone] == ["complete", "complete", "incomplete", "diverged"]
    seen = {}
    packed = run_trials(RUNS, Hooks(on_record=lambda i, r: seen.setdefault(i, r.steps_run)), data_dir=DATA)
    for p, a in zip(packed, alone):
        assert_same_record(p, a)
    # Each record was final when its trial stopped, while the others went on.
    assert seen == {i: r.steps_run for i, r in enumerate(alone)}
    assert alone[3].steps_run < alone[2].steps_run == BASE["max_steps"]


def test_pruning_stays_per_trial_and_uses_the_packs_own_crossings(alone):
    best = min(r.steps_to_target for r in alone if r.status == "complete")
    packed = run_trials(RUNS, Hooks(prune_above=lambda: None), data_dir=DATA)
    assert min(r.steps_to_target for r in packed if r.status == "complete") == best
    for p, a in zip(packed, alone):
        if p.status == "pruned":  # stopped at the first evaluation at or after the pack's best crossing
            assert a.status != "complete" or a.steps_to_target >= best
            assert p.steps_run == min(r["step"] for r in a.measurements if r["step"] >= best)
        else:
            assert_same_record(p, a)
    assert sum(p.status == "pruned" for p in packed) >= 1


def test_a_stopped_pack_resumes_to_the_uninterrupted_records(alone, tmp_path):
    """As a sweep worker does: the records of trials that stopped before the
    pack was stopped are kept; the others resume together from their checkpoints."""
    dirs = [str(tmp_path / str(i)) for i in range(len(CONFIGS))]
    evaluations, finished = [], {}
    with pytest.raises(Stopped):
        run_trials(
            [TrialRun(c, d) for c, d in zip(CONFIGS, dirs)],
            Hooks(should_stop=lambda: evaluations.append(1) or len(evaluations) >= 3, on_record=finished.__setitem__),
            data_dir=DATA,
        )
    assert sorted(finished) == [0, 3]  # crossed at step 20, diverged at 20; the others checkpointed at 60
    rest = [i for i in range(len(CONFIGS)) if i not in finished]
    resumed = run_trials([TrialRun(CONFIGS[i], dirs[i]) for i in rest], data_dir=DATA)
    for i, record in [*finished.items(), *zip(rest, resumed)]:
        assert_same_record(record, alone[i])


def test_checkpoints_at_different_steps_do_not_pack(tmp_path):
    with pytest.raises(Stopped):
        run_trial(TrialRun(CONFIGS[1], str(tmp_path / "a")), Hooks(should_stop=lambda: True), data_dir=DATA)
    with pytest.raises(PackMismatch):
        run_trials(
            [TrialRun(CONFIGS[1], str(tmp_path / "a")), TrialRun(CONFIGS[2], str(tmp_path / "b"))], data_dir=DATA
        )


def test_only_trials_of_one_program_pack():
    with pytest.raises(ValueError, match="cannot be packed"):
        Engine(None, None, [CONFIGS[0], TrialConfig(**{**BASE, "batch_size": 32}, **POINTS[0])])
    trials = [
        PlannedTrial(f"t{i}", TrialConfig(**{**BASE, "batch_size": b}, **POINTS[i % 4]))
        for i, b in enumerate([64, 32, 64, 64, 32, 64, 64])
    ]
    grouped = packs(trials, lambda group: 2)
    assert [[t.id for t in p] for p in grouped] == [["t0", "t2"], ["t1", "t4"], ["t3", "t5"], ["t6"]]


def test_auto_packs_one_on_cpu_and_measures_elsewhere():
    trials = [PlannedTrial(f"t{i}", c) for i, c in enumerate(CONFIGS)]
    assert PackSize("auto")(trials) == 1 and PackSize(3)(trials) == 3
    rates = measure_packs(CONFIGS, (1, 2), DATA, steps=5)
    assert set(rates) == {1, 2} and all(r > 0 and math.isfinite(r) for r in rates.values())
    assert fastest({1: 10.0, 2: 30.0, 4: 20.0}) == 2


@pytest.mark.parametrize("pack", [0, -2, "fast", 1.5])
def test_a_bad_pack_names_the_field_and_the_allowed_values(pack):
    raw = dict(workload="mnist_fc32x1", batch_sizes=[64], max_steps=10, fixed={"learning_rate": 0.1}, pack=pack)
    with pytest.raises(UserError, match=r'pack: .*allowed: integers >= 1, "auto"'):
        parse_spec(raw)


@pytest.mark.slow  # ~20 s; test_engine's eight-device test covers the sharded step of a pack of one
def test_a_pack_on_eight_devices_equals_the_trials_alone_on_one(alone):
    """The batch is sharded over the devices inside the vmapped pack (the
    accelerator case); XLA_FLAGS forces 8 host devices in a subprocess."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys; sys.path.insert(0, 'tests'); import jax; "
        "from test_packing import RUNS, DATA; from harness.engine.loop import run_trials; "
        "records = run_trials(RUNS, data_dir=DATA); "
        "print(json.dumps([jax.device_count(), [r.measurements for r in records]]))"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    devices, measurements = json.loads(out.stdout.strip().splitlines()[-1])
    assert devices == 8
    for rows, a in zip(measurements, alone):
        assert [r["step"] for r in rows] == [r["step"] for r in a.measurements]
        for r8, r1 in zip(rows[1:], a.measurements[1:]):
            for key in ("train_loss", "val_loss", "val_metric"):
                assert r8[key] == pytest.approx(r1[key], rel=1e-3, abs=1e-6, nan_ok=True), key
