"""Step plans and the base sampler: one ``lax.scan`` over the steps of a plan."""
from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from . import solvers, validate
from .rows import batch_sharding, check_cond, shard_rows

__all__ = ["Plan", "plan", "sample", "initial_noise", "integrate", "run_steps", "check_state",
           "bind_condition", "grid_fingerprint", "check_plan", "to_compute_dtype"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A solver name (static) and its sigma grid ``[N + 1]`` (a leaf, strictly decreasing to 0).

    ``fingerprint`` (static) names the grid: solver, steps and a hash of the sigmas, computed by
    :func:`plan` from concrete values (None for a plan built inside a trace).  Because it is
    static it survives ``jax.jit``, so coefficients fitted for another grid are refused at trace
    time even when the plan and the coefficients are traced arguments.

    A hand-built ``Plan(sigmas, solver)`` is checked like :func:`plan`'s (:func:`iia_jax.validate.sigmas`)
    whenever its sigmas are a concrete 1-D array, and a given ``fingerprint`` must be the one of
    its grid.  Other leaves (tracers, the placeholders of pytree utilities) pass unchecked.
    """

    sigmas: jax.Array
    solver: str = dataclasses.field(metadata=dict(static=True))
    fingerprint: str | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        solvers.get(self.solver)
        if self.fingerprint is not None and not isinstance(self.fingerprint, str):
            raise TypeError(f"fingerprint must be a string or None, got {type(self.fingerprint).__name__}")
        s = self.sigmas
        # jax rebuilds a Plan from whatever leaves a transformation holds (tracers, batched
        # arrays, placeholders); only a concrete 1-D grid is a grid to check here.
        if not isinstance(s, (np.ndarray, jax.Array)) or validate.is_traced(s) or s.ndim != 1:
            return
        if not jnp.issubdtype(s.dtype, jnp.floating):
            raise TypeError(f"sigmas must be a floating-point array, got dtype {s.dtype}; "
                            "iia_jax.plan(solver, sigmas) converts them to float32")
        validate.sigmas(s)
        if self.fingerprint is not None and self.fingerprint != grid_fingerprint(self.solver, s):
            raise ValueError(f"fingerprint {self.fingerprint!r} is not the one of these sigmas "
                             f"({grid_fingerprint(self.solver, s)!r}); build plans with "
                             "iia_jax.plan(solver, sigmas), or pass fingerprint=None")

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1

    @property
    def nfe(self) -> int:
        """Network evaluations of one sampling run."""
        return solvers.get(self.solver).nfe(self.num_steps)

    def __repr__(self):
        return f"Plan(solver={self.solver!r}, num_steps={self.num_steps}, nfe={self.nfe})"


def grid_fingerprint(solver: str, sigmas) -> str:
    """``"solver:N:hash"`` of a concrete grid: the SHA-256 of its float32 sigmas, 16 hex digits."""
    s = np.ascontiguousarray(np.asarray(sigmas, np.float32))
    return f"{solver}:{s.shape[0] - 1}:{hashlib.sha256(s.tobytes()).hexdigest()[:16]}"


def plan(solver: str, sigmas) -> Plan:
    """Pair a solver name with a sigma grid (``num_steps + 1`` values ending in 0)."""
    solvers.get(solver)
    if validate.is_traced(sigmas):
        # No fingerprint: the values are unknown.  Coefficients that carry one are refused with
        # such a plan (iia_jax.iia.check_coefficients), so the grid check is never skipped.
        validate.sigmas(sigmas)
        return Plan(sigmas, solver)
    host = np.asarray(sigmas, np.float32)   # concrete: checked (after rounding) and hashed on the host
    validate.sigmas(host)
    return Plan(jnp.asarray(host), solver, grid_fingerprint(solver, host))


def check_state(x_T, name: str = "x_T") -> None:
    """Samples are float arrays with a leading batch axis (:func:`iia_jax.validate.state`)."""
    validate.state(x_T, name)


def to_compute_dtype(x_T):
    """``x_T`` in the dtype the ODE runs in (float32 for float16/bfloat16, see
    :mod:`iia_jax.validate`), and the dtype to return results in: ``x_T``'s as JAX holds it
    (float64 becomes float32 without ``jax_enable_x64``)."""
    dtype = jax.dtypes.canonicalize_dtype(x_T.dtype)
    compute = validate.compute_dtype(dtype)
    return (x_T if x_T.dtype == compute else x_T.astype(compute)), dtype


def initial_noise(key, plan: Plan, shape, vp: bool = False, dtype=jnp.float32):
    """``x_T`` in sigma-space for ``plan``: ``sigma_max * N(0, I)`` for VE/EDM models, and
    ``sqrt(1 + sigma_max^2) * N(0, I)`` for VP models (the image of ``x_T ~ N(0, I)``)."""
    sigma_max = plan.sigmas[0].astype(dtype)
    scale = jnp.sqrt(1.0 + sigma_max ** 2) if vp else sigma_max
    return scale * jax.random.normal(key, tuple(shape), dtype)


def check_plan(p) -> solvers.Solver:
    """The solver of a :class:`Plan`; refuses anything that is not one."""
    if not isinstance(p, Plan):
        raise TypeError(f"plan must be an iia_jax.Plan (use iia_jax.plan(solver, sigmas)), got "
                        f"{type(p).__name__}")
    validate.sigmas(p.sigmas, "plan.sigmas")
    return solvers.get(p.solver)


def run_steps(body, carry, sigmas, unroll: int | bool = 1):
    """Scan ``body(carry, index, sigma, sigma_next, final) -> (carry, out)`` over a grid.

    The steps before the last go through one ``lax.scan`` (``unroll``: as ``lax.scan``'s); the
    final step, to ``sigmas[-1]``, runs once after it with ``final=True`` (a static flag).
    Outputs are stacked over all steps.
    """
    n = sigmas.shape[0] - 1
    index = jnp.arange(n - 1)

    def scan_body(c, xs):
        return body(c, *xs, False)

    carry, outs = jax.lax.scan(scan_body, carry, (index, sigmas[:-2], sigmas[1:-1]), unroll=unroll)
    carry, last = body(carry, jnp.asarray(n - 1), sigmas[-2], sigmas[-1], True)
    return carry, jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[None]]), outs, last)


def _base_body(denoiser, solver, trajectory):
    def body(carry, index, sigma, sigma_next, final):
        state, x = carry
        state, x_next, denoised = solver.step(denoiser, state, x, sigma, sigma_next, final)
        return (state, x_next), (x_next if trajectory else None, jnp.all(jnp.isfinite(denoised)))
    return body


def integrate(denoiser, solver, sigmas, x, ends_at_zero: bool):
    """Run ``solver`` from a fresh state over ``sigmas`` and return the end state.

    ``ends_at_zero`` (static) says whether the last step goes to sigma = 0 (and so is final).
    """
    body = _base_body(denoiser, solver, False)
    carry = (solver.init(x), x)
    if ends_at_zero:
        return run_steps(body, carry, sigmas)[0][1]
    index = jnp.arange(sigmas.shape[0] - 1)
    (_, x), _ = jax.lax.scan(lambda c, xs: body(c, *xs, False), carry, (index, sigmas[:-1], sigmas[1:]))
    return x


def bind_condition(denoiser, cond):
    """``D(x, sigma)`` from a conditional ``D(x, sigma, cond)`` with its rows of ``cond`` fixed;
    the denoiser itself when ``cond`` is None."""
    if cond is None:
        return denoiser
    return lambda x, sigma: denoiser(x, sigma, cond)


def sample(denoiser, plan: Plan, x_T, return_trajectory: bool = False, check_finite: bool = False,
           *, cond=None, mesh=None, batch_axis="data"):
    """Integrate the probability-flow ODE from ``x_T`` (already in sigma-space) along ``plan``.

    ``cond`` (a pytree of arrays with a leading axis of ``x_T``'s rows: labels, embeddings) is
    handed to a conditional denoiser as ``D(x, sigma, cond)``; leave it None for ``D(x, sigma)``.
    A batch sharded along its rows stays sharded (the steps are elementwise over rows);
    ``mesh``/``batch_axis`` shard a host batch (and ``cond``) along that mesh axis for you.

    Returns the samples ``x_0`` (and, with ``return_trajectory``, the states at every sigma,
    ``[N + 1, *x_T.shape]`` with ``x_T`` first).  Jittable: ``jax.jit(sample, static_argnums=0)``,
    a closure over the denoiser, or a denoiser that is itself a pytree (``jax.tree_util.Partial``).

    ``check_finite=True`` raises a ValueError naming the first step whose denoiser output was
    NaN/Inf; it needs concrete values, so use it outside ``jax.jit`` (inside, it is refused at
    trace time with a message).  A float16/bfloat16 ``x_T`` is integrated in float32 and the
    result returned in its dtype; an empty batch returns empty arrays (:mod:`iia_jax.validate`).
    """
    solver = check_plan(plan)
    check_state(x_T)
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable D(x, sigma), got {type(denoiser).__name__}")
    check_cond(cond, x_T.shape[0])
    x_T, cond = shard_rows((x_T, cond), batch_sharding(x_T, mesh, batch_axis) if mesh else None)
    denoiser = bind_condition(denoiser, cond)
    x_T, out_dtype = to_compute_dtype(x_T)
    sigmas = plan.sigmas.astype(x_T.dtype)
    (_, x0), (traj, finite) = run_steps(_base_body(denoiser, solver, return_trajectory),
                                        (solver.init(x_T), x_T), sigmas)
    if check_finite:
        raise_if_not_finite(finite, sigmas)
    if return_trajectory:
        return x0.astype(out_dtype), jnp.concatenate([x_T[None], traj]).astype(out_dtype)
    return x0.astype(out_dtype)


def raise_if_not_finite(finite, sigmas, what: str = "the denoiser"):
    """Raise a ValueError naming the first step whose outputs were not finite (concrete values
    only: inside a trace the check is refused with a message saying what to do instead)."""
    finite = validate.concrete(finite, "check_finite=True",
                               "call it outside jax.jit (it runs one compiled lax.scan anyway), or "
                               "leave check_finite off and test jnp.isfinite on the result")
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"{what} returned NaN or Inf at step {i} (sigma={float(sigmas[i]):.6g}); "
                         "check the model and its inputs")


