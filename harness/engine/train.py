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
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from harness.engine import algorithms, checkpoint, environment, noise_scale
from harness.engine.evaluation import evaluation_steps
from harness.engine.losses import LOSSES, METRIC_FUNCTIONS
from harness.engine.optimizers import hyperparameters, make_optimizer
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


class Engine:
    """The compiled functions and device-resident data of one trial."""

    def __init__(self, workload: Workload, data, config: TrialConfig):
        self.config = config
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
        self._steps = jax.jit(self._train_steps, donate_argnums=0)
        self._one_step = jax.jit(self._train_step_at, donate_argnums=3)
        # XLA:CPU lays out a convolution's weight gradient badly inside a loop
        # (jax-ml/jax#12868: ~10x slower, measured in benchmarks/RESULTS.md), so
        # there the engine dispatches one compiled step at a time instead.
        self.fused = jax.default_backend() != "cpu" or not _has_convolution(self.model, self.example)
        # Placed like the step's outputs, so that the first and later steps share one compilation.
        self._zero_sums = jax.device_put((np.float32(0.0), np.int32(-1)), replicated)
        self._evaluate = jax.jit(self._eval)

    def init(self) -> TrainState:
        variables = self.model.init(jax.random.key(self.config.seed), self.example, train=False)
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        gns = noise_scale.gns_init() if self.config.gns else None
        hparams = {k: np.float32(v) for k, v in hyperparameters(self.config).items()}
        hparams["label_smoothing"] = np.float32(self.config.label_smoothing)
        copy = (params, model_state, make_optimizer(self.config).init(params), gns, hparams)
        copies = jax.tree.map(lambda a: jnp.stack([a] * self.config.replicas), copy)
        state = TrainState(*copies, np.int32(0), algorithms.initial_center(self.config, params))
        # Copies, so that leaves sharing one buffer (optax and gns zeros) can be donated.
        return jax.device_put(jax.tree.map(jnp.copy, state), NamedSharding(self.mesh, P()))

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
        """Train from step `start` to `stop`; returns (state, mean train loss,
        first step whose loss was not finite or None)."""
        loss_sum, step, bad_step = 0.0, start, None
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
            loss_sum += float(chunk_loss)
            if bad_step is None and int(bad) >= 0:
                bad_step = epoch * self.steps_per_epoch + int(bad) + 1
            step += n
        return state, loss_sum / (stop - start), bad_step

    def evaluated(self, state: TrainState):
        """(params, model_state) of the model the trial is evaluated on."""
        return algorithms.evaluated(self.config, state.params, state.model_state, state.center)

    def evaluate(self, state: TrainState) -> tuple[float, float]:
        loss, metric = self._evaluate(state, self.val)
        return float(loss), float(metric)


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


def run_trial(config: TrialConfig, *, data_dir=None, checkpoint_dir=None,
              prune_above: Callable[[], int | None] | None = None,
              on_eval: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, snapshot_dir=None) -> TrialRecord:
    """Train one trial until the target, the budget, divergence or pruning.

    Status (Shallue et al. 2019, App. B): `complete` when the validation metric
    crossed the target, `diverged` when the train loss became non-finite or
    exceeded `divergence_factor` times its initial value, `incomplete` when the
    budget ran out, `pruned` when `prune_above()` says a better steps-to-target
    exists at this batch size already. When `should_stop()` is true at an
    evaluation, it checkpoints there and raises Stopped.

    `on_eval(row)` sees every row of the record once per call of run_trial, in
    order: at the start the rows restored from the checkpoint (or the step-0
    evaluation), then each evaluation as it happens, with its final keys.

    With `config.snapshot_steps`, the state after each of those steps is kept
    in `snapshot_dir`/<step> (it outlives the trial, unlike its checkpoints):
    the starting points of branches (`config.init_from`)."""
    workload = get_workload(config.workload)
    config.validate()
    if config.snapshot_steps and snapshot_dir is None:
        raise UserError("snapshot_steps needs a snapshot folder to keep the snapshots in")
    data = workload.load_data(data_dir)
    target = check_trial(config, workload, len(data.train_x))
    engine = Engine(workload, data, config)
    state, saved = engine.init(), None
    if checkpoint_dir and config.checkpoint_every:
        state, saved = checkpoint.restore(checkpoint_dir, state)
    if saved is None and config.init_from:
        state, saved = _start_from_snapshot(engine, state)
    rows = saved["rows"] if saved else []
    elapsed = saved["elapsed"] if saved else 0.0
    t0 = time.perf_counter() - elapsed
    if not rows:
        val_loss, metric = engine.evaluate(state)
        rows.append(dict(step=0, examples=0, rounds=0, train_loss=None, val_loss=val_loss, val_metric=metric,
                         wall_time=time.perf_counter() - t0))
    if on_eval:
        for row in rows:
            on_eval(row)
    initial_loss = rows[0]["val_loss"]
    status, steps_to_target = _status_of(rows, target, workload.direction)
    last_saved = rows[-1]["step"]
    for stop in sorted({*evaluation_steps(config, config.eval_every or workload.eval_every), *config.snapshot_steps}):
        if status is not None and (status != "complete" or config.stop_at_target):
            break
        start = rows[-1]["step"]
        if stop <= start:
            continue
        state, train_loss, bad_step = engine.advance(state, start, stop)
        val_loss, metric = engine.evaluate(state)
        row = dict(step=stop, examples=stop * config.batch_size, rounds=algorithms.communication_rounds(config, stop),
                   train_loss=train_loss, val_loss=val_loss, val_metric=metric, wall_time=time.perf_counter() - t0,
                   **_gns_row(state))
        rows.append(row)
        if bad_step is not None or not train_loss < config.divergence_factor * initial_loss:
            row["diverged_at"] = bad_step or stop
            status = "diverged"
        elif steps_to_target is None and crossed(metric, target, workload.direction):
            status, steps_to_target = "complete", stop
        elif steps_to_target is None and prune_above and (best := prune_above()) is not None and stop >= best:
            status = "pruned"
        if on_eval:
            on_eval(row)
        if stop in config.snapshot_steps and not checkpoint.exists(Path(snapshot_dir) / str(stop)):
            checkpoint.save(Path(snapshot_dir) / str(stop), stop, _snapshot(state), {"rows": [row]})
        stopping = should_stop is not None and should_stop()
        if checkpoint_dir and config.checkpoint_every and (stopping or stop - last_saved >= config.checkpoint_every):
            checkpoint.save(checkpoint_dir, stop, state, {"rows": rows, "elapsed": time.perf_counter() - t0})
            last_saved = stop
        if stopping:
            raise Stopped(stop)
    final = rows[-1]
    return TrialRecord(config=config.to_dict(), status=status or "incomplete", steps_to_target=steps_to_target,
                       metric=workload.metric, direction=workload.direction, target=target, measurements=rows,
                       final=final, steps_run=final["step"], wall_time=time.perf_counter() - t0,
                       run=environment.run_metadata())


def _snapshot(state: TrainState) -> TrainState:
    """What a branch starts from: parameters, model and optimizer state (the
    noise-scale state and the metaparameters are the branch's own)."""
    return state._replace(gns=None, hparams={})


def _start_from_snapshot(engine: Engine, state: TrainState):
    """`state` with the snapshot at `config.init_from` restored into it, and
    the first measurement row (at `config.init_step`); optimizer state shapes
    do not depend on the batch size, so a branch at another one restores it."""
    config = engine.config
    restored, meta = checkpoint.restore(config.init_from, _snapshot(state))
    if meta is None:
        raise UserError(f"init_from: no snapshot in {config.init_from}")
    state = state._replace(params=restored.params, model_state=restored.model_state, opt_state=restored.opt_state,
                           step=restored.step)
    val_loss, metric = engine.evaluate(state)
    row = dict(step=config.init_step, examples=config.init_step * config.batch_size,
               rounds=algorithms.communication_rounds(config, config.init_step), train_loss=None,
               val_loss=val_loss, val_metric=metric, wall_time=0.0)
    return state, {"rows": [row], "elapsed": 0.0}


def _status_of(rows, target, direction):
    """Status and steps-to-target implied by rows restored from a checkpoint."""
    for row in rows:
        if "diverged_at" in row:
            return "diverged", None
        if crossed(row["val_metric"], target, direction):
            return "complete", row["step"]
    return None, None


def _gns_row(state: TrainState) -> dict:
    if state.gns is None:
        return {}
    gns = jax.tree.map(lambda a: a[0], state.gns)  # the noise scale runs with one copy (TrialConfig.validate)
    g2, trace = (float(v) for v in noise_scale.gns_estimates(gns))
    return dict(gns_g2=g2, gns_trace=trace, gns_b_simple=float(noise_scale.b_simple(gns)))
