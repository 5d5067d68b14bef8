"""Free host memory handed back to the operating system while a fit runs (glibc's ``malloc_trim``).

A fit runs the same compiled programs chunk after chunk.  XLA compiles them and the CPU runtime
runs them on several threads, and glibc's allocator keeps what those threads free in per-thread
arenas for reuse instead of returning it.  On the 8x8 mixture (docs/fit_cost.md) that is about
100 MiB of a first fit's resident set at 100k rows: freed compiler memory and the arenas that
more worker threads fill as more chunks run.  ``malloc_trim(0)`` returns the free pages of every
arena; it takes 1-20 ms, so :class:`Trimmer` calls it at most at a rate that keeps it to a
``share`` (1 %) of the time: after a trim that took ``t`` seconds, the next waits ``t / share``.
The fit calls :data:`release_free_memory` after each chunk's run.

Compilation is the other source.  A first fit compiles its programs as it meets them, between
chunks: the compiler's freed memory then sits in the arenas under the chunks' buffers, and the
compilations of the checks after the fit stack on top of it.  So :func:`trims_after_compiles` (on
``fit`` and ``fit_plan``) trims after every XLA compilation while the function runs, not
rate-limited, since a compilation takes far longer than a trim: a first fit of 16,384 rows of the
8x8 mixture compiles 43-51 programs and its trims take 0.16-0.19 s of its 5-6 s (at most 32 ms
each), a second fit compiles none.  That fit, teacher-forced, peaked 142-149 MiB above its start
with them, 167-201 MiB without (1,024 rows: 139-141 and 144-161; docs/fit_cost.md has the
table).  Where the C library has no ``malloc_trim`` (macOS, musl) both do nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import threading
import time

import jax

__all__ = ["Trimmer", "release_free_memory", "trims_after_compiles", "trimming_compiles"]

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"   # jax.monitoring's event after XLA compiles


def _malloc_trim():
    """``malloc_trim(0)`` of the running C library as a function of no arguments, or None."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):    # TypeError: Windows has no CDLL(None)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: fn(0)


_TRIM = _malloc_trim()     # the C library's malloc_trim(0), or None


class Trimmer:
    """Call ``trim()`` when asked, unless the last call's duration over the time since it began is
    still above ``share``.  ``clock``: seconds (``time.perf_counter``); ``trim`` None: never."""

    def __init__(self, trim=_TRIM, clock=time.perf_counter, share: float = 0.01):
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


_active: list = []          # the trim functions of the open trimming_compiles() blocks, innermost last
_listening = threading.Lock()
_registered = False


def _after_compile(event: str, duration_secs: float, **kwargs) -> None:
    if event == BACKEND_COMPILE and _active:
        _active[-1]()


@contextlib.contextmanager
def trimming_compiles(trim=_TRIM):
    """Within the block, call ``trim()`` (``malloc_trim(0)``) after every XLA compilation in the
    process (a :mod:`jax.monitoring` listener, registered once; outside every block it does
    nothing).  ``trim`` None (no ``malloc_trim``): a plain block."""
    global _registered
    if trim is None:
        yield
        return
    with _listening:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_after_compile)
            _registered = True
        _active.append(trim)
    try:
        yield
    finally:
        with _listening:
            _active.remove(trim)


def trims_after_compiles(fn):
    """``fn`` run inside :func:`trimming_compiles` (a decorator)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with trimming_compiles(_TRIM):
            return fn(*args, **kwargs)
    return run
