"""Stale coefficients: ``iia_jax.fit(..., refit=True)`` against the plain fit.

    python benchmarks/quality_refit.py dpmpp_2m:karras:5 unipc:karras:5

``iia_jax.fit``'s sequential pass fits step i on the states the corrections of steps 0..i-1
produce; the never-worse check afterwards switches some of those off, so the later steps' kept
coefficients act on states they were not fitted on.  ``refit=True``
(:class:`iia_jax.FitConfig`) fits once, then refits with the dropped steps held at zero until the
kept set stops changing.  Each cell is fitted without the quality guard and evaluated like
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
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                  # this checkout's iia_jax
sys.path.insert(0, str(ROOT / "benchmarks"))
import iia_jax  # noqa: E402
from iia_jax import pretrained, schedules  # noqa: E402
from iia_jax.bench.grids import steps_for  # noqa: E402
from quality_guard import measure  # noqa: E402


def main(cells):
    D = pretrained.digits()
    kf, ke = jax.random.split(jax.random.PRNGKey(0))
    xf = 80.0 * jax.random.normal(kf, (1024, 8, 8, 1))
    xe = 80.0 * jax.random.normal(ke, (1000, 8, 8, 1))
    ref = np.load(ROOT / "checkpoints/quality_cause/reference_seed0_n1000.npy")   # made by quality_cause.py
    for spec in cells:
        solver, grid, nfe = spec.split(":")
        nfe = int(nfe)
        steps = steps_for(nfe, solver, exact=True)
        sig = schedules.karras(steps, 0.002, 80.0) if grid == "karras" else schedules.vp_quadratic(steps, 0.002, 80.0)
        plan = iia_jax.plan(solver, sig)
        t = time.perf_counter()
        res = iia_jax.fit(D, plan, xf, fine_steps=8, judge=None, refit=True, progress=False)
        fs = time.perf_counter() - t
        base = np.asarray(jax.jit(lambda x: iia_jax.sample(D, plan, x))(xe))
        x0 = np.asarray(jax.jit(lambda x: iia_jax.iia_sample(D, plan, res.coeffs, x))(xe))
        m = measure(x0, base, ref)
        np.save(ROOT / f"checkpoints/quality_guard/refit_{solver}_{grid}_{plan.nfe}.npy", x0)
        kept = np.flatnonzero(np.asarray(res.coeffs.kept)).tolist()
        out = dict(solver=solver, grid=grid, nfe=plan.nfe, kept=kept, fit_s=fs,
                   values=np.asarray(res.coeffs.values).tolist(), **m)
        with open(ROOT / "checkpoints/quality_guard/refit.jsonl", "a") as f:
            f.write(json.dumps(out) + "\n")
        print(spec, kept, {k: round(v, 3) for k, v in m.items()}, f"{fs:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
