"""Reverse-process networks."""

from .mlp import MLP, TimeConditioning
from .multiscale import MultiScaleConvNet
from .temporal import GaussianBumps, SinusoidalEmbedding
from .unet import UNet

__all__ = ["GaussianBumps", "MLP", "MultiScaleConvNet", "SinusoidalEmbedding", "TimeConditioning", "UNet"]
