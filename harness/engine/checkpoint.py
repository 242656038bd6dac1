"""Trial checkpoints with Orbax: the train state (arrays) plus a JSON item with
the measurements so far. Only the latest checkpoint is kept; Orbax commits a
step by an atomic rename, so a kill at any moment leaves the previous one.

A checkpoint that cannot be read back (files truncated or deleted behind
Orbax's back, a structure that no longer fits) is set aside, renamed
`<step>.corrupt-<time>` in the same folder, with a one-line warning, and the
trial resumes from the newest readable one or from scratch: a damaged
checkpoint costs the steps since the last good one, never the run."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from pathlib import Path

import orbax.checkpoint as ocp

from harness.errors import UserError, warn


def _manager(directory) -> ocp.CheckpointManager:
    _quiet_orbax_duplicates()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "meta"))


def save(directory, step: int, state, meta: dict) -> None:
    """Save step `step`; a full disk raises OSError(ENOSPC), as a plain file
    write does (TensorStore reports it as a ValueError)."""
    try:
        with _manager(directory) as manager:
            manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            )
    except ValueError as e:
        if os.strerror(errno.ENOSPC) in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory)) from e
        raise


def exists(directory) -> bool:
    """Whether `directory` holds a committed checkpoint."""
    if not Path(directory).exists():
        return False
    with _manager(directory) as manager:
        return manager.latest_step() is not None


def restore(directory, like):
    """(state, meta) of the newest readable checkpoint, or (like, None) when
    there is none. `like` gives the structure, dtypes and shardings to restore
    into. Unreadable checkpoints are set aside (see the module docstring)."""
    if not Path(directory).exists():
        return like, None
    if not Path(directory).is_dir():
        raise UserError(f"checkpoint folder {directory} is a file; allowed: a folder, or a path that does not exist")
    with _manager(directory) as manager:
        steps = sorted(manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore())
                )
                meta = restored["meta"]
                if not isinstance(meta, dict) or not isinstance(meta.get("rows"), list):
                    raise ValueError(f"its measurements are not a list of rows: {str(meta)[:80]}")
            except Exception as e:  # Orbax and TensorStore raise many types for damaged files
                _set_aside(directory, step, e, steps[i + 1] if i + 1 < len(steps) else None)
                continue
            return type(like)(*restored["state"]) if isinstance(like, tuple) else restored["state"], meta
    return like, None


def _quiet_orbax_duplicates() -> None:
    """Silence Orbax's second reports of a failure it raises to us (which we
    set aside with a warning, or report as one line), orbax-checkpoint 0.12
    with tensorstore 0.1.86: (1) when one array fails to read or write, Orbax
    closes its event loop while TensorStore's other operations are in flight,
    and each of them reports `RuntimeError: Event loop is closed` as an
    unraisable exception; (2) its background threads log the exception they
    pass on as an absl ERROR with a traceback. Drop exactly those; pass
    anything else on."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_orbax", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.quiets_orbax = True
    sys.unraisablehook = hook
    logging.getLogger("absl").addFilter(_not_a_rethrown_failure)  # a filter already there is not added twice


def _not_a_rethrown_failure(record: logging.LogRecord) -> bool:
    return "_SignalingThread.run() raised an exception" not in record.getMessage()


def _set_aside(directory, step: int, error: Exception, fallback: int | None) -> None:
    folder = Path(directory) / str(step)
    os.replace(folder, folder.with_name(f"{step}.corrupt-{time.time():.0f}"))
    reason = " ".join(str(error).split()) or type(error).__name__
    reason = reason if len(reason) <= 200 else reason[:200] + "..."
    warn(
        f"unreadable checkpoint of {directory} at step {step} set aside: {reason}; resuming from "
        f"{'scratch' if fallback is None else f'step {fallback}'}"
    )
