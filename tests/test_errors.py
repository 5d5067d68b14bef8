"""Bad input fails early with a message that names the argument: ValueError for bad values and
shapes, TypeError for wrong types."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.models import edm, from_discrete_eps, from_eps, from_v, from_x0, gmm

GOOD = np.array([10.0, 1.0, 0.1, 0.0], np.float32)
MIX = gmm(np.array([[0.0, 1.0], [1.0, 0.0]]), 0.3)
X = jnp.ones((3, 2), jnp.float32)


# ----------------------------------------------------------------------------- sigmas and plans

@pytest.mark.parametrize("sigmas,match", [
    ([10.0, 10.0, 0.0], r"sigmas must be strictly decreasing.*sigmas\[0\]"),
    ([10.0, 1.0, 2.0, 0.0], r"sigmas must be strictly decreasing.*sigmas\[1\]"),
    ([1.0, 10.0, 0.0], r"sigmas must be strictly decreasing"),
    ([10.0, 1.0, 0.1], r"sigmas must end with 0"),
    ([10.0, np.nan, 0.0], r"sigmas must be finite"),
    ([np.inf, 1.0, 0.0], r"sigmas must be finite"),
    ([0.0], r"sigmas must be 1-D with at least 2 entries"),
    ([[10.0, 0.0]], r"sigmas must be 1-D"),
])
def test_bad_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        iia_jax.plan("euler", np.asarray(sigmas, np.float32))


def test_unknown_solver():
    with pytest.raises(ValueError, match=r"solver must be one of .*'euler'.*got 'dpm\+\+'"):
        iia_jax.plan("dpm++", GOOD)


def test_solver_name_of_wrong_type():
    with pytest.raises(TypeError, match="solver"):
        iia_jax.plan(2, GOOD)


def test_plan_of_wrong_type():
    with pytest.raises(TypeError, match="plan must be an iia_jax.Plan"):
        iia_jax.sample(MIX, GOOD, X)


# ----------------------------------------------------------------------------- x_T and the denoiser

def test_x_T_without_batch_axis():
    with pytest.raises(ValueError, match=r"x_T must have shape \[B, ...\]"):
        iia_jax.sample(MIX, iia_jax.plan("euler", GOOD), jnp.ones((2,)))


@pytest.mark.parametrize("x_T,match", [
    ([[0.0, 1.0]], "x_T must be an array"),
    (jnp.ones((3, 2), jnp.int32), "x_T must be a floating-point array"),
])
def test_x_T_of_wrong_type(x_T, match):
    with pytest.raises(TypeError, match=match):
        iia_jax.sample(MIX, iia_jax.plan("euler", GOOD), x_T)


def test_denoiser_not_callable():
    with pytest.raises(TypeError, match="denoiser must be callable"):
        iia_jax.sample("gmm", iia_jax.plan("euler", GOOD), X)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "ipndm", "spndm"])
def test_denoiser_returning_wrong_shape(solver):
    with pytest.raises(ValueError,
                       match=r"denoiser returned shape \(3, 1\), expected the input shape \(3, 2\)"):
        iia_jax.sample(lambda x, s: x[:, :1], iia_jax.plan(solver, GOOD), X)


def test_gmm_event_shape_mismatch():
    with pytest.raises(ValueError,
                       match=r"x must have shape \[B, 2\] to match the mixture means, got \(3, 3\)"):
        iia_jax.sample(MIX, iia_jax.plan("euler", GOOD), jnp.ones((3, 3)))


def test_check_finite_names_the_step():
    # NaN only once sigma < 0.5, i.e. at step 2 (sigma = 0.1)
    def bad(x, sigma):
        return jnp.where(sigma < 0.5, jnp.nan, 0.0) * x
    p = iia_jax.plan("euler", GOOD)
    with pytest.raises(ValueError, match=r"NaN or Inf at step 2 \(sigma=0\.1\)"):
        iia_jax.sample(bad, p, X, check_finite=True)
    assert np.isnan(np.asarray(iia_jax.sample(bad, p, X))).all()   # no check, no error


# ----------------------------------------------------------------------------- mixtures

@pytest.mark.parametrize("kwargs,match", [
    (dict(means=[1.0, 2.0], stds=0.1), r"means must have shape \[K, \*event_shape\]"),
    (dict(means=np.zeros((3, 2)), stds=[0.1, 0.2]), r"stds must be a scalar or have shape \[3\]"),
    (dict(means=np.zeros((2, 2)), stds=-0.1), "stds must be non-negative"),
    (dict(means=np.zeros((2, 2)), stds=0.1, weights=[1.0]), r"weights must be \[2\]"),
    (dict(means=np.zeros((2, 2)), stds=0.1, weights=[1.0, -1.0]), r"weights must be \[2\] non-negative"),
    (dict(means=np.zeros((2, 2)), stds=0.1, weights=[0.0, 0.0]), "weights must be .* positive sum"),
])
def test_bad_mixture(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gmm(**kwargs)


# ----------------------------------------------------------------------------- adapters

def test_adapter_network_not_callable():
    vp = schedules.vp_linear()
    for adapter, name in [(from_eps, "eps_fn"), (from_v, "v_fn"), (from_x0, "x0_fn")]:
        with pytest.raises(TypeError, match=f"{name} must be callable"):
            adapter(None, vp)
    with pytest.raises(TypeError, match="eps_fn must be callable"):
        from_discrete_eps(3, schedules.ddpm_alphas_cumprod())
    with pytest.raises(TypeError, match="fn must be callable"):
        edm("network")


def test_adapter_schedule():
    with pytest.raises(TypeError, match="schedule must be an iia_jax.schedules.Schedule"):
        from_eps(lambda x, t: x, "vp_linear")
    with pytest.raises(ValueError, match="schedule must be a VP schedule.*'ve'"):
        from_eps(lambda x, t: x, schedules.edm())


def test_adapter_network_returning_wrong_shape():
    den = from_eps(lambda x, t: x[:, :1], schedules.vp_linear())
    with pytest.raises(ValueError, match=r"eps_fn returned shape \(3, 1\)"):
        den(X, 1.0)


@pytest.mark.parametrize("alphas", [
    np.array([0.9]), np.array([0.9, 0.95]), np.array([0.9, 0.0]), np.array([[0.9, 0.8]]),
    np.array([0.9, np.nan]), np.array([1.5, 0.5]),
])
def test_bad_alphas_cumprod(alphas):
    with pytest.raises(ValueError, match="alphas_cumprod must be"):
        from_discrete_eps(lambda x, t: x, alphas)


# ----------------------------------------------------------------------------- grids

@pytest.mark.parametrize("call,match", [
    (lambda: schedules.karras(1), "num_steps must be an integer >= 2"),
    (lambda: schedules.karras(0), "num_steps must be an integer >= 2"),
    (lambda: schedules.logsnr_uniform(1), "num_steps must be an integer >= 2"),
    (lambda: schedules.time_uniform(schedules.vp_linear(), 0), "num_steps must be an integer >= 1"),
    (lambda: schedules.karras(10, sigma_min=0.0), "need 0 < sigma_min < sigma_max"),
    (lambda: schedules.karras(10, sigma_min=5.0, sigma_max=1.0), "need 0 < sigma_min < sigma_max"),
    (lambda: schedules.logsnr_uniform(10, sigma_max=np.inf), "need 0 < sigma_min < sigma_max < inf"),
    (lambda: schedules.ddim(schedules.ddpm_alphas_cumprod(), 1001), "num_steps=1001 exceeds"),
    (lambda: schedules.ddim(schedules.ddpm_alphas_cumprod(), 10, "uniform"), "spacing must be"),
    (lambda: schedules.ddim(schedules.ddpm_alphas_cumprod(), 10, steps_offset=1000), "steps_offset=1000"),
    (lambda: schedules.ddpm_alphas_cumprod("cosine"), "beta_schedule must be"),
])
def test_bad_grid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: schedules.karras(10.0),
    lambda: schedules.karras("10"),
    lambda: schedules.time_uniform(schedules.vp_linear(), 2.5),
    lambda: schedules.ddim(schedules.ddpm_alphas_cumprod(), np.float32(10)),
])
def test_num_steps_of_wrong_type(call):
    with pytest.raises(TypeError, match="num_steps must be an integer"):
        call()


def test_grid_of_wrong_schedule_type():
    with pytest.raises(TypeError, match="schedule must be an iia_jax.schedules.Schedule"):
        schedules.time_uniform("vp_linear", 10)
