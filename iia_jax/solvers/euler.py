"""Euler's method, which in sigma-space is exactly deterministic DDIM (Song et al. 2021):

    d_i = (x_i - D(x_i, sigma_i)) / sigma_i,    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i.
"""
from __future__ import annotations

from typing import NamedTuple

from .base import Solver, denoise, derivative


class EulerState(NamedTuple):
    pass


def init(x) -> EulerState:
    return EulerState()


def step(denoiser, state, x, sigma, sigma_next, final=False):
    d_cur = denoise(denoiser, x, sigma)
    x_next = x + (sigma_next - sigma) * derivative(x, d_cur, sigma)
    return state, x_next, d_cur[None]


SOLVER = Solver("euler", init, step)
