"""`cbs compare FOLDER...`: several sweeps side by side, one row per study
(analysis.compare): steps to result at shared batch sizes, where perfect
scaling ends, the maximal useful batch size and B_crit with its interval.
A cell with no value (a batch size a study did not reach, no fit, no
interval, no one-sided bound) reads `-` in the text table, empty in --csv."""

from __future__ import annotations

from harness.cli.analyze import parse_batch_sizes

NO_VALUE = "-"  # a text-table cell that has no value (pandas' None and NaN)


def add_arguments(parser):
    parser.add_argument("folders", nargs="+", help="sweep folders (written by `cbs sweep`)")
    parser.add_argument(
        "--at",
        help="comma-separated batch sizes for the steps@B columns (default: the batch sizes every study reached)",
    )
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a text table")


def run(args) -> int:
    from analysis import load_sweep
    from analysis.compare import comparison_table

    at = None if args.at is None else parse_batch_sizes(args.at, "--at")
    table = comparison_table([load_sweep(folder) for folder in args.folders], at)
    shown = table.apply(lambda column: column.where(column.notna(), NO_VALUE) if column.dtype == object else column)
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=NO_VALUE)
    print(table.to_csv(index=False) if args.csv else text, end="" if args.csv else "\n")
    return 0
