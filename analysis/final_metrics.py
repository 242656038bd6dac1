"""The best validation metric at the end of training per batch size, as the
papers that compare final quality report it (Goyal et al. 2017, Table 2; Lin
et al. 2020, Table 1), for sweeps whose trials train their whole budget."""

from __future__ import annotations

import pandas as pd

from analysis.curves import search_space


def final_metrics(sweep) -> pd.DataFrame | None:
    """Per batch size, the best validation metric at the end of training over
    the trials that trained their whole budget (stop_at_target = false):
    columns batch_size, final_metric, step, the searched metaparameters of that
    trial and trial_id. Diverged trials count as failed, not as a value. None
    when every trial stopped at the target."""
    trials = sweep.trials
    if "stop_at_target" not in trials or trials["stop_at_target"].astype(bool).all():
        return None
    ran = trials[~trials["stop_at_target"].astype(bool) & (trials["status"] != "diverged")]
    last = sweep.measurements.sort_values("step").drop_duplicates("trial_id", keep="last")
    rows = ran.merge(last[["trial_id", "step", "val_metric"]], on="trial_id").rename(
        columns={"val_metric": "final_metric"}
    )
    rows = rows.sort_values(
        ["batch_size", "final_metric", "trial_id"], ascending=[True, sweep.spec["direction"] == "min", True]
    )
    searched = [c for c in search_space(sweep) if c in rows]
    return rows.drop_duplicates("batch_size")[
        ["batch_size", "final_metric", "step", *searched, "trial_id"]
    ].reset_index(drop=True)
