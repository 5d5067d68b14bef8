"""Speed, as ratios measured in one process (docs/design.md §5).

* ``iia_sample`` over ``sample`` at equal NFE: interleaved pairs (base, IIA) on the same noise;
  the median of the per-pair time ratios, its 95 % interval and the ratios' interquartile range.
  A slow drift of a shared machine does not move a median of paired ratios the way it moves a
  ratio of two separate medians.
* Our jitted ``lax.scan`` sampler against a Python loop stepping a `diffusers` scheduler around
  the same jitted network (the peer's per-step cost: torch/numpy transfers and scheduler code).
* Compile time of one plan (``jit(...).lower(...).compile()``), per solver, batch and NFE.
* Time over batch size and NFE (base ``sample``), normalised per sample and per evaluation.
"""
from __future__ import annotations

import math
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


def median_interval(values, level: float = 0.95) -> tuple:
    """Distribution-free confidence interval of a median: the order statistics ``(k, n + 1 - k)``
    with ``k`` the largest for which ``P(Binomial(n, 1/2) < k) <= (1 - level) / 2`` (the sign
    test's interval); the sample's extremes when ``n`` is too small for ``level``."""
    v, n = np.sort(np.asarray(values, float)), len(values)
    below = np.cumsum([math.comb(n, j) for j in range(n + 1)]) / 2.0 ** n   # P(B <= j)
    k = max(1, int(np.searchsorted(below, (1 - level) / 2, side="right")))  # P(B <= k - 1) <= alpha/2
    return float(v[k - 1]), float(v[n - k])


def paired_ratio(fn_base, fn_other, args_base, args_other, repeats: int) -> dict:
    """``time(other) / time(base)`` over ``repeats`` interleaved pairs (warm): median, quartiles
    and the median's 95 % interval (:func:`median_interval`).  The order inside a pair alternates,
    so whichever call of a pair runs second (warmer caches, or a drifting machine) favours
    neither side; ``base_s`` is the median base time."""
    _timed(fn_base, *args_base), _timed(fn_other, *args_other)
    ratios, base = [], []
    for i in range(repeats):
        if i % 2:
            to = _timed(fn_other, *args_other)
            tb = _timed(fn_base, *args_base)
        else:
            tb = _timed(fn_base, *args_base)
            to = _timed(fn_other, *args_other)
        ratios.append(to / tb)
        base.append(tb)
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    lo, hi = median_interval(ratios)
    return dict(ratio=float(q50), q25=float(q25), q75=float(q75), ci_lo=lo, ci_hi=hi, pairs=repeats,
                base_s=float(np.median(base)))


def within_limit(r, limit: float = 1.03) -> str:
    """A ratio's verdict against ``limit``: yes / no when the median's 95 % interval lies on one
    side of it, else inconclusive (results saved before the interval was kept: their quartiles)."""
    lo, hi = r.get("ci_lo", r["q25"]), r.get("ci_hi", r["q75"])
    if hi <= limit:
        return "yes"
    return "**no**" if lo > limit else "inconclusive (noise)"


def interval_text(r, digits: int = 3) -> str:
    """The median's 95 % interval, or the quartiles where no interval was saved."""
    lo, hi = r.get("ci_lo", r["q25"]), r.get("ci_hi", r["q75"])
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


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
        out.append(dict(solver=solver, nfe=p.nfe, **paired_ratio(base, iia, (x,), (x,), repeats),
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
        r = paired_ratio(ours, theirs, (x,), (x_np,), repeats)
        out.append(dict(ours=solver, peer=peer_name, nfe=p.nfe, ours_s=r.pop("base_s"), **r))
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
