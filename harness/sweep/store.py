"""The result store: a sweep is a folder.

    FOLDER/spec.toml                 the spec file as the user wrote it (latest run)
    FOLDER/spec.json                 {"hash", "spec": normalized spec, "trial_ids"}
    FOLDER/metadata.json             where the latest worker runs (harness.engine.environment)
    FOLDER/trials/<id>/record.json   a TrialRecord, written atomically
    FOLDER/trials/<id>/measurements.csv  its evaluations so far (harness.sweep.trial_log)
    FOLDER/trials/<id>/checkpoints/  Orbax checkpoints while the trial runs
    FOLDER/trials/<id>/snapshots/    states kept for branches (TrialConfig.snapshot_steps)
    FOLDER/trials/<id>/claim.<n>     leases: which worker runs the trial
    FOLDER/tensorboard/<id>/         its TensorBoard run (with the `tensorboard` extra)

Files are written atomically and trials claimed with leases (harness.sweep.leases).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError, warn
from harness.sweep.leases import DEFAULT_LEASE_S, Lease, atomic_write, held, try_claim
from harness.sweep.spec import NOT_COMPARED, SweepSpec

RECORD_KEYS = ("config", "status", "steps_to_target", "measurements", "steps_run")


class CorruptRecord(Exception):
    pass


def parse_record(path: Path) -> dict:
    """A record file's content; CorruptRecord when it is not a whole record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecord(f"{path}: {e}") from None
    if not isinstance(record, dict) or any(k not in record for k in RECORD_KEYS):
        raise CorruptRecord(f"{path}: not a trial record (needs {', '.join(RECORD_KEYS)})")
    return record


def spec_differences(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(changed fields, extended fields) between two normalized specs. Extending
    means only adding: batch sizes, seeds, quasi-random trials, grid values,
    adaptive rounds (or changing an adaptive search's stop rules)."""
    changed, extended = [], []
    for key in sorted(set(_flatten(old)) | set(_flatten(new))):
        a, b = _flatten(old).get(key), _flatten(new).get(key)
        if a == b or key.split(".")[0] in NOT_COMPARED:
            continue
        grid_axis = key.startswith("search.space.") and (old.get("search") or {}).get("kind") == "grid"
        if (
            (key in ("batch_sizes", "seeds") or grid_axis)
            and isinstance(a, list)
            and isinstance(b, list)
            and all(x in b for x in a)
        ):
            extended.append(key)
        elif key in ("search.trials", "search.rounds") and isinstance(a, int) and isinstance(b, int) and b > a:
            extended.append(key)
        elif key == "search.stop" or key.startswith(
            "search.stop."
        ):  # when an adaptive search stops, not what it proposes
            extended.append(key)
        else:
            changed.append(f"{key} ({json.dumps(a)} -> {json.dumps(b)})")
    return changed, extended


def _flatten(d, prefix=""):
    out = {}
    for key, value in (d or {}).items():
        if isinstance(value, dict) and value and not (prefix.startswith("search.space.") or key == "workload_options"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Store:
    """One sweep folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.trials_dir = self.folder / "trials"

    # --- the spec ---------------------------------------------------------------
    def read_spec(self) -> dict | None:
        path = self.folder / "spec.json"
        return json.loads(path.read_text()) if path.exists() else None

    def open(self, spec: SweepSpec, spec_text: str) -> list[str]:
        """Create the sweep, or check that `spec` is the stored one or extends
        it (returns the extended fields); UserError naming the differences
        otherwise."""
        stored = self.read_spec()
        extended = []
        if stored is not None:
            changed, extended = spec_differences(stored["spec"], spec.normalized)
            if changed:
                raise UserError(
                    f"{spec.path}: the spec differs from the sweep in {self.folder}: "
                    f"{'; '.join(changed)}; allowed: the stored spec ({self.folder / 'spec.toml'}), "
                    "or one that only adds batch sizes, seeds or trials (or use another --out)"
                )
            ids = [t.id for t in spec.trials()]
            missing = set(stored["trial_ids"]) - set(ids)
            if missing:
                raise UserError(
                    f"{spec.path}: the spec expands to other trials than the sweep in {self.folder} "
                    f"(e.g. {sorted(missing)[0]} is gone: has the sampling library changed?); "
                    "allowed: the same trials, or a new --out folder"
                )
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        if stored is None or extended:
            atomic_write(self.folder / "spec.toml", spec_text)
            atomic_write(
                self.folder / "spec.json",
                json.dumps(
                    {"hash": spec.hash, "spec": spec.normalized, "trial_ids": [t.id for t in spec.trials()]}, indent=1
                ),
            )
        return extended

    # --- records ----------------------------------------------------------------
    def trial_dir(self, trial_id: str) -> Path:
        return self.trials_dir / trial_id

    def record_path(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / "record.json"

    def checkpoint_dir(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / "checkpoints"

    def measurements_path(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / "measurements.csv"

    def live_progress(self, trial_id: str) -> LiveProgress | None:
        """A running trial's progress, from the first and last whole rows of its
        measurements.csv (harness.sweep.trial_log); None before it has any."""
        try:
            with open(self.measurements_path(trial_id), "rb") as f:
                head = [f.readline() for _ in range(3)]  # the header, the first evaluation, the first after training
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                tail = f.read()
        except FileNotFoundError:
            return None
        rows = [line for line in head[1:] if line.endswith(b"\n")]
        whole = tail[: tail.rfind(b"\n")]
        if not rows or not whole:
            return None
        try:
            columns = head[0].decode().strip().split(",")
            step, wall_time = columns.index("step"), columns.index("wall_time")
            first, last = (line.decode().split(",") for line in (rows[-1], whole[whole.rfind(b"\n") + 1 :]))
            if len(rows) < 2:  # no evaluation after training began: nothing timed yet
                return LiveProgress(int(float(last[step])), 0, 0.0)
            return LiveProgress(
                int(float(last[step])),
                int(float(last[step])) - int(float(first[step])),
                float(last[wall_time]) - float(first[wall_time]),
            )
        except (ValueError, IndexError):  # not a measurements log
            return None

    def tensorboard_dir(self, trial_id: str) -> Path:
        return self.folder / "tensorboard" / trial_id

    def write_metadata(self, metadata: dict) -> None:
        atomic_write(self.folder / "metadata.json", json.dumps(metadata, indent=1))

    def read_metadata(self) -> dict | None:
        path = self.folder / "metadata.json"
        return json.loads(path.read_text()) if path.exists() else None

    def snapshot_dir(self, trial_id: str) -> Path:
        """Snapshots a trial keeps for branches (TrialConfig.snapshot_steps); they outlive its checkpoints."""
        return self.trial_dir(trial_id) / "snapshots"

    def is_done(self, trial_id: str) -> bool:
        return self.record_path(trial_id).exists()

    def write_record(self, trial_id: str, record: dict) -> None:
        self.trial_dir(trial_id).mkdir(parents=True, exist_ok=True)
        atomic_write(self.record_path(trial_id), json.dumps(record))
        shutil.rmtree(self.checkpoint_dir(trial_id), ignore_errors=True)

    def log_attempt(self, trial_id: str, worker: str) -> None:
        """Append who starts (or resumes) the trial, and from which checkpoint step,
        to trials/<id>/attempts.jsonl: the trial's history across crashes and workers."""
        steps = [int(p.name) for p in self.checkpoint_dir(trial_id).glob("*") if p.name.isdigit()]
        line = json.dumps({"worker": worker, "time": time.time(), "checkpoint_step": max(steps, default=None)})
        with open(self.trial_dir(trial_id) / "attempts.jsonl", "a") as f:
            f.write(line + "\n")

    def attempts(self, trial_id: str) -> list[dict]:
        path = self.trial_dir(trial_id) / "attempts.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def remove_stale_checkpoints(self, trial_ids) -> None:
        """Checkpoints of finished trials (left when a crash came between the
        record's write and their removal)."""
        for trial_id in trial_ids:
            if self.is_done(trial_id) and self.checkpoint_dir(trial_id).exists():
                shutil.rmtree(self.checkpoint_dir(trial_id), ignore_errors=True)

    def set_aside_corrupt(self, trial_ids) -> list[str]:
        """Move every corrupt record of `trial_ids` to record.json.corrupt-<time>
        (kept for inspection) with a warning, so those trials run again."""
        bad = []
        for trial_id in trial_ids:
            path = self.record_path(trial_id)
            if not path.exists():
                continue
            try:
                parse_record(path)
            except CorruptRecord as e:
                warn(f"corrupt trial record, the trial will run again: {e}")
                try:
                    os.replace(path, path.with_name(f"record.json.corrupt-{time.time():.0f}"))
                except FileNotFoundError:  # another worker set it aside first
                    pass
                bad.append(trial_id)
        return bad

    # --- claims -----------------------------------------------------------------
    def try_claim(self, trial_id: str, worker: str, lease_s: float = DEFAULT_LEASE_S) -> Lease | None:
        """A lease on the trial, or None while another live worker holds it."""
        return try_claim(self.trial_dir(trial_id), worker, lease_s)

    def is_held(self, trial_id: str) -> bool:
        """Whether a live worker holds the trial now (reads only)."""
        return held(self.trial_dir(trial_id))


@dataclass(frozen=True)
class LiveProgress:
    """How far a trial has run (`step`), and the steps and seconds from its
    first evaluation after training began to its latest: its speed, with the
    compilation of its programs left out."""

    step: int
    timed_steps: int
    timed_seconds: float


@dataclass(frozen=True)
class Summary:
    """What the sweep needs to know of a finished trial (`timed`: its speed, as LiveProgress measures it;
    `shortfall`: its best validation metric relative to the target, see `shortfall`)."""

    batch_size: int
    status: str
    steps_to_target: int | None
    steps_run: int
    max_steps: int
    timed: LiveProgress | None = None
    shortfall: float | None = None


def shortfall(record: dict) -> float | None:
    """How far the best evaluation of a trial stayed from its target, as a ratio (1 at the target, larger
    short of it; error / target for a metric minimised, target / accuracy for one maximised); None without
    evaluations or with a metric that is not positive."""
    values = [m["val_metric"] for m in record["measurements"] if m.get("val_metric") is not None]
    target = record.get("target")
    if not values or not target or target <= 0:
        return None
    minimised = record.get("direction", "min") == "min"
    best = min(values) if minimised else max(values)
    if best <= 0:
        return None
    return best / target if minimised else target / best


class RecordIndex:
    """Summaries of the finished trials in a store, read incrementally: each
    record is parsed once, so refreshing is a directory listing. Corrupt
    records are left out (the sweep sets them aside and reruns the trial)."""

    def __init__(self, store: Store):
        self.store = store
        self.summaries: dict[str, Summary] = {}

    def refresh(self) -> RecordIndex:
        for entry in os.scandir(self.store.trials_dir):
            if entry.name in self.summaries:
                continue
            path = Path(entry.path) / "record.json"
            try:
                record = parse_record(path)
            except CorruptRecord:
                continue
            config, rows = record["config"], record["measurements"]
            timed = (
                LiveProgress(
                    rows[-1]["step"], rows[-1]["step"] - rows[1]["step"], rows[-1]["wall_time"] - rows[1]["wall_time"]
                )
                if len(rows) > 2
                else None
            )
            self.summaries[entry.name] = Summary(
                config["batch_size"],
                record["status"],
                record["steps_to_target"],
                record["steps_run"],
                config["max_steps"],
                timed,
                shortfall(record),
            )
        return self

    def best_trial(self, batch_size: int, not_counted: frozenset = frozenset()) -> str | None:
        """The complete trial at `batch_size` with the fewest steps to the target
        (ties: the smallest id), leaving out the trials `not_counted`, or None."""
        done = [
            (s.steps_to_target, trial_id)
            for trial_id, s in self.summaries.items()
            if s.batch_size == batch_size
            and s.status == "complete"
            and s.steps_to_target is not None
            and trial_id not in not_counted
        ]
        return min(done)[1] if done else None

    def best_steps(self, batch_size: int, not_counted: frozenset = frozenset()) -> int | None:
        """The fewest steps to the target of any complete trial at `batch_size`
        (but those `not_counted`): the steps-to-result there so far (Shallue et al. 2019, Sec. 3.3)."""
        best = self.best_trial(batch_size, not_counted)
        return None if best is None else self.summaries[best].steps_to_target


@dataclass(frozen=True)
class PruneRule:
    """Exact pruning (Shallue et al. 2019, Sec. 3.1): a trial stops once it can no
    longer beat the best steps-to-target at its batch size among finished trials,
    but those `not_counted`. An adaptive round's own trials left out (spec
    `prune = "earlier_rounds"`), the bound comes from earlier rounds only, so
    where a trial stops never depends on which trial of its round finished first."""

    not_counted: frozenset = frozenset()


class BestSoFar:
    """`prune_above` for run_trial: the best steps-to-target at one batch size
    among finished trials (as `rule` counts them), re-read at most every
    `interval_s` seconds. A stale value only prunes less, never wrongly: the
    bound can only go down."""

    def __init__(self, index: RecordIndex, batch_size: int, rule: PruneRule = PruneRule(), interval_s: float = 1.0):
        self.index, self.batch_size, self.rule, self.interval_s = index, batch_size, rule, interval_s
        self._last = -float("inf")

    def __call__(self) -> int | None:
        if time.monotonic() - self._last >= self.interval_s:
            self.index.refresh()
            self._last = time.monotonic()
        return self.index.best_steps(self.batch_size, self.rule.not_counted)
