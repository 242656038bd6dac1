"""Workloads: a dataset, a Flax model, a loss and a validation metric with a
target. The registry maps names to workloads; a user's own workload loads from
`path/to/file.py:name` without editing the package."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from harness.data import Dataset

# metric name -> (direction, lowest value, highest value): the range a target must lie in.
METRICS = {
    "error_rate": ("min", 0.0, 1.0),
    "accuracy": ("max", 0.0, 1.0),
    "cross_entropy": ("min", 0.0, float("inf")),
    "squared_error": ("min", 0.0, float("inf")),
}


@dataclass(frozen=True)
class Workload:
    """The contract every trial runs through (after AlgoPerf's workload API).

    `load_data(data_dir)` returns a Dataset; `make_model(dataset, options)`
    returns a flax.linen Module mapping a batch of x to logits (or predictions
    for `squared_error`); `loss` is `cross_entropy` or `squared_error`;
    `metric` is a key of METRICS, averaged over the validation set.
    """

    name: str
    description: str
    load_data: Callable[[str | None], Dataset]
    make_model: Callable[..., object]
    loss: str
    metric: str
    target: float
    eval_every: int
    search_space: dict = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return METRICS[self.metric][0]
