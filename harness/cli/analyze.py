"""`cbs analyze FOLDER`: the steps-to-result table of a sweep and the fits of
its critical batch size (McCandlish's B_crit with a bootstrap interval, the
overhead definition, Shallue's regimes)."""

from __future__ import annotations

import json

from harness.errors import UserError


def add_budget_arguments(parser):
    """--max-steps and --max-examples: count only evaluations within a budget
    (Shallue et al. 2019, Sec. 3.2)."""
    parser.add_argument(
        "--max-steps", type=int, metavar="STEPS", help="count only evaluations at step <= STEPS (a step budget)"
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        metavar="EXAMPLES",
        help="count only evaluations at batch_size * step <= EXAMPLES (an example budget)",
    )


def budgets(args) -> dict:
    """`analyze`'s step_budget and example_budget from the options, checked."""
    for option, value in (("--max-steps", args.max_steps), ("--max-examples", args.max_examples)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be >= 1, got {value}; allowed: integers >= 1")
    return dict(step_budget=args.max_steps, example_budget=args.max_examples)


def parse_batch_sizes(text: str, option: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16]; UserError naming `option` otherwise."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"{option} must be comma-separated positive integers, got {text!r}")
    return sizes


def add_arguments(parser):
    parser.add_argument("folder", help="a sweep folder (written by `cbs sweep`)")
    parser.add_argument("--target", type=float, help="the metric value to reach (default: the sweep's target)")
    add_budget_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: folder, workload, metric, direction, target, step_budget, "
        "example_budget, rows (the table), fit",
    )


def run(args) -> int:
    from analysis import load_sweep
    from analysis.curves import analyze
    from analysis.edges import edge_hits
    from analysis.final_metrics import final_metrics
    from analysis.text import summary_text

    sweep = load_sweep(args.folder)
    curve = analyze(sweep, args.target, **budgets(args))
    spec = sweep.spec
    if args.json:
        rows = json.loads(curve.table.to_json(orient="records"))  # NaN -> null
        print(
            json.dumps(
                {
                    "folder": str(sweep.folder),
                    "workload": spec["workload"],
                    "metric": spec["metric"],
                    "direction": spec["direction"],
                    "target": curve.target,
                    "step_budget": curve.step_budget,
                    "example_budget": curve.example_budget,
                    "rows": rows,
                    "edge_hits": [dict(batch_size=b, metaparameter=n, edge=e) for b, n, e in edge_hits(sweep, curve)],
                    "final": None
                    if (final := final_metrics(sweep)) is None
                    else json.loads(final.to_json(orient="records")),
                    "fit": curve.fit.to_dict(),
                },
                indent=1,
            )
        )
        return 0
    print(summary_text(sweep, curve))
    return 0
