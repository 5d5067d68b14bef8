"""Stale coefficients: refit the sequential pass with the steps the never-worse check dropped held at 0.

    python benchmarks/quality_refit.py dpmpp_2m:karras:5 unipc:karras:5

``iia_jax.fit``'s sequential pass fits step i on the states the corrections of steps 0..i-1
produce; the never-worse check afterwards switches some of those off, so the later steps' kept
coefficients act on states they were not fitted on.  This prototype (it replaces the fit's private
``_sequential_pass`` with one that multiplies step i's coefficients by a mask) fits once, then
refits with the dropped steps held at zero until the kept set stops changing, and evaluates like
``benchmarks/quality_guard.py`` (same seeds, 1,024 fit rows, fine_steps 8, 1,000 evaluation draws,
heun 64-step reference; digits_score paired against the base, median ODE error, raw and stored
contrast, HF energy, black background).  Appends to ``checkpoints/quality_guard/refit.jsonl``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                  # this checkout's iia_jax
sys.path.insert(0, str(ROOT / "benchmarks"))
import iia_jax  # noqa: E402
from iia_jax import pretrained, schedules  # noqa: E402
from quality_guard import measure  # noqa: E402

F = sys.modules["iia_jax.iia.fit"]             # the module (the package exports the function as ``fit``)
MASK = {"m": None}


def masked_pass(denoiser, solver, spec, sigmas, fine_steps, x, cond, weights, target, solve, exact):
    """The body of the fit's ``_sequential_pass`` with step i's coefficients multiplied by mask[i]."""
    from iia_jax.iia.sample import apply_correction, corrected_step
    from iia_jax.sampling import bind_condition, run_steps
    mask = jnp.asarray(MASK["m"])

    def body(carry, index, sigma, sigma_next, final):
        def per_chunk(chunk):
            (coarse, x_fine), c = chunk
            d = bind_condition(denoiser, c)
            new, feats, denoised = corrected_step(d, solver, spec, coarse, sigma, sigma_next, final)
            goal = F.fine_solution(d, solver, coarse[1] if x_fine is None else x_fine, sigma, sigma_next,
                                   fine_steps, final)
            return new, feats, jnp.all(jnp.isfinite(denoised)) & jnp.all(jnp.isfinite(goal)), goal

        coarse, feats, ok, goal = jax.lax.map(per_chunk, (carry, cond))
        residual = goal - coarse[1]
        stats = jax.tree_util.tree_map(lambda a: a.sum(0), jax.vmap(
            jax.vmap(F.gram_stats, in_axes=(None, None, 0)))(feats, residual, weights))
        sums = (jax.tree_util.tree_map(lambda a: a.sum(0), jax.vmap(F.spread_sums)(
            feats, coarse[1], goal, weights[:, 0])) if solve.needs_spread else None)
        rows = (feats[0], residual[0], weights[0, 0]) if exact else None
        c = solve(jax.tree_util.tree_map(lambda a: a[0], stats), sums, rows) * mask[index]
        x_next = jax.vmap(apply_correction, in_axes=(0, None, 0))(coarse[1], c, feats)
        fine_next = goal if target == "trajectory" else None
        return ((coarse[0], x_next, coarse[2]), fine_next), (c, stats, jnp.all(ok))

    coarse = (jax.vmap(solver.init)(x), x, jax.vmap(spec.init_history)(x))
    (_, fine_end), (values, stats, ok) = run_steps(body, (coarse, x if target == "trajectory" else None),
                                                   sigmas)
    return values, stats, ok, fine_end


def set_mask(mask):
    """Install the fit's sequential pass with ``mask`` (None: the fit's own), compiled afresh."""
    MASK["m"] = mask
    if mask is None:
        F._SEQUENTIAL = ORIGINAL
        return
    F._SEQUENTIAL = F._compiled(
        lambda denoiser, sigmas, x, cond, weights, *, solver, spec, fine_steps, target, solve, exact:
        masked_pass(denoiser, solver, spec, sigmas, fine_steps, x, cond, weights, target, solve, exact),
        F._MODEL_STATIC + ("target", "solve", "exact"))


ORIGINAL = F._SEQUENTIAL


def fit_consistent(D, plan, x, rounds=3, **kw):
    """Fit, then refit with the steps the last fit did not keep held at zero, until the kept set
    stops changing (at most ``rounds`` fits).  Returns the last result and the kept steps of each."""
    set_mask(None)
    res = iia_jax.fit(D, plan, x, progress=False, **kw)
    history = [np.flatnonzero(np.asarray(res.coeffs.kept)).tolist()]
    for _ in range(rounds - 1):
        kept = np.asarray(res.coeffs.kept)
        set_mask(kept)
        res = iia_jax.fit(D, plan, x, progress=False, **kw)
        new = np.asarray(res.coeffs.kept) & kept
        history.append(np.flatnonzero(new).tolist())
        if (new == kept).all():
            break
    set_mask(None)
    return res, history


def main(cells):
    D = pretrained.digits()
    kf, ke = jax.random.split(jax.random.PRNGKey(0))
    xf = 80.0 * jax.random.normal(kf, (1024, 8, 8, 1))
    xe = 80.0 * jax.random.normal(ke, (1000, 8, 8, 1))
    ref = np.load(ROOT / "checkpoints/quality_cause/reference_seed0_n1000.npy")   # made by quality_cause.py
    for spec in cells:
        solver, grid, nfe = spec.split(":")
        nfe = int(nfe)
        steps = (nfe + 1) // 2 if solver == "heun" else nfe
        sig = schedules.karras(steps, 0.002, 80.0) if grid == "karras" else schedules.vp_quadratic(steps, 0.002, 80.0)
        plan = iia_jax.plan(solver, sig)
        t = time.perf_counter()
        res, hist = fit_consistent(D, plan, xf, fine_steps=8, judge=None)   # as measured: no quality judge
        fs = time.perf_counter() - t
        base = np.asarray(jax.jit(lambda x: iia_jax.sample(D, plan, x))(xe))
        x0 = np.asarray(jax.jit(lambda x: iia_jax.iia_sample(D, plan, res.coeffs, x))(xe))
        m = measure(x0, base, ref)
        np.save(ROOT / f"checkpoints/quality_guard/refit_{solver}_{grid}_{plan.nfe}.npy", x0)
        out = dict(solver=solver, grid=grid, nfe=plan.nfe, kept_rounds=hist, fit_s=fs,
                   values=np.asarray(res.coeffs.values).tolist(), **m)
        with open(ROOT / "checkpoints/quality_guard/refit.jsonl", "a") as f:
            f.write(json.dumps(out) + "\n")
        print(spec, hist, {k: round(v, 3) for k, v in m.items()}, f"{fs:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
