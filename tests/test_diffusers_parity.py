"""Parity with the torch schedulers of `diffusers` stepping the same exact model.

The model is an isotropic Gaussian mixture.  On the `diffusers` side it is written here,
independently, as a discrete DDPM eps-network in VP space (torch, float64): for
``x_vp = sqrt(abar) x0 + sqrt(1 - abar) n`` and ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)``,

    x_vp | k ~ N(sqrt(abar) mu_k, v_k I),           v_k = abar s_k^2 + 1 - abar,
    E[x0 | x_vp, k] = mu_k + sqrt(abar) s_k^2 / v_k (x_vp - sqrt(abar) mu_k),
    p(k | x_vp) = softmax_k(log w_k - d/2 log v_k - |x_vp - sqrt(abar) mu_k|^2 / (2 v_k)),
    eps(x_vp, t) = (x_vp - sqrt(abar_t) E[x0 | x_vp]) / sqrt(1 - abar_t).

On our side the same mixture is either :func:`iia_jax.models.gmm` used directly in sigma-space
(so the test also checks the VP <-> sigma-space mapping of docs/design.md §2), or the same VP formula
in jax wrapped by :func:`iia_jax.models.from_discrete_eps` (checks the adapter).

Both sides start from the same ``x_vp_T ~ N(0, I)`` (``init_noise_sigma = 1``); ours is
``x_T = x_vp_T * sqrt(1 + sigma_0^2)``.  Ours runs in float32, `diffusers` in float64 (its DPM
update upcasts to float32 internally).  Tolerance: ``rtol = atol = 1e-4`` on the final samples
(measured max abs difference, |x_0| <= 1.8: <= 6e-7 on 2-D data and <= 8e-6 image-shaped,
for both DDIM and DPM-Solver++(2M), 5/10/25 steps).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import iia_jax  # noqa: E402
from iia_jax import schedules  # noqa: E402
from iia_jax.models import from_discrete_eps, gmm  # noqa: E402

RTOL = ATOL = 1e-4
STEPS = [5, 10, 25]
SHAPES = {"flat": (2,), "image": (4, 4, 1)}


# ----------------------------------------------------------------------------- the model

def _mixture_params(event_shape, seed=0):
    rng = np.random.default_rng(seed)
    k = 4
    means = rng.uniform(-1.0, 1.0, (k,) + event_shape).astype(np.float32)
    stds = np.array([0.25, 0.35, 0.45, 0.55], np.float32)
    weights = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    return means, stds, weights


def _vp_posterior_mean(xp, softmax, x_vp, abar, means, stds, log_w):
    """E[x0 | x_vp] for the mixture in VP space, flattened events; abar is [B]."""
    b, d = x_vp.shape[0], int(np.prod(x_vp.shape[1:]))
    x = x_vp.reshape(b, 1, d)
    mu = means.reshape(1, -1, d)
    a = xp.sqrt(abar).reshape(b, 1, 1)
    var = abar.reshape(b, 1) * stds.reshape(1, -1) ** 2 + (1.0 - abar.reshape(b, 1))   # [B, K]
    diff = x - a * mu                                                                  # [B, K, d]
    logits = log_w.reshape(1, -1) - 0.5 * d * xp.log(var) - 0.5 * (diff ** 2).sum(-1) / var
    resp = softmax(logits)
    post = mu + (a * stds.reshape(1, -1, 1) ** 2 / var[..., None]) * diff
    return (resp[..., None] * post).sum(1).reshape(x_vp.shape)


class TorchMixtureEps:
    """The diffusers-side network: eps(x_vp, t) of the mixture, torch float64."""

    def __init__(self, params, alphas_cumprod):
        means, stds, weights = params
        self.means = torch.tensor(means, dtype=torch.float64)
        self.stds = torch.tensor(stds, dtype=torch.float64)
        self.log_w = torch.log(torch.tensor(weights / weights.sum(), dtype=torch.float64))
        self.abar = torch.as_tensor(alphas_cumprod).to(torch.float64)
        self.timesteps_seen = []

    def __call__(self, x_vp, t):
        t = int(t)
        self.timesteps_seen.append(t)
        abar = self.abar[t].expand(x_vp.shape[0])
        x0 = _vp_posterior_mean(torch, lambda z: torch.softmax(z, -1), x_vp, abar,
                                self.means, self.stds, self.log_w)
        shape = (-1,) + (1,) * (x_vp.ndim - 1)
        return (x_vp - abar.sqrt().reshape(shape) * x0) / (1.0 - abar).sqrt().reshape(shape)


def jax_mixture_eps(params, alphas_cumprod, record=None):
    """The same network in jax (float32) for ``from_discrete_eps``; timesteps are [B] floats."""
    means, stds, weights = (jnp.asarray(p) for p in params)
    log_w = jnp.log(weights / weights.sum())
    table = jnp.asarray(np.asarray(alphas_cumprod, np.float32))

    def eps(x_vp, t):
        if record is not None:
            jax.debug.callback(lambda tt: record.append(np.asarray(tt).copy()), t)
        abar = table[jnp.round(t).astype(jnp.int32)]
        x0 = _vp_posterior_mean(jnp, lambda z: jax.nn.softmax(z, -1), x_vp, abar, means, stds, log_w)
        shape = (-1,) + (1,) * (x_vp.ndim - 1)
        return (x_vp - jnp.sqrt(abar).reshape(shape) * x0) / jnp.sqrt(1.0 - abar).reshape(shape)
    return eps


# ----------------------------------------------------------------------------- fixtures

def _ddim_scheduler(spacing):
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                   beta_schedule="linear", set_alpha_to_one=True, clip_sample=False,
                                   timestep_spacing=spacing, steps_offset=0)


def _dpm_scheduler(spacing="linspace"):
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
        final_sigmas_type="zero", timestep_spacing=spacing)


@pytest.fixture(scope="module")
def alphas_cumprod():
    """diffusers' own float32 alphas_cumprod (so both sides use bit-identical schedules)."""
    return _ddim_scheduler("leading").alphas_cumprod.numpy().astype(np.float64)


@pytest.fixture(scope="module")
def sample_fn():
    return jax.jit(iia_jax.sample, static_argnums=0)


def _noise(shape, batch=16, seed=1):
    return np.random.default_rng(seed).standard_normal((batch,) + shape).astype(np.float32)


def _run_diffusers(scheduler, model, x_vp_T):
    x = torch.tensor(x_vp_T, dtype=torch.float64) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(model(x_in, t), t, x).prev_sample
    return x.numpy()


def _sigma_grid(alphas_cumprod, timesteps):
    """Training-grid sigmas at integer timesteps (float64 -> float32, as schedules.ddim does) + 0."""
    a = np.asarray(alphas_cumprod, np.float64)
    table = np.sqrt((1.0 - a) / a)
    return np.concatenate([table[np.asarray(timesteps)], [0.0]]).astype(np.float32)


def _ours(sample_fn, denoiser, solver, sigmas, x_vp_T):
    sigmas = np.asarray(sigmas, np.float32)
    x_T = jnp.asarray(x_vp_T) * jnp.sqrt(1.0 + jnp.float32(sigmas[0]) ** 2)
    return np.asarray(sample_fn(denoiser, iia_jax.plan(solver, sigmas), x_T))


# ----------------------------------------------------------------------------- tests

def test_ddpm_alphas_cumprod_matches_diffusers(alphas_cumprod):
    ours = schedules.ddpm_alphas_cumprod("linear", 1e-4, 0.02, 1000)
    # diffusers accumulates the product in float32: agreement is to float32 round-off (measured 3.6e-7).
    np.testing.assert_allclose(ours, alphas_cumprod, rtol=2e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 3, 5, 7, 10, 25, 50, 999])
def test_ddim_grid_matches_diffusers_timesteps(alphas_cumprod, spacing, num_steps):
    sched = _ddim_scheduler(spacing)
    sched.set_timesteps(num_steps)
    expected = _sigma_grid(alphas_cumprod, sched.timesteps.numpy())
    got = schedules.ddim(alphas_cumprod, num_steps, spacing)
    np.testing.assert_array_equal(got, expected)


class Model:
    """One mixture, cached per module so the jitted sampler compiles once per (solver, N, shape)."""

    def __init__(self, event_shape, alphas_cumprod):
        self.params = _mixture_params(event_shape)
        self.event_shape = event_shape
        self.mixture = gmm(*self.params)
        self.seen = []   # timesteps the adapter's network received, one [B] row per call
        self.adapter = from_discrete_eps(jax_mixture_eps(self.params, alphas_cumprod, self.seen),
                                         alphas_cumprod)
        self.torch_eps = TorchMixtureEps(self.params, alphas_cumprod)


@pytest.fixture(scope="module")
def models(alphas_cumprod):
    return {name: Model(shape, alphas_cumprod) for name, shape in SHAPES.items()}


# (shape, num_steps): every step count on flat data, image-shaped data at one step count.
CASES = [("flat", n) for n in STEPS] + [("image", 10)]


@pytest.mark.parametrize("shape,num_steps", CASES)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_equals_ddim(sample_fn, alphas_cumprod, models, spacing, num_steps, shape):
    model = models[shape]
    sched = _ddim_scheduler(spacing)
    sched.set_timesteps(num_steps)
    x_vp_T = _noise(model.event_shape)
    ref = _run_diffusers(sched, model.torch_eps, x_vp_T)

    sigmas = schedules.ddim(alphas_cumprod, num_steps, spacing)
    np.testing.assert_array_equal(sigmas, _sigma_grid(alphas_cumprod, sched.timesteps.numpy()))
    direct = _ours(sample_fn, model.mixture, "euler", sigmas, x_vp_T)
    np.testing.assert_allclose(direct, ref, rtol=RTOL, atol=ATOL)
    if shape == "flat" and num_steps == 10:  # the adapter path
        adapted = _ours(sample_fn, model.adapter, "euler", sigmas, x_vp_T)
        np.testing.assert_allclose(adapted, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape,num_steps", CASES)
def test_dpmpp_2m_equals_diffusers(sample_fn, alphas_cumprod, models, num_steps, shape):
    model = models[shape]
    sched = _dpm_scheduler("linspace")
    sched.set_timesteps(num_steps)
    x_vp_T = _noise(model.event_shape)
    ref = _run_diffusers(sched, model.torch_eps, x_vp_T)

    sigmas = _sigma_grid(alphas_cumprod, sched.timesteps.numpy())
    np.testing.assert_allclose(sigmas, sched.sigmas.numpy(), rtol=1e-6)   # same grid as theirs
    direct = _ours(sample_fn, model.mixture, "dpmpp_2m", sigmas, x_vp_T)
    np.testing.assert_allclose(direct, ref, rtol=RTOL, atol=ATOL)
    if shape == "flat" and num_steps == 10:
        adapted = _ours(sample_fn, model.adapter, "dpmpp_2m", sigmas, x_vp_T)
        np.testing.assert_allclose(adapted, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_from_discrete_eps_receives_integer_timesteps(sample_fn, alphas_cumprod, models, spacing):
    num_steps, model = 10, models["flat"]
    sched = _ddim_scheduler(spacing)
    sched.set_timesteps(num_steps)
    model.seen.clear()
    _ours(sample_fn, model.adapter, "euler", schedules.ddim(alphas_cumprod, num_steps, spacing),
          _noise(model.event_shape, batch=16))
    jax.effects_barrier()
    seen = np.stack(model.seen)                            # [num_steps, B], one row a call
    assert seen.shape == (num_steps, 16)
    assert np.all(seen == seen[:, :1])                     # broadcast over the batch
    np.testing.assert_array_equal(np.sort(seen[:, 0])[::-1],
                                  sched.timesteps.numpy().astype(np.float32))
