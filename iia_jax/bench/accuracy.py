"""Error and quality vs NFE: our solvers (base and IIA) beside the peers, on one model.

Every sampler starts from the same evaluation noise ``x_T = sigma_max N(0, I)`` (never used in a
fit) and is compared with the reference: heun on a fine Karras grid from the same noise
(``iia_jax.metrics.ode_error``: median per-sample RMS and RMSE).  The reference's own error is
estimated against the same heun with half the steps.  For digits, sample quality is
``iia_jax.metrics.quality.digits_score`` (1000 x KID against real digits in the features of the
judge classifier; lower is better, :func:`.harness.score`).  The loop itself is :mod:`.harness`'s.
"""
from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import harness, peers
from .grids import grid, steps_for

DIFFRAX_FIXED = jax.jit(peers.diffrax_fixed, static_argnums=(0, 1))   # compiled once per solver and N
DEFAULTS = "defaults"


class Row(NamedTuple):
    """One sampler on one model, grid and NFE.  ``family``: ours, IIA, diffusers or diffrax."""

    model: str
    family: str
    method: str
    variant: str
    grid: str
    nfe: float
    median: float
    rmse: float
    quality: float = float("nan")
    kept: str = ""
    fit_s: float = float("nan")
    quality_se: float = float("nan")


def quality_judge():
    """``(name, judge(images) -> (score, standard error))``: the digits judge."""
    return "digits_score (1000 x KID, judge features)", harness.score


def variants(solver: str, only=()) -> list:
    """The IIA settings tried besides the library defaults, one per setting the library chooses
    (history, mode, fine_steps, target, preset): ``(label, fit kwargs)``; ``only``: these labels."""
    from ..iia.features import DEFAULT_PRESET, DEFAULT_TARGET
    out = [("history=0", dict(history=0)), ("teacher_forced", dict(mode="teacher_forced")),
           ("fine_steps=4", dict(fine_steps=4))]
    other = {"local": "trajectory", "trajectory": "local"}[DEFAULT_TARGET.get(solver, "trajectory")]
    out.append((f"target={other}", dict(target=other)))
    if DEFAULT_PRESET.get(solver) != "generic":
        out.append(("preset=generic", dict(preset="generic")))
    if solver == "heun":
        out.append(("preset=biia-edm", dict(preset="biia-edm")))
    return [v for v in out if not only or v[0] in only]


class Bench(NamedTuple):
    """One model with its problem (noise, reference), judge and fit shuffling key."""

    model: object
    problem: harness.Problem
    judge: object
    fit_key: jax.Array

    def score(self, family, method, variant, grid_name, nfe, x0, kept="", fit_s=float("nan")) -> Row:
        x0 = np.asarray(x0, np.float32)
        err = self.problem.error(x0)
        q, se = self.judge[1](x0) if self.judge else (float("nan"), float("nan"))
        return Row(self.model.name, family, method, variant, grid_name, float(nfe), err.median, err.rmse,
                   float(q), kept, fit_s, float(se))


def setup(model, eval_batch: int, fit_batch: int, ref_steps: int, seed: int = 0) -> Bench:
    """Noise (evaluation: ``seed + 1``, fit: ``seed``, fit shuffling key ``seed + 2``) and the reference."""
    noise = harness.draws(seed, model.shape, eval_batch, fit_batch, model.sigma_max, keys="consecutive")
    prob = harness.problem(model.denoiser, noise, ref_steps, model.sigma_min, model.sigma_max,
                           check_reference=True)
    judge = quality_judge() if model.name == "digits" else None
    return Bench(model, prob, judge, jax.random.PRNGKey(seed + 2))


def ours(bench: Bench, solver: str, grid_name: str, nfe: int, iia_variants=((DEFAULTS, {}),)) -> list:
    """Base and IIA rows of one of our solvers (nothing if it has no plan at this NFE); no IIA
    rows for an empty ``iia_variants``."""
    m, prob = bench.model, bench.problem
    p = harness.plan_for(solver, nfe, m.sigma_min, m.sigma_max, grid_name, exact=True)
    if p is None:
        return []
    base = prob.base(p)
    rows = [bench.score("ours", solver, "base", grid_name, p.nfe, base)]
    for label, kwargs in iia_variants:
        c = harness.compare(prob, p, base, key=bench.fit_key, **kwargs)
        rows.append(bench.score("IIA", solver, label, grid_name, p.nfe, c.iia, c.kept,
                                c.result.report.fit_seconds))
    return rows


def diffusers_rows(bench: Bench, eps, grid_name: str, nfe: int, names) -> list:
    m, rows = bench.model, []
    x_T = np.asarray(bench.problem.draws.eval)
    for peer in (p for p in peers.DIFFUSERS_PEERS if p.name in names):
        n = steps_for(nfe, "heun" if peer.name == "Heun" else "euler", exact=True)   # as our twins count
        if n is None:
            continue
        x0, counted = peers.run_diffusers(peer, eps, grid(grid_name, n, m.sigma_min, m.sigma_max), x_T)
        if counted != nfe:
            raise RuntimeError(f"{peer.name} made {counted} model calls, expected {nfe}")
        rows.append(bench.score("diffusers", peer.name, "", grid_name, counted, x0))
    return rows


def diffrax_rows(bench: Bench, grid_name: str, nfe: int, names) -> list:
    m, rows = bench.model, []
    for name in peers.DIFFRAX_FIXED:
        if name not in names:
            continue
        n = steps_for(nfe, functools.partial(peers.diffrax_nfe, name), exact=True)
        if n is None:
            continue
        sigmas = jnp.asarray(grid(grid_name, n, m.sigma_min, m.sigma_max))
        x0, counted = DIFFRAX_FIXED(name, m.denoiser, sigmas, bench.problem.draws.eval)
        rows.append(bench.score("diffrax", name, "", grid_name, int(counted), x0))
    return rows


def adaptive_rows(bench: Bench, tolerances) -> list:
    m, rows = bench.model, []
    run = jax.jit(lambda x, tol: peers.diffrax_adaptive(m.denoiser, m.sigma_min, m.sigma_max, x, tol))
    for tol in tolerances:
        x0, nfe = run(bench.problem.draws.eval, jnp.float32(tol))
        rows.append(bench.score("diffrax", peers.DIFFRAX_ADAPTIVE, f"tol={tol:g}", "adaptive",
                                float(np.mean(nfe)), x0))
    return rows


def run_model(model, cfg, emit, log=print) -> None:
    """Every row for one model: the NFE x grid table, the IIA variants, the adaptive peer; handed
    to ``emit(rows, extra)`` (reference, judge, seconds so far) after the reference, each grid, the
    variants of each NFE and the adaptive peer."""
    start = time.perf_counter()
    settings = cfg.per_model[model.name]
    bench = setup(model, settings.eval_batch, settings.fit_batch, settings.ref_steps)
    prob = bench.problem
    log(f"[{model.name}] reference ready ({time.perf_counter() - start:.0f} s), its own median error "
        f"{prob.reference_error:.2e}")
    extra = {"reference_error": prob.reference_error, "seconds": time.perf_counter() - start,
             "judge": bench.judge[0] if bench.judge else None,
             "reference_quality": bench.judge[1](prob.reference) if bench.judge else (float("nan"),) * 2}
    emit([], extra)
    eps = peers.eps_function(model.denoiser)
    for grid_name in settings.grids:
        rows = []
        for nfe in settings.nfes:
            for solver in cfg.solvers:
                rows += ours(bench, solver, grid_name, nfe,
                             ((DEFAULTS, {}),) if settings.has_iia(solver, grid_name, nfe) else ())
            rows += diffusers_rows(bench, eps, grid_name, nfe, cfg.peers)
            rows += diffrax_rows(bench, grid_name, nfe, cfg.peers)
            best = min((r for r in rows if r.nfe == nfe), key=lambda r: r.median)
            log(f"[{model.name}] {grid_name:12s} NFE {nfe:2d}: best {best.family} {best.method} "
                f"{best.variant} median {best.median:.3e} ({time.perf_counter() - start:.0f} s)")
        extra["seconds"] = time.perf_counter() - start
        emit(rows, extra)
    for nfe in settings.variant_nfes:
        rows = []
        for solver in settings.variant_solvers:
            rows += [r for r in ours(bench, solver, cfg.variant_grid, nfe, variants(solver, settings.variant_only))
                     if r.family == "IIA"]
        extra["seconds"] = time.perf_counter() - start
        emit(rows, extra)
        log(f"[{model.name}] variants NFE {nfe} done ({time.perf_counter() - start:.0f} s)")
    rows = adaptive_rows(bench, cfg.tolerances) if peers.DIFFRAX_ADAPTIVE in cfg.peers else []
    extra["seconds"] = time.perf_counter() - start
    emit(rows, extra)
    log(f"[{model.name}] done in {extra['seconds']:.0f} s")
