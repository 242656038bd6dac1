"""Measure the gradient noise scale of a workload, and the critical batch size
it predicts (McCandlish et al. 2018: B_crit ~ B_noise, with B_simple a
cheaper proxy).

`measure_noise_scale` trains one trial with the online two-batch estimate on
(McCandlish et al. 2018, App. A.1), then estimates B_simple and B_noise
offline at the final parameters from independent gradients, with standard
errors (harness.engine.noise_scale). The final parameters come back through
the trial's checkpoint.
"""
from __future__ import annotations

import tempfile
from functools import partial

import jax
from jax.tree_util import Partial

from harness.engine import checkpoint, noise_scale
from harness.engine.train import Engine, run_trial
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError
from harness.finite import finite_or_none


def measure_noise_scale(config: TrialConfig, *, data_dir=None, checkpoint_dir=None, num_samples: int = 256,
                        sample_batch_size: int | None = None, hessian: bool = True) -> dict:
    """Train `config` (which must have gns on and a checkpoint at its end) and
    return the online estimates at every evaluation, the offline ones at the
    final parameters (None with `num_samples` 0) and the predicted B_crit, as
    strict-JSON-ready data."""
    sample_batch_size = sample_batch_size or config.batch_size // config.microbatches
    if num_samples:
        noise_scale.check_num_samples(num_samples)
    if sample_batch_size < 1:
        raise UserError(f"sample_batch_size must be >= 1, got {sample_batch_size}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = checkpoint_dir or scratch
        record = run_trial(config, data_dir=data_dir, checkpoint_dir=folder)
        offline = _offline(config, data_dir, num_samples, sample_batch_size, hessian, folder) if num_samples \
            else None
    online = [dict(step=r["step"], b_simple=r["gns_b_simple"], g2=r["gns_g2"], trace=r["gns_trace"])
              for r in record.measurements if "gns_b_simple" in r]  # none before the first step
    basis, b_crit = _prediction(online, offline)
    return finite_or_none(dict(workload=config.workload, batch_size=config.batch_size,
                               microbatches=config.microbatches, status=record.status, steps_run=record.steps_run,
                               online=online, offline=offline, b_crit_predicted=b_crit, b_crit_basis=basis))


def _offline(config: TrialConfig, data_dir, num_samples, sample_batch_size, hessian, checkpoint_dir) -> dict | None:
    """B_simple (and B_noise) at the parameters of the latest checkpoint."""
    workload = get_workload(config.workload)
    data = workload.load_data(data_dir)
    engine = Engine(workload, data, config)
    state, meta = checkpoint.restore(checkpoint_dir, engine.init())
    if meta is None:
        return None
    params, model_state = engine.evaluated(state)
    loss_fn = Partial(partial(_training_loss, engine), model_state)
    estimates = noise_scale.offline_noise_scales(loss_fn, params, Partial(_sample_with_replacement, *engine.train),
                                                 sample_batch_size, num_samples,
                                                 jax.random.key(config.seed + 1), hessian=hessian)
    return dict(step=meta["rows"][-1]["step"], num_samples=num_samples, sample_batch_size=sample_batch_size,
                **{name: e._asdict() for name, e in estimates.items()})


def _training_loss(engine, model_state, params, batch):
    return engine.loss(params, model_state, *batch)[0]


def _sample_with_replacement(train_x, train_y, key, batch_size):
    """A batch drawn with replacement, so its examples are independent (the
    offline estimators assume so)."""
    idx = jax.random.randint(key, (batch_size,), 0, train_x.shape[0])
    return train_x[idx], train_y[idx]


def _prediction(online, offline):
    """B_crit ~ B_noise (McCandlish et al. 2018, Sec. 2.2): the offline B_noise
    when measured, else the offline B_simple, else the last online B_simple."""
    if offline and "b_noise" in offline:
        return "offline b_noise", offline["b_noise"]["value"]
    if offline:
        return "offline b_simple", offline["b_simple"]["value"]
    return "online b_simple", online[-1]["b_simple"] if online else None
