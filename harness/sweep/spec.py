"""Sweep spec files: one TOML file describes a batch-size x metaparameter study
(the protocol of Shallue et al. 2019, Sec. 3-4).

Format (every key is optional unless marked required)::

    name = "quickstart"                  # a label, free text
    description = "..."                  # free text
    workload = "mnist_fc1024"            # required: a name of harness.engine.workloads, or path/to/file.py:name
    workload_options = {}                # passed to the workload's make_model
    optimizer = "nesterov"               # a trial option: its allowed values in the table of trial options
    batch_sizes = [8, 16, 32]            # required: a list, or {min = 8, max = 1024}: the powers of two between
    target = 0.05                        # default: the workload's target; within the metric's range
    max_steps = 10000                    # step budget per trial ...
    max_examples = 5_000_000             # ... and/or an example budget: steps = ceil(max_examples / B)
    eval_every = 100                     # default: the workload's cadence (the resolution of steps-to-result)
    eval_schedule = "linear"             # every eval_every, or geometric (dense early: harness.engine.evaluation)
    seeds = 1                            # repeats of every trial: a count (seeds 0..n-1) or a list of seeds
    prune = true                         # stop trials that can no longer beat the best steps-to-target at B;
                                         # "earlier_rounds" (adaptive only): the best of earlier rounds only
    pack = 1                             # trials a worker runs as one program, or "auto" (harness.sweep.packing)
    checkpoint_every = 1000              # steps between checkpoints (resume after a crash); default eval_every * 10
    lr_scaling = "linear"                # scale learning_rate from reference_batch_size (Goyal et al. 2017)
    reference_batch_size = 64            # (with lr_scaling) instead of searching the learning rate

    [fixed]                              # metaparameters shared by all trials: any trial option
    algorithm = "local_sgd"              # but the ones set above (the table of trial options), plus
    decay_fraction = 1.0                 # decay_steps as a fraction of the trial's step budget

    [search]                             # optional: without it, one trial per batch size and seed
    kind = "quasi_random"                # grid | quasi_random
    sequence = "halton"                  # halton | sobol (scrambled; quasi_random only)
    trials = 16                          # points per batch size (quasi_random only, required there)
    seed = 0                             # scrambling seed (quasi_random only)

    # or an adaptive search (harness.sweep.adaptive): rounds of proposals learnt from the records so far
    # kind = "adaptive"
    # rounds = 6                         # required: at most this many rounds (may grow to extend a sweep)
    # trials_per_round = 2               # proposals per batch size and round (default 4)
    # initial_trials = 4                 # quasi-random points of a batch size's first round (default trials_per_round)
    # sampler = "tpe"                    # tpe | gp (Optuna's TPESampler or GPSampler, seeded)
    # patience = 2                       # stop a batch size after this many rounds without an improvement
    #                                    # (counted once one of its trials reached the target)
    # transfer = "auto"                  # auto | linear | sqrt | none: neighbours' best learning rate x (B/B')^p
    # stop = {ratio = 2.0, max_examples = 50_000_000}   # stop the sweep: B_crit's 90% interval hi/lo <= ratio
    #                                                   # after a round that improved no batch size,
    #                                                   # or this many examples trained (both optional)

    [search.space]                       # default: the workload's search_space (same format)
    learning_rate = {min = 1e-3, max = 10.0, scale = "log"}
    momentum = {min = 0.9, max = 0.9999, scale = "log1m"}    # 1 - momentum uniform in log space
    decay_fraction = {min = 0.5, max = 1.0}                  # scale linear by default
    warmup_steps = {min = 0, max = 100, integer = true}
    label_smoothing = [0.0, 0.01, 0.1]                       # a list: the values to try

A search space maps a metaparameter to a list of values (a grid axis, or a
categorical choice in a quasi-random search) or to a range
`{min, max, scale = linear | log | log1m, integer = false}` (quasi-random only;
log1m samples log(1 - x) uniformly, as Shallue et al. do for momentum).
Workload.search_space uses the same format. Every batch size gets the same
points (dimensions assigned in sorted name order), so extending `trials` or a
grid axis keeps the existing trials.

An adaptive search runs in rounds (Shallue et al. 2019, Sec. 4.7: the best
effective learning rate moves smoothly with B). Round r's trials are a pure
function of the spec and the records of rounds < r: per batch size, Optuna's
sampler (seed from `seed`, B and r) is rebuilt from the earlier trials, told in
trial-id order as log steps to the target (pruned or slower than the best:
censored at the best + eval_every; incomplete: the budget + eval_every;
diverged: a penalty of 4 x the budget), and asked for new points; a batch
size's first round takes its neighbours' best points with the learning rate
moved by the linear (SGD, momentum) or square-root (Adam family) rule, then
quasi-random points. FOLDER/search.json keeps the rounds and the stop reason.

A trial id is `b{B:06d}-{8 hex digits of the metaparameters' hash}-s{seed}`: re-expanding a spec
gives the same ids. Errors name the file and field: `file: field: problem; allowed: ...`.

The trial options (the fields of harness.engine.trial.TrialConfig, from their
schema OPTIONS), with their types, defaults and allowed values: docs/spec.md,
which is this text and the table of `spec_markdown()`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from harness.engine.data import train_subset
from harness.engine.options import Option
from harness.engine.targets import check_batch_size, check_target
from harness.engine.trial import OPTIONS, TrialConfig
from harness.engine.workloads import get_workload
from harness.errors import UserError
from harness.sweep import search_space
from harness.sweep.schema import BOOL, INT, LIST, NUMBER, STR, TABLE, Checker, hint_name, is_a, read_toml, spec_name
from harness.sweep.search_space import MANAGED

MAX_EXAMPLES = Option(
    "example budget per trial: steps = ceil(max_examples / B)",
    ge=1,
    name="max_examples",
    type=int,
    cite="Shallue et al. 2019, Sec. 4.1",
)

# key -> (accepted types, allowed values or None), or the Option of a TrialConfig field: the schema of a spec file.
TOP_LEVEL = {
    "name": ((STR,), None),
    "description": ((STR,), None),
    "workload": OPTIONS["workload"],
    "workload_options": OPTIONS["workload_options"],
    "optimizer": OPTIONS["optimizer"],
    "batch_sizes": ((LIST, TABLE), None),
    "target": OPTIONS["target"],
    "max_steps": OPTIONS["max_steps"],
    "max_examples": MAX_EXAMPLES,
    "eval_every": OPTIONS["eval_every"],
    "eval_schedule": OPTIONS["eval_schedule"],
    "seeds": ((INT, LIST), None),
    "prune": ((BOOL, STR), None),  # or "earlier_rounds": checked in parse_spec
    "pack": ((NUMBER, STR), None),  # an integer or "auto": checked in parse_spec
    "checkpoint_every": OPTIONS["checkpoint_every"],
    "lr_scaling": OPTIONS["lr_scaling"],
    "reference_batch_size": OPTIONS["reference_batch_size"],
    "fixed": ((TABLE,), None),
    "search": ((TABLE,), None),
}
BATCH_RANGE = {"min": ((INT,), None), "max": ((INT,), None)}
REQUIRED = ("workload", "batch_sizes")

# Free text, and how trials are run (packed or not: the same results): may change without changing the sweep.
NOT_COMPARED = ("name", "description", "pack")
CHECKPOINTS_PER_EVAL = 10


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a sweep, before it runs: a stable id and its configuration."""

    id: str
    config: TrialConfig


@dataclass(frozen=True)
class SweepSpec:
    """A validated spec. `normalized` is the spec with every default resolved
    (batch sizes and seeds as lists, the search space filled in): what the
    result store keeps, hashes and compares."""

    path: str
    normalized: dict
    text: str = ""  # what the sweep folder stores as spec.toml (load_spec)

    def __getattr__(self, key):
        if key == "normalized":  # not yet set (e.g. while unpickling)
            raise AttributeError(key)
        try:
            return self.normalized[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def hash(self) -> str:
        return spec_hash(self.normalized)

    def steps_for(self, batch_size: int) -> int:
        """The step budget at B: max_steps, or ceil(max_examples / B), or the smaller of both
        (Shallue et al. 2019, Sec. 4.1: step and example budgets)."""
        budgets = [self.max_steps] if self.max_steps else []
        if self.max_examples:
            budgets.append(math.ceil(self.max_examples / batch_size))
        return min(budgets)

    def points(self) -> list[dict]:
        """The metaparameter points every batch size gets (search values, then fixed ones)."""
        return [{**s, **self.fixed} for s in search_space.points(self.search)]

    def trials(self) -> list[PlannedTrial]:
        """Every trial, ordered by batch size, point, seed (adaptive: the first round's, harness.sweep.adaptive)."""
        points = self.points()
        return [t for batch_size in self.batch_sizes for point in points for t in self.point_trials(batch_size, point)]

    def point_trials(self, batch_size: int, point: dict) -> list[PlannedTrial]:
        """The trials (one per seed) of a point (search and fixed values) at a batch size."""
        digest = spec_hash(point)[:8]
        return [
            PlannedTrial(f"b{batch_size:06d}-{digest}-s{seed}", self._config(batch_size, point, seed))
            for seed in self.seeds
        ]

    def _config(self, batch_size: int, point: dict, seed: int) -> TrialConfig:
        values = dict(point)
        steps = self.steps_for(batch_size)
        if (fraction := values.pop("decay_fraction", None)) is not None:
            values["decay_steps"] = max(1, round(fraction * steps))
        if "boundaries" in values:
            values["boundaries"] = tuple(values["boundaries"])
        return TrialConfig(
            workload=self.workload,
            workload_options=self.workload_options,
            batch_size=batch_size,
            optimizer=self.optimizer,
            seed=seed,
            target=self.target,
            max_steps=steps,
            eval_every=self.eval_every,
            eval_schedule=self.eval_schedule,
            checkpoint_every=self.checkpoint_every,
            lr_scaling=self.lr_scaling,
            reference_batch_size=self.reference_batch_size,
            **values,
        )


def spec_markdown() -> str:
    """docs/spec.md: the spec format (this module's docstring) and a table of
    the trial options, from their schema (harness.engine.trial.OPTIONS)."""
    where = {**{name: "top level" for name in MANAGED}, "batch_size": "batch_sizes", "seed": "seeds"}
    rows = [(option, where.get(name, "[fixed], [search.space]")) for name, option in OPTIONS.items()]
    rows.append((search_space.DECAY_FRACTION, "[fixed], [search.space]"))
    lines = ["| option | in a spec | type | default | allowed | description |", "|---|---|---|---|---|---|"]
    for option, place in rows:
        default = "required" if option.required else "none" if option.default is None else json.dumps(option.default)
        allowed = ", ".join(option.choices) if option.choices is not None else option.interval
        cite = f" ({option.cite})" if option.cite else ""
        lines.append(
            f"| `{option.name}` | {place} | {hint_name(option.type)} | `{default}` | {allowed} | "
            f"{option.help.replace('|', '&#124;')}{cite} |"
        )
    title, _, body = __doc__.partition("\n")
    return "\n".join([f"# {title}", body, "## Trial options", "", *lines, ""])


def spec_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def apply_overrides(raw: dict, overrides) -> dict:
    """A copy of a spec's content with "dotted.key=VALUE" overrides set
    (`cbs sweep --set search.trials=16`); VALUE is a TOML value, and a bare
    word that is not one counts as a string."""
    raw = copy.deepcopy(raw)
    for override in overrides:
        key, sep, value = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UserError(
                f"--set {override}: expected KEY=VALUE; allowed: a spec key, dotted for tables "
                "(search.trials=16), and a TOML value"
            )
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            value = value.strip()
        table = raw
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise UserError(
                    f"--set {override}: {'.'.join(parts[: i + 1])} is not a table; "
                    "allowed: dotted keys through tables only"
                )
        table[parts[-1]] = value
    return raw


def load_spec(source, data_dir=None, overrides=()) -> SweepSpec:
    """Parse and validate a spec, and check it against the workload's data
    (the largest batch size against the training set); every error is a
    UserError naming the file and field, raised before any training.

    `source` is a spec file's path or its content as a dict; `overrides`
    (apply_overrides) are set on top. The spec's `text` is the file as written,
    or, for a dict or with overrides, the content the spec was built from as TOML."""
    if isinstance(source, dict):
        path, raw, text = "spec", source, None
    else:
        path = Path(source)
        text, raw = read_toml(path)
    raw = apply_overrides(raw, overrides)
    spec = parse_spec(raw, path)
    if text is None or overrides:
        import tomli_w  # imported here: needed only for a dict or overrides

        text = (f"# {path} with --set {' '.join(overrides)}\n" if text else "") + tomli_w.dumps(raw)
    train_size = len(
        train_subset(get_workload(spec.workload).load_data(data_dir), spec.fixed.get("train_examples")).train_x
    )
    check_batch_size(spec.batch_sizes[-1], train_size, f"{path}: batch_sizes:")
    return replace(spec, text=text)


def parse_spec(raw: dict, path="spec") -> SweepSpec:
    """Validate a spec (the content of a spec file) and expand it into trials;
    reads no data."""
    check = Checker(path)
    check.table(raw, TOP_LEVEL)
    check.required(raw, REQUIRED, "", "see docs/spec.md")
    try:
        workload = get_workload(raw["workload"])
    except UserError as e:
        raise UserError(f"{path}: workload: {e}") from None

    batch_sizes = _batch_sizes(check, raw["batch_sizes"])
    target = raw.get("target", workload.target)
    check_target(workload.metric, target, f"{path}: target:")
    if "max_steps" not in raw and "max_examples" not in raw:
        check.fail("max_steps", "missing: a trial needs a budget", "max_steps and/or max_examples")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, int):
        if seeds < 1:
            check.fail("seeds", f"must be positive, got {seeds}", "a count >= 1 or a list of integers")
        seeds = list(range(seeds))
    if not seeds or not all(is_a(s, INT) for s in seeds) or len(set(seeds)) != len(seeds):
        check.fail("seeds", f"expected distinct integers, got {seeds!r}", "a count >= 1 or a list of integers")
    pack = raw.get("pack", 1)
    if pack != "auto" and not (is_a(pack, INT) and pack >= 1):
        check.fail("pack", f'expected an integer >= 1 or "auto", got {pack!r}', 'integers >= 1, "auto"')
    prune = raw.get("prune", True)
    if isinstance(prune, str) and prune != "earlier_rounds":
        check.fail("prune", f"unknown value {prune!r}", 'true, false, "earlier_rounds"')
    lr_scaling = raw.get("lr_scaling", "none")
    if lr_scaling != "none" and "reference_batch_size" not in raw:
        check.fail("reference_batch_size", f"missing: lr_scaling {lr_scaling!r} scales from it", "integers >= 1")

    fixed = raw.get("fixed", {})
    for key, value in fixed.items():
        search_space.check_metaparameter(check, f"fixed.{key}", key, value)
    search = search_space.parse(check, raw.get("search"), workload, fixed)
    searched = search["space"] if search else {}
    if prune == "earlier_rounds" and (search or {}).get("kind") != "adaptive":
        check.fail("prune", '"earlier_rounds" needs rounds', 'true, false; "earlier_rounds" with kind = "adaptive"')
    if "learning_rate" not in fixed and "learning_rate" not in searched:
        check.fail(
            "fixed.learning_rate",
            "missing: every trial needs a learning rate",
            "learning_rate in [fixed] or in [search.space]",
        )
    if fixed.get("decay_steps") is not None and "decay_fraction" in {*fixed, *searched}:
        check.fail("fixed.decay_steps", "given with decay_fraction", "one of decay_steps, decay_fraction")

    eval_every = raw.get("eval_every", workload.eval_every)
    normalized = dict(
        name=spec_name(raw, path),
        description=raw.get("description", ""),
        workload=raw["workload"],
        workload_options=raw.get("workload_options", {}),
        metric=workload.metric,
        direction=workload.direction,
        target=target,
        optimizer=raw.get("optimizer", "nesterov"),
        batch_sizes=batch_sizes,
        max_steps=raw.get("max_steps"),
        max_examples=raw.get("max_examples"),
        eval_every=eval_every,
        eval_schedule=raw.get("eval_schedule", "linear"),
        seeds=seeds,
        prune=prune,
        pack=pack,
        checkpoint_every=raw.get("checkpoint_every", eval_every * CHECKPOINTS_PER_EVAL),
        lr_scaling=lr_scaling,
        reference_batch_size=raw.get("reference_batch_size"),
        fixed=fixed,
        search=search,
    )
    spec = SweepSpec(str(path), normalized)
    trials = spec.trials()
    ids = [t.id for t in trials]
    if len(set(ids)) != len(ids):
        check.fail("search.space", "the search gives the same point twice", "distinct values")
    check.trials(trials)
    return spec


def _batch_sizes(check: Checker, value) -> list[int]:
    if isinstance(value, dict):
        check.table(value, BATCH_RANGE, "batch_sizes.")
        if set(value) != {"min", "max"}:
            check.fail("batch_sizes", "a range needs min and max", "{min = 2^i, max = 2^j} or a list")
        lo, hi = value["min"], value["max"]
        for key, b in value.items():
            if b < 1 or b & (b - 1):
                check.fail(f"batch_sizes.{key}", f"{b} is not a positive power of two", "1, 2, 4, 8, ...")
        if lo > hi:
            check.fail("batch_sizes", f"min {lo} > max {hi}", "min <= max")
        return [2**k for k in range(lo.bit_length() - 1, hi.bit_length())]
    if not value:
        check.fail("batch_sizes", "empty list", "a non-empty list of positive integers")
    for b in value:
        if not is_a(b, INT) or b < 1:
            check.fail("batch_sizes", f"{b!r} is not a positive integer", "integers >= 1")
    if len(set(value)) != len(value):
        check.fail("batch_sizes", "repeated batch size", "distinct integers")
    return sorted(value)
