"""Why IIA can cost sample quality: multistep bases at NFE 5 on the shipped digits model.

    python benchmarks/quality_cause.py                 # dpmpp_2m and unipc, NFE 5, Karras grid
    python benchmarks/quality_cause.py --solvers dpmpp_2m --nfe 5 --n 1000

Setting (as ``benchmarks/digits.py``): the shipped digits denoiser, EDM Karras grid (rho 7, sigma
80 -> 0.002 -> 0), noise ``80 N(0, I)`` (fit and evaluation keys split from ``--seed``).  IIA:
``iia_jax.fit`` with its defaults and no quality judge, ``--fit-batch`` rows, ``--fine-steps``.
Evaluation on ``--n`` fresh draws; reference: heun with 64 Karras steps from the same noise.

For each solver it measures, on the evaluation draws:

* the samples of the base sampler, of IIA, of IIA with one kept step switched on alone, and of
  IIA with one coefficient of the worst step zeroed: paired ``digits_score`` difference against
  the base (jackknife se), median per-sample ODE error, and what the samples look like in
  numbers: contrast (RMS deviation from the mean image over the reference's), high-frequency
  energy (RMS of the 4-neighbour Laplacian over the reference's), background (share of pixels
  stored as the darkest level, where the reference has one);
* the states along the way, at every coarse sigma, against the fine trajectory from the same noise
  (heun, 16 sub-steps per coarse interval): the implied noise level ``rms(x - D(x, sigma)) /
  sigma`` over the fine trajectory's, and the deviation from the fine state split into its
  smooth part (3x3 binomial blur) and the rest;
* what each kept step's correction is made of: the RMS of every feature's term ``c_k f_k``.

Writes ``OUT/quality_cause.json`` and ``OUT/quality_cause.png`` (samples: reference, base, IIA,
IIA with each kept step alone).  ``OUT`` defaults to ``checkpoints/quality_cause``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's iia_jax
import iia_jax  # noqa: E402
from iia_jax import pretrained, schedules, solvers  # noqa: E402
from iia_jax.iia.features import feature_spec  # noqa: E402
from iia_jax.iia.fit import fine_solution  # noqa: E402
from iia_jax.metrics import ode_error, score_difference  # noqa: E402
from iia_jax.metrics.quality import quantize_digits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SHAPE = (8, 8, 1)


def batched(fn, x, batch: int = 500):
    """``fn`` over row batches of ``x``; outputs (arrays or tuples of arrays) concatenated on
    their first axis, or on their second when ``fn`` returns trajectories ``[T, B, ...]``."""
    parts = [jax.device_get(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)]
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=a[0].ndim - 4), *parts)


def laplacian(x):
    """4-neighbour Laplacian of images ``[B, H, W, 1]`` (edges replicated): the high frequencies."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return 4 * x - p[:, :-2, 1:-1] - p[:, 2:, 1:-1] - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]


def blur(x):
    """3x3 binomial blur (edges replicated): the smooth part of an image."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    w = np.array([1.0, 2.0, 1.0]) / 4
    rows = sum(w[i] * p[:, i:i + x.shape[1]] for i in range(3))
    return sum(w[j] * rows[:, :, j:j + x.shape[2]] for j in range(3))


def rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def look(x, ref) -> dict:
    """Contrast, high-frequency energy and dark background of samples against the reference."""
    xq, rq = quantize_digits(x), quantize_digits(ref)
    dark = rq <= -1 + 1e-6
    return dict(contrast=rms(xq - xq.mean(0)) / rms(rq - rq.mean(0)),
                hf=rms(laplacian(xq)) / rms(laplacian(rq)),
                dark=float(np.mean(xq[dark] <= -1 + 1e-6)))


def fine_states(denoiser, sigmas, x, sub: int):
    """States of the fine trajectory (heun, ``sub`` sub-steps uniform in log sigma per coarse
    interval) at every coarse sigma ``[N + 1, B, ...]`` (x first, sigma = 0 last)."""
    heun = solvers.get("heun")
    states, n = [x], len(sigmas) - 1
    for i in range(n):
        x = fine_solution(denoiser, heun, x, sigmas[i], sigmas[i + 1], sub, i == n - 1)
        states.append(x)
    return jnp.stack(states)


def state_table(denoiser, sigmas, traj, fine) -> list:
    """Per coarse sigma: implied noise level of the states over the fine trajectory's, and the
    deviation from the fine state (RMS per pixel), smooth part and the rest."""
    rows = []
    for i in range(1, len(sigmas) - 1):
        s = float(sigmas[i])
        noise = lambda x, s=s: rms(np.asarray(x) - batched(lambda a: denoiser(a, s), np.asarray(x)))  # noqa: E731
        dev = traj[i] - fine[i]
        rows.append(dict(step=i, sigma=s, implied_noise=noise(traj[i]) / noise(fine[i]),
                         deviation=rms(dev), deviation_smooth=rms(blur(dev)),
                         deviation_rest=rms(dev - blur(dev)), hf=rms(laplacian(traj[i])) / rms(laplacian(fine[i]))))
    return rows


def evaluate(x0, base, ref) -> dict:
    diff = score_difference(x0, base, paired=True)
    return dict(diff=diff[0], diff_se=diff[1], median=ode_error(x0, ref).median, **look(x0, ref))


def study(denoiser, solver, nfe, args, x_fit, x_eval, ref) -> dict:
    plan = iia_jax.plan(solver, schedules.karras(nfe, SIGMA_MIN, SIGMA_MAX))
    t = time.perf_counter()
    res = iia_jax.fit(denoiser, plan, x_fit, fine_steps=args.fine_steps, judge=None, progress=False)
    fit_s = time.perf_counter() - t
    coeffs = res.coeffs
    values = np.asarray(coeffs.values)
    kept = [int(i) for i in np.flatnonzero(np.asarray(coeffs.kept))]
    print(res.report.summary(), flush=True)

    def run(vals, trajectory=False):
        c = coeffs.replace(values=jnp.asarray(vals, coeffs.values.dtype)) if hasattr(coeffs, "replace") else \
            type(coeffs)(**{**coeffs.__dict__, "values": jnp.asarray(vals, coeffs.values.dtype)})
        fn = jax.jit(lambda x: iia_jax.iia_sample(denoiser, plan, c, x, return_trajectory=trajectory))
        return batched(fn, x_eval)

    base, base_traj = run(np.zeros_like(values), True)
    iia, iia_traj = run(values, True)
    fine = batched(jax.jit(lambda x: fine_states(denoiser, plan.sigmas, x, args.sub)), x_eval)
    samples = {"reference": ref, "base": base, "IIA": iia}
    rows = {"base": evaluate(base, base, ref), "IIA (default fit, no judge)": evaluate(iia, base, ref)}
    for k in kept:
        v = np.zeros_like(values)
        v[k] = values[k]
        samples[f"step {k} alone"] = x = run(v)
        rows[f"IIA, step {k} alone"] = evaluate(x, base, ref)
    spec = feature_spec(solver)
    names = ["x_i"] + [f"D_i-{j}" if j else "D_i" for j in range(spec.num_features - 1)]
    worst = max(kept, key=lambda k: rows[f"IIA, step {k} alone"]["diff"]) if kept else None
    if worst is not None:
        for j, name in enumerate(names):
            if values[worst, j] == 0:
                continue
            v = values.copy()
            v[worst, j] = 0
            rows[f"IIA, step {worst} without {name}"] = evaluate(run(v), base, ref)
    terms = term_sizes(denoiser, solver, plan, values, kept, x_eval[:500], base_traj, names)
    states = {"base": state_table(denoiser, plan.sigmas, base_traj, fine),
              "IIA": state_table(denoiser, plan.sigmas, iia_traj, fine)}
    for name, r in rows.items():
        print(f"{solver} NFE {nfe} {name:34s} diff {r['diff']:+7.1f} +- {r['diff_se']:5.1f}  median "
              f"{r['median']:.4f}  contrast {r['contrast']:.3f}  hf {r['hf']:.3f}  dark {r['dark']:.3f}", flush=True)
    return dict(solver=solver, nfe=nfe, sigmas=[float(s) for s in plan.sigmas], values=values.tolist(),
                kept=kept, features=names, fit_s=fit_s, rows=rows, states=states, terms=terms,
                worst=worst), {k: np.asarray(v[:10]) for k, v in samples.items()}


def term_sizes(denoiser, solver, plan, values, kept, x, base_traj, names) -> dict:
    """RMS per pixel of each feature's term ``c_k f_k`` at the kept steps (the IIA run's own
    features, recomputed along the IIA trajectory), next to the RMS of the whole correction."""
    from iia_jax.iia.sample import corrected_step

    spec = feature_spec(solver)
    solver_obj = solvers.get(solver)
    sig = plan.sigmas.astype(x.dtype)
    vals = jnp.asarray(values, x.dtype)

    @jax.jit
    def feats_along(x):
        carry = (solver_obj.init(x), x, spec.init_history(x))
        out = []
        for i in range(len(sig) - 1):
            carry, f, _ = corrected_step(denoiser, solver_obj, spec, carry, sig[i], sig[i + 1], i == len(sig) - 2)
            out.append(f)
            x_next = carry[1] + jnp.tensordot(vals[i], f, axes=1)
            carry = (carry[0], x_next, carry[2])
        return jnp.stack(out)                      # [N, K, B, ...]

    f = np.asarray(feats_along(jnp.asarray(x)))
    table = {}
    for k in kept:
        terms = values[k][:, None, None, None, None] * f[k]
        table[str(k)] = dict({n: rms(t) for n, t in zip(names, terms)}, total=rms(terms.sum(0)),
                             total_smooth=rms(blur(terms.sum(0))))
    return table


def picture(all_samples: dict, path: Path):
    blocks = [(s, name, imgs) for s, d in all_samples.items() for name, imgs in d.items()]
    fig, axes = plt.subplots(len(blocks), 10, figsize=(8, 0.85 * len(blocks)))
    for r, (solver, name, imgs) in enumerate(blocks):
        for c in range(10):
            ax = axes[r, c]
            ax.imshow(np.clip(imgs[c, :, :, 0], -1, 1), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{solver}\n{name}" if name != "reference" else "heun NFE 127",
                              rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "unipc"])
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--fit-batch", type=int, default=1024)
    ap.add_argument("--fine-steps", type=int, default=8)
    ap.add_argument("--sub", type=int, default=16, help="heun sub-steps per interval of the fine trajectory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "quality_cause")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    denoiser = pretrained.digits()
    key_fit, key_eval = jax.random.split(jax.random.PRNGKey(args.seed))
    x_fit = SIGMA_MAX * jax.random.normal(key_fit, (args.fit_batch,) + SHAPE)
    x_eval = SIGMA_MAX * jax.random.normal(key_eval, (args.n,) + SHAPE)
    cache = args.out / f"reference_seed{args.seed}_n{args.n}.npy"
    if cache.exists():
        ref = np.load(cache)
    else:
        ref_plan = iia_jax.plan("heun", schedules.karras(64, SIGMA_MIN, SIGMA_MAX))
        ref = batched(jax.jit(lambda x: iia_jax.sample(denoiser, ref_plan, x)), x_eval)
        np.save(cache, ref)
    results, pictures = [], {}
    for solver in args.solvers:
        r, p = study(denoiser, solver, args.nfe, args, x_fit, x_eval, ref)
        results.append(r)
        pictures[solver] = p if not pictures else {k: v for k, v in p.items() if k != "reference"}
    command = " ".join(["python", "benchmarks/quality_cause.py"] + (sys.argv[1:] if argv is None else list(argv)))
    (args.out / "quality_cause.json").write_text(json.dumps(dict(results=results, command=command,
                                                                 total_s=time.perf_counter() - start), indent=1))
    picture(pictures, args.out / "quality_cause.png")
    print(f"total {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
