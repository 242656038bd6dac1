"""Benchmark: the quickstart sweep run (a) by the sweep engine (parallel worker
processes, exact pruning, shared compilation cache) and (b) one trial at a
time without pruning, each in its own process (how one-trial-per-process
harnesses run), side by side in one run. Reports wall time, trials per hour,
training steps executed and whether both give the same steps-to-result, and
appends the result to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/sweep.py [--spec experiments/quickstart.toml] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from analysis import load_sweep
from analysis.steps import steps_to_result
from harness.sweep.run import run_sweep
from harness.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
ONE_TRIAL = """
import json, sys
from harness.engine.loop import run_trial
from harness.engine.trial import TrialConfig
record = run_trial(TrialConfig.from_dict(json.loads(sys.argv[1])), data_dir=sys.argv[2] or None)
print(json.dumps({"steps_run": record.steps_run, "steps_to_target": record.steps_to_target,
                  "status": record.status, "batch_size": record.config["batch_size"]}))
"""


def engine_run(spec, folder, workers, data_dir):
    t0 = time.perf_counter()
    outcome = run_sweep(spec, folder, workers=workers, data_dir=data_dir)
    wall = time.perf_counter() - t0
    tables = load_sweep(folder)
    curve = steps_to_result(tables.trials, tables.measurements, tables.spec["target"], tables.spec["direction"])
    return wall, outcome.steps_run, dict(zip(curve["batch_size"], curve["steps"])), outcome


def one_at_a_time(spec, data_dir):
    t0 = time.perf_counter()
    steps, best = 0, {}
    for trial in load_spec(spec, data_dir).trials():
        config = {**trial.config.to_dict(), "checkpoint_every": None}
        out = subprocess.run(
            [sys.executable, "-c", ONE_TRIAL, json.dumps(config), data_dir or ""],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        steps += result["steps_run"]
        if result["status"] == "complete":
            b = result["batch_size"]
            best[b] = min(best.get(b, result["steps_to_target"]), result["steps_to_target"])
    return time.perf_counter() - t0, steps, best


def report(lines, record: bool) -> None:
    """Print a result section and, with `record`, append it to benchmarks/RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    if record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + text + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "experiments" / "quickstart.toml"))
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--data-dir", default=os.environ.get("CBS_DATA_DIR"))
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    trials = len(load_spec(args.spec, args.data_dir).trials())
    with tempfile.TemporaryDirectory() as tmp:
        wall_a, steps_a, curve_a, outcome = engine_run(args.spec, Path(tmp) / "sweep", args.workers, args.data_dir)
    wall_b, steps_b, curve_b = one_at_a_time(args.spec, args.data_dir)
    same = {int(k): int(v) for k, v in curve_a.items()} == {int(k): int(v) for k, v in curve_b.items()}
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    rows = [
        ("(a) engine: parallel workers + exact pruning", wall_a, steps_a),
        ("(b) one trial per process, no pruning", wall_b, steps_b),
    ]
    lines = [
        f"### Sweep engine vs one trial at a time: {Path(args.spec).name} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {cores} cores, {jax.default_backend()}, "
        f"jax {jax.__version__}; load average at the end {load:.1f} (the machine is shared). "
        f"{trials} trials; (a) used {args.workers or cores} worker processes "
        f"and pruned {outcome.by_status.get('pruned', 0)} trials.",
        "",
        "| run | wall time (s) | trials / hour | training steps executed |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {wall:.1f} | {trials / wall * 3600:.0f} | {steps} |" for name, wall, steps in rows]
    lines += [
        "",
        f"Speed-up (b)/(a): **{wall_b / wall_a:.2f}x** wall time, {steps_b / steps_a:.2f}x fewer steps. "
        f"Same steps-to-result per batch size in both: {'yes' if same else 'NO'} "
        f"({dict(sorted((int(k), int(v)) for k, v in curve_a.items()))}).",
        "",
    ]
    report(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
