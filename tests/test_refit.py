"""``FitConfig(refit=True)``: the sequential pass fitted again with the steps the never-worse check
switched off held at zero, until the kept steps stop changing.

Checked against the definition, written out here with the fit's building blocks: every kept
step's coefficients are the ridge least squares of the trajectory target on the features of the
states that the returned coefficients themselves produce (steps before it as returned, dropped
ones at zero), over the training rows.  Without a refit, a kept step after a dropped one was
fitted on other states, and fails that check.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.iia.features import feature_spec
from iia_jax.iia.fit import fine_solution
from iia_jax.iia.sample import apply_correction, corrected_step
from iia_jax.iia.solve import PlainSolve, solve_lstsq
from iia_jax.models import gmm
from iia_jax.solvers import get as get_solver

FINE = 4
RIDGE = 1e-4


def grid_mixture():
    g = np.stack(np.meshgrid(np.linspace(-1.5, 1.5, 4), np.linspace(-1.5, 1.5, 4)), -1).reshape(-1, 2)
    return gmm(g.astype(np.float32), 0.05)


def consistent_coefficients(denoiser, plan, values, x):
    """Per step, the least-squares coefficients of the trajectory target on the features of the
    states that ``values`` produce (training rows ``x``)."""
    solver, spec = get_solver(plan.solver), feature_spec(plan.solver)
    s = np.asarray(plan.sigmas)
    carry, fine, out = (solver.init(x), x, spec.init_history(x)), x, []
    for i in range(plan.num_steps):
        final = i == plan.num_steps - 1
        new, feats, _ = corrected_step(denoiser, solver, spec, carry, s[i], s[i + 1], final)
        fine = fine_solution(denoiser, solver, fine, s[i], s[i + 1], FINE, final)
        out.append(np.asarray(solve_lstsq(feats, fine - new[1], RIDGE)))
        carry = (new[0], apply_correction(new[1], jnp.asarray(values[i]), feats), new[2])
    return np.stack(out)


def test_refit_coefficients_fit_the_states_they_make():
    denoiser = grid_mixture()
    plan = iia_jax.plan("dpmpp_2m", schedules.karras(4, 0.01, 20.0))
    x = 20.0 * jax.random.normal(jax.random.PRNGKey(1), (512, 2))
    options = dict(fine_steps=FINE, quality=None, solve=PlainSolve(RIDGE), progress=False)
    once = iia_jax.fit(denoiser, plan, x, **options)
    refit = iia_jax.fit(denoiser, plan, x, refit=True, **options)
    kept_once, kept = np.asarray(once.coeffs.kept), np.asarray(refit.coeffs.kept)
    assert kept_once.any() and not kept_once.all(), kept_once     # the check dropped a step
    assert not (kept & ~kept_once).any()                           # a refit only drops
    values = np.asarray(refit.coeffs.values)
    np.testing.assert_array_equal(values[~kept], 0.0)

    train = np.setdiff1d(np.arange(x.shape[0]), refit.report.holdout_rows)
    mine = consistent_coefficients(denoiser, plan, values, x[train])
    stale = consistent_coefficients(denoiser, plan, np.asarray(once.coeffs.values), x[train])
    scale = np.abs(values[kept]).max()
    np.testing.assert_allclose(values[kept], mine[kept], atol=2e-3 * scale)
    later = [i for i in np.flatnonzero(kept_once) if not kept_once[:i].all()]   # kept after a dropped step
    assert later, kept_once
    worst = max(np.abs(np.asarray(once.coeffs.values)[i] - stale[i]).max() for i in later)
    assert worst > 10 * 2e-3 * scale, "without a refit, a step after a dropped one was fitted on other states"


def test_refit_changes_nothing_when_every_step_is_kept():
    denoiser = grid_mixture()
    plan = iia_jax.plan("euler", schedules.karras(4, 0.01, 20.0))
    x = 20.0 * jax.random.normal(jax.random.PRNGKey(1), (512, 2))
    once = iia_jax.fit(denoiser, plan, x, fine_steps=FINE, quality=None, progress=False)
    assert np.asarray(once.coeffs.kept).all()
    refit = iia_jax.fit(denoiser, plan, x, fine_steps=FINE, quality=None, refit=True, progress=False)
    np.testing.assert_array_equal(np.asarray(refit.coeffs.values), np.asarray(once.coeffs.values))


@pytest.mark.parametrize("options, error", [(dict(mode="teacher_forced"), ValueError),
                                            (dict(holdout=0.0), ValueError),
                                            (dict(refit="yes"), TypeError)])
def test_refit_refuses_what_it_cannot_do(options, error):
    with pytest.raises(error, match="refit"):
        iia_jax.FitConfig(**dict(dict(refit=True), **options))
