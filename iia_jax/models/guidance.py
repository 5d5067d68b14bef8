"""Classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021).

A conditional model is trained with the condition randomly dropped, so one network
gives both ``eps(x, t | c)`` and ``eps(x, t | null)``. Sampling uses the extrapolation

    eps_guided = eps_u + s (eps_c - eps_u) = (1 + w) eps_c - w eps_u,   s = 1 + w,

with ``s`` the guidance scale (``s = 0``: unconditional, ``s = 1``: conditional,
``s > 1``: stronger guidance). In the EDM form of docs/design.md §2 every denoiser is
``D(x, sigma) = x - sigma * eps`` at the same ``x`` and ``sigma``, which is affine in
``eps`` with weights summing to one, so the same rule on denoisers,

    D_guided(x, sigma) = D_u(x, sigma) + s (D_c(x, sigma) - D_u(x, sigma)),

is exactly eps-space guidance, and the guided denoiser drops into every solver.

* :func:`cfg` combines two denoisers (for example two adapters around the same network
  with different conditioning bound in). Each is evaluated once per call; when both are
  the very same object, one call is made.
* :func:`cfg_single` is the usual one-network form: ``denoiser_fn(x, sigma, c)`` is
  evaluated once on the doubled batch ``[x, x]`` with conditions ``[cond, null_cond]``.
* :func:`guided` keeps the conditions as data: it returns a conditional denoiser
  ``D_g(x, sigma, cond)`` (one batched call per evaluation), so per-sample conditions travel
  with the batch through :func:`iia_jax.sample` and :func:`iia_jax.fit` (``cond=``).

All return a pytree denoiser with attribute ``guidance_scale`` (a Python float, kept
as static metadata so it survives ``jax.jit`` and is stored with fitted coefficients).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["cfg", "cfg_single", "guided", "GuidedDenoiser", "SingleNetworkGuidance",
           "ConditionalGuidance"]


def _check_scale(scale) -> float:
    try:
        if isinstance(scale, (str, bytes)):
            raise TypeError
        value = float(scale)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise TypeError("guidance scale must be a concrete real number, got "
                        f"{type(scale).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"guidance scale must be finite, got {value}")
    return value


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _is_leaf(obj) -> bool:
    """True for objects that are not pytrees of arrays (plain functions, modules)."""
    leaves = jax.tree_util.tree_leaves(obj)
    return len(leaves) == 1 and leaves[0] is obj


def _split_static(fns):
    """Pytree-valued callables become children; plain callables are static aux data."""
    static = tuple(None if not _is_leaf(f) else f for f in fns)
    children = tuple(None if _is_leaf(f) else f for f in fns)
    return children, static


def _merge_static(children, static):
    return tuple(s if s is not None else c for c, s in zip(children, static))


def _combine(d_cond, d_uncond, scale: float):
    return d_uncond + scale * (d_cond - d_uncond)


@jax.tree_util.register_pytree_node_class
class GuidedDenoiser:
    """``D(x, sigma) = D_u + s (D_c - D_u)`` over two denoisers. Build with :func:`cfg`."""

    def __init__(self, cond_denoiser: Callable, uncond_denoiser: Callable, guidance_scale: float):
        self.cond_denoiser = cond_denoiser
        self.uncond_denoiser = uncond_denoiser
        self.guidance_scale = guidance_scale

    def __call__(self, x, sigma):
        d_cond = self.cond_denoiser(x, sigma)
        if self.cond_denoiser is self.uncond_denoiser:
            return d_cond  # D_u + s (D_c - D_u) with D_c = D_u
        return _combine(d_cond, self.uncond_denoiser(x, sigma), self.guidance_scale)

    def tree_flatten(self):
        children, static = _split_static((self.cond_denoiser, self.uncond_denoiser))
        return children, (static, self.guidance_scale)

    @classmethod
    def tree_unflatten(cls, aux, children):
        static, scale = aux
        return cls(*_merge_static(children, static), scale)

    def __repr__(self):
        return f"GuidedDenoiser(guidance_scale={self.guidance_scale})"


def cfg(cond_denoiser: Callable, uncond_denoiser: Callable, scale: float) -> GuidedDenoiser:
    """Classifier-free guidance of two EDM denoisers.

    Args:
      cond_denoiser: ``D_c(x, sigma)``, the conditional denoiser.
      uncond_denoiser: ``D_u(x, sigma)``, the unconditional one (same ``x``, ``sigma``).
      scale: guidance scale ``s`` (finite Python number); ``D_u + s (D_c - D_u)``.
    Returns:
      A denoiser ``D(x, sigma)`` with ``.guidance_scale == float(scale)``. For one
      network taking the condition as an argument, :func:`cfg_single` evaluates both
      halves in one batched call instead of two.
    """
    _check_callable("cond_denoiser", cond_denoiser)
    _check_callable("uncond_denoiser", uncond_denoiser)
    return GuidedDenoiser(cond_denoiser, uncond_denoiser, _check_scale(scale))


def _double_cond(cond, null_cond, batch: int):
    """Stack ``cond`` over ``null_cond`` leaf by leaf along a leading batch axis."""

    def stack(c, n):
        c, n = jnp.asarray(c), jnp.asarray(n)
        for name, a in (("cond", c), ("null_cond", n)):
            if a.ndim == 0 or a.shape[0] not in (1, batch):
                raise ValueError(f"{name} leaves need a leading batch axis of size 1 or "
                                 f"{batch} (the batch of x), got shape {a.shape}")
        shape = (batch,) + jnp.broadcast_shapes(c.shape[1:], n.shape[1:])
        dtype = jnp.result_type(c, n)
        return jnp.concatenate([jnp.broadcast_to(c, shape).astype(dtype),
                                jnp.broadcast_to(n, shape).astype(dtype)], axis=0)

    try:
        return jax.tree.map(stack, cond, null_cond)
    except ValueError as e:
        if "leading batch axis" in str(e):
            raise
        raise ValueError("cond and null_cond must have the same pytree structure: "
                         f"{e}") from None


def _double_sigma(sigma, batch: int):
    sigma = jnp.asarray(sigma)
    if sigma.ndim >= 1 and sigma.shape[0] == batch and batch > 1:
        return jnp.concatenate([sigma, sigma], axis=0)
    return sigma  # a scalar (or a size-1 leading axis) broadcasts over the doubled batch


def _guided_call(denoiser_fn, x, sigma, cond, null_cond, scale):
    """``D_u + s (D_c - D_u)`` from one call of ``denoiser_fn`` on ``[x; x]``, ``[cond; null_cond]``."""
    batch = x.shape[0]
    out = denoiser_fn(jnp.concatenate([x, x], axis=0), _double_sigma(sigma, batch),
                      _double_cond(cond, null_cond, batch))
    if out.shape[:1] != (2 * batch,):
        raise ValueError(f"denoiser_fn returned shape {out.shape} for a doubled batch of {2 * batch}")
    return _combine(out[:batch], out[batch:], scale)


class _OneNetwork:
    """Pytree plumbing shared by the one-network guidance classes: ``denoiser_fn`` (a child when
    it is a pytree, static otherwise), the array fields named in ``_children``, a static scale."""

    _children: tuple = ()

    def tree_flatten(self):
        (fn,), (static,) = _split_static((self.denoiser_fn,))
        return (fn,) + tuple(getattr(self, f) for f in self._children), (static, self.guidance_scale)

    @classmethod
    def tree_unflatten(cls, aux, children):
        static, scale = aux
        (fn,) = _merge_static(children[:1], (static,))
        return cls(fn, *children[1:], scale)

    def __repr__(self):
        return f"{type(self).__name__}(guidance_scale={self.guidance_scale})"


@jax.tree_util.register_pytree_node_class
class SingleNetworkGuidance(_OneNetwork):
    """Guidance with one conditional network evaluated on the doubled batch.

    Build with :func:`cfg_single`.
    """

    _children = ("cond", "null_cond")

    def __init__(self, denoiser_fn: Callable, cond: Any, null_cond: Any, guidance_scale: float):
        self.denoiser_fn = denoiser_fn
        self.cond = cond
        self.null_cond = null_cond
        self.guidance_scale = guidance_scale

    def __call__(self, x, sigma):
        return _guided_call(self.denoiser_fn, x, sigma, self.cond, self.null_cond, self.guidance_scale)


def cfg_single(denoiser_fn: Callable, cond: Any, null_cond: Any,
               scale: float) -> SingleNetworkGuidance:
    """Classifier-free guidance of one conditional denoiser, in one batched call.

    Args:
      denoiser_fn: ``denoiser_fn(x, sigma, c) -> x0_hat`` for a batch ``x [B, ...]``.
      cond: the condition, a pytree whose leaves have a leading axis of size ``B`` or 1
        (class labels ``[B]``, text embeddings ``[B, L, D]``, ...).
      null_cond: the "no condition" input with the same structure (leading axis
        ``B`` or 1; broadcast against ``cond``).
      scale: guidance scale ``s`` (finite Python number).
    Returns:
      ``D(x, sigma) = D_u + s (D_c - D_u)`` where ``[D_c; D_u] =
      denoiser_fn([x; x], [sigma; sigma], [cond; null_cond])`` (one call on ``2B``
      samples; a scalar ``sigma`` is passed unchanged). ``.guidance_scale`` is
      ``float(scale)``.
    """
    _check_callable("denoiser_fn", denoiser_fn)
    return SingleNetworkGuidance(denoiser_fn, cond, null_cond, _check_scale(scale))


@jax.tree_util.register_pytree_node_class
class ConditionalGuidance(_OneNetwork):
    """Guidance that takes the conditions per call: ``D_g(x, sigma, cond)``. Build with :func:`guided`."""

    _children = ("null_cond",)

    def __init__(self, denoiser_fn: Callable, null_cond: Any, guidance_scale: float):
        self.denoiser_fn = denoiser_fn
        self.null_cond = null_cond
        self.guidance_scale = guidance_scale

    def __call__(self, x, sigma, cond):
        return _guided_call(self.denoiser_fn, x, sigma, cond, self.null_cond, self.guidance_scale)


def guided(denoiser_fn: Callable, scale: float, null_cond: Any) -> ConditionalGuidance:
    """Classifier-free guidance of a conditional denoiser, keeping the condition an argument.

    Args:
      denoiser_fn: ``denoiser_fn(x, sigma, c) -> x0_hat`` for a batch ``x [B, ...]``.
      scale: guidance scale ``s`` (finite Python number).
      null_cond: the "no condition" input, a pytree like one row of the conditions: leaves with a
        leading axis of 1 (broadcast over the batch) or ``B``; a scalar leaf (e.g. the null label
        ``10``) is taken as one row.
    Returns:
      ``D_g(x, sigma, cond) = D_u + s (D_c - D_u)`` with ``[D_c; D_u] = denoiser_fn([x; x],
      [sigma; sigma], [cond; null_cond])``: one network call on ``2B`` samples.  Pass the
      per-sample ``cond`` with ``cond=`` to :func:`iia_jax.sample`, :func:`iia_jax.iia_sample`
      and :func:`iia_jax.fit`.  ``.guidance_scale`` is ``float(scale)`` and is stored with fitted
      coefficients, so coefficients fitted for another scale are refused.
    """
    _check_callable("denoiser_fn", denoiser_fn)
    null_cond = jax.tree.map(lambda a: jnp.reshape(a, (1,)) if jnp.ndim(a) == 0 else jnp.asarray(a),
                             null_cond)
    return ConditionalGuidance(denoiser_fn, null_cond, _check_scale(scale))
