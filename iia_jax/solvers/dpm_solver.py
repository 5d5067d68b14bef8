"""DPM-Solver++(2M), the multistep data-prediction solver (Lu et al. 2022, "DPM-Solver++").

In sigma-space ``alpha = 1`` and ``lambda = -log sigma``.  With ``h_i = lambda_{i+1} - lambda_i``
and ``r_i = h_{i-1} / h_i``:

    D~_i    = (1 + 1/(2 r_i)) D_i - D_{i-1} / (2 r_i)          (D~_0 = D_0: first order)
    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h_i) D~_i.

The step to sigma = 0 returns ``D_i`` (first order, as ``diffusers`` does with
``lower_order_final`` and a zero final sigma).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .base import Solver, denoise


class DPMState(NamedTuple):
    prev_denoised: jnp.ndarray   # D_{i-1}
    prev_h: jnp.ndarray          # h_{i-1}
    has_prev: jnp.ndarray        # False before the first step


def init(x) -> DPMState:
    return DPMState(jnp.zeros_like(x), jnp.ones((), x.dtype), jnp.zeros((), bool))


def step(denoiser, state, x, sigma, sigma_next, final=False):
    d_cur = denoise(denoiser, x, sigma)
    if final:
        return DPMState(d_cur, state.prev_h, jnp.ones((), bool)), d_cur, d_cur[None]
    h = jnp.log(sigma) - jnp.log(sigma_next)
    half_inv_r = 0.5 * h / state.prev_h
    corrected = jnp.where(state.has_prev,
                          (1.0 + half_inv_r) * d_cur - half_inv_r * state.prev_denoised, d_cur)
    x_next = (sigma_next / sigma) * x - jnp.expm1(-h) * corrected
    return DPMState(d_cur, h.astype(x.dtype), jnp.ones((), bool)), x_next, d_cur[None]


SOLVER = Solver("dpmpp_2m", init, step)
