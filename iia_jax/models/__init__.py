"""Models in the EDM denoiser form ``D(x, sigma) -> x0_hat`` (DESIGN.md §2)."""
from .adapters import edm, from_discrete_eps, from_discrete_v, from_eps, from_v, from_x0
from .gmm import GaussianMixture, gmm, gmm_sample

__all__ = ["edm", "from_eps", "from_v", "from_x0", "from_discrete_eps", "from_discrete_v",
           "GaussianMixture", "gmm", "gmm_sample"]
