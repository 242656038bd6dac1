"""`cbs analyze FOLDER`: the steps-to-result table of a sweep and the fits of
its critical batch size (McCandlish's B_crit with a bootstrap interval, the
overhead definition, Shallue's regimes)."""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("folder", help="a sweep folder (written by `cbs sweep`)")
    parser.add_argument("--target", type=float,
                        help="the metric value to reach (default: the sweep's target)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: target, metric, direction, rows (the table), fit")


def run(args) -> int:
    from analysis import load_sweep
    from analysis.curves import analyze, summary_text

    sweep = load_sweep(args.folder)
    curve = analyze(sweep, args.target)
    spec = sweep.spec
    if args.json:
        rows = json.loads(curve.table.to_json(orient="records"))  # NaN -> null
        print(json.dumps({"folder": str(sweep.folder), "workload": spec["workload"], "metric": spec["metric"],
                          "direction": spec["direction"], "target": curve.target, "rows": rows,
                          "fit": curve.fit.to_dict()}, indent=1))
        return 0
    print(summary_text(sweep, curve))
    return 0
