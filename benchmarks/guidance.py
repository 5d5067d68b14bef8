"""IIA under classifier-free guidance on the shipped class-conditional digits model.

For each guidance scale s, the guided denoiser ``iia_jax.models.guided(digits_cond(), s, 10)``
(one batched network call on [x; x] with labels [cond; null]) is sampled base and IIA (library
defaults, coefficients fitted for that scale with per-sample labels) from the same fresh noise and
labels 0..9 in turn, and compared with a fine reference (heun, ``REF_STEPS`` Karras steps, same
noise and labels) by median ODE error, with the digits quality headline
(``iia_jax.metrics.digits_score``, 1000 x KID against real digits, lower is better) and the class
accuracy of the shipped digits classifier (trained separately; it reads the requested digit).

    python benchmarks/guidance.py [--quick]     -> docs/guidance_results.md and .json, docs/guidance_samples.png

The fine references are cached under checkpoints/guidance/ (untracked).
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import iia_jax
from iia_jax import pretrained
from iia_jax.bench import harness
from iia_jax.bench.provenance import command_line, save_json
from iia_jax.models import guided
from iia_jax.plots import sample_grid

SIGMA_MIN, SIGMA_MAX, NULL = 0.002, 80.0, 10
REF_STEPS = 48
BATCH = 250   # evaluation rows per call
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "checkpoints" / "guidance"


def accuracy(samples, labels) -> float:
    logits = np.asarray(pretrained.digits_classifier().logits(jnp.clip(jnp.asarray(samples), -1, 1)))
    return float(np.mean(logits.argmax(-1) == np.asarray(labels)))


def problem(denoiser, scale, noise, cond, cache=CACHE) -> harness.Problem:
    """The noise with its fine reference at this scale (cached, per shipped weights: a retrained
    model must not reuse the references of the old one)."""
    weights = pretrained.load("digits_cond").record["weights_sha256"][:12]
    path = cache / f"ref_{weights}_s{scale}_n{len(noise.eval)}_steps{REF_STEPS}.npz"
    if path.exists():
        return harness.Problem(denoiser, noise, np.load(path)["x0"], SIGMA_MIN, SIGMA_MAX, *cond, BATCH)
    prob = harness.problem(denoiser, noise, REF_STEPS, SIGMA_MIN, SIGMA_MAX, cond=cond, batch=BATCH)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, x0=prob.reference)
    return prob


def run(scales, nfes, solvers, n, fit_batch, fine_steps, seed=0, cache=CACHE):
    cond_model = pretrained.digits_cond()
    noise = harness.draws(seed, (8, 8, 1), n, fit_batch, SIGMA_MAX)
    c_fit = jnp.arange(fit_batch, dtype=jnp.int32) % 10
    c_eval = jnp.arange(n, dtype=jnp.int32) % 10
    rows, grids = [], {}
    for scale in scales:
        d = guided(cond_model, scale, NULL)
        start = time.perf_counter()
        prob = problem(d, scale, noise, (c_fit, c_eval), cache)
        ref = prob.reference
        q_ref, q_ref_se = harness.score(ref)
        rows.append(dict(scale=scale, solver="reference", nfe=2 * REF_STEPS - 1, median_base=0.0,
                         median_iia=0.0, score_base=q_ref, score_iia=q_ref,
                         score_se=q_ref_se, acc_base=accuracy(ref, c_eval), acc_iia=accuracy(ref, c_eval),
                         kept="", fit_s=0.0))
        print(f"s={scale}: reference in {time.perf_counter() - start:.0f} s, score {q_ref:.2f}, "
              f"accuracy {rows[-1]['acc_base']:.3f}", flush=True)
        for solver in solvers:
            for nfe in nfes:
                plan = harness.plan_for(solver, nfe, SIGMA_MIN, SIGMA_MAX)
                c = harness.compare(prob, plan, fine_steps=fine_steps)
                base, iia = c.base, c.iia
                (qb, qb_se), (qi, qi_se) = harness.score(base), harness.score(iia)
                row = dict(scale=scale, solver=solver, nfe=plan.nfe,
                           median_base=c.base_error.median, median_iia=c.iia_error.median,
                           score_base=qb, score_iia=qi, score_se=max(qb_se, qi_se),
                           acc_base=accuracy(base, c_eval), acc_iia=accuracy(iia, c_eval),
                           kept=c.kept, fit_s=c.result.report.fit_seconds)
                rows.append(row)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
                if solver == solvers[0] and nfe == max(nfes):
                    labels = np.asarray(c_eval)   # eight samples of each class, one class a row
                    order = np.concatenate([np.flatnonzero(labels == k)[:8] for k in range(10)])
                    grids[f"s={scale}"] = {"reference": ref[order], f"base NFE {plan.nfe}": base[order],
                                           f"IIA NFE {plan.nfe}": iia[order]}
    return rows, grids


def write(rows, grids, args, seconds, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    sample_grid(grids, out / "guidance_samples.png", cols=8,
                title=f"guided digits (labels 0-9 by row), {args.solvers[0]}: fine reference | base | IIA")
    header = ("| s | solver | NFE | median ODE err base | IIA | gain | score base | IIA | (se) | "
              "class acc base | IIA | kept | fit s |")
    lines = [header, "|" + "---|" * 13]
    for r in rows:
        gain = r["median_base"] / r["median_iia"] if r["median_iia"] else float("nan")
        lines.append(f"| {r['scale']} | {r['solver']} | {r['nfe']} | {r['median_base']:.4f} | "
                     f"{r['median_iia']:.4f} | {gain:.2f}x | {r['score_base']:.2f} | {r['score_iia']:.2f} | "
                     f"{r['score_se']:.2f} | {r['acc_base']:.3f} | {r['acc_iia']:.3f} | {r['kept']} | "
                     f"{r['fit_s']:.0f} |")
    env = (f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform} jax {jax.__version__}, "
           f"iia_jax {iia_jax.__version__}")
    command = command_line("benchmarks/guidance.py", args.argv)
    text = TEMPLATE.format(table="\n".join(lines), command=command,
                           seconds=seconds, n=args.n, fit_batch=args.fit_batch, fine_steps=args.fine_steps,
                           ref_steps=REF_STEPS, ref_nfe=2 * REF_STEPS - 1, env=env)
    (out / "guidance_results.md").write_text(text)
    save_json(out / "guidance_results.json", dict(rows=rows), command)
    print(text)


TEMPLATE = """# Guided sampling: measured

Command: `{command}` ({seconds:.0f} s wall on {env}; 2 shared CPU cores).
Model: the shipped class-conditional digits denoiser, guided by `iia_jax.models.guided(digits_cond(), s, 10)`.
Evaluation: {n} fresh noise draws with labels 0..9 in turn (seed 0); fit: {fit_batch} other draws,
labels likewise, library defaults with `fine_steps={fine_steps}`, coefficients fitted per scale.
Reference: heun, {ref_steps} Karras steps (NFE {ref_nfe}), same noise and labels and scale.
Score: `digits_score` (1000 x KID against 600 real digits; lower is better; `se` is the larger
standard error of the two); the reference row gives the floor the solver is converging to at that
scale (strong guidance moves samples away from the data distribution on purpose). Class accuracy:
the shipped digits classifier reads the requested digit.

{table}
"""


def main(argv=None):
    ap = harness.parser(__doc__, "scale 2, euler NFE 5, 50 samples", quick="two scales, one NFE, 200 samples")
    ap.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 4.0, 7.5])
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10])
    ap.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "euler", "heun"])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--fit-batch", type=int, default=256)
    ap.add_argument("--fine-steps", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args(argv)
    args.argv = [] if argv is None else list(argv)
    if args.quick:
        args.scales, args.nfe, args.n, args.fit_batch = [1.0, 3.0], [10], 200, 128
    cache = CACHE
    if args.smoke:
        args.scales, args.nfe, args.solvers, args.n, args.fit_batch, args.fine_steps = [2.0], [5], ["euler"], 50, 32, 2
        cache = Path(args.out) / "cache"
    start = time.perf_counter()
    rows, grids = run(args.scales, args.nfe, args.solvers, args.n, args.fit_batch, args.fine_steps, cache=cache)
    write(rows, grids, args, time.perf_counter() - start, Path(args.out))


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
