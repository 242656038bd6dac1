"""The training loop: a pack of trials, from their TrialConfigs to their
TrialRecords.

`run_trials` advances the pack (harness.engine.step) from one evaluation to
the next, evaluates it, and for each trial still running: observes the row
(diverged? crossed the target?), prunes it when it can no longer beat the
best steps-to-target, and keeps its snapshot and checkpoint
(harness.engine.resume). A trial that stops stops counting; the others go on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax

from harness.engine import algorithms, environment, noise_scale, resume
from harness.engine.batch_schedule import make_engine, phase_configs
from harness.engine.data import train_subset
from harness.engine.evaluation import evaluation_steps
from harness.engine.step import Engine, TrainState
from harness.engine.targets import check_batch_size, check_target, crossed
from harness.engine.trial import TrialConfig, TrialRecord
from harness.engine.workloads import Workload, get_workload
from harness.errors import UserError


class Stopped(Exception):
    """run_trials stopped at an evaluation because `should_stop()` said so,
    after checkpointing there (the trials that have a checkpoint folder)."""


@dataclasses.dataclass(frozen=True)
class TrialRun:
    """One trial to run: its config, where it keeps its checkpoints and its
    snapshots (`snapshot_steps`), and `on_eval(row)`, which sees every row of
    its record once per run, in order: first the rows restored from its
    checkpoint (or its first evaluation), then each evaluation, final keys
    included."""

    config: TrialConfig
    checkpoint_dir: str | None = None
    snapshot_dir: str | None = None
    on_eval: Callable[[dict], None] | None = None


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a sweep asks of a pack: `prune_above()`, the best steps-to-target
    found at this batch size so far (or None), and with `pack_bounds` the
    pack's own crossings too; `should_stop()`, checked at every evaluation;
    `on_record(i, record)`, called as soon as trial i stops."""

    prune_above: Callable[[], int | None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_record: Callable[[int, TrialRecord], None] | None = None
    pack_bounds: bool = True


def run_trial(run: TrialConfig | TrialRun, hooks: Hooks = Hooks(), *, data_dir=None) -> TrialRecord:
    """Train one trial (`run_trials` with a pack of one)."""
    return run_trials([run if isinstance(run, TrialRun) else TrialRun(run)], hooks, data_dir=data_dir)[0]


def run_trials(runs: Sequence[TrialRun], hooks: Hooks = Hooks(), *, data_dir=None) -> list[TrialRecord]:
    """Train a pack of trials (one `pack_key`) as one program, each until its
    target, its budget, divergence or pruning; their records, in order.

    Status (Shallue et al. 2019, App. B): `complete` when the validation metric
    crossed the target, `diverged` when the train loss became non-finite or
    exceeded `divergence_factor` times the initial validation loss,
    `incomplete` when the budget ran out, `pruned` when the trial has not
    crossed by the best steps-to-target at its batch size. When
    `should_stop()` is true at an evaluation, the running trials checkpoint
    there and Stopped is raised. Raises resume.PackMismatch when the trials'
    checkpoints resume at different steps."""
    engine, workload, target = _prepare(runs, data_dir)
    config, pack = engine.config, len(runs)
    state, trials = _start(engine, runs, target, workload.direction)
    for t in trials:
        if not t.running():
            t.finish(workload, pack, hooks)
    at = last_saved = trials[0].rows[-1]["step"]
    for stop in sorted({*evaluation_steps(config, config.eval_every or workload.eval_every), *config.snapshot_steps}):
        running = [t for t in trials if t.running()]
        if not running:
            break
        if stop <= at:
            continue
        state, losses, bad_steps = engine.advance(state, at, stop)
        at, evaluations = stop, engine.evaluate(state)
        stopping = hooks.should_stop is not None and hooks.should_stop()
        save = stopping or stop - last_saved >= (config.checkpoint_every or math.inf)
        for t in running:
            t.observe(
                _row(engine, t, stop, float(losses[t.index]), evaluations[t.index], _gns_row(state, t.index)),
                bad_steps[t.index],
            )
        if config.batch_auto is not None:
            engine.adapt(trials[0].rows)
        best = _prune_bound(hooks, trials)
        for t in running:
            t.prune(best)
            t.keep(state, save, engine.data_state(stop))
            if not t.running():
                t.finish(workload, pack, hooks)
        last_saved = stop if save else last_saved
        if stopping:
            raise Stopped(stop)
    for t in trials:
        if t.record is None:
            t.finish(workload, pack, hooks)
    return [t.record for t in trials]


@dataclasses.dataclass
class TrialProgress:
    """One trial of a pack as its record grows; decides its status."""

    run: TrialRun
    index: int  # in the pack
    target: float
    direction: str
    rows: list[dict]
    t0: float  # perf_counter at its start, less the training time before a resume
    status: str | None = None
    steps_to_target: int | None = None
    record: TrialRecord | None = None  # once it has stopped

    def running(self) -> bool:
        config = self.run.config
        if config.example_budget is not None and self.rows and self.rows[-1]["examples"] >= config.example_budget:
            return False
        return self.status is None or (self.status == "complete" and not config.stop_at_target)

    def observe(self, row: dict, bad_step: int | None) -> None:
        """A new evaluation: marked diverged when a loss since the last one was
        not finite or the train loss exceeds `divergence_factor` times the
        initial validation loss; then decided and shown."""
        if bad_step is not None or not row["train_loss"] < self.run.config.divergence_factor * self.rows[0]["val_loss"]:
            row["diverged_at"] = bad_step or row["step"]
        self.rows.append(row)
        self.decide(row)

    def decide(self, row: dict) -> None:
        """The status that a row implies: the one place status is decided
        (for restored rows as for new ones)."""
        if "diverged_at" in row:
            self.status = "diverged"
        elif self.steps_to_target is None and crossed(row["val_metric"], self.target, self.direction):
            self.status, self.steps_to_target = "complete", row["step"]

    def prune(self, best: int | None) -> None:
        """Pruned when it has not crossed by step `best`, a steps-to-target already found."""
        if self.status is None and best is not None and self.rows[-1]["step"] >= best:
            self.status = "pruned"

    def keep(self, state: TrainState, save: bool, data: dict) -> None:
        """Show the latest row to `on_eval`; keep a snapshot at a step of
        `snapshot_steps`, and a checkpoint when `save` and still running,
        with `data`, where the data order stands (Engine.data_state)."""
        row, run = self.rows[-1], self.run
        if run.on_eval:
            run.on_eval(row)
        if row["step"] in run.config.snapshot_steps:
            resume.save_snapshot(run.snapshot_dir, row["step"], Engine.trial(state, self.index), row)
        if save and self.running() and run.checkpoint_dir and run.config.checkpoint_every:
            resume.save_checkpoint(
                run.checkpoint_dir,
                row["step"],
                Engine.trial(state, self.index),
                self.rows,
                time.perf_counter() - self.t0,
                data,
            )

    def finish(self, workload: Workload, pack: int, hooks: Hooks) -> None:
        """Its final record (`run` also says how many trials shared its program)."""
        final = self.rows[-1]
        self.record = TrialRecord(
            config=self.run.config.to_dict(),
            status=self.status or "incomplete",
            steps_to_target=self.steps_to_target,
            metric=workload.metric,
            direction=workload.direction,
            target=self.target,
            measurements=self.rows,
            final=final,
            steps_run=final["step"],
            wall_time=time.perf_counter() - self.t0,
            run={**environment.run_metadata(), "pack": pack},
        )
        if hooks.on_record:
            hooks.on_record(self.index, self.record)


def _prepare(runs: Sequence[TrialRun], data_dir) -> tuple[Engine, Workload, float]:
    """Validate the pack, load its data and build its engine; the target too."""
    workload, data, target = check_run([run.config for run in runs], data_dir)
    if any(run.config.snapshot_steps and run.snapshot_dir is None for run in runs):
        raise UserError("snapshot_steps needs a snapshot folder to keep the snapshots in")
    return make_engine(workload, data, [run.config for run in runs]), workload, target


def check_run(configs: Sequence[TrialConfig], data_dir) -> tuple[Workload, object, float]:
    """Everything a pack of trials is checked for before it trains (the
    configs, then against the workload, its data and the devices, every phase
    of a batch schedule); its workload, training data and target."""
    workload = get_workload(configs[0].workload)
    for config in configs:
        config.validate()
    data = train_subset(workload.load_data(data_dir), configs[0].train_examples)
    for config in phase_configs(configs[0]):
        target = check_trial(config, workload, len(data.train_x))
    return workload, data, target


def _start(engine: Engine, runs, target: float, direction: str) -> tuple[TrainState, list[TrialProgress]]:
    """The pack's state and its trials, resumed or new (harness.engine.resume);
    a trial with no rows yet gets its first evaluation. Restored rows are
    decided and shown to `on_eval` again."""
    state, saved = resume.restore(engine, runs)
    trials = [
        TrialProgress(
            run,
            i,
            target,
            direction,
            rows=meta["rows"] if meta else [],
            t0=time.perf_counter() - (meta["elapsed"] if meta else 0.0),
        )
        for i, (run, meta) in enumerate(zip(runs, saved))
    ]
    if runs[0].config.batch_auto is not None and trials[0].rows:  # the changes made before, and at, the checkpoint
        engine.replay(trials[0].rows)
        engine.adapt(trials[0].rows)
    engine.seek(next((meta.get("data") for meta in saved if meta), None))  # where a streamed trial reads on
    evaluations = engine.evaluate(state) if any(not t.rows for t in trials) else None
    for t in trials:
        if not t.rows:
            t.rows.append(_row(engine, t, t.run.config.init_step, None, evaluations[t.index], {}))
        for row in t.rows:
            t.decide(row)
            if t.run.on_eval:
                t.run.on_eval(row)
    return state, trials


def _prune_bound(hooks: Hooks, trials) -> int | None:
    """The steps a running trial of the pack must beat: the sweep's best at this
    batch size and, with `hooks.pack_bounds`, the pack's own crossings; None without pruning."""
    if hooks.prune_above is None:
        return None
    bounds = [hooks.prune_above(), *(t.steps_to_target for t in trials if hooks.pack_bounds)]
    return min((b for b in bounds if b is not None), default=None)


def _row(
    engine: Engine,
    trial: TrialProgress,
    step: int,
    train_loss: float | None,
    evaluation: tuple[float, float],
    gns: dict,
) -> dict:
    """An evaluation row of a trial's measurements, built in this one place;
    with a batch schedule, it says the batch size of its last step."""
    config, (val_loss, metric) = trial.run.config, evaluation
    scheduled = {"batch_size": engine.batch_size_at(step)} if config.batch_schedule or config.batch_auto else {}
    return dict(
        step=step,
        examples=engine.examples_at(step),
        rounds=algorithms.communication_rounds(config, step),
        train_loss=train_loss,
        val_loss=val_loss,
        val_metric=metric,
        wall_time=time.perf_counter() - trial.t0,
        **scheduled,
        **gns,
    )


def _gns_row(state: TrainState, i: int) -> dict:
    """Trial i's online noise-scale estimates (the noise scale runs with one
    model copy: TrialConfig.validate)."""
    if state.gns is None:
        return {}
    gns = jax.tree.map(lambda a: a[i, 0], state.gns)
    g2, trace = (float(v) for v in noise_scale.gns_estimates(gns))
    return dict(gns_g2=g2, gns_trace=trace, gns_b_simple=float(noise_scale.b_simple(gns)))


def check_trial(config: TrialConfig, workload: Workload, train_size: int) -> float:
    """Validate what depends on the workload, its data and the devices
    (TrialConfig.validate checks the rest); returns the target."""
    target = workload.target if config.target is None else config.target
    check_target(workload.metric, target)
    check_batch_size(config.batch_size, train_size)
    if config.gns and config.microbatches < 2 and jax.device_count() < 2:
        raise UserError(
            "gns needs two gradient estimates at the same parameters: microbatches >= 2, "
            "or several devices (per-device vs all-reduced gradients)"
        )
    per_device = config.batch_size // config.replicas // config.microbatches
    if per_device % jax.device_count():
        split = f"replicas {config.replicas} / " if config.replicas > 1 else ""
        raise UserError(
            f"batch_size {config.batch_size} / {split}microbatches {config.microbatches} = {per_device} "
            f"is not divisible by the device count {jax.device_count()}; allowed: multiples of "
            f"{jax.device_count() * config.replicas * config.microbatches}"
        )
    return target
