"""Scaling of ``iia_jax.fit``: wall time, model evaluations per second and peak memory vs batch.

    python benchmarks/scaling.py            # digits 512..4k, exact mixture 4k..100k (~35 min, 2 busy cores)
    python benchmarks/scaling.py --quick    # a smoke run (a few minutes here: compilation dominates)
    python benchmarks/scaling.py --large    # digits at 16k, 32k and 100k rows, 1 and 8 devices (hours)

Every configuration (model, batch, ``chunk_size``, host CPU devices, fit mode) is fitted in a
subprocess of its own, started with ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` so JAX
sees ``D`` devices, and so that its peak resident memory (``VmHWM``) belongs to that
configuration alone.  With ``D > 1`` the host batch is handed to ``fit`` with ``mesh=`` (a 1-D
mesh over all devices, axis ``"data"``): the fit runs data-parallel (docs/scaling.md).

Model evaluations are counted analytically from the fit's passes (:func:`fit_evaluations`), and
before the sweep that formula is checked against a denoiser that counts the rows it is called on
(``jax.debug.callback``) on a small exact mixture: every fit mode and target, chunked or not,
with padding.  Throughput is also put next to the model alone: the same process then times
plain denoiser calls on a batch of ``PROBE`` rows (sharded the same way), so the ratio
"fit / model" does not depend on how busy the shared machine was at that moment.

Writes docs/scaling_results.md (tables, machine, versions, seeds, this command line) and
docs/scaling.png (``--large``: docs/scaling_large_results.md and docs/scaling_large.png),
rewritten after every configuration so a cut-short run leaves what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's iia_jax, not an installed one
import iia_jax  # noqa: E402
from iia_jax import schedules, solvers  # noqa: E402
from iia_jax.bench import fitcost, harness, models  # noqa: E402
from iia_jax.rows import Sharding, make_layout  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHAPE = (8, 8, 1)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SOLVER, STEPS, FINE_STEPS, HOLDOUT = "euler", 3, 2, 0.25
SEED, FIT_KEY = 0, 1
PROBE, PROBE_SECONDS = 512, 2.0    # rows and least duration of the model-alone timing
MODES = (("teacher_forced", "local"), ("sequential", "trajectory"), ("sequential", "local"))
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"   # XLA's compile (tracing not nested in it)


@dataclasses.dataclass(frozen=True)
class Config:
    model: str                 # "digits" (the shipped U-Net) or "gmm" (exact mixture)
    rows: int
    chunk: int | None          # chunk_size (None: one pass over the whole batch)
    devices: int = 1
    mode: str = "teacher_forced"

    @property
    def label(self) -> str:
        how = "unchunked" if self.chunk is None else f"chunk {self.chunk}"
        where = "1 device" if self.devices == 1 else f"{self.devices} devices"
        return f"{self.model} {self.mode}, {how}, {where}"


def plan():
    return iia_jax.plan(SOLVER, schedules.karras(STEPS, SIGMA_MIN, SIGMA_MAX))


def model(name):
    return iia_jax.pretrained.digits() if name == "digits" else models.prototypes()


def target_of(mode):
    return "local" if mode == "sequential_local" else None


def fit_mode(mode):
    return "sequential" if mode.startswith("sequential") else mode


# ----------------------------------------------------------------------------- cost

def fit_evaluations(layout, plan, fine_steps: int, mode: str, target: str) -> dict:
    """Model evaluations (rows times calls) of one ``iia_jax.fit`` without a quality judge, from
    its passes.

    With ``e`` evaluations per step, ``N`` steps and ``M = fine_steps``, one row costs
    ``NFE = e (N - 1) + 1`` on the coarse grid and ``e M N + 1`` on the fine grid (M sub-steps per
    interval, one more for the last interval's step to 0).  Every pass runs over all
    ``layout.padded`` rows (padding included), held-out rows included:

    - teacher-forced: one pass, coarse + fine, per row;
    - sequential: the IIA sampler with its fine targets alongside (coarse + fine) per row; chunked,
      each step's coarse part once more to apply the correction (NFE per row); the local target
      also integrates the fine reference of the held-out rows (coarse + fine);
    - never-worse check: the IIA sampler (NFE) on the held-out rows, ``N + 1`` times.

    A quality judge adds ``NFE`` per judged row for each verdict (at least two: the base and the
    candidate).
    """
    e = solvers.get(plan.solver).evals_per_step
    n, coarse = plan.num_steps, plan.nfe
    fine = e * fine_steps * n + 1
    rows = layout.padded
    held = layout.chunks * layout.chunk_hold if layout.hold_rows else 0
    passes = rows * (coarse + fine)
    if mode == "sequential" and layout.chunked:
        passes += rows * coarse
    if mode == "sequential" and target == "local":
        passes += held * (coarse + fine)
    check = (n + 1) * coarse * held
    return dict(fit=passes, check=check, total=passes + check)


def count_check(quick: bool):
    """The formula against a denoiser that counts its rows, on a small mixture (one device):
    every mode and target, euler chunked with padding (200 rows by 64), heun unchunked."""
    gmm = models.prototypes()
    cases = [("euler", mode, target, 64) for mode, target in MODES]
    cases += [("heun", mode, target, None) for mode, target in MODES]
    results = []
    for solver, mode, target, chunk in (cases[:1] + cases[-1:] if quick else cases):
        p = iia_jax.plan(solver, schedules.karras(4, SIGMA_MIN, 20.0))
        counted, counter = fitcost.counting(gmm)
        x = 20.0 * jax.random.normal(jax.random.PRNGKey(3), (200,) + SHAPE)
        iia_jax.fit(counted, p, x, fine_steps=3, mode=mode, target=target, chunk_size=chunk,
                    key=jax.random.PRNGKey(FIT_KEY), progress=False, quality=None)
        expected = fit_evaluations(make_layout(200, HOLDOUT, chunk), p, 3, mode, target)["total"]
        jax.effects_barrier()
        results.append(dict(solver=solver, mode=mode, target=target, chunk=chunk,
                            counted=counter[0], formula=expected))
    return results


# ----------------------------------------------------------------------------- one configuration

def _status(field: str) -> int:
    """``VmHWM`` / ``VmRSS`` of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(cfg: Config) -> dict:
    """Fit once (compilation included, and measured apart), then time the model alone."""
    compile_s = [0.0]

    def listen(event, seconds, **_):
        if event == COMPILE_EVENT:
            compile_s[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    assert len(jax.devices()) == cfg.devices, (jax.devices(), cfg)
    denoiser, p = model(cfg.model), plan()
    x = np.asarray(SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(SEED), (cfg.rows,) + SHAPE))
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",)) if cfg.devices > 1 else None
    before, compiled_before = _status("VmHWM"), compile_s[0]
    start = time.perf_counter()
    result = iia_jax.fit(denoiser, p, x, fine_steps=FINE_STEPS, mode=fit_mode(cfg.mode),
                         target=target_of(cfg.mode), holdout=HOLDOUT, chunk_size=cfg.chunk,
                         key=jax.random.PRNGKey(FIT_KEY), mesh=mesh, progress=False,
                         quality=None)   # the guard's runs (at most 4,096 rows) are not in the count
    jax.block_until_ready(result.coeffs.values)
    wall = time.perf_counter() - start
    peak = _status("VmHWM")
    compiled = compile_s[0] - compiled_before

    layout = make_layout(cfg.rows, HOLDOUT, cfg.chunk, Sharding(mesh, "data") if mesh else None)
    target = result.coeffs.target
    evals = fit_evaluations(layout, p, FINE_STEPS, fit_mode(cfg.mode), target)

    probe = jnp.asarray(x[:PROBE])
    if mesh is not None:
        probe = jax.device_put(probe, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    call = jax.jit(lambda z: denoiser(z, jnp.float32(1.0)))
    call(probe).block_until_ready()
    calls, tick = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - tick < PROBE_SECONDS:
        call(probe).block_until_ready()
        calls += 1
    model_rate = PROBE * calls / (time.perf_counter() - tick)
    return dict(config=dataclasses.asdict(cfg), target=target, wall=wall, compile=compiled,
                evals=evals, padded=layout.padded, chunks=layout.chunks,
                rows_per_device_chunk=layout.chunk_rows // (cfg.devices or 1),
                train=result.report.train_size, held=result.report.holdout_size,
                kept=int(result.report.kept.sum()), hwm_before=before, hwm=peak,
                model_rate=model_rate)


def run_config(cfg: Config) -> dict:
    """``measure(cfg)`` in a fresh process that sees ``cfg.devices`` host CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={cfg.devices}")
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(dataclasses.asdict(cfg))],
                         env=env, capture_output=True, text=True, timeout=5400)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{cfg.label} at {cfg.rows} rows failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ----------------------------------------------------------------------------- report

def _mib(b):
    return b / 2 ** 20


def table(results, model_name):
    rows = [r for r in results if r["config"]["model"] == model_name]
    out = ["| configuration | batch | padded | chunks | rows / device / chunk | model evals (fit + check) "
           "| wall s | compile s | evals/s | evals/s excl. compile | model alone evals/s | fit / model "
           "| peak RSS MiB | before fit MiB | fit's own MiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cfg = Config(**r["config"])
        ev = r["evals"]
        rate = ev["total"] / r["wall"]
        steady = ev["total"] / max(r["wall"] - r["compile"], 1e-9)
        out.append(f"| {cfg.label} | {cfg.rows} | {r['padded']} | {r['chunks']} | "
                   f"{r['rows_per_device_chunk']} | {ev['fit']:,} + {ev['check']:,} | {r['wall']:.1f} | "
                   f"{r['compile']:.1f} | {rate:,.0f} | {steady:,.0f} | {r['model_rate']:,.0f} | "
                   f"{steady / r['model_rate']:.2f} | {_mib(r['hwm']):.0f} | {_mib(r['hwm_before']):.0f} | "
                   f"{_mib(r['hwm'] - r['hwm_before']):.0f} |")
    return out


def per_row_cost(results, model_name, chunked_devices=1):
    """Least-squares ``wall = a + b rows`` over the chunked single-device fits of a model."""
    pts = [(r["config"]["rows"], r["wall"]) for r in results
           if r["config"]["model"] == model_name and r["config"]["chunk"] is not None
           and r["config"]["devices"] == chunked_devices and r["config"]["mode"] == "teacher_forced"]
    if len(pts) < 2:
        return None
    b, a = np.polyfit(*np.array(pts, float).T, 1)
    return a, b


def plot(results, path):
    fig, (ax_mem, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = {}
    for r in results:
        cfg = Config(**r["config"])
        groups.setdefault(cfg.label, []).append(r)
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["config"]["rows"])
        n = [r["config"]["rows"] for r in rs]
        style = dict(marker="o" if "digits" in label else "s",
                     linestyle="-" if "chunk " in label else "--")
        ax_mem.plot(n, [_mib(r["hwm"] - r["hwm_before"]) for r in rs], label=label, **style)
        ax_rate.plot(n, [r["evals"]["total"] / max(r["wall"] - r["compile"], 1e-9) for r in rs],
                     label=label, **style)
    for ax in (ax_mem, ax_rate):
        ax.set_xscale("log")
        ax.set_xlabel("batch (samples)")
        ax.grid(alpha=0.3)
    ax_mem.set_yscale("log")
    ax_mem.set_ylabel("fit's peak RSS above the pre-fit peak (MiB)")
    ax_mem.set_title("peak memory of the fit (solid: chunked)")
    ax_rate.set_yscale("log")
    ax_rate.set_ylabel("model evaluations / s (compilation excluded)")
    ax_rate.set_title("throughput (compilation excluded)")
    ax_rate.legend(fontsize=7)
    fig.suptitle(f"iia_jax.fit, {SOLVER} {STEPS} steps, fine_steps {FINE_STEPS}, host CPU devices "
                 f"({os.cpu_count()} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results, checks, args, elapsed):
    lines = ["# Scaling of `iia_jax.fit`: measured on host CPU devices", "",
             f"Written by `python benchmarks/scaling.py{_flag(args)}` "
             f"({elapsed / 60:.1f} min). How to read it and how to run on a pod: "
             "[scaling.md](scaling.md).", "",
             f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
             f"{platform.platform()}; Python {platform.python_version()}, jax {jax.__version__}, "
             f"iia_jax {iia_jax.__version__}. Devices are XLA host CPU devices "
             "(`--xla_force_host_platform_device_count`), all on the same cores: sharding over "
             "8 of them tests the data-parallel program, it cannot add compute.",
             f"- Plan: {SOLVER}, {STEPS} steps, Karras grid {SIGMA_MAX:g} -> {SIGMA_MIN:g} -> 0 "
             f"(NFE {plan().nfe}); fine_steps {FINE_STEPS}; holdout {HOLDOUT}; fit key "
             f"PRNGKey({FIT_KEY}); x_T = {SIGMA_MAX:g} N(0, I) from PRNGKey({SEED}), shape "
             f"[B, {', '.join(map(str, SHAPE))}].",
             "- Models: `digits` = `iia_jax.pretrained.digits()` (the shipped EDM U-Net); `gmm` = "
             "exact denoiser of a 10-component isotropic mixture in 8x8x1 (std 0.2).",
             "- Model evaluations: counted analytically from the fit's passes "
             "(`fit_evaluations` in the script: every pass runs over all padded rows; teacher-forced "
             "costs NFE + fine per row, the never-worse check (N + 1) x NFE per held-out row; the "
             "quality guard is off: its few sampler runs of at most 4,096 rows do not grow with the batch), "
             "a formula checked against a counting denoiser before the sweep (below).",
             "- Wall: `fit` from a host batch to coefficients on the host, compilation included; "
             "`compile s` is XLA's compile time as JAX reports it (`jax.monitoring`, "
             "backend_compile_duration; tracing and lowering stay in), "
             "`evals/s excl. compile` divides by wall minus that. `model alone` times the bare "
             f"jitted denoiser on {PROBE} rows (sharded alike; at least 2 calls and {PROBE_SECONDS:g} s) "
             "in the same process just after the fit; `fit / model` is their ratio.",
             "- Memory: `VmHWM` (peak resident set) of the configuration's own process; `before fit` "
             "is the peak after importing JAX, loading the model and drawing x_T; `fit's own` is "
             "the difference.", ""]
    if checks:
        ok = all(c["counted"] == c["formula"] for c in checks)
        lines += [f"Evaluation-count check ({len(checks)} fits of a small mixture, 200 rows, 4 "
                  "steps, fine_steps 3: " + ", ".join(f"{c['solver']} {c['mode']} {c['target']} "
                  f"{'chunk ' + str(c['chunk']) if c['chunk'] else 'unchunked'}" for c in checks)
                  + "): "
                  + ("counted == formula in every case." if ok else "MISMATCH:"), ""]
        if not ok:
            lines += [f"- {c}" for c in checks if c["counted"] != c["formula"]] + [""]
    for name in ("digits", "gmm"):
        if not any(r["config"]["model"] == name for r in results):
            continue
        lines += [f"## {name}", ""] + table(results, name) + [""]
        fitted = per_row_cost(results, name)
        if fitted:
            a, b = fitted
            lines += [f"Chunked single-device fits: wall ~= {a:.1f} s + {b * 1e3:.3f} ms x rows "
                      f"(least squares over the measured sizes); at 100,000 rows that is "
                      f"{(a + b * 1e5) / 60:.1f} min on this machine.", ""]
    stem = "scaling_large" if args.large else "scaling"
    lines += [f"![memory and throughput]({stem}.png)", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}_results.md").write_text("\n".join(lines))
    plot(results, args.out / f"{stem}.png")


def _flag(args) -> str:
    return " --quick" if args.quick else " --large" if args.large else ""


# ----------------------------------------------------------------------------- main

def sweep(quick: bool, smoke: bool = False, large: bool = False):
    """The configurations, cheapest first; sized for 2 CPU cores shared with other jobs."""
    if large:   # the digits model from 16k to 100k rows, chunked, on 1 and on 8 devices
        return [Config("digits", 16384, 1024), Config("digits", 16384, 1024, 8),
                Config("digits", 16384, 1024, mode="sequential"), Config("digits", 32768, 1024),
                Config("digits", 32768, 1024, 8), Config("digits", 102400, 1024),
                Config("digits", 102400, 1024, 8)]
    if smoke:
        return [Config("gmm", 256, None), Config("gmm", 512, 128, 2)]
    if quick:
        return [Config("gmm", 1024, None), Config("gmm", 4096, 1024), Config("gmm", 4096, 1024, 8),
                Config("digits", 128, None), Config("digits", 256, 128),
                Config("digits", 256, 128, 8)]
    gmm = [Config("gmm", n, None) for n in (4096, 16384, 102400)]
    gmm += [Config("gmm", n, 4096) for n in (8192, 16384, 32768, 65536, 102400)]
    gmm += [Config("gmm", n, 4096, 8) for n in (16384, 102400)]
    gmm += [Config("gmm", n, 4096, mode="sequential") for n in (16384, 102400)]
    digits = [Config("digits", n, None) for n in (512, 1024, 2048)]
    digits += [Config("digits", n, 256) for n in (1024, 2048, 4096)]
    digits += [Config("digits", n, 256, 8) for n in (1024, 4096)]
    return gmm + digits


def main():
    parser = harness.parser(__doc__, "two small mixture fits", quick="a smoke run (small batches)")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for scaling_results.md and the PNG")
    parser.add_argument("--large", action="store_true",
                        help="the digits model at 16k, 32k and 100k rows (hours on 2 CPU cores); writes "
                             "scaling_large_results.md and scaling_large.png")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(measure(Config(**json.loads(args.worker)))), flush=True)
        return
    start = time.perf_counter()
    checks = count_check(args.quick or args.smoke)
    bad = [c for c in checks if c["counted"] != c["formula"]]
    print(f"evaluation-count check: {len(checks) - len(bad)}/{len(checks)} equal", flush=True)
    for c in bad:
        print("  mismatch", c, flush=True)
    results = []
    for cfg in sweep(args.quick, args.smoke, args.large):
        try:
            r = run_config(cfg)
        except (RuntimeError, subprocess.TimeoutExpired) as err:   # the rest of the sweep still runs
            print(f"{cfg.label} at {cfg.rows} rows: no result ({str(err)[-300:]})", flush=True)
            continue
        results.append(r)
        rate = r["evals"]["total"] / max(r["wall"] - r["compile"], 1e-9)
        print(f"{cfg.label:45s} {cfg.rows:>7} rows  {r['wall']:7.1f} s (compile {r['compile']:.1f})  "
              f"{rate:>10,.0f} evals/s  model alone {r['model_rate']:>10,.0f}  peak {_mib(r['hwm']):6.0f} MiB "
              f"(fit {_mib(r['hwm'] - r['hwm_before']):5.0f})", flush=True)
        write_report(results, checks, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
