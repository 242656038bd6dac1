"""`cbs calibrate`: the noise scale's calibration to the swept critical batch
size, per optimizer family (analysis.noise_calibration; McCandlish et al.
2018, Sec. 2.2: B_crit ~ B_noise).

For each swept study it replays the best trial at the middle measured batch
size and measures the offline B_noise and B_simple over its last `--window`
steps before it reaches the target, as `cbs gns` would on that trial (its
micro-batch of half the batch per gradient sample); then fits B_crit / B per
family. OUT/points.csv is written after every study, and a re-run keeps the
studies it already holds (it resumes after a crash).

    cbs calibrate experiments/*/results/*/ --out runs/calibration

Writes OUT/points.csv, OUT/calibration.json (what `cbs gns --calibration`
reads), OUT/calibration.txt and OUT/calibration.png.
"""

import json
from pathlib import Path

from harness.engine.noise_scale_study import NUM_SAMPLES, WINDOW
from harness.errors import UserError


def add_arguments(parser):
    parser.add_argument("sweeps", nargs="+", metavar="SWEEP", help="sweep folders (written by `cbs sweep`)")
    parser.add_argument("--out", required=True, help="folder of points.csv, calibration.json, .txt and .png")
    parser.add_argument("--data-dir", help="folder of the datasets (default: $CBS_DATA_DIR or a cache folder)")
    parser.add_argument(
        "--window", type=int, default=WINDOW, help=f"steps before the crossing averaged over (default: {WINDOW})"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=NUM_SAMPLES,
        help=f"independent gradients at each step of the window, a multiple of 16 and >= 32 (default: {NUM_SAMPLES})",
    )


def run(args) -> int:
    import pandas as pd

    from analysis.noise_calibration import POINT_COLUMNS, calibration_text, fit_calibration, matched_point, point_row
    from analysis.noise_calibration_plot import calibration_plot
    from harness.engine.noise_scale_study import windowed_noise_scale
    from harness.sweep.leases import atomic_write

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    points_path = out / "points.csv"
    rows = pd.read_csv(points_path).to_dict("records") if points_path.exists() else []
    skipped = []
    for folder in args.sweeps:
        study = Path(folder).name
        if any(r["study"] == study for r in rows):
            print(f"{study}: kept from {points_path}")
            continue
        try:
            point = matched_point(folder)
        except UserError as e:
            skipped.append(str(e))
            print(f"skipped: {e}")
            continue
        first = max(1, point.steps - args.window + 1)
        offline = windowed_noise_scale(
            point.config,
            first,
            point.steps,
            data_dir=args.data_dir,
            num_samples=args.num_samples,
            sample_batch_size=max(1, point.config.batch_size // 2),
        )
        rows.append(point_row(point, offline))
        r = rows[-1]
        print(
            f"{study}: B = {r['batch_size']}, steps {first}..{r['steps']}: B_crit {r['b_crit']:.4g}, "
            f"B_noise {r['b_noise']:.4g}, B_simple {r['b_simple']:.4g}",
            flush=True,
        )
        atomic_write(points_path, pd.DataFrame(rows, columns=POINT_COLUMNS).to_csv(index=False))
    if not rows:
        raise UserError("no study could calibrate: " + "; ".join(skipped))
    points = pd.DataFrame(rows, columns=POINT_COLUMNS)
    calibration = fit_calibration(points)
    text = calibration_text(calibration)
    atomic_write(out / "calibration.json", json.dumps(calibration, indent=1) + "\n")
    atomic_write(out / "calibration.txt", text + "\n" + "".join(f"skipped: {s}\n" for s in skipped))
    calibration_plot(points, calibration).savefig(out / "calibration.png", dpi=120)
    print(text)
    return 0
