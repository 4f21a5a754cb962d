r"""
An estimator of the diffusion bound whose cost per step does not grow
with the number of diffusion steps ``T``.

The bound of Sohl-Dickstein et al. (2015), Eq. (14), as the ELBO of the
model/guide pair in :mod:`pyro_diffusion.model`, splits into three parts:

.. math::

    \mathcal{L}(x_0) = \underbrace{-\mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T))}_{\text{prior}}
        \; \underbrace{- \sum_{t=2}^{T} \mathbb{E}_{q(x_t \mid x_0)}
            \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p(x_{t-1} \mid x_t))}_{\text{diffusion}}
        \; + \underbrace{\mathbb{E}_{q(x_1 \mid x_0)} \log p(x_0 \mid x_1)}_{\text{decoder}}.

:class:`TimestepELBO` evaluates the prior and decoder parts for every
example and the diffusion part at one step per example drawn from a
proposal :math:`\pi(t)` and weighted by :math:`1 / \pi(t)`. Each KL is
analytic. Its expectation is the bound, so it trains the same objective as
``Trace_ELBO`` on the full pair at the cost of two network evaluations per
example (the step's kernel and the decoder; the prior part needs none)
instead of ``T``.
"""

import torch

from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.util import warn_if_nan

from .timesteps import UniformTimesteps, subsample_timesteps

__all__ = ["TimestepELBO"]

#: The site whose term depends on the drawn step.
STEP_SITE = "x_prev"


class TimestepELBO(ELBO):
    """
    The ELBO of a :class:`~pyro_diffusion.model.DiffusionModel` estimated at
    one random time step per example, for use as the ``loss`` of stock
    :class:`pyro.infer.SVI` with the model's own ``model`` and ``guide``::

        svi = SVI(diffusion.model, diffusion.guide, Adam({"lr": 1e-3}),
                  loss=TimestepELBO())

    Latent sites contribute ``-KL(guide || model)`` in closed form where Pyro
    registers one (Gaussian sites always), otherwise a one-sample
    ``log p - log q``; the observed site contributes its log-density.

    :param int num_particles: the number of independent draws averaged.
    :param sampler: the time-step proposal, a
        :class:`~pyro_diffusion.timesteps.UniformTimesteps` (default) or
        :class:`~pyro_diffusion.timesteps.ImportanceTimesteps`.
    :param torch.Generator generator: an optional random stream for the steps.
    """

    def __init__(self, num_particles=1, sampler=None, generator=None):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
        if sampler is not None and not all(callable(getattr(sampler, name, None)) for name in ("draw", "update")):
            raise ValueError(
                f"sampler must be a time-step proposal such as UniformTimesteps() or ImportanceTimesteps(), "
                f"got {sampler!r}"
            )
        super().__init__(num_particles=num_particles)
        self.sampler = sampler if sampler is not None else UniformTimesteps()
        self.generator = generator

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace, _ = self._traces(model, guide, args, kwargs)
        return model_trace, guide_trace

    def _traces(self, model, guide, args, kwargs):
        with subsample_timesteps(self.sampler, self.generator) as handler:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        return model_trace, guide_trace, handler

    def elbo_per_example(self, model, guide, *args, **kwargs):
        """
        Draw the estimate once for each example, in nats.

        :returns: shape ``[N]``, differentiable.
        :rtype: torch.Tensor
        """
        model_trace, guide_trace, handler = self._traces(model, guide, args, kwargs)
        total = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                term = site["fn"].log_prob(site["value"])
                total = total + scale_and_mask(term, site["scale"], site["mask"])
                continue
            if name not in guide_trace.nodes:
                raise ValueError(f"the model's latent site {name!r} has no guide site")
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                value = guide_site["value"]
                kl = guide_site["fn"].log_prob(value) - site["fn"].log_prob(value)
            if name == STEP_SITE and handler.t is not None:
                self.sampler.update(handler.t, kl)
            total = total - scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
        return total

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """
        :returns: the negative ELBO estimate summed over examples and averaged
            over particles, in nats.
        :rtype: torch.Tensor
        """
        loss = 0.0
        for _ in range(self.num_particles):
            loss = loss - self.elbo_per_example(model, guide, *args, **kwargs).sum()
        loss = loss / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        """:returns: the negative ELBO estimate in nats, as a float."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """
        Compute the negative ELBO estimate and accumulate its gradients
        into the parameters.

        :returns: the negative ELBO estimate in nats, as a float.
        """
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())
