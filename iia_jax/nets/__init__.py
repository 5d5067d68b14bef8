"""Flax networks and the EDM preconditioning that turns them into denoisers."""

from .classifier import DigitsClassifier, classifier_features, classifier_logits
from .edm_unet import AttentionBlock, EDMUNet, FourierEmbedding, PositionalEmbedding, ResBlock, check_labels
from .mlp import MLPDenoiser
from .precond import EDMCoefficients, bind, edm_coefficients, edm_precond
from .unet2d import UNet2D, UNet2DConfig
