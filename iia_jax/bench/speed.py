"""Speed, as ratios measured in one process (docs/design.md §5).

* ``iia_sample`` over ``sample`` at equal NFE: interleaved pairs (base, IIA) on the same noise;
  the median of the per-pair time ratios and its interquartile range, which a slow drift of a
  shared machine does not move the way it moves a ratio of two separate medians.
* Our jitted ``lax.scan`` sampler against a Python loop stepping a `diffusers` scheduler around
  the same jitted network (the peer's per-step cost: torch/numpy transfers and scheduler code).
* Compile time of one plan (``jit(...).lower(...).compile()``), per solver, batch and NFE.
* Time over batch size and NFE (base ``sample``), normalised per sample and per evaluation.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from ..iia import fit, iia_sample
from ..sampling import sample
from . import peers
from .harness import plan_for


def _timed(fn, *args):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def paired_ratio(fn_base, fn_other, args_base, args_other, repeats: int) -> tuple:
    """Median and quartiles of ``time(other) / time(base)`` over interleaved pairs (warm)."""
    _timed(fn_base, *args_base), _timed(fn_other, *args_other)
    ratios = []
    for _ in range(repeats):
        tb = _timed(fn_base, *args_base)
        ratios.append(_timed(fn_other, *args_other) / tb)
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return float(q50), float(q25), float(q75), tb


def _compiled(fn, x):
    """``(compiled fn, seconds to lower and compile it)``."""
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(x).compile()
    return compiled, time.perf_counter() - t


def iia_overhead(model, solvers, nfe: int, batch: int, repeats: int) -> list:
    """``iia_sample`` / ``sample`` per solver at NFE ``nfe`` (heun: the odd NFE below), and the
    compile time of each."""
    x = model.sigma_max * jax.random.normal(jax.random.PRNGKey(3), (batch,) + model.shape)
    out = []
    for solver in solvers:
        p = plan_for(solver, nfe, model.sigma_min, model.sigma_max)
        coeffs = fit(model.denoiser, p, x[:16], fine_steps=2, holdout=0.0, progress=False).coeffs
        base, base_compile = _compiled(lambda y, p=p: sample(model.denoiser, p, y), x)
        iia, iia_compile = _compiled(lambda y, p=p, c=coeffs: iia_sample(model.denoiser, p, c, y), x)
        q50, q25, q75, tb = paired_ratio(base, iia, (x,), (x,), repeats)
        out.append(dict(solver=solver, nfe=p.nfe, ratio=q50, q25=q25, q75=q75, base_s=tb,
                        compile_sample=base_compile, compile_iia=iia_compile))
    return out


def peer_loop(model, pairs, nfe: int, batch: int, repeats: int) -> list:
    """A `diffusers` scheduler's Python loop (same jitted network) over our jitted sampler."""
    x = model.sigma_max * jax.random.normal(jax.random.PRNGKey(4), (batch,) + model.shape)
    x_np = np.asarray(x)
    eps = peers.eps_function(model.denoiser)
    out = []
    for solver, peer_name in pairs:
        p = plan_for(solver, nfe, model.sigma_min, model.sigma_max)
        peer = peers.DIFFUSERS_BY_NAME[peer_name]
        ours = jax.jit(lambda y, p=p: sample(model.denoiser, p, y))
        theirs = lambda y, peer=peer, s=np.asarray(p.sigmas): peers.run_diffusers(peer, eps, s, y)[0]  # noqa: E731
        q50, q25, q75, tb = paired_ratio(ours, theirs, (x,), (x_np,), repeats)
        out.append(dict(ours=solver, peer=peer_name, nfe=p.nfe, ratio=q50, q25=q25, q75=q75, ours_s=tb))
    return out


def scaling(model, solver, batches, nfes, repeats: int) -> list:
    """Compile time and warm wall time (median of ``repeats``) of ``sample`` over batch and NFE."""
    out = []
    for nfe in nfes:
        p = plan_for(solver, nfe, model.sigma_min, model.sigma_max)
        for b in batches:
            x = model.sigma_max * jax.random.normal(jax.random.PRNGKey(6), (b,) + model.shape)
            fn, compile_s = _compiled(lambda y, p=p: sample(model.denoiser, p, y), x)
            t = float(np.median([_timed(fn, x) for _ in range(repeats)]))
            out.append(dict(solver=solver, nfe=p.nfe, batch=b, seconds=t, compile_s=compile_s,
                            per_eval_us=1e6 * t / (b * p.nfe)))
    return out
