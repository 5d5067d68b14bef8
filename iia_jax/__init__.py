"""iia_jax: improved integration approximation (IIA) for diffusion ODE samplers in JAX.

Core: :func:`plan` pairs a solver with a sigma grid, :func:`sample` integrates the
probability-flow ODE with one ``lax.scan``.  See DESIGN.md and docs/ for the maths.
"""
from . import models, schedules, solvers
from .sampling import Plan, plan, sample

__version__ = "0.1.0"

__all__ = ["Plan", "plan", "sample", "models", "schedules", "solvers", "__version__"]
