"""IIA benchmark: ODE error vs NFE, base vs IIA, every solver and fit mode; fit time; overhead.

    python benchmarks/iia.py            # full table (a few minutes on 2 CPU cores)
    python benchmarks/iia.py --quick    # smaller batches and fewer NFE

Writes docs/iia_results.md (the tables, with this command line) and docs/iia_error_vs_nfe.png.
Errors are measured on held-out noise (never used in the fit) against a far finer integration
(heun, 1000 Karras steps, from the same noise): median per-sample RMS and RMSE.
Overhead: wall time of jitted iia_sample vs jitted sample on a Flax U-Net denoiser at the same
NFE, interleaved repeats in one process; the ratio is what we report, never seconds alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import iia_jax  # noqa: E402
import iia_jax.nets  # noqa: E402,F401
from iia_jax import schedules  # noqa: E402
from iia_jax.metrics import ode_error  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIGMA_MAX = 40.0
MODES = [("teacher_forced", "local"), ("sequential", "local"), ("sequential", "trajectory")]


def mixture():
    """An image-shaped exact mixture: 10 well-separated 8x8 'prototypes', std 0.2."""
    means = jax.random.uniform(jax.random.PRNGKey(7), (10, 8, 8, 1), minval=-1.0, maxval=1.0)
    return iia_jax.models.gmm(means, 0.2)


def error_table(denoiser, solvers, nfes, fit_batch, eval_batch, fine_steps):
    shape = (8, 8, 1)
    x_fit = SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(1), (fit_batch,) + shape)
    x_eval = SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(2), (eval_batch,) + shape)
    reference = jax.jit(lambda x: iia_jax.sample(denoiser, iia_jax.plan("heun", schedules.karras(1000, 0.002, SIGMA_MAX)), x))(x_eval)
    rows = []
    for solver in solvers:
        for nfe in nfes:
            steps = (nfe + 1) // 2 if solver == "heun" else nfe
            plan = iia_jax.plan(solver, schedules.karras(steps, 0.002, SIGMA_MAX))
            base = ode_error(jax.jit(lambda x: iia_jax.sample(denoiser, plan, x))(x_eval), reference)
            for mode, target in MODES:
                res = iia_jax.fit(denoiser, plan, x_fit, mode=mode, target=target, fine_steps=fine_steps,
                                  progress=False)
                err = ode_error(iia_jax.iia_sample(denoiser, plan, res.coeffs, x_eval), reference)
                rows.append(dict(solver=solver, nfe=plan.nfe, mode=f"{mode}/{target}", base=base, iia=err,
                                 kept=int(res.report.kept.sum()), steps=steps,
                                 fit_s=res.report.fit_seconds))
                r = rows[-1]
                print(f"{solver:9s} NFE {plan.nfe:3d} {r['mode']:26s} base {base.median:.4f} "
                      f"IIA {err.median:.4f} ({base.median / err.median:5.1f}x)  RMSE {base.rmse:.4f} -> "
                      f"{err.rmse:.4f}  kept {r['kept']}/{steps}  fit {r['fit_s']:.1f}s", flush=True)
    return rows


def _cost(fn, x):
    """XLA's cost model of the compiled function: (flops, bytes accessed)."""
    cost = fn.lower(x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"], cost["bytes accessed"]


def overhead(repeats, batch=64):
    """iia_sample vs sample on a U-Net denoiser (same noise, same NFE), measured two ways.

    * XLA's cost model of the two compiled programs (flops, bytes): deterministic, so it shows
      the extra work even on a noisy machine.
    * Wall time: ``repeats`` interleaved pairs (base, IIA) in one process; the reported ratio is
      the median of the per-pair ratios with its interquartile range, which is robust to the
      slow drifts of a shared machine that dominate a ratio of two separate medians.
    """
    net = iia_jax.nets.EDMUNet(channels=32)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 8, 8, 1))
    params = net.init(jax.random.PRNGKey(1), x, jnp.zeros((batch,)))
    denoise = iia_jax.nets.edm_precond(lambda p, y, c: net.apply(p, y, c))
    denoiser = iia_jax.nets.bind(denoise, params)
    out = []
    for solver, steps in [("heun", 5), ("euler", 10), ("dpmpp_2m", 10), ("ipndm", 10)]:
        plan = iia_jax.plan(solver, schedules.karras(steps, 0.002, SIGMA_MAX))
        coeffs = iia_jax.fit(denoiser, plan, SIGMA_MAX * x[:16], fine_steps=2, holdout=0.0,
                             progress=False).coeffs
        base = jax.jit(lambda y: iia_jax.sample(denoiser, plan, y))
        iia = jax.jit(lambda y: iia_jax.iia_sample(denoiser, plan, coeffs, y))
        (flops_b, bytes_b), (flops_i, bytes_i) = _cost(base, x), _cost(iia, x)
        base(x).block_until_ready(), iia(x).block_until_ready()
        ratios = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            base(x).block_until_ready()
            t1 = time.perf_counter()
            iia(x).block_until_ready()
            t2 = time.perf_counter()
            ratios.append((t2 - t1) / (t1 - t0))
        q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
        out.append(dict(solver=solver, nfe=plan.nfe, ratio=q50, q25=q25, q75=q75,
                        flops=flops_i / flops_b, bytes=bytes_i / bytes_b, base_s=t1 - t0))
        print(f"overhead {solver:9s} NFE {plan.nfe:3d}: wall iia/base {q50:.3f} (IQR {q25:.3f}-{q75:.3f}), "
              f"flops {flops_i / flops_b:.6f}, bytes {bytes_i / bytes_b:.4f}", flush=True)
    return out


def write(rows, over, args, path_md, path_png):
    lines = ["# IIA benchmark results", "",
             f"Produced by `python benchmarks/iia.py{' --quick' if args.quick else ''}` "
             f"(jax {jax.__version__}, {jax.devices()[0].platform}, {args.fit_batch} fit samples, "
             f"{args.eval_batch} held-out evaluation samples, fine_steps={args.fine_steps}).", "",
             "Model: exact 10-mode Gaussian mixture on 8x8x1 images (std 0.2), Karras grid "
             f"sigma 0.002..{SIGMA_MAX}. Error: per-sample RMS to a 1000-step Heun solution from the "
             "same noise; median over samples, and RMSE. `kept` counts steps that passed the never-"
             "worse check.", "",
             "| solver | NFE | mode/target | median base | median IIA | gain | RMSE base | RMSE IIA | kept | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['nfe']} | {r['mode']} | {r['base'].median:.4f} | "
                     f"{r['iia'].median:.4f} | {r['base'].median / r['iia'].median:.1f}x | "
                     f"{r['base'].rmse:.4f} | {r['iia'].rmse:.4f} | {r['kept']}/{r['steps']} | {r['fit_s']:.1f} |")
    lines += ["", f"![median ODE error vs NFE, base and IIA]({Path(path_png).name})"]
    lines += ["", "## Sampling overhead", "",
              "Jitted `iia_sample` over jitted `sample` on an `EDMUNet(channels=32)` denoiser, batch "
              f"64 of 8x8x1, same noise and NFE. Wall: median (and interquartile range) of {args.repeats} "
              "interleaved per-pair time ratios in one process. Flops and bytes: XLA's cost model of "
              "the two compiled programs (deterministic).", "",
              "| solver | NFE | wall iia/base | IQR | flops iia/base | bytes iia/base |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {o['solver']} | {o['nfe']} | {o['ratio']:.3f} | {o['q25']:.3f}-{o['q75']:.3f} | "
              f"{o['flops']:.6f} | {o['bytes']:.4f} |" for o in over]
    path_md.write_text("\n".join(lines) + "\n")

    solvers = sorted({r["solver"] for r in rows}, key=[r["solver"] for r in rows].index)
    fig, axes = plt.subplots(1, len(solvers), figsize=(4 * len(solvers), 3.4), squeeze=False)
    for ax, solver in zip(axes[0], solvers):
        sel = [r for r in rows if r["solver"] == solver]
        nfes = sorted({r["nfe"] for r in sel})
        ax.loglog(nfes, [next(r["base"].median for r in sel if r["nfe"] == n) for n in nfes], "k-o", label="base")
        for mode in sorted({r["mode"] for r in sel}):
            ax.loglog(nfes, [next(r["iia"].median for r in sel if r["nfe"] == n and r["mode"] == mode)
                             for n in nfes], "-o", label=f"IIA {mode}")
        ax.set_title(solver)
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median ODE error")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    args.fit_batch, args.eval_batch = (256, 256) if args.quick else (512, 512)
    args.fine_steps = 8 if args.quick else 16
    nfes = [5, 9, 15] if args.quick else [5, 7, 9, 15, 25]
    rows = error_table(mixture(), ["heun", "euler", "dpmpp_2m", "ipndm"], nfes, args.fit_batch,
                       args.eval_batch, args.fine_steps)
    args.repeats = 15 if args.quick else 41
    over = overhead(args.repeats)
    DOCS.mkdir(exist_ok=True)
    write(rows, over, args, DOCS / "iia_results.md", DOCS / "iia_error_vs_nfe.png")
    print(f"wrote {DOCS / 'iia_results.md'} and {DOCS / 'iia_error_vs_nfe.png'}")


if __name__ == "__main__":
    sys.exit(main())
