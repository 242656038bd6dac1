"""Sweep progress: trials done / total, steps done and likely left, time
elapsed, an ETA from the work left, and the best steps-to-target per batch
size so far. A live display (rich) on a terminal; plain lines otherwise (logs,
CI): one at each trial's end, and one every HEARTBEAT_S seconds without any.

The ETA is a likely figure ("~"), from the steps each unfinished trial will
likely still run (`likely_steps`: with pruning, the best steps-to-target at its
batch size, measured there or predicted from the neighbours by perfect
scaling) at the measured speeds, plus a measured start-up per trial. Beside it
("at most"), the upper bound (each unfinished trial may run to its budget, or
with pruning to the best steps-to-target measured at its batch size), shown
only where it is informative: within BOUND_SHOWN_WITHIN times the likely
figure. Further out it only restates the budgets (max_steps), far above the
steps to the target in a pruned sweep."""

from __future__ import annotations

import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from harness.sweep.store import RecordIndex, Store

HEARTBEAT_S = 10.0  # plain output: a status line at least this often while no trial ends
REFRESH_S = 0.5  # the fewest seconds between two looks at the store (and redraws)
MIN_TIMED_S = 1.0  # a batch size's speed counts once its trials have been timed this long (early evaluations dominate)
BOUND_SHOWN_WITHIN = 3.0  # the upper bound is shown beside the likely figure while at most this many times it


@dataclass(frozen=True)
class TrialWork:
    """One trial as the ETA sees it: its batch size, its budget (max_steps),
    the step it has reached, its speed (`timed_steps` steps took
    `timed_seconds`, store.LiveProgress), and whether it has `finished`."""

    batch_size: int
    budget: int
    step: int = 0
    timed_steps: int = 0
    timed_seconds: float = 0.0
    finished: bool = False


@dataclass(frozen=True)
class Estimate:
    """Steps done; the steps likely left and at most left; the seconds those
    take at the measured speeds (None while no speed is measured, and the
    likely figures while they need a steps-to-target and none is measured)."""

    steps_done: int
    steps_left: int | None
    seconds_left: float | None
    steps_at_most: int
    seconds_at_most: float | None


def seconds_per_step(measured: dict[int, float], batch_size: int) -> float:
    """Seconds per step at `batch_size` given those `measured` (batch size ->
    seconds per step): the measurement there; else the least-squares line
    a + b*B through the measurements (two batch sizes or more), its slope b
    clamped at 0 (then a is their mean), where it is positive at B; else the
    nearest measured batch size's (in log B). Not scaled by B: on a CPU a
    small model's step takes far less than twice as long at twice the batch."""
    if batch_size in measured:
        return measured[batch_size]
    if len(measured) >= 2:
        b, a = np.polyfit(list(measured), list(measured.values()), 1)
        if b < 0:
            b, a = 0.0, float(np.mean(list(measured.values())))
        if a + b * batch_size > 0:
            return float(a + b * batch_size)
    return measured[min(measured, key=lambda m: (abs(math.log(m / batch_size)), m))]


def likely_steps(batch_size: int, budget: int, best: dict[int, int]) -> int | None:
    """The steps-to-target likely at `batch_size` given the `best` measured
    (batch size -> fewest steps to the target): the measurement there; else
    perfect scaling (steps halve per doubling of the batch size up to the
    critical batch size, Shallue et al. 2019) from the nearest smaller measured
    batch size B0, ceil(S0 * B0 / B) (from the nearest larger one when none is
    smaller), never below the fewest steps measured at any larger batch size
    (steps do not grow with B); never above `budget`. None when nothing is
    measured."""
    if batch_size in best:
        return min(budget, best[batch_size])
    if not best:
        return None
    smaller = [b for b in best if b < batch_size]
    b0 = max(smaller) if smaller else min(best)
    steps = math.ceil(best[b0] * b0 / batch_size)
    larger = [best[b] for b in best if b > batch_size]
    return min(budget, max(steps, min(larger, default=0)))


def start_up_seconds(finished: list[tuple[str, float, float]]) -> float | None:
    """What starting a trial costs (compiling, evaluating at step 0, writing
    its record), from `finished` trials as (worker, start time, seconds not
    spent on timed steps): their mean, leaving out each worker's first trial
    (which also pays the worker's own start: imports, data) while any other
    has finished; None without any."""
    if not finished:
        return None
    first = {}
    for worker, started, _ in finished:
        first[worker] = min(first.get(worker, math.inf), started)
    later = [s for worker, started, s in finished if started > first[worker]]
    return float(np.mean(later or [s for _, _, s in finished]))


def estimate(
    trials: list[TrialWork], workers: int, start_s: float = 0.0, best: dict[int, int] | None = None, prune: bool = False
) -> Estimate:
    """The work left over `trials` run by `workers` in parallel, given the
    `best` steps-to-target measured per batch size. Each batch size's speed is
    its trials' timed steps over their timed seconds, once they total
    MIN_TIMED_S (others extrapolated: `seconds_per_step`). An unfinished
    trial's steps left are at most its budget's (with `prune`, no further than
    `best` at its batch size), likely (with `prune`) `likely_steps` there: the
    trials at a batch size stop by the first crossing of the target. Without
    `prune` each may run its budget (one stopping at the target only shortens
    the sweep), and diverging ones stop early, ignored likewise. A trial's
    time left is its steps left times its speed, plus `start_s` (starting,
    compiling, evaluating at step 0) for a trial not started; the sweep's,
    the larger of their sum over the workers and the longest one."""
    best = best or {}
    steps, seconds = defaultdict(int), defaultdict(float)
    for t in trials:
        if t.timed_steps > 0 and t.timed_seconds > 0:
            steps[t.batch_size] += t.timed_steps
            seconds[t.batch_size] += t.timed_seconds
    measured = {b: seconds[b] / steps[b] for b in steps if seconds[b] >= MIN_TIMED_S}
    left = [t for t in trials if not t.finished]
    at_most = [max(0, (min(t.budget, best.get(t.batch_size, t.budget)) if prune else t.budget) - t.step) for t in left]
    likely = [
        max(0, (likely_steps(t.batch_size, t.budget, best) if prune else t.budget) - t.step)
        if not prune or best
        else None
        for t in left
    ]
    done = sum(t.step for t in trials)
    known = None not in likely
    if not left:
        return Estimate(done, 0, 0.0, 0, 0.0)
    if not measured:
        return Estimate(done, sum(likely) if known else None, None, sum(at_most), None)

    def seconds_left(steps_left):
        work = [
            n * seconds_per_step(measured, t.batch_size) + (0.0 if t.step else start_s)
            for n, t in zip(steps_left, left)
        ]
        return max(sum(work) / workers, max(work))

    return Estimate(
        done,
        sum(likely) if known else None,
        seconds_left(likely) if known else None,
        sum(at_most),
        seconds_left(at_most),
    )


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _likely_and_bound(likely, at_most, text) -> str:
    """ "~likely (at most at_most)", the bound left out where it says nothing more: equal to the likely figure as
    shown, or more than BOUND_SHOWN_WITHIN times it; "at most at_most" alone while the likely one is unknown."""
    if likely is None:
        return f"at most {text(at_most)}"
    if at_most == 0:
        return text(0)
    shown = text(at_most) != text(likely) and at_most <= BOUND_SHOWN_WITHIN * likely
    return f"~{text(likely)}" + (f" (at most {text(at_most)})" if shown else "")


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
        self._initial = set(self.seen)  # finished before this run: not timed by it
        self._start_ups: dict[str, tuple[str, float, float] | None] = {}
        self.t0 = self._printed = time.monotonic()
        self._looked = -math.inf
        self._live = None

    def plan(self, trials, workers: int, prune) -> None:
        """The trials about to run (harness.sweep.spec.PlannedTrial: their batch
        sizes and budgets), how many run at once, and whether they prune
        (a harness.sweep.store.PruneRule; None or False: no pruning)."""
        self.planned = {t.id: (t.config.batch_size, t.config.max_steps) for t in trials}
        self.workers, self.prune = max(1, workers), bool(prune)

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
            self._print(
                f"[{len(self.seen)}/{len(self.ids)}] {trial_id} {s.status}{steps} after {s.steps_run} steps; "
                f"{status}; {self._best_text()}",
                now,
            )
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
        """(steps done and left, time elapsed and the ETA)."""
        works, started = [], []  # started: the trials of this run so far
        for trial_id in self.ids:
            if (s := self.index.summaries.get(trial_id)) is not None:
                timed = (s.timed.timed_steps, s.timed.timed_seconds) if s.timed else ()
                works.append(TrialWork(s.batch_size, s.max_steps, s.steps_run, *timed, finished=True))
            elif trial_id in self.planned:
                live = self.store.live_progress(trial_id)
                works.append(
                    TrialWork(
                        *self.planned[trial_id], *((live.step, live.timed_steps, live.timed_seconds) if live else ())
                    )
                )
            if trial_id in self.planned and works[-1].step:
                started.append(works[-1])
        best = {
            b: s
            for b in {s.batch_size for s in self.index.summaries.values()}
            if (s := self.index.best_steps(b)) is not None
        }
        start_s = start_up_seconds([c for i in self.ids if (c := self._start_up(i)) is not None])
        if start_s is None:  # none finished yet: the workers' time not spent on timed steps, per trial started
            busy = (time.monotonic() - self.t0) * self.workers - sum(t.timed_seconds for t in started)
            start_s = max(0.0, busy) / max(1, len(started))
        e = estimate(works, self.workers, start_s, best, self.prune)
        known = len(works) == len(self.ids)  # every unfinished trial planned
        if e.seconds_at_most == 0:
            eta = "done"
        elif e.seconds_at_most is None or not known:
            eta = "?"
        elif e.seconds_left is None:  # no steps-to-target measured yet
            eta = f"? (at most {duration(e.seconds_at_most)})"
        else:
            eta = _likely_and_bound(e.seconds_left, e.seconds_at_most, duration)
        left = _likely_and_bound(e.steps_left, e.steps_at_most, lambda n: f"{n:,}") if known else "?"
        return (
            f"{e.steps_done:,} steps done, {left} left",
            f"{duration(time.monotonic() - self.t0)} elapsed; ETA {eta}",
        )

    def _start_up(self, trial_id: str) -> tuple[str, float, float] | None:
        """A trial finished in this run: (its worker, its start time, its seconds not spent on timed steps), from
        its last attempt's start to its record's writing; None for others."""
        if trial_id in self._initial or (s := self.index.summaries.get(trial_id)) is None:
            return None
        if trial_id not in self._start_ups:
            try:
                attempt = self.store.attempts(trial_id)[-1]
                span = os.path.getmtime(self.store.record_path(trial_id)) - attempt["time"]
            except (OSError, ValueError, IndexError, KeyError):
                self._start_ups[trial_id] = None
            else:
                timed = s.timed.timed_seconds if s.timed else 0.0
                self._start_ups[trial_id] = (attempt["worker"], attempt["time"], max(0.0, span - timed))
        return self._start_ups[trial_id]

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
        head.add_row(
            ProgressBar(total=max(total, 1), completed=done, width=16),
            Text(f"{done}/{total} trials ({pruned} pruned); {eta}", no_wrap=True, overflow="ellipsis"),
        )
        view = Group(head, *(Text(line, no_wrap=True, overflow="ellipsis") for line in (steps, self._best_text())))
        if self._live is None:
            self._live = Live(
                view,
                console=Console(file=self.stream),
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        self._live.update(view, refresh=True)
