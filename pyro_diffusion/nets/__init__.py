"""Reverse-process networks."""

from .mlp import MLP, TimeConditioning
from .temporal import GaussianBumps, SinusoidalEmbedding

__all__ = ["GaussianBumps", "MLP", "SinusoidalEmbedding", "TimeConditioning"]
