"""The committed study results (experiments/results/<study>/: spec, metadata
and one record.json per trial, no checkpoints) still analyse to the committed
numbers (analysis.json, written by `cbs analyze FOLDER --json` when the study
was committed). No training: this guards the analysis against drift."""
import json
from pathlib import Path

import pytest

from harness.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "experiments" / "results"
STUDIES = sorted(p.parent for p in RESULTS.glob("*/analysis.json"))


def test_there_are_committed_sweep_studies():
    assert STUDIES, f"no study with analysis.json under {RESULTS}"


@pytest.mark.parametrize("folder", STUDIES, ids=lambda p: p.name)
def test_a_committed_study_analyses_to_its_committed_numbers(folder, capsys):
    committed = json.loads((folder / "analysis.json").read_text())
    assert main(["analyze", str(folder), "--json"]) == 0
    now = json.loads(capsys.readouterr().out)
    assert [(r["batch_size"], r["steps"], r["trial_id"]) for r in now["rows"]] == \
        [(r["batch_size"], r["steps"], r["trial_id"]) for r in committed["rows"]]
    assert now["rows"] == committed["rows"]
    fit, expected = now["fit"], committed["fit"]
    assert fit.keys() == expected.keys()
    for key, value in expected.items():  # numbers within 1e-6: another BLAS or SciPy may round differently
        numbers = isinstance(value, float) or (isinstance(value, list) and value
                                               and all(isinstance(v, (int, float)) for v in value))
        assert fit[key] == (pytest.approx(value, rel=1e-6) if numbers else value), key
