"""The benchmark models: exact Gaussian mixtures and the shipped digits network.

All are EDM denoisers ``D(x, sigma)`` (docs/design.md §2); the mixtures are exact, so their ODE
has no model error, only integration error.  :data:`MODELS` are the peer benchmark's
(``python -m iia_jax.bench``, sigma in [0.002, 80]); the plain denoisers below them are the
mixtures of the scripts in ``benchmarks/``, each defined once here.
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


def prototypes():
    """10 well-separated 8x8x1 prototypes, uniform in [-1, 1] (seed 7), std 0.2, equal weights:
    the image mixture of ``benchmarks/iia.py``, ``multistep.py``, ``fitted_grid.py``,
    ``scaling.py`` and ``multihost_fit.py``."""
    means = jax.random.uniform(jax.random.PRNGKey(7), (10, 8, 8, 1), minval=-1.0, maxval=1.0)
    return gmm(means, 0.2)


def ring_2d():
    """8 modes on the unit circle in 2-D, std 0.1 (``benchmarks/solvers.py``)."""
    angles = 2 * np.pi * np.arange(8) / 8
    return gmm(np.stack([np.cos(angles), np.sin(angles)], 1), 0.1)


def smooth_patterns():
    """8 smooth 8x8x1 patterns (4x4 uniform noise in [-1, 1], seed 11, bilinearly upsampled),
    std 0.1 (``benchmarks/solvers.py``)."""
    coarse = jax.random.uniform(jax.random.PRNGKey(11), (8, 4, 4, 1), minval=-1.0, maxval=1.0)
    return gmm(jax.image.resize(coarse, (8, 8, 8, 1), "bilinear"), 0.1)


def modes_4d():
    """6 modes in 4-D, means 2 N(0, I) (numpy seed 0), std 0.25 (``benchmarks/multistep.py``)."""
    means = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    return gmm(2.0 * means, 0.25)
