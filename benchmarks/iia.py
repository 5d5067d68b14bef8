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

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import iia_jax  # noqa: E402
import iia_jax.nets  # noqa: E402,F401
from iia_jax import schedules  # noqa: E402
from iia_jax.bench import harness, models  # noqa: E402
from iia_jax.bench.report import table  # noqa: E402
from iia_jax.bench.speed import paired_ratio  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIGMA_MAX = 40.0
MODES = [("teacher_forced", "local"), ("sequential", "local"), ("sequential", "trajectory")]


def error_table(denoiser, solvers, nfes, fit_batch, eval_batch, fine_steps):
    """Fit noise PRNGKey(1), evaluation noise PRNGKey(2), reference heun 1000 Karras steps."""
    noise = harness.draws(1, (8, 8, 1), eval_batch, fit_batch, SIGMA_MAX, keys="consecutive")
    prob = harness.problem(denoiser, noise, 1000, 0.002, SIGMA_MAX)
    rows = []
    for solver in solvers:
        for nfe in nfes:
            plan = harness.plan_for(solver, nfe, 0.002, SIGMA_MAX)
            base = prob.base(plan)
            for mode, target in MODES:
                c = harness.compare(prob, plan, base, mode=mode, target=target, fine_steps=fine_steps)
                b, e = c.base_error, c.iia_error
                rows.append(dict(solver=solver, nfe=plan.nfe, mode=f"{mode}/{target}", base=b, iia=e,
                                 kept=c.kept, fit_s=c.result.report.fit_seconds))
                print(f"{solver:9s} NFE {plan.nfe:3d} {mode + '/' + target:26s} base {b.median:.4f} "
                      f"IIA {e.median:.4f} ({b.median / e.median:5.1f}x)  RMSE {b.rmse:.4f} -> "
                      f"{e.rmse:.4f}  kept {c.kept}  fit {rows[-1]['fit_s']:.1f}s", flush=True)
    return rows


def _cost(fn, x):
    """XLA's cost model of the compiled function: (flops, bytes accessed)."""
    cost = fn.lower(x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"], cost["bytes accessed"]


def overhead(repeats, batch=64, cases=(("heun", 5), ("euler", 10), ("dpmpp_2m", 10), ("ipndm", 10))):
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
    for solver, steps in cases:
        plan = iia_jax.plan(solver, schedules.karras(steps, 0.002, SIGMA_MAX))
        coeffs = iia_jax.fit(denoiser, plan, SIGMA_MAX * x[:16], fine_steps=2, holdout=0.0,
                             progress=False).coeffs
        base = jax.jit(lambda y: iia_jax.sample(denoiser, plan, y))
        iia = jax.jit(lambda y: iia_jax.iia_sample(denoiser, plan, coeffs, y))
        (flops_b, bytes_b), (flops_i, bytes_i) = _cost(base, x), _cost(iia, x)
        q50, q25, q75, base_s = paired_ratio(base, iia, (x,), (x,), repeats)
        out.append(dict(solver=solver, nfe=plan.nfe, ratio=q50, q25=q25, q75=q75,
                        flops=flops_i / flops_b, bytes=bytes_i / bytes_b, base_s=base_s))
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
             "worse check.", ""]
    lines += table(["solver", "NFE", "mode/target", "median base", "median IIA", "gain", "RMSE base", "RMSE IIA",
                    "kept", "fit s"],
                   [[r["solver"], r["nfe"], r["mode"], f"{r['base'].median:.4f}", f"{r['iia'].median:.4f}",
                     f"{r['base'].median / r['iia'].median:.1f}x", f"{r['base'].rmse:.4f}", f"{r['iia'].rmse:.4f}",
                     r["kept"], f"{r['fit_s']:.1f}"] for r in rows])
    lines += ["", f"![median ODE error vs NFE, base and IIA]({Path(path_png).name})"]
    lines += ["", "## Sampling overhead", "",
              "Jitted `iia_sample` over jitted `sample` on an `EDMUNet(channels=32)` denoiser, batch "
              f"64 of 8x8x1, same noise and NFE. Wall: median (and interquartile range) of {args.repeats} "
              "interleaved per-pair time ratios in one process. Flops and bytes: XLA's cost model of "
              "the two compiled programs (deterministic).", ""]
    lines += table(["solver", "NFE", "wall iia/base", "IQR", "flops iia/base", "bytes iia/base"],
                   [[o["solver"], o["nfe"], f"{o['ratio']:.3f}", f"{o['q25']:.3f}-{o['q75']:.3f}",
                     f"{o['flops']:.6f}", f"{o['bytes']:.4f}"] for o in over])
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
    ap = harness.parser(__doc__, "heun and euler at NFE 5, 32 samples", quick="smaller batches and fewer NFE")
    ap.add_argument("--out", type=Path, default=DOCS)
    args = ap.parse_args(argv)
    args.fit_batch, args.eval_batch = (256, 256) if args.quick else (512, 512)
    args.fine_steps = 8 if args.quick else 16
    nfes = [5, 9, 15] if args.quick else [5, 7, 9, 15, 25]
    solvers, cases = ["heun", "euler", "dpmpp_2m", "ipndm"], None
    if args.smoke:
        args.fit_batch, args.eval_batch, args.fine_steps, nfes = 32, 32, 2, [5]
        solvers, cases = ["heun", "euler"], (("euler", 5),)
    rows = error_table(models.prototypes(), solvers, nfes, args.fit_batch, args.eval_batch, args.fine_steps)
    args.repeats = 3 if args.smoke else 15 if args.quick else 41
    over = overhead(args.repeats, cases=cases) if cases else overhead(args.repeats)
    args.out.mkdir(exist_ok=True, parents=True)
    write(rows, over, args, args.out / "iia_results.md", args.out / "iia_error_vs_nfe.png")
    print(f"wrote {args.out / 'iia_results.md'} and {args.out / 'iia_error_vs_nfe.png'}")


if __name__ == "__main__":
    sys.exit(main())
