"""One persistent XLA compilation cache for the whole test run.

Many tests compile the same programs: both xdist workers, the fresh processes of the memory,
sharding and notebook tests, and jitted lambdas that differ only as Python objects (jax's
in-memory cache is keyed on the function; the persistent one on the compiled program).  The
cache lives in a temporary folder made when pytest starts (this file is loaded before the
workers and subprocesses are started, so they inherit its path) and removed when the run ends;
``JAX_COMPILATION_CACHE_DIR`` set beforehand is used as it is and kept.  Every program is cached,
not only those that took a second to compile (jax's default): most of ours take less, and there
are many.  A cache hit gives the same executable a compilation would, so no result depends on it.
"""
import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _folder = tempfile.mkdtemp(prefix="iia-jax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _folder
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
