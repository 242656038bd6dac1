"""`cbs export FOLDER --format batch_science --out DIR`: a sweep in Shallue et
al.'s (2019) released data layout (analysis.batch_science), which their
analysis code and `cbs analyze`/`plot`/`report` read."""

from __future__ import annotations

FORMATS = ("batch_science",)


def add_arguments(parser):
    parser.add_argument("folder", help="a sweep folder (written by `cbs sweep`)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="batch_science",
        help="the layout to write (default: batch_science: dataset/model/optimizer/batch_size/"
        "{study.json, trial_id/metadata.json, trial_id/measurements.csv})",
    )
    parser.add_argument("--out", required=True, help="the folder to write into")


def run(args) -> int:
    from analysis.batch_science import export_sweep

    print(export_sweep(args.folder, args.out))
    return 0
