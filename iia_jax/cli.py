"""``iia-jax``: demo, train, fit, sample and bench from the command line.

Every command writes only under its ``--out`` directory.  Models (``--model``):
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
    raise SystemExit(f"error: --model must be 'digits' or 'diffusers:PATH', got {spec!r}")


def make_plan(model: Model, solver: str, steps: int, grid: str | None, coeffs_dir=None):
    """The plan for ``--solver/--steps/--grid`` on ``model``'s own sigma range.  ``--grid fitted``
    takes the sigmas stored with the coefficients in ``coeffs_dir`` (from ``fit --grid fitted``)."""
    import iia_jax
    from . import schedules
    grid = grid or model.default_grid
    if grid == "fitted":
        if coeffs_dir is None:
            raise SystemExit("error: --grid fitted samples with the grid stored in --coeffs; pass --coeffs")
        stored = iia_jax.load_coefficients(coeffs_dir)
        return iia_jax.plan(solver, np.asarray(stored.sigmas))
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
    """``--quality``: the sample judge of fit's never-worse check.  ``auto`` is the digits judge on
    the unconditional digits model, the only model we ship a validated judge for (docs/metrics.md;
    it does not measure strongly guided samples, docs/guidance.md), and none elsewhere."""
    from .metrics import digits_check
    if choice == "digits" or (choice == "auto" and model.name == "digits"):
        if model.shape != (8, 8, 1):
            raise SystemExit("error: --quality digits judges 8x8 digits; this model makes "
                             f"{model.shape} samples")
        return digits_check
    return None


# ----------------------------------------------------------------------------- commands

def cmd_fit(args):
    import iia_jax
    model = load_model(args.model, args.guidance)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite to replace it")
    quality = _quality(model, args.quality)
    args.batch = args.batch or (JUDGED_BATCH if quality else 256)
    fit_kwargs = dict(preset=args.preset, history=args.history, fine_steps=args.fine_steps,
                      mode=args.mode, target=args.target, chunk_size=args.chunk_size,
                      fingerprint=model.fingerprint, progress=True, quality=quality,
                      match_spread=args.spread == "match")
    if args.grid == "fitted":
        res = _fit_grid(model, args, fit_kwargs)
    else:
        plan = make_plan(model, args.solver, args.steps, args.grid)
        x_T = _noise(model, plan, args.batch, args.seed)
        print(f"fitting IIA for {plan} on {model.name} with {args.batch} samples ...", flush=True)
        res = iia_jax.fit(model.denoiser, plan, x_T, cond=_labels(model, args.label, args.batch),
                          **fit_kwargs)
    print(res.report.summary())
    path = iia_jax.save_coefficients(out, res.coeffs, overwrite=args.overwrite)
    print(f"saved {res.coeffs} to {path}")


def _fit_grid(model, args, fit_kwargs):
    """``fit --grid fitted``: the step grid fitted jointly with the coefficients."""
    import jax
    import iia_jax
    s = model.schedule
    probe = make_plan(model, args.solver, args.steps, None)
    x_T = _noise(model, probe, args.batch, args.seed)
    print(f"fitting the grid and IIA for {args.solver}, {args.steps} steps on {model.name} with "
          f"{args.batch} samples ...", flush=True)
    return iia_jax.fit_plan(model.denoiser, args.solver, args.steps, x_T, sigma_min=s.sigma_min,
                            sigma_max=s.sigma_max, cond=_labels(model, args.label, args.batch),
                            key=jax.random.PRNGKey(args.seed), **fit_kwargs)


def cmd_sample(args):
    import jax
    import iia_jax
    from .plots import sample_grid
    model = load_model(args.model, args.guidance)
    plan = make_plan(model, args.solver, args.steps, args.grid, args.coeffs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.coeffs:
        coeffs = iia_jax.load_coefficients(args.coeffs, plan=plan, fingerprint=model.fingerprint)
        run = jax.jit(lambda x, c: iia_jax.iia_sample(model.denoiser, plan, coeffs, x, cond=c))
    else:
        run = jax.jit(lambda x, c: iia_jax.sample(model.denoiser, plan, x, cond=c))
    x_T = _noise(model, plan, args.n, args.seed)
    labels = _labels(model, args.label, args.n)
    start = time.perf_counter()
    x0 = np.concatenate([np.asarray(run(x_T[i:i + args.batch], None if labels is None else labels[i:i + args.batch]))
                         for i in range(0, args.n, args.batch)])
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(x0)):
        raise SystemExit("error: the samples contain NaN/Inf; check the model (sample with check_finite=True)")
    np.savez(out / "samples.npz", samples=x0, **({} if labels is None else {"labels": np.asarray(labels)}))
    label = "IIA" if args.coeffs else "base"
    if len(model.shape) == 3:
        sample_grid({f"{label} {plan.solver}, NFE {plan.nfe}": x0[:64]}, out / "samples.png")
    print(f"{args.n} samples ({label}, {plan}) in {seconds:.1f} s -> {out / 'samples.npz'}")


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
        config = dataclasses.replace(base, steps=args.steps or base.steps)
        labels = data.labels if args.what == "digits-cond" else None
        result = train_denoiser(config, data.images, str(out / "run"), labels=labels)
    else:
        config = dataclasses.replace(DIGITS_CLASSIFIER, steps=args.steps or DIGITS_CLASSIFIER.steps)
        result = train_classifier(config, data.images, data.labels, str(out / "run"))
    record = result.record(args.what)
    path = pretrained.save(config.name, result.state.ema_params, record, weights_dir=str(out))
    print(json.dumps({k: record[k] for k in ("steps", "final_loss")}), f"-> {path}")


def cmd_demo(args):
    from .demo import run_demo
    run_demo(out=Path(args.out), nfe=args.nfe, n=args.n, batch=args.batch, fine_steps=args.fine_steps,
             seed=args.seed)


# ----------------------------------------------------------------------------- parser

def _common(p, need_out=True):
    from .solvers import SOLVERS
    p.add_argument("--model", default="digits",
                   help="'digits', 'digits-cond' (class-conditional; shipped) or 'diffusers:PATH'")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale for digits-cond (default: plain conditional)")
    p.add_argument("--label", default=None,
                   help="digits-cond: a digit 0-9 for every sample, or 'all' (0..9 in turn; the default)")
    p.add_argument("--solver", default="heun", choices=sorted(SOLVERS))
    p.add_argument("--steps", type=int, default=5, help="number of steps N (heun: NFE = 2N - 1)")
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help="sigma grid (default: vp_quadratic for digits, karras for digits-cond, "
                        "time_uniform for DDPM models); "
                        "'fitted': fit the grid with the coefficients (fit), or use the grid stored "
                        "in --coeffs (sample)")
    p.add_argument("--seed", type=int, default=0)
    if need_out:
        p.add_argument("--out", required=True, help="output directory (the only place written)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="iia-jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fit IIA on the shipped digits model; table and PNGs (the main job)")
    p.add_argument("--out", default="checkpoints/demo", help="where coefficients and PNGs go")
    p.add_argument("--nfe", type=int, default=9, help="network evaluations per sample (odd: heun uses (NFE+1)/2 steps)")
    p.add_argument("--n", type=int, default=500, help="evaluation samples (fresh noise)")
    p.add_argument("--batch", type=int, default=JUDGED_BATCH,
                   help="fit samples (the quality judge in the fit needs about 1,000)")
    p.add_argument("--fine-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a digits denoiser or the classifier (resumable)")
    p.add_argument("what", choices=["digits", "digits-cond", "classifier"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=None, help="default checkpoints/<what>: checkpoints + exported weights")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fit", help="fit IIA coefficients and save them with orbax")
    _common(p)
    p.add_argument("--batch", type=int, default=None,
                   help=f"fit samples (default {JUDGED_BATCH} with a quality judge, else 256)")
    p.add_argument("--fine-steps", type=int, default=16)
    p.add_argument("--preset", default=None)
    p.add_argument("--history", type=int, default=1)
    p.add_argument("--mode", default="sequential", choices=["teacher_forced", "sequential"])
    p.add_argument("--target", default=None, choices=["local", "trajectory"],
                   help="default: the solver's measured best (docs/iia.md)")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--quality", default="auto", choices=["auto", "digits", "none"],
                   help="sample judge for the never-worse check (auto: digits on --model digits)")
    p.add_argument("--spread", default="match", choices=["match", "free"],
                   help="match: least squares that keeps the target's spread across samples "
                        "(default; docs/iia.md); free: plain least squares")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("sample", help="sample (with --coeffs: IIA) and write samples.npz + samples.png")
    _common(p)
    p.add_argument("--coeffs", default=None, help="coefficient directory from 'iia-jax fit'")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.set_defaults(func=cmd_sample)

    # listed for --help; main() hands `iia-jax bench ...` to iia_jax.bench, which parses the rest
    sub.add_parser("bench", help="benchmarks against diffusers and diffrax (iia-jax bench --help)")
    return ap


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:      # the bench parses its own arguments (iia-jax bench --help)
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
