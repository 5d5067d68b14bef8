"""Solvers, schedules and adapters checked against references written here.

* Convergence order: the global error on an exact Gaussian mixture against a fourth-order
  Runge-Kutta integration (written in this file, float64, checked for its own convergence)
  falls at the solver's theoretical order when the number of steps doubles.
* Closed forms: for a single Gaussian ``N(mu, s^2 I)`` the probability-flow ODE has the solution
  ``x(sigma) = mu + (x_T - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_T^2))``; for a point mass
  (s = 0) it is linear in sigma, which every solver here integrates exactly.
* Each solver equals an independent numpy float64 implementation of its published algorithm.
* Adapters: VP eps/v/x0 networks of the same mixture, written in VP space, give ``gmm``'s denoiser.
* Schedules: round trips, the EDM formula, grid structure.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iia_jax
from iia_jax import schedules, solvers
from iia_jax.models import from_eps, from_v, from_x0, gmm
from iia_jax.solvers.pndm import adams_bashforth_weights

SOLVER_NAMES = ["euler", "heun", "dpmpp_2m", "spndm", "ipndm"]
ORDER = {"euler": 1, "heun": 2, "dpmpp_2m": 2, "spndm": 2, "ipndm": 4}
HYPOTHESIS = settings(max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- helpers

def np_gmm_denoiser(x, sigma, means, stds, weights):
    """E[x0 | x] for x = x0 + sigma n, x0 ~ sum_k w_k N(mu_k, s_k^2 I); numpy float64."""
    x = np.asarray(x, np.float64)
    b, d = x.shape[0], int(np.prod(x.shape[1:]))
    flat, mu = x.reshape(b, 1, d), np.asarray(means, np.float64).reshape(1, -1, d)
    s2 = np.asarray(stds, np.float64) ** 2
    var = s2 + float(sigma) ** 2
    logits = (np.log(np.asarray(weights, np.float64) / np.sum(weights)) - 0.5 * d * np.log(var)
              - 0.5 * ((flat - mu) ** 2).sum(-1) / var)
    resp = np.exp(logits - logits.max(-1, keepdims=True))
    resp /= resp.sum(-1, keepdims=True)
    post = mu + (s2 / var)[None, :, None] * (flat - mu)
    return np.einsum("bk,bkd->bd", resp, post).reshape(x.shape)


_STEPS = {}


def run_steps(name, denoiser, sigmas, x, dtype):
    """Drive ``init``/``step`` of a solver in a Python loop.  Each step is jitted once per solver
    (the mixture is a pytree argument), so grids of any length cost no new compilation."""
    solver = solvers.get(name)
    if name not in _STEPS:
        _STEPS[name] = jax.jit(solver.step, static_argnums=(5,))
    sigmas = np.asarray(sigmas, np.float64).astype(dtype)
    x = jnp.asarray(x, dtype)
    state = solver.init(x)
    n = len(sigmas) - 1
    for i in range(n):
        state, x, _ = _STEPS[name](denoiser, state, x, sigmas[i], sigmas[i + 1], i == n - 1)
    return np.asarray(x)


def poly_grid(n, sigma_max=80.0, rho=7.0):
    """The Karras/EDM grid with sigma_min = 0: uniform in sigma^(1/rho) down to exactly 0, so every
    step (the last one too) shrinks when n doubles."""
    return np.linspace(sigma_max ** (1.0 / rho), 0.0, n + 1) ** rho


def gaussian_solution(x_T, mu, s, sigma, sigma_T):
    return mu + (x_T - mu) * np.sqrt((s ** 2 + sigma ** 2) / (s ** 2 + sigma_T ** 2))


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# ----------------------------------------------------------------------------- convergence order

MIX2D = dict(means=np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]),
             stds=np.array([0.5, 0.6, 0.7, 0.8]), weights=np.array([1.0, 2.0, 3.0, 4.0]))
ORDER_STEPS = {"euler": [32, 64, 128], "heun": [32, 64, 128], "dpmpp_2m": [32, 64, 128],
               "spndm": [32, 64, 128], "ipndm": [64, 128, 256]}


def rk4(denoiser, sigmas, x):
    """Classical RK4 on dx/dsigma = (x - D)/sigma.  For a mixture with all s_k > 0 the direction
    is O(sigma) as sigma -> 0 (x - D = sum_k p_k sigma^2/(s_k^2 + sigma^2)(x - mu_k)), so its
    value at sigma = 0 is 0."""
    def f(x, s):
        safe = jnp.where(s > 0, s, 1.0)
        return jnp.where(s > 0, (x - denoiser(x, safe)) / safe, 0.0)

    def body(i, x):
        s0, s1 = sigmas[i], sigmas[i + 1]
        h, sm = s1 - s0, 0.5 * (s0 + s1)
        k1 = f(x, s0)
        k2 = f(x + 0.5 * h * k1, sm)
        k3 = f(x + 0.5 * h * k2, sm)
        k4 = f(x + h * k3, s1)
        return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return jax.lax.fori_loop(0, sigmas.shape[0] - 1, body, x)


@pytest.fixture(scope="module")
def order_problem():
    """Mixture, float64 start x_T and the RK4 reference (and its own convergence).  x64 is on only
    while this runs and inside the tests that use the ``x64`` fixture."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        mix = gmm(**MIX2D)
        x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 2), jnp.float64) * 80.0
        ref_fn = jax.jit(lambda s, x: rk4(mix, s, x))
        coarse = np.asarray(ref_fn(jnp.asarray(poly_grid(1000)), x_T))
        ref = np.asarray(ref_fn(jnp.asarray(poly_grid(2000)), x_T))
        x_T = np.asarray(x_T)
    finally:
        jax.config.update("jax_enable_x64", previous)
    return dict(mix=mix, x_T=x_T, ref=ref, ref_error=float(np.max(np.abs(coarse - ref))))


def test_reference_converged(order_problem):
    # RK4 1000 vs 2000 steps: measured ~4e-10, far below the smallest solver error tested (~5e-6).
    assert order_problem["ref_error"] < 1e-8


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_convergence_order(order_problem, x64, name):
    p, ns = ORDER[name], ORDER_STEPS[name]
    errors = []
    for n in ns:
        out = run_steps(name, order_problem["mix"], poly_grid(n), order_problem["x_T"], np.float64)
        errors.append(float(np.median(np.sqrt(np.mean((out - order_problem["ref"]) ** 2, -1)))))
    slopes = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
    # measured (median per-sample RMS, 64 samples): euler 0.97, 0.99; heun 2.07, 2.03;
    # dpmpp_2m 2.15, 2.07; spndm 2.04, 2.03; ipndm (64-128-256) 3.69, 3.84
    assert errors[-1] > 1e3 * order_problem["ref_error"], "reference not accurate enough"
    assert np.all(slopes > 0), f"{name}: error does not fall, errors={errors}"
    assert slopes[-1] >= p - 0.3, f"{name}: observed order {slopes} < {p}, errors={errors}"
    assert slopes[-1] <= p + 0.5, f"{name}: observed order {slopes} suspiciously above {p}"


# ----------------------------------------------------------------------------- closed forms

# The jitted sampler takes the mixture as a pytree argument, so mixtures of the same shape share
# one compilation per (solver, number of steps).
SAMPLE = jax.jit(iia_jax.sample, static_argnames=("return_trajectory",))
IMAGE = (4, 4, 1)
GAUSS_MU = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape((1,) + IMAGE)
GAUSS = gmm(GAUSS_MU, 0.5)


def _image_noise(seed, batch=8):
    return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (batch,) + IMAGE)) * 80.0


# Steps and tolerance (max abs error, float32; |x_0| <~ 2) for a Gaussian with s = 0.5 on a Karras
# grid.  Measured: euler 3.8e-3 (first order: 1000 steps are nowhere near round-off), heun 9e-6,
# dpmpp_2m 6e-6, spndm 1.9e-5, ipndm 1.1e-5 (at 200 steps; see the xfail below).
MANY_STEPS = {"euler": (1000, 5e-3), "heun": (1000, 3e-5), "dpmpp_2m": (1000, 3e-5),
              "spndm": (1000, 5e-5), "ipndm": (200, 3e-5)}


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_single_gaussian_many_steps(name):
    x_T = _image_noise(3)
    n, tol = MANY_STEPS[name]
    out = run_steps(name, GAUSS, schedules.karras(n), x_T, np.float32)
    exact = gaussian_solution(x_T.astype(np.float64), GAUSS_MU, 0.5, 0.0, 80.0)
    assert np.max(np.abs(out - exact)) < tol


# ipndm's last step (sigma_min -> 0) is first order: AB4 over it amplified float32 round-off
# by ~(N/rho)^3 (karras(1000) gave 1.3e-3 before).
def test_ipndm_many_steps_float32():
    x_T = _image_noise(3)
    out = run_steps("ipndm", GAUSS, schedules.karras(1000), x_T, np.float32)
    exact = gaussian_solution(x_T.astype(np.float64), GAUSS_MU, 0.5, 0.0, 80.0)
    assert np.max(np.abs(out - exact)) < 1e-4


def _point_mass_exact(mu, x_T, sigmas):
    shape = (-1,) + (1,) * x_T.ndim
    return mu + (x_T.astype(np.float64) - mu) * sigmas.astype(np.float64).reshape(shape) / sigmas[0]


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_point_mass_exact_image(name):
    """With s = 0, D = mu and x(sigma) = mu + (x_T - mu) sigma / sigma_T: every step is exact.
    Image-shaped, through the jitted scan, every state of the trajectory (the point mass is repeated
    as 4 components so this shares its compilation with test_matches_independent_implementation)."""
    sigmas = schedules.karras(8)
    x_T = _image_noise(4)
    _, traj = SAMPLE(gmm(np.repeat(GAUSS_MU, 4, 0), 0.0), iia_jax.plan(name, sigmas),
                     jnp.asarray(x_T), return_trajectory=True)
    # float32: |x_T| ~ 240, so round-off is ~1e-5 absolute at sigma_max, shrinking with sigma
    np.testing.assert_allclose(np.asarray(traj), _point_mass_exact(GAUSS_MU[0], x_T, sigmas),
                               rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_point_mass_exact_flat_float64(order_problem, x64, name):
    """The same in float64 on flat data and a log-SNR grid (shares the order test's compilation)."""
    mu = np.array([0.3, -0.7])
    point = gmm(np.repeat(mu[None], 4, 0), 0.0)
    sigmas = schedules.logsnr_uniform(5)
    out = run_steps(name, point, sigmas, order_problem["x_T"], np.float64)
    exact = _point_mass_exact(mu.astype(np.float32), order_problem["x_T"], sigmas)[-1]
    np.testing.assert_allclose(out, exact, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- independent implementations

def ref_euler(den, sig, x):
    for i in range(len(sig) - 1):
        x = x + (sig[i + 1] - sig[i]) * (x - den(x, sig[i])) / sig[i]
    return x


def ref_heun(den, sig, x):
    """EDM (Karras et al. 2022) Algorithm 1, S_churn = 0."""
    for i in range(len(sig) - 1):
        d = (x - den(x, sig[i])) / sig[i]
        x_next = x + (sig[i + 1] - sig[i]) * d
        if sig[i + 1] != 0:
            d_prime = (x_next - den(x_next, sig[i + 1])) / sig[i + 1]
            x_next = x + (sig[i + 1] - sig[i]) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def ref_dpmpp_2m(den, sig, x):
    """k-diffusion's sample_dpmpp_2m."""
    t_fn = lambda s: -np.log(s)  # noqa: E731
    old = None
    for i in range(len(sig) - 1):
        d = den(x, sig[i])
        if sig[i + 1] == 0:
            x = d
        else:
            h = t_fn(sig[i + 1]) - t_fn(sig[i])
            if old is None:
                dd = d
            else:
                r = (t_fn(sig[i]) - t_fn(sig[i - 1])) / h
                dd = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old
            x = (sig[i + 1] / sig[i]) * x - np.expm1(-h) * dd
        old = d
    return x


def ref_spndm(den, sig, x):
    ds = []
    for i in range(len(sig) - 1):
        ds.insert(0, (x - den(x, sig[i])) / sig[i])
        direction = ds[0] if i == 0 else 1.5 * ds[0] - 0.5 * ds[1]
        x = x + (sig[i + 1] - sig[i]) * direction
    return x


def ref_ipndm(den, sig, x):
    """Adams-Bashforth of order min(i+1, 4), first order on the step to sigma = 0: integrate the
    Lagrange polynomial through the stored directions over [sigma_i, sigma_{i+1}] (numpy
    polynomials, per coordinate)."""
    ds, nodes = [], []
    for i in range(len(sig) - 1):
        ds.insert(0, (x - den(x, sig[i])) / sig[i])
        nodes.insert(0, sig[i])
        order = 1 if sig[i + 1] == 0 else min(i + 1, 4)
        integral = np.zeros_like(x)
        for j in range(order):
            others = [nodes[m] for m in range(order) if m != j]
            basis = np.poly1d([1.0])
            for o in others:
                basis = basis * np.poly1d([1.0, -o]) / (nodes[j] - o)
            antideriv = basis.integ()
            integral += (antideriv(sig[i + 1]) - antideriv(sig[i])) * ds[j]
        x = x + integral
    return x


REFERENCES = {"euler": ref_euler, "heun": ref_heun, "dpmpp_2m": ref_dpmpp_2m,
              "spndm": ref_spndm, "ipndm": ref_ipndm}
MIX_IMAGE = dict(means=np.random.default_rng(5).uniform(-1, 1, (4, 4, 4, 1)),
                 stds=np.array([0.3, 0.4, 0.5, 0.6]), weights=np.array([1.0, 1.0, 2.0, 2.0]))


@pytest.mark.parametrize("grid", ["karras", "uniform"])
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_matches_independent_implementation(name, grid):
    sigmas = schedules.karras(8) if grid == "karras" else np.linspace(80.0, 0.0, 9, dtype=np.float32)
    x_T = _image_noise(6)
    mix = gmm(**MIX_IMAGE)
    ours, _ = SAMPLE(mix, iia_jax.plan(name, sigmas), jnp.asarray(x_T), return_trajectory=True)
    ours = np.asarray(ours)
    den = lambda x, s: np_gmm_denoiser(x, s, **MIX_IMAGE)  # noqa: E731
    ref = REFERENCES[name](den, sigmas.astype(np.float64), x_T.astype(np.float64))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_ipndm_uniform_weights_are_the_published_ones():
    sig = jnp.asarray([4.0, 5.0, 6.0, 7.0])          # newest first, uniform step -1
    expected = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
                4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    weights = jax.jit(adams_bashforth_weights, static_argnums=2)
    for order, w in expected.items():
        np.testing.assert_allclose(weights(sig, 3.0, order), w, rtol=1e-5, atol=1e-6)


def test_nfe():
    n = 10
    assert iia_jax.plan("heun", schedules.karras(n)).nfe == 2 * n - 1
    for name in ["euler", "dpmpp_2m", "spndm", "ipndm"]:
        assert iia_jax.plan(name, schedules.karras(n)).nfe == n


# ----------------------------------------------------------------------------- gmm and adapters

_GMM_CALL = jax.jit(lambda mixture, x, sigma: mixture(x, sigma))


@settings(max_examples=30, deadline=None)
@given(sigma=st.floats(1e-3, 200.0), seed=st.integers(0, 2 ** 16),
       shape=st.sampled_from([(2,), (3,), (4, 4, 1)]))
def test_gmm_matches_numpy_posterior_mean(sigma, seed, shape):
    rng = np.random.default_rng(seed)
    means, stds, w = rng.normal(size=(3,) + shape), rng.uniform(0.05, 1.0, 3), rng.uniform(0.1, 1.0, 3)
    x = (means[rng.integers(0, 3, 4)] + sigma * rng.normal(size=(4,) + shape)).astype(np.float32)
    got = np.asarray(_GMM_CALL(gmm(means, stds, w), jnp.asarray(x), np.float32(sigma)))
    want = np_gmm_denoiser(x, np.float32(sigma), means.astype(np.float32), stds.astype(np.float32),
                           w.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * (1 + sigma))


def vp_linear_alpha(t, beta_min=0.1, beta_max=20.0):
    """Song et al. (2021): log alpha_t = -beta_d t^2 / 4 - beta_min t / 2."""
    return np.exp(-0.25 * (beta_max - beta_min) * t ** 2 - 0.5 * beta_min * t)


def vp_cosine_alpha(t, s=0.008):
    """Nichol & Dhariwal (2021): alpha_t = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2)."""
    return np.cos((t + s) / (1 + s) * np.pi / 2) / np.cos(s / (1 + s) * np.pi / 2)


class VPMixtureNet:
    """Analytic VP-space network of the mixture; ``kind`` is 'eps', 'v' or 'x0'.  numpy float64."""

    def __init__(self, params, alpha_fn, kind):
        self.params, self.alpha_fn, self.kind = params, alpha_fn, kind

    def __call__(self, x_vp, t):
        x_vp = np.asarray(x_vp, np.float64)
        t = np.asarray(t, np.float64)
        assert t.shape == x_vp.shape[:1]
        means, stds, w = self.params
        alpha = self.alpha_fn(t).reshape((-1,) + (1,) * (x_vp.ndim - 1))
        sig_vp = np.sqrt(1.0 - alpha ** 2)
        # x_vp | k ~ N(alpha mu_k, (alpha^2 s_k^2 + sig_vp^2) I): the same posterior mean as a
        # sigma-space mixture evaluated at x_vp / alpha, sigma = sig_vp / alpha.
        x0 = np.stack([np_gmm_denoiser(x_vp[i:i + 1] / alpha[i], sig_vp[i].item() / alpha[i].item(),
                                       means, stds, w)[0] for i in range(x_vp.shape[0])])
        eps = (x_vp - alpha * x0) / sig_vp
        out = {"eps": eps, "x0": x0, "v": alpha * eps - sig_vp * x0}[self.kind]
        return jnp.asarray(out, jnp.float32)


ADAPTERS = {"eps": from_eps, "v": from_v, "x0": from_x0}
VP_SCHEDULES = {"linear": (schedules.vp_linear(), vp_linear_alpha),
                "cosine": (schedules.vp_cosine(), vp_cosine_alpha)}


@pytest.mark.parametrize("kind", list(ADAPTERS))
@pytest.mark.parametrize("sched", list(VP_SCHEDULES))
@settings(max_examples=15, deadline=None)
@given(log_sigma=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16),
       shape=st.sampled_from([(2,), (4, 4, 1)]))
def test_vp_adapters_give_the_mixture_denoiser(kind, sched, log_sigma, seed, shape):
    schedule, alpha_fn = VP_SCHEDULES[sched]
    lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    sigma = float(np.float32(math.exp(lo + log_sigma * (hi - lo))))
    rng = np.random.default_rng(seed)
    params = (rng.normal(size=(3,) + shape), rng.uniform(0.1, 1.0, 3), rng.uniform(0.1, 1.0, 3))
    x = (params[0][rng.integers(0, 3, 3)] + sigma * rng.normal(size=(3,) + shape)).astype(np.float32)
    denoiser = ADAPTERS[kind](VPMixtureNet(params, alpha_fn, kind), schedule)
    got = np.asarray(denoiser(jnp.asarray(x), sigma))
    want = np.asarray(gmm(*params)(jnp.asarray(x), sigma))
    # float32: the adapter's x / (1 + sigma^2) and sigma * eps cancel to O(1) from O(sigma)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5 * (1 + sigma))


# ----------------------------------------------------------------------------- schedules

ALL_SCHEDULES = {"edm": schedules.edm(), "ve": schedules.ve(), "vp_linear": schedules.vp_linear(),
                 "vp_cosine": schedules.vp_cosine(),
                 "vp_discrete": schedules.vp_discrete(schedules.ddpm_alphas_cumprod())}


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
@given(u=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
@settings(max_examples=50, deadline=None)
def test_schedule_round_trip(name, u):
    sch = ALL_SCHEDULES[name]
    t = sch.t_min + (sch.t_max - sch.t_min) * np.asarray(u, np.float64)
    np.testing.assert_allclose(sch.time(sch.sigma(t)), t, rtol=1e-9, atol=1e-9 * max(1.0, sch.t_max))
    s = sch.sigma(t)
    np.testing.assert_allclose(sch.sigma(sch.time(s)), s, rtol=1e-9)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_schedule_jax_inputs(name):
    sch = ALL_SCHEDULES[name]
    t = np.linspace(sch.t_min, sch.t_max, 7)
    np.testing.assert_allclose(np.asarray(sch.sigma(jnp.asarray(t, jnp.float32))), sch.sigma(t),
                               rtol=2e-4)


def test_vp_schedules_match_published_alphas():
    t = np.linspace(1e-3, 0.99, 50)
    for name, alpha_fn in [("vp_linear", vp_linear_alpha), ("vp_cosine", vp_cosine_alpha)]:
        alpha = alpha_fn(t)
        np.testing.assert_allclose(ALL_SCHEDULES[name].sigma(t), np.sqrt(1 - alpha ** 2) / alpha,
                                   rtol=1e-10)
    ac = schedules.ddpm_alphas_cumprod()
    n = np.arange(1000, dtype=np.float64)
    np.testing.assert_allclose(ALL_SCHEDULES["vp_discrete"].sigma(n), np.sqrt((1 - ac) / ac), rtol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 18, 100])
@pytest.mark.parametrize("rho", [3.0, 7.0])
def test_karras_is_the_edm_formula(n, rho):
    smin, smax = 0.002, 80.0
    i = np.arange(n)
    # Karras et al. (2022), eq. (5)
    expected = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    got = schedules.karras(n, smin, smax, rho)
    np.testing.assert_allclose(got[:-1], expected, rtol=1e-6)
    assert got[-1] == 0.0


def _assert_grid(s, n, sigma_max):
    assert s.shape == (n + 1,) and s.dtype == np.float32
    assert s[-1] == 0.0
    assert np.all(np.diff(s) < 0)
    np.testing.assert_allclose(s[0], sigma_max, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 50])
def test_grid_structure(n):
    vp = schedules.vp_linear()
    for grid in (schedules.time_uniform, schedules.quadratic):
        s = grid(vp, n)
        _assert_grid(s, n, vp.sigma_max)
    t = vp.time(schedules.time_uniform(vp, n)[:-1].astype(np.float64))
    np.testing.assert_allclose(t, vp.t_min + (vp.t_max - vp.t_min) * (1 - np.arange(n) / n), rtol=1e-5)
    t = vp.time(schedules.quadratic(vp, n)[:-1].astype(np.float64))
    np.testing.assert_allclose(t, vp.t_min + (vp.t_max - vp.t_min) * (1 - np.arange(n) / n) ** 2,
                               rtol=1e-5, atol=1e-6)
    # vp_time: the VP clock restricted to an EDM range; the grid starts at sigma_max and its
    # times, on the closed-form VP time, are quadratic between the two ends' times
    clock = schedules.vp_time(0.002, 80.0)
    s = schedules.quadratic(clock, n)
    _assert_grid(s, n, 80.0)
    np.testing.assert_array_equal(schedules.vp_quadratic(n, 0.002, 80.0), s)
    ends = vp.time(np.array([0.002, 80.0]))
    np.testing.assert_allclose(vp.time(s[:-1].astype(np.float64)),
                               ends[0] + (ends[1] - ends[0]) * (1 - np.arange(n) / n) ** 2, rtol=1e-5, atol=1e-6)
    if n >= 2:
        for grid in (schedules.logsnr_uniform, schedules.karras):
            _assert_grid(grid(n), n, 80.0)
        log_s = np.log(schedules.logsnr_uniform(n, 0.002, 80.0)[:-1].astype(np.float64))
        np.testing.assert_allclose(np.diff(log_s), np.diff(log_s)[0], rtol=1e-5)
        np.testing.assert_allclose(log_s[-1], math.log(0.002), rtol=1e-6)
    ac = schedules.ddpm_alphas_cumprod()
    for spacing in ("leading", "trailing", "linspace"):
        s = schedules.ddim(ac, n, spacing)
        assert s.shape == (n + 1,) and s[-1] == 0.0 and np.all(np.diff(s) < 0)
