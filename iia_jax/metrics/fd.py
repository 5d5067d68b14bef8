"""Fréchet distance between Gaussians fitted to features; the old digits FD.

**Not the headline any more.** The digits FD below (shipped-classifier features, samples clipped
but not quantised, the classifier's own training digits as reference) ranks samplers wrongly: it
scores over-contrasted samples better than the exact ODE solution and the fine reference far
below real held-out digits, and it fails the contrast and real-vs-real ladders of
``docs/metrics.md``. Use :func:`iia_jax.metrics.digits_score` (:mod:`iia_jax.metrics.quality`);
the functions here stay for the Fréchet distance itself (used there on judge features) and for
the comparison in ``benchmarks/metric_ladders.py``.

For feature sets with means ``mu_1, mu_2`` and covariances ``S_1, S_2`` (FID, Heusel
et al. 2017):

    FD = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2}).

The trace term equals ``tr((S_1 S_2)^{1/2})`` but is computed on the symmetric PSD
matrix ``S_1^{1/2} S_2 S_1^{1/2}``: both square roots come from ``numpy.linalg.eigh``
in float64 with negative round-off eigenvalues clipped to 0, so there is no complex
``sqrtm`` and no NaN for singular (rank-deficient) covariances.

**Digits FD** (docs/design.md §5): the features are the penultimate layer of the shipped
classifier (:func:`iia_jax.pretrained.digits_classifier`), the reference statistics
those of the 1,497 ``"train"`` digits (computed once, cached). The estimate is
biased upwards for small sample counts, so compare numbers at equal ``n``:
:func:`digits_fd_sanity` reports the floor (the 300 held-out ``"test"`` digits) and
ceilings (the same images heavily noised or blurred) to read a model's FD against.
Because the classifier was trained on the ``"train"`` digits, 300 of *those* score
below the held-out floor (about half of it).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

__all__ = [
    "GaussianStats",
    "gaussian_stats",
    "frechet_distance",
    "fd_from_features",
    "digits_features",
    "apply_in_batches",
    "digits_reference_stats",
    "digits_fd",
    "digits_fd_sanity",
    "corrupt_noise",
    "corrupt_blur",
]


class GaussianStats(NamedTuple):
    """Mean ``[F]``, covariance ``[F, F]`` (float64) and sample count of a feature set."""

    mu: np.ndarray
    cov: np.ndarray
    n: int


def gaussian_stats(features) -> GaussianStats:
    """Fit a Gaussian to ``features [N, F]`` (unbiased covariance, ``N >= 2``)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, F] with N >= 2; got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or Inf")
    return GaussianStats(f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), f.shape[0])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Fréchet distance between ``N(a.mu, a.cov)`` and ``N(b.mu, b.cov)`` (see module doc)."""
    mu1, mu2 = np.asarray(a.mu, np.float64), np.asarray(b.mu, np.float64)
    s1, s2 = np.asarray(a.cov, np.float64), np.asarray(b.cov, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, cov {s1.shape} vs {s2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_covmean = float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)


def fd_from_features(f1, f2) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N1, F]``, ``[N2, F]``."""
    return frechet_distance(gaussian_stats(f1), gaussian_stats(f2))


# --------------------------------------------------------------------------- digits


def digits_features(images, batch_size: int = 500) -> np.ndarray:
    """Penultimate features ``[N, F]`` of the shipped classifier for ``images [N, 8, 8, 1]``.

    Images are clipped to ``[-1, 1]`` first (samples may overshoot slightly), as
    FID pipelines clip when quantising to 8 bits.
    """
    from ..pretrained import digits_classifier

    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (8, 8, 1):
        raise ValueError(f"digits images must be [N, 8, 8, 1]; got shape {np.shape(images)}")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
        raise ValueError(f"{bad} of {len(x)} images contain NaN or Inf")
    return apply_in_batches(digits_classifier().features, np.clip(x, -1.0, 1.0), batch_size)


def apply_in_batches(fn, images, batch_size: int = 500) -> np.ndarray:
    """``fn`` over ``images [N, ...]`` in batches of ``batch_size``, float64 ``[N, ...]`` out.

    A short last batch is padded with copies of its last image, so ``fn`` compiles for one shape.
    """
    x = np.asarray(images, np.float32)
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        pad = batch_size - len(chunk) if len(x) > batch_size else 0
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(fn(chunk), np.float64)[: batch_size - pad])
    return np.concatenate(out)


@functools.lru_cache(maxsize=4)
def digits_reference_stats(split: str = "train") -> GaussianStats:
    """Statistics of the real digits of ``split`` in classifier-feature space (cached)."""
    from ..data import digits

    return gaussian_stats(digits_features(digits(split).images))


def digits_fd(samples, reference: str = "train") -> float:
    """Digits FD of ``samples [N, 8, 8, 1]`` (in ``[-1, 1]``) against the real ``reference`` split.

    Biased upwards for small ``N``; compare with :func:`digits_fd_sanity` at the same
    ``N`` (300 = the test split).
    """
    return frechet_distance(gaussian_stats(digits_features(samples)), digits_reference_stats(reference))


def corrupt_noise(images, std: float = 0.5, seed: int = 0) -> np.ndarray:
    """Add ``N(0, std^2)`` pixel noise and clip to ``[-1, 1]``."""
    x = np.asarray(images, np.float32)
    rng = np.random.default_rng(seed)
    return np.clip(x + std * rng.standard_normal(x.shape).astype(np.float32), -1.0, 1.0)


def corrupt_blur(images, sigma: float = 1.0) -> np.ndarray:
    """Separable Gaussian blur of ``[N, H, W, C]`` images (edge padding, radius ``ceil(2 sigma)``)."""
    x = np.asarray(images, np.float32)
    r = int(np.ceil(2 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    p = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    h, w = x.shape[1], x.shape[2]
    p = sum(k[i] * p[:, i : i + h, :, :] for i in range(2 * r + 1))
    return sum(k[j] * p[:, :, j : j + w, :] for j in range(2 * r + 1)).astype(np.float32)


def digits_fd_sanity(noise_std: float = 1.0, blur_sigma: float = 1.0, seed: int = 0) -> dict:
    """FD sanity report against the ``"train"`` statistics, all at ``n = 300``.

    Returns a dict:

    - ``floor``: the 300 held-out real ``"test"`` digits -- what a model that samples
      *new* digits from the data distribution scores at this ``n``;
    - ``train_subset``: 300 random ``"train"`` digits (mean of 3 draws). The classifier
      was trained on them, so this is lower than the floor: a model that reproduces
      training digits can score below the floor;
    - ``noise`` / ``blur``: the test digits with ``N(0, noise_std^2)`` pixel noise or a
      Gaussian blur of ``blur_sigma`` pixels (ceilings: clearly broken samples);
    - ``shuffled``: the test digits with their pixels randomly permuted (no digits at all).
    """
    from ..data import digits

    test = digits("test").images
    train = digits("train").images
    rng = np.random.default_rng(seed)
    shuffled = np.stack([img.reshape(-1)[rng.permutation(img.size)].reshape(img.shape) for img in test])
    subsets = [digits_fd(train[rng.permutation(len(train))[: len(test)]]) for _ in range(3)]
    return {
        "n": int(len(test)),
        "floor": digits_fd(test),
        "train_subset": float(np.mean(subsets)),
        "noise": digits_fd(corrupt_noise(test, noise_std, seed)),
        "blur": digits_fd(corrupt_blur(test, blur_sigma)),
        "shuffled": digits_fd(shuffled),
    }
