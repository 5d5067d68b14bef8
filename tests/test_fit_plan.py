"""Fitting the step grid with the IIA coefficients (:mod:`iia_jax.iia.grid`), on exact mixtures.

Independent references: central finite differences of the objective (in float64) for its
gradient; a separate, finer Heun integration for the interpolated reference states and for
the judge's errors; the grid families of :mod:`iia_jax.schedules`; the rows ``iia_jax.fit`` holds
out; and, for conditions, an unconditional twin that carries the label as a coordinate of ``x``.
"""
import math


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iia_jax
from iia_jax import schedules
from iia_jax.iia.features import feature_spec
from iia_jax.iia.grid import (family_grid, fit_plan, grid_from_params, grid_objective,
                              params_from_grid, reference_solution, reference_state)
from iia_jax.metrics import per_sample_rms
from iia_jax.models import gmm
from iia_jax.sampling import integrate

SIGMA_MIN, SIGMA_MAX = 0.002, 40.0
_MEANS = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
# Small and quick: a 4-D mixture, few Adam steps, a short reference.
# The search starts from the VP-time quadratic grid, which ends above sigma_min; three families are
# ranked by their base sampler and two are fitted: the start and the best other one.
QUICK = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, families=("karras", "logsnr_uniform"),
             init="vp_quadratic", shortlist=2, search_steps=6, search_rows=48, reference_steps=128, fine_steps=4,
             progress=False)


def _mixture():
    return gmm(_MEANS, 0.3)


def _noise(seed, batch):
    return SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(seed), (batch, 4))


def _heun(denoiser, x, sigma_end, steps):
    """Heun from SIGMA_MAX to ``sigma_end`` (> 0) on a fine Karras grid: an independent solution."""
    sigmas = jnp.asarray(schedules.karras(steps, sigma_end, SIGMA_MAX)[:-1])
    heun = iia_jax.solvers.get("heun")
    return jax.jit(lambda y, s: integrate(denoiser, heun, s, y, False))(x, sigmas)


@pytest.fixture(scope="module")
def planfit():
    x_T = _noise(1, 96)
    return x_T, fit_plan(_mixture(), "euler", 4, x_T, key=jax.random.PRNGKey(3), **QUICK)


@pytest.mark.parametrize("family", ["karras", "logsnr_uniform", "vp_quadratic"])
def test_grid_parameters_round_trip(family):
    """Exact (to float32) for a grid that ends above sigma_min (vp_quadratic); one that ends at
    sigma_min comes back with its last sigma raised to sigma_min * exp(1e-4), the rest exact."""
    for n in (2, 3, 5, 9):
        grid = family_grid(family, n, SIGMA_MIN, SIGMA_MAX)
        params = params_from_grid(grid, SIGMA_MIN)
        back = np.asarray(grid_from_params(params, SIGMA_MIN, SIGMA_MAX))
        assert params.shape == (n,) and back.shape == grid.shape and back[-1] == 0
        if family == "vp_quadratic":
            assert grid[-2] > 10 * SIGMA_MIN
            np.testing.assert_allclose(back, grid, rtol=3e-6)
        else:
            np.testing.assert_allclose(back[:-2], grid[:-2], rtol=3e-6)
            np.testing.assert_allclose(back[-2], SIGMA_MIN * math.exp(1e-4), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-6.0, 6.0), min_size=2, max_size=10))
def test_any_parameters_give_a_decreasing_grid_inside_the_range(values):
    """sigma_max > s_1 > ... > s_{N-1} >= sigma_min > 0, and the grid's own parameters give it back."""
    grid = np.asarray(grid_from_params(jnp.asarray(values, jnp.float32), SIGMA_MIN, SIGMA_MAX))
    assert grid.shape == (len(values) + 1,)
    assert grid[0] == np.float32(SIGMA_MAX) and grid[-1] == 0
    assert np.all(np.diff(grid) < 0)
    assert grid[-2] >= np.float32(SIGMA_MIN)
    back = np.asarray(grid_from_params(params_from_grid(grid, SIGMA_MIN), SIGMA_MIN, SIGMA_MAX))
    np.testing.assert_allclose(back[:-2], grid[:-2], rtol=1e-5)
    # the last sigma: kept, or raised to the round trip's floor sigma_min * exp(1e-4)
    np.testing.assert_allclose(back[-2], max(grid[-2], SIGMA_MIN * math.exp(1e-4)), rtol=1e-5)


def test_last_sigma_moves_within_a_search_budget():
    """Adam (lr 0.1, 25 steps, the search's defaults) pushing the last sigma up from a Karras
    grid (which ends at sigma_min) lifts it well clear of sigma_min; pushing down from the
    VP-time quadratic grid brings it toward sigma_min; the first sigma stays sigma_max."""
    def last_sigma_after(grid, sign):
        params = params_from_grid(grid, SIGMA_MIN)
        loss = jax.jit(jax.grad(lambda p: sign * jnp.log(grid_from_params(p, SIGMA_MIN, SIGMA_MAX)[-2])))
        optimiser = optax.adam(0.1)
        state = optimiser.init(params)
        for _ in range(25):
            updates, state = optimiser.update(loss(params), state)
            params = optax.apply_updates(params, updates)
        out = np.asarray(grid_from_params(params, SIGMA_MIN, SIGMA_MAX))
        assert out[0] == np.float32(SIGMA_MAX) and np.all(np.diff(out) < 0)
        return out[-2]

    assert last_sigma_after(schedules.karras(5, SIGMA_MIN, SIGMA_MAX), -1.0) > 1.5 * SIGMA_MIN
    vp = family_grid("vp_quadratic", 5, SIGMA_MIN, SIGMA_MAX)
    assert last_sigma_after(vp, 1.0) < 0.2 * vp[-2]


def test_time_uniform_family_is_uniform_in_model_time():
    schedule = schedules.vp_linear()
    grid = family_grid("time_uniform", 5, SIGMA_MIN, SIGMA_MAX, schedule)
    t = schedule.time(grid[:-1].astype(np.float64))
    np.testing.assert_allclose(np.diff(t), np.diff(t)[0], rtol=1e-4)
    np.testing.assert_allclose(grid[[0, -2]], [SIGMA_MAX, SIGMA_MIN], rtol=1e-6)


def test_vp_quadratic_family_is_quadratic_in_vp_time():
    """The family is the CLI's/benchmark's grid: on the closed-form linear-beta VP time, its times
    are t_min + (t_max - t_min)(1 - i/N)^2 between the times of sigma_min and sigma_max."""
    vp = schedules.vp_linear()
    n = 6
    grid = family_grid("vp_quadratic", n, SIGMA_MIN, SIGMA_MAX)
    ends = vp.time(np.array([SIGMA_MIN, SIGMA_MAX]))
    np.testing.assert_allclose(vp.time(grid[:-1].astype(np.float64)),
                               ends[0] + (ends[1] - ends[0]) * (1 - np.arange(n) / n) ** 2, rtol=1e-5)
    assert grid[-1] == 0 and grid[-2] > SIGMA_MIN


def test_interpolated_reference_matches_a_finer_integration():
    denoiser, x = _mixture(), _noise(2, 64)
    ref = reference_solution(denoiser, x, SIGMA_MIN, SIGMA_MAX, 64)
    for sigma in (17.3, 2.2, 0.31, 0.0123):   # between nodes
        direct = _heun(denoiser, x, sigma, 800)
        interp = reference_state(ref, jnp.log(sigma))
        assert float(jnp.median(per_sample_rms(interp, direct))) < 2e-3, sigma


@pytest.mark.parametrize("solver,steps,family", [("heun", 4, "karras"), ("dpmpp_2m", 5, "karras"),
                                                 ("ipndm", 4, "vp_quadratic")])
def test_objective_gradient_matches_finite_differences(solver, steps, family):
    """float64 so that central differences resolve the gradient; a random direction and two
    coordinate directions (the first increment and the slack).  heun (its final second gradient is
    zero) and history features that do not exist yet at step 0 exercise the zero-feature guard of
    the solve; ipndm its variable-step Adams-Bashforth weights, from a grid ending above sigma_min."""
    with jax.enable_x64(True):
        denoiser = gmm(_MEANS.astype(np.float64), 0.3)
        x = _noise(4, 48).astype(jnp.float64)
        ref = reference_solution(denoiser, x, SIGMA_MIN, SIGMA_MAX, 24)
        w_fit = (jnp.arange(48) < 24).astype(jnp.float64)
        spec = feature_spec(solver)

        @jax.jit
        def f(p):
            return grid_objective(denoiser, solver, spec, p, ref, w_fit, 1.0 - w_fit, SIGMA_MIN,
                                  SIGMA_MAX, 1e-4)[0]

        params = params_from_grid(family_grid(family, steps, SIGMA_MIN, SIGMA_MAX),
                                  SIGMA_MIN).astype(jnp.float64)
        params = params + 0.3 * jax.random.normal(jax.random.PRNGKey(5), params.shape, jnp.float64)
        grad = jax.jit(jax.grad(f))(params)
        assert np.all(np.isfinite(np.asarray(grad)))
        directions = [jax.random.normal(jax.random.PRNGKey(6), params.shape, jnp.float64),
                      jnp.eye(params.shape[0])[0], jnp.eye(params.shape[0])[-1]]
        h = 1e-5
        for v in directions:
            fd = (f(params + h * v) - f(params - h * v)) / (2 * h)
            np.testing.assert_allclose(float(grad @ v), float(fd), rtol=1e-4, atol=1e-6)


def test_returned_grid_is_an_ordinary_decreasing_plan(planfit):
    _, result = planfit
    sigmas = np.asarray(result.plan.sigmas)
    assert isinstance(result.plan, iia_jax.Plan) and result.plan.solver == "euler"
    assert sigmas.shape == (5,) and np.all(np.diff(sigmas) < 0) and sigmas[-1] == 0
    assert sigmas[0] == np.float32(SIGMA_MAX) and sigmas[-2] >= np.float32(SIGMA_MIN)
    np.testing.assert_array_equal(np.asarray(result.coeffs.sigmas), sigmas)
    assert result.report.chosen in result.report.grids


def test_never_worse_than_the_best_family_on_the_judge_rows(planfit):
    """Recompute the judge rows and their errors independently (a finer Heun reference) for every
    candidate the report lists, base sampler and IIA; the shortlist must be the families with the
    lowest base errors, and the returned plan the best fitted family or better than it."""
    x_T, result = planfit
    report = result.report
    judge = x_T[report.judge_rows]
    assert judge.shape[0] == report.judge_size == 24
    exact = _heun(_mixture(), judge, SIGMA_MIN, 400)
    exact = _mixture()(exact, SIGMA_MIN)   # the final Euler step to sigma = 0

    def error(out):
        return float(np.median(np.asarray(per_sample_rms(out, exact))))

    assert list(report.grids) == ["vp_quadratic", "karras", "logsnr_uniform", "fitted"]
    for name, sigmas in report.grids.items():
        p = iia_jax.plan("euler", sigmas)
        np.testing.assert_allclose(error(iia_jax.sample(_mixture(), p, judge)), report.median_base[name],
                                   rtol=0.05)
        if name in report.coeffs:
            np.testing.assert_allclose(error(iia_jax.iia_sample(_mixture(), p, report.coeffs[name], judge)),
                                       report.median[name], rtol=0.05)
    families = ["vp_quadratic", "karras", "logsnr_uniform"]
    by_base = sorted(families, key=report.median_base.__getitem__)
    fitted = [k for k in report.coeffs if k != "fitted"]
    # the start (init) and the QUICK["shortlist"] families with the lowest base error; no other
    assert set(fitted) == {"vp_quadratic"} | set(by_base[:2]) and len(fitted) < len(families)
    assert set(report.median) == set(report.coeffs) and report.start == "vp_quadratic"
    assert report.best_family == min(fitted, key=report.median.__getitem__)
    best = min(report.median[k] for k in fitted)
    assert report.median[report.chosen] <= best
    assert (report.chosen == "fitted") == (report.median["fitted"] < best)
    # the search moved the last sigma away from the start's, and it stays >= sigma_min
    start, fitted_grid = report.grids["vp_quadratic"][-2], report.grids["fitted"][-2]
    assert abs(fitted_grid / start - 1) > 0.01 and fitted_grid >= np.float32(SIGMA_MIN)
    assert report.objective.shape == report.search_median.shape == (QUICK["search_steps"] + 1,)
    assert set(report.evaluations) == {"reference", "rank", "search"} | {f"fit {k}" for k in report.coeffs}
    heun_evals, euler_evals = 2 * QUICK["reference_steps"] - 1, 4
    assert report.evaluations["reference"] == (48 + 24) * heun_evals   # search rows + judge rows
    assert report.evaluations["rank"] == len(families) * 24 * euler_evals   # base sampler, judge rows
    assert report.evaluations["search"] == (QUICK["search_steps"] + 1) * 48 * euler_evals
    # an ordinary fit costs more than sampling the train and judge rows once, base and IIA
    assert report.evaluations[f"fit {fitted[-1]}"] > 2 * 96 * euler_evals


def test_judge_rows_are_the_rows_fit_holds_out(planfit):
    """The judge follows ``fit``'s row split (iia_jax.rows) for the same key and fraction; the
    search rows are training rows spread over the whole batch."""
    x_T, result = planfit
    report = result.report
    p = iia_jax.plan("euler", schedules.karras(3, SIGMA_MIN, SIGMA_MAX))
    held = iia_jax.fit(_mixture(), p, x_T, holdout=0.25, key=jax.random.PRNGKey(3), fine_steps=2,
                       mode="teacher_forced", progress=False).report.holdout_rows
    np.testing.assert_array_equal(report.judge_rows, held)
    search = report.search_rows
    assert search.size == QUICK["search_rows"] and np.all(np.diff(search) > 0)
    assert not set(search.tolist()) & set(held.tolist())
    assert search[0] < 8 and search[-1] > x_T.shape[0] - 8   # spread over the batch


SHIFT = np.array([0.7, -0.4, 0.3, 0.5], np.float32)   # class c: the mixture translated by c * SHIFT
_BASE = _mixture()


def _class_mixture(x, sigma, cond):
    """Exact denoiser of the class-``cond`` mixture: ``D_c(x) = m_c + D(x - m_c)``, ``m_c = c SHIFT``."""
    m = cond.astype(x.dtype)[:, None] * SHIFT
    return m + _BASE(x - m, sigma)


def _label_as_coordinate(x_aug, sigma):
    """Unconditional twin of ``_class_mixture``: the label rides along as a last coordinate that
    the ODE keeps constant (its denoised value is itself)."""
    label = x_aug[:, -1]
    return jnp.concatenate([_class_mixture(x_aug[:, :-1], sigma, label), label[:, None]], axis=1)


def test_conditional_fit_plan_equals_label_as_coordinate():
    """heun's features (``x - D``, ``D' - D``) and every residual vanish on the label coordinate, so
    the twin's reference, search objective, fits and choices are the conditional ones; its
    per-sample RMS errors are the conditional ones times sqrt(4/5) (a fifth coordinate with zero
    error).  Labels sorted: judge and search rows must still see every class, each row with its
    own label.  No Adam steps (the update does not see the conditions; the objective does), so
    the "fitted" grid is the start's own: with init="best", the family the judge ranks first."""
    x, c = _noise(8, 48), jnp.repeat(jnp.arange(4, dtype=jnp.int32), 12)
    common = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, key=jax.random.PRNGKey(2),
                  families=("karras", "vp_quadratic"), shortlist=2, search_steps=0, search_rows=24, reference_steps=64,
                  fine_steps=2, progress=False)
    cond_fit = fit_plan(_class_mixture, "heun", 3, x, cond=c, **common)
    twin = fit_plan(_label_as_coordinate, "heun", 3, jnp.concatenate([x, c[:, None].astype(x.dtype)], 1),
                    **common)
    a, b = cond_fit.report, twin.report
    np.testing.assert_array_equal(a.judge_rows, b.judge_rows)
    np.testing.assert_array_equal(a.search_rows, b.search_rows)
    labels = np.asarray(c)
    assert set(labels[a.judge_rows]) == set(labels[a.search_rows]) == {0, 1, 2, 3}
    assert a.chosen == b.chosen == a.best_family == b.best_family == a.start == b.start
    assert a.best_family == min(("karras", "vp_quadratic"), key=a.median.__getitem__)
    np.testing.assert_array_equal(a.grids["fitted"], a.grids[a.start])
    # float32 noise through an ill-conditioned solve moves the search's errors by ~1 %; wrong labels
    # (c[::-1]) move the objective by 0.6 and the medians by 10-40 %.
    np.testing.assert_allclose(a.objective + math.log(4 / 5), b.objective, atol=2e-2)   # mean log err^2
    shrink = math.sqrt(4 / 5)
    np.testing.assert_allclose(a.search_median * shrink, b.search_median, rtol=5e-2)
    for name in ("karras", "vp_quadratic"):
        np.testing.assert_allclose(a.median[name] * shrink, b.median[name], rtol=2e-3)
        np.testing.assert_allclose(a.median_base[name] * shrink, b.median_base[name], rtol=2e-3)
    scale = np.abs(np.asarray(b.coeffs["karras"].values)).max(axis=1, keepdims=True) + 1e-6
    np.testing.assert_allclose(np.asarray(a.coeffs["karras"].values) / scale,
                               np.asarray(b.coeffs["karras"].values) / scale, atol=5e-3)
    assert np.asarray(a.coeffs["karras"].values).any()
    # The returned plan samples fresh noise with its conditions as the twin does.
    x_new, c_new = _noise(9, 16), jnp.arange(16, dtype=jnp.int32) % 4
    out = iia_jax.iia_sample(_class_mixture, cond_fit.plan, cond_fit.coeffs, x_new, cond=c_new)
    twin_out = iia_jax.iia_sample(_label_as_coordinate, twin.plan, twin.coeffs,
                                  jnp.concatenate([x_new, c_new[:, None].astype(x_new.dtype)], 1))
    np.testing.assert_allclose(np.asarray(out), np.asarray(twin_out[:, :-1]), atol=2e-3)


def test_fitted_plan_samples_and_round_trips_storage(planfit, tmp_path):
    _, result = planfit
    x = _noise(7, 32)
    out = iia_jax.iia_sample(_mixture(), result.plan, result.coeffs, x)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    path = iia_jax.save_coefficients(tmp_path / "c", result.coeffs)
    loaded = iia_jax.load_coefficients(path, plan=result.plan)
    np.testing.assert_array_equal(np.asarray(loaded.sigmas), np.asarray(result.plan.sigmas))
    np.testing.assert_array_equal(np.asarray(loaded.values), np.asarray(result.coeffs.values))
    np.testing.assert_array_equal(np.asarray(iia_jax.iia_sample(_mixture(), result.plan, loaded, x)),
                                  np.asarray(out))
    moved = np.asarray(result.plan.sigmas) * np.array([1.0, 1.01, 1.0, 1.0, 1.0], np.float32)
    with pytest.raises(ValueError, match="sigma"):   # tied to the grid it was fitted on
        iia_jax.load_coefficients(path, plan=iia_jax.plan("euler", moved))


def test_deterministic_given_key(planfit):
    x_T, first = planfit
    again = fit_plan(_mixture(), "euler", 4, x_T, key=jax.random.PRNGKey(3), **QUICK)
    np.testing.assert_array_equal(np.asarray(again.plan.sigmas), np.asarray(first.plan.sigmas))
    np.testing.assert_array_equal(np.asarray(again.coeffs.values), np.asarray(first.coeffs.values))
    np.testing.assert_array_equal(again.report.objective, first.report.objective)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=1), "num_steps"),
    (dict(num_steps=3.0), "num_steps"),
    (dict(sigma_min=50.0), "sigma_min"),
    (dict(sigma_min=0.0), "sigma_min"),
    (dict(init="cosine"), "family"),
    (dict(families=("karras", "nope")), "family"),
    (dict(init="time_uniform"), "schedule"),
    (dict(init="best", families=()), "families"),
    (dict(judge=1.0), "judge"),
    (dict(search_steps=-1), "search_steps"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(reference_steps=1), "reference_steps"),
    (dict(search_rows=1), "search_rows"),
    (dict(shortlist=0), "shortlist"),
    (dict(shortlist=1.0), "shortlist"),
    (dict(solver="rk45"), "solver"),
    (dict(judge=0.02), "judge"),                     # 1 in 32 rows, but x_T has 16
    (dict(cond=jnp.zeros((5,), jnp.int32)), "cond"),
    (dict(cond=np.array(["a"] * 16)), "cond"),
    (dict(cond={}), "cond"),
])
def test_bad_arguments_are_refused(kwargs, match):
    args = dict(denoiser=_mixture(), solver="euler", num_steps=4, x_T=_noise(0, 16),
                sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, progress=False)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        fit_plan(**args)
