"""DPM-Solver++(2M) and (3M), the multistep data-prediction solvers (Lu et al. 2022,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models").

In sigma-space ``alpha = 1`` and ``lambda = -log sigma``.  With ``h_i = lambda_{i+1} - lambda_i``
every step is the exponential integrator

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h_i) D~_i,

where ``D~_i`` estimates the data prediction over the step from the stored outputs ``D_j``:

* order 1: ``D~_i = D_i``;
* order 2 (2M): ``D~_i = (1 + 1/(2 r_i)) D_i - D_{i-1} / (2 r_i)``, ``r_i = h_{i-1} / h_i``;
* order 3 (3M): with ``r0 = h_{i-1}/h_i``, ``r1 = h_{i-2}/h_i``, the divided differences
  ``q0 = (D_i - D_{i-1})/r0`` and ``q1 = (D_{i-1} - D_{i-2})/r1`` give the first and second
  derivative estimates ``D1 = q0 + r0 (q0 - q1)/(r0 + r1)`` and ``D2 = (q0 - q1)/(r0 + r1)``, and

      x_{i+1} = (sigma_{i+1}/sigma_i) x_i - phi1 D_i + phi2 D1 - phi3 D2,
      phi1 = expm1(-h),  phi2 = phi1/h + 1,  phi3 = (phi1 + h)/h^2 - 1/2.

This is the 3M update of ``diffusers`` and of the DPM-Solver reference code.  Expanding ``D`` in
lambda, ``D1 ~ h D'`` and ``D2 ~ h^2 D''/2``, while the exact integral of the quadratic term has
the weight ``2 phi3`` on ``D2``; so this update cancels only half of the third-order term: it converges at order 2 (measured 2.05, with about 3x less error
than 2M; tests/test_solvers_multistep.py).  The doubled weight converges at order 3 but had larger
errors on Karras grids at NFE 5-50 (docs/solvers.md), so we keep the update peers use.

The first steps warm up with the lower orders (3M: orders 1, 2, 3).  The step to sigma = 0 returns
``D_i`` (first order: as ``diffusers``' ``DPMSolverMultistepScheduler`` does with a zero final
sigma).  ``diffusers`` with ``lower_order_final`` and fewer than 15 steps also drops 3M to second
order on the step before; our step only knows whether it is the final one, so it does not.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .base import Solver, denoise


class DPMState(NamedTuple):
    prev_denoised: jnp.ndarray   # [window - 1, *x.shape]: D_{i-1}, D_{i-2}, ...
    prev_h: jnp.ndarray          # [window - 1]: h_{i-1}, h_{i-2}, ...
    count: jnp.ndarray           # how many stored outputs are valid


def init_state(x, window: int) -> DPMState:
    """A state that keeps the ``window - 1`` previous outputs and step sizes (placeholders 0 and 1)."""
    return DPMState(jnp.zeros((window - 1,) + x.shape, x.dtype), jnp.ones((window - 1,), x.dtype),
                    jnp.zeros((), jnp.int32))


def push(state, d_cur, h) -> DPMState:
    """Store ``D_i`` and ``h_i`` as the newest history (the oldest falls out)."""
    h = jnp.reshape(h, (1,)).astype(state.prev_h.dtype)
    return DPMState(jnp.concatenate([d_cur[None], state.prev_denoised[:-1]]),
                    jnp.concatenate([h, state.prev_h[:-1]]),
                    jnp.minimum(state.count + 1, state.prev_h.shape[0]))


def log_step(sigma, sigma_next):
    """``h = lambda_{i+1} - lambda_i`` with ``lambda = -log sigma``."""
    return jnp.log(sigma) - jnp.log(sigma_next)


def exponential_step(x, sigma, sigma_next, h, estimate):
    """``(sigma_{i+1}/sigma_i) x - expm1(-h) D~``: the step with a constant data prediction."""
    return (sigma_next / sigma) * x - jnp.expm1(-h) * estimate


def second_order_estimate(d_cur, d_prev, h, h_prev):
    """``D~ = (1 + 1/(2r)) D_i - D_{i-1}/(2r)`` with ``r = h_{i-1}/h_i`` (the 2M midpoint rule)."""
    half_inv_r = 0.5 * h / h_prev
    return (1.0 + half_inv_r) * d_cur - half_inv_r * d_prev


def derivative_estimates(d_cur, state, h):
    """3M's ``(D1, D2)`` from ``D_i`` and the two stored outputs (see the module docstring)."""
    d1, d2 = state.prev_denoised[0], state.prev_denoised[1]
    r0, r1 = state.prev_h[0] / h, state.prev_h[1] / h
    q0, q1 = (d_cur - d1) / r0, (d1 - d2) / r1
    return q0 + (r0 / (r0 + r1)) * (q0 - q1), (q0 - q1) / (r0 + r1)


def _third_order_step(x, sigma, sigma_next, h, d_cur, state):
    first, second = derivative_estimates(d_cur, state, h)
    phi1 = jnp.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = (phi1 + h) / h ** 2 - 0.5
    return (sigma_next / sigma) * x - phi1 * d_cur + phi2 * first - phi3 * second


def _make_step(order: int):
    """The step of DPM-Solver++(2M) (order 2) or (3M) (order 3), warm-starting at order 1."""
    def step(denoiser, state, x, sigma, sigma_next, final=False):
        d_cur = denoise(denoiser, x, sigma)
        if final:
            return state, d_cur, d_cur[None]
        h = log_step(sigma, sigma_next)
        estimate = jnp.where(state.count >= 1,
                             second_order_estimate(d_cur, state.prev_denoised[0], h, state.prev_h[0]),
                             d_cur)
        x_next = exponential_step(x, sigma, sigma_next, h, estimate)
        if order == 3:
            x_next = jnp.where(state.count >= 2,
                               _third_order_step(x, sigma, sigma_next, h, d_cur, state), x_next)
        return push(state, d_cur, h), x_next, d_cur[None]
    return step


SOLVER = Solver("dpmpp_2m", lambda x: init_state(x, 2), _make_step(2))
SOLVER_3M = Solver("dpmpp_3m", lambda x: init_state(x, 3), _make_step(3))
