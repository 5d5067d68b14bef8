"""The main job, ``iia-jax demo``: IIA on the shipped digits model, end to end.

For heun, euler and dpmpp_2m at the same low NFE, in the recommended configuration of the README
(the one ``iia-jax fit --model digits`` uses: the ``vp_quadratic`` grid, ``fine_steps=16``, 1,024
fit rows and the digits judge in the never-worse check, ``quality=digits_check``; otherwise
``iia_jax.fit``'s defaults): fit IIA coefficients (saved with orbax under ``OUT/coeffs``), sample
base and IIA from the same fresh noise, and compare both with a fine reference (heun, 64 Karras steps, same noise) by median ODE error and ``digits_score`` (1000 x KID
against real digits in the features of a judge classifier that never saw them, validated on ladders
of known order in ``docs/metrics.md``; lower is better, real held-out digits score about 0), with
its jackknife error and the paired error of the IIA - base difference.  Writes
``OUT/results.json``, ``OUT/samples_grid.png`` (fine reference | base | IIA) and
``OUT/coefficients.png``.  The demo owns ``OUT`` and replaces its own earlier results there; its
coefficients carry the shipped model's fingerprint, so ``iia-jax sample --coeffs OUT/coeffs/heun-5``
samples with them.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax

import iia_jax
from . import schedules, solvers
from .bench.grids import steps_for
from .bench.harness import run_batched
from .cli import load_model
from .metrics import ode_error
from .metrics.quality import digits_check, digits_quality, digits_split, score_difference
from .plots import coefficient_plot, sample_grid

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
REFERENCE_STEPS = 64
SOLVERS = ("heun", "euler", "dpmpp_2m")


def run_demo(out: Path, steps: int = 5, n: int = 500, batch: int = 1024, fine_steps: int = 16, seed: int = 0):
    """The demo: heun with ``steps`` steps (NFE ``2 steps - 1``), euler and dpmpp_2m at that NFE,
    on the ``vp_quadratic`` grid; returns the table's rows (also in ``OUT/results.json``)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (heun's steps; NFE = 2 steps - 1), got {steps}")
    nfe = solvers.get("heun").nfe(steps)     # the NFE every solver gets: heun's with `steps` steps
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("digits")     # its fingerprint: the demo's coefficients work with `iia-jax sample --coeffs`
    denoiser = model.denoiser
    key_fit, key_eval = jax.random.split(jax.random.PRNGKey(seed))
    shape = (8, 8, 1)
    x_fit = SIGMA_MAX * jax.random.normal(key_fit, (batch,) + shape)
    x_eval = SIGMA_MAX * jax.random.normal(key_eval, (n,) + shape)

    ref_plan = iia_jax.plan("heun", schedules.karras(REFERENCE_STEPS, SIGMA_MIN, SIGMA_MAX))
    print(f"fine reference: heun, {REFERENCE_STEPS} Karras steps (NFE {ref_plan.nfe}), {n} samples ...", flush=True)
    reference = run_batched(jax.jit(lambda x: iia_jax.sample(denoiser, ref_plan, x)), x_eval, batch=500)
    rows, grids, coeffs = [], {}, {}
    for solver in SOLVERS:
        num_steps = steps_for(nfe, solver, exact=True)
        plan = iia_jax.plan(solver, schedules.vp_quadratic(num_steps, SIGMA_MIN, SIGMA_MAX))
        print(f"{solver}: fitting IIA ({plan}, vp_quadratic grid) on {batch} samples ...", flush=True)
        res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=fine_steps, fingerprint=model.fingerprint,
                          quality=digits_check, progress=True)
        iia_jax.save_coefficients(out / "coeffs" / f"{solver}-{num_steps}", res.coeffs, overwrite=True)
        base = run_batched(jax.jit(lambda x: iia_jax.sample(denoiser, plan, x)), x_eval, batch=500)
        iia = run_batched(jax.jit(lambda x: iia_jax.iia_sample(denoiser, plan, res.coeffs, x)), x_eval, batch=500)
        e_base, e_iia = ode_error(base, reference), ode_error(iia, reference)
        q_base, q_iia = digits_quality(base, boot=2), digits_quality(iia, boot=2)
        diff, diff_se = score_difference(iia, base, paired=True)
        rows.append(dict(solver=solver, nfe=plan.nfe, median_base=e_base.median, median_iia=e_iia.median,
                         rmse_base=e_base.rmse, rmse_iia=e_iia.rmse, score_base=q_base["score"],
                         score_base_se=q_base["score_se"], score_iia=q_iia["score"], score_iia_se=q_iia["score_se"],
                         score_diff=diff, score_diff_se=diff_se, fit_seconds=res.report.fit_seconds,
                         kept=int(res.report.kept.sum()), steps=num_steps,
                         dropped_for_quality=list(res.report.quality_dropped)))
        grids[f"{solver} NFE {plan.nfe}"] = {"fine reference": reference[:36], "base": base[:36],
                                             "IIA": iia[:36]}
        coeffs[f"{solver} NFE {plan.nfe}"] = res.coeffs
    q_ref, q_real = digits_quality(reference, boot=2), digits_quality(digits_split("test"), boot=2)

    header = (f"{'solver':9s} {'NFE':>4s} {'median ODE err base':>20s} {'IIA':>7s} {'gain':>6s} "
              f"{'score base':>12s} {'score IIA':>12s} {'IIA - base':>13s} {'fit s':>6s} {'kept':>5s}")
    print("\n" + header + "\n" + "-" * len(header))
    pm = lambda v, e: f"{v:.0f} +- {e:.0f}"  # noqa: E731
    for r in rows:
        print(f"{r['solver']:9s} {r['nfe']:4d} {r['median_base']:20.4f} {r['median_iia']:7.4f} "
              f"{r['median_base'] / r['median_iia']:5.1f}x {pm(r['score_base'], r['score_base_se']):>12s} "
              f"{pm(r['score_iia'], r['score_iia_se']):>12s} {pm(r['score_diff'], r['score_diff_se']):>13s} "
              f"{r['fit_seconds']:6.1f} {r['kept']:>2d}/{r['steps']:<2d}")
    print(f"\nscore = digits_score, 1000 x KID vs real digits (lower is better; n={n}; +- jackknife se, the "
          f"IIA - base column paired).\nfine reference (NFE {ref_plan.nfe}): {pm(q_ref['score'], q_ref['score_se'])};"
          f"  real held-out digits (n=300): {pm(q_real['score'], q_real['score_se'])}")

    sample_grid(grids, out / "samples_grid.png", title=f"digits, vp_quadratic grid: fine reference | base | IIA at NFE {nfe}", cols=6)
    coefficient_plot(coeffs, out / "coefficients.png")
    (out / "results.json").write_text(json.dumps(
        dict(rows=rows, score_reference=q_ref["score"], score_reference_se=q_ref["score_se"],
             score_real_test=q_real["score"], score_real_test_se=q_real["score_se"],
             n=n, fit_batch=batch, fine_steps=fine_steps, seed=seed, grid="vp_quadratic"), indent=2))
    print(f"wrote {out / 'results.json'}, {out / 'samples_grid.png'}, {out / 'coefficients.png'}, "
          f"coefficients under {out / 'coeffs'}")
    return rows
