"""How much lower any IIA coefficients could take one plan's error: the fit's coefficients against
every step's coefficients tuned together, end to end.

    python benchmarks/coefficient_bound.py                  # ipndm on fit_plan's grid, NFE 5
    python benchmarks/coefficient_bound.py --iterations 50  # quicker, further from settled
    python benchmarks/coefficient_bound.py --table          # the page from the saved results

``iia_jax.fit`` solves each step's coefficients by least squares against that step's fine target,
one step after another.  Here all steps' coefficients are instead tuned together: Adam on the mean
per-sample RMS error of the final samples against the model's own 64-step samples of the same fit
draws, backpropagated through the whole IIA sampler, as learned samplers tune theirs (Watson et al.,
"Learning Fast Samplers for Diffusion Models by Differentiating Through Sample Quality", ICLR 2022;
Kim et al., "Distilling ODE Solvers of Diffusion Models into Smaller Steps", CVPR 2024).  It starts
from the fit's coefficients; the plan, the features and the model calls stay the same.  What it
reaches on fresh draws shows how much room other coefficients for this plan and these features leave.

Setting as ``iia-jax bench few-steps`` (``iia_jax/bench/few_steps.py``): the shipped digits model,
``fit_plan`` on its 1,024 fit draws (``PRNGKey(20)``), the first ``--rows`` of them tuned on, its
2,000 evaluation draws (``PRNGKey(21)``), its reference and its best peer at that NFE (samples read
from ``checkpoints/few_steps/`` where there, else sampled again from the same noise).  Judged by
the median per-sample ODE error and ``digits_score``, paired against that peer.  Writes
``docs/coefficient_bound.json`` and ``docs/coefficient_bound.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                  # this checkout's iia_jax
import iia_jax  # noqa: E402
from iia_jax import pretrained  # noqa: E402
from iia_jax.bench import few_steps, provenance  # noqa: E402
from iia_jax.bench.grids import steps_for  # noqa: E402
from iia_jax.bench.harness import run_batched  # noqa: E402
from iia_jax.metrics import digits_score, ode_error, per_sample_rms, score_difference  # noqa: E402


def tune(denoiser, plan, coeffs, x, reference, iterations: int, lr: float):
    """``(values, losses)``: every step's coefficients tuned together by Adam on the mean per-sample
    RMS error of ``iia_sample(x)`` against ``reference``; ``losses`` every tenth iteration."""
    def loss(values):
        samples = iia_jax.iia_sample(denoiser, plan, dataclasses.replace(coeffs, values=values), x)
        return jnp.mean(per_sample_rms(samples, reference))

    opt = optax.adam(lr)

    @jax.jit
    def step(values, state):
        value, grad = jax.value_and_grad(loss)(values)
        updates, state = opt.update(grad, state, values)
        return optax.apply_updates(values, updates), state, value

    values = jnp.asarray(coeffs.values)
    state, losses = opt.init(values), []
    for i in range(iterations):
        values, state, value = step(values, state)
        if i % 10 == 0:
            losses.append([i, float(value)])
            print(f"iteration {i:4d}: fit rows' mean RMS error {float(value):.5f}", flush=True)
    losses.append([iterations, float(loss(values))])
    return values, losses


def judged(samples, ref, peer) -> dict:
    d, se = score_difference(samples, peer, paired=True)
    err = ode_error(samples, ref)
    return dict(median=err.median, rmse=err.rmse, score=digits_score(samples), diff=d, diff_se=se)


def peer_and_reference(denoiser, saved: dict, nfe: int, x, samples: Path):
    """The best peer's name and samples at ``nfe`` in few_steps' ``saved`` results, and the model's
    own samples of ``x`` (read where saved, else sampled again from the same noise)."""
    row = few_steps.best_peer_row(saved["rows"], nfe)
    f, r = samples / row["file"], few_steps.reference_file(samples, len(x))
    peer = np.load(f) if f.exists() else few_steps.peer_samples(denoiser, row["method"], row["grid"], nfe, x)
    ref = np.load(r) if r.exists() else few_steps.sample_reference(denoiser, x)
    return f"{row['method']}, {row['grid']}", peer, ref


def measure(args) -> dict:
    D = pretrained.digits()
    saved = json.loads((ROOT / "docs" / "few_steps.json").read_text())
    x_fit, x = few_steps.noise(1024, 20), few_steps.noise(saved["n"], 21)
    peer_name, peer, ref = peer_and_reference(D, saved, args.nfe, x, Path(args.samples))
    t = time.perf_counter()
    pf = iia_jax.fit_plan(D, args.solver, steps_for(args.nfe, args.solver), x_fit, sigma_min=few_steps.SIGMA_MIN,
                          sigma_max=few_steps.SIGMA_MAX, progress=False)
    fit_s = time.perf_counter() - t
    rows = x_fit[:args.rows]
    rows_ref = few_steps.sample_reference(D, rows)
    t = time.perf_counter()
    values, losses = tune(D, pf.plan, pf.coeffs, rows, jnp.asarray(rows_ref), args.iterations, args.lr)
    tune_s = time.perf_counter() - t

    sample = jax.jit(lambda values, r: iia_jax.iia_sample(D, pf.plan, dataclasses.replace(pf.coeffs, values=values), r))
    fitted, tuned = (run_batched(lambda r: sample(v, r), x, batch=few_steps.BATCH)
                     for v in (jnp.asarray(pf.coeffs.values), values))     # one compiled sampler for both
    d, se = score_difference(tuned, fitted, paired=True)
    return dict(solver=args.solver, nfe=args.nfe, grid=pf.report.chosen, sigmas=np.asarray(pf.plan.sigmas).tolist(),
                rows=args.rows, iterations=args.iterations, lr=args.lr, fit_s=fit_s, tune_s=tune_s, peer=peer_name,
                n=len(x), losses=losses, fitted=judged(fitted, ref, peer), tuned=judged(tuned, ref, peer),
                tuned_minus_fitted=[d, se], values_fitted=np.asarray(pf.coeffs.values).tolist(),
                values_tuned=np.asarray(values).tolist())


def page(res: dict) -> str:
    meta = res["provenance"]
    lines = [f"# How much lower other coefficients could take IIA's error ({res['solver']}, NFE {res['nfe']})", "",
             f"IIA's coefficients for one plan ({res['solver']} on the grid `fit_plan` returned, {res['grid']}: "
             + ", ".join(f"{s:.3g}" for s in res["sigmas"]) + ") as `iia_jax.fit` solves them, step by step, "
             f"against every step's coefficients tuned together: Adam ({res['iterations']} iterations, learning rate "
             f"{res['lr']:g}) on the mean per-sample RMS error of the final samples against the model's own 64-step "
             f"samples of {res['rows']} of the fit draws, through the whole sampler, starting from the fit's. The same "
             "plan, features and model calls; what the tuned coefficients reach on fresh draws shows how much room "
             f"other coefficients for this plan leave ({_settling(res['losses'])}). Judged on the {res['n']:,} evaluation draws of "
             "[few_steps.md](few_steps.md), against its best peer there "
             f"({res['peer']}). Method in `benchmarks/coefficient_bound.py`.", "",
             "| coefficients | fit rows' mean RMS error | median ODE error | RMSE | digits_score | IIA - peer |",
             "|---|---:|---:|---:|---:|---:|"]
    first, last = res["losses"][0][1], res["losses"][-1][1]
    for name, key, loss in (("the fit's (least squares, step by step)", "fitted", first),
                            ("tuned together", "tuned", last)):
        j = res[key]
        lines.append(f"| {name} | {loss:.4f} | {j['median']:.4f} | {j['rmse']:.4f} | {j['score']:.1f} | "
                     f"{j['diff']:+.1f} +- {j['diff_se']:.1f} |")
    d, se = res["tuned_minus_fitted"]
    lines += ["", f"Tuned - fitted, paired `digits_score`: {d:+.1f} +- {se:.1f}. The fit took {res['fit_s']:.0f} s, "
              f"the tuning {res['tune_s']:.0f} s. Against the peers at this NFE, and what a win there would ask of "
              "IIA: [few_steps.md](few_steps.md).", "",
              f"*`{meta['command']}` ({meta['date']}); {meta['machine']}; {meta['versions']}; "
              f"revision {meta['revision']}.*", ""]
    return "\n".join(lines)


def _settling(losses) -> str:
    """How far the tuning still moved: the fit rows' error over its last 100 iterations."""
    by_iteration = dict((int(i), v) for i, v in losses)
    last = max(by_iteration)
    if last < 200:
        return f"the tuning stopped after {last} iterations, before it settled"
    return (f"its last 100 iterations lowered the fit rows' error by {1 - by_iteration[last] / by_iteration[last - 100]:.1%}, "
            f"its first 100 by {1 - by_iteration[100] / by_iteration[0]:.1%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--solver", default="ipndm", choices=few_steps.IIA_SOLVERS)
    ap.add_argument("--nfe", type=int, default=5, choices=few_steps.NFES)
    ap.add_argument("--rows", type=int, default=256, help="fit draws tuned on (the first of the fit's 1,024)")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--samples", default=str(ROOT / few_steps.DEFAULT_SAMPLES), help="few_steps' saved samples")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--table", action="store_true", help="write the page from OUT/coefficient_bound.json and stop")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not args.table:
        command = "python benchmarks/coefficient_bound.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        meta = provenance.provenance(command.strip())
        res = measure(args)
        provenance.save_json(out / "coefficient_bound.json", res, command.strip(), meta=meta)
    text = page(json.loads((out / "coefficient_bound.json").read_text()))
    (out / "coefficient_bound.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
