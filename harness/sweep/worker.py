"""A sweep worker: claim unfinished trials, run them, write their records, repeat.

Every worker of a sweep (local processes, Ray tasks, other machines sharing
the folder) runs `work`. A trial is claimed with a lease (harness.sweep.leases)
so it runs once; it runs with its checkpoint folder, so an interrupted trial
resumes there; and with the exact pruning bound: steps-to-result at B is the
minimum over complete trials of their first crossing (Shallue et al. 2019,
Sec. 3.1), so a trial that has not crossed the target by step t >= the best
crossing already found at B can no longer change it, and stops.

With the spec's `pack = P`, a worker claims up to P trials that share one
program (harness.engine.step.pack_key) and runs them as one pack; `auto`
picks P per batch size (harness.sweep.packing).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from harness.sweep.leases import DEFAULT_LEASE_S, worker_id
from harness.sweep.packing import PackSize, packs
from harness.sweep.spec import PlannedTrial
from harness.sweep.store import BestSoFar, PruneRule, RecordIndex, Store
from harness.sweep.tracking import Tracking, open_run
from harness.sweep.trial_log import TrialLog, tensorboard_available


class LeaseLost(Exception):
    """Another worker took this trial over (this one stalled past its lease)."""


def work(
    folder,
    trials: list[PlannedTrial],
    prune: PruneRule | None,
    data_dir=None,
    lease_s: float = DEFAULT_LEASE_S,
    should_stop: Callable[[], bool] = lambda: False,
    pack: int | str = 1,
    track: Tracking | None = None,
) -> None:
    """A worker: run the unfinished trials of `trials` that no live worker
    holds, `pack` at a time (an int, or "auto"), until all of them have
    records (waiting for those held elsewhere: their worker finishes them, or
    dies and its lease lapses), or until `should_stop()`: then the trials in
    flight are checkpointed at their next evaluation and left for a later run
    to resume. With `track`, each trial is also a run there (harness.sweep.tracking)."""
    store = Store(folder)
    index = RecordIndex(store)
    size = PackSize(pack, data_dir)
    remaining = [t for t in trials if not store.is_done(t.id)]
    while remaining and not should_stop():
        ordered = promising_first(remaining, index.refresh()) if prune else remaining
        if not any(
            not should_stop() and try_pack(store, group, prune, data_dir, lease_s, index, should_stop, track)
            for group in packs(ordered, size)
        ):
            time.sleep(min(lease_s / 8, 1.0))
        remaining = [t for t in remaining if not store.is_done(t.id)]


def promising_first(trials: list[PlannedTrial], index: RecordIndex) -> list[PlannedTrial]:
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


def try_pack(
    store: Store,
    trials: list[PlannedTrial],
    prune: PruneRule | None,
    data_dir=None,
    lease_s: float = DEFAULT_LEASE_S,
    index: RecordIndex | None = None,
    should_stop: Callable[[], bool] | None = None,
    track: Tracking | None = None,
) -> bool:
    """Claim the trials of `trials` (one pack) that no live worker holds and
    run them as one pack; whether any was claimed."""
    leases = {t.id: lease for t in trials if (lease := store.try_claim(t.id, worker_id(), lease_s)) is not None}
    if not leases:
        return False
    with contextlib.ExitStack() as held:
        for lease in leases.values():
            held.enter_context(lease)
        # Finished by another worker since we looked?
        claimed = [t for t in trials if t.id in leases and not store.is_done(t.id)]
        if claimed:
            bound = BestSoFar(index or RecordIndex(store), claimed[0].config.batch_size, prune) if prune else None
            _run_claimed(store, claimed, leases, bound, data_dir, should_stop, track)
    return True


def _run_claimed(
    store: Store, trials: list[PlannedTrial], leases: dict, prune_above, data_dir, should_stop, track=None
) -> None:
    from harness.engine.environment import run_metadata
    from harness.engine.loop import Hooks, Stopped, TrialRun, run_trials
    from harness.engine.resume import PackMismatch

    for trial in trials:
        store.log_attempt(trial.id, leases[trial.id].worker)
    store.write_metadata(run_metadata())
    tracked = {}
    try:
        with contextlib.ExitStack() as logs:

            def on_eval(trial):
                config = trial.config.to_dict()
                log = logs.enter_context(
                    TrialLog(
                        config,
                        store.measurements_path(trial.id),
                        store.tensorboard_dir(trial.id) if tensorboard_available() else None,
                    )
                )
                if track:
                    tracked[trial.id] = logs.enter_context(open_run(track, trial.id, config))

                def logged(row):
                    if not leases[trial.id].held():
                        raise LeaseLost(trial.id)
                    log(row)
                    if track:
                        tracked[trial.id](row)

                return logged

            def on_record(i, record):
                record = record.to_dict()
                store.write_record(trials[i].id, record)
                if track:
                    tracked[trials[i].id].finish(record)

            runs = [
                TrialRun(t.config, str(store.checkpoint_dir(t.id)), str(store.snapshot_dir(t.id)), on_eval(t))
                for t in trials
            ]
            # A pack's trials bound each other unless the rule leaves them out (an adaptive round's own).
            own = prune_above is not None and prune_above.rule.not_counted.intersection(t.id for t in trials)
            hooks = Hooks(prune_above, should_stop, on_record=on_record, pack_bounds=not own)
            run_trials(runs, hooks, data_dir=data_dir)
    except PackMismatch:  # checkpoints of different steps: one at a time
        for trial in trials:
            _run_claimed(store, [trial], leases, prune_above, data_dir, should_stop, track)
    except (LeaseLost, Stopped):
        return
    except Exception:
        # A worker that stalled past its lease may find its trials' folders
        # tidied by the worker that took over (e.g. mid-checkpoint): not an error.
        if not all(lease.held() for lease in leases.values()):
            return
        raise
