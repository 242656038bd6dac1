"""A workload of your own, plugged in without editing the package:

    cbs train --workload experiments/custom_workload.py:workload --batch-size 64 --learning-rate 0.05

Bring a Flax model, your data as arrays in a `harness.engine.data.Dataset` (or any
dataset tensorflow-datasets serves: `load_dataset("tfds:<name>", data_dir)`),
and name the loss and the validation metric.
"""

import flax.linen as nn

from harness.engine.data import Dataset, load_dataset
from harness.engine.workloads import Workload


class TinyCNN(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


def load(data_dir=None) -> Dataset:
    """Any arrays will do; here, the first 20,000 Fashion-MNIST training images."""
    full = load_dataset("fashion_mnist", data_dir)
    return Dataset(
        "fashion_mnist_20k", full.train_x[:20000], full.train_y[:20000], full.val_x, full.val_y, full.num_classes
    )


workload = Workload(
    name="fashion_mnist_tiny_cnn",
    description="Fashion-MNIST (20k examples) / a tiny CNN",
    load_data=load,
    make_model=lambda data, **_: TinyCNN(data.num_classes),
    loss="cross_entropy",
    metric="error_rate",
    target=0.2,
    eval_every=50,
    search_space={"learning_rate": {"min": 1e-3, "max": 1.0, "scale": "log"}},
)
