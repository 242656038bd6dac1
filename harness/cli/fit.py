"""`cbs fit TABLE.csv`: fit S(B) = S_min (1 + B_crit / B) (McCandlish et al.
2018) to steps-vs-batch-size measurements a user already has."""

import json

from analysis.fit import fit_steps
from analysis.tables import read_steps_table
from analysis.text import num
from harness.errors import UserError


def add_arguments(parser):
    parser.add_argument(
        "table",
        help="CSV with columns batch_size, steps (one row per batch size) and optionally group (one curve per group)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per group")
    parser.add_argument(
        "--overhead",
        type=float,
        default=20.0,
        help="overhead definition: B where steps exceed perfect scaling by this %% (default 20)",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.9, help="confidence level of the bootstrap intervals (default 0.9)"
    )


def run(args) -> int:
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    if not args.overhead > 0:
        raise UserError(f"--overhead must be > 0 (a percentage), got {args.overhead}")
    table = read_steps_table(args.table)
    fits = [
        (group, fit_steps(part["batch_size"], part["steps"], overhead=args.overhead, confidence=args.confidence))
        for group, part in table.groupby("group", sort=False)
    ]
    if args.json:  # the keys of `cbs analyze --json`'s fit
        print(json.dumps([{"group": group or None, **fit.to_dict()} for group, fit in fits], indent=2))
        return 0
    print(
        f"{'group':<12} {'S_min':>10} {'E_min':>12} {'B_crit(' + format(args.overhead, 'g') + '%)':>13}  "
        f"B_crit (McCandlish et al. 2018)"
    )
    for group, fit in fits:
        print(
            f"{group or '-':<12} {num(fit.s_min):>10} {num(fit.e_min):>12} {num(fit.b_crit_overhead):>13}  "
            f"{fit.b_crit_text()}"
        )
        for w in fit.warnings:
            print(f"  warning: {w}")
    return 0
