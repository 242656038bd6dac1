"""`cbs schedules FOLDER...`: batch-size schedules compared at one example
budget, one sweep folder per arm (analysis.schedule_study; Merrill et al.
2025, Table 1): per arm, the mean and standard deviation over seeds of the
steps and examples to the target and of the validation loss and metric at
the budget, and its mean steps to target over the reference arm's.

    cbs schedules runs/warmup/small runs/warmup/large runs/warmup/local_cbs --out results/warmup
"""

import json
from pathlib import Path

from harness.errors import UserError


def add_arguments(parser):
    parser.add_argument("folders", nargs="+", help="sweep folders, one per arm (written by `cbs sweep`)")
    parser.add_argument("--reference", help="the arm (spec name) the steps ratio is taken to (default: the first)")
    parser.add_argument(
        "--target", type=float, help="the target to count steps to (default: each record's own, its spec's target)"
    )
    parser.add_argument(
        "--out",
        help="write runs.csv, arms.csv, schedules.json (the arms, target and reference) and schedules.png/.pdf here",
    )


def run(args) -> int:
    from analysis import load_sweep
    from analysis.plots import save
    from analysis.schedule_plots import draw_schedules
    from analysis.schedule_study import arm_name, arms_table, arms_text, curves_table, runs_table
    from harness.engine.targets import check_target

    sweeps = [load_sweep(folder) for folder in args.folders]
    names = [arm_name(s) for s in sweeps]
    if len(set(names)) < len(names):
        raise UserError(f"two folders have the same arm name (their specs' name): {', '.join(names)}")
    if args.reference is not None and args.reference not in names:
        raise UserError(f"unknown --reference {args.reference!r}; allowed: {', '.join(names)}")
    if any(s.trials.empty for s in sweeps):
        empty = [str(s.folder) for s in sweeps if s.trials.empty]
        raise UserError(f"no finished trials in {', '.join(empty)}: run their sweeps first")
    if args.target is not None:
        check_target(sweeps[0].spec["metric"], args.target)
    runs = runs_table(sweeps, args.target)
    arms = arms_table(runs, args.reference)
    print(arms_text(arms))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        call = dict(arms=names, target=args.target, reference=args.reference)
        (out / "schedules.json").write_text(json.dumps(call, indent=1) + "\n")
        runs.to_csv(out / "runs.csv", index=False)
        arms.to_csv(out / "arms.csv", index=False)
        spec = sweeps[0].spec
        target = spec["target"] if args.target is None else args.target
        save(draw_schedules(curves_table(sweeps), target, spec.get("metric", "metric")), out / "schedules")
        print(f"wrote {out / 'runs.csv'}, {out / 'arms.csv'}, {out / 'schedules.png'}")
    return 0
