"""Measurement: ODE error against a finer integration, and the digits Fréchet distance."""
from .fd import (GaussianStats, corrupt_blur, corrupt_noise, digits_fd, digits_fd_sanity,
                 digits_features, digits_reference_stats, fd_from_features, frechet_distance,
                 gaussian_stats)
from .ode import ODEError, ode_error, per_sample_rms

__all__ = ["ODEError", "ode_error", "per_sample_rms", "GaussianStats", "gaussian_stats",
           "frechet_distance", "fd_from_features", "digits_features", "digits_reference_stats",
           "digits_fd", "digits_fd_sanity", "corrupt_noise", "corrupt_blur"]
