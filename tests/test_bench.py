"""The benchmark's peer adapters against independent references, and a miniature bench run.

* A diffusers DDIM scheduler stepping an exact mixture through :mod:`iia_jax.bench.peers` is the
  Euler step in sigma-space (docs/design.md §2), so it must equal our ``euler`` on the same grid.
* diffusers' Euler (sigma-space, ``scale_model_input``) must equal it too; DPM-Solver++ 2M, UniPC
  and Heun must equal our ``dpmpp_2m`` (Lu et al. 2022), ``unipc`` (Zhao et al. 2023) and ``heun``
  (Karras et al. 2022, Euler on the last step), the same algorithms.
* diffrax Euler and Heun on ``dx/dsigma = (x - D)/sigma`` must equal our euler and heun (EDM's
  Heun ends with an Euler step, as the diffrax peer does), with the NFE each claims, counted here
  by a callback on every model call.
* A miniature ``main`` run writes its table and plot, and ``--replot`` writes up its saved raw
  results, also when cut short.
* The goal counts a peer as beaten on its best and on its default grid (hand-made rows).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("diffusers")
diffrax = pytest.importorskip("diffrax")

import iia_jax  # noqa: E402
from iia_jax.bench import accuracy, grids, main, models, peers, report  # noqa: E402

TOL = 2e-4   # float32 (ours) vs float64 (diffusers) over a trajectory starting at |x| ~ 80


@pytest.fixture(scope="module")
def setup():
    m = models.separated_mixture()
    x_T = m.sigma_max * np.asarray(jax.random.normal(jax.random.PRNGKey(0), (16,) + m.shape))
    return m, x_T, peers.eps_function(m.denoiser)


@pytest.mark.parametrize("peer,solver", [("DDIM", "euler"), ("Euler", "euler"), ("DPM++2M", "dpmpp_2m"),
                                         ("UniPC", "unipc"), ("Heun", "heun")])
@pytest.mark.parametrize("grid", ["karras", "vp_quadratic"])
def test_diffusers_peer_equals_our_solver(setup, peer, solver, grid):
    m, x_T, eps = setup
    sigmas = grids.grid(grid, 6, m.sigma_min, m.sigma_max)
    p = peers.DIFFUSERS_BY_NAME[peer]
    np.testing.assert_allclose(peers.peer_grid(p, sigmas), sigmas, rtol=1e-6)  # the peer steps on our grid
    theirs, nfe = peers.run_diffusers(p, eps, sigmas, x_T)
    plan = iia_jax.plan(solver, sigmas)
    ours = iia_jax.sample(m.denoiser, plan, jnp.asarray(x_T))
    assert nfe == plan.nfe
    np.testing.assert_allclose(theirs, np.asarray(ours), rtol=TOL, atol=TOL)


def _counting(denoiser, calls):
    def counted(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return denoiser(x, sigma)
    return counted


@pytest.mark.parametrize("name,solver", [("diffrax Euler", "euler"), ("diffrax Heun", "heun")])
def test_diffrax_peer_equals_our_solver(setup, name, solver):
    m, x_T, _ = setup
    sigmas = jnp.asarray(grids.grid("karras", 5, m.sigma_min, m.sigma_max))
    calls = []
    x0, nfe = peers.diffrax_fixed(name, _counting(m.denoiser, calls), sigmas, jnp.asarray(x_T))
    p = iia_jax.plan(solver, sigmas)
    assert nfe == len(calls) == p.nfe
    np.testing.assert_allclose(np.asarray(x0), np.asarray(iia_jax.sample(m.denoiser, p, jnp.asarray(x_T))),
                               rtol=1e-5, atol=1e-5)


def test_diffrax_nfe_claims_match_counted_calls(setup):
    """Bosh3 (FSAL) and adaptive Tsit5 report the model calls they make."""
    m, x_T, _ = setup
    calls = []
    sigmas = jnp.asarray(grids.grid("logsnr_uniform", 4, m.sigma_min, m.sigma_max))
    _, nfe = peers.diffrax_fixed("diffrax Bosh3", _counting(m.denoiser, calls), sigmas, jnp.asarray(x_T))
    assert nfe == len(calls) == 3 * 4 - 1
    calls.clear()
    _, nfe = peers.diffrax_adaptive(_counting(m.denoiser, calls), m.sigma_min, m.sigma_max,
                                    jnp.asarray(x_T[:1]), 0.1)
    assert int(nfe[0]) == len(calls) > 8


def test_miniature_bench_writes_table_and_plot(tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--models", "separated", "--nfe", "4", "6", "--grids",
            "karras", "--solvers", "euler", "--peers", "DDIM", "diffrax Euler", "--batch", "16",
            "--sections", "accuracy"]
    assert main(args) == 0
    text = (tmp_path / "benchmarks.md").read_text()
    assert "cut short" not in text
    assert (tmp_path / "bench_error_vs_nfe.png").stat().st_size > 10_000
    for needle in ("## Goals", "euler + IIA", "| DDIM |", "| diffrax Euler |", "Machine", "Versions",
                   "PRNGKey(1)"):
        assert needle in text, needle
    # every table row of the error table has a value at both NFE
    row = next(line for line in text.splitlines() if line.startswith("| euler + IIA | karras |"))
    assert row.count("—") == 0
    # a run cut short (here: before its rows) still leaves raw results that --replot writes up, saying so
    raw = tmp_path / "bench_results_quick.json"
    saved = json.loads(raw.read_text())
    assert len(saved["results"]["rows"]) == 2 * 4   # euler base + IIA, DDIM, diffrax Euler at NFE 4 and 6
    saved["results"]["rows"] = []
    # the machine is the run's, as recorded, not that of whoever replots it
    assert f"**Machine**: {saved['results']['machine']};" in text
    saved["results"]["machine"] = "the measuring machine"
    raw.write_text(json.dumps(saved))
    assert main(args + ["--replot", str(raw)]) == 0
    replotted = (tmp_path / "benchmarks.md").read_text()
    assert "cut short: no model separated" in replotted
    assert "**Machine**: the measuring machine;" in replotted


def _row(family, method, grid, median, nfe=5, variant=""):
    return accuracy.Row("m", family, method, variant, grid, nfe, median, median)


def test_goal_counts_each_peer_on_its_best_and_its_default_grid():
    """IIA 0.1 beats DDIM on Karras (0.2) and on its default time_uniform grid (0.3), but not on
    quadratic (0.05), its best grid; diffrax Euler (default Karras) is beaten everywhere."""
    rows = [_row("IIA", "euler", "karras", 0.1, variant="defaults"), _row("IIA", "euler", "karras", 0.5, nfe=20),
            _row("diffusers", "DDIM", "karras", 0.2), _row("diffusers", "DDIM", "vp_time_uniform", 0.3),
            _row("diffusers", "DDIM", "vp_quadratic", 0.05), _row("diffrax", "diffrax Euler", "karras", 0.4),
            _row("diffrax", "diffrax Euler", "vp_quadratic", 0.15)]
    (goal,) = report.goal_rows(rows, "m", (5, 20))       # NFE 20 is above the goal's NFE
    assert (goal.nfe, goal.ours.median, goal.top.method, goal.top.grid) == (5, 0.1, "DDIM", "vp_quadratic")
    assert (goal.beaten_best, goal.peers, goal.beaten_default, goal.on_default) == (1, 2, 2, 2)
    assert not goal.met
    rows[4] = _row("diffusers", "DDIM", "vp_quadratic", 0.11)
    assert report.goal_rows(rows, "m", (5,))[0].met


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        main(["--solvers", "no_such_solver", "--sections", "accuracy"])
    with pytest.raises(ValueError, match="grid must be one of"):
        grids.grid("cosine", 5, 0.002, 80.0)


# ----------------------------------------------------------------------------- the harness

from iia_jax.bench import harness, provenance  # noqa: E402
from iia_jax.metrics import ode_error  # noqa: E402


@pytest.mark.parametrize("solver", sorted(iia_jax.solvers.SOLVERS))
def test_steps_for_inverts_the_solvers_nfe(solver):
    """Against brute force over ``solvers.get(name).nfe``: the most steps (>= 2) not above the
    NFE, and with ``exact`` only an NFE the solver really takes."""
    nfe_of = iia_jax.solvers.get(solver).nfe
    for nfe in range(1, 40):
        fits = [n for n in range(2, 60) if nfe_of(n) <= nfe]
        assert grids.steps_for(nfe, solver) == (max(fits) if fits else None), nfe
        exact = [n for n in range(2, 60) if nfe_of(n) == nfe]
        assert grids.steps_for(nfe, solver, exact=True) == (exact[0] if exact else None), nfe


def test_steps_for_a_peers_count():
    """diffrax Bosh3 makes 3 calls a step, 1 before the first and 1 for the last jump: 3N - 1
    (counted by a callback in test_diffrax_nfe_claims_match_counted_calls)."""
    def bosh3(n):
        return peers.diffrax_nfe("diffrax Bosh3", n)
    assert [bosh3(n) for n in (2, 3, 4)] == [5, 8, 11]
    assert grids.steps_for(11, bosh3, exact=True) == 4
    assert grids.steps_for(12, bosh3, exact=True) is None
    assert grids.steps_for(12, bosh3) == 4


def test_run_batched_equals_one_call(setup):
    m, x_T, _ = setup
    p = iia_jax.plan("dpmpp_2m", grids.grid("karras", 4, m.sigma_min, m.sigma_max))
    whole = np.asarray(iia_jax.sample(m.denoiser, p, jnp.asarray(x_T)))
    np.testing.assert_allclose(harness.base_samples(m.denoiser, p, x_T, batch=5), whole, rtol=1e-6, atol=1e-6)
    labels = np.arange(len(x_T))
    np.testing.assert_array_equal(harness.run_batched(lambda x, c: x[:, 0] * c, x_T, labels, batch=3),
                                  x_T[:, 0] * labels)
    with pytest.raises(ValueError, match="same number of rows"):
        harness.run_batched(lambda x, c: x, x_T, labels[:3])
    with pytest.raises(ValueError, match="batch must be"):
        harness.run_batched(lambda x: x, x_T, batch=0)


def test_draws_use_the_stated_keys():
    d = harness.draws(3, (2,), 5, 4, 80.0)
    k_fit, k_eval = jax.random.split(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(d.fit, 80.0 * jax.random.normal(k_fit, (4, 2)))
    np.testing.assert_array_equal(d.eval, 80.0 * jax.random.normal(k_eval, (5, 2)))
    c = harness.draws(3, (2,), 5, 4, 80.0, keys="consecutive")
    np.testing.assert_array_equal(c.fit, 80.0 * jax.random.normal(jax.random.PRNGKey(3), (4, 2)))
    np.testing.assert_array_equal(c.eval, 80.0 * jax.random.normal(jax.random.PRNGKey(4), (5, 2)))
    with pytest.raises(ValueError, match="keys must be"):
        harness.draws(3, (2,), 5, 4, 80.0, keys="random")


def test_compare_is_fit_sample_and_ode_error():
    """Reference, base, fit and IIA of the harness against the library called directly."""
    m = models.separated_mixture()
    noise = harness.draws(0, m.shape, 32, 64, m.sigma_max)
    prob = harness.problem(m.denoiser, noise, 16, m.sigma_min, m.sigma_max, check_reference=True)
    fine = [iia_jax.sample(m.denoiser, iia_jax.plan("heun", grids.grid("karras", n, m.sigma_min, m.sigma_max)),
                           noise.eval) for n in (8, 16)]
    np.testing.assert_allclose(prob.reference, np.asarray(fine[1]), rtol=1e-6, atol=1e-6)
    assert prob.reference_error == pytest.approx(ode_error(fine[0], fine[1]).median, rel=1e-4)
    p = harness.plan_for("euler", 4, m.sigma_min, m.sigma_max)
    c = harness.compare(prob, p, fine_steps=2, history=0)
    direct = iia_jax.fit(m.denoiser, p, noise.fit, fine_steps=2, history=0, progress=False)
    np.testing.assert_array_equal(np.asarray(c.result.coeffs.values), np.asarray(direct.coeffs.values))
    iia = np.asarray(iia_jax.iia_sample(m.denoiser, p, direct.coeffs, noise.eval))
    base = np.asarray(iia_jax.sample(m.denoiser, p, noise.eval))
    assert c.iia_error.median == pytest.approx(ode_error(iia, fine[1]).median, rel=1e-4)
    assert c.base_error.median == pytest.approx(ode_error(base, fine[1]).median, rel=1e-4)
    assert c.kept == f"{int(np.sum(direct.report.kept))}/4"


def test_save_json_carries_provenance(tmp_path):
    path = tmp_path / "r.json"
    provenance.save_json(path, {"rows": [1.5]}, "python benchmarks/x.py --smoke")
    saved = json.loads(path.read_text())
    assert saved["rows"] == [1.5]
    meta = saved["provenance"]
    assert meta["command"] == "python benchmarks/x.py --smoke"
    assert "jax " in meta["versions"] and "CPU" in meta["machine"] and meta["revision"]
    started = dict(meta, revision="0000000", date="2026-01-01 00:00 UTC")   # taken when a run began
    provenance.save_json(path, {"rows": []}, "python benchmarks/x.py --smoke", meta=started)
    assert json.loads(path.read_text())["provenance"] == started


def test_a_saved_run_is_credited_to_its_own_machine():
    """A page rewritten on another machine names the one whose numbers it shows."""
    meta = dict(machine="Linux 6.1, Intel(R) Xeon(R) Processor, 2 CPU cores visible, jax backend cpu (cpu), "
                        "Python 3.11.7", versions="jax 0.9.0, jaxlib 0.9.0, torch 2.1.0+cpu, diffusers 0.30.0")
    assert provenance.setup_line(meta) == ("2-core Intel(R) Xeon(R) Processor, jax on cpu; jax 0.9.0, diffusers 0.30.0, "
                                           "diffrax none, torch 2.1.0+cpu")
    here = provenance.provenance("x")
    assert provenance.setup_line(here) == f"{provenance.machine_short()}; {provenance.versions_short()}"


def test_table_aligns_columns():
    assert report.table(["solver", "NFE"], [["euler", 5]], "lr") == ["| solver | NFE |", "|---|---:|", "| euler | 5 |"]
    with pytest.raises(ValueError, match="align has 3 columns"):
        report.table(["solver", "NFE"], [], "lrr")


def test_few_steps_is_a_bench_command_that_rewrites_its_page_from_saved_results(tmp_path):
    """``iia-jax bench few-steps --table`` writes the page from the saved results alone (no samples on
    disk: the saved verdicts stand), and a missing results file is a clear error naming it."""
    from iia_jax.bench import few_steps
    saved = json.loads((Path(__file__).resolve().parents[1] / "docs" / "few_steps.json").read_text())
    (tmp_path / "few_steps.json").write_text(json.dumps(saved))
    args = ["few-steps", "--table", "--out", str(tmp_path), "--samples", str(tmp_path / "no_samples")]
    assert main(args) == 0
    page = (tmp_path / "few_steps.md").read_text()
    for v in saved["verdicts"]:
        assert f"| {v['nfe']} | {v['iia']}" in page and f"{v['diff']:+.1f} +- {v['diff_se']:.1f}" in page
    assert "iia-jax bench few-steps" in page
    # rows that carry their difference to the best peer are drawn, and the page shows the plot
    for r in saved["rows"]:
        r["vs_best_peer"] = [r["score"] - min(q["score"] for q in saved["rows"] if q["nfe"] == r["nfe"]), 1.0]
    (tmp_path / "few_steps.json").write_text(json.dumps(saved))
    assert main(args) == 0
    assert "![few_steps.png](few_steps.png)" in (tmp_path / "few_steps.md").read_text()
    assert (tmp_path / "few_steps.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["few-steps", "--table", "--out", str(tmp_path / "empty")])
    # the verdict needs both: quality beyond 2 se and the lower ODE error
    v = dict(diff=-3.0, diff_se=1.0, iia_median=0.1, peer_median=0.2)
    assert few_steps.verdict(v) == "**IIA wins**"
    assert few_steps.verdict(dict(v, iia_median=0.3)) == "quality to IIA, ODE error to the peer"
    assert few_steps.verdict(dict(v, diff=1.0)) == "tie"
    assert few_steps.verdict(dict(v, diff=2.5)) == "**peer wins**"
    # a tie where even the model's own samples do not beat the peer by 2 se is the judge's floor
    assert few_steps.verdict(dict(v, diff=1.0, ceiling=[-1.5, 1.0])) == "tie at the judge's floor"
    assert few_steps.verdict(dict(v, diff=1.0, ceiling=[-4.5, 1.6])) == "tie"
    assert few_steps.verdict(dict(v, ceiling=[-1.5, 1.0])) == "**IIA wins**"


def test_few_steps_ceiling_is_the_model_own_samples_against_the_best_peer(tmp_path):
    """``--ceiling`` samples the model's 64-step reference and each NFE's best peer from the
    evaluation noise again and sets each verdict's ceiling to their paired digits_score difference;
    both are rebuilt here independently of the bench module (heun, 64 Karras steps; iPNDM, 3 steps
    on the VP-quadratic grid)."""
    from iia_jax import pretrained, schedules
    from iia_jax.bench import few_steps
    from iia_jax.metrics import score_difference
    n = 24
    rows = [dict(nfe=3, kind="peer", method="ipndm (ours, base)", grid="vp_quadratic", score=1.0,
                 median=0.1, file="3_ipndm_vp_quadratic.npy"),
            dict(nfe=3, kind="peer", method="ipndm (ours, base)", grid="karras", score=9.0, median=0.3,
                 file="3_ipndm_karras.npy"),
            dict(nfe=3, kind="iia", method="euler + IIA", grid="vp_quadratic", score=0.5, median=0.05,
                 file="3_euler_iia.npy", kept=[0], fit_s=1.0, real_nfe=3)]
    D, x = pretrained.digits(), 80.0 * jax.random.normal(jax.random.PRNGKey(21), (n, 8, 8, 1))
    iia = np.asarray(iia_jax.sample(D, iia_jax.plan("euler", schedules.vp_quadratic(3, 0.002, 80.0)), x))
    (tmp_path / "s").mkdir()
    np.save(tmp_path / "s" / "3_euler_iia.npy", iia)      # the best IIA row's samples: not fitted again
    saved = dict(n=n, rows=rows, nfes=[3], reference_score=0.0, verdicts=[
        dict(nfe=3, iia="euler + IIA, vp_quadratic", peer="ipndm (ours, base), vp_quadratic", diff=-1.0,
             diff_se=1.0, iia_median=0.05, peer_median=0.1, fit_s=1.0, real_nfe=3)],
        provenance=dict(command="c", date="d", machine="m", versions="v", revision="r"))
    (tmp_path / "few_steps.json").write_text(json.dumps(saved))
    assert main(["few-steps", "--ceiling", "--out", str(tmp_path), "--samples", str(tmp_path / "s")]) == 0
    res = json.loads((tmp_path / "few_steps.json").read_text())
    ref = iia_jax.sample(D, iia_jax.plan("heun", schedules.karras(64, 0.002, 80.0)), x)
    peer = iia_jax.sample(D, iia_jax.plan("ipndm", schedules.vp_quadratic(3, 0.002, 80.0)), x)
    np.testing.assert_allclose(res["verdicts"][0]["ceiling"], score_difference(np.asarray(ref), np.asarray(peer),
                                                                               paired=True), rtol=1e-3)
    assert not (tmp_path / "s" / "3_ipndm_karras.npy").exists()     # only the best peer is sampled
    # what a win needs: the best IIA row's samples moved back toward the reference, against the best peer
    ref, peer = np.asarray(ref), np.asarray(peer)
    for (t, median, d, se), want_t in zip(res["verdicts"][0]["toward"], few_steps.TOWARD):
        moved = ref + want_t * (iia - ref)
        assert t == want_t
        np.testing.assert_allclose(median, want_t * np.median(np.sqrt(np.mean((iia - ref) ** 2, axis=(1, 2, 3)))),
                                   rtol=1e-3)
        np.testing.assert_allclose([d, se], score_difference(moved, peer, paired=True), rtol=1e-3)
    tie = dict(res["verdicts"][0], diff=-1.0, diff_se=1.0, ceiling=[-5.0, 1.0])
    assert "| 3 | euler + IIA, vp_quadratic | 0.5 |" in "\n".join(few_steps.toward_section([tie]))
    assert few_steps.toward_section([dict(tie, ceiling=[-1.0, 1.0])]) == []     # at the floor: nothing to need
    assert "the model's own samples - peer" in (tmp_path / "few_steps.md").read_text()
    assert res["ceiling_run"]["command"].startswith("iia-jax bench few-steps --ceiling")


def test_few_steps_saves_each_nfe_as_it_ends_and_credits_every_run(tmp_path, monkeypatch):
    """A run saves its results after every NFE, so one cut short keeps what it finished; a later
    run of the other NFEs keeps those rows and names the run that made each NFE on the page.  The
    samples here are stand-ins (the reference plus noise) from a Gaussian's exact denoiser."""
    from iia_jax.bench import few_steps
    monkeypatch.setattr(few_steps.pretrained, "digits", lambda: (lambda x, sigma: x / (1.0 + sigma ** 2)))
    monkeypatch.setattr(few_steps, "target_ladders", lambda denoiser, x, ref: {})
    cut_at = {"nfe": None}

    def rows_at(denoiser, nfe, x, x_fit, ref, samples):
        if nfe == cut_at["nfe"]:
            raise KeyboardInterrupt
        rng, rows = np.random.default_rng(nfe), []
        for kind, spread in (("peer", 1.0), ("iia", 0.05)):
            s = np.clip(ref + spread * rng.standard_normal(ref.shape), -1, 1)
            np.save(samples / f"{nfe}_{kind}.npy", s)
            rows.append(dict(nfe=nfe, kind=kind, method=kind, grid="karras", score=few_steps.digits_score(s),
                             median=float(np.median(np.abs(s - ref))), file=f"{nfe}_{kind}.npy", fit_s=1.0,
                             kept=[0], real_nfe=nfe))
        return rows

    monkeypatch.setattr(few_steps, "rows_at", rows_at)
    out, samples = tmp_path / "out", tmp_path / "samples"
    run = lambda *nfes: few_steps.main(["--out", str(out), "--samples", str(samples), "--n", "96",  # noqa: E731
                                        "--nfes", *map(str, nfes)])
    assert run(3, 4) == 0
    cut_at["nfe"] = 8
    with pytest.raises(KeyboardInterrupt):
        run(6, 8)
    saved = json.loads((out / "few_steps.json").read_text())
    assert saved["nfes"] == [6] and {r["nfe"] for r in saved["rows"]} == {3, 4, 6}
    assert [r["nfes"] for r in saved["runs"]] == [[3, 4]]
    cut_at["nfe"] = None
    assert run(8) == 0
    saved = json.loads((out / "few_steps.json").read_text())
    assert [r["nfes"] for r in few_steps.runs(saved)] == [[8], [6], [3, 4]]
    assert [v["nfe"] for v in saved["verdicts"]] == [3, 4, 6, 8]
    page = (out / "few_steps.md").read_text()
    assert "# IIA against the peers at NFE 3-8" in page
    for made in ("NFE 8 made by", "NFE 6 made by", "NFE 3, 4 made by"):
        assert made in page
    assert all(len(v["target"]) == 2 for v in saved["verdicts"]) and all("target" in r for r in saved["rows"])
    # the rows the true-target view picks itself: here the IIA stand-in, far nearer than the peer's
    for v in saved["verdicts"]:
        near = v["nearest"]
        assert (near["iia"], near["peer"]) == ("iia, karras", "peer, karras")
        assert near["target"][0] < 0 and near["iia_median"] < near["peer_median"]
    assert "| nearest IIA, its grid |" in page


def test_the_true_target_view_ranks_blur_against_the_models_own_samples():
    """``to_target`` on digits standing in for the model's samples: the samples themselves are at 0
    exactly, a light blur is farther, a heavy one farther still, by more than 2 se."""
    from iia_jax.bench import few_steps
    from iia_jax.metrics.fd import corrupt_blur
    from iia_jax.metrics.quality import digits_split
    ref = digits_split("test")
    light, heavy = corrupt_blur(ref, 0.5), corrupt_blur(ref, 1.5)
    assert few_steps.to_target(ref, ref, ref) == [0.0, 0.0]
    d, se = few_steps.to_target(light, ref, ref)
    assert d > 2 * se
    v = dict(target=few_steps.to_target(light, heavy, ref))
    assert v["target"][0] < -2 * v["target"][1] and few_steps.target_verdict(v) == "**IIA nearer**"
    assert few_steps.target_verdict(dict(target=few_steps.to_target(heavy, light, ref))) == "**peer nearer**"


def test_a_rerun_replaces_its_models_and_an_earlier_rerun_of_them(monkeypatch, tmp_path):
    """``--replot RAW --rerun --models digits``: digits' rows are the new run's, the other models'
    stay, and an earlier rerun of the same models and sections drops out with its time."""
    import argparse
    from iia_jax.bench import runner
    cfg = runner.config(argparse.Namespace(quick=True, out=str(tmp_path), models=["digits"], grids=None, nfe=None,
                                           solvers=None, peers=None, batch=None, sections=["accuracy"],
                                           pairs=None))
    row = lambda model, median: accuracy.Row(model, "ours", "euler", "base", "karras", 5, median, median)
    earlier = dict(started="s0", seconds=30.0, revision="r0", command="--rerun", models=["digits"],
                   sections=["accuracy"])
    old = dict(rows=[row("separated", 1.0), row("digits", 2.0)], extra={"digits": {"seconds": 30.0}},
               seconds=100.0, load=[1.0], reruns=[earlier])
    new = dict(rows=[row("digits", 3.0)], extra={"digits": {"seconds": 40.0}}, seconds=40.0, load=[2.0],
               started="s1", revision="r1", speed={}, fitcost={}, speed_model="digits", machine_short="m1")
    monkeypatch.setattr(runner, "run", lambda cfg, log, save: (save(new), new)[1])
    merged, command = runner.rerun(cfg, old, "python -m iia_jax.bench", ["--rerun", "--models", "digits"])
    assert [(r.model, r.median) for r in merged["rows"]] == [("separated", 1.0), ("digits", 3.0)]
    assert merged["seconds"] == 100.0 - 30.0 + 40.0
    assert [r["started"] for r in merged["reruns"]] == ["s1"]
    assert command.endswith("then python -m iia_jax.bench --rerun --models digits")


def test_median_interval_is_the_sign_test_interval_and_covers_the_median():
    from iia_jax.bench.speed import median_interval
    values = np.arange(1.0, 26.0)
    # n = 25 at 95 %: the 8th and 18th order statistics (the sign test's tables)
    assert median_interval(values) == (8.0, 18.0)
    assert median_interval(np.arange(5.0)) == (0.0, 4.0)   # too few for 95 %: the extremes
    rng = np.random.default_rng(0)
    draws = rng.lognormal(0.0, 0.5, size=(2000, 25))       # true median 1
    covered = np.mean([lo <= 1.0 <= hi for lo, hi in map(median_interval, draws)])
    assert 0.95 <= covered <= 0.99                          # exact coverage at n = 25: 0.957


def test_overhead_verdict_reads_the_medians_interval():
    from iia_jax.bench.speed import within_limit as _within
    row = dict(ratio=1.01, q25=0.96, q75=1.06)
    assert _within({**row, "ci_lo": 1.0, "ci_hi": 1.02}, 1.03) == "yes"
    assert _within({**row, "ci_lo": 1.04, "ci_hi": 1.08}, 1.03) == "**no**"
    assert _within({**row, "ci_lo": 1.0, "ci_hi": 1.04}, 1.03).startswith("inconclusive")
    assert _within(row, 1.03).startswith("inconclusive")    # saved without an interval: the IQR


def test_captions_name_the_machine_that_measured_their_rows():
    from iia_jax.bench.markdown import measured_on
    meta = dict(machine_short="A", reruns=[
        dict(models=["digits"], sections=["accuracy"], machine="B"),
        dict(models=["digits"], sections=["speed"], machine="C"),
        dict(models=["overlapping"], sections=["accuracy"])])          # an older rerun: machine unknown
    assert measured_on(meta, models=("separated",)) == "A"
    assert measured_on(meta, models=("digits",)) == "B"
    assert measured_on(meta, section="speed") == "C"
    assert measured_on(meta, section="fitcost") == "A"
    assert measured_on(meta, models=("separated", "overlapping", "digits")) == \
        "separated on A; overlapping on machine not recorded; digits on B"
    assert measured_on(dict(machine_short="A"), models=("separated", "digits")) == "A"


def test_the_true_target_ladder_rule_passes_a_known_order_and_fails_a_mislabelled_one():
    """``judge_ladder`` by docs/metrics.md's rule on real digits against themselves: blur of known
    size passes (ties of blur the quantised judge cannot see are no inversion); the same images
    labelled in the wrong order fail, and so does a ladder whose ends are too close to tell."""
    from iia_jax.bench import few_steps
    from iia_jax.metrics.fd import corrupt_blur
    from iia_jax.metrics.quality import digits_split
    real = digits_split("test")
    sizes = (0, 0.3, 0.7, 1.0)
    rungs = [(b, corrupt_blur(real, b) if b else real) for b in sizes]
    good = few_steps.judge_ladder("blur px", rungs, real)
    assert good["passed"] and good["ends"] > 2 and good["z"] >= -2
    assert good["target"][0] == [0.0, 0.0] and good["target"][-1][0] > 2 * good["target"][-1][1]
    swapped = [(p, im) for (p, _), (_, im) in zip(rungs, rungs[::-1])]
    bad = few_steps.judge_ladder("blur px", swapped, real)
    assert not bad["passed"] and bad["z"] < -2
    flat = few_steps.judge_ladder("blur px", rungs[:2], real)     # 0.3 px is invisible after quantising
    assert not flat["passed"] and flat["ends"] <= 2
    # contrast is judged on each side of 1: both sides must rise
    mean = real.mean(0, keepdims=True)
    contrast = few_steps.judge_ladder("factor", [(f, mean + f * (real - mean)) for f in (0.8, 1.0, 1.25)], real)
    assert contrast["passed"]
