"""iia_jax: improved integration approximation (IIA) for diffusion ODE samplers in JAX.

Core: :func:`plan` pairs a solver with a sigma grid, :func:`sample` integrates the
probability-flow ODE with one ``lax.scan``.  IIA: :func:`fit` finds per-step coefficients by
closed-form least squares, :func:`iia_sample` uses them, :func:`save_coefficients` and
:func:`load_coefficients` store them with orbax; :func:`fit_plan` fits the step grid with them.  See docs/design.md for the maths and the layout.
"""
__version__ = "0.1.0"

from . import metrics, models, nets, pretrained, schedules, solvers  # noqa: E402
from .iia import (Coefficients, FitConfig, FitReport, FitResult, Judge, MatchedSolve,  # noqa: E402
                  PlainSolve, PlanFit, feature_judge, fit, fit_plan, iia_sample, load_coefficients,
                  save_coefficients)
from .sampling import Plan, initial_noise, plan, sample  # noqa: E402

__all__ = ["Plan", "plan", "sample", "initial_noise", "fit", "fit_plan", "iia_sample", "save_coefficients",
           "load_coefficients", "Coefficients", "FitConfig", "Judge", "feature_judge", "PlainSolve", "MatchedSolve",
           "FitResult", "FitReport", "PlanFit", "metrics", "models", "nets", "pretrained",
           "schedules", "solvers",
           "__version__"]
