"""The metaparameter search of a sweep spec (its `[search]` table): the
space, checked against the trial options' schema, and the points every batch
size gets: a grid, or a scrambled Halton or Sobol sequence (Shallue et al.
2019, Sec. 3.3: quasi-random search). An adaptive search (harness.sweep.adaptive)
starts from the sequence's first `initial_trials` points and maps its own
proposals with `from_unit` / `to_unit`.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

from harness.engine.options import Option
from harness.engine.trial import OPTIONS
from harness.sweep import adaptive_options
from harness.sweep.schema import BOOL, INT, NUMBER, STR, TABLE, Checker, numeric, type_name

DECAY_FRACTION = Option("decay_steps as a fraction of the trial's step budget", gt=0, name="decay_fraction", type=float)
SEARCH = {
    "kind": ((STR,), ("grid", "quasi_random", "adaptive")),
    "sequence": ((STR,), ("halton", "sobol")),
    "trials": ((INT,), None),
    "seed": ((INT,), None),
    "space": ((TABLE,), None),
    **adaptive_options.KEYS,
}
RANGE = {
    "min": ((NUMBER,), None),
    "max": ((NUMBER,), None),
    "scale": ((STR,), ("linear", "log", "log1m")),
    "integer": ((BOOL,), None),
}
# TrialConfig fields the spec's top level sets for every trial; the rest are metaparameters.
MANAGED = (
    "workload",
    "workload_options",
    "batch_size",
    "optimizer",
    "seed",
    "target",
    "max_steps",
    "eval_every",
    "eval_schedule",
    "checkpoint_every",
    "lr_scaling",
    "reference_batch_size",
)
METAPARAMETERS = {name: option for name, option in OPTIONS.items() if name not in MANAGED}
METAPARAMETERS["decay_fraction"] = DECAY_FRACTION


def points(search: dict | None) -> list[dict]:
    """The searched values of every point (without the fixed ones), in order."""
    if search is None:
        return [{}]
    space = dict(sorted(search["space"].items()))
    if search["kind"] == "grid":
        return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
    return [from_unit(space, u) for u in unit_points(search, len(space))]


def check_metaparameter(check: Checker, field: str, name: str, value):
    if name not in METAPARAMETERS:
        check.unknown(field, "unknown metaparameter", name, sorted(METAPARAMETERS))
    check.option(field, METAPARAMETERS[name], value)


def unit_points(search: dict, dims: int) -> np.ndarray:
    """`trials` (adaptive: `initial_trials`) scrambled Halton or Sobol points in [0, 1)^dims (scipy.stats.qmc).
    Both are extensible sequences: the first n points do not depend on how many follow."""
    from scipy.stats import qmc  # imported here: scipy.stats takes a second to import

    n = search["trials"] if search["kind"] == "quasi_random" else search["initial_trials"]
    if dims == 0:
        return np.zeros((n, 0))
    engine = {"halton": qmc.Halton, "sobol": qmc.Sobol}[search["sequence"]](d=dims, scramble=True, seed=search["seed"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The balance properties of Sobol", UserWarning)
        return engine.random(n)


def from_unit(space: dict, u: np.ndarray) -> dict:
    """Map a point of [0, 1)^d to metaparameter values: linear, log, or log(1 - x)
    uniform (Shallue et al. 2019, Sec. 4.5: 1 - momentum sampled in log space)."""
    out = {}
    for (name, dist), ui in zip(space.items(), u):
        ui = float(ui)
        if isinstance(dist, list):
            out[name] = dist[min(int(ui * len(dist)), len(dist) - 1)]
            continue
        lo, hi, scale = dist["min"], dist["max"], dist["scale"]
        if scale == "linear":
            x = lo + ui * (hi - lo)
        elif scale == "log":
            x = math.exp(math.log(lo) + ui * (math.log(hi) - math.log(lo)))
        else:
            x = 1 - math.exp(math.log(1 - lo) + ui * (math.log(1 - hi) - math.log(1 - lo)))
        out[name] = int(round(x)) if dist["integer"] else x
    return out


def to_unit(dist, x) -> float:
    """The inverse of `from_unit` for one dimension: where value `x` sits in [0, 1), clipped to it."""
    if isinstance(dist, list):
        return (dist.index(x) + 0.5) / len(dist)
    lo, hi, scale = dist["min"], dist["max"], dist["scale"]
    if scale == "linear":
        u = (x - lo) / (hi - lo)
    elif scale == "log":
        u = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        u = (math.log(1 - x) - math.log(1 - lo)) / (math.log(1 - hi) - math.log(1 - lo))
    return min(max(u, 0.0), math.nextafter(1.0, 0.0))


def parse(check: Checker, search: dict | None, workload, fixed: dict) -> dict | None:
    if search is None:
        return None
    check.table(search, SEARCH, "search.")
    kind = search.get("kind", "quasi_random")
    space = search.get("space", workload.search_space)
    if not space:
        check.fail(
            "search.space",
            "empty, and the workload has no default search space",
            "a table of metaparameter = [values] or {min, max, scale}",
        )
    if kind == "grid":
        for key in ("trials", "sequence", "seed"):
            if key in search:
                check.fail(f"search.{key}", "only for kind = quasi_random", "kind, space")
    adaptive_options.check_keys(check, search, kind)
    if kind == "quasi_random" and ("trials" not in search or search["trials"] < 1):
        check.fail("search.trials", "missing or < 1: quasi-random search needs a number of points", "integers >= 1")
    normalized = {}
    for name, dist in space.items():
        field = f"search.space.{name}"
        if name not in METAPARAMETERS:
            check.unknown(field, "unknown metaparameter", name, sorted(METAPARAMETERS))
        if name in fixed:
            check.fail(field, "also in [fixed]", "a metaparameter in one of [fixed], [search.space]")
        if isinstance(dist, list):
            if not dist:
                check.fail(field, "empty grid", "a non-empty list of values")
            for v in dist:
                check_metaparameter(check, field, name, v)
            normalized[name] = dist
        elif isinstance(dist, dict):
            normalized[name] = _range(check, field, name, dist, kind)
        else:
            check.fail(
                field, f"expected list or table, got {type_name(dist)} {dist!r}", "[values] or {min, max, scale}"
            )
    out = {"kind": kind, "space": normalized}
    if kind == "quasi_random":
        out.update(sequence=search.get("sequence", "halton"), trials=search["trials"], seed=search.get("seed", 0))
    elif kind == "adaptive":
        out.update(
            sequence=search.get("sequence", "halton"),
            seed=search.get("seed", 0),
            **adaptive_options.parse(check, search),
        )
    return out


def _range(check: Checker, field: str, name: str, dist: dict, kind: str) -> dict:
    check.table(dist, RANGE, field + ".")
    if kind == "grid":
        check.fail(field, "a range needs kind = quasi_random", "a list of values for a grid")
    if not numeric(METAPARAMETERS[name].type):
        check.fail(field, "a range of a non-numeric metaparameter", "a list of values")
    if "min" not in dist or "max" not in dist:
        check.fail(field, "a range needs min and max", "{min, max, scale}")
    lo, hi, scale = dist["min"], dist["max"], dist.get("scale", "linear")
    if not lo < hi:
        check.fail(field, f"min {lo} >= max {hi}", "min < max")
    if scale == "log" and lo <= 0:
        check.fail(field, f"log scale needs min > 0, got {lo}", "0 < min < max")
    if scale == "log1m" and hi >= 1:
        check.fail(field, f"log1m scale (log(1 - x)) needs max < 1, got {hi}", "min < max < 1")
    for key in ("min", "max"):
        check_metaparameter(check, f"{field}.{key}", name, dist[key])
    integer = dist.get("integer", METAPARAMETERS[name].integer)
    return {"min": lo, "max": hi, "scale": scale, "integer": integer}
