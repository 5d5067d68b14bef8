"""The least-squares solve of one IIA step, and the pieces a fit chooses it from (docs/design.md §4).

Step ``i`` of a fit has features ``F [K, B, ...]``, the base step ``Phi [B, ...]``, a target
``T [B, ...]`` and per-row weights ``w [B]`` (training rows 1, held-out and padding rows 0).  The
correction ``c [K]`` minimises ``|T - Phi - c F|^2_W`` with the feature columns scaled to unit
norm and a small ``ridge``.  Everything a solve needs is a sum over rows (the Gram statistics
``F W F^T``, ``F W r``, ``r W r`` with ``r = T - Phi`` and, for the spread-matched solve,
:class:`SpreadSums`), so chunks and devices add their parts and nothing batch-sized is gathered.

Two solves, each a small frozen piece that a :class:`~iia_jax.iia.config.FitConfig` holds, so
a fit chooses once and every pass calls ``solve(stats, sums, rows)``:

- :class:`PlainSolve`: ridge least squares, the conditional mean of the target given the
  features.  From the Gram statistics (:func:`solve_gram`), or, when a fit without
  ``chunk_size`` holds every row on one device, ``jnp.linalg.lstsq`` on the weighted features
  themselves (:func:`solve_lstsq`; the same problem, better conditioned).
- :class:`MatchedSolve` (the default): the same problem under the constraint that the corrected
  samples spread across the batch like the target (:func:`solve_matched`): least squares alone
  shrinks each step toward the mean image by the part of the target the features cannot predict
  (docs/digits_shrinkage.md).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

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


class SpreadSums(NamedTuple):
    """Sums over the weighted rows of one step that give the spread of its samples across the
    batch: ``count`` rows; per-pixel sums of the features ``[K, P]``, the base step ``Phi [P]``
    and the target ``T [P]``; ``F W Phi [K]``, ``Phi W Phi`` and ``T W T``.  Sums, so they add
    over chunks and shards like the Gram statistics."""

    count: jax.Array
    features: jax.Array
    base: jax.Array
    target: jax.Array
    features_base: jax.Array
    base_base: jax.Array
    target_target: jax.Array


def spread_sums(feats, base, target, weights) -> SpreadSums:
    """:class:`SpreadSums` of features ``[K, B, ...]``, base step and target ``[B, ...]`` over
    the rows weighted by ``weights [B]``."""
    w = weights.astype(base.dtype)
    f = feats.reshape(feats.shape[:2] + (-1,))                 # [K, B, P]
    phi, t = base.reshape(base.shape[0], -1), target.reshape(target.shape[0], -1)
    wphi, wt = w[:, None] * phi, w[:, None] * t
    return SpreadSums(jnp.sum(w), jnp.einsum("b,kbp->kp", w, f), jnp.sum(wphi, 0), jnp.sum(wt, 0),
                      jnp.einsum("kbp,bp->k", f, wphi), jnp.sum(wphi * phi), jnp.sum(wt * t))


def solve_matched(gram, rhs, rr, sums: SpreadSums, ridge, iterations: int = 40):
    """The ridge problem of :func:`solve_gram` under the constraint that the corrected samples
    ``y = Phi + c F`` spread across the batch as much as the target does (docs/iia.md):

        min_c |T - y|^2   s.t.   |y - mean(y)|^2 = |T - mean(T)|^2

    (squared deviations from the per-pixel mean over the rows, summed), but never further from
    the target than the base step (``c = 0``, squared error ``rr``).  Plain least squares
    predicts ``E[T | F]``, which spreads less than ``T`` by the part of the target the features
    cannot predict: samples shrink toward the mean image (docs/digits_shrinkage.md).  With
    ``A = F C F^T``, ``b = F C Phi``, ``e0 = Phi C Phi`` (``C`` centres over the rows) the spread
    of ``y`` is ``e0 + 2 b c + c A c``; the Lagrange condition is
    ``(F W F^T + mu A) c = F W r - mu b``.  Along it the spread decreases in ``mu`` (on
    ``mu > -1``, where the problem stays convex) and the squared error grows with ``|mu|``, so
    two bisections (on ``v``, ``mu = v/(1-v) - 1``; ``mu = 0`` is plain least squares) find the
    ``mu`` that meets the spread and, if that costs more than the base step, the ``mu`` between it
    and 0 whose error equals the base step's: the most spread the step can buy without being
    locally worse than no correction.  One eigendecomposition makes every ``mu`` cheap: with
    ``P^T G P = I`` and ``P^T A P = diag(lambda)`` (``G``: the ridge Gram), ``c = P w`` with
    ``w = P^T (r - mu b) / (1 + mu lambda)`` elementwise.  Columns are scaled as in
    :func:`solve_gram`."""
    n = jnp.maximum(sums.count, 1.0)
    scale = _column_scale(jnp.sqrt(jnp.diagonal(gram)))
    outer = jnp.outer(scale, scale)
    g = gram / outer + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype)
    a = (gram - sums.features @ sums.features.T / n) / outer
    b = (sums.features_base - sums.features @ sums.base / n) / scale
    e0 = sums.base_base - sums.base @ sums.base / n
    goal = sums.target_target - sums.target @ sums.target / n
    inv_chol = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(g), jnp.eye(g.shape[0], dtype=g.dtype),
                                                 lower=True)
    lam, q = jnp.linalg.eigh(inv_chol @ a @ inv_chol.T)
    p = inv_chol.T @ q
    rho, beta = p.T @ (rhs / scale), p.T @ b

    def at(v):   # scaled coefficients, their spread and squared error
        mu = v / (1.0 - v) - 1.0
        w = (rho - mu * beta) / (1.0 + mu * lam)
        u = p @ w
        return u, e0 + 2.0 * beta @ w + lam @ (w * w), rr - 2.0 * rho @ w + w @ w - ridge * u @ u

    def bisect(too_far, lo, hi):   # the boundary of a predicate that holds on [lo, boundary)
        def body(_, bracket):
            mid = 0.5 * (bracket[0] + bracket[1])
            return jnp.where(too_far(mid), jnp.stack([mid, bracket[1]]), jnp.stack([bracket[0], mid]))
        return jnp.mean(jax.lax.fori_loop(0, iterations, body, jnp.stack([lo, hi])))

    tiny = jnp.asarray(1e-6, gram.dtype)
    v = bisect(lambda v: at(v)[1] > goal, tiny, 1.0 - tiny)        # more mu, less spread
    t = bisect(lambda t: at(v + t * (0.5 - v))[2] > rr, jnp.zeros_like(v), jnp.ones_like(v))
    v = jnp.where(at(v)[2] > rr, v + t * (0.5 - v), v)
    return at(v)[0] / scale


def local_mse(stats, c, count):
    """Mean squared residual before and after the correction ``c``, from Gram statistics."""
    gram, rhs, rr = stats
    after = rr - 2.0 * c @ rhs + c @ gram @ c
    return rr / count, jnp.maximum(after, 0.0) / count


@dataclasses.dataclass(frozen=True)
class PlainSolve:
    """Ridge least squares (``ridge`` relative to unit-norm feature columns)."""

    ridge: float = 1e-4
    needs_spread: ClassVar[bool] = False   # no SpreadSums needed

    def __post_init__(self):
        _check_ridge(self.ridge)

    def __call__(self, stats, sums=None, rows=None):
        """``c [K]`` from the training rows' Gram statistics ``(F W F^T, F W r, r W r)`` or, when
        given, from the rows themselves ``(F [K, B, ...], r [B, ...], w [B])``."""
        if rows is None:
            return solve_gram(stats[0], stats[1], self.ridge)
        feats, residual, weights = rows
        w = weights.reshape((-1,) + (1,) * (residual.ndim - 1)).astype(residual.dtype)
        return solve_lstsq(feats * w[None], residual * w, self.ridge)


@dataclasses.dataclass(frozen=True)
class MatchedSolve:
    """Ridge least squares keeping the target's spread across samples (:func:`solve_matched`);
    ``iterations`` of each bisection."""

    ridge: float = 1e-4
    iterations: int = 40
    needs_spread: ClassVar[bool] = True

    def __post_init__(self):
        _check_ridge(self.ridge)
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, (int, np.integer)) \
                or self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations!r}")

    def __call__(self, stats, sums, rows=None):
        """``c [K]`` from the training rows' Gram statistics and :class:`SpreadSums` (``rows`` are
        not needed: the constrained problem is solved from the sums either way)."""
        return solve_matched(*stats, sums, self.ridge, int(self.iterations))


def _check_ridge(ridge):
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.floating, np.integer)) \
            or not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")


SOLVES = (PlainSolve, MatchedSolve)

__all__ = ["PlainSolve", "MatchedSolve", "SOLVES", "gram_stats", "local_mse", "solve_gram",
           "solve_lstsq", "solve_matched", "spread_sums", "SpreadSums"]
