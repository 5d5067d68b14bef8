"""A compact DDPM++/EDM-style U-Net in Flax linen (NHWC images).

Layout (Song et al. 2021 DDPM++, as used by Karras et al. 2022 EDM, shrunk):

    c_noise [B] -> noise embedding (positional or Fourier) [+ label embedding] -> MLP -> emb [B, 4C]
    x [B, H, W, C_in] -> conv3x3 -> encoder: per level ``num_res_blocks`` residual
    blocks (then a stride-2 down-sampling block except at the last level)
    -> middle: res block, self-attention, res block
    -> decoder: per level ``num_res_blocks + 1`` residual blocks on [h, skip]
    (then nearest up-sampling + conv) -> GroupNorm, SiLU, conv3x3 -> [B, H, W, C_in]

Residual block: ``GN -> SiLU -> conv3x3 -> + Dense(emb) -> GN -> SiLU -> dropout ->
conv3x3`` plus a (1x1 conv) skip, the sum scaled by ``1/sqrt(2)``. Self-attention is
applied at the lowest resolution. The last conv of every residual branch and of
the output is zero-initialised, so the untrained network outputs 0 and an
EDM-preconditioned denoiser starts at ``c_skip * x``.

**Class labels** (``num_classes > 0``): as in EDM's class-conditional DDPM++, a learnt
table of ``num_classes + 1`` rows of width ``C`` is looked up by the integer label and
added to the noise embedding before its MLP. The last row (index ``num_classes``) is the
*null label*: trained with label dropout it gives the unconditional model, the second
half of classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion
Guidance"). With ``num_classes = 0`` (the default) the network has no table, takes no
labels, and its parameters and outputs are those of the unconditional network.

The network is the raw ``F`` of EDM: wrap it with :func:`iia_jax.nets.edm_precond`.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["EDMUNet", "PositionalEmbedding", "FourierEmbedding", "ResBlock", "AttentionBlock", "check_labels"]


def check_labels(cond, batch: int, num_classes: int) -> jnp.ndarray:
    """Validate integer class labels ``cond [batch]`` in ``[0, num_classes]`` (``num_classes`` = null).

    Shape and dtype are checked always; the range only for concrete (non-traced) values,
    since a traced value is unknown until run time (the network then maps an out-of-range
    label to NaN rather than to some other class). Returns ``cond`` as int32.
    """
    if cond is None:
        raise ValueError(
            f"cond: this network is class-conditional (num_classes={num_classes}) and needs integer labels "
            f"[B] in 0..{num_classes} ({num_classes} = the null label); got None"
        )
    shape, dtype = jnp.shape(cond), jnp.result_type(cond)
    if shape != (batch,):
        raise ValueError(f"cond: expected integer labels of shape [B] = ({batch},); got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"cond: expected an integer dtype (class labels); got {dtype}")
    if not isinstance(cond, jax.core.Tracer):
        host = np.asarray(cond)
        if host.size and (host.min() < 0 or host.max() > num_classes):
            raise ValueError(
                f"cond: labels must lie in 0..{num_classes} ({num_classes} = the null label); "
                f"got values in [{host.min()}, {host.max()}]"
            )
    return jnp.asarray(cond, jnp.int32)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a ``[B]`` scalar (EDM's ``PositionalEmbedding``).

    ``freqs_k = (1/max_positions)^(k/(dim/2 - 1))``, output ``[cos(c f), sin(c f)]``.
    """

    dim: int
    max_positions: int = 10000

    @nn.compact
    def __call__(self, c: jnp.ndarray) -> jnp.ndarray:
        half = self.dim // 2
        freqs = (1.0 / self.max_positions) ** (jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
        arg = c.astype(jnp.float32)[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of a ``[B]`` scalar (EDM's NCSN++ ``FourierEmbedding``).

    ``freqs ~ N(0, scale^2)``, drawn once from ``numpy.random.default_rng(seed)`` so
    they are constants of the architecture (not trained, not stored in params).
    """

    dim: int
    scale: float = 16.0
    seed: int = 0

    @nn.compact
    def __call__(self, c: jnp.ndarray) -> jnp.ndarray:
        freqs = self.scale * np.random.default_rng(self.seed).standard_normal(self.dim // 2)
        arg = c.astype(jnp.float32)[:, None] * jnp.asarray(2.0 * math.pi * freqs, jnp.float32)[None, :]
        return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


def _label_rows(table: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Rows ``table[labels]``; NaN rows for labels outside the table (never another class)."""
    last = table.shape[0] - 1
    valid = (labels >= 0) & (labels <= last)
    return jnp.where(valid[:, None], table[jnp.clip(labels, 0, last)], jnp.nan)


def _group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6)


class ResBlock(nn.Module):
    """Residual block with an additive per-block noise embedding (see module docstring)."""

    out_channels: int
    dropout: float = 0.0
    norm_groups: int = 8

    @nn.compact
    def __call__(self, x: jnp.ndarray, emb: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = nn.silu(_group_norm(x.shape[-1], self.norm_groups)(x))
        h = nn.Conv(self.out_channels, (3, 3))(h)
        h = h + nn.Dense(self.out_channels)(emb)[:, None, None, :]
        h = nn.silu(_group_norm(self.out_channels, self.norm_groups)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        skip = x if x.shape[-1] == self.out_channels else nn.Conv(self.out_channels, (1, 1))(x)
        return (h + skip) * (1.0 / math.sqrt(2.0))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, residual, scaled by 1/sqrt(2)."""

    num_heads: int = 1
    norm_groups: int = 8

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, hh, ww, c = x.shape
        h = _group_norm(c, self.norm_groups)(x).reshape(b, hh * ww, c)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, out_kernel_init=nn.initializers.zeros
        )(h, h)
        return (x + h.reshape(b, hh, ww, c)) * (1.0 / math.sqrt(2.0))


class EDMUNet(nn.Module):
    """Compact DDPM++-style U-Net ``F(x, c_noise)`` for small NHWC images.

    Attributes:
      channels: base width ``C``; level ``i`` has ``C * channel_mults[i]`` channels.
      channel_mults: one multiplier per resolution level; each level but the last
        halves the resolution, so ``H`` and ``W`` must be divisible by
        ``2 ** (len(channel_mults) - 1)``.
      num_res_blocks: residual blocks per level in the encoder (decoder has one more).
      dropout: dropout rate inside residual blocks (active only with ``train=True``,
        which then needs a ``"dropout"`` rng).
      embedding: ``"positional"`` (DDPM++) or ``"fourier"`` (NCSN++) for ``c_noise``.
      attention: self-attention at the lowest resolution (and in the middle block).
      num_heads: attention heads.
      norm_groups: at most this many GroupNorm groups (``gcd(channels, norm_groups)``).
      out_channels: output channels (default: same as the input).
      num_classes: ``0`` (unconditional) or the number of classes; then ``__call__``
        needs integer labels ``cond [B]`` in ``0..num_classes`` (``num_classes`` = null).
    """

    channels: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 2
    dropout: float = 0.0
    embedding: str = "positional"
    attention: bool = True
    num_heads: int = 1
    norm_groups: int = 8
    out_channels: int | None = None
    num_classes: int = 0

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, c_noise: jnp.ndarray, cond: jnp.ndarray | None = None, train: bool = False
    ) -> jnp.ndarray:
        if x.ndim != 4:
            raise ValueError(f"EDMUNet expects NHWC images [B, H, W, C]; got shape {x.shape}")
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"image size {x.shape[1]}x{x.shape[2]} is not divisible by {factor} "
                f"(= 2^(len(channel_mults)-1) for channel_mults={tuple(self.channel_mults)})"
            )
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), x.shape[:1])
        out_channels = self.out_channels or x.shape[-1]
        emb_dim = 4 * self.channels
        block = lambda ch: ResBlock(ch, self.dropout, self.norm_groups)  # noqa: E731
        attn = lambda: AttentionBlock(self.num_heads, self.norm_groups)  # noqa: E731

        # Noise embedding.
        if self.embedding == "positional":
            emb = PositionalEmbedding(self.channels)(c_noise)
        elif self.embedding == "fourier":
            emb = FourierEmbedding(self.channels)(c_noise)
        else:
            raise ValueError(f"embedding must be 'positional' or 'fourier'; got {self.embedding!r}")
        if self.num_classes > 0:
            labels = check_labels(cond, x.shape[0], self.num_classes)
            table = self.param("label_embedding", nn.initializers.normal(1.0), (self.num_classes + 1, self.channels))
            emb = emb + _label_rows(table, labels)
        elif cond is not None:
            raise ValueError("cond: this network is unconditional (num_classes=0) and takes no labels")
        emb = nn.silu(nn.Dense(emb_dim)(emb))
        emb = nn.silu(nn.Dense(emb_dim)(emb))

        # Encoder.
        last = len(self.channel_mults) - 1
        h = nn.Conv(self.channels, (3, 3))(x.astype(jnp.float32))
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = block(self.channels * mult)(h, emb, train)
                if self.attention and level == last:
                    h = attn()(h)
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
                skips.append(h)

        # Middle.
        h = block(h.shape[-1])(h, emb, train)
        if self.attention:
            h = attn()(h)
        h = block(h.shape[-1])(h, emb, train)

        # Decoder.
        for level in reversed(range(len(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(self.channels * self.channel_mults[level])(h, emb, train)
                if self.attention and level == last:
                    h = attn()(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(c, (3, 3))(h)

        h = nn.silu(_group_norm(h.shape[-1], self.norm_groups)(h))
        return nn.Conv(out_channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
