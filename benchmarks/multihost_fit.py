"""Fit IIA coefficients with several processes (hosts), each holding only its share of the batch.

On a cluster, run the same command once per process, with the same arguments apart from
``--process-id`` (0 .. P-1); process 0 writes the coefficients:

    python benchmarks/multihost_fit.py --coordinator HOST0:PORT --num-processes P \\
        --process-id I --rows-per-process 4096 --out coeffs/

On one machine, ``--local P`` starts P such processes on a loopback port (host CPU devices,
gloo collectives), waits for all of them (killing every one on timeout), then fits the whole
batch in one process on one device and checks that both sets of coefficients keep the same steps
and give the same IIA samples on fresh draws (within 1% of the correction):

    python benchmarks/multihost_fit.py --local 2 --out /tmp/coeffs

What each process does (docs/scaling.md): ``jax.distributed.initialize``, a 1-D mesh over all
devices of all processes, its own rows placed on its own devices with
``jax.make_array_from_process_local_data``, then ``iia_jax.fit`` with the same arguments
everywhere (the same ``key``: every process must choose the same held-out rows).  Only
``K x K`` statistics, finiteness flags and one scalar per held-out row cross processes.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

SHAPE = (8, 8, 1)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SOLVER, STEPS, FINE_STEPS, FIT_KEY = "heun", 4, 4, 0


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (reachable by every process)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--rows-per-process", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: none)")
    parser.add_argument("--model", choices=("gmm", "digits"), default="gmm",
                        help="gmm: an exact 10-component mixture (fast); digits: the shipped U-Net")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true",
                        help="CPU devices: use gloo collectives (GPU/TPU bring their own)")
    parser.add_argument("--out", required=True, help="coefficient directory written by process 0")
    parser.add_argument("--local", type=int, metavar="P",
                        help="start P processes on this machine (loopback) and check the result")
    parser.add_argument("--devices-per-process", type=int, default=2, help="with --local")
    parser.add_argument("--timeout", type=float, default=600.0, help="with --local, seconds")
    return parser.parse_args(argv)


def model(name):
    import iia_jax
    from iia_jax.bench import models
    return iia_jax.pretrained.digits() if name == "digits" else models.prototypes()


def plan():
    import iia_jax
    return iia_jax.plan(SOLVER, iia_jax.schedules.karras(STEPS, SIGMA_MIN, SIGMA_MAX))


def local_rows(seed: int, process_id: int, rows: int) -> np.ndarray:
    """This process's rows of x_T (drawn here; in practice, read from this host's shard)."""
    rng = np.random.default_rng([seed, process_id])
    return (SIGMA_MAX * rng.standard_normal((rows,) + SHAPE)).astype(np.float32)


def fit(args, x):
    import iia_jax
    return iia_jax.fit(model(args.model), plan(), x, fine_steps=FINE_STEPS,
                       chunk_size=args.chunk_size, key=jax.random.PRNGKey(FIT_KEY), progress=False)


def run_process(args):
    """One process of the fit: join, place this process's rows, fit, write (process 0)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import iia_jax
    if args.cpu:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = Mesh(np.array(jax.devices()), ("data",))            # every device of every process
    rows = NamedSharding(mesh, PartitionSpec("data"))
    mine = local_rows(args.seed, args.process_id, args.rows_per_process)
    x = jax.make_array_from_process_local_data(
        rows, mine, (args.rows_per_process * args.num_processes,) + SHAPE)
    start = time.perf_counter()
    result = fit(args, x)
    print(f"process {args.process_id}/{args.num_processes}: {len(jax.local_devices())} of "
          f"{len(jax.devices())} devices, fitted in {time.perf_counter() - start:.1f} s", flush=True)
    if args.process_id == 0:
        print(result.report.summary(), flush=True)
        iia_jax.save_coefficients(args.out, result.coeffs, overwrite=True)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(args):
    """Start ``args.local`` processes on loopback, wait (killing all on timeout), then check."""
    import iia_jax
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices_per_process}")
    common = [sys.executable, __file__, "--coordinator", f"127.0.0.1:{_free_port()}",
              "--num-processes", str(args.local), "--rows-per-process", str(args.rows_per_process),
              "--model", args.model, "--seed", str(args.seed), "--out", args.out, "--cpu"]
    if args.chunk_size:
        common += ["--chunk-size", str(args.chunk_size)]
    start = time.perf_counter()
    procs = [subprocess.Popen(common + ["--process-id", str(i)], env=env, start_new_session=True)
             for i in range(args.local)]
    try:
        codes = [p.wait(timeout=max(1.0, args.timeout - (time.perf_counter() - start))) for p in procs]
    finally:
        for p in procs:              # nothing is left behind, whatever happened
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    if any(codes):
        sys.exit(f"a process failed: exit codes {codes}")
    print(f"{args.local} processes finished in {time.perf_counter() - start:.1f} s", flush=True)
    together = iia_jax.load_coefficients(args.out, plan())
    whole = np.concatenate([local_rows(args.seed, i, args.rows_per_process) for i in range(args.local)])
    alone = fit(args, whole).coeffs
    # Compare what the coefficients do: on steps whose features are nearly collinear the
    # coefficients themselves are not identifiable (docs/scaling.md, "Equal results").
    denoiser, p = model(args.model), plan()
    fresh = local_rows(args.seed + 1000, 0, args.rows_per_process)
    base = np.asarray(iia_jax.sample(denoiser, p, fresh))
    y_together, y_alone = (np.asarray(iia_jax.iia_sample(denoiser, p, c, fresh)) for c in (together, alone))
    rel = float(np.sqrt(np.mean((y_together - y_alone) ** 2) / np.mean((y_alone - base) ** 2)))
    same_kept = bool(np.array_equal(np.asarray(together.kept), np.asarray(alone.kept)))
    print(f"{args.local} processes vs one process on the same {len(whole)} rows, IIA samples of "
          f"{len(fresh)} fresh draws: RMS difference = {rel:.2e} of the RMS correction; kept steps "
          f"equal: {same_kept}", flush=True)
    if rel > 1e-2 or not same_kept:
        sys.exit("the multi-process fit differs from the single-process fit")


if __name__ == "__main__":
    arguments = parse()
    if arguments.local:
        launch_local(arguments)
    else:
        run_process(arguments)
