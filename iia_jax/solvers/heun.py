"""Heun's second-order method, EDM Algorithm 1 without churn (Karras et al. 2022).

With ``h = sigma_{i+1} - sigma_i``, ``D_i = D(x_i, sigma_i)`` and the Euler predictor
``x_bar = x_i + h (x_i - D_i)/sigma_i``, the corrector uses ``D'_{i+1} = D(x_bar, sigma_{i+1})``:

    x_{i+1} = x_i + h/2 [(x_i - D_i)/sigma_i + (x_bar - D'_{i+1})/sigma_{i+1}].

The last step (to sigma = 0) is plain Euler, so N steps cost 2N - 1 evaluations.
``denoised`` holds ``[D_i, D'_{i+1}]`` (``D'`` is zero on the final step).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .base import Solver, denoise, derivative


class HeunState(NamedTuple):
    pass


def init(x) -> HeunState:
    return HeunState()


def step(denoiser, state, x, sigma, sigma_next, final=False):
    h = sigma_next - sigma
    d_cur = denoise(denoiser, x, sigma)
    slope = derivative(x, d_cur, sigma)
    x_bar = x + h * slope
    if final:
        return state, x_bar, jnp.stack([d_cur, jnp.zeros_like(d_cur)])
    d_next = denoise(denoiser, x_bar, sigma_next)
    x_next = x + 0.5 * h * (slope + derivative(x_bar, d_next, sigma_next))
    return state, x_next, jnp.stack([d_cur, d_next])


SOLVER = Solver("heun", init, step, evals_per_step=2)
