"""``FitConfig``: the fit's options as one frozen, self-checking object with pluggable pieces.

References: the keyword form of the same fit (the config must reproduce it exactly), a plain
least-squares solve written out here with ``numpy.linalg.lstsq`` on a step's own rows, and a
denoiser that counts its calls (a bad option must fail before the first one).
"""
import dataclasses
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import FitConfig, Judge, MatchedSolve, PlainSolve, schedules
from iia_jax.models import gmm
from iia_jax.rows import make_layout, split_batch, split_indices

SIGMA_MAX = 20.0
DENOISER = gmm(np.array([[1.5, 0.0], [-1.5, 0.5], [0.0, -1.5]], np.float32), 0.3)
PLAN = iia_jax.plan("euler", schedules.karras(4, 0.01, SIGMA_MAX))
X_T = SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(0), (128, 2))


def test_defaults_are_the_documented_ones():
    c = FitConfig()
    assert (c.preset, c.history, c.fine_steps, c.mode, c.target, c.holdout, c.chunk_size, c.spill_dir,
            c.spill_above) == (None, 1, 16, "sequential", None, 0.25, None, None, 16 * 2**20)
    assert c.solve == MatchedSolve(1e-4) and c.match_spread and c.ridge == 1e-4
    assert c.judge is iia_jax.iia.REFERENCE_JUDGE and c.judge.reference and c.judge.z == 1.0
    assert FitConfig(holdout=0.0).judge is None     # no held-out rows: no checks, knowingly
    assert c.target_for("heun") == iia_jax.iia.DEFAULT_TARGET["heun"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.fine_steps = 3


def test_the_carried_state_spills_where_and_when_the_config_says(tmp_path):
    """``spill_dir`` wins; by default a state of several chunks above ``spill_above`` bytes goes to
    the system's temporary folder; one chunk, a smaller state or ``spill_above=None`` stay in memory."""
    big = FitConfig().spill_above + 1
    assert FitConfig(spill_dir=tmp_path).spill_folder(1, 1) == tmp_path
    assert FitConfig().spill_folder(big, 2) == tempfile.gettempdir()
    assert FitConfig().spill_folder(big - 1, 2) is None and FitConfig().spill_folder(big, 1) is None
    assert FitConfig(spill_above=None).spill_folder(10 * big, 8) is None
    assert FitConfig(spill_above=0).spill_folder(1, 2) == tempfile.gettempdir()


@pytest.mark.parametrize("kwargs, match", [
    (dict(fine_steps=1), "fine_steps"), (dict(fine_steps=2.0), "fine_steps"),
    (dict(history=True), "history"), (dict(mode="greedy"), "mode"), (dict(target="x"), "target"),
    (dict(holdout=1.0), "holdout"), (dict(holdout=0.01), "holdout"),   # rounds to 0 of 32
    (dict(chunk_size=0), "chunk_size"), (dict(preset="nonsense"), "preset"),
    (dict(solve="matched"), "solve"), (dict(judge=lambda a, b: (0.0, 1.0)), "judge"),
    (dict(holdout=0.0, judge=Judge(lambda a, b: (0.0, 1.0))), "held-out"),   # would never run
    (dict(spill_dir="/no/such/folder"), "spill_dir"), (dict(spill_dir=3), "spill_dir"),
    (dict(spill_dir=".", mode="teacher_forced"), "spill_dir"),   # carries nothing between steps
    (dict(spill_above=-1), "spill_above"), (dict(spill_above=1.5e6), "spill_above"),
])
def test_bad_options_are_refused_when_built(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FitConfig(**kwargs)


def test_pieces_check_themselves():
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="ridge"):
            PlainSolve(bad)
    with pytest.raises(ValueError, match="iterations"):
        MatchedSolve(1e-4, 0)


def test_numpy_integers_are_taken_like_python_ones():
    c = FitConfig(fine_steps=np.int64(4), history=np.int32(0), chunk_size=np.int16(32))
    assert (c.fine_steps, c.history, c.chunk_size) == (4, 0, 32)
    assert all(type(v) is int for v in (c.fine_steps, c.history, c.chunk_size))


def test_keywords_and_config_give_the_same_fit():
    judge = lambda a, b: (float(np.mean(np.abs(b)) - np.mean(np.abs(a))), 1e-3)  # noqa: E731
    by_keywords = iia_jax.fit(DENOISER, PLAN, X_T, fine_steps=4, ridge=1e-3, match_spread=False,
                              quality=judge, progress=False)
    config = FitConfig(fine_steps=4, solve=PlainSolve(1e-3), judge=Judge(judge))
    by_config = iia_jax.fit(DENOISER, PLAN, X_T, config, progress=False)
    np.testing.assert_array_equal(by_config.coeffs.values, by_keywords.coeffs.values)
    np.testing.assert_array_equal(by_config.report.kept, by_keywords.report.kept)
    assert by_config.report.quality_dropped == by_keywords.report.quality_dropped
    assert not by_config.coeffs.match_spread
    # a keyword that agrees with the config is fine, one that disagrees is refused
    iia_jax.fit(DENOISER, PLAN, X_T, config, fine_steps=4, holdout=0.25, progress=False)
    with pytest.raises(ValueError, match="fine_steps=8 disagrees"):
        iia_jax.fit(DENOISER, PLAN, X_T, config, fine_steps=8)
    with pytest.raises(ValueError, match="match_spread"):
        iia_jax.fit(DENOISER, PLAN, X_T, config, match_spread=True)


def test_the_plain_solve_is_least_squares_on_the_rows():
    """Step 0 of a teacher-forced fit without ridge equals numpy's lstsq on the training rows'
    features and residuals, built here from the exact denoiser (the first step's state is x_T)."""
    config = FitConfig(fine_steps=8, mode="teacher_forced", solve=PlainSolve(0.0), holdout=0.0,
                       history=0)
    got = iia_jax.fit(DENOISER, PLAN, X_T, config, progress=False).coeffs.values[0]
    s0, s1 = (float(s) for s in PLAN.sigmas[:2])
    d = np.asarray(DENOISER(X_T, s0), np.float64)
    x = np.asarray(X_T, np.float64)
    base = x + (s1 - s0) * (x - d) / s0
    fine = np.exp(np.linspace(np.log(s0), np.log(s1), 9))
    y = x
    for a, b in zip(fine[:-1], fine[1:]):
        y = y + (b - a) * (y - np.asarray(DENOISER(jnp.asarray(y, jnp.float32), a), np.float64)) / a
    feats = np.stack([d.reshape(-1), ((x - d) / s0).reshape(-1)], 1)   # iia-ddim: D, eps
    want = np.linalg.lstsq(feats, (y - base).reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-3, atol=1e-5)


def test_fit_plan_refuses_a_bad_option_before_any_model_call():
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return DENOISER(x, sigma)

    for kwargs in (dict(fine_step=8), dict(mode="greedy"), dict(config=FitConfig(), fine_steps=3)):
        with pytest.raises((TypeError, ValueError)):
            iia_jax.fit_plan(counting, "euler", 3, X_T, sigma_min=0.01, sigma_max=SIGMA_MAX,
                             progress=False, **kwargs)
    assert calls == []


@pytest.mark.parametrize("rows, holdout", [(128, 0.25), (37, 0.25), (100, 0.1), (64, 0.0)])
def test_one_split_for_fit_and_fit_plan(rows, holdout):
    """The held-out rows fit reports, the weights of the split and split_indices agree."""
    x = jnp.zeros((rows, 2))
    key = jax.random.PRNGKey(5)
    fit_rows = split_batch(x, None, holdout, 16, key)
    train, held = split_indices(rows, holdout, key)
    np.testing.assert_array_equal(fit_rows.holdout_indices(), held)
    layout = make_layout(rows, holdout, None)
    weights = np.asarray(layout.weights(layout.holdout_positions(key), jnp.float32))[:, :rows]
    np.testing.assert_array_equal(np.flatnonzero(weights[1]), held)
    np.testing.assert_array_equal(np.flatnonzero(weights[0]), train)
    assert train.size + held.size == rows and not set(train) & set(held)


@pytest.mark.parametrize("rows, chunk", [(128, 16), (100, 32), (96, None)])
def test_one_chunk_held_out_rows_are_those_of_all_chunks(rows, chunk):
    """A chunk's held-out rows taken alone (the fit keeps the reference's that way) are the
    chunk's slice of the held-out rows of every chunk, and are the held-out rows of x itself."""
    x = jnp.arange(rows * 3, dtype=jnp.float32).reshape(rows, 3)
    fit_rows = split_batch(x, None, 0.25, chunk, jax.random.PRNGKey(2))
    layout = fit_rows.layout
    chunked = layout.to_chunks(layout.pad(x))
    every = layout.holdout_of_chunks(chunked, fit_rows.positions)
    for c in range(layout.chunks):
        np.testing.assert_array_equal(fit_rows.chunk(c)[0], chunked[c])     # gathered one at a time
        np.testing.assert_array_equal(fit_rows.held(c)[0], every[c])
        np.testing.assert_array_equal(layout.holdout_of_chunk(chunked[c], fit_rows.positions, c), every[c])
    real = np.asarray(fit_rows.hold_weights).reshape(-1) > 0
    held = np.asarray(every).reshape(-1, 3)[real]
    np.testing.assert_array_equal(np.sort(held[:, 0]), np.sort(np.asarray(x)[fit_rows.holdout_indices(), 0]))


def test_the_split_holds_the_batch_itself_not_a_chunked_copy():
    """The fit reads its rows chunk by chunk from the batch as given (one device, padding needed):
    besides it the split keeps a few scalars a row (weights, held-out positions), never a copy of
    the rows, which grew a fit's memory by a row-sized array a row."""
    x = jnp.ones((1000, 64))
    fit_rows = split_batch(x, None, 0.25, 128, jax.random.PRNGKey(0))
    assert fit_rows.layout.padded > 1000 and fit_rows.source[0] is x
    kept = jax.tree_util.tree_leaves((fit_rows.weights, fit_rows.hold_weights, fit_rows.positions))
    assert sum(a.size for a in kept) <= 3 * fit_rows.layout.padded
    assert fit_rows.chunk(0)[0].shape == (fit_rows.layout.chunk_rows, 64)


def _count_compilations():
    """Programs built: compiled, or loaded from the persistent compilation cache (tests/conftest.py),
    which skips the compilation but is as much a new program as one."""
    from jax import monitoring
    counter = {"n": 0}

    def compiled(name, duration, **kwargs):
        counter["n"] += name == "/jax/core/compile/backend_compile_duration"

    def loaded(name, **kwargs):
        counter["n"] += name == "/jax/compilation_cache/cache_hits"

    monitoring.register_event_duration_secs_listener(compiled)
    monitoring.register_event_listener(loaded)
    return counter


COMPILATIONS = _count_compilations()


@pytest.mark.parametrize("options", [dict(), dict(mode="teacher_forced"), dict(chunk_size=32),
                                     dict(mode="teacher_forced", chunk_size=32, match_spread=False),
                                     dict(target="local", quality=lambda a, b: (1.0, 0.5))])
def test_a_second_grid_compiles_nothing(options):
    """Every program a fit runs is compiled once per model, solver, shapes and options: the
    sigmas are data, so fits of two other grids with the same shapes compile nothing."""
    grids = [schedules.karras(4, 0.01, SIGMA_MAX), schedules.logsnr_uniform(4, 0.01, SIGMA_MAX),
             schedules.vp_quadratic(4, 0.01, SIGMA_MAX)]
    counts = []
    for i, grid in enumerate(grids):
        before = COMPILATIONS["n"]
        iia_jax.fit(DENOISER, iia_jax.plan("heun", grid), X_T[:96], fine_steps=4,
                    key=jax.random.PRNGKey(i), progress=False, **options)
        counts.append(COMPILATIONS["n"] - before)
    assert counts[1:] == [0, 0], counts


def _model_traces(solver, fits) -> list:
    """For each ``(x, options)`` in ``fits``, run in order: how often the fit traced the model
    (a call on a tracer), i.e. built a new program that calls it."""
    traces = {"n": 0}

    def denoiser(x, sigma):
        traces["n"] += isinstance(x, jax.core.Tracer)
        return DENOISER(x, sigma)

    plan = iia_jax.plan(solver, schedules.karras(4, 0.01, SIGMA_MAX))
    counts = []
    for x, options in fits:
        before = traces["n"]
        iia_jax.fit(denoiser, plan, x, fine_steps=4, chunk_size=32, progress=False, **options)
        counts.append(traces["n"] - before)
    return counts


@pytest.mark.parametrize("mode", ["sequential", "teacher_forced"])
def test_with_chunk_size_a_bigger_batch_builds_no_program_that_calls_the_model(mode):
    """With ``chunk_size`` one chunk takes the chunked path too, so a fit of three chunks after a
    fit of one traces the model in no new program (only the small row gathers of its layout)."""
    batches = [SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(rows), (rows, 2)) for rows in (32, 96)]
    counts = _model_traces("heun", [(x, dict(mode=mode)) for x in batches])
    assert counts[0] > 0 and counts[1] == 0, counts


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m", "unipc"])
def test_a_fit_whose_state_goes_to_disk_builds_no_program_that_calls_the_model(solver):
    """The state comes back from disk as it went (a scalar stays a scalar), so a fit that spills
    it, after one that kept it in memory, reuses that fit's programs."""
    counts = _model_traces(solver, [(X_T[:96], dict(spill_above=spill_above)) for spill_above in (None, 1)])
    assert counts[0] > 0 and counts[1] == 0, counts


def test_a_second_fit_plan_compiles_nothing():
    """fit_plan's reference, candidates' fits and search programs are compiled once per model,
    solver, options and shapes: a second call with other noise and another key compiles nothing,
    and counts the same evaluations."""
    common = dict(sigma_min=0.01, sigma_max=SIGMA_MAX, families=("karras", "vp_quadratic"), search_steps=2,
                  search_rows=16, reference_steps=16, fine_steps=2, progress=False)
    counts, reports = [], []
    for i in range(2):
        before = COMPILATIONS["n"]
        x = SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(40 + i), X_T[:48].shape)
        reports.append(iia_jax.fit_plan(DENOISER, "euler", 3, x, key=jax.random.PRNGKey(i), **common).report)
        counts.append(COMPILATIONS["n"] - before)
    assert counts[0] > 0 and counts[1] == 0, counts
    assert reports[0].evaluations == reports[1].evaluations
    assert reports[1].evaluations["fit " + reports[1].start] > 0
