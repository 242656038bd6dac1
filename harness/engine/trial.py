"""One trial as data: its configuration and its record.

A trial is (workload, batch size, optimizer and metaparameters, schedule, seed,
target, budget). `TrialConfig` is plain data (JSON round-trips), validated in
one place so that bad input fails before any training starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from harness.engine.algorithms import ALGORITHMS, SUPPORTED_OPTIMIZERS, switch_step
from harness.engine.evaluation import EVAL_SCHEDULES
from harness.engine.optimizers import LR_SCALINGS, OPTIMIZERS, SCHEDULES, WARMUPS
from harness.errors import UserError

STATUSES = ("complete", "incomplete", "diverged", "pruned")


@dataclass(frozen=True)
class TrialConfig:
    """Everything that determines a trial's measurements.

    `learning_rate` is eta0 at the reference batch size; `lr_scaling` rescales it
    to `batch_size` (Goyal et al. 2017 linear rule, or the square-root rule).
    Schedules (Shallue et al. 2019, Sec. 4.5): `linear_decay` goes from eta0 to
    `end_lr_factor * eta0` at `decay_steps` then stays; `cosine` decays to
    `end_lr_factor * eta0` at `decay_steps`; `step` multiplies by
    `decay_factor` at each of `boundaries`. A warmup prefix of `warmup_steps`
    is `linear` (gradual, from 0) or `constant` (at `warmup_factor * eta0`).

    `algorithm` couples `replicas` model copies (harness.engine.algorithms):
    `batch_size` is always the global batch, B / `replicas` per replica, so
    algorithms compare at the same examples per step. `local_steps` is local
    SGD's H, `switch_step` post-local SGD's switch to H, `sma_alpha` (default
    1 / replicas) and `sma_momentum` Crossbow SMA's alpha and mu.

    Branching (Merrill et al. 2025, Sec. 3): the trial keeps a snapshot of its
    state after each step of `snapshot_steps`; a trial with `init_from` (a
    snapshot folder) starts from that snapshot's parameters, model state and
    optimizer state at its own step `init_step` (which fixes where in the data
    order it continues), with its own batch size and metaparameters.
    """

    workload: str
    batch_size: int
    learning_rate: float
    optimizer: str = "nesterov"
    momentum: float = 0.9
    schedule: str = "constant"
    decay_steps: int | None = None
    end_lr_factor: float = 0.0
    boundaries: tuple[int, ...] = ()
    decay_factor: float = 0.1
    warmup: str = "none"
    warmup_steps: int = 0
    warmup_factor: float = 0.1
    lr_scaling: str = "none"
    reference_batch_size: int | None = None
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    trust_coefficient: float = 0.001
    seed: int = 0
    target: float | None = None
    max_steps: int = 10_000
    eval_every: int | None = None
    eval_schedule: str = "linear"
    stop_at_target: bool = True
    microbatches: int = 1
    gns: bool = False
    gns_ema: float = 0.95
    divergence_factor: float = 10.0
    checkpoint_every: int | None = None
    algorithm: str = "minibatch"
    replicas: int = 1
    local_steps: int = 1
    switch_step: int | None = None
    sma_alpha: float | None = None
    sma_momentum: float = 0.9
    workload_options: dict = field(default_factory=dict)
    snapshot_steps: tuple[int, ...] = ()
    init_from: str | None = None
    init_step: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown trial field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        d = dict(d)
        for key in ("boundaries", "snapshot_steps"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def effective_learning_rate(self) -> float:
        """eta0 after the batch-size scaling rule (Goyal et al. 2017, Sec. 2.1)."""
        if self.lr_scaling == "none":
            return self.learning_rate
        return self.learning_rate * LR_SCALINGS[self.lr_scaling](self.batch_size / self.reference_batch_size)

    def validate(self) -> None:
        """Raise UserError naming the first bad field and its allowed values."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("warmup", self.warmup, WARMUPS)
        _choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        _choice("eval_schedule", self.eval_schedule, EVAL_SCHEDULES)
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise UserError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.optimizer in ("momentum", "nesterov", "lars") and not 0 <= self.momentum < 1:
            raise UserError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1, got {self.max_steps!r}")
        self._validate_algorithm()
        if self.microbatches < 1 or self.batch_size % (self.replicas * self.microbatches):
            per_replica = f" / replicas {self.replicas}" if self.replicas > 1 else ""
            raise UserError(f"microbatches must divide batch_size {self.batch_size}{per_replica}, "
                            f"got {self.microbatches!r}")
        if self.schedule in ("linear_decay", "cosine") and not (self.decay_steps or 0) >= 1:
            raise UserError(f"schedule {self.schedule!r} needs decay_steps >= 1")
        if self.lr_scaling != "none" and not (self.reference_batch_size or 0) >= 1:
            raise UserError(f"lr_scaling {self.lr_scaling!r} needs reference_batch_size >= 1")
        if self.warmup != "none" and self.warmup_steps < 1:
            raise UserError(f"warmup {self.warmup!r} needs warmup_steps >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if any(not 1 <= s <= self.max_steps for s in self.snapshot_steps):
            raise UserError(f"snapshot_steps must be in [1, max_steps={self.max_steps}], got {self.snapshot_steps!r}")
        if not 0 <= self.init_step < self.max_steps or (self.init_step and self.init_from is None):
            raise UserError(f"init_step must be in [0, max_steps={self.max_steps}) and needs init_from, "
                            f"got {self.init_step!r}")

    def _validate_algorithm(self) -> None:
        _choice("algorithm", self.algorithm, ALGORITHMS)
        if self.algorithm == "minibatch" and self.replicas != 1:
            raise UserError(f"replicas must be 1 with algorithm 'minibatch' (batch_size is the global batch), "
                            f"got {self.replicas!r}; allowed with replicas > 1: "
                            f"{', '.join(a for a in ALGORITHMS if a != 'minibatch')}")
        if not (isinstance(self.replicas, int) and self.replicas >= 1) or self.batch_size % self.replicas:
            raise UserError(f"replicas must divide batch_size {self.batch_size} (each replica takes batch_size / "
                            f"replicas examples), got {self.replicas!r}")
        supported = SUPPORTED_OPTIMIZERS[self.algorithm]
        if supported is not None and self.optimizer not in supported:
            raise UserError(f"optimizer {self.optimizer!r} is not supported by algorithm {self.algorithm!r}; "
                            f"allowed: {', '.join(supported)}")
        if self.local_steps < 1:
            raise UserError(f"local_steps must be >= 1, got {self.local_steps!r}")
        if self.algorithm == "post_local_sgd" and not (switch_step(self) or 0) >= 1:
            raise UserError("algorithm 'post_local_sgd' needs switch_step >= 1 (or schedule 'step' with "
                            f"boundaries, whose first decay is the default), got {self.switch_step!r}")
        if self.sma_alpha is not None and not 0 < self.sma_alpha <= 1:
            raise UserError(f"sma_alpha must be in (0, 1], got {self.sma_alpha!r}")
        if not 0 <= self.sma_momentum < 1:
            raise UserError(f"sma_momentum must be in [0, 1), got {self.sma_momentum!r}")
        if self.gns and self.algorithm != "minibatch":
            raise UserError(f"gns needs algorithm 'minibatch' (one model copy), got {self.algorithm!r}")


def _choice(name, value, allowed):
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


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
