"""Measurement: ODE error against a finer integration, and digits sample quality.

The headline digits quality number is :func:`digits_score` (validated on ladders of known order,
``docs/metrics.md``); :func:`digits_quality` gives it with its error bar and the independent
judges. The classifier FD of :mod:`iia_jax.metrics.fd` is kept for comparison only.
"""
from .fd import (GaussianStats, corrupt_blur, corrupt_noise, digits_fd, digits_fd_sanity,
                 digits_features, digits_reference_stats, fd_from_features, frechet_distance,
                 gaussian_stats)
from .ode import ODEError, ode_error, per_sample_rms
from .quality import (bootstrap_std, contrast_ratio, density_coverage, digits_check, digits_quality,
                      digits_score,
                      digits_split, inception_score, judge_features, kid, pixel_mmd, precision_recall,
                      quantize_digits, score_difference)

__all__ = ["ODEError", "ode_error", "per_sample_rms", "GaussianStats", "gaussian_stats",
           "frechet_distance", "fd_from_features", "digits_features", "digits_reference_stats",
           "digits_fd", "digits_fd_sanity", "corrupt_noise", "corrupt_blur",
           "digits_score", "digits_quality", "digits_split", "quantize_digits", "judge_features", "kid",
           "pixel_mmd", "precision_recall", "density_coverage", "inception_score", "contrast_ratio",
           "bootstrap_std", "score_difference", "digits_check"]
