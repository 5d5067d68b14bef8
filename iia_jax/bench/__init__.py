"""Benchmarks against the peers in one run: ``python -m iia_jax.bench [--quick]``.

Quality vs NFE (our solvers, base and IIA, beside the `diffusers` schedulers and `diffrax`
solvers stepping the same model on the same grids), speed ratios and fit cost; writes
``docs/benchmarks.md`` and ``docs/bench_*.png``.  Modules: :mod:`.models`, :mod:`.grids`,
:mod:`.peers`, :mod:`.accuracy`, :mod:`.speed`, :mod:`.fitcost`, :mod:`.report`,
:mod:`.markdown`, :mod:`.runner`.

Every script in ``benchmarks/`` is built on the same pieces: :mod:`.harness` (noise, fine
reference, base and IIA samples, errors, quality score, batched runs), :func:`.grids.steps_for`
(the one NFE-to-steps rule), :mod:`.models` (every benchmark model) and :mod:`.provenance`
(versions, machine, git revision and command beside every result).
"""
from .runner import main

__all__ = ["main"]
