"""The adaptive search (harness.sweep.adaptive, harness.sweep.rounds): rounds
are pure functions of the earlier records, whatever order the trials finished
in; censored and diverged trials; transfer across batch sizes; the stop rules;
bad input. Most tests use a synthetic model of steps to the target (no
training); one runs a tiny sweep end to end and resumes it."""

import json
import math
import os
import signal
import tomllib
from pathlib import Path

import pytest
from conftest import DATA_DIR as DATA
from test_sweep_run import cbs_sweep, wait_for

from harness.errors import UserError
from harness.sweep.adaptive import DIVERGED_FACTOR, Planner, observe
from harness.sweep.rounds import read_search, run_rounds
from harness.sweep.run import run_sweep
from harness.sweep.spec import parse_spec
from harness.sweep.store import RecordIndex, Store, Summary, parse_record, shortfall

SPEC = {
    "workload": "mnist_fc32x1",
    "optimizer": "sgd",
    "batch_sizes": [32, 64, 128],
    "target": 0.15,
    "max_steps": 400,
    "eval_every": 20,
    "search": {
        "kind": "adaptive",
        "rounds": 4,
        "trials_per_round": 2,
        "initial_trials": 3,
        "seed": 1,
        "space": {
            "learning_rate": {"min": 0.001, "max": 10.0, "scale": "log"},
            "end_lr_factor": {"min": 0.01, "max": 0.1, "scale": "log"},
        },
    },
    "fixed": {"schedule": "linear_decay", "decay_fraction": 1.0},
}


def spec_with(**search):
    return parse_spec({**SPEC, "search": {**SPEC["search"], **search}})


def true_steps(config) -> int | None:
    """A synthetic workload: the best learning rate grows linearly with B; too large diverges (None)."""
    lr, b = config.learning_rate, config.batch_size
    if lr > 3.0:
        return None
    return 40 + 20 * round(4 * abs(math.log10(lr / (0.1 * b / 32))))


def outcome(config, bound):
    """(status, steps_to_target, steps_run) of a trial run against the pruning bound `bound`."""
    steps = true_steps(config)
    if steps is None:
        return "diverged", None, 60
    if bound is not None and steps > bound:
        return "pruned", None, bound
    if steps > config.max_steps:
        return "incomplete", None, config.max_steps
    return "complete", steps, steps


def fake_execute(store, order=sorted):
    """An executor that writes synthetic records, running the trials one by one in `order` with exact pruning."""

    def execute(trials):
        pending = [t for t in trials if not store.is_done(t.id)]
        for t in order(pending, key=lambda t: t.id):
            bound = RecordIndex(store).refresh().best_steps(t.config.batch_size)
            status, steps, run = outcome(t.config, bound)
            store.write_record(
                t.id,
                {
                    "config": {"batch_size": t.config.batch_size, "max_steps": t.config.max_steps},
                    "status": status,
                    "steps_to_target": steps,
                    "measurements": [],
                    "steps_run": run,
                },
            )
        return len(pending)

    return execute


def summaries_of(history, order=sorted) -> dict:
    """Summaries of running each round's trials one by one in `order`, pruning against the best so far."""
    out = {}
    for proposals in history:
        for p in order(proposals, key=lambda p: p.trial.id):
            done = [s.steps_to_target for s in out.values() if s.batch_size == p.batch_size and s.steps_to_target]
            status, steps, run = outcome(p.trial.config, min(done, default=None))
            out[p.trial.id] = Summary(p.batch_size, status, steps, run, p.trial.config.max_steps)
    return out


def replay(spec, rounds, order=sorted):
    planner, history, start = Planner(spec), [], {b: 0 for b in spec.batch_sizes}
    for r in range(rounds):
        history.append(planner.plan(r, start, history, summaries_of(history, order)))
    return [[p.trial.id for p in proposals] for proposals in history]


def test_a_round_is_a_pure_function_of_the_earlier_records_in_any_finishing_order():
    spec = spec_with()
    first = replay(spec, 3)
    assert replay(spec_with(), 3) == first
    assert replay(spec, 3, order=lambda xs, key: sorted(xs, key=key, reverse=True)) == first  # other timing
    assert len(first[0]) == 9 and all(len(r) <= 6 for r in first[1:])
    assert replay(spec_with(seed=2), 3)[1] != first[1]


def test_censored_incomplete_and_diverged_observations():
    s = lambda status, steps=None, run=100: Summary(64, status, steps, run, 400)  # noqa: E731
    assert observe(s("complete", 80, 80), 80, 400, 20).value == 80
    assert observe(s("pruned", None, 80), 60, 400, 20).value == 80  # best + one evaluation, not steps_run
    assert observe(s("pruned", None, 200), 60, 400, 20).value == 80
    assert observe(s("complete", 120, 120), 60, 400, 20).value == 80  # completed before the best: as if pruned
    assert observe(s("incomplete", None, 400), None, 400, 20).value == 420
    near = Summary(64, "incomplete", None, 400, 400, shortfall=1.5)  # ended at 1.5 x the target error
    far = Summary(64, "incomplete", None, 400, 400, shortfall=89.4)  # stuck at chance
    assert observe(near, None, 400, 20).value == 630 and observe(far, None, 400, 20).value == 840
    assert observe(near, None, 400, 20).steps == 400  # what it cost: its budget
    assert observe(s("diverged", None, 40), 60, 400, 20).value == DIVERGED_FACTOR * 420  # a penalty
    assert observe(s("diverged", None, 100), 60, 400, 20).value == 80  # might have been pruned first
    assert observe(s("diverged", None, 100), None, 400, 20).value == DIVERGED_FACTOR * 420 > 840


def test_the_shortfall_of_a_record_is_its_best_evaluation_over_the_target():
    rows = [{"val_metric": None}, {"val_metric": 0.3}, {"val_metric": 0.015}, {"val_metric": 0.02}]
    assert shortfall({"measurements": rows, "target": 0.01, "direction": "min"}) == pytest.approx(1.5)
    accuracy = [{"val_metric": 0.5}, {"val_metric": 0.8}]
    assert shortfall({"measurements": accuracy, "target": 0.96, "direction": "max"}) == pytest.approx(1.2)
    assert shortfall({"measurements": [], "target": 0.01, "direction": "min"}) is None


def test_patience_counts_once_a_batch_size_reached_the_target():
    """A batch size no trial reached yet keeps proposing in every round; once one did, `patience` rounds
    without an improvement stop it."""
    planner = Planner(spec_with(patience=1, rounds=8))
    history = [planner.proposal(64, (0.1 * (r + 1), 0.5), r) for r in range(3)]
    never = {ps[0].trial.id: Summary(64, "incomplete", None, 400, 400) for ps in history}
    assert not planner.out_of_patience(64, 0, history, never)
    reached = {**never, history[0][0].trial.id: Summary(64, "complete", 300, 300, 400)}
    assert planner.out_of_patience(64, 0, history, reached)


def test_a_new_batch_size_starts_from_its_neighbours_best_moved_by_the_scaling_rule():
    for optimizer, power in (("sgd", 1.0), ("adam", 0.5)):
        spec = parse_spec({**SPEC, "optimizer": optimizer})
        planner, start = Planner(spec), {32: 0, 64: 1, 128: 0}
        history = [planner.plan(0, start, [], {})]
        assert {p.batch_size for p in history[0]} == {32, 128}
        summaries = summaries_of(history)
        best = {
            b: planner.best_points(
                [p for p in history[0] if p.batch_size == b], planner.observations(history, summaries)
            )[b]
            for b in (32, 128)
        }
        new = [p for p in planner.plan(1, start, history, summaries) if p.batch_size == 64]
        lrs = [p.trial.config.learning_rate for p in new]
        assert len(new) == 3  # two moved points, one quasi-random
        for b in (32, 128):
            assert lrs[(b > 64)] == pytest.approx(best[b].trial.config.learning_rate * (64 / b) ** power)


def test_a_batch_size_stops_after_patience_rounds_without_improvement():
    spec = spec_with(patience=1, rounds=8)
    rounds = replay(spec, 8)
    assert rounds[-1] == []  # every batch size out of patience
    per_batch = [{int(i[1:7]) for i in r} for r in rounds]
    assert all(later <= earlier for earlier, later in zip(per_batch, per_batch[1:]))


@pytest.mark.parametrize(
    "stop, reason",
    [
        ({"max_examples": 1}, "the example budget is spent"),
        ({}, "the rounds are spent (2)"),
    ],
)
def test_the_sweep_stops_where_its_rule_says(tmp_path, stop, reason):
    spec = spec_with(rounds=2, stop=stop)
    store = Store(tmp_path)
    store.open(spec, "")
    said = []
    outcome = run_rounds(spec, store, fake_execute(store), lambda folder: (100.0, 150.0), said.append)
    assert reason in outcome.stopped and reason in said[-1] and read_search(store)["stopped"] == outcome.stopped
    assert outcome.rounds == (1 if stop else 2)


def test_the_ratio_rule_waits_for_a_round_that_improves_no_batch_size(tmp_path):
    """A narrow interval while a batch size still gains steps is a biased one: the rule fires after the
    first round in which no batch size's best fell by more than one evaluation (here 20 steps)."""
    spec = spec_with(rounds=8, stop={"ratio": 2.0})
    store = Store(tmp_path)
    store.open(spec, "")
    outcome = run_rounds(spec, store, fake_execute(store), lambda folder: (100.0, 150.0), lambda line: None)
    records = {t.id: parse_record(store.record_path(t.id)) for t in outcome.trials}
    best, improved = {}, []
    for entry in read_search(store)["rounds"]:
        gains = set()
        for trial_id in entry["trials"]:
            r = records[trial_id]
            b, steps = r["config"]["batch_size"], r["steps_to_target"]
            if r["status"] == "complete" and (b not in best or steps < best[b] - 20):
                gains.add(b)
            if r["status"] == "complete":
                best[b] = min(best.get(b, steps), steps)
        improved.append(gains)
    settled = [r for r, gains in enumerate(improved) if not gains]
    assert settled and settled[0] >= 1 and outcome.rounds == settled[0] + 1
    assert "within a ratio of 2 after a round that improved no batch size" in outcome.stopped


def test_a_gain_smaller_than_eval_every_counts_where_geometric_evaluations_resolve_it():
    def stale(schedule, steps):
        planner = Planner(parse_spec({**SPEC, "eval_every": 250, "max_steps": 2000, "eval_schedule": schedule}))
        history = [planner.proposal(64, (0.1 * (r + 1), 0.5), r) for r in range(len(steps))]
        done = {ps[0].trial.id: Summary(64, "complete", s, s, 2000) for ps, s in zip(history, steps)}
        return planner.stale_rounds(64, 0, history, done)

    assert stale("geometric", [725, 500, 431]) == 1  # 500 < 725 - 116; 431 = 500 - 69: one evaluation
    assert stale("geometric", [725, 609, 512]) == 2  # 609, 512: one evaluation each
    assert stale("linear", [750, 500, 250]) == 2  # linear: 250 steps is one evaluation


def test_patience_stops_the_sweep_and_a_resumed_or_extended_one_replays_its_rounds(tmp_path):
    spec = spec_with(patience=1, rounds=3)
    store = Store(tmp_path)
    store.open(spec, "")
    first = run_rounds(spec, store, fake_execute(store), None, lambda line: None)
    again = run_rounds(spec, store, fake_execute(store), None, lambda line: None)  # a resume: nothing to run
    assert again.pending_at_start == 0 and [t.id for t in again.trials] == [t.id for t in first.trials]
    longer = spec_with(patience=1, rounds=8)
    assert store.open(longer, "") == ["search.rounds"]
    extended = run_rounds(longer, store, fake_execute(store), None, lambda line: None)
    assert [t.id for t in extended.trials][: len(first.trials)] == [t.id for t in first.trials]
    assert "out of patience" in extended.stopped


def test_a_tiny_sweep_runs_its_rounds_and_resumes_to_the_same_records(tmp_path):
    raw = {
        **SPEC,
        "batch_sizes": [64],
        "max_steps": 40,
        "checkpoint_every": 40,
        "search": {**SPEC["search"], "rounds": 2, "trials_per_round": 1, "initial_trials": 2},
    }
    run_sweep(raw, tmp_path / "sweep", workers=1, data_dir=DATA)
    records = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("trials/*/record.json")}
    search = json.loads((tmp_path / "sweep" / "search.json").read_text())
    assert [len(r["trials"]) for r in search["rounds"]] == [2, 1] and len(records) == 3
    again = run_sweep(raw, tmp_path / "sweep", workers=1, data_dir=DATA)
    assert again.pending_at_start == 0 and again.trials == 3
    assert json.loads((tmp_path / "sweep" / "search.json").read_text()) == search


def _records(folder) -> dict:
    """Each trial's status, steps to target and measurements (no wall times)."""
    out = {}
    for path in sorted(folder.glob("trials/*/record.json")):
        r = json.loads(path.read_text())
        rows = [{k: v for k, v in row.items() if k != "wall_time"} for row in r["measurements"]]
        out[path.parent.name] = (r["status"], r["steps_to_target"], r["steps_run"], rows)
    return out


@pytest.mark.parametrize(
    "prune",
    [pytest.param(True, marks=pytest.mark.slow), "earlier_rounds"],  # True: ~100 s, the weaker claim
)
def test_one_worker_three_workers_and_packed_trials_give_the_same_rounds_and_records(prune, tmp_path):
    """The rounds are planned from records, never from worker timing: three
    workers racing and trials packed two to a program plan the same trials,
    and reach the same steps to target with the same evaluations as one worker
    (three workers bit for bit; packed within float32 rounding of a vmapped step). With exact pruning
    (`prune = true`) a censored trial is pruned against whichever trial of its
    round finished first, so where it stops depends on timing; with
    `prune = "earlier_rounds"` it does not, and every record is the same."""
    raw = {
        **SPEC,
        "batch_sizes": [64],
        "max_steps": 60,
        "prune": prune,
        "search": {**SPEC["search"], "rounds": 2, "trials_per_round": 2, "initial_trials": 2},
    }
    runs = {"one": (raw, 1), "three": (raw, 3), "packed": ({**raw, "pack": 2}, 1)}
    for name, (spec, workers) in runs.items():
        run_sweep(spec, tmp_path / name, workers=workers, data_dir=DATA)
    one = _records(tmp_path / "one")
    assert len(one) == 4
    if prune == "earlier_rounds":  # round 1 is pruned against round 0's best
        assert {s for s, *_ in one.values()} >= {"complete", "pruned"}
    for name in ("three", "packed"):
        search = json.loads((tmp_path / name / "search.json").read_text())
        assert search == json.loads((tmp_path / "one" / "search.json").read_text()), name
        other = _records(tmp_path / name)
        assert other.keys() == one.keys(), name
        for trial_id, (status, steps, run, rows) in one.items():
            assert other[trial_id][1] == steps, (name, trial_id)
            if prune == "earlier_rounds" or "complete" in (status, other[trial_id][0]):
                assert other[trial_id][:3] == (status, steps, run), (name, trial_id)
                assert len(other[trial_id][3]) == len(rows), (name, trial_id)
            for a, b in zip(other[trial_id][3], rows):
                assert a.keys() == b.keys(), (name, trial_id)
                for key, value in b.items():
                    assert a[key] == (_close(key, value) if name == "packed" else value), (name, trial_id, key)


def _close(key, value):
    """A packed trial's measurement beside its unpacked run: float32 rounding of a vmapped
    step compounds over 60 steps (losses 3e-5 apart, relative, on jax 0.10.2), and flips a few
    validation examples near the decision boundary (an error rate 0.0008 apart)."""
    if not isinstance(value, float):
        return value
    return pytest.approx(value, abs=2e-3) if key == "val_metric" else pytest.approx(value, rel=1e-4, abs=1e-6)


KILLED = """
workload = "mnist_fc32x1"
optimizer = "sgd"
batch_sizes = [64]
target = 0.08
max_steps = 400
eval_every = 20
checkpoint_every = 20
prune = false
[fixed]
schedule = "linear_decay"
decay_fraction = 1.0
[search]
kind = "adaptive"
rounds = 2
trials_per_round = 1
initial_trials = 2
seed = 1
[search.space]
learning_rate = {min = 0.001, max = 10.0, scale = "log"}
end_lr_factor = {min = 0.01, max = 0.1, scale = "log"}
"""


def test_kill_9_in_either_round_then_resume_equals_uninterrupted(tmp_path):
    """kill -9 of the whole sweep (as a power cut), once while a trial of round 0
    and once while a trial of round 1 is checkpointed mid-way, then a re-run:
    the same rounds and the same records as a sweep never interrupted. (No
    pruning, so the trials run long enough to be caught mid-way.)"""
    spec = tmp_path / "spec.toml"
    spec.write_text(KILLED)
    run_sweep(spec, tmp_path / "uninterrupted", workers=1, data_dir=DATA)
    out = tmp_path / "sweep"

    def mid_trial(round_index):
        def moment():
            rounds = read_search(Store(out))["rounds"]
            return len(rounds) > round_index and any(
                p.name.isdigit() and not (p.parent.parent / "record.json").exists()
                for trial in rounds[round_index]["trials"]
                for p in (out / "trials" / trial / "checkpoints").glob("*")
            )

        return moment

    for round_index in (0, 1):
        for _ in range(5):  # the trials are short: retry until the kill lands on the moment
            proc = cbs_sweep(spec, out, "--workers", "1", start_new_session=True)
            wait_for(lambda: mid_trial(round_index)() or proc.poll() is not None)  # noqa: B023 (called at once)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if mid_trial(round_index)():
                break
        assert mid_trial(round_index)(), round_index
    proc = cbs_sweep(spec, out, "--workers", "1")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "adaptive search stopped after 2 rounds" in stdout + stderr
    search = json.loads((out / "search.json").read_text())
    assert search == json.loads((tmp_path / "uninterrupted" / "search.json").read_text())
    assert _records(out) == _records(tmp_path / "uninterrupted")
    assert any(a["checkpoint_step"] for t in search["rounds"][1]["trials"] for a in Store(out).attempts(t)[1:])


@pytest.mark.parametrize(
    "search, message",
    [
        ({"kind": "bayes"}, "spec: search.kind: unknown value 'bayes'; allowed: grid, quasi_random, adaptive"),
        ({"stop": {"ratio": 1.0}}, "spec: search.stop.ratio: must be > 1"),
        (
            {"stop": {"max_examples": -5}},
            "spec: search.stop.max_examples: must be >= 1, got -5; allowed: integers >= 1",
        ),
        ({"rounds": 0}, "spec: search.rounds: must be >= 1, got 0; allowed: integers >= 1"),
        ({"trials": 8}, "spec: search.trials: only for kind = quasi_random; allowed: rounds"),
        ({"sampler": "cmaes"}, "spec: search.sampler: unknown value 'cmaes'; allowed: tpe, gp"),
        ({"kind": "quasi_random", "trials": 4}, "spec: search.rounds: only for kind = adaptive; allowed: kind, space"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(search, message):
    with pytest.raises(UserError) as e:
        spec_with(**search)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "prune, search, message",
    [
        ("later", SPEC["search"], "spec: prune: unknown value 'later'; allowed: true, false, \"earlier_rounds\""),
        (
            "earlier_rounds",
            {"kind": "quasi_random", "trials": 4, "space": SPEC["search"]["space"]},
            'spec: prune: "earlier_rounds" needs rounds; allowed: true, false; "earlier_rounds" with kind = "adaptive"',
        ),
    ],
)
def test_a_bad_prune_is_one_line_naming_the_values(prune, search, message):
    with pytest.raises(UserError) as e:
        parse_spec({**SPEC, "prune": prune, "search": search})
    assert str(e.value) == message


def test_the_gp_sampler_plans_too_or_names_what_it_needs():
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="needs PyTorch"):
            replay(spec_with(sampler="gp"), 2)
        return
    assert replay(spec_with(sampler="gp"), 2) == replay(spec_with(sampler="gp"), 2)


COMMITTED = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*/results/*/search.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_a_committed_adaptive_study_replays_its_rounds_from_its_records(path):
    """The planner of today proposes, round by round, the trials the committed study ran, from its records
    alone (an extension of it would be refused otherwise); a study stopped on patience plans no more."""
    folder, stored = path.parent, json.loads(path.read_text())
    spec = parse_spec(tomllib.loads((folder / "spec.toml").read_text()), folder / "spec.toml")
    start = {int(b): r for b, r in stored["start_rounds"].items()}
    planner, summaries, history = Planner(spec), RecordIndex(Store(folder)).refresh().summaries, []
    for entry in stored["rounds"]:
        history.append(planner.plan(entry["round"], start, history, summaries))
        assert [p.trial.id for p in history[-1]] == entry["trials"], f"round {entry['round']}"
    if "out of patience" in stored["stopped"]:
        assert planner.plan(len(history), start, history, summaries) == []
