"""EDM preconditioning: turn a raw network into a denoiser ``D(x, sigma)``.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Table 1 (column "EDM"). With ``s_d = sigma_data``:

    c_skip(sigma)  = s_d^2 / (sigma^2 + s_d^2)
    c_out(sigma)   = sigma * s_d / sqrt(sigma^2 + s_d^2)
    c_in(sigma)    = 1 / sqrt(sigma^2 + s_d^2)
    c_noise(sigma) = log(sigma) / 4

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

where ``F`` is the raw network. ``x = x0 + sigma * n`` is the EDM sigma-space of
docs/design.md §2, so the result plugs straight into every solver of the library. A
conditional network ``F(x, c_noise, cond)`` (e.g. class labels ``cond [B]``) gives
``D(x, sigma, cond)``: the condition passes through to ``F`` untouched.

Example::

    net = EDMUNet(channels=32)
    apply = lambda params, x, c_noise: net.apply(params, x, c_noise)
    denoise = edm_precond(apply, sigma_data=0.5)   # denoise(params, x, sigma)
    D = bind(denoise, params)                      # D(x, sigma)

    net = EDMUNet(channels=32, num_classes=10)     # class-conditional
    denoise = edm_precond(lambda p, x, c, y: net.apply(p, x, c, y), sigma_data=0.5)
    D = bind(denoise, params)                      # D(x, sigma, labels)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp

__all__ = [
    "EDMCoefficients",
    "edm_coefficients",
    "edm_precond",
    "bind",
]

# A raw network ``apply(params, x, c_noise[, cond]) -> F`` with ``c_noise`` of shape [B].
NetApply = Callable[..., jnp.ndarray]


class EDMCoefficients(NamedTuple):
    """The four EDM preconditioning coefficients, each shaped like ``sigma``."""

    c_skip: jnp.ndarray
    c_out: jnp.ndarray
    c_in: jnp.ndarray
    c_noise: jnp.ndarray


def edm_coefficients(sigma, sigma_data: float = 0.5) -> EDMCoefficients:
    """EDM coefficients ``(c_skip, c_out, c_in, c_noise)`` for ``sigma > 0``.

    ``c_skip = s_d^2/(sigma^2+s_d^2)``, ``c_out = sigma s_d/sqrt(sigma^2+s_d^2)``,
    ``c_in = 1/sqrt(sigma^2+s_d^2)``, ``c_noise = log(sigma)/4``.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    s2 = sigma_data**2
    total = sigma**2 + s2
    return EDMCoefficients(
        c_skip=s2 / total,
        c_out=sigma * sigma_data * jnp.reciprocal(jnp.sqrt(total)),
        c_in=jnp.reciprocal(jnp.sqrt(total)),
        c_noise=jnp.log(sigma) / 4.0,
    )


def _per_example_sigma(sigma, x: jnp.ndarray) -> jnp.ndarray:
    """Broadcast a scalar or ``[B]`` sigma to a ``[B]`` vector for batch ``x``."""
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.ndim == 0:
        return jnp.broadcast_to(sigma, x.shape[:1])
    if sigma.shape != x.shape[:1]:
        raise ValueError(
            f"sigma must be a scalar or have shape [B] = {x.shape[:1]}; got shape {sigma.shape}"
        )
    return sigma


def edm_precond(apply: NetApply, sigma_data: float = 0.5):
    """Wrap a raw network ``apply(params, x, c_noise[, cond])`` as ``denoise(params, x, sigma[, cond])``.

    ``sigma`` may be a scalar or a ``[B]`` vector (one noise level per example);
    the network always receives ``c_noise`` as a ``[B]`` vector. The output is the
    denoised estimate ``x0_hat`` with the shape and dtype of ``x``. ``cond``, when
    given, is passed to ``apply`` as its fourth argument (and omitted when ``None``,
    so an unconditional ``apply`` is called exactly as before).
    """

    def denoise(params, x, sigma, cond=None):
        x = jnp.asarray(x, jnp.float32)
        sigma_b = _per_example_sigma(sigma, x)
        c = edm_coefficients(sigma_b, sigma_data)
        expand = (slice(None),) + (None,) * (x.ndim - 1)  # [B] -> [B, 1, ..., 1]
        x_in = c.c_in[expand] * x
        f = apply(params, x_in, c.c_noise) if cond is None else apply(params, x_in, c.c_noise, cond)
        return c.c_skip[expand] * x + c.c_out[expand] * f.astype(jnp.float32)

    return denoise


def bind(denoise, params):
    """Bind parameters: ``denoise(params, x, sigma[, cond])`` -> ``D(x, sigma[, cond])``."""

    def D(x, sigma, cond=None):
        return denoise(params, x, sigma) if cond is None else denoise(params, x, sigma, cond)

    return D
