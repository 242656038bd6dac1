"""Per-example losses and validation metrics, keyed by the names a Workload uses.
Sequence outputs (B, T, C) are averaged over positions, so every function
returns one value per example."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _per_example(values):
    return values.reshape(values.shape[0], -1).mean(axis=1)


def cross_entropy(logits, labels, label_smoothing=0.0):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return _per_example(optax.softmax_cross_entropy(logits, targets))


def squared_error(predictions, targets, label_smoothing=0.0):
    return _per_example(0.5 * (predictions - targets) ** 2)


def error_rate(logits, labels):
    return _per_example((jnp.argmax(logits, -1) != labels).astype(jnp.float32))


def accuracy(logits, labels):
    return 1.0 - error_rate(logits, labels)


LOSSES = {"cross_entropy": cross_entropy, "squared_error": squared_error}
METRIC_FUNCTIONS = {
    "error_rate": error_rate,
    "accuracy": accuracy,
    "cross_entropy": lambda logits, labels: cross_entropy(logits, labels),
    "squared_error": lambda predictions, targets: squared_error(predictions, targets),
}
