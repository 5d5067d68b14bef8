"""Why IIA can lower the ODE error and still raise the digits FD: shrinkage toward the mean.

    python benchmarks/digits_shrinkage.py    # about 4 minutes on 2 CPU cores

Same setting as ``iia-jax demo`` (shipped digits model, Karras grid 80 -> 0.002 -> 0, NFE 9,
fit on 256 draws with the defaults, 500 fresh evaluation draws, reference heun 64 steps from
the same noise). For base and IIA samples ``y`` against the reference ``x`` it measures

* ``slope``: the least-squares slope of the error ``y - x`` on the centred reference
  ``x - mean(x)``: > 0 means exaggerated contrast (overshoot), < 0 means shrinkage toward the
  mean image, which is what a mean-squared-error fit does with what it cannot predict;
* ``bias``: RMS of the mean error image;
* the FD of ``y``, and of ``y`` with that bias and slope removed (how much of the FD they explain);

then the same for IIA with one kept step corrected at a time (the others zeroed), which shows
where the contrast is lost; and, as a yardstick, the FD of the reference itself shrunk toward
its mean by 1, 3 and 5 %.  Writes docs/digits_shrinkage.md.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

import iia_jax
from iia_jax import pretrained, schedules
from iia_jax.metrics import ode_error
from iia_jax.metrics.fd import digits_fd

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIGMA_MIN, SIGMA_MAX, NFE = 0.002, 80.0, 9


def shrinkage(y, x):
    """``(slope, bias_rms, y_without_bias_and_slope)`` of ``y`` against the reference ``x``."""
    centred = x - x.mean(0)
    error = y - x
    slope = float(np.sum(error * centred) / np.sum(centred ** 2))
    bias = error.mean(0)
    return slope, float(np.sqrt(np.mean(bias ** 2))), y - bias - slope * centred


def main():
    denoiser = pretrained.digits()
    key_fit, key_eval = jax.random.split(jax.random.PRNGKey(0))
    x_fit = SIGMA_MAX * jax.random.normal(key_fit, (256, 8, 8, 1))
    x_eval = SIGMA_MAX * jax.random.normal(key_eval, (500, 8, 8, 1))
    ref_plan = iia_jax.plan("heun", schedules.karras(64, SIGMA_MIN, SIGMA_MAX))
    reference = np.asarray(jax.jit(lambda x: iia_jax.sample(denoiser, ref_plan, x))(x_eval))

    lines = ["# Digits: IIA shrinks samples toward the mean image", "",
             "Produced by `python benchmarks/digits_shrinkage.py` (setting in its docstring: the "
             "demo's, NFE 9, 500 evaluation draws). `slope` > 0: contrast overshoot, < 0: "
             "shrinkage toward the mean image; `bias`: RMS of the mean error image.", "",
             "| sampler | median ODE err | slope | bias | FD | FD without bias and slope |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def row(label, y):
        slope, bias, corrected = shrinkage(y, reference)
        line = (f"| {label} | {ode_error(y, reference).median:.4f} | {slope:+.3f} | {bias:.3f} | "
                f"{digits_fd(y):.1f} | {digits_fd(corrected):.1f} |")
        print(line, flush=True)
        return line

    per_step = ["", "One kept step corrected at a time (the others zeroed):", "",
                "| sampler | median ODE err | slope | bias | FD | FD without bias and slope |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for solver in ("heun", "euler", "dpmpp_2m"):
        steps = (NFE + 1) // 2 if solver == "heun" else NFE
        plan = iia_jax.plan(solver, schedules.karras(steps, SIGMA_MIN, SIGMA_MAX))
        coeffs = iia_jax.fit(denoiser, plan, x_fit, fine_steps=8, progress=False).coeffs
        sample_iia = jax.jit(lambda c, x: iia_jax.iia_sample(denoiser, plan, c, x))
        lines.append(row(f"{solver} base", np.asarray(iia_jax.sample(denoiser, plan, x_eval))))
        lines.append(row(f"{solver} IIA", np.asarray(sample_iia(coeffs, x_eval))))
        for i in np.flatnonzero(np.asarray(coeffs.kept)):
            only = dataclasses.replace(coeffs, values=coeffs.values * (np.arange(steps) == i)[:, None])
            per_step.append(row(f"{solver} IIA step {i} only", np.asarray(sample_iia(only, x_eval))))
    lines += per_step
    lines += ["", "Yardstick: the reference itself, shrunk toward its mean image "
              "(`mean + a (x - mean)`).", "", "| a | FD |", "| ---: | ---: |"]
    for a in (1.0, 0.99, 0.97, 0.95):
        line = f"| {a:.2f} | {digits_fd(reference.mean(0) + a * (reference - reference.mean(0))):.1f} |"
        print(line, flush=True)
        lines.append(line)
    DOCS.mkdir(exist_ok=True)
    (DOCS / "digits_shrinkage.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS / 'digits_shrinkage.md'}")


if __name__ == "__main__":
    sys.exit(main())
