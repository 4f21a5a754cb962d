r"""
Uniform dequantization of integer data and the change of units that makes
a continuous density comparable with a discrete likelihood.

Integer levels :math:`v \in \{0, \dots, K - 1\}` become continuous values

.. math::

    x = \frac{v + u - c}{s}, \qquad u \sim U[0, 1),

so that a density :math:`p(x)` gives the density of :math:`v + u` as
:math:`p(x) / s^D`. Its negative log in bits per dimension,
:math:`-\log_2 p(x) / D + \log_2 s`, bounds the discrete negative
log-likelihood of :math:`v` from above in expectation over :math:`u`
(Theis et al., "A note on the evaluation of generative models", 2016).
"""

import math

import torch

from .decoders import BinnedDecoder

__all__ = ["UniformDequantization"]


class UniformDequantization:
    """
    The map from integer levels to the model's continuous scale.

    :param int num_levels: ``K``.
    :param float center: ``c``, subtracted after adding the uniform noise.
    :param float scale: ``s > 0``, the divisor.
    """

    def __init__(self, num_levels, center, scale):
        if int(num_levels) < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.num_levels = int(num_levels)
        self.center = float(center)
        self.scale = float(scale)

    @classmethod
    def fit(cls, levels, num_levels):
        """
        Choose ``c`` and ``s`` so that dequantized training data have mean 0
        and variance 1 over all examples and dimensions together, the single
        constant scaling of Sohl-Dickstein et al. (2015).

        :param torch.Tensor levels: integer training data, any shape.
        :param int num_levels: ``K``.
        """
        values = levels.double()
        center = float(values.mean()) + 0.5
        # Var(v + u) = Var(v) + 1/12 for u ~ U[0, 1) independent of v.
        scale = math.sqrt(float(values.var()) + 1.0 / 12.0)
        return cls(num_levels, center, scale)

    def __call__(self, levels, generator=None):
        """
        :param torch.Tensor levels: integers in ``0..K-1``, any shape.
        :returns: dequantized float32 values of the same shape.
        """
        noise = torch.rand(levels.shape, generator=generator)
        return ((levels.float() + noise - self.center) / self.scale).float()

    def to_levels(self, x):
        """Map model-space values back to integer levels, clamped to ``0..K-1``."""
        levels = torch.floor(x * self.scale + self.center)
        return levels.clamp(0, self.num_levels - 1).long()

    def decoder(self):
        """
        :returns: the :class:`~pyro_diffusion.decoders.BinnedDecoder` whose
            bins are this map's integer levels.
        """
        low = (0.0 - self.center) / self.scale
        high = (self.num_levels - self.center) / self.scale
        return BinnedDecoder(low, high, self.num_levels)

    def nll_bits_per_dim(self, elbo_bits_per_dim):
        """
        Convert a bound in bits per dimension on the model's scale to a
        negative log-likelihood bound in bits per dimension on the integer
        scale: :math:`-\\mathcal{L} / D + \\log_2 s`.
        """
        return -elbo_bits_per_dim + math.log2(self.scale)

    def state_dict(self):
        return {"num_levels": self.num_levels, "center": self.center, "scale": self.scale}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["num_levels"], state["center"], state["scale"])
