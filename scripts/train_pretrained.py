"""Train and check the shipped digits weights (``iia_jax/pretrained/weights``).

    python scripts/train_pretrained.py classifier   # ~2 min on 2 CPU cores
    python scripts/train_pretrained.py denoiser     # ~12 min on 2 CPU cores
    python scripts/train_pretrained.py eval         # FD report + sample grid PNG

``classifier`` / ``denoiser`` train with :mod:`iia_jax.train` (recipes
``DIGITS_CLASSIFIER`` / ``DIGITS_DENOISER``) on the ``"train"`` digits, checkpointing
under ``checkpoints/<name>`` (rerun to resume after an interruption), then export the
EMA weights and a JSON record with :func:`iia_jax.pretrained.save`. ``eval`` samples the
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

import jax
import numpy as np

import iia_jax
from iia_jax import pretrained
from iia_jax.data import digits
from iia_jax.train import (DIGITS_CLASSIFIER, DIGITS_DENOISER, make_classifier_net, train_classifier,
                           train_denoiser)


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
    record = {
        "kind": "classifier",
        "config": config.to_json(),
        "steps": int(result.state.step),
        "data": "iia_jax.data.digits('train') images+labels",
        "data_hash": result.data_hash,
        "final_loss": float(np.mean(result.losses[-50:])) if len(result.losses) else None,
        "train_wall_s_this_run": round(wall, 1),
        "accuracy": acc,
        "weights": "ema_params",
    }
    path = pretrained.save(config.name, result.state.ema_params, record)
    print(json.dumps({k: record[k] for k in ("steps", "final_loss", "accuracy", "train_wall_s_this_run")}))
    print("wrote", path)


def cmd_denoiser(args):
    config = dataclasses.replace(DIGITS_DENOISER, steps=args.steps or DIGITS_DENOISER.steps)
    train = digits("train")
    t0 = time.time()
    result = train_denoiser(config, train.images, args.ckpt_dir)
    wall = time.time() - t0
    record = {
        "kind": "denoiser",
        "config": config.to_json(),
        "steps": int(result.state.step),
        "data": "iia_jax.data.digits('train').images",
        "data_hash": result.data_hash,
        "final_loss": float(np.mean(result.losses[-100:])) if len(result.losses) else None,
        "train_wall_s_this_run": round(wall, 1),
        "weights": "ema_params",
        "preconditioning": "EDM (Karras et al. 2022), sigma_data in config",
    }
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
        "sampler": f"heun, karras grid sigma 80 -> 0.002 (rho 7), {args.steps} steps, NFE {2 * args.steps - 1}",
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
    fig.suptitle(f"shipped digits denoiser, Heun NFE {2 * args.steps - 1}")
    fig.savefig(args.png, dpi=60, bbox_inches="tight")
    print("wrote", args.png)
    if args.record:
        rec_path = os.path.join(pretrained.WEIGHTS_DIR, "digits.json")
        with open(rec_path) as f:
            record = json.load(f)
        record["eval"] = report
        with open(rec_path, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
        print("recorded eval in", rec_path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("classifier", "denoiser"):
        q = sub.add_parser(name)
        q.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
        q.add_argument("--ckpt-dir", default=None, help="default checkpoints/<name>")
    q = sub.add_parser("eval")
    q.add_argument("--steps", type=int, default=64, help="Heun steps (NFE = 2 steps - 1)")
    q.add_argument("--n", type=int, default=1000, help="number of samples")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--png", default="out/digits_samples.png")
    q.add_argument("--record", action="store_true", help="store the report in weights/digits.json")
    args = p.parse_args(argv)
    {"classifier": cmd_classifier, "denoiser": cmd_denoiser, "eval": cmd_eval}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
