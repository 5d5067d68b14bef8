"""A chunked fit keeps a few row-sized arrays per row, not every row's step temporaries.

The sequential fit solves a step from all chunks' statistics before it moves on, so every row
must carry its state between steps (the sampler's state and histories, one fine state: docs/
scaling.md).  What it must not keep is a step's features, goals and residuals for every row:
those live for one chunk at a time.  Measured by the operating system: the peak resident set of
a fresh process during a fit of 256 and of 2,048 rows in chunks of 256 (4,096-dimensional rows of
an exact mixture, so the model itself holds nothing).  The fit kept every row's step temporaries
before (about 40 row-sized arrays per extra row measured); now about 11 held in memory, and none
on disk, where the fit puts it by default once every row's carried state passes ``spill_above``.
The baseline is taken after freed memory goes back to the system, so that what the warm-up fit
left behind does not hide the fit's own growth.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import gc, json, sys
import jax, numpy as np
import iia_jax
from iia_jax.hostmem import _TRIM as trim
from iia_jax import schedules
from iia_jax.models import gmm

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

rows, dim, chunk = (int(a) for a in sys.argv[1:4])
state = sys.argv[4]   # "memory", "default" or a folder to spill into
where = dict(memory=dict(spill_above=None), default={}).get(state, dict(spill_dir=state))
D = gmm(np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, dim)), np.float32), 0.5)
plan = iia_jax.plan("dpmpp_2m", schedules.karras(4, 0.01, 20.0))
options = dict(fine_steps=2, chunk_size=chunk, quality=None, progress=False, **where)
iia_jax.fit(D, plan, 20.0 * jax.random.normal(jax.random.PRNGKey(2), (2 * chunk, dim)), **options)  # compiles
x = 20.0 * jax.random.normal(jax.random.PRNGKey(1), (rows, dim))
gc.collect()
if trim is not None:
    trim()                                          # what the warm-up freed goes back first
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                    # reset the high-water mark
before = status("VmRSS")
iia_jax.fit(D, plan, x, **options)
print(json.dumps(dict(grew=status("VmHWM") - before)))
"""


def _fit_peak(rows: int, dim: int, chunk: int, state="memory", env=None) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, str(rows), str(dim), str(chunk), str(state)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=600,
                         env=None if env is None else {**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["grew"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_chunked_sequential_fit_keeps_a_few_arrays_per_row():
    dim, chunk, small, large = 4096, 256, 256, 2048
    row_bytes = dim * 4
    per_row = (_fit_peak(large, dim, chunk) - _fit_peak(small, dim, chunk)) / (large - small)
    assert per_row < 20 * row_bytes, f"{per_row / row_bytes:.1f} row-sized arrays kept per row"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_spilled_sequential_fit_is_flat_in_the_batch(tmp_path):
    """With ``spill_dir`` the carried state lives on disk between steps: from 512 to 2,048 rows
    the peak grows by less than 3 row-sized arrays a row (measured when written: below 0, against
    6-11 in memory; 512 rows, not 256, so that both fits run the same multi-chunk programs)."""
    dim, chunk, small, large = 4096, 256, 512, 2048
    per_row = ((_fit_peak(large, dim, chunk, tmp_path) - _fit_peak(small, dim, chunk, tmp_path))
               / (large - small))
    assert per_row < 3 * dim * 4, f"{per_row / (dim * 4):.1f} row-sized arrays kept per row"
    assert list(tmp_path.iterdir()) == []


def test_by_default_the_state_goes_to_disk_once_it_passes_spill_above(tmp_path, monkeypatch):
    """Seen from the model, while the fit runs: a chunked fit whose carried state passes
    ``spill_above`` keeps it in a folder under the system's temporary folder; below it, or in one
    chunk, there is no such folder; afterwards none is left.  (That a state on disk keeps the
    fit's memory flat: the ``spill_dir`` test above.)"""
    import tempfile
    import jax
    import numpy as np
    import iia_jax
    from iia_jax import schedules
    from iia_jax.models import gmm
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    mixture = gmm(np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 16)), np.float32), 0.5)
    seen = []

    def denoiser(x, sigma):   # notes, as the model is called, whether a spill folder exists
        jax.debug.callback(lambda: seen.append(any(system.glob("iia-fit-*"))))
        return mixture(x, sigma)

    plan = iia_jax.plan("dpmpp_2m", schedules.karras(4, 0.01, 20.0))
    x = 20.0 * jax.random.normal(jax.random.PRNGKey(1), (256, 16))   # 5 arrays a row: 80 KiB carried
    options = dict(fine_steps=2, holdout=0.0, progress=False)
    for extra, spills in ((dict(chunk_size=64, spill_above=40_000), True),
                          (dict(chunk_size=64, spill_above=200_000), False),
                          (dict(spill_above=0), False)):              # one chunk: nothing to gain
        seen.clear()
        jax.block_until_ready(iia_jax.fit(denoiser, plan, x, **options, **extra).coeffs.values)
        jax.effects_barrier()
        assert seen and any(seen) == spills, extra
        assert list(system.iterdir()) == []


@pytest.mark.parametrize("solver, target", [("dpmpp_2m", "trajectory"), ("ipndm", "local"), ("heun", "trajectory")])
def test_a_spilled_fit_is_exact(tmp_path, monkeypatch, solver, target):
    """The state read back from disk is the state written: the same coefficients, bit for bit,
    for multistep solvers (their history is carried) and both targets, in ``spill_dir`` and in
    the system's temporary folder (``spill_above=0``); the folders are left empty."""
    import tempfile
    import jax
    import numpy as np
    import iia_jax
    from iia_jax import schedules
    from iia_jax.models import gmm
    denoiser = gmm(np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 16)), np.float32), 0.5)
    plan = iia_jax.plan(solver, schedules.karras(4, 0.01, 20.0))
    x = 20.0 * jax.random.normal(jax.random.PRNGKey(1), (300, 16))
    options = dict(fine_steps=3, chunk_size=64, target=target, holdout=0.0, progress=False)   # raw values
    kept = iia_jax.fit(denoiser, plan, x, spill_above=None, **options).coeffs
    spilled = iia_jax.fit(denoiser, plan, x, spill_dir=tmp_path, **options).coeffs
    np.testing.assert_array_equal(np.asarray(spilled.values), np.asarray(kept.values))
    assert np.asarray(kept.values).any() and list(tmp_path.iterdir()) == []
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system))
    auto = iia_jax.fit(denoiser, plan, x, spill_above=0, **options).coeffs
    np.testing.assert_array_equal(np.asarray(auto.values), np.asarray(kept.values))
    assert list(system.iterdir()) == []


def test_the_disk_store_gives_back_what_it_was_given(tmp_path):
    """Each chunk's leaves in their own slots, rewritten in place: scalars, integers, booleans and
    a tree that changes between writes come back equal, and the folder goes on exit."""
    import importlib
    import jax
    import numpy as np
    store_type = importlib.import_module("iia_jax.iia.fit")._ChunkStore
    rng = np.random.default_rng(0)

    def tree(c):
        return (rng.standard_normal((4, 3)).astype(np.float32), np.int32(c), np.array(c % 2 == 0), None)

    with store_type(tmp_path) as store:
        given = {c: tree(c) for c in range(3)}
        for c, t in given.items():
            store[c] = t
        given[1] = tree(7)                       # rewritten in place
        store[1] = given[1]
        given[2] = {"other": np.arange(5, dtype=np.float32)}     # another structure
        store[2] = given[2]
        for c, t in given.items():
            got = store[c]
            assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(t)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(t)):
                np.testing.assert_array_equal(np.asarray(a), b)
                assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b)
    assert list(tmp_path.iterdir()) == []
