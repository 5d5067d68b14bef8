"""``iia-jax``: demo, train, fit, sample and bench from the command line.

Every command writes only under its ``--out`` directory; ``fit`` and ``sample`` refuse to
replace earlier results without ``--overwrite`` and print a JSON report with ``--json``.
``sample --coeffs DIR`` takes the solver and the grid stored with the coefficients.  Models (``--model``):
``digits`` (the shipped digits denoiser, EDM sigma-space), ``digits-cond`` (the shipped
class-conditional one: ``--label L|all``, ``--guidance W`` for classifier-free guidance) or
``diffusers:PATH`` (a local ``UNet2DModel`` folder, DDPM schedule from its scheduler config).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

GRIDS = ("karras", "logsnr_uniform", "time_uniform", "quadratic", "vp_quadratic", "ddim", "fitted")
NULL_LABEL = 10   # digits-cond: the label that gives the unconditional model
# The recommended starting configuration (README): heun, 5 steps (NFE 9), the model's default grid
# (vp_quadratic for the digits model), fit's own fine_steps; the demo uses the same.
DEFAULT_SOLVER, DEFAULT_STEPS, DEFAULT_FINE_STEPS = "heun", 5, 16


class Model(NamedTuple):
    name: str
    denoiser: Callable
    shape: tuple            # event shape of one sample
    vp: bool                # VP model: x_T = sqrt(1 + sigma_max^2) N(0, I)
    schedule: object        # iia_jax.schedules.Schedule
    alphas_cumprod: object  # DDPM models only
    default_grid: str
    fingerprint: str
    conditional: bool = False   # D(x, sigma, cond) with integer labels


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_model(spec: str, guidance: float | None = None) -> Model:
    """Resolve ``--model``: ``digits``, ``digits-cond`` or ``diffusers:PATH``; ``guidance`` wraps a
    conditional model in classifier-free guidance (:func:`iia_jax.models.guided`)."""
    from . import models, pretrained, schedules
    if guidance is not None and spec != "digits-cond":
        raise SystemExit("error: --guidance needs a conditional model (--model digits-cond)")
    if spec in ("digits", "digits-cond"):
        name = spec.replace("-", "_")
        record = pretrained.load(name).record
        denoiser = pretrained.digits() if spec == "digits" else pretrained.digits_cond()
        if guidance is not None:
            denoiser = models.guided(denoiser, guidance, NULL_LABEL)
        # default grid: the peer benchmark's best for the digits model (docs/benchmarks.md, "Which
        # grid suits IIA": 3-4x lower IIA error than Karras at NFE 5 and 10); digits-cond keeps
        # Karras, where its guidance results were measured (docs/guidance_results.md)
        grid = "vp_quadratic" if spec == "digits" else "karras"
        return Model(spec, denoiser, (8, 8, 1), False, schedules.edm(0.002, 80.0), None, grid,
                     f"{spec}:{record.get('weights_sha256', 'unknown')[:16]}", spec == "digits-cond")
    if spec.startswith("diffusers:"):
        from .models.diffusers_io import from_diffusers, scheduler_alphas, weights_file
        path = spec.split(":", 1)[1]
        denoiser, module, _ = from_diffusers(path)
        alphas = scheduler_alphas(path)
        cfg = module.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
        shape = (size, size, cfg.in_channels)
        return Model(f"diffusers:{path}", denoiser, shape, True, schedules.vp_discrete(alphas), alphas,
                     "time_uniform", f"diffusers:{_file_sha256(weights_file(path))}")
    raise SystemExit(f"error: --model must be 'digits', 'digits-cond' or 'diffusers:PATH', got {spec!r}")


def stored_plan(model: Model, coeffs_dir, solver=None, steps=None, grid=None):
    """``sample --coeffs DIR``: the plan the coefficients in ``DIR`` were fitted for (their stored
    solver and sigmas).  ``--solver``/``--steps``/``--grid``, if given, must agree with it."""
    import iia_jax
    stored = iia_jax.load_coefficients(coeffs_dir)
    plan = iia_jax.plan(stored.solver, np.asarray(stored.sigmas))
    if solver is not None and solver != plan.solver:
        raise SystemExit(f"error: --solver {solver} differs from the solver {plan.solver!r} stored in "
                         f"{coeffs_dir}; drop --solver")
    if steps is not None and steps != plan.num_steps:
        raise SystemExit(f"error: --steps {steps} differs from the {plan.num_steps} steps stored in "
                         f"{coeffs_dir}; drop --steps")
    if grid not in (None, "fitted"):
        sigmas = make_plan(model, plan.solver, plan.num_steps, grid).sigmas
        if not np.allclose(np.asarray(sigmas), np.asarray(plan.sigmas), rtol=1e-5, atol=0):
            raise SystemExit(f"error: --grid {grid} differs from the grid stored in {coeffs_dir}; drop --grid")
    return plan


def make_plan(model: Model, solver: str, steps: int, grid: str | None):
    """The plan for ``--solver/--steps/--grid`` on ``model``'s own sigma range (``grid=None``: the
    model's default grid)."""
    import iia_jax
    from . import schedules
    grid = grid or model.default_grid
    if grid == "fitted":
        raise SystemExit("error: --grid fitted needs a fit (fit --grid fitted); sample takes the "
                         "fitted grid from --coeffs")
    s = model.schedule
    if grid in ("karras", "logsnr_uniform", "vp_quadratic"):
        sigmas = getattr(schedules, grid)(steps, s.sigma_min, s.sigma_max)
    elif grid in ("time_uniform", "quadratic"):
        sigmas = getattr(schedules, grid)(s, steps)
    elif grid == "ddim":
        if model.alphas_cumprod is None:
            raise SystemExit("error: --grid ddim needs a DDPM (diffusers) model")
        sigmas = schedules.ddim(model.alphas_cumprod, steps)
    else:
        raise SystemExit(f"error: --grid must be one of {GRIDS}, got {grid!r}")
    return iia_jax.plan(solver, sigmas)


def _noise(model, plan, n, seed):
    import jax
    import iia_jax
    return iia_jax.initial_noise(jax.random.PRNGKey(seed), plan, (n,) + model.shape, vp=model.vp)


def _labels(model, label, n):
    """``--label``: one digit for every sample, or ``all`` (0..9 in turn); None for other models."""
    if not model.conditional:
        if label is not None:
            raise SystemExit("error: --label needs a conditional model (--model digits-cond)")
        return None
    import jax.numpy as jnp
    if label in (None, "all"):
        return jnp.arange(n, dtype=jnp.int32) % 10
    if not label.isdigit() or not 0 <= int(label) <= NULL_LABEL:
        raise SystemExit(f"error: --label must be a digit 0-9, {NULL_LABEL} (the null label) or 'all', got {label!r}")
    return jnp.full((n,), int(label), jnp.int32)


# Fit rows when a quality judge watches the fit: the digits judge's paired se is about 11 at
# 1,000 rows, against the loss of about 20 it has to see (docs/iia.md, docs/digits.md).
JUDGED_BATCH = 1024


def _quality(model, choice):
    """``--quality``: the sample judge of the fit's quality guard.  ``auto`` is the digits judge on
    the unconditional digits model, the only model we ship a validated judge for (docs/metrics.md;
    it does not measure strongly guided samples, docs/guidance.md), and the library's default,
    model-agnostic reference judge elsewhere (samples against the fit's own fine reference,
    docs/iia.md); ``in-order`` is that judge with the kept steps also judged in step order
    (``iia_jax.iia.IN_ORDER_JUDGE``, docs/digits.md); ``none`` switches the quality guard off (the
    error check alone)."""
    import iia_jax
    from .metrics import digits_check
    if choice == "digits" or (choice == "auto" and model.name == "digits"):
        if model.shape != (8, 8, 1):
            raise SystemExit("error: --quality digits judges 8x8 digits; this model makes "
                             f"{model.shape} samples")
        return digits_check
    return {"none": None, "in-order": iia_jax.iia.IN_ORDER_JUDGE}.get(choice, iia_jax.iia.REFERENCE_JUDGE)


# ----------------------------------------------------------------------------- reports

def _jsonable(value):
    """Arrays, numpy scalars, tuples and NamedTuples as plain JSON values (NaN as null)."""
    if hasattr(value, "_asdict"):
        return {k: _jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "shape") or isinstance(value, (np.generic, float)):
        array = np.asarray(value)
        if array.dtype.kind in "fc":
            array = np.where(np.isfinite(array), array, np.nan).astype(np.float64)
            return _nan_to_none(array.tolist())
        return array.tolist()
    return value


def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def _plan_record(plan) -> dict:
    return dict(solver=plan.solver, steps=plan.num_steps, nfe=plan.nfe,
                sigmas=[float(v) for v in np.asarray(plan.sigmas)])


def _say(args, *parts):
    """Human-readable progress: stdout, or stderr when stdout carries the ``--json`` report."""
    print(*parts, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


class _Spill(NamedTuple):
    bytes: int | None       # FitConfig.spill_above (None: never)


def _spill_above(text: str) -> _Spill:
    """``--spill-above``: whole MiB, or ``never``."""
    if text == "never":
        return _Spill(None)
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of MiB or 'never', got {text!r}")
    return _Spill(int(text) * 2**20)


def _refuse_existing(paths, what):
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        raise SystemExit(f"error: {', '.join(existing)} {verb}; pass --overwrite to replace {what}")


# ----------------------------------------------------------------------------- commands

def cmd_fit(args):
    import iia_jax
    model = load_model(args.model, args.guidance)
    out = Path(args.out)
    if not args.overwrite:
        _refuse_existing([out], "it")
    quality = _quality(model, args.quality)
    args.batch = args.batch or (JUDGED_BATCH if quality else 256)
    fit_kwargs = dict(preset=args.preset, history=args.history, fine_steps=args.fine_steps,
                      mode=args.mode, target=args.target, chunk_size=args.chunk_size,
                      spill_dir=args.spill_dir, **({} if args.spill_above is None else
                                                   dict(spill_above=args.spill_above.bytes)),
                      fingerprint=model.fingerprint, progress=not args.json, quality=quality,
                      match_spread=args.spread == "match", refit=args.refit)
    if args.grid == "fitted":
        res = _fit_grid(model, args, fit_kwargs)
        plan = res.plan
    else:
        plan = make_plan(model, args.solver, args.steps, args.grid)
        x_T = _noise(model, plan, args.batch, args.seed)
        _say(args, f"fitting IIA for {plan} on {model.name} with {args.batch} samples ...")
        res = iia_jax.fit(model.denoiser, plan, x_T, cond=_labels(model, args.label, args.batch),
                          **fit_kwargs)
    _say(args, res.report.summary())
    path = iia_jax.save_coefficients(out, res.coeffs, overwrite=args.overwrite)
    _say(args, f"saved {res.coeffs} to {path}")
    if args.json:
        report = res.report._asdict()
        report.pop("coeffs", None)     # fit_plan's candidates' coefficients: the chosen ones are below
        print(json.dumps(_jsonable(dict(command="fit", model=model.name, out=str(path),
                                        plan=_plan_record(plan), fit_batch=args.batch,
                                        coefficients=res.coeffs.metadata(),
                                        values=res.coeffs.values, report=report))))


def _fit_grid(model, args, fit_kwargs):
    """``fit --grid fitted``: the step grid fitted jointly with the coefficients."""
    import jax
    import iia_jax
    s = model.schedule
    probe = make_plan(model, args.solver, args.steps, None)
    x_T = _noise(model, probe, args.batch, args.seed)
    _say(args, f"fitting the grid and IIA for {args.solver}, {args.steps} steps on {model.name} with "
               f"{args.batch} samples ...")
    return iia_jax.fit_plan(model.denoiser, args.solver, args.steps, x_T, sigma_min=s.sigma_min,
                            sigma_max=s.sigma_max, cond=_labels(model, args.label, args.batch),
                            key=jax.random.PRNGKey(args.seed), **fit_kwargs)


def cmd_sample(args):
    import jax
    import iia_jax
    from .plots import sample_grid
    model = load_model(args.model, args.guidance)
    out = Path(args.out)
    targets = [out / "samples.npz", out / "samples.png"]
    if not args.overwrite:
        _refuse_existing(targets, "them")
    if args.coeffs:
        plan = stored_plan(model, args.coeffs, args.solver, args.steps, args.grid)
        coeffs = iia_jax.load_coefficients(args.coeffs, plan=plan, fingerprint=model.fingerprint)
        run = jax.jit(lambda x, c: iia_jax.iia_sample(model.denoiser, plan, coeffs, x, cond=c))
    else:
        plan = make_plan(model, args.solver or DEFAULT_SOLVER, args.steps or DEFAULT_STEPS, args.grid)
        run = jax.jit(lambda x, c: iia_jax.sample(model.denoiser, plan, x, cond=c))
    x_T = _noise(model, plan, args.n, args.seed)
    labels = _labels(model, args.label, args.n)
    chunk = args.chunk_size
    start = time.perf_counter()
    x0 = np.concatenate([np.asarray(run(x_T[i:i + chunk], None if labels is None else labels[i:i + chunk]))
                         for i in range(0, args.n, chunk)])
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(x0)):
        raise SystemExit("error: the samples contain NaN/Inf; check the model (sample with check_finite=True)")
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "samples.npz", samples=x0, **({} if labels is None else {"labels": np.asarray(labels)}))
    label = "IIA" if args.coeffs else "base"
    written = [out / "samples.npz"]
    if len(model.shape) == 3:
        sample_grid({f"{label} {plan.solver}, NFE {plan.nfe}": x0[:64]}, out / "samples.png")
        written.append(out / "samples.png")
    _say(args, f"{args.n} samples ({label}, {plan}) in {seconds:.1f} s -> {out / 'samples.npz'}")
    if args.json:
        print(json.dumps(_jsonable(dict(command="sample", model=model.name, iia=bool(args.coeffs),
                                        coeffs=args.coeffs, plan=_plan_record(plan), n=args.n,
                                        seconds=seconds, files=[str(p) for p in written]))))


def cmd_train(args):
    import dataclasses
    from . import pretrained
    from .data import digits
    from .train import (DIGITS_CLASSIFIER, DIGITS_COND_DENOISER, DIGITS_DENOISER, train_classifier,
                        train_denoiser)
    out = Path(args.out or f"checkpoints/{args.what}")
    data = digits("train")
    if args.what in ("digits", "digits-cond"):
        base = DIGITS_DENOISER if args.what == "digits" else DIGITS_COND_DENOISER
        config = dataclasses.replace(base, steps=args.train_steps or base.steps)
        labels = data.labels if args.what == "digits-cond" else None
        result = train_denoiser(config, data.images, str(out / "run"), labels=labels)
    else:
        config = dataclasses.replace(DIGITS_CLASSIFIER, steps=args.train_steps or DIGITS_CLASSIFIER.steps)
        result = train_classifier(config, data.images, data.labels, str(out / "run"))
    record = result.record(args.what)
    path = pretrained.save(config.name, result.state.ema_params, record, weights_dir=str(out))
    print(json.dumps({k: record[k] for k in ("steps", "final_loss")}), f"-> {path}")


def cmd_demo(args):
    from .demo import run_demo
    run_demo(out=Path(args.out), steps=args.steps, n=args.n, batch=args.batch, fine_steps=args.fine_steps,
             seed=args.seed)


# ----------------------------------------------------------------------------- parser

class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in ``--help``; options whose default depends on others say so in
    their own help text (their argparse default is None)."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _common(p, need_out=True):
    from .solvers import SOLVERS
    p.add_argument("--model", default="digits",
                   help="'digits' (shipped), 'digits-cond' (shipped, class-conditional) or 'diffusers:PATH' "
                        "(a local UNet2DModel folder)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale for digits-cond (default: none, the plain "
                        "conditional model)")
    p.add_argument("--label", default=None,
                   help="digits-cond: a digit 0-9 for every sample, 10 (the null label) or 'all' "
                        "(0..9 in turn; the default)")
    p.add_argument("--solver", default=None, choices=sorted(SOLVERS),
                   help=f"base solver (default: {DEFAULT_SOLVER}; sample --coeffs: the stored one)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"steps N of the plan; heun makes 2N - 1 network evaluations, the others N "
                        f"(default: {DEFAULT_STEPS}; sample --coeffs: the stored ones)")
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help="sigma grid (default: vp_quadratic for digits, karras for digits-cond, "
                        "time_uniform for diffusers models; sample --coeffs: the stored sigmas); "
                        "time_uniform and quadratic are uniform and quadratic in the model's own time; "
                        "'fitted' (fit only): fit the grid with the coefficients")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable report (one JSON object) on stdout, progress on stderr")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    if need_out:
        p.add_argument("--out", required=True, help="output directory (the only place written)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    ap = argparse.ArgumentParser(prog="iia-jax", description=__doc__, formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"iia-jax {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", formatter_class=_Help,
                       help="fit IIA on the shipped digits model; print base vs IIA; write PNGs",
                       description="Fit IIA for heun, euler and dpmpp_2m on the shipped digits model in\n"
                                   "the recommended configuration (that of 'iia-jax fit --model digits'), and\n"
                                   "compare base and IIA samples from fresh noise with a fine reference:\n"
                                   "median ODE error and digits_score.")
    p.add_argument("--out", default="checkpoints/demo", help="where results.json, PNGs and coefficients go")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="heun's steps N; euler and dpmpp_2m take the same NFE, 2N - 1 steps")
    p.add_argument("--n", type=int, default=500, help="evaluation samples (fresh noise, not used in the fit)")
    p.add_argument("--batch", type=int, default=JUDGED_BATCH,
                   help="fit rows (the quality judge in the fit needs about 1,000)")
    p.add_argument("--fine-steps", type=int, default=DEFAULT_FINE_STEPS,
                   help="sub-steps of the fit's target integration per coarse step")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit and evaluation noise")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", formatter_class=_Help,
                       help="train a digits denoiser or the classifier (resumable)")
    p.add_argument("what", choices=["digits", "digits-cond", "classifier"], help="what to train")
    p.add_argument("--train-steps", type=int, default=None,
                   help="optimiser steps (default: the shipped model's own count, iia_jax.train)")
    p.add_argument("--out", default=None,
                   help="checkpoints and exported weights (default: checkpoints/<what>)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fit", formatter_class=_Help, help="fit IIA coefficients and save them with orbax")
    _common(p)
    p.add_argument("--batch", type=int, default=None,
                   help=f"fit rows (default: {JUDGED_BATCH} with a quality judge, else 256)")
    p.add_argument("--fine-steps", type=int, default=DEFAULT_FINE_STEPS,
                   help="sub-steps of the target integration per coarse step")
    p.add_argument("--preset", default=None,
                   help="feature preset (default: the solver's own, iia_jax.iia.DEFAULT_PRESET; "
                        "e.g. iia-edm, biia-edm, iia-ddim, generic)")
    p.add_argument("--history", type=int, default=1, help="earlier steps whose features also enter a step")
    p.add_argument("--mode", default="sequential", choices=["teacher_forced", "sequential"],
                   help="where the fit's states come from (docs/iia.md)")
    p.add_argument("--target", default=None, choices=["local", "trajectory"],
                   help="what a step aims at (default: the solver's measured best, "
                        "iia_jax.iia.DEFAULT_TARGET: trajectory for every solver)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="rows per model pass, to bound memory (default: all rows in one pass)")
    p.add_argument("--spill-dir", default=None,
                   help="an existing folder where the sequential fit keeps its carried state between "
                        "steps (with --chunk-size, memory flat in --batch; default: the system's "
                        "temporary folder once the state passes --spill-above)")
    p.add_argument("--spill-above", type=_spill_above, default=None, metavar="MIB",
                   help="with --chunk-size and no --spill-dir: the carried state of all rows, in MiB, above "
                        "which it goes to disk ('never': always in memory; default 16)")
    p.add_argument("--quality", default="auto", choices=["auto", "digits", "reference", "in-order", "none"],
                   help="sample judge of the fit's quality guard (auto: digits on --model digits, the "
                        "model-agnostic reference judge elsewhere; none: the error check alone)")
    p.add_argument("--spread", default="match", choices=["match", "free"],
                   help="match: least squares that keeps the target's spread across samples "
                        "(fit(match_spread=True)); free: plain least squares")
    p.add_argument("--refit", action="store_true",
                   help="after the error check, fit again with the steps it switched off held at zero, "
                        "until the kept steps stop changing (FitConfig(refit=True); sequential mode)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("sample", formatter_class=_Help,
                       help="sample (with --coeffs: IIA) and write samples.npz + samples.png")
    _common(p)
    p.add_argument("--coeffs", default=None,
                   help="coefficient directory from 'iia-jax fit' (default: none, the base sampler)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--chunk-size", type=int, default=256, help="rows per jitted sampler call")
    p.set_defaults(func=cmd_sample)

    # listed for --help; main() hands `iia-jax bench ...` to iia_jax.bench, which parses the rest
    sub.add_parser("bench", help="benchmarks against diffusers and diffrax (iia-jax bench --help; "
                   "iia-jax bench few-steps --help: NFE 3-5 on digits (6, 8, 10 on request), 2,000 draws)")
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:      # the bench parses its own arguments (iia-jax bench --help)
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "fit":
        args.solver, args.steps = args.solver or DEFAULT_SOLVER, args.steps or DEFAULT_STEPS
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
