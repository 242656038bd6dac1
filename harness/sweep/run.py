"""Run a sweep: every trial of a spec once, in parallel, resumably.

`run_sweep` validates the spec, opens the result store (harness.sweep.store),
sets corrupt records aside and hands the unfinished trials to an executor
(harness.sweep.executors), whose workers all run harness.sweep.worker.work
until every trial has a record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from harness.sweep import executors, slurm
from harness.sweep.leases import DEFAULT_LEASE_S
from harness.sweep.progress import Progress
from harness.sweep.rounds import run_rounds
from harness.sweep.spec import load_spec
from harness.sweep.store import PruneRule, RecordIndex, Store
from harness.sweep.tracking import tracking


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


def run_sweep(
    spec,
    out=None,
    *,
    overrides=(),
    workers: int | None = None,
    executor: str = "local",
    address=None,
    gpus: str | None = None,
    data_dir=None,
    lease_s: float = DEFAULT_LEASE_S,
    progress=None,
    track: str | None = None,
    b_crit_interval=None,
    slurm_options: slurm.SlurmOptions | None = None,
) -> SweepOutcome:
    """Run (or resume, or extend) a sweep in folder `out` (default
    runs/<spec file name>, or runs/<its name> for a dict), showing progress on
    the stream `progress`. `spec` is a spec file's path or its content as a
    dict, with `overrides` ("dotted.key=VALUE", harness.sweep.spec.apply_overrides)
    set on top; the folder stores the resulting spec, and a spec that differs
    from the stored one other than by extending it is refused. `gpus`: the
    local workers' GPUs (harness.sweep.executors.visible_gpus). `track`:
    "mlflow" or "wandb" tracks every trial there (harness.sweep.tracking).
    `executor`: "local", "ray" (at `address`) or "slurm" (jobs submitted with
    `slurm_options`: harness.sweep.slurm; `workers` of them running at once).
    An adaptive search runs in rounds (harness.sweep.rounds), its B_crit stop
    rule calling `b_crit_interval(folder) -> (lo, hi) | None` (the fit is in
    analysis, a layer above: the caller passes it in)."""
    t0 = time.perf_counter()
    default = Path("runs") / (spec.get("name", "spec") if isinstance(spec, dict) else Path(spec).stem)
    spec = load_spec(spec, data_dir, overrides)
    if executor == "local" and gpus is not None:
        executors.local_devices(gpus)  # a bad --gpus is refused before the folder exists
    if executor == "slurm":
        slurm_options = slurm_options or slurm.SlurmOptions()
        slurm.check_options(slurm_options)  # bad options are refused before anything is submitted
    store = Store(out or default)
    extended = store.open(spec, spec.text)
    tracked = tracking(track, spec.normalized.get("name") or store.folder.name, store.folder)

    def execute(trials) -> int:
        store.set_aside_corrupt(t.id for t in trials)
        store.remove_stale_checkpoints(t.id for t in trials)
        pending = [t for t in trials if not store.is_done(t.id)]
        # `trials` is all of one adaptive round: "earlier_rounds" leaves the round's own records out of the bound
        own = frozenset(t.id for t in trials) if spec.prune == "earlier_rounds" else frozenset()
        prune = PruneRule(own) if spec.prune else None
        watcher = Progress(store.folder, [t.id for t in trials], progress) if progress else None
        kwargs = dict(
            folder=str(store.folder),
            trials=pending,
            prune=prune,
            pack=spec.pack,
            data_dir=data_dir,
            lease_s=lease_s,
            progress=watcher,
            track=tracked,
        )
        if pending:
            if executor == "ray":
                executors.run_ray(address=address, **kwargs)
            elif executor == "slurm":
                slurm.run_slurm(options=slurm_options, workers=workers, **kwargs)
            else:
                executors.run_local(workers=workers, gpus=gpus, **kwargs)
        return len(pending)

    if spec.search and spec.search["kind"] == "adaptive":
        searched = run_rounds(
            spec, store, execute, b_crit_interval, say=lambda line: print(line, file=progress) if progress else None
        )
        trials, pending = searched.trials, searched.pending_at_start
    else:
        trials = spec.trials()
        pending = execute(trials)
    summaries = RecordIndex(store).refresh().summaries
    mine = [summaries[t.id] for t in trials if t.id in summaries]
    by_status = {}
    for s in mine:
        by_status[s.status] = by_status.get(s.status, 0) + 1
    return SweepOutcome(
        store.folder,
        len(trials),
        pending,
        by_status,
        sum(s.steps_run for s in mine),
        sum(s.max_steps - s.steps_run for s in mine if s.status == "pruned"),
        time.perf_counter() - t0,
        extended,
    )
