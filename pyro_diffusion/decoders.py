r"""
The last reverse step :math:`p(x_0 \mid x_1)`, the observed site of the model.

A decoder turns the reverse kernel's mean and log-variance at ``t = 1``
into the distribution of the data: a Gaussian for continuous data, or a
:class:`~pyro_diffusion.distributions.BinnedNormal` for uniformly
dequantized integer data.
"""

import torch
from torch import nn

import pyro.distributions as dist

from .distributions import BinnedNormal

__all__ = ["BinnedDecoder", "GaussianDecoder"]


class GaussianDecoder(nn.Module):
    r""":math:`p(x_0 \mid x_1) = \mathcal{N}(\mu(x_1, 1), \Sigma(x_1, 1))`."""

    def distribution(self, loc, log_variance, event_dim):
        """
        :param torch.Tensor loc: shape ``batch_shape + event_shape``.
        :param torch.Tensor log_variance: broadcastable to ``loc``.
        :param int event_dim: ``len(event_shape)``.
        :rtype: pyro.distributions.Independent
        """
        scale = (0.5 * log_variance).exp().expand_as(loc)
        return dist.Normal(loc, scale).to_event(event_dim)

    def sample(self, loc, log_variance, generator=None):
        """Draw :math:`x_0` of the shape of ``loc`` from ``generator``."""
        noise = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
        return loc + (0.5 * log_variance).exp() * noise


class BinnedDecoder(nn.Module):
    r"""
    :math:`p(x_0 \mid x_1)`, a :class:`~pyro_diffusion.distributions.BinnedNormal`
    with the reverse kernel's mean and variance at ``t = 1``: the
    discretized Gaussian decoder of Ho et al. (2020), spread uniformly
    over each bin so that it is a density for dequantized data.

    :param float low: the model-space value of integer level 0's lower edge.
    :param float high: the model-space value of the top level's upper edge.
    :param int num_bins: the number of integer levels.
    """

    def __init__(self, low, high, num_bins):
        super().__init__()
        self.low = float(low)
        self.high = float(high)
        self.num_bins = int(num_bins)

    def distribution(self, loc, log_variance, event_dim):
        scale = (0.5 * log_variance).exp().expand_as(loc)
        return BinnedNormal(loc, scale, self.low, self.high, self.num_bins).to_event(event_dim)

    def sample(self, loc, log_variance, generator=None):
        scale = (0.5 * log_variance).exp().expand_as(loc)
        return BinnedNormal(loc, scale, self.low, self.high, self.num_bins).sample(
            generator=generator
        )

    def extra_repr(self):
        return f"low={self.low}, high={self.high}, num_bins={self.num_bins}"
