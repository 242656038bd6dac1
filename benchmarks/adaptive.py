"""Adaptive search vs quasi-random search at the same answer (issue 22).

A committed quasi-random study (Shallue et al. 2019's protocol, 24 points per
batch size) is the reference. For its first n points (n = 1 .. 24) and for
each round of an adaptive search (harness.sweep.adaptive) on the same spec,
this measures the trials run and the examples trained (B x steps run, summed)
until every batch size's steps to result is within one evaluation interval of
the reference's (or better), and the B_crit fit there. The quasi-random
numbers come from the committed records (a pruned trial among the first n
may have been pruned by a later point: such a batch size is marked `?`).

    python benchmarks/adaptive.py experiments/shallue2019/results/shallue_cpu_mnist_fc1024_sgd \\
        --batch-sizes 64,128,256,512 --out runs/bench_adaptive_sgd
    # the full study: --batch-sizes all
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from analysis import load_sweep
from analysis.curves import analyze, b_crit_interval
from analysis.fit import fit_steps
from harness.sweep.run import run_sweep
from harness.sweep.spec import parse_spec


def reference_table(folder, batch_sizes) -> dict:
    """batch size -> (steps to result, resolution) of the reference study."""
    table = analyze(load_sweep(folder)).table
    return {
        int(r.batch_size): (int(r.steps), int(r.resolution))
        for r in table.itertuples()
        if int(r.batch_size) in batch_sizes
    }


def fit_text(steps: dict) -> str:
    sizes = sorted(steps)
    fit = fit_steps([float(b) for b in sizes], [float(steps[b]) for b in sizes])
    return fit.b_crit_text()


def within(steps: dict, reference: dict) -> bool:
    return all(b in steps and steps[b] <= s + res for b, (s, res) in reference.items())


def quasi_random(folder, batch_sizes, reference) -> list[dict]:
    """Per n: the first n points' steps to result, examples and trials at `batch_sizes`."""
    spec = parse_spec(tomllib.loads((Path(folder) / "spec.toml").read_text()))
    records = {p.parent.name: json.loads(p.read_text()) for p in Path(folder).glob("trials/*/record.json")}
    order = {b: [t.id for t in spec.trials() if t.config.batch_size == b] for b in batch_sizes}
    rows = []
    for n in range(1, spec.search["trials"] + 1):
        steps, unsure, examples = {}, set(), 0
        for b in batch_sizes:
            first = [records[i] for i in order[b][:n] if i in records]
            examples += sum(r["steps_run"] * b for r in first)
            done = [r["steps_to_target"] for r in first if r["status"] == "complete"]
            if done:
                steps[b] = min(done)
                if any(r["status"] == "pruned" and r["steps_run"] < steps[b] for r in first):
                    unsure.add(b)
        rows.append(
            dict(
                n=n,
                trials=n * len(batch_sizes),
                examples=examples,
                steps=steps,
                unsure=sorted(unsure),
                within=within(steps, reference),
            )
        )
    return rows


def adaptive(folder, raw: dict, batch_sizes, reference, out, workers) -> list[dict]:
    """Run the adaptive search on the reference's spec; per round: steps to result, examples, trials."""
    raw = {**raw, "name": f"{raw.get('name', 'spec')}_adaptive", "batch_sizes": sorted(batch_sizes)}
    run_sweep(raw, out, workers=workers, b_crit_interval=b_crit_interval)
    search = json.loads((Path(out) / "search.json").read_text())
    records = {p.parent.name: json.loads(p.read_text()) for p in Path(out).glob("trials/*/record.json")}
    rows, ids = [], []
    for r in search["rounds"]:
        ids += r["trials"]
        steps = {}
        for i in ids:
            rec = records[i]
            if rec["status"] == "complete":
                b = rec["config"]["batch_size"]
                steps[b] = min(steps.get(b, rec["steps_to_target"]), rec["steps_to_target"])
        rows.append(
            dict(
                round=r["round"],
                trials=len(ids),
                examples=sum(records[i]["steps_run"] * records[i]["config"]["batch_size"] for i in ids),
                ideal_examples=r["examples"],
                steps=steps,
                within=within(steps, reference),
            )
        )
    rows[-1]["stopped"] = search["stopped"]
    return rows


def adaptive_spec(folder, args: argparse.Namespace) -> dict:
    """The reference's spec with its search made adaptive over the same space (the command line's settings)."""
    raw = tomllib.loads((Path(folder) / "spec.toml").read_text())
    raw["prune"] = True if args.prune == "exact" else args.prune
    space = raw["search"]["space"]
    raw["search"] = {
        "kind": "adaptive",
        "rounds": args.rounds,
        "trials_per_round": args.trials_per_round,
        "initial_trials": args.initial_trials,
        "sampler": args.sampler,
        "seed": 0,
        "patience": args.patience,
        "transfer": args.transfer,
        "space": space,
        "stop": {"ratio": args.ratio},
    }
    return raw


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("reference", help="a committed quasi-random sweep folder")
    p.add_argument("--batch-sizes", default="all", help="comma-separated subset of the reference's, or all")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--trials-per-round", type=int, default=1)
    p.add_argument("--initial-trials", type=int, default=3)
    p.add_argument("--sampler", choices=["tpe", "gp"], default="tpe", help="Optuna's TPE or GP (needs torch)")
    p.add_argument("--transfer", choices=["auto", "linear", "sqrt", "none"], default="auto")
    p.add_argument("--patience", type=int, default=2, help="rounds without an improvement before a batch size stops")
    p.add_argument("--ratio", type=float, default=1.5, help="the B_crit stop rule's hi / lo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--prune",
        choices=["exact", "earlier_rounds"],
        default="exact",
        help="prune against every finished trial, or against earlier rounds only (records independent of timing)",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    stored = json.loads((Path(args.reference) / "spec.json").read_text())["spec"]
    sizes = stored["batch_sizes"] if args.batch_sizes == "all" else [int(b) for b in args.batch_sizes.split(",")]
    reference = reference_table(args.reference, sizes)
    full = quasi_random(args.reference, sizes, reference)[-1]
    raw = adaptive_spec(args.reference, args)
    ada = adaptive(args.reference, raw, sizes, reference, args.out, args.workers)
    qr = quasi_random(args.reference, sizes, reference)
    first_qr = next((r for r in qr if r["within"]), None)
    first_ad = next((r for r in ada if r["within"]), None)
    report = dict(
        reference=str(args.reference),
        batch_sizes=sizes,
        reference_steps=reference,
        reference_examples=full["examples"],
        reference_b_crit=fit_text({b: s for b, (s, _) in reference.items()}),
        quasi_random_first_within=first_qr,
        adaptive_rounds=ada,
        adaptive_first_within=first_ad,
        adaptive_b_crit=fit_text(ada[-1]["steps"]) if len(ada[-1]["steps"]) >= 2 else None,
        quasi_random_at_adaptive_trials=qr[min(len(qr), max(1, ada[-1]["trials"] // len(sizes))) - 1],
    )
    if first_qr:
        report["quasi_random_b_crit"] = fit_text(first_qr["steps"])
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
