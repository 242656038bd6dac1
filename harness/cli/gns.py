"""`cbs gns`: the gradient noise scale of a workload over training, and the
critical batch size it predicts (harness.engine.noise_scale_study). Each batch is split
into `--microbatches` micro-batches for the online two-batch estimate; the
offline estimate uses `--num-samples` independent gradients at every step of
the last `--window` steps, combined over the window.

It takes `cbs train`'s trial options but those it fixes: --gns (always on),
--no-stop-at-target (it always trains the whole budget: the noise scale is
wanted over all of training) and --checkpoint-every (one checkpoint, at the
end, with --checkpoint-dir); and, as it runs on one host, not the multi-host
options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.cli import train as train_command
from harness.engine.noise_scale_study import NUM_SAMPLES, WINDOW
from harness.engine.trial import TrialConfig

FIXED = ("gns", "stop_at_target", "checkpoint_every")  # TrialConfig fields `cbs gns` sets itself


def add_arguments(parser):
    train_command.add_config_arguments(parser, exclude=FIXED)
    parser.add_argument("--data-dir", help="folder of the datasets (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument(
        "--checkpoint-dir",
        help="keep the trial's Orbax checkpoints here (default: a temporary folder); resumes from the latest one",
    )
    parser.add_argument("--out", help="write gns.json into this folder")
    parser.add_argument(
        "--calibration",
        help="calibration.json of `cbs calibrate`: the ratio of the swept B_crit to the noise scale per "
        "optimizer family (default: the one shipped, from the committed MNIST and Fashion-MNIST studies)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help="steps at the end of training over which the offline estimate is averaged (the "
        "ratio of the window means of |G|^2 and tr(Sigma), with a block-bootstrap interval); "
        f"an offline estimate is taken after each of them (default: {WINDOW})",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=NUM_SAMPLES,
        help="independent gradients for the offline estimate at each step of the window, a "
        f"multiple of 16 and >= 32; 0 skips it (default: {NUM_SAMPLES})",
    )
    parser.add_argument(
        "--sample-batch-size", type=int, help="examples per offline gradient sample (default: the micro-batch size)"
    )
    parser.add_argument(
        "--no-hessian",
        dest="hessian",
        action="store_false",
        help="skip B_noise (Hessian-vector products) in the offline estimate",
    )


def run(args) -> int:
    from analysis.noise_calibration import load_calibration, predict
    from harness.engine.noise_scale_study import measure_noise_scale

    calibration = load_calibration(args.calibration)
    config = _config(args)
    result = measure_noise_scale(
        config,
        data_dir=args.data_dir,
        checkpoint_dir=args.checkpoint_dir,
        window=args.window,
        num_samples=args.num_samples,
        sample_batch_size=args.sample_batch_size,
        hessian=args.hessian,
    )
    result["b_crit_calibrated"] = predict(calibration, config.optimizer, result["offline"])
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
    """The trial of `cbs train` with the noise scale on, the whole budget
    trained and one checkpoint at its end (the final parameters, with
    --checkpoint-dir); 2 micro-batches unless --microbatches says otherwise."""
    max_steps = args.max_steps or TrialConfig.max_steps
    config = train_command.config_from_args(
        args, microbatches=2, gns=True, stop_at_target=False, checkpoint_every=max_steps
    )
    config.validate()
    return config


def _print(result):
    from analysis.noise_calibration import FAMILIES
    from analysis.text import num

    print(
        f"{result['workload']} B={result['batch_size']} ({result['microbatches']} micro-batches): "
        f"{result['status']} after {result['steps_run']} steps"
    )
    print(f"{'step':>8}  {'B_simple':>10}  {'|G|^2':>10}  {'tr(Sigma)':>10}")
    for row in result["online"]:
        print(f"{row['step']:>8}  {num(row['b_simple']):>10}  {num(row['g2']):>10}  {num(row['trace']):>10}")
    offline = result["offline"]
    names = (("b_simple", "B_simple = tr(Sigma)/|G|^2"), ("b_noise", "B_noise = tr(H Sigma)/G'HG"))
    if offline is None:
        print("offline estimate: none (--num-samples 0)")
    else:
        window = offline["window"]
        print(f"offline at each step ({offline['num_samples']} gradients of {offline['sample_batch_size']} examples):")
        present = [(name, label) for name, label in names if name in offline]
        print(f"{'step':>8}" + "".join(f"  {label.split(' ')[0]:>10}" for _, label in present))
        for point in offline["points"]:
            print(f"{point['step']:>8}" + "".join(f"  {num(point[name]['value']):>10}" for name, _ in present))
        print(f"window: steps {window['first']}..{window['last']}")
        for name, label in present:
            e = offline[name]
            print(
                f"  {label} = {num(e['value'])} +- {num(e['stderr'])} "
                f"({e['level']:.0%} interval {num(e['low'])}..{num(e['high'])})"
            )
        print(f"  method: {window['method']}")
    interval = result["b_crit_interval"]
    print(
        f"uncalibrated: B_crit ~ {num(result['b_crit_predicted'])}"
        + (f" ({num(interval[0])}..{num(interval[1])})" if interval else "")
        + f" ({result['b_crit_basis']}; McCandlish et al. 2018: B_crit ~ B_noise, B_simple its proxy; "
        f"the noise scale grows as the loss falls, so compare it with B_crit at a similar loss)"
    )
    c = result["b_crit_calibrated"]
    if c is None and offline is None:
        print("predicted critical batch size: no offline estimate to calibrate (--num-samples 0)")
    elif c is None:
        print(
            f"predicted critical batch size: no calibration for {result['optimizer']} (no swept study of "
            f"its family, {FAMILIES[result['optimizer']]}, in the calibration); only the uncalibrated value above"
        )
    else:
        spread = f" (90% for a new workload: {num(c['low'])}..{num(c['high'])})" if c["low"] is not None else ""
        print(
            f"predicted critical batch size B_crit ~ {num(c['value'])}{spread}: {c['ratio']:.3g} x "
            f"{c['basis']}, the ratio calibrated on {c['n']} swept studies of the {c['family']} family "
            "(cbs calibrate; measured at the best trial of a middle batch size near its crossing, so "
            "measure there too)"
        )
