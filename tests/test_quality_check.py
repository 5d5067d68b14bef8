"""``fit(..., quality=...)``: the never-worse check that also judges the held-out samples.

The rule (iia/fit.py): after the error check, while the judge's paired difference ``IIA - base``
on the batch's samples exceeds ``QUALITY_Z`` standard errors, switch off the kept step whose
removal lowers it most (if one does).  Checked with judges whose verdict is known: one that always
prefers IIA (the fit must not change), a constant verdict (nothing can lower it), and judges of
the distance from the base samples, re-measured here by sampling the batch ourselves.
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


def samples(result):
    return (np.asarray(iia_jax.iia_sample(DENOISER, PLAN, result.coeffs, X_T)),
            np.asarray(iia_jax.sample(DENOISER, PLAN, X_T)))


def distance(a, b):
    return float(np.mean(np.linalg.norm(a - b, axis=-1)))


def test_judge_preferring_iia_changes_nothing(plain):
    calls = []

    def judge(candidate, base):
        calls.append((candidate.shape, base.shape))
        return -1.0, 0.1

    res = fitted(judge)
    assert plain.report.kept.sum() >= 3   # something for the check to act on
    np.testing.assert_array_equal(res.coeffs.values, plain.coeffs.values)
    np.testing.assert_array_equal(res.report.kept, plain.report.kept)
    assert res.report.quality_difference == (-1.0, 0.1) and res.report.quality_dropped == ()
    assert calls == [((256, 2), (256, 2))]   # one verdict on every row of the batch, paired
    assert np.isnan(plain.report.quality_difference).all()


@pytest.mark.parametrize("se, drops", [(1.1, False), (0.9, True)])
def test_threshold_is_quality_z_standard_errors(plain, se, drops):
    """The distance from the base in units of the full fit's: 1 before any drop, so steps go
    only if 1 > QUALITY_Z * se."""
    assert QUALITY_Z == 1.0
    full = distance(*samples(plain))
    res = fitted(lambda candidate, base: (distance(candidate, base) / full, se))
    if drops:
        assert res.report.quality_dropped and res.report.quality_difference[0] <= QUALITY_Z * se
        never_worse(res)
        assert distance(*samples(res)) / full == pytest.approx(res.report.quality_difference[0], rel=1e-4)
    else:
        np.testing.assert_array_equal(res.coeffs.values, plain.coeffs.values)


def never_worse(res):
    """What a judged fit keeps still lowers the held-out median error (as the report measures it
    after the drops, against the fit's own reference), or it is the base sampler."""
    median_base, median_iia = res.report.holdout_median
    assert median_iia < median_base or not res.report.kept.any()


def test_constant_verdict_drops_nothing(plain):
    """Worse than the base by 10 se, but no removal lowers the verdict: nothing to gain."""
    res = fitted(lambda candidate, base: (1.0, 0.1))
    np.testing.assert_array_equal(res.coeffs.values, plain.coeffs.values)
    assert res.report.quality_dropped == ()


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_tolerance_judge_keeps_what_it_tolerates(plain, share):
    """Judge: the distance from the base's samples minus a tolerance (se 0).  The check must end
    within the tolerance, measured independently on the batch, and drop no more than it has to:
    putting back the last dropped step must break the tolerance.  Tolerance 0: back to the base."""
    tol = share * distance(*samples(plain))
    res = fitted(lambda candidate, base: (distance(candidate, base) - tol, 0.0))
    dropped = res.report.quality_dropped
    iia, base = samples(res)
    assert dropped and distance(iia, base) <= tol + 1e-6
    never_worse(res)
    assert res.report.quality_difference[0] == pytest.approx(distance(iia, base) - tol, abs=1e-5)
    if share == 0.0:
        assert not res.report.kept.any() and not np.any(np.asarray(res.coeffs.values))
        np.testing.assert_array_equal(iia, base)
        assert sorted(dropped) == list(np.flatnonzero(plain.report.kept))
        return
    assert res.report.kept.any()
    values = np.asarray(res.coeffs.values).copy()
    values[dropped[-1]] = np.asarray(plain.coeffs.values)[dropped[-1]]
    back = dataclasses.replace(res.coeffs, values=jax.numpy.asarray(values))
    assert distance(np.asarray(iia_jax.iia_sample(DENOISER, PLAN, back, X_T)), base) > tol


def test_bad_quality_refused():
    with pytest.raises(TypeError, match="quality must be a callable"):
        fitted("digits")
    with pytest.raises(ValueError, match="quality must return a finite"):
        fitted(lambda candidate, base: (float("nan"), 1.0))


@pytest.mark.parametrize("model, judge", [("digits", "digits"), ("digits-cond", "reference")])
def test_cli_judges_the_digits_model_by_default(tmp_path, capsys, model, judge):
    """`iia-jax fit --quality auto`: the validated digits judge on the unconditional digits model
    only (it is not a measure of guided samples, docs/guidance.md); elsewhere the library's
    default, the model-agnostic reference judge.  `--quality in-order`: that judge with the kept
    steps also judged in step order.  `--quality none`: no judge."""
    from iia_jax import cli
    from iia_jax.metrics import digits_check
    loaded = cli.load_model(model)
    want = digits_check if judge == "digits" else iia_jax.iia.REFERENCE_JUDGE
    assert cli._quality(loaded, "auto") is want and cli._quality(loaded, "none") is None
    assert cli._quality(loaded, "in-order") is iia_jax.iia.IN_ORDER_JUDGE
    argv = ["fit", "--model", model, "--solver", "euler", "--steps", "3", "--batch", "32",
            "--fine-steps", "2", "--out", str(tmp_path / "c")]
    assert cli.main(argv) == 0
    assert "quality judge, IIA - base" in capsys.readouterr().out


def with_steps(plain, steps):
    """The plain fit's coefficients with only ``steps`` switched on, sampled from the batch."""
    values = np.asarray(plain.coeffs.values)
    on = np.isin(np.arange(len(values)), list(steps))[:, None]
    coeffs = dataclasses.replace(plain.coeffs, values=jax.numpy.asarray(np.where(on, values, 0)))
    return np.asarray(iia_jax.iia_sample(DENOISER, PLAN, coeffs, X_T))


def in_order_pass(plain, verdict):
    """The in-order pass re-derived by sampling every prefix ourselves: each kept step is accepted
    if the samples with it and the steps accepted before it get a verdict <= 0."""
    accepted = []
    for step in np.flatnonzero(plain.report.kept):
        if verdict(with_steps(plain, accepted + [int(step)])) <= 0:
            accepted.append(int(step))
    return accepted


@pytest.mark.parametrize("near, ranked, winner", [("base", False, "joint"), ("a selection", False, "in order"),
                                                ("base", True, "in order")])
def test_in_order_judge_keeps_the_better_of_both_passes(plain, near, ranked, winner):
    """``Judge(in_order=True)``: besides the joint pass, the kept steps are judged in step order,
    each on top of the steps accepted before it, and the selection with the lower verdict is kept
    (the base sampler's verdict is 0), or with ``rank`` the one it ranks lower (here the verdict
    reversed, so the other pass wins).  Both passes re-derived here (the joint one by a fit with
    the judge alone, the in-order one by sampling every prefix ourselves), with two judges of a
    distance under a tolerance whose passes disagree, one won by each; the judge sees each
    selection once."""
    base = samples(plain)[1]
    kept = [int(i) for i in np.flatnonzero(plain.report.kept)]
    assert len(kept) >= 4
    full = distance(with_steps(plain, kept), base)
    if near == "base":      # close to the base: the joint pass drops the step that moves it most
        target, tol = base, 0.98 * full
    else:                   # close to the samples without one late step: reached in order sooner
        target, tol = with_steps(plain, kept[:-2] + kept[-1:]), 0.4 * full
    verdict = lambda x: distance(x, target) - tol  # noqa: E731
    of = lambda steps: verdict(with_steps(plain, steps)) if steps else 0.0  # noqa: E731
    calls = []

    def judge(candidate, base_):
        calls.append(candidate.tobytes())
        return verdict(candidate), 0.0

    joint = [int(i) for i in np.flatnonzero(fitted(iia_jax.Judge(judge)).report.kept)]
    ordered = in_order_pass(plain, verdict)
    assert ordered != joint and ((of(ordered) < of(joint)) != ranked) == (winner == "in order")
    calls.clear()
    rank = (lambda candidate, base_: -verdict(candidate)) if ranked else None  # noqa: E731
    both = fitted(iia_jax.Judge(judge, in_order=True, rank=rank))
    assert len(set(calls)) == len(calls)          # no selection judged twice
    chosen = [int(i) for i in np.flatnonzero(both.report.kept)]
    assert chosen == (ordered if winner == "in order" else joint)
    never_worse(both)
    assert both.report.quality_difference[0] == pytest.approx(of(chosen), abs=1e-5)
    np.testing.assert_allclose(samples(both)[0], with_steps(plain, chosen), atol=1e-5)


def test_in_order_judge_refused_when_not_a_bool():
    with pytest.raises(TypeError, match="judge.in_order"):
        iia_jax.FitConfig(judge=iia_jax.Judge(lambda c, b: (0.0, 1.0), in_order="yes"))


@pytest.mark.parametrize("solver, options", [("euler", dict(in_order=False)), ("euler", dict(in_order=True)),
                                             ("heun", dict(in_order=True, chunk_size=64)),
                                             ("heun", dict(in_order=False, target="local"))])
def test_report_counts_the_model_evaluations(solver, options):
    """``report.model_evaluations`` against the denoiser's own count (a host callback adding the
    rows of every call): the guard with its second pass and without, a solver of two calls a step
    (heun, NFE 2N - 1), chunked, and the local target's held-out reference."""
    count = []

    def counting(x, sigma):
        jax.debug.callback(lambda rows: count.append(int(rows)), x.shape[0])
        return DENOISER(x, sigma)

    options = dict(options)
    in_order = options.pop("in_order")
    judge = iia_jax.Judge(lambda candidate, base: (distance(candidate, base), 0.0), in_order=in_order)
    plan = iia_jax.plan(solver, schedules.karras(6 if solver == "euler" else 4, 0.01, SIGMA_MAX))
    res = iia_jax.fit(counting, plan, X_T, fine_steps=4, quality=judge, progress=False, **options)
    jax.effects_barrier()
    assert res.report.quality_dropped and res.report.model_evaluations == sum(count) > 0


def test_distance_z_ranks_by_the_distance_alone():
    """``iia_jax.iia.guard.distance_z``, the rank of ``IN_ORDER_JUDGE``: the reference MMD's
    difference over its se, 0 for the base against itself, and blind to the spread floor (a
    candidate shrunk toward the mean, flatter than the floor allows, is vetoed by the verdict but
    still ranked by its distance)."""
    from iia_jax.iia.guard import distance_z, reference_mmd, reference_verdict
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 8))
    base = ref + 0.3 * rng.normal(size=ref.shape)
    shrunk = 0.8 * ref
    assert distance_z(base, base, ref) == 0.0
    d, se = reference_mmd(shrunk, base, ref)
    assert distance_z(shrunk, base, ref) == pytest.approx(d / se)
    assert reference_verdict(shrunk, base, ref)[0] > 1.0      # the floor vetoes the shrink
    assert iia_jax.iia.IN_ORDER_JUDGE.rank is distance_z and iia_jax.iia.IN_ORDER_JUDGE.in_order
