"""`cbs compare`: several committed studies side by side (analysis.compare).
Every number in a row is the one `cbs analyze --json` committed for that
study (analysis.json); the one-sided bound follows from a closed form."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.compare import bound_text
from analysis.fit import fit_steps
from harness.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "experiments" / "shallue2019" / "results"
STUDIES = [
    RESULTS / name
    for name in (
        "shallue_cpu_mnist_fc1024_sgd",
        "shallue_cpu_mnist_fc1024_nesterov",
        "shallue_cpu_mnist_fc1024x3_nesterov",
    )
]


def compare(capsys, *args):
    assert main(["compare", *map(str, args), "--csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out))


def test_each_row_carries_its_studys_committed_analysis(capsys):
    table = compare(capsys, *STUDIES)
    # FC-1024x3 was swept from B = 64 only: the shared batch sizes are 64 .. 4096
    assert [c for c in table.columns if c.startswith("steps@")] == ["steps@64", "steps@256", "steps@1024", "steps@4096"]
    for (_, row), folder in zip(table.iterrows(), STUDIES):
        committed = json.loads((folder / "analysis.json").read_text())
        fit, steps = committed["fit"], {r["batch_size"]: r["steps"] for r in committed["rows"]}
        assert row.study == folder.name and row.target == committed["target"]
        assert [row[f"steps@{b}"] for b in (64, 256, 1024, 4096)] == [steps[b] for b in (64, 256, 1024, 4096)]
        assert (row.b_crit, row.b_crit_lo, row.b_crit_hi) == pytest.approx((fit["b_crit"], *fit["b_crit_ci"]), rel=1e-6)
        assert (row.perfect_scaling_end, row.max_useful_batch_size) == (
            fit["perfect_scaling_end"],
            fit["max_useful_batch_size"],
        )
        assert row.edge_hits == len(committed["edge_hits"])
    assert list(table["trials"]) == [24, 24, 16]


def test_steps_at_a_batch_size_a_study_lacks_are_empty(capsys):
    table = compare(capsys, STUDIES[0], STUDIES[2], "--at", "4,64")
    assert np.isnan(table.loc[1, "steps@4"]) and table.loc[0, "steps@4"] == 6250
    assert list(table["steps@64"]) == [725, 725]


def test_the_text_table_shows_a_cell_without_a_value_as_a_dash(capsys):
    assert main(["compare", str(STUDIES[0]), str(STUDIES[2]), "--at", "4,64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, row = lines[0].split(), lines[2].split()  # FC-1024x3: no steps@4, no one-sided bound
    assert "None" not in " ".join(lines) and "NaN" not in " ".join(lines)
    assert row[header.index("steps@4")] == "-" and row[header.index("b_crit_bound")] == "-"
    assert row[header.index("steps@64")] == "725"


def test_only_perfect_scaling_gives_a_lower_bound():
    # S(B) = 64000 / B exactly: perfect scaling everywhere, so B_crit >= the largest B measured
    fit = fit_steps(np.array([4.0, 16, 64, 256]), 64000 / np.array([4.0, 16, 64, 256]))
    assert bound_text(fit) == ">= 256" and np.isnan(fit.b_crit)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--at", "16,x"], "--at must be comma-separated positive integers, got '16,x'"),
        (["--at", "0"], "--at must be comma-separated positive integers, got '0'"),
    ],
)
def test_a_bad_batch_size_list_is_named(capsys, args, message):
    assert main(["compare", str(STUDIES[0]), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_a_sweep_is_named(tmp_path, capsys):
    assert main(["compare", str(STUDIES[0]), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a sweep folder" in err and "Traceback" not in err
