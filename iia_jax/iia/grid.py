"""Fitting the step grid together with the IIA coefficients (docs/design.md §4, "The fit is differentiable").

Given a grid ``sigma_max = s_0 > s_1 > ... > s_{N-1} >= sigma_min > s_N = 0``, the IIA
coefficients are a closed-form function of it (ridge normal equations), and so is the end-to-end
error at sigma = 0.  :func:`fit_plan` therefore optimises the grid by gradient descent through the fit:

* **Grid.**  ``N`` free parameters ``z`` give ``N`` positive weights: the ``N - 1`` log-sigma
  increments ``g_j = softplus(z_j)`` (``s_j -> s_{j+1}``, ``j < N - 1``) and a *slack*
  ``g_{N-1} = softplus(beta z_{N-1}) / beta`` (``beta = 4``), the log distance from ``s_{N-1}``
  down to ``sigma_min``.  With ``L = log(sigma_max / sigma_min)`` and ``G = sum_j g_j``::

      log s_i = log sigma_min + L sum_{j >= i} g_j / G,   i = 1 .. N - 1

  so ``log s_j - log s_{j+1} = L g_j / G`` and ``log(s_{N-1} / sigma_min) = L g_{N-1} / G``: any
  ``z in R^N`` gives a strictly decreasing grid from ``sigma_max`` whose last non-zero sigma is
  free in ``(sigma_min, sigma_max)`` (the normalisation leaves ``N - 1`` effective degrees of
  freedom, one a free sigma).  Grids that end above ``sigma_min`` (DDIM's quadratic grid in VP
  time) are reachable, and so is spending the last step on a long interval to 0 rather than on
  ``sigma_min -> 0``.  Near zero the slack's weight falls like ``exp(beta z) / beta``: Adam moves
  ``z`` by about its learning rate per step whatever the gradient's size, so ``beta`` lets a
  slack that starts tiny (a grid ending at ``sigma_min``) grow ``beta`` times faster in log.
  ``z`` starts from a fixed grid family (:func:`params_from_grid`).
* **Reference.**  One fine integration from the same noise (heun on ``reference_steps`` Karras
  steps) gives the ODE solution ``x*(sigma)`` at its nodes, the end point ``x*_0`` and the
  slopes ``dx/dlog sigma = x - D(x, sigma)``.  Between nodes ``x*`` is the cubic Hermite
  interpolant in ``log sigma`` (fourth order, and differentiable in sigma): the targets at any
  grid need no new model call.  The nodes run from ``sigma_max`` to ``sigma_min`` and every
  target sigma of a parametrised grid (``s_1 .. s_{N-1}``) lies in ``(sigma_min, sigma_max)``,
  so targets are interpolated, never extrapolated; the last step aims at ``x*_0``.
* **Objective.**  The IIA sampler on the grid with trajectory targets (docs/design.md §4): at step i,
  ``c_i`` solves the ridge normal equations for ``x*(s_{i+1}) - Phi(x_i)`` on the features of
  the *coefficient rows* (the final step aims at ``x*_0``), then every row moves to
  ``Phi(x_i) + c_i f_i``.  The loss is the mean over the other, *objective rows* of
  ``log |x_N - x*_0|^2`` (a smooth stand-in for the median error, which it tracks because
  the log discounts the few trajectories that switch modes); ``jax.grad`` differentiates
  it through the solver, the model, the interpolated targets and the solve, and Adam
  (optax) takes ``search_steps`` steps.  The iterate with the lowest median error on the
  objective rows is kept.  The inner solve is plain ridge least squares even when the ordinary
  fit matches the spread (``fit(match_spread=True)``, its default): the spread constraint's
  multiplier is found by bisection, through which no gradient flows, and the search only has to
  place the grid; the candidates are then fitted and judged with the ordinary ``fit``.
* **Never worse.**  A fraction ``judge`` of ``x_T`` is never used by the search.  Each fixed
  family (Karras rho 7 and 3, log-SNR uniform, VP-time quadratic, time-uniform when a
  ``schedule`` is given) is ranked by its base sampler's median per-sample error at sigma = 0
  on the judge rows against the reference; the best ``shortlist`` families (default 1) and the
  fitted grid get the ordinary :func:`iia_jax.fit` on the remaining rows and are judged by their
  IIA error there.  By default the search starts from the fitted family the judge ranks best
  (``init="best"``); the fitted grid is returned only if it beats that family there.
* **Rows.**  The judge rows are the rows :func:`iia_jax.fit` would hold out with
  ``holdout=judge`` and the same ``key`` (:mod:`iia_jax.rows`: a few rows of every group of
  consecutive rows, stratified); the search takes ``search_rows`` training rows evenly spaced
  over the batch and alternates them between fitting and objective.  Conditions ``cond`` of a
  conditional denoiser ``D(x, sigma, cond)`` are indexed with their rows of ``x_T`` everywhere.

The idea of learning where to step next to how to step follows the learned-solver work after
IIA (LD3: Tong et al., "Learning to Discretize Denoising Diffusion ODEs", 2024; S4S: Frankel
et al., "S4S: Solving for a Diffusion Model Solver", 2025); here the inner problem is IIA's
closed-form least squares.
"""
from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .. import schedules, solvers
from ..metrics.ode import per_sample_rms
from ..rows import check_cond, split_indices
from .. import validate
from ..hostmem import trims_after_compiles
from ..sampling import bind_condition, check_state, plan as make_plan, run_steps, to_compute_dtype
from .coefficients import Coefficients
from .config import FitConfig
from .features import feature_spec
from .fit import _compiled, candidate_samples, fit
from .solve import gram_stats, solve_gram
from .sample import apply_correction, corrected_step

FAMILIES = ("karras", "karras_rho3", "logsnr_uniform", "vp_quadratic", "time_uniform")
# vp_quadratic joined after the peer benchmark found it the best fixed grid on the digits model
# (docs/benchmarks.md); time_uniform is added when a schedule is given
DEFAULT_FAMILIES = ("karras", "karras_rho3", "logsnr_uniform", "vp_quadratic")
_EPS = 1e-20   # keeps log |error|^2 finite
# The search's rows and Adam steps.  Its time is linear in both and is most of what fit_plan costs
# beyond its fits.  64 rows halve it but the search's best iterate then comes early and its grid
# lost 15 % of the gain (ipndm NFE 5 on digits); 12 steps instead of 25 keep the grid's quality
# (docs/fitted_grid.md, "Cost").
SEARCH_ROWS = 128
SEARCH_STEPS = 12
_SLACK_BETA = 4.0   # sharpness of the slack's softplus (module docstring)
# A grid that ends exactly at sigma_min gets this slack (log units): its last sigma becomes
# sigma_min * exp(1e-4), 0.01 % above it (far below what a sampler resolves); the other sigmas
# are kept (the last increment gives up the 1e-4).  The slack's parameter is then
# log(expm1(4e-4)) / 4 = -1.96, which 25 Adam steps of 0.1 lift to ~0.5 (slack ~0.5, s_{N-1} ~
# 1.7 sigma_min) when the gradient asks for it; with a plain softplus the same slack would sit
# at z = -9.2, out of the search's reach.
_SLACK_FLOOR = 1e-4


class PlanReport(NamedTuple):
    """What :func:`fit_plan` tried and why it returned what it did.

    ``grids`` and ``median_base`` are keyed by candidate: each fixed family and ``"fitted"``;
    ``coeffs`` and ``median`` by the candidates that were fitted: the shortlisted families (and
    ``init``) and ``"fitted"``; ``start``: the family the search started from.
    ``median``/``median_base``: median per-sample RMS error at sigma = 0 on the judge rows (never
    seen by the search or the fits) against the fine reference, with and without IIA.
    ``objective``/``search_median`` [search_steps + 1]: the smooth loss and the median error on
    the search's objective rows at each Adam iterate.  ``evaluations``/``seconds``: model
    evaluations (one per sample and denoiser call; a gradient counts its forward pass once) and
    wall time per phase: ``reference``, ``rank`` (every family's base sampler on the judge rows),
    ``fit <candidate>`` (the ordinary fit and the judge's sampling), ``search``, ``overhead``
    (time only).  ``judge_rows``/
    ``search_rows``: indices into ``x_T`` (and ``cond``) of the judge's rows and the search's.
    """

    chosen: str
    best_family: str
    start: str
    grids: dict
    coeffs: dict
    median: dict
    median_base: dict
    objective: np.ndarray
    search_median: np.ndarray
    best_iterate: int
    evaluations: dict
    seconds: dict
    train_size: int
    judge_size: int
    judge_rows: np.ndarray
    search_rows: np.ndarray

    @property
    def total_evaluations(self) -> int:
        return int(sum(self.evaluations.values()))

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def summary(self) -> str:
        """A plain-text account: each candidate's grid and held-out error, the search, the cost."""
        lines = [f"{'grid':>15} {'median base':>12} {'median IIA':>11}  sigmas"]
        for name, sigmas in self.grids.items():
            mark = " <- chosen" if name == self.chosen else ""
            iia = f"{self.median[name]:>11.4g}" if name in self.median else f"{'not fitted':>11}"
            lines.append(f"{name:>15} {self.median_base[name]:>12.4g} {iia}  "
                         f"{np.array2string(np.asarray(sigmas), precision=4)}{mark}")
        lines.append(f"search from {self.start!r}: median error on its objective rows "
                     f"{self.search_median[0]:.4g} -> {self.search_median[self.best_iterate]:.4g} "
                     f"(iterate {self.best_iterate} of {self.objective.size - 1})")
        lines.append(f"best fitted family {self.best_family!r}; chosen {self.chosen!r} (judged on "
                     f"{self.judge_size} held-out samples, fits on {self.train_size})")
        lines.append("cost: " + ", ".join(f"{k} {v} evals / {self.seconds[k]:.1f} s"
                                          for k, v in self.evaluations.items())
                     + f"; total {self.total_evaluations} evals, {self.total_seconds:.1f} s")
        return "\n".join(lines)


class PlanFit(NamedTuple):
    plan: object            # iia_jax.Plan with the chosen sigmas
    coeffs: Coefficients    # from the ordinary iia_jax.fit on that plan
    report: PlanReport


# ----------------------------------------------------------------------------- grids

def family_grid(name: str, num_steps: int, sigma_min: float, sigma_max: float,
                schedule: schedules.Schedule | None = None) -> np.ndarray:
    """A fixed grid family from ``sigma_max`` to ``sigma_min`` in ``num_steps`` steps, then 0.

    ``karras`` (rho 7) and ``karras_rho3``: uniform in ``sigma^(1/rho)`` (Karras et al. 2022);
    ``logsnr_uniform``: uniform in log sigma (Lu et al. 2022); ``time_uniform``: uniform in the
    model time of ``schedule`` between ``t(sigma_max)`` and ``t(sigma_min)`` (Song et al. 2021);
    ``vp_quadratic``: DDIM's quadratic grid in the time of a linear-beta VP model
    (:func:`iia_jax.schedules.vp_quadratic`, the CLI's and the peer benchmark's grid), whose last
    non-zero sigma lies above ``sigma_min``.
    """
    if name == "karras":
        return schedules.karras(num_steps, sigma_min, sigma_max, rho=7.0)
    if name == "karras_rho3":
        return schedules.karras(num_steps, sigma_min, sigma_max, rho=3.0)
    if name == "logsnr_uniform":
        return schedules.logsnr_uniform(num_steps, sigma_min, sigma_max)
    if name == "vp_quadratic":
        return schedules.vp_quadratic(num_steps, sigma_min, sigma_max)
    if name == "time_uniform":
        if schedule is None:
            raise ValueError("the 'time_uniform' family needs schedule= (an iia_jax.schedules.Schedule)")
        t = np.linspace(schedule.time(np.float64(sigma_max)), schedule.time(np.float64(sigma_min)), num_steps)
        return schedules.finish_grid(np.concatenate([[sigma_max], schedule.sigma(t[1:-1]), [sigma_min]]))
    raise ValueError(f"grid family must be one of {FAMILIES}, got {name!r}")


def _inverse_softplus(y):
    return y + np.log(-np.expm1(-y))   # log(expm1(y)), stably


def grid_from_params(params, sigma_min: float, sigma_max: float):
    """The grid ``[N + 1]`` of free parameters ``params [N]`` (module docstring):
    ``sigma_max > s_1 > ... > s_{N-1} >= sigma_min`` (``>`` but for rounding), then 0;
    ``params[-1]`` sets the slack ``log(s_{N-1} / sigma_min)``."""
    span = math.log(sigma_max) - math.log(sigma_min)
    weights = jnp.concatenate([jax.nn.softplus(params[:-1]),
                               jax.nn.softplus(_SLACK_BETA * params[-1:]) / _SLACK_BETA])
    # sigma_min times exp(sums from the bottom, >= 0): s_{N-1} >= sigma_min holds after rounding too.
    tails = jnp.cumsum(weights[::-1])[::-1]
    dtype = jnp.result_type(params)
    return jnp.concatenate([jnp.full((1,), sigma_max, dtype),
                            sigma_min * jnp.exp(span * tails[1:] / tails[0]), jnp.zeros((1,), dtype)])


def params_from_grid(sigmas, sigma_min: float) -> jnp.ndarray:
    """Free parameters ``[N]`` whose grid is ``sigmas`` (``[N + 1]``: ``sigma_max``, decreasing,
    last non-zero sigma ``>= sigma_min``, then 0): the inverse softplus of the log-sigma
    increments and of the slack.  A last sigma below ``sigma_min * exp(1e-4)`` (a grid that ends
    at ``sigma_min``) is raised to that, the other sigmas are kept."""
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or sigmas.size < 3 or sigmas[-1] != 0 or np.any(np.diff(sigmas) >= 0):
        raise ValueError(f"sigmas must be a strictly decreasing grid [N + 1], N >= 2, ending in 0, "
                         f"got {sigmas}")
    # float32 grids end at float32(sigma_min), a few 1e-8 off: tolerate that much below it.
    if not sigmas[-2] >= sigma_min * (1 - 1e-6):
        raise ValueError(f"the grid's last non-zero sigma {sigmas[-2]} is below sigma_min={sigma_min}")
    log_sigmas = np.log(sigmas[:-1])
    log_sigmas[-1] = max(log_sigmas[-1], math.log(sigma_min) + _SLACK_FLOOR)
    inc = -np.diff(log_sigmas)
    if np.any(inc <= 0):
        raise ValueError(f"the grid's last two non-zero sigmas {sigmas[-3:-1]} are both within a "
                         f"factor exp({_SLACK_FLOOR}) of sigma_min={sigma_min}: no free grid is that close")
    slack = log_sigmas[-1] - math.log(sigma_min)
    z = np.concatenate([_inverse_softplus(inc), [_inverse_softplus(_SLACK_BETA * slack) / _SLACK_BETA]])
    return jnp.asarray(z, jnp.float32)


# ----------------------------------------------------------------------------- reference

class Reference(NamedTuple):
    """A fine ODE solution from ``x_T``: states and slopes ``dx/dlog sigma = x - D`` at the
    nodes ``log_sigmas [R]`` (decreasing, sigma_max .. sigma_min), and the end point at 0."""

    log_sigmas: jax.Array
    states: jax.Array   # [R, B, ...]
    slopes: jax.Array   # [R, B, ...]
    end: jax.Array      # [B, ...]


def reference_solution(denoiser, x_T, sigma_min: float, sigma_max: float, steps: int,
                       cond=None) -> Reference:
    """Heun on ``steps`` Karras steps (rho 7) from ``x_T``, keeping every state and ``D`` it
    computed (``2 steps - 1`` evaluations a sample); ``cond``: the rows' conditions, if any."""
    return _REFERENCE(denoiser, jnp.asarray(schedules.karras(steps, sigma_min, sigma_max), x_T.dtype),
                      x_T, cond)


def _reference_on(denoiser, sigmas, x_T, cond):
    """:func:`reference_solution` on the Karras grid ``sigmas`` (data: compiled once per shape)."""
    denoiser = bind_condition(denoiser, cond)
    heun = solvers.get("heun")

    def body(carry, index, sigma, sigma_next, final):
        state, x = carry
        state, x_next, denoised = heun.step(denoiser, state, x, sigma, sigma_next, final)
        return (state, x_next), (x, x - denoised[0])

    (_, end), (states, slopes) = run_steps(body, (heun.init(x_T), x_T), sigmas)
    return Reference(jnp.log(sigmas[:-1]), states, slopes, end)


def reference_state(ref: Reference, log_sigma):
    """``x*`` at ``log_sigma`` (inside the node range): cubic Hermite interpolation in log sigma
    between the two nodes around it, using the states and slopes there."""
    k = jnp.clip(jnp.searchsorted(-ref.log_sigmas, -log_sigma, side="right") - 1,
                 0, ref.log_sigmas.shape[0] - 2)
    t0, t1 = ref.log_sigmas[k], ref.log_sigmas[k + 1]
    h = t1 - t0
    s = (log_sigma - t0) / h
    s2, s3 = s * s, s * s * s
    return ((2 * s3 - 3 * s2 + 1) * ref.states[k] + (s3 - 2 * s2 + s) * h * ref.slopes[k]
            + (3 * s2 - 2 * s3) * ref.states[k + 1] + (s3 - s2) * h * ref.slopes[k + 1])


# ----------------------------------------------------------------------------- objective

def _solve(stats, ridge):
    """:func:`solve_gram` with a unit diagonal where a feature is identically zero (a history
    feature before it exists; Heun's final second gradient).  Its coefficient is 0 either way;
    this keeps ``sqrt(0)`` out of the gradient."""
    gram, rhs = stats[0], stats[1]
    missing = jnp.where(jnp.diagonal(gram) > 0, 0.0, 1.0).astype(gram.dtype)
    return solve_gram(gram + jnp.diag(missing), rhs, ridge)


def grid_objective(denoiser, solver_name: str, spec, params, ref: Reference, w_fit, w_obj,
                   sigma_min: float, sigma_max: float, ridge: float, cond=None):
    """``(loss, median)`` of the grid ``grid_from_params(params)``: the IIA sampler from
    ``ref.states[0]`` (conditions ``cond``, if any) with each step's coefficients solved on the
    rows weighted by ``w_fit [B]`` against the reference (module docstring); ``loss`` is the mean
    of ``log |x_N - x*_0|^2`` and ``median`` the median per-sample RMS error, both over the rows
    where ``w_obj [B]`` is 1."""
    denoiser = bind_condition(denoiser, cond)
    solver = solvers.get(solver_name)
    x_T = ref.states[0]
    sigmas = grid_from_params(params, sigma_min, sigma_max).astype(x_T.dtype)
    targets = jnp.concatenate([jax.vmap(lambda t: reference_state(ref, t))(jnp.log(sigmas[1:-1])),
                               ref.end[None]])

    def body(carry, index, sigma, sigma_next, final):
        carry, feats, _ = corrected_step(denoiser, solver, spec, carry, sigma, sigma_next, final)
        c = _solve(gram_stats(feats, targets[index] - carry[1], w_fit), ridge)
        return (carry[0], apply_correction(carry[1], c, feats), carry[2]), None

    # Unrolled: on the CPU the backward pass of the model inside a scan's loop ran 2.4x slower
    # than unrolled (docs/fitted_grid.md, "Cost"); grids are a few steps.
    (_, x0, _), _ = run_steps(body, (solver.init(x_T), x_T, spec.init_history(x_T)), sigmas, unroll=True)
    err2 = jnp.mean((x0 - ref.end) ** 2, axis=tuple(range(1, x0.ndim)))
    loss = jnp.sum(w_obj * jnp.log(err2 + _EPS)) / jnp.sum(w_obj)
    obj_err = jnp.where(w_obj > 0, jnp.sqrt(err2), jnp.nan)
    return loss, jnp.nanmedian(obj_err)


# ----------------------------------------------------------------------------- fit_plan

class _Tally:
    """Model evaluations counted by :class:`_Counted`: one process-wide tally, so that programs
    compiled in one :func:`fit_plan` call (whose callbacks add to it) serve the next."""
    count = 0

    @classmethod
    def add(cls, n):
        cls.count += int(n)


@jax.tree_util.register_pytree_node_class
class _Counted:
    """The denoiser with a host-side tally of evaluations (``jax.debug.callback``; exact under
    jit and scan, used only where nothing is differentiated or vmapped).  Equal when the
    denoisers are, so the fits' compiled programs are reused across calls."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    @property
    def guidance_scale(self):
        return getattr(self.denoiser, "guidance_scale", None)

    def __call__(self, x, *args, **kwargs):
        jax.debug.callback(_Tally.add, x.shape[0])
        return self.denoiser(x, *args, **kwargs)

    def __eq__(self, other):
        return isinstance(other, _Counted) and self.denoiser is other.denoiser

    def __hash__(self):
        return hash((_Counted, self.denoiser))

    def tree_flatten(self):
        return (self.denoiser,), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(children[0])


def _check_args(sigma_min, sigma_max, init, families, schedule, judge, learning_rate):
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, "
                         f"sigma_max={sigma_max!r}")
    if schedule is not None and not isinstance(schedule, schedules.Schedule):
        raise TypeError(f"schedule must be an iia_jax.schedules.Schedule or None, got "
                        f"{type(schedule).__name__}")
    if init != "best" and init not in FAMILIES:
        raise ValueError(f"init must be 'best' or a grid family, one of {FAMILIES}, got {init!r}")
    if init == "best" and not families:
        raise ValueError("init='best' needs at least one grid family in families=")
    for name in ((init,) if init != "best" else ()) + tuple(families):
        if name not in FAMILIES:
            raise ValueError(f"grid family must be one of {FAMILIES} (families=), got {name!r}")
        if name == "time_uniform" and schedule is None:
            raise ValueError("the 'time_uniform' family needs schedule= (an iia_jax.schedules.Schedule)")
    if not 0.0 < judge < 1.0:
        raise ValueError(f"judge must be in (0, 1), got {judge!r}")
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate!r}")


def split_rows(num_rows: int, judge: float, search_rows: int, key=None):
    """``(train, judge, search)``: indices of the rows that fit, judge and search.

    The judge rows are the held-out rows of :func:`iia_jax.fit` with ``holdout=judge`` and the
    same ``key`` (:func:`iia_jax.rows.split_indices`); ``search``: at most ``search_rows``
    training rows evenly spaced over the batch (a batch sorted by label gives the search every
    label).
    """
    train, held = split_indices(num_rows, judge, key)
    if held.size < 1 or train.size < 2:
        raise ValueError(f"x_T has {num_rows} samples; judge={judge} leaves {train.size} to fit and "
                         f"{held.size} to judge (need >= 2 and >= 1)")
    n_search = min(search_rows, train.size)
    return train, held, train[np.arange(n_search) * train.size // n_search]


def _take(tree, index):
    """The rows ``index`` of every leaf: ``x_T`` and its conditions alike."""
    return jax.tree_util.tree_map(lambda a: a[index], tree)


class _Candidates:
    """Every candidate grid of one :func:`fit_plan` call, judged on the same held-out rows.

    One counted denoiser serves every candidate: their fits and judge runs share compiled
    programs (the sigmas are data), so only the first candidate of the first call compiles.  ``rank`` runs the base
    sampler alone on the judge rows (``n_judge x NFE`` evaluations); ``fit`` adds the ordinary
    :func:`iia_jax.fit` on the training rows and the judge's IIA error.  A grid equal to an
    earlier candidate's reuses its results.
    """

    def __init__(self, denoiser, solver, spec, config, key, fingerprint, train, judge, judge_end, phase):
        self.denoiser = _Counted(denoiser)
        self.solver, self.spec, self.config, self.key = solver, spec, config, key
        self.fingerprint = fingerprint
        self.train, self.judge, self.judge_end, self.phase = train, judge, judge_end, phase
        self.grids, self.coeffs, self.median, self.median_base = {}, {}, {}, {}

    def _judge_error(self, sigmas, values):
        x, c = self.judge
        out = candidate_samples(self.denoiser, self.solver, self.spec, jnp.asarray(sigmas, x.dtype),
                                values, x, c)
        return float(np.median(np.asarray(per_sample_rms(out, self.judge_end))))

    def _same(self, name, sigmas):
        return next((k for k in self.coeffs if k != name and np.array_equal(self.grids[k], sigmas)), None)

    def rank(self, name, sigmas):
        """The base sampler's median error on the judge rows."""
        self.grids[name] = sigmas
        zeros = jnp.zeros((len(sigmas) - 1, self.spec.num_features), self.judge[0].dtype)
        self.median_base[name] = self._judge_error(sigmas, zeros)

    def fit(self, name, sigmas):
        """The ordinary fit on the training rows, then its median error on the judge rows."""
        t0, before = time.perf_counter(), _Tally.count
        same = self._same(name, sigmas)
        if same is not None:
            self.grids[name] = sigmas
            self.coeffs[name], self.median[name] = self.coeffs[same], self.median[same]
            self.median_base[name] = self.median_base[same]
        else:
            if name not in self.median_base:
                self.rank(name, sigmas)
            x, c = self.train
            fitted = fit(self.denoiser, make_plan(self.solver, sigmas), x, self.config, cond=c,
                         key=self.key, fingerprint=self.fingerprint, progress=False).coeffs
            self.coeffs[name], self.median[name] = fitted, self._judge_error(sigmas, fitted.values)
        self.phase(f"fit {name}", _Tally.count - before, t0)


def _objective_and_grad(denoiser, params, ref, cond, w_fit, w_obj, *, solver, spec, sigma_min, sigma_max,
                        ridge, grad):
    """``((loss, median), gradient in params)`` of :func:`grid_objective` (``grad=False``: a zero
    gradient, no backward pass)."""
    def objective(p):
        return grid_objective(denoiser, solver, spec, p, ref, w_fit, w_obj, sigma_min, sigma_max, ridge, cond)

    if grad:
        return jax.value_and_grad(objective, has_aux=True)(params)
    return objective(params), jnp.zeros(())


# Compiled once per process for each denoiser, solver, options and shapes (the sigmas and the
# parameters are data), so a second fit_plan call of the same shapes compiles nothing.
_REFERENCE = _compiled(_reference_on, ())
_OBJECTIVE = _compiled(_objective_and_grad, ("solver", "spec", "sigma_min", "sigma_max", "ridge", "grad"))


def _search_grid(denoiser, solver, spec, start_grid, ref, cond, sigma_min, sigma_max, ridge,
                 search_steps, learning_rate, on_step):
    """Adam on the free grid parameters from ``start_grid`` over the reference's rows: every
    other row fits the coefficients, the rest measure the end-to-end error (module docstring).
    Returns ``(objective, search_median, iterates)`` over the ``search_steps + 1`` iterates."""
    n = ref.end.shape[0]
    w_fit = (jnp.arange(n) % 2 == 0).astype(ref.end.dtype)
    w_obj = 1.0 - w_fit
    # without Adam steps only the start is measured: no backward pass to compile
    static = dict(solver=solver, spec=spec, sigma_min=sigma_min, sigma_max=sigma_max, ridge=ridge,
                  grad=bool(search_steps))
    params = params_from_grid(start_grid, sigma_min)
    optimiser = optax.adam(learning_rate)
    opt_state = optimiser.init(params)
    objective, search_median, iterates = [], [], []
    for i in range(search_steps + 1):
        (loss, med), grad = _OBJECTIVE(denoiser, params, ref, cond, w_fit, w_obj, **static)
        if not (np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))):
            raise ValueError(f"fit_plan: the grid objective or its gradient is not finite at search "
                             f"step {i} (grid {np.asarray(grid_from_params(params, sigma_min, sigma_max))})")
        objective.append(float(loss))
        search_median.append(float(med))
        iterates.append(params)
        if i < search_steps:
            updates, opt_state = optimiser.update(grad, opt_state)
            params = optax.apply_updates(params, updates)
            on_step()
    return np.asarray(objective), np.asarray(search_median), iterates


@trims_after_compiles
def fit_plan(denoiser, solver: str, num_steps: int, x_T, config: FitConfig | None = None, *,
             sigma_min: float, sigma_max: float, cond=None, init: str = "best", key=None,
             families=None, schedule=None, shortlist: int = 1, judge: float = 0.25,
             search_steps: int = SEARCH_STEPS, learning_rate: float = 0.1, search_rows: int = SEARCH_ROWS,
             reference_steps: int = 64, fingerprint: str | None = None, progress: bool | None = None,
             **fit_options) -> PlanFit:
    """Fit the step grid of ``solver`` (``num_steps`` steps from ``sigma_max``, the last non-zero
    sigma anywhere in ``[sigma_min, sigma_max)``, then 0) jointly with its IIA coefficients; never
    worse than the best of the fixed grid families it fits.

    ``x_T [B, ...]``: initial states in sigma-space (``sigma_max * N(0, I)`` for EDM models).
    ``cond`` (a pytree with a leading axis of B rows) goes to a conditional denoiser
    ``D(x, sigma, cond)`` with its rows everywhere: reference, search, fits and judge.  A fraction
    ``judge`` of the rows judges the candidates and is used by nothing else: the rows ``fit``
    would hold out with ``holdout=judge`` and this ``key`` (drawn per group of rows; without a
    key the last of each group; :func:`split_rows`).  ``families``: the fixed families to beat
    (default :data:`DEFAULT_FAMILIES`, plus ``time_uniform`` when a VP ``schedule`` is given).
    Every family's base sampler is judged (a few evaluations a judge row); the ``shortlist``
    families with the lowest base error get the ordinary fit (default 1: an ordinary fit is
    most of what a family costs, and on the digits model the family with the best base sampler
    had the best IIA for every base at NFE 5, docs/fitted_grid.md; ``shortlist=len(families)``
    fits them all).  ``init``: the family the search starts from (it is then fitted too), or
    ``"best"`` (default): the fitted family the judge ranks best.  The search is local (Adam moves
    each parameter by about ``learning_rate`` a step), so its start largely decides its end: on
    the digits model the VP-time quadratic family is 3x better than Karras and a search from
    Karras does not reach it (docs/fitted_grid.md).
    ``search_steps`` Adam steps of size ``learning_rate`` on the free grid parameters, over at
    most ``search_rows`` training rows (its cost is linear in them); ``reference_steps``: Karras
    steps of the heun reference.  ``config`` and ``fit_options`` (the keywords of
    :class:`~iia_jax.iia.config.FitConfig`: ``preset``, ``fine_steps``, ``mode``, ``ridge``, ...)
    say how every candidate is fitted with :func:`iia_jax.fit`; they are checked before any model
    call.  The search uses the same features and ridge.  ``fingerprint`` is stored with every
    candidate's coefficients, as :func:`iia_jax.fit` stores it.

    Returns :class:`PlanFit`: an ordinary ``Plan``, the ordinary ``fit`` coefficients of its
    grid (fitted on the non-judge rows), and a :class:`PlanReport`.  Deterministic given ``key``.
    """
    start = time.perf_counter()
    solver_obj = solvers.get(solver)
    check_state(x_T)
    check_cond(cond, x_T.shape[0])
    families = tuple(DEFAULT_FAMILIES + (("time_uniform",) if schedule is not None else ())
                     if families is None else families)
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    num_steps = validate.integer(num_steps, "num_steps", 2)
    search_steps = validate.integer(search_steps, "search_steps", 0)
    search_rows = validate.integer(search_rows, "search_rows", 2)
    reference_steps = validate.integer(reference_steps, "reference_steps", 2)
    shortlist = validate.integer(shortlist, "shortlist", 1)
    _check_args(sigma_min, sigma_max, init, families, schedule, judge, learning_rate)
    config = FitConfig.build(config, **fit_options)
    x_T, _ = to_compute_dtype(x_T)
    families = tuple(dict.fromkeys(((init,) if init != "best" else ()) + families))
    spec = feature_spec(solver, config.preset, config.history)
    train_idx, judge_idx, search_idx = split_rows(x_T.shape[0], judge, search_rows, key)
    n_search = search_idx.size
    pbar = tqdm(total=3 + shortlist + search_steps, desc=f"fit_plan {solver}", leave=False,
                disable=None if progress is None else not progress)
    evals, seconds = {}, {}

    def phase(name, count, t0):
        evals[name] = evals.get(name, 0) + int(count)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        pbar.update(1)

    # One reference run for the rows that need it: the search's (states and slopes) and the
    # judge's (end points).
    t0 = time.perf_counter()
    ref_x, ref_c = _take((x_T, cond), np.concatenate([search_idx, judge_idx]))
    ref = jax.block_until_ready(reference_solution(denoiser, ref_x, sigma_min, sigma_max, reference_steps, ref_c))
    search_ref = Reference(ref.log_sigmas, ref.states[:, :n_search], ref.slopes[:, :n_search],
                           ref.end[:n_search])
    phase("reference", ref_x.shape[0] * solvers.get("heun").nfe(reference_steps), t0)

    # Rank every family by its base sampler on the judge rows; fit the shortlist (and init).
    cands = _Candidates(denoiser, solver, spec, config, key, fingerprint, _take((x_T, cond), train_idx),
                        _take((x_T, cond), judge_idx), ref.end[n_search:], phase)
    t0, before = time.perf_counter(), _Tally.count
    for name in families:
        cands.rank(name, family_grid(name, num_steps, sigma_min, sigma_max, schedule))
    phase("rank", _Tally.count - before, t0)
    ranked = sorted(families, key=cands.median_base.__getitem__)
    fitted_families = tuple(dict.fromkeys(((init,) if init != "best" else ()) + tuple(ranked[:shortlist])))
    pbar.total = 3 + len(fitted_families) + search_steps
    for name in fitted_families:
        cands.fit(name, cands.grids[name])
    best_family = min(cands.median, key=cands.median.__getitem__)
    # The judge only picks the start among a few families; the fitted grid then has to beat the
    # lowest of their judge errors, a minimum that flatters the families, not the search.
    start_family = best_family if init == "best" else init

    t0 = time.perf_counter()
    objective, search_median, iterates = _search_grid(
        denoiser, solver, spec, cands.grids[start_family], search_ref, _take(ref_c, slice(0, n_search)),
        sigma_min, sigma_max, config.ridge, search_steps, learning_rate, on_step=lambda: pbar.update(1))
    best_iterate = int(np.argmin(search_median))
    evals["search"] = (search_steps + 1) * n_search * solver_obj.nfe(num_steps)
    seconds["search"] = time.perf_counter() - t0

    # Iterate 0 is the start itself: its exact grid (the round trip moves a grid that ends at
    # sigma_min by 1e-4), whose fit and judgement are then reused.
    cands.fit("fitted", cands.grids[start_family] if best_iterate == 0 else
              np.asarray(grid_from_params(iterates[best_iterate], sigma_min, sigma_max)))
    pbar.close()

    chosen = "fitted" if cands.median["fitted"] < cands.median[best_family] else best_family
    seconds["overhead"] = time.perf_counter() - start - sum(seconds.values())
    report = PlanReport(chosen=chosen, best_family=best_family, start=start_family, grids=cands.grids,
                        coeffs=cands.coeffs, median=cands.median, median_base=cands.median_base,
                        objective=objective, search_median=search_median,
                        best_iterate=best_iterate, evaluations=evals, seconds=seconds,
                        train_size=int(train_idx.size), judge_size=int(judge_idx.size),
                        judge_rows=judge_idx, search_rows=search_idx)
    return PlanFit(make_plan(solver, cands.grids[chosen]), cands.coeffs[chosen], report)


__all__ = ["fit_plan", "PlanFit", "PlanReport", "FAMILIES", "DEFAULT_FAMILIES", "family_grid",
           "split_rows", "grid_from_params", "params_from_grid", "reference_solution", "reference_state",
           "grid_objective", "Reference"]
