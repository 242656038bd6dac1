"""The sweep engine: run every trial of a spec once, in parallel, resumably.

`run_sweep` validates the spec, opens the result store (harness.store), sets
corrupt records aside and hands the unfinished trials to an executor
(harness.executors), whose workers all run `work`: claim a trial, run it with
its checkpoint folder (an interrupted trial resumes there) and the exact
pruning bound, write its record, repeat until every trial has a record.

Exact pruning (GUIDE §2): steps-to-result at B is the minimum over complete
trials of their first crossing, so a trial that has not crossed the target by
step t >= the best crossing already found at B can no longer change it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from harness.progress import Progress
from harness.spec import Trial, load_spec
from harness.store import DEFAULT_LEASE_S, BestSoFar, RecordIndex, Store, worker_id


class LeaseLost(Exception):
    """Another worker took this trial over (this one stalled past its lease)."""


def work(folder, trials: list[Trial], prune: bool, data_dir=None, lease_s: float = DEFAULT_LEASE_S) -> None:
    """A worker: run the unfinished trials of `trials` that no live worker
    holds, until all of them have records (waiting for those held elsewhere:
    their worker finishes them, or dies and its lease lapses)."""
    store = Store(folder)
    index = RecordIndex(store)
    remaining = [t for t in trials if not store.is_done(t.id)]
    while remaining:
        ordered = promising_first(remaining, index.refresh()) if prune else remaining
        if not any(try_trial(store, t, prune, data_dir, lease_s, index) for t in ordered):
            time.sleep(min(lease_s / 8, 1.0))
        remaining = [t for t in remaining if not store.is_done(t.id)]


def promising_first(trials: list[Trial], index: RecordIndex) -> list[Trial]:
    """Trials by batch size; at each one, first the metaparameters that were
    best at the nearest smaller batch size already measured (the best
    metaparameters drift smoothly with B: Shallue et al. 2019, Sec. 4.6), so
    that an early crossing prunes the others sooner. Order never changes the
    results, only how much pruning saves."""
    sizes = sorted({s.batch_size for s in index.summaries.values()})

    def hint(batch_size):
        below = [b for b in sizes if b < batch_size and index.best_trial(b)]
        return _point(index.best_trial(below[-1])) if below else None

    hints = {b: hint(b) for b in {t.config.batch_size for t in trials}}
    return sorted(trials, key=lambda t: (t.config.batch_size, _point(t.id) != hints[t.config.batch_size]))


def _point(trial_id: str) -> str:
    """The metaparameters' hash in a trial id (harness.spec: b{B}-{hash}-s{seed})."""
    return trial_id.split("-")[1]


def try_trial(store: Store, trial: Trial, prune: bool, data_dir=None, lease_s: float = DEFAULT_LEASE_S,
              index: RecordIndex | None = None) -> bool:
    """Claim and run `trial` unless a live worker holds it; whether it was claimed."""
    lease = store.try_claim(trial.id, worker_id(), lease_s)
    if lease is None:
        return False
    with lease:
        if not store.is_done(trial.id):  # finished by another worker since we looked
            bound = BestSoFar(index or RecordIndex(store), trial.config.batch_size) if prune else None
            _run_claimed(store, trial, lease, bound, data_dir)
    return True


def _run_claimed(store: Store, trial: Trial, lease, prune_above, data_dir) -> None:
    from harness.train import run_trial

    def on_eval(row):
        if not lease.held():
            raise LeaseLost(trial.id)

    store.log_attempt(trial.id, lease.worker)
    try:
        record = run_trial(trial.config, data_dir=data_dir, checkpoint_dir=str(store.checkpoint_dir(trial.id)),
                           prune_above=prune_above, on_eval=on_eval)
    except LeaseLost:
        return
    except Exception:
        # A worker that stalled past its lease may find its trial's folder
        # tidied by the worker that took over (e.g. mid-checkpoint): not an error.
        if not lease.held():
            return
        raise
    store.write_record(trial.id, record.to_dict())


@dataclass(frozen=True)
class SweepOutcome:
    """What a finished sweep reports: trial counts, steps executed, and the
    compute pruning saved. `steps_saved_at_most` is an upper bound: each pruned
    trial counted as if it had run to its budget, though it might have reached
    the target (and stopped) earlier."""

    folder: Path
    trials: int
    pending_at_start: int
    by_status: dict
    steps_run: int
    steps_saved_at_most: int
    wall_time: float
    extended: list


def run_sweep(spec_path, out=None, *, workers: int | None = None, executor: str = "local", address=None,
              data_dir=None, lease_s: float = DEFAULT_LEASE_S, progress=None) -> SweepOutcome:
    """Run (or resume, or extend) the sweep of a spec file in folder `out`
    (default runs/<spec name>), showing progress on the stream `progress`."""
    from harness import executors

    t0 = time.perf_counter()
    spec = load_spec(spec_path, data_dir)
    store = Store(out or Path("runs") / Path(spec_path).stem)
    extended = store.open(spec, Path(spec_path).read_text())
    trials = spec.trials()
    store.set_aside_corrupt(t.id for t in trials)
    store.remove_stale_checkpoints(t.id for t in trials)
    pending = [t for t in trials if not store.is_done(t.id)]
    watcher = Progress(store.folder, [t.id for t in trials], progress) if progress else None
    kwargs = dict(folder=str(store.folder), trials=pending, prune=spec.prune, data_dir=data_dir, lease_s=lease_s,
                  progress=watcher)
    if pending:
        if executor == "ray":
            executors.run_ray(address=address, **kwargs)
        else:
            executors.run_local(workers=workers, **kwargs)
    summaries = RecordIndex(store).refresh().summaries
    mine = [summaries[t.id] for t in trials if t.id in summaries]
    by_status = {}
    for s in mine:
        by_status[s.status] = by_status.get(s.status, 0) + 1
    return SweepOutcome(store.folder, len(trials), len(pending), by_status, sum(s.steps_run for s in mine),
                        sum(s.max_steps - s.steps_run for s in mine if s.status == "pruned"),
                        time.perf_counter() - t0, extended)
