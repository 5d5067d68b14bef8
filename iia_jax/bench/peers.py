"""Peers stepping our JAX model: the torch schedulers of `diffusers` and the solvers of `diffrax`.

**diffusers.** A VP scheduler sees ``x_vp = x / sqrt(1 + sigma^2)`` and wants
``eps(x_vp, t)``; with ``x = x_vp sqrt(1 + sigma^2)`` our denoiser gives
``eps = (x - D(x, sigma)) / sigma`` (docs/design.md §2).  The grid is handed over as the scheduler's
own training table: ``num_train_timesteps = N`` and ``trained_betas`` chosen so that
``alphas_cumprod[k] = 1 / (1 + sigma_{N-1-k}^2)``, which is then set again in float64 (diffusers
builds it in float32, where ``1 - alphas_cumprod`` loses the small sigmas: below about 2.4e-4 it is
exactly 0).  With ``trailing`` spacing (``leading`` for DDIM) the timesteps are ``N-1, ..., 0``, so
the scheduler's sigmas are our grid and its last step goes to 0 (``final_sigmas_type="zero"``,
DDIM's ``set_alpha_to_one``).  DEIS always ends at the table's smallest sigma, so its table gets one more
entry, ``TAIL_RATIO * sigma_{N-1}``, below the grid.  The sigma-space schedulers (Euler, Heun)
get the same table; their ``scale_model_input`` also hands the network ``x_vp``.  Every scheduler
keeps its defaults otherwise (orders, corrector, lower-order final steps).  NFE is counted.

**diffrax.** The probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` from
``sigma_0`` to the last non-zero sigma, then the exact Euler step to 0 (``x_0 = D(x, sigma)``,
one evaluation), as our solvers end.  Fixed-step solvers step on the grid (``StepTo``); the
adaptive one (Tsit5 with a PID controller, per sample under ``vmap``) integrates to ``sigma_min``
and reports its mean NFE.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TAIL_RATIO = 1e-4   # DEIS ends at TAIL_RATIO * sigma_{N-1} instead of 0


class DiffusersPeer(NamedTuple):
    name: str          # label in tables
    cls: str           # diffusers scheduler class
    kwargs: dict       # scheduler config besides the table
    spacing: str       # timestep_spacing that yields N-1, ..., 0 on our table
    sigma_space: bool  # the scheduler's sample is x (sigma-space), not x_vp
    tail: bool = False  # the table has an extra sigma below the grid (DEIS)


DIFFUSERS_PEERS = (
    DiffusersPeer("DDIM", "DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=True, steps_offset=0),
                  "leading", False),
    DiffusersPeer("DPM++2M", "DPMSolverMultistepScheduler",
                  dict(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"), "trailing", False),
    DiffusersPeer("DPM++3M", "DPMSolverMultistepScheduler",
                  dict(algorithm_type="dpmsolver++", solver_order=3, final_sigmas_type="zero"), "trailing", False),
    DiffusersPeer("UniPC", "UniPCMultistepScheduler", dict(final_sigmas_type="zero"), "trailing", False),
    DiffusersPeer("DEIS", "DEISMultistepScheduler", dict(steps_offset=0), "leading", False, tail=True),
    DiffusersPeer("Euler", "EulerDiscreteScheduler", dict(final_sigmas_type="zero"), "trailing", True),
    DiffusersPeer("Heun", "HeunDiscreteScheduler", dict(), "trailing", True),
)
DIFFUSERS_BY_NAME = {p.name: p for p in DIFFUSERS_PEERS}


def trained_betas(table) -> np.ndarray:
    """Betas whose ``alphas_cumprod`` is ``1 / (1 + table^2)`` (``table`` increasing, float64)."""
    abar = 1.0 / (1.0 + np.asarray(table, np.float64) ** 2)
    return 1.0 - abar / np.concatenate([[1.0], abar[:-1]])


def make_scheduler(peer: DiffusersPeer, sigmas):
    """A `diffusers` scheduler whose timesteps step along ``sigmas`` (``[N + 1]``, ending in 0)."""
    import diffusers

    grid = np.asarray(sigmas, np.float64)[:-1][::-1]          # increasing, N entries
    if peer.tail:
        grid = np.concatenate([[grid[0] * TAIL_RATIO], grid])
    import torch

    scheduler = getattr(diffusers, peer.cls)(
        num_train_timesteps=len(grid), trained_betas=trained_betas(grid).tolist(),
        timestep_spacing=peer.spacing, prediction_type="epsilon", **peer.kwargs)
    scheduler.alphas_cumprod = torch.from_numpy(1.0 / (1.0 + grid ** 2))   # float64, see module doc
    scheduler.set_timesteps(len(sigmas) - 1)
    return scheduler


def eps_function(denoiser):
    """jitted ``eps(x_vp, sigma)`` of an EDM denoiser (docs/design.md §2)."""
    @jax.jit
    def eps(x_vp, sigma):
        x = x_vp * jnp.sqrt(1.0 + sigma ** 2)
        return (x - denoiser(x, sigma)) / sigma
    return eps


def scheduler_sigma(scheduler, t) -> float:
    """The sigma the scheduler assigns to its (integer-valued) timestep ``t``."""
    abar = float(scheduler.alphas_cumprod[int(round(float(t)))])
    return math.sqrt((1.0 - abar) / abar)


def run_diffusers(peer: DiffusersPeer, eps, sigmas, x_T):
    """Sample with a `diffusers` scheduler along ``sigmas`` from ``x_T`` (sigma-space, numpy).

    ``eps`` is :func:`eps_function` of the model.  Returns ``(x_0 [float32 numpy], nfe)``.
    """
    import torch

    scheduler = make_scheduler(peer, sigmas)
    x_T = np.asarray(x_T, np.float64)
    x = torch.from_numpy(x_T if peer.sigma_space else x_T / math.sqrt(1.0 + float(sigmas[0]) ** 2))
    nfe = 0
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        sigma = np.float32(scheduler_sigma(scheduler, t))
        e = np.asarray(eps(np.asarray(x_in, np.float32), sigma), np.float64)
        x = scheduler.step(torch.from_numpy(e), t, x).prev_sample
        nfe += 1
    out = x.numpy()
    if peer.tail and not peer.sigma_space:   # DEIS ends at a tiny sigma: back to sigma-space
        out = out * math.sqrt(1.0 + (float(sigmas[-2]) * TAIL_RATIO) ** 2)
    return out.astype(np.float32), nfe


def peer_grid(peer: DiffusersPeer, sigmas) -> np.ndarray:
    """The sigmas the scheduler actually steps through (its float32 table), ending in 0."""
    scheduler = make_scheduler(peer, sigmas)
    seen = [scheduler_sigma(scheduler, t) for t in scheduler.timesteps]
    return np.asarray(list(dict.fromkeys(seen)) + [0.0], np.float32)


# ----------------------------------------------------------------------------- diffrax

# name -> (diffrax solver class, new evaluations per step, evaluations before the first step)
DIFFRAX_FIXED = {"diffrax Euler": ("Euler", 1, 0), "diffrax Heun": ("Heun", 2, 0),
                 "diffrax Bosh3": ("Bosh3", 3, 1)}
DIFFRAX_ADAPTIVE = "diffrax Tsit5"
TSIT5_EVALS = (6, 1)   # FSAL: 6 new evaluations per attempted step, 1 before the first
PEERS = tuple(p.name for p in DIFFUSERS_PEERS) + tuple(DIFFRAX_FIXED) + (DIFFRAX_ADAPTIVE,)


def _vector_field(denoiser):
    def field(sigma, x, args):
        return (x - denoiser(x, sigma)) / sigma
    return field


def diffrax_nfe(name: str, num_steps: int) -> int:
    """Model calls of a fixed-step diffrax peer on a grid of ``num_steps`` intervals: its
    evaluations before the first step, per step over the ``num_steps - 1`` steps to the last
    non-zero sigma, and one for the jump to 0."""
    _, per_step, first = DIFFRAX_FIXED[name]
    return first + per_step * (num_steps - 1) + 1


def diffrax_fixed(name: str, denoiser, sigmas, x_T):
    """A fixed-step diffrax solver on the grid, then ``x_0 = D(x, sigma_{N-1})``: ``(x_0, nfe)``.

    Jittable; the whole batch is one ODE state (steps are fixed, so this changes nothing)."""
    import diffrax

    cls = DIFFRAX_FIXED[name][0]
    ts = sigmas[:-1]
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_vector_field(denoiser)), getattr(diffrax, cls)(), ts[0], ts[-1], None, x_T,
        stepsize_controller=diffrax.StepTo(ts), saveat=diffrax.SaveAt(t1=True),
        max_steps=int(ts.shape[0]))
    x = sol.ys[-1]
    return denoiser(x, ts[-1]), diffrax_nfe(name, int(ts.shape[0]))


def diffrax_adaptive(denoiser, sigma_min: float, sigma_max: float, x_T, tol: float, max_steps: int = 512):
    """Tsit5 with a PID controller (``rtol = atol = tol``) per sample from ``sigma_max`` to
    ``sigma_min``, then ``x_0 = D(x, sigma_min)``.  Returns ``(x_0, nfe per sample [B])``."""
    import diffrax

    field = _vector_field(lambda x, s: denoiser(x[None], s)[0])

    def one(x):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), sigma_max, sigma_min, -(sigma_max - sigma_min) / 8, x,
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol), saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps)
        return sol.ys[-1], sol.stats["num_steps"]

    x, steps = jax.vmap(one)(x_T)
    per_step, first = TSIT5_EVALS
    return denoiser(x, jnp.asarray(sigma_min, x.dtype)), first + per_step * steps + 1
