"""Data sets: scikit-learn digits, 2-D toy distributions, user ``.npz`` images.

Everything returned is a NumPy ``float32`` array in the data space the denoisers
are trained in (images in ``[-1, 1]``, NHWC).

**Digits.** ``sklearn.datasets.load_digits`` ships 1,797 grey-scale 8x8 digits with
integer intensities 0..16 inside the scikit-learn package (nothing is downloaded).
They are scaled by ``x / 8 - 1`` to ``[-1, 1]`` and shaped ``[N, 8, 8, 1]``. The
split is fixed: ``numpy.random.default_rng(DIGITS_SPLIT_SEED).permutation(1797)``;
the first ``DIGITS_NUM_TRAIN = 1497`` indices are ``"train"``, the last 300 are
``"test"``. ``"all"`` returns all 1,797 in the original order.

**Toy sets** (``[n, 2]``, roughly zero mean and unit scale, deterministic given
``seed``): :func:`two_moons`, :func:`swiss_roll`, :func:`checkerboard`, :func:`mixture`.

**User images.** :func:`load_npz` reads one ``.npz`` file or a folder of them.

:func:`data_hash` fingerprints an array for checkpoints and shipped weights.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "DIGITS_SPLIT_SEED",
    "DIGITS_NUM_TRAIN",
    "DIGITS_NUM_TEST",
    "Digits",
    "digits",
    "two_moons",
    "swiss_roll",
    "checkerboard",
    "mixture",
    "toy",
    "TOY_DATASETS",
    "load_npz",
    "data_hash",
]

DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TRAIN = 1497
DIGITS_NUM_TEST = 300


class Digits(NamedTuple):
    """Digit images ``[N, 8, 8, 1]`` float32 in ``[-1, 1]`` and labels ``[N]`` int32."""

    images: np.ndarray
    labels: np.ndarray


@functools.lru_cache(maxsize=1)
def _digits_all() -> Digits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    labels = bunch.target.astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return Digits(images, labels)


def digits(split: str = "train") -> Digits:
    """scikit-learn digits as ``Digits(images [N, 8, 8, 1] in [-1, 1], labels [N])``.

    ``split``: ``"train"`` (1,497), ``"test"`` (300) or ``"all"`` (1,797, original order).
    The split is a fixed permutation with seed ``DIGITS_SPLIT_SEED`` (see module doc).
    The arrays are fresh copies (safe to modify).
    """
    full = _digits_all()
    if split == "all":
        return Digits(full.images.copy(), full.labels.copy())
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(full.images))
    if split == "train":
        idx = perm[:DIGITS_NUM_TRAIN]
    elif split == "test":
        idx = perm[DIGITS_NUM_TRAIN:]
    else:
        raise ValueError(f"digits split must be 'train', 'test' or 'all'; got {split!r}")
    return Digits(full.images[idx], full.labels[idx])


# --------------------------------------------------------------------------- toy 2-D


def two_moons(n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Two interleaved half circles (as ``sklearn.datasets.make_moons``), ``[n, 2]``.

    Centred and scaled to about unit standard deviation per axis.
    """
    rng = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = rng.uniform(0, np.pi, n_out)
    t_in = rng.uniform(0, np.pi, n_in)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)
    inner = np.stack([1.0 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1)
    x = np.concatenate([outer, inner])[rng.permutation(n)]
    x = x + noise * rng.standard_normal(x.shape)
    x = (x - np.array([0.5, 0.25])) / np.array([0.87, 0.5])
    return x.astype(np.float32)


def swiss_roll(n: int, seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """2-D Swiss roll ``r = t``, ``t ~ U(1.5 pi, 4.5 pi)``, ``[n, 2]``, scaled by 1/7."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(1.5 * np.pi, 4.5 * np.pi, n)
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 7.0
    x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32)


def checkerboard(n: int, seed: int = 0, cells: int = 4) -> np.ndarray:
    """Uniform on the black squares of a ``cells x cells`` board on ``[-2, 2]^2``, ``[n, 2]``."""
    if cells < 2:
        raise ValueError(f"checkerboard needs cells >= 2; got {cells}")
    rng = np.random.default_rng(seed)
    # Pick a black cell (i + j even) uniformly, then a point uniformly inside it.
    black = np.array([(i, j) for i in range(cells) for j in range(cells) if (i + j) % 2 == 0])
    cell = black[rng.integers(0, len(black), n)]
    size = 4.0 / cells
    x = -2.0 + (cell + rng.uniform(0.0, 1.0, (n, 2))) * size
    return x.astype(np.float32)


def mixture(n: int, seed: int = 0, modes: int = 8, radius: float = 2.0, std: float = 0.1) -> np.ndarray:
    """Equal-weight Gaussian mixture: ``modes`` means on a circle of ``radius``, ``[n, 2]``."""
    rng = np.random.default_rng(seed)
    angles = 2.0 * np.pi * np.arange(modes) / modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    k = rng.integers(0, modes, n)
    x = means[k] + std * rng.standard_normal((n, 2))
    return x.astype(np.float32)


TOY_DATASETS = {
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "mixture": mixture,
}


def toy(name: str, n: int, seed: int = 0) -> np.ndarray:
    """A toy 2-D set by name (one of ``TOY_DATASETS``), ``[n, 2]`` float32."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, seed=seed)


# --------------------------------------------------------------------------- user images


def _load_one_npz(path: str, key: str) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError (pickled object arrays)...
        raise ValueError(f"{path}: cannot read as a .npz archive ({type(exc).__name__}: {exc})") from exc
    with archive:
        if not hasattr(archive, "files"):
            raise ValueError(f"{path}: expected a .npz archive (np.savez), found a single .npy array")
        if key not in archive.files:
            raise KeyError(f"{path}: no array named {key!r}; it holds {sorted(archive.files)} (pass key=...)")
        try:
            return np.asarray(archive[key])
        except ValueError as exc:
            raise ValueError(f"{path}: array {key!r} cannot be loaded without pickle ({exc})") from exc


def _to_nhwc_float(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(
            f"{where}: expected images [N, H, W, C] (or [N, H, W] for grey-scale); got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: the image array is empty (shape {arr.shape})")
    if arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{where}: expected channels-last images with 1-4 channels; got shape {arr.shape} "
            "(transpose NCHW data to NHWC first)"
        )
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{where}: expected uint8 (0..255) or float images in [-1, 1]; got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: images contain NaN or Inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(
            f"{where}: float images must lie in [-1, 1]; found values in [{lo:.4g}, {hi:.4g}] "
            "(store uint8 0..255, or rescale with x / 127.5 - 1 for 0..255 or 2 x - 1 for 0..1)"
        )
    return np.clip(arr, -1.0, 1.0)


def load_npz(path: str, key: str = "images") -> np.ndarray:
    """Load user images from one ``.npz`` file or a folder of ``.npz`` files.

    Each file must hold an array ``key`` of shape ``[N, H, W, C]`` (or ``[N, H, W]``,
    given a channel axis) with dtype ``uint8`` (0..255, mapped by ``x / 127.5 - 1``)
    or float already in ``[-1, 1]``. A folder's files are read in sorted name order
    and concatenated; all must share ``H, W, C``. Returns ``[N, H, W, C]`` float32
    in ``[-1, 1]``. Pickled object arrays are never loaded.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
        if not files:
            raise FileNotFoundError(f"{path}: folder holds no .npz files")
        parts = []
        for name in files:
            full = os.path.join(path, name)
            parts.append(_to_nhwc_float(_load_one_npz(full, key), f"{full}[{key!r}]"))
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:
            detail = ", ".join(f"{n}: {p.shape[1:]}" for n, p in zip(files, parts))
            raise ValueError(f"{path}: files have different image shapes [H, W, C] ({detail})")
        return np.concatenate(parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder (expected a .npz file or a folder of them)")
    return _to_nhwc_float(_load_one_npz(path, key), f"{path}[{key!r}]")


def data_hash(array) -> str:
    """Hex sha256 of an array: its dtype and shape, then its C-order bytes.

    ``"sha256:" + hexdigest`` of ``f"{dtype.str}{shape}".encode() + bytes``; two arrays
    hash equal iff they have the same dtype, shape and contents.
    """
    arr = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha256(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
    h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()
