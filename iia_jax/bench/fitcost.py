"""What a fit costs: wall time over its unavoidable model evaluations, and peak memory.

**Time.** A fit must at least integrate the fine reference: about ``batch x fine_steps x NFE``
model evaluations.  We time exactly that many evaluations, warm, as the Euler sampler on a grid of
``fine_steps x NFE`` steps over the same batch, and divide the fit's wall time by it.  The fit's
wall time includes its compilation (every fit compiles its programs, so a user always pays it).

**Memory.** A fresh Python process per batch size: its resident-set high-water mark (``VmHWM``,
reset just before ``fit``) minus its resident set just before ``fit`` (imports, noise, one model
call): the fit's own peak, measured by the operating system, so it counts everything XLA allocates
on the CPU (compilation included).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import jax
import numpy as np

from ..iia import fit
from ..sampling import plan, sample
from ..solvers import SOLVERS
from .grids import grid, steps_for


def fit_time(model, solver: str, nfe: int, batch: int, fine_steps: int, modes) -> list:
    """Fit wall time per mode over the warm time of ``batch x fine_steps x NFE`` evaluations."""
    m = model
    n = steps_for(nfe, SOLVERS[solver].evals_per_step)
    p = plan(solver, grid("karras", n, m.sigma_min, m.sigma_max))
    x = m.sigma_max * jax.random.normal(jax.random.PRNGKey(7), (batch,) + m.shape)
    evals = jax.jit(lambda y: sample(m.denoiser, plan("euler", grid("logsnr", fine_steps * p.nfe, m.sigma_min,
                                                                     m.sigma_max)), y))
    t = time.perf_counter()
    jax.block_until_ready(evals(x))
    cold = time.perf_counter() - t
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(evals(x))
        warm.append(time.perf_counter() - t)
    floor = float(np.median(warm))
    out = []
    for mode, target in modes:
        res = fit(m.denoiser, p, x, mode=mode, target=target, fine_steps=fine_steps, progress=False)
        label = mode if target is None else f"{mode}/{target}"
        out.append(dict(solver=solver, nfe=p.nfe, batch=batch, fine_steps=fine_steps, mode=label,
                        fit_s=res.report.fit_seconds, evals_s=floor, evals_cold_s=cold,
                        ratio=res.report.fit_seconds / floor))
    return out


def _status_mb(field: str) -> float:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def probe(model_name: str, solver: str, nfe: int, batch: int, chunk: int, mode: str) -> None:
    """Run in a fresh process (Linux): print ``{"before_mb", "peak_mb", "fit_s"}`` of one fit as JSON.

    The resident-set high-water mark is reset just before the fit (``echo 5 > /proc/self/clear_refs``),
    so ``peak_mb - before_mb`` is what the fit itself added at its peak."""
    from .models import MODELS
    m = MODELS[model_name]()
    p = plan(solver, grid("karras", steps_for(nfe, SOLVERS[solver].evals_per_step), m.sigma_min, m.sigma_max))
    x = m.sigma_max * jax.random.normal(jax.random.PRNGKey(8), (batch,) + m.shape)
    jax.block_until_ready(m.denoiser(x[:2], 1.0))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    res = fit(m.denoiser, p, x, mode=mode, chunk_size=chunk or None, fine_steps=16, progress=False)
    jax.block_until_ready(res.coeffs.values)
    print(json.dumps(dict(before_mb=before, peak_mb=_status_mb("VmHWM"), fit_s=res.report.fit_seconds)))


def peak_memory(model_name: str, solver: str, nfe: int, batches, chunk: int, modes, log=print) -> list:
    """The fit's own peak memory (MiB) per batch size, unchunked and with ``chunk_size=chunk``."""
    out = []
    for mode in modes:
        for b in batches:
            for c in (0, chunk):
                code = (f"from iia_jax.bench.fitcost import probe; "
                        f"probe({model_name!r}, {solver!r}, {nfe}, {b}, {c}, {mode!r})")
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                out.append(dict(mode=mode, batch=b, chunk=c or None, fit_mb=r["peak_mb"] - r["before_mb"],
                                before_mb=r["before_mb"], fit_s=r["fit_s"]))
                log(f"memory {mode} batch {b} chunk {c or None}: +{out[-1]['fit_mb']:.0f} MiB "
                    f"({r['fit_s']:.1f} s)")
    return out
