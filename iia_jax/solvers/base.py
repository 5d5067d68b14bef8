"""The solver interface shared by every family.

A solver is a pair of pure functions over a NamedTuple state, in the style of blackjax kernels:

    state = init(x)
    state, x_next, denoised = step(denoiser, state, x, sigma, sigma_next, final)

``step`` advances ``x`` from ``sigma`` to ``sigma_next`` on the probability-flow ODE
``dx/dsigma = (x - D(x, sigma)) / sigma`` and also returns every denoiser output it computed,
stacked as ``denoised [evals_per_step, *x.shape]`` (IIA builds its features from these, so it
needs no extra model call).  ``final`` is a static flag for the step to ``sigma_next = 0``,
where some solvers change their formula; an output the final step does not compute is zero.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp

from ..validate import denoiser_output


class Solver(NamedTuple):
    name: str
    init: Callable[[Any], Any]
    step: Callable[..., tuple]
    evals_per_step: int = 1

    def nfe(self, num_steps: int) -> int:
        """Network evaluations for ``num_steps`` steps (the final step always costs one)."""
        return self.evals_per_step * (num_steps - 1) + 1


def derivative(x, denoised, sigma):
    """The ODE direction ``d = (x - D) / sigma`` (the eps-prediction in sigma-space)."""
    return (x - denoised) / sigma


def denoise(denoiser, x, sigma):
    """Call the denoiser with ``sigma`` in x's dtype; its output must have x's shape and a
    floating dtype (:func:`iia_jax.validate.denoiser_output`) and is cast to x's dtype."""
    return denoiser_output(denoiser(x, jnp.asarray(sigma, x.dtype)), x)
