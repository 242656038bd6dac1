"""The adaptive search's planner: round r's trials from the records of rounds < r.

Shallue et al. (2019, Sec. 4.7 and Fig. 8) found the best effective learning
rate to move smoothly with the batch size, so a search that learns from its
own trials and from its neighbouring batch sizes needs fewer of them. Per
batch size, an Optuna study (Akiba et al. 2019; TPESampler, Bergstra et al.
2011, or GPSampler) over the unit cube of the search space
(harness.sweep.search_space.from_unit) is rebuilt from scratch each round:
the earlier trials are told in trial-id order, so a round's proposals are a
pure function of the spec and the earlier records, whatever the workers'
timing. A batch of asks is diversified by a constant liar (Ginsbourger et al.
2010): each ask is told the worst value seen before the next.

Observations (`observe`), as log steps to the target, made independent of
the order trials finished in under exact pruning (a trial whose steps exceed
the round's best may have been pruned or may have completed first):

- complete, at most the best steps at its batch size after its round: its steps;
- pruned, or complete or diverged after that best: censored at best + eval_every;
- incomplete with no trial at B at the target: censored at C = budget +
  eval_every, times its shortfall (best error / target, at most 2): where
  the error falls as a power of the steps, S^-a (Kaplan et al. 2020, Sec. 5),
  the steps to the target are about C x shortfall^(1/a), so a trial that
  ended nearer the target ranks better and the sampler learns where B's
  target lies before any trial reaches it (TPE reads only the order);
- diverged (before that best): a penalty, 4 C. Not TrialState.FAIL: TPE
  leaves failed trials out of its densities and would propose the divergent
  learning rates again.

A batch size's first round starts from its neighbours' best points with the
learning rate moved by the linear rule (SGD and momentum: x B/B') or the
square-root rule (Adam family: x sqrt(B/B')), clipped to the space
(`transfer`; Goyal et al. 2017, Hoffer et al. 2017), then quasi-random points;
later rounds enqueue the neighbours' new best points the same way before
asking the sampler. A batch size stops after `patience` rounds without an
improvement beyond one evaluation interval (the cadence at its best
crossing), counted once one of its trials reached the target: until then
every round proposes there, within the sweep's rounds and stop.max_examples.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

from harness.engine.evaluation import resolution
from harness.engine.optimizers import ADAPTIVE_OPTIMIZERS
from harness.errors import UserError
from harness.sweep import search_space
from harness.sweep.spec import PlannedTrial, SweepSpec

POWERS = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}
DIVERGED_FACTOR = 4
SHORTFALL_CAP = 2  # below DIVERGED_FACTOR: a trial that ended far from the target still ranks above a divergent one
ASKS_PER_PROPOSAL = 4  # asks before giving up on a new point (the sampler may repeat one)


@dataclass(frozen=True)
class Proposal:
    """A planned trial with the unit-cube point it came from."""

    trial: PlannedTrial
    unit: tuple
    batch_size: int
    round: int


@dataclass(frozen=True)
class Observation:
    """What a trial tells the sampler (`value`, steps) and what it cost as an ideally pruned run (`steps`)."""

    value: float
    steps: int


def transfer_power(search: dict, optimizer: str) -> float:
    """The exponent p of the learning-rate move lr x (B / B')^p."""
    rule = search["transfer"]
    if rule == "auto":
        rule = "sqrt" if optimizer in ADAPTIVE_OPTIMIZERS else "linear"
    return POWERS[rule]


def observe(summary, best: int | None, budget: int, eval_every: int) -> Observation:
    """A finished trial's observation, given the best steps at its batch size after its round (see the module)."""
    censored = budget + eval_every
    if best is None:
        if summary.status == "diverged":
            return Observation(DIVERGED_FACTOR * censored, summary.steps_run)
        return Observation(censored * min(max(summary.shortfall or 1.0, 1.0), SHORTFALL_CAP), budget)
    if summary.status == "complete" and summary.steps_to_target <= best:
        return Observation(summary.steps_to_target, summary.steps_to_target)
    if summary.status == "diverged" and summary.steps_run <= best:
        return Observation(DIVERGED_FACTOR * censored, summary.steps_run)
    return Observation(best + eval_every, min(best, budget))


class Planner:
    """Plans the rounds of one spec's adaptive search."""

    def __init__(self, spec: SweepSpec):
        self.spec, self.search = spec, spec.search
        self.space = dict(sorted(self.search["space"].items()))
        self.names = list(self.space)
        self.power = transfer_power(self.search, spec.optimizer)
        self.initial_units = [
            tuple(float(x) for x in u) for u in search_space.unit_points(self.search, len(self.space))
        ]

    def proposal(self, batch_size: int, unit, round_index: int) -> list[Proposal]:
        point = {**search_space.from_unit(self.space, unit), **self.spec.fixed}
        return [Proposal(t, tuple(unit), batch_size, round_index) for t in self.spec.point_trials(batch_size, point)]

    def observations(self, history: list[list[Proposal]], summaries: dict) -> dict[str, Observation]:
        """Every finished trial's observation; the best at B is taken after the trial's round."""
        out, best = {}, {}
        for proposals in history:
            for p in proposals:
                s = summaries.get(p.trial.id)
                if s is not None and s.status == "complete":
                    best[p.batch_size] = min(best.get(p.batch_size, math.inf), s.steps_to_target)
            for p in proposals:
                if (s := summaries.get(p.trial.id)) is not None:
                    out[p.trial.id] = observe(
                        s, best.get(p.batch_size), self.spec.steps_for(p.batch_size), self.spec.eval_every
                    )
        return out

    def stale_rounds(self, batch_size: int, start: int, history: list[list[Proposal]], summaries: dict) -> int:
        """Rounds since the last improvement of the best steps at B beyond one evaluation interval: the
        cadence at the best's crossing (harness.engine.evaluation.resolution), so geometric evaluations
        count a gain of 725 -> 500 steps even where eval_every is 250."""
        best, stale = None, 0
        for proposals in history[start:]:
            done = [
                (summaries[p.trial.id].steps_to_target, p.trial.config)
                for p in proposals
                if p.batch_size == batch_size and p.trial.id in summaries and summaries[p.trial.id].status == "complete"
            ]
            new = min(done, key=lambda d: d[0], default=None)
            if new is not None and (
                best is None or new[0] < best[0] - resolution(best[1], self.spec.eval_every, best[0])
            ):
                best, stale = new, 0
            else:
                stale += 1
                if new is not None and new[0] < best[0]:
                    best = new
        return stale

    def out_of_patience(self, batch_size: int, start: int, history: list[list[Proposal]], summaries: dict) -> bool:
        """`patience` stale rounds at B, once a trial at B reached the target (see the module)."""
        reached = any(
            p.batch_size == batch_size and p.trial.id in summaries and summaries[p.trial.id].status == "complete"
            for proposals in history
            for p in proposals
        )
        return reached and self.stale_rounds(batch_size, start, history, summaries) >= self.search["patience"]

    def settled(self, round_index: int, start: dict[int, int], history: list[list[Proposal]], summaries: dict) -> bool:
        """Whether the round just run improved no batch size's best beyond one evaluation interval: until
        then B_crit's interval is that of under-tuned batch sizes, however narrow (the stop.ratio rule)."""
        return all(
            self.stale_rounds(b, start[b], history, summaries) >= 1
            for b in self.spec.batch_sizes
            if start[b] <= round_index
        )

    def plan(
        self, round_index: int, start: dict[int, int], history: list[list[Proposal]], summaries: dict
    ) -> list[Proposal]:
        """Round `round_index`'s proposals, batch size by batch size (each after the batch sizes that started
        earlier). `start`: the round each batch size joined; `history`: the earlier rounds' proposals;
        `summaries`: harness.sweep.store.RecordIndex summaries of their records."""
        observed = self.observations(history, summaries)
        tried = [p for proposals in history for p in proposals]
        bests = self.best_points(tried, observed)
        out = []
        for batch_size in self.spec.batch_sizes:
            first = start[batch_size]
            if first > round_index or (
                first < round_index and self.out_of_patience(batch_size, first, history, summaries)
            ):
                continue
            own = [p for p in tried if p.batch_size == batch_size]
            moved = self.transfers(batch_size, bests, start, round_index)
            count = self.search["initial_trials"] if first == round_index else self.search["trials_per_round"]
            out.extend(self.proposals(batch_size, round_index, own, observed, moved, count, first == round_index))
        return out

    def best_points(self, tried: list[Proposal], observed: dict) -> dict[int, Proposal]:
        """The best trial at each batch size (fewest steps to the target, ties: smallest id)."""
        best = {}
        for p in sorted(tried, key=lambda p: p.trial.id):
            o = observed.get(p.trial.id)
            if o is None or o.value > self.spec.steps_for(p.batch_size):
                continue
            if p.batch_size not in best or o.value < observed[best[p.batch_size].trial.id].value:
                best[p.batch_size] = p
        return best

    def transfers(self, batch_size: int, bests: dict, start: dict, round_index: int) -> list[tuple]:
        """The nearest smaller and larger batch sizes' best points, the learning rate moved to B."""
        below = [b for b in bests if b < batch_size and start[b] < round_index]
        above = [b for b in bests if b > batch_size and start[b] < round_index]
        out = []
        for neighbour in ([max(below)] if below else []) + ([min(above)] if above else []):
            unit = list(bests[neighbour].unit)
            if "learning_rate" in self.space and not isinstance(self.space["learning_rate"], list):
                i = self.names.index("learning_rate")
                lr = search_space.from_unit(self.space, unit)["learning_rate"]
                unit[i] = search_space.to_unit(self.space["learning_rate"], lr * (batch_size / neighbour) ** self.power)
            out.append(tuple(unit))
        return out

    def proposals(
        self,
        batch_size: int,
        round_index: int,
        own: list[Proposal],
        observed: dict,
        moved: list[tuple],
        count: int,
        first: bool,
    ) -> list[Proposal]:
        """The trials of `count` new unit points at B: the moved points, then
        quasi-random ones (first round) or the sampler's."""
        seen = {p.trial.id for p in own}
        out, points = [], 0

        def take(unit) -> bool:
            nonlocal points
            proposals = self.proposal(batch_size, tuple(unit), round_index)
            ids = {p.trial.id for p in proposals}
            if ids & seen or points >= count:
                return False
            seen.update(ids)
            out.extend(proposals)
            points += 1
            return True

        for unit in moved:
            take(unit)
        if first:
            for unit in self.initial_units:
                take(unit)
            return out
        study, distributions = self.study(batch_size, round_index, own, observed)
        for _ in range(ASKS_PER_PROPOSAL * count):
            if points >= count:
                break
            trial = study.ask(distributions)
            unit = tuple(trial.params[f"u_{name}"] for name in self.names)
            take(unit)
            study.tell(trial, max((t.value for t in study.trials if t.value is not None), default=0.0))  # constant liar
        return out

    def distributions(self) -> dict:
        from optuna.distributions import FloatDistribution

        return {f"u_{name}": FloatDistribution(0.0, 1.0) for name in self.names}

    def study(self, batch_size: int, round_index: int, own: list[Proposal], observed: dict):
        """An Optuna study rebuilt from B's finished trials, told in trial-id order as log steps, and
        the distributions of its parameters."""
        import optuna  # imported here: only adaptive searches need it

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = int(hashlib.sha256(f"{self.search['seed']}-{batch_size}-{round_index}".encode()).hexdigest()[:8], 16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.search["sampler"] == "gp":
                try:
                    import torch  # noqa: F401  Optuna's GPSampler needs it
                except ImportError:
                    raise UserError(
                        'search.sampler = "gp" needs PyTorch (Optuna\'s GPSampler): pip install torch; '
                        "allowed: tpe, or gp with torch installed"
                    ) from None
                sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=1)
            else:
                sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=1, multivariate=True)
        study, distributions = optuna.create_study(sampler=sampler, direction="minimize"), self.distributions()
        for p in sorted(own, key=lambda p: p.trial.id):
            if p.trial.id in observed:
                study.add_trial(
                    optuna.trial.create_trial(
                        params={f"u_{name}": u for name, u in zip(self.names, p.unit)},
                        distributions=distributions,
                        value=math.log(observed[p.trial.id].value),
                    )
                )
        return study, distributions
