"""`cbs nqm`: exact steps-to-target vs batch size on the noisy quadratic model
(Zhang et al. 2019), minimised over the paper's learning-rate (and momentum) grid."""

import json
import math

from analysis.nqm import DIMS, OPTIMIZERS, TARGET, nqm_steps
from harness.cli.analyze import parse_batch_sizes
from harness.errors import UserError


def add_arguments(parser):
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    parser.add_argument(
        "--precondition",
        type=float,
        default=0.0,
        metavar="GAMMA",
        help="diagonal preconditioner h^-GAMMA (default 0: none)",
    )
    parser.add_argument("--batch-sizes", required=True, help="comma-separated batch sizes, e.g. 1,2,4,8")
    parser.add_argument("--target", type=float, default=TARGET, help=f"target loss (default {TARGET})")
    parser.add_argument("--dims", type=int, default=DIMS, help=f"coordinates K (default {DIMS})")
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects")


def run(args) -> int:
    if args.dims < 1:
        raise UserError(f"--dims must be >= 1, got {args.dims}")
    rows = nqm_steps(
        parse_batch_sizes(args.batch_sizes, "--batch-sizes"), args.optimizer, args.precondition, args.target, args.dims
    )
    for r in rows:
        if math.isinf(r["steps"]):
            r["steps"] = None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = list(rows[0])
    print("  ".join(f"{c:>14}" for c in columns))
    for r in rows:
        print("  ".join(f"{_cell(r[c]):>14}" for c in columns))
    return 0


def _cell(value):
    if value is None:
        return "never"
    return str(value) if isinstance(value, int) else format(value, ".6g")
