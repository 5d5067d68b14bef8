"""What a fit costs: wall time over its unavoidable model evaluations, and peak memory.

**Time.** A fit must at least integrate the fine reference: about ``batch x fine_steps x NFE``
model evaluations.  We time exactly that many evaluations, warm, as the Euler sampler on a grid of
``fine_steps x NFE`` steps over the same batch, and divide the fit's wall time by it.  The fit's
own evaluations (coarse passes, the never-worse check and the quality guard's samplers on top of
the fine reference) are counted too, in a third, untimed fit of the same rows with a denoiser that
adds up the rows it is called on (a host callback a call, which would slow a timed fit), so the
ratio splits into evaluations the fit makes beyond the reference and time beyond its evaluations.  Every fit
compiles its programs (a user pays that once per plan and shape), which dominates small fits; so
each fit runs twice in a fresh process with JAX's persistent compilation cache in an empty
directory: the first fit compiles (and fills the cache), the second, on the same shapes, loads
the compiled programs.  The time JAX reports spending in tracing, lowering and XLA compilation
during the first fit is recorded too.

**Memory.** A fresh Python process per batch size: its resident-set high-water mark (``VmHWM``,
reset just before ``fit``) minus its resident set just before ``fit`` (imports, noise, one model
call): the fit's own peak, measured by the operating system, so it counts everything XLA allocates
on the CPU (compilation included).  The same after a smaller fit that compiled the same programs
is the memory of the fit's data alone, the part that can grow with the batch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import jax
import numpy as np

from ..iia import fit
from ..sampling import plan, sample
from .grids import grid
from .harness import plan_for

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def _in_fresh_process(code: str) -> dict:
    """Run ``code`` (which prints one JSON line last) in a new interpreter; return that JSON."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def counting(denoiser):
    """``(counted, count)``: ``denoiser`` that adds the rows of every call to ``count[0]`` (a
    ``jax.debug.callback``, so it counts inside compiled scans, once per executed call)."""
    count = [0]

    def counted(x, sigma):
        rows = x.shape[0]
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + rows))
        return denoiser(x, sigma)

    return counted, count


def time_probe(model_name: str, solver: str, nfe: int, batch: int, fine_steps: int, mode: str,
               target: str | None) -> None:
    """Run in a fresh process: print the evaluation floor, two fits' times and the model
    evaluations of a third (untimed, counted) fit of the same rows as JSON."""
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="iia_jax_bench_cache_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compile_s = defaultdict(float)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: compile_s.__setitem__(event, compile_s[event] + secs))
    from .models import MODELS
    m = MODELS[model_name]()
    p = plan_for(solver, nfe, m.sigma_min, m.sigma_max, exact=True)
    x = m.sigma_max * jax.random.normal(jax.random.PRNGKey(7), (batch,) + m.shape)
    evals = jax.jit(lambda y: sample(m.denoiser, plan("euler", grid("logsnr_uniform", fine_steps * p.nfe, m.sigma_min,
                                                                     m.sigma_max)), y))
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(evals(x))
        times.append(time.perf_counter() - t)
    options = dict(mode=mode, target=target, fine_steps=fine_steps, progress=False)
    fits = []
    for _ in range(2):                  # timed with the plain model: a counting callback costs ~4 %
        compile_s.clear()
        res = fit(m.denoiser, p, x, **options)
        jax.block_until_ready(res.coeffs.values)
        fits.append((res.report.fit_seconds, sum(compile_s[e] for e in COMPILE_EVENTS)))
    counted, count = counting(m.denoiser)   # a third, untimed fit of the same work counts it
    jax.block_until_ready(fit(counted, p, x, **options).coeffs.values)
    jax.effects_barrier()
    print(json.dumps(dict(nfe=p.nfe, evals_cold_s=times[0], evals_s=float(np.median(times[1:])),
                          floor_evals=batch * fine_steps * p.nfe, fit_evals=count[0],
                          fit_s=fits[0][0], compile_s=fits[0][1], fit_warm_s=fits[1][0], compile_warm_s=fits[1][1])))


def fit_time(model_name: str, solver: str, nfe: int, batch: int, fine_steps: int, modes, log=print) -> list:
    """Per mode: the fit's wall time (first and second fit) over the warm time of
    ``batch x fine_steps x NFE`` evaluations, each mode in a fresh process."""
    out = []
    for mode, target in modes:
        r = _in_fresh_process(f"from iia_jax.bench.fitcost import time_probe; time_probe({model_name!r}, "
                              f"{solver!r}, {nfe}, {batch}, {fine_steps}, {mode!r}, {target!r})")
        label = mode if target is None else f"{mode}/{target}"
        per_eval = r["evals_s"] / r["floor_evals"]
        out.append(dict(r, solver=solver, batch=batch, fine_steps=fine_steps, mode=label,
                        ratio=r["fit_s"] / r["evals_s"], ratio_warm=r["fit_warm_s"] / r["evals_s"],
                        eval_ratio=r["fit_evals"] / r["floor_evals"],
                        beyond_evals=r["fit_warm_s"] / (per_eval * r["fit_evals"])))
        log(f"fit time {solver} {label} NFE {r['nfe']}: {r['fit_s']:.1f} s (compiling {r['compile_s']:.1f} s), "
            f"second fit {r['fit_warm_s']:.1f} s, floor evaluations {r['evals_s']:.1f} s; "
            f"ratios {out[-1]['ratio']:.2f} / {out[-1]['ratio_warm']:.2f}; the fit's evaluations "
            f"{out[-1]['eval_ratio']:.2f}x the floor's, its time {out[-1]['beyond_evals']:.2f}x theirs")
    return out


def _status_mb(field: str) -> float:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def memory_probe(model_name: str, solver: str, nfe: int, batch: int, chunk: int, mode: str,
                 compiled: bool = False, spill: bool = False) -> None:
    """Run in a fresh process (Linux): print ``{"before_mb", "peak_mb", "fit_s"}`` of one fit as JSON.

    The resident-set high-water mark is reset just before the fit (``echo 5 > /proc/self/clear_refs``),
    so ``peak_mb - before_mb`` is what the fit itself added at its peak.  With ``compiled``, a fit of
    the first ``min(batch, 2 chunk)`` rows (the same programs) runs first, so the measured fit
    compiles nothing and its peak is the memory of its data alone.  ``spill``: the sequential fit
    keeps its carried state in a temporary folder (``spill_dir``)."""
    import tempfile
    from .models import MODELS
    m = MODELS[model_name]()
    p = plan_for(solver, nfe, m.sigma_min, m.sigma_max, exact=True)
    x = m.sigma_max * jax.random.normal(jax.random.PRNGKey(8), (batch,) + m.shape)
    jax.block_until_ready(m.denoiser(x[:2], 1.0))
    folder = tempfile.TemporaryDirectory() if spill else None
    options = dict(mode=mode, chunk_size=chunk or None, fine_steps=16, progress=False,
                   spill_dir=None if folder is None else folder.name)
    if compiled:
        warm = fit(m.denoiser, p, x[:min(batch, 2 * (chunk or batch))], **options)
        jax.block_until_ready(warm.coeffs.values)
        del warm
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    res = fit(m.denoiser, p, x, **options)
    jax.block_until_ready(res.coeffs.values)
    print(json.dumps(dict(before_mb=before, peak_mb=_status_mb("VmHWM"), fit_s=res.report.fit_seconds)))


def fit_memory(model_name: str, solver: str, nfe: int, batch: int, chunk: int, mode: str,
               compiled: bool = False, spill: bool = False) -> dict:
    """``{"fit_mb", "before_mb", "fit_s"}``: one fit's own peak memory (MiB), in a fresh process
    (``compiled``: after a smaller fit of the same programs; ``spill``: with ``spill_dir``;
    :func:`memory_probe`)."""
    r = _in_fresh_process(f"from iia_jax.bench.fitcost import memory_probe; memory_probe({model_name!r}, "
                          f"{solver!r}, {nfe}, {batch}, {chunk}, {mode!r}, {compiled}, {spill})")
    return dict(fit_mb=r["peak_mb"] - r["before_mb"], before_mb=r["before_mb"], fit_s=r["fit_s"])


def peak_memory(model_name: str, solver: str, nfe: int, batches, chunk: int, modes, log=print) -> list:
    """The fit's own peak memory (MiB) per batch size, unchunked and with ``chunk_size=chunk``."""
    out = []
    for mode in modes:
        for b in batches:
            for c in (0, chunk):
                out.append(dict(fit_memory(model_name, solver, nfe, b, c, mode), mode=mode, batch=b, chunk=c or None))
                log(f"memory {mode} batch {b} chunk {c or None}: +{out[-1]['fit_mb']:.0f} MiB "
                    f"({out[-1]['fit_s']:.1f} s)")
    return out
