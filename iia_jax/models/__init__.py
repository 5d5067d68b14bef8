"""Models in the EDM denoiser form ``D(x, sigma) -> x0_hat`` (docs/design.md §2)."""
from .adapters import edm, from_discrete_eps, from_discrete_v, from_eps, from_v, from_x0
from .diffusers_io import from_diffusers, load_unet2d
from .gmm import GaussianMixture, gmm, gmm_sample
from .guidance import cfg, cfg_single, guided

__all__ = ["edm", "from_eps", "from_v", "from_x0", "from_discrete_eps", "from_discrete_v",
           "GaussianMixture", "gmm", "gmm_sample", "cfg", "cfg_single", "guided",
           "from_diffusers", "load_unet2d"]
