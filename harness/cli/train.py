"""`cbs train`: one trial from the command line. Every TrialConfig field is an
option (`--batch-size`, `--learning-rate`, ...), generated from its schema
(harness.engine.trial.OPTIONS: type, default, choices, range, help) so the CLI
and the config never drift apart."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from harness.cli.sweep import add_track_argument
from harness.engine.options import Option
from harness.engine.trial import OPTIONS, TrialConfig
from harness.errors import UserError

TRACK_GROUP = "cbs-train"  # the MLflow experiment, W&B group, of `cbs train --track` runs
# Fields that are no option: snapshots need the snapshot folder a sweep worker gives (harness.sweep.local_cbs).
SWEEP_ONLY = ("snapshot_steps",)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def help_text(option: Option) -> str:
    """An option's one-line help: the schema's, its paper, its range and its default."""
    text = option.help + (f" ({option.cite})" if option.cite else "")
    extras = [
        option.interval and f"allowed: {option.interval}",
        option.default not in (None, (), {}) and f"default: {option.default}",
    ]
    return text + "".join(f"; {e}" for e in extras if e)


def add_config_arguments(parser, exclude=()):
    """One option per TrialConfig field but `exclude`, SWEEP_ONLY and the
    dict workload_options, generated from the schema; a flag for a boolean
    field turns its default around (--gns, --no-stop-at-target). Options not
    given stay None, so config_from_args can tell them apart."""
    for name, option in OPTIONS.items():
        kind = option.type  # X | None: X; tuple[int, ...] as it is
        if isinstance(kind, types.UnionType):
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if name in (*exclude, *SWEEP_ONLY) or kind is dict:
            continue
        if kind is bool:
            flag = "--no-" + _option(name)[2:] if option.default else _option(name)
            parser.add_argument(
                flag,
                action="store_const",
                const=not option.default,
                dest=name,
                help=help_text(dataclasses.replace(option, default=None)),
            )
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(
                _option(name),
                dest=name,
                help=help_text(option),
                type=lambda s: tuple(int(v) for v in s.split(",") if v),
            )
        else:
            parser.add_argument(
                _option(name),
                dest=name,
                help=help_text(option),
                type=kind,
                required=option.required,
                choices=option.choices,
            )


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--data-dir", help="folder of the datasets (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument("--checkpoint-dir", help="Orbax checkpoints here; resumes from the latest one")
    parser.add_argument(
        "--out",
        help="write record.json and measurements.csv (row by row as training goes, "
        "and a TensorBoard run in tensorboard/ when tensorboardX is installed) into this folder",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the trial record as JSON (with --out, "
        "`measurements` names the CSV file instead of listing the rows)",
    )
    add_track_argument(parser)
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

    from harness.engine.loop import TrialRun, check_run, run_trial
    from harness.sweep.tracking import open_run, tracking
    from harness.sweep.trial_log import TrialLog, tensorboard_available

    if args.track and not args.out:
        raise UserError(f"--track {args.track}: needs --out; allowed: --out FOLDER (the run is named by it)")
    writer = _initialize_distributed(args) if args.coordinator else True
    config = config_from_args(args)
    metric = check_run([config], args.data_dir)[0].metric  # refused before --out exists: no folder left behind
    out = Path(args.out) if args.out and writer else None
    board = out / "tensorboard" if out and tensorboard_available() else None
    track = tracking(args.track, TRACK_GROUP, out) if out else None
    with (
        TrialLog(config.to_dict(), out / "measurements.csv", board) if out else nullcontext() as log,
        open_run(track, out.absolute().name, config.to_dict()) if track else nullcontext() as tracked,
    ):

        def on_eval(row):
            if log:
                log(row)
            if tracked:
                tracked(row)
            if not args.json and writer:
                print(_eval_line(row, metric), flush=True)

        record = run_trial(TrialRun(config, args.checkpoint_dir, on_eval=on_eval), data_dir=args.data_dir)
        if tracked:
            tracked.finish(record.to_dict())
    summary = record.to_dict()  # the measurements inline, or the file they are in with --out
    if out:
        (out / "record.json").write_text(json.dumps(record.to_dict(), indent=1))
        summary["measurements"] = str(out / "measurements.csv")
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        reached = (
            "target not reached" if record.steps_to_target is None else f"steps to target {record.steps_to_target}"
        )
        print(
            f"{config.workload} B={config.batch_size}: {record.status}, {reached} ({record.metric} "
            f"{'<' if record.direction == 'min' else '>'} {record.target}); final {record.metric} "
            f"{record.final['val_metric']:.4f} at step {record.steps_run}"
        )
    return 0


def _eval_line(row: dict, metric: str) -> str:
    """One evaluation as `cbs train` prints it while training."""
    train = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
    return (
        f"step {row['step']:>7}  train loss {train:>8}  val loss {row['val_loss']:.4f}  "
        f"val {metric} {row['val_metric']:.4f}"
    )
