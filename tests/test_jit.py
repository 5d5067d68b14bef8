"""``iia_jax.sample`` under ``jax.jit``: the three ways of passing a model, compilation reuse,
and trajectories."""
from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import iia_jax
from iia_jax import schedules
from iia_jax.models import from_eps, gmm

MEANS = np.array([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], np.float32)
STDS = np.array([0.3, 0.4, 0.5], np.float32)
MIX = gmm(MEANS, STDS)
X_T = jax.random.normal(jax.random.PRNGKey(0), (16, 2)) * 80.0
PLAN = iia_jax.plan("heun", schedules.karras(6))


def params_denoiser(params, x, sigma):
    """A network given as a function of a params pytree (here: the mixture's arrays)."""
    return iia_jax.models.GaussianMixture(params["means"], params["stds"], params["log_weights"])(x, sigma)


@pytest.fixture(scope="module")
def eager():
    return np.asarray(iia_jax.sample(MIX, PLAN, X_T))


def test_jit_static_denoiser(eager):
    jitted = jax.jit(iia_jax.sample, static_argnums=0)
    np.testing.assert_allclose(np.asarray(jitted(MIX, PLAN, X_T)), eager, rtol=1e-5, atol=1e-5)


def test_jit_closure(eager):
    jitted = jax.jit(lambda p, x: iia_jax.sample(MIX, p, x))
    np.testing.assert_allclose(np.asarray(jitted(PLAN, X_T)), eager, rtol=1e-5, atol=1e-5)


def test_jit_pytree_denoisers(eager):
    jitted = jax.jit(iia_jax.sample)
    # the mixture itself is a pytree
    np.testing.assert_allclose(np.asarray(jitted(MIX, PLAN, X_T)), eager, rtol=1e-5, atol=1e-5)
    # a Partial carrying params as a pytree
    den = Partial(params_denoiser, {"means": MIX.means, "stds": MIX.stds, "log_weights": MIX.log_weights})
    np.testing.assert_allclose(np.asarray(jitted(den, PLAN, X_T)), eager, rtol=1e-5, atol=1e-5)


def _eps_net(params, x_vp, t):
    return params["scale"] * x_vp + 0.0 * t[:, None]


def test_jit_adapter_over_partial_network():
    """An adapter over a Partial network stays a pytree: its params are traced, not baked in, and
    new params (same structure) reuse the compilation."""
    vp = schedules.vp_linear()
    traces = []

    def sample(den, p, x):
        traces.append(1)
        return iia_jax.sample(den, p, x)

    jitted = jax.jit(sample)
    p = iia_jax.plan("euler", schedules.time_uniform(vp, 5))
    adapter = from_eps(Partial(_eps_net, {"scale": jnp.float32(0.5)}), vp)
    out_a = jitted(adapter, p, X_T)
    adapter_b = jax.tree_util.tree_map(lambda leaf: jnp.full_like(leaf, 0.9), adapter)
    out_b = jitted(adapter_b, p, X_T)
    assert len(traces) == 1
    eager = iia_jax.sample(from_eps(Partial(_eps_net, {"scale": jnp.float32(0.9)}), vp), p, X_T)
    np.testing.assert_allclose(np.asarray(out_b), np.asarray(eager), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(out_a), np.asarray(out_b))


ABAR = schedules.ddpm_alphas_cumprod()
VP_LINEAR, VP_COSINE = schedules.vp_linear(), schedules.vp_cosine()
REBUILDERS = {   # a schedule or DDPM table may be rebuilt from the same arguments
    "from_eps": lambda net: from_eps(net, VP_LINEAR),
    "from_eps, schedule rebuilt": lambda net: from_eps(net, schedules.vp_linear(beta_max=20.0)),
    "from_v": lambda net: iia_jax.models.from_v(net, VP_COSINE),
    "from_discrete_eps": lambda net: iia_jax.models.from_discrete_eps(net, ABAR),
    "from_discrete_eps quantized": lambda net: iia_jax.models.from_discrete_eps(net, ABAR, quantize=True),
}


@pytest.mark.parametrize("name", sorted(REBUILDERS))
def test_rebuilt_adapter_reuses_compilation(name):
    """Rebuilding an adapter around new params of the same network must not retrace."""
    build = REBUILDERS[name]
    traces = []

    def sample(den, p, x):
        traces.append(1)
        return iia_jax.sample(den, p, x)

    jitted = jax.jit(sample)
    p = iia_jax.plan("euler", schedules.karras(5, 0.01, 50.0))
    for scale in (0.5, 0.9):
        den = build(Partial(_eps_net, {"scale": jnp.float32(scale)}))
        out = jitted(den, p, X_T)
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(out), np.asarray(iia_jax.sample(den, p, X_T)), rtol=1e-5, atol=1e-5)


def test_compiles_once_per_plan_shape():
    calls = []

    def counting(x, sigma):          # a Python side effect runs only while tracing
        calls.append(1)
        return MIX(x, sigma)

    def fresh(den, p, x):            # its own function, so its own jit cache
        return iia_jax.sample(den, p, x)

    jitted = jax.jit(fresh, static_argnums=0)
    out_a = jitted(counting, iia_jax.plan("euler", schedules.karras(8)), X_T)
    traced = len(calls)
    assert traced > 0 and jitted._cache_size() == 1
    # the same grid built again reuses the compilation ...
    jitted(counting, iia_jax.plan("euler", schedules.karras(8)), X_T)
    assert len(calls) == traced and jitted._cache_size() == 1
    # ... another grid carries another static fingerprint (checked against coefficients at trace
    # time) and compiles again; without its fingerprint it reuses the compilation
    other = iia_jax.plan("euler", schedules.logsnr_uniform(8))
    out_b = jitted(counting, other, X_T)
    assert len(calls) > traced and jitted._cache_size() == 2
    traced = len(calls)
    anonymous = [dataclasses.replace(p, fingerprint=None) for p in
                 (iia_jax.plan("euler", schedules.karras(8)), other)]
    outs = [jitted(counting, p, X_T) for p in anonymous]
    assert jitted._cache_size() == 3   # one compilation for both anonymous grids
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(out_a))
    np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(out_b))
    assert not np.allclose(np.asarray(out_a), np.asarray(out_b))
    np.testing.assert_allclose(
        np.asarray(out_b), np.asarray(iia_jax.sample(MIX, other, X_T)), rtol=1e-5, atol=1e-5)
    # ... a different number of steps, or another solver, compiles again
    jitted(counting, iia_jax.plan("euler", schedules.karras(9)), X_T)
    assert jitted._cache_size() == 4
    jitted(counting, iia_jax.plan("dpmpp_2m", schedules.karras(8)), X_T)
    assert jitted._cache_size() == 5


# every solver's trajectory: test_solvers.test_point_mass_exact_image
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_return_trajectory(solver):
    p = iia_jax.plan(solver, schedules.karras(5))
    jitted = jax.jit(iia_jax.sample, static_argnums=(0, 3))
    x0, traj = jitted(MIX, p, X_T, True)
    assert traj.shape == (6,) + X_T.shape
    np.testing.assert_array_equal(np.asarray(traj[0]), np.asarray(X_T))
    np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(x0))
    if solver == "euler":   # the first state is one Euler step from x_T
        s0, s1 = float(p.sigmas[0]), float(p.sigmas[1])
        first = X_T + (s1 - s0) * (X_T - MIX(X_T, s0)) / s0
        np.testing.assert_allclose(np.asarray(traj[1]), np.asarray(first), rtol=1e-5, atol=1e-4)


def test_single_step_plan():
    p = iia_jax.plan("dpmpp_2m", np.array([5.0, 0.0], np.float32))
    x0, traj = iia_jax.sample(MIX, p, X_T, return_trajectory=True)
    assert traj.shape == (2,) + X_T.shape
    np.testing.assert_allclose(np.asarray(x0), np.asarray(MIX(X_T, 5.0)), rtol=1e-6, atol=1e-6)
