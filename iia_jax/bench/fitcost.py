"""What a fit costs: wall time over its unavoidable model evaluations, and peak memory.

**Time.** A fit must at least integrate the fine reference: about ``batch x fine_steps x NFE``
model evaluations.  We time exactly that many evaluations, warm, as the Euler sampler on a grid of
``fine_steps x NFE`` steps over the same batch (the floor), and divide the fit's wall time by it.
Each mode runs in a fresh process: a first fit compiles its programs (a user pays that once per
plan and shape; the time JAX reports in tracing, lowering and XLA compilation is recorded), then
later fits of the same shapes compile nothing; these are timed in pairs with the floor, the order
inside a pair alternating, and each pair gives a ratio, so that the load of a shared machine, which
moves both sides of a pair alike, moves the ratio less than it moves either time.  The fit's own
evaluations (coarse passes, the never-worse check and the quality guard's samplers on top of the
fine reference) are counted in a last, untimed fit of the same rows with a denoiser that adds up
the rows it is called on (a host callback a call, which would slow a timed fit).

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
               target: str | None, repeats: int = 3) -> None:
    """Run in a fresh process: print as JSON the first fit's time (it compiles), ``repeats``
    interleaved pairs of a second fit and the evaluation floor (the order inside a pair
    alternating, so that a slow spell of a shared machine falls on both sides), and the model
    evaluations of a last, untimed and counted fit of the same rows."""
    compile_s = defaultdict(float)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: compile_s.__setitem__(event, compile_s[event] + secs))
    from .models import MODELS
    m = MODELS[model_name]()
    p = plan_for(solver, nfe, m.sigma_min, m.sigma_max, exact=True)
    x = m.sigma_max * jax.random.normal(jax.random.PRNGKey(7), (batch,) + m.shape)
    floor = jax.jit(lambda y: sample(m.denoiser, plan("euler", grid("logsnr_uniform", fine_steps * p.nfe, m.sigma_min,
                                                                     m.sigma_max)), y)).lower(x).compile()
    options = dict(mode=mode, target=target, fine_steps=fine_steps, progress=False)

    def timed_fit():
        compile_s.clear()
        res = fit(m.denoiser, p, x, **options)
        jax.block_until_ready(res.coeffs.values)
        return res.report.fit_seconds, sum(compile_s[e] for e in COMPILE_EVENTS)

    def timed_floor():
        t = time.perf_counter()
        jax.block_until_ready(floor(x))
        return time.perf_counter() - t

    first = timed_fit()
    pairs = []                          # (floor s, fit s, fit's compile s)
    for r in range(repeats):
        if r % 2:
            f = timed_fit()
            t = timed_floor()
        else:
            t = timed_floor()
            f = timed_fit()
        pairs.append((t,) + f)
    counted, count = counting(m.denoiser)   # timed fits use the plain model: a callback costs ~4 %
    jax.block_until_ready(fit(counted, p, x, **options).coeffs.values)
    jax.effects_barrier()
    print(json.dumps(dict(nfe=p.nfe, floor_evals=batch * fine_steps * p.nfe, fit_evals=count[0],
                          fit_s=first[0], compile_s=first[1], evals_runs=[a for a, _, _ in pairs],
                          fit_warm_runs=[b for _, b, _ in pairs], compile_warm_s=max(c for _, _, c in pairs))))


def fit_time(model_name: str, solver: str, nfe: int, batch: int, fine_steps: int, modes, repeats: int = 3,
             log=print) -> list:
    """Per mode, in a fresh process (:func:`time_probe`): the first fit's time and ``repeats``
    interleaved (second fit, floor) pairs; ``ratio_warm`` the median of the pairs' ratios, ``ratio``
    the first fit over the floors' median."""
    out = []
    for mode, target in modes:
        r = _in_fresh_process(f"from iia_jax.bench.fitcost import time_probe; time_probe({model_name!r}, "
                              f"{solver!r}, {nfe}, {batch}, {fine_steps}, {mode!r}, {target!r}, {repeats})")
        label = mode if target is None else f"{mode}/{target}"
        evals_s = float(np.median(r["evals_runs"]))
        ratios = [w / e for w, e in zip(r["fit_warm_runs"], r["evals_runs"])]
        out.append(dict(r, solver=solver, batch=batch, fine_steps=fine_steps, mode=label, evals_s=evals_s,
                        fit_warm_s=float(np.median(r["fit_warm_runs"])), ratio=r["fit_s"] / evals_s,
                        ratio_warm=float(np.median(ratios)), eval_ratio=r["fit_evals"] / r["floor_evals"]))
        log(f"fit time {solver} {label} NFE {r['nfe']}: first fit {r['fit_s']:.1f} s (compiling "
            f"{r['compile_s']:.1f} s), second fits {', '.join(f'{t:.1f}' for t in r['fit_warm_runs'])} s against "
            f"floors {', '.join(f'{t:.1f}' for t in r['evals_runs'])} s; ratios {out[-1]['ratio']:.2f} / "
            f"{out[-1]['ratio_warm']:.2f}; the fit's evaluations {out[-1]['eval_ratio']:.2f}x the floor's")
    return out


def _status_mb(field: str) -> float:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


# Where a memory probe's sequential fit keeps its carried state between steps (FitConfig); a third
# state, "spill_dir", passes a fresh temporary folder.
STATE_OPTIONS = {"default": {}, "in memory": dict(spill_above=None)}


def memory_probe(model_name: str, solver: str, nfe: int, batch: int, chunk: int, mode: str,
                 compiled: bool = False, state: str = "default") -> None:
    """Run in a fresh process (Linux): print ``{"before_mb", "peak_mb", "fit_s"}`` of one fit as JSON.

    The resident-set high-water mark is reset just before the fit (``echo 5 > /proc/self/clear_refs``),
    so ``peak_mb - before_mb`` is what the fit itself added at its peak.  With ``compiled``, a fit of
    the first ``min(batch, 2 chunk)`` rows (the same programs) runs first, so the measured fit
    compiles nothing and its peak is the memory of its data alone.  ``state``
    (:data:`STATE_OPTIONS`): where the sequential fit keeps its carried state, by the fit's
    defaults, in memory (``spill_above=None``) or in a temporary folder (``spill_dir``)."""
    from .models import MODELS
    m = MODELS[model_name]()
    p = plan_for(solver, nfe, m.sigma_min, m.sigma_max, exact=True)
    x = m.sigma_max * jax.random.normal(jax.random.PRNGKey(8), (batch,) + m.shape)
    jax.block_until_ready(m.denoiser(x[:2], 1.0))
    folder = tempfile.TemporaryDirectory() if state == "spill_dir" else None
    options = dict(mode=mode, chunk_size=chunk or None, fine_steps=16, progress=False,
                   **(dict(spill_dir=folder.name) if folder is not None else STATE_OPTIONS[state]))
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
               compiled: bool = False, state: str = "default") -> dict:
    """``{"fit_mb", "before_mb", "fit_s"}``: one fit's own peak memory (MiB), in a fresh process
    (``compiled``: after a smaller fit of the same programs; ``state``: where the sequential fit
    keeps its carried state; :func:`memory_probe`)."""
    r = _in_fresh_process(f"from iia_jax.bench.fitcost import memory_probe; memory_probe({model_name!r}, "
                          f"{solver!r}, {nfe}, {batch}, {chunk}, {mode!r}, {compiled}, {state!r})")
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
