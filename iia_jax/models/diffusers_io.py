"""Load `diffusers` ``UNet2DModel`` checkpoints (DDPM CIFAR-10, CelebA-HQ, LSUN, ...) into Flax.

A diffusers model folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors``;
the noise schedule lives in ``scheduler_config.json`` beside them or in a sibling
``scheduler/`` folder (pipeline layout: ``<root>/unet/`` and ``<root>/scheduler/``).

* :func:`load_unet2d` builds :class:`iia_jax.nets.unet2d.UNet2D` from the config and
  converts the weights. Tensors are read with ``safetensors.numpy`` only: pickled
  ``.bin`` checkpoints are never opened.
* :func:`from_diffusers` also reads the scheduler and returns the EDM denoiser
  ``D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))`` (docs/design.md §2).

Weight conversion (torch -> Flax): a state-dict name maps to a parameter path by
joining list indices to the preceding name (``down_blocks.0.resnets.1.conv1.weight`` ->
``down_blocks_0/resnets_1/conv1/kernel``); conv kernels go from OIHW to HWIO, linear
weights are transposed, group-norm ``weight`` becomes ``scale``. Attention weights
saved under the pre-0.14 names ``query/key/value/proj_attn`` are renamed to
``to_q/to_k/to_v/to_out.0``, as diffusers itself does on load.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ..nets.unet2d import UNet2D, UNet2DConfig

__all__ = ["load_unet2d", "from_diffusers", "convert_unet2d_state_dict", "scheduler_alphas", "weights_file",
           "alphas_cumprod_from_scheduler_config"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULER_NAME = "scheduler_config.json"

# Pre-0.14 diffusers attention names -> current names (same tensors, same layout).
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")

# Torch module lists whose index becomes a "_<i>" suffix on the Flax side.
_LIST_NAMES = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers",
               "upsamplers", "to_out")
_LIST_RE = re.compile(r"^(%s)_(\d+)$" % "|".join(_LIST_NAMES))


# ----------------------------------------------------------------------------- paths

def _resolve_model_dir(model_dir) -> str:
    """The folder holding ``config.json``: ``model_dir`` itself or its ``unet/``."""
    path = os.fspath(model_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"diffusers model directory not found: {path}")
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return path
    unet = os.path.join(path, "unet")
    if os.path.isfile(os.path.join(unet, CONFIG_NAME)):
        return unet
    raise FileNotFoundError(
        f"no {CONFIG_NAME} in {path} (nor in {unet}); expected a diffusers UNet2DModel folder")


def _weights_path(model_dir: str, variant: Optional[str]) -> str:
    name = WEIGHTS_NAME if variant is None else WEIGHTS_NAME.replace(
        ".safetensors", f".{variant}.safetensors")
    path = os.path.join(model_dir, name)
    if os.path.isfile(path) or os.path.isfile(path + ".index.json"):
        return path
    hint = ""
    pickled = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".ckpt", ".pt", ".pth"))]
    if pickled:
        hint = (f"; found only pickled weights {sorted(pickled)}, which are not loaded for "
                "safety -- convert them once to safetensors (e.g. load with diffusers and "
                "save_pretrained(..., safe_serialization=True))")
    raise FileNotFoundError(f"weights file not found: {path}{hint}")


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _load_safetensors(path: str) -> Dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint, as numpy arrays."""
    from safetensors.numpy import load_file

    if os.path.isfile(path):
        return dict(load_file(path))
    index = _read_json(path + ".index.json")
    tensors: Dict[str, np.ndarray] = {}
    folder = os.path.dirname(path)
    for shard in sorted(set(index.get("weight_map", {}).values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"weights shard not found: {shard_path}")
        tensors.update(load_file(shard_path))
    return tensors


# ------------------------------------------------------------------------ conversion

def _flax_path(torch_name: str, ndim: int) -> Tuple[str, ...]:
    """``a.b.0.c.weight`` -> ``("a", "b_0", "c", "kernel" | "scale")``."""
    parts = []
    for tok in torch_name.split(".")[:-1]:
        if tok.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{tok}"
        else:
            parts.append(tok)
    leaf = torch_name.rsplit(".", 1)[-1]
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"
    return tuple(parts) + (leaf,)


def _torch_name(path: Tuple[str, ...]) -> str:
    """Inverse of :func:`_flax_path`, used to name a missing parameter."""
    toks = []
    for p in path[:-1]:
        m = _LIST_RE.match(p)
        toks.append(f"{m.group(1)}.{m.group(2)}" if m else p)
    toks.append("bias" if path[-1] == "bias" else "weight")
    return ".".join(toks)


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:  # conv OIHW -> HWIO
        return np.transpose(array, (2, 3, 1, 0))
    if array.ndim == 2:  # linear [out, in] -> [in, out]
        return array.T
    return array


def _torch_shape(flax_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    if len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if len(flax_shape) == 2:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def _rename_legacy_attention(state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for name, value in state.items():
        m = _LEGACY_RE.match(name)
        if m:
            new = f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}"
            if new in state:
                raise ValueError(f"checkpoint holds both {name!r} and {new!r}")
            name = new
        out[name] = value
    return out


def _expected_shapes(module: UNet2D) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Parameter shapes of ``module`` (shape inference only, nothing is computed)."""
    return dict(_expected_shapes_cached(module.config))


@functools.lru_cache(maxsize=16)
def _expected_shapes_cached(cfg: UNet2DConfig) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    module = UNet2D(cfg)
    side = 2 ** (len(cfg.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, side, side, cfg.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, t)
    flat = traverse_util.flatten_dict(shapes["params"])
    return {k: tuple(v.shape) for k, v in flat.items()}


def convert_unet2d_state_dict(state: Mapping[str, np.ndarray], module: UNet2D,
                              dtype=jnp.float32, source: str = "checkpoint") -> Dict[str, Any]:
    """Map a torch ``UNet2DModel`` state dict onto ``module``'s Flax parameters.

    Returns ``{"params": ...}`` ready for ``module.apply``. Raises ``ValueError`` naming
    every tensor that is unexpected, missing or of the wrong shape (torch names and
    torch shapes; at most 20 are listed).
    """
    expected = _expected_shapes(module)
    state = _rename_legacy_attention(state)
    flat: Dict[Tuple[str, ...], np.ndarray] = {}
    seen = set()
    problems = []
    for name in sorted(state):
        array = np.asarray(state[name])
        path = _flax_path(name, array.ndim)
        if path not in expected:
            problems.append(f"unexpected parameter {name!r} (shape {tuple(array.shape)})")
            continue
        seen.add(path)
        value = _to_flax_layout(array)
        if tuple(value.shape) != expected[path]:
            problems.append(f"parameter {name!r} has shape {tuple(array.shape)}, expected "
                            f"{_torch_shape(expected[path])}")
            continue
        flat[path] = value
    for path in sorted(set(expected) - seen):
        problems.append(f"missing parameter {_torch_name(path)!r} "
                        f"(shape {_torch_shape(expected[path])})")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{source} does not match the UNet2D built from its config:\n  "
                         f"{shown}{more}")
    params = traverse_util.unflatten_dict(
        {k: jnp.asarray(v, dtype=dtype) if dtype is not None else jnp.asarray(v)
         for k, v in flat.items()})
    return {"params": params}


def load_unet2d(model_dir, variant: Optional[str] = None,
                dtype=jnp.float32) -> Tuple[UNet2D, Dict[str, Any], Dict[str, Any]]:
    """Build a Flax ``UNet2D`` from a diffusers ``UNet2DModel`` folder.

    Args:
      model_dir: folder with ``config.json`` and ``diffusion_pytorch_model.safetensors``
        (or sharded ``...safetensors.index.json``), or a pipeline folder with ``unet/``.
      variant: weights variant, e.g. ``"fp16"`` reads ``diffusion_pytorch_model.fp16.safetensors``.
      dtype: parameter dtype (default float32; None keeps the stored dtype).
    Returns:
      ``(module, params, config)``: ``module.apply(params, x, t)`` maps NHWC ``x`` in
      the model's VP space and float timesteps ``t [B]`` to the NHWC network output.
    """
    folder = _resolve_model_dir(model_dir)
    config_path = os.path.join(folder, CONFIG_NAME)
    config = _read_json(config_path)
    try:
        module = UNet2D.from_config(config)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None
    weights = _weights_path(folder, variant)
    state = _load_safetensors(weights)
    params = convert_unet2d_state_dict(state, module, dtype=dtype, source=weights)
    return module, params, config


# ------------------------------------------------------------------------- scheduler

def _find_scheduler_config(model_dir) -> str:
    folder = os.fspath(model_dir)
    candidates = [os.path.join(folder, SCHEDULER_NAME),
                  os.path.join(folder, "scheduler", SCHEDULER_NAME),
                  os.path.join(os.path.dirname(os.path.abspath(folder)), "scheduler",
                               SCHEDULER_NAME)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("no scheduler config found; searched " + ", ".join(candidates)
                            + " (pass scheduler_config= a path or a dict)")


def alphas_cumprod_from_scheduler_config(config: Mapping[str, Any]) -> np.ndarray:
    """``alphas_cumprod`` of a diffusers DDPM-family scheduler config (float64).

    Uses ``trained_betas`` when given, else ``beta_schedule`` / ``beta_start`` /
    ``beta_end`` / ``num_train_timesteps`` with the diffusers defaults.
    """
    from ..schedules import ddpm_alphas_cumprod

    if config.get("rescale_betas_zero_snr", False):
        raise ValueError("scheduler config: unsupported value rescale_betas_zero_snr=True "
                         "(zero terminal SNR has sigma_max = inf)")
    trained = config.get("trained_betas")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
        return np.cumprod(1.0 - betas)
    schedule = config.get("beta_schedule", "linear")
    if schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        raise ValueError(f"scheduler config: unsupported value beta_schedule={schedule!r}; "
                         "supported: 'linear', 'scaled_linear', 'squaredcos_cap_v2'")
    return ddpm_alphas_cumprod(
        beta_schedule=schedule,
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)))


def scheduler_alphas(model_dir) -> np.ndarray:
    """``alphas_cumprod`` of the scheduler config that sits with a local diffusers model folder."""
    return alphas_cumprod_from_scheduler_config(_read_json(_find_scheduler_config(model_dir)))


def weights_file(model_dir, variant: Optional[str] = None) -> str:
    """The safetensors weights file of a local diffusers model folder (refuses pickles)."""
    return _weights_path(_resolve_model_dir(model_dir), variant)


def from_diffusers(model_dir, scheduler_config: Union[None, str, os.PathLike, Mapping] = None,
                   quantize: bool = False, variant: Optional[str] = None):
    """A diffusers DDPM checkpoint as an EDM denoiser ``D(x, sigma)`` (docs/design.md §2).

    Args:
      model_dir: see :func:`load_unet2d`.
      scheduler_config: a dict, or a path to a scheduler json. Default: the first of
        ``model_dir/scheduler_config.json``, ``model_dir/scheduler/scheduler_config.json``
        and ``model_dir/../scheduler/scheduler_config.json`` that exists.
      quantize: round the fractional timestep index to the nearest training step.
    Returns:
      ``(denoiser, module, params)``: ``denoiser`` is a pytree (``jax.tree_util.Partial``)
      built by :func:`iia_jax.models.from_discrete_eps` (or ``from_discrete_v`` for
      ``prediction_type="v_prediction"``) over ``eps_fn(x_vp, t) = module.apply(params,
      x_vp, t)`` with ``x_vp`` NHWC and ``t`` float timestep indices ``[B]``.
    """
    from jax.tree_util import Partial

    from .adapters import from_discrete_eps, from_discrete_v

    module, params, _ = load_unet2d(model_dir, variant=variant)
    if scheduler_config is None:
        scheduler_config = _find_scheduler_config(_resolve_model_dir(model_dir))
    if isinstance(scheduler_config, Mapping):
        sched = dict(scheduler_config)
    else:
        path = os.fspath(scheduler_config)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scheduler config not found: {path}")
        sched = _read_json(path)
    alphas_cumprod = alphas_cumprod_from_scheduler_config(sched)
    prediction = sched.get("prediction_type", "epsilon")
    adapters = {"epsilon": from_discrete_eps, "v_prediction": from_discrete_v}
    if prediction not in adapters:
        raise ValueError(f"scheduler config: unsupported value prediction_type={prediction!r}; "
                         "supported: 'epsilon', 'v_prediction'")
    net_fn = Partial(module.apply, params)
    denoiser = adapters[prediction](net_fn, alphas_cumprod, quantize=quantize)
    return denoiser, module, params
