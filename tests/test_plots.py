"""What the figures draw: the plotted arrays against the input numbers and the
formulas (perfect scaling, McCandlish curve, heuristics), axis scales, labels,
marker counts per category."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.markers import MarkerStyle

from analysis import noise_scale_plot, plots, steps_plots, sweep_figures, trial_plots
from analysis.curves import analyze_sweep, looser_targets
from analysis.fit import fit_steps
from harness.errors import UserError

B = 2 ** np.arange(0, 10)


def _curve(s_min, b_crit, noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"batch_size": B, "steps": s_min * (1 + b_crit / B) * rng.lognormal(0, noise, len(B))})


def _line(ax, label):
    (line,) = [l for l in ax.get_lines() if l.get_label() == label]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def _is_log2(axis):
    return axis.get_scale() == "log" and axis.get_transform().base == 2


def test_steps_plot_draws_data_perfect_scaling_and_fit():
    curve = _curve(300, 64)
    fit = fit_steps(curve["batch_size"], curve["steps"])
    ax = steps_plots.steps_plot({"nesterov": curve}, {"nesterov": fit}).axes[0]
    x, y = _line(ax, "nesterov")
    np.testing.assert_array_equal(x, B)
    np.testing.assert_allclose(y, curve["steps"])
    x, y = _line(ax, "nesterov: perfect scaling")
    np.testing.assert_allclose(y, curve["steps"][0] * B[0] / x)
    x, y = _line(ax, "nesterov: fit")
    assert x.min() == B[0] and x.max() == B[-1]
    np.testing.assert_allclose(y, fit.s_min * (1 + fit.b_crit / x))
    # the band: S_min + E_min / B over the bounds of the bootstrap intervals of S_min and E_min
    (band,) = [c for c in ax.collections if c.get_label() == "nesterov: 90% band"]
    low, high = band.get_paths()[0].vertices[1:201, 1], band.get_paths()[0].vertices[202:402, 1][::-1]
    np.testing.assert_allclose(low, fit.s_min_ci[0] + fit.e_min_ci[0] / x)
    np.testing.assert_allclose(high, fit.s_min_ci[1] + fit.e_min_ci[1] / x)
    assert np.all(low <= y) and np.all(y <= high)
    np.testing.assert_allclose(np.ravel(_line(ax, "nesterov: B_crit")), [fit.b_crit, 2 * fit.s_min])
    assert _is_log2(ax.xaxis) and _is_log2(ax.yaxis)
    assert "batch size" in ax.get_xlabel() and "steps" in ax.get_ylabel()
    # one legend entry per curve, one per line style: no repeated "nesterov:" prefix
    legend = [t.get_text() for t in ax.figure.legends[0].texts]
    assert legend == [
        f"nesterov (B_crit = {fit.b_crit:.3g})",
        "perfect scaling from the smallest B",
        "fit S_min (1 + B_crit / B)",
        "90% band (S_min, E_min within their intervals)",
        "B = B_crit: twice the minimal steps",
    ]
    ax.figure.canvas.draw()
    assert {"1", "4", "16", "256"} <= {t.get_text() for t in ax.get_xticklabels()}


def test_tick_labels_are_plain_numbers():
    assert [plots.tick_label(v) for v in (1, 16, 1024, 65536, 0.0625, 0.001, 1e6, 0)] == [
        "1",
        "16",
        "1024",
        "65536",
        "0.0625",
        "0.001",
        "1e+06",
        "",
    ]


def test_steps_plot_normalised_several_curves():
    curves = {"sgd": _curve(500, 16, seed=1), "momentum": _curve(300, 128, seed=2)}
    ax = steps_plots.steps_plot(curves, normalize_at=4).axes[0]
    for label, curve in curves.items():
        _, y = _line(ax, label)
        np.testing.assert_allclose(y, curve["steps"] / curve["steps"][B == 4].iloc[0])
    x, y = _line(ax, "perfect scaling")
    np.testing.assert_allclose(y, 4 / x)
    assert ax.get_ylabel() == "steps / steps at B = 4"
    with pytest.raises(ValueError, match="no steps at batch size 3"):
        steps_plots.steps_plot(curves, normalize_at=3)


def test_steps_plot_counts_examples_or_communication_rounds():
    curve = _curve(300, 64).assign(rounds=lambda t: t["steps"] / 4)  # local SGD averaging every 4 steps
    curve["examples"] = curve["steps"] * curve["batch_size"]
    fit = fit_steps(curve["batch_size"], curve["steps"])
    ax = steps_plots.steps_plot({"a": curve}, {"a": fit}, axis="examples").axes[0]
    _, y = _line(ax, "a")
    np.testing.assert_allclose(y, curve["steps"] * B)
    _, y = _line(ax, "a: perfect scaling")
    np.testing.assert_allclose(y, curve["examples"][0])  # perfect scaling: the same examples at every B
    x, y = _line(ax, "a: fit")
    np.testing.assert_allclose(y, x * fit.s_min * (1 + fit.b_crit / x))  # E(B) = B S(B)
    np.testing.assert_allclose(np.ravel(_line(ax, "a: B_crit")), [fit.b_crit, 2 * fit.e_min])
    assert "training examples" in ax.get_ylabel()
    ax = steps_plots.steps_plot({"a": curve}, {"a": fit}, axis="rounds", normalize_at=4).axes[0]
    _, y = _line(ax, "a")
    np.testing.assert_allclose(y, curve["rounds"] / curve["rounds"][B == 4].iloc[0])
    assert not [l for l in ax.get_lines() if "fit" in l.get_label()]  # rounds have no McCandlish curve
    assert ax.get_ylabel() == "rounds / rounds at B = 4"
    with pytest.raises(UserError, match="allowed: steps, examples, rounds"):
        steps_plots.steps_plot({"a": curve}, axis="epochs")


def test_metaparameters_plot_heuristics_anchored_at_smallest_batch():
    best = pd.DataFrame(
        {"batch_size": B[::-1], "learning_rate": 0.01 * B[::-1] ** 0.7, "momentum": 1 - 0.1 / np.sqrt(B[::-1])}
    )
    fig = trial_plots.metaparameters_plot(best)
    lr_ax, mom_ax, eff_ax = fig.axes
    _, lr = _line(lr_ax, "best trial")
    np.testing.assert_allclose(lr, 0.01 * B**0.7)
    x, y = _line(lr_ax, "linear scaling")
    np.testing.assert_allclose(y, 0.01 * x)
    x, y = _line(lr_ax, "square-root scaling")
    np.testing.assert_allclose(y, 0.01 * np.sqrt(x))
    _, y = _line(mom_ax, "best trial")
    np.testing.assert_allclose(y, 0.1 / np.sqrt(B))
    _, y = _line(eff_ax, "best trial")
    np.testing.assert_allclose(y, 0.01 * B**0.7 / (0.1 / np.sqrt(B)))
    x, y = _line(eff_ax, "linear scaling")
    np.testing.assert_allclose(y, 0.1 * x)
    assert "effective learning rate" in eff_ax.get_ylabel()
    assert all(_is_log2(ax.xaxis) and ax.get_yscale() == "log" for ax in fig.axes)
    assert len(trial_plots.metaparameters_plot(best.drop(columns="momentum")).axes) == 1


def test_one_searched_metaparameter_draws_no_degenerate_panel_or_axis(sweep_folder):
    """Momentum fixed (the quickstart): no momentum panels, and the feasibility
    figure is one panel of learning rate against batch size."""
    from analysis import load_sweep

    sweep = load_sweep(sweep_folder)
    fixed = type(sweep)(**{**vars(sweep), "trials": sweep.trials.assign(momentum=0.9)})
    figures = {name: fig for name, _, fig in sweep_figures.sweep_figures(fixed, analyze_sweep(fixed, targets=[]))}
    assert [ax.get_ylabel() for ax in figures["metaparameters"].axes] == ["optimal learning rate"]
    (ax,) = figures["feasibility"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == (plots.BATCH_LABEL, "learning rate")
    counts = {label: len(_offsets(ax, label)) for label in ("reached target", "did not reach target", "diverged")}
    assert counts == {"reached target": 18, "did not reach target": 9, "diverged": 9}


def _trials():
    rows = [  # batch size, status, steps_to_target, learning rate, momentum
        (8, "complete", 120, 0.1, 0.9),
        (8, "complete", 90, 0.3, 0.99),
        (8, "complete", np.nan, 0.001, 0.9),
        (8, "pruned", np.nan, 0.01, 0.5),
        (8, "diverged", np.nan, 3.0, 0.999),
        (8, "incomplete", np.nan, 0.05, 0.9),
        (16, "complete", 60, 0.2, 0.95),
        (16, "diverged", np.nan, 2.0, 0.99),
        (16, "diverged", np.nan, 5.0, 0.9),
    ]
    return pd.DataFrame(
        [
            dict(trial_id=f"t{i}", batch_size=b, status=st, steps_to_target=s, learning_rate=lr, momentum=m)
            for i, (b, st, s, lr, m) in enumerate(rows)
        ]
    )


def _offsets(ax, label):
    (coll,) = [c for c in ax.collections if c.get_label() == label]
    return coll.get_offsets()


def test_feasibility_plot_marks_each_category_and_stars_best():
    trials = _trials()
    fig = trial_plots.feasibility_plot(trials, {8: "t1", 16: "t6"})
    ax8, ax16 = [ax for ax in fig.axes if ax.get_visible()]
    assert (ax8.get_title(), ax16.get_title()) == ("B = 8", "B = 16")
    pruned = "pruned (could no longer beat the best)"
    counts = {
        label: (len(_offsets(ax8, label)), len(_offsets(ax16, label)))
        for label in ("reached target", "did not reach target", pruned, "diverged", "best trial")
    }
    # the incomplete trial (t5) is ignored, as in Shallue et al.'s protocol; the pruned one (t3) is its own category
    assert counts == {
        "reached target": (2, 1),
        "did not reach target": (1, 0),
        pruned: (1, 0),
        "diverged": (1, 2),
        "best trial": (1, 1),
    }
    np.testing.assert_allclose(_offsets(ax8, pruned), [[0.01, 0.5]])
    np.testing.assert_allclose(_offsets(ax8, "best trial"), [[0.3, 0.01]])
    np.testing.assert_allclose(_offsets(ax8, "diverged"), [[3.0, 0.001]])
    (diverged,) = [c for c in ax16.collections if c.get_label() == "diverged"]
    x = MarkerStyle("x")
    np.testing.assert_allclose(diverged.get_paths()[0].vertices, x.get_path().transformed(x.get_transform()).vertices)
    assert ax8.get_xscale() == ax8.get_yscale() == "log"
    assert ax8.get_xlabel() == ax16.get_xlabel() == "learning rate η"
    assert (ax8.get_ylabel(), ax16.get_ylabel()) == ("1 − momentum", "")
    contour = [c for c in ax8.collections if hasattr(c, "levels")][0]
    assert set(contour.levels) >= {-1, 0, 1, 2, 3}


def test_feasibility_category():
    assert trial_plots.feasibility_category(_trials()).tolist() == [
        "reached",
        "reached",
        "not reached",
        "pruned",
        "diverged",
        np.nan,
        "reached",
        "diverged",
        "diverged",
    ]


def test_budget_plot_one_line_per_budget():
    table = pd.DataFrame(
        [
            dict(budget_kind=kind, budget=budget, batch_size=b, best_metric=1 / np.log2(2 * b * budget))
            for kind, budgets in (("steps", (100, 1000)), ("examples", (1e5,)))
            for budget in budgets
            for b in B
        ]
    )
    fig = trial_plots.budget_plot(table, "validation error")
    steps_ax, examples_ax = fig.axes
    x, y = _line(steps_ax, "1,000 steps")
    np.testing.assert_array_equal(x, B)
    np.testing.assert_allclose(y, 1 / np.log2(2 * B * 1000))
    assert len(steps_ax.get_lines()) == 2 and len(examples_ax.get_lines()) == 1
    assert _line(examples_ax, "100,000 examples")
    assert steps_ax.get_ylabel() == "best validation error"
    assert _is_log2(steps_ax.xaxis)


def test_pareto_plot_hyperbola():
    curves = {"error < 0.03": _curve(100, 32, seed=3), "error < 0.01": _curve(300, 128, seed=4)}
    fits = {k: fit_steps(c["batch_size"], c["steps"]) for k, c in curves.items()}
    ax = steps_plots.pareto_plot(curves, fits).axes[0]
    for label, curve in curves.items():
        x, y = _line(ax, label)
        np.testing.assert_allclose(x, curve["batch_size"] * curve["steps"])
        np.testing.assert_allclose(y, curve["steps"])
        fit = fits[label]
        e, s = _line(ax, f"{label}: fit")
        np.testing.assert_allclose((s / fit.s_min - 1) * (e / fit.e_min - 1), 1, rtol=1e-9)
    assert _is_log2(ax.xaxis) and _is_log2(ax.yaxis)
    assert "examples" in ax.get_xlabel() and "steps" in ax.get_ylabel()


def test_noise_scale_plot_medians_and_measured_b_crit():
    rows = [
        dict(trial_id=f"{b}-{k}", batch_size=b, step=step, gns_b_simple=(k + 1) * step)
        for b in (16, 64)
        for k in range(3)
        for step in (0, 10, 20, 40)
    ]
    ax = noise_scale_plot.noise_scale_plot(pd.DataFrame(rows), 100.0, (70.0, 150.0)).axes[0]
    x, y = _line(ax, "B = 16")
    np.testing.assert_array_equal(x, [10, 20, 40])  # step 0 has no place on a log axis
    np.testing.assert_allclose(y, [20, 40, 80])  # median over the three trials
    _, y = _line(ax, "measured B_crit = 100")
    np.testing.assert_allclose(y, 100)
    (band,) = [p for p in ax.patches if p.get_label().startswith("90% CI")]
    np.testing.assert_allclose([band.get_y(), band.get_y() + band.get_height()], [70, 150])
    assert _is_log2(ax.yaxis) and ax.get_xlabel() == "training step"


def test_save_writes_png_and_pdf(tmp_path):
    fig = steps_plots.steps_plot({"a": _curve(100, 10)})
    png, pdf = plots.save(fig, tmp_path / "sub" / "steps.vs.batch")
    assert (png.name, pdf.name) == ("steps.vs.batch.png", "steps.vs.batch.pdf")
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 500 and height > 400
    assert pdf.read_bytes().startswith(b"%PDF")


# --- a sweep folder with known steps to result --------------------------------------
S_MIN, B_CRIT, TARGET = 100, 32, 0.13
SPEC = """name = "made_by_hand"
workload = "linear_regression"
optimizer = "nesterov"
batch_sizes = {batch_sizes}
target = 0.13
max_steps = 20000
prune = false
[search]
kind = "quasi_random"
trials = 4
[search.space]
learning_rate = {min = 1e-3, max = 1.0, scale = "log"}
momentum = {min = 0.9, max = 0.999, scale = "log1m"}
"""


def designed_steps(batch_size, quality):
    """Steps at which a trial of the given quality first crosses the target:
    quality 0 is the best trial, on S_min (1 + B_crit / B)."""
    return round(S_MIN * (1 + B_CRIT / batch_size) * (1, 1.5)[quality])


def make_sweep(folder, gns=True, batch_sizes=tuple(2**k for k in range(9))):
    """A sweep folder in the store's format (harness.sweep.store) whose trials have
    hand-made metric curves: at each batch size, trial 0 crosses the target at
    `designed_steps(B, 0)`, trial 1 later, trial 2 never (complete), trial 3
    diverges. Metric: target * sqrt((S - 0.5) / step), strictly below the
    target from step S on."""
    from harness.sweep.spec import load_spec
    from harness.sweep.store import Store

    folder.mkdir(parents=True, exist_ok=True)
    text = SPEC.replace("{batch_sizes}", str(list(batch_sizes)))
    (folder / "spec.toml").write_text(text)
    spec = load_spec(folder / "spec.toml")
    store = Store(folder)
    store.open(spec, text)
    for i, trial in enumerate(spec.trials()):
        b, quality = trial.config.batch_size, i % 4
        crossing = designed_steps(b, min(quality, 1)) * (10 if quality == 2 else 1)
        last = {0: 2 * crossing, 1: 2 * crossing, 2: crossing // 10 * 3, 3: crossing // 4}[quality]
        steps = sorted(
            {*np.unique(np.geomspace(1, last, 40).round().astype(int)), *([crossing] if quality < 2 else [])}
        )
        rows = [
            dict(
                step=int(t),
                examples=int(t * b),
                train_loss=1.0,
                val_loss=1.0,
                val_metric=TARGET * np.sqrt((crossing - 0.5) / t),
                wall_time=0.01 * t,
            )
            for t in steps
        ]
        if quality == 3:
            rows[-1]["val_metric"] = rows[-1]["val_loss"] = float("nan")
        if gns:
            for r in rows:
                r.update(gns_g2=1.0, gns_trace=20.0 + r["step"] / 10, gns_b_simple=20.0 + r["step"] / 10)
        status = ("complete", "complete", "complete", "diverged")[quality]
        store.write_record(
            trial.id,
            dict(
                config=trial.config.to_dict(),
                status=status,
                steps_to_target=crossing if quality < 2 else None,
                metric="squared_error",
                direction="min",
                target=TARGET,
                measurements=rows,
                final=rows[-1],
                steps_run=int(steps[-1]),
                wall_time=1.0,
            ),
        )
    return folder


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweep") / "sweep")


def test_sweep_figures_from_a_sweep_folder(sweep_folder):
    from analysis import load_sweep

    sweep = load_sweep(sweep_folder)
    figures = {name: fig for name, _, fig in sweep_figures.sweep_figures(sweep, analyze_sweep(sweep))}
    assert list(figures) == [
        "steps",
        "steps_normalised",
        "metaparameters",
        "feasibility",
        "budgets",
        "pareto",
        "noise_scale",
    ]
    ax = figures["steps"].axes[0]
    x, y = _line(ax, "squared_error < 0.13")
    np.testing.assert_array_equal(x, 2 ** np.arange(9))
    np.testing.assert_array_equal(y, [designed_steps(b, 0) for b in x])
    b_crit, _ = np.ravel(_line(ax, "squared_error < 0.13: B_crit"))
    assert b_crit == pytest.approx(B_CRIT, rel=0.05)
    assert len([l for l in ax.get_lines() if l.get_marker() == "o"]) == 3  # the target + 2 looser
    assert ax.get_title() == "linear_regression, nesterov: steps to squared_error < 0.13 and 2 looser targets"
    # Looser targets are exact on a pruned sweep too (pruned trials' crossings count there).
    pruned = type(sweep)(**{**vars(sweep), "spec": {**sweep.spec, "prune": True}})
    assert looser_targets(pruned) == looser_targets(sweep) and len(looser_targets(sweep)) == 2
    feasibility = [a for a in figures["feasibility"].axes if a.get_visible()]
    assert len(feasibility) == 9
    assert [
        len(_offsets(feasibility[0], k)) for k in ("reached target", "did not reach target", "diverged", "best trial")
    ] == [2, 1, 1, 1]
    _, y = _line(figures["noise_scale"].axes[0], f"measured B_crit = {b_crit:.3g}")
    assert y[0] == pytest.approx(B_CRIT, rel=0.05)


def _comparison(sweeps):
    """The comparison figure as `cbs plot` draws it for several sweeps."""
    from analysis.curves import analyze
    from analysis.text import sweep_labels

    return sweep_figures.comparison_plot({label: analyze(s) for label, s in zip(sweep_labels(sweeps), sweeps)})


def test_comparison_plot_normalises_at_the_smallest_shared_batch_size(sweep_folder, tmp_path):
    from analysis import load_sweep

    sweeps = [load_sweep(sweep_folder), load_sweep(make_sweep(tmp_path / "other", batch_sizes=(4, 8, 16)))]
    ax = _comparison(sweeps).axes[0]
    for sweep in sweeps:  # same spec name: the sweeps are told apart by their folders
        x, y = _line(ax, str(sweep.folder))
        steps = np.array([designed_steps(b, 0) for b in x])
        np.testing.assert_allclose(y, steps / designed_steps(4, 0))
    assert ax.get_ylabel() == "steps / steps at B = 4"
    with pytest.raises(UserError, match="share no batch size"):
        _comparison([sweeps[1], load_sweep(make_sweep(tmp_path / "far", batch_sizes=(64, 128)))])


def test_noise_scale_figure_draws_a_cbs_gns_run_beside_the_swept_b_crit():
    """The committed MNIST FC-1024 SGD study has a `cbs gns` run in gns/: its
    figure shows that run's online B_simple and its windowed offline B_noise
    (the McCandlish prediction of B_crit) with the swept B_crit."""
    import json

    from analysis import load_sweep

    folder = Path(__file__).resolve().parent.parent / "experiments/shallue2019/results/shallue_cpu_mnist_fc1024_sgd"
    measured = json.loads((folder / "gns/gns.json").read_text())
    sweep = load_sweep(folder)
    figures = {name: fig for name, _, fig in sweep_figures.sweep_figures(sweep, analyze_sweep(sweep, targets=[]))}
    ax = figures["noise_scale"].axes[0]
    online = next(line for line in ax.lines if line.get_label().startswith("B_simple online"))
    assert list(online.get_xdata()) == [r["step"] for r in measured["online"]]
    assert list(online.get_ydata()) == pytest.approx([r["b_simple"] for r in measured["online"]])
    labels = ax.get_legend_handles_labels()[1]
    assert f"B_noise offline, steps 344..363: {measured['offline']['b_noise']['value']:.3g}" in labels
    assert "measured B_crit = 202" in labels
