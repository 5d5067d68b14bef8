"""Shipped pretrained weights: a digits denoiser and a digits classifier.

Both were trained in this project with :mod:`iia_jax.train` on the ``"train"`` split
of :func:`iia_jax.data.digits` (``scripts/train_pretrained.py``). Each model is two
files under ``weights/``: ``<name>.msgpack`` (Flax variables, EMA weights, written
with ``flax.serialization.msgpack_serialize``; never pickle) and ``<name>.json``
(the training config, steps, data hash, final loss, sha256 of the msgpack file and
any evaluation numbers).

- :func:`digits` -> ``D(x, sigma)`` for ``x [B, 8, 8, 1]`` in ``[-1, 1]``: the EDM-
  preconditioned U-Net (:class:`iia_jax.nets.EDMUNet`) with its EMA weights.
- :func:`digits_cond` -> ``D(x, sigma, cond)``: the class-conditional version (integer
  labels ``cond [B]``, 0-9, and 10 = the null label, i.e. the unconditional model).
- :func:`digits_classifier` -> :class:`Classifier` (logits and penultimate features),
  the feature extractor of :func:`iia_jax.metrics.fd.digits_fd`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Callable, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "WEIGHTS_DIR",
    "Pretrained",
    "Classifier",
    "load",
    "save",
    "digits",
    "digits_model",
    "digits_classifier",
    "digits_cond",
    "digits_cond_model",
    "digits_judge",
]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


class Pretrained(NamedTuple):
    """Raw shipped weights: Flax ``variables`` (``{"params": ...}``) and the JSON ``record``."""

    variables: Any
    record: dict


class Classifier(NamedTuple):
    """The shipped classifier: jitted ``logits(x)`` / ``features(x)`` for ``x [B, 8, 8, 1]``.

    ``features`` is the penultimate layer ``[B, features_dim]``; ``net``/``variables``
    give the raw Flax model (``net.apply(variables, x)``).
    """

    logits: Callable[[jnp.ndarray], jnp.ndarray]
    features: Callable[[jnp.ndarray], jnp.ndarray]
    net: Any
    variables: Any
    record: dict


def _paths(name: str, weights_dir: str | None):
    d = WEIGHTS_DIR if weights_dir is None else weights_dir
    return os.path.join(d, f"{name}.msgpack"), os.path.join(d, f"{name}.json")


def save(name: str, variables, record: dict, weights_dir: str | None = None) -> str:
    """Write ``<name>.msgpack`` (float32 arrays) and ``<name>.json`` (``record`` + sha256)."""
    weights_path, json_path = _paths(name, weights_dir)
    os.makedirs(os.path.dirname(weights_path), exist_ok=True)
    host = jax.tree.map(lambda a: np.asarray(a, np.float32), jax.device_get(variables))
    payload = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host))
    with open(weights_path, "wb") as f:
        f.write(payload)
    record = dict(record)
    record["weights_file"] = os.path.basename(weights_path)
    record["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    record["num_params"] = int(sum(np.size(a) for a in jax.tree.leaves(host)))
    with open(json_path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    return weights_path


@functools.lru_cache(maxsize=None)
def _load_cached(name: str, weights_dir: str | None) -> Pretrained:
    weights_path, json_path = _paths(name, weights_dir)
    for p in (weights_path, json_path):
        if not os.path.exists(p):
            raise FileNotFoundError(
                f"{p}: shipped weights {name!r} not found (expected {name}.msgpack and {name}.json "
                f"in {os.path.dirname(p)}); regenerate them with scripts/train_pretrained.py"
            )
    with open(json_path) as f:
        record = json.load(f)
    with open(weights_path, "rb") as f:
        payload = f.read()
    digest = hashlib.sha256(payload).hexdigest()
    if record.get("weights_sha256") not in (None, digest):
        raise ValueError(
            f"{weights_path}: sha256 {digest} does not match {json_path} ({record['weights_sha256']}); "
            "the weights file is corrupted or was replaced"
        )
    variables = flax.serialization.msgpack_restore(payload)
    with jax.ensure_compile_time_eval():   # concrete arrays even when first loaded inside a trace
        variables = jax.tree.map(jnp.asarray, variables)
    return Pretrained(variables, record)


def load(name: str, weights_dir: str | None = None) -> Pretrained:
    """Load shipped weights ``name`` (``"digits"``, ``"digits_classifier"``); cached."""
    return _load_cached(name, weights_dir)


def digits_model():
    """``(denoise, variables, config)`` of the shipped digits denoiser.

    ``denoise(variables, x, sigma)`` is EDM-preconditioned; ``config`` the
    :class:`iia_jax.train.DenoiserConfig` it was trained with.
    """
    return _denoiser_model("digits")


def _denoiser_model(name: str):
    from ..train import DenoiserConfig, make_denoiser

    p = load(name)
    config = DenoiserConfig.from_json(p.record["config"])
    _, denoise = make_denoiser(config)
    return denoise, p.variables, config


@functools.lru_cache(maxsize=1)
def digits():
    """The shipped digits denoiser ``D(x, sigma)`` (jitted; ``x [B, 8, 8, 1]`` in ``[-1, 1]``).

    EDM sigma-space (``x = x0 + sigma n``), ``sigma`` a scalar or ``[B]``; EMA weights.
    Trained on the ``"train"`` split of :func:`iia_jax.data.digits`; the training record
    is ``load("digits").record``.
    """
    denoise, variables, _ = digits_model()
    return jax.jit(functools.partial(denoise, variables))


@functools.lru_cache(maxsize=1)
def digits_classifier() -> Classifier:
    """The shipped digits classifier (see :class:`Classifier`); its penultimate
    features define the digits Fréchet distance."""
    from ..nets.classifier import DigitsClassifier
    from ..train import ClassifierConfig, make_classifier_net

    p = load("digits_classifier")
    config = ClassifierConfig.from_json(p.record["config"])
    net = make_classifier_net(config)
    variables = p.variables
    logits = jax.jit(lambda x: net.apply(variables, x))
    features = jax.jit(lambda x: net.apply(variables, x, method=DigitsClassifier.features))
    return Classifier(logits, features, net, variables, p.record)


@functools.lru_cache(maxsize=1)
def digits_judge() -> Classifier:
    """The digits *judge* (a :class:`Classifier`): same network as :func:`digits_classifier`,
    trained only on the ``"judge_train"`` digits (``scripts/train_judge.py``), so its features
    favour neither the reference digits nor the check digits of :mod:`iia_jax.metrics.quality`."""
    from ..nets.classifier import DigitsClassifier
    from ..train import ClassifierConfig, make_classifier_net

    p = load("digits_judge")
    net = make_classifier_net(ClassifierConfig.from_json(p.record["config"]))
    logits = jax.jit(lambda x: net.apply(p.variables, x))
    features = jax.jit(lambda x: net.apply(p.variables, x, method=DigitsClassifier.features))
    return Classifier(logits, features, net, p.variables, p.record)


def digits_cond_model():
    """``(denoise, variables, config)`` of the shipped class-conditional digits denoiser.

    ``denoise(variables, x, sigma, cond)`` is EDM-preconditioned, ``cond [B]`` integer
    labels in ``0..config.num_classes`` (``config.num_classes`` = 10 is the null label).
    """
    return _denoiser_model("digits_cond")


@functools.lru_cache(maxsize=1)
def digits_cond():
    """The shipped class-conditional digits denoiser ``D(x, sigma, cond)``.

    ``x [B, 8, 8, 1]`` in ``[-1, 1]`` (EDM sigma-space), ``sigma`` a scalar or ``[B]``,
    ``cond [B]`` integer labels: the digit 0-9, or 10 = the null label, which gives the
    unconditional model (it was trained with 20% label dropout, Ho & Salimans 2022,
    "Classifier-Free Diffusion Guidance"). Guide it with
    ``D_u + s (D_c - D_u)`` (:func:`iia_jax.models.cfg_single` with ``null_cond`` 10).
    Labels of the wrong shape or dtype are refused; concrete labels outside 0..10 too
    (under an outer ``jit`` such labels give NaN). The network is jitted; the training
    record is ``load("digits_cond").record``.
    """
    from ..nets.edm_unet import check_labels

    denoise, variables, config = digits_cond_model()
    jitted = jax.jit(functools.partial(denoise, variables))

    def D(x, sigma, cond):
        check_labels(cond, jnp.shape(x)[0], config.num_classes)
        return jitted(x, sigma, cond)

    return D
