"""`cbs fit TABLE.csv`: fit S(B) = S_min (1 + B_crit / B) (McCandlish et al.
2018) to steps-vs-batch-size measurements a user already has."""
import json
import math

from analysis.fit import fit_steps
from analysis.tables import read_steps_table
from harness.errors import UserError


def add_arguments(parser):
    parser.add_argument("table", help="CSV with columns batch_size, steps (one row per batch "
                        "size) and optionally group (one curve per group)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per group")
    parser.add_argument("--overhead", type=float, default=20.0,
                        help="overhead definition: B where steps exceed perfect scaling by this %% "
                        "(default 20)")
    parser.add_argument("--confidence", type=float, default=0.9,
                        help="confidence level of the bootstrap intervals (default 0.9)")


def run(args) -> int:
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    if not args.overhead > 0:
        raise UserError(f"--overhead must be > 0 (a percentage), got {args.overhead}")
    table = read_steps_table(args.table)
    key = f"b_crit_overhead{args.overhead:g}"
    rows = []
    for group, part in table.groupby("group", sort=False):
        fit = fit_steps(part["batch_size"], part["steps"], overhead=args.overhead, confidence=args.confidence)
        rows.append({"group": group or None, **fit.to_dict()})  # the keys of `cbs analyze --json`'s fit
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    ci = f"{args.confidence:.0%} CI"
    print(f"{'group':<12} {'S_min':>10} {'E_min':>12} {'B_crit':>9} {ci:>21} "
          f"{'B_crit(' + format(args.overhead, 'g') + '%)':>13}")
    for r in rows:
        lo, hi = (math.nan if v is None else v for v in r["b_crit_ci"])
        print(f"{r['group'] or '-':<12} {r['s_min']:>10.4g} {r['e_min']:>12.4g} "
              f"{r['b_crit']:>9.4g} {'[' + format(lo, '.4g') + ', ' + format(hi, '.4g') + ']':>21} "
              f"{r[key]:>13.4g}")
        for w in r["warnings"]:
            print(f"  warning: {w}")
    return 0
