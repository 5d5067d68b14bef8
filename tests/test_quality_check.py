"""``fit(..., quality=...)``: the never-worse check that also judges the held-out samples.

The rule (iia/fit.py): after the error check, while the judge's paired difference ``IIA - base``
exceeds ``QUALITY_Z`` standard errors, switch off the kept step whose removal lowers it most.
Checked with judges whose verdict is known: one that always prefers IIA (the fit must not change),
constant verdicts on either side of the threshold, and a judge that tolerates a given distance
from the base samples (re-measured here by sampling the held-out rows ourselves).
"""
import dataclasses

import jax
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.iia.fit import QUALITY_Z
from iia_jax.models import gmm

SIGMA_MAX = 20.0
DENOISER = gmm(np.array([[1.5, 0.0], [-1.5, 0.5], [0.0, -1.5]], np.float32), 0.3)
PLAN = iia_jax.plan("euler", schedules.karras(6, 0.01, SIGMA_MAX))
X_T = SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(0), (256, 2))


def fitted(quality=None, **kwargs):
    return iia_jax.fit(DENOISER, PLAN, X_T, fine_steps=4, quality=quality, progress=False, **kwargs)


@pytest.fixture(scope="module")
def plain():
    return fitted()


def held_out_samples(result):
    x = X_T[result.report.holdout_rows]
    return (np.asarray(iia_jax.iia_sample(DENOISER, PLAN, result.coeffs, x)),
            np.asarray(iia_jax.sample(DENOISER, PLAN, x)))


def test_judge_preferring_iia_changes_nothing(plain):
    calls = []

    def judge(candidate, base):
        calls.append((candidate.shape, base.shape))
        return -1.0, 0.1

    res = fitted(judge)
    assert plain.report.kept.sum() >= 3   # something for the check to act on
    np.testing.assert_array_equal(res.coeffs.values, plain.coeffs.values)
    np.testing.assert_array_equal(res.report.kept, plain.report.kept)
    assert res.report.holdout_quality == (-1.0, 0.1) and res.report.quality_dropped == ()
    assert calls == [((64, 2), (64, 2))]   # one verdict on the 64 held-out rows, paired
    assert np.isnan(plain.report.holdout_quality).all()


@pytest.mark.parametrize("se, drops_all", [(0.6, False), (0.4, True)])
def test_threshold_is_quality_z_standard_errors(plain, se, drops_all):
    """A constant verdict of +1: worse than the base only if 1 > QUALITY_Z * se."""
    assert QUALITY_Z == 2.0
    res = fitted(lambda candidate, base: (1.0, se))
    if drops_all:
        assert not res.report.kept.any() and not np.any(np.asarray(res.coeffs.values))
        assert sorted(res.report.quality_dropped) == list(np.flatnonzero(plain.report.kept))
        iia, base = held_out_samples(res)
        np.testing.assert_array_equal(iia, base)
        assert res.report.holdout_median[0] == res.report.holdout_median[1]
    else:
        np.testing.assert_array_equal(res.coeffs.values, plain.coeffs.values)


def test_tolerance_judge_keeps_what_it_tolerates(plain):
    """Judge: mean distance of the samples from the base's, minus a tolerance (se 0).  The check
    must end within the tolerance, measured independently on the held-out rows, and drop no
    more than it has to: putting back any dropped step must break the tolerance."""
    iia, base = held_out_samples(plain)
    full = float(np.mean(np.linalg.norm(iia - base, axis=-1)))
    tol = 0.5 * full
    distance = lambda a, b: float(np.mean(np.linalg.norm(a - b, axis=-1)))  # noqa: E731
    res = fitted(lambda candidate, base: (distance(candidate, base) - tol, 0.0))
    dropped = res.report.quality_dropped
    assert dropped and res.report.kept.any()
    iia, base = held_out_samples(res)
    assert distance(iia, base) <= tol + 1e-6
    assert res.report.holdout_quality[0] == pytest.approx(distance(iia, base) - tol, abs=1e-5)
    last = dropped[-1]   # the check stopped as soon as it was within the tolerance
    values = np.asarray(res.coeffs.values).copy()
    values[last] = np.asarray(plain.coeffs.values)[last]
    back = dataclasses.replace(res.coeffs, values=jax.numpy.asarray(values))
    with_last = np.asarray(iia_jax.iia_sample(DENOISER, PLAN, back, X_T[res.report.holdout_rows]))
    assert distance(with_last, base) > tol


def test_bad_quality_refused():
    with pytest.raises(TypeError, match="quality must be a callable"):
        fitted("digits")
    with pytest.raises(ValueError, match="quality must return a finite"):
        fitted(lambda candidate, base: (float("nan"), 1.0))
