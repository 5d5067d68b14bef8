"""UniPC, the unified predictor-corrector (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models"), data prediction, ``B(h) = expm1(-h)`` ("bh2"),
predictor order 2: UniP-2 with the UniC-2 corrector, order 3 overall.

In sigma-space (``alpha = 1``, ``lambda = -log sigma``, ``h_i = lambda_{i+1} - lambda_i``) step i
receives ``x_i`` (the previous predictor's output, plus the IIA correction if any) and

1. calls the model once, ``D_i = D(x_i, sigma_i)``;
2. corrects ``x_i`` with UniC, which uses ``D_i`` in place of the extrapolation the previous
   predictor made.  The corrector and that predictor start from the same point with the same
   ``(sigma_i/sigma_{i-1}) x - phi1 D_{i-1}`` part, so the correction is a combination of
   model outputs only.  With ``h = h_{i-1}``, ``phi1 = B = expm1(-h)``,
   ``g1 = phi1/(-h) - 1``, ``g2 = g1/(-h) - 1/2`` and ``b_k = k! g_k / B``:

       order 1 (step 1):   x_i^c = x_i - (B/2) (D_i - D_{i-1})
       order 2 (later):    x_i^c = x_i - B [(rho_0 - 1/2) q + rho_1 (D_i - D_{i-1})],
                           r = -h_{i-2}/h_{i-1},  q = (D_{i-2} - D_{i-1})/r,
                           [[1, 1], [r, 1]] rho = [b_1, b_2];

   (the 1/2 is the weight the order-2 predictor gave ``q``);
3. predicts ``x_{i+1}`` from ``x_i^c`` with UniP: order 1 on the first step, then order 2, whose
   weight 1/2 makes it exactly DPM-Solver++(2M)'s midpoint step (see :mod:`.dpm_solver`).

So N steps cost N model calls.  The step to sigma = 0 is first order, ``x_N = D_{N-1}`` (as in
``diffusers``' ``UniPCMultistepScheduler`` defaults, ``lower_order_final`` and a zero final sigma):
the corrector of ``x_{N-1}`` is multiplied by ``sigma_N / sigma_{N-1} = 0`` there, so it is skipped,
and nothing is corrected after the final step.  ``denoised`` holds ``[D_i]``, the model output at
the ``x_i`` the step received (before its correction), which the predictor reuses.
"""
from __future__ import annotations

import jax.numpy as jnp

from .base import Solver, denoise
from .dpm_solver import exponential_step, init_state, log_step, push, second_order_estimate

WINDOW = 3   # D_i, D_{i-1}, D_{i-2}: the outputs one step combines


def corrector_delta(d_cur, state):
    """``x_i^c - x_i``: UniC of order ``state.count`` (1 or 2) with the new output ``D_i``."""
    h = state.prev_h[0]
    d_prev, d_older = state.prev_denoised[0], state.prev_denoised[1]
    phi1 = jnp.expm1(-h)
    g1 = phi1 / (-h) - 1.0
    g2 = g1 / (-h) - 0.5
    b1, b2 = g1 / phi1, 2.0 * g2 / phi1
    r = -state.prev_h[1] / h
    rho0, rho1 = (b1 - b2) / (1.0 - r), (b2 - r * b1) / (1.0 - r)
    change = d_cur - d_prev
    first = 0.5 * change
    second = (rho0 - 0.5) * (d_older - d_prev) / r + rho1 * change
    return -phi1 * jnp.where(state.count >= 2, second, first)


def init(x):
    return init_state(x, WINDOW)


def step(denoiser, state, x, sigma, sigma_next, final=False):
    d_cur = denoise(denoiser, x, sigma)
    if final:
        return state, d_cur, d_cur[None]
    x_corrected = jnp.where(state.count >= 1, x + corrector_delta(d_cur, state), x)
    h = log_step(sigma, sigma_next)
    estimate = jnp.where(state.count >= 1,
                         second_order_estimate(d_cur, state.prev_denoised[0], h, state.prev_h[0]),
                         d_cur)
    return push(state, d_cur, h), exponential_step(x_corrected, sigma, sigma_next, h, estimate), d_cur[None]


SOLVER = Solver("unipc", init, step)
