"""``iia_jax.iia.guard``: the model-agnostic quality judge (paired pixel RBF MMD against the fit's
own fine-reference samples).

Checked against a brute-force evaluation of the U-statistic and of the delete-one-row jackknife
written out here, against the known answer for sets drawn from one distribution, and for the
property the pairing exists for: a candidate is not rewarded for sitting on the reference row by
row (a low ODE error) when its distribution is no better.
"""
import jax
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.iia.config import REFERENCE_JUDGE
from iia_jax.iia.guard import (SPREAD_TOLERANCE, clip_to_reference, median_bandwidth_of,
                               paired_mmd_difference, reference_mmd, reference_verdict, spread_deficit)
from iia_jax.metrics.quality import jackknife_se, median_bandwidth, mmd2_jackknife, rbf_kernel
from iia_jax.models import gmm
from iia_jax.models.gmm import gmm_sample


def brute(c, b, r, h, k=None):
    """The paired U-statistic and its jackknife, by deleting each row and recomputing (Gaussian
    kernel of bandwidth ``h`` unless a kernel ``k`` is given)."""
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    c, b, r = flat(c), flat(b), flat(r)
    if k is None:
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


def test_the_judge_clips_copies_not_the_callers_samples():
    """reference_mmd clips in place, so it must own what it clips: float64 inputs with values
    beyond the reference's range come back untouched, and the verdict is that of clipped copies."""
    c, b, r = (3.0 * a for a in sets(seed=5))
    kept = [a.copy() for a in (c, b, r)]
    got = reference_mmd(c, b, r)
    for a, k in zip((c, b, r), kept):
        np.testing.assert_array_equal(a, k)
    lo, hi = np.quantile(r, [1e-3, 1 - 1e-3])
    cc, bb, rr = (np.clip(a, lo, hi) for a in (c, b, r))
    want = paired_mmd_difference(cc, bb, rr, 0.5 * median_bandwidth_of(rr))
    np.testing.assert_allclose(got, 1000.0 * np.array(want), rtol=1e-12)


def test_any_kernel_matches_brute_force():
    c, b, r = sets(seed=3)
    cubic = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    for block in (1, 16, 512):
        np.testing.assert_allclose(paired_mmd_difference(c, b, r, None, block=block, kernel=cubic),
                                   brute(c, b, r, None, cubic), rtol=1e-10)


def test_a_kernel_that_returns_float32_or_read_only_blocks_is_summed_in_float64():
    """The block sums are made in the judge's own float64 buffer: a kernel's float32 result is not
    accumulated in float32, and a read-only result is not written to."""
    c, b, r = sets(seed=4)
    cubic = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731

    def frozen32(x, y):
        out = cubic(x, y).astype(np.float32)
        out.flags.writeable = False
        return out

    want = brute(c, b, r, None, lambda x, y: cubic(x, y).astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(paired_mmd_difference(c, b, r, None, block=16, kernel=frozen32), want, rtol=1e-9)


def test_feature_judge_compares_in_the_features_it_is_given():
    """``feature_judge(f)``: a reference judge whose verdict is the cubic-kernel paired MMD in
    ``f``'s features (x1000, as brute force computes it): samples shrunk along one axis are worse
    than exact ones, and features blind to that axis see no difference at all."""
    rng = np.random.default_rng(5)
    r, exact = rng.normal(size=(800, 4)), rng.normal(size=(800, 4))
    shrunk = exact * np.array([0.5, 1.0, 1.0, 1.0])
    judge = iia_jax.feature_judge(lambda a: 2.0 * a)
    assert judge.reference and judge.max_rows == 4096
    d, se = judge(shrunk, exact, r)
    assert d > 3 * se
    cubic = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    head = slice(0, 40)
    np.testing.assert_allclose(np.array(judge(shrunk[head], exact[head], r[head])) / 1000,
                               brute(2 * shrunk[head], 2 * exact[head], 2 * r[head], None, cubic), rtol=1e-9)
    assert iia_jax.feature_judge(lambda a: a[:, 1:])(shrunk, exact, r) == (0.0, 0.0)
    with pytest.raises(TypeError, match="features"):
        iia_jax.feature_judge(3)


def test_a_fit_runs_its_guard_with_a_feature_judge():
    """In a fit, the feature judge sees the fit's reference rows through ``features`` and its
    verdict is the report's quality difference."""
    seen = []

    def features(a):
        seen.append(a.shape)
        return np.asarray(a).reshape(len(a), -1)

    x_fit = 20.0 * jax.random.normal(jax.random.PRNGKey(4), (64, 2))
    res = iia_jax.fit(grid_mixture(), iia_jax.plan("euler", schedules.karras(4, 0.01, 20.0)), x_fit, fine_steps=4,
                      quality=iia_jax.feature_judge(features), progress=False)
    assert seen[:3] == [(64, 2)] * 3 and np.all(np.isfinite(res.report.quality_difference))


def test_bandwidth_is_the_median_distance():
    r = np.random.default_rng(1).normal(size=(25, 4))
    d = np.sqrt(((r[:, None] - r[None]) ** 2).sum(-1))[np.triu_indices(25, 1)]
    for block in (3, 25, 512):
        assert median_bandwidth_of(r, block=block) == pytest.approx(np.median(d), rel=1e-12)
    head = np.sqrt(((r[:10, None] - r[None, :10]) ** 2).sum(-1))[np.triu_indices(10, 1)]
    assert median_bandwidth_of(r, max_rows=10) == pytest.approx(np.median(head), rel=1e-12)


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
    judge = REFERENCE_JUDGE
    assert judge.reference and judge.worse((2.0, 1.0)) and not judge.worse((0.5, 1.0))
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


def brute_deficit(c, b, r):
    """``1 - s(C) / min(s(B), s(R))`` on samples clipped to the reference's range, and its row
    jackknife by deleting each row from all three sets and recomputing."""
    lo, hi = clip_to_reference(r)
    c, b, r = (np.clip(a.reshape(len(a), -1), lo, hi) for a in (c, b, r))
    spread = lambda x: np.sqrt(np.mean(np.var(x, axis=0, ddof=1)))  # noqa: E731
    stat = lambda idx: 1 - spread(c[idx]) / min(spread(b[idx]), spread(r[idx]))  # noqa: E731
    n = len(c)
    loo = np.array([stat(np.delete(np.arange(n), i)) for i in range(n)])
    return stat(np.arange(n)), np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))


def test_spread_deficit_matches_brute_force():
    c, b, r = sets(30, 5)
    np.testing.assert_allclose(spread_deficit(c, b, r), brute_deficit(c, b, r), rtol=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        spread_deficit(c[:9], b, r)
    with pytest.raises(ValueError, match="at least 4 rows"):
        spread_deficit(c[:3], b[:3], r[:3])


def test_spread_floor_blames_flatness_below_the_reference_and_the_base_only():
    """Shrunk toward its mean by x0.85, a candidate is 15 % below the floor whether the base
    matches the reference or overshoots it (x1.25); against a base flatter still (x0.7) the same
    candidate has nothing to answer for; over-spread is never a deficit."""
    rng = np.random.default_rng(3)
    r = rng.normal(size=(400, 16))
    m = r.mean(0)
    shrunk = lambda a, s: m + s * (a - m)  # noqa: E731
    other = rng.normal(size=r.shape)          # the same distribution, other draws
    for base_scale in (1.0, 1.25):
        f, se = spread_deficit(shrunk(other, 0.85), shrunk(other, base_scale), r)
        assert abs(f - 0.15) < 0.03 and 0 < se < 0.02
    assert spread_deficit(shrunk(other, 0.85), shrunk(other, 0.7), r)[0] < -0.1
    assert spread_deficit(shrunk(other, 1.25), other, r)[0] < 0


def test_default_verdict_is_the_worse_of_distribution_and_spread_floor():
    """``reference_verdict`` is the larger z of the MMD and of the spread floor beyond its tolerance.
    The case the floor exists for: a base that overshoots the reference's contrast and a candidate
    that is flatter than it by 12 %, which the MMD alone prefers."""
    rng = np.random.default_rng(4)
    r = rng.normal(size=(600, 16))
    other = rng.normal(size=r.shape)
    base, candidate = 1.6 * other, 0.88 * other
    d, se = reference_mmd(candidate, base, r)
    f, f_se = spread_deficit(candidate, base, r)
    assert d < -se and f > SPREAD_TOLERANCE + f_se      # the MMD prefers it; the floor does not
    z, one = reference_verdict(candidate, base, r)
    assert one == 1.0 and z == pytest.approx(max(d / se, (f - SPREAD_TOLERANCE) / f_se)) and z > 1
    lenient = reference_verdict(candidate, base, r, tolerance=0.2)[0]     # 12 % is within 20 %
    assert lenient == pytest.approx(max(d / se, (f - 0.2) / f_se)) and lenient < 0
    assert reference_verdict(base, base, r) == (0.0, 1.0)           # the base against itself
    with pytest.raises(ValueError, match="tolerance"):
        reference_verdict(candidate, base, r, tolerance=1.0)


# --------------------------------------------------------------------------- the guard on a model

def grid_mixture():
    """16 tight modes (std 0.05) on a 4 x 4 grid in 2-D: at NFE 4 the default fit's dpmpp_2m
    samples shrink toward the middle (their spread is 0.85 of the exact samples')."""
    g = np.stack(np.meshgrid(np.linspace(-1.5, 1.5, 4), np.linspace(-1.5, 1.5, 4)), -1).reshape(-1, 2)
    return gmm(g.astype(np.float32), 0.05)


def test_default_fit_does_not_shrink_a_mixture():
    """Without the guard (``quality=None``: least squares and the error check alone) the fit's
    dpmpp_2m samples shrink toward the middle of the mixture; the default fit (the reference judge
    in its quality guard) ties the base sampler.  Judged on fresh draws against exact samples of
    the mixture by the metrics module's MMD."""
    denoiser = grid_mixture()
    plan = iia_jax.plan("dpmpp_2m", schedules.karras(4, 0.01, 20.0))
    x_fit = 20.0 * jax.random.normal(jax.random.PRNGKey(1), (1024, 2))
    unguarded = iia_jax.fit(denoiser, plan, x_fit, fine_steps=8, quality=None, progress=False)
    default = iia_jax.fit(denoiser, plan, x_fit, fine_steps=8, progress=False)
    assert default.report.quality_dropped, default.report.summary()
    assert not default.report.kept[list(default.report.quality_dropped)].any()
    assert set(np.flatnonzero(default.report.kept)) <= set(np.flatnonzero(unguarded.report.kept))

    x_eval = 20.0 * jax.random.normal(jax.random.PRNGKey(2), (2000, 2))
    exact = np.asarray(gmm_sample(jax.random.PRNGKey(5), denoiser, 2000))
    kernel = lambda a, b: rbf_kernel(a, b, median_bandwidth(exact))  # noqa: E731
    spread = lambda x: np.sqrt(np.mean(np.sum((x - x.mean(0)) ** 2, 1)))  # noqa: E731
    out = {}
    for name, x in (("base", iia_jax.sample(denoiser, plan, x_eval)),
                    ("unguarded", iia_jax.iia_sample(denoiser, plan, unguarded.coeffs, x_eval)),
                    ("default", iia_jax.iia_sample(denoiser, plan, default.coeffs, x_eval))):
        x = np.asarray(x)
        out[name] = mmd2_jackknife(kernel, x, exact), spread(x) / spread(exact)

    def worse_than_base(name):   # in paired standard errors; 0 for the base sampler itself
        (m, loo), (mb, loo_b) = out[name][0], out["base"][0]
        se = jackknife_se(loo, loo_b, paired=True)
        return 0.0 if m == mb and se == 0 else (m - mb) / se

    assert worse_than_base("unguarded") > 3 and out["unguarded"][1] < 0.9     # least squares shrinks
    assert worse_than_base("default") < 1 and 0.95 < out["default"][1] < 1.1


def test_default_guard_holds_the_spread_floor_where_the_distance_alone_lets_flattening_through():
    """On the 8x8 overlapping mixture (dpmpp_2m, Karras, 6 steps) a guard judging by the MMD alone
    keeps steps that leave IIA's samples about 10 % flatter than the base's and the reference's on
    fresh draws; the default judge (MMD and spread floor) drops one of them, and its samples are
    no flatter than the floor and no further from exact samples of the mixture than the base's."""
    from iia_jax.bench.models import overlapping_mixture
    denoiser = overlapping_mixture().denoiser
    plan = iia_jax.plan("dpmpp_2m", schedules.karras(6, 0.002, 80.0))
    x_fit = 80.0 * jax.random.normal(jax.random.PRNGKey(0), (512, 8, 8, 1))
    distance_only = iia_jax.fit(denoiser, plan, x_fit, fine_steps=8, progress=False,
                                quality=iia_jax.Judge(reference_mmd, reference=True))
    default = iia_jax.fit(denoiser, plan, x_fit, fine_steps=8, progress=False)
    assert default.report.quality_dropped and not distance_only.report.quality_dropped
    assert set(np.flatnonzero(default.report.kept)) < set(np.flatnonzero(distance_only.report.kept))

    x_eval = 80.0 * jax.random.normal(jax.random.PRNGKey(1), (1000, 8, 8, 1))
    fine = np.asarray(iia_jax.sample(denoiser, iia_jax.plan("heun", schedules.karras(256, 0.002, 80.0)), x_eval))
    base = np.asarray(iia_jax.sample(denoiser, plan, x_eval))
    samples = {name: np.asarray(iia_jax.iia_sample(denoiser, plan, r.coeffs, x_eval))
               for name, r in (("distance only", distance_only), ("default", default))}
    assert spread_deficit(samples["distance only"], base, fine)[0] > 0.08
    assert spread_deficit(samples["default"], base, fine)[0] < SPREAD_TOLERANCE

    exact = np.asarray(gmm_sample(jax.random.PRNGKey(5), denoiser, 1000)).reshape(1000, -1)
    kernel = lambda a, b: rbf_kernel(a, b, median_bandwidth(exact))  # noqa: E731
    (m, loo), (mb, loo_b) = (mmd2_jackknife(kernel, x.reshape(len(x), -1), exact) for x in (samples["default"], base))
    assert m - mb <= jackknife_se(loo, loo_b, paired=True)


def test_the_reference_judge_sees_the_fine_reference_of_its_rows():
    """A reference judge is handed the fit's own fine-reference samples of the judged rows (every
    row for the trajectory target and teacher-forced fits, the held-out rows for the local
    target): closer to a 256-step heun solution of the same noise than the base samples are, and
    row-aligned with the candidate and base."""
    denoiser = grid_mixture()
    plan = iia_jax.plan("euler", schedules.karras(4, 0.01, 20.0))
    x_fit = 20.0 * jax.random.normal(jax.random.PRNGKey(4), (64, 2))
    fine = np.asarray(iia_jax.sample(denoiser, iia_jax.plan("heun", schedules.karras(256, 0.01, 20.0)), x_fit))
    for options, rows in ((dict(), 64), (dict(mode="teacher_forced", chunk_size=32), 64),
                          (dict(target="local"), 16)):
        seen = []

        def compare(candidate, base, reference):
            seen.append((candidate, base, reference))
            return -1.0, 1.0

        res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=8, progress=False, holdout=0.25,
                          quality=iia_jax.Judge(compare, reference=True), key=jax.random.PRNGKey(0),
                          **options)
        candidate, base, reference = seen[0]
        assert candidate.shape == base.shape == reference.shape == (rows, 2)
        # which rows were judged, in the judge's order: the base samples are those rows' own
        full = np.asarray(iia_jax.sample(denoiser, plan, x_fit))
        order = np.argmin(np.linalg.norm(base[:, None] - full[None], axis=-1), axis=1)
        np.testing.assert_allclose(base, full[order], atol=1e-5)
        assert len(set(order)) == rows
        if rows < 64:
            assert set(order) == set(res.report.holdout_rows)
        err = lambda x: np.median(np.linalg.norm(x - fine[order], axis=1))  # noqa: E731
        assert err(reference) < 0.2 * err(base), options


def test_the_judge_sees_at_most_max_rows_rows():
    """A judge with ``max_rows`` is handed ``max_rows`` distinct rows of the batch (chunked or
    not; the chunks after them are not even sampled): the base samples are exactly those rows'
    base-sampler samples, and the reference their fine reference.  ``max_rows`` is checked."""
    denoiser = grid_mixture()
    plan = iia_jax.plan("euler", schedules.karras(4, 0.01, 20.0))
    x_fit = 20.0 * jax.random.normal(jax.random.PRNGKey(4), (96, 2))
    full = np.asarray(iia_jax.sample(denoiser, plan, x_fit))
    fine = np.asarray(iia_jax.sample(denoiser, iia_jax.plan("heun", schedules.karras(256, 0.01, 20.0)), x_fit))
    for options in (dict(), dict(chunk_size=16), dict(mode="teacher_forced", chunk_size=32)):
        seen = []

        def compare(candidate, base, reference):
            seen.append((candidate, base, reference))
            return -1.0, 1.0

        iia_jax.fit(denoiser, plan, x_fit, fine_steps=8, progress=False,
                    quality=iia_jax.Judge(compare, reference=True, max_rows=40), **options)
        candidate, base, reference = seen[0]
        assert candidate.shape == base.shape == reference.shape == (40, 2)
        order = np.argmin(np.linalg.norm(base[:, None] - full[None], axis=-1), axis=1)
        assert len(set(order)) == 40
        np.testing.assert_allclose(base, full[order], atol=1e-5)
        err = lambda x: np.median(np.linalg.norm(x - fine[order], axis=1))  # noqa: E731
        assert err(reference) < 0.2 * err(base), options
    for bad in (3, 2.5, True):
        with pytest.raises(ValueError, match="max_rows"):
            iia_jax.FitConfig(judge=iia_jax.Judge(lambda a, b: (0.0, 1.0), max_rows=bad))


def test_guard_rule_on_judges_with_known_verdicts():
    """The step whose removal helps most goes first; removal stops once the samples are no longer
    worse by more than z se; when no single removal helps but the base sampler is better, every
    step goes; a verdict that nothing lowers changes nothing."""
    denoiser = grid_mixture()
    plan = iia_jax.plan("euler", schedules.karras(5, 0.01, 20.0))
    x_fit = 20.0 * jax.random.normal(jax.random.PRNGKey(6), (128, 2))
    free = iia_jax.fit(denoiser, plan, x_fit, fine_steps=4, quality=None, progress=False)
    kept = list(np.flatnonzero(free.report.kept))
    assert len(kept) >= 3
    on = lambda c, b: np.abs(c - b).sum(1) > 0  # noqa: E731  (rows the corrections moved)

    def fit_with(compare):
        return iia_jax.fit(denoiser, plan, x_fit, fine_steps=4, progress=False,
                           quality=iia_jax.Judge(compare, reference=True))

    # worse by (number of kept steps - 1) se: drops until one step is left
    by_count = fit_with(lambda c, b, r: (float(len(kept) - 1) if on(c, b).any() else 0.0, 1.0))
    assert by_count.report.quality_difference[1] == 1.0 or not by_count.report.kept.any()
    # a verdict that only the base sampler lowers: every step goes
    stuck = fit_with(lambda c, b, r: (5.0 if on(c, b).any() else 0.0, 1.0))
    assert not stuck.report.kept.any() and not np.any(np.asarray(stuck.coeffs.values))
    assert sorted(stuck.report.quality_dropped) == kept
    # a constant verdict: nothing to gain, nothing dropped
    calm = fit_with(lambda c, b, r: (5.0, 1.0))
    np.testing.assert_array_equal(calm.coeffs.values, free.coeffs.values)
    with pytest.raises(ValueError, match="finite"):
        fit_with(lambda c, b, r: (np.nan, 1.0))


# --------------------------------------------------------------------------- the pages' tables

def test_pages_show_the_tracked_results():
    """The guarantee tables on the pages are exactly what ``python benchmarks/quality_guard.py
    --table`` builds from the tracked results files, so no page keeps a number its file lost."""
    import argparse
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("quality_guard", root / "benchmarks" / "quality_guard.py")
    qg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qg)
    for model, page in (("digits", "digits.md"), ("overlapping", "iia.md")):
        results, text = root / "docs" / f"quality_guard_{model}.jsonl", (root / "docs" / page).read_text()
        assert qg.grid_summary(results) in text, (model, page)
        assert qg.table(results) in text, (model, page)
    # the guard judged in step order too, over the same grid (docs/digits.md, "Judged in step order")
    assert qg.grid_summary(root / "docs" / "quality_guard_digits_in_order.jsonl") in (root / "docs" / "digits.md").read_text()
    confirmed = argparse.Namespace(out=root / "docs" / "quality_guard_digits.jsonl", eval_seed=1, n=4000, model="digits")
    assert qg.confirm(confirmed) in (root / "docs" / "digits.md").read_text()   # measured: nothing left to run
