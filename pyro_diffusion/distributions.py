r"""
Distributions of the last reverse step :math:`p(x_0 \mid x_1)` for
dequantized integer data.
"""

import math

import torch
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

import pyro.distributions as dist

__all__ = ["BinnedNormal", "draw"]


def _log1mexp(x):
    """Compute ``log(1 - exp(x))`` for ``x <= 0`` without cancellation."""
    x = x.clamp(max=-1e-30)
    return torch.where(
        x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


def log_normal_interval_mass(lower, upper):
    r"""
    Compute :math:`\log(\Phi(b) - \Phi(a))` for standardized edges
    :math:`a < b`, using the upper tail where :math:`a > 0` so that neither
    tail loses precision.

    :param torch.Tensor lower: :math:`a`, may be ``-inf``.
    :param torch.Tensor upper: :math:`b`, may be ``+inf``.
    :rtype: torch.Tensor
    """
    special = torch.special
    upper_tail = lower > 0
    # Phi(b) - Phi(a) = Phi(-a) - Phi(-b); in the upper tail the right-hand
    # side avoids subtracting two numbers close to one.
    big = torch.where(upper_tail, special.log_ndtr(-lower), special.log_ndtr(upper))
    small = torch.where(upper_tail, special.log_ndtr(-upper), special.log_ndtr(lower))
    return big + _log1mexp(small - big)


class BinnedNormal(dist.TorchDistribution):
    r"""
    A Normal distribution discretized to ``num_bins`` equal bins on
    ``[low, high)`` and spread uniformly inside each bin: the density of a
    uniformly dequantized integer under a discretized Gaussian decoder.

    .. math::

        p(x) = \frac{1}{w}\left(\Phi\left(\frac{e_{k+1} - \mu}{\sigma}\right)
            - \Phi\left(\frac{e_k - \mu}{\sigma}\right)\right),
        \quad k = \lfloor (x - \text{low}) / w \rfloor,

    with bin width :math:`w = (\text{high} - \text{low}) / \text{num\_bins}`
    and edges :math:`e_k = \text{low} + k w`, except that the outermost
    edges are :math:`e_0 = -\infty` and :math:`e_K = +\infty`, so the
    Gaussian mass outside the range falls into the end bins. For integer
    data :math:`v` dequantized as :math:`x = (v + u - c) / s` with
    :math:`u \sim U[0, 1)`, ``-log p(x)`` is an upper bound on the discrete
    negative log-likelihood plus :math:`\log s`, the Jacobian of the
    scaling.

    Batch shape is the broadcast shape of ``loc`` and ``scale``; the event
    shape is empty (wrap with ``.to_event`` for vectors).

    :param torch.Tensor loc: :math:`\mu`.
    :param torch.Tensor scale: :math:`\sigma > 0`.
    :param float low: lower end of the first bin.
    :param float high: upper end of the last bin.
    :param int num_bins: the number of integer levels.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc, scale, low, high, num_bins, validate_args=None):
        if not high > low:
            raise ValueError(f"BinnedNormal needs low < high, got low={low}, high={high}")
        if int(num_bins) < 2:
            raise ValueError(f"BinnedNormal needs num_bins >= 2, got {num_bins}")
        self.loc, self.scale = broadcast_all(loc, scale)
        self.low = float(low)
        self.high = float(high)
        self.num_bins = int(num_bins)
        self.bin_width = (self.high - self.low) / self.num_bins
        super().__init__(self.loc.shape, validate_args=validate_args)

    # The density lives on [low, high). Float32 rounding puts some dequantized
    # values a hair outside, so the support is declared as the real line and
    # log_prob assigns such values to the nearest end bin.
    support = constraints.real

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BinnedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.low, new.high, new.num_bins = self.low, self.high, self.num_bins
        new.bin_width = self.bin_width
        super(BinnedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def bin_index(self, value):
        """Return the bin ``k`` of each value, clamped to ``0..num_bins - 1``."""
        index = torch.floor((value - self.low) / self.bin_width)
        return index.clamp(0, self.num_bins - 1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        # The tails are evaluated in float64: the float32 gradient of
        # torch.special.log_ndtr is inaccurate below about -100 (seen in
        # torch 2.14), which a poorly placed loc reaches easily.
        dtype = torch.promote_types(self.loc.dtype, value.dtype)
        index = self.bin_index(value.double())
        lower_edge = self.low + index * self.bin_width
        loc, scale = self.loc.double(), self.scale.double()
        lower = (lower_edge - loc) / scale
        upper = (lower_edge + self.bin_width - loc) / scale
        first = index == 0
        last = index == self.num_bins - 1
        # The end bins hold the tails: log Phi(b) for the first, log Phi(-a)
        # for the last. Every branch gets finite inputs, because torch.where
        # passes gradients through the unselected branch too.
        interval = log_normal_interval_mass(
            torch.where(first, upper - 1, lower), torch.where(last, lower + 1, upper)
        )
        mass = torch.where(first, torch.special.log_ndtr(upper), interval)
        mass = torch.where(last, torch.special.log_ndtr(-lower), mass)
        return (mass - math.log(self.bin_width)).to(dtype)

    def sample(self, sample_shape=torch.Size(), generator=None):
        """
        Draw a bin from the discretized Normal, then a point uniformly in it.

        :param torch.Size sample_shape: leading sample dimensions.
        :param torch.Generator generator: an optional random stream.
        """
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
            index = self.bin_index(self.loc + self.scale * noise)
            offset = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
            return self.low + (index + offset) * self.bin_width

    @property
    def mean(self):
        raise NotImplementedError("BinnedNormal has no closed-form mean")

    @property
    def variance(self):
        raise NotImplementedError("BinnedNormal has no closed-form variance")


def draw(distribution, generator=None):
    """
    Draw one sample of a Normal, Bernoulli or :class:`BinnedNormal`
    distribution (possibly wrapped by ``.to_event``) from ``generator``, so
    that a seeded stream reproduces it.

    :param distribution: the distribution to sample.
    :param torch.Generator generator: an optional random stream.
    :rtype: torch.Tensor
    """
    base = distribution
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Normal):
        noise = torch.randn(base.loc.shape, dtype=base.loc.dtype, device=base.loc.device, generator=generator)
        return base.loc + base.scale * noise
    if isinstance(base, dist.Bernoulli):
        probs = base.probs
        uniform = torch.rand(probs.shape, dtype=probs.dtype, device=probs.device, generator=generator)
        return (uniform < probs).to(probs.dtype)
    if isinstance(base, BinnedNormal):
        return base.sample(generator=generator)
    raise ValueError(f"draw supports Normal, Bernoulli and BinnedNormal, got {type(base).__name__}")
