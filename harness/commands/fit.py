"""`cbs fit TABLE.csv`: fit S(B) = S_min (1 + B_crit / B) (McCandlish et al.
2018) to steps-vs-batch-size measurements a user already has."""
import json
import math

import pandas as pd

from analysis.fit import fit_steps
from harness.errors import UserError

REQUIRED = ("batch_size", "steps")


def add_arguments(parser):
    parser.add_argument("table", help="CSV with columns batch_size, steps (one row per batch "
                        "size) and optionally group (one curve per group)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per group")
    parser.add_argument("--overhead", type=float, default=20.0,
                        help="overhead definition: B where steps exceed perfect scaling by this %% "
                        "(default 20)")
    parser.add_argument("--confidence", type=float, default=0.9,
                        help="confidence level of the bootstrap intervals (default 0.9)")


def read_table(path) -> pd.DataFrame:
    """The user's table, checked: UserError on a missing file, missing columns,
    non-positive values or a batch size listed twice within a group."""
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; needs batch_size and "
                        f"steps (optional: group); found: {', '.join(map(str, table.columns))}")
    for column in REQUIRED:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table[~(values > 0)]
        if len(bad):
            raise UserError(f"{column} must be a positive number; row {bad.index[0] + 2} of "
                            f"{path} has {bad[column].iloc[0]!r}")
        table[column] = values
    if "group" not in table.columns:
        table["group"] = ""
    table["group"] = table["group"].fillna("").astype(str)
    twice = table[table.duplicated(["group", "batch_size"])]
    if len(twice):
        where = f" in group {twice['group'].iloc[0]!r}" if twice["group"].iloc[0] else ""
        raise UserError(f"batch_size {twice['batch_size'].iloc[0]:g} appears twice{where} in "
                        f"{path}: give one row per batch size (its steps to result)")
    return table


def run(args) -> int:
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    if not args.overhead > 0:
        raise UserError(f"--overhead must be > 0 (a percentage), got {args.overhead}")
    table = read_table(args.table)
    key = f"b_crit_overhead{args.overhead:g}"
    rows = []
    for group, part in table.groupby("group", sort=False):
        fit = fit_steps(part["batch_size"], part["steps"], overhead=args.overhead,
                        confidence=args.confidence).to_dict()
        rows.append({"group": group or None, "s_min": fit["s_min"], "e_min": fit["e_min"],
                     "b_crit": fit["b_crit"], "b_crit_ci": fit["b_crit_ci"],
                     key: fit[key], key + "_empirical": fit[key + "_empirical"],
                     "perfect_scaling_end": fit["perfect_scaling_end"],
                     "max_useful_batch_size": fit["max_useful_batch_size"],
                     "warnings": fit["warnings"]})
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
