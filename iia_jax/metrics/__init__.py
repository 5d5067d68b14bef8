"""Measurement: ODE error against a finer integration, and the digits Fréchet distance."""
from .ode import ODEError, ode_error, per_sample_rms

__all__ = ["ODEError", "ode_error", "per_sample_rms"]
