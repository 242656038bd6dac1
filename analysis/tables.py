"""A sweep folder (harness.sweep.store) as tidy pandas tables.

`load_sweep(folder)` returns a `SweepTables` with
- `trials`: one row per finished trial: trial_id, batch_size, status,
  steps_to_target (NaN when none), seed, steps_run, wall_time, and one
  column per TrialConfig field (learning_rate, momentum, optimizer, ...);
- `measurements`: one row per evaluation: trial_id, batch_size, step,
  examples, rounds (communication rounds: harness.engine.algorithms; one per
  step in records that predate the count), train_loss, val_loss, val_metric, wall_time (and gns_* columns
  when the noise scale was tracked);
- `spec`: the sweep's normalized spec (workload, metric, direction, target,
  batch_sizes, ...; see harness.sweep.spec);
- `runs`: one row per trial with a record of where it ran: trial_id, the
  package versions, git_commit, git_dirty, device_kind, device_count,
  platform, host, python (harness.engine.environment);
- `metadata`: the folder's metadata.json (where its latest worker ran), or {}.
A corrupt record is skipped with a warning: the loader never fails on one.
A folder in Shallue et al.'s batch_science layout (analysis.batch_science)
loads the same way.

`read_steps_table(path)` reads a user's own steps-vs-batch-size CSV (`cbs fit`);
`read_noise_scale_study(folder)` the `cbs gns` run kept in a sweep folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.batch_science import is_batch_science, read_batch_science
from harness.errors import UserError, warn
from harness.sweep.store import CorruptRecord, Store, parse_record

GNS_RESULT = "gns/gns.json"  # a `cbs gns --out SWEEP/gns` run of the sweep's workload
STEPS_COLUMNS = ("batch_size", "steps")  # of a user's steps-vs-batch-size table (`cbs fit`)
FIRST_COLUMNS = ["trial_id", "batch_size", "status", "steps_to_target", "seed", "steps_run", "wall_time"]


@dataclass
class SweepTables:
    trials: pd.DataFrame
    measurements: pd.DataFrame
    spec: dict
    folder: Path
    runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["trial_id"]))
    metadata: dict = field(default_factory=dict)


def load_sweep(folder) -> SweepTables:
    store = Store(folder)
    stored = store.read_spec()
    if stored is None and is_batch_science(folder):
        spec, records = read_batch_science(folder)
        return tables_of(records, spec, Path(folder))
    if stored is None:
        raise UserError(
            f"{folder}: not a sweep folder (no spec.json); allowed: a folder written by `cbs sweep`, "
            "or one in the batch_science layout (dataset/model/optimizer/batch_size/study.json)"
        )
    records = []
    for path in sorted(store.trials_dir.glob("*/record.json")):
        try:
            records.append((path.parent.name, parse_record(path)))
        except CorruptRecord as e:
            warn(f"skipping a corrupt trial record: {e}")
    return tables_of(records, stored["spec"], store.folder, store.read_metadata() or {})


def tables_of(records, spec: dict, folder: Path, metadata: dict | None = None) -> SweepTables:
    """The tables of (trial_id, record) pairs (harness.engine.trial.TrialRecord as a dict)."""
    trials, measurements, runs = [], [], []
    for trial_id, record in sorted(records, key=lambda pair: pair[0]):
        config = record["config"]
        if record.get("run"):
            run = record["run"]
            runs.append(
                {"trial_id": trial_id, **run.get("packages", {}), **{k: v for k, v in run.items() if k != "packages"}}
            )
        trials.append(
            {
                "trial_id": trial_id,
                "status": record["status"],
                "steps_to_target": np.nan if record["steps_to_target"] is None else record["steps_to_target"],
                "steps_run": record["steps_run"],
                "wall_time": record.get("wall_time", np.nan),
                **{
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in config.items()
                    if k != "workload" and not isinstance(v, dict)
                },
            }
        )
        measurements += [
            {"trial_id": trial_id, "batch_size": config["batch_size"], "rounds": row["step"], **row}
            for row in record["measurements"]
        ]
    trials = pd.DataFrame(trials, columns=None if trials else FIRST_COLUMNS)
    trials = trials.reindex(columns=FIRST_COLUMNS + [c for c in trials.columns if c not in FIRST_COLUMNS])
    trials["steps_to_target"] = trials["steps_to_target"].astype(float)
    measurements = pd.DataFrame(
        measurements,
        columns=None
        if measurements
        else [
            "trial_id",
            "batch_size",
            "step",
            "examples",
            "rounds",
            "train_loss",
            "val_loss",
            "val_metric",
            "wall_time",
        ],
    )
    return SweepTables(
        trials.reset_index(drop=True),
        measurements,
        spec,
        folder,
        pd.DataFrame(runs, columns=None if runs else ["trial_id"]),
        metadata or {},
    )


def read_steps_table(path) -> pd.DataFrame:
    """The user's table, checked: UserError on a missing file, missing columns,
    non-positive values, a batch size listed twice within a group, or a group
    of fewer than 2 rows (nothing to fit)."""
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in STEPS_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)}; needs batch_size and "
            f"steps (optional: group); found: {', '.join(map(str, table.columns))}"
        )
    for column in STEPS_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table[~(values > 0)]
        if len(bad):
            raise UserError(
                f"{column} must be a positive number; row {bad.index[0] + 2} of {path} has {bad[column].iloc[0]!r}"
            )
        table[column] = values
    if "group" not in table.columns:
        table["group"] = ""
    table["group"] = table["group"].fillna("").astype(str)
    twice = table[table.duplicated(["group", "batch_size"])]
    if len(twice):
        where = f" in group {twice['group'].iloc[0]!r}" if twice["group"].iloc[0] else ""
        raise UserError(
            f"batch_size {twice['batch_size'].iloc[0]:g} appears twice{where} in "
            f"{path}: give one row per batch size (its steps to result)"
        )
    sizes = table.groupby("group", sort=False).size() if len(table) else pd.Series({"": 0})
    if (sizes < 2).any():
        group, n = sizes.index[sizes < 2][0], sizes[sizes < 2].iloc[0]
        where = f" in group {group!r}" if group else ""
        raise UserError(
            f"{path}: {n} row{'' if n == 1 else 's'}{where}; a fit needs at least 2 batch sizes "
            "(3 for an interval); allowed: one row per batch size, at least 2 per group"
        )
    return table


def read_noise_scale_study(folder) -> dict | None:
    """The `cbs gns` result (harness.engine.noise_scale_study) at FOLDER/gns/gns.json, or None."""
    path = Path(folder) / GNS_RESULT
    return json.loads(path.read_text()) if path.exists() else None
