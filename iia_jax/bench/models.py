"""The benchmark models: two exact Gaussian mixtures and the shipped digits network.

All three are EDM denoisers ``D(x, sigma)`` on ``sigma in [0.002, 80]`` (docs/design.md §2); the
mixtures are exact, so their ODE has no model error, only integration error.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from ..models import gmm

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


class BenchModel(NamedTuple):
    name: str
    denoiser: Callable
    shape: tuple          # event shape of one sample
    description: str
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX


def separated_mixture() -> BenchModel:
    """8 narrow modes (std 0.05) on a circle of radius 1 in 2-D: well separated."""
    angles = 2 * np.pi * np.arange(8) / 8
    means = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return BenchModel("separated", gmm(means, 0.05), (2,),
                      "exact mixture, 8 modes on the unit circle in 2-D, std 0.05, equal weights")


def overlapping_mixture() -> BenchModel:
    """10 broad 8x8x1 modes (std 0.5, means uniform in [-1, 1]) with unequal weights: overlapping."""
    means = jax.random.uniform(jax.random.PRNGKey(11), (10, 8, 8, 1), minval=-1.0, maxval=1.0)
    weights = np.arange(1, 11, dtype=np.float32)
    return BenchModel("overlapping", gmm(means, 0.5, weights), (8, 8, 1),
                      "exact mixture, 10 modes on 8x8x1 images, means U[-1, 1] (seed 11), std 0.5, "
                      "weights 1..10")


def digits_model() -> BenchModel:
    """The shipped EDM digits U-Net (``iia_jax.pretrained.digits``)."""
    from ..pretrained import digits
    return BenchModel("digits", digits(), (8, 8, 1),
                      "shipped digits denoiser (EDM U-Net, iia_jax.pretrained.digits)")


MODELS = {"separated": separated_mixture, "overlapping": overlapping_mixture, "digits": digits_model}
