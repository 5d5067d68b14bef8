"""Base solvers on exact Gaussian mixtures: ODE error vs NFE.

    python benchmarks/solvers.py            # about 1-3 minutes on 2 CPU cores
    python benchmarks/solvers.py --quick    # smaller batches, fewer NFE (a smoke test)

Writes docs/solvers.md (the tables, with this command line) and docs/solvers_error_vs_nfe.png.

Problems: a 2-D mixture of 8 modes on the unit circle (std 0.1) and an image-shaped [8, 8, 1]
mixture of 8 smooth random patterns in [-1, 1] (std 0.1).  Grids: Karras (rho = 7, sigma 80 ->
0.002, then 0) for every solver, started from ``80 * N(0, I)``; the DDIM time-uniform grid of the
continuous VP-linear schedule (sigma 152 -> 0) for euler (= DDIM) and dpmpp_2m, started from
``sqrt(1 + sigma_max^2) * N(0, I)``.  Error: against the exact ODE solution at sigma = 0 from the
same noise, computed by classical RK4 in float64 (1000 steps uniform in sigma^(1/7) down to 0;
its distance to the 500-step RK4 is reported).  The solvers run in float32.  Median per-sample
RMS shows the integration accuracy; the RMSE is dominated by the few samples that change mode.

Each solver's ``step`` is jitted once and driven in a Python loop (the same arithmetic as the
``lax.scan`` in ``iia_jax.sample``, checked against it below at one NFE per solver), so the many
step counts cost no recompilation.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import iia_jax  # noqa: E402
from iia_jax import schedules, solvers  # noqa: E402
from iia_jax.bench import harness, models  # noqa: E402
from iia_jax.bench.grids import steps_for  # noqa: E402
from iia_jax.bench.provenance import command_line  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
SOLVERS = ["euler", "heun", "dpmpp_2m", "spndm", "ipndm"]
VP_SOLVERS = ["euler", "dpmpp_2m"]
NFES = [5, 7, 9, 11, 15, 19, 25, 35, 49, 75, 99]      # odd, so heun (2N - 1) hits every one
QUICK_NFES = [5, 9, 15, 25]
SIGMA_MAX = 80.0
REF_STEPS = 1000


PROBLEMS = {"2-D ring, 8 modes": models.ring_2d, "image [8, 8, 1], 8 modes": models.smooth_patterns}


# ----------------------------------------------------------------------------- integration

def rk4_to_zero(mixture, x_T, sigma_max, num_steps):
    """Float64 RK4 on dx/dsigma = (x - D)/sigma over sigma_i = sigma_max (1 - i/n)^7, down to 0.
    With every component std > 0 the direction is O(sigma) as sigma -> 0, so it is 0 there.
    All arguments are traced: one compilation per mixture shape."""
    def sigma(i):
        return sigma_max * (1.0 - i / num_steps) ** 7

    def f(x, s):
        safe = jnp.where(s > 0, s, 1.0)
        return jnp.where(s > 0, (x - mixture(x, safe)) / safe, 0.0)

    def body(i, x):
        s0, s1 = sigma(i), sigma(i + 1.0)
        h, sm = s1 - s0, 0.5 * (s0 + s1)
        k1 = f(x, s0)
        k2 = f(x + 0.5 * h * k1, sm)
        k3 = f(x + 0.5 * h * k2, sm)
        k4 = f(x + h * k3, s1)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return jax.lax.fori_loop(0, num_steps, lambda i, x: body(i.astype(x.dtype), x), x_T)


_RK4 = jax.jit(rk4_to_zero)
_STEP = {}


def run(solver_name, mixture, sigmas, x_T):
    """The solver over ``sigmas`` from ``x_T``, one jitted step at a time."""
    solver = solvers.get(solver_name)
    step = _STEP.setdefault(solver_name, jax.jit(solver.step, static_argnums=(5,)))
    x, state, n = x_T, solver.init(x_T), len(sigmas) - 1
    for i in range(n):
        state, x, _ = step(mixture, state, x, sigmas[i], sigmas[i + 1], i == n - 1)
    return np.asarray(x)


def num_steps(solver_name, nfe):
    """Steps of exactly ``nfe`` evaluations (every NFE here is odd, so heun has them too)."""
    n = steps_for(nfe, solver_name, exact=True)
    if n is None:
        raise ValueError(f"{solver_name} has no plan of exactly {nfe} evaluations")
    return n


def errors(x, ref):
    per_sample = np.sqrt(np.mean((x.astype(np.float64) - ref).reshape(len(ref), -1) ** 2, axis=1))
    return float(np.median(per_sample)), float(np.sqrt(np.mean(per_sample ** 2)))


# ----------------------------------------------------------------------------- benchmark

def benchmark(batch_2d, batch_image, nfes, seed):
    vp = schedules.vp_linear()
    grids = {"karras": (SIGMA_MAX, lambda n: schedules.karras(n, 0.002, SIGMA_MAX), SOLVERS),
             "vp time-uniform": (vp.sigma_max, lambda n: schedules.time_uniform(vp, n), VP_SOLVERS)}
    results, notes = {}, []
    for p_index, (problem, make) in enumerate(PROBLEMS.items()):
        mixture = make()
        batch = batch_2d if p_index == 0 else batch_image
        noise = np.asarray(jax.random.normal(jax.random.PRNGKey(seed + p_index),
                                             (batch,) + mixture.event_shape), np.float64)
        for grid, (sigma_max, make_grid, names) in grids.items():
            scale = SIGMA_MAX if grid == "karras" else np.sqrt(1.0 + sigma_max ** 2)
            x_T = (noise * scale).astype(np.float32)
            t0 = time.perf_counter()
            jax.config.update("jax_enable_x64", True)
            try:
                x64 = jnp.asarray(x_T, jnp.float64)
                ref = np.asarray(_RK4(mixture, x64, jnp.float64(sigma_max), REF_STEPS))
                ref_coarse = np.asarray(_RK4(mixture, x64, jnp.float64(sigma_max), REF_STEPS // 2))
            finally:
                jax.config.update("jax_enable_x64", False)
            ref_med, ref_rmse = errors(ref_coarse, ref)
            notes.append(f"{problem}, {grid} start (sigma_max = {sigma_max:.4g}): "
                         f"RK4 {REF_STEPS // 2} vs {REF_STEPS} steps differ by median {ref_med:.1e}, "
                         f"RMSE {ref_rmse:.1e} ({time.perf_counter() - t0:.1f} s)")
            print(notes[-1], flush=True)
            for name in names:
                row = {}
                for nfe in nfes:
                    sigmas = make_grid(num_steps(name, nfe))
                    row[nfe] = errors(run(name, mixture, sigmas, jnp.asarray(x_T)), ref)
                results[(problem, grid, name)] = row
                print(f"  {grid:16s} {name:9s} " + " ".join(f"{row[n][0]:.1e}" for n in nfes), flush=True)
    return results, notes


def check_against_sample(nfe=9):
    """The step loop gives what ``iia_jax.sample`` gives (same noise, Karras grid)."""
    mixture = models.ring_2d()
    x_T = jax.random.normal(jax.random.PRNGKey(0), (256, 2)) * SIGMA_MAX
    worst = 0.0
    for name in SOLVERS:
        sigmas = schedules.karras(num_steps(name, nfe))
        a = run(name, mixture, sigmas, x_T)
        b = np.asarray(jax.jit(iia_jax.sample)(mixture, iia_jax.plan(name, sigmas), x_T))
        worst = max(worst, float(np.max(np.abs(a - b))))
    if worst > 1e-4:
        raise AssertionError(f"step loop and iia_jax.sample differ by {worst}")
    return worst


# ----------------------------------------------------------------------------- output

def label(grid, name):
    return name if grid == "karras" else f"{name} (VP time-uniform)"


def markdown(results, notes, nfes, command, seconds, sample_check):
    lines = [
        "# Base solvers on exact Gaussian mixtures: ODE error vs NFE", "",
        f"Produced by `{command}` ({seconds:.0f} s on 2 shared CPU cores; "
        f"jax {jax.__version__}, float32 solvers, float64 reference).", "",
        "Setup (see the docstring of `benchmarks/solvers.py`): exact mixture denoisers "
        "(`iia_jax.models.gmm`), so the only error is the integration's. Karras grid: "
        "rho = 7, sigma 80 -> 0.002 -> 0, noise `80 N(0, I)`. VP time-uniform grid: "
        "`schedules.time_uniform(vp_linear(), N)` (DDIM's grid; sigma_max = 152), noise "
        "`sqrt(1 + sigma_max^2) N(0, I)`, for euler (= DDIM) and dpmpp_2m. "
        "Error against the exact ODE solution at sigma = 0 from the same noise (float64 RK4, "
        f"{REF_STEPS} steps to sigma = 0). NFE = N for all solvers except heun (2N - 1).", "",
        "Reference accuracy:", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", f"Step loop vs `iia_jax.sample` at NFE 9, every solver: max abs difference "
                  f"{sample_check:.1e}.", ""]
    problems = list(dict.fromkeys(k[0] for k in results))
    for problem in problems:
        for metric, idx in [("median per-sample RMS error", 0), ("RMSE", 1)]:
            lines += [f"## {problem}: {metric}", "",
                      "| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "| --- | " + " | ".join("---:" for _ in nfes) + " |"]
            for (p, grid, name), row in results.items():
                if p == problem:
                    lines.append(f"| {label(grid, name)} | "
                                 + " | ".join(f"{row[n][idx]:.2e}" for n in nfes) + " |")
            lines.append("")
    vp = schedules.vp_linear()
    lines += ["Grids at each NFE (for the N-evaluation solvers): the last non-zero sigma, from "
              "which the final step jumps to 0.", "",
              "| grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
              "| --- | " + " | ".join("---:" for _ in nfes) + " |",
              "| karras | " + " | ".join(f"{schedules.karras(n)[-2]:.3g}" for n in nfes) + " |",
              "| vp time-uniform | " + " | ".join(f"{schedules.time_uniform(vp, n)[-2]:.3g}"
                                                  for n in nfes) + " |", "",
              "Lowest median error at each NFE:", ""]
    for problem in problems:
        best = []
        for n in nfes:
            key = min((k for k in results if k[0] == problem), key=lambda k: results[k][n][0])
            best.append(f"{n}: {label(key[1], key[2])}")
        lines.append(f"- {problem}: " + ", ".join(best))
    lines += ["", "![error vs NFE](solvers_error_vs_nfe.png)", ""]
    return "\n".join(lines)


def plot(results, nfes, path):
    problems = list(dict.fromkeys(k[0] for k in results))
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 4.2 * len(problems)), squeeze=False)
    colors = dict(zip(SOLVERS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r, problem in enumerate(problems):
        for c, (metric, idx) in enumerate([("median per-sample RMS error", 0), ("RMSE", 1)]):
            ax = axes[r, c]
            for (p, grid, name), row in results.items():
                if p != problem:
                    continue
                ax.loglog(nfes, [row[n][idx] for n in nfes], marker="o" if grid == "karras" else "s",
                          ls="-" if grid == "karras" else "--", color=colors[name], ms=4,
                          label=label(grid, name))
            ax.set_title(f"{problem}: {metric}", fontsize=10)
            ax.set_xlabel("NFE")
            ax.set_ylabel("error vs exact ODE solution")
            ax.grid(True, which="both", alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = harness.parser(__doc__, "NFE 9, 64 and 32 samples", quick="small batches, few NFE")
    parser.add_argument("--batch-2d", type=int, default=4096)
    parser.add_argument("--batch-image", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for solvers.md and the PNG")
    args = parser.parse_args(argv)
    nfes = [9] if args.smoke else QUICK_NFES if args.quick else NFES
    if args.quick:
        args.batch_2d, args.batch_image = 512, 128
    if args.smoke:
        args.batch_2d, args.batch_image = 64, 32
    t0 = time.perf_counter()
    sample_check = check_against_sample()
    results, notes = benchmark(args.batch_2d, args.batch_image, nfes, args.seed)
    seconds = time.perf_counter() - t0
    command = command_line("benchmarks/solvers.py", argv)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, notes, nfes, command, seconds, sample_check)
    path = args.out / "solvers.md"
    path.write_text(text + _kept_section(path))
    plot(results, nfes, args.out / "solvers_error_vs_nfe.png")
    print(text)


def _kept_section(path: Path, begin="<!-- benchmarks/multistep.py: begin -->",
                  end="<!-- benchmarks/multistep.py: end -->") -> str:
    """The section benchmarks/multistep.py owns in the same file, kept across a rewrite."""
    old = path.read_text() if path.exists() else ""
    if begin not in old or end not in old:
        return ""
    return "\n" + old[old.index(begin):old.index(end) + len(end)] + "\n"


if __name__ == "__main__":
    main()
