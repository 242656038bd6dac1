"""Sweep progress: the ETA from the work left, plain lines off a terminal, and
a bounded number of redraws."""
import io
import json
import multiprocessing
import time
from types import SimpleNamespace

import pytest

from harness.sweep import progress as progress_module
from harness.sweep.executors import wait_for_workers
from harness.sweep.progress import Progress, TrialWork, estimate, seconds_per_step
from harness.sweep.store import LiveProgress, Store
from harness.sweep.trial_log import TrialLog


def test_seconds_per_step_is_measured_else_fitted_else_scaled_from_the_nearest():
    measured = {16: 0.02, 64: 0.05}  # the line through them: 0.01 + 0.000625 B
    assert seconds_per_step(measured, 16) == 0.02
    assert seconds_per_step(measured, 256) == pytest.approx(0.17)
    assert seconds_per_step({16: 0.02}, 64) == pytest.approx(0.08)  # one measurement: scaled by B
    assert seconds_per_step({16: 0.05, 64: 0.02}, 32) == pytest.approx(0.1)  # decreasing fit: nearest (16) * 2


def test_eta_is_the_work_left_at_the_measured_speeds():
    trials = [TrialWork(16, budget=500, step=100, timed_steps=100, timed_seconds=2.0),  # running: 400 left
              TrialWork(64, budget=300, step=300, timed_steps=100, timed_seconds=5.0),  # finished
              TrialWork(256, budget=200)]  # not started: 200 steps at 0.01 + 0.000625 * 256 = 0.17 s
    # 400 * 0.02 = 8 s and 200 * 0.17 = 34 s: two workers take max(42 / 2, 34) s, one takes 42 s.
    e = estimate(trials, workers=2)
    assert (e.steps_done, e.steps_left, e.seconds_left) == (400, 600, pytest.approx(34.0))
    assert estimate(trials, workers=1).seconds_left == pytest.approx(42.0)
    assert estimate(trials, workers=8).seconds_left == pytest.approx(34.0)  # the longest trial bounds it
    # starting a trial (3 s) counts for the one not started: max((8 + 37) / 2, 37)
    assert estimate(trials, workers=2, start_s=3.0).seconds_left == pytest.approx(37.0)


def test_eta_is_unknown_before_any_speed_and_zero_when_nothing_is_left():
    assert estimate([TrialWork(16, 500, step=1)], 2) == progress_module.Estimate(1, 499, None)
    early = TrialWork(16, 500, step=10, timed_steps=9, timed_seconds=0.5)  # timed less than MIN_TIMED_S
    assert estimate([early], 2) == progress_module.Estimate(10, 490, None)
    assert estimate([TrialWork(16, 500, step=500, timed_steps=499, timed_seconds=5.0)], 2).seconds_left == 0.0


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
    record = {"config": {"batch_size": batch_size, "max_steps": 1000}, "status": status,
              "steps_to_target": steps_to_target, "measurements": rows, "steps_run": steps}
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
    # b000016-b may run 201 steps (pruned there: 4.02 s), b000064-a 1000 at 0.02 * 64 / 16 s (80 s), and
    # each costs what starting b000016-a did: the 2 workers' 11 s less its 4 timed seconds, 18 s:
    # max((22.02 + 98) / 2, 98) s.
    assert stream.getvalue().splitlines()[-1] == ("[1/3] b000016-a complete at step 201 after 201 steps; "
                                                  "201 steps done, at most 1,201 left; 0m11s elapsed; "
                                                  "ETA at most 1m38s; best steps B=16:201")
    write_record(tmp_path, "b000016-b", 16, 201, 4.0)
    write_record(tmp_path, "b000064-a", 64, 50, 1.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("[3/3] b000064-a pruned after 50 steps; 452 steps done, "
                                                    "at most 0 left; 0m11s elapsed; ETA done")
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
    assert "1/1 trials (1 pruned); 0m10s elapsed; ETA done\n100 steps done, at most 0 left\n" in stream.getvalue()


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
