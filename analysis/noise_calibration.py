"""The gradient noise scale as a predictor of the swept critical batch size,
calibrated per optimizer family.

McCandlish et al. (2018, Sec. 2.2, Eq. 2.8 and Fig. 4) predict B_crit ~ B_noise
= tr(H Sigma) / (G^T H G), with B_simple = tr(Sigma) / |G|^2 (Eq. 2.9) its
Hessian-free proxy, for plain SGD with the optimal step size; they find the
prediction holds within a workload-dependent factor. With momentum or an
adaptive optimizer nothing in the derivation fixes that factor, and our
sweeps measure it far from 1. So each swept study gives one calibration
point: its B_crit (analysis.fit, McCandlish et al. Eq. 2.11) against the
offline B_noise and B_simple of one matched trial (`matched_point`: the best
trial at the middle measured batch size, over the last steps before it
reaches the target; harness.engine.noise_scale_study.windowed_noise_scale).

Per family (`FAMILIES`) and basis (B_noise, B_simple), the calibration is the
ratio r = B_crit / B of a study, fitted as the geometric mean over the
family's studies (`fit_calibration`): a case-resampling bootstrap interval
of the mean (resample the studies), and the 90% prediction interval of a
new study's ratio from Student's t, mean +- t_{n-1} sd sqrt(1 + 1/n) on
log r (the spread a user should expect; it needs n >= 2). `cbs gns` reports
r B_noise with that spread (`predict`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.curves import analyze
from analysis.tables import load_sweep
from harness.engine.optimizers import MOMENTUM_OPTIMIZERS, OPTIMIZERS
from harness.engine.trial import TrialConfig
from harness.errors import UserError
from harness.finite import finite_or_none
from harness.sweep.store import Store, parse_record

# The optimizer families a calibration applies to: plain SGD, the optimizers
# with a momentum metaparameter, and the adaptive ones (per-coordinate steps).
FAMILIES = {
    name: "sgd" if name == "sgd" else "momentum" if name in MOMENTUM_OPTIMIZERS else "adaptive" for name in OPTIMIZERS
}
BASES = ("b_noise", "b_simple")
CONFIDENCE = 0.9
# The calibration `cbs gns` applies: experiments/mccandlish2018's, shipped with the package.
PACKAGED = Path(__file__).with_name("noise_calibration.json")
POINT_COLUMNS = (
    "study",
    "workload",
    "optimizer",
    "family",
    "momentum",
    "batch_size",
    "trial_id",
    "steps",
    "b_crit",
    "b_crit_lo",
    "b_crit_hi",
    "b_noise",
    "b_noise_lo",
    "b_noise_hi",
    "b_simple",
    "b_simple_lo",
    "b_simple_hi",
)


@dataclass
class MatchedPoint:
    """A sweep's calibration point before its noise scale is measured."""

    study: str
    trial_id: str
    config: TrialConfig  # the trial's own, to be replayed
    steps: int  # its steps to result: the noise scale is measured up to this step
    b_crit: float
    b_crit_ci: tuple[float, float]


def middle_batch_size(batch_sizes) -> int:
    """The measured batch size nearest (in log) the geometric middle of the
    smallest and the largest, the smaller on a tie: 128 of 4 .. 8192."""
    sizes = sorted(int(b) for b in batch_sizes)
    middle = (math.log2(sizes[0]) + math.log2(sizes[-1])) / 2
    return min(sizes, key=lambda b: (abs(math.log2(b) - middle), b))


def matched_point(folder) -> MatchedPoint:
    """The best trial at the middle batch size of a swept study, with the
    study's B_crit and interval at the spec's target, or UserError where the
    study cannot calibrate: no two-regime fit (B_crit only a bound), or an
    algorithm other than mini-batch SGD (the noise scale of one model)."""
    sweep = load_sweep(folder)
    curve = analyze(sweep)
    fit = curve.fit
    lo, hi = fit.b_crit_ci
    if fit.b_crit_bound is not None or not (math.isfinite(fit.b_crit) and math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"{folder}: B_crit is measured only as a bound or not at all; it cannot calibrate")
    b = middle_batch_size(curve.table["batch_size"])
    row = curve.table[curve.table["batch_size"] == b].iloc[0]
    config = TrialConfig.from_dict(parse_record(Store(folder).record_path(row["trial_id"]))["config"])
    if config.algorithm != "minibatch":
        raise UserError(f"{folder}: algorithm {config.algorithm!r}; allowed: 'minibatch' (one model's noise scale)")
    return MatchedPoint(sweep.folder.name, row["trial_id"], config, int(row["steps"]), fit.b_crit, (lo, hi))


def point_row(point: MatchedPoint, offline: dict) -> dict:
    """One row of the calibration table (POINT_COLUMNS) from a matched point
    and its windowed offline noise scale (noise_scale_study.windowed_noise_scale)."""
    c = point.config
    row = dict(
        study=point.study,
        workload=c.workload,
        optimizer=c.optimizer,
        family=FAMILIES[c.optimizer],
        momentum=c.momentum if c.optimizer in MOMENTUM_OPTIMIZERS else math.nan,
        batch_size=c.batch_size,
        trial_id=point.trial_id,
        steps=point.steps,
        b_crit=point.b_crit,
        b_crit_lo=point.b_crit_ci[0],
        b_crit_hi=point.b_crit_ci[1],
    )
    for basis in BASES:
        e = offline[basis]
        row.update({basis: e["value"], f"{basis}_lo": e["low"], f"{basis}_hi": e["high"]})
    return row


def fit_calibration(points: pd.DataFrame, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """{family: {basis: fit}} of the table of points (POINT_COLUMNS), each fit
    {"ratio", "ratio_ci", "spread", "n", "sd_log", "studies"}: the geometric
    mean of B_crit / B over the family's studies, its case-resampling
    bootstrap interval (2000 resamples, fixed seed), and the 90% prediction
    interval of one more study's ratio ("spread"; None with one study)."""
    missing = [c for c in POINT_COLUMNS if c not in points.columns]
    if missing:
        raise UserError(f"calibration points lack {', '.join(missing)}; needed: {', '.join(POINT_COLUMNS)}")
    q = [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]
    result = {}
    for family, group in points.groupby("family", sort=True):
        result[family] = {}
        for basis in BASES:
            log_r = np.log(group["b_crit"].to_numpy(float) / group[basis].to_numpy(float))
            n = len(log_r)
            means = log_r[np.random.default_rng(seed).integers(0, n, (n_bootstrap, n))].mean(1)
            sd = float(log_r.std(ddof=1)) if n > 1 else math.nan
            half = stats.t.ppf(q[1], n - 1) * sd * math.sqrt(1 + 1 / n) if n > 1 else math.nan
            mean = float(log_r.mean())
            result[family][basis] = finite_or_none(
                dict(
                    ratio=math.exp(mean),
                    ratio_ci=[float(v) for v in np.exp(np.quantile(means, q))],
                    spread=[math.exp(mean - half), math.exp(mean + half)] if n > 1 else None,
                    n=n,
                    sd_log=sd,
                    studies=group["study"].tolist(),
                )
            )
    return result


def load_calibration(path=None) -> dict:
    """A calibration written by `cbs calibrate` (calibration.json), by default
    the packaged one (PACKAGED), or UserError."""
    path = Path(path or PACKAGED)
    try:
        calibration = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no such calibration file: {path} (write one with `cbs calibrate`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a calibration written by `cbs calibrate` ({e})") from None
    wrong = sorted(set(calibration) - set(FAMILIES.values())) if isinstance(calibration, dict) else ["(not a table)"]
    if wrong:
        raise UserError(f"{path}: unknown families {', '.join(wrong)}; allowed: sgd, momentum, adaptive")
    return calibration


def predict(calibration: dict, optimizer: str, offline: dict | None) -> dict | None:
    """The calibrated B_crit of a `cbs gns` offline estimate: r * B on the
    first basis of BASES that was measured and is calibrated for the family
    of `optimizer`, with the spread's interval, as {"value", "low", "high",
    "family", "basis", "ratio", "n"}; None where no calibration applies."""
    family = FAMILIES.get(optimizer)
    fits = calibration.get(family, {})
    for basis in BASES:
        if offline and basis in offline and basis in fits and offline[basis]["value"] is not None:
            fit, measured = fits[basis], offline[basis]["value"]
            low, high = (s * measured for s in fit["spread"]) if fit["spread"] else (None, None)
            return dict(
                value=fit["ratio"] * measured,
                low=low,
                high=high,
                family=family,
                basis=basis,
                ratio=fit["ratio"],
                n=fit["n"],
            )
    return None


def calibration_text(calibration: dict) -> str:
    """One line per family and basis: the ratio, its interval and spread."""
    lines = []
    for family, fits in calibration.items():
        for basis, f in fits.items():
            spread = f"{f['spread'][0]:.3g} .. {f['spread'][1]:.3g}" if f["spread"] else "none (one study)"
            lines.append(
                f"{family:>9} B_crit / {basis:<8} = {f['ratio']:.3g} (90% interval {f['ratio_ci'][0]:.3g} .. "
                f"{f['ratio_ci'][1]:.3g}; a new study's ratio, 90%: {spread}; {f['n']} studies)"
            )
    return "\n".join(lines)
