"""Digits quality vs NFE: base solvers vs IIA on the shipped digits model (issues 4 and 9).

    python benchmarks/digits.py            # the full table (docs/digits.md)
    python benchmarks/digits.py --quick    # fewer NFE, samples and fit rows; writes to a temp dir

For heun, euler and dpmpp_2m on the EDM Karras grid (rho 7, sigma 80 -> 0.002 -> 0) at each NFE
(heun: odd NFE = 2N - 1): fit IIA with the default settings (``iia_jax.fit``: sequential mode,
the solver's default target, history 1, 25 % held out for the never-worse check) on
``--fit-batch`` noise draws with ``--fine-steps`` sub-steps, with the digits judge in the
never-worse check (``quality=digits_check``, what ``iia-jax fit --model digits`` does) and, for
the before/after, without it (refitted only where the judge switched steps off: the fit is
deterministic); then sample base and IIA from fresh evaluation noise (``--n`` samples, never
used in the fit) and measure

* ``digits_score`` (``iia_jax.metrics.quality``: 1000 x KID of the quantised samples against the
  600 real reference digits in the features of a judge classifier that never saw them; validated
  on ladders of known order in ``docs/metrics.md``) with its jackknife standard error, and
* the median per-sample RMS error (and RMSE) at sigma = 0 against a fine reference: heun with
  ``--ref-steps`` Karras steps from the same noise.

Also reported: the score of that fine reference (a generous-NFE sampler), of real digits (the 300
held-out ``"test"`` digits and 300 ``"train_check"`` digits the denoiser was trained on: both
about 0) and of noisy/blurred test digits (ceilings).  KID is unbiased, so scores at different n
compare directly.

Writes ``OUT/digits.md`` (tables, command line, timings) and ``OUT/digits_score_vs_nfe.png``;
``OUT`` is ``docs/`` by default and a fresh temp dir with ``--quick``.  ``--json`` keeps the raw
numbers; ``--replot`` rewrites both files from them (e.g. with ``--interpretation``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from iia_jax import pretrained  # noqa: E402
from iia_jax.bench import harness  # noqa: E402
from iia_jax.bench.harness import score  # noqa: E402
from iia_jax.bench.provenance import command_line, git_revision, provenance, save_json, setup_line  # noqa: E402
from iia_jax.metrics import digits_check, score_difference  # noqa: E402
from iia_jax.metrics.fd import corrupt_blur, corrupt_noise  # noqa: E402
from iia_jax.metrics.quality import digits_split  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SHAPE = (8, 8, 1)
SOLVERS = ("heun", "euler", "dpmpp_2m")
COLORS = {"heun": "C0", "euler": "C1", "dpmpp_2m": "C2"}
BATCH = 500   # evaluation rows per call


def real_points() -> dict:
    """``(score, se)`` of real digits and of corrupted ones: what to read model scores against."""
    test = digits_split("test")
    return {"test": score(test), "train_check": score(digits_split("train_check")),
            "noise": score(corrupt_noise(test, 0.2)), "blur": score(corrupt_blur(test, 0.5))}


def benchmark(args):
    t = time.perf_counter()
    noise = harness.draws(args.seed, SHAPE, args.n, args.fit_batch, SIGMA_MAX)
    print(f"fine reference: heun, {args.ref_steps} Karras steps (NFE {2 * args.ref_steps - 1}), {args.n} samples",
          flush=True)
    prob = harness.problem(pretrained.digits(), noise, args.ref_steps, SIGMA_MIN, SIGMA_MAX, batch=BATCH)
    timings = {"reference": time.perf_counter() - t}

    t = time.perf_counter()
    real = real_points()
    ref_score = score(prob.reference)
    timings["sanity"] = time.perf_counter() - t
    print(f"score: fine reference {ref_score[0]:.1f} +- {ref_score[1]:.1f} (n={args.n}); real test digits "
          f"{real['test'][0]:.1f} +- {real['test'][1]:.1f} (n=300)", flush=True)

    rows = []
    for solver in args.solvers:
        for nfe in args.nfe:
            plan = harness.plan_for(solver, nfe, SIGMA_MIN, SIGMA_MAX)
            steps = plan.num_steps
            t = time.perf_counter()
            base = prob.base(plan)
            e_base, score_base = prob.error(base), score(base)
            r = dict(solver=solver, nfe=plan.nfe, steps=steps, score_base=score_base[0],
                     score_base_std=score_base[1], median_base=e_base.median, rmse_base=e_base.rmse)
            judged = iia_row(prob, plan, base, args.fine_steps, digits_check)
            plain = (iia_row(prob, plan, base, args.fine_steps, None)
                     if judged.get("dropped") else dict(judged, fit_s=0.0))
            r.update({k: v for k, v in judged.items()})
            r.update({f"{k}_plain": v for k, v in plain.items()})
            rows.append(r)
            print(f"{solver:9s} NFE {plan.nfe:3d}  score base {r['score_base']:7.1f} IIA {r['score_iia']:7.1f} "
                  f"(no judge {r['score_iia_plain']:7.1f})   median err base {r['median_base']:.4f} IIA "
                  f"{r['median_iia']:.4f} (no judge {r['median_iia_plain']:.4f})   kept {r['kept']}/{steps} "
                  f"dropped {r.get('dropped')}   {time.perf_counter() - t:5.1f}s"
                  + (f"   FIT FAILED: {r['failed']}" if r["failed"] else ""), flush=True)
    return dict(rows=rows, real=real, score_ref=ref_score[0], score_ref_std=ref_score[1], revision=args.revision,
                ref_nfe=2 * args.ref_steps - 1, timings=timings)


def iia_row(prob, plan, base, fine_steps, quality) -> dict:
    """Fit (with the ``quality`` judge or without), sample the evaluation noise and measure."""
    t = time.perf_counter()
    try:
        res = prob.fit(plan, fine_steps=fine_steps, quality=quality)
    except ValueError as e:  # a failed fit is a result too; keep the rest of the table
        nan = float("nan")
        return dict(score_iia=nan, score_iia_std=nan, median_iia=nan, rmse_iia=nan, diff=nan, diff_se=nan,
                    kept=0, dropped=[], fit_s=time.perf_counter() - t, failed=str(e))
    fit_s = time.perf_counter() - t
    iia = prob.iia(plan, res.coeffs)
    e_iia, score_iia = prob.error(iia), score(iia)
    diff = score_difference(iia, base, paired=True)
    return dict(score_iia=score_iia[0], score_iia_std=score_iia[1], median_iia=e_iia.median,
                rmse_iia=e_iia.rmse, diff=diff[0], diff_se=diff[1], kept=int(np.sum(res.report.kept)),
                dropped=list(res.report.quality_dropped), fit_s=fit_s, failed=None)


# ----------------------------------------------------------------------------- output

def plot(result, args, path):
    rows, real = result["rows"], result["real"]
    fig, (ax_q, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    for solver in args.solvers:
        rs = [r for r in rows if r["solver"] == solver]
        nfe = [r["nfe"] for r in rs]
        c = COLORS.get(solver)
        ax_q.errorbar(nfe, [r["score_base"] for r in rs], [r["score_base_std"] for r in rs], fmt="--o", ms=4,
                       color=c, capsize=2, label=f"{solver} base")
        ax_q.errorbar(nfe, [r["score_iia"] for r in rs], [r["score_iia_std"] for r in rs], fmt="-s", ms=4,
                       color=c, capsize=2, label=f"{solver} IIA")
        ax_err.plot(nfe, [r["median_base"] for r in rs], "--o", ms=4, color=c, label=f"{solver} base")
        ax_err.plot(nfe, [r["median_iia"] for r in rs], "-s", ms=4, color=c, label=f"{solver} IIA")
    ax_q.axhline(real["test"][0], color="k", lw=1, label=f"real held-out digits, n=300 ({real['test'][0]:.1f})")
    ax_q.axhline(result["score_ref"], color="0.5", lw=1, ls=":",
                  label=f"heun NFE {result['ref_nfe']}, n={args.n} ({result['score_ref']:.1f})")
    for ax in (ax_q, ax_err):
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["nfe"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3)
    ax_q.set_yscale("symlog", linthresh=10)
    ax_q.set_ylabel(f"digits_score = 1000 KID (n={args.n}; bars: jackknife se)")
    ax_q.set_title("sample quality")
    ax_err.set_yscale("log")
    ax_err.set_ylabel(f"median per-sample RMS error vs heun NFE {result['ref_nfe']}")
    ax_err.set_title("ODE error")
    ax_q.legend(fontsize=7, ncol=2)
    fig.suptitle("shipped digits model, Karras grid: base (dashed) vs IIA (solid)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result, args, command, total_s, meta):
    """The page; ``meta``: the :func:`provenance` of the run that made ``result``."""
    rows, real = result["rows"], result["real"]
    lines = [
        "# Digits: sample quality and ODE error vs NFE, base solvers vs IIA",
        "",
        f"Produced by `{command}` at commit `{result.get('revision', 'unknown')}` "
        f"({total_s / 60:.1f} min on {args.cpu_note}; {setup_line(meta)}).",
        "",
        "Setup (docstring of `benchmarks/digits.py`): the shipped digits denoiser "
        "(`iia_jax.pretrained.digits()`), EDM Karras grid (rho 7, sigma 80 -> 0.002 -> 0), noise "
        f"`80 N(0, I)`. IIA: `iia_jax.fit` with its defaults (sequential, per-solver target, history 1, "
        f"25 % held out), fit batch {args.fit_batch}, fine_steps {args.fine_steps}, and the digits judge "
        "in the never-worse check (`quality=iia_jax.metrics.digits_check`, the default of `iia-jax fit "
        "--model digits`); \"no judge\": the same fit without it. Evaluation: "
        f"{args.n} fresh noise draws (not used in the fit), the same for every row. ODE error: median "
        f"per-sample RMS (and RMSE) at sigma = 0 against heun with {args.ref_steps} Karras steps "
        f"(NFE {result['ref_nfe']}) from the same noise. Score: `iia_jax.metrics.digits_score` (1000 x "
        "KID of the quantised samples against 600 real reference digits in the features of a judge "
        "classifier that never saw them; validated in [metrics.md](metrics.md)), lower is better, real "
        f"digits score about 0; +- its jackknife standard error, n = {args.n}. heun has NFE 2N - 1.",
        "",
        "## Reference points (digits_score)",
        "",
        "| what | n | score |",
        "| --- | ---: | ---: |",
        f"| fine reference: heun NFE {result['ref_nfe']} | {args.n} | {result['score_ref']:.1f} +- "
        f"{result['score_ref_std']:.1f} |",
        f"| **real held-out test digits** | 300 | {real['test'][0]:.1f} +- {real['test'][1]:.1f} |",
        f"| real train digits the denoiser saw (`train_check`) | 300 | {real['train_check'][0]:.1f} +- "
        f"{real['train_check'][1]:.1f} |",
        f"| test digits + N(0, 0.2^2) pixel noise | 300 | {real['noise'][0]:.1f} +- {real['noise'][1]:.1f} |",
        f"| test digits, Gaussian blur 0.5 px | 300 | {real['blur'][0]:.1f} +- {real['blur'][1]:.1f} |",
        "",
        "## Base vs IIA",
        "",
        "IIA - base: the paired score difference (same noise; jackknife se), negative = IIA better. "
        "Steps dropped: what the judge switched off after the error check.",
        "",
        "| solver | NFE | score base | score IIA | IIA - base | no judge: IIA - base | median err base | "
        "median err IIA | no judge | gain | RMSE base | RMSE IIA | IIA steps kept | steps dropped | fit s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        gain = r["median_base"] / r["median_iia"] if r["median_iia"] > 0 else float("nan")
        lines.append(
            f"| {r['solver']} | {r['nfe']} | {r['score_base']:.1f} +- {r['score_base_std']:.1f} | "
            f"{r['score_iia']:.1f} +- {r['score_iia_std']:.1f} | {r['diff']:+.1f} +- {r['diff_se']:.1f} | "
            f"{r['diff_plain']:+.1f} +- {r['diff_se_plain']:.1f} | {r['median_base']:.4f} | "
            f"{r['median_iia']:.4f} | {r['median_iia_plain']:.4f} | {gain:.1f}x | {r['rmse_base']:.4f} | "
            f"{r['rmse_iia']:.4f} | {r['kept']}/{r['steps']} | {', '.join(map(str, r['dropped'])) or '-'} | "
            f"{r['fit_s'] + r['fit_s_plain']:.0f} |" + (f" fit failed: {r['failed']}" if r["failed"] else ""))
    lines += ["", "![digits_score and ODE error vs NFE](digits_score_vs_nfe.png)", ""]
    if args.interpretation:
        lines += ["## Reading the numbers", "", Path(args.interpretation).read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = harness.parser(__doc__, "euler NFE 5, n 60, fit batch 64, reference heun 8 steps; out: a temp dir",
                        quick="NFE 5 9 15, n 300, fit batch 128, reference heun 64 steps; out: a temp dir")
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    ap.add_argument("--nfe", nargs="+", type=int, default=None, help="default: 5 9 15 25")
    ap.add_argument("--n", type=int, default=None, help="evaluation samples (default 1000)")
    ap.add_argument("--fit-batch", type=int, default=None, help="default 1024")
    ap.add_argument("--fine-steps", type=int, default=8)
    ap.add_argument("--ref-steps", type=int, default=64, help="heun Karras steps of the reference")
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
        meta = saved.get("provenance") or provenance(command)   # the run's machine, not this process's
        interpretation, out = args.interpretation, args.out or DOCS
        args = argparse.Namespace(**saved["args"])
        args.interpretation = interpretation
    else:
        quick = args.quick or args.smoke
        if args.smoke:
            args.solvers, args.nfe, args.n, args.fit_batch, args.ref_steps = ["euler"], [5], 60, 64, 8
        args.nfe = args.nfe or ([5, 9, 15] if quick else [5, 9, 15, 25])
        args.n = args.n or (300 if quick else 1000)
        args.fit_batch = args.fit_batch or (128 if quick else 1024)
        out = args.out or (Path(tempfile.mkdtemp(prefix="iia-digits-")) if quick else DOCS)
        command = command_line("benchmarks/digits.py", argv)
        args.revision = git_revision()
        start, meta = time.perf_counter(), provenance(command)
        result = benchmark(args)
        total = time.perf_counter() - start
        if args.json:
            saved_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            save_json(args.json, dict(result=result, args=saved_args, total_s=total, command=command), command)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, args, out / "digits_score_vs_nfe.png")
    (out / "digits.md").write_text(markdown(result, args, command, total, meta))
    print(f"\ntotal {total:.0f} s (reference {result['timings']['reference']:.0f} s); wrote "
          f"{out / 'digits.md'} and {out / 'digits_score_vs_nfe.png'}")


if __name__ == "__main__":
    main()
