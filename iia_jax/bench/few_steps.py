"""IIA against the peers at NFE 3, 4 and 5 (6, 8 and 10 on request) on the shipped digits model,
with enough draws for the quality verdicts to resolve: ``few_steps.md`` beside ``iia-jax bench``'s
report (whose digits rows have too few draws for that).

    iia-jax bench few-steps --out docs              # NFE 3, 4, 5 (about 50 min on 2 CPU cores)
    iia-jax bench few-steps --out docs --nfes 5     # NFE 5 again, the other NFE's rows kept
    iia-jax bench few-steps --out docs --nfes 6 8 10   # the higher NFE too (longer fits)
    iia-jax bench few-steps --out docs --table      # the page from the saved results, nothing run
    iia-jax bench few-steps --out docs --ceiling    # add what the model's own samples win by, and
                                                    # what a win would ask of IIA (minutes)

``python benchmarks/few_steps.py ARGS`` is the same with ``--out docs``.

Setting: evaluation noise ``80 N(0, I)`` (``--n`` draws, ``PRNGKey(21)``), fit noise 1,024 draws
(``PRNGKey(20)``), sigma 80 -> 0.002.  Every method samples the same evaluation noise, so every
difference is paired.

* **Peers**, on the Karras and the VP-quadratic grid (``iia_jax.bench.grids``) at each NFE: the
  ``diffusers`` schedulers DDIM, DPM++2M, DPM++3M, UniPC and DEIS (``iia_jax.bench.peers``, as in
  ``iia-jax bench``) and our iPNDM base.
* **IIA**: every base (euler, heun, dpmpp_2m, dpmpp_3m, unipc, ipndm) on the VP-quadratic grid,
  fitted with the library defaults (``iia_jax.fit(D, plan, x_fit)``: fine_steps 16, the quality
  guard), its fitting time recorded.  Karras is left out: there IIA's median ODE error is 2-11x
  its VP-quadratic cell's for every base at every NFE 3-10 (docs/quality_guard_digits.jsonl, the
  guarantee table's fits).
* **IIA on a fitted grid**: every base with ``iia_jax.fit_plan`` (library defaults on the same 1,024
  fit draws: it ranks the grid families, fits the best, searches the grid from it and returns the
  searched grid only if it beats the family on its judge rows), its fitting time recorded.
* **Judges**: ``digits_score`` (docs/metrics.md; real digits about 0, the model's own 64-step
  samples 0.4 on these draws) with the paired jackknife se of a difference, and the median per-sample ODE
  error against heun with 64 Karras steps from the same noise.  And the sampler's true target,
  the model's own samples (:func:`to_target`): the judge features and kernel of ``digits_score``
  against the 64-step samples of the same noise, a paired U-statistic that leaves out each draw's
  own pair, so a low ODE error alone earns nothing there.  Unlike ``digits_score`` near real
  digits it does not forgive overshoot; :func:`target_ladders` checks it on the ladders of
  docs/metrics.md that have pairs (on the page).

Per NFE the best IIA row that keeps a step (lowest ``digits_score``; a fit that keeps none is its
base sampler) is set against the best peer row (any peer, any of the two grids): a win needs the
paired difference below -2 se *and* a lower median ODE error.  Both bests are picked on the same
draws they are judged on, which flatters each side alike.  Every row's paired difference to its
NFE's best peer, with +- 2 se, is drawn in ``few_steps.png``.  A second pair is the true-target
view's own pick: the IIA row (keeping a step) and the peer row nearest the model's samples, set
against each other there (where ``digits_score`` sits at its floor its pick is the draws' noise).
Results go to ``OUT/few_steps.json`` (samples to ``--samples``, by default ``checkpoints/few_steps/``
under the working directory: in the repository, untracked), the page and plot to
``OUT/few_steps.md`` and ``OUT/few_steps.png``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

import iia_jax
from .. import pretrained, schedules
from ..iia.guard import feature_mmd
from ..metrics import digits_score, ode_error, score_difference
from ..metrics.quality import judge_features
from . import peers, provenance
from .grids import grid, steps_for
from .harness import run_batched

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
NFES = (3, 4, 5, 6, 8, 10)
DEFAULT_NFES = (3, 4, 5)   # the race at few steps; each NFE is saved as it ends
GRIDS = ("karras", "vp_quadratic")
PEERS = ("DDIM", "DPM++2M", "DPM++3M", "UniPC", "DEIS", "ipndm (ours, base)")
IIA_SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")
IIA_GRID = "vp_quadratic"
DEFAULT_OUT = Path("iia_jax_bench")           # as iia-jax bench's own report
DEFAULT_SAMPLES = Path("checkpoints") / "few_steps"
BATCH = 500   # rows per jitted call
# The true-target view's ladders: those of docs/metrics.md that have a paired target (the same draw
# or image unperturbed); its tie of two real sets, (d), has no pairs.
LADDER_CONTRAST = (0.8, 0.9, 0.97, 1.0, 1.03, 1.1, 1.25)   # scaled about the mean image
LADDER_BLUR = (0, 0.3, 0.5, 0.7, 1.0)                       # Gaussian blur, px
LADDER_NOISE = (0, 0.05, 0.1, 0.2, 0.4)                     # pixel noise std (then clipped)
LADDER_HEUN_STEPS = (2, 3, 5, 9, 17, 64)                    # heun at NFE 3 ... 33, and the target
TOWARD = (0.75, 0.5, 0.25)   # the fractions of IIA's own error left by toward_reference


def noise(n: int, seed: int):
    return SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(seed), (n, 8, 8, 1))


def peer_samples(denoiser, name: str, grid_name: str, nfe: int, x):
    """A peer's samples at ``nfe`` on ``grid_name`` (None where it has no such NFE)."""
    if name == "ipndm (ours, base)":
        n = steps_for(nfe, "ipndm", exact=True)
        p = iia_jax.plan("ipndm", grid(grid_name, n, SIGMA_MIN, SIGMA_MAX))
        return run_batched(jax.jit(lambda r: iia_jax.sample(denoiser, p, r)), x, batch=BATCH)
    n = steps_for(nfe, "euler", exact=True)           # every listed peer spends one call a step
    x0, counted = peers.run_diffusers(peers.DIFFUSERS_BY_NAME[name], peers.eps_function(denoiser),
                                      grid(grid_name, n, SIGMA_MIN, SIGMA_MAX), np.asarray(x))
    assert counted == nfe, (name, counted, nfe)
    return x0


def iia_samples(denoiser, solver: str, nfe: int, x_fit, x):
    """``(samples, fit seconds, kept steps, NFE)`` of ``solver`` + IIA (library defaults) at ``nfe``."""
    n = steps_for(nfe, solver)
    p = iia_jax.plan(solver, grid(IIA_GRID, n, SIGMA_MIN, SIGMA_MAX))
    t = time.perf_counter()
    res = iia_jax.fit(denoiser, p, x_fit, progress=False)
    seconds = time.perf_counter() - t
    out = run_batched(jax.jit(lambda r: iia_jax.iia_sample(denoiser, p, res.coeffs, r)), x, batch=BATCH)
    return out, seconds, [int(i) for i in np.flatnonzero(np.asarray(res.coeffs.kept))], p.nfe


def fit_plan_samples(denoiser, solver: str, nfe: int, x_fit, x):
    """``(samples, fit seconds, kept steps, NFE, grid name, sigmas)`` of ``solver`` + IIA on the grid
    :func:`iia_jax.fit_plan` returns (library defaults)."""
    t = time.perf_counter()
    pf = iia_jax.fit_plan(denoiser, solver, steps_for(nfe, solver), x_fit, sigma_min=SIGMA_MIN,
                          sigma_max=SIGMA_MAX, progress=False)
    seconds = time.perf_counter() - t
    out = run_batched(jax.jit(lambda r: iia_jax.iia_sample(denoiser, pf.plan, pf.coeffs, r)), x, batch=BATCH)
    kept = [int(i) for i in np.flatnonzero(np.asarray(pf.coeffs.kept))]
    return out, seconds, kept, pf.plan.nfe, pf.report.chosen, [float(s) for s in np.asarray(pf.plan.sigmas)]


def measure(args, saved: dict | None, save) -> None:
    """Run ``args.nfes`` one NFE after another, calling ``save(results)`` after each (so a run cut
    short keeps the NFEs it finished); the saved rows of the other NFEs are kept."""
    denoiser = pretrained.digits()
    x, x_fit = noise(args.n, 21), noise(1024, 20)
    samples = Path(args.samples)
    samples.mkdir(parents=True, exist_ok=True)
    cache = reference_file(samples, args.n)
    if cache.exists():
        ref = np.load(cache)
    else:
        ref = sample_reference(denoiser, x)
        np.save(cache, ref)
    ladder = target_ladders(denoiser, x, ref)
    rows = [r for r in (saved or {}).get("rows", []) if r["nfe"] not in args.nfes]
    earlier = [dict(run, nfes=[n for n in run["nfes"] if n not in args.nfes]) for run in runs(saved or {})]
    old = {v["nfe"]: v for v in (saved or {}).get("verdicts", [])}
    for done, nfe in enumerate(args.nfes, 1):
        rows += rows_at(denoiser, nfe, x, x_fit, ref, samples)
        # Every compiled program keeps its code mapped (about 20 memory maps each); one process that
        # fitted NFE 3, 4 and 5 compiled enough to reach the kernel's map limit and died in LLVM.
        # The next NFE shares no program with this one, so let them go.
        jax.clear_caches()
        against_best_peer(rows, samples, args.n)
        save(dict(rows=rows, verdicts=compare(rows, old, samples, args.n), n=args.n,
                  reference_score=digits_score(ref), nfes=list(args.nfes[:done]), ladder=ladder,
                  runs=[run for run in earlier if run["nfes"]]))


def rows_at(denoiser, nfe: int, x, x_fit, ref, samples: Path) -> list:
    """Every method's row at ``nfe`` (its samples saved under ``samples``): the peers on both grids,
    then each base with IIA on the VP-quadratic grid and on the grid ``fit_plan`` returns."""
    rows = []

    def add(kind, method, grid_name, s, file, **fit):
        np.save(samples / file, s)
        rows.append(dict(nfe=nfe, kind=kind, method=method, grid=grid_name, score=digits_score(s),
                         median=ode_error(s, ref).median, file=file, **fit))
        how = f" (NFE {fit['real_nfe']}, fit {fit['fit_s']:.0f} s, kept {fit['kept']})" if fit else ""
        print(f"NFE {nfe} {method:26s} {grid_name:12s} score {rows[-1]['score']:7.1f} median "
              f"{rows[-1]['median']:.4f}{how}", flush=True)

    for name in PEERS:
        for g in GRIDS:
            add("peer", name, g, peer_samples(denoiser, name, g, nfe, x), f"{nfe}_{name.split()[0]}_{g}.npy")
    for solver in IIA_SOLVERS:
        s, seconds, kept, real_nfe = iia_samples(denoiser, solver, nfe, x_fit, x)
        add("iia", f"{solver} + IIA", IIA_GRID, s, f"{nfe}_{solver}_iia.npy", fit_s=seconds, kept=kept,
            real_nfe=real_nfe)
    for solver in IIA_SOLVERS:
        s, seconds, kept, real_nfe, grid_name, sigmas = fit_plan_samples(denoiser, solver, nfe, x_fit, x)
        add("fit_plan", f"{solver} + IIA, fit_plan", grid_name, s, f"{nfe}_{solver}_fit_plan.npy", fit_s=seconds,
            kept=kept, real_nfe=real_nfe, sigmas=sigmas)
    return rows


def _nfes(rows: list) -> list:
    return sorted({r["nfe"] for r in rows})


def reference_file(samples: Path, n: int) -> Path:
    """Where a run keeps the model's 64-step samples of its ``n`` evaluation draws."""
    return samples / f"reference_n{n}.npy"


def sample_reference(denoiser, x):
    """The model's own samples of ``x``: heun with 64 Karras steps, every judge's target."""
    rp = iia_jax.plan("heun", schedules.karras(64, SIGMA_MIN, SIGMA_MAX))
    return run_batched(jax.jit(lambda r: iia_jax.sample(denoiser, rp, r)), x, batch=BATCH)


def _reference_samples(samples: Path, n: int):
    f = reference_file(samples, n)
    return np.load(f) if f.exists() else None


def to_target(a, b, ref) -> list:
    """``[d, se]``: 1000 x (MMD^2(a, ref) - MMD^2(b, ref)) in the judge's features (KID's kernel),
    paired over the draws (row ``i`` of all three from the same noise; the U-statistic leaves out
    the pairs of one draw, :func:`iia_jax.iia.guard.feature_mmd`).  Negative: ``a`` is nearer the
    model's own samples ``ref``; ``b = ref`` gives ``a``'s own distance to them."""
    return [float(v) for v in feature_mmd(a, b, ref, judge_features)]


def ladder_rungs(denoiser, x, ref) -> dict:
    """``{ladder: (parameter, [(point, images)], target)}``: the ladders of docs/metrics.md that
    pair each image with its target.  (a) heun with more evaluations from the noise ``x`` against
    the model's 64-step samples ``ref`` of it; (b) contrast, (c) blur and noise, each of ``ref``
    against ``ref`` and of the 600 real digits new to the judge against themselves."""
    from ..metrics.fd import corrupt_blur, corrupt_noise
    from ..metrics.quality import digits_split

    def heun(steps):
        if steps == 64:
            return ref
        p = iia_jax.plan("heun", schedules.karras(steps, SIGMA_MIN, SIGMA_MAX))
        return run_batched(jax.jit(lambda r: iia_jax.sample(denoiser, p, r)), x, batch=BATCH)

    def contrast(images, f):
        mean = images.mean(0, keepdims=True)
        return mean + f * (images - mean)

    new = np.concatenate([digits_split("test"), digits_split("train_check")])
    out = {"(a) heun steps, the model's samples": ("steps", [(s, heun(s)) for s in LADDER_HEUN_STEPS], ref)}
    for what, images in (("the model's samples", ref), ("real new digits", new)):
        out[f"(b) contrast of {what}"] = ("factor", [(f, contrast(images, f)) for f in LADDER_CONTRAST], images)
        out[f"(c) blur of {what}"] = ("blur px", [(b, corrupt_blur(images, b) if b else images)
                                                  for b in LADDER_BLUR], images)
        out[f"(c) noise on {what}"] = ("noise std", [(v, corrupt_noise(images, v) if v else images)
                                                     for v in LADDER_NOISE], images)
    return out


def _sides(param: str, points) -> list:
    """Groups of rung indices, each ``(indices, known badness)``: contrast on each side of 1 (by
    ``|log f|``), heun by fewer steps, blur and noise by size."""
    if param == "factor":
        return [([i for i, f in enumerate(points) if f <= 1], [abs(np.log(f)) for f in points if f <= 1]),
                ([i for i, f in enumerate(points) if f >= 1], [abs(np.log(f)) for f in points if f >= 1])]
    return [(list(range(len(points))), [-p if param == "steps" else p for p in points])]


def judge_ladder(param: str, rungs: list, target) -> dict:
    """One ladder in the true-target view, by docs/metrics.md's rule: it passes when no pair of
    rungs is in the wrong order by more than 2 se of their paired difference (:func:`to_target`
    of one rung against the other) and, on each side, the best and worst rungs are more than 2 se
    apart.  ``z``: the most inverted pair's difference in se (negative: inverted), ``ends``: the
    smallest gap between a side's ends in se."""
    images = [im for _, im in rungs]

    def z(i, j):  # > 0: rung j is farther from the target than rung i, in se of their difference
        d, se = to_target(images[j], images[i], target)
        return 0.0 if d == 0 else d / se if se > 0 else np.inf * np.sign(d)

    worst, ends = np.inf, np.inf
    for idx, bad in _sides(param, [p for p, _ in rungs]):
        order = [idx[k] for k in np.argsort(bad, kind="stable")]
        rank = dict(zip(idx, bad))
        worst = min([worst] + [z(i, j) for a, i in enumerate(order) for j in order[a + 1:] if rank[j] > rank[i]])
        ends = min(ends, z(order[0], order[-1]))
    return dict(param=param, points=[p for p, _ in rungs], target=[to_target(im, target, target) for im in images],
                z=float(worst), ends=float(ends), passed=bool(worst >= -2 and ends > 2))


def target_ladders(denoiser, x, ref) -> dict:
    """:func:`judge_ladder` on every ladder of :func:`ladder_rungs`; heun's rungs also carry their
    median ODE error."""
    out = {}
    for name, (param, rungs, target) in ladder_rungs(denoiser, x, ref).items():
        out[name] = judge_ladder(param, rungs, target)
        if param == "steps":
            out[name]["median"] = [ode_error(im, ref).median for _, im in rungs]
    return out


def compare(rows: list, old: dict, samples: Path, n: int) -> list:
    """Per NFE the best IIA row (fixed or fitted grid) that keeps a step against the best peer row,
    from the samples saved under ``samples``: the paired ``digits_score`` difference and both median ODE errors
    and the same difference against the model's own samples (:func:`to_target`); and ``nearest``:
    the IIA and peer rows that view picks (each row's ``target``, :func:`against_best_peer`), set
    against each other in it (``old[nfe]``, the saved verdict, where that NFE's samples are not on
    disk)."""
    verdicts, ref = [], _reference_samples(samples, n)
    for nfe in _nfes(rows):
        mine = [r for r in rows if r["nfe"] == nfe]
        if ref is None or not all((samples / r["file"]).exists() for r in mine):
            verdicts.append(old[nfe])
            continue
        iia_rows, peer_rows = iia_rows_keeping(mine, nfe), [r for r in mine if r["kind"] == "peer"]
        best_iia, best_peer = best_iia_row(mine, nfe), best_peer_row(mine, nfe)
        a, b = np.load(samples / best_iia["file"]), np.load(samples / best_peer["file"])
        d, se = score_difference(a, b, paired=True)
        verdicts.append(dict(nfe=nfe, iia=_name(best_iia), peer=_name(best_peer), diff=d, diff_se=se,
                             iia_median=best_iia["median"], peer_median=best_peer["median"],
                             target=to_target(a, b, ref), fit_s=best_iia["fit_s"], real_nfe=best_iia["real_nfe"],
                             nearest=_nearest(iia_rows, peer_rows, samples, ref), ceiling=ceiling(ref, b),
                             toward=toward_reference(ref, a, b)))
    return verdicts


def ceiling(ref, peer) -> list:
    """``[d, se]``: ``digits_score`` of the model's own 64-step samples minus the best peer's, paired
    over the same draws: what an exact solver of this model's ODE would win by.  Where even that is
    not below -2 se, no sampler of this model can clear the verdict's bar: the judge's floor, not the
    sampler, decides the tie."""
    return [float(v) for v in score_difference(ref, peer, paired=True)]


def toward_reference(ref, iia, peer, fractions=TOWARD) -> list:
    """``[[t, median ODE error, d, se], ...]``: IIA's samples moved back toward the model's own samples
    of the same draws, ``ref + t (iia - ref)`` (each keeps the fraction t of its own error), against
    the best peer (paired ``digits_score``).  The largest t whose difference is below -2 se is how
    much more exact IIA must get, along the error it has, for the verdict to be a win: what lies
    between the tie and the :func:`ceiling`."""
    out = []
    for t in fractions:
        moved = ref + t * (iia - ref)
        out.append([t, float(ode_error(moved, ref).median), *(float(v) for v in score_difference(moved, peer, paired=True))])
    return out


def best_peer_row(rows: list, nfe: int) -> dict:
    """The peer row of ``nfe`` with the lowest ``digits_score``."""
    return min((r for r in rows if r["nfe"] == nfe and r["kind"] == "peer"), key=lambda r: r["score"])


def iia_rows_keeping(rows: list, nfe: int) -> list:
    """The IIA rows of ``nfe`` that keep a step (a fit that keeps none is its base sampler)."""
    return [r for r in rows if r["nfe"] == nfe and r["kind"] != "peer" and r["kept"]]


def best_iia_row(rows: list, nfe: int) -> dict:
    """The IIA row of ``nfe`` that keeps a step with the lowest ``digits_score``."""
    return min(iia_rows_keeping(rows, nfe), key=lambda r: r["score"])


def measure_ceilings(res: dict, samples: Path) -> None:
    """Set each verdict's :func:`ceiling`, sampling again (the same noise, so the same samples) the
    model's 64-step reference and each NFE's best peer where their samples are not on disk."""
    denoiser, n = pretrained.digits(), res["n"]
    x = noise(n, 21)
    samples.mkdir(parents=True, exist_ok=True)
    ref = _reference_samples(samples, n)
    if ref is None:
        ref = sample_reference(denoiser, x)
        np.save(reference_file(samples, n), ref)
    for v in res["verdicts"]:
        row = best_peer_row(res["rows"], v["nfe"])
        f = samples / row["file"]
        if not f.exists():
            np.save(f, peer_samples(denoiser, row["method"], row["grid"], v["nfe"], x))
        v["ceiling"] = ceiling(ref, np.load(f))
        print(f"NFE {v['nfe']}: the model's own samples - {_name(row)}: {_target(v['ceiling'])}", flush=True)
        best = best_iia_row(res["rows"], v["nfe"])
        if (samples / best["file"]).exists():   # its fit is not run again for this
            v["toward"] = toward_reference(ref, np.load(samples / best["file"]), np.load(f))


def _name(row: dict) -> str:
    return f"{row['method']}, {row['grid']}"


def _nearest(iia_rows: list, peer_rows: list, samples: Path, ref) -> dict:
    """The IIA row and the peer row nearest the model's own samples, each picked on the draws it is
    judged on (as the best rows by ``digits_score`` are), with their paired difference there:
    where ``digits_score`` sits at its floor, its pick among near-equal rows is the draws' noise."""
    near_iia, near_peer = (min(group, key=lambda r: r["target"][0]) for group in (iia_rows, peer_rows))
    a, b = np.load(samples / near_iia["file"]), np.load(samples / near_peer["file"])
    return dict(iia=_name(near_iia), peer=_name(near_peer), target=to_target(a, b, ref), fit_s=near_iia["fit_s"],
                iia_median=near_iia["median"], peer_median=near_peer["median"], real_nfe=near_iia["real_nfe"])


def against_best_peer(rows: list, samples: Path, n: int) -> None:
    """Set each row's ``vs_best_peer``: ``[digits_score difference, se]`` to its NFE's best peer row,
    paired, and ``target``: its distance to the model's own samples (:func:`to_target`), from the
    samples saved under ``samples`` (an NFE whose samples are not all on disk keeps the values it
    has)."""
    ref = _reference_samples(samples, n)
    for nfe in _nfes(rows):
        mine = [r for r in rows if r["nfe"] == nfe]
        if ref is None or not mine or not all((samples / r["file"]).exists() for r in mine):
            continue
        best = np.load(samples / best_peer_row(rows, nfe)["file"])
        for r in mine:
            s = np.load(samples / r["file"])
            r["vs_best_peer"] = [float(v) for v in score_difference(s, best, paired=True)]
            r["target"] = to_target(s, ref, ref)


KIND_STYLE = {"peer": ("0.45", "peer"), "iia": ("C0", "IIA, fixed grid"), "fit_plan": ("C1", "IIA, fit_plan grid")}


def plot(res: dict, path: Path) -> bool:
    """Per NFE, best first: every row's paired ``digits_score`` difference to the best peer with
    +- 2 se (the verdict's bar) and, below it where the rows have it, each row's distance to the
    model's own samples (:func:`to_target`) with +- 2 se; False (nothing drawn) where no row has
    the first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nfes = [n for n in NFES if any(r["nfe"] == n and "vs_best_peer" in r for r in res["rows"])]
    if not nfes:
        return False
    views = [("vs_best_peer", "digits_score - best peer's (paired, +- 2 se)", 10.0)]
    if all("target" in r for r in res["rows"] if r["nfe"] in nfes):
        views.append(("target", "to the model's 64-step samples (paired MMD^2 x1000, +- 2 se)", 0.1))
    height = max(sum(r["nfe"] == n for r in res["rows"]) for n in nfes)
    cols = min(3, len(nfes))
    rows = -(-len(nfes) // cols) * len(views)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, (0.22 * height + 1.2) * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for k, nfe in enumerate(nfes):
        mine = sorted((r for r in res["rows"] if r["nfe"] == nfe and "vs_best_peer" in r),
                      key=lambda r: r["score"], reverse=True)
        for v, (key, label, linthresh) in enumerate(views):
            ax = axes[(k // cols) * len(views) + v][k % cols]
            ax.set_visible(True)
            for y, r in enumerate(mine):
                d, se = r[key]
                ax.errorbar(d, y, xerr=2 * se, fmt="o", color=KIND_STYLE[r["kind"]][0], markersize=3, capsize=2)
            ax.set_yticks(range(len(mine)), [f"{r['method']}, {r['grid']}" + ("" if r["kind"] == "peer" or r["kept"]
                                              else " (its base)") for r in mine], fontsize=6)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_title(f"NFE {nfe}", fontsize=10)
            ax.set_xlabel(label, fontsize=8)
            ax.grid(True, axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=label) for c, label in KIND_STYLE.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def verdict(v: dict) -> str:
    if v["diff_se"] == 0:
        return "tie (the same samples)"
    z = v["diff"] / v["diff_se"]
    if z < -2 and v["iia_median"] < v["peer_median"]:
        return "**IIA wins**"
    if z > 2:
        return "**peer wins**"
    if abs(z) > 2:
        return "quality to IIA, ODE error to the peer"
    return "tie at the judge's floor" if at_floor(v) else "tie"


def at_floor(v: dict) -> bool:
    """Whether even the model's own samples fail to beat the peer by 2 se (:func:`ceiling`)."""
    d, se = v.get("ceiling") or (None, None)
    return d is not None and (se == 0 or d / se >= -2)


def target_verdict(v: dict) -> str:
    """The verdict against the model's own samples: nearer beyond 2 se of the paired difference."""
    d, se = v["target"]
    if se == 0:
        return "tie (the same samples)"
    return "**IIA nearer**" if d / se < -2 else "**peer nearer**" if d / se > 2 else "tie"


def _ceiling(v: dict) -> str:
    if not v.get("ceiling"):
        return "-"
    d, se = v["ceiling"]
    return f"{d:+.1f} +- {se:.1f} ({d / se:+.1f} se)" if se else f"{d:+.1f} +- 0.0"


def _target(pair) -> str:
    if not pair:
        return "-"
    places = 1 if pair[1] >= 0.1 or pair[1] == 0 else 2 if pair[1] >= 0.01 else 3   # the se's first digit
    return f"{pair[0]:+.{places}f} +- {pair[1]:.{places}f}"


def page(res: dict, image: str | None = None) -> str:
    n = res["n"]
    low, high = min(_nfes(res["rows"])), max(_nfes(res["rows"]))
    lines = [f"# IIA against the peers at NFE {low}" + (f"-{high}" if high > low else ""), "",
             f"The shipped digits model, {n:,} evaluation draws from the same noise for every method. "
             "Per NFE, the best IIA configuration that keeps a step (a fit that keeps none is its base "
             "sampler) against the best peer on that peer's best grid (both picked by `digits_score` on "
             "these draws): the paired `digits_score` difference "
             "IIA - peer with its jackknife se, and the median per-sample ODE error against heun with "
             "64 Karras steps from the same noise. A win needs both: the difference below -2 se and a "
             f"lower median error. `digits_score` (lower is better): real digits about 0, the model's own "
             f"64-step samples {res['reference_score']:.1f} on these draws, so below about 10 little room is "
             "left. Setup and method in `iia_jax/bench/few_steps.py`; the command: "
             "`iia-jax bench few-steps --out docs`.", "",
             "| NFE | best IIA, its grid | its fit | best peer | digits_score IIA - peer | "
             "the model's own samples - peer | median ODE error IIA / peer | verdict | "
             "to the model's samples: IIA - peer | verdict there |",
             "|---:|---|---:|---|---:|---:|---:|---|---:|---|"]
    for v in res["verdicts"]:
        nfe_note = "" if v["real_nfe"] == v["nfe"] else f" (NFE {v['real_nfe']})"
        lines.append(f"| {v['nfe']} | {v['iia']}{nfe_note} | {v['fit_s']:.0f} s | {v['peer']} | "
                     f"{v['diff']:+.1f} +- {v['diff_se']:.1f} | {_ceiling(v)} | "
                     f"{v['iia_median']:.4f} / {v['peer_median']:.4f} | "
                     f"{verdict(v)} | {_target(v.get('target'))} | {target_verdict(v) if v.get('target') else '-'} |")
    if any(v.get("ceiling") for v in res["verdicts"]):
        lines += ["", "\"The model's own samples - peer\": the same paired `digits_score` difference with the "
                  "model's own 64-step samples of these draws in IIA's place (in brackets, in se): what an exact "
                  "solver of this model's ODE would win by. Where it is not below -2 se, no sampler of this model "
                  "can clear the bar: the tie is the judge's floor (\"tie at the judge's floor\"). Where it is, "
                  "a win asks IIA to score within about |difference| - 2 se of the exact samples. Most of that se "
                  "comes from the 600 real digits the score is measured against, so more draws do not shrink it "
                  "([digits.md](digits.md#the-guarantee-iia-with-the-fits-defaults-against-its-base-nfe-3-10))."
                  + (f" Measured by `{res['ceiling_run']['command']}` ({res['ceiling_run']['date']}, revision "
                     f"{res['ceiling_run']['revision']}) from the same draws and the same peer samples."
                     if res.get("ceiling_run") else "")]
    lines += toward_section(res["verdicts"])
    lines += ["", "\"To the model's samples\": the sampler's true target. The same judge features and kernel "
              "as `digits_score`, but against the model's own 64-step samples of the same noise instead of real "
              "digits: 1000 x the paired MMD^2 (a U-statistic that leaves out each draw's own pair, so a low ODE "
              "error alone earns nothing; `iia_jax.iia.guard.feature_mmd`), IIA - peer with its row jackknife se. "
              "It is the view the quality guard's learned-features judge takes "
              "([iia.md](iia.md#a-quality-guard-with-no-model-specific-judge)); its ladders are at the end of "
              "this page."]
    near = [v for v in res["verdicts"] if v.get("nearest")]
    if near:
        lines += ["", "The rows that view picks itself: per NFE the IIA row that keeps a step and the peer row nearest "
                  "the model's own samples, each picked on these draws (where `digits_score` sits at its floor, "
                  "its pick among rows that score alike is the draws' noise):", "",
                  "| NFE | nearest IIA, its grid | its fit | nearest peer | to the model's samples: IIA - peer | "
                  "median ODE error IIA / peer | verdict there |", "|---:|---|---:|---|---:|---:|---|"]
        for v in near:
            w = v["nearest"]
            nfe_note = "" if w["real_nfe"] == v["nfe"] else f" (NFE {w['real_nfe']})"
            lines.append(f"| {v['nfe']} | {w['iia']}{nfe_note} | {w['fit_s']:.0f} s | {w['peer']} | {_target(w['target'])} | "
                         f"{w['iia_median']:.4f} / {w['peer_median']:.4f} | {target_verdict(w)} |")
    if image:
        lines += ["", f"![{image}]({image})", "",
                  "Every row against its NFE's best peer: the paired `digits_score` difference with +- 2 se "
                  "(left of 0 and clear of it: better than the best peer beyond the verdict's bar); below it, "
                  "where measured, each row's distance to the model's own 64-step samples with +- 2 se."]
    lines += ["", "Every row (`digits_score`, median ODE error; IIA rows: fitted with the library defaults "
              "on 1,024 other draws, the wall time of that fit and the steps it kept; `fit_plan` rows: "
              "the grid it returned, `fitted` for a searched one, whose sigmas are below):", "",
              "| NFE | method | grid | digits_score | median ODE error | to the model's samples | fit |",
              "|---:|---|---|---:|---:|---:|---|"]
    for r in sorted(res["rows"], key=lambda r: (r["nfe"], r["score"])):
        fit = (f"{r['fit_s']:.0f} s, kept {r['kept']}" + (f", NFE {r['real_nfe']}" if r["real_nfe"] != r["nfe"] else "")
               if r["kind"] != "peer" else "")
        lines.append(f"| {r['nfe']} | {r['method']} | {r['grid']} | {r['score']:.1f} | {r['median']:.4f} | "
                     f"{_target(r.get('target'))} | {fit} |")
    searched = [r for r in res["rows"] if r.get("sigmas") and r["grid"] == "fitted"]
    if searched:
        lines += ["", "Grids `fit_plan` searched (sigma_max ... 0):", ""]
        lines += [f"- NFE {r['nfe']} {r['method']}: " + ", ".join(f"{s:.3g}" for s in r["sigmas"])
                  for r in sorted(searched, key=lambda r: (r["nfe"], r["method"]))]
    if res.get("ladder"):
        lines += ladder_section(res["ladder"])
    lines.append("")
    for what, meta, note in _runs(res):
        lines += [f"*{what} `{meta['command']}` ({meta['date']}); {meta['machine']}; {meta['versions']}; "
                  f"revision {meta['revision']}.* " + (f"{note}" if note else ""), ""]
    lines[-2] += (" Fit times are wall times, compilation included. heun has odd NFE only: its row at an even NFE "
              "is its next lower odd NFE (NFE 4: 3, with 2 steps).")
    return "\n".join(lines)


def toward_section(verdicts: list) -> list:
    """The page's lines on what a win needs where IIA ties but the model's own samples would win."""
    open_ = [v for v in verdicts if v.get("toward") and verdict(v) == "tie"]
    if not open_:
        return []
    lines = ["", "Where IIA ties but the model's own samples would win: IIA's best samples moved back toward the "
             "model's own samples of the same draws, `ref + t (iia - ref)`, so that they keep the fraction t of "
             "their own error, against the same best peer (`few_steps.toward_reference`). The largest t whose "
             "difference clears -2 se says how much more exact IIA must get, along the error it has, to win:", "",
             "| NFE | best IIA | t | median ODE error | digits_score moved IIA - peer | in se |",
             "|---:|---|---:|---:|---:|---:|"]
    for v in open_:
        lines += [f"| {v['nfe']} | {v['iia']} | 1 | {v['iia_median']:.4f} | {v['diff']:+.1f} +- {v['diff_se']:.1f} | "
                  f"{v['diff'] / v['diff_se']:+.1f} |"]
        lines += [f"| {v['nfe']} | {v['iia']} | {t:g} | {m:.4f} | {d:+.1f} +- {se:.1f} | {d / se:+.1f} |"
                  for t, m, d, se in v["toward"]]
    return lines


def _rung(param: str, point, pair, median=None) -> str:
    what = (f"NFE {2 * point - 1}" + (" (the target)" if point == LADDER_HEUN_STEPS[-1] else "")
            if param == "steps" else f"{point:g}")
    return f"{what}: {_target(pair)}" + (f" (ODE error {median:.3f})" if median is not None else "")


def ladder_section(ladder: dict) -> list:
    """The page's lines on :func:`target_ladders`."""
    passed = sum(v["passed"] for v in ladder.values())
    lines = ["", "## The view \"to the model's samples\" on ladders of known order", "",
             "The ladders of [metrics.md](metrics.md) that pair each image with a target: heun's samples of these "
             "draws with more evaluations (against the 64-step samples, the last rung), and contrast about the mean "
             "image, blur and pixel noise, each of the model's 64-step samples against themselves and of the 600 "
             "real digits new to the judge against themselves. Each rung: 1000 x the paired MMD^2 to the target "
             "with its se (the target itself is 0 exactly). metrics.md's rule: a ladder passes when no pair of rungs "
             "is in the wrong order by more than 2 se of their paired difference and its ends (each side of 1, for "
             "contrast) are more than 2 se apart; `z` is its most inverted pair (negative: inverted), `ends` the "
             "smaller gap between ends, both in se. metrics.md's tie of two real sets has no pairs, so it has no "
             f"rung here. **{passed} of {len(ladder)} ladders pass.** Computed by the latest run below.", "",
             "| ladder | rungs | z, ends | verdict |", "|---|---|---:|---|"]
    for name, v in ladder.items():
        rungs = "; ".join(_rung(v["param"], p, t, m) for p, t, m in
                          zip(v["points"], v["target"], v.get("median", [None] * len(v["points"]))))
        lines.append(f"| {name} | {v['param']} {rungs} | {v['z']:+.1f}, {v['ends']:.1f} | "
                     f"{'pass' if v['passed'] else '**FAIL**'} |")
    return lines


def runs(res: dict) -> list:
    """``[{nfes, provenance, note}]``: the run that made each NFE's rows, this file's own first
    (results written before runs were listed keep the one earlier run as ``kept_from``)."""
    if not res:
        return []
    earlier = res.get("runs") or ([res["kept_from"]] if res.get("kept_from") else [])
    return [dict(nfes=res["nfes"], provenance=res["provenance"], note=res.get("note"))] + earlier


def _runs(res: dict) -> list:
    """``(what, provenance, note)`` of each run, for the page's footer."""
    listed = runs(res)
    if len(listed) == 1:
        return [("Made by", res["provenance"], res.get("note"))]
    return [(f"NFE {', '.join(str(n) for n in run['nfes'])} made by", run["provenance"], run.get("note"))
            for run in listed]


def _write(results: Path, res: dict) -> None:
    tmp = results.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float))
    tmp.replace(results)


def main(argv=None):
    """``iia-jax bench few-steps``: run (or with ``--table`` only re-judge) and write the page."""
    ap = argparse.ArgumentParser(prog="iia-jax bench few-steps", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="evaluation draws")
    ap.add_argument("--nfes", type=int, nargs="+", choices=NFES, default=list(DEFAULT_NFES),
                    help="run these NFE; the others' rows and verdicts are kept from the saved results")
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="directory for few_steps.md and few_steps.json ('docs' for the repository's pages)")
    ap.add_argument("--samples", default=str(DEFAULT_SAMPLES), help="directory for every method's samples (.npy)")
    ap.add_argument("--table", action="store_true", help="write the page from OUT/few_steps.json and stop")
    ap.add_argument("--note", help="with --table: the run's conditions, kept in the results and shown on the page")
    ap.add_argument("--ceiling", action="store_true", help="add to the saved results what the model's own samples "
                    "win by against each NFE's best peer (samples the reference and best peers again where missing), "
                    "and where IIA ties, its best samples moved toward the model's own (toward_reference)")
    args = ap.parse_args(argv)
    out, samples = Path(args.out), Path(args.samples)
    results, page_path = out / "few_steps.json", out / "few_steps.md"
    if args.ceiling:
        if not results.exists():
            ap.error(f"--ceiling: no saved results at {results}; run without --ceiling first")
        command = ("iia-jax bench few-steps " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
        res = json.loads(results.read_text())
        measure_ceilings(res, samples)
        res["ceiling_run"] = provenance.provenance(command)
        _write(results, res)
    elif not args.table:
        saved = json.loads(results.read_text()) if set(args.nfes) != set(NFES) and results.exists() else None
        if saved is not None and saved["n"] != args.n:
            ap.error(f"--n {args.n}: the saved results have {saved['n']} draws; run every NFE")
        out.mkdir(parents=True, exist_ok=True)
        command = ("iia-jax bench few-steps " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
        started = provenance.provenance(command)
        measure(args, saved, lambda res: provenance.save_json(results, res, command, meta=started))
    elif not results.exists():
        ap.error(f"--table: no saved results at {results}; run without --table first")
    res = json.loads(results.read_text())
    if args.table and samples.exists():    # the verdicts again from the saved samples; the run's provenance kept
        against_best_peer(res["rows"], samples, res["n"])
        res["verdicts"] = compare(res["rows"], {v["nfe"]: v for v in res["verdicts"]}, samples, res["n"])
        res["note"] = args.note or res.get("note")
        _write(results, res)
    image = out / "few_steps.png"
    page_path.write_text(page(res, image.name if plot(res, image) else None))
    print(page_path.read_text())
    return 0
