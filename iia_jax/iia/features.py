"""IIA feature sets: the vectors a solver step already has, combined linearly on top of it.

At step i the IIA sampler computes ``x_{i+1} = Phi(x_i) + sum_k c[i, k] f[i, k]`` (Zhang, Niwa &
Kleijn, "On Accelerating Diffusion-Based Sampling Processes via Improved Integration
Approximation", ICLR 2024).  A preset names the features; ``history = r`` adds the per-step
features of the r previous steps (zero, with coefficient 0, while they do not exist yet):

=================  ===========  ==============================================================
preset             solvers      features at step i (j = i, ..., i - depth)
=================  ===========  ==============================================================
``iia-edm``        heun         ``x_j - D_j`` and ``D'_{j+1} - D_j`` (first, second gradient)
``biia-edm``       heun         the Heun increment ``Phi(x_j) - x_j``
``iia-ddim``       euler        ``D_j`` and ``eps_j = (x_j - D_j)/sigma_j``
``iia-dpm-solver`` dpmpp_2m/3m  ``x_i``, and ``D_j`` with depth ``w - 1 + r``
``iia-unipc``      unipc        ``x_i``, and ``D_j`` with depth ``w - 1 + r``
``iia-pndm``       ipndm/spndm  ``x_i``, and ``d_j`` over the solver's stored directions (or r)
``generic``        any          ``x_i``, and every denoiser output of step j
=================  ===========  ==============================================================

``w`` is the number of outputs one base step combines (2 for dpmpp_2m, 3 for dpmpp_3m and for
unipc, whose corrector also uses ``D_{i-2}``), so ``r = 0`` spans exactly the base step and ``r``
adds that many older outputs.  UniPC's ``D_j`` are the outputs at the states the sampler handed in
(its corrected state is ``x_i`` plus a combination of them, so it adds nothing to the span).

The Heun final step is Euler, so its second gradient is zero.  Features never call the model.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from .. import validate
from ..solvers import derivative, get as get_solver

PRESET_SOLVERS = {
    "iia-edm": ("heun",),
    "biia-edm": ("heun",),
    "iia-ddim": ("euler",),
    "iia-dpm-solver": ("dpmpp_2m", "dpmpp_3m"),
    "iia-unipc": ("unipc",),
    "iia-pndm": ("ipndm", "spndm"),
    "generic": None,
}
DEFAULT_PRESET = {"heun": "iia-edm", "euler": "iia-ddim", "dpmpp_2m": "iia-dpm-solver",
                  "dpmpp_3m": "iia-dpm-solver", "unipc": "iia-unipc",
                  "ipndm": "iia-pndm", "spndm": "iia-pndm"}
# The sequential target each solver does best with.  trajectory for every solver: it also removes
# the error accumulated so far.  heun was local until the peer benchmark (docs/benchmarks.md,
# overlapping mixture: trajectory 0.22x the error) and the digits network (benchmarks/
# digits_shrinkage.py: median error 0.145 -> 0.120, quality better) both preferred trajectory;
# only benchmarks/iia.py's separated 4-D mixture prefers local for heun (docs/iia.md).
# dpmpp_3m and unipc (benchmarks/multistep.py, docs/solvers.md, exact mixtures, NFE 3-10): local
# was 1.6x worse than trajectory in geometric mean; at the default r = 1 (features x_i and
# D_i..D_{i-3}) 3M did best, and unipc within 4 % of r = 2 or 3 (better at some NFE, worse at others).
DEFAULT_TARGET = {"heun": "trajectory", "euler": "trajectory", "dpmpp_2m": "trajectory",
                  "dpmpp_3m": "trajectory", "unipc": "trajectory",
                  "ipndm": "trajectory", "spndm": "trajectory"}
_PNDM_WINDOW = {"ipndm": 4, "spndm": 2}   # directions each PNDM solver combines
_DPM_WINDOW = {"dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 3}   # outputs each exponential step combines


class FeatureSpec(NamedTuple):
    """How to build the features of one step.

    ``current(x, x_base, denoised, sigma, final) -> [C, *x.shape]`` are used at their own step
    only; ``per_step(...) -> [P, *x.shape]`` are also kept for ``depth`` later steps.
    """

    solver: str
    preset: str
    history: int
    current: Callable
    per_step: Callable
    num_current: int
    num_per_step: int
    depth: int

    @property
    def num_features(self) -> int:
        return self.num_current + self.num_per_step * (1 + self.depth)

    def init_history(self, x):
        return jnp.zeros((self.depth, self.num_per_step) + x.shape, x.dtype)

    def features(self, x, x_base, denoised, history, sigma, final):
        """``(f [K, *x.shape], new_history)``: current, this step's, then older per-step features."""
        now = self.per_step(x, x_base, denoised, sigma, final)
        parts = [self.current(x, x_base, denoised, sigma, final), now,
                 history.reshape((-1,) + x.shape)]
        if self.depth:
            history = jnp.concatenate([now[None], history[:-1]])
        return jnp.concatenate(parts), history


def _none(x, *_):
    return jnp.zeros((0,) + x.shape, x.dtype)


def _state(x, *_):
    return x[None]


def _edm_gradients(x, x_base, denoised, sigma, final):
    second = jnp.zeros_like(x) if final else denoised[1] - denoised[0]
    return jnp.stack([x - denoised[0], second])


def _heun_increment(x, x_base, *_):
    return (x_base - x)[None]


def _ddim_outputs(x, x_base, denoised, sigma, final):
    return jnp.stack([denoised[0], derivative(x, denoised[0], sigma)])


def _denoised(x, x_base, denoised, sigma, final):
    return denoised


def _first_denoised(x, x_base, denoised, sigma, final):
    return denoised[:1]


def _direction(x, x_base, denoised, sigma, final):
    return derivative(x, denoised[0], sigma)[None]


def feature_spec(solver: str, preset: str | None = None, history: int = 1) -> FeatureSpec:
    """The :class:`FeatureSpec` of ``preset`` (default: the solver's own preset) and ``history``."""
    evals = get_solver(solver).evals_per_step
    preset = DEFAULT_PRESET[solver] if preset is None else preset
    if preset not in PRESET_SOLVERS:
        raise ValueError(f"preset must be one of {sorted(PRESET_SOLVERS)}, got {preset!r}")
    allowed = PRESET_SOLVERS[preset]
    if allowed is not None and solver not in allowed:
        raise ValueError(f"preset {preset!r} is for solver(s) {list(allowed)}, not {solver!r}; "
                         f"use preset={DEFAULT_PRESET[solver]!r} or 'generic'")
    r = validate.integer(history, "history", 0)
    exponential = (_state, 1, _first_denoised, 1, _DPM_WINDOW.get(solver, 1) - 1 + r)
    table = {
        "iia-edm": (_none, 0, _edm_gradients, 2, r),
        "biia-edm": (_none, 0, _heun_increment, 1, r),
        "iia-ddim": (_none, 0, _ddim_outputs, 2, r),
        "iia-dpm-solver": exponential,
        "iia-unipc": exponential,
        "iia-pndm": (_state, 1, _direction, 1, max(r, _PNDM_WINDOW.get(solver, 1) - 1)),
        "generic": (_state, 1, _denoised, evals, r),
    }
    current, n_cur, per_step, n_per, depth = table[preset]
    return FeatureSpec(solver, preset, r, current, per_step, n_cur, n_per, depth)
