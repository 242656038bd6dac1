"""`cbs local-cbs SPEC.toml --out FOLDER`: the branched local critical batch
size over training (Merrill et al. 2025; harness.sweep.local_cbs for the spec
format), beside the reference run's online noise scale and, with --sweep, the
B_crit of a Shallue sweep. Writes FOLDER/local_cbs.csv, the branch losses
(FOLDER/local_cbs_losses.csv) and FOLDER/local_cbs.png/.pdf."""

from __future__ import annotations

import sys

from harness.cli.sweep import add_worker_arguments, check_workers


def add_arguments(parser):
    parser.add_argument(
        "spec", help="the study spec, a TOML file with a [local_cbs] section (format: harness/sweep/local_cbs.py)"
    )
    parser.add_argument("--out", required=True, help="the study folder (resumed when it exists)")
    parser.add_argument("--sweep", help="a Shallue sweep folder of the same workload: its B_crit as a band")
    add_worker_arguments(parser)


def run(args) -> int:
    from analysis.local_cbs import load_local_cbs, local_cbs_plot, summary_text, swept_b_crit
    from analysis.plots import save
    from harness.sweep.local_cbs import run_local_cbs

    check_workers(args)
    b_crit = swept_b_crit(args.sweep) if args.sweep else None
    store = run_local_cbs(
        args.spec,
        args.out,
        workers=args.workers,
        executor=args.executor,
        address=args.address,
        data_dir=args.data_dir,
        lease_s=args.lease,
        progress=sys.stderr,
    )
    result = load_local_cbs(store.folder)
    result.table.to_csv(store.folder / "local_cbs.csv", index=False)
    result.losses.to_csv(store.folder / "local_cbs_losses.csv", index=False)
    paths = save(local_cbs_plot(result, b_crit), store.folder / "local_cbs")
    print(summary_text(result, b_crit))
    print(f"wrote {store.folder / 'local_cbs.csv'}, {', '.join(map(str, paths))}")
    return 0
