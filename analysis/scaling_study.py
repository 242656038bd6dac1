"""The tables that power laws across groups are fitted to (analysis.scaling),
and where their results go.

A group is a sweep (with a covariate value: its model width, its data set
size), a group of a steps table (one McCandlish fit per group, analysis.fit),
or a row of a user's table of per-group values. Each group's fit gives a row
of `fit_row`: B_crit, S_min, E_min with their intervals, and the one-sided
bound where the data give only that (such rows stay in the table and are left
out of the law).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.curves import analyze
from analysis.fit import FitResult, fit_steps
from analysis.scaling import PowerLawFit, fit_power_law
from analysis.tables import STEPS_COLUMNS, load_sweep
from harness.errors import UserError

Y_COLUMNS = ("b_crit", "s_min", "e_min")


def fit_row(fit: FitResult) -> dict:
    """A McCandlish fit as a table row: batch_sizes (measured), b_crit, s_min,
    e_min and their _lo, _hi interval ends, bound ('lower', 'upper' or '')."""
    row = {"batch_sizes": len(fit.batch_sizes)}
    for name, value, ci in (
        ("b_crit", fit.b_crit, fit.b_crit_ci),
        ("s_min", fit.s_min, fit.s_min_ci),
        ("e_min", fit.e_min, fit.e_min_ci),
    ):
        row.update({name: value, f"{name}_lo": ci[0], f"{name}_hi": ci[1]})
    return {**row, "bound": fit.b_crit_bound or ""}


def read_table(path) -> pd.DataFrame:
    """A CSV table ('#' starts a comment line), or UserError."""
    try:
        return pd.read_csv(path, comment="#")
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None


def is_steps_table(table: pd.DataFrame) -> bool:
    return all(c in table.columns for c in STEPS_COLUMNS)


def steps_groups_table(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per value of column `x` of a steps table (batch_size, steps, x):
    the McCandlish fit of its steps against batch size (analysis.fit.fit_steps)."""
    _require(table, [x, *STEPS_COLUMNS], "the steps table")
    rows = [
        {x: value, **fit_row(fit_steps(part["batch_size"].to_numpy(float), part["steps"].to_numpy(float)))}
        for value, part in table.groupby(x, sort=True)
    ]
    return pd.DataFrame(rows)


def sweeps_table(pairs, x: str, target=None) -> pd.DataFrame:
    """One row per (sweep folder, covariate value): the sweep's fit at `target`
    (default: its spec's), as `cbs analyze` computes it."""
    rows = []
    for folder, value in pairs:
        curve = analyze(load_sweep(folder), target)
        rows.append({x: value, "sweep": Path(folder).name, "target": curve.target, **fit_row(curve.fit)})
    return pd.DataFrame(rows)


def fit_columns(table: pd.DataFrame, x: str, ys=Y_COLUMNS, **options) -> dict[str, PowerLawFit]:
    """y = a x^b for each column of `ys` against column `x`, over the rows
    with a finite value and no one-sided bound (UserError on a missing column,
    fewer than 3 such rows, or values <= 0)."""
    _require(table, [x, *ys], "the table")
    fits = {}
    for y in ys:
        rows = table[np.isfinite(pd.to_numeric(table[y], errors="coerce"))]
        if "bound" in rows.columns:
            rows = rows[rows["bound"].fillna("") == ""]
        fits[y] = fit_power_law(_numbers(rows, x), _numbers(rows, y), x_name=x, y_name=y, **options)
    return fits


def left_out(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows `fit_columns` leaves out of the law of `y`: no estimate, or a one-sided bound."""
    values = pd.to_numeric(table[y], errors="coerce")
    bound = table["bound"].fillna("") if "bound" in table.columns else pd.Series("", index=table.index)
    return table[~np.isfinite(values) | (bound != "")]


def write_outputs(stem, table: pd.DataFrame, results: dict, figures: dict) -> list[Path]:
    """STEM.csv (the table), STEM.json (`results`, JSON-ready) and each figure
    as STEM_<name>.png (150 dpi); their paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(stem.with_name(stem.name + ".csv"), index=False, float_format="%.6g")
    stem.with_name(stem.name + ".json").write_text(json.dumps(results, indent=1) + "\n")
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".json")]
    for name, fig in figures.items():
        paths.append(stem.with_name(f"{stem.name}_{name}.png"))
        fig.savefig(paths[-1], dpi=150)
    return paths


def _require(table, columns, what):
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{what} lacks column(s) {', '.join(missing)}; found: {', '.join(map(str, table.columns))}")


def _numbers(rows, column) -> np.ndarray:
    values = pd.to_numeric(rows[column], errors="coerce")
    if values.isna().any():
        bad = rows[column][values.isna()].iloc[0]
        raise UserError(f"{column}: a power law needs numbers, got {bad!r}")
    return values.to_numpy(float)
