"""A small residual MLP denoiser network ``F(x, c_noise)`` for low-dimensional data.

    emb = MLP(PositionalEmbedding(c_noise))                  [B, hidden]
    h   = Dense(x) + emb
    h   = h + Dense(SiLU(Dense(SiLU(LayerNorm(h)))))  (x depth)
    F   = Dense_zero(SiLU(LayerNorm(h)))                      [B, D]

Input ``x`` is ``[B, D]`` (``D = 2`` for the toy sets of :mod:`iia_jax.data`). The
output layer is zero-initialised. Wrap with :func:`iia_jax.nets.edm_precond`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .edm_unet import PositionalEmbedding

__all__ = ["MLPDenoiser"]


class MLPDenoiser(nn.Module):
    """Residual MLP ``F(x, c_noise)`` for vectors ``x [B, D]``.

    Attributes:
      hidden: width of the hidden layers.
      depth: number of residual blocks.
      emb_dim: size of the sinusoidal ``c_noise`` embedding.
    """

    hidden: int = 128
    depth: int = 3
    emb_dim: int = 32

    @nn.compact
    def __call__(self, x: jnp.ndarray, c_noise: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if x.ndim != 2:
            raise ValueError(f"MLPDenoiser expects vectors [B, D]; got shape {x.shape}")
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), x.shape[:1])
        emb = PositionalEmbedding(self.emb_dim)(c_noise)
        emb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(emb)))
        h = nn.Dense(self.hidden)(x.astype(jnp.float32)) + emb
        for _ in range(self.depth):
            r = nn.silu(nn.LayerNorm()(h))
            r = nn.Dense(self.hidden)(r) + nn.Dense(self.hidden)(emb)
            r = nn.Dense(self.hidden)(nn.silu(r))
            h = h + r
        h = nn.silu(nn.LayerNorm()(h))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)
