"""`cbs plot FOLDER [FOLDER ...]`: every figure a sweep's data support (Shallue
et al. 2019; McCandlish et al. 2018), as PNG and PDF; with several sweep
folders, also their steps-to-result on one plot, normalised (comparison:
optimizers, model sizes) and as measured (comparison_absolute: algorithms on
the rounds axis)."""

from __future__ import annotations

from pathlib import Path

from analysis.plots import AXES
from harness.cli.analyze import add_budget_arguments, budgets


def add_arguments(parser):
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="sweep folder(s) written by `cbs sweep`")
    parser.add_argument(
        "--out",
        help="folder for the figures (default: FOLDER/figures; with several "
        "sweeps, one subfolder per sweep plus comparison.png/.pdf)",
    )
    parser.add_argument(
        "--targets",
        help="comma-separated targets for the multi-target figures (default: the sweep's target and two looser ones)",
    )
    parser.add_argument(
        "--axis",
        choices=tuple(AXES),
        default="steps",
        help="what the steps-to-result and comparison figures count: training steps, examples, "
        "or communication rounds (local SGD; Lin et al. 2020) (default: steps)",
    )
    add_budget_arguments(parser)


def run(args) -> int:
    from analysis import load_sweep
    from analysis.curves import analyze, analyze_sweep
    from analysis.plots import save
    from analysis.sweep_figures import FIGURES, comparison_plot, plot_sweep
    from analysis.text import sweep_labels
    from harness.errors import UserError

    limits = budgets(args)
    targets = None
    if args.targets:
        try:
            targets = [float(t) for t in args.targets.split(",")]
        except ValueError:
            raise UserError(f"--targets: expected comma-separated numbers, got {args.targets!r}") from None
    sweeps = [load_sweep(folder) for folder in args.folders]
    several = len(sweeps) > 1
    paths = []
    for sweep in sweeps:
        out = (
            Path(args.out) / sweep.folder.name
            if args.out and several
            else Path(args.out)
            if args.out
            else sweep.folder / FIGURES
        )
        written = plot_sweep(sweep, analyze_sweep(sweep, targets, **limits), out, axis=args.axis)
        if not written:
            print(f"{sweep.folder}: no figure: no trial has completed yet")
        paths += written
    if several:
        curves = {label: analyze(sweep, **limits) for label, sweep in zip(sweep_labels(sweeps), sweeps)}
        paths += save(comparison_plot(curves, axis=args.axis), Path(args.out or ".") / "comparison")
        paths += save(
            comparison_plot(curves, axis=args.axis, normalize=False), Path(args.out or ".") / "comparison_absolute"
        )
    for path in paths:
        print(path)
    return 0
