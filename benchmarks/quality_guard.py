"""The guarantee table: does IIA with a model-agnostic quality guard ever cost sample quality?

    python benchmarks/quality_guard.py --nfe 5                      # the NFE 5 row, both grids
    python benchmarks/quality_guard.py --solvers dpmpp_2m unipc --grids karras --nfe 5
    python benchmarks/quality_guard.py --nfe 3 4 5 6 8 10           # the whole table (hours on 2 cores)
    python benchmarks/quality_guard.py --table                      # the markdown of what is done

Setting (as ``benchmarks/digits.py``): the shipped digits denoiser, noise ``80 N(0, I)`` (fit and
evaluation keys split from ``--seed``), grids over sigma 80 -> 0.002 (Karras, rho 7; VP-quadratic,
``iia_jax.schedules.vp_quadratic``).  Per cell (solver, grid, NFE; heun takes N = (NFE + 1) / 2
steps, NFE 2N - 1):

* one ``iia_jax.fit`` with the library defaults (``--fit-batch`` rows, ``--fine-steps``), whose
  quality guard is the model-agnostic judge (``iia_jax.iia.guard.reference_mmd``: the IIA and
  base samples against the fit's own fine-reference samples of the same rows, paired pixel RBF
  MMD, docs/iia.md), and the same fit with ``quality=None``: the coefficients the guard is
  handed (the "no judge" fit; the fit is deterministic and the guard runs last);
* evaluation on ``--n`` fresh draws: ``digits_score`` paired difference against the base sampler
  (jackknife se), median per-sample ODE error against heun with 64 Karras steps from the same
  noise, and the judge itself at that n (against the 64-step samples), for both the unguarded
  and the guarded coefficients.

Results are appended, one JSON line per cell, to ``--out`` (cells already there are skipped), so
the table can be completed over several runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's iia_jax
import iia_jax  # noqa: E402
from iia_jax import pretrained, schedules  # noqa: E402
from iia_jax.iia.guard import reference_mmd  # noqa: E402

from iia_jax.metrics import ode_error, score_difference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_cause import look  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SHAPE = (8, 8, 1)
SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")
GRIDS = {"karras": lambda n: schedules.karras(n, SIGMA_MIN, SIGMA_MAX),
         "vp_quadratic": lambda n: schedules.vp_quadratic(n, SIGMA_MIN, SIGMA_MAX)}


def steps_for(solver: str, nfe: int) -> int:
    return (nfe + 1) // 2 if solver == "heun" else nfe


def batched(fn, x, batch: int = 500) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


def measure(x0, base, ref) -> dict:
    d = score_difference(x0, base, paired=True)
    j = reference_mmd(x0, base, ref)
    raw = float(np.std(x0 - x0.mean(0)) / np.std(ref - ref.mean(0)))
    return dict(diff=d[0], diff_se=d[1], median=ode_error(x0, ref).median, judge=j[0], judge_se=j[1],
                contrast_raw=raw, **look(x0, ref))


def cell(denoiser, solver, grid, nfe, args, x_fit, x_eval, ref) -> dict:
    steps = steps_for(solver, nfe)
    plan = iia_jax.plan(solver, GRIDS[grid](steps))
    base = batched(jax.jit(lambda x: iia_jax.sample(denoiser, plan, x)), x_eval)
    t = time.perf_counter()
    res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=args.fine_steps, progress=False)   # default judge
    fit_s = time.perf_counter() - t
    out = dict(solver=solver, grid=grid, nfe=plan.nfe, steps=steps, fit_s=fit_s,
               median_base=ode_error(base, ref).median, dropped=list(res.report.quality_dropped),
               fit_judge=list(res.report.quality_difference))
    coeffs = res.coeffs
    plain = iia_jax.fit(denoiser, plan, x_fit, fine_steps=args.fine_steps, quality=None, progress=False).coeffs
    saved = {}
    variants = {"guarded": (np.asarray(coeffs.values), np.asarray(coeffs.kept)),
                "plain": (np.asarray(plain.values), np.asarray(plain.kept))}
    for name, (vals, kept) in variants.items():
        c = iia_jax.Coefficients(**{**coeffs.__dict__, "values": jnp.asarray(vals, coeffs.values.dtype),
                                    "kept": jnp.asarray(kept)})
        x0 = batched(jax.jit(lambda x, c=c: iia_jax.iia_sample(denoiser, plan, c, x)), x_eval)
        out[name] = dict(measure(x0, base, ref), kept=[int(i) for i in np.flatnonzero(kept)])
        saved[name], saved[f"{name}_values"] = x0, vals
    np.savez(args.out.parent / f"{solver}_{grid}_{plan.nfe}.npz", base=base, **saved)
    return out


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| solver | grid | NFE | median err base | no judge: err | no judge: IIA - base | "
             "judge at n: no judge | guarded: err | guarded: IIA - base | kept | dropped by the guard | fit s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for r in sorted(rows, key=lambda r: (r["nfe"], r["grid"], SOLVERS.index(r["solver"]))):
        p, g = r["plain"], r["guarded"]
        lines.append(
            f"| {r['solver']} | {r['grid']} | {r['nfe']} | {r['median_base']:.4f} | {p['median']:.4f} | "
            f"{p['diff']:+.1f} +- {p['diff_se']:.1f} | {p['judge']:+.2f} +- {p['judge_se']:.2f} | "
            f"{g['median']:.4f} | {g['diff']:+.1f} +- {g['diff_se']:.1f} | "
            f"{', '.join(map(str, g['kept'])) or '-'} | {', '.join(map(str, r['dropped'])) or '-'} | "
            f"{r['fit_s']:.0f} |")
    return "\n".join(lines)


def agreement(path: Path) -> str:
    """The judge against ``digits_score`` on every measured cell (default fit without a judge vs
    the base sampler): at n and on four quarters of the rows (what a 1,024-row fit holds out),
    recomputed from the saved samples against the 64-step reference."""
    ref = np.load(ROOT / "checkpoints" / "quality_cause" / "reference_seed0_n1000.npy")
    lines = ["| solver | grid | NFE | digits_score IIA - base (z) | judge at n = 1000 (z) | judge on 250-row quarters (z) | agree |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in sorted(rows, key=lambda r: (r["nfe"], r["grid"], SOLVERS.index(r["solver"]))):
        z = np.load(path.parent / f"{r['solver']}_{r['grid']}_{r['nfe']}.npz")
        plain, base = z["plain"], z["base"]
        if np.array_equal(plain, base):
            continue
        p = r["plain"]
        zs = p["diff"] / p["diff_se"]
        j, jse = reference_mmd(plain, base, ref)
        quarters = [reference_mmd(plain[i::4], base[i::4], ref[i::4]) for i in range(4)]
        zq = [a / b for a, b in quarters]
        verdict = lambda z: 0 if abs(z) < 2 else int(np.sign(z))  # noqa: E731
        vs, vj = verdict(zs), verdict(j / jse)
        agree = ("yes" if vs == vj else "no" if vs != 0 else
                 "digits_score ties; judge: IIA " + ("worse" if vj > 0 else "better"))
        lines.append(f"| {r['solver']} | {r['grid']} | {r['nfe']} | {p['diff']:+.1f} +- {p['diff_se']:.1f} ({zs:+.1f}) | "
                     f"{j:+.2f} +- {jse:.2f} ({j / jse:+.1f}) | {' '.join(f'{q:+.1f}' for q in zq)} | {agree} |")
    return "\n".join(lines)


VARIANTS = {"h/2 (the judge)": {}, "h/4": dict(bandwidth_scale=0.25), "h/8": dict(bandwidth_scale=0.125),
            "h/4, 1 %..99 %": dict(tail=0.01, bandwidth_scale=0.25), "h/2, 5 %..95 %": dict(tail=0.05)}


def refit_variants(path: Path) -> str:
    """The judge and variants of it (bandwidth, clipping range) on the refitted samples of
    ``benchmarks/quality_refit.py`` against ``digits_score``: z of each at n = 1,000."""
    ref = np.load(ROOT / "checkpoints" / "quality_cause" / "reference_seed0_n1000.npy")
    lines = ["| candidate vs base | digits_score z | " + " | ".join(VARIANTS) + " |",
             "| --- | ---: |" + " ---: |" * len(VARIANTS)]
    for r in map(json.loads, (path.parent / "refit.jsonl").read_text().splitlines()):
        base = np.load(path.parent / f"{r['solver']}_{r['grid']}_{r['nfe']}.npz")["base"]
        x0 = np.load(path.parent / f"refit_{r['solver']}_{r['grid']}_{r['nfe']}.npy")
        zs = [d / se for d, se in (reference_mmd(x0, base, ref, **kw) for kw in VARIANTS.values())]
        lines.append(f"| {r['solver']} {r['grid']}, refitted | {r['diff'] / r['diff_se']:+.1f} | "
                     + " | ".join(f"{z:+.1f}" for z in zs) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    ap.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--nfe", nargs="+", type=int, default=[5])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--fit-batch", type=int, default=1024)
    ap.add_argument("--fine-steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "quality_guard" / "cells.jsonl")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and stop")
    ap.add_argument("--agreement", action="store_true", help="print the judge vs digits_score table and stop")
    ap.add_argument("--refit-variants", action="store_true", help="print the judge and variants of it on the "
                    "samples of benchmarks/quality_refit.py and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.out))
        return
    if args.agreement:
        print(agreement(args.out))
        return
    if args.refit_variants:
        print(refit_variants(args.out))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        done = {(r["solver"], r["grid"], r["nfe"]) for r in map(json.loads, args.out.read_text().splitlines())}
    denoiser = pretrained.digits()
    key_fit, key_eval = jax.random.split(jax.random.PRNGKey(args.seed))
    x_fit = SIGMA_MAX * jax.random.normal(key_fit, (args.fit_batch,) + SHAPE)
    x_eval = SIGMA_MAX * jax.random.normal(key_eval, (args.n,) + SHAPE)
    cache = ROOT / "checkpoints" / "quality_cause" / f"reference_seed{args.seed}_n{args.n}.npy"
    if cache.exists():
        ref = np.load(cache)
    else:
        ref_plan = iia_jax.plan("heun", schedules.karras(64, SIGMA_MIN, SIGMA_MAX))
        ref = batched(jax.jit(lambda x: iia_jax.sample(denoiser, ref_plan, x)), x_eval)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, ref)
    command = " ".join(["python", "benchmarks/quality_guard.py"] + (sys.argv[1:] if argv is None else list(argv)))
    for nfe in args.nfe:
        for grid in args.grids:
            for solver in args.solvers:
                nfe_real = 2 * steps_for(solver, nfe) - 1 if solver == "heun" else nfe
                if (solver, grid, nfe_real) in done or steps_for(solver, nfe) < 2:
                    continue
                t = time.perf_counter()
                r = cell(denoiser, solver, grid, nfe, args, x_fit, x_eval, ref)
                r["command"] = command
                with args.out.open("a") as f:
                    f.write(json.dumps(r, default=float) + "\n")
                done.add((solver, grid, r["nfe"]))
                p, g = r["plain"], r["guarded"]
                print(f"{solver:9s} {grid:12s} NFE {r['nfe']:2d}  err {r['median_base']:.4f} -> {p['median']:.4f} "
                      f"(guarded {g['median']:.4f})  no judge {p['diff']:+6.1f} +- {p['diff_se']:4.1f} "
                      f"[judge {p['judge']:+.2f} +- {p['judge_se']:.2f}]  guarded {g['diff']:+6.1f} +- "
                      f"{g['diff_se']:4.1f}  dropped {r['dropped']} fit-judge {r['fit_judge']}  "
                      f"{time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
