r"""
The diffusion probabilistic model as a Pyro model/guide pair.

The **model** is the learned reverse chain
:math:`p(x_T) \prod_{t=1}^{T} p(x_{t-1} \mid x_t)` with :math:`x_0` observed;
the **guide** is the fixed forward process over the same latent sites,
factored in the model's order,

.. math::

    q(x_{1:T} \mid x_0) = q(x_T \mid x_0) \prod_{t=2}^{T} q(x_{t-1} \mid x_t, x_0),

which is the same joint distribution as the forward-order product
:math:`\prod_t q(x_t \mid x_{t-1})`. Because each guide site is conditioned
on the same parent as its model site, the ELBO of the pair is the bound
``K`` of [1], Eq. (14), and per-site analytic KL divergences are valid.

Sample sites of :meth:`DiffusionModel.model` and :meth:`DiffusionModel.guide`,
all inside the plate ``"data"`` over examples:

- ``"x_T"`` for the number ``T``, e.g. ``"x_1000"``: the start of the reverse
  chain, :math:`\mathcal{N}(0, I)` in the model.
- ``"x_{t-1}"`` for ``t = T..2``, e.g. ``"x_999"`` down to ``"x_1"``.
- ``"x_0"``: the data, observed in the model when ``x0`` is given.

Under the handler :class:`~pyro_diffusion.timesteps.subsample_timesteps`
both programs switch to a one-step form used by
:class:`~pyro_diffusion.elbo.TimestepELBO`, with sites ``"x_T"``,
``"x_prev"`` (the predecessor of one random step ``t`` per example, weighted
by the inverse proposal probability) and ``"x_0"``. The states
:math:`x_t \sim q(x_t \mid x_0)` and :math:`x_1 \sim q(x_1 \mid x_0)` the
terms are evaluated at are drawn by the guide and passed to the model
through the handler. That form is a training program for the bound, not a
generative model.

References

[1] J. Sohl-Dickstein et al., "Deep Unsupervised Learning using
    Nonequilibrium Thermodynamics", 2015.
"""

import itertools
import logging

import torch

import pyro
from pyro import poutine
from pyro.nn import PyroModule
from pyro.params.param_store import param_with_module_name
from pyro.poutine.util import is_validation_enabled

from .decoders import GaussianDecoder
from .distributions import draw
from .timesteps import active_timestep_subsample

__all__ = ["DiffusionModel"]

logger = logging.getLogger(__name__)

_names = itertools.count()


class DiffusionModel(PyroModule):
    """
    A diffusion probabilistic model: the forward process as guide and the
    reverse kernel as model.

    :param GaussianForward forward_process: the fixed forward process.
    :param ReverseKernel reverse: the learned reverse kernel.
    :param decoder: the last reverse step of a Gaussian kernel; a
        :class:`~pyro_diffusion.decoders.GaussianDecoder` if omitted. Kernels
        that are not Gaussian (binomial) give ``x_0`` themselves and take none.
    :param str name: the prefix of this model's parameters in Pyro's param
        store. Each instance gets a distinct default, so two models in one
        process never share parameters.
    """

    def __init__(self, forward_process, reverse, decoder=None, name=None):
        super().__init__(name if name is not None else f"diffusion_{next(_names)}")
        self.forward_process = forward_process
        self.reverse = reverse
        if decoder is None and reverse.has_gaussian_steps:
            decoder = GaussianDecoder()
        if decoder is not None and not reverse.has_gaussian_steps:
            raise ValueError(
                f"{type(reverse).__name__} gives the distribution of x_0 itself: build the model without a decoder"
            )
        self.decoder = decoder
        self._registered = {}
        self.event_shape = torch.Size(reverse.event_shape)
        if forward_process.event_dim != len(self.event_shape):
            raise ValueError(
                f"the forward process has event_dim={forward_process.event_dim} but the reverse kernel's "
                f"event_shape {tuple(self.event_shape)} has {len(self.event_shape)} dimensions: build "
                f"GaussianForward(schedule, event_dim={len(self.event_shape)})"
            )

    @property
    def num_steps(self):
        """The number of diffusion steps ``T``."""
        return self.forward_process.num_steps

    @property
    def event_dim(self):
        return len(self.event_shape)

    def _register(self, part="reverse"):
        # The modules' own tensors are the parameters. A tensor left in the
        # global param store under the same name by an earlier model would
        # otherwise be optimized in their place while this model never trains.
        # The model registers the reverse kernel (which reads the schedule
        # through the forward process); the guide registers the forward
        # process when its schedule is learned.
        module = getattr(self, part)
        prefix = f"{self._pyro_name}.{part}"
        store = pyro.get_param_store()
        # The full scan for stale entries runs when the store, its size, the
        # tensors or the store's entry for the first tensor changed since the
        # last call, as when another model under the same name registered.
        # Otherwise the call only records the parameters in the trace.
        parameters = list(module.named_parameters())
        key = (id(store), len(store), tuple(id(p) for _, p in parameters))
        first_is_ours = bool(parameters) and (
            param_with_module_name(prefix, parameters[0][0]) in store
            and store.get_param(param_with_module_name(prefix, parameters[0][0])) is parameters[0][1]
        )
        if self._registered.get(part) != key or not first_is_ours:
            for name, parameter in module.named_parameters():
                full_name = param_with_module_name(prefix, name)
                if full_name in store and store.get_param(full_name) is not parameter:
                    logger.debug("replacing stale param store entry %s", full_name)
                    del store[full_name]
        # What pyro.module does, on the list already in hand: each parameter
        # that requires a gradient becomes a param site of the trace.
        for name, parameter in parameters:
            if parameter.requires_grad:
                pyro.param(param_with_module_name(prefix, name), parameter)
        self._registered[part] = (id(store), len(store), tuple(id(p) for _, p in parameters))

    def _register_guide(self):
        if any(True for _ in self.forward_process.parameters()):
            self._register("forward_process")

    def _check_data(self, x0):
        if not torch.is_tensor(x0):
            raise ValueError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
        if x0.dim() != self.event_dim + 1 or x0.shape[1:] != self.event_shape:
            expected = "[N, " + ", ".join(str(d) for d in self.event_shape) + "]"
            raise ValueError(
                f"x0 must have shape {expected} (examples first), got {tuple(x0.shape)}"
            )
        if not x0.is_floating_point():
            raise ValueError(f"x0 must be floating point, got {x0.dtype}: use x0.float()")
        dtype = self._dtype()
        if x0.dtype != dtype:
            raise ValueError(
                f"x0 has dtype {x0.dtype} but the model's parameters are {dtype}: "
                f"convert x0 with x0.to({dtype}) or the model with .to({x0.dtype})"
            )
        if x0.shape[0] == 0:
            raise ValueError("x0 is empty (0 examples): pass at least one example")
        self.check_device(x0, "x0")
        self.forward_process.check_data(x0)
        if is_validation_enabled() and not torch.isfinite(x0).all():
            raise ValueError("x0 contains NaN or infinite values: remove or impute them")

    @property
    def device(self):
        """The device of the model's tensors (its first buffer's)."""
        return next(self.forward_process.buffers()).device

    def check_device(self, value, name):
        """
        Raise ``ValueError`` unless the tensor ``value`` is on the model's device.

        :param torch.Tensor value: an input of the model.
        :param str name: its name in the message.
        """
        device = self.device
        if value.device != device:
            raise ValueError(
                f"{name} is on device {value.device} but the model is on {device}: move it with "
                f"{name}.to({str(device)!r}) or the model with .to({str(value.device)!r})"
            )

    def _dtype(self):
        # The network sets the data's dtype; a learned schedule keeps its
        # parameters in float64 whatever the network's dtype.
        for name, parameter in self.reverse.named_parameters():
            if not name.startswith("forward_process."):
                return parameter.dtype
        return torch.get_default_dtype()

    def _batch_size(self, x0, num_samples):
        if x0 is not None:
            self._check_data(x0)
            if num_samples is not None and num_samples != x0.shape[0]:
                raise ValueError(
                    f"num_samples = {num_samples!r} but x0 has {x0.shape[0]} examples: pass x0 or num_samples, not both"
                )
            return x0.shape[0]
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(
                f"without data, pass num_samples >= 1 (got {num_samples!r})"
            )
        return int(num_samples)

    def prior_distribution(self, batch_size, like=None):
        """
        :math:`p(x_T)`, the forward process's stationary distribution.

        :param int batch_size: ``N``.
        :param torch.Tensor like: a tensor whose dtype the result takes.
        :returns: a distribution with batch shape ``[N]``.
        """
        device = self.device
        dtype = like.dtype if like is not None else self._dtype()
        return self.forward_process.stationary((batch_size,) + self.event_shape, dtype, device)

    def decoder_distribution(self, x1):
        r"""
        :math:`p(x_0 \mid x_1)`, from the decoder for Gaussian kernels or from
        the kernel's own step at ``t = 1`` otherwise.

        :param torch.Tensor x1: shape ``[N] + event_shape``.
        """
        one = torch.tensor(1, device=x1.device)
        if self.decoder is None:
            return self.reverse.distribution(x1, one)
        loc, log_variance = self.reverse.loc_log_variance(x1, one)
        return self.decoder.distribution(loc, log_variance, self.event_dim)

    def model(self, x0=None, num_samples=None, obs_mask=None):
        r"""
        Run the reverse chain :math:`p(x_{0:T})`, Eq. (5) in [1].

        With ``obs_mask``, only the coordinates of ``x0`` where the mask is
        ``True`` are observed, at site ``"x_0"``, and the others are the latent
        site ``"x_0_unobserved"``, as Pyro's own ``obs_mask`` does for batch
        elements. Both sites draw from the last reverse step
        :math:`p(x_0 \mid x_1)`, which factorizes over coordinates, so each
        site's log-density counts only its own coordinates.

        :param torch.Tensor x0: data of shape ``[N] + event_shape``, observed at
            site ``"x_0"``; omit it to sample.
        :param int num_samples: ``N`` when ``x0`` is omitted.
        :param torch.Tensor obs_mask: boolean, broadcastable to ``x0``;
            ``True`` marks an observed coordinate. Values of ``x0`` where it
            is ``False`` are ignored and may be NaN.
        :returns: :math:`x_0`, shape ``[N] + event_shape``, with the observed
            coordinates equal to ``x0``.
        """
        handler = active_timestep_subsample()
        if handler is not None:
            if obs_mask is not None:
                raise ValueError("the one-step training program needs complete data: drop obs_mask")
            return self._timestep_model(x0, handler)
        if obs_mask is not None:
            x0, obs_mask = self._masked_data(x0, obs_mask)
        batch_size = self._batch_size(x0, num_samples)
        self._register()
        T = self.num_steps
        with pyro.plate("data", batch_size):
            x = pyro.sample(f"x_{T}", self.prior_distribution(batch_size, x0))
            for t in range(T, 1, -1):
                step = torch.tensor(t, device=x.device)
                x = pyro.sample(f"x_{t - 1}", self.reverse.distribution(x, step))
            if obs_mask is not None:
                return self._decode_masked(x, x0, obs_mask)
            return self._decode(x, x0)

    def guide(self, x0=None, num_samples=None):
        r"""
        Run the forward process :math:`q(x_{1:T} \mid x_0)` in the model's order,
        :math:`q(x_T \mid x_0) \prod_{t=2}^T q(x_{t-1} \mid x_t, x_0)`.

        :param torch.Tensor x0: data of shape ``[N] + event_shape``.
        """
        if x0 is None:
            raise ValueError("the guide is the forward process and needs data x0")
        handler = active_timestep_subsample()
        if handler is not None:
            return self._timestep_guide(x0, handler)
        self._check_data(x0)
        self._register_guide()
        forward = self.forward_process
        T = self.num_steps
        with pyro.plate("data", x0.shape[0]):
            x = pyro.sample(f"x_{T}", forward.marginal(x0, T))
            for t in range(T, 1, -1):
                x = pyro.sample(f"x_{t - 1}", forward.posterior(x, x0, t))

    def _decode(self, x1, x0):
        return pyro.sample("x_0", self.decoder_distribution(x1), obs=x0)

    def _masked_data(self, x0, obs_mask):
        if x0 is None:
            raise ValueError("obs_mask needs the observed data x0")
        if not torch.is_tensor(obs_mask) or obs_mask.dtype != torch.bool:
            raise ValueError("obs_mask must be a boolean tensor (True = observed)")
        if not torch.is_tensor(x0):
            raise ValueError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
        try:
            obs_mask = torch.broadcast_to(obs_mask, x0.shape)
        except RuntimeError:
            raise ValueError(
                f"obs_mask of shape {tuple(obs_mask.shape)} does not broadcast to x0 of shape "
                f"{tuple(x0.shape)}: pass a mask of x0's shape"
            ) from None
        # Unobserved values are placeholders; zeros keep the data check from
        # rejecting NaN there.
        return torch.where(obs_mask, x0, torch.zeros_like(x0)), obs_mask

    def _decode_masked(self, x1, x0, obs_mask):
        decoder = self.decoder_distribution(x1)
        base = decoder.base_dist if isinstance(decoder, pyro.distributions.Independent) else decoder
        observed = base.mask(obs_mask).to_event(self.event_dim)
        unobserved = base.mask(~obs_mask).to_event(self.event_dim)
        pyro.sample("x_0", observed, obs=x0)
        missing = pyro.sample("x_0_unobserved", unobserved)
        return torch.where(obs_mask, x0, missing)

    def _timestep_model(self, x0, handler):
        if x0 is None:
            raise ValueError("the one-step training program needs data x0")
        self._check_data(x0)
        self._register()
        T = self.num_steps
        batch_size = x0.shape[0]
        with pyro.plate("data", batch_size):
            x_last = pyro.sample(f"x_{T}", self.prior_distribution(batch_size, x0))
            if T == 1:
                return self._decode(x_last, x0)
            t, weight = handler.current(batch_size, T, x0.device)
            # x_t and x_1 follow the forward marginals in both programs, so
            # their KL terms would be exactly zero: they are plain draws
            # shared through the handler, not sample sites. The model draws
            # its own only when it runs without the guide.
            states = handler.states(x0)
            x_t, x_1 = states if states is not None else self._forward_states(x0, t)
            with poutine.scale(scale=weight):
                pyro.sample("x_prev", self.reverse.distribution(x_t, t))
            return self._decode(x_1, x0)

    def _forward_states(self, x0, t):
        # Calling a distribution draws as a Pyro sample site does: rsample
        # where the distribution has one, so a learned schedule gets gradients.
        forward = self.forward_process
        return forward.marginal(x0, t)(), forward.marginal(x0, 1)()

    def _timestep_guide(self, x0, handler):
        self._check_data(x0)
        self._register_guide()
        forward = self.forward_process
        T = self.num_steps
        batch_size = x0.shape[0]
        with pyro.plate("data", batch_size):
            pyro.sample(f"x_{T}", forward.marginal(x0, T))
            if T == 1:
                return
            t, weight = handler.draw(batch_size, T, x0.device)
            x_t = forward.marginal(x0, t)()
            with poutine.scale(scale=weight):
                pyro.sample("x_prev", forward.posterior(x_t, x0, t))
            handler.record_states(x0, x_t, forward.marginal(x0, 1)())

    @torch.no_grad()
    def sample_steps(self, num_samples, generator=None):
        r"""
        Ancestral sampling through the reverse chain, one step at a time,
        without Pyro's tracing.

        :param int num_samples: ``N``.
        :param torch.Generator generator: an optional random stream; the same
            seed gives the same trajectory.
        :returns: an iterator of ``(t, x_t)`` for ``t = T, ..., 0``, each
            ``x_t`` of shape ``[N] + event_shape``.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                f"generator must be a torch.Generator, got {generator!r}: pass torch.Generator().manual_seed(SEED)"
            )
        x = draw(self.prior_distribution(int(num_samples)), generator)
        yield self.num_steps, x
        gaussian = self.reverse.has_gaussian_steps
        for t in range(self.num_steps, 1, -1):
            step = torch.tensor(t, device=x.device)
            if gaussian:
                # The same arithmetic and draws as draw(self.reverse.distribution(x, step)),
                # without building and checking a distribution object at every step.
                loc, log_variance = self.reverse.loc_log_variance(x, step)
                noise = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
                x = loc + (0.5 * log_variance).exp().expand_as(loc) * noise
            else:
                x = draw(self.reverse.distribution(x, step), generator)
            yield t - 1, x
        yield 0, draw(self.decoder_distribution(x), generator)

    def sample(self, num_samples, generator=None):
        """
        Draw ``N`` samples of :math:`x_0` by ancestral sampling; see
        :meth:`sample_steps`.

        :returns: shape ``[N] + event_shape``.
        """
        x = None
        for _, x in self.sample_steps(num_samples, generator):
            pass
        return x
