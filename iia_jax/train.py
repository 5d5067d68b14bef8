"""Training: EDM denoisers and the digits classifier, resumable with orbax.

**Denoiser loss** (Karras et al. 2022, EDM, §5 and Table 1): for a data batch ``x0``,
``ln sigma ~ N(P_mean, P_std^2)`` (``P_mean = -1.2``, ``P_std = 1.2``),
``n ~ N(0, I)`` and ``lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2``,

    L = E[ lambda(sigma) * mean_pixels (D(x0 + sigma n, sigma) - x0)^2 ],

where ``D`` is the EDM-preconditioned network (:func:`iia_jax.nets.edm_precond`).
(The weight makes the effective target of the raw network unit-variance.)

**Class-conditional denoisers** (``config.num_classes > 0``, labels ``y [N]``): the
network is ``D(x, sigma, y)``, and each training label is replaced by the null label
``num_classes`` with probability ``label_dropout`` (Ho & Salimans 2022, "Classifier-Free
Diffusion Guidance"), so one network learns both ``D(x, sigma, y)`` and the
unconditional ``D(x, sigma, null)`` that guidance needs.

**Optimiser**: ``optax.adamw`` with a linear warm-up then cosine decay (or constant)
learning rate and global-norm gradient clipping. **EMA** of the weights with decay
``min(ema_decay, (1 + t) / (10 + t))`` at step ``t``; sampling uses the EMA weights.

**Determinism and resuming.** Step ``t`` draws everything (batch indices, sigmas,
noise, dropout, label dropout) from ``fold_in(step_key, t)`` (``_keys(seed)``), so the run is a function
of ``(config, data)`` only. Checkpoints are written with
``orbax.checkpoint.CheckpointManager`` under ``ckpt_dir`` (default
``checkpoints/<config.name>``) every ``ckpt_every`` steps and at the end; each holds
the train state and a JSON record (config, data hash, step, recent loss, sha256 of
the state). Calling the trainer again with the same directory resumes from the
latest checkpoint, and continues exactly as an uninterrupted run would. A
checkpoint that cannot be read, or whose contents do not match their recorded
checksum, raises :class:`CheckpointError` naming the directory: a run is never
silently re-initialised. A checkpoint written for another config or other data is
refused with :class:`ValueError` naming the differing fields.

Entry points: :func:`train_denoiser`, :func:`train_classifier` (a CLI wraps them). The
shipped weights come from ``DIGITS_DENOISER``/``DIGITS_COND_DENOISER``/``DIGITS_CLASSIFIER`` via
``scripts/train_pretrained.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .data import data_hash
from .nets.classifier import DigitsClassifier
from .nets.edm_unet import EDMUNet
from .nets.mlp import MLPDenoiser
from .nets.precond import edm_precond

__all__ = [
    "DenoiserConfig",
    "ClassifierConfig",
    "TrainState",
    "TrainResult",
    "CheckpointError",
    "make_denoiser_net",
    "make_denoiser",
    "make_classifier_net",
    "edm_loss",
    "train_denoiser",
    "train_classifier",
    "default_ckpt_dir",
    "read_checkpoint",
    "DIGITS_DENOISER",
    "DIGITS_COND_DENOISER",
    "DIGITS_CLASSIFIER",
]

# Config fields that may differ when resuming. All but ``steps`` leave every step unchanged;
# a new ``steps`` extends or shortens the run (the cosine learning rate then follows the new
# length from the resumed step on, so the result differs from a run started with it).
_RESUMABLE_FIELDS = ("steps", "ckpt_every", "keep", "log_every")


# --------------------------------------------------------------------------- configs


class _JsonConfig:
    """``to_json``/``from_json`` shared by the run configs (``net_kwargs`` made JSON-safe)."""

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["net_kwargs"] = _jsonable(dict(self.net_kwargs))
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]):
        return _config_from_json(cls, d)


@dataclasses.dataclass(frozen=True)
class DenoiserConfig(_JsonConfig):
    """Everything that defines a denoiser training run (recorded in every checkpoint).

    ``net`` is ``"unet"`` (:class:`~iia_jax.nets.EDMUNet`, images ``[B, H, W, C]``) or
    ``"mlp"`` (:class:`~iia_jax.nets.MLPDenoiser`, vectors ``[B, D]``); ``net_kwargs``
    are passed to its constructor. ``lr_schedule`` is ``"cosine"`` (warm-up, then cosine
    decay to ``lr * final_lr_frac`` at ``steps``) or ``"constant"`` (warm-up, then ``lr``).
    ``num_classes > 0`` makes a class-conditional U-Net (labels ``0..num_classes-1``, null
    label ``num_classes``) trained with each label dropped to the null label with
    probability ``label_dropout`` (unused when ``num_classes = 0``). Records written before
    these two fields existed load with their defaults (an unconditional run).
    """

    name: str = "denoiser"
    net: str = "unet"
    net_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    batch_size: int = 128
    steps: int = 2000
    lr: float = 1e-3
    warmup: int = 200
    lr_schedule: str = "cosine"
    final_lr_frac: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    ckpt_every: int = 500
    keep: int = 2
    log_every: int = 10
    num_classes: int = 0
    label_dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(_JsonConfig):
    """A classifier training run (:class:`~iia_jax.nets.DigitsClassifier`, cross-entropy).

    ``shift`` > 0 augments each batch with random translations of up to ``shift``
    pixels (edge-replicating padding, then a random crop).
    """

    name: str = "classifier"
    net_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_classes: int = 10
    batch_size: int = 128
    steps: int = 1000
    lr: float = 2e-3
    warmup: int = 50
    lr_schedule: str = "cosine"
    final_lr_frac: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    shift: int = 1
    seed: int = 0
    ckpt_every: int = 250
    keep: int = 2
    log_every: int = 10


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _config_from_json(cls, d):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    d = dict(d)
    if "net_kwargs" in d:
        d["net_kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["net_kwargs"].items()}
    return cls(**d)


# The recipes behind the shipped weights (iia_jax.pretrained); see scripts/train_pretrained.py.
DIGITS_DENOISER = DenoiserConfig(
    name="digits",
    net="unet",
    net_kwargs={"channels": 32, "channel_mults": (1, 2), "num_res_blocks": 1, "attention": True},
    sigma_data=0.75,
    batch_size=128,
    steps=1200,
    lr=2e-3,
    warmup=100,
    ema_decay=0.998,
    ckpt_every=100,
)
# The same U-Net with a label embedding, trained with 20% label dropout (null label 10) and twice
# the steps (it learns ten conditional models and the unconditional one; ~15 min, 2 shared cores).
# Label dropout 0.1, 0.2 and 0.5 were each trained and measured (docs/pretrained.md): 0.2 gave the
# least uneven null-label class histogram and kept the guided class accuracy; none made the null
# label's samples as even across classes as the unconditional digits() model's.
DIGITS_COND_DENOISER = dataclasses.replace(
    DIGITS_DENOISER, name="digits_cond", steps=2400, num_classes=10, label_dropout=0.2
)
DIGITS_CLASSIFIER = ClassifierConfig(
    name="digits_classifier",
    net_kwargs={"features_dim": 64, "dropout": 0.2},
    steps=1000,
)


# --------------------------------------------------------------------------- models


def make_denoiser_net(config: DenoiserConfig):
    """The raw Flax network ``F(x, c_noise[, cond])`` named by ``config.net``."""
    kwargs = dict(config.net_kwargs)
    if "num_classes" in kwargs:
        raise ValueError("DenoiserConfig: set num_classes on the config, not in net_kwargs")
    if config.num_classes < 0:
        raise ValueError(f"DenoiserConfig.num_classes must be >= 0; got {config.num_classes}")
    if not 0.0 <= config.label_dropout < 1.0:
        raise ValueError(f"DenoiserConfig.label_dropout must lie in [0, 1); got {config.label_dropout}")
    if config.net == "unet":
        return EDMUNet(num_classes=config.num_classes, **kwargs)
    if config.net == "mlp":
        if config.num_classes:
            raise ValueError("DenoiserConfig: net='mlp' is unconditional; num_classes > 0 needs net='unet'")
        return MLPDenoiser(**kwargs)
    raise ValueError(f"DenoiserConfig.net must be 'unet' or 'mlp'; got {config.net!r}")


def make_denoiser(config: DenoiserConfig):
    """``(net, denoise)``: the network and its EDM-preconditioned ``denoise(params, x, sigma[, cond])``.

    ``params`` are the Flax variables ``{"params": ...}`` (e.g. ``TrainState.ema_params``).
    A conditional config (``num_classes > 0``) needs integer labels ``cond [B]`` in
    ``0..num_classes`` (``num_classes`` = the null label, i.e. the unconditional model).
    """
    net = make_denoiser_net(config)
    denoise = edm_precond(lambda p, x, c, *cond: net.apply(p, x, c, *cond), config.sigma_data)
    return net, denoise


def make_classifier_net(config: ClassifierConfig) -> DigitsClassifier:
    return DigitsClassifier(num_classes=config.num_classes, **dict(config.net_kwargs))


def edm_loss(denoise, params, x0, sigma, noise, sigma_data: float, cond=None):
    """EDM loss ``mean_b lambda(sigma_b) * mean_pixels (D(x0_b + sigma_b n_b, sigma_b) - x0_b)^2``.

    ``denoise(params, x, sigma[, cond])`` is the preconditioned denoiser, ``x0 [B, ...]``,
    ``sigma [B]``, ``noise`` unit normal shaped like ``x0``, ``cond`` the labels of a
    conditional denoiser (``None``: unconditional), and
    ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``.
    """
    expand = (slice(None),) + (None,) * (x0.ndim - 1)
    x = x0 + sigma[expand] * noise
    d = denoise(params, x, sigma) if cond is None else denoise(params, x, sigma, cond)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    per_example = jnp.mean(jnp.square(d - x0).reshape(x0.shape[0], -1), axis=1)
    return jnp.mean(weight * per_example)


# --------------------------------------------------------------------------- state


class TrainState(NamedTuple):
    """What a checkpoint holds: step count, weights, EMA weights, optimiser state."""

    step: jnp.ndarray
    params: Any
    ema_params: Any
    opt_state: Any


class TrainResult(NamedTuple):
    """Returned by the trainers.

    ``losses``: per-step training loss of the steps run in *this* call, ``[n]``;
    ``start_step``: the step this call started from (0, or the resumed checkpoint's);
    ``ckpt_dir``: where checkpoints went (``None`` when checkpointing was off).
    """

    state: TrainState
    config: Any
    losses: np.ndarray
    start_step: int
    ckpt_dir: str | None
    data_hash: str

    def record(self, kind: str, loss_window: int = 50, **extra) -> dict:
        """The JSON record shipped beside exported weights: kind, config, steps, data hash, the
        mean loss of the last ``loss_window`` steps, and ``extra`` fields."""
        loss = float(np.mean(self.losses[-loss_window:])) if len(self.losses) else None
        return {"kind": kind, "config": self.config.to_json(), "steps": int(self.state.step),
                "data_hash": self.data_hash, "final_loss": loss, "weights": "ema_params", **extra}


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (unreadable, truncated or corrupted)."""


def _optimizer(config) -> optax.GradientTransformation:
    if config.lr_schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, max(config.warmup, 1), max(config.steps, config.warmup + 1), config.lr * config.final_lr_frac
        )
    elif config.lr_schedule == "constant":
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, config.lr, max(config.warmup, 1)), optax.constant_schedule(config.lr)],
            [max(config.warmup, 1)],
        )
    else:
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant'; got {config.lr_schedule!r}")
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adamw(lr, weight_decay=config.weight_decay))


def _ema_update(ema, params, step, decay):
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _tree_checksum(tree) -> str:
    """sha256 over the leaves, ordered by their (container-agnostic) paths.

    A NamedTuple field, a dict key and a list index of the same name give the same
    path, so a state restored without a template hashes like the original.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    h = hashlib.sha256()
    for path, leaf in sorted(leaves, key=lambda pl: tuple(_key_name(k) for k in pl[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update("/".join(_key_name(k) for k in path).encode())
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


def _keys(seed: int):
    """``(init_key, step_key)``; step ``t`` uses ``fold_in(step_key, t)``."""
    init_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, step_key


def default_ckpt_dir(name: str) -> str:
    """``checkpoints/<name>`` (relative to the working directory)."""
    return os.path.join("checkpoints", name)


# --------------------------------------------------------------------------- checkpoints


def _manager(ckpt_dir: str, keep: int, read_only: bool = False):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=options, item_names=("state", "meta"))


def _restore(manager, step: int, target, ckpt_dir: str):
    """Restore ``(state, meta)`` at ``step``; any failure becomes a CheckpointError."""
    import orbax.checkpoint as ocp

    step_dir = os.path.join(os.path.abspath(ckpt_dir), str(step))
    advice = (
        f"Delete {step_dir} to resume from an earlier checkpoint, or train into a new directory. "
        "Refusing to re-initialise over it."
    )
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint step {step} in {os.path.abspath(ckpt_dir)} is unreadable: its record "
            f"(meta) cannot be loaded ({type(exc).__name__}: {_short(exc)}). {advice}"
        ) from exc
    if not isinstance(meta, Mapping) or "checksum" not in meta:
        raise CheckpointError(f"checkpoint step {step} in {os.path.abspath(ckpt_dir)} has no valid record. {advice}")
    try:
        if target is None:
            args = ocp.args.Composite(state=ocp.args.StandardRestore())
        else:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        state = manager.restore(step, args=args)["state"]
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint step {step} in {os.path.abspath(ckpt_dir)} is corrupted or truncated: the "
            f"train state cannot be restored ({type(exc).__name__}: {_short(exc)}). {advice}"
        ) from exc
    if _tree_checksum(state) != meta["checksum"]:
        raise CheckpointError(
            f"checkpoint step {step} in {os.path.abspath(ckpt_dir)} is corrupted: the restored train "
            f"state does not match the checksum recorded when it was saved. {advice}"
        )
    return state, dict(meta)


def _short(exc: Exception, limit: int = 300) -> str:
    s = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return s if len(s) <= limit else s[:limit] + "..."


def read_checkpoint(ckpt_dir: str, step: int | None = None):
    """``(state, meta)`` of a checkpoint (latest when ``step`` is None), without a template.

    ``state`` is a dict ``{"step", "params", "ema_params", "opt_state"}`` of arrays (the
    optimiser state as plain containers); ``meta`` the JSON record (``config``,
    ``data_hash``, ``step``, ``loss``, ...). Raises :class:`CheckpointError` when the
    directory has no usable checkpoint.
    """
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{ckpt_dir}: no such checkpoint directory")
    manager = _manager(ckpt_dir, keep=10**9, read_only=True)
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{os.path.abspath(ckpt_dir)} holds no checkpoint")
    state, meta = _restore(manager, step, None, ckpt_dir)
    if isinstance(state, (list, tuple)):
        state = dict(zip(TrainState._fields, state))
    return state, meta


def _with_defaults(cls, saved: Mapping[str, Any]) -> dict:
    """A saved config record with the fields added since it was written set to their defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    return {**{k: v for k, v in defaults.items() if k not in saved}, **saved}


def _check_compatible(meta, kind, config, dhash, ckpt_dir):
    where = os.path.abspath(ckpt_dir)
    if meta.get("kind") != kind:
        raise ValueError(f"{where} holds a {meta.get('kind')!r} checkpoint, not a {kind!r} one")
    if meta.get("data_hash") != dhash:
        raise ValueError(
            f"{where} was trained on different data (hash {meta.get('data_hash')}, now {dhash}); "
            "use a new checkpoint directory"
        )
    saved, now = _with_defaults(type(config), meta.get("config", {})), config.to_json()
    diff = sorted(k for k in set(saved) | set(now) if k not in _RESUMABLE_FIELDS and saved.get(k) != now.get(k))
    if diff:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)
        raise ValueError(
            f"{where} holds a run with a different config ({detail}). Resume with the saved config "
            f"or use a new checkpoint directory (only {', '.join(_RESUMABLE_FIELDS)} may change)."
        )


# --------------------------------------------------------------------------- the loop


def _run(
    *,
    kind: str,
    config,
    state: TrainState,
    step_fn: Callable,
    step_args: Sequence[Any],
    dhash: str,
    ckpt_dir: str | None,
    progress: bool,
    callback: Callable[[int, float], None] | None,
    unit: str,
) -> TrainResult:
    """Shared loop: resume, jitted steps, progress bar, periodic checkpoints."""
    from tqdm.auto import tqdm

    manager = None
    start = 0
    if ckpt_dir is not None:
        manager = _manager(ckpt_dir, config.keep)
        latest = manager.latest_step()
        if latest is not None:
            restored, meta = _restore(manager, latest, state, ckpt_dir)
            _check_compatible(meta, kind, config, dhash, ckpt_dir)
            state = TrainState(*restored) if not isinstance(restored, TrainState) else restored
            start = int(state.step)
            if start != latest:
                raise CheckpointError(
                    f"checkpoint step {latest} in {os.path.abspath(ckpt_dir)} holds a state at step {start}"
                )

    def save(st: TrainState, recent_loss: float):
        import orbax.checkpoint as ocp

        step = int(st.step)
        meta = {
            "kind": kind,
            "config": config.to_json(),
            "data_hash": dhash,
            "step": step,
            "loss": recent_loss,
            "checksum": _tree_checksum(st),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(st), meta=ocp.args.JsonSave(meta)), force=True)
        manager.wait_until_finished()

    base_key = _keys(config.seed)[1]
    losses = []
    bar = tqdm(total=config.steps, initial=start, desc=config.name, disable=not progress, dynamic_ncols=True)
    pending = []  # device losses not yet pulled to host
    t_last = time.perf_counter()
    try:
        for t in range(start, config.steps):
            state, loss = step_fn(state, *step_args, jax.random.fold_in(base_key, t))
            pending.append(loss)
            done = t + 1
            if done % config.log_every == 0 or done == config.steps or (manager and done % config.ckpt_every == 0):
                host = [float(x) for x in jax.device_get(pending)]
                losses.extend(host)
                pending = []
                now = time.perf_counter()
                rate = len(host) * config.batch_size / max(now - t_last, 1e-9)
                t_last = now
                bar.set_postfix(loss=f"{np.mean(host):.4f}", **{f"{unit}/s": f"{rate:.0f}"})
                bar.update(len(host))
                if manager is not None and (done % config.ckpt_every == 0 or done == config.steps):
                    save(state, float(np.mean(losses[-config.log_every :])))
                if callback is not None:
                    callback(done, float(np.mean(host)))
    finally:
        bar.close()
    return TrainResult(state, config, np.asarray(losses, np.float32), start, ckpt_dir, dhash)


def _resolve_ckpt_dir(ckpt_dir, name):
    if ckpt_dir is False:
        return None
    return default_ckpt_dir(name) if ckpt_dir is None else os.fspath(ckpt_dir)


def _cache_key(kind: str, config) -> str:
    return kind + json.dumps(config.to_json(), sort_keys=True)


# Jitted step functions, one per (kind, config), so repeated or resumed runs in one
# process reuse the compiled step instead of re-tracing and re-compiling it.
_STEP_CACHE: dict[str, Callable] = {}


# --------------------------------------------------------------------------- denoiser


def _denoiser_step(config: DenoiserConfig):
    """``(net, tx, step_fn)`` with ``step_fn(state, data, labels, key) -> (state, loss)`` jitted.

    ``labels`` is ``None`` for an unconditional config (the step is then the one it
    always was); otherwise each drawn label becomes the null label ``num_classes`` with
    probability ``label_dropout``, drawn from ``fold_in(key, 1)``.
    """
    net = make_denoiser_net(config)
    tx = _optimizer(config)
    key = _cache_key("denoiser", config)
    if key in _STEP_CACHE:
        return net, tx, _STEP_CACHE[key]

    @jax.jit
    def step_fn(st: TrainState, data, labels, key):
        k_idx, k_sigma, k_noise, k_drop = jax.random.split(key, 4)
        idx = jax.random.randint(k_idx, (config.batch_size,), 0, data.shape[0])
        x0 = data[idx]
        sigma = jnp.exp(config.p_mean + config.p_std * jax.random.normal(k_sigma, (config.batch_size,)))
        noise = jax.random.normal(k_noise, x0.shape)
        cond = None
        if labels is not None:
            dropped = jax.random.bernoulli(jax.random.fold_in(key, 1), config.label_dropout, (config.batch_size,))
            cond = jnp.where(dropped, config.num_classes, labels[idx])
        train_denoise = edm_precond(
            lambda p, x, c, *y: net.apply(p, x, c, *y, train=True, rngs={"dropout": k_drop}), config.sigma_data
        )
        loss, grads = jax.value_and_grad(edm_loss, argnums=1)(
            train_denoise, st.params, x0, sigma, noise, config.sigma_data, cond
        )
        updates, opt_state = tx.update(grads, st.opt_state, st.params)
        params = optax.apply_updates(st.params, updates)
        ema = _ema_update(st.ema_params, params, st.step, config.ema_decay)
        return TrainState(st.step + 1, params, ema, opt_state), loss

    _STEP_CACHE[key] = step_fn
    return net, tx, step_fn


def train_denoiser(
    config: DenoiserConfig,
    data,
    ckpt_dir: str | None | bool = None,
    *,
    labels=None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train an EDM denoiser on ``data`` (``[N, H, W, C]`` images or ``[N, D]`` vectors).

    Args:
      config: the run (:class:`DenoiserConfig`).
      data: training data, float32 in the model's data space (e.g. ``[-1, 1]``).
      ckpt_dir: checkpoint directory; ``None`` -> ``checkpoints/<config.name>``,
        ``False`` -> no checkpoints. An existing directory is resumed from.
      labels: integer class labels ``[N]`` in ``[0, config.num_classes)``; required
        when ``config.num_classes > 0`` (and then part of the data hash), refused otherwise.
      progress: show a tqdm bar with the loss and throughput.
      callback: ``callback(step, mean_recent_loss)`` every ``log_every`` steps (after
        any checkpoint of that step); an exception it raises stops training.

    Returns a :class:`TrainResult`; the denoiser is
    ``iia_jax.nets.bind(make_denoiser(config)[1], result.state.ema_params)``
    (``D(x, sigma, labels)`` for a conditional config).
    """
    data = np.asarray(data, np.float32)
    dhash = data_hash(data)
    net, tx, step_fn = _denoiser_step(config)
    init_args = (jnp.asarray(data[:1]), jnp.zeros((1,), jnp.float32))
    if config.num_classes > 0:
        labels = _check_train_labels(labels, data.shape[0], config.num_classes)
        dhash = dhash + "+" + data_hash(labels)
        init_args += (jnp.zeros((1,), jnp.int32),)
        labels = jnp.asarray(labels)
    elif labels is not None:
        raise ValueError("labels: this config is unconditional (num_classes=0); pass labels=None")
    data = jnp.asarray(data)
    params = net.init(_keys(config.seed)[0], *init_args)
    state = TrainState(jnp.asarray(0, jnp.int32), params, jax.tree.map(jnp.array, params), tx.init(params))
    return _run(
        kind="denoiser",
        config=config,
        state=state,
        step_fn=step_fn,
        step_args=(data, labels),
        dhash=dhash,
        ckpt_dir=_resolve_ckpt_dir(ckpt_dir, config.name),
        progress=progress,
        callback=callback,
        unit="img",
    )


def _check_train_labels(labels, n: int, num_classes: int) -> np.ndarray:
    """Training labels as int32 ``[n]`` in ``[0, num_classes)``, or a ValueError naming ``labels``."""
    if labels is None:
        raise ValueError(f"labels: a conditional config (num_classes={num_classes}) needs integer labels [N]")
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape [N] = ({n},) to match the data; got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected an integer dtype; got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels: must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


# --------------------------------------------------------------------------- classifier


def _random_shift(images, key, max_shift: int):
    """Translate each image by up to ``max_shift`` pixels (edge-replicating pad + crop)."""
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def _classifier_step(config: ClassifierConfig):
    """``(net, tx, step_fn)`` with ``step_fn(state, images, labels, key)`` jitted."""
    net = make_classifier_net(config)
    tx = _optimizer(config)
    key = _cache_key("classifier", config)
    if key in _STEP_CACHE:
        return net, tx, _STEP_CACHE[key]

    @jax.jit
    def step_fn(st: TrainState, images, labels, key):
        k_idx, k_shift, k_drop = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (config.batch_size,), 0, images.shape[0])
        x, y = images[idx], labels[idx]
        if config.shift > 0:
            x = _random_shift(x, k_shift, config.shift)

        def loss_fn(p):
            logits = net.apply(p, x, train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(st.params)
        updates, opt_state = tx.update(grads, st.opt_state, st.params)
        params = optax.apply_updates(st.params, updates)
        ema = _ema_update(st.ema_params, params, st.step, config.ema_decay)
        return TrainState(st.step + 1, params, ema, opt_state), loss

    _STEP_CACHE[key] = step_fn
    return net, tx, step_fn


def train_classifier(
    config: ClassifierConfig,
    images,
    labels,
    ckpt_dir: str | None | bool = None,
    *,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train :class:`~iia_jax.nets.DigitsClassifier` with cross-entropy (same loop as above).

    ``images [N, H, W, C]`` float32, ``labels [N]`` ints in ``[0, num_classes)``. Other
    arguments as in :func:`train_denoiser`. Evaluate with
    ``make_classifier_net(config).apply(result.state.ema_params, x)``.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"expected images [N, H, W, C] and labels [N]; got {images.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"labels must lie in [0, {config.num_classes}); got [{labels.min()}, {labels.max()}]")
    dhash = data_hash(images) + "+" + data_hash(labels.astype(np.int32))
    net, tx, step_fn = _classifier_step(config)
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    params = net.init(_keys(config.seed)[0], images[:1])
    state = TrainState(jnp.asarray(0, jnp.int32), params, jax.tree.map(jnp.array, params), tx.init(params))
    return _run(
        kind="classifier",
        config=config,
        state=state,
        step_fn=step_fn,
        step_args=(images, labels),
        dhash=dhash,
        ckpt_dir=_resolve_ckpt_dir(ckpt_dir, config.name),
        progress=progress,
        callback=callback,
        unit="img",
    )
