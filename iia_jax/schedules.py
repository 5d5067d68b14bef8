"""Noise schedules and step plans, all expressed in EDM sigma-space.

Every model is mapped to ``x = x0 + sigma * n`` (docs/design.md §2).  A variance-preserving
(VP) model with ``x_vp = alpha_t x0 + sigma_vp n`` lives at ``sigma = sigma_vp / alpha_t``
and ``x = x_vp / alpha_t``; since ``alpha_t^2 + sigma_vp^2 = 1`` we have
``alpha_t = 1 / sqrt(1 + sigma^2)``.

A :class:`Schedule` maps the model's own time ``t`` to sigma and back.  Step grids return
``num_steps + 1`` strictly decreasing sigmas whose last entry is exactly 0.  The continuous
schedule factories return the identical object for equal arguments, so adapters built on
``vp_linear()`` twice share their functions and jitted code is not recompiled.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "Schedule", "edm", "ve", "vp_linear", "vp_cosine", "vp_discrete", "ddpm_alphas_cumprod",
    "karras", "logsnr_uniform", "time_uniform", "quadratic", "vp_time", "vp_quadratic", "ddim",
    "finish_grid", "sigma_table",
]


class Schedule(NamedTuple):
    """A diffusion schedule: ``sigma(t)``, its inverse ``time(sigma)``, and the time range.

    ``kind`` is ``"ve"`` (x is already sigma-space) or ``"vp"`` (the network sees
    ``x_vp = x / sqrt(1 + sigma^2)``).  ``sigma`` and ``time`` accept numpy or jax arrays.
    """

    kind: str
    sigma: Callable
    time: Callable
    t_min: float
    t_max: float

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(np.float64(self.t_min)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(np.float64(self.t_max)))


def _xp(a):
    """numpy for numpy/python inputs, jax.numpy for traced or jax arrays."""
    if isinstance(a, (float, int, np.ndarray, np.generic)):
        return np
    import jax.numpy as jnp
    return jnp


def _shared(factory):
    """Memoise a schedule factory on its (float) arguments, defaults filled in."""
    cached = functools.lru_cache(maxsize=None)(factory)
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return cached(*(float(v) for v in bound.arguments.values()))
    return wrapper


@_shared
def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> Schedule:
    """EDM (Karras et al. 2022): time is sigma itself."""
    return Schedule("ve", lambda t: t, lambda s: s, sigma_min, sigma_max)


@_shared
def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> Schedule:
    """Song et al. (2021) VE SDE: ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``, t in [0, 1]."""
    ratio = math.log(sigma_max / sigma_min)
    return Schedule(
        "ve",
        lambda t: sigma_min * _xp(t).exp(ratio * t),
        lambda s: _xp(s).log(s / sigma_min) / ratio,
        0.0, 1.0)


@_shared
def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> Schedule:
    """Continuous VP SDE with linear beta(t) (Song et al. 2021), t in [t_min, 1].

    ``log alpha_t = -(beta_d t^2 / 4 + beta_min t / 2)`` so
    ``sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)`` and
    ``t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``.
    """
    bd = beta_max - beta_min

    def sigma(t):
        xp = _xp(t)
        return xp.sqrt(xp.expm1(0.5 * bd * t ** 2 + beta_min * t))

    def time(s):
        xp = _xp(s)
        return (xp.sqrt(beta_min ** 2 + 2.0 * bd * xp.log1p(s ** 2)) - beta_min) / bd

    return Schedule("vp", sigma, time, t_min, 1.0)


@_shared
def vp_cosine(s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> Schedule:
    """Cosine VP schedule (Nichol & Dhariwal 2021): ``abar(t) = cos^2((t+s)/(1+s) pi/2) / abar_0``.

    ``t_max`` stops short of t = 1 where sigma diverges (the DPM-Solver default 0.9946).
    """
    half_pi = 0.5 * math.pi
    log_c0 = math.log(math.cos(half_pi * s / (1.0 + s)))

    def sigma(t):
        xp = _xp(t)
        log_alpha = xp.log(xp.cos(half_pi * (t + s) / (1.0 + s))) - log_c0
        return xp.sqrt(xp.expm1(-2.0 * log_alpha))

    def time(sig):
        xp = _xp(sig)
        log_alpha = -0.5 * xp.log1p(sig ** 2)
        return xp.arccos(xp.exp(log_alpha + log_c0)) * (1.0 + s) / half_pi - s

    return Schedule("vp", sigma, time, t_min, t_max)


def ddpm_alphas_cumprod(beta_schedule: str = "linear", beta_start: float = 1e-4,
                        beta_end: float = 0.02, num_train_timesteps: int = 1000) -> np.ndarray:
    """``alphas_cumprod`` of a discrete DDPM (Ho et al. 2020) as float64 numpy.

    ``beta_schedule``: ``"linear"``, ``"scaled_linear"`` (linear in sqrt(beta)) or
    ``"squaredcos_cap_v2"`` (cosine, betas capped at 0.999), the names `diffusers` uses.
    """
    n = int(num_train_timesteps)
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)])
    else:
        raise ValueError(f"beta_schedule must be 'linear', 'scaled_linear' or 'squaredcos_cap_v2', "
                         f"got {beta_schedule!r}")
    return np.cumprod(1.0 - betas)


def sigma_table(alphas_cumprod) -> np.ndarray:
    """``sigma_n = sqrt((1 - abar_n) / abar_n)`` of a discrete schedule, checked."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    if a.ndim != 1 or a.size < 2 or not np.all(np.isfinite(a)) or np.any(a <= 0) or np.any(a > 1):
        raise ValueError("alphas_cumprod must be a 1-D array of values in (0, 1], "
                         f"got shape {a.shape}")
    if np.any(np.diff(a) >= 0):
        raise ValueError("alphas_cumprod must be strictly decreasing")
    return np.sqrt((1.0 - a) / a)


def vp_discrete(alphas_cumprod) -> Schedule:
    """Discrete DDPM schedule; time is the (fractional) timestep index in [0, T-1].

    ``sigma_n = sqrt((1 - abar_n) / abar_n)``; between integers, log sigma is linear in n.
    """
    log_sigmas = np.log(sigma_table(alphas_cumprod))
    index = np.arange(log_sigmas.size, dtype=np.float64)

    def sigma(t):
        xp = _xp(t)
        return xp.exp(xp.interp(t, index, log_sigmas))

    def time(s):
        xp = _xp(s)
        return xp.interp(xp.log(s), log_sigmas, index)

    return Schedule("vp", sigma, time, 0.0, float(log_sigmas.size - 1))


# ----------------------------------------------------------------------------- step grids

def finish_grid(sigmas) -> np.ndarray:
    """Append the terminal 0 and return float32, checking strict decrease."""
    out = np.concatenate([np.asarray(sigmas, dtype=np.float64), [0.0]]).astype(np.float32)
    if np.any(np.diff(out) >= 0):
        raise ValueError(f"the grid is not strictly decreasing: {out}; use fewer steps "
                         "or a wider sigma range")
    return out


def _check_steps(num_steps: int, minimum: int = 1) -> int:
    from .validate import integer   # here: validate imports jax, which a schedule does not need
    return integer(num_steps, "num_steps", minimum)


def _check_range(sigma_min, sigma_max):
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")


def karras(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
           rho: float = 7.0) -> np.ndarray:
    """EDM grid (Karras et al. 2022, eq. 5): ``num_steps`` sigmas from sigma_max to sigma_min
    equally spaced in ``sigma^(1/rho)``, then 0."""
    n = _check_steps(num_steps, 2)
    _check_range(sigma_min, sigma_max)
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return finish_grid((hi + ramp * (lo - hi)) ** rho)


def logsnr_uniform(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> np.ndarray:
    """DPM-Solver grid (Lu et al. 2022): ``num_steps`` sigmas uniform in
    ``lambda = -log sigma`` from sigma_max to sigma_min, then 0."""
    n = _check_steps(num_steps, 2)
    _check_range(sigma_min, sigma_max)
    return finish_grid(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def _time_grid(schedule: Schedule, num_steps: int, power: float) -> np.ndarray:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be an iia_jax.schedules.Schedule, got {type(schedule).__name__}")
    n = _check_steps(num_steps)
    frac = (1.0 - np.arange(n) / n) ** power          # 1, ..., > 0; the end t_min maps to sigma 0
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * frac
    return finish_grid(schedule.sigma(t))


def time_uniform(schedule: Schedule, num_steps: int) -> np.ndarray:
    """DDIM grid (Song et al. 2021): ``t_i = t_min + (t_max - t_min)(1 - i/N)``, i < N, and
    ``sigma_N = 0`` in place of ``t_min`` (like DDIM's ``set_alpha_to_one``)."""
    return _time_grid(schedule, num_steps, 1.0)


def quadratic(schedule: Schedule, num_steps: int) -> np.ndarray:
    """DDIM's quadratic grid: ``t_i = t_min + (t_max - t_min)(1 - i/N)^2``, i < N, then sigma 0."""
    return _time_grid(schedule, num_steps, 2.0)


def vp_time(sigma_min: float, sigma_max: float) -> Schedule:
    """The time of :func:`vp_linear` (beta 0.1..20) restricted to ``[sigma_min, sigma_max]``: a
    clock for the time grids of any model, e.g. :func:`vp_quadratic` for an EDM model, the grid
    the peer benchmark found best for the shipped digits model (docs/benchmarks.md)."""
    _check_range(sigma_min, sigma_max)
    vp = vp_linear()
    return Schedule("vp", vp.sigma, vp.time, float(vp.time(np.float64(sigma_min))),
                    float(vp.time(np.float64(sigma_max))))


def vp_quadratic(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> np.ndarray:
    """DDIM's quadratic grid in the time of a linear-beta VP model, for any sigma range:
    ``quadratic(vp_time(sigma_min, sigma_max), num_steps)``.  Its last non-zero sigma lies above
    ``sigma_min``."""
    return quadratic(vp_time(sigma_min, sigma_max), num_steps)


def ddim(alphas_cumprod, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    """Sigmas of discrete DDIM timesteps, as `diffusers` chooses them, then 0.

    ``spacing``: ``"leading"`` (``t = k * (T // N) + offset``), ``"trailing"``
    (``round(T - k T/N) - 1``) or ``"linspace"`` (``round(linspace(0, T-1, N))``).
    The last step goes to sigma 0 (``set_alpha_to_one=True``).  Sigmas are exactly the
    training-grid values, so :func:`iia_jax.models.from_discrete_eps` recovers integer timesteps.
    """
    table = sigma_table(alphas_cumprod)
    T, n = table.size, _check_steps(num_steps)
    if n > T:
        raise ValueError(f"num_steps={n} exceeds the {T} training timesteps")
    if spacing == "leading":
        steps = np.arange(n)[::-1] * (T // n) + steps_offset
    elif spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, T - 1, n))[::-1].astype(np.int64)
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    steps = np.asarray(steps, dtype=np.int64)
    if steps.min() < 0 or steps.max() >= T:
        raise ValueError(f"timesteps {steps} fall outside [0, {T - 1}] (steps_offset={steps_offset})")
    return finish_grid(table[steps])
