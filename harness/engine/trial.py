"""One trial as data: its configuration and its record.

A trial is (workload, batch size, optimizer and metaparameters, schedule, seed,
target, budget). `TrialConfig` is plain data (JSON round-trips), validated in
one place so that bad input fails before any training starts.

Each field is declared once, with `option(...)`: its default, a one-line help,
its allowed values (a choice list, or a range with open or closed ends) and the
paper it comes from. `OPTIONS` holds these declarations; `TrialConfig.validate`,
the spec files (harness.sweep.spec), `cbs train` (harness.cli.train) and
docs/spec.md all derive from them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field

from harness.engine.algorithms import ALGORITHMS, SUPPORTED_OPTIMIZERS, switch_step
from harness.engine.evaluation import EVAL_SCHEDULES
from harness.engine.optimizers import (
    ADAM_FAMILY,
    BATCH_LR_RULES,
    BETA2_RULES,
    LR_SCALINGS,
    OPTIMIZERS,
    SCHEDULES,
    WARMUPS,
)
from harness.engine.options import option
from harness.errors import UserError

STATUSES = ("complete", "incomplete", "diverged", "pruned")
# Where a trial's data live (harness.engine.stream): chosen by size, in device memory, or streamed from disk.
PLACEMENTS = ("auto", "memory", "stream")


GOYAL = "Goyal et al. 2017"
SHALLUE = "Shallue et al. 2019, Sec. 4.5"
LIN = "Lin et al. 2020"
SMA = "Koliousis et al. 2019, Alg. 1"
MERRILL = "Merrill et al. 2025, Sec. 3"
MCCANDLISH = "McCandlish et al. 2018, App. A.1"


@dataclass(frozen=True)
class TrialConfig:
    """Everything that determines a trial's measurements (the fields: OPTIONS).

    `batch_size` is always the global batch, B / `replicas` per replica, so
    algorithms (harness.engine.algorithms) compare at the same examples per step.
    Branching (Merrill et al. 2025, Sec. 3): a trial with `init_from` (a snapshot
    folder, kept by another trial at a step of its `snapshot_steps`) starts from
    that snapshot's parameters, model state and optimizer state at its own step
    `init_step`, with its own batch size and metaparameters.
    """

    workload: str = option(
        help="a workload of `cbs workloads`, <mnist|fashion_mnist>_fc<width>x<depth>, or path/to/file.py:name"
    )
    batch_size: int = option(help="examples per training step (the global batch)", ge=1)
    learning_rate: float = option(
        help="initial learning rate eta0 (at reference_batch_size when lr_scaling is set)", gt=0
    )
    optimizer: str = option("nesterov", help="the optax optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, help="momentum of momentum, nesterov and lars", ge=0, lt=1)
    schedule: str = option("constant", help="learning-rate schedule after the warmup", choices=SCHEDULES, cite=SHALLUE)
    decay_steps: int | None = option(
        None, help="steps over which linear_decay and cosine decay the learning rate", ge=1, cite=SHALLUE
    )
    end_lr_factor: float = option(
        0.0, help="final learning rate of linear_decay and cosine, as a fraction of eta0", ge=0, cite=SHALLUE
    )
    boundaries: tuple[int, ...] = option(
        (),
        help="steps at which the step schedule multiplies the learning rate "
        "by decay_factor (comma-separated on the command line)",
    )
    decay_factor: float = option(0.1, help="the step schedule's factor at each boundary", gt=0)
    warmup: str = option(
        "none",
        help="learning-rate warmup before the schedule: linear from warmup_factor * eta0, or constant there",
        choices=WARMUPS,
        cite=f"{GOYAL}, Sec. 2.2",
    )
    warmup_steps: int = option(0, help="steps of warmup", ge=0)
    warmup_factor: float = option(
        0.1, help="learning rate at the start of (or during a constant) warmup, as a fraction of eta0", ge=0
    )
    lr_scaling: str = option(
        "none",
        help="rescale learning_rate from reference_batch_size to batch_size",
        choices=LR_SCALINGS,
        cite=f"{GOYAL}, Sec. 2.1 (linear); sqrt: the square-root rule",
    )
    reference_batch_size: int | None = option(
        None, help="the batch size learning_rate is given for (with lr_scaling)", ge=1
    )
    batch_schedule: tuple[int, ...] = option(
        (),
        help="batch sizes to change to, one at each threshold of "
        "batch_schedule_examples: a batch-size warmup "
        "(harness.engine.batch_schedule)",
        cite=f"{MERRILL}, Sec. 5",
    )
    batch_schedule_examples: tuple[int, ...] = option(
        (),
        help="examples seen (increasing) at which the batch size changes to the next of batch_schedule",
        cite=f"{MERRILL}, Sec. 5",
    )
    batch_auto: float | None = option(
        None,
        help="double the batch size at an evaluation where c * B_simple (the online "
        "noise scale) exceeds twice it, c being this calibration of B_crit to "
        "B_simple (needs gns)",
        gt=0,
        cite=f"{MCCANDLISH}; {MERRILL}, Sec. 5",
    )
    batch_auto_max: int | None = option(
        None, help="the largest batch size batch_auto grows to (default: the training set's size)", ge=1
    )
    batch_lr_rule: str = option(
        "auto",
        help="how the learning rate moves with the batch size at a change; auto: "
        "sqrt for adam, adamw and lamb, else linear",
        choices=BATCH_LR_RULES,
        cite=f"{GOYAL}; Malladi et al. 2022",
    )
    batch_beta2_rule: str = option(
        "none",
        help="half_life: at a change Adam's beta2 becomes beta2^(B'/B), keeping its half-life in examples",
        choices=BETA2_RULES,
        cite="Marek et al. 2025",
    )
    weight_decay: float = option(
        0.0, help="weight decay: built into adamw, lars and lamb, added to the gradient otherwise", ge=0
    )
    label_smoothing: float = option(0.0, help="label smoothing of classification losses", ge=0, lt=1)
    b1: float = option(0.9, help="first-moment decay of adam, adamw and lamb", ge=0, lt=1)
    b2: float = option(0.999, help="second-moment decay of adam, adamw and lamb", ge=0, lt=1)
    eps: float = option(1e-8, help="denominator epsilon of adam, adamw and lamb", ge=0)
    trust_coefficient: float = option(0.001, help="trust coefficient of lars", gt=0)
    seed: int = option(0, help="random seed of initialisation and data order")
    train_examples: int | None = option(
        None,
        help="train on this many examples of the training split: the first "
        "N of a permutation with the fixed seed SUBSET_SEED of "
        "harness.engine.data, the same for every trial (smaller subsets "
        "nested in larger ones); validation unchanged (default: all)",
        ge=1,
        cite="Shallue et al. 2019",
    )
    data_placement: str = option(
        "auto",
        help="where the data live: in device memory, or streamed from disk a chunk of steps at a time, in the "
        "same order (harness.engine.stream); auto: the workload's choice, else in memory when they take at "
        "most a quarter of the free device memory",
        choices=PLACEMENTS,
    )
    target: float | None = option(None, help="metric value to reach (default: the workload's target)")
    max_steps: int = option(10_000, help="step budget", ge=1)
    eval_every: int | None = option(None, help="steps between evaluations (default: the workload's cadence)", ge=1)
    eval_schedule: str = option(
        "linear",
        help="evaluation steps: every eval_every, or geometric (dense early, then every eval_every)",
        choices=EVAL_SCHEDULES,
    )
    example_budget: int | None = option(
        None,
        help="stop at the first evaluation at or after this many examples, besides max_steps: one budget for "
        "trials whose batch size changes (batch_schedule, batch_auto)",
        ge=1,
        cite="Merrill et al. 2025, Sec. 5",
    )
    stop_at_target: bool = option(True, help="stop once the target is reached (else train the whole budget)")
    microbatches: int = option(1, help="split each batch into this many micro-batches (a divisor of batch_size)", ge=1)
    gns: bool = option(False, help="track the online gradient noise scale B_simple", cite=MCCANDLISH)
    gns_ema: float = option(
        0.95,
        help="decay of the moving averages of the noise scale's |G|^2 and tr(Sigma) estimates",
        ge=0,
        lt=1,
        cite=MCCANDLISH,
    )
    divergence_factor: float = option(
        10.0, help="diverged when the training loss exceeds this multiple of its initial value", gt=1
    )
    checkpoint_every: int | None = option(None, help="steps between checkpoints (default: none)", ge=1)
    algorithm: str = option(
        "minibatch",
        help="how the replicas are coupled: mini-batch SGD, local SGD, post-local SGD or Crossbow SMA",
        choices=ALGORITHMS,
        cite=f"{LIN}; {SMA}",
    )
    replicas: int = option(
        1, help="model copies K of local_sgd, post_local_sgd and sma, each on batch_size / K examples per step", ge=1
    )
    local_steps: int = option(1, help="local SGD's H: steps between parameter averages", ge=1, cite=f"{LIN}, Alg. 1")
    switch_step: int | None = option(
        None,
        help="post-local SGD's switch from H = 1 to local_steps (default: the first boundary of the step schedule)",
        ge=1,
        cite=f"{LIN}, Sec. 3",
    )
    sma_alpha: float | None = option(
        None,
        help="SMA's alpha, the pull of each replica towards the central model (default: 1 / K)",
        gt=0,
        le=1,
        cite=SMA,
    )
    sma_momentum: float = option(0.9, help="SMA's momentum mu of the central model", ge=0, lt=1, cite=SMA)
    workload_options: dict = option({}, help="passed to the workload's make_model")
    snapshot_steps: tuple[int, ...] = option(
        (),
        help="steps after which to keep a snapshot of the train state (a sweep worker's snapshot folder)",
        cite=MERRILL,
    )
    init_from: str | None = option(
        None, help="start from the snapshot in this folder (parameters, model and optimizer state)", cite=MERRILL
    )
    init_step: int = option(
        0,
        help="the step init_from's snapshot was taken at, where this trial continues in the data order",
        ge=0,
        cite=MERRILL,
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        unknown = sorted(set(d) - set(OPTIONS))
        if unknown:
            raise UserError(f"unknown trial field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(OPTIONS))}")
        d = dict(d)
        for key in ("boundaries", "snapshot_steps", "batch_schedule", "batch_schedule_examples"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def effective_learning_rate(self) -> float:
        """eta0 after the batch-size scaling rule (Goyal et al. 2017, Sec. 2.1)."""
        if self.lr_scaling == "none":
            return self.learning_rate
        return self.learning_rate * LR_SCALINGS[self.lr_scaling](self.batch_size / self.reference_batch_size)

    def validate(self) -> None:
        """Raise UserError naming the first bad field and its allowed values:
        first each field against its Option, then the checks across fields."""
        for name, opt in OPTIONS.items():
            if (error := opt.error(getattr(self, name))) is not None:
                raise UserError(error)
        self._validate_algorithm()
        self._validate_batch_schedule()
        if self.batch_size % (self.replicas * self.microbatches):
            per_replica = f" / replicas {self.replicas}" if self.replicas > 1 else ""
            raise UserError(
                f"microbatches must divide batch_size {self.batch_size}{per_replica}, got {self.microbatches!r}"
            )
        if self.schedule in ("linear_decay", "cosine") and self.decay_steps is None:
            raise UserError(f"schedule {self.schedule!r} needs decay_steps >= 1")
        if self.lr_scaling != "none" and self.reference_batch_size is None:
            raise UserError(f"lr_scaling {self.lr_scaling!r} needs reference_batch_size >= 1")
        if self.warmup != "none" and self.warmup_steps < 1:
            raise UserError(f"warmup {self.warmup!r} needs warmup_steps >= 1")
        if any(not 1 <= s <= self.max_steps for s in self.snapshot_steps):
            raise UserError(f"snapshot_steps must be in [1, max_steps={self.max_steps}], got {self.snapshot_steps!r}")
        if self.init_step >= self.max_steps or (self.init_step and self.init_from is None):
            raise UserError(
                f"init_step must be in [0, max_steps={self.max_steps}) and needs init_from, got {self.init_step!r}"
            )

    def _validate_batch_schedule(self) -> None:
        sizes, thresholds = self.batch_schedule, self.batch_schedule_examples
        if len(sizes) != len(thresholds):
            raise UserError(
                f"batch_schedule {list(sizes)} and batch_schedule_examples {list(thresholds)} need one "
                "threshold per batch size"
            )
        if any(b < 1 or b % self.microbatches for b in sizes):
            raise UserError(
                f"batch_schedule must hold batch sizes >= 1 divisible by microbatches "
                f"{self.microbatches}, got {list(sizes)}"
            )
        if list(thresholds) != sorted(set(thresholds)) or any(x < 1 for x in thresholds):
            raise UserError(f"batch_schedule_examples must increase strictly from >= 1, got {list(thresholds)}")
        scheduled = bool(sizes) or self.batch_auto is not None
        if scheduled and (self.algorithm != "minibatch" or self.lr_scaling != "none" or self.init_from is not None):
            raise UserError(
                "batch_schedule and batch_auto need algorithm 'minibatch', lr_scaling 'none' and no init_from; "
                f"got {self.algorithm!r}, {self.lr_scaling!r}, {self.init_from!r}"
            )
        if self.batch_auto is not None and (sizes or not self.gns):
            raise UserError(
                "batch_auto needs gns (the online noise scale it reads) and no batch_schedule; "
                f"got gns {self.gns!r}, batch_schedule {list(sizes)}"
            )
        if self.batch_beta2_rule == "half_life" and self.optimizer not in ADAM_FAMILY:
            raise UserError(
                f"batch_beta2_rule 'half_life' needs an optimizer with beta2, got {self.optimizer!r}; "
                f"allowed: {', '.join(ADAM_FAMILY)}"
            )

    def _validate_algorithm(self) -> None:
        if self.algorithm == "minibatch" and self.replicas != 1:
            raise UserError(
                f"replicas must be 1 with algorithm 'minibatch' (batch_size is the global batch), "
                f"got {self.replicas!r}; allowed with replicas > 1: "
                f"{', '.join(a for a in ALGORITHMS if a != 'minibatch')}"
            )
        if self.batch_size % self.replicas:
            raise UserError(
                f"replicas must divide batch_size {self.batch_size} (each replica takes batch_size / "
                f"replicas examples), got {self.replicas!r}"
            )
        supported = SUPPORTED_OPTIMIZERS[self.algorithm]
        if supported is not None and self.optimizer not in supported:
            raise UserError(
                f"optimizer {self.optimizer!r} is not supported by algorithm {self.algorithm!r}; "
                f"allowed: {', '.join(supported)}"
            )
        if self.algorithm == "post_local_sgd" and not (switch_step(self) or 0) >= 1:
            raise UserError(
                "algorithm 'post_local_sgd' needs switch_step >= 1 (or schedule 'step' with "
                f"boundaries, whose first decay is the default), got {self.switch_step!r}"
            )
        if self.gns and self.algorithm != "minibatch":
            raise UserError(f"gns needs algorithm 'minibatch' (one model copy), got {self.algorithm!r}")


_TYPES = typing.get_type_hints(TrialConfig)
# Every field's Option, with its name, type and default filled in: the schema of a trial, in field order.
OPTIONS = {
    f.name: dataclasses.replace(
        f.metadata["option"],
        name=f.name,
        type=_TYPES[f.name],
        required=f.default is f.default_factory is MISSING,
        default=f.default_factory()
        if f.default_factory is not MISSING
        else None
        if f.default is MISSING
        else f.default,
    )
    for f in dataclasses.fields(TrialConfig)
}


@dataclass
class TrialRecord:
    """What a trial produced. `measurements` is a list of evaluation rows, each
    with keys step, examples, train_loss, val_loss, val_metric, wall_time (and
    gns_g2, gns_trace, gns_b_simple when the noise scale is tracked). `run` says
    where it ran (harness.engine.environment.run_metadata)."""

    config: dict
    status: str
    steps_to_target: int | None
    metric: str
    direction: str
    target: float
    measurements: list[dict]
    final: dict
    steps_run: int
    wall_time: float
    run: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
