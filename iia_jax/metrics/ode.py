"""ODE error: distance of samples to the solution of the same ODE from the same noise (docs/design.md §5).

With exact mixture denoisers the RMSE is dominated by the few trajectories that flip between
modes; the median per-sample RMS shows the integration accuracy.  Report both.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class ODEError(NamedTuple):
    median: float   # median over samples of the per-sample RMS error
    rmse: float     # root of the mean squared error over all samples and coordinates

    def __str__(self):
        return f"median {self.median:.4g}, RMSE {self.rmse:.4g}"


def per_sample_rms(x, reference):
    """``sqrt(mean((x - ref)^2))`` over all axes but the first: shape ``[B]``."""
    if x.shape != reference.shape:
        raise ValueError(f"x has shape {x.shape} but reference has shape {reference.shape}")
    axes = tuple(range(1, x.ndim))
    return jnp.sqrt(jnp.mean((x - reference) ** 2, axis=axes))


def ode_error(x, reference) -> ODEError:
    """Median per-sample RMS and overall RMSE of ``x`` against ``reference``."""
    rms = np.asarray(per_sample_rms(x, reference), dtype=np.float64)
    return ODEError(float(np.median(rms)), float(np.sqrt(np.mean(rms ** 2))))
