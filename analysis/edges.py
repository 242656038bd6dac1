"""Edge hits of a sweep's search: a best trial whose searched metaparameter
takes the largest or the smallest value tried at its batch size may have its
optimum outside the search space, which must then be widened (Shallue et al.
2019, Sec. 4.5 and App. D: the best trial should sit strictly inside it)."""

from __future__ import annotations

import pandas as pd

from analysis.curves import Curve, search_space


def _searched_numeric(sweep, columns) -> list[str]:
    return [
        n
        for n in search_space(sweep)
        if n in columns and n in sweep.trials and pd.api.types.is_numeric_dtype(sweep.trials[n])
    ]


def _edge(value, values: pd.Series) -> str | None:
    """'largest' or 'smallest' when `value` is that of the values tried, None
    when it lies between them or all of them are equal."""
    if values.nunique() < 2:
        return None
    return "largest" if value == values.max() else "smallest" if value == values.min() else None


def edge_hits(sweep, curve: Curve) -> list[tuple[int, str, str]]:
    """(batch size, metaparameter, 'largest' | 'smallest') where the best
    trial's value of a searched numeric metaparameter is the largest or the
    smallest value tried at that batch size."""
    names = _searched_numeric(sweep, curve.table)
    hits = []
    for row in curve.table.itertuples():
        tried = sweep.trials[sweep.trials["batch_size"] == row.batch_size]
        for name in names:
            if edge := _edge(getattr(row, name), tried[name]):
                hits.append((int(row.batch_size), name, edge))
    return hits


def edge_points(sweep, batch_size: int) -> tuple[int, int]:
    """(k, n): k of the n points tried at `batch_size` sit on an edge of some
    searched numeric metaparameter. A best trial that lands on a point at
    random is on an edge with probability k / n, so an edge hit tells little
    where few points search several metaparameters (with n points, each
    metaparameter puts 2 of them on an edge)."""
    tried = sweep.trials[sweep.trials["batch_size"] == batch_size]
    names = _searched_numeric(sweep, tried)
    on_an_edge = sum(any(_edge(point[name], tried[name]) for name in names) for _, point in tried.iterrows())
    return on_an_edge, len(tried)
