"""`cbs sweep SPEC.toml`: run (resume, or extend) a batch-size sweep, then print
its steps-to-result table, plot the curve and end with the critical batch size.

The spec format is documented in harness/sweep/spec.py. Several `cbs sweep`
processes pointed at one --out folder (on one machine or on a shared
filesystem) split the trials between them."""

from __future__ import annotations

import sys

from harness.errors import UserError
from harness.sweep.leases import DEFAULT_LEASE_S

ON_INTERRUPT = "finished trials and in-flight checkpoints are kept; resume with the same command"


def add_arguments(parser):
    parser.add_argument(
        "spec", help="the sweep spec, a TOML file (format: harness/sweep/spec.py; examples: experiments/)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key (dotted for tables, VALUE a TOML value), e.g. --set "
        "search.trials=16 --set target=0.04; the sweep folder stores the resulting spec",
    )
    parser.add_argument("--out", help="the sweep folder (default: runs/<spec file name>)")
    parser.add_argument(
        "--gpus",
        metavar="IDS",
        help="comma-separated GPUs for the local workers, as CUDA_VISIBLE_DEVICES takes them "
        "(default: $CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists)",
    )
    add_track_argument(parser)
    add_worker_arguments(parser, executors=("local", "ray", "slurm"))
    add_slurm_arguments(parser)


def add_track_argument(parser):
    """`--track mlflow|wandb`, shared by `cbs sweep` and `cbs train` (harness.sweep.tracking)."""
    from harness.sweep.tracking import TRACKERS

    parser.add_argument(
        "--track",
        choices=TRACKERS,
        help="also log every trial to MLflow ($MLFLOW_TRACKING_URI, else mlflow.db in the out folder) "
        "or W&B (offline without an API key; files in the out folder); needs that extra",
    )


def add_worker_arguments(parser, executors=("local", "ray")):
    """The options of where trials run, shared by `cbs sweep` and `cbs local-cbs`."""
    parser.add_argument(
        "--workers",
        type=int,
        help="local worker processes (default: one per GPU, else one per CPU core)"
        + (
            "; with --executor slurm: jobs running at once (default: as Slurm schedules them)"
            if "slurm" in executors
            else ""
        ),
    )
    parser.add_argument(
        "--executor",
        choices=executors,
        default="local",
        help="run trials in local processes, or as Ray tasks (needs critical-batch-size[ray])"
        + (", or as Slurm jobs (needs critical-batch-size[slurm])" if "slurm" in executors else ""),
    )
    parser.add_argument("--address", help="with --executor ray: the cluster address (default: start a local Ray)")
    parser.add_argument("--data-dir", help="folder of the datasets (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE_S,
        help="seconds after which a silent worker's trial is taken over (default: %(default)s)",
    )


SLURM_OPTIONS = {
    "partition": "--partition",
    "time_limit": "--time-limit",
    "gpus_per_job": "--gpus-per-job",
    "cpus_per_job": "--cpus-per-job",
    "slurm_folder": "--slurm-folder",
}


def add_slurm_arguments(parser):
    """How `--executor slurm` submits each job (harness.sweep.slurm)."""
    parser.add_argument("--partition", help="with --executor slurm: the partition(s) (default: the cluster's default)")
    parser.add_argument(
        "--time-limit", type=int, metavar="MIN", help="with --executor slurm: minutes per job (default: 60)"
    )
    parser.add_argument(
        "--gpus-per-job", type=int, metavar="N", help="with --executor slurm: GPUs per job (default: 0, CPU jobs)"
    )
    parser.add_argument(
        "--cpus-per-job", type=int, metavar="N", help="with --executor slurm: CPUs per job (default: 1)"
    )
    parser.add_argument(
        "--slurm-folder", help="with --executor slurm: the jobs' logs and submitit files (default: OUT/slurm)"
    )


def slurm_options(args):
    """The SlurmOptions of `--executor slurm`; None for the other executors, which take no Slurm option."""
    from harness.sweep.slurm import SlurmOptions

    given = [flag for name, flag in SLURM_OPTIONS.items() if getattr(args, name) is not None]
    if args.executor != "slurm":
        if given:
            raise UserError(f"{given[0]}: only with --executor slurm; allowed: leave it out, or --executor slurm")
        return None
    chosen = {name: getattr(args, name) for name in SLURM_OPTIONS if getattr(args, name) is not None}
    folder = chosen.pop("slurm_folder", None)
    return SlurmOptions(**chosen, folder=folder)


def check_workers(args) -> None:
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: must be >= 1, got {args.workers}; allowed: integers >= 1")


def run(args) -> int:
    from analysis.curves import b_crit_interval
    from harness.sweep.run import run_sweep

    check_workers(args)
    if args.gpus is not None and args.executor != "local":
        raise UserError(
            "--gpus: only with --executor local; allowed: Ray places its tasks on the cluster's GPUs, "
            "Slurm jobs take --gpus-per-job"
        )
    slurm = slurm_options(args)
    outcome = run_sweep(
        args.spec,
        args.out,
        overrides=args.overrides,
        workers=args.workers,
        executor=args.executor,
        address=args.address,
        gpus=args.gpus,
        data_dir=args.data_dir,
        lease_s=args.lease,
        progress=sys.stderr,
        track=args.track,
        b_crit_interval=b_crit_interval,
        slurm_options=slurm,
    )
    print(summary(outcome))
    print(results(outcome.folder))
    return 0


def results(folder) -> str:
    """The sweep's steps-to-result table and critical batch size, ending in the
    headline (analysis.text.summary_text), and the path of its steps-to-result
    figure, the one `cbs plot` writes too: FOLDER/figures/steps.png and .pdf."""
    from analysis import load_sweep
    from analysis.curves import analyze, analyze_sweep
    from analysis.plots import save
    from analysis.sweep_figures import FIGURES, STEPS, steps_figure
    from analysis.text import summary_text

    sweep = load_sweep(folder)
    curve = analyze(sweep)
    figure = steps_figure(sweep, analyze_sweep(sweep, main=curve)) if len(curve.table) >= 2 else None
    notes = [f"plot: {save(figure[1], sweep.folder / FIGURES / STEPS)[0]}"] if figure else []
    return summary_text(sweep, curve, notes)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def summary(outcome) -> str:
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(outcome.by_status.items()))
    lines = [
        f"sweep {outcome.folder}: {outcome.trials} trials ({statuses}); "
        f"{outcome.pending_at_start} run or resumed now in {_duration(outcome.wall_time)}; "
        f"{outcome.steps_run} training steps in all"
    ]
    if outcome.extended:
        lines.append(f"extended the sweep: {', '.join(outcome.extended)}")
    pruned = outcome.by_status.get("pruned", 0)
    if pruned:
        lines.append(
            f"exact pruning stopped {pruned} trials that could no longer beat the best steps-to-target "
            f"at their batch size; it saved at most {outcome.steps_saved_at_most} steps (an upper bound: "
            "each pruned trial counted to its budget)"
        )
    return "\n".join(lines)
