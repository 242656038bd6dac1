"""The keys of an adaptive search (`[search] kind = "adaptive"`, harness.sweep.adaptive)
and their checks: one line `file: field: problem; allowed: ...` per bad value.
"""

from __future__ import annotations

from harness.sweep.schema import INT, NUMBER, STR, TABLE, Checker

SAMPLERS = ("tpe", "gp")
TRANSFERS = ("auto", "linear", "sqrt", "none")
KEYS = {
    "rounds": ((INT,), None),
    "trials_per_round": ((INT,), None),
    "initial_trials": ((INT,), None),
    "sampler": ((STR,), SAMPLERS),
    "patience": ((INT,), None),
    "transfer": ((STR,), TRANSFERS),
    "stop": ((TABLE,), None),
}
STOP = {"ratio": ((NUMBER,), None), "max_examples": ((INT,), None)}
DEFAULTS = {"trials_per_round": 4, "sampler": "tpe", "patience": 2, "transfer": "auto"}


def check_keys(check: Checker, search: dict, kind: str) -> None:
    """The adaptive keys only with kind = adaptive, and `trials` not with it."""
    if kind == "adaptive" and "trials" in search:
        check.fail("search.trials", "only for kind = quasi_random", "rounds, trials_per_round, initial_trials")
    for key in KEYS:
        if kind != "adaptive" and key in search:
            check.fail(
                f"search.{key}",
                "only for kind = adaptive",
                "kind, space" + (", sequence, trials, seed" if kind == "quasi_random" else ""),
            )


def parse(check: Checker, search: dict) -> dict:
    """The adaptive keys with their defaults: rounds (required), trials_per_round,
    initial_trials (default: trials_per_round), sampler, patience, transfer, stop."""
    if "rounds" not in search:
        check.fail("search.rounds", "missing: an adaptive search needs a number of rounds", "integers >= 1")
    out = {**DEFAULTS, **{k: v for k, v in search.items() if k in KEYS}}
    out.setdefault("initial_trials", out["trials_per_round"])
    for key in ("rounds", "trials_per_round", "initial_trials", "patience"):
        if out[key] < 1:
            check.fail(f"search.{key}", f"must be >= 1, got {out[key]}", "integers >= 1")
    stop = out.get("stop", {})
    check.table(stop, STOP, "search.stop.")
    if "ratio" in stop and not stop["ratio"] > 1:
        check.fail(
            "search.stop.ratio",
            f"must be > 1 (hi / lo of the 90% interval of B_crit), got {stop['ratio']}",
            "numbers > 1",
        )
    if "max_examples" in stop and stop["max_examples"] < 1:
        check.fail("search.stop.max_examples", f"must be >= 1, got {stop['max_examples']}", "integers >= 1")
    out["stop"] = stop
    return out
