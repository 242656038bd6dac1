"""Workloads: a dataset, a Flax model, a loss and a validation metric with a
target. The registry maps names to workloads; a user's own workload loads from
`path/to/file.py:name` without editing the package."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from harness.engine import models
from harness.engine.data import Dataset
from harness.engine.targets import METRICS
from harness.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Workload:
    """The contract every trial runs through (after AlgoPerf's workload API).

    `load_data(data_dir)` returns a Dataset; `make_model(dataset, options)`
    returns a flax.linen Module mapping a batch of x to logits (or predictions
    for `squared_error`); `loss` is `cross_entropy` or `squared_error`;
    `metric` is a key of METRICS, averaged over the validation set.
    `data_placement` is where its data live unless a trial says
    (TrialConfig.data_placement; "auto": by size, harness.engine.stream).
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
    data_placement: str = "auto"

    @property
    def direction(self) -> str:
        return METRICS[self.metric][0]


# The search space of Shallue et al. (2019), Sec. 4.5 / App. D, for momentum
# optimizers; the format is harness.sweep.spec's.
_SHALLUE_SPACE = {
    "learning_rate": {"min": 1e-4, "max": 10.0, "scale": "log"},
    "momentum": {"min": 0.9, "max": 0.9999, "scale": "log1m"},
}
_SGD_SPACE = {"learning_rate": {"min": 1e-3, "max": 10.0, "scale": "log"}}


def _load(name):
    def load(data_dir=None):
        from harness.engine.data import load_dataset

        return load_dataset(name, data_dir)

    return load


def _fc(hidden):
    return lambda data, **_: models.MLP(hidden=tuple(hidden), num_classes=data.num_classes)


def _linear_regression_data(data_dir=None, dim=16, noise=0.5, n_train=16384, n_val=4096, seed=0) -> Dataset:
    """y = x . w* + eps with x ~ N(0, I_dim), eps ~ N(0, noise^2), |w*| = 1:
    the model whose gradient statistics have a closed form (harness.engine.models.Linear)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    w /= np.linalg.norm(w)
    x = rng.standard_normal((n_train + n_val, dim)).astype(np.float32)
    y = (x @ w + noise * rng.standard_normal(n_train + n_val)).astype(np.float32)
    return Dataset("linear_regression", x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=1)


def _image_workloads(dataset, target_cnn, target_fc):
    return [
        Workload(
            f"{dataset}_simple_cnn",
            f"{dataset} / Shallue et al.'s Simple CNN",
            _load(dataset),
            lambda data, **_: models.SimpleCNN(data.num_classes),
            "cross_entropy",
            "error_rate",
            target_cnn,
            eval_every=100,
            search_space=_SHALLUE_SPACE,
        ),
        Workload(
            f"{dataset}_fc1024",
            f"{dataset} / FC-1024 (one hidden ReLU layer)",
            _load(dataset),
            _fc((1024,)),
            "cross_entropy",
            "error_rate",
            target_fc,
            eval_every=100,
            search_space=_SGD_SPACE,
        ),
    ]


WORKLOADS = {
    w.name: w
    for w in [
        *_image_workloads("mnist", 0.01, 0.03),
        *_image_workloads("fashion_mnist", 0.1, 0.12),
        Workload(
            "cifar10_resnet8",
            "CIFAR-10 / ResNet-8 with batch norm",
            _load("cifar10"),
            lambda data, **_: models.ResNet8(data.num_classes),
            "cross_entropy",
            "error_rate",
            0.3,
            eval_every=200,
            search_space=_SHALLUE_SPACE,
        ),
        Workload(
            "shakespeare_transformer",
            "Tiny Shakespeare / 2-layer character transformer",
            _load("tiny_shakespeare"),
            lambda data, **_: models.CharTransformer(data.num_classes, seq_len=data.train_x.shape[1]),
            "cross_entropy",
            "cross_entropy",
            1.6,
            eval_every=100,
            search_space={"learning_rate": {"min": 1e-4, "max": 1e-1, "scale": "log"}},
        ),
        Workload(
            "linear_regression",
            "synthetic linear regression, Gaussian inputs, noise 0.5",
            _linear_regression_data,
            lambda data, **_: models.Linear(),
            "squared_error",
            "squared_error",
            0.13,
            eval_every=10,
            search_space=_SGD_SPACE,
        ),
    ]
}

_FC_NAME = re.compile(r"^(?P<dataset>mnist|fashion_mnist)_fc(?P<width>\d+)x(?P<depth>\d+)$")


def get_workload(name: str) -> Workload:
    """A registered workload; `<dataset>_fc<width>x<depth>` (Shallue's FC-WxD
    family, e.g. mnist_fc128x3); or `path/to/file.py:attr` for a user's own."""
    if name in WORKLOADS:
        return WORKLOADS[name]
    if m := _FC_NAME.match(name):
        base = WORKLOADS[f"{m['dataset']}_fc1024"]
        hidden = (int(m["width"]),) * int(m["depth"])
        return dataclasses.replace(
            base, name=name, description=f"{m['dataset']} / FC-{m['width']}x{m['depth']}", make_model=_fc(hidden)
        )
    if ":" in name and name.split(":")[0].endswith(".py"):
        return _from_file(*name.rsplit(":", 1))
    raise UserError(
        f"unknown workload {name!r}; {did_you_mean(name, WORKLOADS)}allowed: "
        f"{', '.join(WORKLOADS)}, <mnist|fashion_mnist>_fc<width>x<depth>, or path/to/file.py:name"
    )


def _from_file(path: str, attr: str) -> Workload:
    if not os.path.isfile(path):
        raise UserError(f"workload file {path!r} not found")
    spec = importlib.util.spec_from_file_location(f"cbs_user_workload_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # the user's file: one line naming where, no traceback
        raise UserError(f"workload file {path}, line {e.lineno}: {type(e).__name__}: {e.msg}") from None
    except Exception as e:
        line = next(
            (
                f.lineno
                for f in reversed(traceback.extract_tb(e.__traceback__))
                if os.path.abspath(f.filename) == os.path.abspath(path)
            ),
            "?",
        )
        raise UserError(f"workload file {path}, line {line}: {type(e).__name__}: {e}") from None
    workload = getattr(module, attr, None)
    if not isinstance(workload, Workload):
        found = [k for k, v in vars(module).items() if isinstance(v, Workload)]
        raise UserError(f"{path} has no Workload named {attr!r}; Workloads there: {', '.join(found) or 'none'}")
    return workload
