"""Saving and loading fitted coefficients with orbax.

A coefficient directory holds ``metadata.json`` (the static fields, the library version, array
shapes and a SHA-256 of the arrays) and ``arrays/`` (an orbax PyTree checkpoint of ``values``,
``sigmas`` and ``kept``).  Saves are atomic: everything is written to a temporary sibling
directory that is renamed into place; an existing directory is replaced only with
``overwrite=True``.  Loads check the format, the checksum and, when given, the plan and the model
fingerprint, and say what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from .coefficients import Coefficients, check_coefficients

FORMAT = "iia_jax.coefficients"
FORMAT_VERSION = 1
_ARRAYS = ("values", "sigmas", "kept")


def _checkpointer():
    """An orbax checkpointer that works from one process alone: in a multi-process job the
    coefficients are replicated, so the process that saves or loads them does not wait for others
    (orbax's default synchronises every process)."""
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=options),
                            multiprocessing_options=options)


def _checksum(arrays: dict) -> str:
    digest = hashlib.sha256()
    for name in _ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def save_coefficients(path, coeffs: Coefficients, overwrite: bool = False) -> Path:
    """Write ``coeffs`` to the directory ``path`` atomically; returns the path."""
    if not isinstance(coeffs, Coefficients):
        raise TypeError(f"coeffs must be iia_jax.Coefficients, got {type(coeffs).__name__}")
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    arrays = {name: np.asarray(getattr(coeffs, name)) for name in _ARRAYS}
    meta = dict(coeffs.metadata(), format=FORMAT, format_version=FORMAT_VERSION,
                shapes={k: list(v.shape) for k, v in arrays.items()}, sha256=_checksum(arrays))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _checkpointer().save(tmp / "arrays", arrays)
        with open(tmp / "metadata.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)  # put the old directory back: a failed save changes nothing
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _corrupt(path, why):
    return ValueError(f"{path} is not a valid iia_jax coefficient directory: {why}")


def _read_metadata(path: Path) -> dict:
    meta_file = path / "metadata.json"
    if not meta_file.is_file():
        raise _corrupt(path, "metadata.json is missing (foreign or incomplete directory)")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"metadata.json is unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _corrupt(path, f"metadata.json has format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _corrupt(path, f"format_version {meta.get('format_version')!r} is not supported "
                             f"(this library reads {FORMAT_VERSION})")
    return meta


def load_coefficients(path, plan=None, fingerprint: str | None = None) -> Coefficients:
    """Read coefficients saved by :func:`save_coefficients`.

    With ``plan``, refuse coefficients fitted for another solver, step count or sigmas; with
    ``fingerprint``, refuse coefficients fitted for another model.  Errors name the field.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"coefficient directory {path} does not exist")
    meta = _read_metadata(path)
    try:
        restored = _checkpointer().restore(path / "arrays")
        arrays = {name: np.asarray(restored[name]) for name in _ARRAYS}
    except Exception as e:  # orbax raises many types for damaged files
        raise _corrupt(path, f"the arrays could not be restored ({type(e).__name__}: {e})") from None
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    if shapes != meta.get("shapes"):
        raise _corrupt(path, f"array shapes {shapes} differ from metadata {meta.get('shapes')}")
    if _checksum(arrays) != meta.get("sha256"):
        raise _corrupt(path, "the arrays do not match the checksum in metadata.json (damaged files)")
    static = {k: meta[k] for k in ("solver", "preset", "history", "fine_steps", "mode", "target",
                                   "batch_size", "fingerprint", "guidance_scale", "version",
                                   "plan_fingerprint", "match_spread")
              if k in meta}
    try:
        coeffs = Coefficients(jnp.asarray(arrays["values"]), jnp.asarray(arrays["sigmas"]),
                              jnp.asarray(arrays["kept"]), **static)
    except TypeError as e:
        raise _corrupt(path, f"metadata.json lacks fields ({e})") from None
    if fingerprint is not None and coeffs.fingerprint != fingerprint:
        raise ValueError(f"fingerprint mismatch: {path} was fitted for model {coeffs.fingerprint!r}, "
                         f"not {fingerprint!r}")
    if plan is not None:
        check_coefficients(coeffs, plan)
    return coeffs


__all__ = ["save_coefficients", "load_coefficients"]
