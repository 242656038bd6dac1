"""Trial checkpoints with Orbax: the train state (arrays) plus a JSON item with
the measurements so far. Only the latest checkpoint is kept; Orbax commits a
step by an atomic rename, so a kill at any moment leaves the previous one."""
from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp


def _manager(directory) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "meta"))


def save(directory, step: int, state, meta: dict) -> None:
    with _manager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)))


def exists(directory) -> bool:
    """Whether `directory` holds a committed checkpoint."""
    if not Path(directory).exists():
        return False
    with _manager(directory) as manager:
        return manager.latest_step() is not None


def restore(directory, like):
    """(state, meta) of the latest checkpoint, or (like, None) when there is
    none. `like` gives the structure, dtypes and shardings to restore into."""
    if not Path(directory).exists():
        return like, None
    with _manager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            return like, None
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like),
                                                                 meta=ocp.args.JsonRestore()))
    return type(like)(*restored["state"]) if isinstance(like, tuple) else restored["state"], restored["meta"]
