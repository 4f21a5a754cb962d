r"""
Functions of the time step that condition a reverse network on ``t``.

References

[1] J. Sohl-Dickstein et al., "Deep Unsupervised Learning using
    Nonequilibrium Thermodynamics", 2015, Appendix D.
[2] A. Vaswani et al., "Attention Is All You Need", 2017.
"""

import math

import torch
from torch import nn

__all__ = ["GaussianBumps", "SinusoidalEmbedding"]


class GaussianBumps(nn.Module):
    r"""
    Normalized Gaussian bump functions of the time step, Appendix D of [1]:

    .. math::

        g_j(t) = \frac{\exp(-(t - \tau_j)^2 / (2 w^2))}{\sum_k \exp(-(t - \tau_k)^2 / (2 w^2))},

    with centers :math:`\tau_j` evenly spaced on ``[1, T]`` and width
    :math:`w` equal to their spacing. A readout weighted by :math:`g_j(t)`
    varies smoothly with ``t``.

    :param int num_steps: ``T``.
    :param int num_bumps: ``J``, the number of bump functions.
    """

    def __init__(self, num_steps, num_bumps=10):
        super().__init__()
        num_bumps = max(1, min(int(num_bumps), int(num_steps)))
        centers = torch.linspace(1.0, float(num_steps), num_bumps)
        width = (num_steps - 1) / max(num_bumps - 1, 1) if num_bumps > 1 else 1.0
        self.num_bumps = num_bumps
        self.register_buffer("centers", centers)
        self.width = max(float(width), 1.0)

    def forward(self, t):
        """
        :param torch.Tensor t: time steps, shape ``[N]``.
        :returns: :math:`g(t)`, shape ``[N, J]``, rows summing to one.
        """
        t = t.to(self.centers.dtype).unsqueeze(-1)
        logits = -0.5 * ((t - self.centers) / self.width) ** 2
        return torch.softmax(logits, dim=-1)


class SinusoidalEmbedding(nn.Module):
    r"""
    The sinusoidal position code of [2] applied to the time step:
    :math:`[\sin(t \omega_k), \cos(t \omega_k)]` with
    :math:`\omega_k = 10000^{-k / (d/2)}`, scaled so that ``t = T`` maps to
    ``1000``, the range the frequencies were chosen for.

    :param int num_steps: ``T``.
    :param int dim: the embedding width ``d`` (even).
    """

    def __init__(self, num_steps, dim):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the embedding width must be even, got {dim}")
        half = dim // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
        self.register_buffer("frequencies", frequencies)
        self.time_scale = 1000.0 / num_steps

    def forward(self, t):
        """
        :param torch.Tensor t: time steps, shape ``[N]``.
        :returns: shape ``[N, d]``.
        """
        angles = (t.to(self.frequencies.dtype) * self.time_scale).unsqueeze(-1) * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
