"""The fitted IIA coefficients and the checks that tie them to a plan."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ..sampling import Plan
from .features import feature_spec

FIT_MODES = ("teacher_forced", "sequential")
TARGETS = ("local", "trajectory")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Coefficients:
    """IIA coefficients ``values [N, K]`` for one plan, plus what they were fitted for.

    A pytree: ``values`` and ``sigmas`` are leaves; the rest is static metadata (DESIGN.md §4).
    ``kept[i]`` is False where the never-worse check zeroed step i.  ``plan_fingerprint`` is the
    fitted plan's :attr:`~iia_jax.Plan.fingerprint`: static, so checked even under ``jax.jit``.
    ``match_spread``: fitted with the spread-preserving least squares (``fit(match_spread=True)``).
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


def _concrete(a):
    return not isinstance(a, jax.core.Tracer)


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
