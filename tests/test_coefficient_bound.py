"""``benchmarks/coefficient_bound.py``: every step's IIA coefficients tuned together, end to end
through the sampler, starting from the fit's.  Checked on an exact Gaussian mixture against the
final error written out here with numpy."""
import dataclasses
import importlib.util
from pathlib import Path

import jax
import numpy as np

import iia_jax
from iia_jax import schedules
from iia_jax.models import gmm


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "coefficient_bound.py"
    spec = importlib.util.spec_from_file_location("coefficient_bound", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mean_rms(denoiser, plan, coeffs, x, ref):
    s = np.asarray(iia_jax.iia_sample(denoiser, plan, coeffs, x))
    return float(np.mean(np.sqrt(np.mean((s - ref) ** 2, axis=1))))


def test_tuning_starts_from_the_fit_and_lowers_the_final_error():
    bench = _bench()
    D = gmm(np.array([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]]), 0.2)
    plan = iia_jax.plan("dpmpp_2m", schedules.karras(4, 0.002, 80.0))
    x = 80.0 * jax.random.normal(jax.random.PRNGKey(0), (128, 2))
    ref = np.asarray(iia_jax.sample(D, iia_jax.plan("heun", schedules.karras(64, 0.002, 80.0)), x))
    coeffs = iia_jax.fit(D, plan, x, progress=False).coeffs
    values, losses = bench.tune(D, plan, coeffs, x, ref, iterations=0, lr=1e-2)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(coeffs.values))
    start = _mean_rms(D, plan, coeffs, x, ref)
    np.testing.assert_allclose(losses[-1][1], start, rtol=1e-4)
    values, losses = bench.tune(D, plan, coeffs, x, ref, iterations=40, lr=1e-2)
    tuned = dataclasses.replace(coeffs, values=values)
    np.testing.assert_allclose(losses[-1][1], _mean_rms(D, plan, tuned, x, ref), rtol=1e-4)
    assert losses[0] == [0, losses[0][1]] and abs(losses[0][1] - start) < 1e-4 * start
    assert losses[-1][1] < 0.95 * start


def test_the_page_is_what_the_saved_results_give():
    """docs/coefficient_bound.md is ``--table``'s page of docs/coefficient_bound.json, and it says
    how far the tuning still moved."""
    import json
    bench, docs = _bench(), Path(__file__).resolve().parents[1] / "docs"
    res = json.loads((docs / "coefficient_bound.json").read_text())
    assert bench.page(res) == (docs / "coefficient_bound.md").read_text()
    assert "its last 100 iterations lowered the fit rows' error by" in bench.page(res)
    short = dict(res, losses=[[0, 1.0], [50, 0.9]])
    assert "stopped after 50 iterations, before it settled" in bench.page(short)
