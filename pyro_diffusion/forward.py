r"""
The Gaussian forward (diffusion) process :math:`q`, the fixed half of the
trajectory and the guide of :class:`~pyro_diffusion.model.DiffusionModel`.

Shapes: data ``x`` has shape ``batch_shape + event_shape`` and time steps
``t`` are integer tensors of shape ``batch_shape`` (or broadcastable to
it), each step in ``1..T``. Every method returns a Pyro distribution whose
``event_shape`` is the data's.

References

[1] J. Sohl-Dickstein et al., "Deep Unsupervised Learning using
    Nonequilibrium Thermodynamics", 2015.
[2] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    2020.
"""

import torch
from torch import nn

import pyro.distributions as dist

from .schedules import BetaSchedule, LearnedBetaSchedule

__all__ = ["GaussianForward", "as_time_tensor"]


def as_time_tensor(t, num_steps, minimum=1, device=None):
    """
    Convert ``t`` to a long tensor and check that every step lies in
    ``minimum..num_steps``.

    :param t: an int or an integer tensor of time steps.
    :param int num_steps: ``T``.
    :param int minimum: the smallest allowed step.
    :raises ValueError: naming the first step out of range.
    :rtype: torch.Tensor
    """
    t = torch.as_tensor(t, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"time steps must be integers, got a tensor of dtype {t.dtype}")
    t = t.long()
    bad = (t < minimum) | (t > num_steps)
    if bad.any():
        value = int(t[bad].flatten()[0])
        raise ValueError(
            f"time step t = {value} is outside {minimum}..{num_steps}: "
            f"use steps in {minimum}..{num_steps} for this T"
        )
    return t


class GaussianForward(nn.Module):
    r"""
    The Gaussian forward process of [1] with kernel

    .. math::

        q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I),

    whose stationary distribution is :math:`\mathcal{N}(0, I)`.

    :param schedule: the betas and their derived quantities, fixed or learned.
    :type schedule: BetaSchedule or LearnedBetaSchedule
    :param int event_dim: the number of rightmost data dimensions that form
        one example (1 for vectors, 3 for images).
    """

    def __init__(self, schedule, event_dim=1):
        super().__init__()
        if not isinstance(schedule, (BetaSchedule, LearnedBetaSchedule)):
            schedule = BetaSchedule(schedule)
        self.schedule = schedule
        self.event_dim = event_dim

    @property
    def num_steps(self):
        """The number of diffusion steps ``T``."""
        return self.schedule.num_steps

    def _normal(self, loc, variance):
        # The variances come from a validated schedule and are positive, so
        # PyTorch's argument checks would only repeat work on every step.
        return dist.Normal(loc, variance.sqrt().expand_as(loc), validate_args=False).to_event(self.event_dim)

    def step(self, x_prev, t):
        r"""
        Return the one-step kernel :math:`q(x_t \mid x_{t-1})`, Eq. (19) in [1].

        :param torch.Tensor x_prev: :math:`x_{t-1}`, shape ``batch_shape + event_shape``.
        :param t: time steps in ``1..T``, shape ``batch_shape``.
        :rtype: pyro.distributions.Independent
        """
        t = as_time_tensor(t, self.num_steps, device=x_prev.device)
        s = self.schedule
        loc = s.gather("sqrt_alphas", t, x_prev) * x_prev
        return self._normal(loc, s.gather("betas", t, x_prev))

    def marginal(self, x0, t):
        r"""
        Return the marginal :math:`q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)`,
        Eq. (4) in [2].

        :param torch.Tensor x0: data, shape ``batch_shape + event_shape``.
        :param t: time steps in ``1..T``, shape ``batch_shape``.
        :rtype: pyro.distributions.Independent
        """
        t = as_time_tensor(t, self.num_steps, device=x0.device)
        s = self.schedule
        loc = s.gather("sqrt_alphas_bar", t, x0) * x0
        return self._normal(loc, s.gather("one_minus_alphas_bar", t, x0))

    def q_sample(self, x0, t, noise=None):
        r"""
        Draw :math:`x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon`.

        :param torch.Tensor x0: shape ``batch_shape + event_shape``.
        :param torch.Tensor t: shape ``batch_shape``, steps in ``1..T``.
        :param torch.Tensor noise: :math:`\epsilon`, same shape as ``x0``; drawn
            from :math:`\mathcal{N}(0, I)` if omitted.
        :returns: :math:`x_t`, same shape as ``x0``.
        """
        t = as_time_tensor(t, self.num_steps, device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        s = self.schedule
        return (
            s.gather("sqrt_alphas_bar", t, x0) * x0
            + s.gather("sqrt_one_minus_alphas_bar", t, x0) * noise
        )

    def posterior_mean_variance(self, x_t, x0, t):
        r"""
        Compute the mean and variance of :math:`q(x_{t-1} \mid x_t, x_0)`, Eq. (7) in [2]:

        .. math::

            \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1 - \bar\alpha_t} x_0
                + \frac{\sqrt{1 - \beta_t}(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t} x_t,
            \qquad
            \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\beta_t.

        The variance is exactly zero at ``t = 1``.

        :returns: ``(mean, variance)``, the mean of shape ``batch_shape + event_shape``
            and the variance broadcastable to it.
        """
        t = as_time_tensor(t, self.num_steps, device=x_t.device)
        s = self.schedule
        mean = s.gather("posterior_coef_x0", t, x_t) * x0 + s.gather(
            "posterior_coef_xt", t, x_t
        ) * x_t
        return mean, s.gather("posterior_variance", t, x_t)

    def posterior(self, x_t, x0, t):
        r"""
        Return the forward posterior :math:`q(x_{t-1} \mid x_t, x_0)` for ``t >= 2``.
        At ``t = 1`` it is a point mass at :math:`x_0` and has no density, so
        steps below 2 raise.

        :param torch.Tensor x_t: shape ``batch_shape + event_shape``.
        :param torch.Tensor x0: same shape as ``x_t``.
        :param t: time steps in ``2..T``, shape ``batch_shape``.
        :rtype: pyro.distributions.Independent
        """
        t = as_time_tensor(t, self.num_steps, minimum=2, device=x_t.device)
        mean, variance = self.posterior_mean_variance(x_t, x0, t)
        return self._normal(mean, variance)

    def stationary(self, shape, dtype, device):
        """Return the stationary distribution, the standard normal, with ``batch_shape + event_shape = shape``."""
        zeros = torch.zeros(shape, dtype=dtype, device=device)
        return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(self.event_dim)

    def check_data(self, x0):
        """Accept any finite real data; the model checks finiteness."""

    def extra_repr(self):
        return f"num_steps={self.num_steps}, event_dim={self.event_dim}"
