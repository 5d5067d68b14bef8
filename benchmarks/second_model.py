"""A second digits denoiser, trained here with another recipe, that nothing in the fit was tuned on.

    python benchmarks/second_model.py              # train (resumable), then export the EMA weights
    python benchmarks/quality_guard.py --weights checkpoints/digits_b/weights/digits_b.msgpack \\
        --fine-steps 16 --nfe 3 4 5     # the guarantee table's cells on it (docs/digits.md)
    python benchmarks/second_model.py --figure dpmpp_3m:karras:4    # a cell's samples, docs/second_model_*.png
    python benchmarks/second_model.py --views unipc:vp_quadratic:5  # a cell in every view (docs/digits.md)

The fit's defaults and its quality guard (the spread floor's 5 % tolerance above all) were chosen
on the shipped digits model (``iia_jax.pretrained.digits()``) and the exact mixtures.  Whether they
hold on a model nobody tuned them for is a question for a model they never saw: this one differs
from the shipped model in everything a user's model might, short of the data -- architecture (no
attention, three resolution levels, two residual blocks a level, Fourier noise embedding),
``sigma_data`` (0.5, the EDM paper's, against 0.75), learning rate, training length, EMA and seed.
It trains on the same ``"train"`` digits, so that ``digits_score`` (whose 600 reference digits it
never saw) can judge it.

Checkpoints go to ``checkpoints/digits_b/`` (untracked; rerun to resume), the exported weights and
their JSON record (:func:`iia_jax.pretrained.save`) to ``checkpoints/digits_b/weights/``;
:func:`load` rebuilds the jitted denoiser ``D(x, sigma)`` from them.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # this checkout's iia_jax
from iia_jax import pretrained  # noqa: E402
from iia_jax.data import digits  # noqa: E402
from iia_jax.train import DenoiserConfig, make_denoiser, train_denoiser  # noqa: E402

RECIPE = DenoiserConfig(
    name="digits_b",
    net="unet",
    net_kwargs={"channels": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 2, "attention": False,
                "embedding": "fourier"},
    sigma_data=0.5,
    batch_size=128,
    steps=1500,
    lr=1e-3,
    warmup=150,
    ema_decay=0.999,
    seed=1,
    ckpt_every=250,
)
WEIGHTS = ROOT / "checkpoints" / RECIPE.name / "weights" / f"{RECIPE.name}.msgpack"
SAMPLES = ROOT / "checkpoints" / "quality_guard" / RECIPE.name   # where quality_guard.py --weights saves


def train(ckpt_dir: Path) -> Path:
    """Train :data:`RECIPE` on the ``"train"`` digits and export its EMA weights beside the checkpoints."""
    images = digits("train").images
    t0 = time.time()
    result = train_denoiser(RECIPE, images, str(ckpt_dir))
    record = result.record("denoiser", loss_window=100, data="iia_jax.data.digits('train').images",
                           train_wall_s_this_run=round(time.time() - t0, 1),
                           preconditioning="EDM (Karras et al. 2022), sigma_data in config")
    path = pretrained.save(RECIPE.name, result.state.ema_params, record, weights_dir=str(ckpt_dir / "weights"))
    print(json.dumps({k: record[k] for k in ("steps", "final_loss", "train_wall_s_this_run")}))
    return Path(path)


def load(weights: Path = WEIGHTS):
    """The jitted denoiser ``D(x, sigma)`` of exported weights ``<dir>/<name>.msgpack`` (with
    ``<name>.json`` beside it, whose config rebuilds the network; the sha256 is checked)."""
    weights = Path(weights)
    if weights.suffix != ".msgpack":
        raise ValueError(f"weights: expected a <name>.msgpack file written by iia_jax.pretrained.save, got {weights}")
    p = pretrained.load(weights.stem, str(weights.parent))
    _, denoise = make_denoiser(DenoiserConfig.from_json(p.record["config"]))
    return jax.jit(functools.partial(denoise, p.variables))


def figure(cell: str, fine_steps: int = 16, columns: int = 12) -> Path:
    """The first ``columns`` evaluation draws of a measured cell ``SOLVER:GRID:NFE``: the 64-step
    reference, the base sampler and IIA without the guard (the samples ``quality_guard.py --weights``
    saved), written to ``docs/second_model_<solver>_<grid>_<nfe>.png``."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solver, grid, nfe = cell.split(":")
    z = np.load(SAMPLES / f"fine_steps_{fine_steps}" / f"{solver}_{grid}_{nfe}.npz")
    ref = np.load(SAMPLES / "reference_seed0_n1000.npy")
    rows = (("heun, 64 Karras steps (the reference)", ref), (f"{solver}, NFE {nfe}, {grid} (base)", z["base"]),
            ("+ IIA without the guard", z["plain"]), ("+ IIA with the default guard", z["guarded"]))
    fig, ax = plt.subplots(len(rows), 1, figsize=(0.6 * columns, 0.95 * len(rows)))
    for a, (name, x) in zip(ax, rows):   # one strip a row, one pixel of gap between the digits
        strip = np.pad(np.clip(x[:columns, ..., 0], -1, 1), ((0, 0), (0, 0), (0, 1)), constant_values=1.0)
        a.imshow(np.concatenate(list(strip), axis=1)[:, :-1], cmap="gray", vmin=-1, vmax=1)
        a.set_title(name, fontsize=8, loc="left")
        a.axis("off")
    fig.suptitle(f"second digits model ({RECIPE.name}): the same noise in each column", fontsize=9)
    fig.tight_layout()
    out = ROOT / "docs" / f"second_model_{solver}_{grid}_{nfe}.png"
    fig.savefig(out, dpi=90)
    return out


def views(cell: str, fine_steps: int = 16) -> str:
    """A measured cell ``SOLVER:GRID:NFE`` in every view, IIA with and without the guard against
    the base, on the table's draws and on the fresh draws of ``--confirm`` where those were saved:
    paired ``digits_score``; the true-target view (``iia_jax.bench.few_steps.to_target``: the judge
    features against the model's own 64-step samples); the guard's two views against those samples
    (``iia_jax.iia.guard``: spread deficit, pixel MMD); and each set's own ``digits_score``."""
    from iia_jax.bench.few_steps import to_target
    from iia_jax.bench.harness import score
    from iia_jax.iia.guard import reference_mmd, spread_deficit
    from iia_jax.metrics import score_difference

    solver, grid, nfe = cell.split(":")
    pm = lambda d, f=".1f": f"{d[0]:+{f}} +- {d[1]:{f}}"  # noqa: E731
    lines = ["| draws | IIA | digits_score: reference / base / IIA | IIA - base: digits_score | to the model's "
             "samples | spread deficit | pixel MMD |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    folder = SAMPLES / f"fine_steps_{fine_steps}"
    for draws, npz, ref in (("table, 1,000", folder, "reference_seed0_n1000.npy"),
                            ("fresh, 2,000", folder / "eval_seed_1", "reference_seed0_eval1_n2000.npy")):
        if not (npz / f"{solver}_{grid}_{nfe}.npz").exists():
            continue
        z, r = np.load(npz / f"{solver}_{grid}_{nfe}.npz"), np.load(SAMPLES / ref)
        for name in ("guarded", "plain"):
            x = z[name]
            own = " / ".join(f"{score(a)[0]:.1f}" for a in (r, z["base"], x))
            deficit = spread_deficit(x, z["base"], r)
            lines.append(f"| {draws} | {'with the guard' if name == 'guarded' else 'without'} | {own} | "
                         f"{pm(score_difference(x, z['base'], paired=True))} | {pm(to_target(x, z['base'], r))} | "
                         f"{100 * deficit[0]:+.2f} +- {100 * deficit[1]:.2f} % | "
                         f"{pm(reference_mmd(x, z['base'], r), '.3f')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt-dir", type=Path, default=WEIGHTS.parents[1])
    ap.add_argument("--figure", metavar="SOLVER:GRID:NFE", help="draw a measured cell's samples and stop")
    ap.add_argument("--views", metavar="SOLVER:GRID:NFE", help="print a measured cell in every view and stop")
    args = ap.parse_args(argv)
    if args.views:
        print(views(args.views))
        return
    print("wrote", figure(args.figure) if args.figure else train(args.ckpt_dir))


if __name__ == "__main__":
    main()
