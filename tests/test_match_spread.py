"""``fit(..., match_spread=True)``: least squares whose samples spread across the batch as much as
the target does (iia/fit.py ``solve_matched``).

Checked against references that do not use our solver: a general constrained optimiser (scipy's
SLSQP) on random problems, plain least squares where the constraint is inactive, and the spread of
the fine reference integrated here on its own grid.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

import iia_jax
from iia_jax import schedules
from iia_jax.iia.solve import gram_stats, solve_gram, solve_matched, spread_sums
from iia_jax.models import gmm

SIGMA_MIN, SIGMA_MAX = 0.01, 20.0
DENOISER = gmm(np.array([[1.5, 0.0], [-1.5, 0.5], [0.0, -1.5]], np.float32), 0.3)
PLAN = iia_jax.plan("euler", schedules.karras(4, SIGMA_MIN, SIGMA_MAX))
X_T = SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(0), (512, 2))
FINE = 8


def spread(y):
    y = np.asarray(y, np.float64)
    return float(np.sum((y - y.mean(0)) ** 2))


def problem(seed, k=3, rows=64, pixels=5, noise=1.0):
    """Features, base step and a target the features only partly predict."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((k, rows, pixels)).astype(np.float32)
    base = rng.standard_normal((rows, pixels)).astype(np.float32)
    coef = rng.standard_normal(k).astype(np.float32)
    target = base + np.einsum("k,kbp->bp", coef, feats) + noise * rng.standard_normal((rows, pixels))
    return feats, base, target.astype(np.float32)


def matched(feats, base, target, weights=None, ridge=0.0):
    w = jnp.ones(base.shape[0]) if weights is None else jnp.asarray(weights)
    gram, rhs, rr = gram_stats(jnp.asarray(feats), jnp.asarray(target - base), w)
    sums = spread_sums(jnp.asarray(feats), jnp.asarray(base), jnp.asarray(target), w)
    return np.asarray(solve_matched(gram, rhs, rr, sums, ridge)), np.asarray(solve_gram(gram, rhs, ridge))


def corrected(c, feats, base):
    return base + np.einsum("k,kbp->bp", c, feats)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solution_is_the_constrained_minimum(seed):
    feats, base, target = problem(seed)
    c, c_ls = matched(feats, base, target)
    assert spread(corrected(c_ls, feats, base)) < 0.97 * spread(target)   # least squares shrinks
    np.testing.assert_allclose(spread(corrected(c, feats, base)), spread(target), rtol=1e-4)
    f64, b64, t64 = (a.astype(np.float64) for a in (feats, base, target))
    loss = lambda v: np.sum((t64 - corrected(v, f64, b64)) ** 2)   # noqa: E731
    ref = minimize(loss, c_ls.astype(np.float64), method="SLSQP", tol=1e-12,
                   constraints={"type": "eq", "fun": lambda v: spread(corrected(v, f64, b64)) / spread(t64) - 1})
    assert ref.success, ref.message
    np.testing.assert_allclose(c, ref.x, rtol=2e-3, atol=2e-4)
    assert loss(c) <= loss(ref.x) * (1 + 1e-4)


def test_an_exact_fit_is_left_alone():
    """A target the features predict exactly already has its spread: plain least squares."""
    feats, base, target = problem(3, noise=0.0)
    c, c_ls = matched(feats, base, target, ridge=1e-6)
    np.testing.assert_allclose(c, c_ls, rtol=1e-4, atol=1e-6)


def test_never_further_than_the_base_step():
    """A target whose spread the features cannot buy cheaply (mostly unpredictable noise): the
    step stops where its squared error equals the base step's, with more spread than least
    squares and less than the target."""
    feats, base, target = problem(6, noise=3.0)
    c, c_ls = matched(feats, base, target)
    loss = lambda v: float(np.sum((target.astype(np.float64) - corrected(v, feats, base)) ** 2))  # noqa: E731
    np.testing.assert_allclose(loss(c), loss(np.zeros(3)), rtol=1e-4)
    assert spread(corrected(c_ls, feats, base)) < spread(corrected(c, feats, base)) < 0.9 * spread(target)


def test_weights_select_the_rows():
    """Zero-weight rows count for nothing: the same as fitting on the other rows alone."""
    feats, base, target = problem(5)
    w = (np.arange(base.shape[0]) % 3 != 0).astype(np.float32)
    keep = w > 0
    c_w, _ = matched(feats, base, target, weights=w)
    c_sub, _ = matched(feats[:, keep], base[keep], target[keep])
    np.testing.assert_allclose(c_w, c_sub, rtol=1e-4, atol=1e-6)


def fine_reference_end():
    """The fit's target at sigma = 0, integrated here: euler on FINE sub-steps uniform in log sigma
    per interval, the last interval down to 1e-3 of its start and then to 0 (iia/fit.py)."""
    s = np.asarray(PLAN.sigmas, np.float64)
    grid = [s[0]]
    for i in range(len(s) - 2):
        grid += list(np.exp(np.linspace(np.log(s[i]), np.log(s[i + 1]), FINE + 1))[1:])
    grid += list(np.exp(np.linspace(np.log(s[-2]), np.log(1e-3 * s[-2]), FINE + 1))[1:]) + [0.0]
    return np.asarray(iia_jax.sample(DENOISER, iia_jax.plan("euler", np.asarray(grid, np.float32)), X_T))


@pytest.fixture(scope="module")
def fits():
    kw = dict(fine_steps=FINE, holdout=0.0, progress=False)
    return {name: iia_jax.fit(DENOISER, PLAN, X_T, match_spread=m, **extra, **kw)
            for name, m, extra in [("plain", False, {}), ("matched", True, {}),
                                   ("chunked", True, dict(chunk_size=128)),
                                   ("teacher", True, dict(mode="teacher_forced")),
                                   ("teacher chunked", True, dict(mode="teacher_forced", chunk_size=128))]}


def test_samples_keep_the_reference_spread(fits):
    """With every row in the fit, the sampler's output spreads exactly like the fine reference
    (the last step's constraint); plain least squares shrinks it."""
    goal = spread(fine_reference_end())
    out = {k: spread(iia_jax.iia_sample(DENOISER, PLAN, fits[k].coeffs, X_T)) for k in ("plain", "matched")}
    assert out["plain"] < 0.995 * goal
    np.testing.assert_allclose(out["matched"], goal, rtol=1e-3)
    assert fits["matched"].coeffs.match_spread and not fits["plain"].coeffs.match_spread


def test_chunks_and_paths_agree(fits):
    """Chunked (normal equations summed over chunks) and unchunked fits sample alike (the
    coefficients of nearly collinear features may differ in float32 while their sum does not)."""
    out = lambda k: np.asarray(iia_jax.iia_sample(DENOISER, PLAN, fits[k].coeffs, X_T))   # noqa: E731
    np.testing.assert_allclose(out("chunked"), out("matched"), atol=1e-4)
    np.testing.assert_allclose(out("teacher chunked"), out("teacher"), atol=1e-4)


def test_stored_and_loaded(fits, tmp_path):
    coeffs = fits["matched"].coeffs
    iia_jax.save_coefficients(tmp_path / "c", coeffs)
    assert iia_jax.load_coefficients(tmp_path / "c", plan=PLAN).match_spread is True


def test_bad_flag_refused():
    with pytest.raises(TypeError, match="match_spread"):
        iia_jax.fit(DENOISER, PLAN, X_T[:16], match_spread="yes", progress=False)


@pytest.mark.parametrize("flag, expected", [([], True), (["--spread", "free"], False)])
def test_cli_spread_flag(tmp_path, flag, expected):
    from iia_jax import cli
    argv = ["fit", "--model", "digits", "--solver", "euler", "--steps", "3", "--batch", "32",
            "--fine-steps", "2", "--quality", "none", "--out", str(tmp_path / "c")] + flag
    assert cli.main(argv) == 0
    assert iia_jax.load_coefficients(tmp_path / "c").match_spread is expected
