"""Fréchet distance: closed forms, numerical care, and the digits FD sanity."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iia_jax.metrics.fd import (GaussianStats, apply_in_batches, corrupt_blur, corrupt_noise, digits_fd,
                                digits_fd_sanity, fd_from_features, frechet_distance, gaussian_stats)


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_identical_gaussians_have_zero_distance():
    rng = np.random.default_rng(0)
    for rank in (None, 3):  # full rank and rank-deficient (singular) covariance
        s = GaussianStats(rng.standard_normal(8), _random_cov(rng, 8, rank), 100)
        assert frechet_distance(s, s) == pytest.approx(0.0, abs=1e-8)
    f = rng.standard_normal((50, 4))
    assert fd_from_features(f, f.copy()) == pytest.approx(0.0, abs=1e-9)


def test_one_dimensional_closed_form():
    # FD(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2.
    a = GaussianStats(np.array([1.0]), np.array([[4.0]]), 2)
    b = GaussianStats(np.array([-2.0]), np.array([[0.25]]), 2)
    assert frechet_distance(a, b) == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_commuting_covariances_closed_form():
    # Same eigenvectors Q: FD = |mu1 - mu2|^2 + sum_i (sqrt(l1_i) - sqrt(l2_i))^2.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    l1, l2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.0, 3.0, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a = GaussianStats(mu1, q @ np.diag(l1) @ q.T, 2)
    b = GaussianStats(mu2, q @ np.diag(l2) @ q.T, 2)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expect, rel=1e-9)


def test_general_covariances_match_sqrtm_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")  # reference only; not a dependency
    rng = np.random.default_rng(2)
    s1, s2 = _random_cov(rng, 10), _random_cov(rng, 10)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    got = frechet_distance(GaussianStats(mu1, s1, 2), GaussianStats(mu2, s2, 2))
    assert got == pytest.approx(expect, rel=1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 6))
def test_fd_symmetric_nonnegative_rotation_invariant(seed, d):
    rng = np.random.default_rng(seed)
    a = GaussianStats(rng.standard_normal(d), _random_cov(rng, d), 2)
    b = GaussianStats(rng.standard_normal(d), _random_cov(rng, d, max(1, d - 2)), 2)
    fab, fba = frechet_distance(a, b), frechet_distance(b, a)
    assert fab >= 0.0 and fab == pytest.approx(fba, rel=1e-7, abs=1e-9)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rot = lambda s: GaussianStats(q @ s.mu, q @ s.cov @ q.T, 2)  # noqa: E731
    assert frechet_distance(rot(a), rot(b)) == pytest.approx(fab, rel=1e-6, abs=1e-8)


def test_sample_estimate_approaches_closed_form():
    rng = np.random.default_rng(3)
    f1 = rng.standard_normal((20000, 3)) * np.array([1.0, 2.0, 0.5])
    f2 = rng.standard_normal((20000, 3)) * np.array([1.0, 1.0, 0.5]) + np.array([0.5, 0.0, 0.0])
    assert fd_from_features(f1, f2) == pytest.approx(0.25 + 1.0, abs=0.08)
    assert gaussian_stats(f1).n == 20000
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        gaussian_stats(np.zeros(5))


def test_corruptions_preserve_shape_and_range():
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    for y in (corrupt_noise(x), corrupt_blur(x)):
        assert y.shape == x.shape and y.dtype == np.float32 and y.min() >= -1 and y.max() <= 1
    np.testing.assert_allclose(corrupt_blur(np.full((1, 8, 8, 1), 0.3, np.float32)), 0.3, rtol=1e-6)


def test_digits_fd_sanity_floor_below_ceilings():
    report = digits_fd_sanity()
    assert report["n"] == 300
    assert 0.0 < report["floor"] < 0.25 * min(report["noise"], report["blur"], report["shuffled"])
    assert 0.0 < report["train_subset"] < report["floor"]  # the classifier saw the train digits
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
        digits_fd(np.zeros((10, 16, 16, 1), np.float32))


def test_apply_in_batches_pads_only_internally():
    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    shapes = []

    def fn(b):
        shapes.append(b.shape)
        return 2.0 * b.sum(1)

    np.testing.assert_array_equal(apply_in_batches(fn, x, batch_size=3), 2.0 * x.sum(1))
    assert set(shapes) == {(3, 3)}  # one compiled shape: the short last batch was padded
    np.testing.assert_array_equal(apply_in_batches(fn, x[:2], batch_size=3), 2.0 * x[:2].sum(1))
