"""The data-parallel algorithms: how the model copies of one trial (its
replicas: a leading axis on every per-copy leaf of the train state) are coupled
after each local step, which model is evaluated, and how many communication
rounds a number of steps costs.

A step of every algorithm consumes the global batch (`batch_size` examples);
with K = `replicas` each replica takes its own consecutive B / K of them, so
algorithms compare at the same global examples per step.

- `minibatch`: one copy, one update on the whole batch per step (one gradient
  all-reduce per step).
- `local_sgd` (Lin et al. 2020, Alg. 1): every replica takes local steps with
  its own optimizer state; after every H = `local_steps` steps the replicas'
  parameters are replaced by their average (one communication round).
- `post_local_sgd` (Lin et al. 2020, Sec. 3): H = 1 (mini-batch SGD) up to
  step `switch_step` (default: the first learning-rate decay of the step
  schedule), then local SGD with H.
- `sma` (Koliousis et al. 2019, Alg. 1, synchronous model averaging): learner
  j takes g_j = lr * grad(w_j) and c_j = alpha (w_j - z), then
  w_j <- w_j - g_j - c_j; the central model z <- z + sum_j c_j + mu (z - z_prev).
  One round per step; evaluation is on z.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # trial.py takes its allowed names from the tables here
    from harness.engine.trial import TrialConfig

# Each algorithm with the optimizers its paper runs its replicas with (None: any).
SUPPORTED_OPTIMIZERS = {
    "minibatch": None,
    "local_sgd": ("sgd", "momentum", "nesterov"),
    "post_local_sgd": ("sgd", "momentum", "nesterov"),
    "sma": ("sgd",),
}
ALGORITHMS = tuple(SUPPORTED_OPTIMIZERS)


def switch_step(config: TrialConfig) -> int | None:
    """Post-local SGD's switch from H = 1 to H: `switch_step`, else the first
    boundary of the step schedule (counted after the warmup), else None."""
    if config.switch_step is not None:
        return config.switch_step
    if config.schedule == "step" and config.boundaries:
        return config.warmup_steps + min(config.boundaries)
    return None


def sma_alpha(config: TrialConfig) -> float:
    """Crossbow's alpha, by default 1 / K (Koliousis et al. 2019, Sec. 3.2)."""
    return 1.0 / config.replicas if config.sma_alpha is None else config.sma_alpha


def communication_rounds(config: TrialConfig, steps: int) -> int:
    """Rounds of communication (gradient all-reduces or parameter averages)
    in the first `steps` steps."""
    if config.algorithm == "local_sgd":
        return steps // config.local_steps
    if config.algorithm == "post_local_sgd":
        s = switch_step(config)
        return min(steps, s) + max(0, steps // config.local_steps - s // config.local_steps)
    return steps


def initial_center(config: TrialConfig, params):
    """SMA's central model z and its previous value, both the initial model."""
    return {"z": params, "z_prev": params} if config.algorithm == "sma" else None


def couple(config: TrialConfig, before, after, center, step):
    """The replicas' parameters and the center after step number `step`
    (1-based), from the parameters `before` and `after` their local updates."""
    if config.algorithm == "sma":
        return _sma(config, before, after, center)
    if config.algorithm == "minibatch":
        return after, center
    if config.algorithm == "local_sgd":
        period = config.local_steps
    else:
        period = jnp.where(step <= switch_step(config), 1, config.local_steps)
    return jax.lax.cond(step % period == 0, _average, lambda p: p, after), center


def _average(params):
    return jax.tree.map(lambda w: jnp.broadcast_to(w.mean(0), w.shape), params)


def _sma(config, before, after, center):
    """Koliousis et al. 2019, Alg. 1: c_j = alpha (w_j - z) from the learners'
    parameters before their step; `after` already holds w_j - g_j."""
    alpha, mu = sma_alpha(config), config.sma_momentum
    z, z_prev = center["z"], center["z_prev"]
    corrections = jax.tree.map(lambda w, z: alpha * (w - z), before, z)
    params = jax.tree.map(lambda w, c: w - c, after, corrections)
    new_z = jax.tree.map(lambda z, zp, c: z + c.sum(0) + mu * (z - zp), z, z_prev, corrections)
    return params, {"z": new_z, "z_prev": z}


def evaluated(config: TrialConfig, params, model_state, center):
    """The model that is evaluated: z for SMA, else the replicas' average
    (model state, e.g. batch-norm statistics, always averaged)."""
    mean = lambda tree: jax.tree.map(lambda a: a.mean(0), tree)
    return center["z"] if config.algorithm == "sma" else mean(params), mean(model_state)
