"""How many trials a sweep worker packs into one program (the spec's `pack`).

`pack = P` runs up to P trials that share one program (one
harness.engine.step.pack_key: batch size, seed, schedule shape, budget) as
one pack. `auto` chooses P per program on the worker's device: 1 on CPU,
where packing was measured slower (benchmarks/RESULTS.md: vmapped FC-1024 and
Simple CNN trials ran at 0.2-0.7x of one after another on one core), else the
P of AUTO_SIZES with the most trial-steps per second in a short measurement of
that program (`measure_packs`).
"""

from __future__ import annotations

import time

from harness.engine.trial import TrialConfig
from harness.sweep.spec import PlannedTrial

AUTO_SIZES = (1, 2, 4, 8, 16, 32)
MEASURED_STEPS = 20


class PackSize:
    """The pack size for a group of trials with one pack_key: `pack` when it
    is a number; for "auto", chosen once per program (see the module)."""

    def __init__(self, pack: int | str, data_dir=None):
        self.pack, self.data_dir, self._chosen = pack, data_dir, {}

    def __call__(self, group: list[PlannedTrial]) -> int:
        if self.pack != "auto":
            return self.pack
        import jax

        from harness.engine.step import pack_key

        key = pack_key(group[0].config)
        if key not in self._chosen:
            sizes = [p for p in AUTO_SIZES if p <= len(group)]
            self._chosen[key] = (
                1
                if jax.default_backend() == "cpu"
                else fastest(measure_packs([t.config for t in group], sizes, self.data_dir))
            )
        return self._chosen[key]


def packs(trials: list[PlannedTrial], size) -> list[list[PlannedTrial]]:
    """`trials` cut into packs: trials with one pack_key, in their order, at
    most `size(group)` at a time; packs ordered by their first trial."""
    from harness.engine.step import pack_key

    groups: dict[str, list[PlannedTrial]] = {}
    for trial in trials:
        groups.setdefault(pack_key(trial.config), []).append(trial)
    position = {t.id: i for i, t in enumerate(trials)}
    out = []
    for group in groups.values():
        p = size(group)
        out += [group[i : i + p] for i in range(0, len(group), p)]
    return sorted(out, key=lambda pack: position[pack[0].id])


def fastest(rates: dict[int, float]) -> int:
    """The pack size with the most trial-steps per second."""
    return max(rates, key=rates.get)


def measure_packs(configs: list[TrialConfig], sizes, data_dir=None, steps: int = MEASURED_STEPS) -> dict[int, float]:
    """Trial-steps per second of packs of each size in `sizes`, made of the
    first configs of `configs` (one pack_key), after compiling each."""
    from harness.engine.step import Engine
    from harness.engine.workloads import get_workload

    workload = get_workload(configs[0].workload)
    data = workload.load_data(data_dir)
    rates = {}
    for p in sizes:
        engine = Engine(workload, data, [configs[i % len(configs)] for i in range(p)])
        state, _, _ = engine.advance(engine.init(), 0, 1)  # compiles; the losses come back, so it has run
        t = time.perf_counter()
        engine.advance(state, 1, 1 + steps)
        rates[p] = p * steps / (time.perf_counter() - t)
    return rates
