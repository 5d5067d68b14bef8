"""``iia_jax.iia.guard``: the model-agnostic quality judge (paired pixel RBF MMD against the fit's
own fine-reference samples).

Checked against a brute-force evaluation of the U-statistic and of the delete-one-row jackknife
written out here, against the known answer for sets drawn from one distribution, and for the
property the pairing exists for: a candidate is not rewarded for sitting on the reference row by
row (a low ODE error) when its distribution is no better.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.iia.guard import (ReferenceJudge, guard_steps, median_bandwidth_of, paired_mmd_difference,
                               reference_mmd)
from iia_jax.metrics.quality import jackknife_se, median_bandwidth, mmd2_jackknife, rbf_kernel
from iia_jax.models import gmm
from iia_jax.models.gmm import gmm_sample


def brute(c, b, r, h):
    """The paired U-statistic and its jackknife, by deleting each row and recomputing."""
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    c, b, r = flat(c), flat(b), flat(r)
    k = lambda x, y: np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * h * h))  # noqa: E731

    def stat(idx):
        hc = k(c[idx], c[idx]) + k(r[idx], r[idx]) - k(c[idx], r[idx]) - k(c[idx], r[idx]).T
        hb = k(b[idx], b[idx]) + k(r[idx], r[idx]) - k(b[idx], r[idx]) - k(b[idx], r[idx]).T
        m = hc - hb
        np.fill_diagonal(m, 0.0)
        n = len(idx)
        return m.sum() / (n * (n - 1))

    n = len(c)
    loo = np.array([stat(np.delete(np.arange(n), i)) for i in range(n)])
    return stat(np.arange(n)), np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))


def sets(n=40, seed=0, shape=(3, 3, 1)):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(n,) + shape)
    return r + 0.3 * rng.normal(size=r.shape), 0.6 * r, r


def test_matches_brute_force_and_any_block_size():
    c, b, r = sets()
    h = median_bandwidth_of(r)
    want = brute(c, b, r, h)
    for block in (1, 7, 40, 512):
        got = paired_mmd_difference(c, b, r, h, block=block)
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_bandwidth_is_the_median_distance():
    r = np.random.default_rng(1).normal(size=(25, 4))
    d = np.sqrt(((r[:, None] - r[None]) ** 2).sum(-1))[np.triu_indices(25, 1)]
    for block in (3, 25, 512):
        assert median_bandwidth_of(r, block=block) == pytest.approx(np.median(d), rel=1e-12)


def test_reference_itself_scores_zero_and_shrinkage_scores_worse():
    rng = np.random.default_rng(2)
    r = rng.normal(size=(300, 8))
    same = reference_mmd(r, 0.6 * r, r)          # the reference vs a shrunk copy of it
    assert same[0] < -3 * same[1]                # the reference is better, clearly
    c, b, _ = sets(300, 3, (8,))
    d = reference_mmd(0.6 * r, r, r)             # antisymmetric in (candidate, base)
    assert d[0] == pytest.approx(-same[0]) and d[1] == pytest.approx(same[1])
    assert paired_mmd_difference(r, r + 0, r, 1.0) == (0.0, 0.0)


def test_pairing_does_not_reward_a_low_ode_error():
    """A candidate that is the reference row by row (ODE error 0) against one drawn independently
    from the same distribution: over 400 repeats the judge's mean difference is 0 within its
    error (unbiased), while an MMD that kept the pairs from the same noise favours the copy by
    tens of its errors."""
    rng = np.random.default_rng(0)
    n, h = 20, 1.5
    k = lambda x, y: np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * h * h))  # noqa: E731
    paired, naive = [], []
    for _ in range(400):
        r, independent = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
        paired.append(paired_mmd_difference(r, independent, r, h)[0])
        with_pairs = lambda x, r=r: -2 * k(x, r).mean() + (k(x, x).sum() - n) / (n * (n - 1))  # noqa: E731
        naive.append(with_pairs(r) - with_pairs(independent))
    z = lambda d: np.mean(d) / (np.std(d) / np.sqrt(len(d)))  # noqa: E731
    assert abs(z(paired)) < 3
    assert z(naive) < -20


def test_judge_threshold_and_refusals():
    judge = ReferenceJudge()
    assert judge.worse((2.0, 1.0)) and not judge.worse((0.5, 1.0))
    c, b, r = sets(10)
    with pytest.raises(ValueError, match="same shape"):
        reference_mmd(c[:9], b, r)
    with pytest.raises(ValueError, match="candidate contains NaN"):
        reference_mmd(np.full_like(c, np.nan), b, r)
    with pytest.raises(ValueError, match="at least 4 rows"):
        paired_mmd_difference(c[:3], b[:3], r[:3], 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        paired_mmd_difference(c, b, r, 0.0)
    with pytest.raises(ValueError, match="identical"):
        median_bandwidth_of(np.zeros((5, 2)))


# --------------------------------------------------------------------------- the guard on a model

def grid_mixture():
    """16 tight modes (std 0.05) on a 4 x 4 grid in 2-D: at NFE 4 the default fit's dpmpp_2m
    samples shrink toward the middle (their spread is 0.85 of the exact samples')."""
    g = np.stack(np.meshgrid(np.linspace(-1.5, 1.5, 4), np.linspace(-1.5, 1.5, 4)), -1).reshape(-1, 2)
    return gmm(g.astype(np.float32), 0.05)


def test_guard_keeps_the_default_fit_from_shrinking_a_mixture():
    denoiser = grid_mixture()
    plan = iia_jax.plan("dpmpp_2m", schedules.karras(4, 0.01, 20.0))
    fitted = iia_jax.fit(denoiser, plan, 20.0 * jax.random.normal(jax.random.PRNGKey(1), (512, 2)),
                         fine_steps=8, progress=False)
    coeffs = fitted.coeffs
    run = jax.jit(lambda v, x: iia_jax.iia_sample(denoiser, plan, dataclasses.replace(coeffs, values=v), x))

    # the fit's part: held-out rows and their fine reference (the same solver, 64 steps)
    held = 20.0 * jax.random.normal(jax.random.PRNGKey(3), (256, 2))
    fine = np.asarray(iia_jax.sample(denoiser, iia_jax.plan("dpmpp_2m", schedules.karras(64, 0.01, 20.0)), held))
    guarded = guard_steps(np.asarray(coeffs.values), np.asarray(coeffs.kept),
                          lambda v: np.asarray(run(jnp.asarray(v, jnp.float32), held)), fine)
    assert guarded.dropped and not guarded.kept[list(guarded.dropped)].any()
    assert set(np.flatnonzero(guarded.kept)) <= set(np.flatnonzero(np.asarray(coeffs.kept)))

    # judged on fresh draws against exact samples of the mixture, by the metrics module's MMD
    x_eval = 20.0 * jax.random.normal(jax.random.PRNGKey(2), (2000, 2))
    exact = np.asarray(gmm_sample(jax.random.PRNGKey(5), denoiser, 2000))
    kernel = lambda a, b: rbf_kernel(a, b, median_bandwidth(exact))  # noqa: E731
    spread = lambda x: np.sqrt(np.mean(np.sum((x - x.mean(0)) ** 2, 1)))  # noqa: E731
    out = {}
    for name, v in (("base", np.zeros_like(guarded.values)), ("default", np.asarray(coeffs.values)),
                    ("guarded", guarded.values)):
        x = np.asarray(run(jnp.asarray(v, jnp.float32), x_eval))
        out[name] = mmd2_jackknife(kernel, x, exact), spread(x) / spread(exact)

    def worse_than_base(name):
        (m, loo), (mb, loo_b) = out[name][0], out["base"][0]
        return (m - mb) / jackknife_se(loo, loo_b, paired=True)

    assert worse_than_base("default") > 3 and out["default"][1] < 0.9     # today's default shrinks
    assert worse_than_base("guarded") < 1 and 0.95 < out["guarded"][1] < 1.1


def test_guard_steps_rule():
    """A judge that only looks at the values: the step whose removal helps most goes first, and
    removal stops once the candidate is no longer worse by more than z se."""
    values = np.array([[1.0], [2.0], [3.0]])
    samples = lambda v: np.asarray(v, float)          # "samples" = the coefficients themselves  # noqa: E731
    judge = ReferenceJudge(compare=lambda c, b, r: (float(c.sum() - 0.5), 1.0), z=1.0)
    out = guard_steps(values, np.ones(3, bool), samples, reference=None, judge=judge)
    assert out.dropped == (2, 1) and out.kept.tolist() == [True, False, False]
    assert out.judged == (0.5, 1.0) and out.values.ravel().tolist() == [1.0, 0.0, 0.0]
    stuck = ReferenceJudge(compare=lambda c, b, r: (2.0 + float(np.count_nonzero(c == 0)), 1.0))
    out = guard_steps(values, np.array([True, False, True]), samples, None, stuck)
    assert out.dropped == (0, 2) and not out.kept.any() and not out.values.any() and out.judged == (0.0, 0.0)
    calm = ReferenceJudge(compare=lambda c, b, r: (0.5, 1.0))
    assert guard_steps(values, np.ones(3, bool), samples, None, calm).dropped == ()
    with pytest.raises(ValueError, match="finite"):
        guard_steps(values, np.ones(3, bool), samples, None, ReferenceJudge(compare=lambda c, b, r: (np.nan, 1.0)))
    with pytest.raises(ValueError, match=r"values must be \[N, K\]"):
        guard_steps(values, np.ones(2, bool), samples, None, calm)
