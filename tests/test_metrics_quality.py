"""The digits quality judge: estimator properties against brute force and Monte Carlo, and the
ladders of known order (contrast on both sides, blur, noise, real held-out vs real train) in miniature."""

import numpy as np
import pytest

from iia_jax.data import digits
from iia_jax.metrics import quality as q
from iia_jax.metrics.fd import corrupt_blur, corrupt_noise, fd_from_features


def _brute_mmd2(x, y, kernel):
    n, m = len(x), len(y)
    xx = sum(kernel(x[i:i + 1], x[j:j + 1])[0, 0] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kernel(y[i:i + 1], y[j:j + 1])[0, 0] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(x[i:i + 1], y[j:j + 1])[0, 0] for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_quantisation_exact_on_data_and_rounds_to_the_17_levels():
    data = digits("all").images
    np.testing.assert_array_equal(q.quantize_digits(data), data)
    x = np.zeros((1, 8, 8, 1))
    x.flat[:9] = [-1.3, -1.0, -0.97, -0.93, 0.0, 0.06, 0.07, 0.999, 1.4]
    got = q.quantize_digits(x).ravel()[:9]
    np.testing.assert_allclose(got, [-1, -1, -1, -0.875, 0, 0, 0.125, 1, 1])
    assert got.dtype == np.float32


@pytest.mark.parametrize("bad, match", [
    (np.zeros((10, 16, 16, 1)), r"samples must be digit images \[N, 8, 8, 1\]"),
    (np.zeros((10, 8, 8, 3)), r"samples must be digit images"),
    (np.full((30, 8, 8, 1), np.nan), r"samples: 30 of 30 images contain NaN or Inf"),
    (np.zeros((2, 8, 8, 1)), r"samples needs at least 3 images"),
    ("digits", r"samples must be an array"),
])
def test_bad_samples_are_refused_with_a_clear_error(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        q.digits_score(bad)


def test_bad_estimator_inputs_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same F"):
        q.kid(rng.standard_normal((10, 3)), rng.standard_normal((10, 4)))
    with pytest.raises(ValueError, match="at least 3 rows"):
        q.kid(rng.standard_normal((2, 3)), rng.standard_normal((10, 3)))
    with pytest.raises(ValueError, match="k must be in"):
        q.precision_recall(rng.standard_normal((5, 2)), rng.standard_normal((3, 2)), k=3)
    with pytest.raises(ValueError, match="digits_split name"):
        q.digits_split("validation")
    with pytest.raises(ValueError, match="reps must be"):
        q.bootstrap_std(np.mean, np.zeros(5), reps=1)


def test_mmd_matches_brute_force_and_jackknife_matches_explicit_deletion():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, 3)), rng.standard_normal((7, 3)) + 0.5
    for kernel in (q.polynomial_kernel, lambda a, b: q.rbf_kernel(a, b, 1.3)):
        value, se = q._mmd2_with_se(kernel, x, y)
        assert value == pytest.approx(_brute_mmd2(x, y, kernel), rel=1e-10)
        loo_x = [_brute_mmd2(np.delete(x, i, 0), y, kernel) for i in range(len(x))]
        loo_y = [_brute_mmd2(x, np.delete(y, j, 0), kernel) for j in range(len(y))]
        var = sum((len(t) - 1) / len(t) * np.sum((np.array(t) - np.mean(t)) ** 2) for t in (loo_x, loo_y))
        assert se == pytest.approx(np.sqrt(var), rel=1e-8)


def test_score_difference_is_the_difference_with_a_paired_error():
    test = q.digits_split("test")
    blurred = corrupt_blur(test, 0.5)
    diff, se_paired = q.score_difference(blurred, test, paired=True)
    assert diff == pytest.approx(q.digits_score(blurred) - q.digits_score(test), rel=1e-9)
    assert 0 < se_paired < q.score_difference(blurred, test)[1]
    assert diff > 3 * se_paired
    with pytest.raises(ValueError, match="equal size"):
        q.score_difference(test[:100], test, paired=True)


def test_the_error_of_a_difference_splits_into_a_part_more_samples_shrink_and_one_they_do_not():
    """Two paired sample sets against one fixed reference of 60 rows: the two parts add up in
    quadrature to the jackknife se; 16x the samples quarter the samples' part and leave the
    reference's about where it was (the reason more draws barely shrink a digits_score difference)."""
    rng = np.random.default_rng(4)
    y = rng.standard_normal((60, 3))
    parts = {}
    for n in (200, 3200):
        z = rng.standard_normal((n, 3))
        a, b = z + 0.3, 1.1 * z + 0.25              # two samplers from the same draws z
        loo_a, loo_b = (q.mmd2_jackknife(q.polynomial_kernel, s, y)[1] for s in (a, b))
        parts[n] = q.jackknife_parts(loo_a, loo_b, paired=True)
        assert np.hypot(*parts[n]) == pytest.approx(q.jackknife_se(loo_a, loo_b, paired=True), rel=1e-12)
        unpaired = q.jackknife_parts(loo_a, loo_b)
        assert unpaired[1] == parts[n][1] and unpaired[0] > parts[n][0]   # pairing removes the draws' shared part
    assert 3 < parts[200][0] / parts[3200][0] < 5.5
    assert 0.6 < parts[200][1] / parts[3200][1] < 1.6
    one = q.mmd2_jackknife(q.polynomial_kernel, a, y)[1]
    assert np.hypot(*q.jackknife_parts(one)) == pytest.approx(q.jackknife_se(one), rel=1e-12)


def test_score_difference_parts_add_up_to_its_error():
    test = q.digits_split("test")
    blurred = corrupt_blur(test, 0.5)
    d, se = q.score_difference(blurred, test, paired=True)
    d2, se_samples, se_reference = q.score_difference_parts(blurred, test, paired=True)
    assert d2 == d and np.hypot(se_samples, se_reference) == pytest.approx(se, rel=1e-12)
    assert se_samples > 0 and se_reference > 0


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_kid_unbiased_and_its_standard_error_calibrated(shift):
    # Monte Carlo over independent draws: the mean estimate is the population MMD^2 (0 for equal
    # distributions; for unequal ones, a far larger pair of samples gives it), and the jackknife
    # standard error matches the spread of the estimates.
    rng = np.random.default_rng(2)
    d, reps = 4, 300
    draws = [q.kid(rng.standard_normal((40, d)) + shift, rng.standard_normal((30, d))) for _ in range(reps)]
    values, ses = np.array([v for v, _ in draws]), np.array([s for _, s in draws])
    truth = 0.0 if shift == 0 else q.kid(rng.standard_normal((1500, d)) + shift, rng.standard_normal((1500, d)))[0]
    assert abs(values.mean() - truth) < 3 * values.std() / np.sqrt(reps) + (0 if shift == 0 else 0.02 * truth)
    assert 0.8 < ses.mean() / values.std() < 1.5


def test_pixel_mmd_of_a_distribution_with_itself_is_zero_in_expectation():
    rng = np.random.default_rng(3)
    base = rng.uniform(-1, 1, (8, 8, 8, 1))
    draw = lambda n: base[rng.integers(0, 8, n)] + 0.2 * rng.standard_normal((n, 8, 8, 1))  # noqa: E731
    h = q.median_bandwidth(draw(50).reshape(50, -1))
    values = np.array([q.pixel_mmd(draw(30), draw(30), h)[0] for _ in range(100)])
    assert abs(values.mean()) < 3 * values.std() / 10
    assert q.pixel_mmd(draw(30) + 0.5, draw(30), h)[0] > 10 * values.std()


def test_median_bandwidth_fd_self_and_knn_metrics_by_definition():
    rng = np.random.default_rng(4)
    y = rng.standard_normal((12, 3))
    pairs = [np.linalg.norm(y[i] - y[j]) for i in range(12) for j in range(i + 1, 12)]
    assert q.median_bandwidth(y) == pytest.approx(np.median(pairs), rel=1e-10)
    assert fd_from_features(y, y.copy()) == pytest.approx(0.0, abs=1e-9)
    x = rng.standard_normal((10, 3)) * 1.5
    # Brute force of the definitions (Kynkäänniemi et al. 2019; Naeem et al. 2020), k = 2.
    radius = lambda a, p: np.sort([np.linalg.norm(p - b) for b in a])[2]  # noqa: E731  (0th is p itself)
    in_y = [[np.linalg.norm(xj - yi) <= radius(y, yi) for yi in y] for xj in x]
    precision = np.mean([any(r) for r in in_y])
    recall = np.mean([any(np.linalg.norm(yi - xj) <= radius(x, xj) for xj in x) for yi in y])
    assert q.precision_recall(x, y, k=2) == pytest.approx((precision, recall))
    assert q.density_coverage(x, y, k=2) == pytest.approx((np.sum(in_y) / 20, np.mean(np.any(in_y, 0))))
    assert q.precision_recall(y, y) == (1.0, 1.0)
    assert q.precision_recall(y + 100.0, y) == (0.0, 0.0)


def test_inception_score_limits():
    assert q.inception_score(np.zeros((20, 10))) == pytest.approx(1.0)
    confident = 50.0 * np.eye(10)[np.arange(40) % 10]
    assert q.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert q.inception_score(confident[np.arange(40) % 10 == 3]) == pytest.approx(1.0, rel=1e-6)


def _contrast(x, f):
    m = x.mean(0)
    return m + f * (x - m)


def test_ladders_in_miniature_and_real_digits_tie():
    test = q.digits_split("test")
    score = q.digits_score
    # contrast: worse on both sides of 1
    low, high = [score(_contrast(test, f)) for f in (0.8, 0.9)], [score(_contrast(test, f)) for f in (1.1, 1.25)]
    s1 = score(test)
    assert low[0] > low[1] > s1 and high[1] > high[0] > s1
    # blur and noise: worse with more of it
    assert s1 < score(corrupt_blur(test, 0.5)) < score(corrupt_blur(test, 1.0))
    assert s1 < score(corrupt_noise(test, 0.2)) < score(corrupt_noise(test, 0.4))
    # real held-out digits and real digits the denoiser trained on tie within the error bars
    a, b = q.digits_quality(test, boot=2), q.digits_quality(q.digits_split("train_check"), boot=2)
    assert abs(a["score"] - b["score"]) < 2 * np.hypot(a["score_se"], b["score_se"])
    assert a["score"] == pytest.approx(s1) and a["n"] == 300
    assert abs(a["score"]) < 2 * a["score_se"]   # real digits are indistinguishable from the reference
    assert 0.9 < a["contrast"] < 1.1 and a["precision"] > 0.8 and a["inception_score"] > 9


def test_digits_split_is_a_partition_of_the_train_split():
    parts = [q.digits_split(n) for n in ("judge_train", "reference", "train_check")]
    assert [len(p) for p in parts] == [597, 600, 300]
    np.testing.assert_array_equal(np.concatenate(parts), digits("train").images)
