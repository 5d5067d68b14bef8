"""Free host memory handed back to the operating system while a fit runs (glibc's ``malloc_trim``).

A fit runs the same compiled programs chunk after chunk.  XLA compiles them and the CPU runtime
runs them on several threads, and glibc's allocator keeps what those threads free in per-thread
arenas for reuse instead of returning it.  On the 8x8 mixture (docs/fit_cost.md) that is about
100 MiB of a first fit's resident set at 100k rows: freed compiler memory and the arenas that
more worker threads fill as more chunks run.  ``malloc_trim(0)`` returns the free pages of every
arena; it takes 1-20 ms, so :class:`Trimmer` calls it at most at a rate that keeps it to a
``share`` (1 %) of the time: after a trim that took ``t`` seconds, the next waits ``t / share``.
The fit calls :data:`release_free_memory` after each chunk's run.  Where the C library has no
``malloc_trim`` (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import math
import time

__all__ = ["Trimmer", "release_free_memory"]


def _malloc_trim():
    """``malloc_trim(0)`` of the running C library as a function of no arguments, or None."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):    # TypeError: Windows has no CDLL(None)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: fn(0)


class Trimmer:
    """Call ``trim()`` when asked, unless the last call's duration over the time since it began is
    still above ``share``.  ``clock``: seconds (``time.perf_counter``); ``trim`` None: never."""

    def __init__(self, trim=_malloc_trim(), clock=time.perf_counter, share: float = 0.01):
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self._trim, self._clock, self._share = trim, clock, share
        self._next = -math.inf

    @property
    def available(self) -> bool:
        return self._trim is not None

    def __call__(self) -> bool:
        """Trim now if it is due; True if it did."""
        if self._trim is None:
            return False
        start = self._clock()
        if start < self._next:
            return False
        self._trim()
        self._next = start + (self._clock() - start) / self._share
        return True


release_free_memory = Trimmer()
