"""Trials whose batch size grows during training (harness.engine.batch_schedule):
the data order continues across a change, the rules move the learning rate and
beta2 by their formulas, resume across a change is exact, and bad schedules
get one line."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

from harness.engine.batch_schedule import ScheduledEngine, phase_configs
from harness.engine.loop import Hooks, Stopped, TrialRun, run_trial
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError

BASE = dict(
    workload="mnist_fc32x1",
    batch_size=32,
    learning_rate=0.05,
    optimizer="momentum",
    max_steps=80,
    eval_every=20,
    stop_at_target=False,
)
SCHEDULED = TrialConfig(**BASE, batch_schedule=(64,), batch_schedule_examples=(1600,))


def same_measurements(a, b):
    """The same training: equal evaluations; the mean train loss over an
    evaluation interval split by a change is summed in two parts (float32
    rounding)."""
    keys = ("step", "val_loss", "val_metric")
    train = [r["train_loss"] for r in b.measurements[1:]]
    return [[r[k] for k in keys] for r in a.measurements] == [[r[k] for k in keys] for r in b.measurements] and [
        r["train_loss"] for r in a.measurements[1:]
    ] == pytest.approx(train, rel=1e-6)


def test_a_schedule_that_keeps_the_batch_size_is_the_constant_trial(data_dir):
    constant = run_trial(TrialConfig(**BASE), data_dir=data_dir)
    kept = run_trial(TrialConfig(**BASE, batch_schedule=(32,), batch_schedule_examples=(1600,)), data_dir=data_dir)
    assert same_measurements(kept, constant)
    assert [r["examples"] for r in kept.measurements] == [r["examples"] for r in constant.measurements]


def test_the_data_order_continues_across_a_change(data_dir):
    """55,000 training examples; B = 32 for 1,600 examples (50 steps), then
    B = 64 from example 1,600 of epoch 0: (55000 - 1600) // 64 = 834 steps
    finish that epoch (its last 24 examples are skipped), and step 884 starts
    epoch 1 at example 0."""
    workload = get_workload("mnist_fc32x1")
    config = dataclasses.replace(SCHEDULED, max_steps=2000)
    engine = ScheduledEngine(workload, workload.load_data(data_dir), [config])
    assert engine.firsts == [0, 50]
    first, second = engine.engines
    assert [first.position(s) for s in (0, 1, 49)] == [(0, 0), (0, 32), (0, 1568)]
    assert [second.position(s) for s in (50, 51, 883, 884, 885)] == [(0, 1600), (0, 1664), (0, 54912), (1, 0), (1, 64)]
    assert [engine.examples_at(s) for s in (50, 51, 884)] == [1600, 1664, 1600 + 834 * 64]
    assert [engine.batch_size_at(s) for s in (1, 50, 51)] == [32, 32, 64]


def test_records_carry_the_batch_size_and_the_examples_seen(data_dir):
    record = run_trial(SCHEDULED, data_dir=data_dir)
    rows = [(r["step"], r["batch_size"], r["examples"]) for r in record.measurements]
    assert rows == [(0, 32, 0), (20, 32, 640), (40, 32, 1280), (60, 64, 1600 + 10 * 64), (80, 64, 1600 + 30 * 64)]


def test_an_example_budget_stops_a_schedule_at_its_first_evaluation_past_it(data_dir):
    """1,600 examples at B = 32 (50 steps), then B = 64: the evaluations at
    steps 60 (2,240 examples) and 80 (3,520); a budget of 2,300 examples
    stops the trial at step 80, the first evaluation at or past it, though
    max_steps allows 200."""
    record = run_trial(dataclasses.replace(SCHEDULED, max_steps=200, example_budget=2300), data_dir=data_dir)
    assert [(r["step"], r["examples"]) for r in record.measurements][-2:] == [(60, 2240), (80, 3520)]
    assert record.steps_run == 80 and record.status == "incomplete"


@pytest.mark.parametrize(
    "optimizer, rule, factor",
    [("momentum", "auto", 4.0), ("adam", "auto", 2.0), ("sgd", "sqrt", 2.0), ("nesterov", "none", 1.0)],
)
def test_the_learning_rate_rule_matches_its_formula(optimizer, rule, factor):
    """Linear: eta * B'/B (Goyal et al. 2017); sqrt: eta * sqrt(B'/B) (Malladi et al. 2022)."""
    config = TrialConfig(
        **{**BASE, "optimizer": optimizer}, batch_schedule=(128,), batch_schedule_examples=(100,), batch_lr_rule=rule
    )
    small, large = phase_configs(config)
    assert (small.batch_size, large.batch_size) == (32, 128)
    assert small.learning_rate == 0.05 and large.learning_rate == pytest.approx(0.05 * factor)


def test_beta2_keeps_its_half_life_in_examples():
    """beta2' = beta2^(B'/B) (Marek et al. 2025): the decay per example is the same."""
    config = TrialConfig(
        **{**BASE, "optimizer": "adam"},
        b2=0.99,
        batch_schedule=(64, 256),
        batch_schedule_examples=(100, 200),
        batch_beta2_rule="half_life",
    )
    b2s = [c.b2 for c in phase_configs(config)]
    assert b2s == pytest.approx([0.99, 0.99**2, 0.99**8])
    half_life = [math.log(0.5) / math.log(b2) * c.batch_size for b2, c in zip(b2s, phase_configs(config))]
    assert half_life == pytest.approx([half_life[0]] * 3)


def test_resume_across_a_change_equals_the_uninterrupted_run(data_dir, tmp_path):
    config = dataclasses.replace(SCHEDULED, checkpoint_every=20)
    uninterrupted = run_trial(config, data_dir=data_dir)
    evaluations = []
    with pytest.raises(Stopped):  # stopped at step 60, after the change at step 50
        run_trial(
            TrialRun(config, str(tmp_path)),
            Hooks(should_stop=lambda: evaluations.append(1) or len(evaluations) >= 3),
            data_dir=data_dir,
        )
    resumed = run_trial(TrialRun(config, str(tmp_path)), data_dir=data_dir)
    assert same_measurements(resumed, uninterrupted)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            dict(batch_schedule=(64, 128), batch_schedule_examples=(500, 500)),
            "batch_schedule_examples must increase strictly from >= 1, got [500, 500]",
        ),
        (
            dict(batch_schedule=(64,), batch_schedule_examples=()),
            "batch_schedule [64] and batch_schedule_examples [] need one threshold per batch size",
        ),
        (
            dict(batch_schedule=(64,), batch_schedule_examples=(500,), batch_beta2_rule="half_life"),
            "batch_beta2_rule 'half_life' needs an optimizer with beta2, got 'momentum'; allowed: adam, adamw, lamb",
        ),
        (
            dict(batch_schedule=(64,), batch_schedule_examples=(500,), batch_lr_rule="cubic"),
            "unknown batch_lr_rule 'cubic'; allowed: auto, linear, sqrt, none",
        ),
    ],
)
def test_a_bad_schedule_gets_one_line(fields, message):
    with pytest.raises(UserError) as e:
        TrialConfig(**BASE, **fields).validate()
    assert str(e.value) == message


def test_a_phase_batch_size_the_devices_do_not_divide_is_refused(data_dir):
    """On 8 devices B = 64 splits, B = 36 does not: refused before training."""
    code = (
        "import sys; from harness.cli import main; sys.exit(main(['train', '--workload', 'mnist_fc32x1', "
        "'--batch-size', '64', '--learning-rate', '0.1', '--batch-schedule', '36', "
        "'--batch-schedule-examples', '640']))"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "CBS_DATA_DIR": str(data_dir),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "cbs: error: batch_size 36 / microbatches 1 = 36 is not divisible by the device count 8; "
        "allowed: multiples of 8"
    ]


def test_a_schedule_packs_and_sweeps_like_any_metaparameter(data_dir, tmp_path):
    """Two points that differ only in the learning rate share one program."""
    from harness.engine.loop import run_trials
    from harness.engine.step import pack_key

    a, b = SCHEDULED, dataclasses.replace(SCHEDULED, learning_rate=0.1)
    assert pack_key(a) == pack_key(b)
    packed = run_trials([TrialRun(a), TrialRun(b)], data_dir=data_dir)
    alone = [run_trial(c, data_dir=data_dir) for c in (a, b)]
    for p, s in zip(packed, alone):
        assert [r["val_loss"] for r in p.measurements] == pytest.approx(
            [r["val_loss"] for r in s.measurements], rel=1e-5
        )
    assert json.loads(json.dumps(packed[0].to_dict()))["config"]["batch_schedule"] == [64]


AUTO = TrialConfig(**{**BASE, "learning_rate": 0.01}, gns=True, microbatches=2, batch_auto=1e4, batch_auto_max=128)


def test_auto_doubles_the_batch_while_the_noise_scale_says_so(data_dir):
    """With a calibration so large that c * B_simple always exceeds 2 B, the
    batch doubles at every evaluation (the row after a change has the new
    batch size) until batch_auto_max."""
    record = run_trial(AUTO, data_dir=data_dir)
    rows = [(r["step"], r["batch_size"], r["examples"]) for r in record.measurements]
    assert rows == [
        (0, 32, 0),
        (20, 32, 640),
        (40, 64, 640 + 20 * 64),
        (60, 128, 1920 + 20 * 128),
        (80, 128, 4480 + 20 * 128),
    ]
    never = run_trial(dataclasses.replace(AUTO, batch_auto=1e-6), data_dir=data_dir)
    assert {r["batch_size"] for r in never.measurements} == {32}


def test_auto_resumes_to_the_uninterrupted_run(data_dir, tmp_path):
    config = dataclasses.replace(AUTO, checkpoint_every=20)
    uninterrupted = run_trial(config, data_dir=data_dir)
    evaluations = []
    with pytest.raises(Stopped):  # stopped at step 40, where the batch size doubles again
        run_trial(
            TrialRun(config, str(tmp_path)),
            Hooks(should_stop=lambda: evaluations.append(1) or len(evaluations) >= 2),
            data_dir=data_dir,
        )
    resumed = run_trial(TrialRun(config, str(tmp_path)), data_dir=data_dir)
    assert same_measurements(resumed, uninterrupted)
    assert [r["batch_size"] for r in resumed.measurements] == [r["batch_size"] for r in uninterrupted.measurements]


def test_auto_needs_the_online_noise_scale():
    with pytest.raises(UserError) as e:
        TrialConfig(**BASE, batch_auto=2.0).validate()
    assert (
        str(e.value) == "batch_auto needs gns (the online noise scale it reads) and no batch_schedule; "
        "got gns False, batch_schedule []"
    )
