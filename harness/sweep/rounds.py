"""The rounds of an adaptive search: plan a round (harness.sweep.adaptive),
run its trials, read their records, plan the next, until the rounds are
spent or a stop rule says stop.

FOLDER/search.json keeps, per round, its trial ids, the examples trained (as
ideally pruned runs: the same whatever the workers' timing) and the B_crit
interval after it; the round each batch size joined; and why the search
stopped. A resumed or extended sweep replays the rounds from the records and
checks each against the stored one, so a changed planner (another Optuna) is
refused rather than mixed in. A batch size added to a sweep joins at the next
round.

Stop rules, checked after each round: every batch size out of patience; the
90% interval of B_crit within `stop.ratio` (hi / lo) after a round that
improved no batch size's best beyond one evaluation interval (a narrow
interval while small batch sizes still improve is a biased one; the fit lives in
analysis, a layer above this one, so the caller passes it in as
`b_crit_interval(folder) -> (lo, hi) | None`); `stop.max_examples` trained.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from harness.errors import UserError, warn
from harness.sweep.adaptive import Planner
from harness.sweep.leases import atomic_write
from harness.sweep.spec import SweepSpec
from harness.sweep.store import RecordIndex, Store


@dataclass(frozen=True)
class SearchOutcome:
    """The trials of every round run, and why the search stopped."""

    trials: list
    pending_at_start: int
    rounds: int
    stopped: str


def search_path(store: Store):
    return store.folder / "search.json"


def read_search(store: Store) -> dict:
    path = search_path(store)
    return json.loads(path.read_text()) if path.exists() else {"start_rounds": {}, "rounds": []}


def run_rounds(
    spec: SweepSpec,
    store: Store,
    execute: Callable[[list], int],
    b_crit_interval: Callable | None = None,
    say: Callable[[str], None] = print,
) -> SearchOutcome:
    """Run the adaptive search of `spec` in `store`; `execute(trials)` runs the unfinished ones
    and returns how many were pending."""
    search, stored = spec.search, read_search(store)
    start = {int(b): r for b, r in stored["start_rounds"].items()}
    start.update({b: len(stored["rounds"]) for b in spec.batch_sizes if b not in start})
    stop = search["stop"]
    if "ratio" in stop and b_crit_interval is None:
        warn("search.stop.ratio is not checked: run_sweep was given no b_crit_interval (cbs sweep gives one)")
    planner, index = Planner(spec), RecordIndex(store)
    history, rounds, trials, pending, stopped = [], [], [], 0, f"the rounds are spent ({search['rounds']})"
    for r in range(search["rounds"]):
        proposals = planner.plan(r, start, history, index.refresh().summaries)
        ids = [p.trial.id for p in proposals]
        if r < len(stored["rounds"]) and stored["rounds"][r]["trials"] != ids:
            raise UserError(
                f"{search_path(store)}: round {r} replays to other trials than the stored ones "
                "(has Optuna or the spec changed?); allowed: the same planner, or a new --out folder"
            )
        if not proposals:
            stopped = f"every batch size is out of patience ({search['patience']} rounds without an improvement)"
            break
        history.append(proposals)
        rounds.append({"round": r, "trials": ids})
        _write(store, start, rounds, None)
        trials += [p.trial for p in proposals]
        pending += execute([p.trial for p in proposals])
        summaries = index.refresh().summaries
        observed = planner.observations(history, summaries)
        missing = [i for i in ids if i not in observed]
        if missing:
            raise UserError(
                f"{store.folder}: round {r}: {len(missing)} trials have no record (e.g. {missing[0]}); "
                "allowed: run the same command again to resume"
            )
        examples = sum(observed[t.id].steps * t.config.batch_size for t in trials)
        interval = b_crit_interval(store.folder) if b_crit_interval and "ratio" in stop else None
        rounds[-1].update(examples=examples, b_crit_interval=list(interval) if interval else None)
        _write(store, start, rounds, None)
        say(
            f"round {r}: {len(ids)} trials at {len({p.batch_size for p in proposals})} batch sizes; "
            f"{examples:.4g} examples in all"
            + (f"; B_crit 90% interval {interval[0]:.4g} .. {interval[1]:.4g}" if interval else "")
        )
        if interval and interval[1] / interval[0] <= stop["ratio"] and planner.settled(r, start, history, summaries):
            stopped = (
                f"the 90% interval of B_crit is within a ratio of {stop['ratio']:g} "
                "after a round that improved no batch size"
            )
            break
        if "max_examples" in stop and examples >= stop["max_examples"]:
            stopped = f"the example budget is spent ({examples} >= {stop['max_examples']})"
            break
    _write(store, start, rounds, stopped)
    say(f"adaptive search stopped after {len(rounds)} rounds: {stopped}")
    return SearchOutcome(trials, pending, len(rounds), stopped)


def _write(store: Store, start: dict, rounds: list, stopped: str | None) -> None:
    atomic_write(
        search_path(store),
        json.dumps(
            {"start_rounds": {str(b): r for b, r in sorted(start.items())}, "rounds": rounds, "stopped": stopped},
            indent=1,
        ),
    )
