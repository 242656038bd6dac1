"""The committed study results (experiments/<family>/results/<study>/: spec, metadata
and one record.json per trial, no checkpoints) still analyse to the committed
numbers (analysis.json, written by `cbs analyze FOLDER --json` when the study
was committed). No training: this guards the analysis against drift. Their
`cbs report` pages (report.html), opened in headless Chromium, show those
numbers."""

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from test_report import _chromium

from analysis.text import size
from harness.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "experiments"
STUDIES = sorted(p.parent for p in RESULTS.glob("*/results/*/analysis.json"))


def test_there_are_committed_sweep_studies():
    assert STUDIES, f"no study with analysis.json under {RESULTS}"


@pytest.mark.parametrize("folder", STUDIES, ids=lambda p: p.name)
def test_a_committed_study_analyses_to_its_committed_numbers(folder, capsys):
    committed = json.loads((folder / "analysis.json").read_text())
    assert main(["analyze", str(folder), "--json"]) == 0
    now = json.loads(capsys.readouterr().out)
    assert [(r["batch_size"], r["steps"], r["trial_id"]) for r in now["rows"]] == [
        (r["batch_size"], r["steps"], r["trial_id"]) for r in committed["rows"]
    ]
    assert now["rows"] == committed["rows"]
    assert now["edge_hits"] == committed["edge_hits"]
    fit, expected = now["fit"], committed["fit"]
    assert fit.keys() == expected.keys()
    for key, value in expected.items():  # numbers within 1e-6: another BLAS or SciPy may round differently
        numbers = isinstance(value, float) or (
            isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)
        )
        assert fit[key] == (pytest.approx(value, rel=1e-6) if numbers else value), key


REPORT_PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "seen";
  const b = document.getElementById("b-crit");
  out.textContent = JSON.stringify({b_crit: b ? b.innerText : null,
    steps: [...document.querySelectorAll("#steps-table tr, #local-cbs-table tr")].map(
      (tr) => [...tr.children].map((c) => c.innerText.trim())),
    images: [...document.images].map((i) => [i.alt, i.complete, i.naturalWidth])});
  document.body.appendChild(out);
});
</script>"""
REPORTS = sorted(RESULTS.glob("*/results/*/report.html"))


def test_every_study_has_a_committed_report():
    assert {p.parent for p in REPORTS} >= set(STUDIES) and len(REPORTS) > len(STUDIES)  # local-cbs too


@pytest.mark.parametrize("report", REPORTS, ids=lambda p: p.parent.name)
def test_a_committed_report_shows_the_committed_numbers_in_chromium(report, tmp_path):
    """The page a reader opens shows the study's numbers and every figure."""
    page = tmp_path / "probed.html"
    page.write_text(report.read_text().replace("</body>", REPORT_PROBE + "</body>"))
    dom = _chromium(page, tmp_path, "--dump-dom", "--virtual-time-budget=10000")
    seen = json.loads(html.unescape(re.search(r'<pre id="seen">(.*?)</pre>', dom, re.S)[1]))
    assert seen["images"] and all(complete and width > 400 for _, complete, width in seen["images"])
    header, *rows = seen["steps"]
    if (report.parent / "analysis.json").exists():
        committed = json.loads((report.parent / "analysis.json").read_text())
        fit = committed["fit"]
        bound = {"lower": ">= ", "upper": "<= "}.get(fit["b_crit_bound"])
        assert seen["b_crit"] == (bound + size(fit["b_crit_bound_value"]) if bound else size(fit["b_crit"]))  # or n/a
        assert [(int(r[0]), int(r[1])) for r in rows] == [(r["batch_size"], r["steps"]) for r in committed["rows"]]
    else:
        table = pd.read_csv(report.parent / "local_cbs.csv")
        assert [float(r[header.index("local_cbs")]) for r in rows] == pytest.approx(table["local_cbs"], rel=1e-3)


LOCAL_CBS = sorted(p.parent for p in RESULTS.glob("*/results/*/local_cbs.csv"))


@pytest.mark.parametrize("folder", LOCAL_CBS, ids=lambda p: p.name)
def test_a_committed_local_cbs_study_analyses_to_its_committed_table(folder):
    """The branch records and the offline noise scale give the committed table."""
    from analysis.local_cbs import load_local_cbs

    committed = pd.read_csv(folder / "local_cbs.csv")
    now = load_local_cbs(folder).table
    assert list(now.columns) == list(committed.columns)
    pd.testing.assert_frame_equal(now.reset_index(drop=True), committed, check_dtype=False, rtol=1e-6)


def test_a_batch_size_that_never_reached_the_target_says_how_far_it_was_evaluated():
    """The CPU Simple CNN at B = 512: no trial reached 1% error within the
    150,000-example budget, i.e. ceil(150000 / 512) = 293 steps; within a
    100,000-example budget the last evaluation is the last one at or below
    100000 / 512 = 195 steps."""
    from analysis import load_sweep
    from analysis.curves import analyze
    from analysis.text import unreached

    sweep = load_sweep(RESULTS / "shallue2019/results/shallue_cpu_mnist_simple_cnn_nesterov")
    assert (
        unreached(sweep, analyze(sweep))
        == "no trial reached the target at batch size(s) 512 (evaluated up to step 293)"
    )
    at_512 = sweep.measurements[sweep.measurements["batch_size"] == 512]["step"]
    last = max(s for s in at_512 if s <= 100_000 // 512)
    assert (
        unreached(sweep, analyze(sweep, example_budget=100_000))
        == f"no trial reached the target at batch size(s) 512 (evaluated up to step {last})"
    )


SCHEDULE_STUDIES = sorted(p.parent for p in RESULTS.glob("*/results/*/arms.csv"))


@pytest.mark.parametrize("folder", SCHEDULE_STUDIES, ids=lambda p: p.name)
def test_a_committed_schedule_study_analyses_to_its_committed_tables(folder, tmp_path):
    """The arms' records give the committed per-trial and per-arm tables (`cbs schedules`)."""
    call = json.loads((folder / "schedules.json").read_text())
    options = [*(["--target", str(call["target"])] if call["target"] else [])]
    options += ["--reference", call["reference"]] if call["reference"] else []
    assert main(["schedules", *(str(folder / arm) for arm in call["arms"]), *options, "--out", str(tmp_path)]) == 0
    for table in ("runs.csv", "arms.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / table), pd.read_csv(folder / table), rtol=1e-6)
