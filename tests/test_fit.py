"""The McCandlish fit, its intervals, the overhead definition, Shallue's regimes
and `cbs fit`."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq, least_squares

from analysis.curves import analyze
from analysis.fit import fit_steps
from analysis.regimes import empirical_overhead, max_useful_batch_size, perfect_scaling_end
from analysis.tables import SweepTables
from harness.cli import main

SIZES = 2.0 ** np.arange(0, 12)


def curve(s_min, b_crit, sizes=SIZES):
    return s_min * (1 + b_crit / sizes)


@pytest.mark.parametrize("s_min,b_crit", [(1000, 64), (300, 8), (5000, 500)])
def test_recovers_known_parameters_from_noisy_curves(s_min, b_crit):
    rng = np.random.default_rng(b_crit)
    # 1 % noise on log steps: the estimate's spread is ~1 %, so 5 % is a 5-sigma bound
    fit = fit_steps(SIZES, curve(s_min, b_crit) * np.exp(rng.normal(0, 0.01, SIZES.size)))
    assert fit.s_min == pytest.approx(s_min, rel=0.05)
    assert fit.b_crit == pytest.approx(b_crit, rel=0.05)
    assert fit.e_min == pytest.approx(fit.s_min * fit.b_crit)
    assert fit.b_crit_ci[0] < fit.b_crit < fit.b_crit_ci[1]
    assert not [w for w in fit.warnings if "B_crit" in w or "batch size(s)" in w]


def test_interval_covers_the_truth_at_its_confidence():
    covered = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        steps = curve(1000, 64) * np.exp(rng.normal(0, 0.05, SIZES.size))
        lo, hi = fit_steps(SIZES, steps, n_bootstrap=300, seed=seed).b_crit_ci
        covered += lo <= 64 <= hi
    assert covered >= 85


def test_agrees_with_scipy_least_squares_on_log_steps():
    rng = np.random.default_rng(3)
    steps = curve(700, 40) * np.exp(rng.normal(0, 0.1, SIZES.size))
    ref = least_squares(
        lambda p: np.log(p[0] + p[1] / SIZES) - np.log(steps),
        [500, 5000],
        bounds=(0, np.inf),
        x_scale=[500, 5000],
        xtol=1e-14,
        ftol=1e-14,
    )
    fit = fit_steps(SIZES, steps, n_bootstrap=10)
    assert fit.s_min == pytest.approx(ref.x[0], rel=1e-5)
    assert fit.e_min == pytest.approx(ref.x[1], rel=1e-5)


def test_overhead_definition_against_its_analytic_value():
    fit = fit_steps(SIZES, curve(1000, 64), overhead=20, n_bootstrap=10)
    # where the fitted curve exceeds its perfect-scaling limit E_min / B by 20 %
    root = brentq(lambda b: fit.predict(b) - 1.2 * fit.e_min / b, 1e-3, 1e6)
    assert fit.b_crit_overhead == pytest.approx(root, rel=1e-9)
    assert fit.b_crit_overhead == pytest.approx(0.2 * 64, rel=1e-6)
    assert fit.to_dict()["b_crit_overhead20"] == fit.b_crit_overhead
    # reference at the smallest measured B0: S(B) B / (S(B0) B0) = 1.2 at 0.2 B_crit + 1.2 B0
    dense = 2.0 ** np.arange(0, 12, 1 / 16)
    assert empirical_overhead(dense, curve(1000, 64, dense), 20) == pytest.approx(0.2 * 64 + 1.2, rel=1e-3)
    assert np.isnan(empirical_overhead(SIZES, 1000 / SIZES, 20))


def test_shallue_regimes():
    sizes = np.array([1, 2, 4, 8, 16, 32, 64])
    steps = np.array([1000, 500, 260, 150, 99, 96, 95])
    # the perfect-scaling line is 1000 / B: 150 at B = 8 is 1.2 times its 125, 99 at 16 is 1.58
    assert perfect_scaling_end(sizes, steps, tolerance=0.2) == 8
    assert perfect_scaling_end(sizes, steps, tolerance=0.1) == 4
    assert max_useful_batch_size(sizes, steps, noise=0.05) == 16  # 99 <= 1.05 * 95
    assert max_useful_batch_size(sizes, steps, noise=0.02) == 32  # 96 <= 1.02 * 95
    assert max_useful_batch_size(sizes, steps, noise=0.001) == 64


def test_warnings_when_the_data_do_not_constrain_the_fit():
    no_knee = fit_steps(SIZES[:6], 1e5 / SIZES[:6], n_bootstrap=50)
    assert any(w.startswith("B_crit >= 32 only: steps follow perfect scaling") for w in no_knee.warnings)
    assert any("perfect scaling holds up to the largest batch size 32" in w for w in no_knee.warnings)
    # a knee just beyond the data: an estimate, flagged as an extrapolation
    beyond = fit_steps(SIZES[:6], curve(1000, 64, SIZES[:6]), n_bootstrap=50)
    assert beyond.b_crit_bound is None and beyond.b_crit == pytest.approx(64)
    assert any("outside the measured batch sizes" in w for w in beyond.warnings)


def synthetic_sweep(spread, trials_per_size=8, seed=0):
    """Trials whose first crossing is the true curve times a random factor >= 1."""
    rng = np.random.default_rng(seed)
    t, m = [], []
    for b in SIZES[:9]:
        for k in range(trials_per_size):
            cross = int(curve(1000, 64, b) * (1 + spread * rng.exponential()))
            tid = f"{int(b):05d}-{k}"
            t.append(
                {
                    "trial_id": tid,
                    "batch_size": int(b),
                    "status": "complete",
                    "seed": k,
                    "steps_to_target": cross,
                    "learning_rate": 0.1,
                }
            )
            m += [
                {"trial_id": tid, "batch_size": int(b), "step": s, "val_metric": v}
                for s, v in [(cross - 1, 0.5), (cross, 0.05)]
            ]
    t.append(
        {
            "trial_id": "zz",
            "batch_size": 1,
            "status": "diverged",
            "seed": 0,
            "steps_to_target": np.nan,
            "learning_rate": 9.0,
        }
    )
    m.append({"trial_id": "zz", "batch_size": 1, "step": 1, "val_metric": 0.0})
    return pd.DataFrame(t), pd.DataFrame(m)


def sweep_fit(trials, measurements):
    """The fit `cbs analyze` gives (analysis.curves.analyze) of a synthetic sweep at its target 0.1."""
    sweep = SweepTables(
        trials, measurements, {"target": 0.1, "direction": "min", "metric": "error_rate"}, Path("synthetic")
    )
    return analyze(sweep, n_bootstrap=300).fit


def test_a_sweeps_fit_is_fit_steps_on_the_steps_to_result_table():
    trials, measurements = synthetic_sweep(spread=0.1)
    fit = sweep_fit(trials, measurements)
    best = trials[trials.status == "complete"].groupby("batch_size")["steps_to_target"].min()
    assert fit.steps == best.tolist()
    assert fit.to_dict() == fit_steps(best.index, best.values, n_bootstrap=300).to_dict()
    assert fit.bootstrap == "residual"
    assert fit.b_crit_ci[0] < fit.b_crit < fit.b_crit_ci[1]
    assert fit.b_crit == pytest.approx(64, rel=0.15)


def prune_slower_trials(trials, measurements, every=2):
    """The same sweep where exact pruning stopped every `every`-th trial that
    did not give its batch size's steps to result, at the best step there
    (its metric still above the target): a timing-dependent outcome, which
    the steps to result of Shallue et al. 2019 does not depend on."""
    complete = trials[trials.status == "complete"]
    best = complete.groupby("batch_size")["steps_to_target"].min()
    slower = complete[complete.steps_to_target > complete.batch_size.map(best)].iloc[::every]
    trials = trials.copy()
    trials.loc[slower.index, ["status", "steps_to_target"]] = ["pruned", np.nan]
    stopped = pd.DataFrame(
        {
            "trial_id": slower.trial_id,
            "batch_size": slower.batch_size,
            "step": slower.batch_size.map(best),
            "val_metric": 0.5,
        }
    )
    kept = measurements[~measurements.trial_id.isin(slower.trial_id)]
    return trials, pd.concat([kept, stopped], ignore_index=True)


def test_a_sweeps_fit_interval_does_not_depend_on_which_trials_were_pruned():
    trials, measurements = synthetic_sweep(spread=0.3)
    pruned_t, pruned_m = prune_slower_trials(trials, measurements)
    assert (pruned_t.status == "pruned").sum() >= 20
    one = sweep_fit(trials, measurements)
    other = sweep_fit(pruned_t, pruned_m)
    assert one.to_dict() == other.to_dict()
    assert one.b_crit_ci[0] < one.b_crit < one.b_crit_ci[1]


def write(tmp_path, text):
    path = tmp_path / "steps.csv"
    path.write_text(text)
    return str(path)


def test_cbs_fit_json_one_object_per_group(tmp_path, capsys):
    rows = ["group,batch_size,steps"]
    rows += [f"a,{int(b)},{s}" for b, s in zip(SIZES, curve(1000, 64))]
    rows += [f"b,{int(b)},{s}" for b, s in zip(SIZES, curve(200, 16))]
    assert main(["fit", write(tmp_path, "\n".join(rows)), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["group"] for o in out] == ["a", "b"]
    assert [round(o["b_crit"], 3) for o in out] == [64, 16]
    assert [round(o["s_min"], 3) for o in out] == [1000, 200]
    assert out[1]["b_crit_overhead20"] == pytest.approx(3.2, rel=1e-6)
    assert len(out[0]["b_crit_ci"]) == 2


def test_cbs_fit_table(tmp_path, capsys):
    text = "batch_size,steps\n" + "\n".join(f"{int(b)},{s}" for b, s in zip(SIZES, curve(1000, 64)))
    assert main(["fit", write(tmp_path, text), "--overhead", "10"]) == 0
    out = capsys.readouterr().out
    assert "B_crit(10%)" in out and " 64 " in out and "6.4" in out


@pytest.mark.parametrize(
    "text,message",
    [
        (None, "no such file"),
        (
            "bs,steps\n1,2\n",
            "lacks column(s) batch_size; needs batch_size and steps (optional: group); found: bs, steps",
        ),
        ("batch_size,steps\n1,10\n2,-5\n", "steps must be a positive number; row 3"),
        ("batch_size,steps\n1,10\nfour,5\n", "batch_size must be a positive number; row 3"),
        ("group,batch_size,steps\nx,1,10\nx,1,5\n", "batch_size 1 appears twice in group 'x'"),
    ],
)
def test_cbs_fit_errors(tmp_path, capsys, text, message):
    path = str(tmp_path / "missing.csv") if text is None else write(tmp_path, text)
    assert main(["fit", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbs: error: ") and message in err
