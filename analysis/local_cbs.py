"""The branched local critical batch size over training (Merrill et al. 2025,
"Critical Batch Size Revisited", arXiv 2505.23971, Sec. 3), read from a folder
that `cbs local-cbs` ran (harness.sweep.local_cbs), beside the online noise
scale B_simple of the reference run (McCandlish et al. 2018, Eq. 2.9), its
offline B_simple and B_noise at the checkpoints (Eq. 2.8 and 2.6, App. A) and a
swept B_crit (McCandlish et al. 2018, Eq. 2.11; analysis.fit).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from harness.errors import UserError
from harness.sweep.local_cbs import NOISE_FILE, REFERENCE_ID, branch_id
from harness.sweep.store import CorruptRecord, Store, parse_record


def smoothed_final_loss(record: dict, ema: float, loss: str = "train") -> float:
    """The last value of the exponential moving average s_i = ema * s_(i-1) +
    (1 - ema) * x_i of a branch's losses x_i (the train loss averaged over each
    evaluation interval, or the validation loss at each evaluation), its
    starting row left out; inf when the branch diverged (Merrill et al. 2025,
    Sec. 3: EMA 0.5)."""
    if record["status"] == "diverged":
        return math.inf
    values = pd.Series([row[f"{loss}_loss"] for row in record["measurements"][1:]], dtype=float)
    return float(values.ewm(alpha=1 - ema, adjust=False).mean().iloc[-1])


def k_star(multipliers, losses, epsilon: float) -> tuple[float | None, float | None, str]:
    """(k*, the reported point, its bound) for losses at sorted multipliers:
    k* is the largest k whose loss is at most the loss of every smaller k plus
    epsilon; the point is the geometric mean of k* and the next k tried
    (Merrill et al. 2025, Sec. 3), bound "exact". The grid's ends are bounds, not
    points: when k* is the largest k tried, the point is k* and a lower bound
    ("lower"); when it is the smallest (which qualifies with nothing smaller
    to compare with) and a larger k was tried, the point is that next k and
    an upper bound ("upper"). (None, None, "exact") when no k has a finite loss."""
    best, chosen = math.inf, None
    for i, (_k, loss) in enumerate(zip(multipliers, losses)):
        if math.isfinite(loss) and loss <= best + epsilon:
            chosen = i
        best = min(best, loss)
    if chosen is None:
        return None, None, "exact"
    if chosen == len(multipliers) - 1:
        return multipliers[chosen], multipliers[chosen], "lower"
    if chosen == 0:
        return multipliers[0], multipliers[1], "upper"
    return multipliers[chosen], math.sqrt(multipliers[chosen] * multipliers[chosen + 1]), "exact"


@dataclass
class LocalCbs:
    """A finished local-CBS study: `table` (one row per checkpoint step:
    step, examples, k_star, point, local_cbs, bound ("exact", "lower" or
    "upper": `k_star`), b_simple (online, at the step) and, when measured,
    b_simple_offline and b_noise_offline with their interval ends (_low,
    _high) over the window ending at the step), `losses` (smoothed final loss
    per step and multiplier) and the reference run's measurements."""

    spec: dict
    table: pd.DataFrame
    losses: pd.DataFrame
    reference: pd.DataFrame


def _record(store: Store, trial_id: str) -> dict:
    try:
        return parse_record(store.record_path(trial_id))
    except CorruptRecord as e:
        raise UserError(f"{store.folder}: trial {trial_id} has no record ({e}); run cbs local-cbs again") from None


def load_local_cbs(folder) -> LocalCbs:
    """The study in `folder` as tables."""
    store = Store(folder)
    stored = store.read_spec()
    if stored is None or "local_cbs" not in stored["spec"]:
        raise UserError(f"{folder}: not a cbs local-cbs folder (no spec.json with a local_cbs section)")
    spec = stored["spec"]
    lcbs, batch = spec["local_cbs"], spec["reference"]["batch_size"]
    reference = pd.DataFrame(_record(store, REFERENCE_ID)["measurements"])
    by_step = reference.set_index("step")
    rows, losses = [], []
    for step in lcbs["checkpoint_steps"]:
        values = [
            smoothed_final_loss(_record(store, branch_id(step, k)), lcbs["ema"], lcbs["loss"])
            for k in lcbs["multipliers"]
        ]
        losses += [dict(step=step, k=k, loss=v) for k, v in zip(lcbs["multipliers"], values)]
        k, point, bound = k_star(lcbs["multipliers"], values, lcbs["epsilon"])
        b_simple = by_step["gns_b_simple"].get(step, np.nan) if "gns_b_simple" in by_step else np.nan
        rows.append(
            dict(
                step=step,
                examples=step * batch,
                k_star=k,
                point=point,
                local_cbs=np.nan if point is None else point * batch,
                bound=bound,
                b_simple=b_simple,
            )
        )
    table = pd.DataFrame(rows)
    noise = store.folder / NOISE_FILE
    if noise.exists():
        offline = pd.DataFrame(
            [
                {
                    "step": e["step"],
                    **{
                        f"{name}_offline{end}": e[name][key]
                        for name in ("b_simple", "b_noise")
                        for end, key in (("", "value"), ("_low", "low"), ("_high", "high"))
                    },
                }
                for e in json.loads(noise.read_text())
            ]
        )
        table = table.merge(offline, on="step", how="left")
    return LocalCbs(spec, table, pd.DataFrame(losses), reference)


def heading(result: LocalCbs) -> str:
    """One line naming the study: the reference run and the branch settings."""
    ref, lcbs = result.spec["reference"], result.spec["local_cbs"]
    return (
        f"local critical batch size (Merrill et al. 2025): {ref['workload']}, {ref['optimizer']}, reference "
        f"B = {ref['batch_size']}, lr = {ref['learning_rate']:g}; branches of {lcbs['delta_examples']} examples "
        f"at k in {', '.join(f'{k:g}' for k in lcbs['multipliers'])}, f(k) {lcbs['lr_scaling']}, "
        f"EMA {lcbs['ema']:g}, epsilon {lcbs['epsilon']:g} on the {lcbs['loss']} loss"
    )


def summary_text(result: LocalCbs, b_crit=None) -> str:
    """The table `cbs local-cbs` prints, with the swept B_crit when given
    (b_crit: (value, (lo, hi)))."""
    lcbs = result.spec["local_cbs"]
    lines = [
        heading(result),
        result.table.drop(columns=[c for c in result.table if c.endswith(("_low", "_high"))]).to_string(
            index=False, float_format=lambda v: f"{v:.4g}"
        ),
    ]
    if "b_noise_offline" in result.table:
        lines.append(
            f"b_*_offline: over the {lcbs['noise_window']} steps of the reference run ending at the step, "
            f"from {lcbs['noise_samples']} gradients per step (intervals in local_cbs.csv)"
        )
    if (result.table["bound"] == "lower").any():
        lines.append("bound lower: k* was the largest multiplier tried, so local_cbs is a lower bound")
    if (result.table["bound"] == "upper").any():
        lines.append(
            "bound upper: k* was the smallest multiplier tried, so the local CBS is below local_cbs "
            "(the next k, which hurt the loss)"
        )
    if b_crit is not None:
        value, (lo, hi) = b_crit
        lines.append(f"swept B_crit (McCandlish fit of the Shallue sweep): {value:.4g} ({lo:.4g} .. {hi:.4g})")
    return "\n".join(lines)


def local_cbs_plot(result: LocalCbs, b_crit=None) -> Figure:
    """Local CBS over training (examples seen by the reference run; open
    triangles: bounds) with the reference run's online B_simple, the offline
    B_simple and B_noise at the checkpoints with their intervals and, when
    given as (value, (lo, hi)), a swept B_crit as a horizontal band."""
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    table = result.table.dropna(subset=["local_cbs"])
    ax.plot(table["examples"], table["local_cbs"], "-", color="tab:blue")
    for bound, marker, label in (
        ("exact", "o", "local CBS (branched, k* B)"),
        ("lower", "^", "local CBS, lower bound (k* the largest k)"),
        ("upper", "v", "local CBS, upper bound (k* the smallest k)"),
    ):
        rows = table[table["bound"] == bound]
        if len(rows):
            ax.plot(
                rows["examples"],
                rows["local_cbs"],
                marker,
                color="tab:blue",
                label=label,
                markerfacecolor="tab:blue" if bound == "exact" else "none",
            )
    reference = result.reference
    if "gns_b_simple" in reference:
        online = reference.dropna(subset=["gns_b_simple"])
        online = online[online["gns_b_simple"] > 0]
        ax.plot(
            online["examples"],
            online["gns_b_simple"],
            "-",
            color="tab:orange",
            label="B_simple (online, reference run)",
        )
    for name, color, label in (("b_simple", "tab:orange", "B_simple"), ("b_noise", "tab:red", "B_noise")):
        if f"{name}_offline" in result.table:
            rows = result.table.dropna(subset=[f"{name}_offline"])
            rows = rows[rows[f"{name}_offline"] > 0]
            low = (rows[f"{name}_offline"] - rows[f"{name}_offline_low"]).clip(lower=0)
            high = (rows[f"{name}_offline_high"] - rows[f"{name}_offline"]).clip(lower=0)
            ax.errorbar(
                rows["examples"],
                rows[f"{name}_offline"],
                yerr=[low, high],
                fmt="s",
                color=color,
                markerfacecolor="none",
                capsize=3,
                label=f"{label} (offline, {result.spec['local_cbs']['noise_window']} steps)",
            )
    if b_crit is not None:
        value, (lo, hi) = b_crit
        if all(math.isfinite(v) for v in (lo, hi)):
            ax.axhspan(lo, hi, color="tab:green", alpha=0.2)
        ax.axhline(value, color="tab:green", label=f"swept B_crit = {value:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("examples seen by the reference run")
    ax.set_ylabel("batch size")
    ax.set_title(f"{result.spec['reference']['workload']}, {result.spec['reference']['optimizer']}")
    ax.legend(fontsize="small")
    return fig


def swept_b_crit(sweep_folder) -> tuple[float, tuple[float, float]]:
    """B_crit and its interval from a Shallue sweep folder (analysis.curves.analyze)."""
    from analysis.curves import analyze
    from analysis.tables import load_sweep

    fit = analyze(load_sweep(Path(sweep_folder))).fit
    return fit.b_crit, tuple(fit.b_crit_ci)
