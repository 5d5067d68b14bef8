"""The step grid as an axis of its own: four grid families over one sigma range.

Every grid returns ``N + 1`` decreasing sigmas ending in 0 (see :mod:`iia_jax.schedules`):

- ``karras``: EDM's grid (Karras et al. 2022), uniform in ``sigma^(1/7)``;
- ``logsnr_uniform``: uniform in ``lambda = -log sigma`` (DPM-Solver, Lu et al. 2022);
- ``vp_time_uniform``: DDIM's grid (Song et al. 2021), uniform in the time ``t`` of a continuous
  linear-beta VP schedule restricted to ``[sigma_min, sigma_max]``; its last non-zero sigma is
  ``sigma(t_min + (t_max - t_min)/N)``, as DDIM ends;
- ``vp_quadratic``: ``t_i = t_min + (t_max - t_min)(1 - i/N)^2`` on the same VP time.

The names are those of :mod:`iia_jax.schedules` and the CLI's ``--grid`` (``vp_quadratic`` is
:func:`iia_jax.schedules.vp_quadratic`); ``vp_time_uniform`` is ``time_uniform`` on the VP clock
:func:`iia_jax.schedules.vp_time`, which on the CLI's EDM models differs from ``--grid time_uniform``
(uniform in the model's own time, sigma).  Raw results of earlier runs used ``logsnr``,
``time_uniform`` and ``quadratic`` (:data:`OLD_NAMES`).

Peers get the same sigmas (diffusers as a custom timestep table, diffrax as its step times).
"""
from __future__ import annotations

import numpy as np

from .. import schedules, solvers

GRIDS = ("karras", "logsnr_uniform", "vp_time_uniform", "vp_quadratic")
OLD_NAMES = {"logsnr": "logsnr_uniform", "time_uniform": "vp_time_uniform", "quadratic": "vp_quadratic"}


def grid(name: str, num_steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """The ``name`` grid with ``num_steps`` steps from ``sigma_max`` to 0 (float32)."""
    if name == "karras":
        return schedules.karras(num_steps, sigma_min, sigma_max)
    if name == "logsnr_uniform":
        return schedules.logsnr_uniform(num_steps, sigma_min, sigma_max)
    if name == "vp_time_uniform":
        return schedules.time_uniform(schedules.vp_time(sigma_min, sigma_max), num_steps)
    if name == "vp_quadratic":
        return schedules.vp_quadratic(num_steps, sigma_min, sigma_max)
    raise ValueError(f"grid must be one of {GRIDS}, got {name!r}")


def steps_for(nfe: int, cost, exact: bool = False) -> int | None:
    """The most steps ``N >= 2`` whose NFE is at most ``nfe``; None if even 2 steps cost more.

    ``cost``: a solver name (its NFE is ``iia_jax.solvers.get(name).nfe(N)``, e.g. heun's
    ``2N - 1``) or any increasing ``N -> NFE`` (a peer's count).  With ``exact``, None unless that
    ``N`` costs exactly ``nfe`` (heun has no even NFE).  The one rule for every benchmark: a
    requested NFE is never exceeded.
    """
    nfe_of = solvers.get(cost).nfe if isinstance(cost, str) else cost
    if nfe_of(2) > nfe:
        return None
    n = 2
    while nfe_of(n + 1) <= nfe:
        n += 1
    return n if not exact or nfe_of(n) == nfe else None
