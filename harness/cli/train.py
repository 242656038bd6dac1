"""`cbs train`: one trial from the command line. Every TrialConfig field is an
option (`--batch-size`, `--learning-rate`, ...), generated from the dataclass
so the CLI and the config never drift apart."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from harness.engine.trial import TrialConfig

_REQUIRED = ("workload", "batch_size", "learning_rate")
_PARSERS = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float}


def _option(field):
    return "--" + field.name.replace("_", "-")


def add_arguments(parser):
    for field in dataclasses.fields(TrialConfig):
        kwargs = dict(dest=field.name, help=f"(default: {field.default})" if field.name not in _REQUIRED else None)
        if field.type == "bool":
            parser.add_argument(_option(field), action="store_true", default=None, **kwargs)
            parser.add_argument("--no-" + _option(field)[2:], dest=field.name, action="store_false")
        elif field.type == "tuple[int, ...]":
            parser.add_argument(_option(field), type=lambda s: tuple(int(v) for v in s.split(",") if v), **kwargs)
        elif field.type in _PARSERS:
            parser.add_argument(_option(field), type=_PARSERS[field.type], required=field.name in _REQUIRED, **kwargs)
    parser.add_argument("--data-dir", help="folder of the datasets (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument("--checkpoint-dir", help="Orbax checkpoints here; resumes from the latest one")
    parser.add_argument("--out", help="write record.json and measurements.csv (row by row as training goes, "
                        "and a TensorBoard run in tensorboard/ when tensorboardX is installed) into this folder")
    parser.add_argument("--json", action="store_true", help="print the trial record as JSON (with --out, "
                        "`measurements` names the CSV file instead of listing the rows)")
    multi = parser.add_argument_group("multi-host (run the same command on every host)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0, for jax.distributed.initialize")
    multi.add_argument("--num-processes", type=int)
    multi.add_argument("--process-id", type=int)


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

    from harness.engine.train import run_trial
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

        record = run_trial(config, data_dir=args.data_dir, checkpoint_dir=args.checkpoint_dir, on_eval=on_eval)
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
