"""Train and check the shipped digits weights (``iia_jax/pretrained/weights``).

    python scripts/train_pretrained.py classifier   # ~2 min on 2 CPU cores
    python scripts/train_pretrained.py denoiser     # ~12 min on 2 CPU cores
    python scripts/train_pretrained.py eval         # FD report + sample grid PNG
    python scripts/train_pretrained.py digits_cond  # class-conditional denoiser, ~30-60 min
    python scripts/train_pretrained.py eval_cond --record   # its guided class accuracy

``classifier`` / ``denoiser`` train with :mod:`iia_jax.train` (recipes
``DIGITS_CLASSIFIER`` / ``DIGITS_DENOISER``) on the ``"train"`` digits, checkpointing
under ``checkpoints/<name>`` (rerun to resume after an interruption), then export the
EMA weights and a JSON record with :func:`iia_jax.pretrained.save`. ``digits_cond`` trains ``DIGITS_COND_DENOISER`` on the
train images and labels (20% label dropout, null label 10); ``eval_cond`` samples it with
classifier-free guidance at several scales and reports the shipped classifier's per-class
accuracy on the samples (``--record`` stores it in ``weights/digits_cond.json``). ``eval`` samples the
shipped denoiser with a deterministic Heun (EDM Algorithm 1) on a Karras grid and
prints the digits FD next to the real-data floor and the corrupted ceilings; it
writes ``out/digits_samples.png``. Evaluation numbers are stored in the denoiser's JSON
record with ``eval --record``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's iia_jax, not an installed one
import iia_jax  # noqa: E402
from iia_jax import pretrained  # noqa: E402
from iia_jax.data import digits  # noqa: E402
from iia_jax.train import (DIGITS_CLASSIFIER, DIGITS_COND_DENOISER, DIGITS_DENOISER, make_classifier_net,  # noqa: E402
                           train_classifier, train_denoiser)


def cmd_classifier(args):
    config = dataclasses.replace(DIGITS_CLASSIFIER, steps=args.steps or DIGITS_CLASSIFIER.steps)
    train = digits("train")
    t0 = time.time()
    result = train_classifier(config, train.images, train.labels, args.ckpt_dir)
    wall = time.time() - t0
    net = make_classifier_net(config)
    net_apply = jax.jit(lambda x: net.apply(result.state.ema_params, x))
    acc = {s: float(np.mean(np.argmax(np.asarray(net_apply(digits(s).images)), -1) == digits(s).labels))
           for s in ("train", "test")}
    record = result.record("classifier", data="iia_jax.data.digits('train') images+labels",
                           train_wall_s_this_run=round(wall, 1), accuracy=acc)
    path = pretrained.save(config.name, result.state.ema_params, record)
    print(json.dumps({k: record[k] for k in ("steps", "final_loss", "accuracy", "train_wall_s_this_run")}))
    print("wrote", path)


def cmd_denoiser(args, recipe=DIGITS_DENOISER):
    config = dataclasses.replace(recipe, steps=args.steps or recipe.steps)
    train = digits("train")
    labels = train.labels if config.num_classes else None
    t0 = time.time()
    result = train_denoiser(config, train.images, args.ckpt_dir, labels=labels)
    wall = time.time() - t0
    record = result.record(
        "denoiser", loss_window=100,
        data="iia_jax.data.digits('train').images" + (" and .labels" if labels is not None else ""),
        train_wall_s_this_run=round(wall, 1),
        preconditioning="EDM (Karras et al. 2022), sigma_data in config")
    path = pretrained.save(config.name, result.state.ema_params, record)
    print(json.dumps({k: record[k] for k in ("steps", "final_loss", "train_wall_s_this_run")}))
    print("wrote", path)


def cmd_eval(args):
    from iia_jax.metrics.fd import digits_fd, digits_fd_sanity

    D = pretrained.digits()
    plan = iia_jax.plan("heun", iia_jax.schedules.karras(args.steps, 0.002, 80.0))
    sample = jax.jit(lambda z: iia_jax.sample(D, plan, 80.0 * z))
    key = jax.random.PRNGKey(args.seed)
    xs = []
    t0 = time.time()
    for i in range(0, args.n, 500):
        xs.append(np.asarray(sample(jax.random.normal(jax.random.fold_in(key, i), (min(500, args.n - i), 8, 8, 1)))))
    x = np.concatenate(xs)
    t_sample = time.time() - t0
    sanity = digits_fd_sanity()
    report = {
        "sampler": f"heun, karras grid sigma 80 -> 0.002 (rho 7), {args.steps} steps, NFE {plan.nfe}",
        "seed": args.seed,
        "fd_model_n300": digits_fd(x[:300]),
        "fd_model_n300_mean_of_3": float(np.mean([digits_fd(x[i : i + 300]) for i in (0, 300, 600)]))
        if len(x) >= 900 else None,
        f"fd_model_n{len(x)}": digits_fd(x),
        "fd_real_test_n300_floor": sanity["floor"],
        "fd_real_train_subset_n300": sanity["train_subset"],
        "fd_noise1.0_n300_ceiling": sanity["noise"],
        "fd_blur1.0_n300_ceiling": sanity["blur"],
        "fd_shuffled_n300": sanity["shuffled"],
        "sample_range": [float(x.min()), float(x.max())],
        "sampling_s": round(t_sample, 1),
    }
    cls = pretrained.digits_classifier()
    pred = np.argmax(np.asarray(cls.logits(np.clip(x, -1, 1))), -1)
    report["class_histogram"] = np.bincount(pred, minlength=10).tolist()
    print(json.dumps(report, indent=2))
    os.makedirs("out", exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(8, 16, figsize=(16, 8))
    for ax, img in zip(axes.flat, x[:128]):
        ax.imshow(np.clip(img[..., 0], -1, 1), cmap="gray_r", vmin=-1, vmax=1)
        ax.axis("off")
    fig.suptitle(f"shipped digits denoiser, Heun NFE {plan.nfe}")
    fig.savefig(args.png, dpi=60, bbox_inches="tight")
    print("wrote", args.png)
    if args.record:
        _record_eval("digits", report)


def _record_eval(name: str, report: dict) -> None:
    """Store ``report`` as the ``eval`` field of the shipped ``<name>.json`` record."""
    rec_path = os.path.join(pretrained.WEIGHTS_DIR, f"{name}.json")
    with open(rec_path) as f:
        record = json.load(f)
    record["eval"] = report
    with open(rec_path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    print("recorded eval in", rec_path)


NULL_LABEL = 10
GUIDANCE_SCALES = (1.0, 2.0, 3.0, 4.0, 7.5)


def guided_sampler(solver: str, steps: int):
    """Jitted ``(z, labels, scale) -> x0``: classifier-free guidance of the shipped conditional
    denoiser in EDM form, ``D_u + s (D_c - D_u)``, with one network call on ``[x; x]`` and
    labels ``[labels; null]`` (``scale`` traced, so one compilation serves every scale)."""
    D = pretrained.digits_cond()
    plan = iia_jax.plan(solver, iia_jax.schedules.karras(steps, 0.002, 80.0))

    def run(z, labels, scale):
        cond = jnp.concatenate([labels, jnp.full_like(labels, NULL_LABEL)])

        def guided(x, sigma):
            d = D(jnp.concatenate([x, x]), sigma, cond)
            d_c, d_u = d[: x.shape[0]], d[x.shape[0] :]
            return d_u + scale * (d_c - d_u)

        return iia_jax.sample(guided, plan, 80.0 * z)

    return jax.jit(run)


def tv_from_uniform(histogram) -> float:
    """Total variation distance of a class histogram from the uniform distribution over its K
    classes, ``0.5 sum_k |n_k / n - 1 / K|``: 0 for equal counts, ``1 - 1/K`` for one class only.
    (K = 10, n = 1000 draws from a uniform distribution: about 0.04 from sampling noise alone.)"""
    p = np.asarray(histogram, np.float64) / np.sum(histogram)
    return float(0.5 * np.abs(p - 1.0 / p.size).sum())


def _histogram_row(pred) -> dict:
    hist = np.bincount(pred, minlength=10)
    return {"class_histogram": hist.tolist(), "tv_from_uniform": round(tv_from_uniform(hist), 3)}


def cmd_eval_cond(args):
    cls = pretrained.digits_classifier()
    labels = np.repeat(np.arange(10, dtype=np.int32), args.n_per_class)
    z = jax.random.normal(jax.random.PRNGKey(args.seed), (labels.size, 8, 8, 1))
    report = {
        "what": "class accuracy of guided samples by the shipped digits_classifier (independent of the denoiser)",
        "guidance": "D_u + s (D_c - D_u), one batched call on [x; x] with labels [cond; 10]",
        "grid": f"karras sigma 80 -> 0.002 (rho 7), {args.steps} steps",
        "n_per_class": args.n_per_class,
        "seed": args.seed,
        "solvers": {},
    }
    grids = {}
    t0 = time.time()
    for solver in ("dpmpp_2m", "euler"):
        run = guided_sampler(solver, args.steps)
        nfe = args.steps  # both are single-evaluation steps
        rows = {}
        for scale in GUIDANCE_SCALES:
            x = np.asarray(run(z, labels, scale))
            pred = np.argmax(np.asarray(cls.logits(np.clip(x, -1, 1))), -1)
            per_class = [float(np.mean(pred[labels == k] == k)) for k in range(10)]
            rows[f"s={scale:g}"] = {"accuracy": float(np.mean(pred == labels)),
                                    "per_class": [round(a, 3) for a in per_class]}
            grids[(solver, scale)] = x
        x = np.asarray(run(z, np.full_like(labels, NULL_LABEL), 1.0))  # the null label: unguided
        pred = np.argmax(np.asarray(cls.logits(np.clip(x, -1, 1))), -1)
        rows["null"] = _histogram_row(pred)
        grids[(solver, "null")] = x
        # For comparison: the shipped unconditional denoiser, same solver, grid and noise.
        plan = iia_jax.plan(solver, iia_jax.schedules.karras(args.steps, 0.002, 80.0))
        D_uncond = pretrained.digits()  # loaded outside jit: a first load inside a trace would cache tracers
        x = np.asarray(jax.jit(lambda z: iia_jax.sample(D_uncond, plan, 80.0 * z))(z))
        pred = np.argmax(np.asarray(cls.logits(np.clip(x, -1, 1))), -1)
        rows["unconditional_digits_model"] = _histogram_row(pred)
        report["solvers"][f"{solver}_nfe{nfe}"] = rows
        for key, row in rows.items():
            print(f"{solver:9s} NFE {nfe:2d} {key:6s} " + (f"acc {row['accuracy']:.3f}  per class {row['per_class']}"
                                                        if "accuracy" in row else
                                                        f"hist {row['class_histogram']}, TV from uniform "
                                                        f"{row['tv_from_uniform']:.3f}"))
    report["sampling_s"] = round(time.time() - t0, 1)
    _plot_cond_grid(grids, args)
    if args.record:
        _record_eval("digits_cond", report)


def _plot_cond_grid(grids, args):
    """One row per guidance scale (dpmpp_2m), then the null label (same noise): 2 samples per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = args.n_per_class
    rows = GUIDANCE_SCALES + ("null",)
    fig, axes = plt.subplots(len(rows), 20, figsize=(20, 1.1 * len(rows)))
    for r, scale in enumerate(rows):
        x = grids[("dpmpp_2m", scale)]
        picks = [k * per + j for k in range(10) for j in range(2)]
        for c, i in enumerate(picks):
            axes[r, c].imshow(np.clip(x[i, ..., 0], -1, 1), cmap="gray_r", vmin=-1, vmax=1)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel("null" if scale == "null" else f"s={scale:g}", rotation=0, labelpad=18)
    fig.suptitle(f"shipped digits_cond, dpmpp_2m NFE {args.steps}, labels 0..9 (2 each), seed {args.seed}")
    os.makedirs(os.path.dirname(args.png) or ".", exist_ok=True)
    fig.savefig(args.png, dpi=60, bbox_inches="tight")
    print("wrote", args.png)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("classifier", "denoiser", "digits_cond"):
        q = sub.add_parser(name)
        q.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
        q.add_argument("--ckpt-dir", default=None, help="default checkpoints/<name>")
    q = sub.add_parser("eval")
    q.add_argument("--steps", type=int, default=64, help="Heun steps (NFE = 2 steps - 1)")
    q.add_argument("--n", type=int, default=1000, help="number of samples")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--png", default="out/digits_samples.png")
    q.add_argument("--record", action="store_true", help="store the report in weights/digits.json")
    q = sub.add_parser("eval_cond")
    q.add_argument("--steps", type=int, default=10, help="karras steps (NFE for dpmpp_2m and euler)")
    q.add_argument("--n-per-class", type=int, default=100)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--png", default="docs/digits_cond_samples.png")
    q.add_argument("--record", action="store_true", help="store the report in weights/digits_cond.json")
    args = p.parse_args(argv)
    commands = {
        "classifier": cmd_classifier,
        "denoiser": cmd_denoiser,
        "digits_cond": lambda a: cmd_denoiser(a, DIGITS_COND_DENOISER),
        "eval": cmd_eval,
        "eval_cond": cmd_eval_cond,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
