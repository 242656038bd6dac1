"""Sweep progress: the ETA from the work left, plain lines off a terminal, and
a bounded number of redraws."""

import io
import json
import multiprocessing
import os
import time
from types import SimpleNamespace

import pytest

from harness.sweep import progress as progress_module
from harness.sweep.executors import wait_for_workers
from harness.sweep.progress import Progress, TrialWork, estimate, likely_steps, seconds_per_step, start_up_seconds
from harness.sweep.store import LiveProgress, Store
from harness.sweep.trial_log import TrialLog


def test_seconds_per_step_is_measured_else_fitted_else_the_nearest():
    measured = {16: 0.02, 64: 0.05}  # the line through them: 0.01 + 0.000625 B
    assert seconds_per_step(measured, 16) == 0.02
    assert seconds_per_step(measured, 256) == pytest.approx(0.17)
    assert seconds_per_step({16: 0.02}, 64) == 0.02  # one measurement: its speed, not scaled by B
    assert seconds_per_step({16: 0.05, 64: 0.02}, 32) == pytest.approx(0.035)  # decreasing fit: flat at the mean
    assert seconds_per_step({16: 0.05, 64: 0.02}, 1024) == pytest.approx(0.035)
    # the line through (64, 0.01) and (128, 0.03), -0.01 + 0.0003125 B, is negative at 16: the nearest, 64
    assert seconds_per_step({64: 0.01, 128: 0.03}, 16) == 0.01


def test_likely_steps_scale_perfectly_from_the_nearest_smaller_batch_size_between_bounds():
    best = {16: 800, 128: 150}
    assert likely_steps(16, 1000, best) == 800  # measured
    assert likely_steps(16, 500, best) == 500  # never above the budget
    assert likely_steps(32, 1000, best) == 400  # 800 * 16 / 32
    assert likely_steps(64, 1000, best) == 200  # 800 * 16 / 64, from 16 (the nearest smaller), not 128
    assert likely_steps(256, 1000, best) == 75  # 150 * 128 / 256
    assert likely_steps(1024, 1000, best) == 19  # ceil(150 * 128 / 1024 = 18.75)
    assert likely_steps(8, 1000, best) == 1000  # none smaller: from 16, 800 * 16 / 8 = 1600, above the budget
    assert likely_steps(8, 2000, best) == 1600
    # never below the fewest steps at a larger batch size: 400 * 16 / 32 = 200 < 250 (at 64)
    assert likely_steps(32, 1000, {16: 400, 64: 250, 128: 300}) == 250
    assert likely_steps(32, 1000, {}) is None


def test_start_up_is_the_mean_cost_outside_timed_steps_less_each_workers_first_trial():
    firsts = [("w1", 0.0, 30.0), ("w2", 0.5, 28.0)]  # each also paid its worker's start
    assert start_up_seconds(firsts) == 29.0
    assert start_up_seconds([*firsts, ("w1", 31.0, 2.0), ("w2", 33.0, 4.0)]) == 3.0
    assert start_up_seconds([]) is None


def test_eta_is_the_likely_work_left_at_the_measured_speeds_beside_the_bound():
    trials = [
        TrialWork(16, budget=1000, step=400, timed_steps=400, timed_seconds=2.0, finished=True),  # 400 to target
        TrialWork(16, budget=1000, step=100, timed_steps=100, timed_seconds=0.5),  # running: 0.005 s a step
        TrialWork(64, budget=1000, step=150, timed_steps=100, timed_seconds=1.0, finished=True),  # 150 to target
        TrialWork(32, budget=1000),  # not started
        TrialWork(256, budget=1000),
    ]
    best = {16: 400, 64: 150}
    # Speeds: 0.005 s at 16, 0.01 s at 64, and the line through them, 1/300 + B / 9600: 1/150 s at 32, 0.03 s at 256.
    # Likely steps left: 400 - 100 = 300 at 16 (pruned there); 400 * 16 / 32 = 200 at 32; ceil(150 * 64 / 256) = 38
    # at 256: 300 * 0.005 = 1.5 s, 200 / 150 + 3 (starting) = 4.333 s, 38 * 0.03 + 3 = 4.14 s; two workers take
    # max(9.973 / 2, 4.333) s. At most: 300 at 16, 1000 at 32 and at 256 (no best there): 1.5 s, 6.667 + 3 s and
    # 30 + 3 s, max(44.167 / 2, 33) s.
    e = estimate(trials, workers=2, start_s=3.0, best=best, prune=True)
    assert (e.steps_done, e.steps_left, e.steps_at_most) == (650, 538, 2300)
    assert (e.seconds_left, e.seconds_at_most) == (pytest.approx(4.98667, abs=1e-4), pytest.approx(33.0))
    assert estimate(trials, 1, 3.0, best, True).seconds_left == pytest.approx(9.97333, abs=1e-4)
    assert estimate(trials, 8, 3.0, best, True).seconds_left == pytest.approx(4.33333, abs=1e-4)  # the longest
    # Without pruning every trial may run its budget, likely too: 900 at 16 (4.5 s), 1000 at 32 and at 256
    e = estimate(trials, workers=2, start_s=3.0, best=best, prune=False)
    assert (e.steps_left, e.steps_at_most) == (2900, 2900)
    assert (e.seconds_left, e.seconds_at_most) == (pytest.approx(33.0), pytest.approx(33.0))


def test_eta_is_unknown_before_any_speed_or_steps_to_target_and_zero_when_nothing_is_left():
    assert estimate([TrialWork(16, 500, step=1)], 2) == progress_module.Estimate(1, 499, None, 499, None)
    early = TrialWork(16, 500, step=10, timed_steps=9, timed_seconds=0.5)  # timed less than MIN_TIMED_S
    assert estimate([early], 2) == progress_module.Estimate(10, 490, None, 490, None)
    running = TrialWork(16, 500, step=100, timed_steps=100, timed_seconds=2.0)
    # pruned: the steps left are likely far fewer than the budget's, but how many needs a steps-to-target
    assert estimate([running], 2, prune=True) == progress_module.Estimate(100, None, None, 400, 8.0)
    assert estimate([running], 2, prune=False) == progress_module.Estimate(100, 400, 8.0, 400, 8.0)
    finished = TrialWork(16, 500, step=500, timed_steps=499, timed_seconds=5.0, finished=True)
    assert estimate([finished], 2) == progress_module.Estimate(500, 0, 0.0, 0, 0.0)


def test_live_progress_times_the_rows_after_the_first_training_evaluation(tmp_path):
    store = Store(tmp_path)
    assert store.live_progress("t") is None
    with TrialLog({}, store.measurements_path("t")) as log:
        log({"step": 0, "wall_time": 1.5})  # evaluated at init: compiling its evaluation
        log({"step": 10, "wall_time": 4.0})  # compiling the training step
        assert store.live_progress("t") == LiveProgress(10, 0, 0.0)
        log({"step": 20, "wall_time": 5.0})
        log({"step": 40, "wall_time": 7.0})
        assert store.live_progress("t") == LiveProgress(40, 30, 3.0)
    with open(store.measurements_path("t"), "a") as f:
        f.write("80,0,")  # a row being written
    assert store.live_progress("t") == LiveProgress(40, 30, 3.0)


def write_record(folder, trial_id, batch_size, steps, seconds, status="pruned", steps_to_target=None):
    """A finished trial's record, `steps - 1` steps timed in `seconds` (after its first training evaluation, at 1)."""
    rows = [{"step": 0, "wall_time": 0.5}, {"step": 1, "wall_time": 1.0}, {"step": steps, "wall_time": 1.0 + seconds}]
    record = {
        "config": {"batch_size": batch_size, "max_steps": 1000},
        "status": status,
        "steps_to_target": steps_to_target,
        "measurements": rows,
        "steps_run": steps,
    }
    (folder / "trials" / trial_id).mkdir(parents=True)
    (folder / "trials" / trial_id / "record.json").write_text(json.dumps(record))


def planned(trial_id, batch_size, max_steps=1000):
    return SimpleNamespace(id=trial_id, config=SimpleNamespace(batch_size=batch_size, max_steps=max_steps))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    return clock


def test_plain_lines_at_each_trial_end_and_every_ten_seconds_without_escape_codes(tmp_path, clock):
    (tmp_path / "trials").mkdir()
    ids = ["b000016-a", "b000016-b", "b000064-a"]
    stream = io.StringIO()
    progress = Progress(tmp_path, ids, stream)
    progress.plan([planned(i, int(i[1:7])) for i in ids], workers=2, prune=True)
    for _ in range(95):  # 9.5 s of updates every 0.1 s: nothing to say yet
        clock.now += 0.1
        progress.update()
    assert stream.getvalue() == ""
    clock.now += 0.6
    progress.update()
    assert stream.getvalue() == "[0/3] 0 steps done, at most 3,000 left; 0m10s elapsed; ETA ?\n"
    write_record(tmp_path, "b000016-a", 16, 201, 4.0, "complete", 201)  # 0.02 s per step at B = 16
    clock.now += 1
    progress.update()
    # Starting a trial costs what b000016-a did: the 2 workers' 11 s less its 4 timed seconds, 18 s. b000016-b will
    # likely run 201 steps, as at most (pruned there: 4.02 s + 18), b000064-a likely ceil(201 * 16 / 64) = 51 at
    # 0.02 s a step (the one speed measured: 1.02 s + 18), at most 1000 (20 s + 18): likely max(22.02, 41.04 / 2) s,
    # at most max(38, 60.02 / 2) s, within three times: shown; 1,201 steps at most is more than three times 252.
    assert stream.getvalue().splitlines()[-1] == (
        "[1/3] b000016-a complete at step 201 after 201 steps; "
        "201 steps done, ~252 left; 0m11s elapsed; "
        "ETA ~0m22s (at most 0m38s); best steps B=16:201"
    )
    write_record(tmp_path, "b000016-b", 16, 201, 4.0)
    write_record(tmp_path, "b000064-a", 64, 50, 1.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith(
        "[3/3] b000064-a pruned after 50 steps; 452 steps done, 0 left; 0m11s elapsed; ETA done"
    )
    assert "\x1b" not in stream.getvalue()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_is_redrawn_at_most_every_half_second_however_often_updated(tmp_path, clock, monkeypatch):
    (tmp_path / "trials").mkdir()
    stream = Terminal()
    progress = Progress(tmp_path, ["b000016-a"], stream)
    progress.plan([planned("b000016-a", 16)], workers=1, prune=False)
    draws = []
    draw = progress._draw
    monkeypatch.setattr(progress, "_draw", lambda *lines: (draws.append(lines), draw(*lines)))
    for _ in range(1280):  # 10 s of updates every 1/128 s
        clock.now += 1 / 128
        progress.update()
    write_record(tmp_path, "b000016-a", 16, 100, 1.0)
    progress.close()
    assert 19 <= len(draws) <= 21
    assert "1/1 trials (1 pruned); 0m10s elapsed; ETA done\n100 steps done, 0 left\n" in stream.getvalue()


def test_the_wait_for_workers_sleeps_once_a_worker_has_exited():
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=time.sleep, args=(seconds,)) for seconds in (0.0, 2.0)]
    for p in procs:
        p.start()
    updates = []
    t0 = time.monotonic()
    wait_for_workers(procs, [None, None], SimpleNamespace(update=lambda: updates.append(1)))
    # an update every PARENT_POLL_S (0.5 s) and one per exit: not thousands once the first has exited
    assert len(updates) <= (time.monotonic() - t0) / 0.5 + 3


def test_a_trial_finished_in_this_run_is_timed_from_its_last_attempt_to_its_record(tmp_path, clock):
    (tmp_path / "trials").mkdir()
    progress = Progress(tmp_path, ["b000016-a", "b000016-b"], io.StringIO())
    write_record(tmp_path, "b000016-a", 16, 201, 4.0, "complete", 201)
    attempts = tmp_path / "trials" / "b000016-a" / "attempts.jsonl"
    attempts.write_text(
        '{"worker": "w1", "time": 100.0, "checkpoint_step": null}\n'
        '{"worker": "w2", "time": 200.0, "checkpoint_step": 100}\n'
    )  # resumed at 200
    os.utime(tmp_path / "trials" / "b000016-a" / "record.json", (210.0, 210.0))
    progress.index.refresh()
    # 10 s from the resumption to the record, 4 of them timed steps (write_record: the last row's wall time less
    # the first training evaluation's)
    assert progress._start_up("b000016-a") == ("w2", 200.0, pytest.approx(6.0))
    assert progress._start_up("b000016-b") is None  # not finished
