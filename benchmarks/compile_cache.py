"""Benchmark: what a shared JAX compilation cache saves a sweep whose programs
an earlier sweep already compiled. The same spec runs into fresh sweep
folders, (a) each with its own cache in the folder (the default: every
program compiles) and (b) with $JAX_COMPILATION_CACHE_DIR naming one cache
that a first, untimed run filled (harness.sweep.executors.compilation_cache
keeps it), alternately, side by side in one run. Reports the wall times and
whether both give the same steps-to-result, and appends the result to
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/compile_cache.py [--spec experiments/quickstart.toml] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
from sweep import ROOT, engine_run, report


def timed(spec, folder, workers, data_dir, cache):
    """One sweep into `folder`: its own cache when `cache` is None, else the shared one."""
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    wall, _, curve, _ = engine_run(spec, folder, workers, data_dir)
    return wall, {int(k): int(v) for k, v in curve.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "experiments" / "quickstart.toml"))
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each kind, alternated")
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--data-dir", default=os.environ.get("CBS_DATA_DIR"))
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    runs = {"own": [], "shared": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "shared_cache"
        timed(args.spec, Path(tmp) / "fill", args.workers, args.data_dir, cache)
        for i in range(args.repeats):
            for kind in runs:
                runs[kind].append(
                    timed(
                        args.spec,
                        Path(tmp) / f"{kind}{i}",
                        args.workers,
                        args.data_dir,
                        cache if kind == "shared" else None,
                    )
                )
    own, shared = (statistics.median(w for w, _ in runs[k]) for k in runs)
    same = len({str(c) for k in runs for _, c in runs[k]}) == 1
    lines = [
        f"### Shared compilation cache: {Path(args.spec).name} ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"{jax.default_backend()}, jax {jax.__version__}; load average at the end {os.getloadavg()[0]:.1f}. "
        f"Median of {args.repeats} alternated runs of each kind, each into a fresh sweep folder.",
        "",
        "| run | wall time (s) | runs (s) |",
        "|---|---:|---|",
        f"| (a) the sweep folder's own cache (compiles every program) | {own:.1f} | "
        f"{', '.join(f'{w:.1f}' for w, _ in runs['own'])} |",
        f"| (b) `JAX_COMPILATION_CACHE_DIR` filled by an earlier sweep | {shared:.1f} | "
        f"{', '.join(f'{w:.1f}' for w, _ in runs['shared'])} |",
        "",
        f"Speed-up (a)/(b): **{own / shared:.2f}x**. Same steps-to-result in every run: "
        f"{'yes' if same else 'NO'} ({runs['own'][0][1]}).",
        "",
    ]
    report(lines, record=not args.no_record)


if __name__ == "__main__":
    main()
