"""A sweep's results as one self-contained HTML page: the critical batch size
with its interval and warnings, the steps-to-result table, the noise-scale
summary, every figure (embedded as base64 PNG), the trials and the spec; and
the page of a `cbs local-cbs` study. It needs no server, script or network:
any browser opens the file as it is.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
from pathlib import Path

import pandas as pd

from analysis import load_sweep
from analysis.curves import Curve, analyze, analyze_sweep
from analysis.edges import edge_hits
from analysis.local_cbs import heading, load_local_cbs, local_cbs_plot, swept_b_crit
from analysis.sweep_figures import sweep_figures
from analysis.text import (
    b_crit_value,
    definitions,
    edge_text,
    fit_details,
    headline,
    interval,
    num,
    steps_table,
    target_label,
    unreached,
)
from harness.sweep.store import Store

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } .sub { color: #555; margin-top: 0; }
.result { border-left: 5px solid #1f77b4; background: #f3f7fb; padding: 0.6em 1em; margin: 1em 0; }
.result .big { font-size: 1.6em; font-weight: 600; }
.warning { border-left: 5px solid #d62728; background: #fdf1f1; padding: 0.4em 1em; margin: 0.4em 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { color: #444; font-size: 0.92em; } .scroll { overflow-x: auto; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def noise_scale_table(sweep, curve: Curve) -> pd.DataFrame | None:
    """Per batch size, the noise scale B_simple (McCandlish et al. 2018, Eq. 2.8):
    at the first evaluation (median over trials), over all of training (median
    over rows) and where the best trial reached the target, the loss at which
    B_simple predicts B_crit (their Sec. 3). None without gns columns."""
    m = sweep.measurements
    if "gns_b_simple" not in m or not m["gns_b_simple"].notna().any():
        return None
    m = m.dropna(subset=["gns_b_simple"]).sort_values("step")
    first = m.drop_duplicates("trial_id").groupby("batch_size")["gns_b_simple"].median()
    overall = m.groupby("batch_size")["gns_b_simple"].median()
    at_target = (
        curve.table[["trial_id", "steps"]]
        .merge(m, left_on=["trial_id", "steps"], right_on=["trial_id", "step"])
        .set_index("batch_size")["gns_b_simple"]
    )
    return pd.DataFrame(
        {
            "B_simple at first evaluation": first,
            "B_simple over training": overall,
            "B_simple at the target (best trial)": at_target,
        }
    ).reset_index()


def run_tables(sweep) -> list[tuple[str, str, pd.DataFrame]]:
    """Where the sweep ran, as (id, caption, table) triples: the folder's metadata
    (its latest worker) and, over the trials' records, each distinct
    combination of versions, commit, devices and host with its trial count."""
    tables = []
    if sweep.metadata:
        flat = {**sweep.metadata.get("packages", {}), **{k: v for k, v in sweep.metadata.items() if k != "packages"}}
        tables.append(
            ("run-folder", "sweep folder (latest worker)", pd.DataFrame({"": list(flat), "value": list(flat.values())}))
        )
    if len(sweep.runs) and len(sweep.runs.columns) > 1:
        combos = sweep.runs.drop(columns="trial_id").astype(str).value_counts().reset_index(name="trials")
        tables.append(("run-records", "trials' records", combos))
    return tables


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table_html(df: pd.DataFrame, table_id: str) -> str:
    """A table that scrolls sideways, not out of the page, when it is wide."""
    return (
        "<div class='scroll'>"
        + df.to_html(index=False, table_id=table_id, na_rep="–", border=0, float_format=lambda v: f"{v:.4g}")
        + "</div>"
    )


def render_report(sweep) -> str:
    """The HTML page of a sweep (analysis.load_sweep)."""
    spec = sweep.spec
    curve = analyze(sweep)
    esc = html.escape
    title = f"Critical batch size: {spec.get('name') or spec['workload']}"
    counts = (
        sweep.trials.groupby(["batch_size", "status"])
        .size()
        .unstack(fill_value=0)
        .rename_axis(columns=None)
        .reset_index()
        if len(sweep.trials)
        else pd.DataFrame()
    )
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p class='sub'>workload <b>{esc(spec['workload'])}</b>, optimizer <b>{esc(spec['optimizer'])}</b>, "
        f"target <b>{esc(target_label(spec, curve.target))}</b>, {len(sweep.trials)} trials; "
        f"sweep folder {esc(str(sweep.folder))}; report written "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}</p>",
    ]
    fit = curve.fit
    warnings = [f"warning: {w}" for w in fit.warnings]
    facts = [line.strip() for line in definitions(fit)] + ([fit_details(fit)] if len(fit.batch_sizes) >= 2 else [])
    parts += [
        "<section id='fit'><h2>Critical batch size</h2><div class='result'>",
        f"<div class='big'>critical batch size: <span id='b-crit'>{esc(b_crit_value(fit))}</span></div>",
        f"<div id='b-crit-ci'>{esc(interval(*fit.b_crit_ci, fit.confidence))}</div>",
        f"<p id='headline'>{esc(headline(sweep, curve))}</p>",
        "<ul>",
        *(f"<li>{esc(line)}</li>" for line in facts),
        "</ul></div>",
        *(f"<div class='warning'>{esc(line)}</div>" for line in warnings),
        "</section>",
    ]
    parts.append("<section id='steps'><h2>Steps to result</h2>")
    if len(curve.table):
        parts.append(_table_html(steps_table(sweep, curve), "steps-table"))
    if missing := unreached(sweep, curve):
        parts.append(f"<p>{esc(missing)}</p>")
    if edges := edge_text(sweep, edge_hits(sweep, curve)):
        parts.append(f"<div class='warning' id='edge-hits'>{esc(edges)}</div>")
    parts.append("</section>")
    gns = noise_scale_table(sweep, curve)
    if gns is not None:
        predicted = gns["B_simple at the target (best trial)"].median()
        parts += [
            "<section id='noise-scale'><h2>Gradient noise scale</h2>",
            f"<p>The noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018) predicts the critical "
            f"batch size without a sweep. Where the best trials reached the target (median over batch "
            f"sizes): <b id='b-simple'>{num(predicted)}</b>; measured B_crit: "
            f"<b>{num(curve.fit.b_crit)}</b>.</p>",
            _table_html(gns, "noise-scale-table"),
            "</section>",
        ]
    parts.append("<section id='figures'><h2>Figures</h2>")
    for name, caption, fig in sweep_figures(sweep, analyze_sweep(sweep, main=curve)):
        parts.append(
            f"<figure id='figure-{name}'><img alt='{esc(name)}' src='data:image/png;base64,{_png(fig)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    parts.append("</section>")
    if len(counts):
        parts += [
            "<section id='trials'><h2>Trials by batch size and status</h2>",
            _table_html(counts, "trials-table"),
            "</section>",
        ]
    if runs := run_tables(sweep):
        parts.append("<section id='run'><h2>Where it ran</h2>")
        for table_id, caption, table in runs:
            parts += [f"<h3>{esc(caption)}</h3>", _table_html(table, table_id)]
        parts.append("</section>")
    parts += _spec_section(sweep.folder, spec)
    return _page(title, parts)


def render_local_cbs_report(folder, sweep_folder=None) -> str:
    """The HTML page of a `cbs local-cbs` study (analysis.local_cbs): the local
    critical batch size over training beside the noise scale, the figure, the
    branch losses the k* rule read, and the spec; with `sweep_folder`, the
    swept B_crit of the same workload as a band."""
    result = load_local_cbs(folder)
    b_crit = swept_b_crit(sweep_folder) if sweep_folder else None
    ref, lcbs = result.spec["reference"], result.spec["local_cbs"]
    esc = html.escape
    title = f"Local critical batch size: {result.spec.get('name') or ref['workload']}"
    losses = result.losses.pivot(index="step", columns="k", values="loss")
    losses.columns = [f"k = {k:g}" for k in losses.columns]
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p class='sub'>{esc(heading(result))}; study folder {esc(str(folder))}; report "
        f"written {datetime.datetime.now().isoformat(timespec='seconds')}</p>",
        "<section id='local-cbs'><h2>Local critical batch size over training</h2>",
        "<p>From a snapshot of the reference run at each step, branches at batch k B and learning rate "
        "f(k) eta train on the same examples; k* is the largest k whose smoothed final loss is within "
        "epsilon of every smaller k, and the local CBS is B times the geometric mean of k* and the next k "
        "(Merrill et al. 2025, Sec. 3). b_simple is the reference run's online B_simple; the offline "
        "B_simple and B_noise are over the steps of the reference run ending at the step (McCandlish et "
        "al. 2018, App. A), with their 90% intervals.</p>",
        _table_html(result.table, "local-cbs-table"),
    ]
    if b_crit is not None:
        value, (lo, hi) = b_crit
        parts.append(
            f"<p>Swept B_crit (McCandlish fit of {esc(str(sweep_folder))}): <b id='b-crit'>{num(value)}"
            f"</b> ({num(lo)} .. {num(hi)}).</p>"
        )
    parts += [
        "</section>",
        "<section id='figures'><h2>Figure</h2>",
        f"<figure id='figure-local-cbs'><img alt='local_cbs' src='data:image/png;base64,"
        f"{_png(local_cbs_plot(result, b_crit))}'><figcaption>Local CBS (circles; open triangles: "
        "bounds at the grid's ends) and the noise scale over the reference run's examples.</figcaption></figure>",
        "</section>",
        "<section id='losses'><h2>Branch losses</h2>",
        f"<p>The {lcbs['loss']} loss after {lcbs['delta_examples']} examples, EMA {lcbs['ema']:g} over "
        f"{lcbs['evals_per_branch']} evaluations; inf: the branch diverged.</p>",
        _table_html(losses.reset_index(), "losses-table"),
        "</section>",
    ]
    parts += _spec_section(folder, result.spec)
    return _page(title, parts)


def _spec_section(folder, spec: dict) -> list[str]:
    """The spec as written (FOLDER/spec.toml) and with every default resolved."""
    spec_file = Path(folder) / "spec.toml"
    esc = html.escape
    return [
        "<section id='spec'><h2>Spec</h2>",
        f"<pre id='spec-toml'>{esc(spec_file.read_text())}</pre>" if spec_file.exists() else "",
        "<details><summary>with every default resolved</summary>",
        f"<pre id='spec-json'>{esc(json.dumps(spec, indent=1, default=str))}</pre></details></section>",
    ]


def _page(title: str, parts: list[str]) -> str:
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_report(folder, out_path, sweep_folder=None) -> Path:
    """Write the report of the sweep, or of the `cbs local-cbs` study (with
    `sweep_folder`: its swept B_crit beside), in `folder` to `out_path`."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stored = Store(folder).read_spec()
    if stored is not None and "local_cbs" in stored["spec"]:
        page = render_local_cbs_report(folder, sweep_folder)
    else:
        page = render_report(load_sweep(folder))
    out.write_text(page, encoding="utf-8")
    return out
