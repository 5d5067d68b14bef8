"""The benchmark loop, one piece each; every script in ``benchmarks/`` and :mod:`.accuracy` uses it.

A benchmark of IIA does the same thing for every model (DESIGN.md §5):

1. draw noise ``x_T = sigma_max N(0, I)``: fit rows and evaluation rows from different keys, so
   no evaluation row is ever fitted (:func:`draws`);
2. integrate a fine reference from the evaluation noise: heun on a fine Karras grid
   (:func:`problem`, optionally with the error of the half-as-fine reference);
3. per solver and NFE: the plan (:func:`.grids.steps_for` inverts the solver's NFE), the base
   samples, the IIA fit (``iia_jax.fit``), the IIA samples, and their ODE errors against the
   reference (``iia_jax.metrics.ode_error``: median per-sample RMS and RMSE) -- :func:`compare`;
4. on digits, the validated quality judge (:func:`score`: ``digits_score``, 1000 x KID in the
   judge's features, and its jackknife error).

Scripts keep their settings and their write-ups; the formulas live here and in ``iia_jax.metrics``.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from ..iia import fit, iia_sample
from ..metrics import ode_error
from ..sampling import Plan, plan, sample
from .grids import grid, steps_for

def parser(doc: str, smoke: str, quick: str | None = None) -> argparse.ArgumentParser:
    """A benchmark script's command line: its docstring as help, ``--smoke`` (seconds; checks a
    change of code, never a result) and, where the script has one, ``--quick``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help=f"seconds, to check a change: {smoke}")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)
    return ap


SAMPLE = jax.jit(sample, static_argnums=0)          # compiled once per model, solver and shape
IIA_SAMPLE = jax.jit(iia_sample, static_argnums=0)


def run_batched(fn: Callable, *arrays, batch: int | None = None) -> np.ndarray:
    """``fn(*rows)`` over the same rows of every array, ``batch`` rows a call (all at once for
    ``None``), concatenated as numpy: memory bounded by the batch, results as one call's."""
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays must have the same number of rows, got {[len(a) for a in arrays]}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be a positive number of rows or None, got {batch}")
    step = n if batch is None else batch
    return np.concatenate([np.asarray(fn(*(a[i:i + step] for a in arrays))) for i in range(0, n, step)])


class Draws(NamedTuple):
    """Fit and evaluation noise ``sigma_max N(0, I)`` from different keys."""

    fit: jax.Array
    eval: jax.Array


def draws(seed: int, shape: tuple, n_eval: int, n_fit: int, sigma_max: float, keys: str = "split") -> Draws:
    """``keys="split"``: fit and evaluation keys ``split(PRNGKey(seed))`` (the demo's);
    ``"consecutive"``: fit ``PRNGKey(seed)``, evaluation ``PRNGKey(seed + 1)``."""
    if keys == "split":
        k_fit, k_eval = jax.random.split(jax.random.PRNGKey(seed))
    elif keys == "consecutive":
        k_fit, k_eval = jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1)
    else:
        raise ValueError(f"keys must be 'split' or 'consecutive', got {keys!r}")
    shape = tuple(shape)
    return Draws(sigma_max * jax.random.normal(k_fit, (n_fit,) + shape),
                 sigma_max * jax.random.normal(k_eval, (n_eval,) + shape))


def plan_for(solver: str, nfe: int, sigma_min: float, sigma_max: float, grid_name: str = "karras",
             exact: bool = False) -> Plan | None:
    """``solver`` on the ``grid_name`` grid with the most steps whose NFE is at most ``nfe``
    (``exact``: exactly ``nfe``); None where there is no such plan of at least 2 steps."""
    n = steps_for(nfe, solver, exact=exact)
    return None if n is None else plan(solver, grid(grid_name, n, sigma_min, sigma_max))


def base_samples(denoiser, p: Plan, x, *, cond=None, batch: int | None = None) -> np.ndarray:
    """The base solver from ``x`` (numpy float32)."""
    if cond is None:
        return run_batched(lambda y: SAMPLE(denoiser, p, y), x, batch=batch)
    return run_batched(lambda y, c: SAMPLE(denoiser, p, y, cond=c), x, cond, batch=batch)


def iia_samples(denoiser, p: Plan, coeffs, x, *, cond=None, batch: int | None = None) -> np.ndarray:
    """IIA with ``coeffs`` from ``x`` (numpy float32)."""
    if cond is None:
        return run_batched(lambda y: IIA_SAMPLE(denoiser, p, coeffs, y), x, batch=batch)
    return run_batched(lambda y, c: IIA_SAMPLE(denoiser, p, coeffs, y, cond=c), x, cond, batch=batch)


class Problem(NamedTuple):
    """One model with its noise and fine reference: what every row of a benchmark is measured on."""

    denoiser: Callable
    draws: Draws
    reference: np.ndarray          # heun, ``ref_steps`` Karras steps, from ``draws.eval``
    sigma_min: float
    sigma_max: float
    cond_fit: Any = None           # per-row conditions of the fit and evaluation rows
    cond_eval: Any = None
    batch: int | None = None       # evaluation rows per call
    reference_error: float = math.nan   # median error of the half-as-fine reference

    def base(self, p: Plan) -> np.ndarray:
        return base_samples(self.denoiser, p, self.draws.eval, cond=self.cond_eval, batch=self.batch)

    def iia(self, p: Plan, coeffs) -> np.ndarray:
        return iia_samples(self.denoiser, p, coeffs, self.draws.eval, cond=self.cond_eval, batch=self.batch)

    def error(self, x):
        """``ode_error`` of samples from the evaluation noise against the reference."""
        return ode_error(x, self.reference)

    def fit(self, p: Plan, **fit_kwargs):
        """``iia_jax.fit`` on the fit rows (and their conditions), quietly."""
        if self.cond_fit is not None:
            fit_kwargs = dict(fit_kwargs, cond=self.cond_fit)
        return fit(self.denoiser, p, self.draws.fit, progress=False, **fit_kwargs)


def problem(denoiser, noise: Draws, ref_steps: int, sigma_min: float, sigma_max: float, *,
            cond: tuple = (None, None), batch: int | None = None, check_reference: bool = False) -> Problem:
    """The fine reference of ``noise.eval`` (``cond``: fit and evaluation conditions); with
    ``check_reference`` also the median error of heun on half as many steps against it."""
    fine = [plan("heun", grid("karras", n, sigma_min, sigma_max))
            for n in ((ref_steps // 2,) if check_reference else ()) + (ref_steps,)]
    out = [base_samples(denoiser, p, noise.eval, cond=cond[1], batch=batch) for p in fine]
    ref_error = ode_error(out[0], out[-1]).median if check_reference else math.nan
    return Problem(denoiser, noise, out[-1], sigma_min, sigma_max, cond[0], cond[1], batch, ref_error)


class Comparison(NamedTuple):
    """Base and IIA of one plan on a problem's evaluation noise."""

    plan: Plan
    base: np.ndarray
    iia: np.ndarray
    result: Any                    # the FitResult
    base_error: Any                # ODEError
    iia_error: Any

    @property
    def kept(self) -> str:
        """``"kept/N"``: the steps the fit kept."""
        return f"{int(np.sum(self.result.report.kept))}/{self.plan.num_steps}"


def compare(prob: Problem, p: Plan, base: np.ndarray | None = None, **fit_kwargs) -> Comparison:
    """Fit IIA (``fit_kwargs``) for ``p``, sample base (unless given) and IIA, measure both."""
    base = prob.base(p) if base is None else base
    result = prob.fit(p, **fit_kwargs)
    x = prob.iia(p, result.coeffs)
    return Comparison(p, base, x, result, prob.error(base), prob.error(x))


def score(images, clip: bool = False) -> tuple:
    """``(digits_score, its jackknife standard error)`` of digit images (``clip``: to [-1, 1]
    first); the score is 1000 x KID against the real reference digits in the judge's features."""
    from ..metrics.quality import digits_quality

    x = np.clip(np.asarray(images), -1.0, 1.0) if clip else images
    q = digits_quality(x, boot=2)   # the bootstrap is for the FD, which the score does not use
    return q["score"], q["score_se"]
