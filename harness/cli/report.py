"""`cbs report FOLDER`: one self-contained HTML page of a sweep (figures,
tables, the critical batch size with its interval, the noise scale, the spec),
or of a `cbs local-cbs` study, that any browser opens without a server."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser):
    parser.add_argument(
        "folder", help="a sweep folder (written by `cbs sweep`) or a study folder (written by `cbs local-cbs`)"
    )
    parser.add_argument("--out", help="the HTML file to write (default: FOLDER/report.html)")
    parser.add_argument(
        "--sweep", help="with a local-cbs folder: a Shallue sweep folder of the same workload, its B_crit as a band"
    )


def run(args) -> int:
    from analysis.report import write_report

    print(write_report(args.folder, args.out or Path(args.folder) / "report.html", args.sweep))
    return 0
