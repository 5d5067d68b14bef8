"""Saving and loading fitted coefficients with orbax (format and guarantees: docs/reliability.md).

A coefficient directory holds exactly two entries: ``metadata.json`` and ``arrays/`` (an orbax
PyTree checkpoint of the array fields of :class:`Coefficients`).  ``metadata.json`` holds the
format name and version, every static field of :class:`Coefficients`, the arrays' shapes and
dtypes, and one SHA-256 over all of it and the array bytes (:func:`checksum`).  Both field lists
come from the record itself (``dataclasses.fields``), so a field added to ``Coefficients`` is
stored, checked and required without a second list to update.

- **Load** verifies everything: strict JSON (no duplicate keys, no NaN), the format, exactly the
  expected keys (a missing or unknown key is an error, never a default), their types, the arrays'
  shapes and dtypes, the checksum, then the record itself (finite values, a valid grid, the
  feature count of the preset, the grid fingerprint of the sigmas).  Older format versions are
  brought to the current one by :func:`migrate` first.
- **Save** checks the record the same way, writes a hidden sibling directory, reads it back and
  compares, and only then renames it into place.  ``overwrite=True`` replaces only a coefficient
  directory (both entries and nothing else, its ``metadata.json`` naming this format) or an empty
  directory; anything else is refused and left untouched.  The old directory is renamed aside
  before the new one moves in and is put back if that fails, so an exception at any step leaves
  the old coefficients loadable; a crash between the two renames leaves them at ``.NAME.old-ID``,
  which :func:`load_coefficients` names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from .. import validate
from ..sampling import grid_fingerprint
from .coefficients import Coefficients, check_coefficients
from .features import feature_spec

FORMAT = "iia_jax.coefficients"
FORMAT_VERSION = 2
ARRAYS = tuple(f.name for f in dataclasses.fields(Coefficients) if not f.metadata.get("static"))
STATIC = tuple(f.name for f in dataclasses.fields(Coefficients) if f.metadata.get("static"))
HEADER = ("format", "format_version", "shapes", "dtypes", "sha256")
ENTRIES = ("arrays", "metadata.json")

# Format 1 (iia_jax 0.1.0 until format 2): the static fields of its day, shapes and a SHA-256 of
# the arrays alone.  Frozen here as that format's definition, whatever Coefficients becomes.
V1_ARRAYS = ("values", "sigmas", "kept")
V1_REQUIRED = frozenset({"format", "format_version", "shapes", "sha256", "solver", "preset",
                         "history", "fine_steps", "mode", "target", "batch_size", "fingerprint",
                         "guidance_scale", "version"})
V1_OPTIONAL = frozenset({"plan_fingerprint", "match_spread"})   # added within format 1


class Invalid(ValueError):
    """What is wrong with a coefficient directory's contents (the loader adds the path)."""


def _checkpointer():
    """An orbax checkpointer that works from one process alone: in a multi-process job the
    coefficients are replicated, so the process that saves or loads them does not wait for others
    (orbax's default synchronises every process)."""
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=options),
                            multiprocessing_options=options)


# ----------------------------------------------------------------------------- integrity

def _canonical(meta: dict) -> bytes:
    """The metadata as one canonical JSON text (sorted keys, no spaces, ASCII)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def _update_arrays(digest, arrays: dict, names) -> None:
    for name in names:
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.tobytes())


def checksum(meta: dict, arrays: dict) -> str:
    """SHA-256 over every metadata field but ``sha256`` itself (canonical JSON) and every array
    (name, dtype, shape, bytes): any change to what a directory holds changes it."""
    digest = hashlib.sha256(_canonical({k: v for k, v in meta.items() if k != "sha256"}))
    _update_arrays(digest, arrays, ARRAYS)
    return digest.hexdigest()


def _v1_checksum(arrays: dict) -> str:
    """Format 1's SHA-256: the arrays alone."""
    digest = hashlib.sha256()
    _update_arrays(digest, arrays, V1_ARRAYS)
    return digest.hexdigest()


def _layout(arrays: dict) -> tuple[dict, dict]:
    return ({k: list(np.shape(v)) for k, v in arrays.items()},
            {k: np.asarray(v).dtype.str for k, v in arrays.items()})


def check_record(coeffs: Coefficients) -> None:
    """Everything a stored record must satisfy beyond its types: array kinds and shapes that fit
    each other and the preset, finite values, a valid grid, and a grid fingerprint that is the
    sigmas' own.  Raises :class:`Invalid` naming the field."""
    values, sigmas, kept = (np.asarray(getattr(coeffs, n)) for n in ("values", "sigmas", "kept"))
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
        raise Invalid(f"values must be a 2-D float array, got {values.dtype} {values.shape}")
    n = values.shape[0]
    if sigmas.shape != (n + 1,) or not np.issubdtype(sigmas.dtype, np.floating):
        raise Invalid(f"sigmas must be a float array of shape {(n + 1,)}, got {sigmas.dtype} {sigmas.shape}")
    if kept.shape != (n,) or kept.dtype != np.bool_:
        raise Invalid(f"kept must be a bool array of shape {(n,)}, got {kept.dtype} {kept.shape}")
    try:
        validate.finite_coefficients(values, "values")
        validate.sigmas(sigmas)
        k = feature_spec(coeffs.solver, coeffs.preset, coeffs.history).num_features
    except (TypeError, ValueError) as e:
        raise Invalid(str(e)) from None
    if values.shape[1] != k:
        raise Invalid(f"values have {values.shape[1]} features, but preset {coeffs.preset!r} with "
                      f"history={coeffs.history} has {k}")
    own = grid_fingerprint(coeffs.solver, sigmas)
    if coeffs.plan_fingerprint is not None and coeffs.plan_fingerprint != own:
        raise Invalid(f"plan_fingerprint {coeffs.plan_fingerprint!r} is not the one of the stored "
                      f"sigmas ({own!r})")


# ----------------------------------------------------------------------------- format versions

def migrate(meta: dict, arrays: dict) -> dict:
    """The metadata of any supported format version, as the current version's metadata.

    Format 1 (with or without the ``plan_fingerprint`` and ``match_spread`` fields it gained over
    time): its array checksum and shapes are verified first; a missing ``match_spread`` becomes
    False (plain least squares, the only fit of its day) and a missing ``plan_fingerprint`` the
    grid fingerprint of the stored sigmas (what :func:`iia_jax.plan` gives that grid); dtypes are
    read off the arrays, and the result carries a fresh format-2 checksum.  Format 1's metadata
    had no checksum of its own: its fields are only as trustworthy as their type checks.
    Raises :class:`Invalid` for anything else.
    """
    version = meta.get("format_version")
    if type(version) is int and version == FORMAT_VERSION:
        return meta
    if type(version) is not int or version != 1:
        raise Invalid(f"format_version {version!r} is not supported (this library reads 1 and "
                      f"{FORMAT_VERSION})")
    _check_keys(meta, V1_REQUIRED, V1_OPTIONAL)
    if set(arrays) != set(V1_ARRAYS):
        raise Invalid(f"arrays {sorted(arrays)} are not format 1's {sorted(V1_ARRAYS)}")
    shapes, dtypes = _layout(arrays)
    if shapes != meta["shapes"]:
        raise Invalid(f"array shapes {shapes} differ from metadata.json's shapes {meta['shapes']}")
    if _v1_checksum(arrays) != meta["sha256"]:
        raise Invalid("the arrays do not match the checksum in metadata.json (damaged files)")
    static = {k: meta[k] for k in V1_REQUIRED | V1_OPTIONAL if k in meta and k not in HEADER}
    static.setdefault("match_spread", False)
    if "plan_fingerprint" not in static:
        static["plan_fingerprint"] = grid_fingerprint(meta["solver"], arrays["sigmas"])
    new = dict(static, format=FORMAT, format_version=FORMAT_VERSION, shapes=shapes, dtypes=dtypes)
    return dict(new, sha256=checksum(new, arrays))


def _check_keys(meta: dict, required, optional=frozenset()) -> None:
    """Every ``required`` metadata field present, and none but those and ``optional``."""
    keys = set(meta)
    if not set(required) <= keys:
        raise Invalid(f"metadata.json lacks fields {sorted(set(required) - keys)}")
    if not keys <= set(required) | set(optional):
        raise Invalid(f"metadata.json has unknown fields {sorted(keys - set(required) - set(optional))}")


def _metadata(coeffs: Coefficients, arrays: dict) -> dict:
    shapes, dtypes = _layout(arrays)
    meta = dict(coeffs.metadata(), format=FORMAT, format_version=FORMAT_VERSION, shapes=shapes,
                dtypes=dtypes)
    return dict(meta, sha256=checksum(meta, arrays))


def _verify(meta: dict, arrays: dict) -> None:
    """The current format's checks of a directory's metadata against its arrays."""
    _check_keys(meta, set(STATIC) | set(HEADER))
    if set(arrays) != set(ARRAYS):
        raise Invalid(f"the arrays are {sorted(arrays)}, expected {sorted(ARRAYS)}")
    shapes, dtypes = _layout(arrays)
    if shapes != meta["shapes"]:
        raise Invalid(f"array shapes {shapes} differ from metadata.json's shapes {meta['shapes']}")
    if dtypes != meta["dtypes"]:
        raise Invalid(f"array dtypes {dtypes} differ from metadata.json's dtypes {meta['dtypes']}")
    if not isinstance(meta["sha256"], str) or checksum(meta, arrays) != meta["sha256"]:
        raise Invalid("the contents do not match the checksum in metadata.json (damaged files or "
                      "an edited field)")


def _record(meta: dict, arrays: dict) -> Coefficients:
    """The record, built by keyword from verified metadata and arrays, and checked."""
    try:
        coeffs = Coefficients(**{n: jnp.asarray(arrays[n]) for n in ARRAYS},
                              **{n: meta[n] for n in STATIC})
    except (TypeError, ValueError) as e:
        raise Invalid(f"a field is invalid ({e})") from None
    check_record(coeffs)
    return coeffs


# ----------------------------------------------------------------------------- reading

def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise Invalid(f"metadata.json repeats keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _no_constant(name):
    raise Invalid(f"metadata.json holds {name}, which is not JSON")


def _read_metadata(path: Path) -> dict:
    meta_file = path / "metadata.json"
    if not meta_file.is_file():
        raise Invalid("metadata.json is missing (foreign or incomplete directory)")
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Invalid(f"metadata.json is unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise Invalid(f"metadata.json has format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                      f"expected {FORMAT!r}")
    return meta


def _read_arrays(path: Path) -> dict:
    extra = sorted(p.name for p in path.iterdir() if p.name not in ENTRIES)
    if extra:
        raise Invalid(f"it holds entries other than {list(ENTRIES)}: {extra}")
    try:
        restored = _checkpointer().restore(path / "arrays")
        if not isinstance(restored, dict):
            raise TypeError(f"a {type(restored).__name__}, not a dict of arrays")
        return {name: np.asarray(a) for name, a in restored.items()}
    except Exception as e:  # orbax raises many types for damaged files
        raise Invalid(f"the arrays could not be restored ({type(e).__name__}: {e})") from None


def _read(path: Path) -> Coefficients:
    meta = _read_metadata(path)
    arrays = _read_arrays(path)
    meta = migrate(meta, arrays)
    _verify(meta, arrays)
    return _record(meta, arrays)


def _corrupt(path, why):
    return ValueError(f"{path} is not a valid iia_jax coefficient directory: {why}")


def _left_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []


def load_coefficients(path, plan=None, fingerprint: str | None = None) -> Coefficients:
    """Read coefficients saved by :func:`save_coefficients`, verifying everything they hold.

    With ``plan``, refuse coefficients fitted for another solver, step count or sigmas; with
    ``fingerprint``, refuse coefficients fitted for another model.  Errors name the field; a
    damaged or foreign directory raises a ValueError saying what is wrong.
    """
    path = Path(path).absolute()
    if not path.is_dir():
        aside = _left_aside(path)
        hint = (f"; an interrupted save left the previous coefficients at {aside[-1]}: rename it "
                f"back to {path.name}" if aside else "")
        raise FileNotFoundError(f"coefficient directory {path} does not exist{hint}")
    try:
        coeffs = _read(path)
    except Invalid as e:
        raise _corrupt(path, e) from None
    if fingerprint is not None and coeffs.fingerprint != fingerprint:
        raise ValueError(f"fingerprint mismatch: {path} was fitted for model {coeffs.fingerprint!r}, "
                         f"not {fingerprint!r}")
    if plan is not None:
        check_coefficients(coeffs, plan)
    return coeffs


# ----------------------------------------------------------------------------- writing

def _write_arrays(directory: Path, arrays: dict) -> None:
    _checkpointer().save(directory / "arrays", arrays)


def _write_metadata(directory: Path, meta: dict) -> None:
    with open(directory / "metadata.json", "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())


def _read_back(directory: Path, coeffs: Coefficients) -> None:
    """Load what was just written and compare it with what was meant to be."""
    try:
        back = _read(directory)
    except Invalid as e:
        raise OSError(f"the coefficients written to {directory} do not read back: {e}") from None
    same = back.metadata() == coeffs.metadata() and all(
        _bits(getattr(back, n)) == _bits(getattr(coeffs, n)) for n in ARRAYS)
    if not same:
        raise OSError(f"the coefficients written to {directory} read back changed")


def _bits(a):
    a = np.asarray(a)
    return a.dtype.str, a.shape, a.tobytes()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some filesystems cannot sync a directory, which is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replaceable(path: Path, overwrite: bool) -> None:
    """Refuse to touch ``path`` unless it is absent, or ``overwrite`` and it is an empty directory
    or a coefficient directory (exactly :data:`ENTRIES`, ``metadata.json`` naming :data:`FORMAT`)."""
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link; save to the directory it points to, "
                              "nothing was changed")
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a coefficient directory; nothing was changed")
    entries = sorted(p.name for p in path.iterdir())
    why = None
    if any(e not in ENTRIES for e in entries):
        why = f"it holds {[e for e in entries if e not in ENTRIES]}"
    elif entries:
        try:
            marker = json.loads((path / "metadata.json").read_text()).get("format")
        except Exception:  # any unreadable marker means: not recognisably ours
            marker = None
        if marker != FORMAT:
            why = "its metadata.json does not name the iia_jax coefficient format"
    if why is not None:
        raise FileExistsError(f"{path} exists and is not an iia_jax coefficient directory ({why}); "
                              "save_coefficients replaces only a coefficient directory or an empty "
                              "one, so nothing was changed: remove it yourself or choose another path")
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")


def save_coefficients(path, coeffs: Coefficients, overwrite: bool = False) -> Path:
    """Write ``coeffs`` to the directory ``path`` atomically; returns the path.

    ``overwrite=True`` replaces an existing coefficient directory or an empty directory; any other
    existing path is refused with a FileExistsError and left as it was.  Coefficients that are
    not finite, or whose fields do not fit together, are refused with a ValueError.
    """
    if not isinstance(coeffs, Coefficients):
        raise TypeError(f"coeffs must be iia_jax.Coefficients, got {type(coeffs).__name__}")
    arrays = {name: validate.concrete(getattr(coeffs, name), "save_coefficients",
                                      "save the coefficients outside jax.jit") for name in ARRAYS}
    try:
        check_record(coeffs)
    except Invalid as e:
        raise ValueError(f"coeffs cannot be saved: {e}") from None
    meta = _metadata(coeffs, arrays)
    path = Path(path).absolute()
    _replaceable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_arrays(tmp, arrays)
        _write_metadata(tmp, meta)
        _read_back(tmp, coeffs)
        _fsync_dir(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)  # put the old directory back: a failed save changes nothing
                raise
            _fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
            if old.exists():
                warnings.warn(f"saved {path}, but the previous directory could not be removed "
                              f"from {old}", stacklevel=2)
        else:
            os.rename(tmp, path)
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


__all__ = ["save_coefficients", "load_coefficients", "migrate", "checksum", "check_record",
           "FORMAT", "FORMAT_VERSION"]
