"""The main job, ``iia-jax demo``: IIA on the shipped digits model, end to end.

For heun, euler and dpmpp_2m at the same low NFE: fit IIA coefficients (saved with orbax under
``OUT/coeffs``), sample base and IIA from the same fresh noise, and compare both with a fine
reference (heun, 64 Karras steps, same noise) by median ODE error and the digits FD.  Writes
``OUT/results.json``, ``OUT/samples_grid.png`` (fine reference | base | IIA) and
``OUT/coefficients.png``.  The demo owns ``OUT`` and replaces its own earlier results there.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

import iia_jax
from . import pretrained, schedules
from .metrics import ode_error
from .metrics.fd import digits_fd, digits_fd_sanity
from .plots import coefficient_plot, sample_grid

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
REFERENCE_STEPS = 64


def _run(fn, x, batch=500):
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def run_demo(out: Path, nfe: int = 9, n: int = 500, batch: int = 256, fine_steps: int = 8, seed: int = 0):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    denoiser = pretrained.digits()
    key_fit, key_eval = jax.random.split(jax.random.PRNGKey(seed))
    shape = (8, 8, 1)
    x_fit = SIGMA_MAX * jax.random.normal(key_fit, (batch,) + shape)
    x_eval = SIGMA_MAX * jax.random.normal(key_eval, (n,) + shape)

    ref_plan = iia_jax.plan("heun", schedules.karras(REFERENCE_STEPS, SIGMA_MIN, SIGMA_MAX))
    print(f"fine reference: heun, {REFERENCE_STEPS} Karras steps (NFE {ref_plan.nfe}), {n} samples ...", flush=True)
    reference = _run(jax.jit(lambda x: iia_jax.sample(denoiser, ref_plan, x)), x_eval)
    sanity = digits_fd_sanity()
    rows, grids, coeffs = [], {}, {}
    for solver in ("heun", "euler", "dpmpp_2m"):
        steps = (nfe + 1) // 2 if solver == "heun" else nfe
        plan = iia_jax.plan(solver, schedules.karras(steps, SIGMA_MIN, SIGMA_MAX))
        print(f"{solver}: fitting IIA ({plan}) on {batch} samples ...", flush=True)
        res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=fine_steps, fingerprint="digits-shipped",
                          progress=True)
        iia_jax.save_coefficients(out / "coeffs" / f"{solver}-{steps}", res.coeffs, overwrite=True)
        base = _run(jax.jit(lambda x: iia_jax.sample(denoiser, plan, x)), x_eval)
        iia = _run(jax.jit(lambda x: iia_jax.iia_sample(denoiser, plan, res.coeffs, x)), x_eval)
        e_base, e_iia = ode_error(base, reference), ode_error(iia, reference)
        rows.append(dict(solver=solver, nfe=plan.nfe, median_base=e_base.median, median_iia=e_iia.median,
                         rmse_base=e_base.rmse, rmse_iia=e_iia.rmse, fd_base=digits_fd(base),
                         fd_iia=digits_fd(iia), fit_seconds=res.report.fit_seconds,
                         kept=int(res.report.kept.sum()), steps=steps))
        grids[f"{solver} NFE {plan.nfe}"] = {"fine reference": reference[:36], "base": base[:36],
                                             "IIA": iia[:36]}
        coeffs[f"{solver} NFE {plan.nfe}"] = res.coeffs
    fd_ref = digits_fd(reference)

    header = (f"{'solver':9s} {'NFE':>4s} {'median ODE err base':>20s} {'IIA':>8s} {'gain':>6s} "
              f"{'FD base':>8s} {'FD IIA':>8s} {'fit s':>6s} {'kept':>5s}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['solver']:9s} {r['nfe']:4d} {r['median_base']:20.4f} {r['median_iia']:8.4f} "
              f"{r['median_base'] / r['median_iia']:5.1f}x {r['fd_base']:8.2f} {r['fd_iia']:8.2f} "
              f"{r['fit_seconds']:6.1f} {r['kept']:>2d}/{r['steps']:<2d}")
    print(f"\nFD of the fine reference (NFE {ref_plan.nfe}): {fd_ref:.2f};  real held-out digits "
          f"(floor, n=300): {sanity['floor']:.2f};  noisy digits (ceiling): {sanity['noise']:.2f}")
    print(f"(FD uses {n} samples; it is biased upward for small n)")

    sample_grid(grids, out / "samples_grid.png", title=f"digits: fine reference | base | IIA at NFE ~{nfe}", cols=6)
    coefficient_plot(coeffs, out / "coefficients.png")
    (out / "results.json").write_text(json.dumps(
        dict(rows=rows, fd_reference=fd_ref, fd_floor=sanity["floor"], fd_noise_ceiling=sanity["noise"],
             n=n, fit_batch=batch, fine_steps=fine_steps, seed=seed), indent=2))
    print(f"wrote {out / 'results.json'}, {out / 'samples_grid.png'}, {out / 'coefficients.png'}, "
          f"coefficients under {out / 'coeffs'}")
    return rows
