"""Sweep progress: trials done / total, steps done and at most left, time
elapsed, an ETA from the work left, and the best steps-to-target per batch
size so far. A live display (rich) on a terminal; plain lines otherwise (logs,
CI): one at each trial's end, and one every HEARTBEAT_S seconds without any.

The ETA is an upper bound at the measured speeds: each unfinished trial may
still run to its budget (its max_steps; with pruning, no further than the best
steps-to-target found at its batch size), so pruning and early crossings only
shorten the sweep."""
from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from harness.sweep.store import RecordIndex, Store

HEARTBEAT_S = 10.0  # plain output: a status line at least this often while no trial ends
REFRESH_S = 0.5  # the fewest seconds between two looks at the store (and redraws)
MIN_TIMED_S = 1.0  # a batch size's speed counts once its trials have been timed this long (early evaluations dominate)


@dataclass(frozen=True)
class TrialWork:
    """One trial as the ETA sees it: its batch size, the most steps it may run
    in all (`budget`), the step it has reached, and its speed: `timed_steps`
    steps took `timed_seconds` (store.LiveProgress)."""

    batch_size: int
    budget: int
    step: int = 0
    timed_steps: int = 0
    timed_seconds: float = 0.0


@dataclass(frozen=True)
class Estimate:
    """Steps done, steps at most left, and the seconds those take at most at
    the measured speeds (None while no speed is measured)."""

    steps_done: int
    steps_left: int
    seconds_left: float | None


def seconds_per_step(measured: dict[int, float], batch_size: int) -> float:
    """Seconds per step at `batch_size` given those `measured` (batch size ->
    seconds per step): the measurement there; else the least-squares line
    a + b*B through the measurements (two batch sizes or more) where it is
    increasing and positive at B; else the nearest measured batch size (in
    log B) scaled by B."""
    if batch_size in measured:
        return measured[batch_size]
    if len(measured) >= 2:
        b, a = np.polyfit(list(measured), list(measured.values()), 1)
        if b > 0 and a + b * batch_size > 0:
            return float(a + b * batch_size)
    nearest = min(measured, key=lambda m: (abs(math.log(m / batch_size)), m))
    return measured[nearest] * batch_size / nearest


def estimate(trials: list[TrialWork], workers: int, start_s: float = 0.0) -> Estimate:
    """The work left over `trials` run by `workers` in parallel. Each batch
    size's speed is its trials' timed steps over their timed seconds, once
    they total MIN_TIMED_S (others extrapolated: `seconds_per_step`); each
    trial's time left is its steps left times that, plus `start_s` (starting,
    compiling, evaluating at step 0) for a trial not started, and the sweep's
    the larger of their sum over the workers and the longest one."""
    steps, seconds = defaultdict(int), defaultdict(float)
    for t in trials:
        if t.timed_steps > 0 and t.timed_seconds > 0:
            steps[t.batch_size] += t.timed_steps
            seconds[t.batch_size] += t.timed_seconds
    measured = {b: seconds[b] / steps[b] for b in steps if seconds[b] >= MIN_TIMED_S}
    left = [t for t in trials if t.budget > t.step]
    done, steps_left = sum(t.step for t in trials), sum(t.budget - t.step for t in left)
    if not left or not measured:
        return Estimate(done, steps_left, None if left else 0.0)
    work = [(t.budget - t.step) * seconds_per_step(measured, t.batch_size) + (0.0 if t.step else start_s) for t in left]
    return Estimate(done, steps_left, max(sum(work) / workers, max(work)))


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Watches the store while workers run: call `plan()` with the trials
    about to run, `update()` as often as you like (it looks at the store at
    most every REFRESH_S seconds) and `close()` at the end."""

    def __init__(self, folder, trial_ids, stream=None):
        self.store = Store(folder)
        self.index = RecordIndex(self.store).refresh()
        self.ids = list(trial_ids)
        self.stream = stream or sys.stderr
        self.planned: dict[str, tuple[int, int]] = {}  # trial id -> (batch size, budget)
        self.workers, self.prune = 1, False
        self.seen = {i for i in self.ids if i in self.index.summaries}
        self.t0 = self._printed = time.monotonic()
        self._looked = -math.inf
        self._live = None

    def plan(self, trials, workers: int, prune: bool) -> None:
        """The trials about to run (harness.sweep.spec.PlannedTrial: their batch
        sizes and budgets), how many run at once, and whether they prune."""
        self.planned = {t.id: (t.config.batch_size, t.config.max_steps) for t in trials}
        self.workers, self.prune = max(1, workers), prune

    def update(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._looked < REFRESH_S:
            return
        self._looked = now
        new = [i for i in self.ids if i in self.index.refresh().summaries and i not in self.seen]
        steps, eta = self._status()
        if self.stream.isatty():
            self.seen.update(new)
            self._draw(steps, eta)
            return
        status = f"{steps}; {eta}"
        for trial_id in new:
            self.seen.add(trial_id)
            s = self.index.summaries[trial_id]
            steps = f" at step {s.steps_to_target}" if s.steps_to_target is not None else ""
            self._print(f"[{len(self.seen)}/{len(self.ids)}] {trial_id} {s.status}{steps} after {s.steps_run} steps; "
                        f"{status}; {self._best_text()}", now)
        if not new and now - self._printed >= HEARTBEAT_S:
            self._print(f"[{len(self.seen)}/{len(self.ids)}] {status}", now)

    def close(self) -> None:
        self.update(final=True)
        if self._live:
            self._live.stop()
            self._live = None

    def _print(self, line: str, now: float) -> None:
        print(line, file=self.stream, flush=True)
        self._printed = now

    def _status(self) -> tuple[str, str]:
        """(steps done and at most left, time elapsed and the ETA)."""
        works, started = [], []  # started: the trials of this run so far
        for trial_id in self.ids:
            if (s := self.index.summaries.get(trial_id)) is not None:
                timed = (s.timed.timed_steps, s.timed.timed_seconds) if s.timed else ()
                works.append(TrialWork(s.batch_size, s.steps_run, s.steps_run, *timed))
            elif trial_id in self.planned:
                batch_size, budget = self.planned[trial_id]
                best = self.index.best_steps(batch_size) if self.prune else None
                live = self.store.live_progress(trial_id)
                works.append(TrialWork(batch_size, min(budget, best or budget),
                                       *((live.step, live.timed_steps, live.timed_seconds) if live else ())))
            if trial_id in self.planned and works[-1].step:
                started.append(works[-1])
        # The workers' time not spent on timed steps, per trial started: what starting a trial costs
        busy = (time.monotonic() - self.t0) * self.workers - sum(t.timed_seconds for t in started)
        e = estimate(works, self.workers, max(0.0, busy) / max(1, len(started)))
        known = len(works) == len(self.ids)  # every unfinished trial planned
        eta = "done" if e.seconds_left == 0 else "?" if e.seconds_left is None or not known \
            else f"at most {duration(e.seconds_left)}"
        left = f"at most {e.steps_left:,}" if known else "?"
        return (f"{e.steps_done:,} steps done, {left} left",
                f"{duration(time.monotonic() - self.t0)} elapsed; ETA {eta}")

    def _best_text(self) -> str:
        batch_sizes = sorted({self.index.summaries[i].batch_size for i in self.seen})
        best = {b: self.index.best_steps(b) for b in batch_sizes}
        return "best steps " + (" ".join(f"B={b}:{'-' if s is None else s}" for b, s in best.items()) or "-")

    def _draw(self, steps: str, eta: str) -> None:
        """Redraw the live display: a bar and count of trials done with the ETA (within 80 columns), the steps,
        the best steps so far."""
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        done, total = len(self.seen), len(self.ids)
        pruned = sum(self.index.summaries[i].status == "pruned" for i in self.seen)
        head = Table.grid(padding=(0, 1))
        head.add_row(ProgressBar(total=max(total, 1), completed=done, width=16),
                     Text(f"{done}/{total} trials ({pruned} pruned); {eta}", no_wrap=True, overflow="ellipsis"))
        view = Group(head, *(Text(line, no_wrap=True, overflow="ellipsis") for line in (steps, self._best_text())))
        if self._live is None:
            self._live = Live(view, console=Console(file=self.stream), auto_refresh=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self._live.update(view, refresh=True)
