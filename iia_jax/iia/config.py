"""What a fit is asked to do: :class:`FitConfig`, a frozen options object that checks itself when
built, and :class:`Judge`, the optional quality judge it carries (docs/iia.md).

A config says *how* to fit (features, target integration, where states come from, which rows are
held out, memory, the least-squares solve, the quality judge); the call says *what* to fit on
(denoiser, plan, rows, conditions, key, devices).  One config serves :func:`iia_jax.fit` and
:func:`iia_jax.fit_plan` alike, so a bad option fails before any model call.  The keywords of
earlier releases (``fit(D, plan, x, fine_steps=8, ridge=1e-3, match_spread=False,
quality=judge)``) are converted by :meth:`FitConfig.build`; a config and a keyword that disagrees
with it are refused, so nothing is silently overridden.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Callable, NamedTuple

import numpy as np

from .. import validate
from .coefficients import FIT_MODES, TARGETS
from .features import DEFAULT_TARGET, PRESET_SOLVERS
from .guard import distance_z, feature_mmd, reference_verdict
from .solve import SOLVES, MatchedSolve, PlainSolve

# How many standard errors of the judge's paired difference count as "worse than the base".
# 1, not 2: distribution judges are noisy at fit-batch sizes, and a step is only dropped when
# that lowers the judged difference, so noise cannot drop steps that help quality.
QUALITY_Z = 1.0

# The carried state (bytes, every row's) above which a chunked sequential fit keeps it on disk
# unless told otherwise: about a tenth of what a first fit adds to a process on the CPU before its
# data counts (about 130-145 MiB of compiled programs and runtime, docs/fit_cost.md); held in memory
# the state costs up to about twice its bytes (the allocator's slack), so a large batch's peak
# stays within about 1.25x of a small one's (docs/scaling.md).  Spilling costs a
# write and a read of each row's state a step, small beside the fine reference's fine_steps
# model calls a row a step.
SPILL_ABOVE = 16 * 2**20


class Judge(NamedTuple):
    """A paired judge of the samples at sigma = 0 for the fit's quality guard.

    ``compare(candidate, base) -> (difference, se)``: row i of both arrays comes from the same
    noise; ``difference < 0`` means the candidate is better, ``se`` is the standard error of the
    paired difference (e.g. :func:`iia_jax.metrics.digits_check`).  With ``reference=True`` the
    judge also sees the fit's own fine-reference samples of the same rows,
    ``compare(candidate, base, reference)`` (e.g. :func:`iia_jax.iia.guard.reference_verdict`).
    Samples count as worse when ``difference > z * se``.  The judge sees at most ``max_rows``
    rows (None: all), the first in the fit's chunk order (a fixed subset of i.i.d. noise draws,
    so a fair one): kernel judges cost ``rows^2`` and the median bandwidth holds ``rows^2 / 2`` distances,
    so a 100,000-row fit would otherwise spend hours and tens of GB on its judge; 4,096 rows give
    a paired se about half that of the 1,000 rows the guard was tuned on (docs/iia.md).

    ``in_order``: False (the default): the guard judges the kept steps together and drops them
    one at a time while the samples are worse.  True: it also judges them in step order, each on
    top of the steps accepted before it (a step is kept only if those samples are not worse than
    the base's), and keeps the selection that ``rank(candidate, base[, reference]) -> float``
    puts lower (None: the lower verdict; the joint selection on a tie).  Judged together, one
    step's flattening can hide behind a later step's overshoot; judged in order alone, a
    correction that only helps together with a later one is refused; and a verdict that is a veto
    (the default judge's spread floor) is no score to rank by (docs/digits.md, "Judged in step
    order"; :data:`IN_ORDER_JUDGE`).  The second pass costs one judged run a kept step.
    """

    compare: Callable
    z: float = QUALITY_Z
    reference: bool = False
    max_rows: int | None = 4096
    in_order: bool = False
    rank: Callable | None = None

    def __call__(self, candidate, base, reference=None) -> tuple[float, float]:
        verdict = (self.compare(candidate, base, reference) if self.reference else
                   self.compare(candidate, base))
        diff, se = (float(v) for v in verdict)
        if not (np.isfinite(diff) and np.isfinite(se) and se >= 0):
            raise ValueError(f"quality must return a finite (difference, se >= 0), got ({diff}, {se})")
        return diff, se

    def worse(self, judged: tuple[float, float]) -> bool:
        """Whether a ``(difference, se)`` verdict says the candidate is worse than the base."""
        return judged[0] > self.z * judged[1]


# The default judge: model-agnostic, the samples against the fit's own fine reference
# (docs/iia.md, "Why IIA can cost sample quality"; iia/guard.py).
REFERENCE_JUDGE = Judge(reference_verdict, QUALITY_Z, reference=True)
# The same judge, the kept steps also judged in step order, the two selections ranked by the
# distance alone (Judge.in_order; docs/digits.md, "Judged in step order").  Opt-in: it catches a
# flattening step a later correction's overshoot hides, but the base's overshoot can hide one from
# it in turn (the shipped model's guarantee: 60 of 68 cells, the default's 62).
IN_ORDER_JUDGE = REFERENCE_JUDGE._replace(in_order=True, rank=distance_z)


def feature_judge(features, z: float = QUALITY_Z, max_rows: int | None = 4096) -> Judge:
    """A quality judge in your own learned features: IIA's and the base sampler's samples against
    the fit's own fine reference, compared by :func:`~iia_jax.iia.guard.feature_mmd` in
    ``features(samples [n, ...]) -> [n, F]`` (a classifier's penultimate layer, an image
    embedding; any function of numpy arrays).  Pass it as ``fit(..., quality=feature_judge(f))``
    where the default judge is not enough: on the digits model it sees, as a distance, the three
    losses that the default's distance misses and only its spread floor names (docs/iia.md, "A
    quality guard with no model-specific judge")."""
    if not callable(features):
        raise TypeError(f"features must be a callable samples -> [n, F] array, got {type(features).__name__}")
    return Judge(functools.partial(feature_mmd, features=features), z, reference=True, max_rows=max_rows)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How :func:`iia_jax.fit` fits (docs/iia.md; every field is checked when the config is built).

    - ``preset``/``history``: the feature set (:mod:`iia_jax.iia.features`; None: the solver's
      default preset).
    - ``fine_steps``: M, the sub-steps (uniform in log sigma) of the target integration per interval.
    - ``mode``: ``"sequential"`` (states from the IIA sampler itself, one solve per step) or
      ``"teacher_forced"`` (states from the fine trajectory, all steps solved at once).
    - ``target``: ``"local"`` (the fine solution of the interval from the current state) or
      ``"trajectory"`` (the fine reference trajectory's state); None: the solver's measured best,
      :data:`~iia_jax.iia.features.DEFAULT_TARGET`.
    - ``holdout``: the fraction of rows kept out of the fit to judge it (never-worse check; a
      fraction ``k / g`` with ``g <= 32``, see :mod:`iia_jax.rows`); 0 switches the check off.
    - ``chunk_size``: at most about this many rows per model pass (memory); None: one pass.
    - ``spill_dir``/``spill_above``: where the sequential fit keeps each chunk's carried state
      between steps.  On disk, in a temporary subfolder removed afterwards, a chunked fit holds
      one chunk's state at a time, so its memory does not grow with the batch (docs/scaling.md);
      the coefficients are the same, bit for bit.  ``spill_dir`` (an existing folder): always
      there.  None (the default): in the system's temporary folder (``tempfile.gettempdir()``,
      ``TMPDIR``) when the fit has more than one chunk and every row's carried state together
      (about five row-sized arrays a row) would pass ``spill_above`` bytes (default
      :data:`SPILL_ABOVE`, 16 MiB), else in memory; ``spill_above=None``: always in memory.  One
      process only: a multi-host fit keeps its state in memory (a ``spill_dir`` is refused there).
    - ``solve``: :class:`~iia_jax.iia.solve.MatchedSolve` (default) or
      :class:`~iia_jax.iia.solve.PlainSolve`; carries the ridge.
    - ``judge``: the :class:`Judge` of sample quality for the quality guard; by default
      :data:`REFERENCE_JUDGE`, which needs no model-specific judge: it compares the candidate's
      and the base sampler's samples with the fit's fine-reference samples of the same rows, in
      distribution and in spread (:func:`~iia_jax.iia.guard.reference_verdict`).
      None: no quality guard (the error check alone).  With ``holdout=0`` (no held-out rows, so
      neither check runs) the default judge is dropped; a judge passed explicitly is refused.
    - ``refit``: after the never-worse check, fit the sequential pass again with the steps it
      switched off held at zero, until the kept steps stop changing (each round drops at least one
      step, so at most ``N`` more fits).  The later steps are then fitted on the states the
      sampler will really see, not on states shaped by corrections that were switched off (docs/
      iia.md, "Most of the loss is stale coefficients").  Sequential mode with held-out rows only.
      Off by default: on the digits model it shrinks the loss of dpmpp_2m and unipc at NFE 5 four-
      to sixfold, but what remains (grey backgrounds at full contrast) escapes the default judge, so
      the guard would let it through (docs/iia.md, "Where it does not agree").
    """

    preset: str | None = None
    history: int = 1
    fine_steps: int = 16
    mode: str = "sequential"
    target: str | None = None
    holdout: float = 0.25
    chunk_size: int | None = None
    spill_dir: str | os.PathLike | None = None
    spill_above: int | None = SPILL_ABOVE
    solve: PlainSolve | MatchedSolve = MatchedSolve()
    judge: Judge | None = REFERENCE_JUDGE
    refit: bool = False

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if self.preset is not None and self.preset not in PRESET_SOLVERS:
            raise ValueError(f"preset must be None or one of {tuple(PRESET_SOLVERS)}, got {self.preset!r}")
        fix("history", validate.integer(self.history, "history", 0))
        fix("fine_steps", validate.integer(self.fine_steps, "fine_steps", 2))
        if self.chunk_size is not None:
            fix("chunk_size", validate.integer(self.chunk_size, "chunk_size", 1))
        if self.mode not in FIT_MODES:
            raise ValueError(f"mode must be one of {FIT_MODES}, got {self.mode!r}")
        if self.spill_dir is not None:
            if not isinstance(self.spill_dir, (str, os.PathLike)) or not os.path.isdir(self.spill_dir):
                raise ValueError(f"spill_dir must be None or an existing directory, got {self.spill_dir!r}")
            if self.mode != "sequential":
                raise ValueError(f"spill_dir is for mode='sequential' (the teacher-forced fit carries "
                                 f"nothing between steps), got mode={self.mode!r}")
        if self.spill_above is not None:
            fix("spill_above", validate.integer(self.spill_above, "spill_above", 0))
        if self.target is not None and self.target not in TARGETS:
            raise ValueError(f"target must be None or one of {TARGETS}, got {self.target!r}")
        if self.holdout == 0 and self.judge == REFERENCE_JUDGE:
            fix("judge", None)   # holdout=0 switches the never-worse checks off knowingly
        validate.fit_options(self.holdout, self.judge)
        if not isinstance(self.refit, (bool, np.bool_)):
            raise TypeError(f"refit must be True or False, got {self.refit!r}")
        if self.refit and (self.mode != "sequential" or self.holdout == 0):
            raise ValueError(f"refit=True needs mode='sequential' and holdout > 0 (it refits what the "
                             f"never-worse check switched off), got mode={self.mode!r}, holdout={self.holdout!r}")
        if not isinstance(self.solve, SOLVES):
            raise TypeError(f"solve must be one of {[s.__name__ for s in SOLVES]}, got "
                            f"{type(self.solve).__name__}")
        if self.judge is not None:
            if not isinstance(self.judge, Judge) or not callable(self.judge.compare):
                raise TypeError(f"judge must be an iia_jax.iia.Judge (or pass quality=callable), got "
                                f"{type(self.judge).__name__}")
            rows = self.judge.max_rows
            if rows is not None and (isinstance(rows, bool) or not isinstance(rows, (int, np.integer))
                                     or rows < 4):
                raise ValueError(f"judge.max_rows must be an integer >= 4 or None, got {rows!r}")
            if not isinstance(self.judge.in_order, (bool, np.bool_)):
                raise TypeError(f"judge.in_order must be True or False, got {self.judge.in_order!r}")
            if self.judge.rank is not None and not callable(self.judge.rank):
                raise TypeError(f"judge.rank must be None or a callable, got {type(self.judge.rank).__name__}")

    @property
    def ridge(self) -> float:
        return float(self.solve.ridge)

    @property
    def match_spread(self) -> bool:
        return bool(self.solve.needs_spread)

    def spill_folder(self, carried_bytes: int, chunks: int) -> str | os.PathLike | None:
        """Where a sequential fit of ``chunks`` chunks whose rows carry ``carried_bytes`` between
        steps keeps that state (None: in memory), by ``spill_dir`` and ``spill_above``."""
        if self.spill_dir is not None:
            return self.spill_dir
        if self.spill_above is None or chunks < 2 or carried_bytes <= self.spill_above:
            return None
        return tempfile.gettempdir()

    def target_for(self, solver: str) -> str:
        """The target of this fit for ``solver`` (the solver's default when ``target`` is None)."""
        return DEFAULT_TARGET[solver] if self.target is None else self.target

    @classmethod
    def build(cls, config: FitConfig | None = None, **keywords) -> FitConfig:
        """A config from ``config`` (default: ``FitConfig()``) and keywords: the fields themselves
        and the older ``ridge``, ``match_spread`` (the solve) and ``quality`` (a judge callable or
        :class:`Judge`).  With a config, a keyword that disagrees with it is an error."""
        unknown = sorted(set(keywords) - set(_KEYWORDS))
        if unknown:
            raise TypeError(f"unknown fit option(s) {unknown}; the options are {sorted(_KEYWORDS)}")
        base = cls() if config is None else config
        if not isinstance(base, cls):
            raise TypeError(f"config must be an iia_jax.FitConfig, got {type(base).__name__}")
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
        fields.update({k: v for k, v in keywords.items() if k in fields})
        fields["judge"] = _judge(keywords["quality"]) if "quality" in keywords else fields["judge"]
        if "ridge" in keywords or "match_spread" in keywords:
            fields["solve"] = _solve(keywords.get("match_spread", base.match_spread),
                                     keywords.get("ridge", base.ridge), base.solve)
        built = cls(**fields)
        if config is not None:
            for name in keywords:
                mine, theirs = _keyword_value(built, name), _keyword_value(config, name)
                if mine != theirs:
                    raise ValueError(f"{name}={keywords[name]!r} disagrees with the config's {name}="
                                     f"{theirs!r}; pass the option in one place (config or keyword)")
        return built


_KEYWORDS = ("preset", "history", "fine_steps", "mode", "target", "holdout", "chunk_size", "spill_dir",
             "spill_above", "solve", "judge", "refit", "ridge", "match_spread", "quality")


def _keyword_value(config: FitConfig, name: str):
    return config.judge if name == "quality" else getattr(config, name)


def _judge(quality):
    if quality is None or isinstance(quality, Judge):
        return quality
    if not callable(quality):
        raise TypeError(f"quality must be a callable quality(candidate, base) -> (difference, se), "
                        f"got {type(quality).__name__}")
    return Judge(quality)


def _solve(match_spread, ridge, current):
    if not isinstance(match_spread, (bool, np.bool_)):
        raise TypeError(f"match_spread must be True or False, got {match_spread!r}")
    if match_spread:
        iterations = current.iterations if isinstance(current, MatchedSolve) else MatchedSolve.iterations
        return MatchedSolve(ridge, iterations)
    return PlainSolve(ridge)


__all__ = ["FitConfig", "IN_ORDER_JUDGE", "Judge", "QUALITY_Z", "REFERENCE_JUDGE", "SPILL_ABOVE", "feature_judge"]
