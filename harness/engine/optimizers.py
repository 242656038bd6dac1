"""Optimizers and learning-rate schedules of the large-batch literature, all
built from optax (nothing hand-written). Tables of builders, not if/elif
chains: a new optimizer or schedule is one entry."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import optax

if TYPE_CHECKING:  # trial.py takes its allowed names from the tables here
    from harness.engine.trial import TrialConfig

# Numeric metaparameters that may be traced values: trials that differ only in
# these share one compiled program (and one entry of the compilation cache),
# and can be packed into one program (harness.engine.pack).
TRACED = (
    "momentum",
    "end_lr_factor",
    "decay_steps",
    "warmup_factor",
    "weight_decay",
    "b1",
    "b2",
    "eps",
    "trust_coefficient",
)

# How the learning rate and Adam's beta2 move when a trial's batch size changes
# (harness.engine.batch_schedule); the optimizers that have a beta2.
BATCH_LR_RULES = ("auto", "linear", "sqrt", "none")
BETA2_RULES = ("none", "half_life")
ADAM_FAMILY = ("adam", "adamw", "lamb")

# Weight decay is built into these; the others get optax.add_decayed_weights.
_DECAY_BUILT_IN = ("adamw", "lars", "lamb")

_OPTIMIZERS = {
    "sgd": lambda c, lr: optax.sgd(lr),
    # optax's trace is TF's momentum: v <- g + m v, update -lr v (Shallue et al. Sec. 2).
    "momentum": lambda c, lr: optax.sgd(lr, momentum=c.momentum),
    "nesterov": lambda c, lr: optax.sgd(lr, momentum=c.momentum, nesterov=True),
    "adam": lambda c, lr: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps),
    "adamw": lambda c, lr: optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay),
    # You et al. 2017. Note optax applies weight decay before the trust ratio.
    "lars": lambda c, lr: optax.lars(
        lr, weight_decay=c.weight_decay, trust_coefficient=c.trust_coefficient, momentum=c.momentum
    ),
    # You et al. 2020.
    "lamb": lambda c, lr: optax.lamb(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay),
}


def _per_decay(schedule: optax.Schedule, decay_steps) -> optax.Schedule:
    """`schedule` over one unit of time, stretched to `decay_steps` steps:
    optax takes the length of a decay as a Python number, but a traced one
    lets trials with different decay lengths share one program."""
    return lambda count: schedule(count / decay_steps)


_SCHEDULES = {
    "constant": lambda c, lr: optax.constant_schedule(lr),
    # Shallue et al. 2019, Sec. 4.5: eta(t) = eta0 (1 - (1 - alpha) t / T), then alpha eta0.
    "linear_decay": lambda c, lr: _per_decay(optax.polynomial_schedule(lr, c.end_lr_factor * lr, 1, 1), c.decay_steps),
    "cosine": lambda c, lr: _per_decay(optax.cosine_decay_schedule(lr, 1, alpha=c.end_lr_factor), c.decay_steps),
    # Goyal et al. 2017: multiply by decay_factor at each boundary step.
    "step": lambda c, lr: optax.piecewise_constant_schedule(lr, {b: c.decay_factor for b in c.boundaries}),
}

_WARMUPS = {
    # Goyal et al. 2017, Sec. 2.2: gradual warmup from warmup_factor * eta0 to eta0.
    "linear": lambda c, lr: optax.linear_schedule(c.warmup_factor * lr, lr, c.warmup_steps),
    "constant": lambda c, lr: optax.constant_schedule(c.warmup_factor * lr),
}


# How eta0 scales with k = batch_size / reference_batch_size (Goyal et al. 2017,
# Sec. 2.1: the linear rule; the square-root rule is the alternative).
LR_SCALINGS = {"none": lambda k: 1.0, "linear": lambda k: k, "sqrt": math.sqrt}

# The allowed names: the keys of the tables that implement them.
OPTIMIZERS = tuple(_OPTIMIZERS)
SCHEDULES = tuple(_SCHEDULES)
WARMUPS = ("none", *_WARMUPS)
# The optimizers with a `momentum` metaparameter (heavy-ball, Nesterov, and LARS: You et al. 2017).
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov", "lars")
# The adaptive (Adam-family) optimizers: per-coordinate steps; their learning rate follows the
# square-root rule across batch sizes (Merrill et al. 2025).
ADAPTIVE_OPTIMIZERS = ("adam", "adamw", "lamb")


def hyperparameters(config: TrialConfig) -> dict:
    """The traced metaparameters of a trial, with the learning rate after the
    batch-size scaling rule, as data for `make_optimizer(config, hparams)`."""
    return {
        "learning_rate": config.effective_learning_rate(),
        **{k: getattr(config, k) for k in TRACED},
        "decay_steps": config.decay_steps or 1,
    }


def make_schedule(config: TrialConfig, lr=None) -> optax.Schedule:
    """The learning rate at each step from eta0 = `lr` (default: the config's,
    after scaling); after a warmup prefix the main schedule starts from its own
    step 0."""
    lr = config.effective_learning_rate() if lr is None else lr
    schedule = _SCHEDULES[config.schedule](config, lr)
    if config.warmup == "none":
        return schedule
    return optax.join_schedules([_WARMUPS[config.warmup](config, lr), schedule], [config.warmup_steps])


def make_optimizer(config: TrialConfig, hparams: dict | None = None) -> optax.GradientTransformation:
    """The trial's optimizer. `hparams` (see `hyperparameters`) may hold traced
    values; the structure (optimizer, schedule, whether weight decay is on)
    comes from `config` alone."""
    hp = hyperparameters(config) if hparams is None else hparams
    c = dataclasses.replace(config, **{k: hp[k] for k in TRACED})
    optimizer = _OPTIMIZERS[config.optimizer](c, make_schedule(c, hp["learning_rate"]))
    if config.weight_decay and config.optimizer not in _DECAY_BUILT_IN:
        return optax.chain(optax.add_decayed_weights(c.weight_decay), optimizer)
    return optimizer
