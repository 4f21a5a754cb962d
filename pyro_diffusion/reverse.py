r"""
Reverse kernels :math:`p(x_{t-1} \mid x_t) = \mathcal{N}(\mu(x_t, t), \Sigma(x_t, t))`
built from the outputs of a network, the learned half of the trajectory.

Every kernel maps ``x_t`` of shape ``batch_shape + event_shape`` and ``t``
of shape ``batch_shape`` to a mean of the same shape as ``x_t`` and a
diagonal variance broadcastable to it. The networks see each example
flattened to ``[D]``, ``D`` being the number of elements of ``event_shape``.

References

[1] J. Sohl-Dickstein et al., "Deep Unsupervised Learning using
    Nonequilibrium Thermodynamics", 2015.
[2] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    2020.
[3] A. Nichol, P. Dhariwal, "Improved Denoising Diffusion Probabilistic
    Models", 2021.
"""

import enum

import torch
from torch import nn
from torch.nn import functional as F

import pyro.distributions as dist

from .forward import as_time_tensor
from .options import parse_option

__all__ = ["EpsilonReverse", "PaperReverse", "ReverseKernel", "ReverseVariance"]


class ReverseVariance(str, enum.Enum):
    r"""The reverse variance of :class:`EpsilonReverse`."""

    #: :math:`\sigma_t^2 = \tilde\beta_t`, the lower entropy bound (Eq. 24 in [1]).
    SMALL = "small"
    #: :math:`\sigma_t^2 = \beta_t`, the upper entropy bound.
    LARGE = "large"
    #: :math:`\log\sigma_t^2 = v \log\beta_t + (1 - v)\log\tilde\beta_t` with
    #: :math:`v = \mathrm{sigmoid}(\cdot)` from the network, strictly
    #: between the two bounds, as in Eq. (15) of [3].
    LEARNED = "learned"

    @classmethod
    def parse(cls, value):
        return parse_option(cls, value, "reverse variance")


class ReverseKernel(nn.Module):
    """
    Base class of reverse kernels.

    :param GaussianForward forward_process: the forward process, whose
        schedule the kernel perturbs.
    :param torch.nn.Module net: a network ``net(x [N, D], t [N]) -> [N, C * D]``.
    :param event_shape: the shape of one example.
    :param int num_outputs: ``C``, the number of network outputs per element.
    """

    #: Whether the kernel is Gaussian with :meth:`loc_log_variance`, so that
    #: a Gaussian or binned decoder can turn its last step into ``x_0``.
    has_gaussian_steps = True

    def __init__(self, forward_process, net, event_shape, num_outputs):
        super().__init__()
        self.forward_process = forward_process
        self.net = net
        self.event_shape = torch.Size(event_shape)
        self.num_outputs = num_outputs

    @property
    def schedule(self):
        return self.forward_process.schedule

    def network_outputs(self, x_t, t):
        """
        Run the network on flattened examples.

        :param torch.Tensor x_t: shape ``batch_shape + event_shape``.
        :param torch.Tensor t: shape ``batch_shape`` (or broadcastable).
        :returns: ``C`` tensors, each of shape ``batch_shape + event_shape``.
        """
        event_dim = len(self.event_shape)
        batch_shape = x_t.shape[: x_t.dim() - event_dim]
        flat_x = x_t.reshape((-1, self.event_shape.numel()))
        flat_t = t.expand(batch_shape).reshape(-1)
        out = self.net(flat_x, flat_t)
        out = out.reshape(batch_shape + (self.num_outputs,) + self.event_shape)
        return out.unbind(len(batch_shape))

    def loc_log_variance(self, x_t, t):
        r"""
        :returns: ``(loc, log_variance)`` of :math:`p(x_{t-1} \mid x_t)`, the
            first of shape ``batch_shape + event_shape``, the second
            broadcastable to it.
        """
        raise NotImplementedError

    def distribution(self, x_t, t):
        r"""
        :returns: :math:`p(x_{t-1} \mid x_t)` with the data's event shape.
        :rtype: pyro.distributions.Independent
        """
        loc, log_variance = self.loc_log_variance(x_t, t)
        scale = (0.5 * log_variance).exp().expand_as(loc)
        return dist.Normal(loc, scale).to_event(len(self.event_shape))

    def _time(self, t, x_t):
        return as_time_tensor(t, self.forward_process.num_steps, device=x_t.device)


class EpsilonReverse(ReverseKernel):
    r"""
    The noise-prediction kernel of [2]: the network predicts the noise
    :math:`\hat\epsilon(x_t, t)` and

    .. math::

        \mu(x_t, t) = \frac{1}{\sqrt{1 - \beta_t}}\left(x_t
            - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\hat\epsilon(x_t, t)\right),

    Eq. (11) in [2]. The variance follows :class:`ReverseVariance` and
    always lies in :math:`[\tilde\beta_t, \beta_t]`, the entropy bounds of
    Eq. (24) in [1] (at ``t = 1``, where :math:`\tilde\beta_1 = 0`, the lower
    end is :math:`\tilde\beta_2`).

    :param GaussianForward forward_process: the forward process.
    :param torch.nn.Module net: outputs ``[N, D]``, or ``[N, 2 * D]`` for a
        learned variance.
    :param event_shape: the shape of one example.
    :param variance: ``"small"``, ``"large"`` or ``"learned"``.
    """

    def __init__(self, forward_process, net, event_shape, variance="learned"):
        variance = ReverseVariance.parse(variance)
        num_outputs = 2 if variance is ReverseVariance.LEARNED else 1
        super().__init__(forward_process, net, event_shape, num_outputs)
        self.variance = variance

    def loc_log_variance(self, x_t, t):
        t = self._time(t, x_t)
        s = self.schedule
        outputs = self.network_outputs(x_t, t)
        eps = outputs[0]
        # 1. The mean from the predicted noise, Eq. (11) in [2].
        noise_coef = s.gather("betas", t, x_t) / s.gather("sqrt_one_minus_alphas_bar", t, x_t)
        loc = (x_t - noise_coef * eps) / s.gather("sqrt_alphas", t, x_t)
        # 2. The variance between the entropy bounds, Eq. (24) in [1].
        upper = s.gather("log_betas", t, x_t)
        lower = s.gather("log_posterior_variance_clipped", t, x_t)
        if self.variance is ReverseVariance.SMALL:
            log_variance = lower
        elif self.variance is ReverseVariance.LARGE:
            log_variance = upper
        else:
            fraction = torch.sigmoid(outputs[1])
            log_variance = fraction * upper + (1 - fraction) * lower
        return loc, log_variance

    def predict_x0(self, x_t, t):
        r"""
        Predict the data from the predicted noise,
        :math:`\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\hat\epsilon) / \sqrt{\bar\alpha_t}`.
        Not clipped.
        """
        t = self._time(t, x_t)
        s = self.schedule
        eps = self.network_outputs(x_t, t)[0]
        return (x_t - s.gather("sqrt_one_minus_alphas_bar", t, x_t) * eps) / s.gather(
            "sqrt_alphas_bar", t, x_t
        )


class PaperReverse(ReverseKernel):
    r"""
    The parameterization of [1], Appendix D: the network outputs
    :math:`z_\mu, z_\Sigma` (through Gaussian bump functions of ``t`` when it
    uses them) and

    .. math::

        \Sigma = \mathrm{sigmoid}(z_\Sigma + \mathrm{logit}\,\beta_t), \qquad
        \mu = (x_t - z_\mu)(1 - \Sigma) + z_\mu,

    so that a zero output gives the forward kernel's variance :math:`\beta_t`
    and a mean that shrinks :math:`x_t` by :math:`1 - \beta_t`.

    :param GaussianForward forward_process: the forward process.
    :param torch.nn.Module net: outputs ``[N, 2 * D]``.
    :param event_shape: the shape of one example.
    """

    def __init__(self, forward_process, net, event_shape):
        super().__init__(forward_process, net, event_shape, num_outputs=2)

    def loc_log_variance(self, x_t, t):
        t = self._time(t, x_t)
        z_mu, z_sigma = self.network_outputs(x_t, t)
        log_variance = F.logsigmoid(z_sigma + self.schedule.gather("logit_betas", t, x_t))
        loc = (x_t - z_mu) * (1 - log_variance.exp()) + z_mu
        return loc, log_variance
