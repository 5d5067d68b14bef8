"""A small CNN classifier for 8x8 digits, and its penultimate-layer features.

    x [B, 8, 8, 1] -> conv3x3(32) -> SiLU -> conv3x3(64, stride 2) -> SiLU
    -> conv3x3(64) -> SiLU -> flatten [B, 4*4*64] -> dropout
    -> Dense(features) -> SiLU = penultimate features [B, features]
    -> Dense(num_classes) = logits

The penultimate features are the feature space of the digits Fréchet distance
(:func:`iia_jax.metrics.fd.digits_fd`), the digits analogue of FID's Inception pool3.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["DigitsClassifier", "classifier_features", "classifier_logits"]


class DigitsClassifier(nn.Module):
    """CNN classifier; ``__call__`` gives logits, ``features`` the penultimate layer."""

    features_dim: int = 64
    num_classes: int = 10
    dropout: float = 0.0

    def setup(self):
        self.conv1 = nn.Conv(32, (3, 3))
        self.conv2 = nn.Conv(64, (3, 3), strides=(2, 2))
        self.conv3 = nn.Conv(64, (3, 3))
        self.drop = nn.Dropout(self.dropout)
        self.dense = nn.Dense(self.features_dim)
        self.head = nn.Dense(self.num_classes)

    def features(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if x.ndim != 4:
            raise ValueError(f"DigitsClassifier expects NHWC images [B, H, W, C]; got shape {x.shape}")
        h = nn.silu(self.conv1(x.astype(jnp.float32)))
        h = nn.silu(self.conv2(h))
        h = nn.silu(self.conv3(h))
        h = self.drop(h.reshape(h.shape[0], -1), deterministic=not train)
        return nn.silu(self.dense(h))

    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self.head(self.features(x, train))


def classifier_logits(model: DigitsClassifier, params, x: jnp.ndarray) -> jnp.ndarray:
    """Logits ``[B, num_classes]`` of ``model`` with ``params`` (eval mode)."""
    return model.apply(params, x)


def classifier_features(model: DigitsClassifier, params, x: jnp.ndarray) -> jnp.ndarray:
    """Penultimate features ``[B, features_dim]`` of ``model`` with ``params`` (eval mode)."""
    return model.apply(params, x, method=DigitsClassifier.features)
