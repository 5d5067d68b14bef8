"""Classifier-free guidance: the formula, its limits, the batched one-network form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iia_jax.models.guidance import cfg, cfg_single

B = 3
X = jnp.asarray(np.random.default_rng(0).standard_normal((B, 4, 4, 2)), jnp.float32)
LABELS = jnp.array([1.0, -2.0, 0.5])
NULL = jnp.zeros((1,))


def _expand(v, x):
    v = jnp.asarray(v, x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def cond_net(x, sigma, c):
    """An analytic 'conditional denoiser': shrink towards a label-dependent mean."""
    s = _expand(sigma, x)
    return x / (1 + s ** 2) + _expand(c, x) * s / (1 + s ** 2)


def d_cond(x, sigma):
    return cond_net(x, sigma, LABELS)


def d_uncond(x, sigma):
    return cond_net(x, sigma, jnp.zeros(B))


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, -0.5, 7])
def test_cfg_formula(scale):
    sigma = 1.7
    guided = cfg(d_cond, d_uncond, scale)
    dc, du = d_cond(X, sigma), d_uncond(X, sigma)
    np.testing.assert_allclose(guided(X, sigma), du + scale * (dc - du), rtol=1e-6, atol=1e-6)
    assert isinstance(guided.guidance_scale, float) and guided.guidance_scale == scale


def test_scale_zero_and_one_are_the_two_denoisers():
    sigma = jnp.float32(0.4)
    np.testing.assert_allclose(cfg(d_cond, d_uncond, 0.0)(X, sigma), d_uncond(X, sigma),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(cfg(d_cond, d_uncond, 1.0)(X, sigma), d_cond(X, sigma),
                               rtol=0, atol=1e-6)


def test_cfg_same_denoiser_calls_once():
    calls = []

    def d(x, sigma):
        calls.append(x.shape)
        return 2.0 * x

    np.testing.assert_allclose(cfg(d, d, 3.0)(X, 1.0), 2.0 * X)
    assert len(calls) == 1


@pytest.mark.parametrize("sigma", [0.8, np.array([0.1, 1.0, 10.0], np.float32)])
def test_cfg_single_equals_cfg_in_one_call(sigma):
    calls = []

    def net(x, s, c):
        calls.append(x.shape[0])
        return cond_net(x, s, c)

    scale = 3.0
    single = cfg_single(net, LABELS, NULL, scale)  # null label broadcast from [1] to [B]
    out = single(X, jnp.asarray(sigma))
    assert calls == [2 * B]
    ref = cfg(d_cond, d_uncond, scale)(X, jnp.asarray(sigma))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    assert single.guidance_scale == scale


def test_guided_denoisers_are_pytrees_under_jit():
    """cond arrays are traced leaves; the scale is static and survives jit."""
    scale = 2.0
    single = cfg_single(cond_net, LABELS, NULL, scale)
    seen = []

    @jax.jit
    def apply(d, x, sigma):
        seen.append(d.guidance_scale)
        return d(x, sigma)

    np.testing.assert_allclose(apply(single, X, 0.5), single(X, 0.5), rtol=1e-6, atol=1e-6)
    leaves = jax.tree_util.tree_leaves(single)
    assert any(leaf is LABELS for leaf in leaves) and seen == [scale]

    pair = cfg(jax.tree_util.Partial(cond_net, c=LABELS), d_uncond, scale)
    np.testing.assert_allclose(apply(pair, X, 0.5), pair(X, 0.5), rtol=1e-6, atol=1e-6)


def test_cfg_single_pytree_condition():
    def net(x, sigma, c):
        return cond_net(x, sigma, c["label"] * c["gain"][:, 0])

    cond = {"label": LABELS, "gain": jnp.full((B, 1), 2.0)}
    null = {"label": jnp.zeros((1,)), "gain": jnp.ones((1, 1))}
    out = cfg_single(net, cond, null, 1.5)(X, 0.3)
    dc, du = cond_net(X, 0.3, 2.0 * LABELS), cond_net(X, 0.3, jnp.zeros(B))
    np.testing.assert_allclose(out, du + 1.5 * (dc - du), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -np.inf])
def test_non_finite_scale_raises(bad):
    with pytest.raises(ValueError, match="finite"):
        cfg(d_cond, d_uncond, bad)
    with pytest.raises(ValueError, match="finite"):
        cfg_single(cond_net, LABELS, NULL, bad)


def test_bad_arguments():
    with pytest.raises(TypeError, match="uncond_denoiser"):
        cfg(d_cond, None, 1.0)
    with pytest.raises(TypeError, match="denoiser_fn"):
        cfg_single("net", LABELS, NULL, 1.0)
    with pytest.raises(TypeError, match="concrete"):
        cfg(d_cond, d_uncond, "2")
    with pytest.raises(ValueError, match="leading batch axis"):
        cfg_single(cond_net, jnp.ones(5), NULL, 2.0)(X, 1.0)
    with pytest.raises(ValueError, match="same pytree structure"):
        cfg_single(cond_net, {"a": LABELS}, {"b": NULL}, 2.0)(X, 1.0)


def test_cfg_of_discrete_eps_adapters():
    """Guidance of two VP eps models equals guiding eps: D = x - sigma eps is affine."""
    from iia_jax.models import from_discrete_eps
    from iia_jax.schedules import ddpm_alphas_cumprod

    abar = ddpm_alphas_cumprod()

    def eps_net(x, t, c):
        return jnp.tanh(x * (1 + t[:, None, None, None] / 1000)) + _expand(c, x)

    dc = from_discrete_eps(functools.partial(eps_net, c=LABELS), abar)
    du = from_discrete_eps(functools.partial(eps_net, c=jnp.zeros(B)), abar)
    sigma, s = jnp.float32(2.0), 4.0
    out = cfg(dc, du, s)(X, sigma)
    eps_c = (X - dc(X, sigma)) / sigma
    eps_u = (X - du(X, sigma)) / sigma
    np.testing.assert_allclose(out, X - sigma * (eps_u + s * (eps_c - eps_u)),
                               rtol=1e-5, atol=1e-5)
