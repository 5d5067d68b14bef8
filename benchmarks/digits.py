"""Digits FD vs NFE: base solvers vs IIA on the shipped digits model (issue 4).

    python benchmarks/digits.py            # the full table (docs/digits.md)
    python benchmarks/digits.py --quick    # fewer NFE, samples and fit rows; writes to a temp dir

For heun, euler and dpmpp_2m on the EDM Karras grid (rho 7, sigma 80 -> 0.002 -> 0) at each NFE
(heun: odd NFE = 2N - 1): fit IIA with the default settings (``iia_jax.fit``: sequential mode,
the solver's default target, history 1, 25 % held out for the never-worse check) on
``--fit-batch`` noise draws with ``--fine-steps`` sub-steps, then sample base and IIA from fresh
evaluation noise (``--n`` samples, never used in the fit) and measure

* the digits FD (``iia_jax.metrics.fd``: classifier features, against the 1,497 ``"train"``
  digits) with a bootstrap standard deviation over the ``--n`` samples, and
* the median per-sample RMS error (and RMSE) at sigma = 0 against a fine reference: heun with
  ``--ref-steps`` Karras steps from the same noise.

Also reported: the FD of that fine reference (a generous-NFE sampler), at ``--n`` and at n = 300,
and ``digits_fd_sanity()``: the real-data floor (the 300 held-out ``"test"`` digits), 300
``"train"`` digits, and noisy/blurred/shuffled ceilings, all at n = 300.  FD is biased upwards
at small n, so only numbers at equal n compare exactly.

Writes ``OUT/digits.md`` (tables, command line, timings) and ``OUT/digits_fd_vs_nfe.png``;
``OUT`` is ``docs/`` by default and a fresh temp dir with ``--quick``.  ``--json`` keeps the raw
numbers; ``--replot`` rewrites both files from them (e.g. with ``--interpretation``).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import iia_jax  # noqa: E402
from iia_jax import pretrained, schedules  # noqa: E402
from iia_jax.metrics import ode_error  # noqa: E402
from iia_jax.metrics.fd import (digits_features, digits_fd_sanity, digits_reference_stats,  # noqa: E402
                                frechet_distance, gaussian_stats)

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SHAPE = (8, 8, 1)
SOLVERS = ("heun", "euler", "dpmpp_2m")
COLORS = {"heun": "C0", "euler": "C1", "dpmpp_2m": "C2"}


def steps_for(solver: str, nfe: int) -> int:
    """Karras steps N with the solver's NFE closest to ``nfe`` from below (heun: 2N - 1)."""
    return (nfe + 1) // 2 if solver == "heun" else nfe


def run_batched(fn, x, batch: int = 500) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def fd_with_std(images, reps: int, seed: int = 0):
    """Digits FD of ``images`` and the standard deviation of its bootstrap replicates."""
    feats = digits_features(images)
    ref = digits_reference_stats("train")
    fd = frechet_distance(gaussian_stats(feats), ref)
    rng = np.random.default_rng(seed)
    boot = [frechet_distance(gaussian_stats(feats[rng.integers(0, len(feats), len(feats))]), ref)
            for _ in range(reps)]
    return fd, float(np.std(boot))


def git_revision() -> str:
    """The commit of the library code, with "+dirty" when iia_jax/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "iia_jax"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def benchmark(args):
    denoiser = pretrained.digits()
    key_fit, key_eval = jax.random.split(jax.random.PRNGKey(args.seed))
    x_fit = SIGMA_MAX * jax.random.normal(key_fit, (args.fit_batch,) + SHAPE)
    x_eval = SIGMA_MAX * jax.random.normal(key_eval, (args.n,) + SHAPE)
    timings = {}

    t = time.perf_counter()
    ref_plan = iia_jax.plan("heun", schedules.karras(args.ref_steps, SIGMA_MIN, SIGMA_MAX))
    print(f"fine reference: heun, {args.ref_steps} Karras steps (NFE {ref_plan.nfe}), {args.n} samples",
          flush=True)
    reference = run_batched(jax.jit(lambda x: iia_jax.sample(denoiser, ref_plan, x)), x_eval)
    timings["reference"] = time.perf_counter() - t

    t = time.perf_counter()
    sanity = digits_fd_sanity()
    fd_ref, fd_ref_std = fd_with_std(reference, args.boot)
    fd_ref_300 = fd_with_std(reference[:300], args.boot) if args.n > 300 else (fd_ref, fd_ref_std)
    timings["sanity"] = time.perf_counter() - t
    at_300 = f", {fd_ref_300[0]:.2f} +- {fd_ref_300[1]:.2f} (n=300)" if args.n > 300 else ""
    print(f"FD: fine reference {fd_ref:.2f} +- {fd_ref_std:.2f} (n={args.n}){at_300}; real test digits "
          f"(floor, n=300) {sanity['floor']:.2f}", flush=True)

    rows = []
    for solver in args.solvers:
        for nfe in args.nfe:
            steps = steps_for(solver, nfe)
            plan = iia_jax.plan(solver, schedules.karras(steps, SIGMA_MIN, SIGMA_MAX))
            t = time.perf_counter()
            try:
                res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=args.fine_steps, progress=False)
                coeffs, report, failed = res.coeffs, res.report, None
            except ValueError as e:  # a failed fit is a result too; keep the rest of the table
                coeffs, report, failed = None, None, str(e)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            base = run_batched(jax.jit(lambda x: iia_jax.sample(denoiser, plan, x)), x_eval)
            iia = (run_batched(jax.jit(lambda x: iia_jax.iia_sample(denoiser, plan, coeffs, x)), x_eval)
                   if coeffs is not None else None)
            sample_s = time.perf_counter() - t
            e_base = ode_error(base, reference)
            fd_base = fd_with_std(base, args.boot)
            if iia is not None and np.all(np.isfinite(iia)):
                e_iia, fd_iia = ode_error(iia, reference), fd_with_std(iia, args.boot)
            else:
                e_iia, fd_iia = ode_error(np.full_like(base, np.nan), reference), (np.nan, np.nan)
            rows.append(dict(solver=solver, nfe=plan.nfe, steps=steps,
                             fd_base=fd_base[0], fd_base_std=fd_base[1], fd_iia=fd_iia[0],
                             fd_iia_std=fd_iia[1], median_base=e_base.median, median_iia=e_iia.median,
                             rmse_base=e_base.rmse, rmse_iia=e_iia.rmse,
                             kept=int(np.sum(report.kept)) if report else 0, fit_s=fit_s,
                             sample_s=sample_s, failed=failed))
            r = rows[-1]
            print(f"{solver:9s} NFE {plan.nfe:3d}  FD base {r['fd_base']:7.2f} IIA {r['fd_iia']:7.2f}   "
                  f"median err base {r['median_base']:.4f} IIA {r['median_iia']:.4f}   kept "
                  f"{r['kept']}/{steps}   fit {fit_s:5.1f}s  sample {sample_s:5.1f}s"
                  + (f"   FIT FAILED: {failed}" if failed else ""), flush=True)
    return dict(rows=rows, sanity=sanity, fd_ref=fd_ref, revision=args.revision, fd_ref_std=fd_ref_std,
                fd_ref_300=fd_ref_300[0], fd_ref_300_std=fd_ref_300[1], ref_nfe=ref_plan.nfe,
                timings=timings)


# ----------------------------------------------------------------------------- output

def plot(result, args, path):
    rows, sanity = result["rows"], result["sanity"]
    fig, (ax_fd, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    for solver in args.solvers:
        rs = [r for r in rows if r["solver"] == solver]
        nfe = [r["nfe"] for r in rs]
        c = COLORS.get(solver)
        ax_fd.errorbar(nfe, [r["fd_base"] for r in rs], [r["fd_base_std"] for r in rs], fmt="--o", ms=4,
                       color=c, capsize=2, label=f"{solver} base")
        ax_fd.errorbar(nfe, [r["fd_iia"] for r in rs], [r["fd_iia_std"] for r in rs], fmt="-s", ms=4,
                       color=c, capsize=2, label=f"{solver} IIA")
        ax_err.plot(nfe, [r["median_base"] for r in rs], "--o", ms=4, color=c, label=f"{solver} base")
        ax_err.plot(nfe, [r["median_iia"] for r in rs], "-s", ms=4, color=c, label=f"{solver} IIA")
    ax_fd.axhline(sanity["floor"], color="k", lw=1, label=f"real test digits, n=300 ({sanity['floor']:.1f})")
    ax_fd.axhline(result["fd_ref"], color="0.5", lw=1, ls=":",
                  label=f"heun NFE {result['ref_nfe']}, n={args.n} ({result['fd_ref']:.1f})")
    for ax in (ax_fd, ax_err):
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["nfe"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3)
    ax_fd.set_yscale("log")
    ax_fd.set_ylabel(f"digits FD (n={args.n}; bars: bootstrap std)")
    ax_fd.set_title("sample quality")
    ax_err.set_yscale("log")
    ax_err.set_ylabel(f"median per-sample RMS error vs heun NFE {result['ref_nfe']}")
    ax_err.set_title("ODE error")
    ax_fd.legend(fontsize=7, ncol=2)
    fig.suptitle("shipped digits model, Karras grid: base (dashed) vs IIA (solid)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result, args, command, total_s):
    rows, s = result["rows"], result["sanity"]
    lines = [
        "# Digits: FD and ODE error vs NFE, base solvers vs IIA",
        "",
        f"Produced by `{command}` at commit `{result.get('revision', 'unknown')}` "
        f"({total_s / 60:.1f} min on {args.cpu_note}; jax {jax.__version__}, {platform.machine()}).",
        "",
        "Setup (docstring of `benchmarks/digits.py`): the shipped digits denoiser "
        "(`iia_jax.pretrained.digits()`), EDM Karras grid (rho 7, sigma 80 -> 0.002 -> 0), noise "
        f"`80 N(0, I)`. IIA: `iia_jax.fit` with its defaults (sequential, per-solver target, history 1, "
        f"25 % held out), fit batch {args.fit_batch}, fine_steps {args.fine_steps}. Evaluation: "
        f"{args.n} fresh noise draws (not used in the fit), the same for every row. ODE error: median "
        f"per-sample RMS (and RMSE) at sigma = 0 against heun with {args.ref_steps} Karras steps "
        f"(NFE {result['ref_nfe']}) from the same noise. FD: digits FD against the 1,497 train digits, "
        f"at n = {args.n}, +- the standard deviation of {args.boot} bootstrap replicates of the {args.n} "
        "samples. heun has NFE 2N - 1.",
        "",
        "## Reference points (digits FD)",
        "",
        "| what | n | FD |",
        "| --- | ---: | ---: |",
        f"| fine reference: heun NFE {result['ref_nfe']} | {args.n} | {result['fd_ref']:.2f} +- "
        f"{result['fd_ref_std']:.2f} |",
    ] + ([
        f"| fine reference: heun NFE {result['ref_nfe']}, first 300 | 300 | {result['fd_ref_300']:.2f} +- "
        f"{result['fd_ref_300_std']:.2f} |"] if args.n > 300 else []) + [
        f"| **real held-out test digits (floor)** | 300 | {s['floor']:.2f} |",
        f"| real train digits (classifier saw them; mean of 3 draws) | 300 | {s['train_subset']:.2f} |",
        f"| test digits + N(0, 1) pixel noise (ceiling) | 300 | {s['noise']:.2f} |",
        f"| test digits, Gaussian blur 1 px (ceiling) | 300 | {s['blur']:.2f} |",
        f"| test digits, pixels shuffled (ceiling) | 300 | {s['shuffled']:.2f} |",
        "",
        "## Base vs IIA",
        "",
        "| solver | NFE | FD base | FD IIA | median err base | median err IIA | gain | RMSE base | "
        "RMSE IIA | IIA steps kept | fit s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        gain = r["median_base"] / r["median_iia"] if r["median_iia"] > 0 else float("nan")
        lines.append(
            f"| {r['solver']} | {r['nfe']} | {r['fd_base']:.2f} +- {r['fd_base_std']:.2f} | "
            f"{r['fd_iia']:.2f} +- {r['fd_iia_std']:.2f} | {r['median_base']:.4f} | {r['median_iia']:.4f} | "
            f"{gain:.1f}x | {r['rmse_base']:.4f} | {r['rmse_iia']:.4f} | {r['kept']}/{r['steps']} | "
            f"{r['fit_s']:.0f} |" + (f" fit failed: {r['failed']}" if r["failed"] else ""))
    lines += ["", "![FD and ODE error vs NFE](digits_fd_vs_nfe.png)", ""]
    if args.interpretation:
        lines += ["## Reading the numbers", "", Path(args.interpretation).read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="NFE 5 9 15, n 300, fit batch 128, reference heun 64 steps; out: a temp dir")
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    ap.add_argument("--nfe", nargs="+", type=int, default=None, help="default: 5 9 15 25")
    ap.add_argument("--n", type=int, default=None, help="evaluation samples (default 1000)")
    ap.add_argument("--fit-batch", type=int, default=None, help="default 256")
    ap.add_argument("--fine-steps", type=int, default=8)
    ap.add_argument("--ref-steps", type=int, default=None, help="heun Karras steps of the reference "
                    "(default 128)")
    ap.add_argument("--boot", type=int, default=50, help="bootstrap replicates for the FD std")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default docs/ (a temp dir with --quick)")
    ap.add_argument("--json", type=Path, default=None, help="also save the raw results here")
    ap.add_argument("--replot", type=Path, default=None, help="rewrite the markdown and figure from a "
                    "--json file (no sampling; the command line recorded there is kept)")
    ap.add_argument("--interpretation", default=None, help="a markdown file appended as 'Reading the "
                    "numbers' (the prose of docs/digits.md)")
    ap.add_argument("--cpu-note", default="2 shared CPU cores", help="hardware note for the markdown")
    args = ap.parse_args(argv)
    if args.replot:
        saved = json.loads(args.replot.read_text())
        result, total, command = saved["result"], saved["total_s"], saved["command"]
        interpretation, out = args.interpretation, args.out or DOCS
        args = argparse.Namespace(**saved["args"])
        args.interpretation = interpretation
    else:
        quick = args.quick
        args.nfe = args.nfe or ([5, 9, 15] if quick else [5, 9, 15, 25])
        args.n = args.n or (300 if quick else 1000)
        args.fit_batch = args.fit_batch or (128 if quick else 256)
        args.ref_steps = args.ref_steps or (64 if quick else 128)
        out = args.out or (Path(tempfile.mkdtemp(prefix="iia-digits-")) if quick else DOCS)
        command = " ".join(["python", "benchmarks/digits.py"] + (sys.argv[1:] if argv is None else list(argv)))
        args.revision = git_revision()
        start = time.perf_counter()
        result = benchmark(args)
        total = time.perf_counter() - start
        if args.json:
            saved_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            args.json.write_text(json.dumps(dict(result=result, args=saved_args, total_s=total,
                                                 command=command), indent=2, default=float))
    out.mkdir(parents=True, exist_ok=True)
    plot(result, args, out / "digits_fd_vs_nfe.png")
    (out / "digits.md").write_text(markdown(result, args, command, total))
    print(f"\ntotal {total:.0f} s (reference {result['timings']['reference']:.0f} s); wrote "
          f"{out / 'digits.md'} and {out / 'digits_fd_vs_nfe.png'}")


if __name__ == "__main__":
    main()
