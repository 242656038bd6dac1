"""Power laws across groups (analysis.scaling, `cbs scaling`): coverage of the
bootstrap intervals on simulated laws, a published table, bad input, and the
committed scaling results of experiments/shallue2019/results/scaling."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.scaling import fit_power_law
from analysis.scaling_study import fit_columns, read_table, steps_groups_table, sweeps_table
from analysis.tables import load_sweep
from analysis.target_ladder import fit_target_law, target_table
from harness.cli import main
from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "shallue2019" / "results"
ZHANG = ROOT / "tests" / "data" / "zhang2024_chinchilla_steps.csv"


def test_a_noiseless_law_is_recovered_exactly():
    x = np.array([10.0, 100.0, 1000.0, 1e4])
    fit = fit_power_law(x, 3 * x**-0.7)
    assert fit.exponent == pytest.approx(-0.7) and fit.prefactor == pytest.approx(3.0)
    assert fit.predict([50.0])[0] == pytest.approx(3 * 50**-0.7)


@pytest.mark.parametrize("n", [6, 12])
def test_the_90_percent_interval_covers_the_truth_about_90_percent_of_the_time(n):
    rng = np.random.default_rng(n)
    x, hits = np.geomspace(10, 1e4, n), np.zeros(2)
    for repeat in range(200):
        fit = fit_power_law(x, 3 * x**0.5 * np.exp(rng.normal(0, 0.2, n)), n_bootstrap=500, seed=repeat)
        hits += [fit.exponent_ci[0] <= 0.5 <= fit.exponent_ci[1], fit.prefactor_ci[0] <= 3 <= fit.prefactor_ci[1]]
    assert all(0.83 <= h / 200 <= 0.96 for h in hits), hits / 200


def test_zhang_2024_steps_table_gives_their_fits_and_an_exponent():
    """Their plots/chinchilla.ipynb fits log S = log(a + b / B) per model size;
    ours is the same least squares, so S_min = a and E_min = b agree."""
    groups = steps_groups_table(read_table(ZHANG), "model_size")
    smallest = groups.iloc[0]
    assert smallest["s_min"] == pytest.approx(1293.8269, rel=1e-4)  # their printed a for 85M
    assert smallest["e_min"] == pytest.approx(2834258.09, rel=1e-4)  # their printed b
    fit = fit_columns(groups, "model_size", ["b_crit"])["b_crit"]
    assert fit.exponent == pytest.approx(0.619, abs=0.001)
    assert fit.exponent_ci[0] > 0.3 and fit.exponent_ci[1] < 0.9


@pytest.mark.parametrize(
    "table, args, expected",
    [
        ("width,b_crit\n1,2\n2,4\n", ["--x", "width"], "2 point(s); allowed: at least 3"),
        ("width,b_crit\n1,2\n2,4\n4,8\n", ["--x", "depth"], "lacks column(s) depth"),
        ("width,b_crit\n1,2\n2,-4\n4,8\n", ["--x", "width", "--y", "b_crit"], "finite values > 0, got -4"),
        ("width,b_crit\n0,2\n2,4\n4,8\n", ["--x", "width", "--y", "b_crit"], "finite values > 0, got 0"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, capsys, table, args, expected):
    (tmp_path / "t.csv").write_text(table)
    assert main(["scaling", str(tmp_path / "t.csv"), *args, "--out", str(tmp_path / "out" / "fit")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cbs: error:") and expected in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_table_fits_and_figure(tmp_path, capsys):
    assert main(["scaling", str(ZHANG), "--x", "model_size", "--y", "b_crit", "--out", str(tmp_path / "z")]) == 0
    assert "b_crit = 146.1 * model_size^0.619" in capsys.readouterr().out
    assert json.loads((tmp_path / "z.json").read_text())["fits"]["b_crit"]["exponent"] == pytest.approx(0.619, 1e-3)
    assert len(pd.read_csv(tmp_path / "z.csv")) == 5 and (tmp_path / "z_b_crit.png").stat().st_size > 0


def test_committed_model_size_scaling_is_what_the_records_give():
    committed = json.loads((RESULTS / "scaling" / "fc_x3_width.json").read_text())["fits"]["b_crit"]
    pairs = [(RESULTS / f"shallue_cpu_mnist_fc{w}x3_nesterov", w) for w in (128, 256, 512, 1024)]
    fit = fit_columns(sweeps_table(pairs, "width"), "width", ["b_crit"])["b_crit"]
    assert fit.to_dict()["exponent"] == pytest.approx(committed["exponent"], rel=1e-9)
    assert fit.to_dict()["exponent_ci"] == pytest.approx(committed["exponent_ci"], rel=1e-9)
    assert fit.to_dict()["y"] == pytest.approx(committed["y"], rel=1e-9)


def test_committed_target_scaling_is_what_the_records_give():
    committed = json.loads((RESULTS / "scaling" / "fc1024_nesterov_target.json").read_text())["target_law"]
    table = target_table(load_sweep(RESULTS / "shallue_cpu_mnist_fc1024_nesterov"))
    law = fit_target_law(table).to_dict()
    for key in ("b_star", "b_star_ci", "alpha_b", "alpha_b_ci"):
        assert law[key] == pytest.approx(committed[key], rel=1e-9), key
    committed_table = pd.read_csv(RESULTS / "scaling" / "fc1024_nesterov_target.csv")
    assert table["b_crit"].to_numpy() == pytest.approx(committed_table["b_crit"].to_numpy(), rel=1e-5)


def test_too_few_points_is_a_user_error():
    with pytest.raises(UserError, match="at least 3"):
        fit_power_law([1, 2], [1, 2])
