"""Datasets as in-memory numpy arrays, split as Shallue et al. (2019)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Train and validation arrays. Images are float32 in [0, 1] with shape
    (N, H, W, C); labels int32. Sequence data: x and y int32 of shape (N, T),
    y being x shifted by one character. `num_classes` is the label (or
    vocabulary) size."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    num_classes: int
