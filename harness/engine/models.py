"""Flax (linen) models of the workloads. Every model takes `(x, train)` and
returns logits (or a prediction per example for regression)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class SimpleCNN(nn.Module):
    """Shallue et al. (2019), Sec. 3.2 / App. B "Simple CNN": conv 5x5x32, ReLU,
    max-pool 2x2; conv 5x5x64, ReLU, max-pool 2x2; dense 1024, ReLU; dense."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        for features in (32, 64):
            x = nn.relu(nn.Conv(features, (5, 5), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(1024)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """Fully connected ReLU network, Shallue et al.'s FC-<width>x<depth>."""

    hidden: Sequence[int] = (1024,)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
        y = nn.relu(norm()(nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)))
        y = norm()(nn.Conv(self.features, (3, 3), use_bias=False)(y))
        if x.shape != y.shape:
            x = norm()(nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet8(nn.Module):
    """He et al. (2016) CIFAR ResNet with 6n+2 layers, n = 1 (Shallue's ResNet-8).
    Batch norm statistics are per (micro-)batch, as Goyal et al.'s per-worker BN."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(16, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for features, strides in ((16, 1), (32, 2), (64, 2)):
            x = ResidualBlock(features, strides)(x, train)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class CharTransformer(nn.Module):
    """A small decoder-only character transformer (pre-LayerNorm, causal)."""

    vocab_size: int
    seq_len: int = 64
    width: int = 128
    depth: int = 2
    heads: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Embed(self.vocab_size, self.width)(x)
        h = h + self.param("position", nn.initializers.normal(0.02), (self.seq_len, self.width))
        mask = nn.make_causal_mask(x)
        for _ in range(self.depth):
            h = h + nn.SelfAttention(self.heads)(nn.LayerNorm()(h), mask=mask)
            y = nn.Dense(4 * self.width)(nn.LayerNorm()(h))
            h = h + nn.Dense(self.width)(nn.gelu(y))
        return nn.Dense(self.vocab_size)(nn.LayerNorm()(h))


class Linear(nn.Module):
    """y = x . w, no bias: the linear-regression workload, whose gradient noise
    scale has a closed form (McCandlish et al. 2018, Sec. 2.2: B_simple =
    tr(Sigma) / |G|^2 with G = delta and Sigma = (|delta|^2 + s^2) I +
    delta delta^T at w = w* + delta, for x ~ N(0, I) and noise variance s^2)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return jnp.squeeze(nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros)(x), -1)
