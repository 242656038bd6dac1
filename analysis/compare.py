"""Several sweeps side by side: one row per study with what Shallue et al.
(2019) and McCandlish et al. (2018) compare workloads by: steps to result at
chosen batch sizes, where perfect scaling ends, the maximal useful batch
size, and the critical batch size
B_crit = E_min / S_min (McCandlish et al. 2018, Eq. 2.11) with its interval.
"""

from __future__ import annotations

import pandas as pd

from analysis.curves import analyze
from analysis.edges import edge_hits


def common_batch_sizes(curves) -> list[int]:
    """The batch sizes where every study has a steps-to-result value."""
    sets = [set(curve.table["batch_size"].astype(int)) for curve in curves]
    return sorted(set.intersection(*sets)) if sets else []


def bound_text(fit) -> str | None:
    """'>= 256' or '<= 16' for a one-sided B_crit, None when the fit pins it."""
    if fit.b_crit_bound is None:
        return None
    return f"{'>=' if fit.b_crit_bound == 'lower' else '<='} {fit.b_crit_bound_value:g}"


def comparison_table(sweeps, at=None) -> pd.DataFrame:
    """One row per sweep (analysis.load_sweep), at each sweep's own target:
    study, workload, optimizer, target, trials (finished trials per batch
    size, the mean over batch sizes), batch_sizes ('min..max' swept), one
    `steps@B` column per batch size of `at` (default: those every study
    reached; NaN where a study has no value), perfect_scaling_end,
    max_useful_batch_size, b_crit, b_crit_lo, b_crit_hi, s_min, e_min,
    b_crit_bound ('>= B' or '<= B' where the data show one regime only and
    B_crit is NaN: analysis.fit.one_sided_bound; else None) and edge_hits (how
    many best trials sit on an edge of the search)."""
    curves = [analyze(sweep) for sweep in sweeps]
    at = common_batch_sizes(curves) if at is None else list(at)
    rows = []
    for sweep, curve in zip(sweeps, curves):
        spec, fit = sweep.spec, curve.fit
        steps = dict(zip(curve.table["batch_size"].astype(int), curve.table["steps"]))
        swept = spec["batch_sizes"]
        rows.append(
            {
                "study": spec.get("name") or sweep.folder.name,
                "workload": spec["workload"],
                "optimizer": spec["optimizer"],
                "target": curve.target,
                "trials": len(sweep.trials) / max(sweep.trials["batch_size"].nunique(), 1),
                "batch_sizes": f"{min(swept)}..{max(swept)}",
                **{f"steps@{b}": steps.get(b) for b in at},
                "perfect_scaling_end": fit.perfect_scaling_end,
                "max_useful_batch_size": fit.max_useful_batch_size,
                "b_crit": fit.b_crit,
                "b_crit_lo": fit.b_crit_ci[0],
                "b_crit_hi": fit.b_crit_ci[1],
                "s_min": fit.s_min,
                "e_min": fit.e_min,
                "b_crit_bound": bound_text(fit),
                "edge_hits": len(edge_hits(sweep, curve)),
            }
        )
    return pd.DataFrame(rows)
