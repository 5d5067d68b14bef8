"""IIA (docs/design.md §4) checked against independent references, never against saved outputs.

Model: exact Gaussian-mixture denoisers (:func:`iia_jax.models.gmm`), so the probability-flow
ODE has no model error.  Reference: that ODE solved with Heun on ``REF_STEPS`` Karras steps from
the same ``x_T`` (300 and 600 steps agree to ~4e-5 in median, far below every error compared
here; ``test_reference_is_converged``).  Fits see one batch of noise; every error is measured on
another batch that no fit has seen.  ``median`` below is the median per-sample RMS error
(:func:`iia_jax.metrics.ode_error`).

Measured when these tests were written (CPU, jax 0.10.2; defaults: sequential mode, the
solver's default target (local for heun, trajectory otherwise), history 1, holdout 0.25,
ridge 1e-4, fine_steps 16, fit batch 512, Karras grid sigma_max = 40), median error on the test batch:

==========================  ===============  =====================  =======  ========
mixture                     solver N (NFE)   base -> IIA            factor   asserted
==========================  ===============  =====================  =======  ========
4-D, 6 modes, wide          heun 5 (9)       0.840 -> 0.0283        30x      >= 5
4-D, 6 modes, wide          euler 8 (8)      0.148 -> 0.0110        13x      >= 5
4-D, 6 modes, wide          dpmpp_2m 8 (8)   0.293 -> 0.0403        7.3x     >= 3
images [4, 4, 1], 3 modes   heun 5 (9)       0.604 -> 0.0041        148x     >= 5
images [4, 4, 1], 3 modes   dpmpp_2m 8 (8)   0.154 -> 0.0163        9.5x     >= 4 (slow)
4-D, 6 modes, close         heun 5 (9)       0.592 -> 0.0729        8.1x     >= 4 (slow)
4-D, 6 modes, close         dpmpp_2m 8 (8)   0.158 -> 0.0498        3.2x     >= 1.8 (slow)
2-D, 4 separated modes      heun 5 (9)       0.646 -> 0.0032        201x     >= 10 (slow)
2-D, 4 separated modes      dpmpp_2m 8 (8)   0.230 -> 0.0063        37x      >= 5 (slow)
4-D, 6 modes, wide          heun 8 (15)      0.179 -> 0.0104        17x      <= 1.05 base
4-D, 6 modes, wide          euler 20 (20)    0.0526 -> 0.0042       13x      <= 1.05 base
4-D, 6 modes, wide          dpmpp_2m 25 (25) 0.0102 -> 0.0075       1.4x     <= 1.05 base
==========================  ===============  =====================  =======  ========

The asserted factors are at most about half of the measured ones (mostly a fifth or less):
real, but robust to other platforms and library versions.  Not asserted: euler N=8 gains 2.4x
on the 2-D mixture and 15x on the close 4-D one.  Run with ``-s`` to see the numbers.

Cost: every fit compiles a few XLA programs (seconds each on CPU), so fits are cached per module
(``fitted``) and shared between tests; the wider matrix is marked ``slow``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.iia import Coefficients
from iia_jax.iia.features import DEFAULT_PRESET, DEFAULT_TARGET, PRESET_SOLVERS, feature_spec
from iia_jax.metrics import ode_error, per_sample_rms
from iia_jax.models import gmm

SIGMA_MAX = 40.0
FIT_BATCH = 512
TEST_BATCH = 512
FINE_STEPS = 16
REF_STEPS = 600

_MEANS_4D = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
MIXTURES = {   # name: (means [K, *event], std)
    "4d-wide": (2.0 * _MEANS_4D, 0.25),     # 4-D, 6 modes, well separated
    "4d-close": (_MEANS_4D, 0.25),          # the same modes at half the distance
    "2d-square": (np.array([[2, 2], [2, -2], [-2, 2], [-2, -2]], np.float32), 0.1),
    "image": (np.random.default_rng(1).standard_normal((3, 4, 4, 1)).astype(np.float32), 0.3),
}

_sample = jax.jit(iia_jax.sample, static_argnums=0)
_iia_sample = jax.jit(iia_jax.iia_sample, static_argnums=0)


@functools.lru_cache(maxsize=None)
def mixture(name):
    means, std = MIXTURES[name]
    return gmm(means, std)


@functools.lru_cache(maxsize=None)
def noise(name):
    """``(x_fit [FIT_BATCH, ...], x_test [TEST_BATCH, ...])`` in sigma-space at SIGMA_MAX."""
    shape = mixture(name).event_shape
    k_fit, k_test = jax.random.split(jax.random.PRNGKey(0))
    return (jax.random.normal(k_fit, (FIT_BATCH,) + shape) * SIGMA_MAX,
            jax.random.normal(k_test, (TEST_BATCH,) + shape) * SIGMA_MAX)


def coarse(solver, num_steps):
    return iia_jax.plan(solver, schedules.karras(num_steps, sigma_max=SIGMA_MAX))


@functools.lru_cache(maxsize=None)
def reference(name, steps=REF_STEPS):
    """The fine ODE solution from the test noise."""
    return _sample(mixture(name), coarse("heun", steps), noise(name)[1])


@functools.lru_cache(maxsize=None)
def fitted(name, solver, num_steps, **kwargs):
    kwargs.setdefault("fine_steps", FINE_STEPS)
    return iia_jax.fit(mixture(name), coarse(solver, num_steps), noise(name)[0], fingerprint=name,
                       progress=False, **kwargs)


@functools.lru_cache(maxsize=None)
def base_error(name, solver, num_steps):
    return ode_error(_sample(mixture(name), coarse(solver, num_steps), noise(name)[1]),
                     reference(name)).median


def iia_error(name, solver, num_steps, coeffs):
    return ode_error(_iia_sample(mixture(name), coarse(solver, num_steps), coeffs, noise(name)[1]),
                     reference(name)).median


def _coefficients(plan, preset=None, history=1, values=None, seed=0, scale=1e-3):
    """Hand-made coefficients for ``plan`` (random, small unless ``values`` is given)."""
    spec = feature_spec(plan.solver, preset, history)
    if values is None:
        rng = np.random.default_rng(seed)
        values = scale * rng.standard_normal((plan.num_steps, spec.num_features))
    return Coefficients(jnp.asarray(values, jnp.float32), plan.sigmas, jnp.ones(plan.num_steps, bool),
                        plan.solver, spec.preset, history, 8, "sequential", "trajectory", 1)


# ----------------------------------------------------------------------------- accuracy

def test_reference_is_converged():
    diff = ode_error(reference("4d-wide", REF_STEPS // 2), reference("4d-wide")).median
    assert diff < 2e-4, diff   # Heun is 2nd order: the 600-step error is ~1/4 of this


LOW_NFE = [
    # mixture, solver, steps, asserted factor (measured factors in the module docstring)
    ("4d-wide", "heun", 5, 5.0),
    ("4d-wide", "euler", 8, 5.0),
    ("4d-wide", "dpmpp_2m", 8, 3.0),
    ("image", "heun", 5, 5.0),
    pytest.param("4d-close", "heun", 5, 4.0, marks=pytest.mark.slow),
    pytest.param("4d-close", "dpmpp_2m", 8, 1.8, marks=pytest.mark.slow),
    pytest.param("2d-square", "heun", 5, 10.0, marks=pytest.mark.slow),
    pytest.param("2d-square", "dpmpp_2m", 8, 5.0, marks=pytest.mark.slow),
    pytest.param("image", "dpmpp_2m", 8, 4.0, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, solver, num_steps, factor", LOW_NFE)
def test_iia_lowers_error_at_low_nfe(name, solver, num_steps, factor):
    result = fitted(name, solver, num_steps)
    base, iia = base_error(name, solver, num_steps), iia_error(name, solver, num_steps, result.coeffs)
    print(f"{name} {solver} N={num_steps} NFE={coarse(solver, num_steps).nfe}: median "
          f"{base:.4g} -> {iia:.4g} ({base / iia:.1f}x), kept {result.report.kept.sum()}/{num_steps}")
    assert iia * factor <= base, (base, iia)


HIGH_NFE = [("heun", 8), ("euler", 20), ("dpmpp_2m", 25)]   # NFE 15, 20, 25


@pytest.mark.slow
@pytest.mark.parametrize("solver, num_steps", HIGH_NFE)
def test_iia_never_meaningfully_worse_at_higher_nfe(solver, num_steps):
    result = fitted("4d-wide", solver, num_steps)
    base = base_error("4d-wide", solver, num_steps)
    iia = iia_error("4d-wide", solver, num_steps, result.coeffs)
    print(f"4d-wide {solver} N={num_steps} NFE={coarse(solver, num_steps).nfe}: median "
          f"{base:.4g} -> {iia:.4g} ({base / iia:.1f}x)")
    assert iia <= 1.05 * base, (base, iia)


def test_teacher_forced_close_to_sequential_local():
    """The modes of docs/design.md §4: on exact mixtures teacher-forced ~ sequential-local.  Checked: both beat the
    base step by >= 5x, and their medians are within a factor 3 of each other.  No holdout: this
    compares the two fits themselves, without the never-worse check in between."""
    base = base_error("4d-wide", "heun", 5)
    tf = iia_error("4d-wide", "heun", 5,
                   fitted("4d-wide", "heun", 5, mode="teacher_forced", holdout=0.0).coeffs)
    local = iia_error("4d-wide", "heun", 5, fitted("4d-wide", "heun", 5, target="local", holdout=0.0).coeffs)
    print(f"heun N=5: base {base:.4g}, teacher-forced {tf:.4g}, sequential-local {local:.4g}")
    assert 5 * tf <= base and 5 * local <= base, (base, tf, local)
    assert 1 / 3 <= tf / local <= 3, (tf, local)


@pytest.mark.parametrize("history", [0, 2])
def test_history(history):
    plan = coarse("heun", 5)
    result = fitted("4d-wide", "heun", 5, history=history, holdout=0.0)   # no never-worse zeroing
    values = np.asarray(result.coeffs.values)
    assert result.coeffs.history == history
    assert values.shape == (5, 2 * (1 + history))       # iia-edm: 2 gradients per step
    # a history feature that does not exist yet (step i < j) is zero, and so is its coefficient;
    # so is the second gradient of the final (Euler) step.  lstsq gives them 0 up to round-off.
    tiny = 1e-6 * np.abs(values).max(axis=1) + 1e-9
    for i in range(plan.num_steps):
        for j in range(i + 1, history + 1):
            np.testing.assert_array_less(np.abs(values[i, 2 * j: 2 * j + 2]), tiny[i])
    assert abs(values[-1, 1]) <= tiny[-1]
    base, iia = base_error("4d-wide", "heun", 5), iia_error("4d-wide", "heun", 5, result.coeffs)
    print(f"heun N=5 history={history}: median {base:.4g} -> {iia:.4g} ({base / iia:.1f}x)")
    assert 3 * iia <= base, (base, iia)


PRESETS = [(solver, preset) for preset, solvers in PRESET_SOLVERS.items() if solvers
           for solver in solvers] + [(s, "generic") for s in sorted(iia_jax.solvers.SOLVERS)]
PRESET_STEPS = {"heun": 5, "euler": 8, "dpmpp_2m": 8, "dpmpp_3m": 8, "unipc": 8, "ipndm": 8, "spndm": 8}


@pytest.mark.slow
@pytest.mark.parametrize("solver, preset", PRESETS)
def test_every_preset_fits_and_is_not_worse(solver, preset):
    n = PRESET_STEPS[solver]
    kwargs = {} if preset == DEFAULT_PRESET[solver] else dict(preset=preset)  # share cached fits
    result = fitted("4d-wide", solver, n, **kwargs)
    coeffs, report = result.coeffs, result.report
    assert coeffs.preset == preset and coeffs.solver == solver
    assert coeffs.values.shape == (n, feature_spec(solver, preset, 1).num_features)
    assert report.holdout_median[1] <= report.holdout_median[0]     # guaranteed on the holdout
    base, iia = base_error("4d-wide", solver, n), iia_error("4d-wide", solver, n, coeffs)
    print(f"{preset} on {solver} N={n}: median {base:.4g} -> {iia:.4g} ({base / iia:.1f}x)")
    assert iia <= 1.05 * base, (base, iia)                          # fresh noise, with slack


# ----------------------------------------------------------------------------- fit report

@pytest.mark.parametrize("solver, num_steps", [("heun", 5), ("euler", 8), ("dpmpp_2m", 8)])
def test_fit_report(solver, num_steps):
    result = fitted("4d-wide", solver, num_steps)
    coeffs, report = result.coeffs, result.report
    n = num_steps
    for field in ("mse_before", "mse_after", "holdout_mse_before", "holdout_mse_after", "kept"):
        assert getattr(report, field).shape == (n,), field
    assert np.all(np.isfinite(report.mse_before)) and np.all(np.isfinite(report.holdout_mse_after))
    # least squares on the training rows: never worse there (float32 Gram round-off aside)
    assert np.all(report.mse_after <= report.mse_before * (1 + 1e-4) + 1e-12)
    assert report.train_size + report.holdout_size == FIT_BATCH
    assert report.holdout_size == round(0.25 * FIT_BATCH) and coeffs.batch_size == report.train_size
    # without a key, the last row of every group of four is held out (iia_jax.rows)
    np.testing.assert_array_equal(report.holdout_rows, np.arange(3, FIT_BATCH, 4))
    # kept flags: the never-worse check zeroes the rest, and the coefficients say the same
    assert report.kept.dtype == bool and report.kept.any()
    np.testing.assert_array_equal(np.asarray(coeffs.kept), report.kept)
    values = np.asarray(coeffs.values)
    assert np.all(values[~report.kept] == 0.0)
    assert np.all(np.abs(values[report.kept]).max(axis=1) > 0)
    # held-out numbers: the end-to-end median went down, and RMSEs are reported
    base_med, iia_med = report.holdout_median
    assert iia_med < base_med
    assert all(np.isfinite(report.holdout_rmse)) and min(report.holdout_rmse) > 0
    # ... and they are what they claim: errors at sigma = 0 of the held-out rows against the
    # fine reference (the same solver on fine_steps log-spaced sub-steps per interval).  For Heun
    # (no multistep state) that reference is one run on the concatenated fine grid.
    if solver == "heun":
        sig = np.asarray(coeffs.sigmas, np.float64)
        pieces = [np.exp(np.linspace(np.log(sig[i]), np.log(sig[i + 1]), FINE_STEPS + 1))[:-1]
                  for i in range(n - 1)]
        pieces.append(np.exp(np.linspace(np.log(sig[-2]), np.log(1e-3 * sig[-2]), FINE_STEPS + 1)))
        fine = iia_jax.plan("heun", np.concatenate(pieces + [[0.0]]))
        hold = noise("4d-wide")[0][report.holdout_rows]
        ref = _sample(mixture("4d-wide"), fine, hold)
        base = per_sample_rms(_sample(mixture("4d-wide"), coarse(solver, n), hold), ref)
        iia = per_sample_rms(_iia_sample(mixture("4d-wide"), coarse(solver, n), coeffs, hold), ref)
        np.testing.assert_allclose(report.holdout_median, (np.median(base), np.median(iia)), rtol=1e-3)
    text = report.summary()
    judged = not np.isnan(report.quality_difference[0])   # the default quality guard adds a line
    assert judged and isinstance(text, str) and len(text.splitlines()) == n + 3 + judged
    assert "held-out" in text and f"{base_med:.4g}" in text
    assert coeffs.fingerprint == "4d-wide" and coeffs.fine_steps == FINE_STEPS
    assert (coeffs.mode, coeffs.target, coeffs.history) == ("sequential", DEFAULT_TARGET[solver], 1)
    assert coeffs.version == iia_jax.__version__
    assert isinstance(repr(coeffs), str)


def test_report_without_holdout():
    """holdout=0 skips the never-worse check and says so (cheap: Euler, 2 steps, 32 samples)."""
    x = noise("4d-wide")[0][:32]
    result = iia_jax.fit(mixture("4d-wide"), coarse("euler", 2), x, holdout=0.0, fine_steps=4,
                         mode="teacher_forced", progress=False)
    report = result.report
    assert report.holdout_size == 0 and report.train_size == 32 and report.kept.all()
    assert np.all(np.isnan(report.holdout_mse_before)) and np.all(np.isnan(report.holdout_median))
    assert "skipped" in report.summary()


# ----------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("mode, target", [
    ("teacher_forced", None),
    ("sequential", "trajectory"),
    pytest.param("sequential", "local", marks=pytest.mark.slow),
])
def test_chunked_equals_unchunked(mode, target):
    """Gram accumulation over chunks solves the same ridge problem as one lstsq.

    Run in float64: the normal equations lose accuracy ~ cond(scaled Gram) * eps, and these
    features are nearly collinear at small sigma (cond up to ~1e8), so float32 would only show
    that the two agree to a few percent in the worst rows.  In float64 the bound is ~1e-8 of each
    row's size; we allow 1e-6 (measured: 6e-10 teacher-forced, 3e-9 sequential).  300 samples in
    chunks of 64 exercise the zero-weight padding of the last chunk.  Samples must agree to 1e-8.
    """
    name = "4d-wide"
    with jax.enable_x64(True):
        x_fit = noise(name)[0][:300].astype(jnp.float64)
        x_test = noise(name)[1][:128].astype(jnp.float64)
        plan = coarse("heun", 5)
        fits = [iia_jax.fit(mixture(name), plan, x_fit, mode=mode, target=target, holdout=0.0,
                            chunk_size=c, fine_steps=8, progress=False) for c in (None, 64)]
        a, b = (np.asarray(f.coeffs.values) for f in fits)
        assert a.dtype == np.float64
        scale = np.abs(a).max(axis=1, keepdims=True)
        np.testing.assert_array_less(np.abs(a - b), np.broadcast_to(1e-6 * scale + 1e-12, a.shape))
        np.testing.assert_allclose(fits[0].report.mse_before, fits[1].report.mse_before, rtol=1e-7)
        samples = [np.asarray(iia_jax.iia_sample(mixture(name), plan, f.coeffs, x_test)) for f in fits]
        np.testing.assert_allclose(samples[0], samples[1], rtol=0, atol=1e-8)
        base = np.asarray(iia_jax.sample(mixture(name), plan, x_test))
        assert np.abs(samples[0] - base).max() > 1e-2       # the corrections are not trivial


# ----------------------------------------------------------------------------- the sampler

ALL_PAIRS = [pytest.param(s, p, marks=[pytest.mark.slow] if s == "ipndm" else [])  # ipndm: slow eagerly
             for p, solvers in PRESET_SOLVERS.items() for s in (solvers or sorted(iia_jax.solvers.SOLVERS))]


@pytest.mark.parametrize("solver, num_steps", [("heun", 5), ("euler", 8), ("dpmpp_2m", 8)])
def test_zero_coefficients_reproduce_sample(solver, num_steps):
    plan = coarse(solver, num_steps)
    coeffs = fitted("4d-wide", solver, num_steps).coeffs
    zero = dataclasses.replace(coeffs, values=jnp.zeros_like(coeffs.values))
    x = noise("4d-wide")[1]          # the shapes of the accuracy tests: their programs are reused
    np.testing.assert_array_equal(np.asarray(_iia_sample(mixture("4d-wide"), plan, zero, x)),
                                  np.asarray(_sample(mixture("4d-wide"), plan, x)))


@pytest.mark.parametrize("solver", [pytest.param("ipndm", marks=pytest.mark.slow), "spndm"])
def test_zero_coefficients_reproduce_sample_pndm(solver):
    """Eagerly, with the whole trajectory."""
    plan = coarse(solver, 6)
    zero = _coefficients(plan, values=np.zeros((6, feature_spec(solver).num_features)))
    x = noise("4d-wide")[1][:64]
    traj = iia_jax.iia_sample(mixture("4d-wide"), plan, zero, x, return_trajectory=True)
    ref = iia_jax.sample(mixture("4d-wide"), plan, x, return_trajectory=True)
    for a, b in zip(traj, ref):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x0, states = traj
    assert states.shape == (7,) + x.shape
    np.testing.assert_array_equal(np.asarray(states[0]), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(states[-1]), np.asarray(x0))


def test_iia_sample_check_finite_names_the_step():
    plan = coarse("euler", 4)
    s = np.asarray(plan.sigmas, np.float64)
    threshold = float(np.sqrt(s[1] * s[2]))      # the model fails from step 2 on
    d = mixture("4d-wide")

    def broken(x, sigma):
        return jnp.where(sigma < threshold, jnp.nan, d(x, sigma))

    x = noise("4d-wide")[1][:8]
    with pytest.raises(ValueError, match=r"step 2 \(sigma="):
        iia_jax.iia_sample(broken, plan, _coefficients(plan), x, check_finite=True)


def _counting(denoiser):
    calls = [0]

    def counted(x, sigma):
        calls[0] += 1
        return denoiser(x, sigma)

    return counted, calls


@pytest.mark.parametrize("solver, preset", ALL_PAIRS)
def test_same_number_of_model_calls(solver, preset):
    """Eagerly (jax.disable_jit runs the scans as Python loops) every model call is counted."""
    plan = coarse(solver, 4)
    coeffs = _coefficients(plan, preset)
    x = noise("4d-wide")[1][:4]
    with jax.disable_jit():
        d, base_calls = _counting(mixture("4d-wide"))
        iia_jax.sample(d, plan, x)
        d, iia_calls = _counting(mixture("4d-wide"))
        out = iia_jax.iia_sample(d, plan, coeffs, x)
    assert base_calls[0] == iia_calls[0] == plan.nfe
    assert np.all(np.isfinite(np.asarray(out)))


def test_jit_and_closure_equal_eager():
    plan = coarse("heun", 5)
    d = mixture("4d-wide")
    coeffs = fitted("4d-wide", "heun", 5).coeffs
    x = noise("4d-wide")[1]
    eager = np.asarray(iia_jax.iia_sample(d, plan, coeffs, x))
    static = np.asarray(_iia_sample(d, plan, coeffs, x))      # jax.jit(iia_sample, static_argnums=0)
    closure = np.asarray(jax.jit(lambda x: iia_jax.iia_sample(d, plan, coeffs, x))(x))
    traced = np.asarray(jax.jit(iia_jax.iia_sample)(d, plan, coeffs, x))   # mixture is a pytree
    assert np.abs(eager - _sample(d, plan, x)).max() > 1e-2
    for out in (static, closure, traced):
        np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- refusals

@pytest.fixture(scope="module")
def heun_coeffs():
    return _coefficients(coarse("heun", 5), "iia-edm")


@pytest.mark.parametrize("plan, field", [
    (lambda: coarse("euler", 5), "solver"),
    (lambda: coarse("heun", 6), "num_steps"),
    (lambda: coarse("heun", 4), "num_steps"),
    (lambda: iia_jax.plan("heun", schedules.karras(5, sigma_max=80.0)), "sigmas"),
])
def test_coefficients_for_another_plan(heun_coeffs, plan, field):
    with pytest.raises(ValueError, match=field):
        iia_jax.iia_sample(mixture("4d-wide"), plan(), heun_coeffs, noise("4d-wide")[1][:4])


@pytest.mark.parametrize("change, field", [
    (dict(preset="biia-edm"), "preset"),
    (dict(history=0), "history"),
    (dict(history=3), "history"),
])
def test_coefficients_with_another_feature_count(heun_coeffs, change, field):
    bad = dataclasses.replace(heun_coeffs, **change)
    with pytest.raises(ValueError, match=field):
        iia_jax.iia_sample(mixture("4d-wide"), coarse("heun", 5), bad, noise("4d-wide")[1][:4])


def test_coefficients_for_another_guidance_scale(heun_coeffs):
    class Guided:
        guidance_scale = 2.0

        def __call__(self, x, sigma):
            return mixture("4d-wide")(x, sigma)

    with pytest.raises(ValueError, match="guidance_scale"):
        iia_jax.iia_sample(Guided(), coarse("heun", 5), heun_coeffs, noise("4d-wide")[1][:4])
    ok = dataclasses.replace(heun_coeffs, guidance_scale=2.0)
    x = noise("4d-wide")[1][:4]
    # tracing runs every check, without compiling
    out = jax.eval_shape(lambda x: iia_jax.iia_sample(Guided(), coarse("heun", 5), ok, x), x)
    assert out.shape == x.shape


def test_iia_sample_rejects_non_coefficients():
    with pytest.raises(TypeError, match="Coefficients"):
        iia_jax.iia_sample(mixture("4d-wide"), coarse("heun", 5), np.zeros((5, 4)), noise("4d-wide")[1][:4])


@pytest.mark.parametrize("solver, preset", [("euler", "iia-edm"), ("heun", "iia-ddim"),
                                            ("dpmpp_2m", "iia-pndm"), ("ipndm", "biia-edm"),
                                            ("heun", "nonsense")])
def test_invalid_preset_for_solver(solver, preset):
    with pytest.raises(ValueError, match="preset"):
        iia_jax.fit(mixture("4d-wide"), coarse(solver, 4), noise("4d-wide")[0][:16], preset=preset)


@pytest.mark.parametrize("kwargs, field", [
    (dict(mode="greedy"), "mode"),
    (dict(mode=None), "mode"),
    (dict(target="global"), "target"),
    (dict(holdout=1.0), "holdout"),
    (dict(holdout=-0.1), "holdout"),
    (dict(holdout=0.99), "holdout"),        # 16 samples: none left to fit on
    (dict(fine_steps=1), "fine_steps"),
    (dict(fine_steps=4.0), "fine_steps"),
    (dict(history=-1), "history"),
    (dict(history=1.5), "history"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(ridge=-1.0), "ridge"),
    (dict(ridge=float("nan")), "ridge"),
])
def test_bad_fit_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        iia_jax.fit(mixture("4d-wide"), coarse("heun", 4), noise("4d-wide")[0][:16], **kwargs)


def test_fit_rejects_bad_inputs():
    with pytest.raises(ValueError, match="x_T"):
        iia_jax.fit(mixture("4d-wide"), coarse("heun", 4), jnp.ones((16,)))
    with pytest.raises(TypeError, match="plan"):
        iia_jax.fit(mixture("4d-wide"), schedules.karras(4), noise("4d-wide")[0][:16])


@pytest.mark.parametrize("kwargs", [
    dict(),                                                   # reference pass of the holdout
    dict(mode="teacher_forced", holdout=0.0, chunk_size=16),
    dict(target="local", holdout=0.0),
])
def test_nan_from_the_model_names_the_step(kwargs):
    """The model returns NaN below a sigma inside interval 2; the first model call there is in
    the fine target of step 2 (its coarse call at sigma_2 is still finite)."""
    plan = coarse("euler", 6)
    s = np.asarray(plan.sigmas, np.float64)
    threshold = float(np.sqrt(s[2] * s[3]))
    d = mixture("4d-wide")

    def broken(x, sigma):
        return jnp.where(sigma < threshold, jnp.nan, d(x, sigma))

    with pytest.raises(ValueError, match=r"at step 2 \(sigma="):
        iia_jax.fit(broken, plan, noise("4d-wide")[0][:48], fine_steps=8, progress=False, **kwargs)
