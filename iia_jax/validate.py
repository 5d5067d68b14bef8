"""One place for the checks every entry point makes (docs/reliability.md).

``plan``/``Plan``, ``sample``, ``iia_sample``, the coefficient store and (wired by the fit)
``fit``/``fit_plan`` validate the same things the same way by calling these functions:

- sigma grids: 1-D, at least 2 entries, finite, strictly decreasing, ending at 0 (:func:`sigmas`);
- integer-like arguments: Python ``int`` and numpy integers alike, never ``bool`` (:func:`integer`);
- sample states: arrays ``[B, ...]`` of a floating dtype, and the dtype policy (:func:`state`,
  :func:`compute_dtype`);
- model outputs: the input's shape and a floating dtype (:func:`denoiser_output`);
- coefficients: finite (:func:`finite_coefficients`);
- checks that need concrete values, refused inside a trace with a message (:func:`concrete`);
- fit options that would do nothing (:func:`fit_options`).

Bad values raise ValueError, wrong types TypeError, each naming the argument and what was expected.

**Dtype policy.**  The ODE is integrated in float32 or wider.  A float16 or bfloat16 ``x_T`` is
integrated in float32 and the result returned in the input's dtype: at 10-11 bits of mantissa
the sigma-space state (up to ``sigma_max`` = 80 times the data) and the step arithmetic lose
most of their digits (the IIA correction of a heun NFE 5 run on a 2-D mixture ends 46 away from
the float32 result in float16 and 477 in bfloat16).  The denoiser then receives float32
inputs; a half-precision network casts inside itself, and its floating outputs of any precision
are cast to the state's dtype.  float64 is used as given (it needs ``jax_enable_x64``; without it
JAX itself computes in float32).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .rows import MAX_GROUP, holdout_fraction

__all__ = ["WrongType", "integer", "sigmas", "state", "compute_dtype", "denoiser_output",
           "finite_coefficients", "concrete", "is_traced", "fit_options", "LOW_PRECISION"]

LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


class WrongType(TypeError, ValueError):
    """An argument of the wrong type (a float where an integer count is taken, a bool for a
    fraction).  A TypeError by the library's rule; also a ValueError, which is what the fit's
    option checks have always raised for these, so callers catching either keep working."""


def is_traced(a) -> bool:
    """Whether ``a`` is a tracer (its values unknown until the traced function runs)."""
    return isinstance(a, jax.core.Tracer)


def integer(value, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int: Python ints and numpy integer scalars are accepted alike;
    ``bool``, floats (even integral ones) and strings are refused (WrongType), as is a
    value below ``minimum`` (ValueError)."""
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise WrongType(f"{name} must be an integer{bound}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer{bound}, got {int(value)}")
    return int(value)


def sigmas(s, name: str = "sigmas") -> None:
    """A sigma grid ``[N + 1]``: 1-D, at least 2 entries, floating or integer valued, finite,
    strictly decreasing and ending at exactly 0.  Inside a trace only the shape is known and
    checked (the values of a traced grid are the caller's responsibility)."""
    shape = getattr(s, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an array, got {type(s).__name__}")
    if len(shape) != 1 or shape[0] < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 entries, got shape {tuple(shape)}")
    dtype = jnp.dtype(s.dtype)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real (floating-point) array, got dtype {dtype}")
    if is_traced(s):
        return
    v = np.asarray(s, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {v}")
    if v[-1] != 0.0:
        raise ValueError(f"{name} must end with 0 (the clean data), got last value {v[-1]}")
    steps = np.diff(v)
    if np.any(steps >= 0):
        bad = int(np.argmax(steps >= 0))
        raise ValueError(f"{name} must be strictly decreasing, but {name}[{bad}]={v[bad]} <= "
                         f"{name}[{bad + 1}]={v[bad + 1]}")


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype the ODE runs in for states of ``dtype``: float32 for float16/bfloat16 (module
    docstring), the dtype itself otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in LOW_PRECISION else dtype


def state(x, name: str = "x_T") -> None:
    """A batch of sample states: an array ``[B, ...]`` (batch first, at least 2-D) of a floating
    dtype.  ``B = 0`` is allowed: sampling no rows gives no samples (a fit refuses a batch with
    no training row, :func:`iia_jax.rows.split_batch`)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape [B, ...] (batch first, at least 2-D), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def denoiser_output(out, x, name: str = "denoiser"):
    """A model output checked against its input ``x``: same shape, a floating dtype (an integer,
    boolean or complex output is refused, not cast), then cast to ``x``'s dtype."""
    shape = getattr(out, "shape", None)
    if shape != x.shape:
        raise ValueError(f"{name} returned shape {shape if shape is not None else type(out)}, "
                         f"expected the input shape {x.shape}")
    dtype = getattr(out, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} returned dtype {dtype}, expected a floating-point array (the "
                        "denoised x); an integer or boolean output would be cast silently")
    return out.astype(x.dtype)


def finite_coefficients(values, name: str = "coeffs") -> None:
    """Refuse coefficient values ``[N, K]`` holding NaN or Inf, naming the first bad step.
    Traced values are not checked (see :func:`concrete`)."""
    if is_traced(values):
        return
    ok = np.all(np.isfinite(np.asarray(values, np.float64)), axis=tuple(range(1, np.ndim(values))))
    if not np.all(ok):
        i = int(np.argmin(ok))
        raise ValueError(f"{name} hold NaN or Inf at step {i}: {np.asarray(values)[i]}")


def concrete(a, what: str, instead: str):
    """``a`` as a numpy array, or a ValueError saying that ``what`` needs concrete values and
    what to do ``instead`` when ``a`` is traced (inside ``jax.jit``, ``vmap``, ``grad``)."""
    if is_traced(a):
        raise ValueError(f"{what} needs concrete values, but it was called inside a JAX trace "
                         f"(jax.jit, vmap, grad...); {instead}")
    return np.asarray(a)


def fit_options(holdout, quality=None) -> None:
    """Refuse fit options that would silently do nothing.

    - a ``holdout > 0`` that rounds to no held-out row would skip the never-worse check (the fit
      takes ``holdout`` as the nearest fraction with denominator at most
      :data:`iia_jax.rows.MAX_GROUP`, :func:`iia_jax.rows.holdout_fraction`);
    - ``quality=`` judges the held-out rows, so with no held-out row it would never be called.
    """
    if isinstance(holdout, (bool, np.bool_)) or not isinstance(holdout, (int, float, np.integer,
                                                                        np.floating)):
        raise WrongType(f"holdout must be a number in [0, 1), got {type(holdout).__name__}")
    if not (math.isfinite(holdout) and 0.0 <= holdout < 1.0):
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    if holdout > 0 and holdout_fraction(holdout)[0] == 0:
        raise ValueError(f"holdout={holdout} rounds to no held-out row (it is taken as a fraction "
                         f"with denominator <= {MAX_GROUP}), so the never-worse check would be "
                         f"skipped; pass holdout >= 1/{MAX_GROUP} or holdout=0 to switch the check off")
    if quality is not None and holdout == 0:
        raise ValueError("quality= judges the held-out rows, but holdout=0 holds none out, so it "
                         "would never be called; pass holdout > 0 or drop quality")
