"""Measure the gradient noise scale of a workload, and the critical batch size
it predicts (McCandlish et al. 2018: B_crit ~ B_noise, with B_simple a
cheaper proxy).

`measure_noise_scale` trains one trial with the online two-batch estimate on
(McCandlish et al. 2018, App. A.1), then `windowed_noise_scale` estimates
B_simple and B_noise offline at every step of a window at the end of training
from independent gradients (harness.engine.noise_scale) and combines them as
the ratio of the window means, with a block-bootstrap interval. One step is
not enough: under momentum |G|^2 swings from step to step, and so does a
single step's B_noise (by 30x on mnist_fc128x1 with Nesterov momentum 0.9).
"""

from __future__ import annotations

from functools import partial

import jax
from jax.tree_util import Partial

from harness.engine import noise_scale
from harness.engine.data import train_subset
from harness.engine.loop import TrialRun, run_trial
from harness.engine.step import Engine
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError
from harness.finite import finite_or_none

WINDOW = 20  # steps of the default window
NUM_SAMPLES = 64  # offline gradients per step of the window


def measure_noise_scale(
    config: TrialConfig,
    *,
    data_dir=None,
    checkpoint_dir=None,
    window: int = WINDOW,
    num_samples: int = NUM_SAMPLES,
    sample_batch_size: int | None = None,
    hessian: bool = True,
) -> dict:
    """Train `config` (which must have gns on) and return the online estimates
    at every evaluation, the windowed offline ones over its last `window`
    steps (None with `num_samples` 0; see `windowed_noise_scale`) and the
    predicted B_crit with its interval, as strict-JSON-ready data."""
    sample_batch_size = sample_batch_size or config.batch_size // config.microbatches
    _check(window, num_samples, sample_batch_size)
    record = run_trial(TrialRun(config, checkpoint_dir), data_dir=data_dir)
    offline = (
        windowed_noise_scale(
            config,
            max(1, record.steps_run - window + 1),
            record.steps_run,
            data_dir=data_dir,
            num_samples=num_samples,
            sample_batch_size=sample_batch_size,
            hessian=hessian,
        )
        if num_samples
        else None
    )
    online = [
        dict(step=r["step"], b_simple=r["gns_b_simple"], g2=r["gns_g2"], trace=r["gns_trace"])
        for r in record.measurements
        if "gns_b_simple" in r
    ]  # none before the first step
    basis, b_crit, interval = _prediction(online, offline)
    return finite_or_none(
        dict(
            workload=config.workload,
            optimizer=config.optimizer,
            batch_size=config.batch_size,
            microbatches=config.microbatches,
            status=record.status,
            steps_run=record.steps_run,
            online=online,
            offline=offline,
            b_crit_predicted=b_crit,
            b_crit_interval=interval,
            b_crit_basis=basis,
        )
    )


def windowed_noise_scale(
    config: TrialConfig,
    first: int,
    last: int,
    *,
    data_dir=None,
    num_samples: int = NUM_SAMPLES,
    sample_batch_size: int | None = None,
    hessian: bool = True,
) -> dict:
    """B_simple (and B_noise) of the trial `config` over its steps
    `first`..`last` (1 <= first <= last): offline estimates from `num_samples`
    independent gradients of `sample_batch_size` examples at the parameters
    after each of those steps, combined as mean(noise) / mean(signal) over the
    window with a moving-block bootstrap interval (noise_scale.
    window_noise_scale; McCandlish et al. 2018, App. A: a ratio of averages).

    The parameters come from replaying the trial from its initialisation with
    the same compiled steps and data order as `run_trial`, so they are the
    trial's own. The estimate at a step draws its gradients from a key that
    depends only on (seed, step): overlapping windows share their points.

    Returns {"window": {"first", "last", "method"}, "num_samples",
    "sample_batch_size", "points": [{"step", "b_simple", "b_noise"}, ...] (the
    per-step offline estimates, noise_scale.NoiseScale as dicts),
    "b_simple", "b_noise" (noise_scale.WindowedNoiseScale as dicts)}."""
    return windows_noise_scale(
        config,
        [(first, last)],
        data_dir=data_dir,
        num_samples=num_samples,
        sample_batch_size=sample_batch_size,
        hessian=hessian,
    )[0]


def windows_noise_scale(
    config: TrialConfig,
    windows,
    *,
    data_dir=None,
    num_samples: int = NUM_SAMPLES,
    sample_batch_size: int | None = None,
    hessian: bool = True,
) -> list[dict]:
    """`windowed_noise_scale` for each (first, last) window of `windows`, from
    one replay of the trial (e.g. a window ending at each checkpoint of a
    run, for the noise scale over training)."""
    sample_batch_size = sample_batch_size or config.batch_size // config.microbatches
    for first, last in windows:
        _check(last - first + 1, num_samples, sample_batch_size)
        if first < 1:
            raise UserError(f"window must start at step >= 1, got {first}")
    workload = get_workload(config.workload)
    engine = Engine(workload, train_subset(workload.load_data(data_dir), config.train_examples), config)
    if engine.feed is not None:  # streamed (harness.engine.stream): no device-resident data to sample from
        raise UserError("the offline noise scale samples batches on the device: it needs data_placement 'memory'")
    loss = partial(_training_loss, engine)  # one object, so every step reuses one compilation
    sample = Partial(_sample_with_replacement, *engine.train)
    key = jax.random.key(config.seed + 1)
    state, at, points = engine.init(), 0, {}
    for step in sorted({s for first, last in windows for s in range(first, last + 1)}):
        state, _, _ = engine.advance(state, at, step)
        at = step
        params, model_state = engine.evaluated(engine.trial(state, 0))
        points[step] = noise_scale.offline_noise_scales(
            Partial(loss, model_state),
            params,
            sample,
            sample_batch_size,
            num_samples,
            jax.random.fold_in(key, step),
            hessian=hessian,
        )
    return [
        _combine(
            [dict(step=s, **points[s]) for s in range(first, last + 1)],
            first,
            last,
            num_samples,
            sample_batch_size,
            hessian,
        )
        for first, last in windows
    ]


def _combine(points, first, last, num_samples, sample_batch_size, hessian) -> dict:
    """One window's per-step offline estimates and their combination."""
    names = ("b_simple", "b_noise") if hessian else ("b_simple",)
    combined = {name: noise_scale.window_noise_scale([p[name] for p in points]) for name in names}
    block = combined["b_simple"].block
    method = (
        f"ratio of the window means of the unbiased offline signal and noise estimates at each of the "
        f"{len(points)} steps (McCandlish et al. 2018, App. A); {combined['b_simple'].level:.0%} "
        + (
            f"moving-block bootstrap interval over the steps (blocks of {block})"
            if len(points) > 1
            else "normal interval from the one step's jackknife standard error"
        )
    )
    return dict(
        window=dict(first=first, last=last, method=method),
        num_samples=num_samples,
        sample_batch_size=sample_batch_size,
        points=[{k: v if k == "step" else v._asdict() for k, v in p.items()} for p in points],
        **{name: e._asdict() for name, e in combined.items()},
    )


def _check(window, num_samples, sample_batch_size) -> None:
    """UserErrors for bad arguments, before any training."""
    if not (isinstance(window, int) and window >= 1):
        raise UserError(f"window must be an integer number of steps >= 1, got {window!r}")
    if num_samples:
        noise_scale.check_num_samples(num_samples)
    if sample_batch_size < 1:
        raise UserError(f"sample_batch_size must be >= 1, got {sample_batch_size}")


def _training_loss(engine, model_state, params, batch):
    return engine.loss(params, model_state, *batch)[0]


def _sample_with_replacement(train_x, train_y, key, batch_size):
    """A batch drawn with replacement, so its examples are independent (the
    offline estimators assume so)."""
    idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
    return train_x[idx], train_y[idx]


def _prediction(online, offline):
    """B_crit ~ B_noise (McCandlish et al. 2018, Sec. 2.2): the windowed
    offline B_noise when measured, else the windowed offline B_simple, else
    the last online B_simple (no interval). Returns (basis, value, interval)."""
    for name in ("b_noise", "b_simple"):
        if offline and name in offline:
            e, w = offline[name], offline["window"]
            return f"offline {name} over steps {w['first']}..{w['last']}", e["value"], [e["low"], e["high"]]
    return "online b_simple", online[-1]["b_simple"] if online else None, None
