"""The HTML report as a reader sees it (rendered by headless Chromium), and the
`cbs analyze`, `cbs plot` and `cbs report` commands on a hand-made sweep folder
whose steps to result are known (tests/test_plots.py: make_sweep)."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_plots import B_CRIT, TARGET, designed_steps, make_sweep

from analysis import load_sweep
from analysis.curves import analyze, analyze_sweep
from analysis.edges import edge_hits
from analysis.fit import fit_steps
from analysis.text import edge_text, headline, size
from harness.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIZES = (4, 8, 16, 32, 64, 128)
# Injected into a copy of the report: after the page has loaded, write what the
# reader sees (rendered text, table cells, decoded image sizes) into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const cells = (id) => [...document.querySelectorAll(`#${id} tr`)].map(
    (tr) => [...tr.children].map((c) => c.innerText.trim()));
  const seen = {
    b_crit: document.getElementById("b-crit").innerText,
    headline: document.querySelector(".result .big").innerText,
    sentence: document.getElementById("headline").innerText,
    steps: cells("steps-table"),
    noise: cells("noise-scale-table"),
    trials: cells("trials-table"),
    spec: document.getElementById("spec-toml").innerText,
    images: [...document.images].map((i) => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
    warnings: [...document.querySelectorAll(".warning")].map((w) => w.innerText),
  };
  const out = document.createElement("pre");
  out.id = "seen";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("report") / "sweep", batch_sizes=SIZES)


@pytest.fixture(scope="module")
def report(sweep_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report.html"
    assert main(["report", str(sweep_folder), "--out", str(out)]) == 0
    return out


def _chromium(page, tmp_path, *args):
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def test_report_is_self_contained(report):
    text = report.read_text()
    assert not re.search(r"<script|<link|src=['\"](?!data:image/png;base64,)", text)
    assert text.count("<img ") == 7


def test_report_as_rendered_by_chromium(report, sweep_folder, tmp_path):
    page = tmp_path / "probed.html"
    page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(page, tmp_path, "--dump-dom", "--virtual-time-budget=10000")
    seen = json.loads(html.unescape(re.search(r'<pre id="seen">(.*?)</pre>', dom, re.S)[1]))

    sweep = load_sweep(sweep_folder)
    fit = fit_steps(SIZES, [designed_steps(b, 0) for b in SIZES])  # the designed steps to result
    assert seen["b_crit"] == size(fit.b_crit) and seen["headline"] == f"critical batch size: {size(fit.b_crit)}"
    assert seen["sentence"] == headline(sweep, analyze(sweep))
    assert float(seen["b_crit"]) == pytest.approx(B_CRIT, rel=0.1)

    header, *rows = seen["steps"]
    assert header == [
        "batch_size",
        "steps",
        "examples",
        "rounds",
        "resolution",
        "learning_rate",
        "momentum",
        "trial_id",
    ]
    assert [(int(r[0]), int(r[1]), int(r[2])) for r in rows] == [
        (b, designed_steps(b, 0), b * designed_steps(b, 0)) for b in SIZES
    ]

    header, *rows = seen["noise"]
    assert header[0] == "batch_size" and "B_simple at the target (best trial)" in header
    at_target = [float(r[header.index("B_simple at the target (best trial)")]) for r in rows]
    np.testing.assert_allclose(at_target, [20 + designed_steps(b, 0) / 10 for b in SIZES], rtol=1e-3)

    assert seen["trials"] == [["batch_size", "complete", "diverged"]] + [[str(b), "3", "1"] for b in SIZES]
    assert 'workload = "linear_regression"' in seen["spec"]

    names = [alt for alt, *_ in seen["images"]]
    assert names == ["steps", "steps_normalised", "metaparameters", "feasibility", "budgets", "pareto", "noise_scale"]
    assert all(complete and width > 400 and height > 300 for _, complete, width, height in seen["images"])
    edges = edge_text(sweep, edge_hits(sweep, analyze(sweep)))
    assert "B = 4: learning_rate at the smallest value tried" in edges  # the designed best is the first point
    assert seen["warnings"] == [f"warning: {w}" for w in fit.warnings] + [edges]


def test_report_screenshot(report, tmp_path):
    """What a reader sees first: the page renders to a non-blank picture."""
    _chromium(report, tmp_path, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1200,900")
    pixels = matplotlib.image.imread(tmp_path / "shot.png")
    assert pixels.shape[:2] == (900, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and figures, not an empty page


def test_analyze_json(sweep_folder, capsys):
    assert main(["analyze", str(sweep_folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["target"], out["direction"]) == (TARGET, "min")
    assert [(r["batch_size"], r["steps"]) for r in out["rows"]] == [(b, designed_steps(b, 0)) for b in SIZES]
    assert out["fit"]["b_crit"] == pytest.approx(B_CRIT, rel=0.1)
    assert len(out["fit"]["b_crit_ci"]) == 2 and "b_crit_overhead20" in out["fit"]


def test_analyze_text_and_other_target(sweep_folder, capsys):
    assert main(["analyze", str(sweep_folder), "--target", "0.2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("steps to result (squared_error < 0.2, linear_regression, nesterov; 24 trials):")
    sweep = load_sweep(sweep_folder)
    rows = sweep.measurements.merge(sweep.trials[["trial_id", "status"]])
    crossed = rows[(rows["status"] == "complete") & (rows["batch_size"] == 4) & (rows["val_metric"] < 0.2)]
    assert int(re.search(r"^\s+4\s+(\d+)", out, re.M)[1]) == crossed["step"].min()
    assert "B_crit = E_min / S_min" in out


def test_analyze_ends_with_the_headline_and_the_other_definitions(sweep_folder, capsys):
    """The last lines: the fit's B_crit with its interval and what it means,
    then each other definition with a few words; no None anywhere."""
    assert main(["analyze", str(sweep_folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    fit = analyze(load_sweep(sweep_folder)).fit
    (lo, hi), (olo, ohi) = fit.b_crit_ci, fit.b_crit_overhead_ci
    assert lines[-4] == (
        f"critical batch size: {size(fit.b_crit)} (90% interval {size(lo)} .. {size(hi)}): "
        f"training at B = {size(fit.b_crit)} takes twice the minimal steps and twice the minimal "
        "examples; beyond it, larger batches buy few steps (McCandlish et al. 2018)"
    )
    assert float(size(fit.b_crit)) == pytest.approx(fit.b_crit, abs=0.5)
    assert lines[-3].startswith(
        f"  20% step-overhead B_crit (Zhang et al. 2024): {size(fit.b_crit_overhead)} "
        f"(90% interval {size(olo)} .. {size(ohi)}): there steps are 20% above"
    )
    assert lines[-2].startswith(
        f"  perfect scaling ends at B = {size(fit.perfect_scaling_end)} (Shallue et al. 2019): up to it"
    )
    assert lines[-1] == (
        "  maximal useful batch size: not reached (Shallue et al. 2019): steps still fall at "
        "the largest batch size, 128"
    )
    assert "None" not in "\n".join(lines)


def test_a_sweep_where_no_trial_reached_the_target_says_the_best_value(sweep_folder, capsys):
    assert main(["analyze", str(sweep_folder), "--target", "0.001"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    sweep = load_sweep(sweep_folder)
    complete = sweep.measurements.merge(sweep.trials[sweep.trials["status"] == "complete"][["trial_id"]])
    best = complete.loc[complete["val_metric"].idxmin()]
    assert last == (
        f"critical batch size: n/a: no trial reached squared_error < 0.001; the best squared_error "
        f"reached was {best['val_metric']:.4g} at B = {best['batch_size']} (step {best['step']}, "
        f"trial {best['trial_id']})"
    )


def test_commands_reject_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    for command in ("analyze", "plot", "report"):
        assert main([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cbs: error: ") and "not a sweep folder" in err and err.count("\n") == 1


def test_plot_several_sweeps_with_comparison(tmp_path, capsys):
    first = make_sweep(tmp_path / "first", batch_sizes=(8, 16, 32, 64))
    other = make_sweep(tmp_path / "other", gns=False, batch_sizes=(8, 16, 32))
    out = tmp_path / "figs"
    assert main(["plot", str(first), str(other), "--out", str(out), "--targets", "0.2"]) == 0
    printed = capsys.readouterr().out.split()
    names = ["steps", "steps_normalised", "metaparameters", "feasibility", "budgets", "pareto"]
    assert printed == [
        str(out / sweep / f"{name}.{ext}")
        for sweep, extra in (("first", ["noise_scale"]), ("other", []))
        for name in names + extra
        for ext in ("png", "pdf")
    ] + [str(out / f"{name}.{ext}") for name in ("comparison", "comparison_absolute") for ext in ("png", "pdf")]
    height, width, _ = matplotlib.image.imread(out / "comparison.png").shape
    assert width > 500 and height > 400
    assert all(Path(p).stat().st_size > 1000 for p in printed)
    assert main(["plot", str(other), "--targets", "x"]) == 2
    assert "--targets: expected comma-separated numbers" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, kept",
    [
        ("--max-steps", lambda b, budget: designed_steps(b, 0) <= budget),
        ("--max-examples", lambda b, budget: b * designed_steps(b, 0) <= budget),
    ],
)
def test_analyze_within_a_budget(sweep_folder, capsys, option, kept):
    """A budget keeps the batch sizes whose best trial crossed within it, at the same steps
    (Shallue et al. 2019, Sec. 3.2), and the fit uses only those."""
    steps = {b: designed_steps(b, 0) for b in SIZES}
    budget = sorted(steps.values())[2] if option == "--max-steps" else sorted(b * s for b, s in steps.items())[3]
    expected = [(b, s) for b, s in steps.items() if kept(b, budget)]
    assert 2 < len(expected) < len(SIZES)
    assert main(["analyze", str(sweep_folder), "--json", option, str(budget)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["batch_size"], r["steps"]) for r in out["rows"]] == expected
    key = "step_budget" if option == "--max-steps" else "example_budget"
    assert out[key] == budget and out[{"step_budget": "example_budget"}.get(key, "step_budget")] is None
    fit = fit_steps(*zip(*expected))
    assert out["fit"]["b_crit"] == pytest.approx(fit.b_crit) and out["fit"]["batch_sizes"] == [b for b, _ in expected]

    assert main(["analyze", str(sweep_folder), option, str(budget)]) == 0
    text = capsys.readouterr().out
    unit = "steps" if option == "--max-steps" else "examples"
    assert text.startswith(f"steps to result (squared_error < {TARGET:g} within {budget:,} {unit}, ")
    assert main(["analyze", str(sweep_folder), option, "0"]) == 2
    assert capsys.readouterr().err == f"cbs: error: {option} must be >= 1, got 0; allowed: integers >= 1\n"


def test_plot_within_a_step_budget(sweep_folder, tmp_path, capsys):
    """The steps-to-result figure shows only the batch sizes that crossed within the budget."""
    from analysis.sweep_figures import sweep_figures

    budget = designed_steps(SIZES[2], 0)
    sweep = load_sweep(sweep_folder)
    figures = {name: fig for name, _, fig in sweep_figures(sweep, analyze_sweep(sweep, [TARGET], step_budget=budget))}
    measured = [line for line in figures["steps"].axes[0].lines if line.get_marker() == "o"]
    assert [list(line.get_xdata()) for line in measured] == [list(SIZES[2:])]
    assert [list(line.get_ydata()) for line in measured] == [[designed_steps(b, 0) for b in SIZES[2:]]]
    assert main(["plot", str(sweep_folder), "--out", str(tmp_path), "--max-steps", str(budget)]) == 0
    assert str(tmp_path / "steps.png") in capsys.readouterr().out.split()
    assert main(["plot", str(sweep_folder), "--max-examples", "-3"]) == 2
    assert capsys.readouterr().err.startswith("cbs: error: --max-examples must be >= 1")
