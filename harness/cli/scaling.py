"""`cbs scaling`: power laws y = a x^b of the critical batch size, S_min and
E_min across groups (analysis.scaling), or of B_crit against the target of
one sweep, B_crit(L) = B* / L^(1/alpha_B) (Kaplan et al. 2020, Sec. 5.1;
analysis.target_ladder).

    cbs scaling TABLE.csv --x width           # a table of per-group values (b_crit, s_min, e_min columns),
                                              # or a steps table (batch_size, steps, width): one fit per width
    cbs scaling SWEEP=128 SWEEP=256 ... --x width   # each sweep's fit at its spec target
    cbs scaling SWEEP --targets               # B_crit at a ladder of targets of one sweep
"""

import json
from pathlib import Path

from harness.errors import UserError  # analysis is imported in the functions: --help stays fast


def add_arguments(parser):
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="TABLE.csv, or sweep folders as FOLDER=VALUE (the covariate's value), or one sweep folder with --targets",
    )
    parser.add_argument("--x", help="the covariate: a column of TABLE.csv, or the name of the sweeps' VALUE")
    parser.add_argument(
        "--y", nargs="+", help="the columns to fit against x (default: those of b_crit, s_min, e_min in the table)"
    )
    parser.add_argument(
        "--targets", action="store_true", help="one sweep: B_crit against the target, at the spec's and looser targets"
    )
    parser.add_argument("--out", metavar="STEM", help="write STEM.csv, STEM.json and STEM_<y>.png")
    parser.add_argument("--json", action="store_true", help="print the fits as JSON")
    parser.add_argument(
        "--confidence", type=float, default=0.9, help="confidence level of the bootstrap intervals (default 0.9)"
    )


def _table(args):
    """The table, the x column, the y columns and what it came from."""
    from analysis.scaling_study import Y_COLUMNS, is_steps_table, read_table, steps_groups_table, sweeps_table
    from analysis.tables import load_sweep
    from analysis.target_ladder import target_table

    if args.targets:
        if len(args.sources) != 1:
            raise UserError(f"--targets takes one sweep folder, got {len(args.sources)}")
        sweep = load_sweep(args.sources[0])
        return target_table(sweep, confidence=args.confidence), "target", ["b_crit"], Path(args.sources[0]).name
    if args.x is None:
        raise UserError("--x is missing: name the covariate (a column of the table, or the sweeps' VALUE)")
    if len(args.sources) == 1 and "=" not in args.sources[0]:
        table = read_table(args.sources[0])
        table = steps_groups_table(table, args.x) if is_steps_table(table) else table
        ys = args.y or [c for c in Y_COLUMNS if c in table.columns] or list(Y_COLUMNS)
        return table, args.x, ys, Path(args.sources[0]).name
    pairs = []
    for source in args.sources:
        folder, eq, value = source.rpartition("=")
        try:
            pairs.append((folder, float(value)))
        except ValueError:
            raise UserError(f"{source}: allowed: FOLDER=VALUE with a number VALUE (the sweep's {args.x})") from None
        if not eq:
            raise UserError(f"{source}: allowed: FOLDER=VALUE (the sweep's {args.x})")
    return sweeps_table(pairs, args.x), args.x, args.y or list(Y_COLUMNS), f"{len(pairs)} sweeps"


def run(args) -> int:
    from analysis.scaling_plots import draw_power_law
    from analysis.scaling_study import fit_columns, left_out, write_outputs
    from analysis.target_ladder import fit_target_law

    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    table, x, ys, source = _table(args)
    if args.targets:
        law = fit_target_law(table, confidence=args.confidence)
        fits, results = {"b_crit": law.fit}, {"source": source, "target_law": law.to_dict()}
        lines = [law.text()]
    else:
        fits = fit_columns(table, x, ys, confidence=args.confidence)
        results = {"source": source, "fits": {y: f.to_dict() for y, f in fits.items()}}
        lines = [f.text() for f in fits.values()]
    if args.out:
        figures = {}
        for y, fit in fits.items():
            rows = table.drop(left_out(table, x, y).index)  # the fit's points, in its order
            figures[y] = draw_power_law(fit, rows.get(f"{y}_lo"), rows.get(f"{y}_hi"), title=source)
        paths = write_outputs(args.out, table, results, figures)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for line, fit in zip(lines, fits.values()):
            print(line)
            for w in fit.warnings:
                print(f"  warning: {w}")
        if args.out:
            print("wrote " + ", ".join(map(str, paths)))
    return 0
