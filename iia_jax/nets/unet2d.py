"""The `diffusers` ``UNet2DModel`` family (DDPM-style U-Nets) in Flax linen.

This is the network behind most public DDPM checkpoints (``google/ddpm-cifar10-32``,
``google/ddpm-celebahq-256``, the LSUN church/bedroom/cat models, ...). It predicts the
noise ``eps(x_t, t)`` of a VP diffusion from a noisy image ``x_t`` and a (possibly
fractional) timestep ``t``.

Layout of the network, and of its parameter tree::

    conv_in -> down_blocks_0 .. down_blocks_{L-1} -> mid_block -> up_blocks_0 .. up_blocks_{L-1}
            -> conv_norm_out -> SiLU -> conv_out

    time_embedding(sinusoid(t))  is added inside every residual block.

Each down block is ``layers_per_block`` residual blocks (each optionally followed by a
self-attention block) and a stride-2 convolution (all but the last level). Every
intermediate activation is kept as a skip connection; each up block consumes
``layers_per_block + 1`` of them (concatenated on channels) and ends with a nearest
2x upsampling and a 3x3 convolution (all but the last level).

Submodule names follow the torch state dict with the list index joined by ``_``
(torch ``down_blocks.1.attentions.0.to_q`` is Flax ``down_blocks_1/attentions_0/to_q``),
so that :mod:`iia_jax.models.diffusers_io` converts a checkpoint by renaming alone.

Arrays are NHWC inside and outside: ``UNet2D(...).apply(params, x, t)`` takes
``x`` of shape ``[B, H, W, C]`` and ``t`` of shape ``[B]`` (or a scalar) and returns an
array shaped like ``x`` (with ``out_channels`` channels).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["UNet2DConfig", "UNet2D", "timestep_sinusoid"]

# Block names accepted from a config (after the optional "UNetRes" prefix is removed).
_DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # name -> has attention
_UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
_MID_BLOCKS = ("UNetMidBlock2D", None)

_ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
}

# Config keys that do not change the inference graph (or only matter for training).
_IGNORED_KEYS = ("dropout", "num_train_timesteps")


def _unsupported(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(
        f"UNet2D config: unsupported value {key}={value!r}; supported: {allowed}."
    )


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """Architecture hyper-parameters, named as in a diffusers ``config.json``.

    Build it with :meth:`from_dict`, which validates every value this implementation
    depends on and raises ``ValueError`` naming the key and value it cannot honour.
    Defaults are those of ``diffusers.UNet2DModel``.
    """

    sample_size: Any = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: Optional[int] = None
    freq_shift: float = 0
    flip_sin_to_cos: bool = True
    down_block_types: Tuple[str, ...] = (
        "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: Optional[str] = "UNetMidBlock2D"
    up_block_types: Tuple[str, ...] = (
        "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: Tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    act_fn: str = "silu"
    attention_head_dim: Optional[int] = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: Optional[int] = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: Optional[str] = None
    num_class_embeds: Optional[int] = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "UNet2DConfig":
        """Validate a diffusers ``UNet2DModel`` config dict and freeze it.

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) are metadata;
        ``_class_name``, when present, must be ``UNet2DModel``. Keys that diffusers
        itself would not use are ignored with a warning.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"UNet2D config must be a mapping, got {type(config).__name__}")
        class_name = config.get("_class_name", "UNet2DModel")
        if class_name != "UNet2DModel":
            raise _unsupported("_class_name", class_name, "'UNet2DModel'")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        unknown = []
        for key, value in config.items():
            if key.startswith("_") or key in _IGNORED_KEYS:
                continue
            if key not in fields:
                unknown.append(key)
                continue
            if isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        if unknown:
            warnings.warn(
                f"UNet2D config: ignoring keys unknown to UNet2DModel: {sorted(unknown)}",
                stacklevel=2,
            )
        out = cls(**kwargs)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` (naming key and value) for anything not implemented."""
        if self.time_embedding_type != "positional":
            raise _unsupported("time_embedding_type", self.time_embedding_type, "'positional'")
        if self.class_embed_type is not None:
            raise _unsupported("class_embed_type", self.class_embed_type, "None")
        if self.num_class_embeds is not None:
            raise _unsupported("num_class_embeds", self.num_class_embeds, "None")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise _unsupported("resnet_time_scale_shift", self.resnet_time_scale_shift,
                               "'default', 'scale_shift'")
        if self.act_fn not in _ACTIVATIONS:
            raise _unsupported("act_fn", self.act_fn, ", ".join(map(repr, _ACTIVATIONS)))
        if self.mid_block_type not in _MID_BLOCKS:
            raise _unsupported("mid_block_type", self.mid_block_type, "'UNetMidBlock2D', None")
        if not isinstance(self.norm_num_groups, int):
            raise _unsupported("norm_num_groups", self.norm_num_groups, "an int")
        n = len(self.block_out_channels)
        if n == 0:
            raise _unsupported("block_out_channels", self.block_out_channels, "a non-empty list")
        for key in ("down_block_types", "up_block_types"):
            if len(getattr(self, key)) != n:
                raise ValueError(
                    f"UNet2D config: {key} has {len(getattr(self, key))} entries but "
                    f"block_out_channels has {n}; they must match."
                )
        for i, name in enumerate(self.down_block_types):
            if _strip(name) not in _DOWN_BLOCKS:
                raise _unsupported(f"down_block_types[{i}]", name, ", ".join(_DOWN_BLOCKS))
        for i, name in enumerate(self.up_block_types):
            if _strip(name) not in _UP_BLOCKS:
                raise _unsupported(f"up_block_types[{i}]", name, ", ".join(_UP_BLOCKS))
        # diffusers only consults the down/upsample type for attention blocks.
        if self.downsample_type != "conv" and any(
                _DOWN_BLOCKS[_strip(b)] for b in self.down_block_types[:-1]):
            raise _unsupported("downsample_type", self.downsample_type, "'conv'")
        if self.upsample_type != "conv" and any(
                _UP_BLOCKS[_strip(b)] for b in self.up_block_types[:-1]):
            raise _unsupported("upsample_type", self.upsample_type, "'conv'")

    @property
    def temb_dim(self) -> int:
        """Width of the time embedding added in every residual block."""
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    def head_dim(self, channels: int) -> int:
        """Attention head width at a level with ``channels`` channels."""
        return self.attention_head_dim if self.attention_head_dim is not None else channels

    @property
    def mid_attn_groups(self) -> Optional[int]:
        """Group-norm groups of the mid-block attention (None: no group norm)."""
        if self.attn_norm_num_groups is not None:
            return self.attn_norm_num_groups
        return self.norm_num_groups if self.resnet_time_scale_shift == "default" else None


def _strip(block_type: str) -> str:
    """diffusers accepts a ``UNetRes`` prefix on block names and drops it."""
    return block_type[len("UNetRes"):] if block_type.startswith("UNetRes") else block_type


def timestep_sinusoid(t: jax.Array, dim: int, flip_sin_to_cos: bool,
                      freq_shift: float, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of (fractional) timesteps, as in DDPM.

    With ``k = dim // 2`` and frequencies ``w_j = max_period ** (-j / (k - freq_shift))``
    for ``j = 0..k-1``, returns ``[sin(t w), cos(t w)]`` (or ``[cos, sin]`` when
    ``flip_sin_to_cos``), zero-padded to ``dim`` when ``dim`` is odd. Shape ``[B, dim]``.
    The frequencies are rounded to float32 the same way torch computes them.
    """
    half = dim // 2
    exponent = (np.arange(half, dtype=np.float32) * np.float32(-math.log(max_period))
                / np.float32(half - freq_shift))
    freqs = jnp.asarray(np.exp(exponent.astype(np.float32)), dtype=jnp.float32)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _conv(features: int, kernel: int, name: str, stride: int = 1,
          padding: Any = None) -> nn.Conv:
    """A torch-style 2D convolution (default padding ``kernel // 2``)."""
    if padding is None:
        p = kernel // 2
        padding = ((p, p), (p, p))
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=padding, name=name)


def _group_norm(groups: int, eps: float, name: str) -> nn.GroupNorm:
    # Two-pass variance, as torch computes it (the one-pass form loses digits).
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


class TimeEmbedding(nn.Module):
    """Two-layer MLP ``linear_2(silu(linear_1(sinusoid)))`` over the timestep sinusoid."""

    features: int

    @nn.compact
    def __call__(self, emb: jax.Array) -> jax.Array:
        emb = nn.Dense(self.features, name="linear_1")(emb)
        return nn.Dense(self.features, name="linear_2")(nn.silu(emb))


class ResnetBlock(nn.Module):
    """Pre-norm residual block with a time-embedding injection.

    ``h = conv1(act(norm1(x)))``; then ``h = norm2(h + W temb)`` ("default") or
    ``h = norm2(h) * (1 + scale) + shift`` ("scale_shift"); ``h = conv2(act(h))``;
    output ``(shortcut(x) + h) / output_scale``, where the shortcut is a 1x1 conv when the
    channel count changes. ``temb`` is passed through ``act`` before its projection.
    """

    out_channels: int
    groups: int
    eps: float
    act_fn: str = "silu"
    time_scale_shift: str = "default"
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.act_fn]
        h = act(_group_norm(self.groups, self.eps, "norm1")(x))
        h = _conv(self.out_channels, 3, "conv1")(h)
        width = self.out_channels * (2 if self.time_scale_shift == "scale_shift" else 1)
        t = nn.Dense(width, name="time_emb_proj")(act(temb))[:, None, None, :]
        norm2 = _group_norm(self.groups, self.eps, "norm2")
        if self.time_scale_shift == "scale_shift":
            scale, shift = jnp.split(t, 2, axis=-1)
            h = norm2(h) * (1 + scale) + shift
        else:
            h = norm2(h + t)
        h = _conv(self.out_channels, 3, "conv2")(act(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "conv_shortcut")(x)
        return (x + h) / self.output_scale


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions, with a residual.

    ``y = x + to_out_0(softmax(q k^T / sqrt(head_dim)) v)``, with ``q, k, v`` linear
    maps of ``group_norm(x)`` (no norm when ``groups`` is None), split into ``heads``
    heads of ``head_dim`` channels; the result is divided by ``output_scale``. The
    softmax is computed in float32.
    """

    heads: int
    head_dim: int
    groups: Optional[int]
    eps: float
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        h = x
        if self.groups is not None:
            h = _group_norm(self.groups, self.eps, "group_norm")(h)
        h = h.reshape(b, hgt * wid, c)
        inner = self.heads * self.head_dim

        def project(name):
            y = nn.Dense(inner, name=name)(h)
            return y.reshape(b, hgt * wid, self.heads, self.head_dim)

        q, k, v = project("to_q"), project("to_k"), project("to_v")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hgt * wid, inner)
        out = nn.Dense(c, name="to_out_0")(out).reshape(b, hgt, wid, c)
        return (out + x) / self.output_scale


class Downsample(nn.Module):
    """Stride-2 3x3 convolution. ``padding == 0`` pads only bottom/right by one."""

    channels: int
    padding: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        pad = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
        return _conv(self.channels, 3, "conv", stride=2, padding=pad)(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.channels, 3, "conv")(x)


def _attention(cfg: UNet2DConfig, channels: int, groups: Optional[int], name: str,
               output_scale: float = 1.0) -> SpatialSelfAttention:
    head_dim = cfg.head_dim(channels)
    return SpatialSelfAttention(heads=channels // head_dim, head_dim=head_dim, groups=groups,
                                eps=cfg.norm_eps, output_scale=output_scale, name=name)


def _resnet(cfg: UNet2DConfig, channels: int, name: str, output_scale: float = 1.0):
    return ResnetBlock(out_channels=channels, groups=cfg.norm_num_groups, eps=cfg.norm_eps,
                       act_fn=cfg.act_fn, time_scale_shift=cfg.resnet_time_scale_shift,
                       output_scale=output_scale, name=name)


class DownBlock(nn.Module):
    """``DownBlock2D`` / ``AttnDownBlock2D``: resnets (+ attention), then downsample.

    Returns the block output and the tuple of skip activations it produced.
    """

    cfg: UNet2DConfig
    out_channels: int
    attention: bool
    add_downsample: bool

    @nn.compact
    def __call__(self, x, temb):
        skips = []
        for i in range(self.cfg.layers_per_block):
            x = _resnet(self.cfg, self.out_channels, f"resnets_{i}")(x, temb)
            if self.attention:
                x = _attention(self.cfg, self.out_channels, self.cfg.norm_num_groups,
                               f"attentions_{i}")(x)
            skips.append(x)
        if self.add_downsample:
            x = Downsample(self.out_channels, self.cfg.downsample_padding,
                           name="downsamplers_0")(x)
            skips.append(x)
        return x, tuple(skips)


class UpBlock(nn.Module):
    """``UpBlock2D`` / ``AttnUpBlock2D``: per layer, concatenate a skip, resnet
    (+ attention); then upsample. Consumes ``layers_per_block + 1`` skips, last first."""

    cfg: UNet2DConfig
    out_channels: int
    attention: bool
    add_upsample: bool

    @nn.compact
    def __call__(self, x, skips, temb):
        skips = list(skips)
        for i in range(self.cfg.layers_per_block + 1):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = _resnet(self.cfg, self.out_channels, f"resnets_{i}")(x, temb)
            if self.attention:
                x = _attention(self.cfg, self.out_channels, self.cfg.norm_num_groups,
                               f"attentions_{i}")(x)
        if self.add_upsample:
            x = Upsample(self.out_channels, name="upsamplers_0")(x)
        return x


class MidBlock(nn.Module):
    """``UNetMidBlock2D``: resnet, (attention,) resnet at the lowest resolution."""

    cfg: UNet2DConfig
    channels: int

    @nn.compact
    def __call__(self, x, temb):
        scale = self.cfg.mid_block_scale_factor
        x = _resnet(self.cfg, self.channels, "resnets_0", scale)(x, temb)
        if self.cfg.add_attention:
            x = _attention(self.cfg, self.channels, self.cfg.mid_attn_groups,
                           "attentions_0", scale)(x)
        return _resnet(self.cfg, self.channels, "resnets_1", scale)(x, temb)


class UNet2D(nn.Module):
    """Flax port of ``diffusers.UNet2DModel``: ``eps = UNet2D(cfg).apply(params, x, t)``.

    Args (of ``__call__``):
      x: noisy images ``[B, H, W, in_channels]`` in the model's own (VP) space;
        ``H`` and ``W`` divisible by ``2 ** (len(block_out_channels) - 1)``.
      t: timesteps ``[B]`` or a scalar, float (fractional values allowed).
    Returns:
      ``[B, H, W, out_channels]``, the network output (eps for DDPM checkpoints).
    """

    config: UNet2DConfig

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | UNet2DConfig) -> "UNet2D":
        """Build the module from a diffusers config dict (validated) or a config."""
        if not isinstance(config, UNet2DConfig):
            config = UNet2DConfig.from_dict(config)
        else:
            config.validate()
        return cls(config)

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        cfg = self.config
        chans = cfg.block_out_channels
        n = len(chans)
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet2D expects x of shape [B, H, W, {cfg.in_channels}], "
                             f"got {x.shape}")
        factor = 2 ** (n - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"UNet2D: height and width must be multiples of {factor} "
                             f"(2 ** (levels - 1)), got {x.shape[1:3]}")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        if cfg.center_input_sample:
            x = 2 * x - 1.0

        emb = timestep_sinusoid(t, chans[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimeEmbedding(cfg.temb_dim, name="time_embedding")(emb)

        h = _conv(chans[0], 3, "conv_in")(x)
        skips = [h]
        for i, block in enumerate(cfg.down_block_types):
            h, s = DownBlock(cfg, chans[i], _DOWN_BLOCKS[_strip(block)],
                             add_downsample=i < n - 1, name=f"down_blocks_{i}")(h, temb)
            skips.extend(s)

        if cfg.mid_block_type is not None:
            h = MidBlock(cfg, chans[-1], name="mid_block")(h, temb)

        rev = chans[::-1]
        per_block = cfg.layers_per_block + 1
        for i, block in enumerate(cfg.up_block_types):
            block_skips, skips = skips[-per_block:], skips[:-per_block]
            h = UpBlock(cfg, rev[i], _UP_BLOCKS[_strip(block)], add_upsample=i < n - 1,
                        name=f"up_blocks_{i}")(h, block_skips, temb)

        h = nn.silu(_group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out")(h))
        return _conv(cfg.out_channels, 3, "conv_out")(h)
