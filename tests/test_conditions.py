"""Conditional denoisers ``D(x, sigma, cond)``: conditions follow their rows through every split
``fit`` makes (held-out rows, chunks, the shuffle with ``key``), guidance, and the static grid
fingerprints that refuse mismatched coefficients inside ``jax.jit``.

References are independent: a denoiser that returns its label has the exact ODE solution
``x_0 = label`` (every solver here integrates ``dx/dsigma = (x - c)/sigma`` exactly), and a
conditional mixture fit must equal the fit of an unconditional denoiser that carries the label as
an extra, constant coordinate of ``x`` (the heun features vanish on that coordinate).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.models import gmm, guided

SIGMA_MAX = 20.0
MEANS = np.array([[1.5, 0.0], [-1.5, 0.5], [0.0, -1.5]], np.float32)
BASE = gmm(MEANS, 0.3)
SHIFT = np.array([0.7, -0.4], np.float32)   # class c: the mixture translated by c * SHIFT


def class_mixture(x, sigma, cond):
    """Exact denoiser of the class-``cond`` mixture: ``D_c(x) = m_c + D(x - m_c)``, ``m_c = c SHIFT``."""
    m = cond.astype(x.dtype)[:, None] * SHIFT
    return m + BASE(x - m, sigma)


def returns_label(x, sigma, cond):
    return jnp.broadcast_to(cond.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def plan(solver, steps):
    return iia_jax.plan(solver, schedules.karras(steps, 0.01, SIGMA_MAX))


def noise(n, seed=0, dim=2):
    return SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(seed), (n, dim))


def labels(n, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 5, n), jnp.int32)


@pytest.mark.parametrize("solver, kwargs", [
    ("euler", dict(mode="sequential", target="trajectory", chunk_size=16)),
    ("euler", dict(mode="sequential", target="local", chunk_size=16)),
    ("heun", dict(mode="teacher_forced", chunk_size=16)),
    ("heun", dict(mode="teacher_forced")),
])
def test_label_returning_denoiser_sees_its_own_label(solver, kwargs):
    """Every model pass of the fit (fine reference, sequential states, held-out check) gives each
    row its own label: the exact solution is the label, so any mix-up shows as a non-zero error."""
    n = 70                                    # not a multiple of the chunk: padded rows too
    x, c = noise(n), labels(n)
    result = iia_jax.fit(returns_label, plan(solver, 4), x, cond=c, key=jax.random.PRNGKey(3),
                         fine_steps=4, progress=False, **kwargs)
    report = result.report
    assert report.holdout_size == 17 and report.train_size == 53
    np.testing.assert_allclose(report.mse_before, 0.0, atol=1e-9)
    np.testing.assert_allclose(report.holdout_mse_before, 0.0, atol=1e-9)
    np.testing.assert_allclose(report.holdout_median, 0.0, atol=1e-5)
    out = iia_jax.iia_sample(returns_label, plan(solver, 4), result.coeffs, x, cond=c)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(c, np.float32)[:, None], x.shape),
                               atol=1e-4)


def test_key_draws_held_out_rows_per_group():
    x, c = noise(64), labels(64)
    a, b = (iia_jax.fit(returns_label, plan("euler", 3), x, cond=c, key=jax.random.PRNGKey(k), fine_steps=2,
                        mode="teacher_forced", progress=False).report.holdout_rows for k in (0, 1))
    assert len(a) == len(b) == 16 and not np.array_equal(a, b)
    for rows in (a, b):                       # one row from every group of four, stratified
        np.testing.assert_array_equal(rows // 4, np.arange(16))


def _augmented(x_aug, sigma):
    """Unconditional twin of ``class_mixture``: the label rides along as a last coordinate that the
    ODE keeps constant (its denoised value is itself)."""
    cond = x_aug[:, -1]
    return jnp.concatenate([class_mixture(x_aug[:, :-1], sigma, cond), cond[:, None]], axis=1)


@pytest.mark.parametrize("kwargs", [dict(chunk_size=24), dict()])
def test_conditional_fit_equals_label_as_coordinate(kwargs):
    n = 96
    x, c = noise(n, seed=2), labels(n, seed=3)
    common = dict(key=jax.random.PRNGKey(5), fine_steps=6, progress=False, **kwargs)
    p = plan("heun", 4)
    cond_fit = iia_jax.fit(class_mixture, p, x, cond=c, **common)
    aug_fit = iia_jax.fit(_augmented, p, jnp.concatenate([x, c[:, None].astype(x.dtype)], 1), **common)
    scale = np.abs(np.asarray(aug_fit.coeffs.values)).max(axis=1, keepdims=True) + 1e-6
    np.testing.assert_allclose(np.asarray(cond_fit.coeffs.values) / scale,
                               np.asarray(aug_fit.coeffs.values) / scale, atol=2e-3)
    np.testing.assert_array_equal(cond_fit.report.kept, aug_fit.report.kept)
    np.testing.assert_array_equal(cond_fit.report.holdout_rows, aug_fit.report.holdout_rows)
    assert np.asarray(cond_fit.coeffs.values).any()


def test_guided_fit_equals_hand_written_guidance():
    n, scale, null = 64, 2.5, 4
    x, c = noise(n, seed=4), labels(n, seed=5) % 4

    def by_hand(x, sigma, cond):
        d_c = class_mixture(x, sigma, cond)
        d_u = class_mixture(x, sigma, jnp.full_like(cond, null))
        return d_u + scale * (d_c - d_u)

    g = guided(class_mixture, scale, null)
    p = plan("dpmpp_2m", 5)
    np.testing.assert_allclose(np.asarray(g(x, 3.0, c)), np.asarray(by_hand(x, 3.0, c)), rtol=1e-5, atol=1e-6)
    fits = [iia_jax.fit(d, p, x, cond=c, fine_steps=4, progress=False) for d in (g, by_hand)]
    np.testing.assert_allclose(np.asarray(fits[0].coeffs.values), np.asarray(fits[1].coeffs.values),
                               rtol=1e-4, atol=1e-5)
    assert fits[0].coeffs.guidance_scale == scale and fits[1].coeffs.guidance_scale is None
    out = jax.jit(lambda x, c: iia_jax.iia_sample(g, p, fits[0].coeffs, x, cond=c))(x, c)
    assert out.shape == x.shape and np.all(np.isfinite(np.asarray(out)))
    with pytest.raises(ValueError, match="guidance_scale"):
        iia_jax.iia_sample(guided(class_mixture, 1.0, null), p, fits[0].coeffs, x, cond=c)


def test_traced_plan_and_coefficients_refuse_another_grid():
    """Plan and coefficients as traced jit arguments: the sigmas are tracers, but the static
    fingerprints still tell the grids apart, at trace time."""
    x = noise(32)
    karras = plan("euler", 4)
    coeffs = iia_jax.fit(BASE, karras, x, fine_steps=4, progress=False, mode="teacher_forced").coeffs
    other = iia_jax.plan("euler", schedules.logsnr_uniform(4, 0.01, SIGMA_MAX))
    run = jax.jit(iia_jax.iia_sample, static_argnums=0)
    assert run(BASE, karras, coeffs, x).shape == x.shape
    with pytest.raises(ValueError, match="fitted for the grid"):
        run(BASE, other, coeffs, x)
    assert coeffs.plan_fingerprint == karras.fingerprint != other.fingerprint
    assert karras.fingerprint == plan("euler", 4).fingerprint      # rebuilt plans match


@pytest.mark.parametrize("cond, error, match", [
    (jnp.zeros((5,), jnp.int32), ValueError, "leading axis of 8"),
    (jnp.zeros((), jnp.int32), ValueError, "leading axis of 8"),
    (np.array(["a"] * 8), TypeError, "numeric"),
    ({}, ValueError, "empty"),
    ([1, 2, 3], TypeError, "arrays"),
])
def test_bad_conditions_are_refused(cond, error, match):
    x = noise(8)
    for call in (lambda: iia_jax.sample(class_mixture, plan("euler", 3), x, cond=cond),
                 lambda: iia_jax.fit(class_mixture, plan("euler", 3), x, cond=cond, progress=False)):
        with pytest.raises(error, match=match):
            call()


def test_holdout_needs_a_whole_group():
    with pytest.raises(ValueError, match="holdout"):
        iia_jax.fit(BASE, plan("euler", 3), noise(3), holdout=0.25, progress=False)


def test_unconditional_denoisers_are_unchanged():
    x = noise(16)
    p = plan("heun", 4)
    a = iia_jax.sample(BASE, p, x)
    b = iia_jax.sample(lambda x, s, c: BASE(x, s), p, x, cond=jnp.zeros((16,)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    anonymous = dataclasses.replace(p, fingerprint=None)
    np.testing.assert_array_equal(np.asarray(iia_jax.sample(BASE, anonymous, x)), np.asarray(a))
