"""Run by tests/test_sharding.py in a subprocess: JAX reads XLA_FLAGS (the host device count) and
the distributed set-up once per process, so each case is a process of its own.

    python tests/multidevice_worker.py sharded OUT.json
    python tests/multidevice_worker.py process PROCESS_ID NUM_PROCESSES PORT OUT.json

Prints nothing the test relies on; writes its measurements as JSON to OUT.json.
"""
import functools
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import iia_jax
from iia_jax import schedules
from iia_jax.models import gmm

SIGMA_MAX = 20.0
MEANS = np.random.default_rng(0).standard_normal((3, 4, 4, 1)).astype(np.float32)
SHIFT = np.float32(0.5)


@functools.lru_cache(maxsize=None)
def base():   # built lazily: nothing may touch a device before jax.distributed.initialize
    return gmm(MEANS, 0.3)


def class_mixture(x, sigma, cond):
    """Exact denoiser of the mixture translated by ``cond * SHIFT`` (per row)."""
    m = (cond.astype(x.dtype) * SHIFT).reshape((-1, 1, 1, 1))
    return m + base()(x - m, sigma)


def batch(n, seed=0):
    x = SIGMA_MAX * jax.random.normal(jax.random.PRNGKey(seed), (n, 4, 4, 1))
    c = jnp.asarray(np.random.default_rng(seed).integers(0, 4, n), jnp.int32)
    return np.asarray(x), np.asarray(c)


def plan(solver="heun"):
    return iia_jax.plan(solver, schedules.karras(4, 0.01, SIGMA_MAX))


FITS = {   # name: fit keyword arguments
    "sequential": dict(),
    "sequential-chunked": dict(chunk_size=64),
    "teacher-forced-chunked": dict(mode="teacher_forced", chunk_size=64),
    "sequential-spread": dict(match_spread=True),
    "teacher-forced-spread": dict(mode="teacher_forced", chunk_size=64, match_spread=True),
}


def fit(x, c, **kwargs):
    kwargs.setdefault("key", jax.random.PRNGKey(7))
    res = iia_jax.fit(class_mixture, plan(), x, cond=c, fine_steps=4, progress=False, **kwargs)
    return res


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def sharded_case(out):
    base()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    x, c = batch(256)
    xs, cs = jax.device_put(x, rows), jax.device_put(c, rows)
    result = {"devices": len(jax.devices()), "fits": {}}
    for name, kwargs in FITS.items():
        single, sharded = fit(x, c, **kwargs), fit(xs, cs, **kwargs)
        result["fits"][name] = dict(
            rel=rel(sharded.coeffs.values, single.coeffs.values),
            kept_equal=bool(np.array_equal(sharded.report.kept, single.report.kept)),
            holdout_equal=bool(np.array_equal(sharded.report.holdout_rows, single.report.holdout_rows)),
            median=[single.report.holdout_median, sharded.report.holdout_median],
            single_values=np.asarray(single.coeffs.values).tolist())
    # the sequential fit's carried state spilled to disk between steps: the same coefficients
    with tempfile.TemporaryDirectory() as folder:
        spilled = fit(xs, cs, chunk_size=64, spill_dir=folder)
        left = os.listdir(folder)
    in_memory = fit(xs, cs, chunk_size=64)
    result["spill"] = dict(equal=bool(np.array_equal(spilled.coeffs.values, in_memory.coeffs.values)),
                           any_kept=bool(np.asarray(in_memory.coeffs.kept).any()), left=left)
    coeffs = fit(xs, cs).coeffs
    run = jax.jit(lambda x, c: iia_jax.iia_sample(class_mixture, plan(), coeffs, x, cond=c))
    out_s, out_1 = run(xs, cs), run(x, c)
    result["sample_rel"] = rel(out_s, out_1)
    result["sample_sharding"] = str(out_s.sharding.spec)
    plain = jax.jit(lambda x, c: iia_jax.sample(class_mixture, plan(), x, cond=c))
    result["base_rel"] = rel(plain(xs, cs), plain(x, c))
    # per-device memory of one IIA sampling program, sharded vs on one device
    mem = [run.lower(a, b).compile().memory_analysis() for a, b in ((xs, cs), (x, c))]
    result["memory"] = [dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
                             temp=m.temp_size_in_bytes) for m in mem]
    # uneven batch: a host array with mesh= is padded with zero-weight rows
    xu, cu = batch(250, seed=1)
    padded = fit(xu, cu, mesh=mesh, batch_axis="data")
    single = fit(xu, cu)
    result["uneven"] = dict(rel=rel(padded.coeffs.values, single.coeffs.values),
                            sizes=[padded.report.train_size, padded.report.holdout_size],
                            holdout_equal=bool(np.array_equal(padded.report.holdout_rows,
                                                              single.report.holdout_rows)))
    # ... while an already sharded batch that would need padding is refused
    x8, c8 = batch(264, seed=2)
    try:
        fit(jax.device_put(x8, rows), jax.device_put(c8, rows))
        result["refusal"] = None
    except ValueError as e:
        result["refusal"] = str(e)
    json.dump(result, open(out, "w"))


def process_case(process_id, num_processes, port, out):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id,
                               initialization_timeout=60, heartbeat_timeout_seconds=10,
                               shutdown_timeout_seconds=10)
    base()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    x, c = batch(256)
    half = x.shape[0] // num_processes                 # this process holds its half only
    mine = slice(process_id * half, (process_id + 1) * half)
    xs = jax.make_array_from_process_local_data(rows, x[mine], x.shape)
    cs = jax.make_array_from_process_local_data(rows, c[mine], c.shape)
    res = fit(xs, cs, **FITS["sequential-chunked"])
    json.dump(dict(process=process_id, devices=len(jax.devices()), local=len(jax.local_devices()),
                   values=np.asarray(res.coeffs.values).tolist(), kept=res.report.kept.tolist(),
                   holdout_rows=res.report.holdout_rows.tolist()), open(out, "w"))
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "sharded":
        sharded_case(sys.argv[2])
    else:
        process_case(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
