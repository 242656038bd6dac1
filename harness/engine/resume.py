"""Where the trials of a pack start, and what they keep to start again.

A trial resumes from its checkpoint (bit-identically: the data order depends
only on (seed, epoch), harness.engine.step), else starts from a snapshot of
another trial (`init_from`: the branches of Merrill et al. 2025, Sec. 3), else
from the initial state. Snapshots (`snapshot_steps`) outlive the trial that
wrote them; checkpoints are its own (harness.engine.checkpoint keeps the
latest only).
"""

from __future__ import annotations

from pathlib import Path

from harness.engine import checkpoint
from harness.engine.step import Engine, TrainState
from harness.engine.trial import TrialConfig
from harness.errors import UserError


class PackMismatch(Exception):
    """The trials of a pack resume from different steps (their checkpoints
    were not all written at one evaluation): run them one at a time."""


def restore(engine: Engine, runs) -> tuple[TrainState, list[dict | None]]:
    """The packed state of `runs` (harness.engine.loop.TrialRun), each trial
    from its checkpoint, else its snapshot, else fresh; and per trial the
    metadata its checkpoint saved ({"rows", "elapsed", "data"}), None if it starts
    anew. Raises PackMismatch when they would resume at different steps."""
    fresh, states, saved = engine.init(), [], []
    for i, run in enumerate(runs):
        state, meta = engine.trial(fresh, i), None
        if run.checkpoint_dir and run.config.checkpoint_every:
            state, meta = checkpoint.restore(run.checkpoint_dir, state)
        if meta is None and run.config.init_from:
            state = _from_snapshot(run.config, state)
        states.append(state)
        saved.append(meta)
    starts = [meta["rows"][-1]["step"] if meta else run.config.init_step for run, meta in zip(runs, saved)]
    if len(set(starts)) > 1:
        raise PackMismatch(starts)
    return engine.packed(states), saved


def save_checkpoint(directory, step: int, state: TrainState, rows: list[dict], elapsed: float, data: dict) -> None:
    """The trial's state after `step`, with its rows, its training time so far
    and where its data order stands (Engine.data_state: a streamed trial
    reads on from there)."""
    checkpoint.save(directory, step, state, {"rows": rows, "elapsed": elapsed, "data": data})


def save_snapshot(directory, step: int, state: TrainState, row: dict) -> None:
    """The trial's state after `step` in `directory`/<step>, the starting point
    of branches; written once (a resumed trial does not overwrite it)."""
    folder = Path(directory) / str(step)
    if not checkpoint.exists(folder):
        checkpoint.save(folder, step, _branch_start(state), {"rows": [row]})


def _branch_start(state: TrainState) -> TrainState:
    """What a branch starts from: parameters, model and optimizer state (the
    noise-scale state and the metaparameters are the branch's own)."""
    return state._replace(gns=None, hparams={})


def _from_snapshot(config: TrialConfig, state: TrainState) -> TrainState:
    """`state` with the snapshot at `config.init_from` restored into it (it
    continues at step `config.init_step`); optimizer state shapes do not
    depend on the batch size, so a branch at another one restores it."""
    restored, meta = checkpoint.restore(config.init_from, _branch_start(state))
    if meta is None:
        raise UserError(f"init_from: no snapshot in {config.init_from}")
    return state._replace(
        params=restored.params, model_state=restored.model_state, opt_state=restored.opt_state, step=restored.step
    )
