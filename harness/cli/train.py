"""`cbs train`: one trial from the command line. Every TrialConfig field is an
option (`--batch-size`, `--learning-rate`, ...), generated from the dataclass
so the CLI and the config never drift apart."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from harness.engine.algorithms import ALGORITHMS
from harness.engine.evaluation import EVAL_SCHEDULES
from harness.engine.optimizers import LR_SCALINGS, OPTIMIZERS, SCHEDULES, WARMUPS
from harness.engine.trial import TrialConfig

_REQUIRED = ("workload", "batch_size", "learning_rate")
_PARSERS = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}
# Fields that are no option: snapshots need the snapshot folder a sweep worker gives (harness.sweep.local_cbs).
SWEEP_ONLY = ("snapshot_steps",)
# The allowed values of the string fields: the engine's own tables.
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "warmup": WARMUPS, "lr_scaling": tuple(LR_SCALINGS),
           "eval_schedule": tuple(EVAL_SCHEDULES), "algorithm": ALGORITHMS}
# One line per TrialConfig field (harness.engine.trial); the default is appended.
HELP = {
    "workload": "a workload of `cbs workloads`, <mnist|fashion_mnist>_fc<width>x<depth>, or path/to/file.py:name",
    "batch_size": "examples per training step",
    "learning_rate": "initial learning rate eta0 (at --reference-batch-size when --lr-scaling is set)",
    "optimizer": "the optax optimizer",
    "momentum": "momentum of momentum, nesterov and lars",
    "schedule": "learning-rate schedule after the warmup",
    "decay_steps": "steps over which linear_decay and cosine decay the learning rate",
    "end_lr_factor": "final learning rate of linear_decay and cosine, as a fraction of eta0",
    "boundaries": "comma-separated steps at which the step schedule multiplies the learning rate by --decay-factor",
    "decay_factor": "the step schedule's factor at each boundary",
    "warmup": "learning-rate warmup before the schedule: linear from --warmup-factor * eta0, or constant there",
    "warmup_steps": "steps of warmup",
    "warmup_factor": "learning rate at the start of (or during a constant) warmup, as a fraction of eta0",
    "lr_scaling": "rescale --learning-rate from --reference-batch-size to --batch-size (Goyal et al. 2017)",
    "reference_batch_size": "the batch size --learning-rate is given for (with --lr-scaling)",
    "weight_decay": "weight decay: built into adamw, lars and lamb, added to the gradient otherwise",
    "label_smoothing": "label smoothing of classification losses, in [0, 1)",
    "b1": "first-moment decay of adam, adamw and lamb",
    "b2": "second-moment decay of adam, adamw and lamb",
    "eps": "denominator epsilon of adam, adamw and lamb",
    "trust_coefficient": "trust coefficient of lars",
    "seed": "random seed of initialisation and data order",
    "target": "metric value to reach (default: the workload's target)",
    "max_steps": "step budget",
    "eval_every": "steps between evaluations (default: the workload's cadence)",
    "eval_schedule": "evaluation steps: every --eval-every, or geometric (dense early, then every --eval-every)",
    "stop_at_target": "train the whole budget instead of stopping once the target is reached",
    "microbatches": "split each batch into this many micro-batches (a divisor of --batch-size)",
    "gns": "track the online gradient noise scale B_simple (McCandlish et al. 2018, App. A.1)",
    "gns_ema": "decay of the moving averages of the noise scale's |G|^2 and tr(Sigma) estimates",
    "divergence_factor": "diverged when the training loss exceeds this multiple of its initial value",
    "checkpoint_every": "steps between checkpoints (with --checkpoint-dir; default: none)",
    "algorithm": "how the --replicas model copies are coupled: mini-batch SGD, local SGD, post-local SGD "
                 "(Lin et al. 2020) or Crossbow SMA (Koliousis et al. 2019)",
    "replicas": "model copies K of local_sgd, post_local_sgd and sma, each on --batch-size / K examples per step",
    "local_steps": "local SGD's H: steps between parameter averages",
    "switch_step": "post-local SGD's switch from H = 1 to --local-steps (default: the first boundary of the step "
                   "schedule)",
    "sma_alpha": "SMA's alpha, the pull of each replica towards the central model, in (0, 1] (default: 1 / K)",
    "sma_momentum": "SMA's momentum mu of the central model",
    "init_from": "start from the snapshot in this folder (parameters, model and optimizer state; Merrill et al. 2025)",
    "init_step": "the step --init-from's snapshot was taken at, where this trial continues in the data order",
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser, exclude=()):
    """One option per TrialConfig field but `exclude`, SWEEP_ONLY and the
    dict workload_options, generated from the dataclass; a flag for a boolean
    field turns its default around (--gns, --no-stop-at-target). Options not
    given stay None, so config_from_args can tell them apart."""
    for field in dataclasses.fields(TrialConfig):
        name = field.name
        if name in (*exclude, *SWEEP_ONLY) or field.type not in (*_PARSERS, "bool", "tuple[int, ...]"):
            continue
        default = "" if field.default in (None, dataclasses.MISSING) else f" (default: {field.default})"
        kwargs = dict(dest=name, help=HELP[name] + default)
        if field.type == "bool":
            flag = "--no-" + _option(name)[2:] if field.default else _option(name)
            parser.add_argument(flag, action="store_const", const=not field.default, dest=name, help=HELP[name])
        elif field.type == "tuple[int, ...]":
            parser.add_argument(_option(name), type=lambda s: tuple(int(v) for v in s.split(",") if v), **kwargs)
        else:
            parser.add_argument(_option(name), type=_PARSERS[field.type], required=name in _REQUIRED,
                                choices=CHOICES.get(name), **kwargs)


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--data-dir", help="folder of the datasets (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument("--checkpoint-dir", help="Orbax checkpoints here; resumes from the latest one")
    parser.add_argument("--out", help="write record.json and measurements.csv (row by row as training goes, "
                        "and a TensorBoard run in tensorboard/ when tensorboardX is installed) into this folder")
    parser.add_argument("--json", action="store_true", help="print the trial record as JSON (with --out, "
                        "`measurements` names the CSV file instead of listing the rows)")
    multi = parser.add_argument_group("multi-host (run the same command on every host)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0, for jax.distributed.initialize")
    multi.add_argument("--num-processes", type=int, help="how many processes (hosts) take part")
    multi.add_argument("--process-id", type=int, help="this process's index, 0 .. --num-processes - 1")


def config_from_args(args, **defaults) -> TrialConfig:
    """The TrialConfig of the options given on the command line; `defaults`
    replace TrialConfig's own for the options not given."""
    fields = {f.name for f in dataclasses.fields(TrialConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return TrialConfig(**{**defaults, **given})


def _initialize_distributed(args):
    """Multi-host data parallelism: every process joins one global device mesh
    and feeds the same (deterministic) batches; jit does the rest."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only by CPU devices
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    return jax.process_index() == 0


def run(args) -> int:
    from contextlib import nullcontext

    from harness.engine.loop import TrialRun, run_trial
    from harness.engine.workloads import get_workload
    from harness.sweep.trial_log import TrialLog, tensorboard_available

    writer = _initialize_distributed(args) if args.coordinator else True
    config = config_from_args(args)
    metric = get_workload(config.workload).metric
    out = Path(args.out) if args.out and writer else None
    board = out / "tensorboard" if out and tensorboard_available() else None
    with TrialLog(config.to_dict(), out / "measurements.csv", board) if out else nullcontext() as log:
        def on_eval(row):
            if log:
                log(row)
            if not args.json and writer:
                print(_eval_line(row, metric), flush=True)

        record = run_trial(TrialRun(config, args.checkpoint_dir, on_eval=on_eval), data_dir=args.data_dir)
    summary = record.to_dict()  # the measurements inline, or the file they are in with --out
    if out:
        (out / "record.json").write_text(json.dumps(record.to_dict(), indent=1))
        summary["measurements"] = str(out / "measurements.csv")
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        print(f"{config.workload} B={config.batch_size}: {record.status}, steps to target "
              f"{record.steps_to_target} ({record.metric} {'<' if record.direction == 'min' else '>'} "
              f"{record.target}); final {record.metric} {record.final['val_metric']:.4f} at step {record.steps_run}")
    return 0


def _eval_line(row: dict, metric: str) -> str:
    """One evaluation as `cbs train` prints it while training."""
    train = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
    return f"step {row['step']:>7}  train loss {train:>8}  val loss {row['val_loss']:.4f}  " \
           f"val {metric} {row['val_metric']:.4f}"
