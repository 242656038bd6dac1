"""The compiled step of a pack of trials: jit, vmap over trials and model
copies, sharding over devices, and the device-resident data.

The dataset lives on the device(s); every step draws its batch there from a
per-epoch permutation that depends only on (seed, epoch), so a trial is
deterministic and resumes bit-identically. Data too large for device memory
(`data_placement`, harness.engine.stream) are streamed instead: the host
reads each step's batch in the same order and places the batches of the
steps between two evaluations as one chunk, which the same loop consumes. Steps between two evaluations run
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
pack of one, stepped without the trial axis; a pack pays where one small
trial leaves an accelerator idle (benchmarks/packing.py).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from harness.engine import algorithms, noise_scale, stream
from harness.engine.losses import LOSSES, METRIC_FUNCTIONS
from harness.engine.optimizers import TRACED, hyperparameters, make_optimizer
from harness.engine.records import Split
from harness.engine.trial import TrialConfig
from harness.engine.workloads import Workload
from harness.errors import UserError


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


class Position(NamedTuple):
    """Where a run of steps begins in the data order: step `step` (the steps
    taken before it) draws from example `offset` of epoch `epoch`, after
    `examples` examples. A trial starts at Position(); a trial whose batch size
    changes (harness.engine.batch_schedule) starts each phase where the last
    one stopped, so no example is repeated or skipped within an epoch."""

    step: int = 0
    epoch: int = 0
    offset: int = 0
    examples: int = 0


# TrialConfig fields that packed trials may differ in: the traced ones.
PACKED_FIELDS = ("learning_rate", "lr_scaling", "reference_batch_size", "label_smoothing", *TRACED)


def pack_key(config: TrialConfig) -> str:
    """Trials with equal keys share one compiled program and can be packed."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in PACKED_FIELDS}, sort_keys=True)


class Engine:
    """The compiled functions and device-resident data of a pack of trials
    (one config, or several with one `pack_key`); `config` is the first.
    `start`: where in the data order its steps begin (Position). `placed`:
    the device-resident (train, val) of another engine of the same data, to
    share instead of placing them again (the phases of a batch schedule).
    Streamed (`feed` set), `train` is the host's records.Split of the
    training data."""

    def __init__(
        self,
        workload: Workload,
        data,
        config: TrialConfig | Sequence[TrialConfig],
        start: Position = Position(),
        placed: tuple | None = None,
    ):
        self.configs = [config] if isinstance(config, TrialConfig) else list(config)
        self.config = config = self.configs[0]
        if len({pack_key(c) for c in self.configs}) > 1:
            raise ValueError(f"trials that differ beyond {', '.join(PACKED_FIELDS)} cannot be packed")
        self.mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        replicated = NamedSharding(self.mesh, P())
        if placed is None:
            streamed = stream.placement(config.data_placement, workload.data_placement, data) == "stream"
            placed = self._place(data, streamed)
        self.train, self.val = placed
        streamed = isinstance(self.train, Split)
        self.start, self.train_size = start, len(data.train_x)
        self.steps_per_epoch = self.train_size // config.batch_size
        self.local_batch = config.batch_size // config.replicas
        self.model = workload.make_model(data, **config.workload_options)
        self.loss_fn, self.metric_fn = LOSSES[workload.loss], METRIC_FUNCTIONS[workload.metric]
        self.example = data.train_x[:1]
        n, key = len(data.train_x), jax.random.key(config.seed)
        # The order of epoch e depends on (seed, e) alone; one epoch's is kept, as evaluations split epochs.
        permutation = jax.jit(lambda epoch: jax.random.permutation(jax.random.fold_in(key, epoch), n))
        self.epoch_order = functools.lru_cache(maxsize=1)(permutation)
        # Streamed, the host draws from the same compiled permutation: its order is bit-identical.
        self.feed = stream.feed_of(self, permutation) if streamed else None
        # Every trial of the pack steps on the same batch (the data are not mapped). A pack of one
        # steps on its trial's state, unvmapped (`advance` takes it out of the pack and back): with
        # the size-1 vmap XLA:CPU copied every parameter leaf each step (benchmarks/RESULTS.md).
        pack = len(self.configs)
        self._single = pack == 1
        over_pack = (lambda f, axes: f) if self._single else (lambda f, axes: jax.vmap(f, in_axes=axes))
        self._steps = jax.jit(over_pack(self._train_steps, (0, None, None, None, None)), donate_argnums=0)
        self._one_step = jax.jit(over_pack(self._train_step_at, (None, None, None, None, 0)), donate_argnums=4)
        self._unpack = jax.jit(functools.partial(self.trial, i=0))
        self._repack = jax.jit(lambda state: jax.tree.map(lambda a: a[None], state))
        # XLA:CPU lays out a convolution's weight gradient badly inside a loop
        # (jax-ml/jax#12868: ~10x slower, measured in benchmarks/RESULTS.md), so
        # there the engine dispatches one compiled step at a time instead.
        self.fused = jax.default_backend() != "cpu" or not _has_convolution(self.model, self.example)
        # Placed like the step's outputs, so that the first and later steps share one compilation.
        shape = () if pack == 1 else (pack,)
        self._zero_sums = jax.device_put((np.zeros(shape, np.float32), np.full(shape, -1, np.int32)), replicated)
        self._evaluate = jax.jit(jax.vmap(self._eval, in_axes=(0, None)))

    def _place(self, data, streamed: bool) -> tuple:
        """(train, val): both on the devices, or streamed the training split
        (records.Split) and the validation set placed or in groups."""
        val = functools.partial(stream.eval_chunks, sharding=NamedSharding(self.mesh, P(None, "data")))
        if streamed:
            return stream.train_split(data), stream.validation(data, val)
        train = (np.asarray(data.train_x), np.asarray(data.train_y))
        return jax.device_put(train, NamedSharding(self.mesh, P())), val(np.asarray(data.val_x), np.asarray(data.val_y))

    def init(self) -> TrainState:
        """The packed initial state: every trial's model (the same, from the
        shared seed), its optimizer state and its own metaparameters."""
        variables = self.model.init(jax.random.key(self.config.seed), self.example, train=False)
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        gns = noise_scale.gns_init() if self.config.gns else None
        opt_state = make_optimizer(self.config).init(params)

        def trial(config):
            copies = jax.tree.map(lambda a: jnp.stack([a] * config.replicas), (params, model_state, opt_state, gns))
            return TrainState(*copies, _hparams(config), np.int32(0), algorithms.initial_center(config, params))

        return self.packed([trial(c) for c in self.configs])

    def hparams(self) -> dict:
        """The packed traced metaparameters of this engine's trials, placed as in `init`."""
        hparams = jax.tree.map(lambda *a: jnp.stack(a), *(_hparams(c) for c in self.configs))
        return jax.device_put(hparams, NamedSharding(self.mesh, P()))

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
            xs, ys = (
                jax.lax.with_sharding_constraint(
                    a[0].reshape(devices, b // devices, *a.shape[2:]), NamedSharding(self.mesh, P("data"))
                )
                for a in (x, y)
            )
            (losses, states), g = jax.vmap(grad_fn, in_axes=(None, None, 0, 0))(state.params, state.model_state, xs, ys)
            per_device_sq = jax.vmap(lambda g: optax.tree.norm(g, squared=True))(g)
            mean = functools.partial(jnp.mean, axis=0)
            return jax.tree.map(mean, g), losses.mean(), jax.tree.map(mean, states), per_device_sq.mean(), devices

        def micro(carry, xy):
            grads, sq_norms, loss, model_state = carry
            (l, model_state), g = grad_fn(state.params, model_state, *xy)
            return (
                jax.tree.map(jnp.add, grads, g),
                sq_norms + optax.tree.norm(g, squared=True),
                loss + l,
                model_state,
            ), None

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
            gns = noise_scale.gns_update(
                gns, small_sq, optax.tree.norm(grads, squared=True), b // groups, b, self.config.gns_ema
            )
        tx = make_optimizer(self.config, state.hparams)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return state._replace(
            params=optax.apply_updates(state.params, updates), model_state=model_state, opt_state=opt_state, gns=gns
        ), loss

    def _train_step_at(self, train, perm, offset, i, carry):
        """Step i of a run of steps that starts at example `offset` of an epoch
        whose example order is `perm`; streamed (perm None), step i of a
        chunk of batches. The carry holds the state, the summed train loss and
        the index of the first step with a non-finite loss (-1 if none)."""
        state, loss_sum, bad = carry
        (train_x, train_y), b, r, k = train, self.config.batch_size, self.config.replicas, self.config.microbatches
        sharding = NamedSharding(self.mesh, P(None, None, "data"))
        if perm is None:  # a chunk [steps, r, k, b / (r k), ...]
            batch = (train_x[i], train_y[i])
        else:
            idx = jax.lax.dynamic_slice_in_dim(perm, offset + i * b, b)
            batch = (a[idx].reshape(r, k, b // (r * k), *a.shape[1:]) for a in (train_x, train_y))
        x, y = (jax.lax.with_sharding_constraint(a, sharding) for a in batch)
        state, loss = self._step(state, x, y)
        return state, loss_sum + loss, jnp.where((bad < 0) & ~jnp.isfinite(loss), i, bad)

    def _train_steps(self, state, train, perm, offset, n):
        """n steps of an epoch from example `offset` on, in one dispatch."""
        return jax.lax.fori_loop(
            0, n, functools.partial(self._train_step_at, train, perm, offset), (state, jnp.float32(0.0), jnp.int32(-1))
        )

    def _eval(self, state: TrainState, val):
        params, model_state = self.evaluated(state)

        def chunk(sums, xyw):
            x, y, w = xyw
            out = self.model.apply({"params": params, **model_state}, x, train=False)
            return sums + jnp.stack([(self.loss_fn(out, y) * w).sum(), (self.metric_fn(out, y) * w).sum()]), None

        sums, _ = jax.lax.scan(chunk, jnp.zeros(2), val)
        return sums / val[2].sum()

    # --- host side ------------------------------------------------------------
    def position(self, step: int) -> tuple[int, int]:
        """(epoch, example offset) where step `step` draws its batch: each epoch
        is consumed in order, B examples a step, from `start` on; the end of an
        epoch too short for a batch is skipped."""
        b, (first_step, epoch, offset, _) = self.config.batch_size, self.start
        left = (self.train_size - offset) // b  # steps left in the start's epoch
        k = step - first_step
        if k < left:
            return epoch, offset + k * b
        more, i = divmod(k - left, self.steps_per_epoch)
        return epoch + 1 + more, i * b

    def examples_at(self, step: int) -> int:
        """Examples trained on after `step` steps."""
        return self.start.examples + (step - self.start.step) * self.config.batch_size

    def batch_size_at(self, step: int) -> int:
        return self.config.batch_size

    def start_of(self, step: int) -> Position:
        """The Position at which a run of steps from `step` on continues this one."""
        return Position(step, *self.position(step), self.examples_at(step))

    def advance(self, state: TrainState, start: int, stop: int):
        """Train the pack from step `start` to `stop`; returns (state, each
        trial's mean train loss, each trial's first step whose loss was not
        finite or None)."""
        loss_sum, bad_steps = 0.0, np.full(len(self.configs), -1)
        if self._single:
            state = self._unpack(state)
        for step, n, train, perm, offset in self._runs(start, stop):
            if self.fused:
                state, chunk_loss, bad = self._steps(state, train, perm, offset, n)
            else:
                carry = (state, *jax.tree.map(jnp.copy, self._zero_sums))
                for i in range(n):
                    carry = self._one_step(train, perm, offset, i, carry)
                state, chunk_loss, bad = carry
            loss_sum = loss_sum + np.asarray(chunk_loss, np.float64).reshape(-1)
            bad = np.asarray(bad).reshape(-1)
            bad_steps = np.where((bad_steps < 0) & (bad >= 0), step + bad + 1, bad_steps)
        if self._single:
            state = self._repack(state)
        return state, loss_sum / (stop - start), [int(b) if b >= 0 else None for b in bad_steps]

    def _runs(self, start: int, stop: int):
        """Steps [start, stop) as runs of one compiled loop each: (first step,
        steps, data, permutation, offset); in memory one run per epoch, each
        on the device-resident data; streamed one per chunk (no permutation)."""
        if self.feed is not None:
            yield from ((step, n, chunk, None, 0) for step, n, chunk in self.feed.chunks(start, stop))
            return
        step = start
        while step < stop:
            epoch, offset = self.position(step)
            n = min(stop - step, (self.train_size - offset) // self.config.batch_size)
            yield step, n, self.train, self.epoch_order(epoch), offset
            step += n

    def data_state(self, step: int) -> dict:
        """Where the data order stands when step `step` is the next to draw
        (saved with a checkpoint; streamed too, the feed reads by step)."""
        return self.start_of(step)._asdict()

    def seek(self, saved: dict | None) -> None:
        """Continue from a checkpoint's data_state: a UserError if the data
        order there is not this engine's (the data or the trial changed)."""
        if not saved:
            return
        now = self.data_state(saved["step"])
        if {k: saved[k] for k in Position._fields} != {k: now[k] for k in Position._fields}:
            raise UserError(f"the checkpoint's data position {saved} is not this trial's {now}: its data changed")

    def evaluated(self, state: TrainState):
        """(params, model_state) of the model one trial is evaluated on."""
        return algorithms.evaluated(self.config, state.params, state.model_state, state.center)

    def evaluate(self, state: TrainState) -> list[tuple[float, float]]:
        """Each trial's (validation loss, validation metric); a validation set
        in groups (stream.ValidationGroups) is the examples' mean over them."""
        if isinstance(self.val, stream.ValidationGroups):
            groups = [(np.asarray(self._evaluate(state, group), np.float64), n) for group, n in self.val]
            means = sum(m * n for m, n in groups) / sum(n for _, n in groups)
        else:
            means = np.asarray(self._evaluate(state, self.val))
        return [(float(loss), float(metric)) for loss, metric in means]


def _hparams(config: TrialConfig) -> dict:
    """A trial's traced metaparameters (harness.engine.optimizers.hyperparameters)
    and label smoothing, one per model copy."""
    hparams = {k: np.float32(v) for k, v in hyperparameters(config).items()}
    hparams["label_smoothing"] = np.float32(config.label_smoothing)
    return {k: np.full(config.replicas, v) for k, v in hparams.items()}


def _has_convolution(model, example) -> bool:
    jaxpr = jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x, train=False))(example)
    return "conv_general_dilated" in str(jaxpr)
