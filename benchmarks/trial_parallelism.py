"""How should one core run several trials of a sweep: one after another, or as
one vmapped program (trials sharing each batch, metaparameters as a batch
axis)? `cbs sweep` runs one worker process per core; this measures, per core,
trial-steps per second of K trials vmapped into one step vs the same K trials
stepped one after another, for the FC-1024 and the Simple CNN.

Each measurement runs in a subprocess pinned to one core with XLA
single-threaded, as a sweep worker runs.

    python benchmarks/trial_parallelism.py [--trials 4] [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def measure(workload, batch_size, trials, mode, seconds, data_dir):
    import jax
    import jax.numpy as jnp

    from harness.engine.train import Engine
    from harness.engine.trial import TrialConfig
    from harness.engine.workloads import get_workload

    w = get_workload(workload)
    engine = Engine(w, w.load_data(data_dir), TrialConfig(workload=workload, batch_size=batch_size,
                                                          learning_rate=0.01, optimizer="nesterov"))
    x = engine.train[0][:batch_size][None]
    y = engine.train[1][:batch_size][None]
    one = engine.init()
    if mode == "vmap":
        rates = jnp.logspace(-3, -1, trials)
        states = jax.tree.map(lambda a: jnp.stack([a] * trials), one)
        states = states._replace(hparams={**states.hparams, "learning_rate": rates})
        step = jax.jit(jax.vmap(engine._step, in_axes=(0, None, None)), donate_argnums=0)
        run = lambda s: step(s, x, y)
    else:
        states = [jax.tree.map(jnp.copy, one) for _ in range(trials)]
        step = jax.jit(engine._step, donate_argnums=0)
        run = lambda ss: [step(s, x, y) for s in ss]

    def advance(s):
        out = run(s)
        return (out[0], out[1]) if mode == "vmap" else ([o[0] for o in out], out[-1][1])

    states, loss = advance(states)
    jax.block_until_ready(loss)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        states, loss = advance(states)
        n += 1
    jax.block_until_ready(loss)
    return trials * n / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--data-dir")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        workload, b, mode = args.one.split(":")
        print(json.dumps(measure(workload, int(b), args.trials, mode, args.seconds, args.data_dir)))
        return
    print(f"| workload | B | K trials one after another (trial-steps/s) | K trials vmapped (trial-steps/s) "
          f"| vmapped / sequential |  (K = {args.trials}, one core, XLA single-threaded)")
    print("|---|---:|---:|---:|---:|")
    env = {**os.environ, "XLA_FLAGS": SINGLE_THREAD}
    for workload, b in (("mnist_fc1024", 64), ("mnist_fc1024", 512), ("mnist_simple_cnn", 16), ("mnist_simple_cnn", 128)):
        rate = {}
        for mode in ("sequential", "vmap"):
            cmd = ["taskset", "-c", "0", sys.executable, __file__, "--one", f"{workload}:{b}:{mode}",
                   "--trials", str(args.trials), "--seconds", str(args.seconds)]
            cmd += ["--data-dir", args.data_dir] if args.data_dir else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rate[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {workload} | {b} | {rate['sequential']:,.0f} | {rate['vmap']:,.0f} "
              f"| {rate['vmap'] / rate['sequential']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
