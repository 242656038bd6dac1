"""`cbs gns`: the gradient noise scale of a workload, and the critical batch
size it predicts (McCandlish et al. 2018: B_crit ~ B_noise, with B_simple a
cheaper proxy).

Trains one trial with the online two-batch estimate switched on (each batch
split into `--microbatches` micro-batches), prints B_simple at every
evaluation, then estimates B_simple and B_noise offline at the final
parameters from `--num-samples` independent gradients, with standard errors.
The final parameters come back through the trial's checkpoint."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
from functools import partial
from pathlib import Path

from harness.commands import train as train_command
from harness.errors import UserError
from harness.trial import TrialConfig


def add_arguments(parser):
    train_command.add_arguments(parser)
    parser.add_argument("--num-samples", type=int, default=256,
                        help="independent gradients for the offline estimate at the final parameters, a multiple "
                             "of 16 and >= 32; 0 skips it (default: 256)")
    parser.add_argument("--sample-batch-size", type=int,
                        help="examples per offline gradient sample (default: the micro-batch size)")
    parser.add_argument("--no-hessian", dest="hessian", action="store_false",
                        help="skip B_noise (Hessian-vector products) in the offline estimate")


def run(args) -> int:
    from harness import noise_scale
    from harness.train import run_trial

    config = _config(args)
    sample_batch_size = args.sample_batch_size or config.batch_size // config.microbatches
    if args.num_samples:
        noise_scale.check_num_samples(args.num_samples)
    if sample_batch_size < 1:
        raise UserError(f"sample_batch_size must be >= 1, got {sample_batch_size}")
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint_dir = args.checkpoint_dir or scratch
        record = run_trial(config, data_dir=args.data_dir, checkpoint_dir=checkpoint_dir)
        offline = _offline(config, args, sample_batch_size, checkpoint_dir) if args.num_samples else None
    online = [dict(step=r["step"], b_simple=r["gns_b_simple"], g2=r["gns_g2"], trace=r["gns_trace"])
              for r in record.measurements if "gns_b_simple" in r]  # none before the first step
    basis, b_crit = _prediction(online, offline)
    result = dict(workload=config.workload, batch_size=config.batch_size, microbatches=config.microbatches,
                  status=record.status, steps_run=record.steps_run, online=online, offline=offline,
                  b_crit_predicted=b_crit, b_crit_basis=basis)
    result = _finite(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gns.json").write_text(json.dumps(result, indent=1))
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        _print(result)
    return 0


def _config(args) -> TrialConfig:
    """The trial of `cbs train` with the noise scale on. Defaults differ where
    the noise scale needs it: 2 micro-batches, train the whole budget, and one
    checkpoint at its end (to read the final parameters back)."""
    max_steps = args.max_steps or TrialConfig.max_steps
    config = train_command.config_from_args(args, microbatches=2, stop_at_target=False, checkpoint_every=max_steps)
    config = dataclasses.replace(config, gns=True)
    config.validate()
    return config


def _offline(config: TrialConfig, args, sample_batch_size, checkpoint_dir) -> dict | None:
    """B_simple (and B_noise) at the parameters of the latest checkpoint."""
    import jax
    from jax.tree_util import Partial

    from harness import checkpoint, noise_scale
    from harness.train import Engine
    from harness.workloads import get_workload

    workload = get_workload(config.workload)
    data = workload.load_data(args.data_dir)
    engine = Engine(workload, data, config)
    state, meta = checkpoint.restore(checkpoint_dir, engine.init())
    if meta is None:
        return None
    loss_fn = Partial(partial(_training_loss, engine), state.model_state)
    estimates = noise_scale.offline_noise_scales(loss_fn, state.params, Partial(_sample_with_replacement, *engine.train),
                                                 sample_batch_size, args.num_samples,
                                                 jax.random.key(config.seed + 1), hessian=args.hessian)
    return dict(step=meta["rows"][-1]["step"], num_samples=args.num_samples, sample_batch_size=sample_batch_size,
                **{name: e._asdict() for name, e in estimates.items()})


def _training_loss(engine, model_state, params, batch):
    return engine.loss(params, model_state, *batch)[0]


def _sample_with_replacement(train_x, train_y, key, batch_size):
    """A batch drawn with replacement, so its examples are independent (the
    offline estimators assume so)."""
    import jax

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


def _finite(value):
    """NaN and infinities as null, so that the output is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _print(result):
    def num(v):
        return "n/a" if v is None else f"{v:.4g}"

    print(f"{result['workload']} B={result['batch_size']} ({result['microbatches']} micro-batches): "
          f"{result['status']} after {result['steps_run']} steps")
    print(f"{'step':>8}  {'B_simple':>10}  {'|G|^2':>10}  {'tr(Sigma)':>10}")
    for row in result["online"]:
        print(f"{row['step']:>8}  {num(row['b_simple']):>10}  {num(row['g2']):>10}  {num(row['trace']):>10}")
    offline = result["offline"]
    if offline is None:
        print("offline estimate: none (--num-samples 0, or the trial stopped before its checkpoint)")
    else:
        print(f"offline at step {offline['step']} ({offline['num_samples']} gradients of "
              f"{offline['sample_batch_size']} examples):")
        for name, label in (("b_simple", "B_simple = tr(Sigma)/|G|^2"), ("b_noise", "B_noise = tr(H Sigma)/G'HG")):
            if name in offline:
                print(f"  {label} = {num(offline[name]['value'])} +- {num(offline[name]['stderr'])}")
    print(f"predicted critical batch size B_crit ~ {num(result['b_crit_predicted'])} "
          f"({result['b_crit_basis']}; McCandlish et al. 2018: B_crit ~ B_noise, B_simple its proxy; "
          f"the noise scale grows as the loss falls, so compare it with B_crit at a similar loss)")
