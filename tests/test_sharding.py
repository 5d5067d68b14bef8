"""Data-parallel fitting and sampling (docs/scaling.md), on host CPU devices in subprocesses.

JAX fixes its device count and distributed set-up when it starts, so every case runs
``tests/multidevice_worker.py`` in a fresh process: 8 devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, or two processes joined by
``jax.distributed.initialize`` on a loopback address with gloo CPU collectives.

Tolerances: a sharded fit sums the per-step Gram statistics in another order than one device
(and uses the normal equations where one device, unchunked, uses ``lstsq``): float32 round-off,
amplified by the conditioning of the scaled Gram matrix.  Measured when written: relative
differences 2e-4 .. 2e-3 of the largest coefficient; asserted: 1e-2.  Samples from the same
coefficients agree to float32 round-off (XLA fuses per-shard programs differently: measured
5e-6 .. 1.3e-5 of the largest value; asserted 1e-4).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import iia_jax  # noqa: F401  (the worker imports it too; fail here first if it is broken)

WORKER = Path(__file__).with_name("multidevice_worker.py")
TIMEOUT = 420


def _env(devices, dump=None):
    env = dict(os.environ)
    flags = [f"--xla_force_host_platform_device_count={devices}"]
    if dump:
        flags += [f"--xla_dump_to={dump}", "--xla_dump_hlo_as_text"]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(args, env, timeout=TIMEOUT):
    """Run the worker in its own process group; kill the whole group if it overstays."""
    proc = subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, out.decode()[-4000:]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    _run(["sharded", str(tmp / "out.json")], _env(8, tmp / "hlo"))
    return json.loads((tmp / "out.json").read_text()), tmp / "hlo"


def test_sharded_fit_equals_single_device_fit(sharded):
    result, _ = sharded
    assert result["devices"] == 8
    for name, fit in result["fits"].items():
        assert fit["rel"] < 1e-2, (name, fit)
        assert fit["kept_equal"] and fit["holdout_equal"], name
        np.testing.assert_allclose(*fit["median"], rtol=1e-2, err_msg=name)


def test_a_spilled_sharded_fit_equals_the_one_in_memory(sharded):
    """``spill_dir``: each chunk's sharded state goes to disk and comes back on its sharding; the
    coefficients are bit for bit those of the fit that kept it in memory, and no file is left."""
    spill = sharded[0]["spill"]
    assert spill["equal"] and spill["any_kept"] and spill["left"] == []


def test_sharded_samples_stay_sharded_and_equal(sharded):
    result, _ = sharded
    assert result["sample_rel"] < 1e-4 and result["base_rel"] < 1e-4
    assert result["sample_sharding"] in ("P('data',)", "PartitionSpec('data',)")
    sharded_mem, single_mem = result["memory"]
    # each device holds an eighth of the batch (arguments: x and labels; outputs: samples)
    assert sharded_mem["arguments"] * 8 == single_mem["arguments"]
    assert sharded_mem["outputs"] * 8 == single_mem["outputs"]
    assert sharded_mem["temp"] <= single_mem["temp"] / 4


def test_uneven_batches(sharded):
    result, _ = sharded
    uneven = result["uneven"]
    assert uneven["rel"] < 1e-2 and uneven["holdout_equal"]
    assert uneven["sizes"] == [250 - 62, 62]        # 62 complete groups of four
    assert result["refusal"] is not None and "multiple of 32" in result["refusal"]


_COLLECTIVE = re.compile(r"=\s*(.*?)\s(all-gather|all-to-all|collective-permute|reduce-scatter|"
                         r"all-reduce)(-start)?\(")


def _elements(shape_text):
    return sum(int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
               for dims in re.findall(r"\[([\d,]*)\]", shape_text))


def test_no_batch_sized_array_crosses_devices(sharded):
    """Every program the fits and samplers compiled (XLA's optimised HLO, dumped by the worker):
    no all-gather, all-to-all or collective-permute at all, and every all-reduce is small: the
    per-step statistics (4 steps x 2 row sets x (K^2 + K + 1), K = 4), with ``match_spread`` the
    per-pixel sums of the features, base step and target ((K + 2) P, P = 16 pixels, plus K + 3
    scalars) for each step, or finiteness flags; a batch-sized array would be 256 x 16."""
    _, dump = sharded
    programs = list(Path(dump).glob("*after_optimizations.txt"))
    assert len(programs) > 20
    found = []
    for path in programs:
        for shape, op, _ in _COLLECTIVE.findall(path.read_text()):
            found.append((op, _elements(shape), path.name))
    assert found, "the sharded fit made no cross-device reduction at all"
    assert {op for op, _, _ in found} == {"all-reduce"}, found
    biggest = max(n for _, n, _ in found)
    assert biggest <= 4 * (2 * (16 + 4 + 1) + 6 * 16 + 7), (biggest, [f for f in found if f[1] == biggest])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_fit_the_same_coefficients(tmp_path, sharded):
    """Two processes (2 CPU devices each) on loopback, each holding half of the batch, fit what one
    process on one device fits from the whole batch; both end on their own."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), "process", str(i), "2", str(port),
                               str(tmp_path / f"p{i}.json")], env=_env(2), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=TIMEOUT)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outs]
    results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert [r["devices"] for r in results] == [4, 4] and [r["local"] for r in results] == [2, 2]
    np.testing.assert_array_equal(results[0]["values"], results[1]["values"])
    one = sharded[0]["fits"]["sequential-chunked"]
    assert one["kept_equal"]
    assert results[0]["holdout_rows"] == results[1]["holdout_rows"]
    # the same fit by one process on one device (the module fixture's worker)
    a, b = np.asarray(results[0]["values"]), np.asarray(one["single_values"])
    assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max()
