"""A model-agnostic quality judge for the fit: samples against the fit's own fine reference.

A least-squares correction can lower the error at sigma = 0 and still make the samples worse: on
the shipped digits model, dpmpp_2m and unipc at NFE 5 (Karras) get flatter digits with grey
backgrounds (docs/iia.md, "Why IIA can cost sample quality").  Every fit already has, for its
held-out rows, the samples of the fine reference (the same solver with ``fine_steps`` sub-steps
per step), of the base sampler and of the IIA candidate, all three from the same noise.  The
judge here asks which of candidate and base is closer *in distribution* to the reference:

    MMD^2(C, R) - MMD^2(B, R)     (negative: the candidate is better)

with the Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 h^2))`` on the flattened samples,
clipped to the range the reference's values occupy (as samples are stored), and ``h`` half the
median distance between distinct reference samples (the median heuristic, Gretton et al. 2012,
halved so that the kernel sees detail, not only layout; fixed by the reference, so it does not
move with the candidate).

Pairing.  Row ``i`` of all three sets comes from the same noise, so ``c_i`` and ``r_i`` are close
whenever the ODE error is small; the cross term ``k(c_i, r_i)`` would then reward a low ODE error,
not a good distribution (exactly what must not decide here).  The estimator is the paired
U-statistic over distinct rows ``i != j`` (Gretton et al. 2012, MMD_u^2 with equal sample sizes),
which never looks at a pair from the same noise:

    h_C(i, j) = k(c_i, c_j) + k(r_i, r_j) - k(c_i, r_j) - k(c_j, r_i)
    diff = sum_{i != j} [h_C(i, j) - h_B(i, j)] / (n (n - 1))

(the ``k(r_i, r_j)`` terms cancel).  It is unbiased for the difference of the two population
MMD^2.  Its standard error is the jackknife over rows (delete row ``i`` of all three sets at once:
the noise draw is the unit), closed form from the row sums of the ``[n, n]`` matrix of ``h_C -
h_B``.  The kernel matrices are built in blocks of rows (``block``), so memory is ``O(block n)``
(a few MiB a matrix at the fit's cap of 4,096 judged rows, :class:`~iia_jax.iia.config.Judge`)
and the result does not depend on the block size beyond round-off.

The spread floor.  The MMD weighs the base sampler's excess contrast (over-sharp strokes, values
pushed to the ends of the range) against IIA's flatness, and where the base overshoots it can prefer
an IIA that is visibly flatter than the reference (docs/iia.md: three digits cells that lose
``digits_score``).  Flatness is the one way least squares fails (it predicts a conditional mean),
so it is checked on its own: with ``s(X)`` the RMS deviation of the clipped samples from their mean
image,

    deficit = 1 - s(C) / min(s(B), s(R))

is how much less the candidate spreads than the reference, or than the base where the base itself
is flatter (a correction that only removes part of a blurred base's flatness is not blamed).  Row
jackknife as above.  A candidate flatter than that floor by more than ``SPREAD_TOLERANCE`` is worse.

In the fit: :data:`iia_jax.iia.config.REFERENCE_JUDGE` is ``Judge(reference_verdict, reference=True)``,
the default judge of :class:`~iia_jax.FitConfig`: both views, as the larger of their z-scores.  The
fit's quality guard (``iia_jax.iia.fit._quality_guard``) hands it the samples of every row whose
fine reference the fit integrated (the trajectory target and teacher-forced fits; the held-out rows
for the local target) and drops steps while it finds IIA worse than the base sampler.
"""
from __future__ import annotations

import numpy as np

from ..metrics.quality import polynomial_kernel

__all__ = ["reference_verdict", "reference_mmd", "distance_z", "spread_deficit", "feature_mmd", "median_bandwidth_of",
           "paired_mmd_difference", "clip_to_reference", "CLIP_TAIL", "BANDWIDTH_SCALE", "SPREAD_TOLERANCE"]

CLIP_TAIL = 1e-3        # samples are judged clipped to the reference's 0.1 %..99.9 % value range
BANDWIDTH_SCALE = 0.5   # kernel bandwidth: half the median distance between reference samples
BANDWIDTH_ROWS = 1024   # ... among the first 1,024 reference rows
# The spread floor: a candidate may spread less than both the reference and the base sampler by
# at most this fraction.  On the model's own samples a uniform contrast loss of 3 % is invisible
# to digits_score and 10 % clearly costs (docs/metrics.md, contrast ladder); 5 % lies between.
SPREAD_TOLERANCE = 0.05


def _flat(name: str, a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim < 2:
        raise ValueError(f"{name} must be samples [n, ...] with at least one event axis, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a.reshape(a.shape[0], -1)


def median_bandwidth_of(reference, block: int = 128, max_rows: int = BANDWIDTH_ROWS) -> float:
    """Median Euclidean distance between distinct rows among the first ``max_rows`` of
    ``reference [n, ...]`` (> 0).  The cap bounds the ``max_rows^2 / 2`` distances held for the
    median (4 MiB at 1,024 rows, whatever the batch); the median of half a million distances
    moves by about 0.1 %, far less than the bandwidth matters."""
    r = _flat("reference", reference)[:max_rows]
    n = r.shape[0]
    if n < 2:
        raise ValueError(f"reference needs at least 2 rows, got {n}")
    sq = np.sum(r * r, 1)
    distances, filled = np.empty(n * (n - 1) // 2), 0      # one buffer, the median taken in place
    for s in range(0, n, block):
        d2 = sq[s:s + block, None] + sq[None, :] - 2.0 * r[s:s + block] @ r.T
        i = np.arange(s, min(s + block, n))[:, None]
        upper = np.sqrt(np.clip(d2, 0.0, None))[np.arange(n)[None, :] > i]
        distances[filled:filled + upper.size] = upper
        filled += upper.size
    h = float(np.median(distances, overwrite_input=True))
    if not h > 0:
        raise ValueError("reference rows are all identical: no bandwidth for the kernel")
    return h


def _gauss(a, b, sq_a, sq_b, h):
    """``exp(-|a_i - b_j|^2 / (2 h^2))`` ``[len(a), len(b)]``, built in place in one buffer."""
    k = a @ b.T
    k *= -2.0
    k += sq_a[:, None]
    k += sq_b[None, :]
    np.clip(k, 0.0, None, out=k)
    k *= -1.0 / (2.0 * h * h)
    return np.exp(k, out=k)


def paired_mmd_difference(candidate, base, reference, bandwidth: float | None, block: int = 64, kernel=None):
    """``(MMD^2(C, R) - MMD^2(B, R), se)`` of three paired sample sets ``[n, ...]`` (row ``i`` of
    each from the same noise) with the Gaussian kernel of ``bandwidth`` (module docstring: the
    U-statistic over distinct rows and its closed-form row jackknife), or with ``kernel(a, b) ->
    [len(a), len(b)]`` on the flattened rows instead (``bandwidth`` None).  Each block's
    kernel terms are summed in place, so about two ``[block, n]`` float64 buffers live at once (4
    MiB at 4,096 rows; a temporary for every term would hold 16 MiB)."""
    c, b, r = _flat("candidate", candidate), _flat("base", base), _flat("reference", reference)
    if not c.shape == b.shape == r.shape:
        raise ValueError(f"candidate, base and reference must have the same shape [n, ...] (paired rows), "
                         f"got {c.shape}, {b.shape} and {r.shape}")
    n = c.shape[0]
    if n < 4:
        raise ValueError(f"the paired MMD needs at least 4 rows, got {n}")
    sets = (c, b, r)
    if kernel is None:
        if not (bandwidth is not None and np.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth must be finite and > 0, got {bandwidth!r}")
        norms = [np.einsum("ij,ij->i", a, a) for a in sets]    # once, not a full temporary a call
        k = lambda i, e, j: _gauss(sets[i][e], sets[j], norms[i][e], norms[j], bandwidth)  # noqa: E731
    else:
        k = lambda i, e, j: kernel(sets[i][e], sets[j])  # noqa: E731
    rows = np.zeros(n)          # row sums of H = h_C - h_B, diagonal excluded
    for s in range(0, n, block):
        e = slice(s, min(s + block, n))     # k(i, e, j): set i's rows e against every row of set j
        # h_C(i, j) - h_B(i, j) for i in the block, all j, summed in place (one more block at a time)
        h = np.array(k(0, e, 0), np.float64)    # our own float64 buffer, whatever a kernel returns
        h -= k(1, e, 1)
        h -= k(0, e, 2)
        h += k(1, e, 2)
        h -= k(2, e, 0)
        h += k(2, e, 1)
        idx = np.arange(e.start, e.stop)
        h[idx - s, idx] = 0.0
        rows[e] = h.sum(1)
    total = rows.sum()
    value = total / (n * (n - 1))
    loo = (total - 2.0 * rows) / ((n - 1) * (n - 2))      # row i deleted from all three sets
    se = np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    return float(value), float(se)


def clip_to_reference(reference, tail: float = 1e-3):
    """``(lo, hi)``: the ``tail`` and ``1 - tail`` quantiles of the reference's values, the range
    its samples occupy (a user stores samples in the data's range; this is the model's own word
    for that range, so no data format is assumed)."""
    r = _flat("reference", reference)
    if not 0.0 <= tail < 0.5:
        raise ValueError(f"tail must be in [0, 0.5), got {tail!r}")
    lo, hi = np.quantile(r, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _clipped(name: str, a, lo: float, hi: float) -> np.ndarray:
    """``a`` flattened, as one float64 copy of its own clipped in place (at 4,096 digits rows a
    copy is 25 MiB, so a second one for the clip would count)."""
    x = _flat(name, np.array(a, np.float64))
    return np.clip(x, lo, hi, out=x)


def _clipped_sets(candidate, base, reference, tail: float):
    """The three sample sets flattened, each a float64 copy clipped to the reference's range."""
    lo, hi = clip_to_reference(reference, tail)
    return tuple(_clipped(name, a, lo, hi) for name, a in
                 (("candidate", candidate), ("base", base), ("reference", reference)))


def reference_mmd(candidate, base, reference, tail: float = CLIP_TAIL,
                  bandwidth_scale: float = BANDWIDTH_SCALE) -> tuple[float, float]:
    """The judge ``compare(candidate, base, reference) -> (difference, se)`` of the fit's quality
    guard (x1000; negative: the candidate is closer to the reference in distribution).

    All three sets are clipped to the reference's range (:func:`clip_to_reference`), then
    compared by :func:`paired_mmd_difference` with ``bandwidth_scale`` times the median distance
    between reference samples.  Both choices were made on the digits model (docs/iia.md): on
    raw samples, or with the full median bandwidth, the MMD is dominated by the base samplers'
    overshoot beyond the data range and by coarse layout, and preferred IIA where
    ``digits_score`` found it clearly worse (dpmpp_2m at NFE 5, Karras)."""
    if not bandwidth_scale > 0:
        raise ValueError(f"bandwidth_scale must be > 0, got {bandwidth_scale!r}")
    return _mmd_of_clipped(*_clipped_sets(candidate, base, reference, tail), bandwidth_scale)


def _mmd_of_clipped(c, b, r, bandwidth_scale: float):
    d, se = paired_mmd_difference(c, b, r, bandwidth_scale * median_bandwidth_of(r))
    return 1000.0 * d, 1000.0 * se


def _spread_loo(x: np.ndarray):
    """``s(x)`` (RMS over values of the deviation from the mean row) and its ``n`` leave-one-out
    values, from sums over rows and values (no second ``[n, d]`` array): deleting row ``i``
    leaves ``sum_j [S2_j - x_ij^2 - (S1_j - x_ij)^2 / (n - 1)] / (n - 2)`` over the ``d`` values."""
    n, d = x.shape
    s1 = x.sum(0)
    s2_total, s1_sq = float(np.einsum("ij,ij->", x, x)), float(s1 @ s1)
    q, cross = np.einsum("ij,ij->i", x, x), x @ s1          # per row: sum x_ij^2, sum x_ij S1_j
    full = np.sqrt((s2_total - s1_sq / n) / ((n - 1) * d))
    without = (s2_total - q - (s1_sq - 2.0 * cross + q) / (n - 1)) / ((n - 2) * d)
    return full, np.sqrt(np.clip(without, 0.0, None))


def _deficit_of_clipped(c, b, r):
    n = c.shape[0]
    if not c.shape == b.shape == r.shape:
        raise ValueError(f"candidate, base and reference must have the same shape [n, ...] (paired rows), "
                         f"got {c.shape}, {b.shape} and {r.shape}")
    if n < 4:
        raise ValueError(f"the spread deficit needs at least 4 rows, got {n}")
    (sc, c_loo), (sb, b_loo), (sr, r_loo) = (_spread_loo(x) for x in (c, b, r))
    loo = 1.0 - c_loo / np.minimum(b_loo, r_loo)
    se = np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    return float(1.0 - sc / min(sb, sr)), float(se)


def spread_deficit(candidate, base, reference, tail: float = CLIP_TAIL) -> tuple[float, float]:
    """``(1 - s(C) / min(s(B), s(R)), se)``: how much less the candidate's samples spread around
    their mean than the reference's, or than the base's where those spread less still (module
    docstring, "The spread floor").  All three clipped to the reference's range
    (:func:`clip_to_reference`); rows paired, se by the row jackknife (row ``i`` deleted from all
    three).  Positive: the candidate is flatter than that floor."""
    return _deficit_of_clipped(*_clipped_sets(candidate, base, reference, tail))


def reference_verdict(candidate, base, reference, tolerance: float = SPREAD_TOLERANCE) -> tuple[float, float]:
    """The default judge of the fit's quality guard: ``(z, 1.0)`` with ``z`` the larger of the
    z-scores of :func:`reference_mmd` (the distribution, difference / se) and of the spread floor
    (``(spread_deficit - tolerance) / se``).  ``z > 1`` (the guard's bar) where either view finds the
    candidate worse than the base; negative where both find it better or within the tolerance.  A
    view with se 0 (the candidate is the base: nothing to tell apart) counts as 0.  The samples
    are clipped once for both views."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    sets = _clipped_sets(candidate, base, reference, CLIP_TAIL)
    f, f_se = _deficit_of_clipped(*sets)
    d, se = _mmd_of_clipped(*sets, BANDWIDTH_SCALE)
    z = (d / se if se > 0 else 0.0, (f - tolerance) / f_se if f_se > 0 else 0.0)
    return float(max(z)), 1.0


def distance_z(candidate, base, reference) -> float:
    """The distribution view of :func:`reference_verdict` alone, as a z-score (difference / se of
    :func:`reference_mmd`; 0 where the se is 0, the candidate being the base): how the guard ranks
    two selections that both pass (:data:`iia_jax.iia.config.IN_ORDER_JUDGE`).  The verdict itself
    is no score for that: its spread floor is a veto, and a correction a little flatter than the
    floor's tolerance allows would rank below one that barely changes the base."""
    d, se = reference_mmd(candidate, base, reference)
    return float(d / se) if se > 0 else 0.0


def feature_mmd(candidate, base, reference, features) -> tuple[float, float]:
    """``(MMD^2(C, R) - MMD^2(B, R), se)`` x1000 in learned features: ``features(samples [n, ...])
    -> [n, F]`` (e.g. a classifier's penultimate layer, an Inception embedding), KID's cubic kernel
    ``(a b / F + 1)^3`` (Binkowski et al. 2018, "Demystifying MMD GANs"), the paired U-statistic
    and row jackknife of :func:`paired_mmd_difference`.  Negative: the candidate is closer to the
    reference.

    Why a user would pass it (:func:`iia_jax.iia.config.feature_judge`): on the digits model three
    losses of IIA are invisible to :func:`reference_mmd` and to every model-agnostic distance tried
    (only the spread floor of :func:`reference_verdict` names them), yet plain in the features of a
    network trained on digits (docs/iia.md, "A quality guard with no model-specific judge")."""
    f = {name: _flat(name, features(a)) for name, a in (("candidate", candidate), ("base", base),
                                                         ("reference", reference))}
    d, se = paired_mmd_difference(f["candidate"], f["base"], f["reference"], None, kernel=polynomial_kernel)
    return 1000.0 * d, 1000.0 * se

