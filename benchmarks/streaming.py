"""Examples per second and peak RSS of a streamed trial vs the same trial in memory.

Streamed (`data_placement = "stream"`, harness.engine.stream), each step's
batch is read from .npy files through grain's random-access dataset and the steps
between two evaluations are placed on the device as one chunk (at most
16 MiB), the next chunk read while the device computes; in memory
(`data_placement = "memory"`) the training set is placed on the device once
and each step's batch is gathered there. The data are written once by the
project's own `prepare` (what `cbs prepare mnist` runs) into a temporary
folder, and both trials open that folder: only the placement differs. The
files have just been written, so the streamed reads hit the page cache, not
the disk.

Each measurement is `run_trial` (harness.engine.loop), the training loop
itself, in its own subprocess, so that its peak RSS (getrusage ru_maxrss) is
its own. Evaluations are made rare: an evaluation interval trains on
`--eval-rarity` (default 10) times as many examples as an evaluation reads (it
is a forward pass, so it takes a few percent of the interval; a slow model
such as the Simple CNN takes minutes per interval at 10, so its rows use 2); evaluations stay in the
timing, as they do in a trial, and the chunk prefetched across them too. The
first interval (compilation) is not timed: examples/s is measured from its
end to the first evaluation at least `--seconds` later (at least one
interval, so a slow model runs longer than `--seconds`). The target of
issue 23 is streamed >= 0.9x in memory at B >= 128.

    python benchmarks/streaming.py [--seconds 3] [--batch-sizes 16,128,1024] [--eval-rarity 10] \\
        [--workloads mnist_fc1024,mnist_simple_cnn]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import jax

INTERVALS = 1000  # the step budget, in evaluation intervals: more than --seconds runs


def run(placement, workload, batch_size, eval_every, data_dir, seconds):
    """Examples/s of a trial trained from `data_dir` with `placement`."""
    from harness.engine.loop import Hooks, Stopped, run_trial
    from harness.engine.trial import TrialConfig

    config = TrialConfig(
        workload=workload,
        batch_size=batch_size,
        learning_rate=0.01,
        optimizer="nesterov",
        data_placement=placement,
        eval_every=eval_every,
        max_steps=INTERVALS * eval_every,
        stop_at_target=False,
    )
    ends = []  # the time of each evaluation after the first interval's

    def should_stop():
        ends.append(time.perf_counter())
        return ends[-1] - ends[0] >= seconds

    try:
        run_trial(config, Hooks(should_stop=should_stop), data_dir=data_dir)
    except Stopped:
        pass
    if len(ends) < 2:
        raise RuntimeError(f"{placement} trial {workload} B={batch_size} stopped after its first interval (diverged?)")
    return (len(ends) - 1) * eval_every * batch_size / (ends[-1] - ends[0])


def one(args):
    placement, workload, batch_size, eval_every = args.one.split(":")
    examples_per_s = run(placement, workload, int(batch_size), int(eval_every), args.data_dir, args.seconds)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(examples_per_s=examples_per_s, peak_rss=peak_rss)))


def prepared(workloads, data_dir, folder: Path) -> dict:
    """Prepare each workload's dataset under `folder`/prepared (as
    `cbs prepare`); the size of each one's validation set."""
    from harness.engine.data import prepare
    from harness.engine.workloads import get_workload

    val_sizes = {}
    for workload in workloads:
        data = get_workload(workload).load_data(data_dir)
        if not (folder / "prepared" / data.name).exists():
            prepare(data.name, data_dir, folder / "prepared" / data.name)
        val_sizes[workload] = len(data.val_x)
    return val_sizes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch-sizes", default="16,128,1024")
    p.add_argument("--workloads", default="mnist_fc1024,mnist_simple_cnn")
    p.add_argument(
        "--eval-rarity", type=float, default=10.0, help="training examples per evaluation interval, in validation sets"
    )
    p.add_argument("--data-dir", default=None, help="where the raw datasets are (default: $CBS_DATA_DIR)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)
    device = jax.devices()[0]
    print(
        f"device: {device.platform} {device.device_kind}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__}, grain {version('grain')}, eval rarity {args.eval_rarity:g}"
    )
    print(
        "| workload | B | in-memory ex/s | streamed ex/s | streamed / in-memory "
        "| in-memory peak RSS (MB) | streamed peak RSS (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    workloads = args.workloads.split(",")
    with tempfile.TemporaryDirectory(prefix="cbs-streaming-") as tmp:
        val_sizes = prepared(workloads, args.data_dir, Path(tmp))
        for workload in workloads:
            for b in (int(b) for b in args.batch_sizes.split(",")):
                eval_every = math.ceil(args.eval_rarity * val_sizes[workload] / b)
                res = {}
                for placement in ("memory", "stream"):
                    cmd = [sys.executable, __file__, "--one", f"{placement}:{workload}:{b}:{eval_every}"]
                    cmd += ["--seconds", str(args.seconds), "--data-dir", tmp]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode:
                        sys.exit(f"{placement} {workload} B={b} failed:\n{out.stderr}")
                    res[placement] = json.loads(out.stdout.strip().splitlines()[-1])
                mem, st = res["memory"], res["stream"]
                print(
                    f"| {workload} | {b} | {mem['examples_per_s']:,.0f} | {st['examples_per_s']:,.0f} "
                    f"| {st['examples_per_s'] / mem['examples_per_s']:.2f} | {mem['peak_rss'] / 2**20:,.0f} "
                    f"| {st['peak_rss'] / 2**20:,.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
