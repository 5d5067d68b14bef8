"""The guarantee table: does IIA with the fit's default quality guard ever cost sample quality?

    python benchmarks/quality_guard.py --nfe 3 4 5 6 8 10           # the digits table (hours on 2 cores)
    python benchmarks/quality_guard.py --solvers dpmpp_2m unipc --grids karras --nfe 5
    python benchmarks/quality_guard.py --model overlapping --nfe 3 4 5 6 8 10   # the exact mixture
    python benchmarks/quality_guard.py --table [--model overlapping]            # the markdown of what is done
    python benchmarks/quality_guard.py --model overlapping --ladder             # the distance's own check
    python benchmarks/quality_guard.py --recheck        # refit every cell; measure again where the kept steps changed
    python benchmarks/quality_guard.py --confirm        # the cells that miss, again on 4,000 fresh draws
    python benchmarks/quality_guard.py --se-parts       # why 4x the draws barely shrank their error
    python benchmarks/quality_guard.py --weights checkpoints/digits_b/weights/digits_b.msgpack --fine-steps 16 \
        --nfe 3 4 5                 # a second digits model (benchmarks/second_model.py) nothing was tuned on
    python benchmarks/quality_guard.py --in-order ...   # the guard judging the kept steps in step order too
    python benchmarks/quality_guard.py --in-order --against-default   # where it keeps other steps: both, paired
    python benchmarks/quality_guard.py --cost dpmpp_2m:karras:5 ...   # what that costs a fit

Setting (as ``benchmarks/digits.py``): noise ``80 N(0, I)`` (fit and evaluation keys split from
``--seed``), grids over sigma 80 -> 0.002 (Karras, rho 7; VP-quadratic,
``iia_jax.schedules.vp_quadratic``).  Per cell (solver, grid, NFE; the steps are
``iia_jax.bench.grids.steps_for``: the most whose NFE does not exceed the column's, so heun, NFE
2N - 1, fills the NFE 4, 6, 8 and 10 columns with its NFE 3, 5, 7 and 9 cells):

* one ``iia_jax.fit`` with the library defaults (``--fit-batch`` rows, ``--fine-steps``), whose
  quality guard is the model-agnostic judge (``iia_jax.iia.guard.reference_mmd``: the IIA and
  base samples against the fit's own fine-reference samples of the same rows, paired pixel RBF
  MMD, docs/iia.md), and the coefficients the guard was handed (the "no judge" fit): the same fit
  with ``quality=None``, refitted only where the guard dropped a step (the fit is deterministic
  and the guard runs last, only zeroing steps: where it dropped none, both are the same);
* evaluation on ``--n`` fresh draws, for the guarded and the unguarded coefficients, against the
  base sampler from the same noise: the median per-sample ODE error against a fine reference from
  the same noise, and the paired quality difference IIA - base with its jackknife se:

  - ``digits`` (the shipped denoiser): ``digits_score`` (docs/metrics.md); the ODE reference is
    heun with 64 Karras steps, and the guard's judge is also recomputed at n against it;
  - ``overlapping`` (the exact 8x8x1 mixture of ``iia_jax.bench.models``, whose samples can be
    drawn): the unbiased MMD^2 (x1000) to ``--n`` exact samples of the mixture with a Gaussian
    kernel (bandwidth: the median distance between exact samples), the same estimator and paired
    jackknife as ``digits_score`` (rows of IIA and base from the same noise are deleted together);
    the ODE reference is heun with 512 Karras steps.  ``--ladder`` checks that this distance ranks
    exact samples shrunk toward the mixture's mean (x0.9, x0.95, x0.98, x1) in order.

Results are appended, one JSON line per cell, to ``--out`` (default: the tracked
``docs/quality_guard_<model>.jsonl``, from which ``--table`` builds the page's table; cells already
there are skipped), so the table can be completed over several runs.  The digits samples go to
``checkpoints/quality_guard/`` (untracked) for ``--agreement``, ``--views``, ``--spread`` and
``--refit-variants``.

``--in-order`` fits with ``iia_jax.iia.IN_ORDER_JUDGE`` (the same judge; the guard also judges the
kept steps in step order and keeps the selection nearer the reference by the distance alone:
``Judge.in_order``, ``Judge.rank``) into ``docs/quality_guard_<name>_in_order.jsonl``.  The fit is the
same up to the guard, so where it keeps the same steps as the default table's row, the samples
are that row's: the row is copied (``same_steps_as``) and only the new fit is timed.
"""
from __future__ import annotations

import argparse
import functools
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
from iia_jax.bench.grids import steps_for  # noqa: E402
from iia_jax.bench.provenance import git_revision  # noqa: E402
from iia_jax.bench.harness import run_batched  # noqa: E402
from iia_jax.bench.models import overlapping_mixture  # noqa: E402
from iia_jax.iia.config import IN_ORDER_JUDGE, REFERENCE_JUDGE, FitConfig  # noqa: E402
from iia_jax.iia.features import feature_spec  # noqa: E402
from iia_jax.iia.fit import candidate_samples, fine_solution  # noqa: E402
from iia_jax.iia.guard import reference_mmd  # noqa: E402
from iia_jax.metrics import ode_error, score_difference  # noqa: E402
from iia_jax.metrics.quality import score_difference_parts  # noqa: E402
from iia_jax.metrics.quality import jackknife_se, median_bandwidth, mmd2_jackknife, rbf_kernel  # noqa: E402
from iia_jax.models.gmm import gmm_sample  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_cause import look  # noqa: E402
from second_model import load as load_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "checkpoints" / "quality_guard"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SHAPE = (8, 8, 1)
SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")
GRIDS = {"karras": lambda n: schedules.karras(n, SIGMA_MIN, SIGMA_MAX),
         "vp_quadratic": lambda n: schedules.vp_quadratic(n, SIGMA_MIN, SIGMA_MAX)}
REFERENCE_STEPS = {"digits": 64, "overlapping": 512}   # heun, Karras: the ODE error's reference
LADDER = (1.0, 0.98, 0.95, 0.9)                        # exact samples shrunk toward the mean
BATCH = 500   # evaluation rows per jitted call: memory bounded, results as one call's


def measure(x0, base, ref) -> dict:
    """Digits: paired ``digits_score`` IIA - base, median ODE error, the guard's judge at n against
    the 64-step reference, and contrast / high-frequency energy / dark background."""
    d = score_difference(x0, base, paired=True)
    j = reference_mmd(x0, base, ref)
    raw = float(np.std(x0 - x0.mean(0)) / np.std(ref - ref.mean(0)))
    return dict(diff=d[0], diff_se=d[1], median=ode_error(x0, ref).median, judge=j[0], judge_se=j[1],
                contrast_raw=raw, **look(x0, ref))


def exact_mmd(x, exact, bandwidth: float):
    """``(MMD^2 x 1000, leave-one-out values)`` of samples ``x`` against exact samples, Gaussian
    kernel of ``bandwidth`` (unbiased; ``iia_jax.metrics.quality.mmd2_jackknife``)."""
    flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)  # noqa: E731
    value, loo = mmd2_jackknife(lambda a, b: rbf_kernel(a, b, bandwidth), flat(x), flat(exact))
    return 1000.0 * value, tuple(1000.0 * t for t in loo)


def paired_distance(x0, base, exact, bandwidth: float) -> tuple:
    """``(MMD^2(x0) - MMD^2(base), se, MMD^2(x0), se)`` x 1000 against the same exact samples:
    row ``i`` of ``x0`` and ``base`` come from the same noise, so the jackknife deletes both at once
    (``jackknife_se(..., paired=True)``), as ``digits_score``'s paired difference does."""
    (va, la), (vb, lb) = exact_mmd(x0, exact, bandwidth), exact_mmd(base, exact, bandwidth)
    return va - vb, jackknife_se(la, lb, paired=True), va, jackknife_se(la)


def measure_mixture(x0, base, ref, exact, bandwidth: float) -> dict:
    """Mixture: paired MMD^2 to exact samples IIA - base, IIA's own MMD^2, median ODE error."""
    d, se, v, v_se = paired_distance(x0, base, exact, bandwidth)
    return dict(diff=d, diff_se=se, mmd=v, mmd_se=v_se, median=ode_error(x0, ref).median)


def evaluate(denoiser, plan, coeffs, x_eval) -> np.ndarray:
    """IIA's samples at sigma = 0 from ``x_eval``, ``BATCH`` rows a jitted call."""
    return run_batched(jax.jit(lambda x: iia_jax.iia_sample(denoiser, plan, coeffs, x)), x_eval, batch=BATCH)


def samples_folder(args) -> Path:
    """Where a digits cell's samples go: other fine_steps, draws or guards than the table's keep theirs apart."""
    folder = args.samples if args.fine_steps == 8 else args.samples / f"fine_steps_{args.fine_steps}"
    folder = folder / "in_order" if getattr(args, "in_order", False) else folder
    return folder / f"eval_seed_{args.eval_seed}" if getattr(args, "eval_seed", 0) else folder


def cell(setup: dict, solver, grid, nfe, args, known: dict | None = None) -> dict:
    """One (solver, grid, NFE) cell: the guarded fit, the unguarded coefficients, both evaluated;
    or ``known`` (a row of the default table) where the guarded fit keeps its steps (``--in-order``)."""
    denoiser, x_fit, x_eval, ref = setup["denoiser"], setup["x_fit"], setup["x_eval"], setup["ref"]
    steps = steps_for(nfe, solver)
    plan = iia_jax.plan(solver, GRIDS[grid](steps))
    t = time.perf_counter()
    res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=args.fine_steps, quality=judge_of(args), progress=False)
    fit_s = time.perf_counter() - t
    rep = res.report
    fitted = dict(fit_s=fit_s, fit_evaluations=rep.model_evaluations, dropped=list(rep.quality_dropped),
                  fit_judge=list(rep.quality_difference))
    if known is not None and [int(i) for i in np.flatnonzero(np.asarray(rep.kept))] == known["guarded"]["kept"]:
        return dict(known, **fitted, same_steps_as=known_table(args).name, measured_commit=known["commit"])
    base = run_batched(jax.jit(lambda x: iia_jax.sample(denoiser, plan, x)), x_eval, batch=BATCH)
    out = dict(model=args.model, solver=solver, grid=grid, nfe=plan.nfe, steps=steps, **fitted,
               median_base=ode_error(base, ref).median, fit_holdout_median=list(rep.holdout_median),
               holdout_mse_before=list(rep.holdout_mse_before), holdout_mse_after=list(rep.holdout_mse_after))
    # The guard only zeroes steps after the rest of the (deterministic) fit: refit without it only
    # where it dropped one, else the unguarded coefficients are the guarded ones.
    plain = (iia_jax.fit(denoiser, plan, x_fit, fine_steps=args.fine_steps, quality=None, progress=False).coeffs
             if rep.quality_dropped else res.coeffs)
    saved = {"base": base}
    for name, coeffs in (("guarded", res.coeffs), ("plain", plain)):
        if name == "plain" and plain is res.coeffs:
            out["plain"], saved["plain"], saved["plain_values"] = out["guarded"], saved["guarded"], saved["guarded_values"]
            continue
        x0 = evaluate(denoiser, plan, coeffs, x_eval)
        m = (measure(x0, base, ref) if args.model == "digits" else
             measure_mixture(x0, base, ref, setup["exact"], setup["bandwidth"]))
        out[name] = dict(m, kept=[int(i) for i in np.flatnonzero(np.asarray(coeffs.kept))])
        saved[name], saved[f"{name}_values"] = x0, np.asarray(coeffs.values)
    if args.model == "digits":
        folder = samples_folder(args)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{solver}_{grid}_{plan.nfe}.npz", **saved)
    return out


def judge_of(args):
    """The guard's judge: the library default, or judging the kept steps in order (``--in-order``)."""
    return IN_ORDER_JUDGE if getattr(args, "in_order", False) else REFERENCE_JUDGE


def known_table(args) -> Path:
    """The default guard's results file for this model (``--in-order`` copies its unchanged rows)."""
    return ROOT / "docs" / f"quality_guard_{args.weights.stem if args.weights else args.model}.jsonl"


WORSE_Z = 1.0    # the guarantee: never worse than the base by more than one paired se
BETTER_Z = 2.0   # a gain is claimed as the project's verdicts are: by more than two paired se


def cost(setup: dict, cells: list, args) -> str:
    """What the guard's in-order pass costs: each ``SOLVER:GRID:NFE`` cell fitted with the default
    judge and with ``IN_ORDER_JUDGE`` (the first fit of each compiles for both), the model
    evaluations of each fit (``report.model_evaluations``) and its wall time."""
    lines = ["| cell | steps kept: default / in order | model evaluations: default / in order | ratio | "
             "fit s: default / in order |", "| --- | --- | --- | ---: | --- |"]
    for spec in cells:
        solver, grid, nfe = spec.split(":")
        plan = iia_jax.plan(solver, GRIDS[grid](steps_for(int(nfe), solver)))
        fit = lambda judge: iia_jax.fit(setup["denoiser"], plan, setup["x_fit"], fine_steps=args.fine_steps,  # noqa: E731
                                        quality=judge, progress=False).report
        fit(REFERENCE_JUDGE)        # compiles what both fits run
        (a, b) = (fit(REFERENCE_JUDGE), fit(IN_ORDER_JUDGE))
        kept = lambda r: steps_text(np.flatnonzero(np.asarray(r.kept)))  # noqa: E731
        lines.append(f"| {solver} {grid} NFE {plan.nfe} | {kept(a)} / {kept(b)} | {a.model_evaluations:,} / "
                     f"{b.model_evaluations:,} | {b.model_evaluations / a.model_evaluations:.3f} | "
                     f"{a.fit_seconds:.0f} / {b.fit_seconds:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def recheck(setup: dict, args) -> None:
    """Fit every cell of ``--out`` again with the library's present defaults, the digits cells
    whose guarded IIA was flattest first (the recorded contrast; cells without one last); where
    the steps kept differ from the row's, measure the cell again (:func:`cell`) and append it, so
    the table follows a change of the default guard.  Prints what each fit kept."""
    rows = load(args.out)
    other = {r["fine_steps"] for r in rows} - {args.fine_steps}
    if other:
        raise SystemExit(f"{args.out} holds cells fitted with fine_steps {sorted(other)}: pass --fine-steps to match")
    rows.sort(key=lambda r: r["guarded"].get("contrast", 2.0))
    command = " ".join(["python", "benchmarks/quality_guard.py", "--recheck"])
    for r in rows:
        plan = iia_jax.plan(r["solver"], GRIDS[r["grid"]](r["steps"]))
        t = time.perf_counter()
        rep = iia_jax.fit(setup["denoiser"], plan, setup["x_fit"], fine_steps=args.fine_steps,
                          quality=judge_of(args), progress=False).report
        kept = [int(i) for i in np.flatnonzero(np.asarray(rep.kept))]
        same = kept == r["guarded"]["kept"]
        print(f"{r['solver']:9s} {r['grid']:12s} NFE {r['nfe']:2d}  kept {kept} (was {r['guarded']['kept']}) "
              f"fit-judge {rep.quality_difference}  {time.perf_counter() - t:.0f} s", flush=True)
        if same:
            continue
        new = cell(setup, r["solver"], r["grid"], r["nfe"], args)
        new.update(command=command, commit=commit(), n=args.n, fit_batch=args.fit_batch,
                   fine_steps=args.fine_steps, seed=args.seed)
        with args.out.open("a") as f:
            f.write(json.dumps(new, default=float) + "\n")
        g = new["guarded"]
        print(f"  measured again: IIA - base {g['diff']:+.3g} +- {g['diff_se']:.2g}, kept {g['kept']}, "
              f"median {r['median_base']:.4f} -> {g['median']:.4f}", flush=True)


def against_default(args, fresh_seed: int = 1, fresh_n: int = 4000) -> str:
    """The cells where ``--in-order`` kept other steps than the default guard, both selections paired
    against each other and against the base sampler: on the table's draws and on ``fresh_n`` fresh
    ones (``fresh_seed``).  Both are the same deterministic fit up to the guard, which only zeroes
    steps, so each selection's coefficients are the unguarded ones with the other steps zeroed."""
    default = {(r["solver"], r["grid"], r["nfe"]): r for r in load(known_table(args))}
    cells = [r for r in load(args.out) if not r.get("same_steps_as")
             and r["guarded"]["kept"] != default[(r["solver"], r["grid"], r["nfe"])]["guarded"]["kept"]]
    denoiser = load_weights(args.weights) if args.weights else pretrained.digits()
    fresh = noise_for(args, fresh_seed, fresh_n)[1]
    cfg = FitConfig()
    pm = lambda d: plus_minus(d[0], d[1], True)  # noqa: E731
    lines = [f"| solver | grid | NFE | steps kept: default / in order | draws | default - base | in order - base "
             f"| in order - default |", "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for r in cells:
        plan = iia_jax.plan(r["solver"], GRIDS[r["grid"]](r["steps"]))
        z = np.load(samples_folder(args) / f"{r['solver']}_{r['grid']}_{plan.nfe}.npz")
        kept = default[(r["solver"], r["grid"], r["nfe"])]["guarded"]["kept"]
        only = lambda steps: np.where(np.isin(np.arange(len(z["plain_values"])), steps)[:, None],  # noqa: E731
                                      z["plain_values"], 0.0)
        assert np.array_equal(only(r["guarded"]["kept"]), z["guarded_values"]), "the guard did more than zero steps"
        spec = feature_spec(r["solver"], cfg.preset, cfg.history)
        run = lambda steps, x: np.asarray(candidate_samples(denoiser, r["solver"], spec, plan.sigmas,  # noqa: E731
                                                            only(steps), x))
        x_eval = noise_for(args, 0)[1]
        for label, x, base, mine in (
                (f"table's {len(x_eval):,}", x_eval, z["base"], z["guarded"]),
                (f"fresh {fresh_n:,}", fresh, np.asarray(iia_jax.sample(denoiser, plan, fresh)), None)):
            mine = run(r["guarded"]["kept"], x) if mine is None else mine
            theirs = run(kept, x)
            lines.append(f"| {r['solver']} | {r['grid']} | {r['nfe']} | {steps_text(kept)} / "
                         f"{steps_text(r['guarded']['kept'])} | {label} | "
                         f"{pm(score_difference(theirs, base, paired=True))} | {pm(score_difference(mine, base, paired=True))} | "
                         f"{pm(score_difference(mine, theirs, paired=True))} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def confirm(args) -> str:
    """The cells of ``--out`` that miss the guarantee (IIA - base > 1 se) measured again: the same
    fit (the same fit noise, so the same coefficients), evaluated on ``--n`` fresh draws
    (``--eval-seed``), appended to ``docs/quality_guard_<model>_confirm.jsonl``; returns the
    markdown table of that file.  A loss that is real stays above 1 se on fresh draws; one that was
    the draws' noise regresses toward zero."""
    out = args.out.with_name(args.out.stem + "_confirm.jsonl")
    rows = [r for r in load(args.out) if verdict(r["guarded"]["diff"], r["guarded"]["diff_se"]) == "**worse**"]
    done = {(r["solver"], r["grid"], r["nfe"], r["eval_seed"], r["n"]) for r in
            (map(json.loads, out.read_text().splitlines()) if out.exists() else [])}
    todo = [r for r in rows if (r["solver"], r["grid"], r["nfe"], args.eval_seed, args.n) not in done]
    setup = setup_for(args.model, args) if todo else None
    for r in todo:
        new = cell(setup, r["solver"], r["grid"], r["nfe"], args)
        new.update(command=f"python benchmarks/quality_guard.py --confirm --n {args.n} --eval-seed {args.eval_seed}"
                   + (f" --weights {args.weights}" if args.weights else "")
                   + (f" --fine-steps {args.fine_steps}" if args.fine_steps != 8 else ""),
                   commit=commit(), n=args.n, fit_batch=args.fit_batch, fine_steps=args.fine_steps,
                   seed=args.seed, eval_seed=args.eval_seed)
        with out.open("a") as f:
            f.write(json.dumps(new, default=float) + "\n")
        g = new["guarded"]
        print(f"{r['solver']:9s} {r['grid']:12s} NFE {r['nfe']:2d}  kept {g['kept']} (table {r['guarded']['kept']}) "
              f"IIA - base {g['diff']:+.3g} +- {g['diff_se']:.2g}", flush=True)
    again = {(r["solver"], r["grid"], r["nfe"]): r for r in map(json.loads, out.read_text().splitlines())} \
        if out.exists() else {}
    digits = args.model == "digits"
    lines = ["| solver | grid | NFE | steps kept (table / again) | table: IIA - base, n | fresh draws: IIA - base, n "
             "| fresh: in se | fresh verdict |", "| --- | --- | ---: | --- | --- | --- | ---: | --- |"]
    for r in rows:
        a = again.get((r["solver"], r["grid"], r["nfe"]))
        if a is None:
            continue
        g, h = r["guarded"], a["guarded"]
        lines.append(f"| {r['solver']} | {r['grid']} | {r['nfe']} | {steps_text(g['kept'])} / "
                     f"{steps_text(h['kept'])} | {plus_minus(g['diff'], g['diff_se'], digits)}, {r['n']:,} | "
                     f"{plus_minus(h['diff'], h['diff_se'], digits)}, {a['n']:,} | {h['diff'] / h['diff_se']:+.1f} | "
                     f"{verdict(h['diff'], h['diff_se'])} |")
    return "\n".join(lines)


def se_parts(args) -> str:
    """The paired se of the confirmed cells (``--confirm``'s saved samples, IIA with the guard
    against the base) split into the part from the draws and the part from the 600 reference digits
    (:func:`iia_jax.metrics.quality.score_difference_parts`), on the first 1,000 of the fresh draws
    and on all of them: only the first part shrinks with more draws."""
    out = args.out.with_name(args.out.stem + "_confirm.jsonl")
    lines = ["| solver | grid | NFE | 1,000 draws: se (draws, reference) | 4,000 draws: se (draws, reference) |",
             "| --- | --- | ---: | --- | --- |"]
    for r in map(json.loads, out.read_text().splitlines()):
        z = np.load(SAMPLES / f"eval_seed_{r['eval_seed']}" / f"{r['solver']}_{r['grid']}_{r['nfe']}.npz")
        cells = []
        for n in (1000, len(z["base"])):
            _, draws, reference = score_difference_parts(z["guarded"][:n], z["base"][:n], paired=True)
            cells.append(f"{np.hypot(draws, reference):.2f} ({draws:.2f}, {reference:.2f})")
        lines.append(f"| {r['solver']} | {r['grid']} | {r['nfe']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def verdict(diff: float, se: float) -> str:
    """``**worse**`` if IIA - base > 1 se (the guarantee's threshold), ``better`` if < -2 se, else
    ``tie``."""
    if diff > WORSE_Z * se:
        return "**worse**"
    return "better" if diff < -BETTER_Z * se else "tie"


def steps_text(steps) -> str:
    """``0, 3, 4``: a selection of steps as the tables show it (``-``: none)."""
    return ", ".join(map(str, steps)) or "-"


def plus_minus(value: float, se: float, digits: bool) -> str:
    """``value +- se``: digits_score to 0.1 (as every digits page); the mixture's MMD^2, whose
    differences span six decades, to the se's second significant digit."""
    places = 1 if digits or not se > 0 else max(0, 1 - int(np.floor(np.log10(se))))
    return f"{value:+.{places}f} +- {se:.{places}f}"


def load(path: Path) -> list:
    """The cells of a results file, one per (solver, grid, NFE): a measured row supersedes a
    transcribed one (``--remeasure``), a later row an earlier one."""
    cells = {}
    for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip()):
        key = (r["solver"], r["grid"], r["nfe"])
        if key not in cells or not r.get("transcribed") or cells[key].get("transcribed"):
            cells[key] = r
    return sorted(cells.values(), key=lambda r: (r["nfe"], r["grid"], SOLVERS.index(r["solver"])))


COLUMNS = (3, 4, 5, 6, 8, 10)   # the guarantee's NFE columns


def table(path: Path) -> str:
    """The page's table from the results file: per cell the median ODE error base -> IIA (guarded),
    the paired quality difference IIA - base with its se, the verdict, the steps kept and dropped
    by the guard, and the unguarded fit's difference; then the counts the guarantee is read from.
    Cells marked * were transcribed from an earlier page (the row's ``transcribed``: what measured
    them), not measured by this script's present version."""
    rows = load(path)
    what = "MMD^2 to exact x1000" if rows and rows[0].get("model") == "overlapping" else "digits_score"
    pm = lambda m: plus_minus(m["diff"], m["diff_se"], what == "digits_score")  # noqa: E731
    lines = [f"| solver | grid | NFE | median ODE error base -> IIA | IIA - base ({what}) | verdict | "
             "steps kept | dropped by the guard | no judge: IIA - base | fit s |",
             "| --- | --- | ---: | --- | ---: | --- | --- | --- | ---: | ---: |"]
    in_grid = {(solver, grid, iia_jax.solvers.get(solver).nfe(steps_for(c, solver)))
               for solver in SOLVERS for grid in GRIDS for c in COLUMNS if steps_for(c, solver)}
    counts, extra, higher = {}, {}, []
    for r in rows:
        p, g = r["plain"], r["guarded"]
        v = verdict(g["diff"], g["diff_se"])
        tally = counts if (r["solver"], r["grid"], r["nfe"]) in in_grid else extra
        tally[v] = tally.get(v, 0) + 1
        if g["kept"] and not g["median"] < r["median_base"]:
            higher.append(f"{r['solver']} {r['grid']} NFE {r['nfe']}")
        lines.append(
            f"| {r['solver']} | {r['grid']} | {r['nfe']}{'*' if r.get('transcribed') else ''} | "
            f"{r['median_base']:.4f} -> {g['median']:.4f} | {pm(g)} | {v} | "
            f"{steps_text(g['kept'])} of {r['steps']} | {steps_text(r['dropped'])} | "
            f"{pm(p)} | {r['fit_s']:.0f} |")
    tell = lambda c: (f"{sum(c.values())} cells: {c.get('better', 0)} better, {c.get('tie', 0)} tie, "  # noqa: E731
                      f"{c.get('**worse**', 0)} worse by more than one paired se")
    lines += ["", f"The grid's {tell(counts)}" + (f"; beyond it (NFE 9) {tell(extra)}" if extra else "")
              + f". Median ODE error not lower where a step is kept: {', '.join(higher) or 'none'}."]
    return "\n".join(lines)


def grid_summary(path: Path) -> str:
    """The guarantee at a glance: a row per (solver, grid), a column per NFE, each cell the verdict
    and IIA - base; a column holds the cell of the most steps that do not exceed its NFE
    (``steps_for``: heun's NFE 3, 5, 7, 9 cells fill its columns 3-4, 5-6, 8, 10)."""
    rows = {(r["solver"], r["grid"], r["nfe"]): r for r in load(path)}
    digits = next(iter(rows.values()), {}).get("model", "digits") == "digits"
    lines = ["| solver | grid | " + " | ".join(f"NFE {c}" for c in COLUMNS) + " |",
             "| --- | --- |" + " --- |" * len(COLUMNS)]
    for grid in GRIDS:
        for solver in SOLVERS:
            cells = []
            for c in COLUMNS:
                steps = steps_for(c, solver)
                r = rows.get((solver, grid, iia_jax.solvers.get(solver).nfe(steps))) if steps else None
                if r is None:
                    cells.append("not run")
                    continue
                g = r["guarded"]
                note = "" if r["nfe"] == c else f" (NFE {r['nfe']})"
                cells.append(f"{verdict(g['diff'], g['diff_se'])} {plus_minus(g['diff'], g['diff_se'], digits)}{note}")
            lines.append(f"| {solver} | {grid} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement(path: Path) -> str:
    """The judge against ``digits_score`` on every measured cell (default fit without a judge vs
    the base sampler): at n and on four quarters of the rows (what a 1,024-row fit holds out),
    recomputed from the saved samples against the 64-step reference."""
    ref = np.load(ROOT / "checkpoints" / "quality_cause" / "reference_seed0_n1000.npy")
    lines = ["| solver | grid | NFE | digits_score IIA - base (z) | judge at n = 1000 (z) | judge on 250-row quarters (z) | agree |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in (r for r in load(path) if not r.get("transcribed")):     # their samples were not kept
        z = np.load(SAMPLES / f"{r['solver']}_{r['grid']}_{r['nfe']}.npz")
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


VIEW_CELLS = ("dpmpp_3m:karras:4", "dpmpp_2m:karras:6", "unipc:karras:6",       # the clear losses
              "dpmpp_3m:karras:6", "dpmpp_3m:karras:8", "euler:karras:6", "dpmpp_2m:vp_quadratic:4")
RESIDUAL_SIGMA = 0.3   # the denoising residual's noise level (data in [-1, 1])


def views(path: Path) -> str:
    """IIA (the unguarded fit) against the base sampler in several model-agnostic views and in the
    judge network's features, each as a paired MMD^2 difference to the 64-step reference
    (``iia_jax.iia.guard.paired_mmd_difference``, z = difference / se; negative: IIA is closer),
    on the saved samples of ``VIEW_CELLS``.  Views: the guard's judge (clipped pixels, h/2); each
    sample's sorted values (its intensity histogram, h/2); 16 fixed random 3x3 filters + ReLU (a
    random-feature image embedding, h/2); the model's own denoising residual ``|D(x + s e, s) -
    x|^2`` at s = ``RESIDUAL_SIGMA`` (paired mean difference); and the polynomial-kernel MMD in
    ``digits_score``'s judge features, against the model's reference rather than real digits."""
    from iia_jax.iia.guard import clip_to_reference, median_bandwidth_of, paired_mmd_difference
    from iia_jax.metrics.quality import judge_features, polynomial_kernel
    ref = np.load(ROOT / "checkpoints" / "quality_cause" / "reference_seed0_n1000.npy")
    lo, hi = clip_to_reference(ref)
    clip = lambda a: np.clip(np.asarray(a, np.float64), lo, hi)  # noqa: E731
    filters = np.random.default_rng(0).normal(size=(3, 3, 1, 16)) / 3.0

    def random_features(a):
        a = np.pad(clip(a), ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = a.shape[1] - 2, a.shape[2] - 2
        out = sum(a[:, i:i + h, j:j + w, :] @ filters[i, j] for i in range(3) for j in range(3))
        return np.maximum(out, 0.0).reshape(len(a), -1)

    embed = {"pixels (the judge)": lambda a: clip(a).reshape(len(a), -1),
             "intensity histogram": lambda a: np.sort(clip(a).reshape(len(a), -1), axis=1),
             "random conv features": random_features}
    denoiser = pretrained.digits()
    noise = jax.random.normal(jax.random.PRNGKey(11), ref.shape)
    residual = jax.jit(lambda x: jnp.mean((denoiser(x + RESIDUAL_SIGMA * noise, RESIDUAL_SIGMA) - x) ** 2,
                                          axis=(1, 2, 3)))
    rows = {(r["solver"], r["grid"], r["nfe"]): r for r in load(path) if not r.get("transcribed")}
    head = ["digits_score"] + list(embed) + [f"denoising residual, s = {RESIDUAL_SIGMA}", "judge features, to the reference"]
    lines = ["| solver | grid | NFE | " + " | ".join(head) + " |", "| --- | --- | ---: |" + " ---: |" * len(head)]
    for cell in VIEW_CELLS:
        solver, grid, nfe = cell.split(":")
        r = rows[(solver, grid, int(nfe))]
        z = np.load(SAMPLES / f"{solver}_{grid}_{nfe}.npz")
        plain, base = z["plain"], z["base"]
        zs = [r["plain"]["diff"] / r["plain"]["diff_se"]]
        for f in embed.values():
            c, b, rr = f(plain), f(base), f(ref)
            d, se = paired_mmd_difference(c, b, rr, 0.5 * median_bandwidth_of(rr))
            zs.append(d / se)
        dr = np.asarray(residual(jnp.asarray(clip(plain), jnp.float32)) - residual(jnp.asarray(clip(base), jnp.float32)))
        zs.append(dr.mean() / (dr.std(ddof=1) / np.sqrt(len(dr))))
        d, se = paired_mmd_difference(judge_features(plain), judge_features(base), judge_features(ref), None,
                                      kernel=polynomial_kernel)
        zs.append(d / se)
        lines.append(f"| {solver} | {grid} | {nfe} | " + " | ".join(f"{v:+.1f}" for v in zs) + " |")
    return "\n".join(lines)


SPREAD_CELLS = VIEW_CELLS + ("dpmpp_2m:karras:5", "unipc:karras:5", "dpmpp_3m:vp_quadratic:5",
                             "heun:karras:5", "ipndm:karras:5")


def spread_floor(path: Path) -> str:
    """The default judge's two views on the unguarded fit against the base sampler, on the saved
    samples of ``SPREAD_CELLS`` against the 64-step reference: the MMD (z) and the spread floor
    (``iia_jax.iia.guard.spread_deficit``: the spreads of IIA and base over the reference's, the
    deficit with its se), and the default verdict ``reference_verdict`` (the larger z)."""
    from iia_jax.iia.guard import clip_to_reference, reference_verdict, spread_deficit
    ref = np.load(ROOT / "checkpoints" / "quality_cause" / "reference_seed0_n1000.npy")
    lo, hi = clip_to_reference(ref)
    spread = lambda a: np.sqrt(np.mean(np.var(np.clip(a.reshape(len(a), -1), lo, hi), axis=0)))  # noqa: E731
    rows = {(r["solver"], r["grid"], r["nfe"]): r for r in load(path)}
    lines = ["| solver | grid | NFE | digits_score IIA - base (z) | MMD (z) | spread IIA / base (of the reference's) | "
             "deficit | default verdict (z) |", "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for c in SPREAD_CELLS:
        solver, grid, nfe = c.split(":")
        p = rows[(solver, grid, int(nfe))]["plain"]
        z = np.load(SAMPLES / f"{solver}_{grid}_{nfe}.npz")
        plain, base = z["plain"], z["base"]
        d, se = reference_mmd(plain, base, ref)
        f, f_se = spread_deficit(plain, base, ref)
        lines.append(f"| {solver} | {grid} | {nfe} | {p['diff']:+.1f} +- {p['diff_se']:.1f} ({p['diff'] / p['diff_se']:+.1f}) | "
                     f"{d / se:+.1f} | {spread(plain) / spread(ref):.3f} / {spread(base) / spread(ref):.3f} | "
                     f"{f:+.3f} +- {f_se:.3f} | {reference_verdict(plain, base, ref)[0]:+.1f} |")
    return "\n".join(lines)


def with_feature_judge(setup: dict, args) -> str:
    """``VIEW_CELLS`` fitted with ``quality=iia_jax.feature_judge(judge_features)`` (the judge
    network's features, the fit's own reference; otherwise the table's setting) against the base
    sampler and against the default guard's fit (saved samples), on the evaluation draws."""
    from iia_jax.metrics.quality import judge_features
    denoiser, x_fit, x_eval, ref = setup["denoiser"], setup["x_fit"], setup["x_eval"], setup["ref"]
    rows = {(r["solver"], r["grid"], r["nfe"]): r for r in load(args.out)}
    lines = ["| solver | grid | NFE | default guard: IIA - base | kept | feature judge: IIA - base | kept | "
             "dropped | median ODE error base -> IIA | fit s |", "| --- | --- | ---: | ---: | --- | ---: | --- | --- | --- | ---: |"]
    for c in VIEW_CELLS:
        solver, grid, nfe = c.split(":")
        plan = iia_jax.plan(solver, GRIDS[grid](steps_for(int(nfe), solver)))
        base = np.load(SAMPLES / f"{solver}_{grid}_{nfe}.npz")["base"]
        t = time.perf_counter()
        res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=args.fine_steps, progress=False,
                          quality=iia_jax.feature_judge(judge_features))
        seconds = time.perf_counter() - t
        x0 = evaluate(denoiser, plan, res.coeffs, x_eval)
        d, se = score_difference(x0, base, paired=True)
        g = rows[(solver, grid, int(nfe))]["guarded"]
        kept = steps_text(np.flatnonzero(np.asarray(res.coeffs.kept)))
        lines.append(f"| {solver} | {grid} | {nfe} | {plus_minus(g['diff'], g['diff_se'], True)} | "
                     f"{steps_text(g['kept'])} | {plus_minus(d, se, True)} | {kept} | "
                     f"{steps_text(res.report.quality_dropped)} | "
                     f"{ode_error(base, ref).median:.4f} -> {ode_error(x0, ref).median:.4f} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


VARIANTS = {"h/2 (the judge)": {}, "h/4": dict(bandwidth_scale=0.25), "h/8": dict(bandwidth_scale=0.125),
            "h/4, 1 %..99 %": dict(tail=0.01, bandwidth_scale=0.25), "h/2, 5 %..95 %": dict(tail=0.05)}


def refit_variants(path: Path) -> str:
    """The judge and variants of it (bandwidth, clipping range) on the refitted samples of
    ``benchmarks/quality_refit.py`` against ``digits_score``: z of each at n = 1,000."""
    ref = np.load(ROOT / "checkpoints" / "quality_cause" / "reference_seed0_n1000.npy")
    lines = ["| candidate vs base | digits_score z | " + " | ".join(VARIANTS) + " |",
             "| --- | ---: |" + " ---: |" * len(VARIANTS)]
    for r in map(json.loads, (SAMPLES / "refit.jsonl").read_text().splitlines()):
        base = np.load(SAMPLES / f"{r['solver']}_{r['grid']}_{r['nfe']}.npz")["base"]
        x0 = np.load(SAMPLES / f"refit_{r['solver']}_{r['grid']}_{r['nfe']}.npy")
        zs = [d / se for d, se in (reference_mmd(x0, base, ref, **kw) for kw in VARIANTS.values())]
        lines.append(f"| {r['solver']} {r['grid']}, refitted | {r['diff'] / r['diff_se']:+.1f} | "
                     + " | ".join(f"{z:+.1f}" for z in zs) + " |")
    return "\n".join(lines)


def ladder(setup: dict) -> str:
    """The distance's own check on a ladder of known order: ``--n`` fresh exact samples shrunk
    toward the mixture's mean by s (s = 1: exact), against the exact samples the cells use; each
    rung's MMD^2 and its paired difference to the rung above it (the same rows, so paired)."""
    mix, exact, h = setup["denoiser"], setup["exact"], setup["bandwidth"]
    x = np.asarray(gmm_sample(jax.random.PRNGKey(setup["seed"] + 2), mix, len(exact)))
    mean = np.asarray(jnp.einsum("k,k...->...", jnp.exp(mix.log_weights), mix.means))
    rungs = [mean + s * (x - mean) for s in LADDER]
    lines = ["| exact samples shrunk by | MMD^2 to exact x1000 | minus the rung above (paired) | z |",
             "| ---: | ---: | ---: | ---: |"]
    for i, (s, r) in enumerate(zip(LADDER, rungs)):
        v, loo = exact_mmd(r, exact, h)
        step = "" if i == 0 else "{:+.3f} +- {:.3f} | {:+.1f}".format(
            *(lambda d, se: (d, se, d / se))(*paired_distance(r, rungs[i - 1], exact, h)[:2]))
        lines.append(f"| x{s:g} | {v:.3f} +- {jackknife_se(loo):.3f} | " + (step or "- | -") + " |")
    return "\n".join(lines)


def fit_reference(denoiser, solver: str, sigmas, x, fine_steps: int) -> np.ndarray:
    """The fit's own fine reference from ``x`` (the trajectory target's): the same solver over
    ``fine_steps`` sub-steps per interval, chained interval by interval."""
    solver_ = iia_jax.solvers.get(solver)
    n = len(sigmas) - 1

    def run(x):
        for i in range(n):
            x = fine_solution(denoiser, solver_, x, sigmas[i], sigmas[i + 1], fine_steps, i == n - 1)
        return x
    return run_batched(jax.jit(run), x, batch=BATCH)


def explain(setup: dict, solver: str, grid: str, nfe: int, args) -> str:
    """Why a digits cell misses, from its saved samples: the unguarded IIA's loss per kept step
    switched on alone, and the guard's judge against the 64-step reference and against the fit's
    own kind of reference (``fit_reference``, ``--fine-steps`` and the library default 16) on the
    evaluation draws, each reference's own ``digits_score`` against the 64-step one."""
    denoiser, x_eval, ref = setup["denoiser"], setup["x_eval"], setup["ref"]
    steps = steps_for(nfe, solver)
    plan = iia_jax.plan(solver, GRIDS[grid](steps))
    z = np.load(samples_folder(args) / f"{solver}_{grid}_{plan.nfe}.npz")
    base, plain, values = z["base"], z["plain"], z["plain_values"]
    cfg = FitConfig()
    spec = feature_spec(solver, cfg.preset, cfg.history)
    pm = lambda d: f"{d[0]:+.2f} +- {d[1]:.2f}"  # noqa: E731
    lines = [f"{solver} {grid} NFE {plan.nfe}: unguarded IIA and each kept step alone against the base "
             "(paired digits_score; the judge against the 64-step reference; ODE error; looks)",
             "| what | digits_score IIA - base | judge | median ODE error | contrast | HF | dark |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    kept = [i for i in range(len(values)) if np.any(values[i])]
    for name, x0 in [("base", base), ("unguarded IIA", plain)] + [
            (f"step {i} alone", np.asarray(candidate_samples(denoiser, solver, spec, plan.sigmas,
                                                             np.where(np.arange(len(values))[:, None] == i, values, 0),
                                                             x_eval))) for i in kept]:
        lk = look(x0, ref)
        lines.append(f"| {name} | {pm(score_difference(x0, base, paired=True))} | {pm(reference_mmd(x0, base, ref))} | "
                     f"{ode_error(x0, ref).median:.4f} | {lk['contrast']:.3f} | {lk['hf']:.3f} | {lk['dark']:.3f} |")
    lines += ["", "| reference the judge sees | its digits_score - the 64-step one's | judge: unguarded IIA - base |",
              "| --- | ---: | ---: |", f"| heun, 64 Karras steps | 0 | {pm(reference_mmd(plain, base, ref))} |"]
    for fs in sorted({args.fine_steps, cfg.fine_steps}):
        r = fit_reference(denoiser, solver, plan.sigmas, x_eval, fs)
        lines.append(f"| {solver}, {fs} sub-steps per step (the fit's kind) | {pm(score_difference(r, ref, paired=True))} | "
                     f"{pm(reference_mmd(plain, base, r))} |")
    return "\n".join(lines)


def noise_for(args, eval_seed: int | None = None, n: int | None = None):
    """``(x_fit, x_eval)``: the fit's and the evaluation's noise, split from ``--seed``; evaluation
    seed 0 is the table's draws, ``k > 0`` fresh ones (the evaluation key folded with ``k``)."""
    fresh = getattr(args, "eval_seed", 0) if eval_seed is None else eval_seed
    key_fit, key_eval = jax.random.split(jax.random.PRNGKey(args.seed))
    key_eval = jax.random.fold_in(key_eval, fresh) if fresh else key_eval
    return (SIGMA_MAX * jax.random.normal(key_fit, (args.fit_batch,) + SHAPE),
            SIGMA_MAX * jax.random.normal(key_eval, (n or args.n,) + SHAPE))


def setup_for(model: str, args) -> dict:
    """Denoiser, fit and evaluation noise, the ODE reference from the evaluation noise (cached),
    and for the mixture its exact samples and the kernel bandwidth."""
    if model == "digits":
        denoiser = load_weights(args.weights) if args.weights else pretrained.digits()
    else:
        denoiser = overlapping_mixture().denoiser
    x_fit, x_eval = noise_for(args)
    fresh = getattr(args, "eval_seed", 0)
    name = f"reference_seed{args.seed}" + (f"_eval{fresh}" if fresh else "") + f"_n{args.n}.npy"
    if args.weights:
        cache = args.samples / name
    else:
        cache = ROOT / "checkpoints" / "quality_cause" / name if model == "digits" else SAMPLES / f"{model}_{name}"
    if cache.exists():
        ref = np.load(cache)
    else:
        ref_plan = iia_jax.plan("heun", schedules.karras(REFERENCE_STEPS[model], SIGMA_MIN, SIGMA_MAX))
        ref = run_batched(jax.jit(lambda x: iia_jax.sample(denoiser, ref_plan, x)), x_eval, batch=BATCH)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, ref)
    setup = dict(denoiser=denoiser, x_fit=x_fit, x_eval=x_eval, ref=ref, seed=args.seed)
    if model == "overlapping":
        exact = np.asarray(gmm_sample(jax.random.PRNGKey(args.seed + 1), denoiser, args.n)).reshape(args.n, -1)
        setup.update(exact=exact, bandwidth=median_bandwidth(exact))
    return setup


@functools.cache
def commit() -> str:
    """The revision of the code this process runs: read once, when ``main`` starts, so a commit made
    while cells run does not relabel them (``+dirty``: the package had uncommitted changes)."""
    return git_revision()


def main(argv=None):
    commit()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits", choices=list(REFERENCE_STEPS))
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    ap.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--nfe", nargs="+", type=int, default=[5])
    ap.add_argument("--n", type=int, default=None, help="evaluation draws (digits 1000, overlapping 2000)")
    ap.add_argument("--fit-batch", type=int, default=1024)
    ap.add_argument("--fine-steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=0, help="0: the table's evaluation draws; k > 0: fresh ones "
                    "(the evaluation key folded with k), for --confirm")
    ap.add_argument("--confirm", action="store_true", help="measure the cells that miss the guarantee again on "
                    "--n fresh draws (--eval-seed, default 1; --n default 4000) and print the table")
    ap.add_argument("--se-parts", action="store_true", help="print the confirmed cells' paired se split into "
                    "its draws' and its reference digits' parts (from --confirm's saved samples) and stop")
    ap.add_argument("--weights", type=Path, default=None, help="with --model digits: another digits denoiser, "
                    "<name>.msgpack with its <name>.json (benchmarks/second_model.py's), in place of the shipped "
                    "one; results default to docs/quality_guard_<name>.jsonl, samples and reference to "
                    "checkpoints/quality_guard/<name>/")
    ap.add_argument("--out", type=Path, default=None, help="results file (default docs/quality_guard_<model>.jsonl)")
    ap.add_argument("--remeasure", action="store_true", help="measure the transcribed cells of --out again "
                    "(the new rows supersede them)")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and stop")
    ap.add_argument("--ladder", action="store_true", help="print the mixture distance's ladder check and stop")
    ap.add_argument("--explain", metavar="SOLVER:GRID:NFE", help="why a measured digits cell misses "
                    "(its saved samples, per kept step, the judge's references) and stop")
    ap.add_argument("--recheck", action="store_true", help="fit every cell of --out again with the present "
                    "defaults and measure again those whose kept steps changed")
    ap.add_argument("--agreement", action="store_true", help="print the judge vs digits_score table and stop")
    ap.add_argument("--views", action="store_true", help="print IIA vs base in model-agnostic views and in the "
                    "judge's features on the saved samples of the cells that miss, and stop")
    ap.add_argument("--spread", action="store_true", help="print the default judge's two views (MMD, spread "
                    "floor) on the cells of --views and a few more")
    ap.add_argument("--feature-judge", action="store_true", help="fit the cells of --views with the judge "
                    "network's features as the guard's judge (iia_jax.feature_judge), print the table and stop")
    ap.add_argument("--refit-variants", action="store_true", help="print the judge and variants of it on the "
                    "samples of benchmarks/quality_refit.py and stop")
    ap.add_argument("--cost", nargs="+", metavar="SOLVER:GRID:NFE", help="fit these cells with the default "
                    "judge and with IN_ORDER_JUDGE, print model evaluations and fit time, and stop")
    ap.add_argument("--against-default", action="store_true", help="with --in-order: where it kept other steps than "
                    "the default guard, both paired against each other and the base, on the table's and 4,000 fresh draws")
    ap.add_argument("--in-order", action="store_true", help="the guard also judges the kept steps in step "
                    "order (iia_jax.iia.IN_ORDER_JUDGE); results default to docs/quality_guard_<name>_in_order.jsonl")
    args = ap.parse_args(argv)
    if args.confirm:
        args.eval_seed = args.eval_seed or 1
        args.n = args.n or 4000
    args.n = args.n or (1000 if args.model == "digits" else 2000)
    args.out = args.out or (known_table(args).with_name(known_table(args).stem + "_in_order.jsonl") if args.in_order
                            else known_table(args))
    args.samples = SAMPLES / args.weights.stem if args.weights else SAMPLES
    if args.weights and (args.model != "digits" or args.views or args.spread or args.agreement
                         or args.feature_judge or args.refit_variants or args.se_parts or args.ladder):
        raise SystemExit("--weights: another digits denoiser is measured (default mode), re-checked (--recheck, "
                         "--confirm), explained (--explain), costed (--cost) and tabled (--table) only, with --model digits")
    if args.table:
        print(grid_summary(args.out) + "\n\n" + table(args.out))
        return
    if args.confirm:
        print(confirm(args))
        return
    if args.against_default:
        if not args.in_order:
            raise SystemExit("--against-default compares the --in-order guard's cells with the default's: add --in-order")
        print(against_default(args))
        return
    if args.se_parts:
        print(se_parts(args))
        return
    if args.agreement:
        print(agreement(args.out))
        return
    if args.feature_judge:
        print(with_feature_judge(setup_for(args.model, args), args))
        return
    if args.views:
        print(views(args.out))
        return
    if args.spread:
        print(spread_floor(args.out))
        return
    if args.refit_variants:
        print(refit_variants(args.out))
        return
    if args.explain:
        solver, grid, nfe = args.explain.split(":")
        print(explain(setup_for(args.model, args), solver, grid, int(nfe), args))
        return
    if args.recheck:
        recheck(setup_for(args.model, args), args)
        return
    if args.cost:
        print(cost(setup_for(args.model, args), args.cost, args))
        return
    if args.ladder:
        if args.model != "overlapping":
            raise SystemExit("--ladder checks the exact mixture's distance: use it with --model overlapping")
        print(ladder(setup_for(args.model, args)))
        return
    SAMPLES.mkdir(parents=True, exist_ok=True)
    done = {(r["solver"], r["grid"], r["nfe"]) for r in (load(args.out) if args.out.exists() else [])
            if not (args.remeasure and r.get("transcribed"))}
    setup = setup_for(args.model, args)
    known = ({(r["solver"], r["grid"], r["nfe"]): r for r in load(known_table(args))
             if r["fine_steps"] == args.fine_steps and r["n"] == args.n}
             if args.in_order and known_table(args).exists() else {})
    command = " ".join(["python", "benchmarks/quality_guard.py"] + (sys.argv[1:] if argv is None else list(argv)))
    for nfe in args.nfe:
        for grid in args.grids:
            for solver in args.solvers:
                steps = steps_for(nfe, solver)
                if steps is None or (solver, grid, iia_jax.solvers.get(solver).nfe(steps)) in done:
                    continue
                t = time.perf_counter()
                r = cell(setup, solver, grid, nfe, args, known.get((solver, grid, iia_jax.solvers.get(solver).nfe(steps))))
                r.update(command=command, commit=commit(), n=args.n, fit_batch=args.fit_batch,
                         fine_steps=args.fine_steps, seed=args.seed)
                with args.out.open("a") as f:
                    f.write(json.dumps(r, default=float) + "\n")
                done.add((solver, grid, r["nfe"]))
                # each compiled program keeps its code mapped; a whole table in one process would reach
                # the kernel's map limit (as few_steps.py found), so let each cell's programs go
                jax.clear_caches()
                p, g = r["plain"], r["guarded"]
                print(f"{solver:9s} {grid:12s} NFE {r['nfe']:2d}  err {r['median_base']:.4f} -> {g['median']:.4f} "
                      f"(no judge {p['median']:.4f})  guarded {g['diff']:+.3g} +- {g['diff_se']:.2g}  no judge "
                      f"{p['diff']:+.3g} +- {p['diff_se']:.2g}  kept {g['kept']} dropped {r['dropped']} "
                      f"fit-judge {r['fit_judge']}  {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
