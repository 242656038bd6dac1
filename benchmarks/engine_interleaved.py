"""The engine's loop vs the plain per-step loop, interleaved in one process:
rounds of `steps` steps of each in turn, so that drifts of the machine's speed
(other processes, clock) fall on all alike; medians and best of 7 rounds.
`vmapped` is the engine's step vmapped over a pack axis of size one, as the
engine stepped a pack of one before it stepped such a pack unvmapped: what
that axis costs.

    python benchmarks/engine_interleaved.py [--workload mnist_simple_cnn] [--batch-sizes 8,64,512]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from harness.engine.step import Engine
from harness.engine.trial import TrialConfig
from harness.engine.workloads import get_workload


def measure(workload: str, batch_size: int, steps: int, rounds: int = 7) -> dict:
    w = get_workload(workload)
    e = Engine(w, w.load_data(None), TrialConfig(workload=workload, batch_size=batch_size, learning_rate=0.01))
    perm = e.epoch_order(0)
    vmapped_step = jax.jit(jax.vmap(e._train_step_at, in_axes=(None,) * 4 + (0,)), donate_argnums=4)
    plain_step = jax.jit(e._step, donate_argnums=0)
    train_x, train_y = (np.asarray(a) for a in e.train)
    rng = np.random.default_rng(0)

    def engine(state, n):
        state, _, _ = e.advance(state, 0, n)  # it returns the losses on the host: the steps are done
        return state

    def vmapped(state, n):
        carry = (state, jnp.zeros(1), jnp.full(1, -1, jnp.int32))
        for i in range(n):
            carry = vmapped_step(e.train, perm, 0, i, carry)
        jax.block_until_ready(carry[1])
        return carry[0]

    def plain(state, n):  # the Flax MNIST example's loop: host batches, one device_put and jitted step per step
        for _ in range(n):
            idx = rng.permutation(len(train_x))[:batch_size]
            state, loss = plain_step(
                state, jax.device_put(train_x[idx][None, None]), jax.device_put(train_y[idx][None, None])
            )
        loss.block_until_ready()
        return state

    loops = {"engine": engine, "vmapped": vmapped, "plain": plain}
    states = {"engine": e.init(), "vmapped": e.init(), "plain": e.trial(e.init(), 0)}
    states = {k: loops[k](states[k], 2) for k in loops}  # compile
    rates = {k: [] for k in loops}
    for _ in range(rounds):
        for k, loop in loops.items():
            t = time.perf_counter()
            states[k] = loop(states[k], steps)
            rates[k].append(steps * batch_size / (time.perf_counter() - t))
    return {k: (float(np.median(v)), float(max(v))) for k, v in rates.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="mnist_simple_cnn")
    p.add_argument("--batch-sizes", default="8,64,512")
    args = p.parse_args()
    print("| workload | B | plain ex/s | engine ex/s | engine / plain | vmapped ex/s | (median of 7; best) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for b in (int(b) for b in args.batch_sizes.split(",")):
        r = measure(args.workload, b, steps=max(4, 2048 // b))
        print(
            f"| {args.workload} | {b} | {r['plain'][0]:,.0f} | {r['engine'][0]:,.0f} | "
            f"{r['engine'][0] / r['plain'][0]:.2f}x | {r['vmapped'][0]:,.0f} | best: plain {r['plain'][1]:,.0f}, "
            f"engine {r['engine'][1]:,.0f}, vmapped {r['vmapped'][1]:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
