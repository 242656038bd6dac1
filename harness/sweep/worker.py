"""A sweep worker: claim an unfinished trial, run it, write its record, repeat.

Every worker of a sweep (local processes, Ray tasks, other machines sharing
the folder) runs `work`. A trial is claimed with a lease (harness.sweep.leases)
so it runs once; it runs with its checkpoint folder, so an interrupted trial
resumes there; and with the exact pruning bound: steps-to-result at B is the
minimum over complete trials of their first crossing (Shallue et al. 2019,
Sec. 3.1), so a trial that has not crossed the target by step t >= the best
crossing already found at B can no longer change it, and stops.
"""
from __future__ import annotations

import time
from typing import Callable

from harness.sweep.leases import DEFAULT_LEASE_S, worker_id
from harness.sweep.spec import Trial
from harness.sweep.store import BestSoFar, RecordIndex, Store
from harness.sweep.trial_log import TrialLog, tensorboard_available


class LeaseLost(Exception):
    """Another worker took this trial over (this one stalled past its lease)."""


def work(folder, trials: list[Trial], prune: bool, data_dir=None, lease_s: float = DEFAULT_LEASE_S,
         should_stop: Callable[[], bool] = lambda: False) -> None:
    """A worker: run the unfinished trials of `trials` that no live worker
    holds, until all of them have records (waiting for those held elsewhere:
    their worker finishes them, or dies and its lease lapses), or until
    `should_stop()`: then the trial in flight is checkpointed at its next
    evaluation and left for a later run to resume."""
    store = Store(folder)
    index = RecordIndex(store)
    remaining = [t for t in trials if not store.is_done(t.id)]
    while remaining and not should_stop():
        ordered = promising_first(remaining, index.refresh()) if prune else remaining
        if not any(not should_stop() and try_trial(store, t, prune, data_dir, lease_s, index, should_stop)
                   for t in ordered):
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
    """The metaparameters' hash in a trial id (harness.sweep.spec: b{B}-{hash}-s{seed})."""
    return trial_id.split("-")[1]


def try_trial(store: Store, trial: Trial, prune: bool, data_dir=None, lease_s: float = DEFAULT_LEASE_S,
              index: RecordIndex | None = None, should_stop: Callable[[], bool] | None = None) -> bool:
    """Claim and run `trial` unless a live worker holds it; whether it was claimed."""
    lease = store.try_claim(trial.id, worker_id(), lease_s)
    if lease is None:
        return False
    with lease:
        if not store.is_done(trial.id):  # finished by another worker since we looked
            bound = BestSoFar(index or RecordIndex(store), trial.config.batch_size) if prune else None
            _run_claimed(store, trial, lease, bound, data_dir, should_stop)
    return True


def _run_claimed(store: Store, trial: Trial, lease, prune_above, data_dir, should_stop) -> None:
    from harness.engine.environment import run_metadata
    from harness.engine.train import Stopped, run_trial

    store.log_attempt(trial.id, lease.worker)
    store.write_metadata(run_metadata())
    board = store.tensorboard_dir(trial.id) if tensorboard_available() else None
    try:
        with TrialLog(trial.config.to_dict(), store.measurements_path(trial.id), board) as log:
            def on_eval(row):
                if not lease.held():
                    raise LeaseLost(trial.id)
                log(row)

            record = run_trial(trial.config, data_dir=data_dir, checkpoint_dir=str(store.checkpoint_dir(trial.id)),
                               prune_above=prune_above, on_eval=on_eval, should_stop=should_stop,
                               snapshot_dir=str(store.snapshot_dir(trial.id)))
    except (LeaseLost, Stopped):
        return
    except Exception:
        # A worker that stalled past its lease may find its trial's folder
        # tidied by the worker that took over (e.g. mid-checkpoint): not an error.
        if not lease.held():
            return
        raise
    store.write_record(trial.id, record.to_dict())
