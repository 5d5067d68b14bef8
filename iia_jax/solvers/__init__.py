"""ODE solvers, one module a family; each is an (init, step) pair over a NamedTuple state."""
from . import dpm_solver, euler, heun, pndm, unipc
from .base import Solver, derivative

SOLVERS = {s.name: s for s in (euler.SOLVER, heun.SOLVER, dpm_solver.SOLVER, dpm_solver.SOLVER_3M,
                               unipc.SOLVER, pndm.IPNDM, pndm.SPNDM)}


def get(name: str) -> Solver:
    """The solver called ``name``; a ValueError lists the known names otherwise (TypeError if not a str)."""
    if not isinstance(name, str):
        raise TypeError(f"solver must be a string, one of {sorted(SOLVERS)}, got {type(name).__name__}")
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {name!r}")
    return SOLVERS[name]


__all__ = ["Solver", "SOLVERS", "get", "derivative"]
