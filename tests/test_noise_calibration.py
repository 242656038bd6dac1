"""The noise scale's calibration to the swept critical batch size
(analysis.noise_calibration, `cbs calibrate`, `cbs gns`): the matched point a
study gives, the ratio fit against independent computations and its
coverage, the committed calibration re-derived from its committed points,
and the prediction `cbs gns` prints."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.noise_calibration import (
    FAMILIES,
    PACKAGED,
    POINT_COLUMNS,
    fit_calibration,
    load_calibration,
    matched_point,
    middle_batch_size,
    predict,
)
from harness.cli import main

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
COMMITTED = EXPERIMENTS / "mccandlish2018" / "results" / "noise_calibration"
SGD_STUDY = EXPERIMENTS / "shallue2019" / "results" / "shallue_cpu_mnist_fc1024_sgd"


def _points(ratios_by_family, b_noise=100.0):
    rows = []
    for family, ratios in ratios_by_family.items():
        for i, r in enumerate(ratios):
            row = dict.fromkeys(POINT_COLUMNS, math.nan)
            row.update(study=f"{family}{i}", family=family, b_crit=r * b_noise, b_noise=b_noise, b_simple=b_noise * 4)
            rows.append(row)
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


@pytest.mark.parametrize(
    "sizes, middle",
    [([4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192], 128), ([16, 64, 256, 1024], 64), ([256], 256)],
)
def test_the_middle_batch_size_is_the_nearest_to_the_geometric_middle(sizes, middle):
    assert middle_batch_size(sizes) == middle


def test_the_matched_point_of_a_committed_study_is_its_best_trial_at_a_middle_batch_size():
    """The MNIST FC-1024 SGD study's point is the trial of its committed
    `cbs gns` run (experiments/shallue2019/README.md): B = 128, learning rate
    0.728, 363 steps to 3% error."""
    point = matched_point(SGD_STUDY)
    committed = json.loads((SGD_STUDY / "analysis.json").read_text())
    assert (point.config.batch_size, point.steps) == (128, 363)
    assert point.config.learning_rate == pytest.approx(0.7283308189466802)
    assert point.b_crit == pytest.approx(committed["fit"]["b_crit"])
    assert point.b_crit_ci == pytest.approx(tuple(committed["fit"]["b_crit_ci"]))


def test_a_study_with_b_crit_only_a_bound_cannot_calibrate():
    folder = EXPERIMENTS / "nado2021" / "results" / "nado_cpu_mnist_fc1024_adam"  # two batch sizes
    with pytest.raises(Exception, match="measured only as a bound or not at all; it cannot calibrate"):
        matched_point(folder)


def test_the_ratio_is_the_geometric_mean_with_a_t_prediction_interval():
    ratios = [0.7, 1.9, 1.2, 3.0]
    fit = fit_calibration(_points({"sgd": ratios}))["sgd"]["b_noise"]
    log_r = np.log(ratios)
    assert fit["ratio"] == pytest.approx(stats.gmean(ratios))
    low, high = stats.t.interval(0.9, 3, loc=log_r.mean(), scale=log_r.std(ddof=1) * math.sqrt(1 + 1 / 4))
    assert fit["spread"] == pytest.approx([math.exp(low), math.exp(high)])
    assert fit["ratio_ci"][0] < fit["ratio"] < fit["ratio_ci"][1]
    assert fit["n"] == 4 and fit["studies"] == ["sgd0", "sgd1", "sgd2", "sgd3"]
    assert fit_calibration(_points({"sgd": ratios}))["sgd"]["b_simple"]["ratio"] == pytest.approx(fit["ratio"] / 4)


def test_the_spread_covers_a_new_studys_ratio_about_nine_times_in_ten():
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(400):
        log_r = rng.normal(math.log(3), 0.5, 6)
        fit = fit_calibration(_points({"momentum": np.exp(log_r[:5])}), n_bootstrap=10)["momentum"]["b_noise"]
        covered.append(fit["spread"][0] <= math.exp(log_r[5]) <= fit["spread"][1])
    assert 0.86 <= np.mean(covered) <= 0.94


def test_one_study_gives_a_ratio_but_no_spread():
    fit = fit_calibration(_points({"adaptive": [2.0]}))["adaptive"]["b_noise"]
    assert fit["ratio"] == pytest.approx(2.0) and fit["spread"] is None


def test_gns_predicts_with_the_calibration_of_the_optimizers_family():
    calibration = fit_calibration(_points({"momentum": [2.0, 4.0, 3.0], "sgd": [1.0, 1.5]}))
    offline = {"b_noise": {"value": 100.0}, "b_simple": {"value": 400.0}}
    c = predict(calibration, "nesterov", offline)
    assert FAMILIES["nesterov"] == FAMILIES["momentum"] == FAMILIES["lars"] == "momentum"
    assert (c["family"], c["basis"], c["n"]) == ("momentum", "b_noise", 3)
    assert c["value"] == pytest.approx(100 * stats.gmean([2.0, 4.0, 3.0]))
    fit = calibration["momentum"]["b_noise"]
    assert (c["low"], c["high"]) == pytest.approx((100 * fit["spread"][0], 100 * fit["spread"][1]))
    hessian_free = predict(calibration, "sgd", {"b_simple": {"value": 400.0}})
    assert hessian_free["basis"] == "b_simple"
    assert hessian_free["value"] == pytest.approx(400 * calibration["sgd"]["b_simple"]["ratio"])
    assert predict(calibration, "adam", offline) is None  # no adaptive study calibrated
    assert predict(calibration, "sgd", None) is None  # --num-samples 0


def test_the_committed_calibration_rederives_from_its_points_and_is_the_one_shipped():
    points = pd.read_csv(COMMITTED / "points.csv")
    committed = json.loads((COMMITTED / "calibration.json").read_text())
    derived = json.loads(json.dumps(fit_calibration(points)))
    assert derived.keys() == committed.keys()
    for family, fits in committed.items():
        for basis, fit in fits.items():
            now = derived[family][basis]
            assert (now["n"], now["studies"]) == (fit["n"], fit["studies"])
            for key in ("ratio", "ratio_ci", "spread", "sd_log"):
                assert now[key] == pytest.approx(fit[key], rel=1e-9), (family, basis, key)
    assert load_calibration() == committed == json.loads(PACKAGED.read_text())
    assert set(points["study"]) == {s for fits in committed.values() for s in fits["b_noise"]["studies"]}


def test_the_committed_points_are_their_studies_matched_points():
    points = pd.read_csv(COMMITTED / "points.csv")
    for row in points.itertuples():
        (folder,) = EXPERIMENTS.glob(f"*/results/{row.study}")
        point = matched_point(folder)
        assert (point.trial_id, point.steps, point.config.batch_size) == (row.trial_id, row.steps, row.batch_size)
        assert point.b_crit == pytest.approx(row.b_crit)


def test_cbs_calibrate_measures_a_study_keeps_it_on_a_rerun_and_skips_what_cannot_calibrate(tmp_path, capsys):
    """A one-step window with 32 gradients: the replayed best B = 128 trial of
    the MNIST FC-1024 SGD study at step 363."""
    bound_only = EXPERIMENTS / "nado2021" / "results" / "nado_cpu_mnist_fc1024_adam"
    args = ["calibrate", str(SGD_STUDY), str(bound_only), "--out", str(tmp_path), "--window", "1"]
    assert main([*args, "--num-samples", "32"]) == 0
    out = capsys.readouterr().out
    assert "shallue_cpu_mnist_fc1024_sgd: B = 128, steps 363..363" in out
    assert "skipped: " in out and "nado_cpu_mnist_fc1024_adam" in out
    (row,) = pd.read_csv(tmp_path / "points.csv").to_dict("records")
    assert (row["family"], row["batch_size"], row["steps"]) == ("sgd", 128, 363)
    assert 0 < row["b_noise_lo"] <= row["b_noise"] <= row["b_noise_hi"]
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert calibration["sgd"]["b_noise"]["ratio"] == pytest.approx(row["b_crit"] / row["b_noise"])
    assert (tmp_path / "calibration.png").stat().st_size > 0
    assert main(args) == 0
    assert f"shallue_cpu_mnist_fc1024_sgd: kept from {tmp_path / 'points.csv'}" in capsys.readouterr().out


def test_a_bad_calibration_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "calibration.json"
    bad.write_text('{"rmsprop": {}}')
    args = ["gns", "--workload", "linear_regression", "--batch-size", "64", "--learning-rate", "0.1"]
    assert main([*args, "--calibration", str(bad)]) == 2
    assert "unknown families rmsprop; allowed: sgd, momentum, adaptive" in capsys.readouterr().err
    assert main([*args, "--calibration", str(tmp_path / "none.json")]) == 2
    assert "no such calibration file" in capsys.readouterr().err


def test_cbs_gns_prints_the_calibrated_prediction_and_its_family(capsys, tmp_path):
    calibration = load_calibration()
    args = ["gns", "--workload", "linear_regression", "--batch-size", "64", "--max-steps", "20", "--window", "1"]
    assert main([*args, "--optimizer", "sgd", "--learning-rate", "0.02", "--num-samples", "32"]) == 0
    out = capsys.readouterr().out
    n = calibration["sgd"]["b_noise"]["n"]
    assert f"the ratio calibrated on {n} swept studies of the sgd family" in out
    assert "uncalibrated: B_crit ~ " in out
    only_sgd = tmp_path / "calibration.json"
    only_sgd.write_text(json.dumps({"sgd": calibration["sgd"]}))
    adam = [*args, "--optimizer", "adam", "--learning-rate", "0.001"]
    assert main([*adam, "--num-samples", "32", "--calibration", str(only_sgd)]) == 0
    assert "no calibration for adam (no swept study of its family, adaptive, in the calibration)" in (
        capsys.readouterr().out
    )
    assert main([*adam, "--num-samples", "0"]) == 0
    assert "no offline estimate to calibrate (--num-samples 0)" in capsys.readouterr().out
