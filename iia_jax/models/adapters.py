"""Adapters from common network parameterisations to the EDM denoiser ``D(x, sigma)``.

In sigma-space (docs/design.md §2) a VP network sees ``x_vp = alpha x`` with
``alpha = 1/sqrt(1 + sigma^2)`` at its own time ``t = t(sigma)``, and

* eps-prediction: ``D = x - sigma * eps(alpha x, t)``
* v-prediction (Salimans & Ho 2022, ``v = alpha eps - sigma_vp x0``):
  ``D = alpha^2 x - sigma_vp v = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v``
* x0-prediction: ``D = x0(alpha x, t)``.

Each adapter returns a :class:`jax.tree_util.Partial` over the wrapped network function, so a
network given as a ``Partial`` carrying its params stays a pytree: pass it through ``jax.jit``
as an ordinary argument, or close over it.  Networks receive ``t`` broadcast to shape ``[B]``.
The adapters' own functions are module-level and the time map is itself a ``Partial`` (for DDPM
tables, over the table as a leaf array), so an adapter rebuilt around new params of the same
network, with the same schedule (the factories return one object for equal arguments) or any
``alphas_cumprod`` of the same length, has the same tree structure and ``jax.jit`` reuses its
compilation.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from ..schedules import Schedule, sigma_table

__all__ = ["edm", "from_eps", "from_v", "from_x0", "from_discrete_eps", "from_discrete_v"]


def _batch_time(t, x):
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def _vp_scale(sigma, x):
    sigma = jnp.asarray(sigma, x.dtype)
    return sigma, jnp.reciprocal(jnp.sqrt(1.0 + sigma ** 2))


def _expand(v, x):
    return jnp.reshape(v, jnp.shape(v) + (1,) * (x.ndim - jnp.ndim(v)))


def _checked(name, out, x):
    if out.shape != x.shape:
        raise ValueError(f"{name} returned shape {out.shape}, expected the input shape {x.shape}")
    return out


def _eps_denoiser(time_fn, eps_fn, x, sigma):
    sigma, alpha = _vp_scale(sigma, x)
    eps = _checked("eps_fn", eps_fn(_expand(alpha, x) * x, _batch_time(time_fn(sigma), x)), x)
    return x - _expand(sigma, x) * eps


def _v_denoiser(time_fn, v_fn, x, sigma):
    sigma, alpha = _vp_scale(sigma, x)
    v = _checked("v_fn", v_fn(_expand(alpha, x) * x, _batch_time(time_fn(sigma), x)), x)
    return _expand(alpha ** 2, x) * x - _expand(sigma * alpha, x) * v


def _x0_denoiser(time_fn, x0_fn, x, sigma):
    sigma, alpha = _vp_scale(sigma, x)
    return _checked("x0_fn", x0_fn(_expand(alpha, x) * x, _batch_time(time_fn(sigma), x)), x)


def _check_callable(name, fn):
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _check_schedule(schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be an iia_jax.schedules.Schedule, got {type(schedule).__name__}")
    if schedule.kind != "vp":
        raise ValueError(f"schedule must be a VP schedule for this adapter, got kind={schedule.kind!r}")


def edm(fn) -> Partial:
    """A network that already is an EDM denoiser ``fn(x, sigma) -> x0_hat``."""
    _check_callable("fn", fn)
    return Partial(_identity_denoiser, fn)


def _identity_denoiser(fn, x, sigma):
    return _checked("fn", fn(x, jnp.asarray(sigma, x.dtype)), x)


def from_eps(eps_fn, schedule: Schedule) -> Partial:
    """Continuous-time VP eps-prediction network ``eps_fn(x_vp, t)``."""
    _check_callable("eps_fn", eps_fn)
    _check_schedule(schedule)
    return Partial(_eps_denoiser, Partial(schedule.time), eps_fn)


def from_v(v_fn, schedule: Schedule) -> Partial:
    """Continuous-time VP v-prediction network ``v_fn(x_vp, t)``."""
    _check_callable("v_fn", v_fn)
    _check_schedule(schedule)
    return Partial(_v_denoiser, Partial(schedule.time), v_fn)


def from_x0(x0_fn, schedule: Schedule) -> Partial:
    """Continuous-time VP data-prediction network ``x0_fn(x_vp, t)``."""
    _check_callable("x0_fn", x0_fn)
    _check_schedule(schedule)
    return Partial(_x0_denoiser, Partial(schedule.time), x0_fn)


def _discrete_time(table, sigma):
    """sigma -> fractional DDPM timestep index, linear in log sigma between training steps.

    ``table`` holds the training sigmas in increasing order.  On a training-grid sigma (same
    float32 value) the index is exactly that integer; sigmas outside the training range are
    clipped to its ends (as k-diffusion does).
    """
    # Locate the interval by comparing sigmas (exact), then interpolate with log(s / s_lo):
    # on a grid value s / s_lo == 1 exactly, so t is exactly the integer.  (Interpolating
    # numpy-computed log knots at an XLA-computed log missed by 1 ulp for ~15% of steps.)
    table = jnp.asarray(table)
    s = jnp.clip(sigma.astype(jnp.float32), table[0], table[-1])
    lo = jnp.clip(jnp.searchsorted(table, s, side="right") - 1, 0, table.size - 2)
    return lo.astype(jnp.float32) + jnp.log(s / table[lo]) / jnp.log(table[lo + 1] / table[lo])


def _discrete_time_rounded(table, sigma):
    """:func:`_discrete_time` rounded to the nearest integer timestep (``quantize=True``)."""
    return jnp.round(_discrete_time(table, sigma))


def _discrete_time_map(alphas_cumprod, quantize: bool) -> Partial:
    table = sigma_table(alphas_cumprod).astype(np.float32)
    return Partial(_discrete_time_rounded if quantize else _discrete_time, table)


def from_discrete_eps(eps_fn, alphas_cumprod, quantize: bool = False) -> Partial:
    """DDPM-style eps network ``eps_fn(x_vp, n)`` with float timestep indices ``n`` of shape [B]."""
    _check_callable("eps_fn", eps_fn)
    return Partial(_eps_denoiser, _discrete_time_map(alphas_cumprod, quantize), eps_fn)


def from_discrete_v(v_fn, alphas_cumprod, quantize: bool = False) -> Partial:
    """DDPM-style v-prediction network ``v_fn(x_vp, n)`` with float timestep indices [B]."""
    _check_callable("v_fn", v_fn)
    return Partial(_v_denoiser, _discrete_time_map(alphas_cumprod, quantize), v_fn)
