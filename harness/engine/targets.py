"""Validation metrics, their targets, and when a target counts as reached.

Shallue et al. (2019, Sec. 3.1) count a target as reached at the first
evaluation where the metric is *strictly* below it (strictly above for a
metric to maximise). `crossed` is that rule, for one value or an array; the
engine, the sweep's pruning and the analysis all use it.
"""

from __future__ import annotations

from harness.errors import UserError

# metric name -> (direction, lowest value, highest value): the range a target must lie in.
METRICS = {
    "error_rate": ("min", 0.0, 1.0),
    "accuracy": ("max", 0.0, 1.0),
    "cross_entropy": ("min", 0.0, float("inf")),
    "squared_error": ("min", 0.0, float("inf")),
}
DIRECTIONS = ("min", "max")


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")


def crossed(value, target, direction: str):
    """Whether `value` (a number or an array) is strictly past `target`."""
    check_direction(direction)
    return value < target if direction == "min" else value > target


def reachable(metric: str, target: float) -> bool:
    """Whether a metric can get strictly past `target`: below it for a metric
    to minimise, above it to maximise."""
    direction, lo, hi = METRICS[metric]
    return lo < target <= hi if direction == "min" else lo <= target < hi


def target_interval(metric: str) -> str:
    """The targets `reachable` accepts, in interval notation."""
    direction, lo, hi = METRICS[metric]
    return f"({lo}, {hi}]" if direction == "min" else f"[{lo}, {hi})"


def check_target(metric: str, target: float, field: str = "target") -> None:
    """UserError unless `target` is reachable: `<field> <target> can never be
    reached ...` past the metric's best value, `... is outside the range of
    <metric> ...` past its worst (every value is already past such a target)."""
    if not reachable(metric, target):
        direction, lo, hi = METRICS[metric]
        if target > hi if direction == "min" else target < lo:
            every = "below" if direction == "min" else "above"
            raise UserError(
                f"{field} {target} is outside the range of {metric} ({lo:g} to {hi:g}): every "
                f"{metric} is {every} it; allowed: {target_interval(metric)}"
            )
        side = "strictly below" if direction == "min" else "strictly above"
        raise UserError(
            f"{field} {target} can never be reached: {metric} must get {side} it; allowed: {target_interval(metric)}"
        )


def check_batch_size(batch_size: int, train_size: int, field: str = "batch_size") -> None:
    """UserError `<field> <batch_size> is above the training set size ...` when it is."""
    if batch_size > train_size:
        raise UserError(f"{field} {batch_size} is above the training set size {train_size}; allowed: 1 .. {train_size}")
