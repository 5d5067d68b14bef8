"""IIA: improved integration approximation (Zhang, Niwa & Kleijn, ICLR 2024)."""
from .coefficients import Coefficients, check_coefficients
from .config import IN_ORDER_JUDGE, REFERENCE_JUDGE, FitConfig, Judge, feature_judge
from .features import DEFAULT_PRESET, DEFAULT_TARGET, PRESET_SOLVERS, FeatureSpec, feature_spec
from .fit import FitReport, FitResult, fit
from .grid import PlanFit, PlanReport, fit_plan
from .sample import iia_sample
from .solve import MatchedSolve, PlainSolve
from .storage import load_coefficients, save_coefficients

__all__ = ["Coefficients", "FitConfig", "Judge", "REFERENCE_JUDGE", "IN_ORDER_JUDGE", "feature_judge", "PlainSolve", "MatchedSolve", "FitReport",
           "FitResult", "FeatureSpec", "feature_spec", "fit",
           "fit_plan", "PlanFit", "PlanReport",
           "iia_sample", "save_coefficients", "load_coefficients", "check_coefficients",
           "DEFAULT_PRESET", "DEFAULT_TARGET", "PRESET_SOLVERS"]
