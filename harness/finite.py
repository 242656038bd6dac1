"""Strict JSON from results that may hold NaN or infinities."""

from __future__ import annotations

import math


def finite_or_none(value):
    """`value` with every non-finite float (NaN, inf) replaced by None, through
    dicts, lists and tuples (tuples become lists), so that json.dumps writes
    strict JSON (no NaN tokens)."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value
