"""Reverse-process networks."""

from .mlp import MLP, TimeConditioning
from .multiscale import MultiScaleConvNet
from .temporal import GaussianBumps, SinusoidalEmbedding

__all__ = ["GaussianBumps", "MLP", "MultiScaleConvNet", "SinusoidalEmbedding", "TimeConditioning"]
