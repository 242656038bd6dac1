"""The training engine: one trial, from a TrialConfig to a TrialRecord.

The dataset lives on the device(s); every step draws its batch there from a
per-epoch permutation that depends only on (seed, epoch), so a trial is
deterministic and resumes bit-identically. Steps between two evaluations run
inside one compiled `fori_loop`, so small batches are not dominated by Python
dispatch. The global batch is sharded over a 1-D device mesh ('data') and jit
partitions the step: the gradient is the mean over the whole global batch, so
one device and eight give the same update (no pmean to get wrong).

The model state has a leading axis of model copies: the replicas of one trial
(one for mini-batch SGD; K for local SGD and SMA, harness.engine.algorithms).
Each step vmaps one local update over the copies, each on its own part of the
global batch, then couples them (parameter averaging, or SMA's central model).

Outside that, every state has a leading axis of packed trials: P trials that
share one program (`pack_key`: they differ only in traced metaparameters, so
they share the batch size, seed, initial model and data order) step as one,
each with its own metaparameters, measurements and record. One trial is a
pack of one (XLA drops the size-1 axis); a pack pays where one small trial
leaves an accelerator idle (benchmarks/packing.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from harness.engine import algorithms, checkpoint, environment, noise_scale
from harness.engine.evaluation import evaluation_steps
from harness.engine.losses import LOSSES, METRIC_FUNCTIONS
from harness.engine.optimizers import TRACED, hyperparameters, make_optimizer
from harness.engine.targets import check_batch_size, check_target, crossed
from harness.engine.trial import TrialConfig, TrialRecord
from harness.engine.workloads import Workload, get_workload
from harness.errors import UserError

EVAL_BATCH = 1024


class Stopped(Exception):
    """run_trial stopped at an evaluation because `should_stop()` said so,
    after checkpointing there (when it has a checkpoint folder)."""


class TrainState(NamedTuple):
    # Per copy (a leading axis of model copies on every leaf):
    params: dict
    model_state: dict  # e.g. batch-norm statistics; empty for most models
    opt_state: optax.OptState  # each replica keeps its own (Lin et al. 2020, Alg. 1)
    gns: noise_scale.GnsState | None
    hparams: dict  # traced metaparameters (harness.engine.optimizers.hyperparameters) and label smoothing
    # Shared by the copies:
    step: jax.Array  # steps taken
    center: dict | None  # SMA's central model z and z_prev (harness.engine.algorithms)


# vmap axes of a TrainState: the per-copy fields are mapped over their leading axis.
COPY_AXES = TrainState(0, 0, 0, 0, 0, None, None)

# TrialConfig fields that packed trials may differ in: the traced ones.
PACKED_FIELDS = ("learning_rate", "lr_scaling", "reference_batch_size", "label_smoothing", *TRACED)


def pack_key(config: TrialConfig) -> str:
    """Trials with equal keys share one compiled program and can be packed."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in PACKED_FIELDS}, sort_keys=True)


class Engine:
    """The compiled functions and device-resident data of a pack of trials
    (one config, or several with one `pack_key`); `config` is the first."""

    def __init__(self, workload: Workload, data, config: TrialConfig | Sequence[TrialConfig]):
        self.configs = [config] if isinstance(config, TrialConfig) else list(config)
        self.config = config = self.configs[0]
        if len({pack_key(c) for c in self.configs}) > 1:
            raise ValueError(f"trials that differ beyond {', '.join(PACKED_FIELDS)} cannot be packed")
        self.mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        replicated = NamedSharding(self.mesh, P())
        self.train = jax.device_put((data.train_x, data.train_y), replicated)
        self.val = _eval_chunks(data.val_x, data.val_y, jax.device_count(), NamedSharding(self.mesh, P(None, "data")))
        self.steps_per_epoch = len(data.train_x) // config.batch_size
        self.local_batch = config.batch_size // config.replicas
        self.model = workload.make_model(data, **config.workload_options)
        self.loss_fn, self.metric_fn = LOSSES[workload.loss], METRIC_FUNCTIONS[workload.metric]
        self.example = data.train_x[:1]
        n, key = len(data.train_x), jax.random.key(config.seed)
        # The order of epoch e depends on (seed, e) alone; one epoch's is kept, as evaluations split epochs.
        self.epoch_order = functools.lru_cache(maxsize=1)(
            jax.jit(lambda epoch: jax.random.permutation(jax.random.fold_in(key, epoch), n)))
        # Every trial of the pack steps on the same batch (the data are not mapped).
        self._steps = jax.jit(jax.vmap(self._train_steps, in_axes=(0, None, None, None, None)), donate_argnums=0)
        self._one_step = jax.jit(jax.vmap(self._train_step_at, in_axes=(None, None, None, 0)), donate_argnums=3)
        # XLA:CPU lays out a convolution's weight gradient badly inside a loop
        # (jax-ml/jax#12868: ~10x slower, measured in benchmarks/RESULTS.md), so
        # there the engine dispatches one compiled step at a time instead.
        self.fused = jax.default_backend() != "cpu" or not _has_convolution(self.model, self.example)
        # Placed like the step's outputs, so that the first and later steps share one compilation.
        pack = len(self.configs)
        self._zero_sums = jax.device_put((np.zeros(pack, np.float32), np.full(pack, -1, np.int32)), replicated)
        self._evaluate = jax.jit(jax.vmap(self._eval, in_axes=(0, None)))

    def init(self) -> TrainState:
        """The packed initial state: every trial's model (the same, from the
        shared seed), its optimizer state and its own metaparameters."""
        variables = self.model.init(jax.random.key(self.config.seed), self.example, train=False)
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        gns = noise_scale.gns_init() if self.config.gns else None
        opt_state = make_optimizer(self.config).init(params)

        def trial(config):
            hparams = {k: np.float32(v) for k, v in hyperparameters(config).items()}
            hparams["label_smoothing"] = np.float32(config.label_smoothing)
            copies = jax.tree.map(lambda a: jnp.stack([a] * config.replicas),
                                  (params, model_state, opt_state, gns, hparams))
            return TrainState(*copies, np.int32(0), algorithms.initial_center(config, params))

        return self.packed([trial(c) for c in self.configs])

    def packed(self, states: Sequence[TrainState]) -> TrainState:
        """One state per trial, stacked on the trial axis, on the devices."""
        state = jax.tree.map(lambda *a: jnp.stack(a), *states)
        # Copies, so that leaves sharing one buffer (optax and gns zeros) can be donated.
        return jax.device_put(jax.tree.map(jnp.copy, state), NamedSharding(self.mesh, P()))

    @staticmethod
    def trial(state: TrainState, i: int) -> TrainState:
        """Trial i's state in a packed state."""
        return jax.tree.map(lambda a: a[i], state)

    # --- the compiled parts ---------------------------------------------------
    def loss(self, params, model_state, x, y, label_smoothing=0.0):
        """Mean training loss of a batch and the updated model state."""
        variables = {"params": params, **model_state}
        if model_state:
            out, model_state = self.model.apply(variables, x, train=True, mutable=list(model_state))
        else:
            out = self.model.apply(variables, x, train=True)
        return self.loss_fn(out, y, label_smoothing).mean(), model_state

    def _gradients(self, state: TrainState, x, y):
        """The gradient of the whole batch (given as `microbatches` equal
        micro-batches on the leading axis), its mean loss, the new model state,
        and for the noise scale the mean squared norm of the gradients of the
        `groups` equal parts it was computed from.

        Micro-batches are scanned: the mean of their gradients is the gradient
        of the whole batch, so accumulation equals one big batch. With one
        micro-batch, the noise scale on several devices uses the per-device
        gradients (vmapped over the device axis, each device computing its
        own) before their mean, the all-reduced gradient: McCandlish et al.
        (2018), App. A.1."""
        smoothing = state.hparams["label_smoothing"]
        grad_fn = jax.value_and_grad(lambda p, s, x, y: self.loss(p, s, x, y, smoothing), has_aux=True)
        k, b, devices = self.config.microbatches, self.local_batch, self.mesh.size
        if k == 1 and not (self.config.gns and devices > 1):
            (loss, model_state), grads = grad_fn(state.params, state.model_state, x[0], y[0])
            return grads, loss, model_state, None, 1
        if k == 1:
            xs, ys = (jax.lax.with_sharding_constraint(a[0].reshape(devices, b // devices, *a.shape[2:]),
                                                       NamedSharding(self.mesh, P("data"))) for a in (x, y))
            (losses, states), g = jax.vmap(grad_fn, in_axes=(None, None, 0, 0))(state.params, state.model_state,
                                                                                 xs, ys)
            per_device_sq = jax.vmap(lambda g: optax.tree.norm(g, squared=True))(g)
            mean = functools.partial(jnp.mean, axis=0)
            return jax.tree.map(mean, g), losses.mean(), jax.tree.map(mean, states), per_device_sq.mean(), devices

        def micro(carry, xy):
            grads, sq_norms, loss, model_state = carry
            (l, model_state), g = grad_fn(state.params, model_state, *xy)
            return (jax.tree.map(jnp.add, grads, g), sq_norms + optax.tree.norm(g, squared=True),
                    loss + l, model_state), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, sq_norms, loss, model_state), _ = jax.lax.scan(micro, (zeros, 0.0, 0.0, state.model_state), (x, y))
        return jax.tree.map(lambda g: g / k, grads), loss / k, model_state, sq_norms / k, k

    def _step(self, state: TrainState, x, y):
        """One step: every copy's local update on its own part of the batch
        (x, y: copies first), then the algorithm's coupling."""
        updated, losses = jax.vmap(self._local_step, in_axes=(COPY_AXES, 0, 0), out_axes=(COPY_AXES, 0))(state, x, y)
        step = state.step + 1
        params, center = algorithms.couple(self.config, state.params, updated.params, state.center, step)
        return updated._replace(params=params, step=step, center=center), losses.mean()

    def _local_step(self, state: TrainState, x, y):
        """One copy's optimizer update; with `gns`, the two-batch noise-scale estimate too."""
        grads, loss, model_state, small_sq, groups = self._gradients(state, x, y)
        gns = state.gns
        if self.config.gns:
            b = self.local_batch
            gns = noise_scale.gns_update(gns, small_sq, optax.tree.norm(grads, squared=True), b // groups, b,
                                         self.config.gns_ema)
        tx = make_optimizer(self.config, state.hparams)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state._replace(params=optax.apply_updates(state.params, updates), model_state=model_state,
                              opt_state=opt_state, gns=gns), loss

    def _train_step_at(self, train, perm, i, carry):
        """Step i of an epoch whose example order is `perm`. The carry holds the
        state, the summed train loss and the index of the first step with a
        non-finite loss (-1 if none)."""
        state, loss_sum, bad = carry
        (train_x, train_y), b, r, k = train, self.config.batch_size, self.config.replicas, self.config.microbatches
        sharding = NamedSharding(self.mesh, P(None, None, "data"))
        idx = jax.lax.dynamic_slice_in_dim(perm, i * b, b)
        x, y = (jax.lax.with_sharding_constraint(a[idx].reshape(r, k, b // (r * k), *a.shape[1:]), sharding)
                for a in (train_x, train_y))
        state, loss = self._step(state, x, y)
        return state, loss_sum + loss, jnp.where((bad < 0) & ~jnp.isfinite(loss), i, bad)

    def _train_steps(self, state, train, perm, first, n):
        """Steps first .. first+n-1 of an epoch in one dispatch."""
        return jax.lax.fori_loop(first, first + n, functools.partial(self._train_step_at, train, perm),
                                 (state, jnp.float32(0.0), jnp.int32(-1)))

    def _eval(self, state: TrainState, val):
        params, model_state = self.evaluated(state)

        def chunk(sums, xyw):
            x, y, w = xyw
            out = self.model.apply({"params": params, **model_state}, x, train=False)
            return sums + jnp.stack([(self.loss_fn(out, y) * w).sum(), (self.metric_fn(out, y) * w).sum()]), None

        sums, _ = jax.lax.scan(chunk, jnp.zeros(2), val)
        return sums / val[2].sum()

    # --- host side ------------------------------------------------------------
    def advance(self, state: TrainState, start: int, stop: int):
        """Train the pack from step `start` to `stop`; returns (state, each
        trial's mean train loss, each trial's first step whose loss was not
        finite or None)."""
        loss_sum, step, bad_steps = 0.0, start, np.full(len(self.configs), -1)
        while step < stop:
            epoch, first = divmod(step, self.steps_per_epoch)
            n = min(stop - step, self.steps_per_epoch - first)
            perm = self.epoch_order(epoch)
            if self.fused:
                state, chunk_loss, bad = self._steps(state, self.train, perm, first, n)
            else:
                carry = (state, *jax.tree.map(jnp.copy, self._zero_sums))
                for i in range(first, first + n):
                    carry = self._one_step(self.train, perm, i, carry)
                state, chunk_loss, bad = carry
            loss_sum = loss_sum + np.asarray(chunk_loss, np.float64)
            bad = np.asarray(bad)
            bad_steps = np.where((bad_steps < 0) & (bad >= 0), epoch * self.steps_per_epoch + bad + 1, bad_steps)
            step += n
        return state, loss_sum / (stop - start), [int(b) if b >= 0 else None for b in bad_steps]

    def evaluated(self, state: TrainState):
        """(params, model_state) of the model one trial is evaluated on."""
        return algorithms.evaluated(self.config, state.params, state.model_state, state.center)

    def evaluate(self, state: TrainState) -> list[tuple[float, float]]:
        """Each trial's (validation loss, validation metric)."""
        return [(float(loss), float(metric)) for loss, metric in np.asarray(self._evaluate(state, self.val))]


def _has_convolution(model, example) -> bool:
    jaxpr = jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x, train=False))(example)
    return "conv_general_dilated" in str(jaxpr)


def _eval_chunks(x, y, n_devices, sharding):
    """The validation set as (chunks, EVAL_BATCH', ...) arrays plus weights that
    mask the padding, so every example counts exactly once."""
    size = min(EVAL_BATCH, len(x))
    size = -(-size // n_devices) * n_devices
    n = -(-len(x) // size)
    pad = n * size - len(x)

    def chunked(a):
        return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]).reshape(n, size, *a.shape[1:])

    w = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    return jax.device_put((chunked(x), chunked(y), w.reshape(n, size)), sharding)


def check_trial(config: TrialConfig, workload: Workload, train_size: int) -> float:
    """Validate what depends on the workload, its data and the devices
    (TrialConfig.validate checks the rest); returns the target."""
    target = workload.target if config.target is None else config.target
    check_target(workload.metric, target)
    check_batch_size(config.batch_size, train_size)
    if config.gns and config.microbatches < 2 and jax.device_count() < 2:
        raise UserError("gns needs two gradient estimates at the same parameters: microbatches >= 2, "
                        "or several devices (per-device vs all-reduced gradients)")
    per_device = config.batch_size // config.replicas // config.microbatches
    if per_device % jax.device_count():
        split = f"replicas {config.replicas} / " if config.replicas > 1 else ""
        raise UserError(f"batch_size {config.batch_size} / {split}microbatches {config.microbatches} = {per_device} "
                        f"is not divisible by the device count {jax.device_count()}; allowed: multiples of "
                        f"{jax.device_count() * config.replicas * config.microbatches}")
    return target


class PackMismatch(Exception):
    """The trials of a pack resume from different steps (their checkpoints
    were not all written at one evaluation): run them one at a time."""


def run_trial(config: TrialConfig, *, data_dir=None, checkpoint_dir=None,
              prune_above: Callable[[], int | None] | None = None,
              on_eval: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, snapshot_dir=None) -> TrialRecord:
    """Train one trial until the target, the budget, divergence or pruning
    (`run_trials` with a pack of one)."""
    return run_trials([config], data_dir=data_dir, checkpoint_dirs=[checkpoint_dir], prune_above=prune_above,
                      on_evals=[on_eval], should_stop=should_stop, snapshot_dirs=[snapshot_dir])[0]


@dataclasses.dataclass
class _Trial:
    """One trial of a pack as its record grows."""

    config: TrialConfig
    checkpoint_dir: str | None
    snapshot_dir: str | None
    on_eval: Callable[[dict], None] | None
    rows: list
    t0: float
    status: str | None = None
    steps_to_target: int | None = None
    result: TrialRecord | None = None  # the record, once the trial has stopped

    def running(self) -> bool:
        return self.status is None or (self.status == "complete" and not self.config.stop_at_target)

    def observe(self, row: dict, bad_step: int | None, target, direction) -> None:
        """Append an evaluation row: has the trial diverged, or crossed the target?"""
        self.rows.append(row)
        if bad_step is not None or not row["train_loss"] < self.config.divergence_factor * self.rows[0]["val_loss"]:
            row["diverged_at"] = bad_step or row["step"]
            self.status = "diverged"
        elif self.steps_to_target is None and crossed(row["val_metric"], target, direction):
            self.status, self.steps_to_target = "complete", row["step"]

    def prune(self, best: int | None) -> None:
        """Pruned when it has not crossed by step `best`, a steps-to-target already found."""
        if self.status is None and best is not None and self.rows[-1]["step"] >= best:
            self.status = "pruned"

    def record(self, workload: Workload, target, pack: int) -> TrialRecord:
        """The record; `run` also says how many trials shared its program."""
        final = self.rows[-1]
        return TrialRecord(config=self.config.to_dict(), status=self.status or "incomplete",
                           steps_to_target=self.steps_to_target, metric=workload.metric,
                           direction=workload.direction, target=target, measurements=self.rows, final=final,
                           steps_run=final["step"], wall_time=time.perf_counter() - self.t0,
                           run={**environment.run_metadata(), "pack": pack})


def run_trials(configs: Sequence[TrialConfig], *, data_dir=None, checkpoint_dirs=None,
               prune_above: Callable[[], int | None] | None = None, on_evals=None,
               should_stop: Callable[[], bool] | None = None, snapshot_dirs=None,
               on_record: Callable[[int, TrialRecord], None] | None = None) -> list[TrialRecord]:
    """Train a pack of trials (one `pack_key`) as one program, each until its
    target, the budget, divergence or pruning; their records, in order.

    Status (Shallue et al. 2019, App. B): `complete` when the validation metric
    crossed the target, `diverged` when the train loss became non-finite or
    exceeded `divergence_factor` times its initial value, `incomplete` when the
    budget ran out, `pruned` when `prune_above()` says a better steps-to-target
    exists at this batch size already. A trial that stops stops counting: its
    record is final (`on_record(i, record)` sees it at once), while the others
    go on. When `should_stop()` is true at an evaluation, the running trials
    checkpoint there and Stopped is raised.

    Per trial i (lists of `checkpoint_dirs`, `on_evals`, `snapshot_dirs`):
    `on_evals[i](row)` sees every row of the record once per call, in order:
    first the rows restored from its checkpoint (or the first evaluation),
    then each evaluation as it happens, with its final keys. With
    `snapshot_steps`, the state after each of those steps is kept in
    `snapshot_dirs[i]`/<step> (it outlives the trial, unlike its checkpoints):
    the starting points of branches (`init_from`). Raises PackMismatch when
    the trials' checkpoints resume at different steps."""
    n = len(configs)
    checkpoint_dirs, on_evals, snapshot_dirs = (v or [None] * n for v in (checkpoint_dirs, on_evals, snapshot_dirs))
    workload = get_workload(configs[0].workload)
    for config, snapshot_dir in zip(configs, snapshot_dirs):
        config.validate()
        if config.snapshot_steps and snapshot_dir is None:
            raise UserError("snapshot_steps needs a snapshot folder to keep the snapshots in")
    data = workload.load_data(data_dir)
    target = check_trial(configs[0], workload, len(data.train_x))
    engine = Engine(workload, data, configs)
    state, trials = _start(engine, checkpoint_dirs, snapshot_dirs, on_evals)
    config, at = engine.config, trials[0].rows[-1]["step"]

    def finish(i):
        trials[i].result = trials[i].record(workload, target, n)
        if on_record:
            on_record(i, trials[i].result)

    for i, trial in enumerate(trials):
        trial.status, trial.steps_to_target = _status_of(trial.rows, target, workload.direction)
        if not trial.running():
            finish(i)
    last_saved = at
    for stop in sorted({*evaluation_steps(config, config.eval_every or workload.eval_every), *config.snapshot_steps}):
        if not any(t.running() for t in trials):
            break
        if stop <= at:
            continue
        state, losses, bad_steps = engine.advance(state, at, stop)
        at, evaluations = stop, engine.evaluate(state)
        stopping = should_stop is not None and should_stop()
        save = stopping or stop - last_saved >= (config.checkpoint_every or math.inf)
        running = [i for i, t in enumerate(trials) if t.running()]
        for i in running:
            (val_loss, metric), trial = evaluations[i], trials[i]
            trial.observe(dict(step=stop, examples=stop * config.batch_size,
                               rounds=algorithms.communication_rounds(config, stop), train_loss=float(losses[i]),
                               val_loss=val_loss, val_metric=metric, wall_time=time.perf_counter() - trial.t0,
                               **_gns_row(state.gns, i)), bad_steps[i], target, workload.direction)
        # The bound: finished trials at this batch size, and this pack's own crossings.
        bounds = [prune_above(), *(t.steps_to_target for t in trials)] if prune_above else []
        best = min((b for b in bounds if b is not None), default=None)
        for i in running:
            trial, row = trials[i], trials[i].rows[-1]
            trial.prune(best)
            if trial.on_eval:
                trial.on_eval(row)
            if stop in config.snapshot_steps and not checkpoint.exists(Path(trial.snapshot_dir) / str(stop)):
                checkpoint.save(Path(trial.snapshot_dir) / str(stop), stop, _snapshot(engine.trial(state, i)),
                                {"rows": [row]})
            if not trial.running():
                finish(i)
            elif trial.checkpoint_dir and config.checkpoint_every and save:
                checkpoint.save(trial.checkpoint_dir, stop, engine.trial(state, i),
                                {"rows": trial.rows, "elapsed": time.perf_counter() - trial.t0})
        if save:
            last_saved = stop
        if stopping:
            raise Stopped(stop)
    for i, trial in enumerate(trials):
        if trial.result is None:
            finish(i)
    return [t.result for t in trials]


def _start(engine: Engine, checkpoint_dirs, snapshot_dirs, on_evals) -> tuple[TrainState, list[_Trial]]:
    """The pack's state and its trials, each resumed from its checkpoint, else
    started from its snapshot (`init_from`), else from scratch; a trial with
    no rows yet gets its first evaluation."""
    fresh, states, trials = engine.init(), [], []
    for i, config in enumerate(engine.configs):
        state, saved = engine.trial(fresh, i), None
        if checkpoint_dirs[i] and config.checkpoint_every:
            state, saved = checkpoint.restore(checkpoint_dirs[i], state)
        if saved is None and config.init_from:
            state = _start_from_snapshot(config, state)
        states.append(state)
        trials.append(_Trial(config, checkpoint_dirs[i], snapshot_dirs[i], on_evals[i],
                             rows=saved["rows"] if saved else [],
                             t0=time.perf_counter() - (saved["elapsed"] if saved else 0.0)))
    starts = [t.rows[-1]["step"] if t.rows else t.config.init_step for t in trials]
    if len(set(starts)) > 1:
        raise PackMismatch(starts)
    state = engine.packed(states)
    evaluations = engine.evaluate(state) if any(not t.rows for t in trials) else None
    for i, trial in enumerate(trials):
        if not trial.rows:
            (val_loss, metric), step = evaluations[i], trial.config.init_step
            trial.rows.append(dict(step=step, examples=step * trial.config.batch_size,
                                   rounds=algorithms.communication_rounds(trial.config, step), train_loss=None,
                                   val_loss=val_loss, val_metric=metric, wall_time=time.perf_counter() - trial.t0))
        if trial.on_eval:
            for row in trial.rows:
                trial.on_eval(row)
    return state, trials


def _snapshot(state: TrainState) -> TrainState:
    """What a branch starts from: parameters, model and optimizer state (the
    noise-scale state and the metaparameters are the branch's own)."""
    return state._replace(gns=None, hparams={})


def _start_from_snapshot(config: TrialConfig, state: TrainState) -> TrainState:
    """`state` with the snapshot at `config.init_from` restored into it (it
    continues at step `config.init_step`); optimizer state shapes do not
    depend on the batch size, so a branch at another one restores it."""
    restored, meta = checkpoint.restore(config.init_from, _snapshot(state))
    if meta is None:
        raise UserError(f"init_from: no snapshot in {config.init_from}")
    return state._replace(params=restored.params, model_state=restored.model_state, opt_state=restored.opt_state,
                          step=restored.step)


def _status_of(rows, target, direction):
    """Status and steps-to-target implied by rows restored from a checkpoint."""
    for row in rows:
        if "diverged_at" in row:
            return "diverged", None
        if crossed(row["val_metric"], target, direction):
            return "complete", row["step"]
    return None, None


def _gns_row(gns: noise_scale.GnsState | None, i: int) -> dict:
    """Trial i's online noise-scale estimates (the noise scale runs with one
    model copy: TrialConfig.validate)."""
    if gns is None:
        return {}
    gns = jax.tree.map(lambda a: a[i, 0], gns)
    g2, trace = (float(v) for v in noise_scale.gns_estimates(gns))
    return dict(gns_g2=g2, gns_trace=trace, gns_b_simple=float(noise_scale.b_simple(gns)))
