"""Shallue et al.'s (2019) released data layout (`batch_science`), both ways:

    dataset/model/optimizer/batch_size/study.json
    dataset/model/optimizer/batch_size/trial_id/metadata.json
    dataset/model/optimizer/batch_size/trial_id/measurements.csv

as their data archive and its `data_loader.py` have it: one study per batch
size, trial folders named by integers (study.json also says `train_examples`, the
training subset's size, null for the whole split), metadata.json with trial_id, status,
steps and parameters (the searched metaparameters), measurements.csv with one
row per evaluation indexed by step.

Statuses follow their analysis code, which counts only COMPLETE trials:
`diverged` -> INFEASIBLE (diverged at some point); `complete` and
`incomplete` -> COMPLETE (the trial finished, by reaching the goal or by
running its budget without reaching it); `pruned` -> INCOMPLETE (stopped early
because it could no longer beat the best trial at its batch size, so it
cannot change steps to result at the sweep's target; study.json says
`early_stopping: true` for a pruned sweep). Reading their data back,
COMPLETE -> `complete` (so every COMPLETE trial's crossings count, as in
their `compute_steps_to_result`), INCOMPLETE -> `incomplete`, INFEASIBLE ->
`diverged`; their data has no target, so `cbs analyze` needs `--target`.

An export also keeps what the harness needs to read it back unchanged: the
normalized spec in study.json and each record's id, status, configuration and
run metadata in metadata.json, under the key `cbs` (their loader ignores it).
Columns train_loss, val_loss, val_metric are named train/loss, val/loss and
val/<metric> (their names for the metrics: classification_error,
cross_entropy_error); the others keep the harness's names.

The folder `dataset/model` is the workload name split at its first
underscore (mnist_fc128x1 -> mnist/fc128x1); the workload's name itself is in
the spec.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.engine.targets import METRICS
from harness.errors import UserError
from harness.sweep.store import CorruptRecord, Store, parse_record

STATUS_OUT = {"complete": "COMPLETE", "incomplete": "COMPLETE", "diverged": "INFEASIBLE", "pruned": "INCOMPLETE"}
STATUS_IN = {"COMPLETE": "complete", "INCOMPLETE": "incomplete", "INFEASIBLE": "diverged"}
METRIC_NAMES = {
    "error_rate": "classification_error",
    "cross_entropy": "cross_entropy_error",
    "accuracy": "accuracy",
    "squared_error": "squared_error",
}  # harness -> theirs
LOSS_COLUMNS = {
    "train_loss": ("train/loss", "train/cross_entropy_error"),
    "val_loss": ("val/loss", "val/cross_entropy_error"),
}  # first: an export's; second: their data's


def export_sweep(folder, out) -> Path:
    """Write the sweep in `folder` (harness.sweep.store) to `out` in the
    batch_science layout; returns the workload folder out/dataset/model/optimizer.
    Corrupt records are skipped, as load_sweep skips them."""
    store = Store(folder)
    stored = store.read_spec()
    if stored is None:
        raise UserError(f"{folder}: not a sweep folder (no spec.json); allowed: a folder written by `cbs sweep`")
    spec = stored["spec"]
    records = {}
    for path in sorted(store.trials_dir.glob("*/record.json")):
        try:
            records[path.parent.name] = parse_record(path)
        except CorruptRecord:
            continue
    dataset, _, model = spec["workload"].partition("_")
    root = Path(out) / dataset / (model or dataset) / spec["optimizer"]
    space = (spec.get("search") or {}).get("space") or {}
    columns = {"train_loss": "train/loss", "val_loss": "val/loss", "val_metric": f"val/{METRIC_NAMES[spec['metric']]}"}
    for batch_size in sorted({r["config"]["batch_size"] for r in records.values()}):
        study = root / str(batch_size)
        study.mkdir(parents=True, exist_ok=True)
        ids = sorted(i for i, r in records.items() if r["config"]["batch_size"] == batch_size)
        (study / "study.json").write_text(
            json.dumps(
                {
                    "batch_size": batch_size,
                    "dataset": dataset,
                    "model": model or dataset,
                    "optimizer": spec["optimizer"],
                    "early_stopping": bool(spec.get("prune")),
                    "parameter_configs": {k: _parameter_config(v) for k, v in space.items()},
                    "train_steps": max(records[i]["config"]["max_steps"] for i in ids),
                    "train_examples": _one_or_all({records[i]["config"].get("train_examples") for i in ids}),
                    "cbs": {"spec": spec},
                },
                indent=1,
            )
        )
        for number, trial_id in enumerate(ids, 1):
            record = records[trial_id]
            trial = study / str(number)
            trial.mkdir(exist_ok=True)
            (trial / "metadata.json").write_text(
                json.dumps(
                    {
                        "trial_id": number,
                        "status": STATUS_OUT[record["status"]],
                        "steps": record["steps_run"],
                        "parameters": {k: record["config"][k] for k in space if k in record["config"]},
                        "cbs": {"trial_id": trial_id, **{k: v for k, v in record.items() if k != "measurements"}},
                    },
                    indent=1,
                )
            )
            pd.DataFrame(record["measurements"]).rename(columns=columns).to_csv(trial / "measurements.csv", index=False)
    return root


def _one_or_all(values: set):
    """The value all trials share, else the sorted list of them (None, the whole split, first)."""
    return next(iter(values)) if len(values) == 1 else sorted(values, key=lambda n: -1 if n is None else n)


def _parameter_config(dist) -> dict:
    """A harness search-space entry (harness.sweep.spec) as their parameter_configs entry."""
    if isinstance(dist, list):
        return {"type": "DISCRETE", "feasible_points": dist}
    scale = {"linear": "LINEAR_SCALE", "log": "LOG_SCALE", "log1m": "REVERSE_LOG_SCALE"}[dist["scale"]]
    return {
        "type": "INTEGER" if dist["integer"] else "DOUBLE",
        "min_value": dist["min"],
        "max_value": dist["max"],
        "scale": scale,
    }


def is_batch_science(folder) -> bool:
    return any(Path(folder).glob("**/study.json"))


def read_batch_science(folder) -> tuple[dict, list[tuple[str, dict]]]:
    """(spec, [(trial_id, record)]) of the one workload under `folder` (a
    workload folder dataset/model/optimizer or any folder above a single one),
    records shaped like the harness's (harness.engine.trial.TrialRecord)."""
    studies = sorted(Path(folder).glob("**/study.json"))
    workloads = sorted({str(p.parent.parent.relative_to(folder)) for p in studies})
    if len(workloads) != 1:
        raise UserError(
            f"{folder}: holds {len(workloads)} batch_science workloads ({', '.join(workloads)}); "
            "allowed: one workload folder dataset/model/optimizer"
        )
    metas = [json.loads(p.read_text()) for p in studies]
    spec = metas[0].get("cbs", {}).get("spec") or _foreign_spec(folder, metas, studies)
    records = []
    for study, meta in zip(studies, metas):
        for trial in sorted((d for d in study.parent.iterdir() if d.is_dir()), key=lambda d: int(d.name)):
            metadata = json.loads((trial / "metadata.json").read_text())
            rows = pd.read_csv(trial / "measurements.csv")
            rows = rows.rename(columns=_columns_in(rows.columns, spec["metric"]))
            if "examples" not in rows:
                rows.insert(1, "examples", rows["step"] * meta["batch_size"])
            ours = metadata.get("cbs")
            record = ours or {
                "config": {"batch_size": meta["batch_size"], **metadata["parameters"]},
                "status": STATUS_IN[metadata["status"]],
                "steps_to_target": None,
                "steps_run": metadata["steps"],
            }
            trial_id = ours["trial_id"] if ours else f"b{meta['batch_size']:06d}-t{metadata['trial_id']}"
            records.append((trial_id, {**record, "measurements": rows.to_dict("records")}))
    return spec, records


def _columns_in(columns, metric: str) -> dict:
    """Their column names -> the harness's (val_metric, val_loss, train_loss)."""
    renames = {f"val/{METRIC_NAMES[metric]}": "val_metric"}
    for ours, names in LOSS_COLUMNS.items():
        found = [n for n in names if n in columns and n not in renames]
        if found:
            renames[found[0]] = ours
    return renames


def _foreign_spec(folder, metas: list[dict], studies: list[Path]) -> dict:
    """The spec of their released data: the workload dataset/model, the metric
    classification_error where measured (else cross_entropy_error), no target."""
    first = pd.read_csv(next(p for p in studies[0].parent.glob("*/measurements.csv")), nrows=0).columns
    metric = next((m for m in ("error_rate", "cross_entropy") if f"val/{METRIC_NAMES[m]}" in first), None)
    if metric is None:
        raise UserError(
            f"{folder}: measurements.csv has neither val/classification_error nor "
            f"val/cross_entropy_error; found: {', '.join(first)}"
        )
    space = {}
    for meta in metas:
        space.update(meta.get("parameter_configs") or {})
    return {
        "name": Path(folder).name,
        "description": "",
        "workload": f"{metas[0]['dataset']}/{metas[0]['model']}",
        "optimizer": metas[0]["optimizer"],
        "metric": metric,
        "direction": METRICS[metric][0],
        "target": None,
        "batch_sizes": sorted(m["batch_size"] for m in metas),
        "prune": any(m.get("early_stopping") for m in metas),
        "max_steps": max(m.get("train_steps", 0) for m in metas),
        "search": {"space": space},
    }
