"""Exact denoiser of an isotropic Gaussian mixture: the analytic test model.

For data ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)`` and ``x = x0 + sigma n`` the noisy marginal is
``sum_k w_k N(mu_k, (s_k^2 + sigma^2) I)``, and Bayes' rule gives the posterior mean

    D(x, sigma) = sum_k p_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)],
    log p_k(x) = log w_k - d/2 log(s_k^2 + sigma^2) - |x - mu_k|^2 / (2 (s_k^2 + sigma^2)) + const,

with the responsibilities ``p_k`` computed by a softmax in log-space (stable for any sigma).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GaussianMixture", "gmm", "gmm_sample"]


@jax.tree_util.register_pytree_node_class
class GaussianMixture:
    """Isotropic Gaussian mixture; calling it is the exact denoiser ``D(x, sigma)``.

    A pytree (its arrays are leaves), so it can be passed through ``jax.jit`` as an argument;
    it hashes by identity, so ``static_argnums`` works too.
    """

    def __init__(self, means, stds, log_weights):
        self.means, self.stds, self.log_weights = means, stds, log_weights

    def tree_flatten(self):
        return (self.means, self.stds, self.log_weights), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)

    @property
    def event_shape(self):
        return tuple(self.means.shape[1:])

    def __call__(self, x, sigma):
        event = self.means.shape[1:]
        if tuple(x.shape[1:]) != tuple(event):
            raise ValueError(f"x must have shape [B, {', '.join(map(str, event))}] to match the "
                             f"mixture means, got {tuple(x.shape)}")
        dim = int(np.prod(event))
        flat = x.reshape(x.shape[0], 1, dim)                         # [B, 1, d]
        mu = self.means.reshape(1, -1, dim).astype(x.dtype)          # [1, K, d]
        var0 = self.stds.astype(x.dtype) ** 2                        # [K]
        var = var0 + jnp.asarray(sigma, x.dtype) ** 2
        diff = flat - mu
        logits = (self.log_weights - 0.5 * dim * jnp.log(var)
                  - 0.5 * jnp.sum(diff ** 2, axis=-1) / var)         # [B, K]
        resp = jax.nn.softmax(logits, axis=-1)
        posterior = mu + (var0 / var)[None, :, None] * diff          # [B, K, d]
        return jnp.einsum("bk,bkd->bd", resp, posterior).reshape(x.shape)


def gmm(means, stds, weights=None) -> GaussianMixture:
    """Build the exact mixture denoiser.

    ``means``: ``[K, *event_shape]``; ``stds``: scalar or ``[K]`` (>= 0); ``weights``: ``[K]``
    non-negative (normalised here), uniform when None.
    """
    means = jnp.asarray(means, jnp.float32)
    if means.ndim < 2:
        raise ValueError(f"means must have shape [K, *event_shape], got {means.shape}")
    k = means.shape[0]
    stds = jnp.asarray(stds, jnp.float32)
    stds = jnp.broadcast_to(stds, (k,)) if stds.ndim == 0 else stds
    if stds.shape != (k,):
        raise ValueError(f"stds must be a scalar or have shape [{k}], got {stds.shape}")
    if not bool(jnp.all(stds >= 0)):
        raise ValueError("stds must be non-negative")
    weights = jnp.ones((k,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    if weights.shape != (k,) or not bool(jnp.all(weights >= 0)) or not float(weights.sum()) > 0:
        raise ValueError(f"weights must be [{k}] non-negative with a positive sum, got {weights}")
    return GaussianMixture(means, stds, jnp.log(weights / weights.sum()))


def gmm_sample(key, mixture: GaussianMixture, n: int):
    """``n`` exact samples of the clean data distribution, shape ``[n, *event_shape]``."""
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, mixture.log_weights, shape=(n,))
    noise = jax.random.normal(k_noise, (n,) + mixture.event_shape)
    std = mixture.stds[comp].reshape((n,) + (1,) * len(mixture.event_shape))
    return mixture.means[comp] + std * noise
