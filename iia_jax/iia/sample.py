"""The IIA sampler: the base solver plus ``sum_k c[i, k] f[i, k]`` at every step, one scan."""
from __future__ import annotations

import jax.numpy as jnp

from ..rows import batch_sharding, check_cond, shard_rows
from .. import validate
from ..sampling import (bind_condition, check_plan, check_state, raise_if_not_finite, run_steps,
                        to_compute_dtype)
from .coefficients import check_coefficients


def corrected_step(denoiser, solver, spec, carry, sigma, sigma_next, final):
    """One base step and its features; ``carry = (solver_state, x, feature_history)``.

    Returns ``(carry_with_base_state, features [K, *x.shape], denoised)``; callers add the
    correction ``c @ features`` to ``carry[1]``.
    """
    state, x, history = carry
    state, x_base, denoised = solver.step(denoiser, state, x, sigma, sigma_next, final)
    feats, history = spec.features(x, x_base, denoised, history, sigma, final)
    return (state, x_base, history), feats, denoised


def apply_correction(x_base, coeffs_row, feats):
    """``x_base + sum_k c_k f_k``, written as one elementwise sum so XLA fuses it into a single
    pass (slices of the concatenated features simplify to the original vectors)."""
    c = coeffs_row.astype(x_base.dtype)
    return x_base + sum(c[k] * feats[k] for k in range(feats.shape[0]))


def iia_sample(denoiser, plan, coeffs, x_T, return_trajectory: bool = False,
               check_finite: bool = False, *, cond=None, mesh=None, batch_axis="data"):
    """Sample with IIA: same model calls as :func:`iia_jax.sample`, plus fitted corrections.

    ``coeffs`` must come from :func:`iia_jax.fit` for this plan (solver, sigmas, number of
    steps) and, for a guided denoiser, the same guidance scale; a mismatch raises a ValueError
    naming the field, also inside ``jax.jit`` (the grid fingerprints are static; fingerprinted
    coefficients with a plan built from traced sigmas are refused, see
    :func:`~iia_jax.iia.check_coefficients`).  ``cond``, ``mesh`` and ``batch_axis`` as in
    :func:`iia_jax.sample`.  Jittable like ``sample``; the coefficients may hold numpy or jax arrays.

    ``check_finite=True`` first refuses coefficients holding NaN/Inf (naming the step), then
    raises a ValueError naming the first step whose denoiser output was NaN/Inf; like
    ``sample``'s, it needs concrete values (outside ``jax.jit``).  Dtypes and empty batches as in
    :func:`iia_jax.sample` (:mod:`iia_jax.validate`).
    """
    solver = check_plan(plan)
    check_state(x_T)
    spec = check_coefficients(coeffs, plan, denoiser)
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable D(x, sigma), got {type(denoiser).__name__}")
    check_cond(cond, x_T.shape[0])
    if check_finite:
        validate.finite_coefficients(validate.concrete(
            coeffs.values, "check_finite=True", "call iia_sample outside jax.jit, or leave "
            "check_finite off and test jnp.isfinite on the result"), "coeffs.values")
    x_T, out_dtype = to_compute_dtype(x_T)
    if x_T.shape[0] == 0:            # nothing to sample; the features' reshapes need a row
        x0 = x_T.astype(out_dtype)
        traj = jnp.zeros((plan.num_steps + 1,) + x_T.shape, out_dtype)
        return (x0, traj) if return_trajectory else x0
    x_T, cond = shard_rows((x_T, cond), batch_sharding(x_T, mesh, batch_axis) if mesh else None)
    denoiser = bind_condition(denoiser, cond)
    sigmas = plan.sigmas.astype(x_T.dtype)
    values = jnp.asarray(coeffs.values)   # numpy values cannot be indexed by the traced step

    def body(carry, index, sigma, sigma_next, final):
        carry, feats, denoised = corrected_step(denoiser, solver, spec, carry, sigma, sigma_next, final)
        state, x_base, history = carry
        x_next = apply_correction(x_base, values[index], feats)
        out = (x_next if return_trajectory else None, jnp.all(jnp.isfinite(denoised)))
        return (state, x_next, history), out

    carry = (solver.init(x_T), x_T, spec.init_history(x_T))
    (_, x0, _), (traj, finite) = run_steps(body, carry, sigmas)
    if check_finite:
        raise_if_not_finite(finite, sigmas)
    if return_trajectory:
        return x0.astype(out_dtype), jnp.concatenate([x_T[None], traj]).astype(out_dtype)
    return x0.astype(out_dtype)


__all__ = ["iia_sample", "corrected_step", "apply_correction"]
