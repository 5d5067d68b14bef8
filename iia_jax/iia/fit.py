"""Fitting IIA coefficients by closed-form least squares (DESIGN.md §4).

For each coarse step ``[sigma_i, sigma_{i+1}]`` with base step ``Phi`` and features ``F_i``
(``[K, n]`` over a batch), minimise ``|x*_{i+1} - Phi(x_i) - c F_i|^2`` where ``x*_{i+1}`` is a
much finer integration (the same solver, ``fine_steps`` sub-steps uniform in log sigma).  The
final step (to sigma = 0) is corrected too: its target integrates down to
``1e-3 sigma_{N-1}`` and then takes the final step.

Numerics: columns are scaled to unit norm and a small ``ridge`` is added, so the solution is
``c = S^-1 (A^T A + ridge I)^-1 A^T r`` with ``A = F^T S^-1``.  Unchunked, that is one
``jnp.linalg.lstsq`` of the augmented system ``[A; sqrt(ridge) I] c = [r; 0]`` vmapped across
steps; with ``chunk_size`` the Gram matrix ``F F^T`` and ``F r`` are summed chunk by chunk
(memory bounded by the chunk) and the same normal equations are solved.

Modes: ``teacher_forced`` (states from the fine trajectory; all steps independent, solved at
once) and ``sequential`` (states from the IIA sampler with the earlier coefficients; one solve
per step in a scan) with target ``local`` (the paper's: the fine solution of the interval from
the current state) or ``trajectory`` (ours: the fine reference trajectory's state at
``sigma_{i+1}``, so a correction also removes the error accumulated so far).

Never worse: on held-out samples, steps are switched on greedily in order and kept only if
they lower the median per-sample error at sigma = 0 against the fine reference.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..metrics.ode import per_sample_rms
from ..sampling import _check_plan, check_state, integrate, run_steps
from .coefficients import FIT_MODES, TARGETS, Coefficients
from .features import DEFAULT_TARGET, feature_spec
from .sample import apply_correction, corrected_step, iia_sample

TAIL_RATIO = 1e-3  # the final step's target integrates down to TAIL_RATIO * sigma_{N-1}



class FitReport(NamedTuple):
    """What a fit did, per step and end to end (arrays are numpy, ``[N]``)."""

    mse_before: np.ndarray          # local MSE of the base step, training samples
    mse_after: np.ndarray           # ... with the fitted correction
    holdout_mse_before: np.ndarray  # the same on held-out samples (NaN without holdout)
    holdout_mse_after: np.ndarray
    kept: np.ndarray                # False where the never-worse check zeroed the step
    holdout_median: tuple           # (base, IIA) median per-sample error at sigma = 0
    holdout_rmse: tuple             # (base, IIA) RMSE at sigma = 0
    train_size: int
    holdout_size: int
    fit_seconds: float

    def summary(self) -> str:
        """A plain-text table of the report."""
        lines = [f"{'step':>4} {'train MSE base':>15} {'after':>11} {'held-out base':>14} "
                 f"{'after':>11} {'kept':>5}"]
        for i in range(len(self.kept)):
            lines.append(f"{i:>4} {self.mse_before[i]:>15.4e} {self.mse_after[i]:>11.4e} "
                         f"{self.holdout_mse_before[i]:>14.4e} {self.holdout_mse_after[i]:>11.4e} "
                         f"{'yes' if self.kept[i] else 'no':>5}")
        if self.holdout_size:
            lines.append(f"held-out error at sigma=0 ({self.holdout_size} samples): median "
                         f"{self.holdout_median[0]:.4g} -> {self.holdout_median[1]:.4g}, RMSE "
                         f"{self.holdout_rmse[0]:.4g} -> {self.holdout_rmse[1]:.4g} (against the "
                         "fit's own reference: the same solver with fine_steps sub-steps per step, "
                         "not the exact ODE solution)")
        else:
            lines.append("no held-out samples: the never-worse check was skipped")
        lines.append(f"trained on {self.train_size} samples in {self.fit_seconds:.2f} s")
        return "\n".join(lines)


class FitResult(NamedTuple):
    coeffs: Coefficients
    report: FitReport


# ----------------------------------------------------------------------------- references

def fine_grid(sigma, sigma_next, fine_steps: int, final: bool):
    """``fine_steps`` sub-steps uniform in log sigma; the final interval stops at
    ``TAIL_RATIO * sigma`` and then steps to 0."""
    end = sigma * TAIL_RATIO if final else sigma_next
    grid = jnp.exp(jnp.linspace(jnp.log(sigma), jnp.log(end), fine_steps + 1))
    grid = jnp.concatenate([grid[:-1], jnp.reshape(end, (1,))])
    return jnp.concatenate([grid, jnp.zeros((1,), grid.dtype)]) if final else grid


def fine_solution(denoiser, solver, x, sigma, sigma_next, fine_steps: int, final: bool):
    """The same solver over the fine sub-grid of one interval, from a fresh state at ``x``."""
    return integrate(denoiser, solver, fine_grid(sigma, sigma_next, fine_steps, final), x, final)


# ----------------------------------------------------------------------------- least squares

def _flat(a):
    """[..., *event] with the event axes of a batch flattened: features [K, B, ...] -> [K, n]."""
    return a.reshape(a.shape[0], -1)


def gram_stats(feats, residual, weights):
    """``(F W F^T [K, K], F W r [K], r W r)`` with per-sample weights ``w [B]``."""
    w = weights.reshape(weights.shape + (1,) * (residual.ndim - 1)).astype(residual.dtype)
    f = _flat(feats * w[None])
    r = (residual * w).reshape(-1)
    fr = _flat(feats)
    return f @ fr.T, f @ residual.reshape(-1), r @ residual.reshape(-1)


def _column_scale(norms):
    return jnp.where(norms > 0, norms, 1.0)


def solve_lstsq(feats, residual, ridge):
    """Ridge least squares with unit-norm columns by ``lstsq`` on the augmented system."""
    f = _flat(feats)
    scale = _column_scale(jnp.linalg.norm(f, axis=1))
    k = f.shape[0]
    a = jnp.concatenate([(f / scale[:, None]).T, jnp.sqrt(ridge) * jnp.eye(k, dtype=f.dtype)])
    rhs = jnp.concatenate([residual.reshape(-1), jnp.zeros((k,), f.dtype)])
    return jnp.linalg.lstsq(a, rhs)[0] / scale


def solve_gram(gram, rhs, ridge):
    """The same ridge problem from accumulated ``F F^T`` and ``F r`` (normal equations)."""
    scale = _column_scale(jnp.sqrt(jnp.diagonal(gram)))
    scaled = gram / jnp.outer(scale, scale) + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype)
    return jnp.linalg.solve(scaled, rhs / scale) / scale


def local_mse(stats, c, count):
    """Mean squared residual before and after the correction ``c``, from Gram statistics."""
    gram, rhs, rr = stats
    after = rr - 2.0 * c @ rhs + c @ gram @ c
    return rr / count, jnp.maximum(after, 0.0) / count


# ----------------------------------------------------------------------------- passes

def _teacher_forced_pass(denoiser, solver, spec, sigmas, fine_steps, x, weights, keep_features):
    """One scan along the fine trajectory from ``x``: per-step Gram statistics for each row of
    ``weights [W, B]`` (or the features and residuals themselves), the fine states at every
    coarse sigma ``[N, B, ...]``, and finiteness flags."""

    def body(carry, index, sigma, sigma_next, final):
        x_fine = carry[1]
        carry, feats, denoised = corrected_step(denoiser, solver, spec, carry, sigma, sigma_next, final)
        target = fine_solution(denoiser, solver, x_fine, sigma, sigma_next, fine_steps, final)
        residual = target - carry[1]
        fit_data = ((feats, residual) if keep_features else
                    jax.vmap(gram_stats, in_axes=(None, None, 0))(feats, residual, weights))
        ok = jnp.all(jnp.isfinite(denoised)) & jnp.all(jnp.isfinite(target))
        return (carry[0], target, carry[2]), (fit_data, target, ok)

    carry = (solver.init(x), x, spec.init_history(x))
    _, (fit_data, states, ok) = run_steps(body, carry, sigmas)
    return fit_data, states, ok


def _sequential_pass(denoiser, solver, spec, sigmas, fine_steps, x, w_train, w_hold, reference,
                     target, ridge, chunked):
    """The IIA sampler over chunks ``x [C, b, ...]``, fitting each step's coefficients on the
    training rows before moving on.  ``reference [N, C, b, ...]`` is the fine trajectory."""

    def body(carry, index, sigma, sigma_next, final):
        def per_chunk(chunk):
            x_cur = chunk[1]
            new, feats, denoised = corrected_step(denoiser, solver, spec, chunk, sigma, sigma_next, final)
            goal = (fine_solution(denoiser, solver, x_cur, sigma, sigma_next, fine_steps, final)
                    if target == "local" else None)
            ok = jnp.all(jnp.isfinite(denoised))
            if goal is not None:  # the local target's own model calls count too
                ok = ok & jnp.all(jnp.isfinite(goal))
            return new, feats, ok, goal

        carry, feats, ok, goal = jax.lax.map(per_chunk, carry)
        goal = reference[index] if target == "trajectory" else goal
        residual = goal - carry[1]
        stats = [jax.tree_util.tree_map(lambda a: a.sum(0), jax.vmap(gram_stats)(feats, residual, w))
                 for w in (w_train, w_hold)]
        if chunked:
            c = solve_gram(stats[0][0], stats[0][1], ridge)
        else:
            wt = w_train[0].reshape((-1,) + (1,) * (residual.ndim - 2)).astype(residual.dtype)
            c = solve_lstsq(feats[0] * wt[None], residual[0] * wt, ridge)
        x_next = jax.vmap(apply_correction, in_axes=(0, None, 0))(carry[1], c, feats)
        return (carry[0], x_next, carry[2]), (c, stats[0], stats[1], jnp.all(ok))

    carry = (jax.vmap(solver.init)(x), x, jax.vmap(spec.init_history)(x))
    _, (values, train_stats, hold_stats, ok) = run_steps(body, carry, sigmas)
    return values, train_stats, hold_stats, ok


# ----------------------------------------------------------------------------- helpers

def _jit_with_model(fn, denoiser):
    """jit ``fn(denoiser, ...)``: the denoiser is a traced argument when it is a pytree of
    arrays (e.g. a ``Partial`` holding params), otherwise it is closed over."""
    leaves = jax.tree_util.tree_leaves(denoiser)
    if leaves and all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
        jitted = jax.jit(fn)
        return lambda *args: jitted(denoiser, *args)
    return jax.jit(lambda *args: fn(denoiser, *args))


def _chunks(x, size):
    """Pad ``x`` (by repeating its first row) to whole chunks: ``([C, size, ...], weights [C, size])``."""
    n = x.shape[0]
    count = -(-n // size)
    pad = count * size - n
    padded = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
    weights = jnp.concatenate([jnp.ones((n,)), jnp.zeros((pad,))])
    return padded.reshape((count, size) + x.shape[1:]), weights.reshape(count, size)


def _raise_if_bad(ok, sigmas, what):
    ok = np.asarray(ok)
    if not ok.all():
        i = int(np.argmin(ok))
        raise ValueError(f"IIA fit: {what} at step {i} (sigma={float(sigmas[i]):.6g}); the model "
                         "returned NaN/Inf or the features are degenerate there")


def _check_args(mode, target, fine_steps, ridge, holdout, chunk_size, batch):
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {FIT_MODES}, got {mode!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not isinstance(fine_steps, int) or fine_steps < 2:
        raise ValueError(f"fine_steps must be an integer >= 2, got {fine_steps!r}")
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be finite and >= 0, got {ridge!r}")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    n_hold = int(round(holdout * batch))
    if batch - n_hold < 1:
        raise ValueError(f"x_T has {batch} samples; with holdout={holdout} none is left to fit on")
    return n_hold


# ----------------------------------------------------------------------------- fit

def fit(denoiser, plan, x_T, *, preset=None, history: int = 1, fine_steps: int = 16,
        mode: str = "sequential", target: str | None = None, ridge: float = 1e-4,
        holdout: float = 0.25, chunk_size: int | None = None, key=None,
        fingerprint: str | None = None, progress: bool | None = None) -> FitResult:
    """Fit IIA coefficients for ``plan`` on the initial states ``x_T`` (sigma-space, ``[B, ...]``).

    ``preset``/``history`` choose the features (see :mod:`iia_jax.iia.features`); ``fine_steps``
    is M, the sub-steps of the target integration per interval; ``mode``/``target`` choose where
    the states come from and what they aim at (module docstring); ``target=None`` takes the
    solver's measured best, :data:`DEFAULT_TARGET`.  A fraction ``holdout`` of the
    batch (shuffled with ``key`` if given) is kept out of the fit and judges it: coefficients that
    do not lower the held-out median error at sigma = 0 are zeroed.  ``chunk_size`` bounds memory:
    every model pass runs over chunks of that many rows and Gram matrices are summed over them
    (only the fine states at the N coarse sigmas are kept for the whole batch).  ``fingerprint`` is stored with the
    coefficients for a later check.  Raises a ValueError naming the step if anything is not finite.
    """
    start = time.perf_counter()
    solver = _check_plan(plan)
    check_state(x_T)
    spec = feature_spec(plan.solver, preset, history)
    target = DEFAULT_TARGET[plan.solver] if target is None else target
    n_hold = _check_args(mode, target, fine_steps, ridge, holdout, chunk_size, x_T.shape[0])
    if key is not None:
        x_T = x_T[jax.random.permutation(key, x_T.shape[0])]
    n_train = x_T.shape[0] - n_hold
    hold = x_T[n_train:]
    sigmas = plan.sigmas.astype(x_T.dtype)
    per_sample = int(np.prod(x_T.shape[1:]))
    pbar = tqdm(total=2 + plan.num_steps, desc=f"IIA fit {plan.solver}", leave=False,
                disable=None if progress is None else not progress)

    tf_stats, tf_features = (_jit_with_model(
        lambda d, x, w, keep=keep: _teacher_forced_pass(d, solver, spec, sigmas, fine_steps, x, w, keep),
        denoiser) for keep in (False, True))
    # Row weights [2, B]: training rows, held-out rows.  Each pass covers both, so every fit
    # compiles each model-calling function once.
    weights = jnp.stack([jnp.arange(x_T.shape[0]) < n_train, jnp.arange(x_T.shape[0]) >= n_train])
    weights = weights.astype(x_T.dtype)

    def check(ok, what="non-finite model output"):
        _raise_if_bad(ok, sigmas, what)

    def reference_pass(x, w):
        """The fine trajectory of the rows ``x``, chunk by chunk when ``chunk_size`` is set: Gram
        statistics summed over chunks for each row of ``w``, and the fine states ``[N, B, ...]``."""
        size = chunk_size or x.shape[0]
        parts, valid = _chunks(x, size)
        row_w = jax.vmap(lambda v: _chunks(v, size)[0] * valid)(w)   # [W, C, size]
        stats, states = None, []
        for c in range(parts.shape[0]):
            part_stats, part_states, ok = tf_stats(parts[c], row_w[:, c])
            check(ok, "non-finite model output or reference")
            stats = part_stats if stats is None else jax.tree_util.tree_map(jnp.add, stats, part_stats)
            states.append(part_states)
        return stats, jnp.concatenate(states, axis=1)[:, :x.shape[0]]

    if mode == "teacher_forced" and chunk_size is None:
        (feats, residual), states, ok = tf_features(x_T, weights)
        check(ok)
        values = jax.vmap(solve_lstsq, in_axes=(0, 0, None))(feats[:, :, :n_train], residual[:, :n_train], ridge)
        stats = jax.vmap(jax.vmap(gram_stats, in_axes=(None, None, 0)), in_axes=(0, 0, None))(
            feats, residual, weights)
        train_stats, hold_stats = (jax.tree_util.tree_map(lambda a, j=j: a[:, j], stats) for j in (0, 1))
        hold_end = states[-1][n_train:]
    elif mode == "teacher_forced":
        stats, states = reference_pass(x_T, weights)
        train_stats, hold_stats = (jax.tree_util.tree_map(lambda a, j=j: a[:, j], stats) for j in (0, 1))
        values = jax.vmap(solve_gram, in_axes=(0, 0, None))(train_stats[0], train_stats[1], ridge)
        hold_end = states[-1][n_train:]
    else:
        if target == "trajectory":   # the fine reference trajectory of every row
            ref_states = reference_pass(x_T, weights)[1]
            hold_end = ref_states[-1][n_train:]
        else:                        # only the held-out end points are needed
            ref_states = None
            hold_end = reference_pass(hold, weights[:, n_train:])[1][-1] if n_hold else None
        size = chunk_size or x_T.shape[0]
        parts, valid = _chunks(x_T, size)
        w_train, w_hold = (_chunks(w, size)[0] * valid for w in weights)
        if ref_states is not None:
            ref_states = jax.vmap(lambda s: _chunks(s, size)[0])(ref_states)
        seq = _jit_with_model(
            lambda d, x, wt, wh, ref: _sequential_pass(d, solver, spec, sigmas, fine_steps, x, wt, wh,
                                                       ref, target, ridge, chunk_size is not None),
            denoiser)
        values, train_stats, hold_stats, ok = seq(parts, w_train, w_hold, ref_states)
        check(ok)
    pbar.update(1)
    _raise_if_bad(np.all(np.isfinite(np.asarray(values)), axis=1), sigmas, "non-finite coefficients")

    count = lambda n: n * per_sample  # noqa: E731
    mse_before, mse_after = jax.vmap(local_mse, in_axes=(0, 0, None))(train_stats, values, count(n_train))
    if n_hold:
        h_before, h_after = jax.vmap(local_mse, in_axes=(0, 0, None))(hold_stats, values, count(n_hold))
    else:
        h_before = h_after = jnp.full((plan.num_steps,), jnp.nan)

    make = lambda vals, kept: Coefficients(  # noqa: E731
        vals, plan.sigmas, kept, plan.solver, spec.preset, spec.history, fine_steps, mode, target,
        int(n_train), fingerprint, _guidance_scale(denoiser), __version__)
    values = np.asarray(values)
    kept = np.ones(plan.num_steps, bool)
    medians = rmses = (float("nan"), float("nan"))
    if n_hold:
        values, kept, medians, rmses = _never_worse(denoiser, plan, make, values, hold, hold_end,
                                                    chunk_size or n_hold, pbar)
    pbar.close()
    coeffs = make(jnp.asarray(values), jnp.asarray(kept))
    report = FitReport(np.asarray(mse_before), np.asarray(mse_after), np.asarray(h_before),
                       np.asarray(h_after), kept, medians, rmses, int(n_train), int(n_hold),
                       time.perf_counter() - start)
    return FitResult(coeffs, report)


def _guidance_scale(denoiser):
    scale = getattr(denoiser, "guidance_scale", None)
    return None if scale is None else float(scale)


def _never_worse(denoiser, plan, make, values, hold, reference, chunk_size, pbar):
    """Greedy in step order: switch step i's coefficients on if that lowers the held-out median
    per-sample error at sigma = 0; otherwise leave them at zero.  Runs in chunks of held-out rows."""
    n = values.shape[0]

    def errors(d, vals, x, ref):
        return per_sample_rms(iia_sample(d, plan, make(vals, jnp.ones((n,), bool)), x), ref)

    jitted = _jit_with_model(errors, denoiser)
    x_parts, ref_parts = _chunks(hold, chunk_size)[0], _chunks(reference, chunk_size)[0]

    def err(vals):
        return np.concatenate([np.asarray(jitted(vals, x, r)) for x, r in zip(x_parts, ref_parts)])[:hold.shape[0]]

    current = np.zeros_like(values)
    base = err(jnp.asarray(current))
    pbar.update(1)
    best, best_err = np.median(base), base
    kept = np.zeros(n, bool)
    for i in range(n):
        trial = current.copy()
        trial[i] = values[i]
        e = err(jnp.asarray(trial))
        if np.median(e) < best:
            current, best, best_err, kept[i] = trial, np.median(e), e, True
        pbar.update(1)
    rms = lambda e: float(np.sqrt(np.mean(e.astype(np.float64) ** 2)))  # noqa: E731
    return current, kept, (float(np.median(base)), float(best)), (rms(base), rms(best_err))


__all__ = ["fit", "FitResult", "FitReport", "fine_grid", "fine_solution", "solve_lstsq", "solve_gram"]
