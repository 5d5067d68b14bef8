"""Saving and loading IIA coefficients: exact round trips, refusals, damaged directories.

The coefficients here are built by hand (no fit is needed to test storage), with values chosen
to catch lossy round trips: negative zero, subnormals, huge and tiny magnitudes.
"""

import dataclasses
import importlib
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iia_jax
from iia_jax import schedules
from iia_jax.iia import Coefficients
from iia_jax.iia.features import feature_spec

storage = importlib.import_module("iia_jax.iia.storage")

N = 6
SIGMA_MAX = 40.0


def _plan(solver="heun", num_steps=N, sigma_max=SIGMA_MAX):
    return iia_jax.plan(solver, schedules.karras(num_steps, sigma_max=sigma_max))


def _coeffs(seed=0, solver="heun", preset="iia-edm", history=1, num_steps=N, fingerprint="model-abc",
            guidance_scale=None):
    plan = _plan(solver, num_steps)
    k = feature_spec(solver, preset, history).num_features
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((num_steps, k)).astype(np.float32)
    values[0, 0] = -0.0                                   # sign of zero must survive
    values[0, 1] = np.float32(1e-42)                      # a subnormal
    values[1, 0] = np.float32(3.0e38)
    values[1, 1] = np.float32(-1.2e-38)
    values[-1, :] = 0.0                                   # a zeroed (not kept) step
    kept = np.ones(num_steps, bool)
    kept[-1] = False
    return Coefficients(jnp.asarray(values), plan.sigmas, jnp.asarray(kept), solver, preset, history,
                        12, "sequential", "trajectory", 384, fingerprint, guidance_scale,
                        iia_jax.__version__)


def _bits(a):
    a = np.asarray(a)
    return a.dtype, a.shape, a.tobytes()


def _assert_identical(a: Coefficients, b: Coefficients):
    for name in ("values", "sigmas", "kept"):
        assert _bits(getattr(a, name)) == _bits(getattr(b, name)), name
    assert a.metadata() == b.metadata()


def _siblings(path: Path):
    """Everything next to ``path`` other than ``path`` itself (temporaries would show up here)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.fixture
def saved(tmp_path):
    coeffs = _coeffs()
    path = iia_jax.save_coefficients(tmp_path / "coeffs", coeffs)
    return coeffs, path


# ----------------------------------------------------------------------------- round trips

def test_round_trip_is_bit_exact(saved):
    coeffs, path = saved
    assert path.is_dir() and (path / "metadata.json").is_file()
    loaded = iia_jax.load_coefficients(path)
    _assert_identical(coeffs, loaded)
    assert np.signbit(np.asarray(loaded.values)[0, 0])
    assert loaded.values.dtype == jnp.float32 and loaded.kept.dtype == jnp.bool_
    assert _siblings(path) == []                          # no temporary directories left


@pytest.mark.parametrize("kwargs", [
    dict(solver="dpmpp_2m", preset="iia-dpm-solver", history=0, fingerprint=None),
    dict(solver="ipndm", preset="iia-pndm", history=2, guidance_scale=3.5),
    dict(solver="euler", preset="generic", history=1, num_steps=2),
])
def test_round_trip_other_metadata(tmp_path, kwargs):
    coeffs = _coeffs(seed=3, **kwargs)
    path = iia_jax.save_coefficients(str(tmp_path / "nested" / "dir"), coeffs)  # str path, new parents
    loaded = iia_jax.load_coefficients(path, plan=_plan(kwargs["solver"], kwargs.get("num_steps", N)),
                                       fingerprint=coeffs.fingerprint)
    _assert_identical(coeffs, loaded)
    assert loaded.fingerprint == kwargs.get("fingerprint", "model-abc")
    assert loaded.guidance_scale == kwargs.get("guidance_scale")


def test_loaded_coefficients_sample_like_the_originals(tmp_path):
    """Loaded coefficients are a working pytree: same jitted program, same samples."""
    plan = _plan("euler", 3)
    coeffs = _coeffs(seed=4, solver="euler", preset="iia-ddim", num_steps=3)
    coeffs = dataclasses.replace(coeffs, values=coeffs.values.at[:2].set(0.0) * 1e-3)  # finite samples
    loaded = iia_jax.load_coefficients(iia_jax.save_coefficients(tmp_path / "c", coeffs), plan)
    denoiser = iia_jax.models.gmm(np.array([[1.0, -1.0], [-1.0, 0.5]], np.float32), 0.3)
    x_T = jnp.asarray(np.random.default_rng(1).standard_normal((8, 2)) * SIGMA_MAX, jnp.float32)
    run = jax.jit(iia_jax.iia_sample, static_argnums=0)
    a, b = run(denoiser, plan, coeffs, x_T), run(denoiser, plan, loaded, x_T)
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- overwrite

def test_existing_directory_needs_overwrite(saved):
    coeffs, path = saved
    other = _coeffs(seed=7, fingerprint="model-xyz")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        iia_jax.save_coefficients(path, other)
    _assert_identical(coeffs, iia_jax.load_coefficients(path))       # untouched
    iia_jax.save_coefficients(path, other, overwrite=True)
    _assert_identical(other, iia_jax.load_coefficients(path))        # replaced
    assert _siblings(path) == []


def _foreign_tree(path):
    path.mkdir()
    (path / "precious.txt").write_text("old")


def _foreign_tree_with_our_names(path):
    """A directory with our entry names whose metadata.json is someone else's."""
    (path / "arrays").mkdir(parents=True)
    (path / "arrays" / "weights.bin").write_bytes(b"\x01\x02")
    (path / "metadata.json").write_text('{"format": "someone.elses.format"}')


def _coefficients_plus_a_file(path):
    iia_jax.save_coefficients(path, _coeffs(seed=5))
    (path / "notes.txt").write_text("mine")


def _a_file(path):
    path.write_text("not a directory")


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None)
                  for p in path.rglob("*")) if path.is_dir() else path.read_bytes()


@pytest.mark.parametrize("make", [_foreign_tree, _foreign_tree_with_our_names,
                                  _coefficients_plus_a_file, _a_file])
def test_overwrite_refuses_what_it_did_not_write(tmp_path, make):
    """overwrite=True replaces a coefficient directory only: anything else stays byte for byte."""
    path = tmp_path / "c"
    make(path)
    before = _tree(path)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="nothing was changed"):
            iia_jax.save_coefficients(path, _coeffs(), overwrite=overwrite)
        assert _tree(path) == before
    assert _siblings(path) == []


def test_overwrite_fills_an_empty_directory(tmp_path):
    path = tmp_path / "c"
    path.mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        iia_jax.save_coefficients(path, _coeffs())
    iia_jax.save_coefficients(path, _coeffs(), overwrite=True)
    _assert_identical(_coeffs(), iia_jax.load_coefficients(path))
    assert _siblings(path) == []


def test_save_rejects_non_coefficients(tmp_path):
    with pytest.raises(TypeError, match="Coefficients"):
        iia_jax.save_coefficients(tmp_path / "c", {"values": np.zeros((2, 2))})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- failed saves

class _FailingCheckpointer:
    def save(self, *args, **kwargs):
        raise OSError("disk full (simulated)")


def _fail_array_write(monkeypatch):
    monkeypatch.setattr(storage, "_checkpointer", _FailingCheckpointer)


def _fail_metadata_write(monkeypatch):
    def failing_dump(*args, **kwargs):
        raise OSError("metadata write failed (simulated)")
    monkeypatch.setattr(storage.json, "dump", failing_dump)


@pytest.mark.parametrize("fail", [_fail_array_write, _fail_metadata_write], ids=["arrays", "metadata"])
@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, existing, fail):
    path = tmp_path / "c"
    old = _coeffs(seed=1)
    if existing:
        iia_jax.save_coefficients(path, old)
    fail(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        iia_jax.save_coefficients(path, _coeffs(seed=2), overwrite=True)
    monkeypatch.undo()
    assert _siblings(path) == []
    if existing:
        _assert_identical(old, iia_jax.load_coefficients(path))
    else:
        assert not path.exists()


def test_failed_final_rename_keeps_the_old_directory(tmp_path, monkeypatch):
    """Replacing is atomic: if moving the new directory into place fails, the old one is back."""
    path = tmp_path / "c"
    old = _coeffs(seed=1)
    iia_jax.save_coefficients(path, old)
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in Path(src).name:                    # the new directory moving into place
            raise OSError("rename failed (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(storage.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        iia_jax.save_coefficients(path, _coeffs(seed=2), overwrite=True)
    monkeypatch.undo()
    _assert_identical(old, iia_jax.load_coefficients(path))
    assert _siblings(path) == []


# ----------------------------------------------------------------------------- refusals on load

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        iia_jax.load_coefficients(tmp_path / "nowhere")


@pytest.mark.parametrize("plan, field", [
    (lambda: _plan(solver="euler"), "solver"),
    (lambda: _plan(num_steps=N + 1), "num_steps"),
    (lambda: _plan(sigma_max=80.0), "sigmas"),
])
def test_load_with_mismatching_plan(saved, plan, field):
    _, path = saved
    with pytest.raises(ValueError, match=field):
        iia_jax.load_coefficients(path, plan=plan())
    iia_jax.load_coefficients(path, plan=_plan())   # the right plan loads


def test_fingerprint_mismatch(saved):
    _, path = saved
    assert iia_jax.load_coefficients(path, fingerprint="model-abc").fingerprint == "model-abc"
    with pytest.raises(ValueError, match="fingerprint"):
        iia_jax.load_coefficients(path, fingerprint="model-other")


def test_fingerprint_required_but_none_stored(tmp_path):
    path = iia_jax.save_coefficients(tmp_path / "c", _coeffs(fingerprint=None))
    with pytest.raises(ValueError, match="fingerprint"):
        iia_jax.load_coefficients(path, fingerprint="model-abc")


# ----------------------------------------------------------------------------- damaged directories

def _edit_metadata(path, edit):
    meta = json.loads((path / "metadata.json").read_text())
    edit(meta)
    (path / "metadata.json").write_text(json.dumps(meta))


def _array_files(path):
    files = sorted(p for p in (path / "arrays").rglob("*") if p.is_file())
    assert files
    return files


def _data_files(path):
    """The files that hold the array bytes (orbax/tensorstore data chunks)."""
    files = [p for p in _array_files(path) if p.parent.name == "d"]
    assert files, _array_files(path)
    return files


def _remove_metadata(path):
    (path / "metadata.json").unlink()


def _garbage_metadata(path):
    (path / "metadata.json").write_bytes(b"\x00\xff{not json")


def _truncated_metadata(path):
    text = (path / "metadata.json").read_text()
    (path / "metadata.json").write_text(text[: len(text) // 2])


def _list_metadata(path):
    (path / "metadata.json").write_text("[1, 2, 3]")


def _foreign_format(path):
    _edit_metadata(path, lambda m: m.update(format="someone.elses.format"))


def _future_version(path):
    _edit_metadata(path, lambda m: m.update(format_version=99))


def _missing_field(path):
    _edit_metadata(path, lambda m: m.pop("solver"))


def _wrong_checksum(path):
    _edit_metadata(path, lambda m: m.update(sha256="0" * 64))


def _wrong_shapes(path):
    _edit_metadata(path, lambda m: m["shapes"].update(values=[N, 99]))


def _arrays_deleted(path):
    shutil.rmtree(path / "arrays")


def _arrays_emptied(path):
    for p in _array_files(path):
        p.unlink()


def _data_truncated(path):
    for p in _data_files(path):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])


def _data_zeroed(path):
    for p in _data_files(path):
        p.write_bytes(bytes(len(p.read_bytes())))


def _every_array_file_truncated(path):
    for p in _array_files(path):
        p.write_bytes(p.read_bytes()[:3])


def _foreign_directory(path):
    for p in list(path.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (path / "model.safetensors").write_bytes(b"weights")


@pytest.mark.parametrize("damage, message", [
    (_remove_metadata, "metadata.json is missing"),
    (_garbage_metadata, "metadata.json is unreadable"),
    (_truncated_metadata, "metadata.json is unreadable"),
    (_list_metadata, "format"),
    (_foreign_format, "someone.elses.format"),
    (_future_version, "format_version"),
    (_missing_field, "lacks fields"),
    (_wrong_checksum, "checksum"),
    (_wrong_shapes, "shapes"),
    (_arrays_deleted, "could not be restored"),
    (_arrays_emptied, "could not be restored"),
    (_data_truncated, "could not be restored|checksum"),
    (_data_zeroed, "could not be restored|checksum"),
    (_every_array_file_truncated, "could not be restored|checksum"),
    (_foreign_directory, "metadata.json is missing"),
])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's event loop
def test_damaged_directory_is_refused(saved, damage, message):
    _, path = saved
    damage(path)
    with pytest.raises(ValueError, match=message) as info:
        iia_jax.load_coefficients(path)
    assert "not a valid iia_jax coefficient directory" in str(info.value)
    assert str(path) in str(info.value)


def test_damage_is_reported_even_with_a_plan(saved):
    """The integrity checks come before the plan check, so damage is not misreported."""
    _, path = saved
    _wrong_checksum(path)
    with pytest.raises(ValueError, match="checksum"):
        iia_jax.load_coefficients(path, plan=_plan(), fingerprint="model-abc")
