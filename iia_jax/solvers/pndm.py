"""Pseudo numerical methods (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds"; Zhang & Chen 2023, DEIS) in sigma-space.

The DDIM transfer ``x_{i+1} = x_i + h_i eps`` is the Euler step, so a pseudo linear multistep
method is an Adams–Bashforth (AB) step on the stored directions ``d_j = (x_j - D_j)/sigma_j``:

* ``ipndm`` (improved PNDM): AB of order ``min(i + 1, 4)`` (lower orders warm-start the first
  three steps).  The weights are those of variable-step AB: ``x_{i+1} = x_i + h_i sum_k b_k d_{i-k}``
  with ``sum_k b_k tau_k^m = 1/(m + 1)`` (m < order) and ``tau_k = (sigma_{i-k} - sigma_i)/h_i``,
  i.e. the exact integral of the polynomial through the stored directions.  On a uniform grid
  they are iPNDM's fixed weights 1; (3, -1)/2; (23, -16, 5)/12; (55, -59, 37, -9)/24.  We use the
  variable-step form so that the method keeps its order on the non-uniform grids people use
  (Karras, log-SNR), where fixed weights lose it.  The step to sigma = 0 is first order (as
  ``lower_order_final`` does for DPM-Solver): on fine grids it is far longer than the steps
  before it, and extrapolating the cubic over it multiplies float32 round-off by ~(N/rho)^3.
* ``spndm`` (S-PNDM): second-order pseudo linear multistep with the fixed weights
  ``(3 d_i - d_{i-1}) / 2`` as in the PNDM paper, with an Euler (DDIM) first step so that N
  steps cost N evaluations.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .base import Solver, denoise, derivative

MAX_ORDER = 4


class PNDMState(NamedTuple):
    prev_derivatives: jnp.ndarray  # [MAX_ORDER - 1, *x.shape]: d_{i-1}, d_{i-2}, d_{i-3}
    prev_sigmas: jnp.ndarray       # [MAX_ORDER - 1]: their sigmas
    count: jnp.ndarray             # how many stored directions are valid


def init(x) -> PNDMState:
    # Placeholder sigmas are distinct and negative, so unused Vandermonde systems stay regular.
    return PNDMState(jnp.zeros((MAX_ORDER - 1,) + x.shape, x.dtype),
                     -jnp.arange(1, MAX_ORDER, dtype=x.dtype), jnp.zeros((), jnp.int32))


def adams_bashforth_weights(sigmas, sigma_next, order: int):
    """Variable-step AB weights ``b [order]`` for nodes ``sigmas[:order]`` (newest first)."""
    h = sigma_next - sigmas[0]
    tau = (sigmas[:order] - sigmas[0]) / h
    # Integer powers, so the gradient in the sigmas is finite where tau = 0 (fit_plan needs it).
    vandermonde = jnp.stack([tau ** k for k in range(order)])
    moments = 1.0 / jnp.arange(1, order + 1, dtype=tau.dtype)
    return jnp.linalg.solve(vandermonde, moments)


def _push(state, d_cur, sigma):
    return PNDMState(jnp.concatenate([d_cur[None], state.prev_derivatives[:-1]]),
                     jnp.concatenate([jnp.reshape(sigma, (1,)).astype(state.prev_sigmas.dtype),
                                      state.prev_sigmas[:-1]]),
                     jnp.minimum(state.count + 1, MAX_ORDER - 1))


def _multistep(weights, d_cur, state):
    directions = jnp.concatenate([d_cur[None], state.prev_derivatives])
    return jnp.tensordot(weights, directions[: weights.shape[0]], axes=1)


def ipndm_step(denoiser, state, x, sigma, sigma_next, final=False):
    d_cur = denoise(denoiser, x, sigma)
    slope = derivative(x, d_cur, sigma)
    nodes = jnp.concatenate([jnp.reshape(sigma, (1,)).astype(x.dtype), state.prev_sigmas])
    weights = jnp.zeros((MAX_ORDER,), x.dtype).at[0].set(1.0)
    if final:  # first order to sigma = 0, see the module docstring
        return _push(state, slope, sigma), x + (sigma_next - sigma) * slope, d_cur[None]
    for order in range(2, MAX_ORDER + 1):
        b = jnp.pad(adams_bashforth_weights(nodes, sigma_next, order), (0, MAX_ORDER - order))
        weights = jnp.where(jnp.minimum(state.count + 1, MAX_ORDER) == order, b, weights)
    x_next = x + (sigma_next - sigma) * _multistep(weights, slope, state)
    return _push(state, slope, sigma), x_next, d_cur[None]


def spndm_step(denoiser, state, x, sigma, sigma_next, final=False):
    d_cur = denoise(denoiser, x, sigma)
    slope = derivative(x, d_cur, sigma)
    weights = jnp.where(state.count > 0, jnp.array([1.5, -0.5], x.dtype), jnp.array([1.0, 0.0], x.dtype))
    x_next = x + (sigma_next - sigma) * _multistep(weights, slope, state)
    return _push(state, slope, sigma), x_next, d_cur[None]


IPNDM = Solver("ipndm", init, ipndm_step)
SPNDM = Solver("spndm", init, spndm_step)
