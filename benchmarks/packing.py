"""Should a sweep worker pack P trials of one batch size into one program?
Trial-steps per second of P model copies stepped as one vmapped program vs P,
for the FC-1024 and the Simple CNN at B = 16, 128, 1024.

The P copies are P packed trials (harness.engine.step: one program, P
learning rates, one shared batch per step), timed by the measurement that
`pack = "auto"` uses (harness.sweep.packing.measure_packs). Each measurement
runs in a subprocess pinned to one core with XLA single-threaded, as a sweep
worker runs on CPU. Cells whose P * B examples per step would take longer than
the run allows are skipped (--max-examples).

    python benchmarks/packing.py [--seconds 1] [--max-examples fc=32768,cnn=2048] [--rows fc:1024,cnn:16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
WORKLOADS = {"fc": "mnist_fc1024", "cnn": "mnist_simple_cnn"}
PACKS = (1, 2, 4, 8, 16, 32)
BATCH_SIZES = (16, 128, 1024)


def measure(workload, batch_size, pack, seconds, data_dir):
    """Trial-steps per second of `pack` trials of batch `batch_size` packed."""
    from harness.engine.trial import TrialConfig
    from harness.sweep.packing import measure_packs

    configs = [
        TrialConfig(workload=workload, batch_size=batch_size, learning_rate=0.01 * (1 + i), optimizer="nesterov")
        for i in range(pack)
    ]
    rate = measure_packs(configs, (pack,), data_dir, steps=2)[pack]
    steps = max(2, int(rate * seconds / pack))  # about `seconds` of stepping
    return measure_packs(configs, (pack,), data_dir, steps=steps)[pack]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument(
        "--max-examples",
        default="fc=32768,cnn=2048",
        help="largest P * B measured per model (the CNN runs ~1000 examples/s on one core)",
    )
    p.add_argument("--data-dir")
    p.add_argument("--rows", help="only these rows, e.g. fc:1024,cnn:16 (default: every model at every B)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        workload, b, pack = args.one.split(":")
        print(json.dumps(measure(workload, int(b), int(pack), args.seconds, args.data_dir)))
        return
    cap = {k: int(v) for k, v in (kv.split("=") for kv in args.max_examples.split(","))}
    print(
        "| workload | B | " + " | ".join(f"P={k}" for k in PACKS) + " |  (trial-steps/s, one core, XLA "
        "single-threaded; in brackets: vs P=1)"
    )
    print("|---|---:|" + "---:|" * len(PACKS))
    env = {**os.environ, "XLA_FLAGS": SINGLE_THREAD}
    rows = [(k, b) for k in WORKLOADS for b in BATCH_SIZES]
    if args.rows:
        rows = [(k, int(b)) for k, b in (row.split(":") for row in args.rows.split(","))]
    for key, b in rows:
        workload, cells, base = WORKLOADS[key], [], None
        for pack in PACKS:
            if pack * b > cap[key]:
                cells.append("—")
                continue
            cmd = [
                "taskset",
                "-c",
                "0",
                sys.executable,
                __file__,
                "--one",
                f"{workload}:{b}:{pack}",
                "--seconds",
                str(args.seconds),
            ] + (["--data-dir", args.data_dir] if args.data_dir else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rate = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or rate
            cells.append(f"{rate:,.1f} ({rate / base:.2f}x)")
        print(f"| {workload} | {b} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
