"""The fitted IIA coefficients and the checks that tie them to a plan."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .. import solvers, validate
from ..sampling import Plan
from .features import PRESET_SOLVERS, feature_spec

FIT_MODES = ("teacher_forced", "sequential")
TARGETS = ("local", "trajectory")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Coefficients:
    """IIA coefficients ``values [N, K]`` for one plan, plus what they were fitted for.

    A pytree: ``values`` and ``sigmas`` are leaves; the rest is static metadata (docs/design.md §4).
    ``kept[i]`` is False where the never-worse check zeroed step i.  ``plan_fingerprint`` is the
    fitted plan's :attr:`~iia_jax.Plan.fingerprint`: static, so checked even under ``jax.jit``.
    ``match_spread``: fitted with the spread-preserving least squares (``fit(match_spread=True)``).

    The static fields are checked on construction (types and domains, numpy integers taken as
    ints, :func:`_static_fields`); how they fit a plan is :func:`check_coefficients`'s job.
    """

    values: jax.Array
    sigmas: jax.Array
    kept: jax.Array
    solver: str = dataclasses.field(metadata=dict(static=True))
    preset: str = dataclasses.field(metadata=dict(static=True))
    history: int = dataclasses.field(metadata=dict(static=True))
    fine_steps: int = dataclasses.field(metadata=dict(static=True))
    mode: str = dataclasses.field(metadata=dict(static=True))
    target: str = dataclasses.field(metadata=dict(static=True))
    batch_size: int = dataclasses.field(metadata=dict(static=True))
    fingerprint: str | None = dataclasses.field(default=None, metadata=dict(static=True))
    guidance_scale: float | None = dataclasses.field(default=None, metadata=dict(static=True))
    version: str = dataclasses.field(default="", metadata=dict(static=True))
    plan_fingerprint: str | None = dataclasses.field(default=None, metadata=dict(static=True))
    match_spread: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def __post_init__(self):
        for name, value in _static_fields(self).items():
            object.__setattr__(self, name, value)   # normalised (e.g. numpy ints to int)

    @property
    def num_steps(self) -> int:
        return int(self.values.shape[0])

    def metadata(self) -> dict:
        """The static fields, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("static")}

    def __repr__(self):
        return (f"Coefficients(solver={self.solver!r}, preset={self.preset!r}, history={self.history}, "
                f"steps={self.num_steps}, features={self.values.shape[1]}, mode={self.mode!r}, "
                f"target={self.target!r}, kept={int(np.sum(np.asarray(self.kept)))}/{self.num_steps})")


def _optional_str(value, name):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"Coefficients.{name} must be a string or None, got {type(value).__name__}")
    return value


def _choice(value, name, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"Coefficients.{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _static_fields(c: Coefficients) -> dict:
    """The static fields of ``c``, checked and normalised; a ValueError/TypeError names the field."""
    solvers.get(c.solver)
    scale = c.guidance_scale
    if scale is not None:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer,
                                                                         np.floating)):
            raise TypeError(f"Coefficients.guidance_scale must be a number or None, got "
                            f"{type(scale).__name__}")
        if not np.isfinite(scale):
            raise ValueError(f"Coefficients.guidance_scale must be finite, got {scale!r}")
        scale = float(scale)
    if not isinstance(c.version, str):
        raise TypeError(f"Coefficients.version must be a string, got {type(c.version).__name__}")
    if not isinstance(c.match_spread, (bool, np.bool_)):
        raise TypeError(f"Coefficients.match_spread must be True or False, got {c.match_spread!r}")
    return dict(
        solver=c.solver,
        preset=_choice(c.preset, "preset", sorted(PRESET_SOLVERS)),
        history=validate.integer(c.history, "Coefficients.history", 0),
        fine_steps=validate.integer(c.fine_steps, "Coefficients.fine_steps", 1),
        mode=_choice(c.mode, "mode", FIT_MODES),
        target=_choice(c.target, "target", TARGETS),
        batch_size=validate.integer(c.batch_size, "Coefficients.batch_size", 0),
        fingerprint=_optional_str(c.fingerprint, "fingerprint"),
        guidance_scale=scale,
        version=c.version,
        plan_fingerprint=_optional_str(c.plan_fingerprint, "plan_fingerprint"),
        match_spread=bool(c.match_spread))


def _concrete(a):
    return not validate.is_traced(a)


def check_coefficients(coeffs, plan: Plan, denoiser=None):
    """Refuse coefficients fitted for another plan, preset shape or guidance scale.

    Returns the :class:`~iia_jax.iia.features.FeatureSpec` the coefficients were fitted with.
    """
    if not isinstance(coeffs, Coefficients):
        raise TypeError(f"coeffs must be iia_jax.Coefficients, got {type(coeffs).__name__}")
    if coeffs.solver != plan.solver:
        raise ValueError(f"coeffs were fitted for solver {coeffs.solver!r}, but the plan uses "
                         f"solver {plan.solver!r}")
    if coeffs.num_steps != plan.num_steps or coeffs.sigmas.shape != plan.sigmas.shape:
        raise ValueError(f"coeffs were fitted for num_steps={coeffs.num_steps}, but the plan has "
                         f"num_steps={plan.num_steps}")
    if _concrete(coeffs.sigmas) and _concrete(plan.sigmas):
        a, b = np.asarray(coeffs.sigmas, np.float64), np.asarray(plan.sigmas, np.float64)
        if not np.allclose(a, b, rtol=1e-6, atol=0.0):
            i = int(np.argmax(~np.isclose(a, b, rtol=1e-6, atol=0.0)))
            raise ValueError(f"coeffs were fitted for other sigmas: sigmas[{i}]={a[i]:.6g} in the "
                             f"coefficients, {b[i]:.6g} in the plan")
    # Static, so this also refuses a mismatch inside jit, where the sigmas are traced.
    fitted, given = coeffs.plan_fingerprint, getattr(plan, "fingerprint", None)
    if fitted is not None and given is not None and fitted != given:
        raise ValueError(f"coeffs were fitted for the grid {fitted!r}, but the plan is {given!r} "
                         "(solver:steps:hash of the sigmas); fit again for this plan")
    # A plan built from traced sigmas has no fingerprint and its values are unknown: nothing could
    # compare the grids, so fingerprinted coefficients are refused rather than trusted.
    if fitted is not None and given is None and not _concrete(plan.sigmas):
        raise ValueError(
            f"coeffs were fitted for the grid {fitted!r}, but the plan's sigmas are traced (a plan "
            "built inside jax.jit has no fingerprint), so the grid cannot be checked; build the plan "
            "outside jit and pass it in (its fingerprint is static), or, to use these coefficients "
            "with any grid of this size, drop their fingerprint: "
            "dataclasses.replace(coeffs, plan_fingerprint=None)")
    spec = feature_spec(coeffs.solver, coeffs.preset, coeffs.history)
    if coeffs.values.shape != (plan.num_steps, spec.num_features):
        raise ValueError(f"coeffs values have shape {coeffs.values.shape}, but preset "
                         f"{coeffs.preset!r} with history={coeffs.history} needs "
                         f"{(plan.num_steps, spec.num_features)}")
    scale = getattr(denoiser, "guidance_scale", None)
    if denoiser is not None and scale != coeffs.guidance_scale:
        raise ValueError(f"coeffs were fitted with guidance_scale={coeffs.guidance_scale}, but the "
                         f"denoiser has guidance_scale={scale}; fit again for this scale")
    return spec
