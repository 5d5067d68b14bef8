"""Host memory a fit frees goes back to the system (``iia_jax.hostmem``), at a bounded share of
the time."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax import hostmem
from iia_jax.hostmem import Trimmer, release_free_memory
from iia_jax.models import gmm

FIT = sys.modules["iia_jax.iia.fit"]

PROBE = r"""
import json, threading
import numpy as np
from iia_jax.hostmem import release_free_memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

kept = []
def work():     # 200 MiB in blocks of 100 KiB (below glibc's mmap threshold), in a thread's arena
    blocks = [np.ones(100 * 1024 // 8) for _ in range(2000)]
    kept.extend(blocks[::20])                        # every 20th lives on: the rest is free, not returnable at the top
thread = threading.Thread(target=work)
thread.start()
thread.join()
before = rss_mib()
trimmed = release_free_memory()
print(json.dumps(dict(trimmed=trimmed, returned=before - rss_mib())))
"""


@pytest.mark.skipif(not (Path("/proc/self/status").exists() and release_free_memory.available),
                    reason="needs Linux /proc and a C library with malloc_trim")
def test_a_trim_returns_what_a_worker_thread_freed():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["trimmed"] and r["returned"] > 100, r        # about 190 of the 200 MiB freed


class _Clock:
    """A fake clock (seconds) that the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_trims_take_at_most_their_share_of_the_time():
    clock, calls = _Clock(), []

    def trim():
        calls.append(clock.now)
        clock.now += 0.002                              # a trim takes 2 ms

    trimmer = Trimmer(trim, clock, share=0.01)
    done = []
    for _ in range(1000):                               # asked every millisecond for one second
        done.append(trimmer())
        clock.now += 0.001
    assert done[0] and sum(done) == len(calls)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert min(gaps) >= 0.2 - 1e-9, gaps[:3]            # 2 ms of trimming, then 200 ms apart: 1 %
    assert 4 <= len(calls) <= 6, len(calls)


def test_without_malloc_trim_nothing_is_called():
    trimmer = Trimmer(None)
    assert not trimmer.available and not trimmer()


def test_share_must_be_a_fraction():
    with pytest.raises(ValueError, match="share"):
        Trimmer(lambda: None, share=0)


@pytest.mark.parametrize("mode", ["teacher_forced", "sequential"])
def test_a_chunked_fit_offers_to_trim_after_each_chunk_run(monkeypatch, mode):
    asked = []
    monkeypatch.setattr(FIT, "release_free_memory", lambda: asked.append(1))
    d = gmm(jax.random.normal(jax.random.PRNGKey(0), (3, 2)), 0.5)
    x = 10.0 * jax.random.normal(jax.random.PRNGKey(1), (96, 2))
    iia_jax.fit(d, iia_jax.plan("euler", schedules.karras(3, 0.01, 10.0)), x, fine_steps=2, chunk_size=32,
                mode=mode, quality=None, progress=False)
    assert len(asked) >= 3, len(asked)                  # the reference pass alone runs three chunks


def test_trims_follow_compilations_inside_the_block_only():
    calls = []
    f = jax.jit(lambda v: v * 3.0 + 1.0)
    ones = [np.ones(n, np.float32) for n in (5, 6, 7)]          # host arrays: making them compiles nothing
    with hostmem.trimming_compiles(lambda: calls.append("outer")):
        f(ones[0]).block_until_ready()                           # compiles: one trim
        f(ones[0] + 1).block_until_ready()                       # cached: none
        with hostmem.trimming_compiles(lambda: calls.append("inner")):
            f(ones[1]).block_until_ready()                       # a new shape: the innermost trims
        seen = list(calls)
    f(ones[2]).block_until_ready()                               # outside every block: none
    assert seen == ["outer", "inner"] and calls == seen, calls


def test_a_fit_trims_after_its_compilations(monkeypatch):
    calls = []
    monkeypatch.setattr(hostmem, "_TRIM", lambda: calls.append(1))
    d = gmm(jax.random.normal(jax.random.PRNGKey(0), (3, 2)), 0.5)
    x = 10.0 * jax.random.normal(jax.random.PRNGKey(1), (40, 2))
    plan = iia_jax.plan("euler", schedules.karras(3, 0.01, 10.0))
    iia_jax.fit(d, plan, x, fine_steps=3, quality=None, progress=False)   # shapes no other test fits
    first = len(calls)
    iia_jax.fit(d, plan, x, fine_steps=3, quality=None, progress=False)   # compiles nothing
    assert first >= 3 and len(calls) == first, (first, len(calls))
