"""Trials whose global batch size grows during training (batch-size warmup,
Merrill et al. 2025, Sec. 5).

A trial with `batch_schedule = (B1, B2, ...)` and `batch_schedule_examples =
(T1, T2, ...)` trains at `batch_size` until it has seen T1 examples, then at
B1 until T2, and so on; a change takes effect at the first step that begins at
or after its threshold. Each phase is an Engine of its own (the batch size is
static in the compiled step); the train state carries over, and each phase
starts in the data order where the last one stopped (harness.engine.step.Position),
so no example is repeated or skipped within an epoch. At each change:

- the learning rate moves by `batch_lr_rule`: linear (Goyal et al. 2017,
  Sec. 2.1; SGD and momentum), sqrt (Malladi et al. 2022, the Adam family), or
  none; `auto` is sqrt for adam, adamw and lamb and linear otherwise;
- with `batch_beta2_rule = "half_life"`, Adam's beta2 keeps its half-life in
  examples: beta2' = beta2^(B'/B) (Marek et al. 2025).

Learning-rate schedules and the step budget count steps, as for any trial.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence

from harness.engine.optimizers import ADAM_FAMILY
from harness.engine.step import Engine, TrainState
from harness.engine.trial import TrialConfig
from harness.engine.workloads import Workload
from harness.errors import UserError

LR_RULES = {"linear": lambda k: k, "sqrt": math.sqrt, "none": lambda k: 1.0}


def lr_rule(config: TrialConfig) -> str:
    """The learning-rate rule a batch-size change applies (`auto` resolved)."""
    if config.batch_lr_rule != "auto":
        return config.batch_lr_rule
    return "sqrt" if config.optimizer in ADAM_FAMILY else "linear"


def phase_config(config: TrialConfig, batch_size: int) -> TrialConfig:
    """The config of a phase at `batch_size`: its learning rate and beta2 moved
    by the rules from the first phase's."""
    k = batch_size / config.batch_size
    return dataclasses.replace(
        config,
        batch_size=batch_size,
        b2=config.b2**k if config.batch_beta2_rule == "half_life" else config.b2,
        batch_schedule=(),
        batch_schedule_examples=(),
        batch_auto=None,
        learning_rate=config.learning_rate * LR_RULES[lr_rule(config)](k),
    )


def phase_configs(config: TrialConfig) -> list[TrialConfig]:
    """The config of each phase of a fixed schedule; one phase without one
    (`batch_auto` adds its phases while the trial runs)."""
    return [phase_config(config, b) for b in (config.batch_size, *config.batch_schedule)]


def make_engine(workload: Workload, data, configs: Sequence[TrialConfig]) -> Engine | ScheduledEngine:
    """The engine of a pack: one Engine, or one per phase for a batch schedule."""
    if configs[0].batch_schedule or configs[0].batch_auto is not None:
        if configs[0].batch_auto is not None and len(configs) > 1:
            raise UserError("batch_auto trials decide their batch sizes one by one; allowed: pack = 1")
        return ScheduledEngine(workload, data, configs)
    return Engine(workload, data, configs)


class ScheduledEngine:
    """The engines of a pack whose batch size changes (its trials share the
    schedule: it is part of their `pack_key`), used like one Engine."""

    def __init__(self, workload: Workload, data, configs: Sequence[TrialConfig]):
        self.configs, self.config, self.workload, self.data = list(configs), configs[0], workload, data
        self.engines = [Engine(workload, data, [phase_config(c, c.batch_size) for c in configs])]
        self.firsts = [0]
        for batch_size, threshold in zip(self.config.batch_schedule, self.config.batch_schedule_examples):
            last = self.engines[-1]
            self._grow(
                last.start.step + max(0, math.ceil((threshold - last.start.examples) / last.config.batch_size)),
                batch_size,
            )
        self._phase = None  # the phase whose metaparameters the state holds

    def adapt(self, rows: list[dict]) -> None:
        """`batch_auto`: after the evaluation `rows[-1]`, double the batch size
        when c * B_simple > 2 B (McCandlish et al. 2018: B_crit ~ B_noise, of
        which B_simple is the cheap proxy; c calibrates one to the other), up
        to `batch_auto_max` and the training set. The online estimate reuses
        the step's micro-batch gradients: it costs no extra examples."""
        row, last = rows[-1], self.engines[-1]
        batch_size, limit = 2 * last.config.batch_size, self.config.batch_auto_max or last.train_size
        b_simple = row.get("gns_b_simple")
        if b_simple is not None and math.isfinite(b_simple) and self.config.batch_auto * b_simple > batch_size:
            if batch_size <= limit and row["step"] > last.start.step:
                self._grow(row["step"], batch_size)

    def replay(self, rows: list[dict]) -> None:
        """The phases `batch_auto` added before the rows were checkpointed: a
        row says the batch size of its last step, so a change between two rows
        was made at the first of them."""
        for before, after in zip(rows, rows[1:]):
            if after.get("batch_size", before.get("batch_size")) != before.get("batch_size"):
                self._grow(before["step"], after["batch_size"])

    def _grow(self, step: int, batch_size: int) -> None:
        """A phase at `batch_size` from step `step` on, where the last one stops
        in the data order; it shares the last one's device-resident data."""
        last = self.engines[-1]
        phase = [phase_config(c, batch_size) for c in self.configs]
        self.engines.append(Engine(self.workload, self.data, phase, last.start_of(step), (last.train, last.val)))
        self.firsts.append(step)

    def _at(self, step: int) -> Engine:
        """The engine of the phase that step index `step` belongs to."""
        return self.engines[bisect.bisect_right(self.firsts, step) - 1]

    def init(self) -> TrainState:
        return self.engines[0].init()

    def packed(self, states: Sequence[TrainState]) -> TrainState:
        return self.engines[0].packed(states)

    trial = staticmethod(Engine.trial)

    def evaluate(self, state: TrainState) -> list[tuple[float, float]]:
        return self.engines[0].evaluate(state)

    def examples_at(self, step: int) -> int:
        return self._at(max(step - 1, 0)).examples_at(step)

    def batch_size_at(self, step: int) -> int:
        """The batch size of the last of `step` steps."""
        return self._at(max(step - 1, 0)).config.batch_size

    def data_state(self, step: int) -> dict:
        return self._at(step).data_state(step)

    def seek(self, saved: dict | None) -> None:
        if saved:
            self._at(saved["step"]).seek(saved)

    def advance(self, state: TrainState, start: int, stop: int):
        """Engine.advance across the phases between `start` and `stop`; on
        entering a phase the state takes its metaparameters."""
        loss_sum, step, bad_steps = 0.0, start, [None] * len(self.configs)
        while step < stop:
            phase = bisect.bisect_right(self.firsts, step) - 1
            engine, end = self.engines[phase], min([stop, *(f for f in self.firsts if f > step)])
            if phase != self._phase:
                state, self._phase = state._replace(hparams=engine.hparams()), phase
            state, losses, bad = engine.advance(state, step, end)
            loss_sum = loss_sum + losses * (end - step)
            bad_steps = [a if a is not None else b for a, b in zip(bad_steps, bad)]
            step = end
        return state, loss_sum / (stop - start), bad_steps
