"""Examples per second of the engine's loop vs a plain per-step Python loop.

The baseline is the way the Flax MNIST example trains: a jitted `train_step`
called once per step from Python, with batches cut from a host-side numpy
permutation and sent to the device every step. The engine keeps the data on
the device and runs all steps between two evaluations in one `fori_loop`.
Same model, optimizer and device, side by side in one run.

Also reported: the fraction of the device's measured float32 matmul peak that
each loop achieves (FLOPs per step from XLA's cost analysis) and the peak
memory (device peak on accelerators, process peak RSS on CPU; each run in its
own subprocess so the peak is its own).

    python benchmarks/engine.py [--seconds 3] [--batch-sizes 1,8,64,512] [--workloads mnist_fc1024,mnist_simple_cnn]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_peak(n=2048, repeats=5, rounds=5) -> float:
    """Measured float32 matmul FLOP/s of the default device (best of `rounds`)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            f(a).block_until_ready()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - t))
    return best


def _engine(workload, batch_size, data_dir):
    from harness.engine.step import Engine
    from harness.engine.trial import TrialConfig
    from harness.engine.workloads import get_workload

    w = get_workload(workload)
    config = TrialConfig(workload=workload, batch_size=batch_size, learning_rate=0.01, optimizer="nesterov")
    return Engine(w, w.load_data(data_dir), config), config


def _flops_per_step(engine, state):
    b = engine.config.batch_size  # one copy, one micro-batch
    x = engine.train[0][:b].reshape(1, 1, b, *engine.train[0].shape[1:])
    y = engine.train[1][:b].reshape(1, 1, b)
    cost = jax.jit(engine._step).lower(state, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def run_engine(workload, batch_size, data_dir, seconds):
    engine, _ = _engine(workload, batch_size, data_dir)
    state = engine.init()
    flops = _flops_per_step(engine, engine.trial(state, 0))
    n = 1
    state, *_ = engine.advance(state, 0, n)  # compile
    while True:  # a chunk of n steps that takes a quarter of the time ...
        t = time.perf_counter()
        state, loss, _ = engine.advance(state, 0, n)
        if time.perf_counter() - t > seconds / 4 or n >= engine.steps_per_epoch * 50:
            break
        n *= 4
    t = time.perf_counter()  # ... then `seconds` of such chunks, as long as the plain loop runs
    for _ in range(4):
        state, loss, _ = engine.advance(state, 0, n)
    elapsed = time.perf_counter() - t
    return 4 * n * batch_size / elapsed, flops * 4 * n / elapsed


def run_plain(workload, batch_size, data_dir, seconds):
    """The Flax-example loop: host permutation, device_put per step, one jitted step per call."""
    engine, config = _engine(workload, batch_size, data_dir)
    state = engine.trial(engine.init(), 0)  # one trial, no pack axis
    flops = _flops_per_step(engine, state)
    step = jax.jit(engine._step, donate_argnums=0)
    train_x, train_y = (np.asarray(a) for a in engine.train)
    rng = np.random.default_rng(0)

    def epoch_batches():
        while True:
            perm = rng.permutation(len(train_x))
            for i in range(len(train_x) // batch_size):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                yield train_x[idx][None, None], train_y[idx][None, None]

    batches = epoch_batches()
    state, loss = step(state, *next(batches))  # compile
    loss.block_until_ready()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        x, y = next(batches)
        state, loss = step(state, jax.device_put(x), jax.device_put(y))
        n += 1
    loss.block_until_ready()
    elapsed = time.perf_counter() - t
    return n * batch_size / elapsed, flops * n / elapsed


def peak_memory_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one(args):
    loop, workload, batch_size = args.one.split(":")
    fn = run_engine if loop == "engine" else run_plain
    examples_per_s, flop_rate = fn(workload, int(batch_size), args.data_dir, args.seconds)
    print(json.dumps(dict(examples_per_s=examples_per_s, flop_rate=flop_rate, peak_memory=peak_memory_bytes())))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch-sizes", default="1,8,64,512")
    p.add_argument("--workloads", default="mnist_fc1024,mnist_simple_cnn")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args)
    peak = matmul_peak()
    device = jax.devices()[0]
    print(
        f"device: {device.platform} {device.device_kind}, {platform.processor() or platform.machine()}, "
        f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(
        "| workload | B | plain loop ex/s | engine ex/s | speed-up | plain % peak | engine % peak "
        "| plain peak mem (MB) | engine peak mem (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload in args.workloads.split(","):
        for b in (int(b) for b in args.batch_sizes.split(",")):
            res = {}
            for loop in ("plain", "engine"):
                cmd = [sys.executable, __file__, "--one", f"{loop}:{workload}:{b}", "--seconds", str(args.seconds)]
                if args.data_dir:
                    cmd += ["--data-dir", args.data_dir]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res[loop] = json.loads(out.stdout.strip().splitlines()[-1])
            pl, en = res["plain"], res["engine"]
            print(
                f"| {workload} | {b} | {pl['examples_per_s']:,.0f} | {en['examples_per_s']:,.0f} "
                f"| {en['examples_per_s'] / pl['examples_per_s']:.1f}x | {100 * pl['flop_rate'] / peak:.1f} "
                f"| {100 * en['flop_rate'] / peak:.1f} | {pl['peak_memory'] / 2**20:,.0f} "
                f"| {en['peak_memory'] / 2**20:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
