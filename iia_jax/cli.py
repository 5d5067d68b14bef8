"""``iia-jax``: demo, train, fit and sample from the command line.

Every command writes only under its ``--out`` directory.  Models (``--model``):
``digits`` (the shipped digits denoiser, EDM sigma-space) or ``diffusers:PATH`` (a local
``UNet2DModel`` folder, DDPM schedule from its scheduler config).
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

GRIDS = ("karras", "logsnr_uniform", "time_uniform", "quadratic", "ddim")


class Model(NamedTuple):
    name: str
    denoiser: Callable
    shape: tuple            # event shape of one sample
    vp: bool                # VP model: x_T = sqrt(1 + sigma_max^2) N(0, I)
    schedule: object        # iia_jax.schedules.Schedule
    alphas_cumprod: object  # DDPM models only
    default_grid: str
    fingerprint: str


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_model(spec: str) -> Model:
    """Resolve ``--model``: ``digits`` or ``diffusers:PATH``."""
    from . import pretrained, schedules
    if spec == "digits":
        record = pretrained.load("digits").record
        return Model("digits", pretrained.digits(), (8, 8, 1), False, schedules.edm(0.002, 80.0), None,
                     "karras", f"digits:{record.get('sha256', 'unknown')[:16]}")
    if spec.startswith("diffusers:"):
        from .models.diffusers_io import (_find_scheduler_config, _read_json, _weights_path,
                                          alphas_cumprod_from_scheduler_config, from_diffusers)
        path = spec.split(":", 1)[1]
        denoiser, module, _ = from_diffusers(path)
        alphas = alphas_cumprod_from_scheduler_config(_read_json(_find_scheduler_config(path)))
        cfg = module.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
        shape = (size, size, cfg.in_channels)
        return Model(f"diffusers:{path}", denoiser, shape, True, schedules.vp_discrete(alphas), alphas,
                     "time_uniform", f"diffusers:{_file_sha256(_weights_path(path, None))}")
    raise SystemExit(f"error: --model must be 'digits' or 'diffusers:PATH', got {spec!r}")


def make_plan(model: Model, solver: str, steps: int, grid: str | None):
    """The plan for ``--solver/--steps/--grid`` on ``model``'s own sigma range."""
    import iia_jax
    from . import schedules
    grid = grid or model.default_grid
    s = model.schedule
    if grid in ("karras", "logsnr_uniform"):
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


def _batched(fn, x, batch):
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])


# ----------------------------------------------------------------------------- commands

def cmd_fit(args):
    import iia_jax
    model = load_model(args.model)
    plan = make_plan(model, args.solver, args.steps, args.grid)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite to replace it")
    x_T = _noise(model, plan, args.batch, args.seed)
    print(f"fitting IIA for {plan} on {model.name} with {args.batch} samples ...", flush=True)
    res = iia_jax.fit(model.denoiser, plan, x_T, preset=args.preset, history=args.history,
                      fine_steps=args.fine_steps, mode=args.mode, target=args.target,
                      chunk_size=args.chunk_size, fingerprint=model.fingerprint, progress=True)
    print(res.report.summary())
    path = iia_jax.save_coefficients(out, res.coeffs, overwrite=args.overwrite)
    print(f"saved {res.coeffs} to {path}")


def cmd_sample(args):
    import jax
    import iia_jax
    from .plots import sample_grid
    model = load_model(args.model)
    plan = make_plan(model, args.solver, args.steps, args.grid)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.coeffs:
        coeffs = iia_jax.load_coefficients(args.coeffs, plan=plan, fingerprint=model.fingerprint)
        run = jax.jit(lambda x: iia_jax.iia_sample(model.denoiser, plan, coeffs, x))
    else:
        run = jax.jit(lambda x: iia_jax.sample(model.denoiser, plan, x))
    x_T = _noise(model, plan, args.n, args.seed)
    start = time.perf_counter()
    x0 = _batched(run, x_T, args.batch)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(x0)):
        raise SystemExit("error: the samples contain NaN/Inf; check the model (sample with check_finite=True)")
    np.savez(out / "samples.npz", samples=x0)
    label = "IIA" if args.coeffs else "base"
    if len(model.shape) == 3:
        sample_grid({f"{label} {plan.solver}, NFE {plan.nfe}": x0[:64]}, out / "samples.png")
    print(f"{args.n} samples ({label}, {plan}) in {seconds:.1f} s -> {out / 'samples.npz'}")


def cmd_train(args):
    import dataclasses
    from . import pretrained
    from .data import digits
    from .train import DIGITS_CLASSIFIER, DIGITS_DENOISER, train_classifier, train_denoiser
    out = Path(args.out or f"checkpoints/{args.what}")
    data = digits("train")
    if args.what == "digits":
        config = dataclasses.replace(DIGITS_DENOISER, steps=args.steps or DIGITS_DENOISER.steps)
        result = train_denoiser(config, data.images, str(out / "run"))
    else:
        config = dataclasses.replace(DIGITS_CLASSIFIER, steps=args.steps or DIGITS_CLASSIFIER.steps)
        result = train_classifier(config, data.images, data.labels, str(out / "run"))
    record = {"kind": args.what, "config": config.to_json(), "steps": int(result.state.step),
              "data_hash": result.data_hash,
              "final_loss": float(np.mean(result.losses[-50:])) if len(result.losses) else None,
              "weights": "ema_params"}
    path = pretrained.save(config.name, result.state.ema_params, record, weights_dir=str(out))
    print(json.dumps({k: record[k] for k in ("steps", "final_loss")}), f"-> {path}")


def cmd_demo(args):
    from .demo import run_demo
    run_demo(out=Path(args.out), nfe=args.nfe, n=args.n, batch=args.batch, fine_steps=args.fine_steps,
             seed=args.seed)


# ----------------------------------------------------------------------------- parser

def _common(p, need_out=True):
    p.add_argument("--model", default="digits", help="'digits' (shipped) or 'diffusers:PATH'")
    p.add_argument("--solver", default="heun", choices=["euler", "heun", "dpmpp_2m", "ipndm", "spndm"])
    p.add_argument("--steps", type=int, default=5, help="number of steps N (heun: NFE = 2N - 1)")
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help="sigma grid (default: karras for EDM models, time_uniform for DDPM models)")
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
    p.add_argument("--batch", type=int, default=256, help="fit samples")
    p.add_argument("--fine-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train the digits denoiser or classifier (resumable)")
    p.add_argument("what", choices=["digits", "classifier"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default=None, help="default checkpoints/<what>: checkpoints + exported weights")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fit", help="fit IIA coefficients and save them with orbax")
    _common(p)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--fine-steps", type=int, default=16)
    p.add_argument("--preset", default=None)
    p.add_argument("--history", type=int, default=1)
    p.add_argument("--mode", default="sequential", choices=["teacher_forced", "sequential"])
    p.add_argument("--target", default=None, choices=["local", "trajectory"],
                   help="default: the solver's measured best (docs/iia.md)")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("sample", help="sample (with --coeffs: IIA) and write samples.npz + samples.png")
    _common(p)
    p.add_argument("--coeffs", default=None, help="coefficient directory from 'iia-jax fit'")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.set_defaults(func=cmd_sample)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
