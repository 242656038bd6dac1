"""Experiment tracking of trials in MLflow or Weights & Biases (`cbs sweep
--track mlflow|wandb`, `cbs train --track ...`), each behind its extra.

One tracked run per trial, named by the trial id and grouped by sweep (the
MLflow experiment, the W&B group, are the sweep's name): the trial's
configuration as parameters, every evaluation row as metrics at its step,
and at the end its status and steps to target. MLflow writes to
$MLFLOW_TRACKING_URI, else to a SQLite store in the sweep folder
(`mlflow.db`); W&B writes its files in the sweep folder (`wandb/`), offline
unless $WANDB_MODE says otherwise or $WANDB_API_KEY is set.

A resumed trial continues its run: run_trial replays the rows restored from
the checkpoint, and a step already in the run's history is not logged again.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.sweep.trial_log import hparams

TRACKERS = ("mlflow", "wandb")
STORE = "mlflow.db"  # the local MLflow store in the sweep folder
TRIAL_TAG = "cbs.trial_id"


@dataclass(frozen=True)
class Tracking:
    """Where the trials of one sweep are tracked: `kind` (one of TRACKERS),
    `group` (the sweep's name), `folder` (for local files) and, for MLflow,
    the tracking `uri` and the sweep's `experiment_id`. Resolved once in the
    sweep process: every worker (local, Ray, other machines) tracks to the
    same place."""

    kind: str
    group: str
    folder: str
    uri: str | None = None
    experiment_id: str | None = None


def tracking(kind: str | None, group: str, folder) -> Tracking | None:
    """The Tracking of `--track kind` (None: no tracking), once its package is
    known to be installed and, for MLflow, the store and the experiment exist
    (made here, before workers would race to make them)."""
    if kind is None:
        return None
    if kind not in TRACKERS:
        raise UserError(f"--track {kind}: unknown tracker; allowed: {', '.join(TRACKERS)}")
    if importlib.util.find_spec(kind) is None:
        raise UserError(f'--track {kind} needs the {kind} extra: pip install -e ".[{kind}]"')
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "wandb":
        return Tracking(kind, group, str(folder))
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / STORE}"
    return Tracking(kind, group, str(folder), uri, _experiment_id(_mlflow_client(uri), group))


def open_run(track: Tracking, trial_id: str, config: dict):
    """The tracked run of trial `trial_id` (its own if it was tracked before):
    call it with each evaluation row, `finish(record)` once the trial has its
    record; use as a context manager."""
    return (MlflowRun if track.kind == "mlflow" else WandbRun)(track, trial_id, config)


def metrics(row: dict) -> dict:
    """An evaluation row's numbers but its step, as metrics."""
    return {
        k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class _Run:
    """Logs each step once; subclasses set `logged` (the steps already in the
    run) and implement `_log`, `finish` and `close`."""

    logged: set

    def __call__(self, row: dict) -> None:
        if row["step"] not in self.logged:
            self._log(row["step"], metrics(row))
            self.logged.add(row["step"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # the store's schema set-up talks at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


class MlflowRun(_Run):
    """A trial's MLflow run, found again by its `cbs.trial_id` tag on resume."""

    def __init__(self, track: Tracking, trial_id: str, config: dict):
        from mlflow.entities import Param

        self.client = _mlflow_client(track.uri)
        experiment = track.experiment_id
        found = self.client.search_runs([experiment], f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.logged = {m.step for m in self.client.get_metric_history(self.run_id, "val_loss")}
        else:
            run = self.client.create_run(experiment, run_name=trial_id, tags={TRIAL_TAG: trial_id})
            self.run_id, self.logged = run.info.run_id, set()
            params = [Param(k, str(v)) for k, v in hparams(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.finished = False

    def _log(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, record: dict) -> None:
        steps = record["steps_to_target"]
        self.client.set_tag(self.run_id, "status", record["status"])
        self.client.set_tag(self.run_id, "steps_to_target", "none" if steps is None else str(steps))
        if steps is not None:
            self.client.log_metric(self.run_id, "steps_to_target", steps)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        if not self.finished:  # stopped or interrupted: a later run resumes it
            self.client.set_terminated(self.run_id, "KILLED")


class WandbRun(_Run):
    """A trial's W&B run, resumed by its id (the sweep's name and the trial id).
    W&B writes a run's local file when its service stops (the worker process
    ends), so the steps an earlier attempt logged are known to a later process."""

    def __init__(self, track: Tracking, trial_id: str, config: dict):
        import wandb

        self.id = run_id(track.group, trial_id)
        self.logged = {row["_step"] for row in wandb_history(track.folder, self.id)}
        offline = "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ
        settings = wandb.Settings(
            silent=True, console="off", x_disable_stats=True, **({"mode": "offline"} if offline else {})
        )
        self.run = wandb.init(
            dir=track.folder,
            project=os.environ.get("WANDB_PROJECT", "cbs"),
            group=track.group,
            name=trial_id,
            id=self.id,
            resume="allow",
            config=hparams(config),
            reinit="create_new",
            settings=settings,
        )

    def _log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def finish(self, record: dict) -> None:
        self.run.summary["status"] = record["status"]
        self.run.summary["steps_to_target"] = record["steps_to_target"]

    def close(self) -> None:
        self.run.finish()


def run_id(group: str, trial_id: str) -> str:
    """A trial's W&B run id: its sweep's name and its id, in the characters W&B allows."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{group}-{trial_id}")


def wandb_history(folder, run: str) -> list[dict]:
    """The history rows W&B wrote locally for run `run` under `folder`/wandb
    (every attempt of it, in order): what a resumed trial has already logged."""
    rows = []
    for path in sorted(Path(folder).glob(f"wandb/*run-*-{run}/run-{run}.wandb")):
        rows += [
            {".".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(path)
            if record.WhichOneof("record_type") == "history"
        ]
    return rows


WANDB_BLOCK = 32768  # the .wandb file: a 7-byte header, then LevelDB-log records in blocks of 32 KiB


def wandb_records(path) -> list:
    """The records (wandb.proto.wandb_internal_pb2.Record) of a .wandb file;
    a record cut short by a crash ends the list."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = Path(path).read_bytes()
    records, chunks, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(data):
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records
