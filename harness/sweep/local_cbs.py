"""The branched local critical batch size (Merrill et al. 2025, "Critical Batch
Size Revisited", arXiv 2505.23971, Sec. 3): its spec section and its trials.

One reference run (batch B, learning rate eta) keeps snapshots at the
checkpoint steps t. From each, a branch per multiplier k trains at batch k*B
and learning rate f(k)*eta for the same number of examples Delta; the k* rule
(analysis.local_cbs) reads their losses. The reference and the branches are
trials of a sweep folder (harness.sweep.store), run by the sweep's workers
(harness.sweep.worker): parallel, shared by several processes, resumable after
a kill. The reference runs first, since every branch starts from one of its
snapshots.

Spec file (TOML)::

    name = "mnist_local_cbs"             # a label, free text
    description = "..."                  # free text

    [local_cbs]
    checkpoint_steps = [100, 400, 1600]  # required: steps t of the reference run, a list,
                                         # or {min, max, count}: `count` steps geometric from min to max
    multipliers = [0.25, 0.5, 1, 2, 4]   # required: the k tried (k * B must be an integer)
    delta_examples = 8192                # required: examples each branch trains on (a multiple of every k * B)
    lr_scaling = "linear"                # f(k): linear | sqrt | none; default linear for SGD and
                                         # momentum optimizers, sqrt for Adam-family ones (Merrill et al. 2025)
    ema = 0.5                            # the smoothing of the branch losses, in [0, 1)
    epsilon = 0.01                       # loss tolerance of the k* rule, >= 0
    loss = "train"                       # train | val: the loss the rule compares
    evals_per_branch = 8                 # evaluations (loss points) of each branch
    noise_window = 8                     # the offline noise scale (B_simple and B_noise, McCandlish et al.
    noise_samples = 64                   # 2018, App. A) over the `noise_window` steps ending at each
                                         # checkpoint, from `noise_samples` gradients per step; 0 skips it

    [local_cbs.reference]                # required: the reference run, trial options
    workload = "mnist_fc128x1"           # (docs/spec.md); gns = true with microbatches = 2
    batch_size = 64                      # gives the online noise scale B_simple over training
    learning_rate = 0.1
    max_steps = 2000

The reference trial is `reference`, a branch `t{t:07d}-k{k:g}`. The offline
noise scale, measured last by replaying the reference run, goes to
FOLDER/offline_noise.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from harness.engine.noise_scale import check_num_samples
from harness.engine.noise_scale_study import NUM_SAMPLES, windows_noise_scale
from harness.engine.optimizers import ADAPTIVE_OPTIMIZERS, LR_SCALINGS
from harness.engine.options import Option
from harness.engine.targets import check_batch_size
from harness.engine.trial import OPTIONS, TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError
from harness.finite import finite_or_none
from harness.sweep.leases import DEFAULT_LEASE_S, atomic_write
from harness.sweep.schema import INT, LIST, STR, TABLE, Checker, read_toml, spec_name, with_defaults
from harness.sweep.spec import PlannedTrial, spec_hash
from harness.sweep.store import Store

MERRILL = "Merrill et al. 2025, Sec. 3"
TOP_LEVEL = {"name": ((STR,), None), "description": ((STR,), None), "local_cbs": ((TABLE,), None)}
# The [local_cbs] section; lr_scaling's default depends on the reference's optimizer (default_lr_scaling).
SECTION = {
    "checkpoint_steps": ((LIST, TABLE), None),
    "multipliers": ((LIST,), None),
    "delta_examples": Option("examples each branch trains on", ge=1, type=int, required=True),
    "lr_scaling": Option("f(k), the branch learning rate's scaling", choices=LR_SCALINGS, type=str, cite=MERRILL),
    "ema": Option("the smoothing of the branch losses", ge=0, lt=1, type=float, default=0.5, cite=MERRILL),
    "epsilon": Option("loss tolerance of the k* rule", ge=0, type=float, default=0.01, cite=MERRILL),
    "loss": Option("the loss the rule compares", choices=("train", "val"), type=str, default="train"),
    "evals_per_branch": Option("evaluations (loss points) of each branch", ge=1, type=int, default=8),
    "noise_window": Option(
        "steps of the offline noise scale up to each checkpoint; 0 skips it",
        ge=0,
        type=int,
        default=8,
        cite="McCandlish et al. 2018, App. A",
    ),
    "noise_samples": Option("gradients per step of the offline noise scale", type=int, default=NUM_SAMPLES),
    "reference": ((TABLE,), None),
}
GEOMETRIC = {"min": ((INT,), None), "max": ((INT,), None), "count": ((INT,), None)}
REQUIRED = ("checkpoint_steps", "multipliers", "delta_examples", "reference")
SET_BY_LOCAL_CBS = ("snapshot_steps", "init_from", "init_step")
REFERENCE = {name: option for name, option in OPTIONS.items() if name not in SET_BY_LOCAL_CBS}
REFERENCE_ID = "reference"
NOISE_FILE = "offline_noise.json"


def default_lr_scaling(optimizer: str) -> str:
    return "sqrt" if optimizer in ADAPTIVE_OPTIMIZERS else "linear"


def branch_id(step: int, k: float) -> str:
    return f"t{step:07d}-k{k:g}"


@dataclass(frozen=True)
class LocalCbsSpec:
    """A validated local-CBS spec; `normalized` is what the store keeps and
    compares. `folder` is the sweep folder: branches start from snapshots in it."""

    path: str
    normalized: dict
    folder: Path

    @property
    def hash(self) -> str:
        return spec_hash(self.normalized)

    def reference(self) -> PlannedTrial:
        """The reference trial as it runs: its whole budget, keeping the snapshots."""
        return PlannedTrial(REFERENCE_ID, TrialConfig.from_dict(self.normalized["reference"]))

    def branch_config(self, step: int, k: float) -> TrialConfig:
        """The branch from the snapshot at `step`: batch k*B, learning rate f(k)*eta,
        Delta / (k B) steps from the same place in the data order (step t*B / (k*B),
        rounded down when k*B does not divide t*B)."""
        ref = self.reference().config
        lcbs = self.normalized["local_cbs"]
        batch = round(k * ref.batch_size)
        steps = lcbs["delta_examples"] // batch
        start = step * ref.batch_size // batch
        return dataclasses.replace(
            ref,
            batch_size=batch,
            learning_rate=LR_SCALINGS[lcbs["lr_scaling"]](k) * ref.effective_learning_rate(),
            lr_scaling="none",
            reference_batch_size=None,
            gns=False,
            snapshot_steps=(),
            stop_at_target=False,
            init_from=str((Store(self.folder).snapshot_dir(REFERENCE_ID) / str(step)).absolute()),
            init_step=start,
            max_steps=start + steps,
            eval_every=max(1, steps // lcbs["evals_per_branch"]),
            eval_schedule="linear",
            checkpoint_every=None,
        )

    def branches(self) -> list[PlannedTrial]:
        lcbs = self.normalized["local_cbs"]
        return [
            PlannedTrial(branch_id(t, k), self.branch_config(t, k))
            for t in lcbs["checkpoint_steps"]
            for k in lcbs["multipliers"]
        ]

    def trials(self) -> list[PlannedTrial]:
        return [self.reference(), *self.branches()]

    def offline_noise(self, data_dir=None) -> list[dict]:
        """B_simple and B_noise offline (McCandlish et al. 2018, App. A) over
        the `noise_window` steps of the reference run that end at each
        checkpoint step, from one replay of it (harness.engine.noise_scale_study)."""
        lcbs = self.normalized["local_cbs"]
        steps = lcbs["checkpoint_steps"]
        windows = [(max(1, t - lcbs["noise_window"] + 1), t) for t in steps]
        estimates = windows_noise_scale(
            self.reference().config, windows, data_dir=data_dir, num_samples=lcbs["noise_samples"]
        )
        return finite_or_none([dict(step=t, **e) for t, e in zip(steps, estimates)])


def load_local_cbs_spec(path, folder, data_dir=None) -> LocalCbsSpec:
    """Parse and validate a spec file (every error a one-line UserError naming
    the file and field, before any training), checking the largest branch
    batch size against the training set."""
    path = Path(path)
    spec = parse_local_cbs_spec(read_toml(path)[1], folder, path)
    ref = spec.reference().config
    train_size = len(get_workload(ref.workload).load_data(data_dir).train_x)
    largest = round(max(spec.normalized["local_cbs"]["multipliers"]) * ref.batch_size)
    check_batch_size(largest, train_size, f"{path}: local_cbs.multipliers: the largest branch batch size:")
    return spec


def parse_local_cbs_spec(raw: dict, folder, path="spec") -> LocalCbsSpec:
    """Validate a spec (the content of a spec file) and expand it; reads no data."""
    check = Checker(path)
    check.table(raw, TOP_LEVEL)
    check.required(raw, ("local_cbs",), "", "a [local_cbs] section")
    check.table(raw["local_cbs"], SECTION, "local_cbs.")
    check.required(raw["local_cbs"], REQUIRED, "local_cbs.", "see harness/sweep/local_cbs.py")
    section = with_defaults(raw["local_cbs"], SECTION)
    reference = _reference(check, section["reference"])
    steps = _checkpoint_steps(check, section["checkpoint_steps"], reference.max_steps)
    multipliers = _multipliers(check, section["multipliers"], reference.batch_size)
    delta = section["delta_examples"]
    for k in multipliers:
        batch = round(k * reference.batch_size)
        if delta % batch:
            check.fail(
                "local_cbs.delta_examples",
                f"{delta} is not a positive multiple of the batch size {batch} of k = {k:g}",
                "multiples of every k * B",
            )
    if section["noise_window"]:
        try:
            check_num_samples(section["noise_samples"])
        except UserError as e:
            check.fail("local_cbs.noise_samples", str(e), "multiples of 16, >= 32")
    lcbs = {key: section[key] for key in SECTION if key != "reference"}
    normalized = dict(
        name=spec_name(raw, path),
        description=raw.get("description", ""),
        local_cbs={
            **lcbs,
            "checkpoint_steps": steps,
            "multipliers": sorted(multipliers),
            "lr_scaling": section["lr_scaling"] or default_lr_scaling(reference.optimizer),
        },
        reference=dataclasses.replace(reference, stop_at_target=False, snapshot_steps=tuple(steps)).to_dict(),
    )
    spec = LocalCbsSpec(str(path), json.loads(json.dumps(normalized)), Path(folder))  # as stored: tuples as lists
    check.trials(spec.branches(), "local_cbs: branch")
    return spec


def _reference(check: Checker, table: dict) -> TrialConfig:
    prefix = "local_cbs.reference."
    for key in SET_BY_LOCAL_CBS:
        if key in table:
            check.fail(prefix + key, "set by local_cbs", f"TrialConfig fields except {', '.join(SET_BY_LOCAL_CBS)}")
    check.table(table, REFERENCE, prefix)
    check.required(table, [name for name, option in REFERENCE.items() if option.required], prefix, "see docs/spec.md")
    config = TrialConfig.from_dict(table)
    try:
        config.validate()
    except UserError as e:
        raise UserError(f"{check.path}: local_cbs.reference: {e}") from None
    if config.schedule != "constant":
        check.fail("local_cbs.reference.schedule", f"{config.schedule!r}: branches scale one learning rate", "constant")
    return config


def _multipliers(check: Checker, multipliers: list, batch_size: int) -> list:
    field = "local_cbs.multipliers"
    if not multipliers:
        check.fail(field, "empty list", "a non-empty list of positive numbers")
    if any(not (isinstance(k, (int, float)) and not isinstance(k, bool) and k > 0) for k in multipliers) or len(
        set(multipliers)
    ) != len(multipliers):
        check.fail(field, f"expected distinct positive numbers, got {multipliers!r}", "distinct numbers > 0")
    for k in multipliers:
        if not math.isclose(k * batch_size, round(k * batch_size)) or round(k * batch_size) < 1:
            check.fail(
                field,
                f"k = {k:g} gives batch size {k * batch_size:g}",
                f"k such that k * {batch_size} is a positive integer",
            )
    return multipliers


def _checkpoint_steps(check: Checker, value, max_steps: int) -> list[int]:
    field = "local_cbs.checkpoint_steps"
    if isinstance(value, dict):
        check.table(value, GEOMETRIC, field + ".")
        if set(value) != {"min", "max", "count"}:
            check.fail(field, "a geometric range needs min, max and count", "{min, max, count} or a list")
        lo, hi, count = value["min"], value["max"], value["count"]
        if not 1 <= lo <= hi or count < 1 or (count == 1 and lo != hi):
            check.fail(field, f"min {lo}, max {hi}, count {count}", "1 <= min <= max, count >= 1 (1 if min = max)")
        steps = sorted({round(lo * (hi / lo) ** (i / max(count - 1, 1))) for i in range(count)})
    else:
        steps = value
        if not steps:
            check.fail(field, "empty list", "a non-empty list of steps")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in steps) or len(set(steps)) != len(steps):
            check.fail(field, f"expected distinct positive integers, got {steps!r}", "distinct steps >= 1")
        steps = sorted(steps)
    if steps[-1] > max_steps:
        check.fail(
            field, f"step {steps[-1]} is beyond the reference run (max_steps {max_steps})", f"steps in 1 .. {max_steps}"
        )
    return steps


def run_local_cbs(
    spec_path,
    out,
    *,
    workers: int | None = None,
    executor: str = "local",
    address=None,
    data_dir=None,
    lease_s: float = DEFAULT_LEASE_S,
    progress=None,
) -> Store:
    """Run (or resume) a local-CBS study in folder `out`: the reference trial,
    then the branches, each phase by the sweep's workers."""
    from harness.sweep import executors
    from harness.sweep.progress import Progress

    spec = load_local_cbs_spec(spec_path, out, data_dir)
    store = Store(out)
    store.open(spec, Path(spec_path).read_text())
    trials = spec.trials()
    store.set_aside_corrupt(t.id for t in trials)
    store.remove_stale_checkpoints(t.id for t in trials)
    for phase in ([spec.reference()], spec.branches()):
        pending = [t for t in phase if not store.is_done(t.id)]
        if not pending:
            continue
        watcher = Progress(store.folder, [t.id for t in phase], progress) if progress else None
        kwargs = dict(
            folder=str(store.folder), trials=pending, prune=None, data_dir=data_dir, lease_s=lease_s, progress=watcher
        )
        if executor == "ray":
            executors.run_ray(address=address, **kwargs)
        else:
            executors.run_local(workers=workers, **kwargs)
    noise = store.folder / NOISE_FILE
    if spec.normalized["local_cbs"]["noise_window"] and not noise.exists():
        if progress:
            print("offline noise scale at the checkpoints: replaying the reference run", file=progress, flush=True)
        atomic_write(noise, json.dumps(spec.offline_noise(data_dir), indent=1))
    return store
